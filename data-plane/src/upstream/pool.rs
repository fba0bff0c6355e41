//! A compiled pool, and the registry of state that outlives snapshots.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::HeaderMap;
use http::uri::Authority;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use sluice_bundle::{Balancer, Config, UpstreamProtocol};

use super::balance::{Balance, Inputs};
use crate::body::RequestBody;

/// The pooled HTTP client for one upstream pool.
pub type UpstreamClient = Client<HttpConnector, RequestBody>;

/// A pool as one snapshot uses it.
pub struct Pool {
    pub name: Box<str>,
    pub endpoints: Box<[Endpoint]>,
    pub balancer: Balancer,
    pub balance: Balance,
    pub protocol: UpstreamProtocol,
    /// One client per worker, so a worker's upstream connections live on that worker.
    clients: Arc<[UpstreamClient]>,
    runtime: Arc<PoolRuntime>,
}

/// One upstream server.
pub struct Endpoint {
    pub address: Box<str>,
    pub authority: Authority,
    pub weight: u32,
    pub state: Arc<EndpointState>,
}

/// Per-endpoint state that survives reloads.
#[derive(Debug, Default)]
pub struct EndpointState {
    in_flight: AtomicUsize,
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
    clients: Mutex<Option<(ClientSettings, Arc<[UpstreamClient]>)>>,
}

/// What a pooled client is built from; a change of any of it means a new client (and new
/// connections), an unchanged pool keeps its warm connections across reloads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientSettings {
    protocol: UpstreamProtocol,
    connect_timeout: std::time::Duration,
    idle_timeout: std::time::Duration,
    max_idle: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Pool ===

impl Pool {
    /// Compiles a validated pool, reusing the registry's state for names it already knows.
    pub fn compile(cfg: &sluice_bundle::Pool, registry: &PoolRegistry) -> Result<Self, String> {
        let runtime = registry.runtime(&cfg.name);
        let mut endpoints = Vec::with_capacity(cfg.endpoints.len());
        for (i, e) in cfg.endpoints.iter().enumerate() {
            let authority =
                Authority::from_str(&e.address).map_err(|err| format!("endpoints[{i}].address: {err}"))?;
            endpoints.push(Endpoint {
                address: e.address.as_str().into(),
                authority,
                weight: e.weight_or_default(),
                state: runtime.endpoint(&e.address),
            });
        }
        let weights: Vec<(&str, u32)> = endpoints.iter().map(|e| (&*e.address, e.weight)).collect();
        let balance = Balance::new(cfg.balancer_or_default(), cfg.hash_on.as_ref(), &weights);
        let settings = ClientSettings {
            protocol: cfg.protocol_or_default(),
            connect_timeout: cfg.connect_timeout_or_default().get(),
            idle_timeout: cfg.idle_timeout_or_default().get(),
            max_idle: cfg.max_idle_per_endpoint_or_default() as usize,
        };
        Ok(Self {
            name: cfg.name.as_str().into(),
            endpoints: endpoints.into_boxed_slice(),
            balancer: cfg.balancer_or_default(),
            balance,
            protocol: settings.protocol,
            clients: runtime.clients(&settings, registry.workers),
            runtime,
        })
    }

    /// The pooled client of the calling worker.
    pub fn client(&self) -> &UpstreamClient {
        &self.clients[crate::worker::current() % self.clients.len()]
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
}

// === impl EndpointState ===

impl EndpointState {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
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
            let Some(cfg) = config.pools.iter().find(|p| &p.name == name) else {
                return false;
            };
            lock(&runtime.endpoints).retain(|addr, _| cfg.endpoints.iter().any(|e| &e.address == addr));
            true
        });
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
    fn endpoint(&self, address: &str) -> Arc<EndpointState> {
        lock(&self.endpoints).entry(address.to_owned()).or_default().clone()
    }

    fn clients(&self, settings: &ClientSettings, workers: usize) -> Arc<[UpstreamClient]> {
        let mut slot = lock(&self.clients);
        if let Some((current, clients)) = slot.as_ref()
            && current == settings
            && clients.len() == workers
        {
            return clients.clone();
        }
        let clients: Arc<[UpstreamClient]> = (0..workers).map(|_| settings.build()).collect();
        *slot = Some((settings.clone(), clients.clone()));
        clients
    }
}

// === impl ClientSettings ===

impl ClientSettings {
    fn build(&self) -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(self.connect_timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.idle_timeout)
            .pool_max_idle_per_host(self.max_idle)
            // Our request carries the client's Host; never let the client invent one.
            .set_host(false)
            .http2_only(self.protocol == UpstreamProtocol::Http2);
        builder.build(connector)
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
