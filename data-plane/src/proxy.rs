//! The request lifecycle, as named phases: admit the request, pick a route, pick an endpoint,
//! build the upstream request, forward it, and shape the response. Every failure is a
//! [`ProxyError`]; `error.rs` alone turns it into a response.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HOST, HeaderValue, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Incoming};
use sluice_bundle::UpstreamProtocol;
use tokio::time::Instant;

use crate::body::{Idle, ProxyBody, Upload};
use crate::error::ProxyError;
use crate::headers::{self, X_REQUEST_ID};
use crate::listener::strict::StrictState;
use crate::router::RequestView;
use crate::server::Shared;
use crate::snapshot::Snapshot;
use crate::upstream::{Endpoint, PickContext};

/// One client connection, shared by the requests on it.
pub(crate) struct Connection {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    /// The peer's IP as a header value, formatted once per connection.
    pub client_ip: HeaderValue,
    pub strict: Arc<StrictState>,
}

// === impl Connection ===

impl Connection {
    pub fn new(shared: Arc<Shared>, peer: SocketAddr, strict: Arc<StrictState>) -> Self {
        let client_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { shared, peer, client_ip, strict }
    }
}

/// Serves one request. Never fails: errors become JSON responses carrying the request id.
pub(crate) async fn handle(
    conn: Arc<Connection>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let request_id = headers::request_id(req.headers());
    Ok(match proxy(&conn, req, &request_id).await {
        Ok(mut resp) => {
            resp.headers_mut().insert(X_REQUEST_ID, request_id);
            resp
        }
        Err(e) => {
            tracing::debug!(request_id = ?request_id, category = e.category(), error = %e, "request failed");
            e.to_response(&request_id)
        }
    })
}

async fn proxy(
    conn: &Connection,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Result<Response<ProxyBody>, ProxyError> {
    // Admit: framing verdicts for HTTP/1, methods we never forward.
    if req.version() < Version::HTTP_2 {
        conn.strict.admit().map_err(|why| ProxyError::BadRequest(why.message()))?;
        // RFC 9112 §3.2: exactly one Host in HTTP/1.1 (unless the target is absolute).
        let mut hosts = req.headers().get_all(HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(_), Some(_)) => return Err(ProxyError::BadRequest("more than one Host header")),
            (None, _) if req.version() == Version::HTTP_11 && req.uri().authority().is_none() => {
                return Err(ProxyError::BadRequest("missing Host header"));
            }
            _ => {}
        }
    }
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotSupported("CONNECT"));
    }
    let snapshot: Arc<Snapshot> = conn.shared.snapshot.load_full().ok_or(ProxyError::NoConfig)?;

    // Route. An absolute-form target (or HTTP/2's :authority) names the host; Host is then
    // ignored and replaced (RFC 9112 §3.2.2), so routing and the upstream agree on one host.
    let host = match req.uri().authority() {
        Some(a) => Some(a.as_str().rsplit_once('@').map_or(a.as_str(), |(_userinfo, host)| host)),
        None => req.headers().get(HOST).and_then(|h| h.to_str().ok()),
    };
    let view = RequestView {
        method: req.method(),
        host,
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let route = &snapshot.routes[snapshot.router.find(&view).ok_or(ProxyError::NoRoute)?];
    let pool = &snapshot.pools[route.pool];
    let host = host.and_then(|h| HeaderValue::from_str(h).ok());

    // Upstream peer.
    let (endpoint, in_flight) = pool.pick(&PickContext { headers: req.headers(), client_ip: conn.peer.ip() });

    // Upstream request.
    let (mut parts, body) = req.into_parts();
    let wants_trailers =
        parts.headers.get(TE).is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers::strip_hop_by_hop(&mut parts.headers);
    if wants_trailers && pool.protocol() == UpstreamProtocol::Http2 {
        parts.headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    headers::set_forwarded(
        &mut parts.headers,
        &conn.client_ip,
        HeaderValue::from_static("http"),
        host.clone(),
    );
    if let Some(host) = host {
        parts.headers.insert(HOST, host);
    }
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    parts.uri = upstream_uri(pool.protocol(), endpoint, parts.headers.get(HOST), parts.uri.path_and_query())?;
    parts.version = match pool.protocol() {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    let upload = (!body.is_end_stream()).then(|| Arc::new(Upload::default()));
    let body = Idle::new(body, route.idle_timeout).reporting_to(upload.clone());
    let upstream_req = Request::from_parts(parts, body);

    // Forward.
    let sending = pool.send(endpoint, upstream_req, upload.clone());
    let (resp, lease) = match within_response_timeout(route.timeout, upload.as_deref(), sending).await {
        Some(result) => result?,
        None => {
            return Err(ProxyError::UpstreamTimeout {
                endpoint: endpoint.address.clone(),
                timeout_ms: route.timeout.as_millis() as u64,
            });
        }
    };

    // Response.
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::UpstreamProtocol {
            endpoint: endpoint.address.clone(),
            reason: "101 Switching Protocols without an upgrade request".into(),
        });
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    // The upstream's HTTP version is its own business; hyper picks ours for the client.
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(parts, ProxyBody::upstream(body, route.idle_timeout, lease, in_flight)))
}

/// Runs `exchange` until the response headers arrive, allowing `timeout` from the end of the
/// request: from now for a request without a body, from the moment its body was sent whole
/// otherwise. A long upload is not cut short by the response timeout; the route's idle timeout
/// guards it against stalling instead. `None` when the time ran out.
async fn within_response_timeout<T>(
    timeout: Duration,
    upload: Option<&Upload>,
    exchange: impl Future<Output = T>,
) -> Option<T> {
    let mut exchange = std::pin::pin!(exchange);
    let mut deadline = Instant::now() + timeout;
    loop {
        if let Ok(done) = tokio::time::timeout_at(deadline, &mut exchange).await {
            return Some(done);
        }
        // Only reached when the deadline passes: check whether it was the right one.
        let upload = upload?;
        deadline = match upload.finished_at() {
            Some(finished) if finished + timeout > Instant::now() => finished + timeout,
            Some(_) => return None,
            None => Instant::now() + timeout,
        };
    }
}

/// The request target sent upstream: origin-form (`/path?query`) for HTTP/1.1; for HTTP/2 an
/// absolute URI whose authority (`:authority`) is the client's host, as `Host` is for HTTP/1.1.
fn upstream_uri(
    protocol: UpstreamProtocol,
    endpoint: &Endpoint,
    host: Option<&HeaderValue>,
    path: Option<&PathAndQuery>,
) -> Result<Uri, ProxyError> {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(path.cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    if protocol == UpstreamProtocol::Http2 {
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(
            host.and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| endpoint.authority.clone()),
        );
    }
    Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))
}

#[cfg(test)]
mod tests;
