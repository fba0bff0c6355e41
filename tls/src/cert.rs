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
    /// The subject as RFC 4514 text (`CN=ops,O=Example`: last RDN first).
    pub subject: String,
    /// Email subject alternative names.
    pub emails: Vec<String>,
    /// IP address subject alternative names, as text.
    pub ips: Vec<String>,
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
            subject: rfc4514(cert.subject()),
            ..Self::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => info.uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => info.dns.push((*d).to_owned()),
                    GeneralName::RFC822Name(m) => info.emails.push((*m).to_owned()),
                    GeneralName::IPAddress(ip) => {
                        let ip = match ip.len() {
                            4 => <[u8; 4]>::try_from(*ip).ok().map(|b| std::net::IpAddr::from(b).to_string()),
                            16 => {
                                <[u8; 16]>::try_from(*ip).ok().map(|b| std::net::IpAddr::from(b).to_string())
                            }
                            _ => None,
                        };
                        info.ips.extend(ip);
                    }
                    _ => {}
                }
            }
        }
        Ok(info)
    }

    /// Every subject alternative name as text: DNS names, URIs, emails, IP addresses.
    pub fn sans(&self) -> impl Iterator<Item = &str> {
        self.dns.iter().chain(&self.uris).chain(&self.emails).chain(&self.ips).map(String::as_str)
    }
}

/// A distinguished name as RFC 4514 text: RDNs last first, joined by `,`; attributes of one RDN
/// by `+`; special characters escaped. Attributes without a short name show their OID.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    let rdns: Vec<_> = name.iter().collect();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match x509_parser::objects::oid2abbrev(attr.attr_type(), registry) {
                Ok(short) => out.push_str(short),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            let value = attr.as_str().unwrap_or("");
            let last = value.chars().count().saturating_sub(1);
            for (k, c) in value.chars().enumerate() {
                let edge = (k == 0 && (c == '#' || c == ' ')) || (k == last && c == ' ');
                if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
                    out.push('\\');
                }
                out.push(c);
            }
        }
    }
    out
}
