//! Test harness: real upstream servers on 127.0.0.1:0, the real `sluice-proxy` binary, and a
//! plain HTTP client. Waits poll with deadlines; nothing sleeps to synchronise.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// An upstream HTTP/1.1 + h2c server with a few behaviours chosen by path:
/// - `/slow/<ms>`: answers after that many milliseconds;
/// - `/bytes/<n>`: streams n bytes in 64 KiB chunks;
/// - `/upload`: reads the body as it streams and answers with its length;
/// - anything else: JSON describing the request (method, path, headers) and the upstream's name.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (n, h, s, c) = (name.to_owned(), hits.clone(), seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (n, h, s) = (n.clone(), h.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (n, h, s) = (n.clone(), h.clone(), s.clone());
                        async move { Ok::<_, std::convert::Infallible>(upstream_handle(&n, &h, &s, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { name: name.to_owned(), addr, hits, connections, seen, task }
    }

    /// Connections this upstream has accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests this upstream has received.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// What it saw of each request: `{method, path, headers}`.
    pub fn seen(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops accepting; the port is closed.
    pub fn stop(self) -> SocketAddr {
        self.task.abort();
        self.addr
    }
}

async fn upstream_handle(
    name: &str,
    hits: &AtomicUsize,
    seen: &Mutex<Vec<Value>>,
    req: Request<Incoming>,
) -> Response<Body> {
    hits.fetch_add(1, Ordering::SeqCst);
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
    let record = json!({"upstream": name, "method": req.method().as_str(), "path": req.uri().to_string(), "headers": headers, "version": format!("{:?}", req.version())});
    seen.lock().unwrap().push(record.clone());
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
}

impl Proxy {
    /// Writes `config` (YAML) and starts the proxy on it, with the admin listener on a free port.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &str, args: &[&str]) -> Self {
        let dir = temp_dir();
        let path = dir.join("config.yaml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
            .arg("--config-file")
            .arg(&path)
            .args(["--admin-listen", "127.0.0.1:0", "--log-format", "json", "--watch-interval", "100ms"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice-proxy starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut proxy = Self { child, dir, config: path, admin: "0.0.0.0:0".parse().unwrap(), logs };
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
    let dir = std::env::temp_dir().join(format!(
        "sluice-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
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
