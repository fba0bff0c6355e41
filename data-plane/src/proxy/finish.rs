//! Finish: the answer handed to the client, and the request counted and logged once its
//! response is done (the body sent whole, or the client gone).
//!
//! Records what the other phases noted in the request's trail; it may not change the answer's
//! status. Per-request facts a later feature adds to the access log (TLS version, cache status)
//! are written here, from the trail.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::body::ClientBody;
use http::header::{HOST, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response};
use opentelemetry::trace::Span as _;
use opentelemetry_sdk::trace::Span;
use tokio::time::Instant;

use super::context::{Connection, NONE, Record, Trail};
use super::respond::{Answer, Held, Reply};
use crate::access_log::{Fields, key, trace_id};
use crate::body::{Completion, ProxyBody};
use crate::error::ProxyError;
use crate::headers::{self, X_REQUEST_ID};
use crate::listener::strict::Reject;
use crate::metrics::Outcome;
use crate::telemetry;
use crate::transform::Vars;

/// Counts a request and writes its access-log line once its response is done. Dropping it does
/// the work.
struct Finish {
    conn: Arc<Connection>,
    start: Instant,
    status: u16,
    trail: Trail,
    /// The request's own access-log fields, when it is logged.
    log: Option<Fields>,
    /// The error category of an answer the proxy made itself.
    error: Option<&'static str>,
    /// The server span, when tracing is on.
    span: Option<Box<Span>>,
}

/// What an upstream response body keeps: the request's counts and its record, dropped in that
/// order once the body is done. (The HTTP/1.1 connection is the body's own; it goes back to its
/// pool from the body.)
struct Done {
    _held: Held,
    _finish: Finish,
}

impl Completion for Done {}

// === impl Record ===

impl Record {
    /// A request as it arrives: its id, its server span and its access-log head.
    pub fn begin(conn: &Connection, req: &Request<ClientBody>) -> Self {
        let start = Instant::now();
        let (request_id, new_id) = headers::request_id(req.headers());
        let (client, https) = match conn.trusted.as_deref() {
            None => (conn.peer.ip(), conn.tls.is_some()),
            Some(trusted) => {
                let (client, https) = headers::forwarded_by_trusted(req.headers(), conn.peer.ip(), trusted);
                (client, https.unwrap_or(conn.tls.is_some()))
            }
        };
        let span = conn.serving.tracer.as_ref().map(|t| Box::new(telemetry::server_span(t, req, client)));
        let log = conn
            .listener
            .log_this()
            .then(|| log_head(conn, req, client, &request_id, new_id, span.as_deref(), start));
        Self {
            request_id,
            start,
            client,
            https,
            span,
            log,
            authz_response: Vec::new(),
            trail: Trail::default(),
        }
    }
}

/// The client's answer: the upstream's, or the proxy's own for `ProxyError`. Either way the
/// request is recorded once its body is done (at once for the proxy's own answers).
pub(super) fn respond(
    conn: Arc<Connection>,
    record: Record,
    method: &'static str,
    result: Result<Reply, ProxyError>,
) -> Response<ProxyBody> {
    let Record { request_id, start, client, span, log, trail, authz_response, .. } = record;
    let span = span.map(|mut s| {
        if let Some(route) = trail.route() {
            telemetry::name_server_span(&mut s, method, &route.name);
        }
        s
    });
    match result {
        Ok(Reply::Local(mut resp)) => {
            // A cache hit on a route with `ext_authz` gets the server's fields as an upstream
            // answer would.
            for (name, value) in authz_response {
                resp.headers_mut().append(name, value);
            }
            answer_headers(&conn, &trail, resp.headers_mut(), request_id, client);
            let status = resp.status().as_u16();
            drop(Finish { conn, start, status, trail, log, error: None, span });
            resp
        }
        Ok(Reply::Upstream(Answer { mut parts, body, idle_timeout, capture, fill, held })) => {
            // The authorization server's fields for the answer, under the operator's changes.
            for (name, value) in authz_response {
                parts.headers.append(name, value);
            }
            answer_headers(&conn, &trail, &mut parts.headers, request_id, client);
            let status = parts.status.as_u16();
            let finish = Finish { conn, start, status, trail, log, error: None, span };
            let done = Box::new(Done { _held: held, _finish: finish });
            Response::from_parts(parts, ProxyBody::upstream(body, idle_timeout, capture, fill, done))
        }
        Err(e) => {
            tracing::debug!(request_id = ?request_id, category = e.category(), error = %e, "request failed");
            let mut resp = e.to_response(&request_id);
            answer_headers(&conn, &trail, resp.headers_mut(), request_id, client);
            let (status, error) = (resp.status().as_u16(), Some(e.category()));
            // The answer is in hand: nothing more to wait for.
            drop(Finish { conn, start, status, trail, log, error, span });
            resp
        }
    }
}

