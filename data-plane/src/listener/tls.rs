//! A listener's TLS: the certificates it serves, chosen by SNI; the handshake, counted by
//! outcome; what each connection learned from it.
//!
//! Every apply reads the files again (one that went missing or does not fit is a NACK naming
//! its field), and each certificate's files are watched from then on: a rotated certificate is
//! served from the next handshake, connections already open keep theirs. Session-ticket keys
//! outlive applies ([`Resumptions`]), so a config change does not send every client back to a
//! full handshake.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use sluice_bundle::{ClientAuthMode, ConfigError, ListenerTls, StringRule};
use sluice_tls::edge::{self, EdgeFiles, Failure, PeerCertificate, Resumption};
use sluice_tls::server::HANDSHAKE_TIMEOUT;
use sluice_tls::tokio_rustls::server::TlsStream;
use sluice_tls::watch::DEFAULT_INTERVAL;
use sluice_tls::{ClientAuth, Reload, ServerFiles, TlsError, Watched, WatchedStatus};
use tokio::net::TcpStream;

use crate::sync::lock;

/// A listener's certificates, as one apply loaded them.
pub(crate) struct EdgeTls {
    entries: Box<[Entry]>,
    /// Served when no name matches, or the client sends none.
    default: usize,
}

struct Entry {
    watched: Arc<Watched<EdgeFiles>>,
    /// The names it answers, lower-case; empty: the DNS names of its certificate.
    names: Box<[Box<str>]>,
    /// The client authentication in force for its names (421 compares them).
    client_auth: Option<sluice_bundle::ClientAuth>,
}

/// Session-resumption state by client authentication, kept across applies: sessions resume
/// only where they were verified the same way (rustls also checks the SNI on resumption).
#[derive(Default)]
pub(crate) struct Resumptions(Mutex<Vec<(Option<sluice_bundle::ClientAuth>, Resumption)>>);

/// What a TLS handshake established for one connection.
pub(crate) struct TlsFacts {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The name the client asked for, lower-case.
    pub sni: Option<Box<str>>,
    /// ALPN chose HTTP/2.
    pub h2: bool,
    /// The listener's certificates when the connection was made, and the one it got.
    pub edge: Arc<EdgeTls>,
    pub entry: usize,
    /// The client's certificate, verified against the entry's client CA.
    pub peer: Option<PeerCertificate>,
    /// `X-Forwarded-Client-Cert` for that certificate, made once per connection.
    pub xfcc: Option<HeaderValue>,
}

/// What `/listeners` shows of one certificate.
pub(crate) struct CertView {
    /// The names it answers as configured; empty: the certificate's DNS names.
    pub server_names: Vec<Box<str>>,
    pub default: bool,
    /// `required` or `optional`; `None`: no client certificates asked for.
    pub client_auth: Option<&'static str>,
    /// What the certificate in use says (it may have been rotated since the apply).
    pub cert: sluice_tls::CertInfo,
    /// Its files: path, reloads, refused reloads.
    pub status: WatchedStatus,
}

/// Handshakes on one listener, by TLS version and by failure reason.
#[derive(Debug, Default)]
pub struct TlsCounters {
    /// TLS 1.3, TLS 1.2.
    handshakes: [AtomicU64; 2],
    failures: [AtomicU64; Failure::ALL.len()],
}

/// A route's client-certificate requirement, compiled.
#[derive(Debug)]
pub(crate) struct ClientCertRule {
    subject: Option<Matcher>,
    /// Some SAN must match one of these; empty: any certificate.
    san: Box<[Matcher]>,
}

#[derive(Debug)]
enum Matcher {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Anchored: the whole string matches.
    Regex(regex::Regex),
}

// === impl ClientCertRule ===

impl ClientCertRule {
    /// Compiles a validated rule (its regexes were checked when the config was parsed).
    pub fn compile(rule: &sluice_bundle::ClientCertificateRule) -> Self {
        Self {
            subject: rule.subject.as_ref().map(Matcher::compile),
            san: rule.san.iter().map(Matcher::compile).collect(),
        }
    }

    /// Whether `tls` carries a verified certificate this rule lets through; why not otherwise.
    pub fn check(&self, tls: Option<&TlsFacts>) -> Result<(), &'static str> {
        let Some(peer) = tls.and_then(|t| t.peer.as_ref()) else {
            return Err("none was presented over TLS");
        };
        if self.subject.as_ref().is_some_and(|m| !m.matches(&peer.info.subject)) {
            return Err("its subject does not match");
        }
        if !self.san.is_empty() && !peer.info.sans().any(|san| self.san.iter().any(|m| m.matches(san))) {
            return Err("none of its subject alternative names matches");
        }
        Ok(())
    }
}

// === impl Matcher ===

