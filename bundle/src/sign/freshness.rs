//! Freshness statements, after TUF's timestamp role: a short-lived signed claim that a version of
//! a fleet (named by its payload's SHA-256) is still what the control plane means a data plane
//! to serve. Bundles stay immutable and keep their signatures; only these are renewed.
//!
//! A control plane signs one for every version some data plane is meant to serve, renews it
//! well before it lapses, and pushes it on the stream. A data plane refuses a pushed bundle
//! without a current statement (a frozen or replayed stream), keeps the newest statement it has
//! beside its cached bundle, and says when it has none that is current.

use serde::{Deserialize, Serialize};

use super::{Signature, SigningKey, TrustedKeys, VerifyError};

/// Signed freshness statements start with this: they can mean nothing else.
pub const CONTEXT: &[u8] = b"sluice/freshness/v1\n";
/// How far ahead of a data plane's clock a statement's `issued` may be (the control plane's clock
/// runs ahead). `expires` gets no such allowance: a data plane whose clock runs ahead sees
/// statements lapse early, which renewals every quarter of the lifetime absorb.
pub const CLOCK_SKEW_SECS: i64 = 300;

/// What a statement says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    pub fleet: String,
    pub version: u64,
    /// SHA-256 (hex) of the version's payload bytes.
    pub sha256: String,
    /// Unix seconds it was signed; of two valid statements, the newer `issued` wins.
    pub issued: i64,
    /// Unix seconds after which it no longer vouches for the version.
    pub expires: i64,
}

/// The version a statement must be about.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub fleet: &'a str,
    pub version: u64,
    pub sha256: &'a str,
}

/// Why a statement was not taken. [`FreshnessError::reason`] is its metric label.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FreshnessError {
    #[error("no freshness statement came with a bundle that requires one")]
    Missing,
    #[error("statement signature: {0}")]
    Signature(Box<VerifyError>),
    #[error("statement is not a freshness statement: {0}")]
    Malformed(String),
    #[error("statement is about {got}, not {expected}")]
    OtherVersion { expected: String, got: String },
    #[error("statement lapsed at {expires} (now {now})")]
    Lapsed { expires: i64, now: i64 },
    #[error("statement issued at {issued}, in the future (now {now}, {CLOCK_SKEW_SECS}s clock skew allowed)")]
    FromTheFuture { issued: i64, now: i64 },
}

// === impl Freshness ===

impl Freshness {
    /// The bytes that are signed and sent.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FreshnessError> {
        serde_json::from_slice(bytes).map_err(|e| FreshnessError::Malformed(e.to_string()))
    }

    /// Signs the statement with every key given; its bytes and the signatures.
    pub fn sign(&self, keys: &[&SigningKey]) -> (Vec<u8>, Vec<Signature>) {
        let bytes = self.encode();
        let signatures = keys.iter().map(|k| k.sign_in(CONTEXT, &bytes)).collect();
        (bytes, signatures)
    }

    /// Whether it still vouches at `now`.
    pub fn current_at(&self, now: i64) -> bool {
        now < self.expires
    }
}

// === impl FreshnessError ===

impl FreshnessError {
    /// Label for counters: `missing`, `signature`, `malformed`, `other_version`, `lapsed`, `future`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Signature(_) => "signature",
            Self::Malformed(_) => "malformed",
            Self::OtherVersion { .. } => "other_version",
            Self::Lapsed { .. } => "lapsed",
            Self::FromTheFuture { .. } => "future",
        }
    }
}

// === impl TrustedKeys ===

impl TrustedKeys {
    /// Checks a statement: a trusted signature, the version it names, and that it vouches now.
    pub fn verify_freshness(
        &self,
        bytes: &[u8],
        signatures: &[Signature],
        claim: Claim<'_>,
        now: i64,
    ) -> Result<Freshness, FreshnessError> {
        self.check(CONTEXT, bytes, signatures).map_err(|e| FreshnessError::Signature(Box::new(e)))?;
        let f = Freshness::decode(bytes)?;
        if f.fleet != claim.fleet || f.version != claim.version || f.sha256 != claim.sha256 {
            return Err(FreshnessError::OtherVersion {
                expected: format!("{} version {} ({})", claim.fleet, claim.version, short(claim.sha256)),
                got: format!("{} version {} ({})", f.fleet, f.version, short(&f.sha256)),
            });
        }
        if f.issued > now.saturating_add(CLOCK_SKEW_SECS) {
            return Err(FreshnessError::FromTheFuture { issued: f.issued, now });
        }
        if !f.current_at(now) {
            return Err(FreshnessError::Lapsed { expires: f.expires, now });
        }
        Ok(f)
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

#[cfg(test)]
mod tests;
