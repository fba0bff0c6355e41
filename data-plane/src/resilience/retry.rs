//! Retry and hedge policies as compiled from a route, and the budgets that keep them from
//! multiplying load when an upstream is already struggling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Method;
use sluice_bundle::{Hedge, Retries, RetryOn};
use tokio::time::Instant;

use super::window::Window;

/// Span the retry and hedge budgets are measured over (SPEC §6: ttl 10 s).
pub const BUDGET_SPAN: Duration = Duration::from_secs(10);
/// Share of a pool's requests in progress that may be retries, with a floor (SPEC §6).
pub const CONCURRENT_RETRY_RATIO: f64 = 0.2;
pub const CONCURRENT_RETRY_MIN: u32 = 3;
/// Largest request body kept for replay on a retry.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;
/// Requests seen before a live-p95 hedge delay is trusted.
pub const HEDGE_MIN_SAMPLES: u64 = 20;

/// A route's retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_timeout: bool,
    /// Bit `s - 500` set: retry on response status `s`.
    statuses: u128,
    methods: Box<[Method]>,
    pub per_try_timeout: Option<Duration>,
    backoff_base: Duration,
    backoff_max: Duration,
    budget_ratio: f64,
    min_per_second: u32,
}

/// A route's hedging policy.
#[derive(Debug, Clone)]
pub struct HedgePolicy {
    /// Fixed delay; `None`: the route's live p95.
    pub delay: Option<Duration>,
    ratio: f64,
}

/// A route's lasting state: what its budgets are measured against.
#[derive(Debug)]
pub struct Budgets {
    /// `(requests, retries)`.
    retries: Window,
    /// `(requests, hedges)`, counted only on routes that hedge.
    hedges: Window,
    pub retries_total: AtomicU64,
    pub retries_denied: AtomicU64,
    pub hedges_total: AtomicU64,
    pub hedges_won: AtomicU64,
}

// === impl RetryPolicy ===

impl RetryPolicy {
    pub fn compile(r: &Retries) -> Self {
        let on = r.retry_on_or_default();
        let mut statuses = 0u128;
        for s in &on {
            if let RetryOn::Status(code) = s
                && (500..628).contains(code)
            {
                statuses |= 1 << (code - 500);
            }
        }
        Self {
            max_attempts: r.max_attempts_or_default().max(1),
            on_connect_failure: on.contains(&RetryOn::ConnectFailure),
            on_reset: on.contains(&RetryOn::Reset),
            on_timeout: on.contains(&RetryOn::Timeout),
            statuses,
            methods: r
                .methods_or_default()
                .iter()
                .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            per_try_timeout: r.per_try_timeout.map(|d| d.get()),
            backoff_base: r.backoff_base_or_default().get(),
            backoff_max: r.backoff_max_or_default().get(),
            budget_ratio: f64::from(r.budget_percent_or_default()) / 100.0,
            min_per_second: r.min_retries_per_second_or_default(),
        }
    }

    /// Whether requests with this method may be retried after they reached the upstream.
    /// (A connect failure reached nobody, so it may be retried whatever the method.)
    pub fn allows_method(&self, method: &Method) -> bool {
        self.max_attempts > 1 && self.methods.contains(method)
    }

    /// Whether a try that reached the upstream could be repeated, so its body must be kept.
    pub fn may_resend(&self, method: &Method) -> bool {
        self.allows_method(method) && (self.on_reset || self.on_timeout || self.statuses != 0)
    }

    /// Whether a retry may need the request's head after the try that sent it has given it up:
    /// a retry on an answered status (the head went with the try), or one after a per-try
    /// timeout (the try is dropped). Other retries get the head back from the failed try.
    pub fn needs_head_kept(&self) -> bool {
        self.statuses != 0 || (self.on_timeout && self.per_try_timeout.is_some())
    }

    pub fn on_status(&self, status: u16) -> bool {
        (500..628).contains(&status) && self.statuses & (1 << (status - 500)) != 0
    }

    /// The pause before retry `n` (1 for the first): random between half and all of
    /// `base * 2^(n-1)`, capped at the maximum.
    pub fn backoff(&self, n: u32) -> Duration {
        let full = self.backoff_base.saturating_mul(1 << (n.saturating_sub(1)).min(16)).min(self.backoff_max);
        let half = full / 2;
        half + full.saturating_sub(half).mul_f64(fastrand::f64())
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::compile(&Retries::default())
    }
}

// === impl HedgePolicy ===

impl HedgePolicy {
    pub fn compile(h: &Hedge) -> Self {
        Self { delay: h.delay.map(|d| d.get()), ratio: f64::from(h.budget_percent_or_default()) / 100.0 }
    }
}

// === impl Budgets ===

