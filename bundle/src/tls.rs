//! The TLS part of the config model: a listener's certificates and client authentication, a
//! route's client-certificate requirement, a pool's TLS to its endpoints.
//!
//! Certificates, keys and CA bundles are files on each node: the bundle names them and never
//! carries them. Bundles are signed, not encrypted; every data plane of a fleet, the control
//! plane's database and its backups can read them, and a private key belongs in none of those.
//! The control plane's checks see the paths only; each data plane reads the files when it applies
//! a bundle (a missing file, or a key that does not match its certificate, is a NACK naming the
//! field) and whenever they change.

use schemars::JsonSchema;
use serde::Serialize;

/// TLS termination on a listener.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// The certificates served, chosen by the client's SNI. At least one. The one marked
    /// `default` (else the first) answers clients that send no SNI or a name none covers.
    pub certificates: Vec<ServerCertificate>,
    /// Client certificates asked for on every name of this listener; a certificate's own
    /// `client_auth` replaces it for its names. Absent: none asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// ALPN protocols offered, most preferred first. Default `[h2, http/1.1]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<Alpn>>,
}

/// One certificate a listener serves, and the names it serves it for.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerCertificate {
    /// Absolute path on the node of a PEM certificate chain, leaf first. ECDSA, Ed25519 or RSA.
    pub cert_file: String,
    /// Absolute path on the node of its PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// SNI names this certificate answers: exact (`api.example.com`) or one wildcard label
    /// (`*.example.com`). Absent: the DNS names in the certificate itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
    /// Serve this one when the client's SNI matches no certificate, or it sends none. At most one
    /// certificate is the default; without one, the first is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// Client certificates for this certificate's names, instead of the listener's `client_auth`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
}

/// Client certificates a TLS listener asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientAuth {
    /// Absolute path on the node of the PEM CA bundle that verifies client certificates.
    pub ca_file: String,
    /// `required` (default): the handshake fails without a certificate the CA verifies.
    /// `optional`: a client may send none; one it sends must verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ClientAuthMode>,
    /// Absolute path on the node of PEM CRLs revoking client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_file: Option<String>,
}

/// Whether a client certificate is required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMode {
    Required,
    Optional,
}

/// An ALPN protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema)]
pub enum Alpn {
    #[serde(rename = "h2")]
    H2,
    #[serde(rename = "http/1.1")]
    Http1,
}

/// What a route asks of the client certificate: present, verified by the listener's CA, and
/// matching every condition given. Refused with 403.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificateRule {
    /// The certificate's subject, as RFC 4514 text (`CN=ops,O=Example`), must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<StringMatch>,
    /// At least one subject alternative name (DNS name, URI, email or IP address, as text) must
    /// match one of these. Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub san: Vec<StringMatch>,
}

/// A condition on a string: exactly one of `exact`, `prefix`, `suffix`, `regex` (whole string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// TLS from a pool to its endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name sent as SNI and verified in the endpoint's certificate. Default: the
    /// endpoint's host when it is a DNS name; an IP endpoint's certificate must name its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Absolute path on the node of the PEM CA bundle that verifies endpoints. Absent: the
    /// node's system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// The proxy's own certificate chain for mTLS to the endpoints (with `key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// ALPN protocols offered. Default: the pool's protocol (`h2` or `http/1.1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpn: Option<Vec<Alpn>>,
    /// `true` turns certificate verification off: any certificate, any name. For trials only;
    /// it is logged at every apply and shown by `/pools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// The one condition a [`StringMatch`] holds, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringRule<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Suffix(&'a str),
    Regex(&'a str),
}

// === impl ListenerTls ===

impl ListenerTls {
    pub fn alpn_or_default(&self) -> Vec<Alpn> {
        self.alpn.clone().unwrap_or_else(|| vec![Alpn::H2, Alpn::Http1])
    }

    /// Index of the certificate served when no name matches.
    pub fn default_index(&self) -> usize {
        self.certificates.iter().position(|c| c.default == Some(true)).unwrap_or(0)
    }

    /// The client authentication in force for a certificate's names.
    pub fn client_auth_for(&self, index: usize) -> Option<&ClientAuth> {
        self.certificates.get(index).and_then(|c| c.client_auth.as_ref()).or(self.client_auth.as_ref())
    }
}

// === impl ClientAuth ===

impl ClientAuth {
    pub fn mode_or_default(&self) -> ClientAuthMode {
        self.mode.unwrap_or(ClientAuthMode::Required)
    }
}

// === impl Alpn ===

impl Alpn {
    pub const ALL: [Alpn; 2] = [Self::H2, Self::Http1];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::H2 => "h2",
            Self::Http1 => "http/1.1",
        }
    }
}

// === impl StringMatch ===

impl StringMatch {
    /// The condition this match holds; validation guarantees exactly one is set.
    pub fn rule(&self) -> StringRule<'_> {
        match (&self.exact, &self.prefix, &self.suffix, &self.regex) {
            (Some(v), ..) => StringRule::Exact(v),
            (_, Some(v), ..) => StringRule::Prefix(v),
            (_, _, Some(v), _) => StringRule::Suffix(v),
            (_, _, _, Some(v)) => StringRule::Regex(v),
            _ => StringRule::Prefix(""),
        }
    }
}

// === impl UpstreamTls ===

impl UpstreamTls {
    pub fn verifies(&self) -> bool {
        self.insecure_skip_verify != Some(true)
    }
}
