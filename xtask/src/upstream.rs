//! Demo upstreams: small HTTP servers that say who they are and echo what they received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;

/// Binds `addr` and serves in the background. A path containing `/slow/<ms>` waits that long
/// first; `/status/<code>` answers with that status; every answer echoes the request as JSON.
pub async fn spawn(name: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind demo upstream {name} on {addr}: {e}"))?;
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else { continue };
            let name = name.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(answer(&name, peer, req).await) }
                });
                let _ =
                    auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    Ok(())
}

async fn answer(name: &str, peer: SocketAddr, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let mut status = StatusCode::OK;
    if let Some((_, ms)) = path.split_once("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(1000))).await;
    } else if let Some((_, code)) = path.split_once("/status/") {
        status = code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::OK);
    }
    let header = |h: &str| req.headers().get(h).and_then(|v| v.to_str().ok());
    let body = json!({
        "upstream": name,
        "method": req.method().as_str(),
        "path": req.uri().to_string(),
        "host": header("host"),
        "request_id": header("x-request-id"),
        "x_forwarded_for": header("x-forwarded-for"),
        "peer": peer.to_string(),
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert("content-type", http::HeaderValue::from_static("application/json"));
    resp
}
