//! Traffic split: which pool serves a request of a route. A request that names a known cohort (by
//! header or cookie) goes to that cohort's pool; otherwise the canary takes its weight of the
//! rest, drawn per request or fixed per user by a hashed key; otherwise the route's pool serves.
//!
//! Each variant (stable, canary, each cohort) is counted on its own, and the canary's safety
//! brake watches the canary's error rate: once engaged, the canary gets nothing until a config
//! that changes the route's canary is applied.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use sluice_bundle::{Canary, Route};
use sluice_compile::{CohortKey, SplitPlan};
use tokio::time::Instant;

use crate::headers::cookie;
use crate::metrics::{Outcome, RequestStats};
use crate::resilience::window::Window;
use crate::sync::lock;
use crate::upstream::{HashKey, Inputs};

/// The variant index of the route's own pool; the canary is 1 and cohorts follow.
pub(crate) const STABLE: u8 = 0;
pub(crate) const CANARY: u8 = 1;
/// Canary weights and draws are in parts per million.
const PPM: u32 = 1_000_000;

/// A route's compiled split.
#[derive(Debug)]
pub(crate) struct Split {
    cohorts: Option<CohortRule>,
    canary: Option<CanaryRule>,
    /// Indexed by variant: its name, pool and counters.
    pub variants: Box<[Variant]>,
}

/// One way a route's traffic can go.
#[derive(Debug)]
pub(crate) struct Variant {
    /// `stable`, `canary` or `cohort:<value>`.
    pub name: Box<str>,
    pub pool: usize,
    pub stats: Arc<VariantStats>,
}

#[derive(Debug)]
struct CohortRule {
    key: CohortKey,
    values: Box<[Cohort]>,
}

#[derive(Debug)]
struct Cohort {
    value: Box<[u8]>,
    /// Its index in `variants`, which holds its pool.
    variant: u8,
}

#[derive(Debug)]
struct CanaryRule {
    /// The canary's share in parts per million.
    threshold: u32,
    sticky: Option<HashKey>,
    brake: Arc<Brake>,
}

/// A variant's counters (the proxy's own errors included), kept by route and variant name across
/// snapshots.
pub(crate) type VariantStats = RequestStats;

/// The canary's safety brake, kept with the canary settings it watches: a config that changes the
/// route's canary gets a fresh one.
#[derive(Debug)]
pub(crate) struct Brake {
    /// `None`: the brake is off (it still carries the canary's spec for state keeping).
    limits: Option<BrakeLimits>,
    /// Canary requests and errors over the brake's window.
    window: Window,
    engaged: AtomicBool,
    why: Mutex<Option<(String, SystemTime)>>,
}

#[derive(Debug, Clone, Copy)]
struct BrakeLimits {
    max_error: f64,
    min_requests: u64,
    window: Duration,
}

/// What `/canary` and reports show of a brake.
#[derive(Debug, Clone)]
pub(crate) struct BrakeView {
    pub engaged: bool,
    pub reason: Option<String>,
    pub engaged_at: Option<SystemTime>,
}

/// A route's split state by name: its variants' counters and its canary's brake.
#[derive(Debug, Default)]
pub(crate) struct SplitRegistry {
    variants: Mutex<Vec<(Box<str>, Arc<VariantStats>)>>,
    /// The brake in force and the canary it belongs to.
    brake: Mutex<Option<(Canary, Arc<Brake>)>>,
}

// === impl Split ===

impl Split {
    /// The split of `route` from its compiled plan.
    pub fn compile(route: &Route, own: usize, plan: SplitPlan, registry: &SplitRegistry) -> Self {
        let mut variants =
            vec![Variant { name: "stable".into(), pool: own, stats: registry.variant("stable") }];
        // Keep variant indexes fixed: cohorts start at 2 whether or not there is a canary.
        variants.push(Variant {
            name: "canary".into(),
            pool: plan.canary_pool.unwrap_or(own),
            stats: registry.variant("canary"),
        });
        let canary = plan.canary_pool.and(route.canary.as_ref()).map(|c| CanaryRule {
            threshold: ((c.weight / 100.0) * f64::from(PPM)).round().clamp(0.0, f64::from(PPM)) as u32,
            sticky: c.sticky.as_ref().map(HashKey::new),
            brake: registry.brake_for(c),
        });
        let cohorts = plan.cohorts.map(|c| {
            let mut values = Vec::with_capacity(c.values.len());
            for (value, pool) in c.values {
                // At most 2 + `MAX_COHORTS` (256), which compiling checked.
                let variant = variants.len() as u8;
                let name = format!("cohort:{value}");
                variants.push(Variant { stats: registry.variant(&name), name: name.into(), pool });
                values.push(Cohort { value: value.into_boxed_bytes(), variant });
            }
            CohortRule { key: c.key, values: values.into() }
        });
        Self { cohorts, canary, variants: variants.into() }
    }

    /// The variant for a request, and the pool that serves it.
    pub fn choose(&self, headers: &HeaderMap, client_ip: IpAddr) -> (u8, usize) {
        let variant = self.variant(headers, client_ip);
        (variant, self.variants[variant as usize].pool)
    }

