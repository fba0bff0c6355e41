//! The request lifecycle, as named phases: admit the request, pick a route, apply the route's
//! limits, pass the pool's breaker, then try endpoints (retrying and hedging as the route allows)
//! and shape the response. Every failure is a [`ProxyError`]; `error.rs` alone turns it into a
//! response.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HOST, HeaderValue, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body as _, Incoming};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanContext};
use opentelemetry_sdk::trace::{SdkTracer, Span};
use sluice_bundle::UpstreamProtocol;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use crate::access_log::{Fields, key, trace_id};
use crate::body::{Capture, Idle, ProxyBody, Replay, RequestBody, Upload};
use crate::error::ProxyError;
use crate::headers::{self, RATELIMIT_LIMIT, RATELIMIT_REMAINING, X_REQUEST_ID, X_SLUICE_SHADOW};
use crate::listener::ListenerState;
use crate::listener::strict::{Reject, StrictState};
use crate::metrics::Outcome;
use crate::resilience::breaker::{Admitted, Refusal, RetrySlot};
use crate::resilience::limit::{OwnedPermit, RateDecision, Shed};
use crate::resilience::retry::{HEDGE_MIN_SAMPLES, HedgePolicy, MAX_REPLAY_BODY};
use crate::router::RequestView;
use crate::server::Shared;
use crate::shadow::{Primary, Shadow};
use crate::snapshot::{RouteEntry, RouteRateLimit, Snapshot};
use crate::split::STABLE;
use crate::telemetry::{self, ClientSpan};
use crate::upstream::{Endpoint, InFlight, Inputs, Lease, PickContext, Pool, SendError};

/// One client connection, shared by the requests on it.
pub(crate) struct Connection {
    pub shared: Arc<Shared>,
    pub peer: SocketAddr,
    /// The peer's IP as a header value, formatted once per connection.
    pub client_ip: HeaderValue,
    pub strict: Arc<StrictState>,
    /// The listener's overload protection, counters and access-log sampling.
    pub listener: Arc<ListenerState>,
}

/// What a request holds until its response body is done: its endpoint's in-flight count, its
/// place in the pool's breaker and in its listener's limit, and its retry slot if it was retried.
pub(crate) struct Held {
    _in_flight: InFlight,
    _admitted: Admitted,
    _permit: OwnedPermit,
    _retry: Option<RetrySlot>,
    /// Set once the response is ready; records the request when the body is done.
    pub finish: Option<Finish>,
}

/// What a request did, filled in as it goes, for its metrics and access-log line. Compact: it
/// rides in every response body.
struct Trail {
    snapshot: Option<Arc<Snapshot>>,
    /// Index in the snapshot (`NONE`: not routed).
    route: u32,
    /// The pool that served it (`NONE`: none chosen) and its variant of the route.
    pool: u32,
    variant: u8,
    /// A copy went to the route's mirror.
    mirrored: bool,
    /// The endpoint that answered, or the last one tried (`NONE`: none).
    endpoint: u32,
    /// The answering (or last) try's time to response headers, in µs (`u64::MAX`: none).
    upstream_us: u64,
    retries: u32,
    /// Let through by a half-open breaker as a probe.
    probe: bool,
}

const NONE: u32 = u32::MAX;

impl Trail {
    /// The route the request matched, if it got that far.
    fn route(&self) -> Option<&RouteEntry> {
        self.snapshot.as_deref()?.routes.get(self.route as usize)
    }
}

impl Default for Trail {
    fn default() -> Self {
        Self {
            snapshot: None,
            route: NONE,
            pool: NONE,
            variant: STABLE,
            mirrored: false,
            endpoint: NONE,
            upstream_us: u64::MAX,
            retries: 0,
            probe: false,
        }
    }
}

/// Counts a request and writes its access-log line once its response is done: the body sent
/// whole, or the client gone. Dropping it does the work.
pub(crate) struct Finish {
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

/// What an upstream try needs to trace itself: the tracer and its parent, the server span
/// (only when that span is being recorded).
#[derive(Clone, Copy)]
struct TraceParent<'a> {
    tracer: &'a SdkTracer,
    parent: &'a SpanContext,
}

