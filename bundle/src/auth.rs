//! Route authentication: JWT validation against JSON Web Key Sets.

use schemars::JsonSchema;
use serde::Serialize;

use crate::Duration;
use crate::resilience::ByteSize;

/// Requests must carry a JSON Web Token signed by one of the keys of a JWKS (RS256, ES256 or
/// EdDSA), unexpired, from the issuer and for an audience named here; others get 401 with
/// `WWW-Authenticate: Bearer`. Exactly one of `jwks_file` and `jwks_url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    /// A JWKS file on the data plane's node, read at apply (a bad file refuses the config) and
    /// again whenever its content changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// A JWKS fetched by the data plane in the background (`https://` or `http://`), never on
    /// the request path: at apply, then every `jwks_refresh`; a failed fetch keeps the keys it
    /// has and is retried sooner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// How often `jwks_url` is fetched again. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_refresh: Option<Duration>,
    /// CA bundle that verifies an `https` `jwks_url`. Default: the node's system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_ca_file: Option<String>,
    /// The token's `iss` must equal this. Absent: any issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The token's `aud` (a string or a list) must name at least one of these. Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`. Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leeway: Option<Duration>,
    /// Where the token is. Default: `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<TokenSource>,
    /// Claims sent upstream as request fields. A client's own field of such a name is always
    /// removed first, so only a verified token can set it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_to_headers: Vec<ClaimHeader>,
    /// `true`: the token (its header or cookie) is not sent upstream. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_token: Option<bool>,
}

/// Where a token is read from: exactly one of `header` (its whole value, or after `Bearer `) and
/// `cookie`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// A claim (a top-level name, or a dotted path into objects: `realm.role`) and the request field
/// it is sent in. Strings go as they are, other values as JSON; a token without the claim sends
/// no field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimHeader {
    pub claim: String,
    pub header: String,
}

/// Default of `jwt.jwks_refresh`.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// Default of `jwt.leeway`.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(60);

/// Each request is first checked by an authorization server speaking Envoy's `ext_authz` gRPC
/// API (`envoy.service.auth.v3.Authorization/Check`: OPA's Envoy plugin and others): allowed,
/// it goes upstream with the server's header changes; denied, the client gets the server's
/// status, fields and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthz {
    /// The pool of authorization servers (`protocol: http2`: gRPC; its `tls` applies).
    pub pool: String,
    /// Longest wait for an answer; then the server counts as failed. Default 200ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// What a failed check (no answer in time, a connection error, a gRPC error) does:
    /// `closed` (default) answers 503, `open` lets the request through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_mode: Option<FailMode>,
    /// Request fields sent to the server (names, any case). Absent: every field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
    /// Up to this many bytes of the request body are sent too (at most the route's
    /// `request_body.buffer`, what is read before the check). Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
}

/// What a failed authorization check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// The request goes on, unchecked (counted).
    Open,
    /// 503 `auth_unavailable`.
    Closed,
}

/// Default of `ext_authz.timeout`.
pub const DEFAULT_EXT_AUTHZ_TIMEOUT: Duration = Duration::from_millis(200);
