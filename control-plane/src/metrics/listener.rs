//! The metrics listener: `/metrics` and `/livez` over plain HTTP/1.1 on a port of their own, so
//! Prometheus and probes need no gRPC. Read-only; nothing on it needs a token.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::service::ControlPlane;

/// Serves `listener` until `shutdown` changes; returns its address.
pub fn serve(
    cp: Arc<ControlPlane>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        // Out of file descriptors, most likely: back off instead of spinning.
                        tracing::debug!(error = %e, "metrics listener cannot accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let cp = cp.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let cp = cp.clone();
                    async move { Ok::<_, Infallible>(handle(&cp, req).await) }
                });
                let mut http = http1::Builder::new();
                http.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(10));
                let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    tracing::info!(address = %bound, "metrics listener serving");
    Ok(bound)
}

async fn handle(cp: &ControlPlane, req: Request<Incoming>) -> Response<Full<Bytes>> {
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

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
