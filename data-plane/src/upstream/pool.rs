//! A compiled pool, and the registry of state that outlives snapshots.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::uri::Authority;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use sluice_bundle::{Balancer, Config, UpstreamProtocol};

use super::balance::{Balance, Inputs};
use super::conn::{self, ConnSettings, Connections, Lease};
use crate::body::{RequestBody, Upload};
use crate::error::ProxyError;

/// A pool as one snapshot uses it.
pub struct Pool {
    pub name: Box<str>,
    pub endpoints: Box<[Endpoint]>,
    pub balancer: Balancer,
    pub balance: Balance,
    pub settings: ConnSettings,
    runtime: Arc<PoolRuntime>,
}

/// One upstream server.
pub struct Endpoint {
    pub address: Box<str>,
    pub authority: Authority,
    /// The address itself when it is an IP literal; DNS names are resolved per connection.
    pub socket: Option<SocketAddr>,
    pub weight: u32,
    pub state: Arc<EndpointState>,
}

/// Per-endpoint state that survives reloads.
#[derive(Debug)]
pub struct EndpointState {
    in_flight: AtomicUsize,
    pub(super) connections: Connections,
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
}

/// One pool's lasting state.
#[derive(Debug, Default)]
struct PoolRuntime {
    /// Position in the round-robin or weighted rotation.
    next: AtomicUsize,
    endpoints: Mutex<HashMap<String, Arc<EndpointState>>>,
    /// The connection settings its endpoints' pooled connections were made with.
    settings: Mutex<Option<ConnSettings>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Pool ===

impl Pool {
    /// Compiles a validated pool, reusing the registry's state for names it already knows.
    pub fn compile(cfg: &sluice_bundle::Pool, registry: &PoolRegistry) -> Result<Self, String> {
        let runtime = registry.runtime(&cfg.name);
        let settings = ConnSettings {
            protocol: cfg.protocol_or_default(),
            connect_timeout: cfg.connect_timeout_or_default().get(),
            idle_timeout: cfg.idle_timeout_or_default().get(),
            max_idle: cfg.max_idle_per_endpoint_or_default() as usize,
        };
        let mut endpoints = Vec::with_capacity(cfg.endpoints.len());
        for (i, e) in cfg.endpoints.iter().enumerate() {
            let authority =
                Authority::from_str(&e.address).map_err(|err| format!("endpoints[{i}].address: {err}"))?;
            endpoints.push(Endpoint {
                address: e.address.as_str().into(),
                authority,
                socket: e.address.parse().ok(),
                weight: e.weight_or_default(),
                state: runtime.endpoint(&e.address, registry.workers),
            });
        }
        let weights: Vec<(&str, u32)> = endpoints.iter().map(|e| (&*e.address, e.weight)).collect();
        let balance = Balance::new(cfg.balancer_or_default(), cfg.hash_on.as_ref(), &weights);
        Ok(Self {
            name: cfg.name.as_str().into(),
            endpoints: endpoints.into_boxed_slice(),
            balancer: cfg.balancer_or_default(),
            balance,
            settings,
            runtime,
        })
    }

    pub fn protocol(&self) -> UpstreamProtocol {
        self.settings.protocol
    }

    /// Chooses the endpoint for a request and counts the request against it.
    pub fn pick(&self, ctx: &PickContext<'_>) -> (&Endpoint, InFlight) {
        let i = self.balance.pick(
            self.endpoints.len(),
            &self.runtime.next,
            |i| self.endpoints[i].state.in_flight(),
            &Inputs { headers: ctx.headers, client_ip: ctx.client_ip },
        );
        let endpoint = &self.endpoints[i];
        (endpoint, InFlight::new(&endpoint.state))
    }

    /// Sends a request to `endpoint` over this worker's pooled connections. `upload` is told
    /// when the request body has been sent whole (`None`: there is no body).
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        req: Request<RequestBody>,
        upload: Option<Arc<Upload>>,
    ) -> Result<(Response<Incoming>, Lease), ProxyError> {
        conn::send(&endpoint.state, &endpoint.address, endpoint.socket, &self.settings, req, upload).await
    }
}

// === impl EndpointState ===

impl EndpointState {
    fn new(workers: usize) -> Self {
        Self { in_flight: AtomicUsize::new(0), connections: Connections::new(workers) }
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
    fn new(state: &Arc<EndpointState>) -> Self {
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
        Self { pools: Mutex::default(), workers: workers.max(1) }
    }

    fn runtime(&self, pool: &str) -> Arc<PoolRuntime> {
        lock(&self.pools).entry(pool.to_owned()).or_default().clone()
    }

    /// Forgets pools and endpoints the active config no longer names. Snapshots still in use hold
    /// their own references, so in-flight requests are unaffected.
    pub fn retain(&self, config: &Config) {
        let mut pools = lock(&self.pools);
        pools.retain(|name, runtime| {
            let Some(cfg) = config.pools.iter().find(|p| &p.name == name) else { return false };
            lock(&runtime.endpoints).retain(|addr, _| cfg.endpoints.iter().any(|e| &e.address == addr));
            true
        });
    }

    /// Makes `pools` (the snapshot just swapped in) the pools' current settings. Where a pool's
    /// connection settings changed, its pooled connections are retired. Called only after the
    /// swap, so a refused config changes nothing.
    pub fn activate(&self, pools: &[Pool]) {
        for pool in pools {
            let mut current = lock(&pool.runtime.settings);
            if current.as_ref().is_some_and(|c| *c != pool.settings) {
                for e in pool.endpoints.iter() {
                    e.state.connections.retire_all();
                }
            }
            *current = Some(pool.settings.clone());
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
