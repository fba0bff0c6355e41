//! Client-facing listeners: binding, accepting, serving connections, and changing the set of
//! listeners while running.
//!
//! A reload binds new addresses first ([`ListenerSet::prepare`]); only if every bind succeeds is
//! the snapshot swapped and the change committed. Listeners are matched to the new config by
//! address, so renaming a listener or swapping two listeners' addresses keeps their sockets. A
//! listener that goes away stops accepting at once and drains its connections in the background;
//! whatever is still open at the drain deadline is closed.
//!
//! Each listener has one accept loop, on the control thread, which hands every new connection to
//! the worker serving the fewest; that worker then serves it start to finish: HTTP/1.1 inline
//! (`h1`), a connection that opens with the HTTP/2 preface through hyper.

pub(crate) mod h1;
pub(crate) mod proxy_protocol;
pub mod strict;
pub(crate) mod tls;
mod tunnel;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sluice_tls::server::MaybeTls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use crate::body::{ClientBody, ProxyBody};
use crate::error::ErrorCounts;
use crate::metrics::RequestStats;
use crate::resilience::limit::Limiter;
use crate::sync::lock;
use crate::transform::HeaderRules;
use crate::worker::Workers;
use strict::{Reject, StrictState};
use tls::{EdgeTls, Resumptions, TlsCounters, TlsFacts};

/// Pending connections the kernel queues per listener.
const BACKLOG: u32 = 4096;
/// How long an HTTP/2 client gets to answer a keep-alive ping before its connection is closed.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 abuse limits for clients on a public edge, set explicitly rather than left to library
/// defaults; `h2::sluice::hits` counts each time a peer runs into one (docs/config.md). Streams
/// at once and the header list size are the listener's `http2` settings.
/// Streams a client may reset before the server accepted them (the rapid-reset attack,
/// CVE-2023-44487); one more ends the connection with ENHANCE_YOUR_CALM.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the server may reset for a client's protocol errors before it ends the connection.
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// What serves the connections listeners accept: the request path, handed in by the server so
/// that listeners know nothing of it. Statically dispatched: one implementation serves.
pub(crate) trait Serve: Send + Sync + 'static {
    /// What the requests of one connection share.
    type Connection: Send + Sync + 'static;
    /// Where connections are served.
    fn workers(&self) -> &Workers;
    /// How long a stopped listener's connections get to finish.
    fn drain_timeout(&self) -> Duration;
    /// `trusted`: the listener's trusted proxies, when `peer` is one of them.
    fn connection(
        &self,
        peer: SocketAddr,
        trusted: Option<Arc<[sluice_bundle::Cidr]>>,
        strict: Arc<StrictState>,
        listener: Arc<ListenerState>,
        tls: Option<TlsFacts>,
    ) -> Self::Connection;
    fn request(
        conn: Arc<Self::Connection>,
        req: Request<ClientBody>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static;
    /// A head that could not be parsed (answered 400 and closed) and the request path never
    /// saw; `why` is the framing check's verdict on it, or what the parser refused.
    fn refused_by_parser(conn: Arc<Self::Connection>, why: Reject);
}

/// The listeners currently serving, by name, and those still draining after removal.
#[derive(Default)]
pub(crate) struct ListenerSet {
    active: Mutex<HashMap<String, Active>>,
    draining: Mutex<Vec<JoinHandle<()>>>,
    /// Session-ticket keys, kept across applies.
    resumptions: Resumptions,
}

