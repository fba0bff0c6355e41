//! Upstream request: the client's request turned into the one sent upstream (hop-by-hop headers
//! gone, `Forwarded`, `Host`, the request id, trace context, the pool's HTTP version), and what a
//! second try or the mirror needs kept of it (the head, a bounded copy of the body).
//!
//! Shapes the request; it may not refuse it, pick an endpoint or send anything. Request header
//! rules from route policies are applied here.

use std::sync::{Arc, Mutex};

use http::header::{CONNECTION, HOST, HeaderValue, TE, UPGRADE};
use http::{HeaderMap, Method, Request, Uri, Version};
use hyper::body::Body as _;

use crate::body::ClientBody;
use opentelemetry::trace::Span as _;
use opentelemetry_sdk::trace::{SdkTracer, Span};
use sluice_bundle::UpstreamProtocol;
use tokio::sync::Notify;

use super::context::{Connection, TraceParent, Who};
use super::read_body::BodyStart;
use super::route::Routed;
use crate::body::{Idle, Replay, RequestBody, Upload};
use crate::error::ProxyError;
use crate::headers::{self, X_FORWARDED_CLIENT_CERT, X_REQUEST_ID};
use crate::resilience::retry::{HedgePolicy, MAX_REPLAY_BODY, RetryPolicy};
use crate::telemetry;
use crate::transform::Vars;

/// The request as it goes upstream, and what is kept to send it again.
pub(super) struct Outgoing<'a> {
    /// Boxed: it passes through the exchange, the pool and the connection's futures, and each
    /// would otherwise copy the whole request (about 330 bytes) into its own state.
    pub first: Box<Request<RequestBody>>,
    /// Told when the client's body has gone upstream whole.
    pub upload: Option<Arc<Upload>>,
    /// The head, kept up front when a retry or hedge may need it while a try holds the request
    /// (see `keeps_head`).
    pub template: Option<Template>,
    /// The route resends this method once it may have reached an upstream.
    pub method_allows: bool,
    /// The body's copy, for a retry or the mirror.
    pub copy: Option<Arc<Mutex<Replay>>>,
    /// Told once the copy is whole or spoiled (a mirrored request with a body).
    pub settled: Option<Arc<Notify>>,
    pub has_body: bool,
    /// The route's hedging, when this request may hedge (a bodiless GET or HEAD).
    pub hedge: Option<&'a HedgePolicy>,
    /// Set when the request is traced and sampled: each try gets a client span.
    pub trace: Option<TraceParent<'a>>,
    /// Sent as a WebSocket upgrade (`Connection: upgrade`, `Upgrade: websocket`).
    pub upgrade: bool,
}

