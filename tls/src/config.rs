//! Server and client `rustls` configs, built from files already read (see [`crate::watch`]).
//!
//! Every config: the ring provider, TLS 1.2 and 1.3 only, ALPN as the caller asks. A key that
//! does not match its certificate is refused here, before a single handshake fails on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::watch::{Build, Contents};
use crate::{CertInfo, TlsError, files, provider};

/// Whether a server asks its clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates.
    Off,
    /// Clients may present one (verified against the client CA if they do), or none.
    Optional,
    /// Every client must present one the client CA verifies.
    Required,
}

/// What a TLS server is made of.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle that verifies client certificates; required unless `client_auth` is `Off`.
    pub client_ca: Option<PathBuf>,
    /// PEM CRLs revoking client certificates.
    pub crl: Option<PathBuf>,
    pub client_auth: ClientAuth,
    /// ALPN protocols offered, most preferred first (`h2` for gRPC).
    pub alpn: Vec<Vec<u8>>,
}

/// What a TLS client is made of.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// CA bundle that verifies the server.
    pub ca: PathBuf,
    /// The client's own certificate chain and key, for mTLS.
    pub identity: Option<(PathBuf, PathBuf)>,
    pub alpn: Vec<Vec<u8>>,
}

/// The TLS versions Sluice speaks: 1.2 and 1.3, nothing older.
pub(crate) const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

pub(crate) fn invalid(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid { path: path.to_owned(), reason: e.to_string() }
}

/// A certificate chain and its key, checked to belong together; and what the leaf says.
pub(crate) fn identity(
    cert_path: &Path,
    cert: &[u8],
    key_path: &Path,
    key: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, CertInfo), TlsError> {
    let chain = files::certs(cert_path, cert)?;
    let info = CertInfo::parse(&chain[0])
        .map_err(|reason| TlsError::Certificate { path: cert_path.to_owned(), reason })?;
    let key = files::key(key_path, key)?;
    let signing =
        provider().key_provider.load_private_key(key.clone_key()).map_err(|e| invalid(key_path, e))?;
    CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|_| TlsError::KeyMismatch { cert: cert_path.to_owned(), key: key_path.to_owned() })?;
    Ok((chain, key, info))
}

pub(crate) fn roots(path: &Path, bytes: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in files::certs(path, bytes)? {
        store.add(cert).map_err(|e| invalid(path, e))?;
    }
    Ok(store)
}

/// A server config from the files' contents, and what its certificate says.
pub fn server_config(f: &ServerFiles, contents: &Contents) -> Result<(ServerConfig, CertInfo), TlsError> {
    let (chain, key, info) = identity(&f.cert, contents.get(&f.cert), &f.key, contents.get(&f.key))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| invalid(&f.cert, e))?;
    let builder = match (f.client_auth, &f.client_ca) {
        (ClientAuth::Off, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(invalid(&f.cert, "client certificates are asked for but no client CA is given"));
        }
        (auth, Some(ca)) => {
            let roots = Arc::new(roots(ca, contents.get(ca))?);
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
            if let Some(crl) = &f.crl {
                // Only the client's own certificate is checked against the CRLs; one whose
                // issuer no CRL covers is not revoked (the CRL file comes from our own CA).
                verifier = verifier
                    .with_crls(files::crls(crl, contents.get(crl))?)
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            }
            if auth == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(verifier.build().map_err(|e| invalid(ca, e))?)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| invalid(&f.key, e))?;
    config.alpn_protocols.clone_from(&f.alpn);
    Ok((config, info))
}

/// A client config from the files' contents, and what its own certificate says (if it has one).
pub fn client_config(
    f: &ClientFiles,
    contents: &Contents,
) -> Result<(ClientConfig, Option<CertInfo>), TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| invalid(&f.ca, e))?
        .with_root_certificates(roots(&f.ca, contents.get(&f.ca))?);
    let (mut config, info) = match &f.identity {
        None => (builder.with_no_client_auth(), None),
        Some((cert, key)) => {
            let (chain, key_der, info) = identity(cert, contents.get(cert), key, contents.get(key))?;
            (builder.with_client_auth_cert(chain, key_der).map_err(|e| invalid(key, e))?, Some(info))
        }
    };
    config.alpn_protocols.clone_from(&f.alpn);
    Ok((config, info))
}

// === impl ServerFiles ===

impl Build for ServerFiles {
    type Output = ServerConfig;

    fn paths(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref(), self.crl.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn cert_file(&self) -> Option<PathBuf> {
        Some(self.cert.clone())
    }

    fn build(&self, contents: &Contents) -> Result<(ServerConfig, Option<CertInfo>), TlsError> {
        server_config(self, contents).map(|(c, info)| (c, Some(info)))
    }
}

// === impl ClientFiles ===

impl Build for ClientFiles {
    type Output = ClientConfig;

    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.ca.clone()];
        if let Some((cert, key)) = &self.identity {
            paths.extend([cert.clone(), key.clone()]);
        }
        paths
    }

    fn cert_file(&self) -> Option<PathBuf> {
        self.identity.as_ref().map(|(cert, _)| cert.clone())
    }

    fn build(&self, contents: &Contents) -> Result<(ClientConfig, Option<CertInfo>), TlsError> {
        client_config(self, contents)
    }
}

#[cfg(test)]
mod tests;
