//! A plain HTTP client for tests, and request bodies that behave like slow or large clients.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Frame;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Every body the client sends and the upstream answers with.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A pooled HTTP/1.1 client.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Body>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// A client that speaks HTTP/2 without TLS (h2c, prior knowledge).
pub fn h2_client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// GET `url`: status and body text. Panics if the exchange fails.
pub async fn get(url: &str) -> (StatusCode, String) {
    let resp = client().get(url.parse().unwrap()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// GET `url`: the body of a 2xx answer, or what went wrong (`502 Bad Gateway: <body>`, or the
/// connection error).
pub async fn try_get(url: &str) -> Result<String, String> {
    let resp = client().get(url.parse().unwrap()).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() { Ok(text) } else { Err(format!("{status}: {text}")) }
}

/// Sends `req`; status, headers and body as JSON (or `null` if not JSON).
pub async fn send(client: &Client, req: Request<Body>) -> (StatusCode, http::HeaderMap, Value) {
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Sends `req` and reads the whole response, giving up after `within`: status, headers and body.
/// A failed exchange is an `Err` saying what happened (no response in time, connection closed).
pub async fn try_send(
    client: &Client,
    req: Request<Body>,
    within: Duration,
) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| format!("request failed: {e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| format!("response body failed: {e:?}"))?.to_bytes();
        Ok((parts.status, parts.headers, body))
    };
    tokio::time::timeout(within, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no response within {within:?}")))
}

pub fn request(method: &str, url: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}

// === bodies ===

pub fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// A body fed through a channel.
pub(crate) struct Channel(pub(crate) tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Channel {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A body of `chunks` pieces of 1 KiB, one every `every`: a slow upload.
pub fn trickle(chunks: usize, every: Duration) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        for _ in 0..chunks {
            tokio::time::sleep(every).await;
            if tx.send(Bytes::from(vec![b'u'; 1024])).await.is_err() {
                return;
            }
        }
    });
    Channel(rx).boxed()
}

/// A body of `n` zero bytes, produced 64 KiB at a time as it is read.
pub fn zeros(n: u64) -> Body {
    Zeros { left: n, chunk: Bytes::from(vec![0u8; 64 * 1024]) }.boxed()
}

struct Zeros {
    left: u64,
    chunk: Bytes,
}

impl http_body::Body for Zeros {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let take = self.left.min(self.chunk.len() as u64);
        self.left -= take;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..take as usize)))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}
