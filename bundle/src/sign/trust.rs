//! Trusted-key sets that travel on the stream, after TUF's root role: a set of bundle-signing
//! keys, numbered, signed by a threshold of **root keys**. Root keys are kept offline by
//! operators and never held by a control plane, so a compromised control plane (or signing key)
//! cannot make data planes trust a key of its choosing; it can only pass on sets the root keys
//! signed.
//!
//! A data plane started with `--root-keys` takes a set whose version is above the one it has
//! and that at least `threshold` distinct root keys signed; from then on that set, not its
//! `--trusted-keys` file, says which keys sign bundles and freshness statements.

use serde::{Deserialize, Serialize};

use super::{KeyError, Signature, SigningKey, TrustedKeys, TrustedKeysFile};

/// Signed trust sets start with this: they can mean nothing else.
pub const CONTEXT: &[u8] = b"sluice/trust/v1\n";

/// The root keys a data plane accepts trust sets from, and how many must sign one.
#[derive(Debug, Clone)]
pub struct RootKeys {
    threshold: usize,
    keys: TrustedKeys,
}

/// A numbered set of bundle-signing keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustSet {
    /// Only ever goes up; a data plane takes a set only above the one it has.
    pub version: u64,
    /// Unix seconds it was signed.
    pub issued: i64,
    /// The keys, as a trusted-keys file lists them ([`TrustSet::trusted`]).
    keys: TrustedKeysFile,
}

/// Why a trust set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("signed by {got} of the root keys, {need} needed")]
    Threshold { got: usize, need: usize },
    #[error("not a trust set: {0}")]
    Malformed(String),
    #[error("trust set version {version} is not above the one in force ({current})")]
    NotNewer { version: u64, current: u64 },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RootKeysFile {
    threshold: usize,
    keys: TrustedKeysFile,
}

// === impl RootKeys ===

impl RootKeys {
    pub fn new(threshold: usize, keys: TrustedKeys) -> Result<Self, KeyError> {
        let n = keys.key_ids().len();
        if threshold == 0 || threshold > n {
            return Err(KeyError(format!("threshold {threshold} must be between 1 and the {n} root keys")));
        }
        Ok(Self { threshold, keys })
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.key_ids()
    }

    /// Reads a root keys file; errors name it.
    pub fn load(path: &std::path::Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_file(&text).map_err(|e| KeyError(format!("{}: {e}", path.display())))
    }

    /// `{"threshold": 2, "keys": [{key_id, algorithm, public_key}, …]}`.
    pub fn from_file(text: &str) -> Result<Self, KeyError> {
        let file: RootKeysFile =
            serde_saphyr::from_str(text).map_err(|e| KeyError(format!("not a root keys file: {e}")))?;
        Self::new(file.threshold, TrustedKeys::from_entries(file.keys)?)
    }

    pub fn to_file(&self) -> String {
        let file = RootKeysFile { threshold: self.threshold, keys: self.keys.to_entries() };
        serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
    }

    /// Checks a trust set: signed by the threshold of distinct root keys, above `current`.
    pub fn verify(
        &self,
        bytes: &[u8],
        signatures: &[Signature],
        current: u64,
    ) -> Result<TrustSet, TrustError> {
        let got = self.keys.valid_signers(CONTEXT, bytes, signatures).len();
        if got < self.threshold {
            return Err(TrustError::Threshold { got, need: self.threshold });
        }
        let set: TrustSet =
            serde_json::from_slice(bytes).map_err(|e| TrustError::Malformed(e.to_string()))?;
        set.trusted().map_err(|e| TrustError::Malformed(e.to_string()))?;
        if set.version <= current {
            return Err(TrustError::NotNewer { version: set.version, current });
        }
        Ok(set)
    }
}

// === impl TrustSet ===

impl TrustSet {
    pub fn new(version: u64, issued: i64, keys: &TrustedKeys) -> Self {
        Self { version, issued, keys: keys.to_entries() }
    }

    /// The keys it trusts.
    pub fn trusted(&self) -> Result<TrustedKeys, KeyError> {
        TrustedKeys::from_entries(self.keys.clone())
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, TrustError> {
        serde_json::from_slice(bytes).map_err(|e| TrustError::Malformed(e.to_string()))
    }

    /// Its bytes, and one signature per root key given.
    pub fn sign(&self, roots: &[&SigningKey]) -> (Vec<u8>, Vec<Signature>) {
        let bytes = self.encode();
        let signatures = roots.iter().map(|k| k.sign_in(CONTEXT, &bytes)).collect();
        (bytes, signatures)
    }
}

#[cfg(test)]
mod tests;