/// The parts of the upstream request kept to send it again (retry or hedge).
pub(super) struct Template {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

/// `body_start`: what was read of the body already; `who`: the request's id, its client and
/// whether it came over HTTPS (here or, as a trusted proxy says, before it); `mirror_max_body`:
/// the route's mirror's body cap, when this request is mirrored.
pub(super) fn build<'a>(
    conn: &Connection,
    req: Request<ClientBody>,
    body_start: BodyStart,
    routed: &Routed<'a>,
    who: Who<'_>,
    trace: Option<(&'a SdkTracer, &'a Span)>,
    mirror_max_body: Option<usize>,
) -> Result<Outgoing<'a>, ProxyError> {
    let (route, pool) = (routed.route, routed.pool);
    let (mut parts, body) = req.into_parts();
    if let Some(rewritten) = route.rewrite.as_ref().and_then(|r| r.path(&parts.uri)) {
        const INVALID: ProxyError =
            ProxyError::BadRequest("the route's rewrite makes no valid path of this one");
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(rewritten.map_err(|()| INVALID)?);
        parts.uri = http::Uri::from_parts(uri).map_err(|_| INVALID)?;
    }
    let wants_trailers =
        parts.headers.get(TE).is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // A bodiless WebSocket handshake to an HTTP/1.1 pool keeps its upgrade; any other request
    // loses it with the other hop-by-hop fields.
    let upgrade = headers::websocket_upgrade(parts.version, &parts.headers)
        && pool.protocol() == UpstreamProtocol::Http1
        && body_start.early.is_none()
        && body.is_end_stream();
    headers::strip_hop_by_hop(&mut parts.headers);
    if upgrade {
        parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    }
    if wants_trailers && pool.protocol() == UpstreamProtocol::Http2 {
        parts.headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    let proto = HeaderValue::from_static(if who.https { "https" } else { "http" });
    headers::set_forwarded(&mut parts.headers, &conn.client_ip, proto, routed.host.clone());
    // The client's own XFCC is never believed; the proxy's says what it verified.
    match conn.tls.as_ref().and_then(|t| t.xfcc.clone()) {
        Some(xfcc) => parts.headers.insert(X_FORWARDED_CLIENT_CERT, xfcc),
        None => parts.headers.remove(X_FORWARDED_CLIENT_CERT),
    };
    // `X-Forwarded-Host` (above) keeps the client's host; `Host` may be the route's.
    if let Some(host) = route.rewrite.as_ref().and_then(|r| r.host.clone()).or_else(|| routed.host.clone()) {
        parts.headers.insert(HOST, host);
    }
    parts.headers.insert(X_REQUEST_ID, who.request_id.clone());
    // The operator's changes come after the proxy's own, so they may override or remove them.
    let listener = conn.listener.transforms();
    let listener = listener.as_ref().and_then(|t| t.request.as_deref());
    if listener.is_some() || route.request_headers.is_some() {
        let vars = Vars { client: who.client, request_id: who.request_id, tls: conn.tls.as_deref() };
        for rules in listener.into_iter().chain(route.request_headers.as_deref()) {
            rules.apply(&mut parts.headers, &vars);
        }
    }
    // Traced tries each send their own span's traceparent; an unsampled request passes on the
    // server span's, so the upstream knows the trace and that it is not sampled.
    let trace = match trace {
        Some((tracer, span)) if span.is_recording() => {
            Some(TraceParent { tracer, parent: span.span_context() })
        }
        Some((_, span)) => {
            telemetry::inject(span.span_context(), &mut parts.headers);
            None
        }
        None => None,
    };
    parts.version = pool.version();

    // What a second try could send: the head always, the body only if a copy of it fits.
    let has_body = body_start.early.is_some() || !body.is_end_stream();
    let resend = route.retry.may_resend(&parts.method);
    let method_allows = route.retry.allows_method(&parts.method);
    let hedge = route
        .hedge
        .as_ref()
        .filter(|_| !has_body && !upgrade && matches!(parts.method, Method::GET | Method::HEAD));
    let template = keeps_head(&route.retry, pool.protocol(), resend, hedge.is_some()).then(|| Template {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
    });
    // A mirrored body is copied too, up to the mirror's cap, and the shadow told once it is whole.
    let settled = (mirror_max_body.is_some() && has_body).then(|| Arc::new(Notify::new()));
    let limit = match mirror_max_body {
        Some(max) if settled.is_some() => max.max(MAX_REPLAY_BODY),
        _ => MAX_REPLAY_BODY,
    };
    let copy = ((resend && has_body && body.size_hint().lower() <= MAX_REPLAY_BODY as u64)
        || settled.is_some())
    .then(|| Arc::new(Mutex::new(Replay::with_limit(limit, settled.clone()))));
    let upload = has_body.then(|| Arc::new(Upload::default()));
    let body = Idle::new(body, route.body.read_timeout).reporting_to(upload.clone());
    let body = RequestBody::client(body_start.early, body, body_start.pace, route.max_body, copy.clone());
    let first = Box::new(Request::from_parts(parts, body));
    Ok(Outgoing { first, upload, template, copy, settled, has_body, hedge, trace, method_allows, upgrade })
}

/// Whether a request's head is copied before its first try. A hedge sends a second copy while
/// the first is out, a retry on an answered status or after a per-try timeout comes when the
/// try has given the request up, and HTTP/2 pools' connections do not give it back. Otherwise
/// (retries after a reset, the default) an HTTP/1.1 try that fails hands its head back and the
/// copy, a clone of every header, is not made for the requests that never need it.
/// `resend`: the route's policy may send this request's method again.
pub(super) fn keeps_head(retry: &RetryPolicy, protocol: UpstreamProtocol, resend: bool, hedge: bool) -> bool {
    hedge || (resend && (retry.needs_head_kept() || protocol == UpstreamProtocol::Http2))
}