/// The parts of the upstream request kept to send it again (retry or hedge).
struct Template {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

/// Endpoints a request has tried, so a retry or hedge goes elsewhere. Fixed size: past eight
/// tries, later ones are simply not remembered.
#[derive(Default)]
struct Tried {
    list: [usize; 8],
    len: usize,
}

/// The outcome of one try: the response, or why there is none.
type TryResult = Result<(Response<Incoming>, Lease), SendError>;

// === impl Connection ===

impl Connection {
    pub fn new(
        shared: Arc<Shared>,
        peer: SocketAddr,
        strict: Arc<StrictState>,
        listener: Arc<ListenerState>,
    ) -> Self {
        let client_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { shared, peer, client_ip, strict, listener }
    }
}

/// Serves one request. Never fails: errors become JSON responses carrying the request id.
pub(crate) async fn handle(
    conn: Arc<Connection>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    let (request_id, new_id) = headers::request_id(req.headers());
    let span = conn.shared.tracer.as_ref().map(|t| Box::new(telemetry::server_span(t, &req, conn.peer.ip())));
    let log =
        conn.listener.log_this().then(|| log_head(&conn, &req, &request_id, new_id, span.as_deref(), start));
    let method = telemetry::method_name(req.method());
    let mut trail = Trail::default();
    let result = match conn.listener.limiter.acquire().await {
        Ok(permit) => {
            let trace = conn.shared.tracer.as_ref().zip(span.as_deref());
            proxy(&conn, req, &request_id, permit, &mut trail, trace).await
        }
        Err(Shed::QueueFull) => Err(ProxyError::Overloaded("too many requests waiting")),
        Err(Shed::QueueTimeout) => Err(ProxyError::Overloaded("no capacity within the queue timeout")),
    };
    let (mut resp, error) = match result {
        Ok(mut resp) => {
            resp.headers_mut().insert(X_REQUEST_ID, request_id);
            (resp, None)
        }
        Err(e) => {
            tracing::debug!(request_id = ?request_id, category = e.category(), error = %e, "request failed");
            (e.to_response(&request_id), Some(e.category()))
        }
    };
    let status = resp.status().as_u16();
    let span = span.map(|mut s| {
        if let Some(route) = trail.route() {
            telemetry::name_server_span(&mut s, method, &route.name);
        }
        s
    });
    resp.body_mut().finish_with(Finish { conn, start, status, trail, log, error, span });
    Ok(resp)
}

/// Counts and logs a request head that hyper's own parser refused before the proxy saw it
/// (hyper answered 400 and closed). The framing check refused the same head, so its reason is
/// known; the request's method, host and path are not.
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
    drop(Finish { conn, start, status: 400, trail: Trail::default(), log, error, span: None });
}

