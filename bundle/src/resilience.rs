//! The resilience part of the config model: health checks, circuit breakers and outlier detection
//! on pools; retries, hedging, rate limits and body limits on routes; overload protection on
//! listeners. Same conventions as `model`: optional fields stay `None`, `*_or_default` gives the
//! effective value, and the defaults are the ones SPEC.md §3 and §6 name.

use std::borrow::Cow;
use std::fmt;

use schemars::JsonSchema;
use serde::{Serialize, Serializer};

use crate::{Duration, HashOn};

// === defaults ===

pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
pub const DEFAULT_EXPECTED_STATUS: StatusRange = StatusRange { min: 200, max: 399 };

pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
pub const DEFAULT_MAX_PENDING_REQUESTS: u32 = 1024;
pub const DEFAULT_MAX_REQUESTS: u32 = 1024;
pub const DEFAULT_MAX_RETRIES: u32 = 3;
pub const DEFAULT_BREAKER_MIN_REQUESTS: u32 = 20;
pub const DEFAULT_BREAKER_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_BREAKER_OPEN_DURATION: Duration = Duration::from_secs(30);
pub const DEFAULT_HALF_OPEN_REQUESTS: u32 = 3;

pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
pub const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
pub const DEFAULT_SUCCESS_RATE_MIN_HOSTS: u32 = 5;
pub const DEFAULT_SUCCESS_RATE_MIN_REQUESTS: u32 = 100;
pub const DEFAULT_SUCCESS_RATE_STDEV_FACTOR: f64 = 1.9;
pub const DEFAULT_LATENCY_MIN_REQUESTS: u32 = 100;

pub const DEFAULT_MAX_ATTEMPTS: u32 = 2;
pub const DEFAULT_RETRY_ON: [RetryOn; 2] = [RetryOn::ConnectFailure, RetryOn::Reset];
pub const DEFAULT_RETRY_METHODS: [&str; 6] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;

pub const DEFAULT_HEDGE_BUDGET_PERCENT: u32 = 5;

pub const DEFAULT_MAX_QUEUED: u32 = 100;
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

// === listeners ===

/// Overload protection for one listener: at most `max_concurrent_requests` in progress; up to
/// `max_queued` more wait up to `queue_timeout` for a slot; the rest get 503 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Overload {
    /// Requests served at once (1 or more).
    #[schemars(range(min = 1))]
    pub max_concurrent_requests: u32,
    /// Requests that may wait for a slot. Default 100; 0 sheds at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<u32>,
    /// How long a queued request waits before it gets 503. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<Duration>,
}

// === routes: request bodies ===

/// Request-body bytes read before a request takes an upstream slot, by default.
pub const DEFAULT_BODY_BUFFER: u64 = 64 * 1024;
/// The largest `request_body.buffer`.
pub const MAX_BODY_BUFFER: u64 = 16 * 1024 * 1024;
/// Longest wait for a request body's next bytes, by default (nginx's `client_body_timeout`).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Slowest average request-body rate, bytes per second, by default (Apache's `mod_reqtimeout`).
pub const DEFAULT_BODY_MIN_RATE: u64 = 500;

/// How a route reads request bodies from clients, so that a client sending slowly holds neither
/// upstream capacity nor a connection for long.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestBodyRules {
    /// Bytes of the body read before the request takes a place in its pool: a body up to this
    /// size arrives whole before an upstream connection or slot is used; a larger one starts
    /// streaming once this much has arrived. Default 64KiB; `0` streams from the first byte. At
    /// most 16MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer: Option<ByteSize>,
    /// Longest wait for the body's next bytes; then 408 and the upstream request, if started,
    /// is abandoned. Default 60s (the route's `idle_timeout` when that is shorter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<Duration>,
    /// Slowest average rate in bytes per second: a body must be whole within `read_timeout`
    /// plus one second per `min_rate` bytes received, counted from its start; otherwise 408.
    /// Default 500; `0` turns the check off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rate: Option<ByteSize>,
}

