//! Active health checks: each endpoint of a pool with `health_check` gets `GET path` every
//! interval (plus jitter, so a fleet's checks do not arrive in step), on a fresh connection, in
//! the pool's protocol. The result feeds [`EndpointHealth::check_result`]; the request path only
//! ever reads the outcome.
//!
//! [`EndpointHealth::check_result`]: crate::resilience::outlier::EndpointHealth::check_result

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderValue, USER_AGENT};
use http::{Request, Uri};
use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use sluice_bundle::{HealthCheck, UpstreamProtocol};
use sluice_tls::rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use super::tls::PoolTls;
use crate::body::wire::Io;
use crate::resilience::outlier::EndpointHealth;

/// Where an endpoint's check results go: its lasting state, which the pool keeps.
pub(super) trait Checked: Send + Sync {
    fn health(&self) -> &EndpointHealth;
}

/// One endpoint to check.
pub(super) struct Target {
    pub pool: Arc<str>,
    pub address: Box<str>,
    pub socket: Option<SocketAddr>,
    /// The pool's TLS and the name this endpoint's certificate must have: checks speak TLS too.
    pub tls: Option<(PoolTls, ServerName<'static>)>,
    pub state: Arc<dyn Checked>,
}

/// Running checks; they stop when this is dropped.
#[derive(Debug)]
pub(super) struct Checks {
    /// What they were started with: a change restarts them.
    pub config: (HealthCheck, UpstreamProtocol, Option<PoolTls>, Vec<String>),
    tasks: Vec<AbortHandle>,
}

impl Checks {
    /// Starts one check loop per target on the current runtime.
    pub fn start(
        cfg: &HealthCheck,
        protocol: UpstreamProtocol,
        tls: Option<PoolTls>,
        targets: Vec<Target>,
    ) -> Self {
        let addresses = targets.iter().map(|t| t.address.to_string()).collect();
        let tasks =
            targets.into_iter().map(|t| tokio::spawn(run(t, cfg.clone(), protocol)).abort_handle()).collect();
        Self { config: (cfg.clone(), protocol, tls, addresses), tasks }
    }
}

impl Drop for Checks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn run(target: Target, cfg: HealthCheck, protocol: UpstreamProtocol) {
    let interval = cfg.interval_or_default().get();
    let jitter = cfg.jitter_or_default().get();
    let (healthy, unhealthy) = (cfg.healthy_threshold_or_default(), cfg.unhealthy_threshold_or_default());
    // Spread the first checks over the jitter too, so a reload does not check everything at once.
    tokio::time::sleep(jitter.mul_f64(fastrand::f64())).await;
    loop {
        let (passed, what) = check(&target, &cfg, protocol).await;
        match target.state.health().check_result(passed, what.clone(), healthy, unhealthy) {
            Some(true) => {
                tracing::info!(pool = %target.pool, endpoint = %target.address, %what, "health check passing: endpoint back in rotation");
            }
            Some(false) => {
                tracing::warn!(pool = %target.pool, endpoint = %target.address, %what, "health check failing: endpoint out of rotation");
            }
            None => {}
        }
        tokio::time::sleep(interval + jitter.mul_f64(fastrand::f64())).await;
    }
}

/// One check: whether it passed, and what happened in a few words.
async fn check(target: &Target, cfg: &HealthCheck, protocol: UpstreamProtocol) -> (bool, String) {
    let timeout = cfg.timeout_or_default();
    let expected = cfg.expected_status_or_default();
    match tokio::time::timeout(timeout.get(), probe(target, cfg, protocol)).await {
        Err(_) => (false, format!("no answer within {timeout}")),
        Ok(Err(e)) => (false, e),
        Ok(Ok(status)) if expected.contains(status) => (true, format!("status {status}")),
        Ok(Ok(status)) => (false, format!("status {status}, expected {expected}")),
    }
}

/// Connects, sends the check request and returns the response status.
async fn probe(target: &Target, cfg: &HealthCheck, protocol: UpstreamProtocol) -> Result<u16, String> {
    let tcp = match target.socket {
        Some(addr) => TcpStream::connect(addr).await,
        None => TcpStream::connect(&*target.address).await,
    }
    .map_err(|e| format!("connect failed: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let io = match &target.tls {
        // The check's own timeout bounds the handshake.
        Some((tls, name)) => {
            let deadline = tokio::time::Instant::now() + cfg.timeout_or_default().get();
            let stream = tls.handshake(tcp, name, protocol, deadline).await;
            Io::Tls(Box::new(stream.map_err(|why| format!("TLS handshake failed: {why}"))?))
        }
        None => Io::Plain(tcp),
    };
    let io = TokioIo::new(io);
    let host = cfg.host.as_deref().unwrap_or(&target.address);
    let host = HeaderValue::from_str(host).map_err(|_| format!("invalid host {host:?}"))?;
    let mut req = Request::get(&cfg.path)
        .header(USER_AGENT, "sluice-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let failed = |e: hyper::Error| format!("request failed: {e}");
    let status = match protocol {
        UpstreamProtocol::Http1 => {
            req.headers_mut().insert(HOST, host);
            req.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            let (mut sender, conn) = http1::handshake(io).await.map_err(failed)?;
            tokio::spawn(conn);
            sender.send_request(req).await.map_err(failed)?.status()
        }
        UpstreamProtocol::Http2 => {
            let uri = format!("http://{}{}", host.to_str().unwrap_or_default(), cfg.path);
            *req.uri_mut() = uri.parse::<Uri>().map_err(|e| e.to_string())?;
            let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(failed)?;
            tokio::spawn(conn);
            sender.send_request(req).await.map_err(failed)?.status()
        }
    };
    Ok(status.as_u16())
}
