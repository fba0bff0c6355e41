//! JSON Web Key Sets: the keys a route's tokens are verified with, parsed once per change, and
//! where they come from (a watched file, or a URL fetched in the background). Never on the
//! request path: a request reads the current set with one atomic load.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;
use sluice_tls::TlsError;
use sluice_tls::upstream::UpstreamFiles;
use sluice_tls::watch::{Build, Contents, Reload as _, Watched};
use tokio::sync::Notify;

use crate::sync::lock;

/// Largest JWKS document read (file or URL).
pub const MAX_JWKS_BYTES: usize = 1 << 20;
/// Most keys kept from one set.
const MAX_KEYS: usize = 100;
/// A fetch (connect, TLS, request, body) that takes longer fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// An unknown `kid` asks for an early fetch at most this often.
const POKE_EVERY: Duration = Duration::from_secs(30);

/// The signature algorithms Sluice verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

/// One usable verification key.
#[derive(Debug)]
pub struct Jwk {
    pub kid: Option<Box<str>>,
    pub alg: Alg,
    key: PublicKey,
}

#[derive(Debug)]
enum PublicKey {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed P-256 point (`04 || x || y`).
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// The keys of one JWKS document.
#[derive(Debug)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
    /// Distinct for every set ever parsed: verified tokens remember the set that verified them.
    pub generation: u64,
}

/// Where a route's keys come from, shared by every route (and snapshot) naming the same source.
#[derive(Debug)]
pub struct KeySource {
    /// What metrics and logs call it: the file, or the URL without its query.
    pub name: Box<str>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    File(Arc<Watched<JwksFile>>),
    Url(Remote),
}

/// A JWKS file, as a watched value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwksFile(pub PathBuf);

/// A JWKS URL and what fetching it needs.
#[derive(Debug)]
struct Remote {
    url: http::Uri,
    refresh: Duration,
    tls: Option<Arc<Watched<UpstreamFiles>>>,
    keys: ArcSwapOption<KeySet>,
    /// Wakes the fetch task early: an unknown `kid`, or this source dropped.
    wake: Arc<Notify>,
    last_poke: Mutex<Option<Instant>>,
    fetched: AtomicU64,
    failed: AtomicU64,
}

/// What a route's `jwt` names as its keys; equal specs share one source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SourceSpec {
    File(PathBuf),
    Url { url: String, refresh: Duration, ca: Option<PathBuf> },
}

/// Every key source in use, by spec: a reload that keeps a route's `jwt` keeps its keys (and
/// does not fetch them again).
#[derive(Debug, Default)]
pub struct KeySources(Mutex<HashMap<SourceSpec, Weak<KeySource>>>);

/// A source's counters, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceStats {
    pub loaded: u64,
    pub failed: u64,
    pub keys: usize,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

// === impl KeySet ===

impl KeySet {
    /// Parses a JWKS document. Keys of other types, curves, algorithms or uses (`use: enc`) are
    /// skipped; a key of a supported kind that is broken, or a set with no usable key, is an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
        }
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let Some(list) = doc.get("keys").and_then(Value::as_array) else {
            return Err("not a JWKS: no \"keys\" list".into());
        };
        let mut keys = Vec::new();
        for (i, k) in list.iter().enumerate() {
            match Jwk::parse(k) {
                Ok(Some(key)) if keys.len() < MAX_KEYS => keys.push(key),
                Ok(_) => {}
                Err(e) => return Err(format!("keys[{i}]: {e}")),
            }
        }
        if keys.is_empty() {
            return Err("no usable key (RS256, ES256 or EdDSA signing keys)".into());
        }
        Ok(Self { keys, generation: GENERATION.fetch_add(1, Ordering::Relaxed) })
    }
}

// === impl Jwk ===

