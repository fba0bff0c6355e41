//! The proxy as a whole: the active snapshot, lasting runtime state, listeners, and the one
//! procedure that changes config.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::body::ClientBody;
use arc_swap::ArcSwapOption;
use http::{Request, Response};
use opentelemetry_sdk::trace::SdkTracer;
use sluice_bundle::{Config, ConfigErrors};

use crate::access_log::AccessLog;
use crate::body::ProxyBody;
use crate::listener::strict::{Reject, StrictState};
use crate::listener::tls::TlsFacts;
use crate::listener::{BindError, ListenerSet, ListenerState, Serve};
use crate::proxy::{self, Connection};
use crate::routes::RouteRegistry;
use crate::snapshot::{CompileError, Snapshot, SnapshotMeta};
use crate::state::{Serving, Shared, Status};
use crate::sync::lock;
use crate::upstream::PoolRegistry;
use crate::worker::Workers;

/// Process-wide settings that do not come from the config document.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads serving traffic, each with its own event loop.
    pub workers: usize,
    /// How long in-flight requests get to finish on shutdown or when their listener goes away.
    pub drain_timeout: Duration,
    /// Bearer token the admin listener requires (except on `/livez` and `/readyz`).
    pub admin_token: Option<String>,
    /// Where request spans go; `None`: no tracing.
    pub tracer: Option<SdkTracer>,
    /// What the routes' response caches may hold together, in bytes (each route takes its
    /// `cache.memory_percent` of it).
    pub cache_memory: u64,
}

/// Default of `--cache-memory`.
pub const DEFAULT_CACHE_MEMORY: u64 = 64 << 20;

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: crate::worker::default_count(),
            drain_timeout: Duration::from_secs(60),
            admin_token: None,
            tracer: None,
            cache_memory: DEFAULT_CACHE_MEMORY,
        }
    }
}

/// A running proxy. Cheap to clone; all clones are the same proxy.
#[derive(Clone)]
pub struct Proxy {
    pub(crate) shared: Arc<Shared>,
}

/// Why a config was not applied. The previous snapshot keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("config does not compile: {0}")]
    Compile(#[from] ConfigErrors),
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Files the config names on this node (certificates, keys, CAs) cannot be used.
    #[error("files on this node: {0}")]
    Files(ConfigErrors),
}

impl From<CompileError> for ApplyError {
    fn from(e: CompileError) -> Self {
        match e {
            CompileError::Config(e) => Self::Compile(e),
            CompileError::Files(e) => Self::Files(e),
        }
    }
}

/// Versions whose traffic a report carries: the active one and three before it.
const RECENT_VERSIONS: usize = 4;

// === impl Proxy ===

impl Proxy {
    /// Starts the worker threads; no listener serves until a config is applied.
    pub fn new(options: Options) -> std::io::Result<Self> {
        let workers = Workers::start(options.workers)?;
        let serving = Serving {
            snapshot: ArcSwapOption::empty(),
            tracer: options.tracer,
            access_log: AccessLog::start()?,
        };
        let shared = Arc::new(Shared {
            serving: Arc::new(serving),
            pools: PoolRegistry::new(workers.len()),
            routes: RouteRegistry::with_cache_memory(options.cache_memory),
            listeners: ListenerSet::default(),
            draining: AtomicBool::new(false),
            drain_timeout: options.drain_timeout,
            admin_token: options.admin_token,
            status: Mutex::new(Status::default()),
            workers,
            applied: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            versions: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
            applying: Mutex::new(()),
            tls: Mutex::new(Vec::new()),
            freshness: Default::default(),
        });
        for (index, worker) in shared.workers.handles().iter().enumerate() {
            worker.spawn(worker_tick(Arc::downgrade(&shared), index));
        }
        if let Some(worker) = shared.workers.handles().first() {
            worker.spawn(maintain_pools(Arc::downgrade(&shared)));
        }
        Ok(Self { shared })
    }

    /// Compiles `config`, binds any new listener addresses, then swaps the snapshot in one step.
    /// On error nothing changes. Must run inside a tokio runtime. Returns the new version.
    pub fn apply(&self, config: Config, source: &str, sha256: String) -> Result<u64, ApplyError> {
        self.apply_version(config, source, sha256, None)
    }

