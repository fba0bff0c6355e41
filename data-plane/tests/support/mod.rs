//! Test harness: real upstream servers on 127.0.0.1:0, the real `sluice-proxy` binary, and a
//! plain HTTP client. Waits poll with deadlines; nothing sleeps to synchronise.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, std::io::Error>;

// === upstreams ===

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

/// What one upstream shares with its connection tasks.
struct UpstreamState {
    name: String,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    health: AtomicU16,
    fault: Mutex<Fault>,
    seen: Mutex<Vec<Value>>,
    /// What `/doc` answers (with a fresh `timestamp` and the request's id added).
    doc: Mutex<Value>,
}

impl UpstreamState {
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

/// An upstream HTTP/1.1 + h2c server with a few behaviours chosen by path:
/// - `/slow/<ms>`: answers after that many milliseconds;
/// - `/bytes/<n>`: streams n bytes in 64 KiB chunks;
/// - `/upload`: reads the body as it streams and answers with its length;
/// - `/health`: answers the status set by [`Upstream::set_health`] (200 by default), counted
///   apart from other requests and never faulted;
/// - anything else: JSON describing the request (method, path, headers) and the upstream's name.
///
/// A [`Fault`] set with [`Upstream::set_fault`] overrides these for every request but `/health`.
/// Every response but a reset carries `x-upstream: <name>`.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    connections: Arc<AtomicUsize>,
    /// The tasks serving open connections (finished ones pruned as new ones come); `None` once
    /// killed.
    conn_tasks: Arc<Mutex<Option<Vec<tokio::task::AbortHandle>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState {
            name: name.to_owned(),
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
                        async move { upstream_serve(&st, req).await }
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

/// One request: `/health`, or the fault if any, or the behaviour its path asks for.
async fn upstream_serve(
    st: &UpstreamState,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
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
    if req.uri().path() == "/doc" {
        let mut doc = st.doc.lock().unwrap().clone();
        doc["timestamp"] = json!(fastrand::u64(..));
        doc["request_id"] = json!(req.headers().get("x-request-id").and_then(|v| v.to_str().ok()));
        let mut resp = Response::new(full(doc.to_string()));
        resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
        resp.headers_mut().insert("x-upstream", name.parse().unwrap());
        return Ok(resp);
    }
    Ok(upstream_handle(name, record, req).await)
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

async fn upstream_handle(name: &str, record: Value, req: Request<Incoming>) -> Response<Body> {
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
    resp.headers_mut().insert("x-upstream", name.parse().unwrap());
    resp.headers_mut().insert("keep-alive", "timeout=5".parse().unwrap());
    resp
}

pub fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).map_err(|never| match never {}).boxed()
}

/// A body fed through a channel.
struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

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

// === the proxy process ===

/// `sluice-proxy` running on a config file in its own temp directory.
pub struct Proxy {
    child: Child,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    /// Standard output: the access log.
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    /// Writes `config` (YAML) and starts the proxy on it, with the admin listener on a free port.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &str, args: &[&str]) -> Self {
        Self::start_env(config, args, &[])
    }

    /// Starts the proxy with extra arguments and environment variables.
    pub fn start_env(config: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let dir = temp_dir();
        let path = dir.join("config.yaml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
            .arg("--config-file")
            .arg(&path)
            .args(["--admin-listen", "127.0.0.1:0", "--log-format", "json", "--watch-interval", "100ms"])
            .args(args)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice-proxy starts");
        let collect = |pipe: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let logs = collect(Box::new(child.stderr.take().unwrap()));
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let admin = "0.0.0.0:0".parse().unwrap();
        let mut proxy = Self { child, dir, config: path, admin, logs, stdout };
        let line = proxy.wait_for_log("admin listener serving", Duration::from_secs(20));
        let v: Value = serde_json::from_str(&line).unwrap();
        proxy.admin = v["fields"]["address"].as_str().unwrap().parse().unwrap();
        proxy
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Log lines so far (JSON).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Lines written to standard output so far (the access log).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The admin listener's `/metrics`, as text.
    pub async fn metrics_text(&self) -> String {
        let (status, body) = get(&format!("http://{}/metrics", self.admin)).await;
        assert_eq!(status, StatusCode::OK, "/metrics: {body}");
        body
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_for_log(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.logs().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sluice-proxy exited with {status} before logging {needle:?}:\n{}",
                    self.logs().join("\n")
                );
            }
            assert!(Instant::now() < deadline, "no log line with {needle:?}:\n{}", self.logs().join("\n"));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The bound address of listener `name`, from `/config`.
    pub async fn listener(&self, name: &str) -> SocketAddr {
        let config = self.admin_json("/config").await;
        let l = config["listeners"].as_array().unwrap().iter().find(|l| l["name"] == name);
        l.unwrap_or_else(|| panic!("no listener {name} in {config}"))["bound"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub async fn admin_json(&self, path: &str) -> Value {
        let (status, body) = get(&format!("http://{}{path}", self.admin)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The active config version.
    pub async fn version(&self) -> u64 {
        self.admin_json("/config").await["active"]["version"].as_u64().unwrap()
    }

    /// Rewrites the config file (the proxy notices within its watch interval).
    pub fn write_config(&self, config: &str) {
        // Write beside and rename, as editors and ConfigMaps do, so no read sees half a file.
        let tmp = self.dir.join("config.yaml.tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status().unwrap();
        assert!(ok.success());
    }

    /// Peak resident memory so far, in bytes.
    pub fn peak_rss(&self) -> u64 {
        status_field(self.pid(), "VmHWM:")
    }

    pub fn rss(&self) -> u64 {
        status_field(self.pid(), "VmRSS:")
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "sluice-proxy did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    // Random too: process ids are reused, and an earlier run's leftovers must not be taken.
    let dir = std::env::temp_dir().join(format!(
        "sluice-test-{}-{}-{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

// === clients ===

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// GET `url`; status and body text.
pub async fn get(url: &str) -> (StatusCode, String) {
    let resp = client().get(url.parse().unwrap()).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `req`; status, headers and body as JSON (or `null` if not JSON).
pub async fn send(
    client: &Client<HttpConnector, Body>,
    req: Request<Body>,
) -> (StatusCode, http::HeaderMap, Value) {
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// Sends `req` and reads the whole response, giving up after `within`: status, headers and body.
/// A failed exchange is an `Err` saying what happened (no response in time, connection closed).
pub async fn try_send(
    client: &Client<HttpConnector, Body>,
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

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "condition not met within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
