//! The fake upstream: an HTTP/1.1 + h2c server on `127.0.0.1:0` that answers by path, or with
//! a fixed reply, and misbehaves on request ([`Fault`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::http::{Body, Channel, full, zeros};

/// A misbehaviour an [`Upstream`] applies to every request but `GET /health`.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Behave normally.
    None,
    /// Answer every request with this status and the body `fault`.
    Status(u16),
    /// Answer this share (0 to 1) of requests with the status, the rest normally.
    ErrorRate(f64, u16),
    /// Never answer (the handler sleeps 120 s), keeping the connection open.
    Hang,
    /// Close the connection without a response.
    Reset,
    /// Reset the next n requests, then behave normally.
    ResetFirst(usize),
    /// Wait this long, then answer normally.
    Slow(Duration),
}

/// What an [`Upstream`] answers (when no [`Fault`] says otherwise).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The behaviour the request's path asks for (see [`Upstream`]).
    ByPath,
    /// Its name, as plain text, whatever the path.
    Name,
    /// This JSON text, whatever the path, each `__TS__` in it replaced by a random number (a
    /// field that always differs, like a timestamp).
    Json(String),
}

/// What one upstream shares with its connection tasks.
struct State {
    name: String,
    reply: Reply,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    health: AtomicU16,
    fault: Mutex<Fault>,
    seen: Mutex<Vec<Value>>,
    /// What `/doc` answers (with a fresh `timestamp` and the request's id added).
    doc: Mutex<Value>,
}

// === impl State ===

impl State {
    /// The fault to apply to the request now arriving (`ResetFirst` counts down here).
    fn next_fault(&self) -> Fault {
        let mut fault = self.fault.lock().unwrap();
        match &mut *fault {
            Fault::ErrorRate(share, status) => {
                if fastrand::f64() < *share {
                    Fault::Status(*status)
                } else {
                    Fault::None
                }
            }
            Fault::ResetFirst(0) => {
                *fault = Fault::None;
                Fault::None
            }
            Fault::ResetFirst(n) => {
                *n -= 1;
                if *n == 0 {
                    *fault = Fault::None;
                }
                Fault::Reset
            }
            other => other.clone(),
        }
    }
}

/// An upstream HTTP/1.1 + h2c server on `127.0.0.1:0`. With [`Reply::ByPath`] (what
/// [`Upstream::start`] gives) it behaves by path:
/// - `/slow/<ms>`: answers after that many milliseconds;
/// - `/bytes/<n>`: streams n bytes in 64 KiB chunks;
/// - `/chunked`: two chunks, no length;
/// - `/early`: 413 at once, reading the request body afterwards;
/// - `/stall/<n>`: promises 1 MiB, sends n bytes, then goes quiet;
/// - `/upload`: reads the body as it streams and answers with its length;
/// - `/doc`: the JSON set by [`Upstream::set_doc`] with a fresh `timestamp` and `request_id`;
/// - anything else: JSON describing the request (method, path, headers) and the upstream's name.
///
/// Whatever the reply, `/health` answers the status set by [`Upstream::set_health`] (200 by
/// default), counted apart from other requests and never faulted, and a [`Fault`] set with
/// [`Upstream::set_fault`] overrides the reply for every other request. Every response but a
/// reset carries `x-upstream: <name>`. Dropped, it stops accepting.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<State>,
    connections: Arc<AtomicUsize>,
    /// The tasks serving open connections (finished ones pruned as new ones come); `None` once
    /// killed.
    conn_tasks: Arc<Mutex<Option<Vec<tokio::task::AbortHandle>>>>,
    task: tokio::task::JoinHandle<()>,
}

// === impl Upstream ===

impl Upstream {
    /// An upstream that answers by path.
    pub async fn start(name: &str) -> Self {
        Self::start_with(name, Reply::ByPath).await
    }

    /// An upstream that answers every request with its name.
    pub async fn named(name: &str) -> Self {
        Self::start_with(name, Reply::Name).await
    }

    /// An upstream that answers every request with the JSON `doc` (see [`Reply::Json`]).
    pub async fn json(name: &str, doc: &str) -> Self {
        Self::start_with(name, Reply::Json(doc.to_owned())).await
    }

