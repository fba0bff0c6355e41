//! Who a certificate speaks for: SPIFFE-style URI SANs under one trust domain.
//!
//! - `spiffe://<trust-domain>/fleet/<fleet>/node/<node-id>`: one data plane (the normal mode);
//! - `spiffe://<trust-domain>/fleet/<fleet>`: any data plane of one fleet (the weaker mode, which
//!   the control plane accepts only when told to);
//! - `spiffe://<trust-domain>/operator/<name>`: an operator (the policy file gives it roles).
//!
//! A certificate from another trust domain, or with none of these shapes, speaks for nobody.

/// The trust domain a development PKI uses.
pub const DEFAULT_TRUST_DOMAIN: &str = "sluice.local";

/// What one URI SAN identifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A data plane; `node` is `None` for a fleet-scoped certificate.
    DataPlane {
        fleet: String,
        node: Option<String>,
    },
    Operator {
        name: String,
    },
}

/// `spiffe://<td>/fleet/<fleet>[/node/<node>]`.
pub fn data_plane_uri(trust_domain: &str, fleet: &str, node: Option<&str>) -> String {
    match node {
        Some(n) => format!("spiffe://{trust_domain}/fleet/{fleet}/node/{n}"),
        None => format!("spiffe://{trust_domain}/fleet/{fleet}"),
    }
}

/// `spiffe://<td>/operator/<name>`.
pub fn operator_uri(trust_domain: &str, name: &str) -> String {
    format!("spiffe://{trust_domain}/operator/{name}")
}

/// A path segment as Sluice names things: not empty, no `/`, no `..`, printable ASCII.
fn segment(s: &str) -> Option<String> {
    (!s.is_empty() && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/'))
        .then(|| s.to_owned())
}

// === impl Identity ===

impl Identity {
    /// The identity a URI SAN names within `trust_domain`, if any.
    pub fn from_uri(uri: &str, trust_domain: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?.strip_prefix(trust_domain)?.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["fleet", fleet] => Some(Self::DataPlane { fleet: segment(fleet)?, node: None }),
            ["fleet", fleet, "node", node] => {
                Some(Self::DataPlane { fleet: segment(fleet)?, node: Some(segment(node)?) })
            }
            ["operator", name] => Some(Self::Operator { name: segment(name)? }),
            _ => None,
        }
    }

    /// The one identity among a certificate's URI SANs. Several different ones are ambiguous,
    /// and a certificate that could be read two ways speaks for nobody.
    pub fn from_uris<'a>(
        uris: impl IntoIterator<Item = &'a String>,
        trust_domain: &str,
    ) -> Result<Self, String> {
        let mut found: Option<Self> = None;
        for uri in uris {
            if let Some(id) = Self::from_uri(uri, trust_domain) {
                match &found {
                    Some(f) if *f != id => return Err("the certificate names more than one identity".into()),
                    _ => found = Some(id),
                }
            }
        }
        found.ok_or_else(|| format!("the certificate has no spiffe://{trust_domain}/… identity"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_name_data_planes_and_operators_in_one_trust_domain() {
        let td = "example.org";
        assert_eq!(
            Identity::from_uri("spiffe://example.org/fleet/edge/node/n-1", td),
            Some(Identity::DataPlane { fleet: "edge".into(), node: Some("n-1".into()) })
        );
        assert_eq!(
            Identity::from_uri("spiffe://example.org/fleet/edge", td),
            Some(Identity::DataPlane { fleet: "edge".into(), node: None })
        );
        assert_eq!(
            Identity::from_uri("spiffe://example.org/operator/alice", td),
            Some(Identity::Operator { name: "alice".into() })
        );
        for other in [
            "spiffe://evil.org/fleet/edge/node/n-1",
            "spiffe://example.org.evil/fleet/edge",
            "spiffe://example.org/fleet/edge/node/n-1/extra",
            "spiffe://example.org/fleet//node/n-1",
            "spiffe://example.org/fleet/../node/x",
            "https://example.org/fleet/edge",
            "spiffe://example.org/operator/",
        ] {
            assert_eq!(Identity::from_uri(other, td), None, "{other}");
        }
        assert_eq!(data_plane_uri(td, "edge", Some("n-1")), "spiffe://example.org/fleet/edge/node/n-1");
    }

    #[test]
    fn a_certificate_naming_two_identities_names_none() {
        let uris = vec![data_plane_uri("td", "a", Some("1")), data_plane_uri("td", "b", Some("1"))];
        assert!(Identity::from_uris(&uris, "td").is_err());
        let same = vec![operator_uri("td", "x"), operator_uri("td", "x"), "https://unrelated".to_owned()];
        assert_eq!(Identity::from_uris(&same, "td"), Ok(Identity::Operator { name: "x".into() }));
        assert!(Identity::from_uris(&Vec::new(), "td").is_err());
    }
}