impl Matcher {
    fn compile(m: &sluice_bundle::StringMatch) -> Self {
        match m.rule() {
            StringRule::Exact(v) => Self::Exact(v.into()),
            StringRule::Prefix(v) => Self::Prefix(v.into()),
            StringRule::Suffix(v) => Self::Suffix(v.into()),
            StringRule::Regex(v) => match regex::Regex::new(&format!("^(?:{v})$")) {
                Ok(r) => Self::Regex(r),
                // Parsing refused bad regexes; should one slip through, it matches nothing.
                Err(_) => Self::Regex(regex::Regex::new("[^\\s\\S]").expect("a valid regex")),
            },
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Self::Exact(v) => s == &**v,
            Self::Prefix(v) => s.starts_with(&**v),
            Self::Suffix(v) => s.ends_with(&**v),
            Self::Regex(r) => r.is_match(s),
        }
    }
}

// === impl EdgeTls ===

impl EdgeTls {
    /// Reads every certificate of listener `index` and starts watching its files. Problems are
    /// added to `errors`, each with the config path of the field whose file it is.
    pub fn load(
        index: usize,
        spec: &ListenerTls,
        resumptions: &Resumptions,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Self> {
        let alpn: Vec<Vec<u8>> =
            spec.alpn_or_default().iter().map(|a| a.as_str().as_bytes().to_vec()).collect();
        let mut entries = Vec::with_capacity(spec.certificates.len());
        for (i, cert) in spec.certificates.iter().enumerate() {
            let auth = spec.client_auth_for(i);
            let files = ServerFiles {
                cert: cert.cert_file.clone().into(),
                key: cert.key_file.clone().into(),
                client_ca: auth.map(|a| a.ca_file.clone().into()),
                crl: auth.and_then(|a| a.crl_file.clone().map(Into::into)),
                client_auth: match auth.map(sluice_bundle::ClientAuth::mode_or_default) {
                    None => ClientAuth::Off,
                    Some(ClientAuthMode::Optional) => ClientAuth::Optional,
                    Some(ClientAuthMode::Required) => ClientAuth::Required,
                },
                alpn: alpn.clone(),
            };
            let loaded = resumptions
                .get(auth)
                .and_then(|resumption| Watched::load("listener", EdgeFiles { files, resumption }));
            match loaded {
                Ok(watched) => {
                    watched.spawn(DEFAULT_INTERVAL);
                    entries.push(Entry {
                        watched,
                        names: cert.server_names.iter().map(|n| n.to_ascii_lowercase().into()).collect(),
                        client_auth: auth.cloned(),
                    });
                }
                Err(e) => {
                    let own_auth = cert.client_auth.is_some();
                    let path = field_path(index, i, own_auth, &e, cert, auth);
                    let error = ConfigError { path, message: e.to_string() };
                    // A listener-wide CA that fails, fails for every certificate: say it once.
                    if !errors.contains(&error) {
                        errors.push(error);
                    }
                }
            }
        }
        (entries.len() == spec.certificates.len())
            .then(|| Self { entries: entries.into(), default: spec.default_index() })
    }

    /// The certificate for a client asking for `name`: an exact name first (configured, or in
    /// the certificate of an entry that configures none), then a wildcard, then the default.
    pub fn choose(&self, name: Option<&str>) -> usize {
        let Some(name) = name else { return self.default };
        for wildcard in [false, true] {
            for (i, e) in self.entries.iter().enumerate() {
                let covers = |pattern: &str| {
                    pattern.starts_with("*.") == wildcard && edge::name_matches(pattern, name)
                };
                let found = if e.names.is_empty() {
                    e.watched.current().cert.dns.iter().any(|d| covers(d))
                } else {
                    e.names.iter().any(|n| covers(n))
                };
                if found {
                    return i;
                }
            }
        }
        self.default
    }

    /// Whether the names of entries `a` and `b` ask for client certificates the same way.
    pub fn same_client_auth(&self, a: usize, b: usize) -> bool {
        a == b || self.entries[a].client_auth == self.entries[b].client_auth
    }

    /// Completes a handshake on `tcp`, counting how it went.
    pub async fn accept(
        self: &Arc<Self>,
        tcp: TcpStream,
        counters: &TlsCounters,
    ) -> Result<(TlsStream<TcpStream>, TlsFacts), Failure> {
        let accepted = edge::accept(tcp, HANDSHAKE_TIMEOUT, |sni| {
            let entry = self.choose(sni);
            (self.entries[entry].watched.current().config.clone(), entry)
        })
        .await;
        let (stream, entry) = match accepted {
            Ok(ok) => ok,
            Err(failure) => {
                counters.failures[failure as usize].fetch_add(1, Ordering::Relaxed);
                return Err(failure);
            }
        };
        let n = edge::negotiated(&stream);
        counters.handshakes[usize::from(n.version == "TLSv1.2")].fetch_add(1, Ordering::Relaxed);
        let xfcc = n.peer.as_ref().map(|p| xfcc(p, &self.entries[entry].watched.current().cert.uris));
        let facts = TlsFacts {
            version: n.version,
            sni: n.sni,
            h2: n.h2,
            edge: self.clone(),
            entry,
            peer: n.peer,
            xfcc,
        };
        Ok((stream, facts))
    }

    /// Re-reads every certificate's files now (SIGHUP).
    pub fn reload(&self) {
        for e in self.entries.iter() {
            e.watched.check();
        }
    }

    /// Every certificate, as `/listeners` shows it.
    pub fn certificates(&self) -> Vec<CertView> {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, e)| CertView {
                server_names: e.names.to_vec(),
                default: i == self.default,
                client_auth: e.client_auth.as_ref().map(|a| match a.mode_or_default() {
                    ClientAuthMode::Required => "required",
                    ClientAuthMode::Optional => "optional",
                }),
                cert: e.watched.current().cert.clone(),
                status: e.watched.status(),
            })
            .collect()
    }

    /// What each certificate's files report (expiry, reloads, failures).
    pub fn statuses(&self) -> impl Iterator<Item = WatchedStatus> + '_ {
        self.entries.iter().map(|e| e.watched.status())
    }
}

