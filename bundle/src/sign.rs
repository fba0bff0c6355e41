//! Signed bundles: a payload (fleet, version, parent, times, config) serialised once, signed as
//! those exact bytes, and verified as those exact bytes. Nothing is ever re-serialised between
//! signing and verifying.
//!
//! Signatures are ed25519 over a domain-separation prefix followed by the payload bytes, so a
//! signature made for a bundle can never be replayed as a signature over anything else (a
//! freshness statement, a trusted-key set: [`freshness`], [`trust`]).
//!
//! A payload's signatures are a set: every active signing key signs it, and a key rotation adds
//! the new key's signature to versions still in use. Any one trusted, valid signature accepts it.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey as DalekSigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Config, ConfigErrors, parse_value};

/// Signed bytes start with this, so they can mean nothing but a Sluice bundle.
pub const SIGNING_CONTEXT: &[u8] = b"sluice/bundle/v1\n";
/// Largest payload accepted unless the control plane says otherwise (`--max-bundle-size`).
pub const DEFAULT_MAX_PAYLOAD: usize = 16 << 20;
/// No cap may be set above this: what a data plane is told is clamped to it, so a control plane
/// cannot make a data plane buffer arbitrary amounts.
pub const MAX_PAYLOAD_CEILING: usize = 64 << 20;
/// How long `expires_at` reaches for data planes of builds before freshness statements (which
/// check it): far enough that they never hit it between upgrades, bounded all the same. Data
/// planes of this build ignore it whenever a freshness statement covers the version.
pub const LEGACY_EXPIRY_SECS: i64 = 365 * 86_400;

/// The gRPC message limit for a payload cap: twice the cap, so a bundle over the cap still
/// arrives whole and is refused with a reason instead of breaking the stream.
pub fn message_limit(cap: usize) -> usize {
    cap.min(MAX_PAYLOAD_CEILING).saturating_mul(2)
}

/// What a signed bundle says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub fleet: String,
    /// Increases by one with every version of the fleet.
    pub version: u64,
    /// SHA-256 (hex) of the previous version's payload; empty for the first version.
    pub parent_sha256: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds after which data planes of earlier builds refuse the bundle. Data planes of
    /// this build go by freshness statements instead ([`freshness`]) and check this only for a
    /// bundle that needs no statement (one from a control plane of an earlier build).
    pub expires_at: i64,
    /// Only served with a valid freshness statement: set by control planes that issue them, so a
    /// stream that strips the statements cannot fall back to `expires_at`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requires_freshness: bool,
    /// The config document.
    pub config: serde_json::Value,
}

/// One signature over a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub key_id: String,
    pub signature: Vec<u8>,
}

/// A private key that signs bundles.
pub struct SigningKey {
    key_id: String,
    key: DalekSigningKey,
}

/// Public keys a data plane accepts signatures from, by key id. Several at once let keys rotate.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, VerifyingKey)>,
}

/// What a data plane expects of a bundle beyond its signature. Whether it is still current is
/// the freshness statement's question ([`freshness`]), not this one's.
#[derive(Debug, Clone)]
pub struct Expectations<'a> {
    pub fleet: &'a str,
    /// The version being served; a bundle must be newer.
    pub active_version: Option<u64>,
    pub max_payload: usize,
}

/// A bundle that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub payload: Payload,
    pub config: Config,
    /// SHA-256 (hex) of the payload bytes.
    pub sha256: String,
    /// The key whose signature was accepted.
    pub key_id: String,
}

/// Why a bundle was refused. The message is what a NACK carries.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VerifyError {
    #[error("payload is {size} bytes, more than the {max} byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("bundle is not signed")]
    Unsigned,
    #[error("signed only by unknown keys: {}", .0.join(", "))]
    UnknownKey(Vec<String>),
    #[error("bad signature from key {0}")]
    BadSignature(String),
    #[error("payload is not a bundle: {0}")]
    Malformed(String),
    #[error("bundle is for fleet `{got}`, this data plane serves `{expected}`")]
    WrongFleet { expected: String, got: String },
    #[error("version {version} is not newer than the active version {active}")]
    NotNewer { version: u64, active: u64 },
    #[error("bundle expired at {expires_at} (now {now})")]
    Expired { expires_at: i64, now: i64 },
    #[error("freshness: {0}")]
    Freshness(#[from] freshness::FreshnessError),
    #[error("invalid config: {0}")]
    InvalidConfig(ConfigErrors),
}

