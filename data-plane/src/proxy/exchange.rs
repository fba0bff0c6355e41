//! Exchange: the request's tries against its pool. Which endpoint, when to retry and where,
//! when to hedge, per-try and response deadlines, the retry budget, and each try's outcome
//! recorded against its endpoint's health and the pool's breaker.
//!
//! Decides everything about tries; it may not change the request's head (that was
//! `upstream_request`'s job) or shape the response. Sending goes through [`Transport`], so these
//! decisions are tested with scripted endpoints on paused time (`exchange/tests.rs`).

use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::body::UpstreamBody;
use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode};
use opentelemetry::KeyValue;
use opentelemetry::trace::Span as _;
use tokio::time::Instant;

use super::context::{NONE, TraceParent, Trail};
use super::route::Routed;
use super::upstream_request::{Outgoing, Template};
use crate::body::{Replay, RequestBody, Upload};
use crate::error::ProxyError;
use crate::resilience::breaker::RetrySlot;
use crate::resilience::retry::{HEDGE_MIN_SAMPLES, HedgePolicy};
use crate::snapshot::RouteEntry;
use crate::sync::lock;
use crate::telemetry::{self, ClientSpan};
use crate::upstream::{InFlight, PickContext, Pool, SendError, upstream_uri};

/// Sends one try to one endpoint: the seam between the exchange's decisions and the network.
pub(crate) trait Transport {
    /// A try's answer: a response, and what it needs kept while its body is read.
    type Answer;
    fn send(
        &self,
        pool: &Pool,
        endpoint: usize,
        req: Box<Request<RequestBody>>,
    ) -> impl Future<Output = Result<Self::Answer, SendError>>;
    fn status(answer: &Self::Answer) -> StatusCode;
}

/// The real thing: the pool's connections.
pub(super) struct Network;

impl Transport for Network {
    /// Boxed, as the request: the answer passes up through as many futures.
    type Answer = Box<Response<UpstreamBody>>;

    fn send(
        &self,
        pool: &Pool,
        endpoint: usize,
        req: Box<Request<RequestBody>>,
    ) -> impl Future<Output = Result<Self::Answer, SendError>> {
        pool.send(endpoint, req)
    }

    fn status(resp: &Self::Answer) -> StatusCode {
        resp.status()
    }
}

/// A request to send (again), and the upload its body reports to.
type Sendable = (Box<Request<RequestBody>>, Option<Arc<Upload>>);

/// The outcome of one try: the answer, or why there is none.
type TryResult<A> = Result<A, SendError>;

/// Endpoints a request has tried, so a retry or hedge goes elsewhere. Fixed size: past eight
/// tries, later ones are simply not remembered.
#[derive(Default)]
struct Tried {
    list: [usize; 8],
    len: usize,
}

/// Sends the request to the routed pool, trying again as the route allows, and notes in `trail`
/// which endpoint answered (or was tried last), how long it took and how many retries it took.
pub(super) async fn forward<'a>(
    routed: &Routed<'a>,
    out: Outgoing<'a>,
    request_id: &HeaderValue,
    client_ip: IpAddr,
    probe: bool,
    now: Instant,
    trail: &mut Trail,
) -> Result<Won<Box<Response<UpstreamBody>>>, ProxyError> {
    let exchange = Exchange {
        transport: &Network,
        request_id,
        client_ip,
        route: routed.route,
        pool: routed.pool,
        template: out.template.as_ref(),
        method_allows: out.method_allows,
        copy: out.copy.as_deref(),
        has_body: out.has_body,
        hedge: out.hedge,
        probe,
        trace: out.trace,
        last: AtomicU32::new(NONE),
        tries: AtomicU32::new(0),
        upstream_us: AtomicU64::new(u64::MAX),
        retries: AtomicU32::new(0),
    };
    let won = exchange.run(out.first, out.upload, now).await;
    trail.endpoint = exchange.last.load(Ordering::Relaxed);
    trail.upstream_us = exchange.upstream_us.load(Ordering::Relaxed);
    trail.retries = exchange.retries.load(Ordering::Relaxed);
    if let Ok(w) = &won {
        trail.endpoint = w.endpoint as u32;
    }
    won
}