/// The last word on every answer's headers, the proxy's own included: the operator's changes
/// (the route's, then the listener's), then the request id, which every answer carries.
fn answer_headers(
    conn: &Connection,
    trail: &Trail,
    headers: &mut http::HeaderMap,
    request_id: HeaderValue,
    client: std::net::IpAddr,
) {
    let listener = conn.listener.transforms();
    let listener = listener.as_ref().and_then(|t| t.response.as_deref());
    let route = trail.route().and_then(|r| r.response_headers.as_deref());
    if listener.is_some() || route.is_some() {
        let vars = Vars { client, request_id: &request_id, tls: conn.tls.as_deref() };
        for rules in route.into_iter().chain(listener) {
            rules.apply(headers, &vars);
        }
    }
    headers.insert(X_REQUEST_ID, request_id);
    if let Some(note) = &trail.cache {
        headers.append(crate::cache::CACHE_STATUS, note.header());
    }
}

/// Counts and logs a request head the listener refused before there was a request (it could not
/// be parsed, or was too large; the listener answered and closed). The reason is known; the
/// request's method, host and path are not.
pub(crate) fn refused_by_parser(conn: Arc<Connection>, why: Reject) {
    tracing::debug!(peer = %conn.peer, reason = why.message(), "malformed request refused by the parser");
    let start = Instant::now();
    let log = conn.listener.log_this().then(|| {
        let mut head = Fields::with_capacity(128);
        head.line()
            .time(key!("time"), start.into_std())
            .name(key!("request_id"), None)
            .name(key!("trace_id"), None)
            .token(key!("client_ip"), conn.client_ip.as_bytes())
            .name(key!("method"), None)
            .name(key!("host"), None)
            .name(key!("path"), None);
        head
    });
    let error = Some(ProxyError::BadRequest(why.message()).category());
    // What the listener answered: 431 for a head over the size limit, 400 for the rest.
    let status = if why == Reject::HeadTooLarge { 431 } else { 400 };
    drop(Finish { conn, start, status, trail: Trail::default(), log, error, span: None });
}

/// The request's own access-log fields, written as it arrives (only for requests that are
/// logged), so nothing of it needs keeping until the response is done.
fn log_head(
    conn: &Connection,
    req: &Request<ClientBody>,
    client: std::net::IpAddr,
    request_id: &HeaderValue,
    // The proxy made the id (hex and dashes): it needs no escape scan.
    new_id: bool,
    span: Option<&Span>,
    start: Instant,
) -> Fields {
    // The trace: the server span's when tracing, else the one the client's traceparent names.
    let mut hex = [0u8; 32];
    let trace = match span.map(Span::span_context) {
        Some(cx) if cx.is_valid() => {
            telemetry::hex_into(&mut hex, &cx.trace_id().to_bytes());
            std::str::from_utf8(&hex).ok()
        }
        Some(_) => None,
        None => req.headers().get(telemetry::TRACEPARENT).and_then(|t| trace_id(t.as_bytes())),
    };
    let host = match req.uri().authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => req.headers().get(HOST).map(HeaderValue::as_bytes),
    };
    let mut head = Fields::with_capacity(256);
    let mut line = head.line();
    line.time(key!("time"), start.into_std());
    if new_id {
        line.token(key!("request_id"), request_id.as_bytes());
    } else {
        line.header(key!("request_id"), Some(request_id.as_bytes()));
    }
    // The peer's text is made once per connection; a client named by a trusted proxy, per request.
    let named;
    let client_ip = if client == conn.peer.ip() {
        conn.client_ip.as_bytes()
    } else {
        named = client.to_string();
        named.as_bytes()
    };
    line.name(key!("trace_id"), trace)
        .token(key!("client_ip"), client_ip)
        // A method is a token: nothing in it needs escaping.
        .name(key!("method"), Some(req.method().as_str()))
        .header(key!("host"), host)
        .str(key!("path"), req.uri().path_and_query().map(PathAndQuery::as_str));
    head
}

