//! A compiled pool, and the registry of state that outlives snapshots.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::uri::Authority;
use http::{HeaderMap, Request, Response, Version};

use sluice_bundle::{
    Balancer, CircuitBreaker, Config, ConfigError, ConfigErrors, HealthCheck, UpstreamProtocol,
};
use sluice_compile::PoolPlan;
use sluice_tls::WatchedStatus;
use sluice_tls::rustls::pki_types::ServerName;
use tokio::time::Instant;

use super::balance::{Balance, Inputs};
use super::conn::{self, ConnSettings, Connections, SendError, Target};
use super::health::{self, Checked, Checks};
use super::tls::{PoolTls, TlsFiles};
use crate::body::RequestBody;
use crate::metrics::{Histogram, StatusCounts};
use crate::resilience::breaker::Breaker;
use crate::resilience::outlier::{self, EndpointHealth, OutlierPolicy};
use crate::sync::lock;

/// A pool as one snapshot uses it.
pub struct Pool {
    pub name: Box<str>,
    pub endpoints: Box<[Endpoint]>,
    pub balancer: Balancer,
    pub balance: Balance,
    pub settings: ConnSettings,
    pub breaker: Arc<Breaker>,
    /// `None`: outlier detection is off.
    pub outlier: Option<OutlierPolicy>,
    circuit_breaker: CircuitBreaker,
    health_check: Option<HealthCheck>,
    runtime: Arc<PoolRuntime>,
}

/// One upstream server.
pub struct Endpoint {
    pub address: Box<str>,
    pub authority: Authority,
    /// The address itself when it is an IP literal; DNS names are resolved per connection.
    pub socket: Option<SocketAddr>,
    /// The name its certificate is verified against, when the pool speaks TLS.
    pub tls_name: Option<ServerName<'static>>,
    pub weight: u32,
    pub state: Arc<EndpointState>,
}

/// Per-endpoint state that survives reloads.
#[derive(Debug)]
pub struct EndpointState {
    in_flight: AtomicUsize,
    pub(super) connections: Connections,
    pub health: EndpointHealth,
    pub metrics: EndpointMetrics,
}

/// What an endpoint's tries came to.
#[derive(Debug, Default)]
pub struct EndpointMetrics {
    /// Responses by status class.
    pub responses: StatusCounts,
    /// Tries that got no response: connect failure or timeout, reset, response timeout.
    pub failures: AtomicU64,
    /// Time to response headers, of tries that got a response.
    pub duration: Histogram,
}

// === impl EndpointMetrics ===

impl EndpointMetrics {
    /// A try that got a response with `status` after `took`.
    pub fn answered(&self, status: u16, took: std::time::Duration) {
        self.responses.record(status);
        self.duration.observe(took);
    }
}

/// Counts a request against an endpoint while it lives.
pub struct InFlight(Arc<EndpointState>);

/// What a pick may look at.
pub struct PickContext<'a> {
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
}

/// State of every pool, by name, kept across snapshots.
#[derive(Debug)]
pub struct PoolRegistry {
    pools: Mutex<HashMap<String, Arc<PoolRuntime>>>,
    workers: usize,
    /// Upstream TLS configs by their files, shared by the pools that name the same ones.
    tls: TlsFiles,
}

/// One pool's lasting state.
#[derive(Debug, Default)]
struct PoolRuntime {
    /// Position in the round-robin or weighted rotation.
    next: AtomicUsize,
    endpoints: Mutex<HashMap<String, Arc<EndpointState>>>,
    /// The connection settings its endpoints' pooled connections were made with.
    settings: Mutex<Option<ConnSettings>>,
    breaker: Arc<Breaker>,
    /// The active outlier policy, and when its next analysis is due.
    outlier: Mutex<Option<(OutlierPolicy, Instant)>>,
    checks: Mutex<Option<Checks>>,
}

// === impl Pool ===