async fn proxy(
    conn: &Connection,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    permit: OwnedPermit,
    trail: &mut Trail,
    trace: Option<(&SdkTracer, &Span)>,
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
    trail.snapshot = Some(snapshot.clone());

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
    let route_index = snapshot.router.find(&view).ok_or(ProxyError::NoRoute)?;
    trail.route = route_index as u32;
    let route = &snapshot.routes[route_index];
    let (variant, pool_index) = match &route.split {
        Some(s) => s.choose(req.headers(), conn.peer.ip()),
        None => (STABLE, route.pool),
    };
    trail.variant = variant;
    trail.pool = pool_index as u32;
    let pool = &snapshot.pools[pool_index];
    let host = host.and_then(|h| HeaderValue::from_str(h).ok());

    // The route's limits, then the pool's breaker.
    let now = Instant::now();
    let rate = match &route.rate_limit {
        None => None,
        Some(RouteRateLimit { limit, key, .. }) => {
            let inputs = Inputs { headers: req.headers(), client_ip: conn.peer.ip() };
            // Requests without the key's header or cookie share one bucket (key 0).
            let key = key.as_ref().map(|k| k.hash(&inputs).unwrap_or(0));
            let d = route.runtime.rate.check(limit, key, now);
            if !d.allowed {
                return Err(ProxyError::RateLimited {
                    limit: d.limit,
                    reset: d.reset_secs,
                    retry_after: d.reset_secs,
                });
            }
            Some(d)
        }
    };
    if req.body().size_hint().lower() > route.max_body {
        return Err(ProxyError::PayloadTooLarge { limit: route.max_body });
    }
    let admitted = pool.breaker.admit(now).map_err(|r| circuit_open(pool, r, now))?;
    trail.probe = admitted.probe;
    let mirror = route.mirror.as_deref().and_then(|m| {
        Some((m, m.admit(req.method(), request_id.as_bytes(), req.body().size_hint().lower())?))
    });

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
    if let Some(host) = host.clone() {
        parts.headers.insert(HOST, host);
    }
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
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
    let has_body = !body.is_end_stream();
    let resend = route.retry.may_resend(&parts.method);
    let hedge =
        route.hedge.as_ref().filter(|_| !has_body && matches!(parts.method, Method::GET | Method::HEAD));
    let template = (resend || hedge.is_some()).then(|| Template {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
        headers: parts.headers.clone(),
    });
    // A mirrored body is copied too, up to the mirror's cap, and the shadow told once it is whole.
    let settled = (mirror.is_some() && has_body).then(|| Arc::new(Notify::new()));
    let limit = match &mirror {
        Some((m, _)) if settled.is_some() => m.max_body.max(MAX_REPLAY_BODY),
        _ => MAX_REPLAY_BODY,
    };
    let copy = ((resend && has_body && body.size_hint().lower() <= MAX_REPLAY_BODY as u64)
        || settled.is_some())
    .then(|| Arc::new(Mutex::new(Replay::with_limit(limit, settled.clone()))));
    let primary = mirror.map(|(m, slot)| {
        let mut headers = parts.headers.clone();
        headers.insert(X_SLUICE_SHADOW, HeaderValue::from_static("1"));
        let (tx, rx) = oneshot::channel();
        let shadow = Shadow {
            _slot: slot,
            snapshot: snapshot.clone(),
            route: route_index,
            method: parts.method.clone(),
            path: parts.uri.path_and_query().cloned(),
            host: host.clone(),
            headers,
            body: copy.clone().zip(settled),
            primary: rx,
            request_id: request_id.clone(),
            client_ip: conn.peer.ip(),
            trace: trace.map(|t| (t.tracer.clone(), t.parent.clone())),
        };
        tokio::spawn(shadow.run());
        trail.mirrored = true;
        (m, tx)
    });
    let upload = has_body.then(|| Arc::new(Upload::default()));
    let body = Idle::new(body, route.idle_timeout).reporting_to(upload.clone());
    let first = Request::from_parts(parts, RequestBody::client(body, route.max_body, copy.clone()));

    // Forward.
    if route.retry.max_attempts > 1 {
        route.runtime.budgets.request(now);
    }
    if hedge.is_some() {
        route.runtime.budgets.hedgeable_request(now);
    }
    let exchange = Exchange {
        conn,
        route,
        pool,
        template: template.as_ref(),
        copy: copy.as_deref(),
        has_body,
        hedge,
        probe: admitted.probe,
        trace,
        last: AtomicU32::new(NONE),
        tries: AtomicU32::new(0),
        upstream_us: AtomicU64::new(u64::MAX),
        retries: AtomicU32::new(0),
    };
    let answer = exchange.run(first, upload, now).await;
    trail.endpoint = exchange.last.load(Ordering::Relaxed);
    trail.upstream_us = exchange.upstream_us.load(Ordering::Relaxed);
    trail.retries = exchange.retries.load(Ordering::Relaxed);
    let (i, in_flight, retry, resp, lease) = match answer {
        Ok(a) => a,
        Err(e) => {
            if let Some((_, tx)) = primary {
                let latency = Duration::from_micros(trail.upstream_us.min(u64::MAX - 1));
                let _ = tx.send(Primary { outcome: Err(e.category()), latency, body: None });
            }
            return Err(e);
        }
    };
    trail.endpoint = i as u32;

    // Response.
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::UpstreamProtocol {
            endpoint: pool.endpoints[i].address.clone(),
            reason: "101 Switching Protocols without an upgrade request".into(),
        });
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    // What the shadow compares against: the upstream's answer, before the proxy adds to it.
    let primary = primary.map(|(m, tx)| {
        let headers = if m.compares() { parts.headers.clone() } else { HeaderMap::new() };
        (m, tx, parts.status.as_u16(), headers)
    });
    if let (Some(d), Some(r)) = (rate, &route.rate_limit) {
        rate_headers(&mut parts.headers, &r.header, &d);
    }
    // The upstream's HTTP version is its own business; hyper picks ours for the client.
    parts.version = Version::HTTP_11;
    let held =
        Held { _in_flight: in_flight, _admitted: admitted, _permit: permit, _retry: retry, finish: None };
    let mut body = ProxyBody::upstream(body, route.idle_timeout, lease, held);
    if let Some((m, tx, status, headers)) = primary {
        let captured = m.compares().then(|| {
            let (capture, captured) = Capture::new(m.max_body);
            body.capture_into(capture);
            captured
        });
        let latency = Duration::from_micros(trail.upstream_us.min(u64::MAX - 1));
        let _ = tx.send(Primary { outcome: Ok((status, headers)), latency, body: captured });
    }
    Ok(Response::from_parts(parts, body))
}