// === pools ===

/// Active health checking: each endpoint gets `GET path` every `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Path requested, e.g. `/health`.
    pub path: String,
    /// `Host` sent with the check. Default: the endpoint's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Time between checks of one endpoint. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Time a check may take, at most `interval`. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Random extra delay, up to this, added to each interval so checks do not align. Default: a
    /// tenth of the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Duration>,
    /// Passing checks in a row that make an unhealthy endpoint healthy. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub healthy_threshold: Option<u32>,
    /// Failing checks in a row that make a healthy endpoint unhealthy. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub unhealthy_threshold: Option<u32>,
    /// Statuses that pass, `200-399` or `200`. Default `200-399`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_status: Option<StatusRange>,
}

/// An inclusive range of HTTP statuses, written `200-399` (or one status, `204`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusRange {
    pub min: u16,
    pub max: u16,
}

/// Limits on what one pool may have in progress, and the error-rate breaker. The limits always
/// apply (at their defaults when this is absent); the error-rate breaker only when
/// `error_threshold_percent` is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Upstream connections open at once, all endpoints together. Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection to open. Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_pending_requests: Option<u32>,
    /// Requests in progress. Default 1024.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_requests: Option<u32>,
    /// Retries in progress. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Open when at least this percent of requests in `window` failed (5xx or no response).
    /// Absent: no error-rate breaker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub error_threshold_percent: Option<u32>,
    /// Requests in `window` below which the error rate is not judged. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_requests: Option<u32>,
    /// Span the error rate is measured over. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
    /// How long the breaker stays open before it lets probes through. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_duration: Option<Duration>,
    /// Probe requests let through when half-open; all must succeed to close it. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub half_open_requests: Option<u32>,
}

/// Passive health: endpoints that fail live traffic are ejected for a while. On by default.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// `false` turns outlier detection off for the pool. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Failures in a row (5xx, or no response) that eject an endpoint. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub consecutive_5xx: Option<u32>,
    /// How often success rates and latencies are compared. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// The first ejection's length; the n-th lasts n times as long. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Longest ejection. Default 300s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<Duration>,
    /// Most of the pool ejected at once, in percent; one endpoint may always be. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<u32>,
    /// Eject endpoints whose success rate is far below their peers'. On by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRateOutlier>,
    /// Eject endpoints far slower than their peers. Off unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyOutlier>,
}

/// Success-rate outliers: an endpoint below `mean - stdev_factor * stdev` of the pool's rates.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SuccessRateOutlier {
    /// `false` turns it off. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Endpoints with enough requests needed before rates are compared. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2))]
    pub min_hosts: Option<u32>,
    /// Requests an endpoint needs in an interval to be judged. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_requests: Option<u32>,
    /// How many standard deviations below the mean ejects. Default 1.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdev_factor: Option<f64>,
}

/// Latency outliers: an endpoint whose mean latency over an interval is more than `factor` times
/// the median of its peers' means.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencyOutlier {
    /// Above 1, e.g. 3 (three times slower than the median endpoint).
    pub factor: f64,
    /// Requests an endpoint needs in an interval to be judged. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_requests: Option<u32>,
}

// === routes ===

/// When and how a failed request is tried again, on another endpoint. Applies at its defaults
/// when absent (one retry of idempotent requests on connect failure or reset); `max_attempts: 1`
/// turns retries off.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Tries in all, the first included (1 to 10). Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub max_attempts: Option<u32>,
    /// What is retried: `connect_failure`, `reset`, `timeout` (a try over `per_try_timeout`) and
    /// response statuses such as `503`. Default `[connect_failure, reset]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<RetryOn>>,
    /// Methods that may be retried. Default the idempotent ones: GET, HEAD, OPTIONS, PUT,
    /// DELETE, TRACE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Time one try may take until response headers. Default: the route's `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Delay before a retry: random up to `base * 2^(n-1)`, capped at `max`. Default 25ms to
    /// 250ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Retries allowed as a percentage of requests over the last 10 s. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub budget_percent: Option<u32>,
    /// Retries per second always allowed, whatever the ratio. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retries_per_second: Option<u32>,
}