struct Active {
    configured: SocketAddr,
    bound: SocketAddr,
    settings: Arc<ArcSwap<Settings>>,
    /// Overload protection, counters and logging; kept with the socket, so what is in progress
    /// stays counted.
    state: Arc<ListenerState>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Per-listener connection settings; swapped in place when only they change.
struct Settings {
    /// For HTTP/2 connections.
    builder: auto::Builder<TokioExecutor>,
    idle_timeout: Duration,
    overload: Option<sluice_bundle::Overload>,
    /// Share of requests written to the access log (0: none).
    log_sample: f64,
    /// TLS termination; `None`: plain TCP.
    tls: Option<Arc<EdgeTls>>,
    /// Connections start with a PROXY protocol header.
    proxy_protocol: bool,
    /// Connections per client address (an IPv6 client by its /64); 0: no limit.
    per_client: u32,
    /// Proxies whose forwarding headers are believed.
    trusted: Arc<[sluice_bundle::Cidr]>,
    /// `request_headers` and `response_headers`; `None`: neither.
    transforms: Option<Arc<ListenerTransforms>>,
}

/// A listener's header changes, compiled.
#[derive(Debug)]
pub(crate) struct ListenerTransforms {
    pub request: Option<Box<HeaderRules>>,
    pub response: Option<Box<HeaderRules>>,
}

/// A listener's lasting state: overload protection, request counters and its access-log
/// sampling, kept with its socket across config changes.
#[derive(Debug, Default)]
pub struct ListenerState {
    pub limiter: Arc<Limiter>,
    /// Responses sent, the proxy's own included.
    pub stats: RequestStats,
    /// The proxy's own answers, by error category.
    pub errors: ErrorCounts,
    /// TLS handshakes, by version and failure reason.
    pub tls: TlsCounters,
    /// Connections closed as they arrived, by reason.
    pub refused: RefusedConnections,
    /// Open connections per client address, while `max_connections_per_client` is set.
    clients: Mutex<HashMap<u128, u32>>,
    /// When a per-client refusal was last logged (seconds since the Unix epoch).
    refusal_logged: AtomicU64,
    /// The listener's header changes, as configured now (a config change reaches open
    /// connections' next requests too). Read through [`ListenerState::transforms`].
    transforms: ArcSwapOption<ListenerTransforms>,
    /// Whether there are any: a flag read per request, so a listener without changes does not
    /// pay the swap's load (about 150 instructions a request, two loads).
    has_transforms: AtomicBool,
    /// The share of requests logged, in millionths; 0: off.
    log_ppm: AtomicU32,
}

/// Connections a listener closed before serving them.
#[derive(Debug, Default)]
pub struct RefusedConnections {
    /// The client already had `max_connections_per_client` open.
    pub per_client_limit: AtomicU64,
    /// No valid PROXY protocol header on a listener that wants one.
    pub proxy_protocol: AtomicU64,
}

/// Why a connection was closed as it arrived.
enum Refused {
    PerClientLimit,
    /// No valid PROXY protocol header: the reader's reason.
    ProxyProtocol(&'static str),
}

/// A client's place under its listener's per-client connection limit, given back when dropped.
struct ClientSlot {
    state: Arc<ListenerState>,
    key: u128,
}

/// A listener change, bound but not yet serving.
pub(crate) struct Plan {
    start: Vec<(String, SocketAddr, std::net::TcpListener, Settings)>,
    /// `(current name, new name, new address as configured, settings)` of listeners kept.
    keep: Vec<(String, String, SocketAddr, Settings)>,
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

// === impl ListenerState ===

impl ListenerState {
    fn configure(&self, settings: &Settings) {
        self.limiter.configure(settings.overload.as_ref());
        self.transforms.store(settings.transforms.clone());
        self.has_transforms.store(settings.transforms.is_some(), Ordering::Relaxed);
        self.log_ppm.store((settings.log_sample * 1e6).round() as u32, Ordering::Relaxed);
    }

