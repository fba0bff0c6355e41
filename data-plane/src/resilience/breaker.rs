//! A pool's circuit breaker: limits on what may be in progress at once (requests, connections,
//! requests waiting for a connection, retries), and an optional error-rate breaker that opens when
//! too many recent requests failed, stays open for a while, then lets a few probes through.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use sluice_bundle::CircuitBreaker;
use tokio::time::Instant;

use super::window::Window;
use crate::sync::lock;

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// One pool's breaker. Lives in the pool registry, so it survives reloads; its limits are
/// replaced when the pool's config changes.
#[derive(Debug)]
pub struct Breaker {
    max_requests: AtomicU32,
    max_pending: AtomicU32,
    max_connections: AtomicU32,
    max_retries: AtomicU32,
    pub(crate) active_requests: AtomicU32,
    pending: AtomicU32,
    connections: AtomicU32,
    pub(crate) active_retries: AtomicU32,
    error_rate: ArcSwapOption<ErrorRate>,
    state: AtomicU8,
    /// Probes admitted since the breaker went half-open, and how many of them succeeded.
    probes: AtomicU32,
    /// Counts the times the breaker went half-open, so a probe from an earlier round is not
    /// counted against this one.
    round: AtomicU32,
    probe_successes: AtomicU32,
    detail: Mutex<Detail>,
    pub(crate) rejected_total: AtomicU64,
}

/// The error-rate breaker's settings and its window of `(requests, failures)`.
#[derive(Debug)]
struct ErrorRate {
    threshold_percent: u32,
    min_requests: u32,
    open_duration: Duration,
    half_open_requests: u32,
    window: Window,
    config: CircuitBreaker,
}

#[derive(Debug, Default)]
struct Detail {
    open_until: Option<Instant>,
    last_trip: Option<Trip>,
    trips: u64,
}

/// Why the breaker last opened.
#[derive(Debug, Clone)]
pub struct Trip {
    pub reason: String,
    pub at: SystemTime,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Open(String),
    Limit(&'static str, u32),
}

/// A request counted against the pool while it lives.
#[derive(Debug)]
pub struct Admitted {
    breaker: Arc<Breaker>,
    /// Admitted while half-open: its outcome decides whether the breaker closes.
    pub probe: bool,
    /// The half-open round it is a probe of.
    round: u32,
}

/// A connection counted against the pool while it lives.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<Breaker>);

/// A connect in progress, counted as a pending request.
#[derive(Debug)]
pub struct PendingSlot(Arc<Breaker>);

/// A retry counted against the pool while it lives.
#[derive(Debug)]
pub struct RetrySlot(Arc<Breaker>);

/// The breaker's state, for the admin API.
#[derive(Debug, Clone)]
pub struct BreakerStatus {
    pub state: &'static str,
    pub open_for: Option<Duration>,
    pub last_trip: Option<Trip>,
    pub trips: u64,
    pub active_requests: u32,
    pub pending: u32,
    pub connections: u32,
    pub active_retries: u32,
    pub limits: [u32; 4],
    /// `(requests, failures)` in the error-rate window, when that breaker is configured.
    pub window: Option<(u64, u64)>,
    pub rejected: u64,
}

// === impl Refusal ===

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Open(why) => write!(f, "circuit open: {why}"),
            Self::Limit(what, n) => write!(f, "{what} limit of {n} reached"),
        }
    }
}

// === impl Breaker ===

impl Default for Breaker {
    fn default() -> Self {
        let d = CircuitBreaker::default();
        Self {
            max_requests: AtomicU32::new(d.max_requests_or_default()),
            max_pending: AtomicU32::new(d.max_pending_requests_or_default()),
            max_connections: AtomicU32::new(d.max_connections_or_default()),
            max_retries: AtomicU32::new(d.max_retries_or_default()),
            active_requests: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            connections: AtomicU32::new(0),
            active_retries: AtomicU32::new(0),
            error_rate: ArcSwapOption::empty(),
            state: AtomicU8::new(CLOSED),
            probes: AtomicU32::new(0),
            round: AtomicU32::new(0),
            probe_successes: AtomicU32::new(0),
            detail: Mutex::default(),
            rejected_total: AtomicU64::new(0),
        }
    }
}

