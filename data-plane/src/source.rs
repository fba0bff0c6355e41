//! Standalone config: a YAML or JSON file, reloaded on SIGHUP or when it changes.
//!
//! The file is checked once a second (size, mtime, inode; then content hash). Polling rather
//! than inotify also follows Kubernetes ConfigMap updates, which swap a symlink.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sluice_bundle::{Config, ConfigErrors, Format};
use tokio::signal::unix::{SignalKind, signal};

use crate::server::Proxy;
use crate::snapshot::sha256_hex;

/// A config file on disk.
#[derive(Debug, Clone)]
pub struct FileSource {
    path: PathBuf,
}

/// A config read and validated from the file.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub sha256: String,
}

/// Why the file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {errors}")]
    Invalid { path: String, errors: ConfigErrors },
}

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

// === impl LoadError ===

impl LoadError {
    /// One line per problem, for logs and `/config`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Self::Read { .. } => vec![self.to_string()],
            Self::Invalid { errors, .. } => errors.iter().map(ToString::to_string).collect(),
        }
    }
}

// === impl FileSource ===

impl FileSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `file:/abs/path`, as `/config` reports the source.
    pub fn name(&self) -> String {
        let abs = std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone());
        format!("file:{}", abs.display())
    }

    /// Reads and validates the file.
    pub fn load(&self) -> Result<Loaded, LoadError> {
        let path = self.path.display().to_string();
        let bytes =
            std::fs::read(&self.path).map_err(|source| LoadError::Read { path: path.clone(), source })?;
        let config = sluice_bundle::parse(&bytes, Format::from_path(&self.path))
            .map_err(|errors| LoadError::Invalid { path, errors })?;
        Ok(Loaded { config, sha256: sha256_hex(&bytes) })
    }

    /// Loads the file and applies it, logging every problem if it is refused.
    pub fn reload(&self, proxy: &Proxy) -> bool {
        let loaded = match self.load() {
            Ok(l) => l,
            Err(e) => {
                let lines = e.lines();
                let active = proxy.snapshot().map(|s| s.meta.version);
                tracing::error!(path = %self.path.display(), errors = lines.len(), active_version = ?active, "config rejected; the active version keeps serving");
                for line in &lines {
                    tracing::error!("  {line}");
                }
                proxy.record_rejection(lines);
                return false;
            }
        };
        if proxy.snapshot().is_some_and(|s| s.meta.sha256 == loaded.sha256) {
            tracing::debug!("config unchanged");
            return true;
        }
        match proxy.apply(loaded.config, &self.name(), loaded.sha256) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "config rejected; the active version keeps serving");
                false
            }
        }
    }

    /// Reloads on SIGHUP and whenever the file changes, until the process ends.
    pub async fn watch(self, proxy: Proxy, interval: Duration) -> std::io::Result<()> {
        let mut hup = signal(SignalKind::hangup())?;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut seen = self.fingerprint();
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!(path = %self.path.display(), "SIGHUP: reloading config");
                    seen = self.fingerprint();
                    self.reload(&proxy);
                }
                _ = tick.tick() => {
                    let now = self.fingerprint();
                    if now != seen {
                        seen = now;
                        tracing::info!(path = %self.path.display(), "config file changed: reloading");
                        self.reload(&proxy);
                    }
                }
            }
        }
    }

    fn fingerprint(&self) -> Option<Fingerprint> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&self.path).ok()?;
        Some(Fingerprint { len: m.len(), modified: m.modified().ok(), inode: m.ino() })
    }
}