/// A condition that makes a try worth repeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// The connection could not be opened (nothing was sent).
    ConnectFailure,
    /// The connection closed or reset before a response.
    Reset,
    /// The try took longer than `per_try_timeout`.
    Timeout,
    /// The upstream answered with this status (500 to 599).
    Status(u16),
}

/// Jittered exponential backoff between tries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Default 25ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Duration>,
    /// Default 250ms; at least `base`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,
}

/// Hedged reads: when the first try of a GET or HEAD without a body has not answered after
/// `delay` (default: the route's live p95), a second try goes to another endpoint; the first
/// response wins and the other is cancelled.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hedge {
    /// A fixed delay. Default: the route's p95 latency over the last few seconds (no hedging until
    /// enough requests have been seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// Hedges allowed as a percentage of requests over the last 10 s. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub budget_percent: Option<u32>,
}

/// A local token bucket: `requests_per_second` on average, bursts up to `burst`. Requests over
/// it get 429 with `RateLimit-*` headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate (1 or more).
    #[schemars(range(min = 1))]
    pub requests_per_second: u32,
    /// Bucket size. Default `requests_per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
    /// One bucket per value of this (`source_ip`, `{header: NAME}`, `{cookie: NAME}`); absent: one
    /// bucket for the route. Requests without the header or cookie share one bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<HashOn>,
}

/// A number of bytes written `512`, `64KiB`, `10MiB` or `1GiB` (also `KB`, `MB`, `GB`: powers
/// of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

// === impl Overload ===

impl Overload {
    pub fn max_queued_or_default(&self) -> u32 {
        self.max_queued.unwrap_or(DEFAULT_MAX_QUEUED)
    }

    pub fn queue_timeout_or_default(&self) -> Duration {
        self.queue_timeout.unwrap_or(DEFAULT_QUEUE_TIMEOUT)
    }
}

// === impl RequestBodyRules ===

impl RequestBodyRules {
    pub fn buffer_or_default(&self) -> u64 {
        self.buffer.map_or(DEFAULT_BODY_BUFFER, |b| b.0)
    }

    pub fn read_timeout_or_default(&self) -> Duration {
        self.read_timeout.unwrap_or(DEFAULT_BODY_READ_TIMEOUT)
    }

    pub fn min_rate_or_default(&self) -> u64 {
        self.min_rate.map_or(DEFAULT_BODY_MIN_RATE, |b| b.0)
    }
}

// === impl HealthCheck ===

impl HealthCheck {
    pub fn interval_or_default(&self) -> Duration {
        self.interval.unwrap_or(DEFAULT_HEALTH_INTERVAL)
    }

    pub fn timeout_or_default(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT)
    }

    pub fn jitter_or_default(&self) -> Duration {
        self.jitter.unwrap_or_else(|| {
            let tenth = self.interval_or_default().get() / 10;
            Duration::from_millis(tenth.as_millis() as u64)
        })
    }

    pub fn healthy_threshold_or_default(&self) -> u32 {
        self.healthy_threshold.unwrap_or(DEFAULT_HEALTHY_THRESHOLD)
    }

    pub fn unhealthy_threshold_or_default(&self) -> u32 {
        self.unhealthy_threshold.unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD)
    }

    pub fn expected_status_or_default(&self) -> StatusRange {
        self.expected_status.unwrap_or(DEFAULT_EXPECTED_STATUS)
    }
}

// === impl StatusRange ===

impl StatusRange {
    pub fn contains(self, status: u16) -> bool {
        (self.min..=self.max).contains(&status)
    }

