//! The facts Sluice reads out of a certificate: when it expires and the names it carries.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a certificate says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertInfo {
    /// `notAfter`, in seconds since the Unix epoch.
    pub not_after: i64,
    /// URI subject alternative names (`spiffe://…`).
    pub uris: Vec<String>,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
}

// === impl CertInfo ===

impl CertInfo {
    /// Reads a DER certificate.
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let mut info = Self {
            not_after: cert.validity().not_after.timestamp(),
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            ..Self::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => info.uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => info.dns.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(info)
    }
}