impl Default for Budgets {
    fn default() -> Self {
        Self {
            retries: Window::new(BUDGET_SPAN),
            hedges: Window::new(BUDGET_SPAN),
            retries_total: AtomicU64::new(0),
            retries_denied: AtomicU64::new(0),
            hedges_total: AtomicU64::new(0),
            hedges_won: AtomicU64::new(0),
        }
    }
}

impl Budgets {
    /// Counts a request that could be retried against the retry budget.
    pub fn request(&self, now: Instant) {
        self.retries.add(now, 1, 0);
    }

    /// Counts a request that could be hedged against the hedge budget.
    pub fn hedgeable_request(&self, now: Instant) {
        self.hedges.add(now, 1, 0);
    }

    /// Takes one retry from the budget: allowed while retries over the last 10 s stay under the
    /// policy's share of requests, or under its per-second minimum.
    pub fn try_retry(&self, now: Instant, policy: &RetryPolicy) -> bool {
        let (requests, retries) = self.retries.sum(now);
        let span = BUDGET_SPAN.as_secs_f64();
        let allowed = (requests as f64 * policy.budget_ratio).max(f64::from(policy.min_per_second) * span);
        if (retries as f64) < allowed {
            self.retries.add(now, 0, 1);
            self.retries_total.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.retries_denied.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Takes one hedge from the budget.
    pub fn try_hedge(&self, now: Instant, policy: &HedgePolicy) -> bool {
        let (requests, hedges) = self.hedges.sum(now);
        if (hedges as f64) < requests as f64 * policy.ratio {
            self.hedges.add(now, 0, 1);
            self.hedges_total.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// `(requests, retries)` over the budget span.
    pub fn retry_window(&self, now: Instant) -> (u64, u64) {
        self.retries.sum(now)
    }
}

/// Whether another retry may start in a pool with `active` requests of which `retrying` are
/// retries: at most a fifth of them, but always a few.
pub fn concurrent_retry_allowed(active: u32, retrying: u32) -> bool {
    let cap = ((f64::from(active) * CONCURRENT_RETRY_RATIO) as u32).max(CONCURRENT_RETRY_MIN);
    retrying < cap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_defaults_retry_idempotent_methods_on_connect_failure_and_reset() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts, 2);
        assert!(p.on_connect_failure && p.on_reset && !p.on_timeout);
        assert!(p.allows_method(&Method::GET) && p.allows_method(&Method::PUT));
        assert!(!p.allows_method(&Method::POST));
        assert!(!p.on_status(503));
        let p = RetryPolicy::compile(&Retries {
            retry_on: Some(vec![RetryOn::Status(503), RetryOn::Timeout]),
            max_attempts: Some(1),
            ..Retries::default()
        });
        assert!(p.on_status(503) && !p.on_status(502) && !p.on_status(200));
        assert!(!p.allows_method(&Method::GET), "max_attempts 1 means no retries");
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let p = RetryPolicy::default();
        for _ in 0..100 {
            let first = p.backoff(1);
            assert!(
                first >= Duration::from_micros(12_500) && first <= Duration::from_millis(25),
                "{first:?}"
            );
            let third = p.backoff(3);
            assert!(third >= Duration::from_millis(50) && third <= Duration::from_millis(100), "{third:?}");
            assert!(p.backoff(30) <= Duration::from_millis(250));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_budget_is_a_share_of_requests_with_a_floor() {
        let policy = RetryPolicy::compile(&Retries {
            budget_percent: Some(20),
            min_retries_per_second: Some(1),
            ..Retries::default()
        });
        let b = Budgets::default();
        let now = Instant::now();
        // Floor: 1/s over 10 s = 10 retries even with no requests counted.
        let floor = (0..50).filter(|_| b.try_retry(now, &policy)).count();
        assert_eq!(floor, 10);
        // 1000 requests: 20 % = 200 retries in the window, 10 of them spent already.
        for _ in 0..1000 {
            b.request(now);
        }
        let more = (0..500).filter(|_| b.try_retry(now, &policy)).count();
        assert_eq!(more, 190);
        assert_eq!(b.retries_denied.load(Ordering::Relaxed), 40 + 310);
        // The window slides: after 10 s the budget is back to its floor.
        tokio::time::advance(BUDGET_SPAN + Duration::from_secs(1)).await;
        assert!(b.try_retry(Instant::now(), &policy));
    }

    #[test]
    fn concurrent_retries_are_a_fifth_of_active_requests_at_least_three() {
        assert!(concurrent_retry_allowed(0, 2));
        assert!(!concurrent_retry_allowed(0, 3));
        assert!(concurrent_retry_allowed(100, 19));
        assert!(!concurrent_retry_allowed(100, 20));
    }
}