    fn variant(&self, headers: &HeaderMap, client_ip: IpAddr) -> u8 {
        if let Some(c) = &self.cohorts {
            let value = match &c.key {
                CohortKey::Header(h) => headers.get(h).map(|v| v.as_bytes()),
                CohortKey::Cookie(name) => cookie(headers, name),
            };
            if let Some(c) = value.and_then(|v| c.values.iter().find(|c| *c.value == *v)) {
                return c.variant;
            }
        }
        if let Some(c) = &self.canary
            && c.threshold > 0
            && !c.brake.engaged()
        {
            let draw = match c.sticky.as_ref().and_then(|k| k.hash(&Inputs { headers, client_ip })) {
                // Remixed so the split does not line up with a consistent-hash balancer on the same key.
                Some(h) => (mix(h) % u64::from(PPM)) as u32,
                None => fastrand::u32(..PPM),
            };
            if draw < c.threshold {
                return CANARY;
            }
        }
        STABLE
    }

    /// Counts a finished request against its variant; a canary answer also feeds the brake.
    pub fn record(&self, variant: u8, outcome: &Outcome, route: &str) {
        let Some(v) = self.variants.get(variant as usize) else { return };
        v.stats.record(outcome);
        if variant == CANARY
            && let Some(c) = &self.canary
        {
            c.brake.record(outcome.server_error(), route);
        }
    }

    /// The variants this route can choose: all but the canary's slot when it has no canary.
    pub fn in_use(&self) -> impl Iterator<Item = &Variant> {
        let canary = self.canary.is_some();
        self.variants.iter().enumerate().filter(move |(i, _)| canary || *i != CANARY as usize).map(|(_, v)| v)
    }

    /// The canary's brake, if the route has a canary.
    pub fn brake(&self) -> Option<&Arc<Brake>> {
        self.canary.as_ref().map(|c| &c.brake)
    }

    /// The configured canary share, in percent.
    pub fn canary_percent(&self) -> Option<f64> {
        self.canary.as_ref().map(|c| f64::from(c.threshold) / f64::from(PPM) * 100.0)
    }
}

/// A 64-bit finaliser (splitmix64's).
fn mix(mut h: u64) -> u64 {
    h ^= 0x9e37_79b9_7f4a_7c15;
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

// === impl Brake ===

impl Brake {
    fn new(canary: &Canary) -> Self {
        let limits = canary.brake_or_default().map(|b| BrakeLimits {
            max_error: b.max_error_percent_or_default() / 100.0,
            min_requests: u64::from(b.min_requests_or_default()),
            window: b.window_or_default().get(),
        });
        let span = limits.map_or(Duration::from_secs(1), |l| l.window);
        Self { limits, window: Window::new(span), engaged: AtomicBool::new(false), why: Mutex::new(None) }
    }

    pub fn engaged(&self) -> bool {
        self.engaged.load(Ordering::Relaxed)
    }

    /// One canary answer. The rate is judged on errors only: a success cannot engage the brake.
    fn record(&self, error: bool, route: &str) {
        let Some(limits) = self.limits else { return };
        let now = Instant::now();
        self.window.add(now, 1, u64::from(error));
        if !error || self.engaged() {
            return;
        }
        let (requests, errors) = self.window.sum(now);
        let rate = errors as f64 / requests.max(1) as f64;
        if requests >= limits.min_requests
            && rate > limits.max_error
            && !self.engaged.swap(true, Ordering::Relaxed)
        {
            let reason = format!(
                "error rate {:.1}% > {:.1}% over {requests} requests in {:?}",
                rate * 100.0,
                limits.max_error * 100.0,
                limits.window
            );
            tracing::warn!(route, %reason, "canary brake engaged: the canary gets no traffic until its config changes");
            *lock(&self.why) = Some((reason, SystemTime::now()));
        }
    }

    pub fn view(&self) -> BrakeView {
        let why = lock(&self.why).clone();
        BrakeView {
            engaged: self.engaged(),
            reason: why.as_ref().map(|(r, _)| r.clone()),
            engaged_at: why.map(|(_, at)| at),
        }
    }
}

// === impl SplitRegistry ===

impl SplitRegistry {
    /// The counters of variant `name`, created on first use.
    fn variant(&self, name: &str) -> Arc<VariantStats> {
        let mut variants = lock(&self.variants);
        if let Some((_, s)) = variants.iter().find(|(n, _)| &**n == name) {
            return s.clone();
        }
        let s = Arc::<VariantStats>::default();
        variants.push((name.into(), s.clone()));
        s
    }

    /// The brake in force if it watches this same canary, else a fresh one (put in force by
    /// [`SplitRegistry::activate`] once its snapshot is).
    fn brake_for(&self, canary: &Canary) -> Arc<Brake> {
        match &*lock(&self.brake) {
            Some((c, b)) if c == canary => b.clone(),
            _ => Arc::new(Brake::new(canary)),
        }
    }

    /// Puts the active snapshot's brake in force for this route (`None`: no canary).
    pub fn activate(&self, canary: Option<(&Canary, &Arc<Brake>)>) {
        *lock(&self.brake) = canary.map(|(c, b)| (c.clone(), b.clone()));
    }
}
