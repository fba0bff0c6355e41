//! PEM material from files: certificates, private keys, CRLs. Errors name the file, never its
//! content (a key file's bytes must not reach a log).

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::TlsError;

/// Reads a whole file.
pub fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read { path: path.to_owned(), reason: e.to_string() })
}

fn pem_error(path: &Path, e: &pem::Error) -> TlsError {
    TlsError::Pem { path: path.to_owned(), reason: e.to_string() }
}

/// A secret held in a file (a bearer token), trimmed; the error names the file, never the content.
pub fn secret(path: &Path) -> Result<String, TlsError> {
    Ok(String::from_utf8_lossy(&read(path)?).trim().to_owned())
}

/// Every certificate in a PEM file, in order (leaf first for a chain); at least one.
pub fn certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey { path: path.to_owned() },
        e => pem_error(path, &e),
    })
}

/// Every CRL in a PEM file (possibly none: an empty file revokes nothing).
pub fn crls(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &e))
}
