//! A route's recent latency, for hedging at its live p95: a log-linear histogram (four buckets
//! per power of two, so a percentile is within 25 %) over the last two 5-second generations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const SUB: u32 = 4;
/// Powers of two covered: up to 2^30 µs (about 18 minutes); slower is counted in the top bucket.
const POWERS: u32 = 30;
const LEN: usize = (POWERS * SUB) as usize;
const GENERATION: Duration = Duration::from_secs(5);
/// How often the cached percentile is recomputed.
const REFRESH_MS: u64 = 1000;

#[derive(Debug)]
pub struct Latency {
    origin: Instant,
    gens: [Generation; 2],
    /// `(p95 in µs + 1, or 0 for "not enough samples")` and when it was computed (ms since origin + 1).
    cached: AtomicU64,
    cached_at: AtomicU64,
}

#[derive(Debug)]
struct Generation {
    id: AtomicU64,
    counts: Box<[AtomicU64]>,
}

// === impl Latency ===

impl Default for Latency {
    fn default() -> Self {
        let generation =
            || Generation { id: AtomicU64::new(0), counts: (0..LEN).map(|_| AtomicU64::new(0)).collect() };
        Self {
            origin: Instant::now(),
            gens: [generation(), generation()],
            cached: AtomicU64::new(0),
            cached_at: AtomicU64::new(0),
        }
    }
}

impl Latency {
    fn generation_id(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_millis() / GENERATION.as_millis()) as u64 + 1
    }

    pub fn record(&self, now: Instant, took: Duration) {
        let id = self.generation_id(now);
        let g = &self.gens[(id % 2) as usize];
        let seen = g.id.load(Ordering::Acquire);
        if seen != id && g.id.compare_exchange(seen, id, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            for c in g.counts.iter() {
                c.store(0, Ordering::Relaxed);
            }
        }
        g.counts[index(took.as_micros() as u64)].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile (0 to 1) of the latencies seen over the last 5 to 10 seconds, if at least
    /// `min_samples` were seen.
    pub fn quantile(&self, now: Instant, q: f64, min_samples: u64) -> Option<Duration> {
        let id = self.generation_id(now);
        let mut counts = [0u64; LEN];
        for g in &self.gens {
            let gid = g.id.load(Ordering::Acquire);
            if gid != 0 && (gid == id || gid + 1 == id) {
                for (sum, c) in counts.iter_mut().zip(g.counts.iter()) {
                    *sum += c.load(Ordering::Relaxed);
                }
            }
        }
        let total: u64 = counts.iter().sum();
        if total == 0 || total < min_samples {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(upper_bound(i)));
            }
        }
        None
    }

    /// The p95 over recent requests, recomputed at most once a second.
    pub fn p95(&self, now: Instant, min_samples: u64) -> Option<Duration> {
        let at = now.saturating_duration_since(self.origin).as_millis() as u64 + 1;
        let cached_at = self.cached_at.load(Ordering::Relaxed);
        if cached_at == 0 || at.saturating_sub(cached_at) >= REFRESH_MS {
            let p = self.quantile(now, 0.95, min_samples).map_or(0, |d| d.as_micros() as u64 + 1);
            self.cached.store(p, Ordering::Relaxed);
            self.cached_at.store(at, Ordering::Relaxed);
            return (p > 0).then(|| Duration::from_micros(p - 1));
        }
        let p = self.cached.load(Ordering::Relaxed);
        (p > 0).then(|| Duration::from_micros(p - 1))
    }
}

/// Bucket of a latency in µs: exact below 4, then four buckets per power of two.
fn index(us: u64) -> usize {
    if us < u64::from(SUB) {
        return us as usize;
    }
    let e = 63 - us.leading_zeros(); // us in [2^e, 2^(e+1)), e >= 2
    if e > POWERS {
        return LEN - 1;
    }
    (SUB * (e - 1) + ((us >> (e - 2)) & 3) as u32) as usize
}

/// The largest latency (µs) that falls in bucket `i`.
fn upper_bound(i: usize) -> u64 {
    let i = i as u32;
    if i < SUB {
        return u64::from(i);
    }
    let e = i / SUB + 1;
    let m = u64::from(i % SUB);
    ((4 + m) << (e - 2)) + (1u64 << (e - 2)) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_the_value_within_a_quarter() {
        for us in [0u64, 1, 3, 4, 7, 8, 9, 100, 1000, 12_345, 1_000_000, 60_000_000] {
            let hi = upper_bound(index(us));
            assert!(hi >= us, "{us} -> {hi}");
            assert!(hi as f64 <= (us as f64) * 1.25 + 1.0, "{us} -> {hi}");
        }
        assert_eq!(index(u64::MAX), LEN - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn p95_follows_recent_traffic() {
        let l = Latency::default();
        let now = Instant::now();
        assert_eq!(l.quantile(now, 0.95, 1), None);
        for i in 0..100u64 {
            l.record(now, Duration::from_millis(if i < 90 { 10 } else { 200 }));
        }
        let p95 = l.quantile(now, 0.95, 20).unwrap();
        assert!(p95 >= Duration::from_millis(200) && p95 <= Duration::from_millis(250), "{p95:?}");
        assert!(l.quantile(now, 0.5, 20).unwrap() <= Duration::from_micros(12_500));
        assert_eq!(l.quantile(now, 0.95, 101), None, "too few samples");
        // Ten seconds on, both generations have turned over.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(l.quantile(Instant::now(), 0.95, 1), None);
    }
}
