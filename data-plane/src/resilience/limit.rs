//! Admission limits: a listener's cap on requests in progress (with a bounded, time-limited
//! queue), and a route's token-bucket rate limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use sluice_bundle::{Overload, RateLimit};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::sync::lock;

/// Distinct keys a keyed rate limit tracks; beyond this, full buckets are forgotten first.
const MAX_KEYS: usize = 10_000;

/// A listener's overload protection. Kept with the listener's socket across reloads; the limits
/// are replaced when its config changes. With no limit configured a request costs one load.
#[derive(Debug, Default)]
pub struct Limiter {
    /// 0: no limit.
    max: AtomicU32,
    max_queued: AtomicU32,
    queue_timeout_ms: AtomicU64,
    active: AtomicU32,
    queued: AtomicU32,
    freed: Notify,
    pub shed_total: AtomicU64,
}

/// A request counted against its listener until the response body has been sent.
#[derive(Debug)]
pub struct OwnedPermit(Option<std::sync::Arc<Limiter>>);

/// Why a request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    QueueFull,
    QueueTimeout,
}

// === impl Limiter ===

impl Limiter {
    pub fn configure(&self, overload: Option<&Overload>) {
        match overload {
            None => self.max.store(0, Ordering::Relaxed),
            Some(o) => {
                self.max_queued.store(o.max_queued_or_default(), Ordering::Relaxed);
                self.queue_timeout_ms
                    .store(o.queue_timeout_or_default().get().as_millis() as u64, Ordering::Relaxed);
                self.max.store(o.max_concurrent_requests.max(1), Ordering::Relaxed);
            }
        }
        // Waiters re-check against the new limit.
        self.freed.notify_waiters();
    }

    /// Admits a request now, after waiting in the queue, or sheds it.
    pub async fn acquire(self: &std::sync::Arc<Self>) -> Result<OwnedPermit, Shed> {
        if self.max.load(Ordering::Relaxed) == 0 {
            return Ok(OwnedPermit(None));
        }
        if self.try_take() {
            return Ok(OwnedPermit(Some(self.clone())));
        }
        let max_queued = self.max_queued.load(Ordering::Relaxed);
        if self.queued.fetch_add(1, Ordering::SeqCst) >= max_queued {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.shed_total.fetch_add(1, Ordering::Relaxed);
            return Err(Shed::QueueFull);
        }
        let deadline = Instant::now() + Duration::from_millis(self.queue_timeout_ms.load(Ordering::Relaxed));
        let result = loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            freed.as_mut().enable();
            if self.max.load(Ordering::Relaxed) == 0 || self.try_take() {
                break Ok(());
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break Err(Shed::QueueTimeout);
            }
        };
        self.queued.fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(()) if self.max.load(Ordering::Relaxed) == 0 => Ok(OwnedPermit(None)),
            Ok(()) => Ok(OwnedPermit(Some(self.clone()))),
            Err(shed) => {
                self.shed_total.fetch_add(1, Ordering::Relaxed);
                Err(shed)
            }
        }
    }

    fn try_take(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.active.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1)).is_ok()
    }

    fn release(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        // Notify takes a lock; skip it when nobody waits. A waiter counts itself in `queued`
        // before it tries for a slot, so either it sees this release or this sees it.
        if self.queued.load(Ordering::SeqCst) > 0 {
            self.freed.notify_one();
        }
    }

    /// `(in progress, queued, limit)`; limit 0 means none.
    pub fn status(&self) -> (u32, u32, u32) {
        (
            self.active.load(Ordering::Relaxed),
            self.queued.load(Ordering::Relaxed),
            self.max.load(Ordering::Relaxed),
        )
    }
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if let Some(l) = self.0.take() {
            l.release();
        }
    }
}

// === rate limits ===

/// A route's token buckets: one, or one per key. Kept across reloads by route name.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// The route's bucket when the limit has no key: no map lookup on the request path.
    single: Mutex<Option<Bucket>>,
    buckets: Mutex<HashMap<u64, Bucket>>,
    pub limited_total: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The answer to "may this request pass?", with what the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until a token is available (`Retry-After`) or the bucket is full (`RateLimit-Reset`).
    pub reset_secs: u64,
}