/// A key file that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SigningKeyFile {
    key_id: String,
    algorithm: String,
    secret_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrustedKeysFile {
    keys: Vec<TrustedKeyEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrustedKeyEntry {
    key_id: String,
    algorithm: String,
    public_key: String,
}

const ALGORITHM: &str = "ed25519";

// === impl Payload ===

impl Payload {
    /// The bytes that are signed and sent.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, VerifyError> {
        serde_json::from_slice(bytes).map_err(|e| VerifyError::Malformed(e.to_string()))
    }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

// === impl SigningKey ===

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| KeyError(format!("no randomness available: {e}")))?;
        Ok(Self::from_secret(&secret))
    }

    fn from_secret(secret: &[u8; 32]) -> Self {
        let key = DalekSigningKey::from_bytes(secret);
        Self { key_id: key_id(&key.verifying_key()), key }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Signs payload bytes as they will travel.
    pub fn sign(&self, payload: &[u8]) -> Signature {
        self.sign_in(SIGNING_CONTEXT, payload)
    }

    /// Signs `bytes` under a domain-separation `context`.
    pub(crate) fn sign_in(&self, context: &[u8], bytes: &[u8]) -> Signature {
        let signature = self.key.sign(&signed_message(context, bytes));
        Signature { key_id: self.key_id.clone(), signature: signature.to_bytes().to_vec() }
    }

    /// The public key, hex.
    pub fn public_key_hex(&self) -> String {
        hex(self.key.verifying_key().as_bytes())
    }

    /// The public half, as a trusted-keys file holding just this key.
    pub fn trusted_keys(&self) -> TrustedKeys {
        TrustedKeys { keys: vec![(self.key_id.clone(), self.key.verifying_key())] }
    }

    /// The key file's text (JSON). Keep it secret.
    pub fn to_file(&self) -> String {
        let file = SigningKeyFile {
            key_id: self.key_id.clone(),
            algorithm: ALGORITHM.into(),
            secret_key: hex(self.key.as_bytes()),
        };
        serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
    }

    /// Reads a key file written by [`SigningKey::to_file`].
    pub fn from_file(text: &str) -> Result<Self, KeyError> {
        let file: SigningKeyFile =
            serde_saphyr::from_str(text).map_err(|e| KeyError(format!("not a signing key file: {e}")))?;
        if file.algorithm != ALGORITHM {
            return Err(KeyError(format!(
                "unsupported algorithm {:?}, expected {ALGORITHM}",
                file.algorithm
            )));
        }
        let secret: [u8; 32] = unhex(&file.secret_key)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| KeyError("secret_key must be 64 hex digits".into()))?;
        let key = Self::from_secret(&secret);
        if key.key_id != file.key_id {
            return Err(KeyError(format!(
                "key_id {} does not match the key (it is {})",
                file.key_id, key.key_id
            )));
        }
        Ok(key)
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

// === impl TrustedKeys ===

impl TrustedKeys {
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|(id, _)| id.as_str()).collect()
    }

    /// Adds the keys of `other` (for files listing several).
    pub fn extend(&mut self, other: TrustedKeys) {
        for (id, key) in other.keys {
            if !self.keys.iter().any(|(k, _)| *k == id) {
                self.keys.push((id, key));
            }
        }
    }

    pub fn to_file(&self) -> String {
        serde_json::to_string_pretty(&self.to_entries()).unwrap_or_default() + "\n"
    }

    pub fn from_file(text: &str) -> Result<Self, KeyError> {
        let file: TrustedKeysFile =
            serde_saphyr::from_str(text).map_err(|e| KeyError(format!("not a trusted keys file: {e}")))?;
        Self::from_entries(file)
    }

    pub(crate) fn to_entries(&self) -> TrustedKeysFile {
        TrustedKeysFile {
            keys: self
                .keys
                .iter()
                .map(|(id, key)| TrustedKeyEntry {
                    key_id: id.clone(),
                    algorithm: ALGORITHM.into(),
                    public_key: hex(key.as_bytes()),
                })
                .collect(),
        }
    }

    pub(crate) fn from_entries(file: TrustedKeysFile) -> Result<Self, KeyError> {
        let mut keys = Vec::with_capacity(file.keys.len());
        for (i, entry) in file.keys.into_iter().enumerate() {
            if entry.algorithm != ALGORITHM {
                return Err(KeyError(format!("keys[{i}]: unsupported algorithm {:?}", entry.algorithm)));
            }
            let bytes: [u8; 32] = unhex(&entry.public_key)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| KeyError(format!("keys[{i}].public_key must be 64 hex digits")))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|e| KeyError(format!("keys[{i}].public_key is not an ed25519 key: {e}")))?;
            if key_id(&key) != entry.key_id {
                return Err(KeyError(format!("keys[{i}]: key_id {} does not match the key", entry.key_id)));
            }
            keys.push((entry.key_id, key));
        }
        if keys.is_empty() {
            return Err(KeyError("no keys listed".into()));
        }
        Ok(Self { keys })
    }

    /// Whether `key_id` is trusted.
    pub fn contains(&self, key_id: &str) -> bool {
        self.keys.iter().any(|(id, _)| id == key_id)
    }

    /// Checks a bundle: size, signature, payload shape, fleet, version, then the config.
    pub fn verify(
        &self,
        payload: &[u8],
        signatures: &[Signature],
        expect: &Expectations<'_>,
    ) -> Result<Verified, VerifyError> {
        if payload.len() > expect.max_payload {
            return Err(VerifyError::TooLarge { size: payload.len(), max: expect.max_payload });
        }
        let key_id = self.check(SIGNING_CONTEXT, payload, signatures)?;
        let decoded = Payload::decode(payload)?;
        if decoded.fleet != expect.fleet {
            return Err(VerifyError::WrongFleet { expected: expect.fleet.into(), got: decoded.fleet });
        }
        if let Some(active) = expect.active_version
            && decoded.version <= active
        {
            return Err(VerifyError::NotNewer { version: decoded.version, active });
        }
        let config = parse_value(&decoded.config).map_err(VerifyError::InvalidConfig)?;
        Ok(Verified { payload: decoded, config, sha256: sha256_hex(payload), key_id })
    }

    /// The trusted keys with a valid signature over `bytes` under `context`, each once.
    pub(crate) fn valid_signers(
        &self,
        context: &[u8],
        bytes: &[u8],
        signatures: &[Signature],
    ) -> Vec<String> {
        let message = signed_message(context, bytes);
        let mut signers: Vec<String> = Vec::new();
        for s in signatures {
            if signers.contains(&s.key_id) {
                continue;
            }
            if let Some((_, key)) = self.keys.iter().find(|(id, _)| *id == s.key_id)
                && verifies(key, &message, &s.signature)
            {
                signers.push(s.key_id.clone());
            }
        }
        signers
    }

    /// The first trusted key with a valid signature over `bytes` under `context`.
    pub(crate) fn check(
        &self,
        context: &[u8],
        bytes: &[u8],
        signatures: &[Signature],
    ) -> Result<String, VerifyError> {
        if signatures.is_empty() {
            return Err(VerifyError::Unsigned);
        }
        let message = signed_message(context, bytes);
        let mut unknown = Vec::new();
        let mut bad = None;
        for s in signatures {
            let Some((_, key)) = self.keys.iter().find(|(id, _)| *id == s.key_id) else {
                unknown.push(s.key_id.clone());
                continue;
            };
            if verifies(key, &message, &s.signature) {
                return Ok(s.key_id.clone());
            }
            bad.get_or_insert_with(|| s.key_id.clone());
        }
        match bad {
            Some(id) => Err(VerifyError::BadSignature(id)),
            None => Err(VerifyError::UnknownKey(unknown)),
        }
    }
}

fn verifies(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    ed25519_dalek::Signature::from_slice(signature).is_ok_and(|sig| key.verify_strict(message, &sig).is_ok())
}

fn signed_message(context: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(context.len() + payload.len());
    m.extend_from_slice(context);
    m.extend_from_slice(payload);
    m
}

/// A key's id: the first 8 bytes of the SHA-256 of its public key, in hex.
fn key_id(key: &VerifyingKey) -> String {
    hex(&Sha256::digest(key.as_bytes())[..8])
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

pub mod freshness;
pub mod trust;

#[cfg(test)]
mod tests;