impl Jwk {
    /// `None`: a key Sluice does not verify with (skipped, not an error).
    fn parse(k: &Value) -> Result<Option<Self>, String> {
        let text = |name: &str| k.get(name).and_then(Value::as_str);
        if text("use").is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        let bytes = |name: &str| -> Result<Vec<u8>, String> {
            let v = text(name).ok_or_else(|| format!("no \"{name}\""))?;
            URL_SAFE_NO_PAD.decode(v).map_err(|_| format!("\"{name}\" is not base64url"))
        };
        let (alg, key) = match (text("kty"), text("crv")) {
            (Some("RSA"), _) => {
                let n = strip_zeros(bytes("n")?);
                let e = strip_zeros(bytes("e")?);
                if n.len() < 256 {
                    return Err(format!("RSA key of {} bits; at least 2048 are needed", n.len() * 8));
                }
                if n.len() > 1024 || e.is_empty() || e.len() > 8 {
                    return Err("not a usable RSA key".into());
                }
                (Alg::Rs256, PublicKey::Rsa { n, e })
            }
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (bytes("x")?, bytes("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err("a P-256 key's x and y are 32 bytes each".into());
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (Alg::Es256, PublicKey::P256(point))
            }
            (Some("OKP"), Some("Ed25519")) => {
                let x = bytes("x")?;
                if x.len() != 32 {
                    return Err("an Ed25519 key's x is 32 bytes".into());
                }
                (Alg::EdDsa, PublicKey::Ed25519(x))
            }
            _ => return Ok(None),
        };
        // A key bound to another algorithm (RS512, ES384…) is not one of ours.
        if let Some(named) = text("alg")
            && Alg::from_name(named) != Some(alg)
        {
            return Ok(None);
        }
        Ok(Some(Self { kid: text("kid").map(Into::into), alg, key }))
    }

    /// Whether `sig` signs `message` with this key.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        match &self.key {
            PublicKey::Rsa { n, e } => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            PublicKey::P256(point) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, sig)
                .is_ok(),
            PublicKey::Ed25519(x) => {
                UnparsedPublicKey::new(&signature::ED25519, x).verify(message, sig).is_ok()
            }
        }
    }
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

// === impl Alg ===

impl Alg {
    /// The JWS `alg` name; `None` for every other (`none`, `HS256`, `RS512`…).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }
}

// === impl JwksFile ===

impl Build for JwksFile {
    type Output = KeySet;

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.0.clone()]
    }

    fn build(&self, contents: &Contents) -> Result<(KeySet, Option<sluice_tls::CertInfo>), TlsError> {
        KeySet::parse(contents.get(&self.0))
            .map(|k| (k, None))
            .map_err(|reason| TlsError::Invalid { path: self.0.clone(), reason })
    }
}

// === impl KeySources ===

impl KeySources {
    /// The source for `spec`: the one in use if a snapshot holds it, else read (a file) or
    /// started (a URL: fetched in the background from now on) here. Errors name what is wrong.
    pub fn get(&self, spec: &SourceSpec) -> Result<Arc<KeySource>, String> {
        let mut known = lock(&self.0);
        known.retain(|_, w| w.strong_count() > 0);
        if let Some(s) = known.get(spec).and_then(Weak::upgrade) {
            return Ok(s);
        }
        let runtime = tokio::runtime::Handle::try_current().is_ok();
        let source = match spec {
            SourceSpec::File(path) => {
                let watched = Watched::load("jwks", JwksFile(path.clone())).map_err(|e| e.to_string())?;
                if runtime {
                    watched.spawn(sluice_tls::watch::DEFAULT_INTERVAL);
                }
                Arc::new(KeySource { name: path.display().to_string().into(), kind: Kind::File(watched) })
            }
            SourceSpec::Url { url, refresh, ca } => {
                let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
                let https = uri.scheme_str() == Some("https");
                let tls = https
                    .then(|| {
                        let files = UpstreamFiles {
                            ca: ca.clone(),
                            identity: None,
                            alpn: vec![b"http/1.1".to_vec()],
                            verify: true,
                        };
                        Watched::load("jwks_url", files).map_err(|e| e.to_string())
                    })
                    .transpose()?;
                let name = url.split('?').next().unwrap_or_default().into();
                let remote = Remote {
                    url: uri,
                    refresh: *refresh,
                    tls,
                    keys: ArcSwapOption::empty(),
                    wake: Arc::new(Notify::new()),
                    last_poke: Mutex::new(None),
                    fetched: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                };
                let source = Arc::new(KeySource { name, kind: Kind::Url(remote) });
                if runtime {
                    tokio::spawn(fetch_loop(Arc::downgrade(&source)));
                }
                source
            }
        };
        known.insert(spec.clone(), Arc::downgrade(&source));
        Ok(source)
    }
}

