//! What a managed data plane knows about its active bundle's freshness: when the statement
//! covering it lapses (or, for a bundle from a control plane of an earlier build, its own
//! `expires_at`), and the statements it refused. Read by `/metrics`, `/readyz` and reports.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use sluice_bundle::sign::freshness::FreshnessError;

/// Reasons a statement is refused, as [`FreshnessError::reason`] names them.
pub const REASONS: [&str; 6] = ["missing", "signature", "malformed", "other_version", "lapsed", "future"];

#[derive(Debug, Default)]
pub struct FreshnessState {
    /// Unix seconds; 0 while nothing is known (standalone mode, or no bundle yet).
    expires: AtomicI64,
    rejected: [AtomicU64; REASONS.len()],
}

impl FreshnessState {
    pub fn set_expires(&self, at: i64) {
        self.expires.store(at, Ordering::Relaxed);
    }

    /// When the active bundle stops being vouched for, if that is known.
    pub fn expires(&self) -> Option<i64> {
        Some(self.expires.load(Ordering::Relaxed)).filter(|at| *at != 0)
    }

    /// Serving a bundle no current statement vouches for.
    pub fn stale(&self, now: i64) -> bool {
        self.expires().is_some_and(|at| at <= now)
    }

    /// Counts a refused statement.
    pub fn refused(&self, e: &FreshnessError) {
        if let Some(i) = REASONS.iter().position(|r| *r == e.reason()) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refused statements by reason.
    pub fn rejected(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        REASONS.iter().zip(&self.rejected).map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
    }
}
