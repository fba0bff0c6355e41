//! Sluice data plane: a reverse proxy that serves one immutable snapshot of its config at a time
//! and swaps snapshots atomically.
//!
//! Entry points: [`Proxy`] (a running proxy: apply config, listeners, admin, drain) and
//! [`FileSource`] (standalone mode: a config file, reloaded on change or SIGHUP).

#![forbid(unsafe_code)]

mod access_log;
mod admin;
pub mod auth;
pub mod body;
mod cache;
pub mod error;
pub mod freshness;
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
#[cfg(test)]
mod layering;
pub mod listener;
mod proxy;
mod report;
pub mod resilience;
mod routes;
mod server;
mod shadow;
pub mod snapshot;
mod source;
mod split;
mod state;
pub mod subscribe;
mod sync;
pub mod transform;
pub mod upstream;
pub mod worker;

pub use server::{ApplyError, Options, Proxy};
pub use sluice_compile::router;
pub use sluice_observe::{metrics, telemetry};
pub use snapshot::{Snapshot, SnapshotMeta, sha256_hex};
pub use source::{FileSource, LoadError, Loaded};
pub use state::Status;
