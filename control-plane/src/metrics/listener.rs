//! The metrics listener: `/metrics` and `/livez` over HTTP/1.1 on a port of their own, so
//! Prometheus and probes need no gRPC. Read-only. On loopback it may be plain and open; beyond
//! loopback `main` gives it TLS (the gRPC listener's certificate) and a token, which everything but
//! `/livez` needs, unless the operator passed `--insecure-plaintext`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_tls::{ServerFiles, Watched};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::service::ControlPlane;

/// How the metrics listener is protected beyond loopback.
#[derive(Default, Clone)]
pub struct Guard {
    /// HTTPS only, with these files.
    pub tls: Option<Arc<Watched<ServerFiles>>>,
    /// `Authorization: Bearer <token>` required for everything but `/livez`.
    pub token: Option<String>,
}

/// Serves `listener` until `shutdown` changes; returns its address.
pub fn serve(
    cp: Arc<ControlPlane>,
    listener: TcpListener,
    guard: Guard,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => (tcp, peer),
                    Err(e) => {
                        // Out of file descriptors, most likely: back off instead of spinning.
                        tracing::debug!(error = %e, "metrics listener cannot accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let (tcp, peer) = tcp;
            let (cp, guard) = (cp.clone(), guard.clone());
            tokio::spawn(async move {
                let io = match sluice_tls::server::accept(tcp, guard.tls.as_ref()).await {
                    Ok(io) => io,
                    Err(e) => {
                        cp.metrics.tls_handshake_failed();
                        return tracing::debug!(%peer, error = %e, "metrics listener: TLS handshake failed");
                    }
                };
                let token = guard.token.clone();
                let svc = service_fn(move |req| {
                    let (cp, token) = (cp.clone(), token.clone());
                    async move { Ok::<_, Infallible>(handle(&cp, token.as_deref(), req).await) }
                });
                let mut http = http1::Builder::new();
                http.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
                let _ = http.serve_connection(TokioIo::new(io), svc).await;
            });
        }
    });
    tracing::info!(address = %bound, "metrics listener serving");
    Ok(bound)
}

async fn handle(cp: &ControlPlane, token: Option<&str>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(token) = token
        && req.uri().path() != "/livez"
        && !bearer_is(&req, token)
    {
        let mut resp = text(StatusCode::UNAUTHORIZED, "metrics token required\n".into());
        resp.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        resp.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = text(StatusCode::OK, super::render(cp).await);
            resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(super::CONTENT_TYPE));
            resp
        }
        "/livez" => text(StatusCode::OK, "ok\n".into()),
        path => text(StatusCode::NOT_FOUND, format!("no endpoint {path}; try /metrics or /livez\n")),
    }
}

/// Whether the request carries `Bearer <token>`, compared in constant time.
fn bearer_is(req: &Request<Incoming>, token: &str) -> bool {
    let sent = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    sent.is_some_and(|s| {
        let (a, b) = (s.trim().as_bytes(), token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
