//! Endpoint health: what active checks and live traffic say about each endpoint, and outlier
//! detection, which ejects endpoints that fail (consecutive failures), fail more than their peers
//! (success rate) or are far slower than them (latency).
//!
//! The request path reads one atomic per pick ([`EndpointHealth::available`]) and writes a few
//! relaxed atomics per response, into a stripe of its own worker. Decisions that look across the
//! pool take the pool's lock; they are rare.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sluice_bundle::OutlierDetection;
use tokio::time::Instant;

use crate::sync::lock;

/// Set while active health checks say the endpoint is down.
const CHECK_FAILED: u8 = 1;
/// Set while outlier detection has the endpoint ejected.
const EJECTED: u8 = 2;

/// One endpoint's health. Lives in the pool registry, keyed by address, so it survives reloads.
#[derive(Debug)]
pub struct EndpointHealth {
    flags: AtomicU8,
    consecutive_failures: AtomicU32,
    /// Per-worker counts since the last outlier analysis.
    stripes: Box<[Stripe]>,
    detail: Mutex<Detail>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    requests: AtomicU64,
    failures: AtomicU64,
    latency_us: AtomicU64,
}

/// What the admin API shows of an endpoint's health.
#[derive(Debug, Clone, Default)]
pub struct Detail {
    pub ejected_until: Option<Instant>,
    /// Ejections so far, decayed by one per clean interval; the next ejection lasts this many
    /// (plus one) base ejection times.
    pub ejections: u32,
    pub last_ejection: Option<(String, SystemTime)>,
    pub check: CheckState,
}

/// Active health-check state.
#[derive(Debug, Clone, Default)]
pub struct CheckState {
    /// At least one check has completed.
    pub checked: bool,
    pub passes_in_row: u32,
    pub failures_in_row: u32,
    /// `(passed, what happened, when)` of the latest check.
    pub last: Option<(bool, String, SystemTime)>,
}

/// Outlier detection as compiled from a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierPolicy {
    pub consecutive: u32,
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_percent: u32,
    /// `(min_hosts, min_requests, stdev_factor)`.
    pub success_rate: Option<(u32, u32, f64)>,
    /// `(factor, min_requests)`.
    pub latency: Option<(f64, u32)>,
}

/// Counts one endpoint saw over an interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct IntervalStats {
    pub requests: u64,
    pub failures: u64,
    pub latency_us: u64,
}

// === impl EndpointHealth ===

impl EndpointHealth {
    pub fn new(workers: usize) -> Self {
        Self {
            flags: AtomicU8::new(0),
            consecutive_failures: AtomicU32::new(0),
            stripes: (0..workers.max(1)).map(|_| Stripe::default()).collect(),
            detail: Mutex::default(),
        }
    }

    /// Whether the endpoint should get traffic: not failing its checks, not ejected.
    pub fn available(&self) -> bool {
        self.flags.load(Ordering::Relaxed) == 0
    }

    pub fn is_ejected(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & EJECTED != 0
    }

    pub fn is_check_failed(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & CHECK_FAILED != 0
    }

