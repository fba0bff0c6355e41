//! TLS from the proxy to its upstream endpoints: the client config a pool's connections use, and
//! what a failed handshake is called.
//!
//! Verification is on unless the pool turns it off: endpoints are checked against the pool's CA
//! file, or the node's system roots when it names none (read with `rustls-native-certs`, which
//! honours `SSL_CERT_FILE` and `SSL_CERT_DIR`). With verification off any certificate and any
//! name is accepted, but the handshake's signatures are still checked, so the peer must at least
//! hold the key of the certificate it shows.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::{VERSIONS, identity, invalid, roots};
use crate::watch::{Build, Contents};
use crate::{CertInfo, TlsError, provider};

/// What a pool's TLS client is made of. Equal files give equal configs, so pools naming the same
/// files share one watched config.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamFiles {
    /// CA bundle that verifies endpoints; `None`: the node's system roots.
    pub ca: Option<PathBuf>,
    /// The proxy's own certificate chain and key, for mTLS to the endpoints.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// ALPN protocols offered, most preferred first.
    pub alpn: Vec<Vec<u8>>,
    /// `false`: any certificate, any name (`insecure_skip_verify`).
    pub verify: bool,
}

/// Accepts any certificate for any name, still checking the handshake's signatures against it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

// === impl UpstreamFiles ===

impl Build for UpstreamFiles {
    type Output = ClientConfig;

    fn paths(&self) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self.ca.iter().cloned().collect();
        if let Some((cert, key)) = &self.identity {
            paths.extend([cert.clone(), key.clone()]);
        }
        paths
    }

    fn cert_file(&self) -> Option<PathBuf> {
        self.identity.as_ref().map(|(cert, _)| cert.clone())
    }

    fn build(&self, contents: &Contents) -> Result<(ClientConfig, Option<CertInfo>), TlsError> {
        let path = self.ca.clone().unwrap_or_else(|| "system roots".into());
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| invalid(&path, e))?;
        let builder = match (&self.ca, self.verify) {
            (_, false) => {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            }
            (Some(ca), true) => builder.with_root_certificates(roots(ca, contents.get(ca))?),
            (None, true) => builder.with_root_certificates(system_roots()?),
        };
        let (mut config, info) = match &self.identity {
            None => (builder.with_no_client_auth(), None),
            Some((cert, key)) => {
                let (chain, key_der, info) = identity(cert, contents.get(cert), key, contents.get(key))?;
                (builder.with_client_auth_cert(chain, key_der).map_err(|e| invalid(key, e))?, Some(info))
            }
        };
        config.alpn_protocols.clone_from(&self.alpn);
        Ok((config, info))
    }
}

/// The node's trusted CAs. Certificates it cannot parse are skipped; none at all is an error
/// (a container without `ca-certificates`), which a pool fixes with `ca_file`.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        let why = found.errors.first().map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(TlsError::Invalid {
            path: "system roots".into(),
            reason: format!("no usable CA certificate ({why}); name a ca_file"),
        });
    }
    Ok(store)
}

// === impl AnyCertificate ===

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls error inside an I/O error from a TLS stream, if that is what it is.
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Why a client handshake (or the first read after it, where TLS 1.3 servers refuse a client
/// certificate) failed, in words for an operator: `certificate not valid for name "x"`, ….
pub fn failure_reason(e: &io::Error) -> String {
    use rustls::Error as E;
    let Some(tls) = tls_error(e) else {
        return match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                "the endpoint closed the connection during the handshake".to_owned()
            }
            _ => e.to_string(),
        };
    };
    match tls {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "certificate issued by an unknown CA".to_owned()
        }
        // rustls says what was expected and what was presented (names, times).
        E::InvalidCertificate(c) => c.to_string(),
        E::NoApplicationProtocol | E::AlertReceived(rustls::AlertDescription::NoApplicationProtocol) => {
            "the endpoint takes none of the ALPN protocols offered".to_owned()
        }
        E::AlertReceived(alert) => format!("the endpoint refused the handshake (alert: {alert:?})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
