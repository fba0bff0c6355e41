//! Rolling counts over a span of time, in a ring of time buckets of atomics.
//!
//! Counts are approximate by design: a bucket that has aged out is reset by whichever thread first
//! notices, and an increment racing with that reset may be lost. Budgets and breakers need the
//! rate, not an exact ledger, and in exchange recording is two atomic operations with no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Buckets per window: the window slides in steps of a tenth of its span.
const BUCKETS: u64 = 10;

/// Two counters (say, requests and failures) summed over the last `span`.
#[derive(Debug)]
pub struct Window {
    origin: Instant,
    bucket_ms: u64,
    buckets: Box<[Bucket]>,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Which bucket-length slot since `origin` the counts belong to.
    slot: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

// === impl Window ===

impl Window {
    pub fn new(span: Duration) -> Self {
        let bucket_ms = (span.as_millis() as u64 / BUCKETS).max(1);
        Self { origin: Instant::now(), bucket_ms, buckets: (0..BUCKETS).map(|_| Bucket::default()).collect() }
    }

    /// The span counts are kept over.
    pub fn span(&self) -> Duration {
        Duration::from_millis(self.bucket_ms * BUCKETS)
    }

    fn slot(&self, now: Instant) -> u64 {
        // Slot 0 is never current, so a fresh bucket (slot 0) never counts as live.
        now.saturating_duration_since(self.origin).as_millis() as u64 / self.bucket_ms + 1
    }

    /// Adds `a` and `b` to the counts at `now`.
    pub fn add(&self, now: Instant, a: u64, b: u64) {
        let slot = self.slot(now);
        let bucket = &self.buckets[(slot % BUCKETS) as usize];
        let seen = bucket.slot.load(Ordering::Acquire);
        if seen != slot
            && bucket.slot.compare_exchange(seen, slot, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            bucket.a.store(0, Ordering::Relaxed);
            bucket.b.store(0, Ordering::Relaxed);
        }
        if a > 0 {
            bucket.a.fetch_add(a, Ordering::Relaxed);
        }
        if b > 0 {
            bucket.b.fetch_add(b, Ordering::Relaxed);
        }
    }

    /// `(a, b)` summed over the window ending at `now`.
    pub fn sum(&self, now: Instant) -> (u64, u64) {
        let current = self.slot(now);
        let mut sums = (0, 0);
        for bucket in self.buckets.iter() {
            let slot = bucket.slot.load(Ordering::Acquire);
            if slot != 0 && slot <= current && current - slot < BUCKETS {
                sums.0 += bucket.a.load(Ordering::Relaxed);
                sums.1 += bucket.b.load(Ordering::Relaxed);
            }
        }
        sums
    }

    /// Forgets everything counted so far.
    pub fn clear(&self) {
        for bucket in self.buckets.iter() {
            bucket.slot.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_slide_out_after_the_span() {
        let w = Window::new(Duration::from_secs(10));
        w.add(Instant::now(), 5, 1);
        tokio::time::advance(Duration::from_secs(4)).await;
        w.add(Instant::now(), 3, 2);
        assert_eq!(w.sum(Instant::now()), (8, 3));
        tokio::time::advance(Duration::from_millis(6500)).await;
        assert_eq!(w.sum(Instant::now()), (3, 2), "the first batch is older than 10s");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(w.sum(Instant::now()), (0, 0));
        // A bucket reused a lap later starts from zero.
        w.add(Instant::now(), 1, 0);
        assert_eq!(w.sum(Instant::now()), (1, 0));
        w.clear();
        assert_eq!(w.sum(Instant::now()), (0, 0));
    }
}
