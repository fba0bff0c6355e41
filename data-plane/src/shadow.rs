//! Traffic shadowing. A copy of a sampled request goes to the route's candidate pool on a task of
//! its own: the client's answer always comes from the primary and never waits for the copy. The
//! copy is bounded (requests in flight, body size, a deadline) and whatever happens to it is only
//! counted. With a diff, the candidate's answer is compared with the primary's (and, for a share,
//! a second baseline's, to learn which fields are noise); the guardrail stops mirroring for a
//! while when the candidate keeps being much slower or failing where the primary did not.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, Request};
use http_body_util::BodyExt as _;
use opentelemetry::trace::{Span as _, SpanContext};
use opentelemetry_sdk::trace::SdkTracer;
use sluice_bundle::{MAX_DIFF_SAMPLES, Mirror};
use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, timeout_at};

use crate::body::{Captured, Replay, RequestBody, Upload};
use crate::sync::lock;
use crate::telemetry;
use crate::upstream::{InFlight, PickContext, Pool, upstream_uri};
use sluice_compile::MirrorPlan;
use sluice_compile::diff::{DiffRules, DiffStats, Sample, Side};

/// Latencies below this count as this much when the guardrail compares them, so scheduling noise
/// on fast upstreams does not read as "twice as slow".
pub(crate) const LATENCY_FLOOR: Duration = Duration::from_millis(10);
/// Longest masked summary kept per side of a sample.
const SAMPLE_LEN: usize = 2048;
/// Distinct field names counted per route; beyond it they count as `other`.
const MAX_FIELDS: usize = 256;
/// Shares are in parts per million.
const PPM: u64 = 1_000_000;

/// Why a request picked for mirroring was not mirrored, as reports and metrics name it.
pub(crate) const DROP_REASONS: [&str; 5] =
    ["in_flight", "body_too_large", "guardrail", "body_incomplete", "trailers"];
const IN_FLIGHT: usize = 0;
const BODY_TOO_LARGE: usize = 1;
const GUARDRAIL: usize = 2;
const BODY_INCOMPLETE: usize = 3;
const TRAILERS: usize = 4;

const ACTIVE: u8 = 0;
const TRIPPED: u8 = 1;
const DISABLED: u8 = 2;

/// A route's mirror as the request path uses it.
#[derive(Debug)]
pub(crate) struct MirrorEntry {
    pub pool: usize,
    /// Share mirrored, in parts per million of request ids.
    fraction: u64,
    methods: Box<[Method]>,
    pub max_body: usize,
    max_in_flight: usize,
    timeout: Duration,
    pub diff: Option<DiffEntry>,
    guardrail: Option<GuardLimits>,
    pub state: Arc<MirrorState>,
}

#[derive(Debug)]
pub(crate) struct DiffEntry {
    rules: DiffRules,
    /// The second baseline's pool and share (parts per million of mirrored requests).
    baseline: Option<(usize, u64)>,
    /// `(relative, absolute)` noise thresholds, as fractions.
    pub noise: (f64, f64),
    pub samples: usize,
}

#[derive(Debug, Clone, Copy)]
struct GuardLimits {
    ratio: f64,
    consecutive: u32,
    cooldown: Duration,
}

/// A route's mirroring state, kept by route name across snapshots.
#[derive(Debug)]
pub(crate) struct MirrorState {
    origin: Instant,
    in_flight: AtomicUsize,
    /// Copies sent, answered (any status), and failed (no answer, or a 5xx).
    pub sent: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Answers with a 5xx status (counted in both `completed` and `failed`).
    pub server_errors: AtomicU64,
    /// By [`DROP_REASONS`].
    pub dropped: [AtomicU64; 5],
    pub diff: DiffStats,
    /// `ACTIVE`, `TRIPPED` or `DISABLED`: read by every request, so kept apart from the details.
    guard: AtomicU8,
    /// When a tripped guardrail lets mirroring resume, in ms since `origin`.
    resume_at_ms: AtomicU64,
    detail: Mutex<GuardDetail>,
}