    pub fn detail(&self) -> Detail {
        lock(&self.detail).clone()
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Records one try's outcome from `worker`. Returns the run of consecutive failures so far
    /// when this try failed, 0 when it succeeded.
    pub fn record(&self, worker: usize, success: bool, latency: Duration) -> u32 {
        let s = &self.stripes[worker % self.stripes.len()];
        s.requests.fetch_add(1, Ordering::Relaxed);
        s.latency_us.fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        if success {
            // A load first: the common case writes nothing to this shared line.
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            0
        } else {
            s.failures.fetch_add(1, Ordering::Relaxed);
            self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
        }
    }

    /// Takes the counts since the previous call.
    pub fn take_interval(&self) -> IntervalStats {
        let mut t = IntervalStats::default();
        for s in self.stripes.iter() {
            t.requests += s.requests.swap(0, Ordering::Relaxed);
            t.failures += s.failures.swap(0, Ordering::Relaxed);
            t.latency_us += s.latency_us.swap(0, Ordering::Relaxed);
        }
        t
    }

    /// Applies one active check's result; returns `Some(now healthy)` when the endpoint changed
    /// state. The first result for an endpoint decides at once; after that it takes
    /// `healthy`/`unhealthy` results in a row.
    pub fn check_result(&self, passed: bool, what: String, healthy: u32, unhealthy: u32) -> Option<bool> {
        let mut d = lock(&self.detail);
        let first = !d.check.checked;
        d.check.checked = true;
        d.check.last = Some((passed, what, SystemTime::now()));
        if passed {
            d.check.passes_in_row += 1;
            d.check.failures_in_row = 0;
        } else {
            d.check.failures_in_row += 1;
            d.check.passes_in_row = 0;
        }
        let down = self.flags.load(Ordering::Relaxed) & CHECK_FAILED != 0;
        if down && passed && (first || d.check.passes_in_row >= healthy) {
            self.flags.fetch_and(!CHECK_FAILED, Ordering::Relaxed);
            return Some(true);
        }
        if !down && !passed && (first || d.check.failures_in_row >= unhealthy) {
            self.flags.fetch_or(CHECK_FAILED, Ordering::Relaxed);
            return Some(false);
        }
        None
    }

    /// Forgets active-check state (checks were turned off or changed).
    pub fn reset_checks(&self) {
        lock(&self.detail).check = CheckState::default();
        self.flags.fetch_and(!CHECK_FAILED, Ordering::Relaxed);
    }

    /// Ends any ejection (outlier detection was turned off).
    pub fn reset_ejection(&self) {
        lock(&self.detail).ejected_until = None;
        self.flags.fetch_and(!EJECTED, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

// === impl OutlierPolicy ===

impl OutlierPolicy {
    pub fn compile(o: &OutlierDetection) -> Self {
        Self {
            consecutive: o.consecutive_5xx_or_default().max(1),
            interval: o.interval_or_default().get(),
            base_ejection: o.base_ejection_time_or_default().get(),
            max_ejection: o.max_ejection_time_or_default().get(),
            max_percent: o.max_ejection_percent_or_default(),
            success_rate: o.success_rate_or_default().map(|s| {
                (s.min_hosts_or_default(), s.min_requests_or_default(), s.stdev_factor_or_default())
            }),
            latency: o.latency.as_ref().map(|l| (l.factor, l.min_requests_or_default())),
        }
    }

    /// How many of `n` endpoints may be ejected at once: the percentage, but at least one
    /// (unless it is 0).
    pub fn max_ejected(&self, n: usize) -> usize {
        if self.max_percent == 0 { 0 } else { (n * self.max_percent as usize / 100).max(1) }
    }
}

/// Ejects `target` (an index into `endpoints`) for `reason`, if the pool's ejection cap allows.
/// Returns whether it was ejected.
pub fn eject(
    endpoints: &[(&str, &EndpointHealth)],
    target: usize,
    policy: &OutlierPolicy,
    now: Instant,
    reason: String,
) -> bool {
    let (address, health) = endpoints[target];
    if health.is_ejected() {
        return false;
    }
    let ejected = endpoints.iter().filter(|(_, h)| h.is_ejected()).count();
    if ejected >= policy.max_ejected(endpoints.len()) {
        tracing::info!(endpoint = address, %reason, ejected, "not ejecting: max_ejection_percent reached");
        return false;
    }
    let mut d = lock(&health.detail);
    d.ejections += 1;
    let time = policy.base_ejection.saturating_mul(d.ejections).min(policy.max_ejection);
    d.ejected_until = Some(now + time);
    tracing::warn!(endpoint = address, %reason, ejected_for = ?time, "endpoint ejected");
    d.last_ejection = Some((reason, SystemTime::now()));
    health.flags.fetch_or(EJECTED, Ordering::Relaxed);
    true
}

/// Returns endpoints whose ejection has run out.
pub fn return_expired(endpoints: &[(&str, &EndpointHealth)], now: Instant) {
    for (address, h) in endpoints {
        if !h.is_ejected() {
            continue;
        }
        let mut d = lock(&h.detail);
        if d.ejected_until.is_none_or(|until| now >= until) {
            d.ejected_until = None;
            h.consecutive_failures.store(0, Ordering::Relaxed);
            h.flags.fetch_and(!EJECTED, Ordering::Relaxed);
            tracing::info!(endpoint = address, "ejection over; endpoint back in rotation");
        }
    }
}

/// One outlier analysis over an interval: takes every endpoint's counts, ejects success-rate and
/// latency outliers, and lets endpoints that stayed in rotation work off past ejections.
pub fn analyse(endpoints: &[(&str, &EndpointHealth)], policy: &OutlierPolicy, now: Instant) {
    let stats: Vec<IntervalStats> = endpoints.iter().map(|(_, h)| h.take_interval()).collect();
    for (_, h) in endpoints {
        if !h.is_ejected() {
            let mut d = lock(&h.detail);
            d.ejections = d.ejections.saturating_sub(1);
        }
    }
    if let Some((min_hosts, min_requests, factor)) = policy.success_rate {
        let judged: Vec<(usize, f64)> = stats
            .iter()
            .enumerate()
            .filter(|(i, s)| s.requests >= u64::from(min_requests) && !endpoints[*i].1.is_ejected())
            .map(|(i, s)| (i, 1.0 - s.failures as f64 / s.requests as f64))
            .collect();
        if judged.len() >= min_hosts as usize {
            let n = judged.len() as f64;
            let mean = judged.iter().map(|(_, r)| r).sum::<f64>() / n;
            let stdev = (judged.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n).sqrt();
            let floor = mean - factor * stdev;
            for (i, rate) in judged {
                if rate < floor {
                    let reason = format!(
                        "success rate {:.1}% is below the pool's {:.1}% minus {factor} standard deviations ({:.1}%)",
                        rate * 100.0,
                        mean * 100.0,
                        floor * 100.0
                    );
                    eject(endpoints, i, policy, now, reason);
                }
            }
        }
    }
    if let Some((factor, min_requests)) = policy.latency {
        let mut judged: Vec<(usize, f64)> = stats
            .iter()
            .enumerate()
            .filter(|(i, s)| s.requests >= u64::from(min_requests) && !endpoints[*i].1.is_ejected())
            .map(|(i, s)| (i, s.latency_us as f64 / s.requests as f64))
            .collect();
        // A median needs peers: with fewer than three endpoints "slower than the rest" is noise.
        if judged.len() >= 3 {
            judged.sort_by(|a, b| a.1.total_cmp(&b.1));
            let median = judged[judged.len() / 2].1;
            for (i, mean) in judged {
                if median > 0.0 && mean > factor * median {
                    let reason = format!(
                        "mean latency {:.1} ms is over {factor} times the pool's median of {:.1} ms",
                        mean / 1000.0,
                        median / 1000.0
                    );
                    eject(endpoints, i, policy, now, reason);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy::compile(&OutlierDetection::default())
    }

    fn pool(n: usize) -> Vec<(String, EndpointHealth)> {
        (0..n).map(|i| (format!("10.0.0.{i}:80"), EndpointHealth::new(2))).collect()
    }

    fn view(p: &[(String, EndpointHealth)]) -> Vec<(&str, &EndpointHealth)> {
        p.iter().map(|(a, h)| (a.as_str(), h)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_grows_with_each_repeat_and_runs_out() {
        let p = pool(3);
        let v = view(&p);
        let policy = policy();
        let now = Instant::now();
        assert!(eject(&v, 0, &policy, now, "5 failures in a row".into()));
        assert!(!v[0].1.available());
        assert!(!eject(&v, 1, &policy, now, "x".into()), "10% of 3 rounds up to one at a time");
        tokio::time::advance(Duration::from_secs(29)).await;
        return_expired(&v, Instant::now());
        assert!(!v[0].1.available());
        tokio::time::advance(Duration::from_secs(1)).await;
        return_expired(&v, Instant::now());
        assert!(v[0].1.available());
        // Second ejection: twice as long.
        let now = Instant::now();
        assert!(eject(&v, 0, &policy, now, "again".into()));
        assert_eq!(v[0].1.detail().ejected_until, Some(now + Duration::from_secs(60)));
        assert_eq!(v[0].1.detail().last_ejection.unwrap().0, "again");
    }

    #[test]
    fn consecutive_failures_reset_on_success() {
        let h = EndpointHealth::new(2);
        assert_eq!(h.record(0, false, Duration::ZERO), 1);
        assert_eq!(h.record(1, false, Duration::ZERO), 2);
        assert_eq!(h.record(0, true, Duration::ZERO), 0);
        assert_eq!(h.record(1, false, Duration::ZERO), 1);
        let t = h.take_interval();
        assert_eq!((t.requests, t.failures), (4, 3));
        assert_eq!(h.take_interval().requests, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn success_rate_and_latency_outliers_are_ejected() {
        let p = pool(5);
        let v = view(&p);
        let mut policy = policy();
        policy.max_percent = 100;
        policy.latency = Some((3.0, 10));
        for (i, (_, h)) in v.iter().enumerate() {
            for n in 0..200 {
                let fail = i == 4 && n % 2 == 0; // endpoint 4 fails half its requests
                let slow = if i == 2 { 50 } else { 5 }; // endpoint 2 is ten times slower
                h.record(0, !fail, Duration::from_millis(slow));
            }
        }
        analyse(&v, &policy, Instant::now());
        assert!(v[4].1.is_ejected(), "success-rate outlier");
        assert!(v[4].1.detail().last_ejection.unwrap().0.starts_with("success rate 50.0%"));
        assert!(v[2].1.is_ejected(), "latency outlier");
        assert!(v[2].1.detail().last_ejection.unwrap().0.contains("median of 5.0 ms"));
        for i in [0, 1, 3] {
            assert!(v[i].1.available());
        }
    }

    #[test]
    fn active_checks_decide_at_once_then_by_thresholds() {
        let h = EndpointHealth::new(1);
        assert_eq!(h.check_result(false, "503".into(), 2, 3), Some(false), "first result decides");
        assert!(!h.available());
        assert_eq!(h.check_result(true, "200".into(), 2, 3), None);
        assert_eq!(h.check_result(true, "200".into(), 2, 3), Some(true));
        assert!(h.available());
        assert_eq!(h.check_result(false, "timeout".into(), 2, 3), None);
        assert_eq!(h.check_result(false, "timeout".into(), 2, 3), None);
        assert_eq!(h.check_result(false, "timeout".into(), 2, 3), Some(false));
        h.reset_checks();
        assert!(h.available());
    }
}