/// One request's tries against its pool.
struct Exchange<'a> {
    conn: &'a Connection,
    route: &'a RouteEntry,
    pool: &'a Pool,
    template: Option<&'a Template>,
    /// Where the body is being copied, if it may be replayed.
    copy: Option<&'a Mutex<Replay>>,
    has_body: bool,
    hedge: Option<&'a HedgePolicy>,
    /// The breaker let this request through as a half-open probe.
    probe: bool,
    /// Set when the request is traced and sampled: each try gets a client span.
    trace: Option<TraceParent<'a>>,
    /// Tries started, for `http.request.resend_count`.
    tries: AtomicU32,
    /// For the access log: the endpoint last tried (`NONE`: none), the latest try's time
    /// to response headers in µs (`u64::MAX`: none), and retries started.
    last: AtomicU32,
    upstream_us: AtomicU64,
    retries: AtomicU32,
}

/// What a successful exchange returns: the endpoint that answered, its in-flight count, the
/// retry slot (if retried), the response and its connection.
type Answer = (usize, InFlight, Option<RetrySlot>, Response<Incoming>, Lease);

impl Exchange<'_> {
    /// Tries endpoints until one answers, the route's retry policy says stop, or the route's
    /// response deadline passes: a try that failed in a way the policy retries, with budget left,
    /// goes again after a backoff, to an endpoint not tried yet.
    ///
    /// One timer serves the whole request: it is set to the earliest of the response deadline,
    /// the current try's deadline and the hedge point, and checked against each when it fires.
    /// Separate timers for each would cost a timer-wheel insert and remove apiece on every request.
    async fn run(
        &self,
        first: Request<RequestBody>,
        upload: Option<Arc<Upload>>,
        start: Instant,
    ) -> Result<Answer, ProxyError> {
        let policy = &self.route.retry;
        let client_upload = upload.clone();
        let mut response = Deadline::new(start, self.route.timeout);
        let mut timer = pin!(tokio::time::sleep_until(response.at));
        let mut tried = Tried::default();
        let mut next = (first, upload);
        let mut retry: Option<RetrySlot> = None;
        let mut attempt = 1;
        loop {
            let (mut req, upload) = next;
            let i = self.pick(&req, &tried);
            tried.push(i);
            self.prepare(&mut req, i)?;
            let in_flight = InFlight::new(&self.pool.endpoints[i].state);
            // An unsent request still carries its body, which still reports to this upload.
            let kept_upload = upload.clone();
            let started = if attempt == 1 { start } else { Instant::now() };
            let mut per_try = policy.per_try_timeout.map(|t| Deadline::new(started, t));
            let mut hedge_at = self.hedge.filter(|_| attempt == 1).and_then(|h| {
                let delay = h.delay.or_else(|| self.route.runtime.latency.p95(started, HEDGE_MIN_SAMPLES))?;
                Some((h, started + delay))
            });
            let mut sending = pin!(self.try_endpoint(i, req, upload.clone(), started));
            let (i, in_flight, result) = loop {
                let mut at = response.at;
                if let Some(d) = &per_try {
                    at = at.min(d.at);
                }
                if let Some((_, h)) = hedge_at {
                    at = at.min(h);
                }
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                tokio::select! {
                    biased;
                    result = sending.as_mut() => break (i, in_flight, result),
                    () = timer.as_mut() => {}
                }
                let now = Instant::now();
                if !response.check(client_upload.as_deref(), now) {
                    return Err(self.timed_out(i, self.route.timeout));
                }
                if let Some(d) = per_try.as_mut()
                    && !d.check(upload.as_deref(), now)
                {
                    let result = Err(SendError { error: self.timed_out(i, d.timeout), unsent: None });
                    self.record(i, started, &result);
                    break (i, in_flight, result);
                }
                if let Some((h, at)) = hedge_at
                    && now >= at
                {
                    hedge_at = None;
                    let first_deadline = per_try.map(|d| d.at);
                    // Boxed: the race holds a second try, and only requests that hedge pay for it.
                    let race =
                        Box::pin(self.hedge(h, (i, started, first_deadline), sending.as_mut(), &mut tried));
                    match tokio::time::timeout_at(response.at, race).await {
                        Err(_) => return Err(self.timed_out(i, self.route.timeout)),
                        Ok((result, Some((j, hedge_in_flight)))) => break (j, hedge_in_flight, result),
                        Ok((result, None)) => break (i, in_flight, result),
                    }
                }
            };
            let more = attempt < policy.max_attempts;
            next = match result {
                Ok((resp, lease)) => {
                    let status = resp.status().as_u16();
                    let again = (more && policy.on_status(status) && self.method_allows())
                        .then(|| self.again())
                        .flatten();
                    match again.and_then(|a| Some((a, self.start_retry(&mut retry)?))) {
                        Some((again, slot)) => {
                            tracing::debug!(endpoint = %self.pool.endpoints[i].address, status, attempt, "retrying");
                            retry = Some(slot);
                            again
                        }
                        None => return Ok((i, in_flight, retry, resp, lease)),
                    }
                }
                Err(SendError { error, unsent }) => {
                    let wanted = more
                        && match &error {
                            // It reached nobody: safe to send elsewhere whatever the method.
                            ProxyError::ConnectFailure { .. } | ProxyError::ConnectTimeout { .. } => {
                                policy.on_connect_failure && (unsent.is_some() || self.method_allows())
                            }
                            ProxyError::UpstreamReset { .. } => policy.on_reset && self.method_allows(),
                            ProxyError::UpstreamTimeout { .. } => policy.on_timeout && self.method_allows(),
                            _ => false,
                        };
                    let again =
                        wanted.then(|| unsent.map(|r| (*r, kept_upload)).or_else(|| self.again())).flatten();
                    match again.and_then(|a| Some((a, self.start_retry(&mut retry)?))) {
                        Some((again, slot)) => {
                            tracing::debug!(error = %error, attempt, "retrying");
                            retry = Some(slot);
                            again
                        }
                        None => return Err(error),
                    }
                }
            };
            drop(in_flight);
            // The backoff, on the same timer, still within the response deadline.
            let wake = Instant::now() + policy.backoff(attempt);
            loop {
                timer.as_mut().reset(wake.min(response.at));
                timer.as_mut().await;
                let now = Instant::now();
                if !response.check(client_upload.as_deref(), now) {
                    return Err(self.timed_out(i, self.route.timeout));
                }
                if now >= wake {
                    break;
                }
            }
            attempt += 1;
        }
    }

    /// Whether the route retries this request's method once it has reached an upstream.
    fn method_allows(&self) -> bool {
        self.template.is_some_and(|t| self.route.retry.allows_method(&t.method))
    }

    /// Takes a retry from the pool's breaker and the route's budget; the previous retry's slot,
    /// if any, is handed back first.
    fn start_retry(&self, previous: &mut Option<RetrySlot>) -> Option<RetrySlot> {
        previous.take();
        let budgets = &self.route.runtime.budgets;
        let Some(slot) = self.pool.breaker.start_retry() else {
            budgets.retries_denied.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let allowed = budgets.try_retry(Instant::now(), &self.route.retry);
        if allowed {
            self.retries.fetch_add(1, Ordering::Relaxed);
        }
        allowed.then_some(slot)
    }

    /// A fresh copy of the request from the kept head and body copy, if both were kept whole.
    fn again(&self) -> Option<(Request<RequestBody>, Option<Arc<Upload>>)> {
        let t = self.template?;
        let copied = self.copy.is_some_and(|c| crate::server::lock(c).is_complete());
        if self.has_body && !copied {
            return None;
        }
        let upload = self.copy.map(|_| Arc::new(Upload::default()));
        let body = match self.copy {
            Some(c) => RequestBody::replay(&crate::server::lock(c), upload.clone()),
            None => RequestBody::replay(&Replay::default(), None),
        };
        let mut req = Request::new(body);
        *req.method_mut() = t.method.clone();
        *req.uri_mut() = t.uri.clone();
        *req.version_mut() = t.version;
        *req.headers_mut() = t.headers.clone();
        Some((req, upload))
    }

    fn pick(&self, req: &Request<RequestBody>, tried: &Tried) -> usize {
        let ctx = PickContext { headers: req.headers(), client_ip: self.conn.peer.ip() };
        self.pool.pick(&ctx, tried.as_slice())
    }

    /// Points the request at endpoint `i`.
    fn prepare(&self, req: &mut Request<RequestBody>, i: usize) -> Result<(), ProxyError> {
        self.last.store(i as u32, Ordering::Relaxed);
        let uri = upstream_uri(
            self.pool.protocol(),
            &self.pool.endpoints[i],
            req.headers().get(HOST),
            req.uri().path_and_query(),
        )?;
        *req.uri_mut() = uri;
        Ok(())
    }

    /// One try against endpoint `i`, with its outcome recorded against the endpoint's health and
    /// the pool's breaker. Its deadlines are the caller's.
    async fn try_endpoint(
        &self,
        i: usize,
        req: Request<RequestBody>,
        upload: Option<Arc<Upload>>,
        started: Instant,
    ) -> TryResult {
        let mut req = req;
        let span = self.trace.map(|t| self.client_span(t, i, &mut req));
        let result = self.pool.send(i, req, upload).await;
        self.record(i, started, &result);
        if let Some(span) = span {
            match &result {
                Ok((resp, _)) => span.finish(Some(resp.status().as_u16()), None),
                Err(e) => span.finish(None, Some(e.error.category())),
            }
        }
        result
    }

    /// The client span of a try to endpoint `i`; its `traceparent` goes upstream.
    fn client_span(&self, t: TraceParent<'_>, i: usize, req: &mut Request<RequestBody>) -> ClientSpan {
        let mut span = telemetry::client_span(t.tracer, t.parent, req.method());
        telemetry::inject(span.span_context(), req.headers_mut());
        if span.is_recording() {
            let endpoint = &self.pool.endpoints[i];
            let resend = self.tries.fetch_add(1, Ordering::Relaxed);
            span.set_attributes([
                KeyValue::new("http.request.method", telemetry::method_name(req.method())),
                KeyValue::new("server.address", endpoint.authority.host().to_owned()),
                KeyValue::new("server.port", i64::from(endpoint.authority.port_u16().unwrap_or(80))),
                KeyValue::new("url.full", format!("http://{}{}", endpoint.authority, req.uri().path())),
                KeyValue::new("sluice.pool", self.pool.name.to_string()),
            ]);
            if resend > 0 {
                span.set_attribute(KeyValue::new("http.request.resend_count", i64::from(resend)));
            }
        }
        ClientSpan::new(span)
    }

    /// A try against endpoint `i` cut off at its per-try `deadline`, if it has one (hedging
    /// only: the main path keeps its deadlines on the request's one timer).
    async fn bounded<F: Future<Output = TryResult>>(
        &self,
        i: usize,
        started: Instant,
        deadline: Option<Instant>,
        sending: Pin<&mut F>,
    ) -> TryResult {
        let Some(at) = deadline else {
            return sending.await;
        };
        match tokio::time::timeout_at(at, sending).await {
            Ok(result) => result,
            Err(_) => {
                let timeout = self.route.retry.per_try_timeout.unwrap_or_default();
                let result = Err(SendError { error: self.timed_out(i, timeout), unsent: None });
                self.record(i, started, &result);
                result
            }
        }
    }

    /// The timeout error for endpoint `i`.
    fn timed_out(&self, i: usize, timeout: Duration) -> ProxyError {
        ProxyError::UpstreamTimeout {
            endpoint: self.pool.endpoints[i].address.clone(),
            timeout_ms: timeout.as_millis() as u64,
        }
    }

    fn record(&self, i: usize, started: Instant, result: &TryResult) {
        let now = Instant::now();
        let took = now.saturating_duration_since(started);
        let metrics = &self.pool.endpoints[i].state.metrics;
        let success = match result {
            Ok((resp, _)) => {
                metrics.answered(resp.status().as_u16(), took);
                self.upstream_us.store(took.as_micros() as u64, Ordering::Relaxed);
                !resp.status().is_server_error()
            }
            Err(e) if e.error.is_endpoint_failure() => {
                metrics.failures.fetch_add(1, Ordering::Relaxed);
                false
            }
            // The client's doing, or the proxy refusing: says nothing about the endpoint.
            Err(_) => return,
        };
        self.pool.record(i, success, took, || match result {
            Ok((resp, _)) => format!("status {}", resp.status().as_u16()),
            Err(e) => e.error.category().to_owned(),
        });
        self.pool.breaker.record(now, success, self.probe);
        if success && self.hedge.is_some_and(|h| h.delay.is_none()) {
            self.route.runtime.latency.record(now, took);
        }
    }

    /// The first try (to endpoint `i`) has not answered within the hedge delay: a second try
    /// goes to another endpoint (budget permitting) and the first good answer wins; the other is
    /// dropped, which cancels it. Returns the answer and, when it is the hedge's, the endpoint it
    /// came from with its in-flight count.
    async fn hedge<F: Future<Output = TryResult>>(
        &self,
        policy: &HedgePolicy,
        (i, started, deadline): (usize, Instant, Option<Instant>),
        first: Pin<&mut F>,
        tried: &mut Tried,
    ) -> (TryResult, Option<(usize, InFlight)>) {
        let budgets = &self.route.runtime.budgets;
        let mut first = pin!(self.bounded(i, started, deadline, first));
        let Some((mut req, _)) = self.again() else {
            return (first.await, None);
        };
        let j = self.pick(&req, tried);
        if j == i || self.prepare(&mut req, j).is_err() || !budgets.try_hedge(Instant::now(), policy) {
            return (first.await, None);
        }
        tried.push(j);
        tracing::debug!(first = %self.pool.endpoints[i].address, hedge = %self.pool.endpoints[j].address, "hedging");
        let in_flight = InFlight::new(&self.pool.endpoints[j].state);
        let now = Instant::now();
        let deadline = self.route.retry.per_try_timeout.map(|t| now + t);
        let sending = pin!(self.try_endpoint(j, req, None, now));
        let mut second = pin!(self.bounded(j, now, deadline, sending));
        let good = |r: &TryResult| r.as_ref().is_ok_and(|(resp, _)| !resp.status().is_server_error());
        // Whichever answers well first wins; a failure waits for the other.
        tokio::select! {
            r = first.as_mut() => {
                if good(&r) {
                    return (r, None);
                }
                let r2 = second.await;
                if good(&r2) {
                    budgets.hedges_won.fetch_add(1, Ordering::Relaxed);
                }
                (r2, Some((j, in_flight)))
            }
            r = second.as_mut() => {
                if good(&r) {
                    budgets.hedges_won.fetch_add(1, Ordering::Relaxed);
                    return (r, Some((j, in_flight)));
                }
                (first.await, None)
            }
        }
    }
}

