//! What a managed data plane knows about its active bundle's freshness: when the statement
//! covering it lapses (or, for a bundle from a control plane of an earlier build, its own
//! `expires_at`), and the statements it refused; and the root-signed trust set in force. Read by
//! `/metrics`, `/readyz` and reports.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use sluice_bundle::sign::freshness::FreshnessError;

/// Reasons a statement is refused, as [`FreshnessError::reason`] names them.
pub const REASONS: [&str; 6] = ["missing", "signature", "malformed", "other_version", "lapsed", "future"];

#[derive(Debug, Default)]
pub struct FreshnessState {
    /// Unix seconds; 0 while nothing is known (standalone mode, or no bundle yet).
    expires: AtomicI64,
    rejected: [AtomicU64; REASONS.len()],
    /// The root-signed trust set in force; 0: the trusted-keys file.
    trust_version: AtomicU64,
    trust_rejected: AtomicU64,
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

    pub fn set_trust_version(&self, v: u64) {
        self.trust_version.store(v, Ordering::Relaxed);
    }

    pub fn trust_version(&self) -> u64 {
        self.trust_version.load(Ordering::Relaxed)
    }

    pub fn trust_refused(&self) {
        self.trust_rejected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn trust_rejected(&self) -> u64 {
        self.trust_rejected.load(Ordering::Relaxed)
    }

    /// Refused statements by reason.
    pub fn rejected(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        REASONS.iter().zip(&self.rejected).map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
    }
}