#[derive(Debug)]
struct GuardDetail {
    reason: String,
    since: SystemTime,
    /// Bad pairs in a row so far.
    consecutive: u32,
    trips: u64,
}

/// The guardrail as `/shadow` and reports show it.
#[derive(Debug, Clone)]
pub(crate) struct GuardView {
    pub state: &'static str,
    pub reason: String,
    pub since: SystemTime,
    pub resumes_at: Option<SystemTime>,
    pub trips: u64,
}

/// A place among a route's shadow requests in flight, given back when dropped.
pub(crate) struct Slot(Arc<MirrorState>);

/// One mirrored request, handed to its own task.
pub(crate) struct Shadow {
    pub _slot: Slot,
    pub method: Method,
    pub path: Option<PathAndQuery>,
    pub host: Option<HeaderValue>,
    /// The request headers as the primary got them, plus `X-Sluice-Shadow: 1`.
    pub headers: HeaderMap,
    /// The body's copy and what tells when it is whole; `None`: no body.
    pub body: Option<(Arc<Mutex<Replay>>, Arc<Notify>)>,
    pub primary: oneshot::Receiver<Primary>,
    pub request_id: HeaderValue,
    pub client_ip: IpAddr,
    /// The tracer and the primary's server span, when the request is traced and sampled.
    pub trace: Option<(SdkTracer, SpanContext)>,
}

/// How the primary went, for the guardrail and the diff.
pub(crate) struct Primary {
    /// The status and headers of its answer, or the category of its failure.
    pub outcome: Result<(u16, HeaderMap), &'static str>,
    /// Time to response headers.
    pub latency: Duration,
    /// Its body, captured for the diff.
    pub body: Option<oneshot::Receiver<Captured>>,
}

/// A shadow (or baseline) answer.
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    truncated: bool,
    latency: Duration,
}

// === impl MirrorEntry ===

impl MirrorEntry {
    /// A route's mirror from its compiled plan.
    pub fn compile(m: &Mirror, plan: MirrorPlan, state: Arc<MirrorState>) -> Self {
        let diff = plan.diff.zip(m.diff.as_ref()).map(|(p, d)| DiffEntry {
            rules: p.rules,
            baseline: p
                .baseline_pool
                .zip(d.baseline.as_ref())
                .map(|(pool, b)| (pool, ppm(b.fraction_or_default()))),
            noise: d.noise_or_default(),
            samples: d.samples_or_default().min(MAX_DIFF_SAMPLES) as usize,
        });
        let MirrorPlan { pool, methods, .. } = plan;
        Self {
            pool,
            fraction: ppm(m.fraction_or_default()),
            methods,
            max_body: usize::try_from(m.max_body_or_default().0).unwrap_or(usize::MAX),
            max_in_flight: m.max_in_flight_or_default() as usize,
            timeout: m.timeout_or_default().get(),
            diff,
            guardrail: m.guardrail_or_default().map(|g| GuardLimits {
                ratio: g.latency_ratio_or_default(),
                consecutive: g.consecutive_or_default(),
                cooldown: g.cooldown_or_default().get(),
            }),
            state,
        }
    }

