//! A route's JWT policy, compiled once per snapshot: where the token is, what it must say, which
//! claims go upstream. [`JwtPolicy::check`] verifies a request's token (or finds it in the cache
//! of tokens already verified) and says why not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use sluice_bundle::{DEFAULT_JWT_LEEWAY, Jwt};

use super::jwks::{Alg, KeySet, KeySource};
use crate::headers::cookie;
use crate::sync::lock;

/// Longest token read; longer is malformed (a JWT worth verifying is a few hundred bytes).
const MAX_TOKEN: usize = 16 * 1024;
/// Verified tokens kept per route.
const CACHE_ENTRIES: usize = 10_000;
/// Longer tokens are verified every time, never kept: the cache stays under 40 MiB per route.
const CACHE_TOKEN: usize = 4 * 1024;

/// A route's `jwt`, compiled.
#[derive(Debug)]
pub struct JwtPolicy {
    pub keys: Arc<KeySource>,
    issuer: Option<Box<str>>,
    audiences: Box<[Box<str>]>,
    leeway: u64,
    from: TokenFrom,
    /// Each claim's path and the field it goes in.
    claims: Box<[(ClaimPath, HeaderName)]>,
    strip: bool,
    cache: Mutex<HashMap<Box<str>, Arc<Verified>>>,
}

/// A claim's name, or the names leading into nested objects.
type ClaimPath = Box<[Box<str>]>;

#[derive(Debug)]
enum TokenFrom {
    Bearer,
    Header(HeaderName),
    Cookie(Box<str>),
}

/// A verified token: until when, by which key set, and the fields its claims make.
#[derive(Debug)]
pub struct Verified {
    exp: u64,
    nbf: Option<u64>,
    generation: u64,
    pub headers: Box<[(HeaderName, HeaderValue)]>,
}

/// Why a request's token was refused. Its name is the metric's `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("no token")]
    Missing,
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's key is not in the key set")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is from another issuer")]
    WrongIssuer,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the keys to verify tokens with are not available yet")]
    KeysUnavailable,
}

/// How each request's check ended, counted per route (`sluice_jwt_requests_total`).
#[derive(Debug, Default)]
pub struct JwtStats {
    outcomes: [std::sync::atomic::AtomicU64; JwtError::OUTCOMES.len()],
    /// Allowed requests whose token was found in the cache.
    pub cached: std::sync::atomic::AtomicU64,
}

// === impl JwtError ===

impl JwtError {
    /// Every outcome, `allowed` first.
    pub const OUTCOMES: [&'static str; 10] = [
        "allowed",
        "missing",
        "malformed",
        "unknown_key",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "keys_unavailable",
    ];

    fn index(self) -> usize {
        match self {
            Self::Missing => 1,
            Self::Malformed(_) => 2,
            Self::UnknownKey => 3,
            Self::BadSignature => 4,
            Self::Expired => 5,
            Self::NotYetValid => 6,
            Self::WrongIssuer => 7,
            Self::WrongAudience => 8,
            Self::KeysUnavailable => 9,
        }
    }
}

// === impl JwtStats ===

