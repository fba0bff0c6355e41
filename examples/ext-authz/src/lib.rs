//! An example external authorization server: Envoy's `envoy.service.auth.v3.Authorization/Check`
//! (the API OPA's `opa-envoy-plugin` serves) over plaintext h2c, deciding with a small [`Policy`].
//!
//! [`Authz`] is the gRPC service (the binary serves it with tonic). [`start`] runs one in-process
//! on 127.0.0.1:0 for tests, and its [`AuthzHandle`] slows it down, makes it fail, counts and
//! records the requests it was asked, and crashes it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice_proto::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use sluice_proto::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tonic::codegen::Service;
use tonic::{Code, Request, Response, Status};

mod policy;
#[cfg(test)]
mod tests;

pub use policy::{
    CHECKED_HEADER, Decision, HeaderMatch, NO_MATCH, Policy, REASON_HEADER, Rule, http_request,
    request_header,
};

/// How many of the latest `CheckRequest`s a server keeps for [`AuthzHandle::requests`].
pub const RECENT: usize = 32;

/// The `Authorization` service: the policy, plus the knobs an [`AuthzHandle`] turns.
#[derive(Clone)]
pub struct Authz {
    state: Arc<State>,
}

struct State {
    policy: Mutex<Arc<Policy>>,
    delay: Mutex<Duration>,
    error: Mutex<Option<Code>>,
    calls: AtomicU64,
    recent: Mutex<VecDeque<CheckRequest>>,
}

/// A server started by [`start`]. Dropping it crashes the server, like [`AuthzHandle::stop`].
pub struct AuthzHandle {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

/// Starts a server on 127.0.0.1 (a free port) deciding with `policy`.
///
/// # Panics
/// If no port on 127.0.0.1 can be bound.
pub async fn start(policy: Policy) -> AuthzHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    let authz = Authz::new(policy);
    let state = authz.state.clone();
    let (stop, stopped) = oneshot::channel();
    let server = tokio::spawn(serve(listener, authz.into_service(), stopped));
    AuthzHandle { addr, state, stop: Some(stop), server }
}

/// Serves h2c connections until `stop` fires (or its sender is dropped), then closes the listener
/// and every connection at once, in-flight calls included: a crash, not a drain.
async fn serve(listener: TcpListener, service: AuthorizationServer<Authz>, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| service.clone().call(request));
            let connection = http2::Builder::new(TokioExecutor::new());
            if let Err(error) = connection.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%error, "connection");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    connections.shutdown().await;
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Authz ===

impl Authz {
    pub fn new(policy: Policy) -> Authz {
        Authz {
            state: Arc::new(State {
                policy: Mutex::new(Arc::new(policy)),
                delay: Mutex::new(Duration::ZERO),
                error: Mutex::new(None),
                calls: AtomicU64::new(0),
                recent: Mutex::new(VecDeque::with_capacity(RECENT)),
            }),
        }
    }

    /// The tonic service to add to a `tonic::transport::Server`.
    pub fn into_service(self) -> AuthorizationServer<Authz> {
        AuthorizationServer::new(self)
    }
}

#[tonic::async_trait]
impl Authorization for Authz {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let request = request.into_inner();
        self.state.calls.fetch_add(1, Ordering::SeqCst);
        {
            let mut recent = lock(&self.state.recent);
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(request.clone());
        }
        let delay = *lock(&self.state.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(code) = *lock(&self.state.error) {
            tracing::info!(?code, "answering with an injected error");
            return Err(Status::new(code, "injected error"));
        }
        let policy = lock(&self.state.policy).clone();
        let decision = policy.decide(&request);
        let (method, path) = http_request(&request).map_or(("", ""), |http| (&*http.method, &*http.path));
        tracing::info!(allow = decision.allow, rule = ?decision.rule, reason = %decision.reason, method, path, "decision");
        Ok(Response::new(decision.response))
    }
}

// === impl AuthzHandle ===

impl AuthzHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for a tonic `Channel` or `AuthorizationClient::connect`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Decides the next calls with `policy`.
    pub fn set_policy(&self, policy: Policy) {
        *lock(&self.state.policy) = Arc::new(policy);
    }

    /// Waits this long before answering each call (zero: answer at once).
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// Answers every call with this gRPC error instead of a decision (after any delay); `None`
    /// decides again.
    pub fn set_error(&self, code: Option<Code>) {
        *lock(&self.state.error) = code;
    }

    /// Check calls received so far, errors included.
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// The latest [`RECENT`] `CheckRequest`s, oldest first.
    pub fn requests(&self) -> Vec<CheckRequest> {
        lock(&self.state.recent).iter().cloned().collect()
    }

    /// The latest `CheckRequest`.
    pub fn last_request(&self) -> Option<CheckRequest> {
        lock(&self.state.recent).back().cloned()
    }

    /// Crashes the server: stops listening (new connections are refused) and closes every
    /// connection, in-flight calls included. Returns once all are closed.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.server).await;
    }
}

impl Drop for AuthzHandle {
    fn drop(&mut self) {
        // Without the sender the server stops by itself; abort in case no one polls it again.
        self.stop.take();
        self.server.abort();
    }
}