    /// A place for one more connection from `ip`, or `None` if it has `limit` open already.
    fn enter(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Option<ClientSlot> {
        let key = client_key(ip);
        let mut clients = lock(&self.clients);
        let open = clients.entry(key).or_insert(0);
        if *open >= limit {
            return None;
        }
        *open += 1;
        Some(ClientSlot { state: self.clone(), key })
    }

    /// Counts a connection closed as it arrived, and logs one refusal at most every 10 s (the
    /// count meanwhile is in the metrics), so an operator sees who is refused and why (a client
    /// over its limit, a balancer not sending PROXY headers) without a flood of lines.
    fn refuse(&self, listener: &str, peer: SocketAddr, refused: Refused) {
        let (counter, why) = match refused {
            Refused::PerClientLimit => {
                (&self.refused.per_client_limit, "the client has max_connections_per_client open")
            }
            Refused::ProxyProtocol(why) => (&self.refused.proxy_protocol, why),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let last = self.refusal_logged.load(Ordering::Relaxed);
        if now >= last + 10
            && self.refusal_logged.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(listener, %peer, reason = why, "connection refused (at most one such line every 10 s)");
        } else {
            tracing::debug!(listener, %peer, reason = why, "connection refused");
        }
    }

    /// The listener's header changes, if it has any.
    pub(crate) fn transforms(&self) -> Option<Arc<ListenerTransforms>> {
        if !self.has_transforms.load(Ordering::Relaxed) {
            return None;
        }
        self.transforms.load_full()
    }

    /// Whether this request goes to the access log.
    pub fn log_this(&self) -> bool {
        match self.log_ppm.load(Ordering::Relaxed) {
            0 => false,
            1_000_000.. => true,
            ppm => fastrand::u32(0..1_000_000) < ppm,
        }
    }
}

/// Who counts as one client: an IPv4 address, or an IPv6 address's /64 (one subscriber's
/// network, which an attacker could otherwise spread over).
fn client_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => u128::from(v6) & !u128::from(u64::MAX),
        },
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut clients = lock(&self.state.clients);
        if let Some(open) = clients.get_mut(&self.key) {
            *open -= 1;
            if *open == 0 {
                clients.remove(&self.key);
            }
        }
    }
}

// === impl ListenerSet ===

impl ListenerSet {
    /// Matches the new listeners to the running ones and binds the rest. A running listener is
    /// kept for a new one with the same address (the one with the same name first), whatever it
    /// is called now. Nothing changes for running listeners; if any bind fails, the sockets bound
    /// so far are closed and the error returned.
    pub fn prepare(
        &self,
        specs: &[sluice_bundle::Listener],
        mut tls: Vec<Option<Arc<EdgeTls>>>,
    ) -> Result<Plan, BindError> {
        tls.resize(specs.len(), None);
        let active = lock(&self.active);
        let mut plan = Plan { start: Vec::new(), keep: Vec::new(), stop: Vec::new() };
        let mut claimed: Vec<&str> = Vec::new();
        let serves = |a: &Active, addr: SocketAddr| a.configured == addr || a.bound == addr;
        for (index, spec) in specs.iter().enumerate() {
            let same_name =
                active.get(&spec.name).filter(|a| serves(a, spec.address)).map(|_| spec.name.as_str());
            // Port 0 means "any free port": only the listener's own socket can stand for it.
            let same_address = || {
                (spec.address.port() != 0)
                    .then(|| {
                        active
                            .iter()
                            .find(|(name, a)| serves(a, spec.address) && !claimed.contains(&name.as_str()))
                            .map(|(name, _)| name.as_str())
                    })
                    .flatten()
            };
            match same_name.or_else(same_address) {
                Some(current) if !claimed.contains(&current) => {
                    claimed.push(current);
                    plan.keep.push((
                        current.to_owned(),
                        spec.name.clone(),
                        spec.address,
                        Settings::new(spec, tls[index].take()),
                    ));
                }
                _ => {
                    let listener = bind(spec.address).map_err(|source| BindError {
                        index,
                        name: spec.name.clone(),
                        address: spec.address,
                        source,
                    })?;
                    plan.start.push((
                        spec.name.clone(),
                        spec.address,
                        listener,
                        Settings::new(spec, tls[index].take()),
                    ));
                }
            }
        }
        plan.stop = active.keys().filter(|n| !claimed.contains(&n.as_str())).cloned().collect();
        Ok(plan)
    }