impl JwtStats {
    pub fn count(&self, result: Result<(), JwtError>) {
        let i = result.map_or_else(JwtError::index, |()| 0);
        self.outcomes[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// `(outcome, count)` for each outcome.
    pub fn outcomes(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        JwtError::OUTCOMES
            .iter()
            .zip(&self.outcomes)
            .map(|(o, n)| (*o, n.load(std::sync::atomic::Ordering::Relaxed)))
    }
}

// === impl JwtPolicy ===

impl JwtPolicy {
    /// `jwt` with its key source (which the caller got from the node's sources).
    pub fn compile(jwt: &Jwt, keys: Arc<KeySource>) -> Self {
        let from = match &jwt.from {
            Some(s) => match (&s.header, &s.cookie) {
                (Some(h), _) => HeaderName::try_from(h.as_str()).map_or(TokenFrom::Bearer, TokenFrom::Header),
                (None, Some(c)) => TokenFrom::Cookie(c.as_str().into()),
                (None, None) => TokenFrom::Bearer,
            },
            None => TokenFrom::Bearer,
        };
        // Names were checked by the parser; one that is not a field name cannot be sent.
        let claims = jwt
            .claims_to_headers
            .iter()
            .filter_map(|c| {
                let name = HeaderName::try_from(c.header.as_str()).ok()?;
                Some((c.claim.split('.').map(Into::into).collect(), name))
            })
            .collect();
        Self {
            keys,
            issuer: jwt.issuer.as_deref().map(Into::into),
            audiences: jwt.audiences.iter().map(|a| a.as_str().into()).collect(),
            leeway: jwt.leeway.unwrap_or(DEFAULT_JWT_LEEWAY).get().as_secs(),
            from,
            claims,
            strip: jwt.strip_token == Some(true),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies the request's token at `now` (Unix seconds).
    pub fn check(&self, headers: &HeaderMap, now: u64) -> Result<(Arc<Verified>, bool), JwtError> {
        let token = self.token(headers)?;
        let keys = self.keys.current().ok_or(JwtError::KeysUnavailable)?;
        let cached = lock(&self.cache).get(token).cloned();
        if let Some(v) = cached.filter(|v| v.generation == keys.generation) {
            self.in_time(v.exp, v.nbf, now)?;
            return Ok((v, true));
        }
        let verified = Arc::new(self.verify(token, &keys, now)?);
        if token.len() > CACHE_TOKEN {
            return Ok((verified, false));
        }
        let mut cache = lock(&self.cache);
        if cache.len() >= CACHE_ENTRIES {
            // Expired or verified by an older key set first; if that frees nothing, start over.
            cache.retain(|_, v| v.exp + self.leeway > now && v.generation == keys.generation);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(token.into(), verified.clone());
        Ok((verified, false))
    }

    /// Sets the verified token's claim fields on the request going upstream (a client's own
    /// fields of those names removed first), and strips the token if the route asks.
    pub fn forward(&self, headers: &mut HeaderMap, verified: &Verified) {
        for (_, name) in &self.claims[..] {
            headers.remove(name);
        }
        for (name, value) in &verified.headers[..] {
            headers.insert(name.clone(), value.clone());
        }
        if self.strip {
            match &self.from {
                TokenFrom::Bearer => drop(headers.remove(AUTHORIZATION)),
                TokenFrom::Header(h) => drop(headers.remove(h)),
                TokenFrom::Cookie(name) => strip_cookie(headers, name),
            }
        }
    }

    /// The request's token: the `Bearer` credentials, or the named field's or cookie's value.
    fn token<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, JwtError> {
        let raw = match &self.from {
            TokenFrom::Bearer => {
                let v = headers.get(AUTHORIZATION).ok_or(JwtError::Missing)?.as_bytes();
                // RFC 6750 §2.1: the scheme is case-insensitive.
                match v.get(..7) {
                    Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => v[7..].trim_ascii(),
                    _ => return Err(JwtError::Missing),
                }
            }
            TokenFrom::Header(name) => {
                let v = headers.get(name).ok_or(JwtError::Missing)?.as_bytes().trim_ascii();
                match v.get(..7) {
                    Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => v[7..].trim_ascii(),
                    _ => v,
                }
            }
            TokenFrom::Cookie(name) => cookie(headers, name).ok_or(JwtError::Missing)?.trim_ascii(),
        };
        if raw.is_empty() {
            return Err(JwtError::Missing);
        }
        if raw.len() > MAX_TOKEN {
            return Err(JwtError::Malformed("longer than 16 KiB"));
        }
        std::str::from_utf8(raw).map_err(|_| JwtError::Malformed("not text"))
    }

    /// Verifies `token` against `keys` at `now`, without the cache.
    pub fn verify(&self, token: &str, keys: &KeySet, now: u64) -> Result<Verified, JwtError> {
        let mut parts = token.split('.');
        let (Some(head64), Some(body64), Some(sig64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("not three base64url parts (a JWS in compact form)"));
        };
        let head: Value = decode_json(head64)?;
        let alg = head.get("alg").and_then(Value::as_str).ok_or(JwtError::Malformed("no alg"))?;
        let alg = Alg::from_name(alg).ok_or(JwtError::Malformed("alg is not RS256, ES256 or EdDSA"))?;
        // RFC 7515 §4.1.11: extensions the token says must be understood are not.
        if head.get("crit").is_some() {
            return Err(JwtError::Malformed("crit names extensions Sluice does not implement"));
        }
        let kid = head.get("kid").and_then(Value::as_str);
        let sig =
            URL_SAFE_NO_PAD.decode(sig64).map_err(|_| JwtError::Malformed("signature is not base64url"))?;
        let signed = &token.as_bytes()[..head64.len() + 1 + body64.len()];
        let mut candidates = keys
            .keys
            .iter()
            .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
            .peekable();
        if candidates.peek().is_none() {
            self.keys.unknown_key();
            return Err(JwtError::UnknownKey);
        }
        if !candidates.any(|k| k.verify(signed, &sig)) {
            return Err(JwtError::BadSignature);
        }
        // Only a verified payload is read.
        let claims: Value = decode_json(body64)?;
        let time =
            |name: &'static str| -> Result<Option<u64>, JwtError> {
                match claims.get(name) {
                    None => Ok(None),
                    Some(v) => v.as_f64().filter(|t| *t >= 0.0).map(|t| Some(t as u64)).ok_or(
                        JwtError::Malformed("exp, nbf and iat are NumericDate (seconds since the epoch)"),
                    ),
                }
            };
        let exp = time("exp")?.ok_or(JwtError::Malformed("no exp: tokens that never expire are refused"))?;
        let nbf = time("nbf")?;
        self.in_time(exp, nbf, now)?;
        if let Some(issuer) = &self.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(&**issuer)
        {
            return Err(JwtError::WrongIssuer);
        }
        if !self.audiences.is_empty() {
            let named = |a: &str| self.audiences.iter().any(|x| **x == *a);
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => named(a),
                Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(named),
                _ => false,
            };
            if !ok {
                return Err(JwtError::WrongAudience);
            }
        }
        let headers = self
            .claims
            .iter()
            .filter_map(|(path, name)| {
                let v = path.iter().try_fold(&claims, |v, key| v.get(&**key))?;
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => return None,
                    other => other.to_string(),
                };
                Some((name.clone(), HeaderValue::try_from(text).ok()?))
            })
            .collect();
        Ok(Verified { exp, nbf, generation: keys.generation, headers })
    }

    fn in_time(&self, exp: u64, nbf: Option<u64>, now: u64) -> Result<(), JwtError> {
        if now >= exp.saturating_add(self.leeway) {
            return Err(JwtError::Expired);
        }
        if nbf.is_some_and(|nbf| now.saturating_add(self.leeway) < nbf) {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }
}

fn decode_json(part: &str) -> Result<Value, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| JwtError::Malformed("a part is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(JwtError::Malformed("a part is not a JSON object")),
    }
}

/// Removes cookie `name` from the `Cookie` fields, keeping the others.
fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(|pair| String::from_utf8_lossy(pair.trim_ascii()).into_owned())
        .filter(|pair| !pair.is_empty() && pair.split('=').next() != Some(name))
        .collect();
    headers.remove(COOKIE);
    if let Ok(v) = HeaderValue::try_from(kept.join("; "))
        && !kept.is_empty()
    {
        headers.insert(COOKIE, v);
    }
}

/// The time a token is checked at.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
