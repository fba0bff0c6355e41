//! State that outlives a request: what the request path reads ([`Serving`]) and what config
//! changes, the admin listener and reports own ([`Shared`]). Data only; `server` changes it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use opentelemetry_sdk::trace::SdkTracer;

use crate::access_log::AccessLog;
use crate::freshness::FreshnessState;
use crate::listener::ListenerSet;
use crate::routes::RouteRegistry;
use crate::snapshot::{Snapshot, VersionStats};
use crate::upstream::PoolRegistry;
use crate::worker::Workers;

/// What the request path reads: the active snapshot, and where requests are traced and logged.
pub(crate) struct Serving {
    pub snapshot: ArcSwapOption<Snapshot>,
    /// Where request spans go; `None`: no tracing.
    pub tracer: Option<SdkTracer>,
    pub access_log: AccessLog,
}

/// What control work owns (config changes, the admin listener, reports), and the serving state
/// it changes.
pub(crate) struct Shared {
    pub serving: Arc<Serving>,
    pub pools: PoolRegistry,
    pub routes: RouteRegistry,
    pub listeners: ListenerSet,
    pub draining: AtomicBool,
    pub drain_timeout: Duration,
    pub admin_token: Option<String>,
    pub status: Mutex<Status>,
    pub workers: Workers,
    /// Config changes accepted and refused since start.
    pub applied: AtomicU64,
    pub refused: AtomicU64,
    pub versions: AtomicU64,
    /// The traffic of the active version and the few before it, newest last, for reports.
    pub recent: Mutex<VecDeque<(u64, SystemTime, Arc<VersionStats>)>>,
    /// Serialises config changes.
    pub applying: Mutex<()>,
    /// Watched files in use (the control-plane client's certificate, trusted keys), for SIGHUP
    /// and `/metrics`.
    pub tls: Mutex<Vec<Arc<dyn sluice_tls::Reload>>>,
    /// The active bundle's freshness (managed mode).
    pub freshness: FreshnessState,
}

/// The outcome of the latest attempt to change config, for `/config`.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub last_attempt: Option<SystemTime>,
    /// Why the latest attempt was refused; empty when it was accepted.
    pub last_errors: Vec<String>,
}