impl Breaker {
    /// Takes the pool's (possibly changed) settings. An unchanged error-rate config keeps its
    /// window and state; a changed or removed one starts closed.
    pub fn configure(&self, cfg: &CircuitBreaker) {
        self.max_requests.store(cfg.max_requests_or_default(), Ordering::Relaxed);
        self.max_pending.store(cfg.max_pending_requests_or_default(), Ordering::Relaxed);
        self.max_connections.store(cfg.max_connections_or_default(), Ordering::Relaxed);
        self.max_retries.store(cfg.max_retries_or_default(), Ordering::Relaxed);
        let current = self.error_rate.load();
        if current.as_ref().map(|c| &c.config) == Some(cfg) {
            return;
        }
        let next = cfg.error_threshold_percent.map(|pct| {
            Arc::new(ErrorRate {
                threshold_percent: pct,
                min_requests: cfg.min_requests_or_default(),
                open_duration: cfg.open_duration_or_default().get(),
                half_open_requests: cfg.half_open_requests_or_default().max(1),
                window: Window::new(cfg.window_or_default().get()),
                config: cfg.clone(),
            })
        });
        self.error_rate.store(next);
        self.state.store(CLOSED, Ordering::Release);
        lock(&self.detail).open_until = None;
    }

    /// Admits a request, or says why not.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Result<Admitted, Refusal> {
        let mut probe = false;
        match self.state.load(Ordering::Acquire) {
            CLOSED => {}
            state => {
                let Some(rate) = self.error_rate.load_full() else {
                    self.state.store(CLOSED, Ordering::Release);
                    return self.admit(now);
                };
                if state == OPEN {
                    let mut detail = lock(&self.detail);
                    if detail.open_until.is_some_and(|until| now < until) {
                        drop(detail);
                        return Err(self.refuse(Refusal::Open(self.trip_reason())));
                    }
                    // Open long enough: let probes through.
                    if self.state.load(Ordering::Acquire) == OPEN {
                        detail.open_until = None;
                        self.probes.store(0, Ordering::Relaxed);
                        self.probe_successes.store(0, Ordering::Relaxed);
                        self.round.fetch_add(1, Ordering::AcqRel);
                        self.state.store(HALF_OPEN, Ordering::Release);
                        tracing::info!("circuit half-open: letting probes through");
                    }
                }
                if self.state.load(Ordering::Acquire) == HALF_OPEN {
                    let max = rate.half_open_requests;
                    if self
                        .probes
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
                        .is_err()
                    {
                        return Err(self.refuse(Refusal::Open(format!(
                            "half-open, {} probe requests in flight",
                            rate.half_open_requests
                        ))));
                    }
                    probe = true;
                }
            }
        }
        let max = self.max_requests.load(Ordering::Relaxed);
        if self.active_requests.fetch_add(1, Ordering::AcqRel) >= max {
            self.active_requests.fetch_sub(1, Ordering::AcqRel);
            return Err(self.refuse(Refusal::Limit("max_requests", max)));
        }
        Ok(Admitted { breaker: self.clone(), probe, round: self.round.load(Ordering::Acquire) })
    }

    fn refuse(&self, r: Refusal) -> Refusal {
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn trip_reason(&self) -> String {
        lock(&self.detail).last_trip.as_ref().map_or_else(|| "open".to_owned(), |t| t.reason.clone())
    }

    /// Records the outcome of one try against the pool.
    pub fn record(&self, now: Instant, success: bool, probe: bool) {
        let Some(rate) = self.error_rate.load_full() else { return };
        rate.window.add(now, 1, u64::from(!success));
        match self.state.load(Ordering::Acquire) {
            HALF_OPEN if probe => {
                if !success {
                    self.trip(now, &rate, "a half-open probe failed".to_owned());
                } else if self.probe_successes.fetch_add(1, Ordering::AcqRel) + 1 >= rate.half_open_requests {
                    self.state.store(CLOSED, Ordering::Release);
                    rate.window.clear();
                    tracing::info!("circuit closed: probes succeeded");
                }
            }
            CLOSED if !success => {
                let (requests, failures) = rate.window.sum(now);
                if requests >= u64::from(rate.min_requests)
                    && failures * 100 >= u64::from(rate.threshold_percent) * requests
                {
                    let why = format!(
                        "error rate {}% ({failures} of {requests} requests) reached {}% over {:?}",
                        failures * 100 / requests.max(1),
                        rate.threshold_percent,
                        rate.window.span()
                    );
                    self.trip(now, &rate, why);
                }
            }
            _ => {}
        }
    }

    fn trip(&self, now: Instant, rate: &ErrorRate, reason: String) {
        let mut detail = lock(&self.detail);
        if self.state.load(Ordering::Acquire) == OPEN {
            return;
        }
        tracing::warn!(reason = %reason, open_for = ?rate.open_duration, "circuit opened");
        detail.open_until = Some(now + rate.open_duration);
        detail.last_trip = Some(Trip { reason, at: SystemTime::now() });
        detail.trips += 1;
        self.state.store(OPEN, Ordering::Release);
    }

    /// Reserves a new connection, unless the pool has its maximum open.
    pub fn open_connection(self: &Arc<Self>) -> Result<ConnectionSlot, Refusal> {
        take(&self.connections, self.max_connections.load(Ordering::Relaxed), "max_connections")
            .map(|()| ConnectionSlot(self.clone()))
            .map_err(|r| self.refuse(r))
    }

    /// Counts a request waiting for a new connection, unless too many already are.
    pub fn wait_for_connection(self: &Arc<Self>) -> Result<PendingSlot, Refusal> {
        take(&self.pending, self.max_pending.load(Ordering::Relaxed), "max_pending_requests")
            .map(|()| PendingSlot(self.clone()))
            .map_err(|r| self.refuse(r))
    }

    /// Counts a retry, unless the pool's retry limit or the concurrent-retry share is reached.
    pub fn start_retry(self: &Arc<Self>) -> Option<RetrySlot> {
        let active = self.active_requests.load(Ordering::Relaxed);
        let retrying = self.active_retries.load(Ordering::Relaxed);
        if !super::retry::concurrent_retry_allowed(active, retrying) {
            return None;
        }
        take(&self.active_retries, self.max_retries.load(Ordering::Relaxed), "max_retries")
            .ok()
            .map(|()| RetrySlot(self.clone()))
    }

    pub fn status(&self, now: Instant) -> BreakerStatus {
        let detail = lock(&self.detail);
        let rate = self.error_rate.load();
        let state = match self.state.load(Ordering::Acquire) {
            OPEN if detail.open_until.is_some_and(|u| now >= u) => "half_open",
            OPEN => "open",
            HALF_OPEN => "half_open",
            _ => "closed",
        };
        BreakerStatus {
            state,
            open_for: detail.open_until.map(|u| u.saturating_duration_since(now)),
            last_trip: detail.last_trip.clone(),
            trips: detail.trips,
            active_requests: self.active_requests.load(Ordering::Relaxed),
            pending: self.pending.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            active_retries: self.active_retries.load(Ordering::Relaxed),
            limits: [
                self.max_connections.load(Ordering::Relaxed),
                self.max_pending.load(Ordering::Relaxed),
                self.max_requests.load(Ordering::Relaxed),
                self.max_retries.load(Ordering::Relaxed),
            ],
            window: rate.as_ref().map(|r| r.window.sum(now)),
            rejected: self.rejected_total.load(Ordering::Relaxed),
        }
    }
}