impl Pool {
    /// Pool `index` from its config and compiled plan, reusing the registry's state for names
    /// it already knows. Fails only on facts of this node: TLS files it cannot use.
    pub fn compile(
        index: usize,
        cfg: &sluice_bundle::Pool,
        plan: PoolPlan,
        registry: &PoolRegistry,
    ) -> Result<Self, ConfigErrors> {
        let tls = PoolTls::compile(index, cfg, &registry.tls).map_err(|e| ConfigErrors(vec![e]))?;
        let runtime = registry.runtime(&cfg.name);
        let settings = ConnSettings {
            protocol: cfg.protocol_or_default(),
            connect_timeout: cfg.connect_timeout_or_default().get(),
            idle_timeout: cfg.idle_timeout_or_default().get(),
            max_idle: cfg.max_idle_per_endpoint_or_default() as usize,
            tls,
        };
        let mut endpoints = Vec::with_capacity(cfg.endpoints.len());
        let mut errors = Vec::new();
        for (j, (e, authority)) in cfg.endpoints.iter().zip(plan.endpoints).enumerate() {
            let tls_name = match settings.tls.as_ref().map(|t| t.server_name(&e.address)).transpose() {
                Ok(name) => name,
                Err(message) => {
                    errors.push(ConfigError {
                        path: format!("pools[{index}].endpoints[{j}].address"),
                        message,
                    });
                    None
                }
            };
            endpoints.push(Endpoint {
                address: e.address.as_str().into(),
                authority,
                socket: e.address.parse().ok(),
                tls_name,
                weight: e.weight_or_default(),
                state: runtime.endpoint(&e.address, registry.workers),
            });
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let weights: Vec<(&str, u32)> = endpoints.iter().map(|e| (&*e.address, e.weight)).collect();
        let balance = Balance::new(cfg.balancer_or_default(), cfg.hash_on.as_ref(), &weights);
        Ok(Self {
            name: cfg.name.as_str().into(),
            endpoints: endpoints.into_boxed_slice(),
            balancer: cfg.balancer_or_default(),
            balance,
            settings,
            breaker: runtime.breaker.clone(),
            outlier: cfg.outlier_detection_or_default().map(|o| OutlierPolicy::compile(&o)),
            circuit_breaker: cfg.circuit_breaker_or_default(),
            health_check: cfg.health_check.clone(),
            runtime,
        })
    }

    pub fn protocol(&self) -> UpstreamProtocol {
        self.settings.protocol
    }

    /// The HTTP version requests to this pool's endpoints are sent with.
    pub fn version(&self) -> Version {
        match self.settings.protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::Http2 => Version::HTTP_2,
        }
    }

    pub fn health_check_configured(&self) -> bool {
        self.health_check.is_some()
    }

    /// Chooses the endpoint for a request, other than those `tried` already: the balancer's
    /// choice if it is in rotation, else another that is. When none is (every endpoint failing
    /// its checks or ejected), the pool fails open and picks among them all rather than refuse
    /// everything.
    pub fn pick(&self, ctx: &PickContext<'_>, tried: &[usize]) -> usize {
        let n = self.endpoints.len();
        let inputs = Inputs { headers: ctx.headers, client_ip: ctx.client_ip };
        let balance =
            || self.balance.pick(n, &self.runtime.next, |i| self.endpoints[i].state.in_flight(), &inputs);
        let usable = |i: usize| self.endpoints[i].state.health.available() && !tried.contains(&i);
        let first = balance();
        if usable(first) {
            return first;
        }
        // Rotating balancers pick again, so the share of an endpoint out of rotation is spread
        // over the rest instead of landing on its neighbour; a hash walks on from its point.
        if !matches!(self.balance, Balance::ConsistentHash { .. }) {
            for _ in 0..n.min(4) {
                let i = balance();
                if usable(i) {
                    return i;
                }
            }
        }
        let walk = (1..n).map(|k| (first + k) % n);
        walk.clone()
            .find(|i| usable(*i))
            .or_else(|| std::iter::once(first).chain(walk).find(|i| !tried.contains(i)))
            .unwrap_or(first)
    }

    /// Sends a request to endpoint `i` over this worker's pooled connections.
    pub async fn send(
        &self,
        i: usize,
        req: Box<Request<RequestBody>>,
    ) -> Result<Box<Response<crate::body::UpstreamBody>>, SendError> {
        let e = &self.endpoints[i];
        let target = Target {
            state: &e.state,
            address: &e.address,
            socket: e.socket,
            tls_name: e.tls_name.as_ref(),
            pool: &self.name,
            breaker: &self.breaker,
        };
        conn::send(&target, &self.settings, req).await
    }

