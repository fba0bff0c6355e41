//! Values built from files, rebuilt when the files' content changes.
//!
//! Polling the content (a SHA-256 over every file) rather than watching inodes: Kubernetes
//! updates a mounted Secret by swapping a `..data` symlink, which inode watches miss or see
//! half-done; reading the paths follows the symlinks, and a hash sees only real changes. A
//! rebuild that fails (a half-written file, a key that does not match its certificate) keeps the
//! last good value, is logged with the file it is about, and is counted. SIGHUP calls
//! [`Reload::check`] at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};

use crate::{CertInfo, TlsError, files};

/// How often watched files are read again by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// Something built from files.
pub trait Build: Send + Sync + 'static {
    type Output: Send + Sync + 'static;

    /// The files it reads.
    fn paths(&self) -> Vec<PathBuf>;

    /// The certificate file it serves, if any (named in metrics).
    fn cert_file(&self) -> Option<PathBuf> {
        None
    }

    /// Builds it from the files' contents; the certificate it serves, if it has one, for expiry.
    fn build(&self, contents: &Contents) -> Result<(Self::Output, Option<CertInfo>), TlsError>;
}

/// The contents of a set of files, read together.
#[derive(Debug, Default)]
pub struct Contents {
    files: Vec<(PathBuf, Vec<u8>)>,
}

/// What a process reports about one watched set of files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedStatus {
    /// What the files are for (`control_plane_server`, `data_plane_client`, …).
    pub role: String,
    /// The certificate file, if it serves one.
    pub cert_file: Option<PathBuf>,
    /// The served certificate's `notAfter` in Unix seconds, if the files hold one.
    pub expiry: Option<i64>,
    /// Successful rebuilds after the first load.
    pub reloads: u64,
    /// Rebuilds refused (the last good value kept).
    pub failures: u64,
}

/// Reloading and reporting, whatever is built: what SIGHUP and `/metrics` need.
pub trait Reload: Send + Sync {
    /// Reads the files; rebuilds if their content changed. True if a new value is in use.
    fn check(&self) -> bool;
    fn status(&self) -> WatchedStatus;
}

/// A value built from files, kept current by [`Watched::spawn`] or [`Reload::check`].
pub struct Watched<B: Build> {
    role: String,
    source: B,
    current: ArcSwap<B::Output>,
    /// Hash of the contents `current` was built from, or of the last refused contents (so a
    /// broken file is reported once, not at every poll).
    seen: Mutex<[u8; 32]>,
    expiry: AtomicI64,
    reloads: AtomicU64,
    failures: AtomicU64,
}

// === impl Contents ===

impl Contents {
    /// Reads every file.
    pub fn read(paths: &[PathBuf]) -> Result<Self, TlsError> {
        let files =
            paths.iter().map(|p| Ok((p.clone(), files::read(p)?))).collect::<Result<_, TlsError>>()?;
        Ok(Self { files })
    }

    /// Contents from memory (tests, and material that never was a file).
    pub fn from_memory(files: Vec<(PathBuf, Vec<u8>)>) -> Self {
        Self { files }
    }

    /// A file's bytes; empty for a path that was not read.
    pub fn get(&self, path: &Path) -> &[u8] {
        self.files.iter().find(|(p, _)| p == path).map_or(&[], |(_, b)| b)
    }

    fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for (path, bytes) in &self.files {
            h.update(path.as_os_str().as_encoded_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        h.finalize().into()
    }
}

// === impl Watched ===

impl<B: Build> Watched<B> {
    /// Reads and builds once; the process should not start on files that do not work.
    pub fn load(role: impl Into<String>, source: B) -> Result<Arc<Self>, TlsError> {
        let contents = Contents::read(&source.paths())?;
        let (value, info) = source.build(&contents)?;
        Ok(Arc::new(Self {
            role: role.into(),
            current: ArcSwap::from_pointee(value),
            seen: Mutex::new(contents.hash()),
            expiry: AtomicI64::new(info.map_or(0, |i| i.not_after)),
            source,
            reloads: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }))
    }

    /// The value in use now.
    pub fn current(&self) -> Arc<B::Output> {
        self.current.load_full()
    }

    /// What it is built from.
    pub fn source(&self) -> &B {
        &self.source
    }

    /// Checks the files every `every` until `self` is dropped.
    pub fn spawn(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                this.check();
            }
        })
    }
}

impl<B: Build> std::fmt::Debug for Watched<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("status", &self.status())
            .field("paths", &self.source.paths())
            .finish()
    }
}

impl<B: Build> Reload for Watched<B> {
    fn check(&self) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let contents = match Contents::read(&self.source.paths()) {
            Ok(c) => c,
            Err(e) => {
                // Reported once per distinct problem; the next poll tries again.
                let hash: [u8; 32] = Sha256::digest(e.to_string()).into();
                if hash != *seen {
                    *seen = hash;
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(role = %self.role, error = %e, "cannot reload watched files; keeping the last good ones");
                }
                return false;
            }
        };
        let hash = contents.hash();
        if hash == *seen {
            return false;
        }
        *seen = hash;
        match self.source.build(&contents) {
            Ok((value, info)) => {
                self.current.store(Arc::new(value));
                self.expiry.store(info.map_or(0, |i| i.not_after), Ordering::Relaxed);
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(role = %self.role, "reloaded watched files");
                true
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(role = %self.role, error = %e, "refused new watched files; keeping the last good ones");
                false
            }
        }
    }

    fn status(&self) -> WatchedStatus {
        let expiry = self.expiry.load(Ordering::Relaxed);
        WatchedStatus {
            role: self.role.clone(),
            cert_file: self.source.cert_file(),
            expiry: (expiry != 0).then_some(expiry),
            reloads: self.reloads.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests;
