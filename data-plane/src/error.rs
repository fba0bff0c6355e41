//! Why a request failed, which side failed, and the one place that turns that into a response.

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::ProxyBody;
use crate::headers::X_REQUEST_ID;

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
}

// === impl ProxyError ===

impl ProxyError {
    /// A stable, machine-readable name for dashboards and scripts.
    pub fn category(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::NoConfig => "no_config",
            Self::BadRequest(_) => "bad_request",
            Self::MethodNotSupported(_) => "method_not_supported",
            Self::ConnectFailure { .. } => "connect_failure",
            Self::ConnectTimeout { .. } => "connect_timeout",
            Self::UpstreamTimeout { .. } => "upstream_timeout",
            Self::UpstreamReset { .. } => "upstream_reset",
            Self::UpstreamProtocol { .. } => "upstream_protocol",
            Self::DownstreamBody(_) => "downstream_body",
            Self::ClientTimeout(_) => "client_timeout",
        }
    }

    pub fn side(&self) -> Side {
        match self {
            Self::NoRoute
            | Self::BadRequest(_)
            | Self::MethodNotSupported(_)
            | Self::DownstreamBody(_)
            | Self::ClientTimeout(_) => Side::Downstream,
            Self::NoConfig => Side::Internal,
            Self::ConnectFailure { .. }
            | Self::ConnectTimeout { .. }
            | Self::UpstreamTimeout { .. }
            | Self::UpstreamReset { .. }
            | Self::UpstreamProtocol { .. } => Side::Upstream,
        }
    }

    /// Whether sending the same request again (elsewhere) could succeed. Connect failures never
    /// reached the upstream; other upstream failures may have had side effects.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::ConnectFailure { .. } | Self::ConnectTimeout { .. } | Self::NoConfig)
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoConfig => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadRequest(_) | Self::DownstreamBody(_) => StatusCode::BAD_REQUEST,
            Self::MethodNotSupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::ConnectFailure { .. }
            | Self::ConnectTimeout { .. }
            | Self::UpstreamReset { .. }
            | Self::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The response the client gets: `{error, category, request_id}` as JSON. A malformed request
    /// also closes the connection, since what follows it on the wire cannot be trusted.
    pub fn to_response(&self, request_id: &HeaderValue) -> Response<ProxyBody> {
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
            Self::BadRequest(_) | Self::DownstreamBody(_) | Self::ClientTimeout(_) => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Self::NoConfig => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
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