/// One request's tries against its pool.
pub(super) struct Exchange<'a, T> {
    transport: &'a T,
    /// For the log lines about its tries.
    request_id: &'a HeaderValue,
    client_ip: IpAddr,
    route: &'a RouteEntry,
    pool: &'a Pool,
    /// The head kept up front, when a retry or hedge may need it while a try holds the request.
    template: Option<&'a Template>,
    /// The route resends this method once it may have reached an upstream.
    method_allows: bool,
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
/// retry slot (if retried), and the answer (the response and its connection).
pub(super) struct Won<A> {
    pub endpoint: usize,
    pub in_flight: InFlight,
    pub retry: Option<RetrySlot>,
    pub answer: A,
}

impl<T: Transport> Exchange<'_, T> {
    /// Tries endpoints until one answers, the route's retry policy says stop, or the route's
    /// response deadline passes: a try that failed in a way the policy retries, with budget left,
    /// goes again after a backoff, to an endpoint not tried yet.
    ///
    /// One timer serves the whole request: it is set to the earliest of the response deadline,
    /// the current try's deadline and the hedge point, and checked against each when it fires.
    /// Separate timers for each would cost a timer-wheel insert and remove apiece on every request.
    async fn run(
        &self,
        first: Box<Request<RequestBody>>,
        upload: Option<Arc<Upload>>,
        start: Instant,
    ) -> Result<Won<T::Answer>, ProxyError> {
        let policy = &self.route.retry;
        // What the route's budgets are measured against.
        if policy.max_attempts > 1 {
            self.route.runtime.budgets.request(start);
        }
        if self.hedge.is_some() {
            self.route.runtime.budgets.hedgeable_request(start);
        }
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
            let mut sending = pin!(self.try_endpoint(i, req, started));
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
                    let result = Err(SendError::bare(self.timed_out(i, d.timeout)));
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
                Ok(answer) => {
                    let status = T::status(&answer).as_u16();
                    let again = (more && policy.on_status(status) && self.method_allows)
                        .then(|| self.again(None))
                        .flatten();
                    match again.and_then(|a| Some((a, self.start_retry(&mut retry)?))) {
                        Some((again, slot)) => {
                            tracing::debug!(request_id = ?self.request_id, endpoint = %self.pool.endpoints[i].address, status, attempt, "retrying");
                            retry = Some(slot);
                            again
                        }
                        None => return Ok(Won { endpoint: i, in_flight, retry, answer }),
                    }
                }
                Err(failed) => {
                    let wanted = more && failed.retryable(policy, self.method_allows);
                    let SendError { error, unsent, sent } = failed;
                    let again = wanted
                        .then(|| unsent.map(|r| (r, kept_upload)).or_else(|| self.again(sent)))
                        .flatten();
                    match again.and_then(|a| Some((a, self.start_retry(&mut retry)?))) {
                        Some((again, slot)) => {
                            tracing::debug!(request_id = ?self.request_id, error = %error, attempt, "retrying");
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

    /// The request again, with its body's copy if that was kept whole: from the kept head, or
    /// else from `sent`, the head a failed try gave back.
    fn again(&self, sent: Option<Box<Request<RequestBody>>>) -> Option<Sendable> {
        let copied = self.copy.is_some_and(|c| lock(c).is_complete());
        if self.has_body && !copied {
            return None;
        }
        let mut req = match (self.template, sent) {
            (Some(t), _) => {
                let mut req = Box::new(Request::new(RequestBody::empty()));
                *req.method_mut() = t.method.clone();
                *req.uri_mut() = t.uri.clone();
                *req.version_mut() = t.version;
                *req.headers_mut() = t.headers.clone();
                req
            }
            (None, Some(head)) => head,
            (None, None) => return None,
        };
        let upload = self.copy.map(|_| Arc::new(Upload::default()));
        if let Some(c) = self.copy {
            *req.body_mut() = RequestBody::replay(&lock(c), upload.clone());
        }
        Some((req, upload))
    }

    fn pick(&self, req: &Request<RequestBody>, tried: &Tried) -> usize {
        let ctx = PickContext { headers: req.headers(), client_ip: self.client_ip };
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
        req: Box<Request<RequestBody>>,
        started: Instant,
    ) -> TryResult<T::Answer> {
        let mut req = req;
        let span = self.trace.map(|t| self.client_span(t, i, &mut req));
        let result = self.transport.send(self.pool, i, req).await;
        self.record(i, started, &result);
        if let Some(span) = span {
            match &result {
                Ok(answer) => span.finish(Some(T::status(answer).as_u16()), None),
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
    async fn bounded<F: Future<Output = TryResult<T::Answer>>>(
        &self,
        i: usize,
        started: Instant,
        deadline: Option<Instant>,
        sending: Pin<&mut F>,
    ) -> TryResult<T::Answer> {
        let Some(at) = deadline else {
            return sending.await;
        };
        match tokio::time::timeout_at(at, sending).await {
            Ok(result) => result,
            Err(_) => {
                let timeout = self.route.retry.per_try_timeout.unwrap_or_default();
                let result = Err(SendError::bare(self.timed_out(i, timeout)));
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

    fn record(&self, i: usize, started: Instant, result: &TryResult<T::Answer>) {
        let now = Instant::now();
        let took = now.saturating_duration_since(started);
        let metrics = &self.pool.endpoints[i].state.metrics;
        let success = match result {
            Ok(answer) => {
                let status = T::status(answer);
                metrics.answered(status.as_u16(), took);
                self.upstream_us.store(took.as_micros() as u64, Ordering::Relaxed);
                !status.is_server_error()
            }
            Err(e) if e.error.is_endpoint_failure() => {
                metrics.failures.fetch_add(1, Ordering::Relaxed);
                false
            }
            // The client's doing, or the proxy refusing: says nothing about the endpoint.
            Err(_) => return,
        };
        self.pool.record(i, success, took, || match result {
            Ok(answer) => format!("status {}", T::status(answer).as_u16()),
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
    async fn hedge<F: Future<Output = TryResult<T::Answer>>>(
        &self,
        policy: &HedgePolicy,
        (i, started, deadline): (usize, Instant, Option<Instant>),
        first: Pin<&mut F>,
        tried: &mut Tried,
    ) -> (TryResult<T::Answer>, Option<(usize, InFlight)>) {
        let budgets = &self.route.runtime.budgets;
        let mut first = pin!(self.bounded(i, started, deadline, first));
        let Some((mut req, _)) = self.again(None) else {
            return (first.await, None);
        };
        let j = self.pick(&req, tried);
        if j == i || self.prepare(&mut req, j).is_err() || !budgets.try_hedge(Instant::now(), policy) {
            return (first.await, None);
        }
        tried.push(j);
        tracing::debug!(request_id = ?self.request_id, first = %self.pool.endpoints[i].address, hedge = %self.pool.endpoints[j].address, "hedging");
        let in_flight = InFlight::new(&self.pool.endpoints[j].state);
        let now = Instant::now();
        let deadline = self.route.retry.per_try_timeout.map(|t| now + t);
        let sending = pin!(self.try_endpoint(j, req, now));
        let mut second = pin!(self.bounded(j, now, deadline, sending));
        let good = |r: &TryResult<T::Answer>| r.as_ref().is_ok_and(|a| !T::status(a).is_server_error());
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

#[cfg(test)]
mod tests;
