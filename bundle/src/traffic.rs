//! The traffic part of the config model: a route's canary and cohorts (which pool a request goes
//! to) and its mirror (a shadow copy to a candidate pool, compared against the primary's answer).
//! Same conventions as `model`: optional fields stay `None`, `*_or_default` gives the effective
//! value (defaults in docs/config.md).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use crate::{ByteSize, DEFAULT_RETRY_METHODS, Duration, HashOn};

// === defaults ===

pub const DEFAULT_BRAKE_MAX_ERROR_PERCENT: f64 = 5.0;
pub const DEFAULT_BRAKE_MIN_REQUESTS: u32 = 20;
pub const DEFAULT_BRAKE_WINDOW: Duration = Duration::from_secs(30);

pub const DEFAULT_MIRROR_FRACTION: f64 = 1.0;
pub const DEFAULT_MIRROR_MAX_BODY: ByteSize = ByteSize(64 * 1024);
pub const DEFAULT_MIRROR_MAX_IN_FLIGHT: u32 = 100;
pub const DEFAULT_MIRROR_TIMEOUT: Duration = Duration::from_secs(5);

pub const DEFAULT_BASELINE_FRACTION: f64 = 0.1;
pub const DEFAULT_NOISE_RELATIVE_PERCENT: f64 = 20.0;
pub const DEFAULT_NOISE_ABSOLUTE_PERCENT: f64 = 0.03;
pub const DEFAULT_DIFF_SAMPLES: u32 = 10;
pub const MAX_DIFF_SAMPLES: u32 = 100;
/// Most cohorts a route can have: with stable and canary, a route's variants fit in a byte.
pub const MAX_COHORTS: usize = 254;

pub const DEFAULT_GUARDRAIL_LATENCY_RATIO: f64 = 2.0;
pub const DEFAULT_GUARDRAIL_CONSECUTIVE: u32 = 5;
pub const DEFAULT_GUARDRAIL_COOLDOWN: Duration = Duration::from_secs(10);

// === canary and cohorts ===

/// A weighted split between the route's pool (stable) and a canary pool.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The canary pool; must differ from the route's pool.
    pub pool: String,
    /// Percent of the route's traffic (not taken by a cohort) sent to the canary, 0 to 100.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub weight: f64,
    /// What keeps one user on one variant: `source_ip`, `{header: NAME}` or `{cookie: NAME}`.
    /// A key hashes to a fixed point, so raising the weight only moves users onto the canary.
    /// Absent (or the header/cookie missing): each request is drawn on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<HashOn>,
    /// Sends the canary's weight to 0 when its error rate is too high. On at its defaults when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brake: Option<CanaryBrake>,
}

/// The canary's safety brake: once the canary's share of 5xx answers (the proxy's own included)
/// over `window` exceeds `max_error_percent`, with at least `min_requests` requests, the canary
/// gets no traffic until a config that changes the route's canary is applied.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryBrake {
    /// `false` turns the brake off. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Error rate, in percent, above which the brake engages. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub max_error_percent: Option<f64>,
    /// Canary requests in `window` below which the rate is not judged. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_requests: Option<u32>,
    /// Span the error rate is measured over. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
}

/// Cohort routing: a request whose header or cookie has one of `values` goes to that value's pool,
/// ahead of any canary split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cohorts {
    /// The request header carrying the cohort. Exactly one of `header`, `cookie`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// The cookie carrying the cohort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// Cohort value (exact, case-sensitive) to pool name; at most 254.
    pub values: BTreeMap<String, String>,
}

// === mirror ===

/// Shadow traffic: a copy of sampled requests goes to `pool`; the client's answer always comes
/// from the primary and never waits for the copy.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The candidate pool; must differ from the route's pool.
    pub pool: String,
    /// Share of requests mirrored, above 0 and at most 1, decided by the request id (the same id
    /// is always mirrored or never). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub fraction: Option<f64>,
    /// Methods mirrored. Default the idempotent ones: GET, HEAD, OPTIONS, PUT, DELETE, TRACE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Largest request body mirrored; a larger request is not mirrored (and counted). Default
    /// 64KiB. Also the most of each response body the diff reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<ByteSize>,
    /// Shadow requests in progress at once; beyond it a mirror is dropped (and counted).
    /// Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_in_flight: Option<u32>,
    /// Time a shadow request may take, body included. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Compare the shadow's answers with the primary's. Absent: no comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<MirrorDiff>,
    /// Stop mirroring while the candidate is much slower or failing. On at its defaults when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrail: Option<Guardrail>,
}

