//! Upstream connections: opened, pooled per worker, reused, and retired.
//!
//! Each endpoint keeps one slot per worker thread. A worker only ever takes connections from its
//! own slot, so a request and the upstream connection it uses live on the same event loop, and
//! the slot's lock is never contended. HTTP/1.1 connections are leased to one request at a time
//! and come back when the response body is finished; an HTTP/2 connection is shared by all the
//! worker's requests to that endpoint.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sluice_bundle::UpstreamProtocol;
use sluice_tls::rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::h1;
use crate::body::wire::{Conn, Io, Pooling, Return};
use crate::body::{RequestBody, UpstreamBody};
use crate::error::ProxyError;
use crate::resilience::breaker::{Breaker, Refusal};
use crate::resilience::retry::RetryPolicy;
use crate::sync::lock;

/// How a pool talks to its endpoints; a change retires the pool's existing connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnSettings {
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    /// `None`: plain TCP.
    pub tls: Option<super::PoolTls>,
}

/// One endpoint's connections, a slot per worker.
#[derive(Debug)]
pub struct Connections {
    slots: Box<[Mutex<Slot>]>,
    /// Bumped when the pool's settings change: leases from before never come back.
    generation: AtomicU64,
}

#[derive(Debug, Default)]
struct Slot {
    /// Idle HTTP/1.1 connections, most recently used last.
    idle: Vec<Idle>,
    http2: Option<http2::SendRequest<RequestBody>>,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

/// A checked-out connection, and whether it had carried requests before.
enum Sender {
    Http1(Conn, bool),
    Http2(http2::SendRequest<RequestBody>, bool),
}

// === impl Connections ===

impl Connections {
    pub fn new(workers: usize) -> Self {
        Self { slots: (0..workers.max(1)).map(|_| Mutex::default()).collect(), generation: AtomicU64::new(0) }
    }

    fn slot(&self, worker: usize) -> &Mutex<Slot> {
        &self.slots[worker % self.slots.len()]
    }

    /// Closes every pooled connection (the pool's settings changed); connections in use are
    /// closed when their exchange ends.
    pub fn retire_all(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        for slot in self.slots.iter() {
            let mut s = lock(slot);
            s.idle.clear();
            s.http2 = None;
        }
    }

    /// Closes this worker's connections that have idled too long or that the upstream closed.
    pub fn reap(&self, worker: usize, idle_timeout: Duration) {
        let mut s = lock(self.slot(worker));
        s.idle.retain_mut(|c| c.since.elapsed() < idle_timeout && c.conn.is_usable());
        if s.http2.as_ref().is_some_and(|h| h.is_closed()) {
            s.http2 = None;
        }
    }

    /// Idle HTTP/1.1 connections across workers (for the admin API).
    pub fn idle_count(&self) -> usize {
        self.slots.iter().map(|s| lock(s).idle.len()).sum()
    }
}

// === impl EndpointState ===

impl Pooling for super::EndpointState {
    /// Pools `conn` for the next request of this worker, unless the pool's settings changed
    /// meanwhile or enough are idle already (then it is closed).
    fn give_back(&self, conn: Conn, worker: usize, max_idle: usize, generation: u64) {
        if self.connections.generation.load(Ordering::Relaxed) != generation {
            return;
        }
        let mut s = lock(self.connections.slot(worker));
        if s.idle.len() < max_idle {
            s.idle.push(Idle { conn, since: Instant::now() });
        }
    }
}

/// A failed send. `unsent` is the request when it never left: it may go elsewhere as it is.
/// `sent` is the head of one that did (its body spent) when the connection gives it back, so a
/// retry can send it again without a copy kept up front.
pub struct SendError {
    pub error: ProxyError,
    pub unsent: Option<Box<Request<RequestBody>>>,
    pub sent: Option<Box<Request<RequestBody>>>,
}

impl SendError {
    /// A failure that keeps nothing of the request.
    pub fn bare(error: ProxyError) -> Self {
        Self { error, unsent: None, sent: None }
    }

