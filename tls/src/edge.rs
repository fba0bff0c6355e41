//! TLS termination for the proxy's listeners: a server config per certificate, chosen by the
//! client's SNI before the handshake goes on; failures sorted into reasons an operator can count;
//! the facts of a finished handshake (version, SNI, ALPN, the verified client certificate).
//!
//! Each certificate gets its own [`ServerConfig`], so each name can have its own client
//! authentication (rustls verifies client certificates per config, not per certificate). The
//! config is rebuilt by [`Watched`](crate::Watched) when any of its files change; session
//! resumption state ([`Resumption`]) is created by the caller and survives those rebuilds.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::{Acceptor, ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::watch::{Build, Contents};
use crate::{CertInfo, ServerFiles, TlsError, server_config};

/// TLS 1.2 sessions remembered by id, per [`Resumption`] (TLS 1.3 and most 1.2 clients use
/// tickets, which cost no memory here).
const SESSION_CACHE: usize = 1024;

/// Session resumption shared by the configs that may resume each other's sessions: those with
/// the same client authentication (a session verified under one CA must not resume under a
/// stricter one). Ticket keys rotate every six hours, and start over whenever the client CA or
/// CRL files change: a session verified before a certificate was revoked must not resume after.
#[derive(Clone)]
pub struct Resumption(Arc<Mutex<Keys>>);

type Tickets = Arc<dyn ProducesTickets>;
type Sessions = Arc<dyn StoresServerSessions>;

struct Keys {
    /// SHA-256 of the client CA and CRL contents the keys were made under.
    trust: [u8; 32],
    tickets: Tickets,
    sessions: Sessions,
}

/// One certificate's server: its files and the resumption state it shares.
#[derive(Clone)]
pub struct EdgeFiles {
    pub files: ServerFiles,
    pub resumption: Resumption,
}

/// What an [`EdgeFiles`] builds: the config to hand a handshake, and what its certificate says
/// (its DNS names choose it when the config names none).
#[derive(Debug)]
pub struct EdgeConfig {
    pub config: Arc<ServerConfig>,
    pub cert: CertInfo,
}

/// Why a TLS handshake did not finish, in the words metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The client sent nothing TLS-shaped (plain HTTP, say).
    NotTls,
    /// A TLS record or handshake message that does not parse (a truncated ClientHello, an SNI
    /// longer than allowed).
    Malformed,
    /// Only protocol versions Sluice does not speak (SSLv3, TLS 1.0, 1.1).
    ProtocolVersion,
    /// No cipher suite, key exchange group or signature scheme in common.
    NoSharedParameters,
    /// A client certificate was required and none was sent.
    ClientCertificateMissing,
    /// The client's certificate did not verify (another CA, expired, revoked).
    ClientCertificateInvalid,
    /// The client ended the handshake with an alert (it did not trust the certificate, say).
    AlertReceived,
    /// The client closed the connection mid-handshake.
    Closed,
    /// The handshake took longer than allowed.
    Timeout,
    Other,
}

/// What a finished handshake established.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The server name the client asked for, lower-case.
    pub sni: Option<Box<str>>,
    /// ALPN chose HTTP/2.
    pub h2: bool,
    /// The client's certificate, verified by the config's client CA.
    pub peer: Option<PeerCertificate>,
}

/// A verified client certificate.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    pub info: CertInfo,
    /// SHA-256 of its DER, lower-case hex (XFCC's `Hash`).
    pub sha256: String,
}

// === impl Resumption ===

impl Resumption {
    pub fn new() -> Result<Self, TlsError> {
        Ok(Self(Arc::new(Mutex::new(Keys::new([0; 32])?))))
    }

    /// The ticket keys and session cache for configs trusting `trust` (a hash of the client CA
    /// and CRL contents): the current ones, or new ones if the trust changed.
    fn keys(&self, trust: [u8; 32]) -> Result<(Tickets, Sessions), TlsError> {
        let mut keys = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.trust != trust {
            *keys = Keys::new(trust)?;
        }
        Ok((keys.tickets.clone(), keys.sessions.clone()))
    }
}

impl Keys {
    fn new(trust: [u8; 32]) -> Result<Self, TlsError> {
        #[allow(deprecated)] // the ring provider: see `crate::provider`
        let tickets = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError::Invalid { path: "session tickets".into(), reason: e.to_string() })?;
        Ok(Self { trust, tickets, sessions: ServerSessionMemoryCache::new(SESSION_CACHE) })
    }
}

impl std::fmt::Debug for Resumption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resumption")
    }
}

// === impl EdgeFiles ===

impl Build for EdgeFiles {
    type Output = EdgeConfig;