/// How primary and shadow answers are compared: status always; `headers`; JSON bodies leaf by
/// leaf, minus `ignore`. PII is masked before any sample is kept or reported.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorDiff {
    /// Response headers compared (case-insensitive names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    /// JSON pointers not compared, e.g. `/timestamp`; a `*` segment matches any key or index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
    /// Masked in samples: JSON pointers (`/user/email`, `*` allowed) or key names matched at any
    /// depth (`email`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<String>,
    /// Regular expressions; their matches inside string values and compared headers are masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask_patterns: Vec<String>,
    /// Also mask the usual PII keys (email, phone, name, card and similar) and e-mail addresses
    /// and card numbers anywhere. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_defaults: Option<bool>,
    /// A second baseline for the noise floor: fields that differ between two baselines are noise.
    /// Absent: every difference counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<DiffBaseline>,
    /// When a field's diff rate stands above its noise rate. Defaults 20% and 0.03%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise: Option<NoiseThresholds>,
    /// Differing pairs kept as masked samples, newest first (1 to 100). Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub samples: Option<u32>,
}

/// The second baseline: a share of mirrored requests also goes to `pool`, which runs what the
/// primary runs.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiffBaseline {
    pub pool: String,
    /// Share of mirrored requests also sent to the baseline, above 0 and at most 1. Default 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub fraction: Option<f64>,
}

/// A field's differences count when its diff rate exceeds its noise rate by more than
/// `absolute_percent` points and by more than `relative_percent` of the noise rate.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoiseThresholds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute_percent: Option<f64>,
}

/// The mirror guardrail: after `consecutive` bad pairs in a row (the candidate slower than
/// `latency_ratio` times the primary, or failing where the primary did not), mirroring stops for
/// `cooldown`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Guardrail {
    /// `false` turns the guardrail off. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Default 2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ratio: Option<f64>,
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub consecutive: Option<u32>,
    /// Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Duration>,
}

// === impl Canary ===

impl Canary {
    /// The brake in effect, `None` when turned off.
    pub fn brake_or_default(&self) -> Option<CanaryBrake> {
        let b = self.brake.clone().unwrap_or_default();
        b.enabled.unwrap_or(true).then_some(b)
    }
}

impl CanaryBrake {
    pub fn max_error_percent_or_default(&self) -> f64 {
        self.max_error_percent.unwrap_or(DEFAULT_BRAKE_MAX_ERROR_PERCENT)
    }

    pub fn min_requests_or_default(&self) -> u32 {
        self.min_requests.unwrap_or(DEFAULT_BRAKE_MIN_REQUESTS)
    }

    pub fn window_or_default(&self) -> Duration {
        self.window.unwrap_or(DEFAULT_BRAKE_WINDOW)
    }
}

// === impl Mirror ===

impl Mirror {
    pub fn fraction_or_default(&self) -> f64 {
        self.fraction.unwrap_or(DEFAULT_MIRROR_FRACTION)
    }

    pub fn methods_or_default(&self) -> Vec<String> {
        self.methods
            .clone()
            .unwrap_or_else(|| DEFAULT_RETRY_METHODS.iter().map(|m| (*m).to_owned()).collect())
    }

    pub fn max_body_or_default(&self) -> ByteSize {
        self.max_body.unwrap_or(DEFAULT_MIRROR_MAX_BODY)
    }

    pub fn max_in_flight_or_default(&self) -> u32 {
        self.max_in_flight.unwrap_or(DEFAULT_MIRROR_MAX_IN_FLIGHT)
    }

    pub fn timeout_or_default(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_MIRROR_TIMEOUT)
    }

    /// The guardrail in effect, `None` when turned off.
    pub fn guardrail_or_default(&self) -> Option<Guardrail> {
        let g = self.guardrail.clone().unwrap_or_default();
        g.enabled.unwrap_or(true).then_some(g)
    }
}

impl MirrorDiff {
    pub fn mask_defaults_or_default(&self) -> bool {
        self.mask_defaults.unwrap_or(true)
    }

    pub fn samples_or_default(&self) -> u32 {
        self.samples.unwrap_or(DEFAULT_DIFF_SAMPLES)
    }

    /// `(relative, absolute)` as fractions (0.2, 0.0003 by default).
    pub fn noise_or_default(&self) -> (f64, f64) {
        let n = self.noise.clone().unwrap_or_default();
        (
            n.relative_percent.unwrap_or(DEFAULT_NOISE_RELATIVE_PERCENT) / 100.0,
            n.absolute_percent.unwrap_or(DEFAULT_NOISE_ABSOLUTE_PERCENT) / 100.0,
        )
    }
}

impl DiffBaseline {
    pub fn fraction_or_default(&self) -> f64 {
        self.fraction.unwrap_or(DEFAULT_BASELINE_FRACTION)
    }
}

impl Guardrail {
    pub fn latency_ratio_or_default(&self) -> f64 {
        self.latency_ratio.unwrap_or(DEFAULT_GUARDRAIL_LATENCY_RATIO)
    }

    pub fn consecutive_or_default(&self) -> u32 {
        self.consecutive.unwrap_or(DEFAULT_GUARDRAIL_CONSECUTIVE)
    }

    pub fn cooldown_or_default(&self) -> Duration {
        self.cooldown.unwrap_or(DEFAULT_GUARDRAIL_COOLDOWN)
    }
}