/// Increments `counter` unless it is at `max`.
fn take(counter: &AtomicU32, max: u32, what: &'static str) -> Result<(), Refusal> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
        .map(drop)
        .map_err(|_| Refusal::Limit(what, max))
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let b = &self.breaker;
        b.active_requests.fetch_sub(1, Ordering::AcqRel);
        // A finished probe frees its place for the next: closing takes enough successes, not
        // enough probes at once, and a probe whose client went away must not hold the breaker
        // half-open for ever.
        if self.probe
            && b.state.load(Ordering::Acquire) == HALF_OPEN
            && b.round.load(Ordering::Acquire) == self.round
        {
            let _ = b.probes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.active_retries.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_bundle::Duration as D;

    fn breaker(cfg: CircuitBreaker) -> Arc<Breaker> {
        let b = Arc::new(Breaker::default());
        b.configure(&cfg);
        b
    }

    fn error_rate() -> CircuitBreaker {
        CircuitBreaker {
            error_threshold_percent: Some(50),
            min_requests: Some(10),
            window: Some(D::from_secs(10)),
            open_duration: Some(D::from_secs(30)),
            half_open_requests: Some(2),
            ..CircuitBreaker::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_error_rate_then_half_opens_and_closes_on_good_probes() {
        let b = breaker(error_rate());
        let now = Instant::now();
        // Below min_requests nothing is judged, however bad.
        for _ in 0..9 {
            b.record(now, false, false);
        }
        assert!(b.admit(now).is_ok());
        b.record(now, false, false);
        let refused = b.admit(now).unwrap_err();
        let Refusal::Open(why) = &refused else { panic!("{refused:?}") };
        assert!(why.contains("error rate 100% (10 of 10 requests) reached 50%"), "{why}");
        assert_eq!(b.status(now).state, "open");

        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.admit(Instant::now()).is_err(), "still open");
        tokio::time::advance(Duration::from_secs(1)).await;
        let now = Instant::now();
        let p1 = b.admit(now).unwrap();
        let p2 = b.admit(now).unwrap();
        assert!(p1.probe && p2.probe);
        assert!(b.admit(now).is_err(), "only two probes at a time");
        b.record(now, true, true);
        b.record(now, true, true);
        assert_eq!(b.status(now).state, "closed");
        let after = b.admit(now).unwrap();
        assert!(!after.probe);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again() {
        let b = breaker(error_rate());
        let now = Instant::now();
        for _ in 0..10 {
            b.record(now, false, false);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        let now = Instant::now();
        let probe = b.admit(now).unwrap();
        b.record(now, false, probe.probe);
        let Err(Refusal::Open(why)) = b.admit(now) else { panic!("should be open") };
        assert_eq!(why, "a half-open probe failed");
        assert_eq!(b.status(now).trips, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_frees_its_place() {
        let b = breaker(CircuitBreaker { half_open_requests: Some(1), ..error_rate() });
        let now = Instant::now();
        for _ in 0..10 {
            b.record(now, false, false);
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        let now = Instant::now();
        let probe = b.admit(now).unwrap();
        assert!(probe.probe);
        assert!(b.admit(now).is_err(), "one probe at a time");
        // The client went away: no outcome is recorded.
        drop(probe);
        let probe = b.admit(now).expect("the next request probes instead");
        b.record(now, true, probe.probe);
        assert_eq!(b.status(now).state, "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn limits_count_what_is_in_progress() {
        let b = breaker(CircuitBreaker {
            max_requests: Some(2),
            max_connections: Some(1),
            max_pending_requests: Some(1),
            max_retries: Some(1),
            ..CircuitBreaker::default()
        });
        let now = Instant::now();
        let a = b.admit(now).unwrap();
        let _b2 = b.admit(now).unwrap();
        assert_eq!(b.admit(now).unwrap_err(), Refusal::Limit("max_requests", 2));
        drop(a);
        let _c = b.admit(now).unwrap();

        let conn = b.open_connection().unwrap();
        assert!(b.open_connection().is_err());
        drop(conn);
        assert!(b.open_connection().is_ok());
        let pending = b.wait_for_connection().unwrap();
        assert!(b.wait_for_connection().is_err());
        drop(pending);

        let r = b.start_retry().unwrap();
        assert!(b.start_retry().is_none(), "max_retries 1");
        drop(r);
        assert!(b.start_retry().is_some());
        // Without the error-rate breaker failures never open it.
        for _ in 0..100 {
            b.record(now, false, false);
        }
        assert_eq!(b.status(now).state, "closed");
    }
}