    pub async fn start_with(name: &str, reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_owned(),
            reply,
            hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            health: AtomicU16::new(200),
            fault: Mutex::new(Fault::None),
            seen: Mutex::new(Vec::new()),
            doc: Mutex::new(json!({})),
        });
        let connections = Arc::new(AtomicUsize::new(0));
        let conn_tasks = Arc::new(Mutex::new(Some(Vec::<tokio::task::AbortHandle>::new())));
        let (st, c, tasks) = (state.clone(), connections.clone(), conn_tasks.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { serve(&st, req).await }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
                match &mut *tasks.lock().unwrap() {
                    Some(tasks) => {
                        tasks.retain(|t| !t.is_finished());
                        tasks.push(conn.abort_handle());
                    }
                    // Killed while this connection was being accepted.
                    None => conn.abort(),
                }
            }
        });
        Self { name: name.to_owned(), addr, state, connections, conn_tasks, task }
    }

    /// Connections this upstream has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests this upstream has received, faulted ones included, `/health` excluded.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// `/health` requests this upstream has received.
    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    /// What it saw of each request but `/health`: `{method, path, headers}`.
    pub fn seen(&self) -> Vec<Value> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Applies `fault` to the requests that arrive from now on.
    pub fn set_fault(&self, fault: Fault) {
        *self.state.fault.lock().unwrap() = fault;
    }

    /// The JSON document `/doc` answers from now on; each answer also carries a random
    /// `timestamp` and the request's `request_id`.
    pub fn set_doc(&self, doc: Value) {
        *self.state.doc.lock().unwrap() = doc;
    }

    /// The status `GET /health` answers from now on (200 at first).
    pub fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::SeqCst);
    }

    /// Stops accepting; the port is closed.
    pub fn stop(self) -> SocketAddr {
        self.task.abort();
        self.addr
    }

    /// Dies like a killed process: stops accepting and drops every open connection, so requests
    /// in flight and pooled connections fail.
    pub fn kill(self) -> SocketAddr {
        self.task.abort();
        for t in self.conn_tasks.lock().unwrap().take().into_iter().flatten() {
            t.abort();
        }
        self.addr
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request: `/health`, or the fault if any, or the reply.
async fn serve(st: &State, req: Request<Incoming>) -> Result<Response<Body>, std::io::Error> {
    let name = st.name.as_str();
    if req.uri().path() == "/health" {
        st.health_hits.fetch_add(1, Ordering::SeqCst);
        let status = StatusCode::from_u16(st.health.load(Ordering::SeqCst))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = Response::new(full(format!("health {}", status.as_u16())));
        *resp.status_mut() = status;
        resp.headers_mut().insert("x-upstream", name.parse().unwrap());
        return Ok(resp);
    }
    st.hits.fetch_add(1, Ordering::SeqCst);
    let record = request_record(name, &req);
    st.seen.lock().unwrap().push(record.clone());
    match st.next_fault() {
        Fault::Reset => return Err(std::io::Error::other("fault: reset")),
        Fault::Status(status) => {
            let mut resp = Response::new(full("fault"));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            resp.headers_mut().insert("x-upstream", name.parse().unwrap());
            return Ok(resp);
        }
        Fault::Hang => tokio::time::sleep(Duration::from_secs(120)).await,
        Fault::Slow(d) => tokio::time::sleep(d).await,
        Fault::None | Fault::ErrorRate(..) | Fault::ResetFirst(_) => {}
    }
    let mut resp = match &st.reply {
        Reply::Name => Response::new(full(name.to_owned())),
        Reply::Json(doc) => {
            let mut resp = Response::new(full(doc.replace("__TS__", &fastrand::u64(..).to_string())));
            resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
            resp
        }
        Reply::ByPath if req.uri().path() == "/doc" => {
            let mut doc = st.doc.lock().unwrap().clone();
            doc["timestamp"] = json!(fastrand::u64(..));
            doc["request_id"] = json!(req.headers().get("x-request-id").and_then(|v| v.to_str().ok()));
            let mut resp = Response::new(full(doc.to_string()));
            resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
            resp
        }
        Reply::ByPath => by_path(name, record, req).await,
    };
    resp.headers_mut().insert("x-upstream", name.parse().unwrap());
    Ok(resp)
}

/// `{upstream, method, path, headers, version}` of a request.
fn request_record(name: &str, req: &Request<Incoming>) -> Value {
    let headers: HashMap<String, Vec<String>> = req
        .headers()
        .keys()
        .map(|k| {
            (
                k.to_string(),
                req.headers()
                    .get_all(k)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect(),
            )
        })
        .collect();
    json!({"upstream": name, "method": req.method().as_str(), "path": req.uri().to_string(), "headers": headers, "version": format!("{:?}", req.version())})
}

async fn by_path(name: &str, record: Value, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let mut resp = if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full(record.to_string()))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        Response::new(zeros(n.parse().unwrap_or(0)))
    } else if path == "/chunked" {
        // No length: hyper sends it chunked.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        tx.send(Bytes::from_static(b"chunk one, ")).await.unwrap();
        tx.send(Bytes::from_static(b"chunk two")).await.unwrap();
        drop(tx);
        Response::new(Channel(rx).boxed())
    } else if path == "/early" {
        // Answers at once and reads the request body afterwards, keeping the connection usable
        // (as servers that drain unwanted bodies do).
        let mut body = req.into_body();
        tokio::spawn(async move { while body.frame().await.is_some() {} });
        let mut resp = Response::new(full("too large"));
        *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        resp
    } else if let Some(n) = path.strip_prefix("/stall/") {
        // Promises 1 MiB, sends `n` bytes, then goes quiet while keeping the connection open.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let _ = tx.send(Bytes::from(vec![b'x'; n.parse().unwrap_or(1)])).await;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(tx);
        });
        let mut resp = Response::new(Channel(rx).boxed());
        resp.headers_mut().insert("content-length", (1u32 << 20).into());
        resp
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut total: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => break,
            }
        }
        Response::new(full(json!({"upstream": name, "received": total}).to_string()))
    } else {
        Response::new(full(record.to_string()))
    };
    resp.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
    resp
}