    /// [`Proxy::apply`] with the version given by the config's origin (a signed bundle's
    /// version); `None` counts versions locally.
    pub fn apply_version(
        &self,
        config: Config,
        source: &str,
        sha256: String,
        version: Option<u64>,
    ) -> Result<u64, ApplyError> {
        let shared = &self.shared;
        let _one_at_a_time = lock(&shared.applying);
        let version = version.unwrap_or_else(|| shared.versions.load(Ordering::Relaxed) + 1);
        let meta = SnapshotMeta { version, source: source.to_owned(), sha256, loaded_at: SystemTime::now() };
        // Node files are read for listeners and pools alike, and all their problems told at once.
        let tls = shared.listeners.load_tls(&config.listeners);
        let compiled =
            Snapshot::compile(config, meta, &shared.pools, &shared.routes).map_err(ApplyError::from);
        let result = match (compiled, tls) {
            (Ok(snap), Ok(tls)) => shared
                .listeners
                .prepare(&snap.config.listeners, tls)
                .map(|plan| (plan, snap))
                .map_err(Into::into),
            (Err(ApplyError::Files(pools)), Err(mut listeners)) => {
                listeners.0.extend(pools.0);
                Err(ApplyError::Files(listeners))
            }
            (Err(e), _) => Err(e),
            (Ok(_), Err(listeners)) => Err(ApplyError::Files(listeners)),
        };
        let (plan, snapshot) = match result {
            Ok(ok) => ok,
            Err(e) => {
                self.record_rejection(vec![e.to_string()]);
                // Compiling may have registered state for names only the refused config had.
                if let Some(active) = shared.serving.snapshot.load_full() {
                    shared.pools.retain(&active.config);
                    shared.routes.retain(&active.config);
                }
                return Err(e);
            }
        };
        let snapshot = Arc::new(snapshot);
        shared.serving.snapshot.store(Some(snapshot.clone()));
        shared.listeners.commit(plan, &snapshot.config.listeners, shared);
        shared.pools.activate(&snapshot.pools);
        shared.pools.retain(&snapshot.config);
        shared
            .routes
            .activate(snapshot.routes.iter().map(|r| (&*r.runtime, r.rate_limit.as_ref().map(|r| &r.limit))));
        for (r, config) in snapshot.routes.iter().zip(&snapshot.config.routes) {
            r.runtime.split.activate(config.canary.as_ref().zip(r.split.as_ref().and_then(|s| s.brake())));
        }
        shared.routes.retain(&snapshot.config);
        shared.versions.store(version, Ordering::Relaxed);
        {
            let mut recent = lock(&shared.recent);
            if recent.len() == RECENT_VERSIONS {
                recent.pop_front();
            }
            recent.push_back((version, snapshot.meta.loaded_at, snapshot.stats.clone()));
        }
        shared.applied.fetch_add(1, Ordering::Relaxed);
        *lock(&shared.status) = Status { last_attempt: Some(SystemTime::now()), last_errors: Vec::new() };
        tracing::info!(version, source, sha256 = %snapshot.meta.sha256, "config applied");
        Ok(version)
    }

    /// Notes a config that was refused before it could be applied (it did not parse or
    /// validate), so `/config` can say why the active version is older than the file.
    pub fn record_rejection(&self, errors: Vec<String>) {
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
        *lock(&self.shared.status) = Status { last_attempt: Some(SystemTime::now()), last_errors: errors };
    }

    /// Reports a watched set of files (certificates, trusted keys) in `/metrics` and reloads it on
    /// [`Proxy::reload_files`].
    pub fn watch_files(&self, w: Arc<dyn sluice_tls::Reload>) {
        lock(&self.shared.tls).push(w);
    }

    /// Re-reads watched files now (SIGHUP), listeners' certificates and pools' upstream TLS files included.
    pub fn reload_files(&self) {
        for w in lock(&self.shared.tls).iter() {
            w.check();
        }
        for (_, _, tls) in self.shared.listeners.tls() {
            tls.reload();
        }
        self.shared.pools.reload_tls();
    }

    /// The active bundle's freshness, as managed mode keeps it.
    pub fn freshness(&self) -> &crate::freshness::FreshnessState {
        &self.shared.freshness
    }

    /// The active snapshot, if any config has been applied.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.shared.serving.snapshot.load_full()
    }

    /// `(name, bound address)` of every serving listener.
    pub fn listener_addresses(&self) -> Vec<(String, SocketAddr)> {
        self.shared.listeners.addresses()
    }

    /// The bound address of listener `name`.
    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addresses().into_iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    /// Starts the admin listener on `address`; returns the bound address.
    pub async fn serve_admin(&self, address: SocketAddr) -> std::io::Result<SocketAddr> {
        crate::admin::serve(self.shared.clone(), address, None).await
    }

    /// The admin listener over TLS, with certificate files re-read when they change.
    pub async fn serve_admin_tls(
        &self,
        address: SocketAddr,
        tls: Arc<sluice_tls::Watched<sluice_tls::ServerFiles>>,
    ) -> std::io::Result<SocketAddr> {
        self.watch_files(tls.clone());
        crate::admin::serve(self.shared.clone(), address, Some(tls)).await
    }

    /// Graceful shutdown: readiness fails at once, listeners stop accepting, in-flight requests
    /// finish (each listener waits up to the drain timeout), then this returns.
    pub async fn drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
        tracing::info!(deadline = ?self.shared.drain_timeout, "draining");
        self.shared.listeners.shutdown().await;
        // The drained requests' access-log lines: each worker's batch, then the writer's queue.
        for worker in self.shared.workers.handles() {
            let shared = self.shared.clone();
            let _ = worker.spawn(async move { shared.serving.access_log.flush_thread() }).await;
        }
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.serving.access_log.close()).await;
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }
}

/// The request path, as listeners serve it.
impl Serve for Shared {
    type Connection = Connection;

    fn workers(&self) -> &Workers {
        &self.workers
    }

    fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    fn connection(
        &self,
        peer: SocketAddr,
        trusted: Option<Arc<[sluice_bundle::Cidr]>>,
        strict: Arc<StrictState>,
        listener: Arc<ListenerState>,
        tls: Option<TlsFacts>,
    ) -> Connection {
        Connection::new(self.serving.clone(), peer, trusted, strict, listener, tls)
    }

    fn request(
        conn: Arc<Connection>,
        req: Request<ClientBody>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static {
        proxy::handle(conn, req)
    }

    fn refused_by_parser(conn: Arc<Connection>, why: Reject) {
        proxy::refused_by_parser(conn, why);
    }
}

/// Outlier detection's periodic work: ends ejections that ran out, looks for outliers.
async fn maintain_pools(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        shared.pools.maintain(tokio::time::Instant::now());
    }
}

/// A worker's housekeeping, once a second: closes its pooled upstream connections that idled
/// past their pool's timeout, and hands its access-log lines to the writer.
async fn worker_tick(shared: std::sync::Weak<Shared>, worker: usize) {
    AccessLog::batch_this_thread();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        shared.pools.reap(worker);
        shared.serving.access_log.flush_thread();
    }
}
