//! Client-facing listeners: binding, accepting, serving connections, and changing the set of
//! listeners while running.
//!
//! A reload binds new addresses first ([`ListenerSet::prepare`]); only if every bind succeeds is
//! the snapshot swapped and the change committed. A listener that goes away stops accepting at
//! once and drains its open connections in the background.
//!
//! Every worker accepts from every listening socket (each has its own copy of the descriptor), so
//! a connection is served start to finish by whichever worker took it.

pub mod strict;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::proxy::{self, Connection};
use crate::server::Shared;
use strict::{StrictIo, StrictState};

/// Pending connections the kernel queues per listener.
const BACKLOG: u32 = 4096;

/// The listeners currently serving, by name.
#[derive(Default)]
pub(crate) struct ListenerSet {
    active: Mutex<HashMap<String, Active>>,
}

struct Active {
    configured: SocketAddr,
    bound: SocketAddr,
    settings: Arc<ArcSwap<Settings>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Per-listener connection settings; swapped in place when only they change.
struct Settings {
    builder: auto::Builder<TokioExecutor>,
}

/// A listener change, bound but not yet serving.
pub(crate) struct Plan {
    start: Vec<(String, SocketAddr, std::net::TcpListener, Settings)>,
    update: Vec<(String, Settings)>,
    stop: Vec<String>,
}

/// A listener address that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("listeners[{index}] `{name}`: cannot bind {address}: {source}")]
pub struct BindError {
    pub index: usize,
    pub name: String,
    pub address: SocketAddr,
    #[source]
    pub source: io::Error,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl ListenerSet ===

impl ListenerSet {
    /// Binds every listener that is new or has moved. Nothing changes for running listeners; if
    /// any bind fails, the sockets bound so far are closed and the error returned.
    pub fn prepare(&self, specs: &[sluice_bundle::Listener]) -> Result<Plan, BindError> {
        let active = lock(&self.active);
        let mut plan = Plan { start: Vec::new(), update: Vec::new(), stop: Vec::new() };
        for (index, spec) in specs.iter().enumerate() {
            let settings = Settings::new(spec);
            match active.get(&spec.name) {
                // Unchanged, or now naming the port it was given for `:0`: keep the socket.
                Some(a) if a.configured == spec.address || a.bound == spec.address => {
                    plan.update.push((spec.name.clone(), settings));
                }
                _ => {
                    let listener = bind(spec.address).map_err(|source| BindError {
                        index,
                        name: spec.name.clone(),
                        address: spec.address,
                        source,
                    })?;
                    plan.start.push((spec.name.clone(), spec.address, listener, settings));
                }
            }
        }
        for name in active.keys() {
            let moved = plan.start.iter().any(|(n, ..)| n == name);
            if moved || !specs.iter().any(|s| &s.name == name) {
                plan.stop.push(name.clone());
            }
        }
        Ok(plan)
    }

    /// Starts, updates and stops listeners as planned. Accept loops run on the calling (control)
    /// runtime and hand each connection to the least busy worker.
    pub fn commit(&self, plan: Plan, shared: &Arc<Shared>) {
        let mut active = lock(&self.active);
        for name in plan.stop {
            if let Some(a) = active.remove(&name) {
                tracing::info!(listener = %name, address = %a.bound, "listener stopping");
                let _ = a.stop.send(true);
            }
        }
        for (name, settings) in plan.update {
            if let Some(a) = active.get(&name) {
                a.settings.store(Arc::new(settings));
            }
        }
        for (name, configured, listener, settings) in plan.start {
            let bound = listener.local_addr().unwrap_or(configured);
            let listener = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(listener = %name, error = %e, "cannot register the listening socket");
                    continue;
                }
            };
            let settings = Arc::new(ArcSwap::from_pointee(settings));
            let (stop, stopped) = watch::channel(false);
            let task =
                tokio::spawn(accept_loop(name.clone(), listener, settings.clone(), shared.clone(), stopped));
            tracing::info!(listener = %name, address = %bound, "listener serving");
            active.insert(name, Active { configured, bound, settings, stop, task });
        }
    }

    /// `(name, bound address)` of every serving listener, sorted by name.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let mut v: Vec<_> = lock(&self.active).iter().map(|(n, a)| (n.clone(), a.bound)).collect();
        v.sort();
        v
    }

    /// Stops accepting everywhere and waits for every listener's connections to drain (each
    /// listener gives up on its stragglers at the drain deadline).
    pub async fn shutdown(&self) {
        let tasks: Vec<JoinHandle<()>> = lock(&self.active)
            .drain()
            .map(|(_, a)| {
                let _ = a.stop.send(true);
                a.task
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// A listening socket, not yet registered with a runtime.
fn bind(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if address.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)?.into_std()
}

// === impl Settings ===

impl Settings {
    fn new(spec: &sluice_bundle::Listener) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Also the keep-alive idle limit: hyper starts it when waiting for the next request.
            .header_read_timeout(spec.idle_timeout_or_default().get())
            .max_buf_size(strict::MAX_HEAD);
        builder.http2().timer(TokioTimer::new());
        Self { builder }
    }
}

async fn accept_loop(
    name: String,
    listener: TcpListener,
    settings: Arc<ArcSwap<Settings>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => dispatch(tcp, peer, &settings, &shared, &graceful),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(listener = %name, connections = open, "draining connections");
    }
    if tokio::time::timeout(shared.drain_timeout, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = %name, "drain deadline passed with connections still open; closing them");
    }
}

/// Hands a new connection to the worker serving the fewest connections. One acceptor and an
/// explicit choice spread connections evenly; workers racing on a shared socket do not (one
/// grabs a whole burst).
fn dispatch(
    tcp: TcpStream,
    peer: SocketAddr,
    settings: &ArcSwap<Settings>,
    shared: &Arc<Shared>,
    graceful: &GracefulShutdown,
) {
    let _ = tcp.set_nodelay(true);
    let tcp = match tcp.into_std() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot hand over a connection");
            return;
        }
    };
    let (worker, load) = shared.workers.least_loaded();
    let builder = settings.load().builder.clone();
    let (shared, watcher) = (shared.clone(), graceful.watcher());
    worker.spawn(async move {
        let _load = load;
        let tcp = match TcpStream::from_std(tcp) {
            Ok(t) => t,
            Err(e) => return tracing::warn!(%peer, error = %e, "worker cannot take a connection"),
        };
        let strict = Arc::new(StrictState::default());
        let io = TokioIo::new(StrictIo::new(tcp, strict.clone()));
        let conn = Arc::new(Connection::new(shared, peer, strict));
        let svc = service_fn(move |req| proxy::handle(conn.clone(), req));
        if let Err(e) = watcher.watch(builder.serve_connection(io, svc)).await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    });
}
