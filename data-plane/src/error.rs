//! Why a request failed, which side failed, and the one place that turns that into a response.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::auth::ext_authz::Denied;
use crate::auth::jwt::JwtError;
use crate::body::ProxyBody;
use crate::headers::{
    RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET, X_REQUEST_ID, X_SLUICE_CIRCUIT_OPEN,
};

/// Which party a failure is attributed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we refuse.
    Downstream,
    /// The upstream could not be reached or did not answer properly.
    Upstream,
    /// The proxy itself cannot serve (no config yet, draining).
    Internal,
}

/// A failed request, as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matched the request")]
    NoRoute,
    #[error("no configuration is active yet")]
    NoConfig,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    #[error("method {0} is not supported by this proxy")]
    MethodNotSupported(&'static str),
    #[error("could not connect to upstream {endpoint}: {reason}")]
    ConnectFailure { endpoint: Box<str>, reason: Box<str> },
    #[error("timed out connecting to upstream {endpoint}")]
    ConnectTimeout { endpoint: Box<str> },
    /// The TLS handshake with the endpoint failed (its certificate, the name, the CA, ALPN, our
    /// client certificate refused, or no handshake within the connect timeout).
    #[error("upstream TLS with {endpoint} failed: {reason}")]
    UpstreamTls { endpoint: Box<str>, reason: Box<str> },
    #[error("upstream {endpoint} did not respond within {timeout_ms} ms")]
    UpstreamTimeout { endpoint: Box<str>, timeout_ms: u64 },
    #[error("upstream {endpoint} closed the connection before responding")]
    UpstreamReset { endpoint: Box<str> },
    #[error("upstream {endpoint} sent an invalid response: {reason}")]
    UpstreamProtocol { endpoint: Box<str>, reason: Box<str> },
    #[error("the client's request body failed: {0}")]
    DownstreamBody(Box<str>),
    #[error("the client was too slow: {0}")]
    ClientTimeout(Box<str>),
    #[error("pool {pool} is not taking requests: {reason}")]
    CircuitOpen { pool: Box<str>, reason: Box<str>, retry_after: u64 },
    #[error("the proxy is overloaded: {0}")]
    Overloaded(&'static str),
    #[error("rate limit of {limit} requests exceeded; retry in {retry_after} s")]
    RateLimited { limit: u32, reset: u64, retry_after: u64 },
    #[error("request body is larger than the route's limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("this route is served over HTTPS only: {location}")]
    RequireTls { location: Box<str>, permanent: bool },
    #[error("this route requires a client certificate: {0}")]
    ClientCertificate(&'static str),
    #[error("the host asks for other client certificates than the server name this connection was made for")]
    Misdirected,
    /// The route's JWT check refused the request (401; 503 while its keys are not available).
    #[error("this route requires a valid JWT: {0}")]
    Unauthorized(JwtError),
    /// The route's authorization server said no: its status, fields and body go to the client.
    #[error("the authorization server denied the request ({})", .0.status)]
    Denied(Box<Denied>),
    /// The route's authorization server could not be asked (`fail_mode: closed`).
    #[error("the authorization server of pool {pool} did not answer: {reason}")]
    AuthzUnavailable { pool: Box<str>, reason: Box<str> },
    /// `Cache-Control: only-if-cached`, and nothing usable is stored (RFC 9111 §5.2.1.7).
    #[error("the request asks for a stored response only, and none is usable")]
    NotCached,
}

/// Answers the proxy made itself, counted by error category.
#[derive(Debug, Default)]
pub struct ErrorCounts([AtomicU64; ProxyError::CATEGORIES.len()]);

// === impl ProxyError ===

impl ProxyError {
    /// Every category, in the order `ErrorCounts` keeps them.
    pub const CATEGORIES: [&'static str; 23] = [
        "no_route",
        "no_config",
        "bad_request",
        "method_not_supported",
        "connect_failure",
        "connect_timeout",
        "upstream_timeout",
        "upstream_reset",
        "upstream_protocol",
        "downstream_body",
        "client_timeout",
        "circuit_open",
        "overloaded",
        "rate_limited",
        "payload_too_large",
        "require_tls",
        "client_certificate",
        "misdirected",
        "upstream_tls",
        "unauthorized",
        "auth_unavailable",
        "denied",
        "not_cached",
    ];

    /// A stable, machine-readable name for dashboards and scripts.
    pub fn category(&self) -> &'static str {
        Self::CATEGORIES[match self {
            Self::NoRoute => 0,
            Self::NoConfig => 1,
            Self::BadRequest(_) => 2,
            Self::MethodNotSupported(_) => 3,
            Self::ConnectFailure { .. } => 4,
            Self::ConnectTimeout { .. } => 5,
            Self::UpstreamTimeout { .. } => 6,
            Self::UpstreamReset { .. } => 7,
            Self::UpstreamProtocol { .. } => 8,
            Self::DownstreamBody(_) => 9,
            Self::ClientTimeout(_) => 10,
            Self::CircuitOpen { .. } => 11,
            Self::Overloaded(_) => 12,
            Self::RateLimited { .. } => 13,
            Self::PayloadTooLarge { .. } => 14,
            Self::RequireTls { .. } => 15,
            Self::ClientCertificate(_) => 16,
            Self::Misdirected => 17,
            Self::UpstreamTls { .. } => 18,
            Self::Unauthorized(JwtError::KeysUnavailable) => 20,
            Self::Unauthorized(_) => 19,
            Self::AuthzUnavailable { .. } => 20,
            Self::Denied(_) => 21,
            Self::NotCached => 22,
        }]
    }

    pub fn side(&self) -> Side {
        match self {
            Self::NoRoute
            | Self::BadRequest(_)
            | Self::MethodNotSupported(_)
            | Self::DownstreamBody(_)
            | Self::ClientTimeout(_)
            | Self::RateLimited { .. }
            | Self::PayloadTooLarge { .. }
            | Self::RequireTls { .. }
            | Self::ClientCertificate(_)
            | Self::Misdirected
            | Self::NotCached => Side::Downstream,
            Self::Unauthorized(JwtError::KeysUnavailable) | Self::AuthzUnavailable { .. } => Side::Internal,
            Self::Unauthorized(_) | Self::Denied(_) => Side::Downstream,
            Self::NoConfig | Self::Overloaded(_) => Side::Internal,
            Self::CircuitOpen { .. }
            | Self::ConnectFailure { .. }
            | Self::ConnectTimeout { .. }
            | Self::UpstreamTls { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamReset { .. }
            | Self::UpstreamProtocol { .. } => Side::Upstream,
        }
    }

    /// Whether this is an endpoint failing (it counts against the endpoint's health and the
    /// pool's breaker), as opposed to the client's fault or the proxy refusing.
    pub fn is_endpoint_failure(&self) -> bool {
        matches!(
            self,
            Self::ConnectFailure { .. }
                | Self::ConnectTimeout { .. }
                | Self::UpstreamTls { .. }
                | Self::UpstreamTimeout { .. }
                | Self::UpstreamReset { .. }
                | Self::UpstreamProtocol { .. }
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoConfig | Self::CircuitOpen { .. } | Self::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            // 301 and 302 let clients turn a POST into a GET; 308 keeps method and body.
            Self::RequireTls { permanent: true, .. } => StatusCode::MOVED_PERMANENTLY,
            Self::RequireTls { permanent: false, .. } => StatusCode::PERMANENT_REDIRECT,
            Self::ClientCertificate(_) => StatusCode::FORBIDDEN,
            Self::Unauthorized(JwtError::KeysUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::AuthzUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Denied(d) => d.status,
            Self::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            Self::BadRequest(_) | Self::DownstreamBody(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotSupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UpstreamTimeout { .. } | Self::NotCached => StatusCode::GATEWAY_TIMEOUT,
            Self::ConnectFailure { .. }
            | Self::ConnectTimeout { .. }
            | Self::UpstreamTls { .. }
            | Self::UpstreamReset { .. }
            | Self::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The response the client gets: `{error, category, request_id}` as JSON. A malformed request
    /// also closes the connection, since what follows it on the wire cannot be trusted.
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<ProxyBody> {
        if let Self::Denied(d) = self {
            return denied(d, request_id);
        }
        let body = serde_json::json!({
            "error": self.to_string(),
            "category": self.category(),
            "request_id": request_id.to_str().unwrap_or_default(),
        });
        let mut resp = Response::new(ProxyBody::full(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(X_REQUEST_ID, request_id.clone());
        match self {
            // The unread rest of an oversized body is not worth reading: close instead.
            Self::BadRequest(_)
            | Self::DownstreamBody(_)
            | Self::ClientTimeout(_)
            | Self::PayloadTooLarge { .. } => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Self::NoConfig
            | Self::Overloaded(_)
            | Self::Unauthorized(JwtError::KeysUnavailable)
            | Self::AuthzUnavailable { .. } => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            // RFC 6750 §3: no error code when the request had no token at all.
            Self::Unauthorized(JwtError::Missing) => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::Unauthorized(e) => {
                let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{e}\"");
                if let Ok(v) = HeaderValue::try_from(challenge) {
                    headers.insert(WWW_AUTHENTICATE, v);
                }
            }
            Self::CircuitOpen { pool, retry_after, .. } => {
                if let Ok(v) = HeaderValue::from_str(pool) {
                    headers.insert(X_SLUICE_CIRCUIT_OPEN, v);
                }
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Self::RequireTls { location, .. } => {
                if let Ok(v) = HeaderValue::from_str(location) {
                    headers.insert(LOCATION, v);
                }
            }
            Self::RateLimited { limit, reset, retry_after } => {
                headers.insert(RATELIMIT_LIMIT, HeaderValue::from(*limit));
                headers.insert(RATELIMIT_REMAINING, HeaderValue::from(0u32));
                headers.insert(RATELIMIT_RESET, HeaderValue::from(*reset));
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        resp
    }
}

/// The authorization server's denial as it gave it: status, fields (its `Content-Type` among
/// them), body; the request id added.
fn denied(d: &Denied, request_id: &HeaderValue) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(d.body.clone()));
    *resp.status_mut() = d.status;
    let headers = resp.headers_mut();
    for (name, value) in &d.headers {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(X_REQUEST_ID, request_id.clone());
    resp
}

// === impl ErrorCounts ===

impl ErrorCounts {
    /// Counts one answer of `category` (one of [`ProxyError::CATEGORIES`]). Only errors pay for
    /// the lookup.
    pub fn record(&self, category: &str) {
        if let Some(i) = ProxyError::CATEGORIES.iter().position(|c| *c == category) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `(category, count)` for every category, zeros included, so a rate is defined from the start.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        ProxyError::CATEGORIES.iter().zip(&self.0).map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn responses_are_json_with_category_and_request_id() {
        let id = HeaderValue::from_static("req-1");
        let cases = [
            (ProxyError::NoRoute, 404, "no_route"),
            (
                ProxyError::ConnectFailure { endpoint: "127.0.0.1:1".into(), reason: "refused".into() },
                502,
                "connect_failure",
            ),
            (
                ProxyError::UpstreamTls {
                    endpoint: "127.0.0.1:1".into(),
                    reason: "certificate issued by an unknown CA".into(),
                },
                502,
                "upstream_tls",
            ),
            (
                ProxyError::UpstreamTimeout { endpoint: "127.0.0.1:1".into(), timeout_ms: 100 },
                504,
                "upstream_timeout",
            ),
        ];
        for (err, status, category) in cases {
            let resp = err.to_response(&id);
            assert_eq!(resp.status().as_u16(), status);
            assert_eq!(resp.headers()[X_REQUEST_ID], "req-1");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["category"], category);
            assert_eq!(json["request_id"], "req-1");
            assert_eq!(json["error"], err.to_string());
        }
        let bad = ProxyError::BadRequest("x").to_response(&id);
        assert_eq!(bad.headers()[CONNECTION], "close");
    }
}