impl RateLimiter {
    /// Takes a token at `now` from the bucket of `key` (`None`: the limit has no key).
    pub fn check(&self, limit: &RateLimit, key: Option<u64>, now: Instant) -> RateDecision {
        let rate = f64::from(limit.requests_per_second.max(1));
        let burst = f64::from(limit.burst_or_default().max(1));
        let Some(key) = key else {
            let mut single = lock(&self.single);
            let b = single.get_or_insert(Bucket { tokens: burst, at: now });
            return self.take(b, limit, rate, burst, now);
        };
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(&key) {
            // Full buckets hold nothing worth keeping: a new bucket starts full anyway.
            buckets
                .retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_KEYS
                && let Some(k) = buckets.keys().next().copied()
            {
                buckets.remove(&k);
            }
        }
        let b = buckets.entry(key).or_insert(Bucket { tokens: burst, at: now });
        self.take(b, limit, rate, burst, now)
    }

    fn take(&self, b: &mut Bucket, limit: &RateLimit, rate: f64, burst: f64, now: Instant) -> RateDecision {
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        let allowed = b.tokens >= 1.0;
        if allowed {
            b.tokens -= 1.0;
        } else {
            self.limited_total.fetch_add(1, Ordering::Relaxed);
        }
        let reset = if allowed { (burst - b.tokens) / rate } else { (1.0 - b.tokens) / rate };
        RateDecision {
            allowed,
            limit: limit.burst_or_default(),
            remaining: b.tokens.floor() as u32,
            reset_secs: reset.ceil().max(if allowed { 0.0 } else { 1.0 }) as u64,
        }
    }

    /// Forgets all buckets (the limit's config changed).
    pub fn clear(&self) {
        *lock(&self.single) = None;
        lock(&self.buckets).clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn queue_is_bounded_and_times_out() {
        let l = Arc::new(Limiter::default());
        l.configure(Some(&Overload {
            max_concurrent_requests: 1,
            max_queued: Some(1),
            queue_timeout: Some(sluice_bundle::Duration::from_millis(100)),
        }));
        let first = l.acquire().await.unwrap();
        // One waits in the queue; a third is shed at once.
        let l2 = l.clone();
        let waiting = tokio::spawn(async move { l2.acquire().await.map(drop) });
        tokio::task::yield_now().await;
        assert_eq!(l.acquire().await.unwrap_err(), Shed::QueueFull);
        // Freeing the slot admits the waiter.
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        // With the slot held, a queued request gives up at the timeout.
        let _held = l.acquire().await.unwrap();
        let started = Instant::now();
        assert_eq!(l.acquire().await.unwrap_err(), Shed::QueueTimeout);
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!(l.shed_total.load(Ordering::Relaxed), 2);
        assert_eq!(l.status(), (1, 0, 1));
    }

    #[tokio::test]
    async fn no_limit_admits_everything() {
        let l = Arc::new(Limiter::default());
        let permits: Vec<_> = futures_lite(&l, 1000).await;
        assert_eq!(permits.len(), 1000);
        assert_eq!(l.status(), (0, 0, 0));
    }

    async fn futures_lite(l: &Arc<Limiter>, n: usize) -> Vec<OwnedPermit> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(l.acquire().await.unwrap());
        }
        v
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_bursts_then_the_rate() {
        let r = RateLimiter::default();
        let limit = RateLimit { requests_per_second: 10, burst: Some(5), key: None };
        let now = Instant::now();
        let decisions: Vec<_> = (0..6).map(|_| r.check(&limit, None, now)).collect();
        assert!(decisions[..5].iter().all(|d| d.allowed));
        assert_eq!(decisions[4].remaining, 0);
        let refused = decisions[5];
        assert!(!refused.allowed);
        assert_eq!((refused.limit, refused.remaining, refused.reset_secs), (5, 0, 1));
        // 100 ms later one token has come back.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(r.check(&limit, None, Instant::now()).allowed);
        assert!(!r.check(&limit, None, Instant::now()).allowed);
        // Keys have buckets of their own.
        assert!(r.check(&limit, Some(7), Instant::now()).allowed);
        assert_eq!(r.limited_total.load(Ordering::Relaxed), 2);
    }
}