    /// Whether this request is mirrored: its method, its share (decided by its request id, so
    /// the same id always gets the same answer), then the guardrail, its body's announced size
    /// and the in-flight cap, each counted when it says no.
    pub fn admit(&self, method: &Method, request_id: &[u8], body_at_least: u64) -> Option<Slot> {
        if !self.methods.contains(method) {
            return None;
        }
        if self.fraction < PPM && crate::upstream::stable_hash(request_id) % PPM >= self.fraction {
            return None;
        }
        let state = &self.state;
        if !state.guard_open(Instant::now()) {
            state.dropped[GUARDRAIL].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if body_at_least > self.max_body as u64 {
            state.dropped[BODY_TOO_LARGE].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if state.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_in_flight {
            state.in_flight.fetch_sub(1, Ordering::Relaxed);
            state.dropped[IN_FLIGHT].fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(state.clone()))
    }

    /// Whether the diff reads the primary's answer.
    pub fn compares(&self) -> bool {
        self.diff.is_some()
    }
}

/// A share as parts per million.
fn ppm(share: f64) -> u64 {
    (share.clamp(0.0, 1.0) * PPM as f64).round() as u64
}

// === impl MirrorState ===

impl Default for MirrorState {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            in_flight: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            dropped: Default::default(),
            diff: DiffStats::new(MAX_FIELDS, MAX_DIFF_SAMPLES as usize),
            guard: AtomicU8::new(ACTIVE),
            resume_at_ms: AtomicU64::new(0),
            detail: Mutex::new(GuardDetail {
                reason: String::new(),
                since: SystemTime::now(),
                consecutive: 0,
                trips: 0,
            }),
        }
    }
}

impl MirrorState {
    /// Copies in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_millis() as u64
    }

    /// Whether the guardrail lets requests be mirrored now; a trip whose cooldown has passed
    /// ends here, on the first request after it.
    fn guard_open(&self, now: Instant) -> bool {
        match self.guard.load(Ordering::Relaxed) {
            ACTIVE => true,
            TRIPPED if self.ms(now) >= self.resume_at_ms.load(Ordering::Relaxed) => {
                let mut d = lock(&self.detail);
                if self.guard.compare_exchange(TRIPPED, ACTIVE, Ordering::Relaxed, Ordering::Relaxed).is_ok()
                {
                    d.consecutive = 0;
                    d.reason = format!("resumed after the cooldown; tripped because {}", d.reason);
                    d.since = SystemTime::now();
                    tracing::info!("mirror guardrail cooldown over: mirroring resumes");
                }
                true
            }
            _ => false,
        }
    }

    /// An operator turns mirroring off (until turned on again) or back on.
    pub fn set_enabled(&self, enabled: bool) {
        let mut d = lock(&self.detail);
        d.consecutive = 0;
        d.since = SystemTime::now();
        if enabled {
            self.guard.store(ACTIVE, Ordering::Relaxed);
            d.reason = "enabled by an operator".into();
        } else {
            self.guard.store(DISABLED, Ordering::Relaxed);
            d.reason = "disabled by an operator".into();
        }
    }

    /// One primary/candidate pair judged: bad when the candidate failed where the primary did
    /// not, or was slower than `ratio` times the primary. `consecutive` bad pairs trip it.
    fn judge(
        &self,
        g: GuardLimits,
        primary: &Primary,
        candidate: &Result<Answer, &'static str>,
        route: &str,
    ) {
        let primary_ok = matches!(primary.outcome, Ok((s, _)) if s < 500);
        let bad = match candidate {
            Err(why) if primary_ok => {
                Some(format!("the candidate failed ({why}) where the primary answered"))
            }
            Ok(a) if a.status >= 500 && primary_ok => {
                Some(format!("the candidate answered {} where the primary answered", a.status))
            }
            Ok(a) if a.latency.max(LATENCY_FLOOR) > primary.latency.max(LATENCY_FLOOR).mul_f64(g.ratio) => {
                Some(format!(
                    "the candidate took {} ms, more than {}x the primary's {} ms",
                    a.latency.as_millis(),
                    g.ratio,
                    primary.latency.as_millis()
                ))
            }
            _ => None,
        };
        let mut d = lock(&self.detail);
        let Some(why) = bad else {
            d.consecutive = 0;
            return;
        };
        d.consecutive += 1;
        if d.consecutive >= g.consecutive && self.guard.load(Ordering::Relaxed) == ACTIVE {
            let now = Instant::now();
            self.resume_at_ms.store(self.ms(now + g.cooldown), Ordering::Relaxed);
            self.guard.store(TRIPPED, Ordering::Relaxed);
            d.trips += 1;
            d.since = SystemTime::now();
            d.reason = format!("{} bad pairs in a row; the last: {why}", d.consecutive);
            tracing::warn!(route, reason = %d.reason, cooldown = ?g.cooldown, "mirror guardrail tripped: mirroring stops");
        }
    }

    pub fn guard_view(&self) -> GuardView {
        // A cooldown that has run out ends here too, so reports need no traffic to show it.
        self.guard_open(Instant::now());
        let d = lock(&self.detail);
        let state = match self.guard.load(Ordering::Relaxed) {
            ACTIVE => "active",
            TRIPPED => "tripped",
            _ => "disabled",
        };
        let resumes_at = (state == "tripped").then(|| {
            let left = self.resume_at_ms.load(Ordering::Relaxed).saturating_sub(self.ms(Instant::now()));
            SystemTime::now() + Duration::from_millis(left)
        });
        GuardView { state, reason: d.reason.clone(), since: d.since, resumes_at, trips: d.trips }
    }
}