    fn paths(&self) -> Vec<std::path::PathBuf> {
        self.files.paths()
    }

    fn cert_file(&self) -> Option<std::path::PathBuf> {
        Some(self.files.cert.clone())
    }

    fn build(&self, contents: &Contents) -> Result<(EdgeConfig, Option<CertInfo>), TlsError> {
        let (mut config, cert) = server_config(&self.files, contents)?;
        let mut trust = Sha256::new();
        for path in self.files.client_ca.iter().chain(&self.files.crl) {
            trust.update(contents.get(path));
        }
        (config.ticketer, config.session_storage) = self.resumption.keys(trust.finalize().into())?;
        Ok((EdgeConfig { config: Arc::new(config), cert: cert.clone() }, Some(cert)))
    }
}

// === impl Failure ===

impl Failure {
    pub const ALL: [Failure; 10] = [
        Self::NotTls,
        Self::Malformed,
        Self::ProtocolVersion,
        Self::NoSharedParameters,
        Self::ClientCertificateMissing,
        Self::ClientCertificateInvalid,
        Self::AlertReceived,
        Self::Closed,
        Self::Timeout,
        Self::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotTls => "not_tls",
            Self::Malformed => "malformed",
            Self::ProtocolVersion => "protocol_version",
            Self::NoSharedParameters => "no_shared_parameters",
            Self::ClientCertificateMissing => "client_certificate_missing",
            Self::ClientCertificateInvalid => "client_certificate_invalid",
            Self::AlertReceived => "alert_received",
            Self::Closed => "closed",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }

    /// Sorts what the handshake returned.
    pub fn of(e: &io::Error) -> Self {
        use rustls::{Error as E, InvalidMessage, PeerIncompatible as P, PeerMisbehaved as M};
        let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) else {
            return match e.kind() {
                io::ErrorKind::UnexpectedEof
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => Self::Closed,
                io::ErrorKind::TimedOut => Self::Timeout,
                _ => Self::Other,
            };
        };
        match tls {
            E::InvalidMessage(InvalidMessage::InvalidContentType) => Self::NotTls,
            E::InvalidMessage(_)
            | E::InappropriateHandshakeMessage { .. }
            | E::InappropriateMessage { .. } => Self::Malformed,
            E::PeerIncompatible(
                P::SupportedVersionsExtensionRequired | P::Tls12NotOffered | P::Tls12NotOfferedOrEnabled,
            ) => Self::ProtocolVersion,
            E::PeerIncompatible(_) => Self::NoSharedParameters,
            // An SNI that is no host name (too long, bad characters) included.
            E::PeerMisbehaved(M::IllegalMiddleboxChangeCipherSpec | M::ServerNameMustContainOneHostName) => {
                Self::Malformed
            }
            E::NoCertificatesPresented => Self::ClientCertificateMissing,
            E::InvalidCertificate(_) | E::InvalidCertRevocationList(_) => Self::ClientCertificateInvalid,
            E::AlertReceived(_) => Self::AlertReceived,
            _ => Self::Other,
        }
    }
}

/// Reads the ClientHello, lets `choose` pick the config (and say which) from the SNI, and
/// finishes the handshake, all within `timeout`.
pub async fn accept<IO, T>(
    io: IO,
    timeout: Duration,
    choose: impl FnOnce(Option<&str>) -> (Arc<ServerConfig>, T),
) -> Result<(TlsStream<IO>, T), Failure>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io).await.map_err(|e| Failure::of(&e))?;
        let (config, chosen) = choose(start.client_hello().server_name());
        let stream = start.into_stream(config).await.map_err(|e| Failure::of(&e))?;
        Ok((stream, chosen))
    };
    tokio::time::timeout(timeout, handshake).await.unwrap_or(Err(Failure::Timeout))
}

/// What the finished handshake on `stream` established.
pub fn negotiated<IO>(stream: &TlsStream<IO>) -> Negotiated {
    let (_, conn) = stream.get_ref();
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLSv1.3",
    };
    let peer = conn.peer_certificates().and_then(|chain| chain.first()).and_then(|leaf| {
        let info = CertInfo::parse(leaf).ok()?;
        let sha256 = Sha256::digest(leaf).iter().map(|b| format!("{b:02x}")).collect();
        Some(PeerCertificate { info, sha256 })
    });
    Negotiated {
        version,
        sni: conn.server_name().map(|s| s.to_ascii_lowercase().into_boxed_str()),
        h2: conn.alpn_protocol() == Some(b"h2"),
        peer,
    }
}

/// Whether `name` (lower-case) is covered by `pattern`: equal (ignoring case), or `*.suffix` with
/// exactly one label in place of the star.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests;