// === impl KeySource ===

impl KeySource {
    /// The keys in use; `None` until a URL's first fetch succeeded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        match &self.kind {
            Kind::File(w) => Some(w.current()),
            Kind::Url(r) => r.keys.load_full(),
        }
    }

    /// A token named a key the set does not have: a URL is fetched again soon (at most every
    /// 30 s), since a provider may have rotated its keys.
    pub fn unknown_key(&self) {
        if let Kind::Url(r) = &self.kind {
            let mut last = lock(&r.last_poke);
            if last.is_none_or(|t| t.elapsed() >= POKE_EVERY) {
                *last = Some(Instant::now());
                r.wake.notify_one();
            }
        }
    }

    /// Reads a file source again now (tests; the watcher does this every few seconds).
    #[cfg(test)]
    pub fn reload(&self) -> bool {
        match &self.kind {
            Kind::File(w) => w.check(),
            Kind::Url(_) => false,
        }
    }

    pub fn stats(&self) -> SourceStats {
        let keys = self.current().map_or(0, |k| k.keys.len());
        match &self.kind {
            Kind::File(w) => {
                let s = w.status();
                SourceStats { loaded: s.reloads + 1, failed: s.failures, keys }
            }
            Kind::Url(r) => SourceStats {
                loaded: r.fetched.load(Ordering::Relaxed),
                failed: r.failed.load(Ordering::Relaxed),
                keys,
            },
        }
    }
}

impl Drop for KeySource {
    fn drop(&mut self) {
        // The fetch task is waiting; it wakes, finds no source and ends.
        if let Kind::Url(r) = &self.kind {
            r.wake.notify_one();
        }
    }
}

/// Fetches a URL source at once, then every `refresh`; after a failure again in 1 s, doubling
/// up to `refresh`, keeping the keys it has. Ends when no snapshot holds the source.
async fn fetch_loop(source: Weak<KeySource>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let Some(s) = source.upgrade() else { return };
        let Kind::Url(r) = &s.kind else { return };
        let wait = match tokio::time::timeout(FETCH_TIMEOUT, r.fetch())
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())))
        {
            Ok(keys) => {
                tracing::info!(jwks = %s.name, keys = keys.keys.len(), "fetched JWKS");
                r.keys.store(Some(Arc::new(keys)));
                r.fetched.fetch_add(1, Ordering::Relaxed);
                backoff = Duration::from_secs(1);
                r.refresh
            }
            Err(error) => {
                r.failed.fetch_add(1, Ordering::Relaxed);
                let kept = r.keys.load().is_some();
                tracing::warn!(jwks = %s.name, %error, kept_previous_keys = kept, "cannot fetch JWKS");
                let wait = backoff;
                backoff = (backoff * 2).min(r.refresh);
                wait
            }
        };
        let wake = r.wake.clone();
        drop(s);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
        }
    }
}

// === impl Remote ===

impl Remote {
    async fn fetch(&self) -> Result<KeySet, String> {
        let host = self.url.host().ok_or("the URL names no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let https = self.tls.is_some();
        let port = self.url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.get(tcp).await,
            Some(tls) => {
                let name = sluice_tls::rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|_| format!("{host} is not a name TLS can verify"))?;
                let connector = sluice_tls::tokio_rustls::TlsConnector::from(tls.current());
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {host}: {}", sluice_tls::upstream::failure_reason(&e)))?;
                self.get(stream).await
            }
        }
    }

    /// One `GET` over `io`: a 200 with a JWKS of at most [`MAX_JWKS_BYTES`].
    async fn get<I>(&self, io: I) -> Result<KeySet, String>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use http_body_util::{BodyExt as _, Empty, Limited};

        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let target = self.url.path_and_query().map_or("/", |p| p.as_str());
        let authority = self.url.authority().map_or("", |a| a.as_str());
        let req = http::Request::get(target)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "sluice-proxy")
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        KeySet::parse(&body)
    }
}
