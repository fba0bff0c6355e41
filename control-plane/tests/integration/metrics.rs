//! The control plane's `/metrics`, scraped from the real binary on a database of its own
//! (`#[sqlx::test]`): applies by result, the fleet's version, data-plane streams, pushes, ACKs and
//! NACKs, data planes by state, and whether the database answers.
//!
//! Run with: `cargo nextest run -p sluice-control-plane --test integration metrics::` (PostgreSQL
//! from `DATABASE_URL`, see `.cargo/config.toml`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use sluice_bundle::sign::SigningKey;
use sluice_proto::v1 as pb;
use sluice_proto::v1::config_service_client::ConfigServiceClient;
use sluice_proto::v1::data_plane_service_client::DataPlaneServiceClient;
use sluice_test_support::{Process, eventually, temp_dir};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const WITHIN: Duration = Duration::from_secs(20);

const VALID: &str = "listeners:\n  - {name: public, address: '127.0.0.1:8080'}\n\
                     pools:\n  - {name: app, endpoints: [{address: '127.0.0.1:9'}]}\n\
                     routes:\n  - {name: all, pool: app}\n";
/// The route names a pool that does not exist.
const INVALID: &str = "listeners:\n  - {name: public, address: '127.0.0.1:8080'}\n\
                       pools:\n  - {name: app, endpoints: [{address: '127.0.0.1:9'}]}\n\
                       routes:\n  - {name: all, pool: nowhere}\n";