    /// Whether `policy` tries again after this failure. A try that reached nobody may go
    /// elsewhere whatever the method; one that may have reached the upstream only if the route
    /// resends its method (`method_allows`).
    pub fn retryable(&self, policy: &RetryPolicy, method_allows: bool) -> bool {
        match &self.error {
            // A failed TLS handshake is a failed connect: the request never went.
            ProxyError::ConnectFailure { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::UpstreamTls { .. } => {
                policy.on_connect_failure && (self.unsent.is_some() || method_allows)
            }
            ProxyError::UpstreamReset { .. } => policy.on_reset && method_allows,
            ProxyError::UpstreamTimeout { .. } => policy.on_timeout && method_allows,
            _ => false,
        }
    }
}

/// Where a send goes: the endpoint, and the pool whose breaker limits its connections.
pub struct Target<'a> {
    pub state: &'a Arc<super::EndpointState>,
    pub address: &'a str,
    pub socket: Option<SocketAddr>,
    /// The name its certificate must have, when the pool speaks TLS.
    pub tls_name: Option<&'a ServerName<'static>>,
    pub pool: &'a str,
    pub breaker: &'a Arc<Breaker>,
}

/// Sends `req` to the endpoint over a pooled or new connection. A request that a reused
/// connection failed to send (closed by the upstream while idle) is retried once on a new one;
/// it never reached the upstream, so this is safe for any method. An HTTP/1.1 connection belongs
/// to the response body, which gives it back once read whole.
pub async fn send(
    target: &Target<'_>,
    settings: &ConnSettings,
    req: Box<Request<RequestBody>>,
) -> Result<Box<Response<UpstreamBody>>, SendError> {
    let (state, address) = (target.state, target.address);
    let worker = crate::worker::current();
    let generation = state.connections.generation.load(Ordering::Relaxed);
    let mut req = req;
    for attempt in 0..2 {
        let pooled = if attempt == 0 { checkout(state, worker, settings.protocol).await } else { None };
        let sender = match pooled {
            Some(s) => s,
            // Boxed: the connect state (TCP connect, handshake) is far larger than the rest of
            // this future, and every request would otherwise carry and copy it.
            None => match Box::pin(connect(target, worker, settings)).await {
                Ok(s) => s,
                Err(error) => return Err(SendError { error, unsent: Some(req), sent: None }),
            },
        };
        match sender {
            Sender::Http1(conn, reused) => {
                let back = Return { pool: state.clone(), worker, max_idle: settings.max_idle, generation };
                match h1::send(conn, req, back, address).await {
                    Ok(resp) => return Ok(Box::new(resp.map(UpstreamBody::Http1))),
                    Err(h1::Failed { unsent: Some(unsent), .. }) if reused && attempt == 0 => req = unsent,
                    Err(h1::Failed { error, unsent, sent }) => {
                        return Err(SendError { error, unsent, sent });
                    }
                }
            }
            Sender::Http2(mut s, reused) => match s.try_send_request(*req).await {
                Ok(resp) => return Ok(Box::new(resp.map(UpstreamBody::Http2))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused && attempt == 0 => req = Box::new(unsent),
                    unsent => {
                        let error = super::classify(&e.into_error(), address);
                        return Err(SendError { error, unsent: unsent.map(Box::new), sent: None });
                    }
                },
            },
        }
    }
    Err(SendError::bare(ProxyError::UpstreamReset { endpoint: address.into() }))
}

/// A ready connection from the worker's slot, if one is there.
async fn checkout(state: &super::EndpointState, worker: usize, protocol: UpstreamProtocol) -> Option<Sender> {
    if protocol == UpstreamProtocol::Http2 {
        let mut h2 = lock(state.connections.slot(worker)).http2.clone()?;
        return h2.ready().await.ok().map(|()| Sender::Http2(h2, true));
    }
    loop {
        let mut conn = lock(state.connections.slot(worker)).idle.pop()?.conn;
        // One the upstream closed (or wrote to) while it idled is dropped, and the next tried.
        if conn.is_usable() {
            return Some(Sender::Http1(conn, true));
        }
    }
}

/// Opens a connection (within the connect timeout); an HTTP/2 one gets its task on this worker.
/// The pool's breaker bounds both the connects in progress and the connections open.
async fn connect(target: &Target<'_>, worker: usize, settings: &ConnSettings) -> Result<Sender, ProxyError> {
    let (state, address, socket) = (target.state, target.address, target.socket);
    let refused = |r: Refusal| ProxyError::CircuitOpen {
        pool: target.pool.into(),
        reason: r.to_string().into(),
        retry_after: 1,
    };
    let _pending = target.breaker.wait_for_connection().map_err(refused)?;
    let slot = target.breaker.open_connection().map_err(refused)?;
    let connecting = async {
        match socket {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect(address).await,
        }
    };
    // One deadline for TCP and TLS: the connect timeout bounds the whole connection setup.
    let deadline = Instant::now() + settings.connect_timeout;
    let tcp = match tokio::time::timeout_at(deadline, connecting).await {
        Err(_) => return Err(ProxyError::ConnectTimeout { endpoint: address.into() }),
        Ok(Err(e)) => {
            return Err(ProxyError::ConnectFailure {
                endpoint: address.into(),
                reason: e.to_string().into(),
            });
        }
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    let io = match (&settings.tls, target.tls_name) {
        (Some(tls), Some(name)) => match tls.handshake(tcp, name, settings.protocol, deadline).await {
            Ok(stream) => Io::Tls(Box::new(stream)),
            Err(reason) => {
                return Err(ProxyError::UpstreamTls { endpoint: address.into(), reason: reason.into() });
            }
        },
        _ => Io::Plain(tcp),
    };
    match settings.protocol {
        UpstreamProtocol::Http1 => Ok(Sender::Http1(Conn::new(io, slot), false)),
        UpstreamProtocol::Http2 => {
            let handshake_failed = |e: hyper::Error| ProxyError::ConnectFailure {
                endpoint: address.into(),
                reason: e.to_string().into(),
            };
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(TokioIo::new(io))
                .await
                .map_err(handshake_failed)?;
            tokio::spawn(async move {
                let _slot = slot;
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
            lock(state.connections.slot(worker)).http2 = Some(sender.clone());
            Ok(Sender::Http2(sender, false))
        }
    }
}
