//! TLS from a pool to its endpoints: the pool's client config, read from the node's files when a
//! config is applied and watched after; the name each endpoint is verified against; the handshake
//! of a new connection and what a failed one is called.
//!
//! Pools naming the same files share one watched config ([`TlsFiles`]). A file that cannot be
//! used at apply refuses the config, naming the field (`pools[2].tls.key_file: …`); a file that
//! breaks later keeps the last good config (`sluice_tls_reload_failures_total`). A changed
//! certificate is used by new connections; a changed setting retires the pool's connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use sluice_bundle::{Alpn, ConfigError, UpstreamProtocol};
use sluice_tls::rustls::pki_types::ServerName;
use sluice_tls::tokio_rustls::TlsConnector;
use sluice_tls::tokio_rustls::client::TlsStream;
use sluice_tls::upstream::{failure_reason, tls_error};
use sluice_tls::{Reload, TlsError, UpstreamFiles, Watched, WatchedStatus};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::sync::lock;

/// A pool's TLS, as its connections use it. Equal when the config says the same (files, SNI):
/// new file contents alone are no reason to close connections.
#[derive(Clone)]
pub struct PoolTls {
    config: Arc<Watched<UpstreamFiles>>,
    /// The configured `sni`; else each endpoint's host.
    sni: Option<Box<str>>,
}

/// Watched configs by the files they are built from, while a snapshot uses them.
#[derive(Debug, Default)]
pub(super) struct TlsFiles(Mutex<HashMap<UpstreamFiles, Weak<Watched<UpstreamFiles>>>>);

// === impl PoolTls ===

impl PoolTls {
    /// Pool `index`'s TLS from its config, its files read now (or shared with a pool already
    /// using them).
    pub(super) fn compile(
        index: usize,
        cfg: &sluice_bundle::Pool,
        files: &TlsFiles,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(tls) = &cfg.tls else { return Ok(None) };
        let alpn = match &tls.alpn {
            Some(list) => list.iter().map(|a| token(*a).to_vec()).collect(),
            None => vec![
                token(match cfg.protocol_or_default() {
                    UpstreamProtocol::Http1 => Alpn::Http1,
                    UpstreamProtocol::Http2 => Alpn::H2,
                })
                .to_vec(),
            ],
        };
        let wanted = UpstreamFiles {
            ca: tls.ca_file.as_ref().map(Into::into),
            identity: tls.cert_file.as_ref().zip(tls.key_file.as_ref()).map(|(c, k)| (c.into(), k.into())),
            alpn,
            verify: !tls.insecure_skip_verify.unwrap_or(false),
        };
        let config = files.get(wanted).map_err(|e| {
            // The field the file came from, so the NACK points at the line to fix.
            let named = |p: &std::path::Path| Some(p.to_str()?.to_owned());
            let path = match &e {
                TlsError::KeyMismatch { .. } | TlsError::NoKey { .. } => Some("key_file"),
                TlsError::Read { path, .. }
                | TlsError::NoCertificate { path }
                | TlsError::Pem { path, .. }
                | TlsError::Certificate { path, .. }
                | TlsError::Invalid { path, .. } => {
                    let p = named(path);
                    [("ca_file", &tls.ca_file), ("cert_file", &tls.cert_file), ("key_file", &tls.key_file)]
                        .into_iter()
                        .find(|(_, f)| f.is_some() && **f == p)
                        .map(|(field, _)| field)
                }
            };
            let at = match path {
                Some(field) => format!("pools[{index}].tls.{field}"),
                None => format!("pools[{index}].tls"),
            };
            ConfigError { path: at, message: e.to_string() }
        })?;
        Ok(Some(Self { config, sni: tls.sni.as_deref().map(Into::into) }))
    }