#[sqlx::test(migrations = false)]
async fn metrics_count_applies_streams_acks_and_nacks(_: PgPoolOptions, db: PgConnectOptions) {
    let cp = ControlPlane::start(&db, "127.0.0.1:0").await;
    let metrics = cp.metrics.expect("metrics listener");

    // Before anything happens: every apply result is there at zero, and the database answers.
    let s = scrape(metrics).await;
    for result in ["applied", "invalid", "conflict", "error"] {
        assert_eq!(value(&s, "sluice_cp_applies_total", &[("result", result)]), Some(0.0), "{result}");
    }
    assert_eq!(value(&s, "sluice_cp_database_up", &[]), Some(1.0));
    assert_eq!(value(&s, "sluice_cp_streams", &[("fleet", "edge")]), None, "no fleet seen yet");

    let mut api = ConfigServiceClient::connect(cp.grpc_url()).await.unwrap();
    let applied = api.apply(apply_request(VALID, None)).await.unwrap().into_inner();
    assert_eq!(applied.version.unwrap().version, 1);
    let refused = api.apply(apply_request(INVALID, None)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let conflict = api.apply(apply_request(VALID, Some(0))).await.unwrap_err();
    assert_eq!(conflict.code(), Code::Aborted, "{conflict:?}");

    // Two data planes: `a` accepts version 1, `b` refuses it.
    let mut a = DataPlaneStream::open(&cp.grpc_url(), "a").await;
    let mut b = DataPlaneStream::open(&cp.grpc_url(), "b").await;
    let (nonce, version) = a.next_push().await;
    assert_eq!(version, 1);
    a.send(pb::data_plane_message::Kind::Ack(pb::Ack { nonce, version })).await;
    let (nonce, version) = b.next_push().await;
    b.send(pb::data_plane_message::Kind::Nack(pb::Nack {
        nonce,
        version,
        reason: "refused by the test".into(),
        details: Vec::new(),
    }))
    .await;

    let edge = [("fleet", "edge")];
    let s = scrape_until(metrics, |s| {
        value(s, "sluice_cp_acks_total", &edge) == Some(1.0)
            && value(s, "sluice_cp_nacks_total", &edge) == Some(1.0)
            && dataplanes(s, "synced") == Some(1.0)
            && dataplanes(s, "nacked") == Some(1.0)
    })
    .await;
    assert_eq!(value(&s, "sluice_cp_applies_total", &[("result", "applied")]), Some(1.0));
    assert_eq!(value(&s, "sluice_cp_applies_total", &[("result", "invalid")]), Some(1.0));
    assert_eq!(value(&s, "sluice_cp_applies_total", &[("result", "conflict")]), Some(1.0));
    assert_eq!(value(&s, "sluice_cp_applies_total", &[("result", "error")]), Some(0.0));
    assert_eq!(value(&s, "sluice_cp_apply_duration_seconds", &[]), Some(3.0), "every apply is timed");
    assert_eq!(value(&s, "sluice_cp_fleet_version", &edge), Some(1.0));
    assert_eq!(value(&s, "sluice_cp_streams", &edge), Some(2.0));
    assert_eq!(value(&s, "sluice_cp_pushes_total", &edge), Some(2.0));
    assert_eq!(dataplanes(&s, "stale"), Some(0.0));
    assert_eq!(dataplanes(&s, "disconnected"), Some(0.0));
    assert_eq!(value(&s, "sluice_cp_database_up", &[]), Some(1.0));

    // `b` goes away: one stream left, and it shows as disconnected.
    drop(b);
    let s = scrape_until(metrics, |s| {
        value(s, "sluice_cp_streams", &edge) == Some(1.0) && dataplanes(s, "disconnected") == Some(1.0)
    })
    .await;
    assert_eq!(dataplanes(&s, "synced"), Some(1.0));
    assert_eq!(dataplanes(&s, "nacked"), Some(0.0));
    assert_eq!(value(&s, "sluice_cp_nacks_total", &edge), Some(1.0), "counters do not go down");

    // The rest of the listener.
    let (status, _, body) = http(metrics, "GET", "/livez").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(http(metrics, "GET", "/config").await.0, 404);
    assert_eq!(http(metrics, "POST", "/metrics").await.0, 405);
    let (status, headers, body) = http(metrics, "HEAD", "/metrics").await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert!(headers.contains("content-type: text/plain; version=0.0.4; charset=utf-8"), "{headers}");
}

#[sqlx::test(migrations = false)]
async fn metrics_listen_off_serves_no_metrics(_: PgPoolOptions, db: PgConnectOptions) {
    let mut cp = ControlPlane::start(&db, "off").await;
    assert!(cp.metrics.is_none());
    assert_eq!(cp.terminate().await, 0);
    let logs = cp.logs();
    assert!(!logs.iter().any(|l| l.contains("metrics listener")), "{}", logs.join("\n"));
}

/// `--log-format json`: every line is one JSON object (the fields docs/runbook.md lists), and the
/// line about a stored version names its fleet and version.
#[sqlx::test(migrations = false)]
async fn json_logs_are_one_object_a_line_naming_fleet_and_version(_: PgPoolOptions, db: PgConnectOptions) {
    let server = format!("{}:{}", db.get_host(), db.get_port());
    let args = ["--metrics-listen", "off", "--log-format", "json"];
    let mut cp = ControlPlane::start_with(&database_url(&db, &server), &args).await;
    let mut api = ConfigServiceClient::connect(cp.grpc_url()).await.unwrap();
    api.apply(apply_request(VALID, None)).await.unwrap();
    let stored: serde_json::Value = serde_json::from_str(&cp.wait_for_log("version stored").await).unwrap();
    assert_eq!(stored["level"], "INFO", "{stored}");
    assert_eq!(stored["fields"]["message"], "version stored", "{stored}");
    assert_eq!(
        (&stored["fields"]["fleet"], &stored["fields"]["version"]),
        (&"edge".into(), &1.into()),
        "{stored}"
    );
    assert!(stored["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{stored}");
    assert_eq!(cp.terminate().await, 0);
    let logs = cp.logs();
    assert!(logs.len() >= 3, "{logs:?}");
    for line in logs {
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(json["fields"]["message"].is_string() && json["target"].is_string(), "{line}");
    }
}

#[sqlx::test(migrations = false)]
async fn beyond_loopback_metrics_need_tls_and_a_token(_: PgPoolOptions, db: PgConnectOptions) {
    let server = format!("{}:{}", db.get_host(), db.get_port());
    let url = database_url(&db, &server);
    let dir = std::env::temp_dir().join(format!("sluice-cp-metrics-tls-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("signing-key.json");
    std::fs::write(&key, SigningKey::generate().unwrap().to_file()).unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_sluice-control-plane"))
        .args(["--database-url", &url, "--listen", "127.0.0.1:0", "--insecure-allow-anonymous"])
        .args(["--metrics-listen", "0.0.0.0:0", "--signing-key", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refusing to serve metrics on 0.0.0.0:0 beyond loopback without TLS"),
        "{stderr}"
    );

    let ca = sluice_tls::pki::Authority::new("ca").unwrap();
    let leaf = sluice_tls::pki::Leaf {
        common_name: "cp".into(),
        dns: vec!["localhost".into()],
        server: true,
        valid_days: 1,
        ..Default::default()
    };
    let issued = ca.issue(&leaf).unwrap();
    for (name, text) in [("cp.crt", &issued.cert_pem), ("cp.key", &issued.key_pem), ("ca.crt", &ca.cert_pem)]
    {
        std::fs::write(dir.join(name), text).unwrap();
    }
    std::fs::write(dir.join("token"), "scrape-token\n").unwrap();
    let path = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    let (cert, tls_key, token) = (path("cp.crt"), path("cp.key"), path("token"));
    let args = [
        "--metrics-listen",
        "0.0.0.0:0",
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        tls_key.as_str(),
        "--metrics-token-file",
        token.as_str(),
    ];
    let cp = ControlPlane::start_with(&url, &args).await;
    let port = cp.metrics.unwrap().port();
    let files = sluice_tls::ClientFiles { ca: dir.join("ca.crt"), identity: None, alpn: vec![] };
    let client = sluice_tls::Watched::load("test", files).unwrap();
    let https = async |path: &str, auth: Option<&str>| {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = sluice_tls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls =
            sluice_tls::tokio_rustls::TlsConnector::from(client.current()).connect(name, tcp).await.unwrap();
        let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(https("/livez", None).await.starts_with("HTTP/1.1 200"), "probes need no token");
    assert!(https("/metrics", None).await.starts_with("HTTP/1.1 401"));
    assert!(https("/metrics", Some("wrong-token")).await.starts_with("HTTP/1.1 401"));
    let scraped = https("/metrics", Some("scrape-token")).await;
    assert!(scraped.starts_with("HTTP/1.1 200"), "{scraped}");
    assert!(
        scraped.contains("sluice_tls_certificate_expiry_timestamp_seconds{role=\"control_plane_metrics\"}")
    );
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    plain.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WITHIN, plain.read_to_end(&mut answer)).await.unwrap();
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "no plaintext on the TLS port");
    let _ = std::fs::remove_dir_all(dir);
}

#[sqlx::test(migrations = false)]
async fn database_up_follows_the_database(_: PgPoolOptions, db: PgConnectOptions) {
    let forwarder = Forwarder::start(&format!("{}:{}", db.get_host(), db.get_port())).await;
    let url = database_url(&db, &forwarder.addr.to_string());
    let cp = ControlPlane::start_with(&url, &["--metrics-listen", "127.0.0.1:0", "--db-timeout", "1s"]).await;
    let metrics = cp.metrics.unwrap();
    let mut api = ConfigServiceClient::connect(cp.grpc_url()).await.unwrap();
    api.apply(apply_request(VALID, None)).await.unwrap();
    let mut a = DataPlaneStream::open(&cp.grpc_url(), "a").await;
    a.next_push().await;
    scrape_until(metrics, |s| dataplanes(s, "stale") == Some(1.0)).await;

    forwarder.cut();
    let down = api.apply(apply_request(VALID, None)).await.unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    let s = scrape(metrics).await;
    assert_eq!(value(&s, "sluice_cp_database_up", &[]), Some(0.0));
    assert_eq!(value(&s, "sluice_cp_applies_total", &[("result", "error")]), Some(1.0));
    assert_eq!(dataplanes(&s, "stale"), None, "no stale numbers while the database is away");
    assert_eq!(value(&s, "sluice_cp_streams", &[("fleet", "edge")]), Some(1.0), "streams live on");
    assert_eq!(value(&s, "sluice_cp_fleet_version", &[("fleet", "edge")]), Some(1.0));
}

// === the control plane process ===

/// `sluice-control-plane` on its own database, gRPC on a free port.
struct ControlPlane {
    process: Process,
    dir: PathBuf,
    grpc: SocketAddr,
    metrics: Option<SocketAddr>,
}

impl ControlPlane {
    /// Starts it with `--metrics-listen metrics_listen` and waits until it serves.
    async fn start(db: &PgConnectOptions, metrics_listen: &str) -> Self {
        let server = format!("{}:{}", db.get_host(), db.get_port());
        Self::start_with(&database_url(db, &server), &["--metrics-listen", metrics_listen]).await
    }

    /// Starts it on `database_url` with `args` and waits until it serves.
    async fn start_with(database_url: &str, args: &[&str]) -> Self {
        let dir = temp_dir();
        let key = dir.join("signing-key.json");
        std::fs::write(&key, SigningKey::generate().unwrap().to_file()).unwrap();
        let process = Process::spawn(
            "sluice-control-plane",
            Command::new(env!("CARGO_BIN_EXE_sluice-control-plane"))
                .args([
                    "--database-url",
                    database_url,
                    "--listen",
                    "127.0.0.1:0",
                    "--insecure-allow-anonymous",
                ])
                .args(args)
                .arg("--signing-key")
                .arg(&key)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1"),
        );
        let mut cp = Self { process, dir, grpc: "0.0.0.0:0".parse().unwrap(), metrics: None };
        cp.grpc = field(&cp.wait_for_log("control plane serving").await, "addr");
        if !args.contains(&"off") {
            cp.metrics = Some(field(&cp.wait_for_log("metrics listener serving").await, "address"));
        }
        cp
    }

    fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    fn logs(&self) -> Vec<String> {
        self.process.stderr.all()
    }

    async fn wait_for_log(&mut self, needle: &str) -> String {
        self.process.wait_for_log_async(needle, WITHIN).await
    }

    /// SIGTERM; the exit code.
    async fn terminate(&mut self) -> i32 {
        self.process.signal("TERM");
        self.process.wait_exit(WITHIN)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The URL of `db` on the server at `server` (`host:port`).
fn database_url(db: &PgConnectOptions, server: &str) -> String {
    format!("postgres://{}@{server}/{}", db.get_username(), db.get_database().unwrap())
}

/// The value of `name=` in a plain-text log line, or of `fields.name` in a JSON one.
fn field(line: &str, name: &str) -> SocketAddr {
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
        return json["fields"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .parse()
            .unwrap();
    }
    let start =
        line.find(&format!(" {name}=")).unwrap_or_else(|| panic!("no {name} in {line:?}")) + name.len() + 2;
    line[start..].split_whitespace().next().unwrap().parse().unwrap()
}

fn apply_request(document: &str, expect_version: Option<u64>) -> pb::ApplyRequest {
    pb::ApplyRequest {
        fleet: "edge".into(),
        document: document.as_bytes().to_vec(),
        format: pb::DocumentFormat::Yaml as i32,
        expect_version,
        author: "test".into(),
        message: String::new(),
        ..Default::default()
    }
}

// === a way to the database that can be cut ===

/// Forwards TCP connections to the database server until [`Forwarder::cut`].
struct Forwarder {
    addr: SocketAddr,
    tasks: Arc<Mutex<tokio::task::JoinSet<()>>>,
}

impl Forwarder {
    async fn start(server: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = server.to_owned();
        let tasks = Arc::new(Mutex::new(tokio::task::JoinSet::new()));
        let pipes = tasks.clone();
        tasks.lock().unwrap().spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let server = server.clone();
                pipes.lock().unwrap().spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(&server).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        Self { addr, tasks }
    }

    /// Closes every connection and refuses new ones.
    fn cut(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

// === a data plane, by hand ===

/// One data-plane stream of fleet `edge`; ends when dropped.
struct DataPlaneStream {
    tx: mpsc::Sender<pb::DataPlaneMessage>,
    pushes: tonic::Streaming<pb::ControlPlaneMessage>,
}

impl DataPlaneStream {
    async fn open(url: &str, node_id: &str) -> Self {
        let (tx, rx) = mpsc::channel(4);
        let hello = pb::Hello { node_id: node_id.into(), fleet: "edge".into(), ..Default::default() };
        tx.send(pb::DataPlaneMessage { kind: Some(pb::data_plane_message::Kind::Hello(hello)) })
            .await
            .unwrap();
        let mut client = DataPlaneServiceClient::connect(url.to_owned()).await.unwrap();
        let pushes = client.stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Self { tx, pushes }
    }

    /// The next bundle pushed: its nonce and version. Stream settings and freshness
    /// statements in between are skipped.
    async fn next_push(&mut self) -> (String, u64) {
        loop {
            let message =
                tokio::time::timeout(WITHIN, self.pushes.message()).await.unwrap().unwrap().unwrap();
            match message.kind {
                Some(pb::control_plane_message::Kind::Bundle(push)) => {
                    let payload =
                        sluice_bundle::sign::Payload::decode(&push.bundle.unwrap().payload).unwrap();
                    return (push.nonce, payload.version);
                }
                // Stream settings, freshness statements, trust sets.
                Some(_) => {}
                None => panic!("{message:?}"),
            }
        }
    }

    async fn send(&self, kind: pb::data_plane_message::Kind) {
        self.tx.send(pb::DataPlaneMessage { kind: Some(kind) }).await.unwrap();
    }
}

// === scraping ===

/// A request on its own connection: status, the header block (lowercase), the body.
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WITHIN, tcp.read_to_string(&mut response)).await.unwrap().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, _, body) = http(addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// Scrapes until `done` holds (or fails at the deadline with the last scrape).
async fn scrape_until(addr: SocketAddr, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let parse = |text: &str| Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let mut text: String;
    eventually!(
        WITHIN,
        {
            text = http(addr, "GET", "/metrics").await.2;
            done(&parse(&text))
        },
        "metrics never got there:\n{text}"
    );
    parse(&text)
}

/// The value of sample `name` with (at least) `labels`; a histogram's count.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found = s
        .samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)));
    match &found?.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
        Value::Histogram(buckets) => buckets.last().map(|b| b.count),
        other => panic!("{name}: unexpected {other:?}"),
    }
}

fn dataplanes(s: &Scrape, state: &str) -> Option<f64> {
    value(s, "sluice_cp_dataplanes", &[("fleet", "edge"), ("state", state)])
}