/// The config path of the field whose file `e` is about.
fn field_path(
    listener: usize,
    cert: usize,
    own_auth: bool,
    e: &TlsError,
    spec: &sluice_bundle::ServerCertificate,
    auth: Option<&sluice_bundle::ClientAuth>,
) -> String {
    let base = format!("listeners[{listener}].tls");
    let file = match e {
        TlsError::Read { path, .. }
        | TlsError::NoCertificate { path }
        | TlsError::NoKey { path }
        | TlsError::Pem { path, .. }
        | TlsError::Certificate { path, .. }
        | TlsError::Invalid { path, .. } => path.to_string_lossy().into_owned(),
        TlsError::KeyMismatch { key, .. } => key.to_string_lossy().into_owned(),
    };
    let auth_base = if own_auth {
        format!("{base}.certificates[{cert}].client_auth")
    } else {
        format!("{base}.client_auth")
    };
    if file == spec.key_file {
        format!("{base}.certificates[{cert}].key_file")
    } else if auth.is_some_and(|a| a.ca_file == file) {
        format!("{auth_base}.ca_file")
    } else if auth.is_some_and(|a| a.crl_file.as_deref() == Some(&file)) {
        format!("{auth_base}.crl_file")
    } else {
        format!("{base}.certificates[{cert}].cert_file")
    }
}

/// `X-Forwarded-Client-Cert` as Envoy writes it: `By` (the proxy's own URI SAN, if any),
/// `Hash`, `Subject`, each `URI` and `DNS` SAN. A value with `,`, `;` or `=` is quoted, and
/// `Subject` always is. Control characters in a certificate leave only `By` and `Hash`.
fn xfcc(peer: &PeerCertificate, own_uris: &[String]) -> HeaderValue {
    fn pair(out: &mut String, key: &str, value: &str, quote: bool) {
        if !out.is_empty() {
            out.push(';');
        }
        out.push_str(key);
        out.push('=');
        if quote || value.contains([',', ';', '=']) {
            out.push('"');
            for c in value.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        } else {
            out.push_str(value);
        }
    }
    let mut out = String::with_capacity(160);
    if let Some(by) = own_uris.first() {
        pair(&mut out, "By", by, false);
    }
    pair(&mut out, "Hash", &peer.sha256, false);
    let hashed = out.len();
    pair(&mut out, "Subject", &peer.info.subject, true);
    for uri in &peer.info.uris {
        pair(&mut out, "URI", uri, false);
    }
    for dns in &peer.info.dns {
        pair(&mut out, "DNS", dns, false);
    }
    HeaderValue::from_str(&out)
        .or_else(|_| HeaderValue::from_str(&out[..hashed]))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

// === impl Resumptions ===

impl Resumptions {
    /// The resumption state for `auth`, made on first use (which fails only if the system's
    /// random source does).
    fn get(&self, auth: Option<&sluice_bundle::ClientAuth>) -> Result<Resumption, TlsError> {
        let mut all = lock(&self.0);
        if let Some((_, r)) = all.iter().find(|(a, _)| a.as_ref() == auth) {
            return Ok(r.clone());
        }
        let r = Resumption::new()?;
        all.push((auth.cloned(), r.clone()));
        Ok(r)
    }

    /// Forgets client authentications no listener uses any more.
    pub fn retain(&self, specs: &[sluice_bundle::Listener]) {
        let in_use = |auth: &Option<sluice_bundle::ClientAuth>| {
            specs
                .iter()
                .filter_map(|l| l.tls.as_ref())
                .any(|t| (0..t.certificates.len()).any(|i| t.client_auth_for(i) == auth.as_ref()))
        };
        lock(&self.0).retain(|(a, _)| in_use(a));
    }
}

// === impl TlsCounters ===

impl TlsCounters {
    /// `(version, count)` of finished handshakes.
    pub fn handshakes(&self) -> [(&'static str, u64); 2] {
        [
            ("TLSv1.3", self.handshakes[0].load(Ordering::Relaxed)),
            ("TLSv1.2", self.handshakes[1].load(Ordering::Relaxed)),
        ]
    }

    /// `(reason, count)` of failed handshakes, zeros included.
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Failure::ALL.iter().map(|f| (f.as_str(), self.failures[*f as usize].load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests;