/// The request's own access-log fields, written as it arrives (only for requests that are
/// logged), so nothing of it needs keeping until the response is done.
fn log_head(
    conn: &Connection,
    req: &Request<Incoming>,
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
    line.name(key!("trace_id"), trace)
        .token(key!("client_ip"), conn.client_ip.as_bytes())
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
        if let Some(s) = snapshot {
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
        self.conn.shared.access_log.write(&head, |line| {
            line.name(key!("route"), route.map(|r| &*r.name))
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
                .name(key!("cache"), None)
                .str(key!("variant"), variant)
                .bool(key!("mirrored"), trail.mirrored);
        });
    }
}

// === impl Tried ===

impl Tried {
    fn push(&mut self, i: usize) {
        if self.len < self.list.len() {
            self.list[self.len] = i;
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[usize] {
        &self.list[..self.len]
    }
}

/// The 503 for a request the pool's breaker refused.
fn circuit_open(pool: &Pool, refusal: Refusal, now: Instant) -> ProxyError {
    let retry_after = match &refusal {
        Refusal::Open(_) => pool.breaker.status(now).open_for.map_or(1, |d| d.as_secs_f64().ceil() as u64),
        Refusal::Limit(..) => 1,
    };
    ProxyError::CircuitOpen {
        pool: pool.name.clone(),
        reason: refusal.to_string().into(),
        retry_after: retry_after.max(1),
    }
}

/// `RateLimit-Limit` and `-Remaining` for an allowed request (`-Reset` only comes with a 429:
/// formatting it for every answer costs more than it tells a client that is not limited).
fn rate_headers(headers: &mut HeaderMap, limit: &HeaderValue, d: &RateDecision) {
    headers.insert(RATELIMIT_LIMIT, limit.clone());
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
}

/// A response deadline `timeout` after the end of the request: from the start for a request
/// without a body, from the moment its body was sent whole otherwise. A long upload is not cut
/// short by a response timeout; the route's idle timeout guards it against stalling instead.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    /// When it passes, unless the upload says otherwise.
    at: Instant,
    timeout: Duration,
}

impl Deadline {
    fn new(start: Instant, timeout: Duration) -> Self {
        Self { at: start + timeout, timeout }
    }

    /// Whether the deadline still holds at `now`, moving it to `timeout` after the end of the
    /// upload (or after now, while the upload goes on) when `at` has passed.
    fn check(&mut self, upload: Option<&Upload>, now: Instant) -> bool {
        if now < self.at {
            return true;
        }
        let Some(upload) = upload else {
            return false;
        };
        self.at = match upload.finished_at() {
            Some(finished) if finished + self.timeout > now => finished + self.timeout,
            Some(_) => return false,
            None => now + self.timeout,
        };
        true
    }
}

/// The request target sent upstream: origin-form (`/path?query`) for HTTP/1.1; for HTTP/2 an
/// absolute URI whose authority (`:authority`) is the client's host, as `Host` is for HTTP/1.1.
pub(crate) fn upstream_uri(
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