// === impl Slot ===

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Shadow ===

impl Shadow {
    /// Sends the copy to `m`'s pool (one of `pools`) once its body is whole, then (with a diff or
    /// guardrail) waits for the primary's answer and compares. Everything is bounded by the
    /// mirror's timeout.
    pub async fn run(self, route: &str, m: &MirrorEntry, pools: &[Pool]) {
        let state = &m.state;
        let deadline = Instant::now() + m.timeout;
        let body = match &self.body {
            None => None,
            Some((copy, settled)) => loop {
                {
                    let c = lock(copy);
                    if c.is_complete() {
                        break Some(copy);
                    }
                    if c.is_spoiled() {
                        // Spoiled within its limit: the body ended in trailers, which are not kept.
                        let why = if c.size() > m.max_body { BODY_TOO_LARGE } else { TRAILERS };
                        state.dropped[why].fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                if timeout_at(deadline, settled.notified()).await.is_err() {
                    state.dropped[BODY_INCOMPLETE].fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        if body.is_some_and(|c| lock(c).size() > m.max_body) {
            state.dropped[BODY_TOO_LARGE].fetch_add(1, Ordering::Relaxed);
            return;
        }

        state.sent.fetch_add(1, Ordering::Relaxed);
        let mut span =
            self.trace.as_ref().map(|(t, primary)| telemetry::shadow_span(t, primary, &self.method, route));
        let span_cx = span.as_ref().map(|s| s.span_context().clone());
        let (candidate, baseline) = {
            let candidate = self.send(&pools[m.pool], body, deadline, span_cx.as_ref(), m.max_body);
            let baseline_pool =
                m.diff.as_ref().and_then(|d| d.baseline).filter(|(_, share)| fastrand::u64(..PPM) < *share);
            match baseline_pool {
                Some((pool, _)) => {
                    let (c, b) =
                        tokio::join!(candidate, self.send(&pools[pool], body, deadline, None, m.max_body));
                    (c, Some(b))
                }
                None => (candidate.await, None),
            }
        };
        match &candidate {
            Ok(a) => {
                state.completed.fetch_add(1, Ordering::Relaxed);
                if a.status >= 500 {
                    state.failed.fetch_add(1, Ordering::Relaxed);
                    state.server_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                state.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(s) = span.as_mut() {
            s.set_attribute(opentelemetry::KeyValue::new("sluice.pool", pools[m.pool].name.to_string()));
        }
        if let Some(s) = span.take() {
            match &candidate {
                Ok(a) => telemetry::end_with_status(s, Some(a.status), None, false),
                Err(e) => telemetry::end_with_status(s, None, Some(e), false),
            }
        }

        if m.guardrail.is_none() && m.diff.is_none() {
            return;
        }
        let Ok(Ok(primary)) = timeout_at(Instant::now() + m.timeout, self.primary).await else {
            return;
        };
        if let Some(g) = m.guardrail {
            state.judge(g, &primary, &candidate, route);
        }
        let (Some(d), Ok((status, headers)), Some(body)) = (&m.diff, &primary.outcome, primary.body) else {
            return;
        };
        let Ok(Ok(captured)) = timeout_at(Instant::now() + m.timeout, body).await else {
            return;
        };
        let primary_side =
            Side { status: *status, headers, body: &captured.body, truncated: captured.truncated };
        if let Ok(c) = &candidate {
            let candidate_side =
                Side { status: c.status, headers: &c.headers, body: &c.body, truncated: c.truncated };
            let fields = d.rules.compare(&primary_side, &candidate_side);
            state.diff.record(&fields);
            if !fields.is_empty() {
                state.diff.sample(Sample {
                    at: SystemTime::now(),
                    request_id: self.request_id.to_str().unwrap_or_default().to_owned(),
                    method: self.method.to_string(),
                    path: d.rules.redact(self.path.as_ref().map_or("/", PathAndQuery::as_str)),
                    fields,
                    primary: d.rules.summary(&primary_side, SAMPLE_LEN),
                    candidate: d.rules.summary(&candidate_side, SAMPLE_LEN),
                });
            }
        }
        if let Some(Ok(b)) = &baseline {
            let baseline_side =
                Side { status: b.status, headers: &b.headers, body: &b.body, truncated: b.truncated };
            state.diff.record_noise(&d.rules.compare(&primary_side, &baseline_side));
        }
    }

    /// One copy to `pool`, its body read up to `max_body`, all before `deadline`.
    async fn send(
        &self,
        pool: &Pool,
        body: Option<&Arc<Mutex<Replay>>>,
        deadline: Instant,
        span: Option<&SpanContext>,
        max_body: usize,
    ) -> Result<Answer, &'static str> {
        let ctx = PickContext { headers: &self.headers, client_ip: self.client_ip };
        let i = pool.pick(&ctx, &[]);
        let endpoint = &pool.endpoints[i];
        let uri = upstream_uri(pool.protocol(), endpoint, self.host.as_ref(), self.path.as_ref())
            .map_err(|_| "bad_request")?;
        let upload = body.map(|_| Arc::new(Upload::default()));
        let body = match body {
            Some(c) => RequestBody::replay(&lock(c), upload.clone()),
            None => RequestBody::empty(),
        };
        let mut req = Box::new(Request::new(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = pool.version();
        *req.headers_mut() = self.headers.clone();
        if let Some(cx) = span {
            telemetry::inject(cx, req.headers_mut());
        }
        let _in_flight = InFlight::new(&endpoint.state);
        let started = Instant::now();
        let metrics = &endpoint.state.metrics;
        let resp = match timeout_at(deadline, pool.send(i, req)).await {
            Err(_) => return Err("timeout"),
            Ok(Err(e)) => {
                if e.error.is_endpoint_failure() {
                    metrics.failures.fetch_add(1, Ordering::Relaxed);
                }
                return Err(e.error.category());
            }
            Ok(Ok(answer)) => answer,
        };
        let latency = started.elapsed();
        metrics.answered(resp.status().as_u16(), latency);
        let (parts, mut incoming) = resp.into_parts();
        let mut chunks: Vec<Bytes> = Vec::new();
        let mut size = 0;
        let mut truncated = false;
        loop {
            match timeout_at(deadline, incoming.frame()).await {
                Err(_) => return Err("timeout"),
                Ok(None) => break,
                Ok(Some(Err(_))) => return Err("upstream_reset"),
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        if size + data.len() > max_body {
                            chunks.push(data.slice(..max_body - size));
                            truncated = true;
                            break;
                        }
                        size += data.len();
                        chunks.push(data.clone());
                    }
                }
            }
        }
        let body = match chunks.len() {
            0 => Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => Bytes::from(chunks.concat()),
        };
        Ok(Answer { status: parts.status.as_u16(), headers: parts.headers, body, truncated, latency })
    }
}