    /// Reads the certificate files of every TLS listener in `specs` and starts watching them:
    /// one entry per listener (`None`: plain). Every file problem is reported, each with its
    /// field's path.
    pub fn load_tls(
        &self,
        specs: &[sluice_bundle::Listener],
    ) -> Result<Vec<Option<Arc<EdgeTls>>>, sluice_bundle::ConfigErrors> {
        let mut errors = Vec::new();
        let loaded: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let tls = spec.tls.as_ref()?;
                EdgeTls::load(i, tls, &self.resumptions, &mut errors).map(Arc::new)
            })
            .collect();
        if errors.is_empty() { Ok(loaded) } else { Err(sluice_bundle::ConfigErrors(errors)) }
    }

    /// `(name, lasting state, certificates)` of every serving TLS listener, sorted by name.
    pub fn tls(&self) -> Vec<(String, Arc<ListenerState>, Arc<EdgeTls>)> {
        let mut v: Vec<_> = lock(&self.active)
            .iter()
            .filter_map(|(n, a)| Some((n.clone(), a.state.clone(), a.settings.load().tls.clone()?)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Starts, keeps (possibly renamed) and stops listeners as planned. Accept loops run on the
    /// calling (control) runtime.
    pub fn commit<S: Serve>(&self, plan: Plan, specs: &[sluice_bundle::Listener], shared: &Arc<S>) {
        self.resumptions.retain(specs);
        let mut active = lock(&self.active);
        for name in plan.stop {
            if let Some(a) = active.remove(&name) {
                tracing::info!(listener = %name, address = %a.bound, "listener stopping");
                let _ = a.stop.send(true);
                let mut draining = lock(&self.draining);
                draining.retain(|t| !t.is_finished());
                draining.push(a.task);
            }
        }
        // Take every kept listener out before putting any back, so swapped names cannot collide.
        let kept: Vec<_> = plan
            .keep
            .into_iter()
            .filter_map(|(current, new, configured, settings)| {
                active.remove(&current).map(|a| (current, new, configured, settings, a))
            })
            .collect();
        for (current, new, configured, settings, mut a) in kept {
            if current != new {
                tracing::info!(listener = %new, was = %current, address = %a.bound, "listener renamed");
            }
            a.state.configure(&settings);
            a.settings.store(Arc::new(settings));
            a.configured = configured;
            active.insert(new, a);
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
            let state = Arc::new(ListenerState::default());
            state.configure(&settings);
            let settings = Arc::new(ArcSwap::from_pointee(settings));
            let (stop, stopped) = watch::channel(false);
            let accepting = Accepting {
                name: name.clone(),
                listener,
                settings: settings.clone(),
                state: state.clone(),
                shared: shared.clone(),
            };
            let task = tokio::spawn(accept_loop(accepting, stopped));
            tracing::info!(listener = %name, address = %bound, "listener serving");
            active.insert(name, Active { configured, bound, settings, state, stop, task });
        }
    }

    /// `(name, bound address, lasting state)` of every serving listener, sorted by name.
    pub fn states(&self) -> Vec<(String, SocketAddr, Arc<ListenerState>)> {
        let mut v: Vec<_> =
            lock(&self.active).iter().map(|(n, a)| (n.clone(), a.bound, a.state.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// `(name, bound address)` of every serving listener, sorted by name.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        let mut v: Vec<_> = lock(&self.active).iter().map(|(n, a)| (n.clone(), a.bound)).collect();
        v.sort();
        v
    }

    /// Stops accepting everywhere and waits until every listener, including those removed
    /// earlier, has drained (each gives up on its stragglers at the drain deadline).
    pub async fn shutdown(&self) {
        let mut tasks: Vec<JoinHandle<()>> = lock(&self.active)
            .drain()
            .map(|(_, a)| {
                let _ = a.stop.send(true);
                a.task
            })
            .collect();
        tasks.append(&mut lock(&self.draining));
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
    fn new(spec: &sluice_bundle::Listener, tls: Option<Arc<EdgeTls>>) -> Self {
        let idle_timeout = spec.idle_timeout_or_default().get();
        let http2 = spec.http2.clone().unwrap_or_default();
        let mut builder = auto::Builder::new(TokioExecutor::new()).http2_only();
        builder
            .http2()
            .timer(TokioTimer::new())
            // Pings find dead peers; HTTP/2 connections are not closed merely for being idle.
            .keep_alive_interval(idle_timeout)
            .keep_alive_timeout(H2_PING_TIMEOUT)
            .max_concurrent_streams(http2.max_concurrent_streams_or_default())
            // CONTINUATION frames of one header block are bounded by it too.
            .max_header_list_size(http2.max_header_list_size_or_default() as u32)
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
        Self {
            builder,
            idle_timeout,
            overload: spec.overload.clone(),
            log_sample: spec.access_log.as_ref().map_or(0.0, sluice_bundle::AccessLog::effective_sample),
            tls,
            proxy_protocol: spec.proxy_protocol == Some(true),
            per_client: spec.max_connections_per_client.unwrap_or(0),
            trusted: spec.trusted_proxies.clone().into(),
            transforms: {
                let request = HeaderRules::compile(spec.request_headers.as_ref(), "", "");
                let response = HeaderRules::compile(spec.response_headers.as_ref(), "", "");
                (request.is_some() || response.is_some())
                    .then(|| Arc::new(ListenerTransforms { request, response }))
            },
        }
    }
}

/// What an accept loop serves.
struct Accepting<S> {
    name: String,
    listener: TcpListener,
    settings: Arc<ArcSwap<Settings>>,
    state: Arc<ListenerState>,
    shared: Arc<S>,
}

async fn accept_loop<S: Serve>(accepting: Accepting<S>, mut stop: watch::Receiver<bool>) {
    let Accepting { name, listener, settings, state, shared } = accepting;
    // Each connection holds a receiver: changed, it finishes what is in flight and closes.
    let (graceful, _) = watch::channel(false);
    let mut connections = Connections::default();
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    if let Some(task) = dispatch(&name, tcp, peer, &settings.load(), &state, &shared, &graceful) {
                        connections.add(task);
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let open = graceful.receiver_count();
    if open > 0 {
        tracing::info!(listener = %name, connections = open, "draining connections");
    }
    graceful.send_replace(true);
    if tokio::time::timeout(shared.drain_timeout(), graceful.closed()).await.is_err() {
        tracing::warn!(listener = %name, "drain deadline passed with connections still open; closing them");
        connections.abort_all();
    }
}

/// The connection tasks an accept loop started, so stragglers can be closed at the drain
/// deadline. Finished tasks are pruned as the list grows.
#[derive(Default)]
struct Connections {
    tasks: Vec<AbortHandle>,
    prune_at: usize,
}

impl Connections {
    fn add(&mut self, task: AbortHandle) {
        if self.tasks.len() >= self.prune_at {
            self.tasks.retain(|t| !t.is_finished());
            self.prune_at = (self.tasks.len() * 2).max(64);
        }
        self.tasks.push(task);
    }

    fn abort_all(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// Hands a new connection to the worker serving the fewest connections. One acceptor making an
/// explicit choice spreads connections evenly; workers racing on a shared socket do not (one
/// grabs a whole burst).
fn dispatch<S: Serve>(
    name: &str,
    tcp: TcpStream,
    peer: SocketAddr,
    settings: &Settings,
    state: &Arc<ListenerState>,
    shared: &Arc<S>,
    graceful: &watch::Sender<bool>,
) -> Option<AbortHandle> {
    let _ = tcp.set_nodelay(true);
    let tcp = match tcp.into_std() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot hand over a connection");
            return None;
        }
    };
    let (worker, load) = shared.workers().least_loaded();
    let (builder, idle_timeout) = (settings.builder.clone(), settings.idle_timeout);
    let (shared, mut drain, state, edge) =
        (shared.clone(), graceful.subscribe(), state.clone(), settings.tls.clone());
    let (proxy_protocol, per_client, trusted) =
        (settings.proxy_protocol, settings.per_client, settings.trusted.clone());
    let name: Box<str> = name.into();
    let task = worker.spawn(async move {
        let _load = load;
        let mut tcp = match TcpStream::from_std(tcp) {
            Ok(t) => t,
            Err(e) => return tracing::warn!(%peer, error = %e, "worker cannot take a connection"),
        };
        // Behind a load balancer the client is who its PROXY header names.
        let peer = if proxy_protocol {
            // Boxed: its peek buffer stays out of every connection's task.
            match Box::pin(proxy_protocol::read(&mut tcp, idle_timeout)).await {
                Ok(proxy_protocol::Header::Proxied(client)) => client,
                Ok(proxy_protocol::Header::Local) => peer,
                Err(why) => return state.refuse(&name, peer, Refused::ProxyProtocol(why)),
            }
        } else {
            peer
        };
        let _slot = match per_client {
            0 => None,
            limit => match state.enter(peer.ip(), limit) {
                Some(slot) => Some(slot),
                None => return state.refuse(&name, peer, Refused::PerClientLimit),
            },
        };
        let trusted = trusted.iter().any(|net| net.contains(peer.ip())).then_some(trusted);
        let (mut io, tls) = match edge {
            None => (MaybeTls::Plain(tcp), None),
            Some(edge) => match edge.accept(tcp, &state.tls).await {
                Ok((stream, facts)) => (MaybeTls::Tls(Box::new(stream)), Some(facts)),
                // Counted by reason; logged at debug, as scanners make plenty.
                Err(failure) => {
                    return tracing::debug!(%peer, reason = failure.as_str(), "TLS handshake failed");
                }
            },
        };
        let mut buf = BytesMut::with_capacity(8 * 1024);
        // ALPN settles it over TLS; otherwise the first bytes do.
        let http2 = if tls.as_ref().is_some_and(|t| t.h2) {
            true
        } else {
            match tokio::time::timeout(idle_timeout, opens_with_preface(&mut io, &mut buf)).await {
                Ok(Ok(Some(http2))) => http2,
                Ok(Ok(None) | Err(_)) => return,
                Err(_) => return tracing::debug!(%peer, "closing a connection that sent nothing"),
            }
        };
        let strict = Arc::new(StrictState::default());
        let conn = Arc::new(shared.connection(peer, trusted, strict.clone(), state, tls));
        if !http2 {
            h1::serve::<S>(io, buf, conn.clone(), strict.clone(), idle_timeout, drain).await;
        } else {
            let io = TokioIo::new(Rewind { head: buf.freeze(), inner: io });
            let svc = {
                let conn = conn.clone();
                service_fn(move |req: Request<Incoming>| S::request(conn.clone(), req.map(ClientBody::Http2)))
            };
            let served = builder.serve_connection(io, svc);
            tokio::pin!(served);
            let ended = tokio::select! {
                ended = served.as_mut() => ended,
                _ = drain.changed() => {
                    served.as_mut().graceful_shutdown();
                    served.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        // A refused head the request path never got to answer: count and log it with the
        // proxy's own refusals.
        if let Some(why) = strict.unanswered() {
            S::refused_by_parser(conn, why);
        }
    });
    Some(task.abort_handle())
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the first bytes tell HTTP/2 (the preface) from HTTP/1.1; `None` if the client
/// closed first.
async fn opens_with_preface(tcp: &mut MaybeTls, buf: &mut BytesMut) -> io::Result<Option<bool>> {
    use tokio::io::AsyncReadExt as _;
    loop {
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] {
            return Ok(Some(false));
        }
        if n == PREFACE.len() {
            return Ok(Some(true));
        }
        if tcp.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// A connection whose first bytes were already read: they are read again first.
struct Rewind {
    head: Bytes,
    inner: MaybeTls,
}

impl AsyncRead for Rewind {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.head.is_empty() {
            let n = this.head.len().min(buf.remaining());
            buf.put_slice(&this.head.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