// === impl Finish ===

impl Drop for Finish {
    fn drop(&mut self) {
        let took = self.start.elapsed();
        if let Some(span) = self.span.take() {
            telemetry::end_with_status(*span, Some(self.status), self.error, true);
        }
        let outcome = Outcome::new(self.status, took);
        self.conn.listener.stats.record(&outcome);
        if let Some(category) = self.error {
            self.conn.listener.errors.record(category);
        }
        let snapshot = self.trail.snapshot.as_deref();
        // A cache hit says nothing about the upstream: rollout gates and canary brakes judge
        // only answers the upstream gave.
        let upstream = self.trail.cache.is_none_or(|n| n.outcome.upstream_answered());
        if let Some(s) = snapshot.filter(|_| upstream) {
            s.stats.served.record(&outcome);
            if outcome.server_error() && self.error.is_some() {
                s.stats.proxy_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let route = self.trail.route();
        if let Some(r) = route {
            r.runtime.metrics.record(&outcome);
            if let Some(s) = &r.split
                && self.trail.pool != NONE
                && upstream
            {
                s.record(self.trail.variant, &outcome, &r.name);
            }
        }
        let Some(head) = self.log.take() else {
            return;
        };
        let pool = snapshot.and_then(|s| s.pools.get(self.trail.pool as usize));
        let variant =
            route.and_then(|r| r.split.as_ref()?.variants.get(self.trail.variant as usize)).map(|v| &*v.name);
        let endpoint = pool.and_then(|p| p.endpoints.get(self.trail.endpoint as usize));
        let breaker = match self.error {
            Some("circuit_open") => Some("open"),
            _ if self.trail.probe => Some("probe"),
            _ => None,
        };
        let trail = &self.trail;
        self.conn.serving.access_log.write(&head, |line| {
            line.opt_int(key!("config_version"), snapshot.map(|s| s.meta.version))
                .name(key!("route"), route.map(|r| &*r.name))
                .name(key!("pool"), pool.map(|p| &*p.name))
                .name(key!("endpoint"), endpoint.map(|e| &*e.address))
                .int(key!("status"), u64::from(self.status))
                .millis(key!("duration_ms"), Some(took))
                .millis(
                    key!("upstream_duration_ms"),
                    (trail.upstream_us != u64::MAX).then(|| Duration::from_micros(trail.upstream_us)),
                )
                .int(key!("retries"), u64::from(trail.retries))
                .name(key!("error"), self.error)
                .name(key!("breaker"), breaker)
                .name(key!("cache"), super::cache::log_name(trail))
                .str(key!("variant"), variant)
                .bool(key!("mirrored"), trail.mirrored)
                .name(key!("upgrade"), (trail.upgrade && self.status == 101).then_some("websocket"));
            let tls = self.conn.tls.as_deref();
            line.name(key!("tls_version"), tls.map(|t| t.version))
                .str(key!("sni"), tls.and_then(|t| t.sni.as_deref()))
                .str(key!("client_subject"), tls.and_then(|t| Some(&*t.peer.as_ref()?.info.subject)));
        });
    }
}