    /// `200-399` or `204`; statuses 100 to 599, min ≤ max.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid status range {s:?}: expected a status like 200 or a range like 200-399");
        let status = |t: &str| t.trim().parse::<u16>().ok().filter(|n| (100..=599).contains(n));
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (status(a).ok_or_else(bad)?, status(b).ok_or_else(bad)?),
            None => {
                let n = status(s).ok_or_else(bad)?;
                (n, n)
            }
        };
        if min > max {
            return Err(format!("invalid status range {s:?}: {min} is above {max}"));
        }
        Ok(Self { min, max })
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max { write!(f, "{}", self.min) } else { write!(f, "{}-{}", self.min, self.max) }
    }
}

impl Serialize for StatusRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for StatusRange {
    fn schema_name() -> Cow<'static, str> {
        "StatusRange".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[1-5][0-9]{2}(-[1-5][0-9]{2})?$",
            "description": "An HTTP status (204) or an inclusive range (200-399).",
            "examples": ["200-399", "200"]
        })
    }
}

// === impl CircuitBreaker ===

impl CircuitBreaker {
    pub fn max_connections_or_default(&self) -> u32 {
        self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS)
    }

    pub fn max_pending_requests_or_default(&self) -> u32 {
        self.max_pending_requests.unwrap_or(DEFAULT_MAX_PENDING_REQUESTS)
    }

    pub fn max_requests_or_default(&self) -> u32 {
        self.max_requests.unwrap_or(DEFAULT_MAX_REQUESTS)
    }

    pub fn max_retries_or_default(&self) -> u32 {
        self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES)
    }

    pub fn min_requests_or_default(&self) -> u32 {
        self.min_requests.unwrap_or(DEFAULT_BREAKER_MIN_REQUESTS)
    }

    pub fn window_or_default(&self) -> Duration {
        self.window.unwrap_or(DEFAULT_BREAKER_WINDOW)
    }

    pub fn open_duration_or_default(&self) -> Duration {
        self.open_duration.unwrap_or(DEFAULT_BREAKER_OPEN_DURATION)
    }

    pub fn half_open_requests_or_default(&self) -> u32 {
        self.half_open_requests.unwrap_or(DEFAULT_HALF_OPEN_REQUESTS)
    }
}

// === impl OutlierDetection ===

impl OutlierDetection {
    pub fn enabled_or_default(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    pub fn consecutive_5xx_or_default(&self) -> u32 {
        self.consecutive_5xx.unwrap_or(DEFAULT_CONSECUTIVE_5XX)
    }

    pub fn interval_or_default(&self) -> Duration {
        self.interval.unwrap_or(DEFAULT_OUTLIER_INTERVAL)
    }

    pub fn base_ejection_time_or_default(&self) -> Duration {
        self.base_ejection_time.unwrap_or(DEFAULT_BASE_EJECTION_TIME)
    }

    pub fn max_ejection_time_or_default(&self) -> Duration {
        self.max_ejection_time.unwrap_or(DEFAULT_MAX_EJECTION_TIME)
    }

    pub fn max_ejection_percent_or_default(&self) -> u32 {
        self.max_ejection_percent.unwrap_or(DEFAULT_MAX_EJECTION_PERCENT)
    }

    /// The success-rate settings in effect, `None` when turned off.
    pub fn success_rate_or_default(&self) -> Option<SuccessRateOutlier> {
        let s = self.success_rate.clone().unwrap_or_default();
        s.enabled.unwrap_or(true).then_some(s)
    }
}

// === impl SuccessRateOutlier ===

impl SuccessRateOutlier {
    pub fn min_hosts_or_default(&self) -> u32 {
        self.min_hosts.unwrap_or(DEFAULT_SUCCESS_RATE_MIN_HOSTS)
    }

    pub fn min_requests_or_default(&self) -> u32 {
        self.min_requests.unwrap_or(DEFAULT_SUCCESS_RATE_MIN_REQUESTS)
    }