    /// Records how a try against endpoint `i` went. A run of failures as long as the outlier
    /// policy allows ejects the endpoint at once; `what` says what the last one was.
    pub fn record(
        &self,
        i: usize,
        success: bool,
        latency: std::time::Duration,
        what: impl FnOnce() -> String,
    ) {
        let failures = self.endpoints[i].state.health.record(crate::worker::current(), success, latency);
        if let Some(policy) = &self.outlier
            && failures >= policy.consecutive
        {
            let all: Vec<(&str, &EndpointHealth)> =
                self.endpoints.iter().map(|e| (&*e.address, &e.state.health)).collect();
            let reason = format!("{failures} consecutive failures (last: {})", what());
            outlier::eject(&all, i, policy, Instant::now(), reason);
        }
    }
}

// === impl EndpointState ===

impl Checked for EndpointState {
    fn health(&self) -> &EndpointHealth {
        &self.health
    }
}

impl EndpointState {
    pub(super) fn new(workers: usize) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            connections: Connections::new(workers),
            health: EndpointHealth::new(workers),
            metrics: EndpointMetrics::default(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Pooled idle connections, all workers together.
    pub fn idle_connections(&self) -> usize {
        self.connections.idle_count()
    }
}

// === impl InFlight ===

impl InFlight {
    pub fn new(state: &Arc<EndpointState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl PoolRegistry ===

impl Default for PoolRegistry {
    fn default() -> Self {
        Self::new(1)
    }
}

impl PoolRegistry {
    /// A registry for `workers` worker threads.
    pub fn new(workers: usize) -> Self {
        Self { pools: Mutex::default(), workers: workers.max(1), tls: TlsFiles::default() }
    }

    fn runtime(&self, pool: &str) -> Arc<PoolRuntime> {
        lock(&self.pools).entry(pool.to_owned()).or_default().clone()
    }

    /// Forgets pools and endpoints the active config no longer names. Snapshots still in use hold
    /// their own references, so in-flight requests are unaffected.
    pub fn retain(&self, config: &Config) {
        let by_name: std::collections::HashMap<&str, &sluice_bundle::Pool> =
            config.pools.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut pools = lock(&self.pools);
        pools.retain(|name, runtime| {
            let Some(cfg) = by_name.get(&**name) else { return false };
            lock(&runtime.endpoints).retain(|addr, _| cfg.endpoints.iter().any(|e| &e.address == addr));
            true
        });
    }

    /// Makes `pools` (the snapshot just swapped in) the pools' current settings. Where a pool's
    /// connection settings changed, its pooled connections are retired. Called only after the
    /// swap, so a refused config changes nothing.
    ///
    /// The pools' breakers, outlier policies and health checks take their new settings here too:
    /// checks (re)start on the current runtime when their settings or endpoints changed, and
    /// turning a feature off returns the endpoints it had taken out of rotation.
    pub fn activate(&self, pools: &[Pool]) {
        for pool in pools {
            let rt = &pool.runtime;
            let mut current = lock(&rt.settings);
            if current.as_ref().is_some_and(|c| *c != pool.settings) {
                for e in pool.endpoints.iter() {
                    e.state.connections.retire_all();
                }
            }
            *current = Some(pool.settings.clone());
            drop(current);
            if pool.settings.tls.as_ref().is_some_and(|t| !t.verifies()) {
                tracing::warn!(pool = %pool.name, "upstream TLS certificates are not verified (insecure_skip_verify): any certificate and any name is accepted");
            }

            rt.breaker.configure(&pool.circuit_breaker);

            let mut outlier = lock(&rt.outlier);
            match (&pool.outlier, outlier.as_ref()) {
                (None, _) => {
                    if outlier.take().is_some() {
                        pool.endpoints.iter().for_each(|e| e.state.health.reset_ejection());
                    }
                }
                (Some(p), Some((current, _))) if p == current => {}
                (Some(p), _) => *outlier = Some((p.clone(), Instant::now() + p.interval)),
            }
            drop(outlier);

            let mut checks = lock(&rt.checks);
            let addresses: Vec<String> = pool.endpoints.iter().map(|e| e.address.to_string()).collect();
            match &pool.health_check {
                None => {
                    if checks.take().is_some() {
                        pool.endpoints.iter().for_each(|e| e.state.health.reset_checks());
                    }
                }
                Some(cfg) => {
                    let wanted = (cfg.clone(), pool.protocol(), pool.settings.tls.clone(), addresses);
                    if checks.as_ref().is_none_or(|c| c.config != wanted) {
                        if let Some(old) = checks.take() {
                            // Different checks: earlier verdicts do not carry over.
                            drop(old);
                            pool.endpoints.iter().for_each(|e| e.state.health.reset_checks());
                        }
                        let name: Arc<str> = pool.name.as_ref().into();
                        let targets = pool
                            .endpoints
                            .iter()
                            .map(|e| health::Target {
                                pool: name.clone(),
                                address: e.address.clone(),
                                socket: e.socket,
                                tls: pool.settings.tls.clone().zip(e.tls_name.clone()),
                                state: e.state.clone(),
                            })
                            .collect();
                        *checks =
                            Some(Checks::start(cfg, pool.protocol(), pool.settings.tls.clone(), targets));
                    }
                }
            }
        }
    }

    /// Outlier detection's periodic work, for every pool: returns endpoints whose ejection ran
    /// out and, once per pool's interval, looks for success-rate and latency outliers.
    pub fn maintain(&self, now: Instant) {
        let pools: Vec<Arc<PoolRuntime>> = lock(&self.pools).values().cloned().collect();
        for p in pools {
            let endpoints: Vec<(String, Arc<EndpointState>)> =
                lock(&p.endpoints).iter().map(|(a, e)| (a.clone(), e.clone())).collect();
            let all: Vec<(&str, &EndpointHealth)> =
                endpoints.iter().map(|(a, e)| (a.as_str(), &e.health)).collect();
            outlier::return_expired(&all, now);
            let mut policy = lock(&p.outlier);
            if let Some((policy, due)) = policy.as_mut()
                && now >= *due
            {
                *due = now + policy.interval;
                outlier::analyse(&all, policy, now);
            }
        }
    }

    /// Closes `worker`'s pooled connections that idled past their pool's timeout or that the
    /// upstream closed. Each worker runs this periodically.
    pub fn reap(&self, worker: usize) {
        let pools: Vec<Arc<PoolRuntime>> = lock(&self.pools).values().cloned().collect();
        for p in pools {
            let Some(idle_timeout) = lock(&p.settings).as_ref().map(|s| s.idle_timeout) else { continue };
            let endpoints: Vec<Arc<EndpointState>> = lock(&p.endpoints).values().cloned().collect();
            for e in endpoints {
                e.connections.reap(worker, idle_timeout);
            }
        }
    }

    /// What `/metrics` says about each pool's upstream TLS files (`role="upstream"`, by pool).
    pub fn tls_status(&self) -> Vec<(String, WatchedStatus)> {
        let pools: Vec<(String, Arc<PoolRuntime>)> =
            lock(&self.pools).iter().map(|(n, p)| (n.clone(), p.clone())).collect();
        let mut all: Vec<(String, WatchedStatus)> = pools
            .into_iter()
            .filter_map(|(name, p)| {
                let status = lock(&p.settings).as_ref()?.tls.as_ref()?.status();
                Some((name, status))
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Re-reads every pool's upstream TLS files now (SIGHUP).
    pub fn reload_tls(&self) {
        let pools: Vec<Arc<PoolRuntime>> = lock(&self.pools).values().cloned().collect();
        for p in pools {
            let tls = lock(&p.settings).as_ref().and_then(|s| s.tls.clone());
            if let Some(tls) = tls {
                tls.reload();
            }
        }
    }

    /// Names of the pools held, sorted (for tests and the admin API).
    pub fn pool_names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.pools).keys().cloned().collect();
        names.sort();
        names
    }
}

// === impl PoolRuntime ===

impl PoolRuntime {
    fn endpoint(&self, address: &str, workers: usize) -> Arc<EndpointState> {
        lock(&self.endpoints)
            .entry(address.to_owned())
            .or_insert_with(|| Arc::new(EndpointState::new(workers)))
            .clone()
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("name", &self.name).field("endpoints", &self.endpoints.len()).finish()
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("address", &self.address).field("weight", &self.weight).finish()
    }
}