    /// The name endpoint `address` is verified against (and sent as SNI): the configured `sni`,
    /// else its host, a DNS name or an IP address.
    pub(super) fn server_name(&self, address: &str) -> Result<ServerName<'static>, String> {
        if let Some(sni) = &self.sni {
            return ServerName::try_from(sni.to_string()).map_err(|e| format!("{sni:?}: {e}"));
        }
        if let Ok(socket) = address.parse::<SocketAddr>() {
            return Ok(ServerName::IpAddress(socket.ip().into()));
        }
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        ServerName::try_from(host.to_owned())
            .map_err(|_| format!("{host:?} is not a DNS name to verify a certificate against; set tls.sni"))
    }

    /// The watched client config (shared by the pools naming the same files).
    pub fn watched(&self) -> Arc<Watched<UpstreamFiles>> {
        self.config.clone()
    }

    /// Whether endpoints' certificates are verified (`insecure_skip_verify` is not set).
    pub fn verifies(&self) -> bool {
        self.config.source().verify
    }

    /// The configured SNI (`None`: each endpoint's host).
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// Whether the proxy presents a client certificate (mTLS to the endpoints).
    pub fn presents_certificate(&self) -> bool {
        self.config.source().identity.is_some()
    }

    /// What `/metrics` says about its files (`role="upstream"`; the pool labels it).
    pub(super) fn status(&self) -> WatchedStatus {
        self.config.status()
    }

    /// Re-reads its files now (SIGHUP).
    pub(super) fn reload(&self) {
        self.config.check();
    }

    /// The TLS handshake on a new connection, finished by `deadline` (the connect timeout's).
    /// The protocol the endpoint agrees to over ALPN must be the pool's: HTTP/2 is spoken to
    /// an endpoint only when it said `h2`.
    pub(super) async fn handshake(
        &self,
        tcp: TcpStream,
        name: &ServerName<'static>,
        protocol: UpstreamProtocol,
        deadline: Instant,
    ) -> Result<TlsStream<TcpStream>, String> {
        let connector = TlsConnector::from(self.config.current());
        let stream = match tokio::time::timeout_at(deadline, connector.connect(name.clone(), tcp)).await {
            Err(_) => return Err("no handshake within the connect timeout".into()),
            Ok(Err(e)) => return Err(failure_reason(&e)),
            Ok(Ok(stream)) => stream,
        };
        match (protocol, stream.get_ref().1.alpn_protocol()) {
            (UpstreamProtocol::Http2, Some(b"h2")) | (UpstreamProtocol::Http1, None | Some(b"http/1.1")) => {
                Ok(stream)
            }
            (UpstreamProtocol::Http2, _) => Err("the endpoint did not agree to HTTP/2 (ALPN h2)".into()),
            (UpstreamProtocol::Http1, Some(other)) => Err(format!(
                "the endpoint chose ALPN {:?} for an HTTP/1.1 pool",
                String::from_utf8_lossy(other)
            )),
        }
    }
}

impl PartialEq for PoolTls {
    fn eq(&self, other: &Self) -> bool {
        self.config.source() == other.config.source() && self.sni == other.sni
    }
}

impl Eq for PoolTls {}

impl std::fmt::Debug for PoolTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolTls").field("files", self.config.source()).field("sni", &self.sni).finish()
    }
}

// === impl TlsFiles ===

impl TlsFiles {
    /// The watched config built from `files`: the one in use if a snapshot holds it, else read
    /// now and watched from here on (until no snapshot uses it).
    fn get(&self, files: UpstreamFiles) -> Result<Arc<Watched<UpstreamFiles>>, TlsError> {
        let mut known = lock(&self.0);
        known.retain(|_, w| w.strong_count() > 0);
        if let Some(w) = known.get(&files).and_then(Weak::upgrade) {
            return Ok(w);
        }
        let watched = Watched::load("upstream", files.clone())?;
        if tokio::runtime::Handle::try_current().is_ok() {
            watched.spawn(sluice_tls::watch::DEFAULT_INTERVAL);
        }
        known.insert(files, Arc::downgrade(&watched));
        Ok(watched)
    }
}

/// An ALPN protocol's bytes on the wire.
fn token(alpn: Alpn) -> &'static [u8] {
    match alpn {
        Alpn::H2 => b"h2",
        Alpn::Http1 => b"http/1.1",
    }
}

/// A read or write that failed because of TLS: an endpoint on TLS 1.3 refuses the proxy's client
/// certificate (or its absence) after the handshake, on the first read.
pub(crate) fn refused(e: &std::io::Error, endpoint: &str) -> Option<ProxyError> {
    tls_error(e)?;
    Some(ProxyError::UpstreamTls { endpoint: endpoint.into(), reason: failure_reason(e).into() })
}

#[cfg(test)]
mod tests;