    pub fn stdev_factor_or_default(&self) -> f64 {
        self.stdev_factor.unwrap_or(DEFAULT_SUCCESS_RATE_STDEV_FACTOR)
    }
}

// === impl LatencyOutlier ===

impl LatencyOutlier {
    pub fn min_requests_or_default(&self) -> u32 {
        self.min_requests.unwrap_or(DEFAULT_LATENCY_MIN_REQUESTS)
    }
}

// === impl Retries ===

impl Retries {
    pub fn max_attempts_or_default(&self) -> u32 {
        self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)
    }

    pub fn retry_on_or_default(&self) -> Vec<RetryOn> {
        self.retry_on.clone().unwrap_or_else(|| DEFAULT_RETRY_ON.to_vec())
    }

    pub fn methods_or_default(&self) -> Vec<String> {
        self.methods
            .clone()
            .unwrap_or_else(|| DEFAULT_RETRY_METHODS.iter().map(|m| (*m).to_owned()).collect())
    }

    pub fn backoff_base_or_default(&self) -> Duration {
        self.backoff.as_ref().and_then(|b| b.base).unwrap_or(DEFAULT_BACKOFF_BASE)
    }

    pub fn backoff_max_or_default(&self) -> Duration {
        self.backoff.as_ref().and_then(|b| b.max).unwrap_or(DEFAULT_BACKOFF_MAX)
    }

    pub fn budget_percent_or_default(&self) -> u32 {
        self.budget_percent.unwrap_or(DEFAULT_RETRY_BUDGET_PERCENT)
    }

    pub fn min_retries_per_second_or_default(&self) -> u32 {
        self.min_retries_per_second.unwrap_or(DEFAULT_MIN_RETRIES_PER_SECOND)
    }
}

// === impl RetryOn ===

impl RetryOn {
    /// The names `retry_on` accepts besides statuses.
    pub const NAMES: [&str; 3] = ["connect_failure", "reset", "timeout"];
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectFailure => f.write_str("connect_failure"),
            Self::Reset => f.write_str("reset"),
            Self::Timeout => f.write_str("timeout"),
            Self::Status(s) => write!(f, "{s}"),
        }
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Status(code) => s.serialize_u16(*code),
            other => s.collect_str(other),
        }
    }
}

impl JsonSchema for RetryOn {
    fn schema_name() -> Cow<'static, str> {
        "RetryOn".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "connect_failure, reset, timeout, or a response status from 500 to 599.",
            "oneOf": [
                {"type": "string", "enum": ["connect_failure", "reset", "timeout"]},
                {"type": "integer", "minimum": 500, "maximum": 599}
            ]
        })
    }
}

// === impl Hedge ===

impl Hedge {
    pub fn budget_percent_or_default(&self) -> u32 {
        self.budget_percent.unwrap_or(DEFAULT_HEDGE_BUDGET_PERCENT)
    }
}

// === impl RateLimit ===

impl RateLimit {
    pub fn burst_or_default(&self) -> u32 {
        self.burst.unwrap_or(self.requests_per_second)
    }
}

// === impl ByteSize ===

impl ByteSize {
    const UNITS: [(&str, u64); 8] = [
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
        ("kB", 1_000),
        ("B", 1),
    ];

    pub fn get(self) -> u64 {
        self.0
    }

    /// `512`, `64KiB`, `10MiB`, `1GB`: a whole number, optionally with a unit.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid size {s:?}: expected bytes, like 65536, 64KiB or 10MiB");
        let t = s.trim();
        let (num, mult) = Self::UNITS
            .iter()
            .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n.trim_end(), *m)))
            .unwrap_or((t, 1));
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)).map(Self).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= m && n.is_multiple_of(m) {
                return write!(f, "{}{unit}", n / m);
            }
        }
        write!(f, "{n}")
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A number of bytes: 65536, 64KiB, 10MiB, 1GiB (KB, MB, GB are powers of 1000).",
            "oneOf": [
                {"type": "string", "pattern": "^[0-9]+ ?(B|KiB|MiB|GiB|kB|KB|MB|GB)?$"},
                {"type": "integer", "minimum": 0}
            ],
            "examples": ["64KiB", "10MiB"]
        })
    }
}
