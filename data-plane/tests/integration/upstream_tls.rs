//! Pools that speak TLS to their endpoints: a private CA, HTTP/1.1 and HTTP/2 (by ALPN), pooled
//! TLS connections, certificates refused by reason (`upstream_tls`), verification off, mTLS to
//! the upstream, system roots, checks over TLS, and files the node cannot use.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sluice_tls::pki::{Authority, Issued, Leaf};
use sluice_tls::tokio_rustls::TlsAcceptor;
use sluice_tls::{ClientAuth, Contents, ServerFiles, server_config};
use tokio::net::TcpListener;

use crate::support::*;

/// An HTTPS upstream on `127.0.0.1:0` (HTTP/1.1 and HTTP/2, as ALPN agrees) answering every
/// request with what it saw: `{upstream, version, sni, length}`.
struct TlsUpstream {
    addr: SocketAddr,
    /// TCP connections accepted, handshakes failed or not.
    connections: Arc<AtomicUsize>,
    health_hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// What a test's upstreams and proxy share: a private CA and its files in a directory.
struct Pki {
    ca: Authority,
    dir: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let pki = Self { ca: Authority::new("upstream-ca").unwrap(), dir: temp_dir() };
        pki.write("ca.pem", &pki.ca.cert_pem);
        pki
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self) -> Issued {
        server_leaf(&self.ca)
    }

    /// A client certificate for the proxy, written as `proxy.pem` and `proxy.key`.
    fn client_files(&self) -> (String, String) {
        let leaf = self
            .ca
            .issue(&Leaf { common_name: "proxy".into(), client: true, valid_days: 30, ..Leaf::default() })
            .unwrap();
        (self.write("proxy.pem", &leaf.cert_pem), self.write("proxy.key", &leaf.key_pem))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn server_leaf(ca: &Authority) -> Issued {
    ca.issue(&Leaf {
        common_name: "localhost".into(),
        dns: vec!["localhost".into()],
        ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        server: true,
        valid_days: 30,
        ..Leaf::default()
    })
    .unwrap()
}

impl TlsUpstream {
    /// Serves `cert`; offers `alpn`; requires client certificates from `client_ca` if given.
    async fn start(name: &str, cert: &Issued, alpn: &[&str], client_ca: Option<&Authority>) -> Self {
        let files = ServerFiles {
            cert: "s.pem".into(),
            key: "s.key".into(),
            client_ca: client_ca.map(|_| "ca.pem".into()),
            crl: None,
            client_auth: if client_ca.is_some() { ClientAuth::Required } else { ClientAuth::Off },
            alpn: alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
        };
        let contents = Contents::from_memory(vec![
            ("s.pem".into(), cert.cert_pem.clone().into_bytes()),
            ("s.key".into(), cert.key_pem.clone().into_bytes()),
            ("ca.pem".into(), client_ca.map(|c| c.cert_pem.clone()).unwrap_or_default().into_bytes()),
        ]);
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&files, &contents).unwrap().0));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, health_hits) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (c, h, name) = (connections.clone(), health_hits.clone(), name.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let (acceptor, h, name) = (acceptor.clone(), h.clone(), name.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    let svc = service_fn(move |req| answer(req, name.clone(), sni.clone(), h.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { addr, connections, health_hits, task }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<Incoming>,
    name: String,
    sni: Option<String>,
    health: Arc<AtomicUsize>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path() == "/health" {
        health.fetch_add(1, Ordering::SeqCst);
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
    }
    let version = format!("{:?}", req.version());
    let length = req.into_body().collect().await?.to_bytes().len();
    let doc = json!({"upstream": name, "version": version, "sni": sni, "length": length});
    Ok(Response::new(Full::new(Bytes::from(doc.to_string()))))
}

/// A listener, and per pool a route on `/<pool name>`; each pool is `(name, endpoint, extra
/// fields)`, e.g. `("p", addr, "protocol: http2, tls: {ca_file: /x}")`.
fn config(pools: &[(&str, SocketAddr, String)]) -> String {
    let mut doc = "listeners:\n  - {name: public, address: '127.0.0.1:0'}\npools:\n".to_owned();
    for (name, addr, extra) in pools {
        doc += &format!("  - {{name: {name}, endpoints: [{{address: '{addr}'}}], {extra}}}\n");
    }
    doc += "routes:\n";
    for (name, _, _) in pools {
        doc += &format!("  - {{name: {name}, match: {{path_prefix: /{name}}}, pool: {name}}}\n");
    }
    doc
}

fn ca_file(pki: &Pki) -> String {
    format!("tls: {{ca_file: '{}'}}", pki.path("ca.pem"))
}

/// GET `url` with `c`: one client keeps one connection to the proxy, so its requests stay on
/// one worker and use that worker's upstream connections.
async fn get_json(c: &Client, url: &str) -> (StatusCode, Value) {
    let (status, _, body) = send(c, request("GET", url).body(full("")).unwrap()).await;
    (status, body)
}

#[tokio::test]
async fn a_pool_reaches_its_endpoint_over_tls_with_a_private_ca_on_one_pooled_connection() {
    let c = client();
    let pki = Pki::new();
    let up = TlsUpstream::start("secure", &pki.server(), &["h2", "http/1.1"], None).await;
    let proxy = Proxy::start(&config(&[("p", up.addr, ca_file(&pki))]));
    let url = format!("http://{}/p", proxy.listener("public").await);

    for _ in 0..5 {
        let (status, body) = get_json(&c, &url).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["upstream"], "secure");
        assert_eq!(body["version"], "HTTP/1.1", "ALPN offered http/1.1 only: {body}");
        assert_eq!(body["sni"], Value::Null, "an IP endpoint is verified by its address, sent as no SNI");
    }
    // A body goes out whole over TLS too.
    let req = request("POST", &url).body(zeros(300_000)).unwrap();
    let (status, _, body) = send(&c, req).await;
    assert_eq!((status, &body["length"]), (StatusCode::OK, &json!(300_000)));
    assert_eq!(up.connections(), 1, "one TLS connection, reused for every request");
}

#[tokio::test]
async fn an_http2_pool_speaks_h2_when_the_endpoint_agrees_over_alpn_and_fails_when_it_does_not() {
    let c = client();
    let pki = Pki::new();
    let h2 = TlsUpstream::start("h2", &pki.server(), &["h2", "http/1.1"], None).await;
    let h1_only = TlsUpstream::start("h1", &pki.server(), &["http/1.1"], None).await;
    let no_alpn = TlsUpstream::start("none", &pki.server(), &[], None).await;
    let tls = format!("protocol: http2, tls: {{sni: localhost, ca_file: '{}'}}", pki.path("ca.pem"));
    let proxy = Proxy::start(&config(&[
        ("h2", h2.addr, tls.clone()),
        ("h1", h1_only.addr, tls.clone()),
        ("none", no_alpn.addr, tls),
    ]));
    let base = format!("http://{}", proxy.listener("public").await);

    for _ in 0..5 {
        let (status, body) = get_json(&c, &format!("{base}/h2")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!((&body["version"], &body["sni"]), (&json!("HTTP/2.0"), &json!("localhost")));
    }
    assert_eq!(h2.connections(), 1, "one HTTP/2 connection carries every request");

    let (status, body) = get_json(&c, &format!("{base}/h1")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body["category"], "upstream_tls");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("the endpoint takes none of the ALPN protocols offered"), "{error}");

    // An endpoint that ignores ALPN is not spoken HTTP/2 to on a guess.
    let (status, body) = get_json(&c, &format!("{base}/none")).await;
    assert_eq!((status, &body["category"]), (StatusCode::BAD_GATEWAY, &json!("upstream_tls")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("did not agree to HTTP/2 (ALPN h2)"), "{body}");
}

#[tokio::test]
async fn a_wrong_name_or_an_unknown_ca_is_a_502_upstream_tls_saying_why() {
    let c = client();
    let pki = Pki::new();
    let stranger = Authority::new("stranger").unwrap();
    let named_wrong = TlsUpstream::start("a", &pki.server(), &["http/1.1"], None).await;
    let foreign = TlsUpstream::start("b", &server_leaf(&stranger), &["http/1.1"], None).await;
    let wrong_name = format!("tls: {{sni: api.example.com, ca_file: '{}'}}", pki.path("ca.pem"));
    let proxy =
        Proxy::start(&config(&[("name", named_wrong.addr, wrong_name), ("ca", foreign.addr, ca_file(&pki))]));
    let base = format!("http://{}", proxy.listener("public").await);

    let (status, body) = get_json(&c, &format!("{base}/name")).await;
    assert_eq!((status, &body["category"]), (StatusCode::BAD_GATEWAY, &json!("upstream_tls")), "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("certificate not valid for name \"api.example.com\""), "{error}");
    assert!(body["request_id"].is_string());

    let (status, body) = get_json(&c, &format!("{base}/ca")).await;
    assert_eq!((status, &body["category"]), (StatusCode::BAD_GATEWAY, &json!("upstream_tls")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("certificate issued by an unknown CA"), "{body}");

    let counted = r#"sluice_listener_errors_total{listener="public",category="upstream_tls"} 2"#;
    wait_for(scaled(Duration::from_secs(5)), "upstream_tls counted", async || {
        let text = proxy.metrics_text().await;
        if text.contains(counted) { Ok(()) } else { Err(text) }
    })
    .await;
}

#[tokio::test]
async fn insecure_skip_verify_accepts_a_self_signed_certificate_and_says_so() {
    let c = client();
    let stranger = Authority::new("self-signed").unwrap();
    let up = TlsUpstream::start("x", &server_leaf(&stranger), &["http/1.1"], None).await;
    let mut proxy = Proxy::start(&config(&[("p", up.addr, "tls: {insecure_skip_verify: true}".into())]));
    proxy.wait_for_log("not verified (insecure_skip_verify)", Duration::from_secs(10));
    let (status, body) = get_json(&c, &format!("http://{}/p", proxy.listener("public").await)).await;
    assert_eq!((status, &body["upstream"]), (StatusCode::OK, &json!("x")), "{body}");
    let pools = proxy.admin_json("/pools").await;
    assert_eq!(pools["pools"][0]["tls"], json!({"verify": false, "sni": null, "client_certificate": false}));
}

#[tokio::test]
async fn an_endpoint_requiring_a_client_certificate_gets_the_pools_and_refuses_a_pool_without() {
    let c = client();
    let pki = Pki::new();
    let up = TlsUpstream::start("mtls", &pki.server(), &["http/1.1"], Some(&pki.ca)).await;
    let (cert, key) = pki.client_files();
    let with = format!("tls: {{ca_file: '{}', cert_file: '{cert}', key_file: '{key}'}}", pki.path("ca.pem"));
    let proxy = Proxy::start(&config(&[("with", up.addr, with), ("without", up.addr, ca_file(&pki))]));
    let base = format!("http://{}", proxy.listener("public").await);

    let (status, body) = get_json(&c, &format!("{base}/with")).await;
    assert_eq!((status, &body["upstream"]), (StatusCode::OK, &json!("mtls")), "{body}");

    let (status, body) = get_json(&c, &format!("{base}/without")).await;
    assert_eq!((status, &body["category"]), (StatusCode::BAD_GATEWAY, &json!("upstream_tls")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("refused the handshake"), "{body}");

    // The client certificate's expiry is watched like every other certificate the proxy holds.
    let metrics = proxy.metrics_text().await;
    assert!(
        metrics.contains(
            r#"sluice_tls_certificate_expiry_timestamp_seconds{role="upstream",pool="with",cert_file="#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn without_a_ca_file_the_nodes_system_roots_verify_the_endpoint() {
    let c = client();
    let pki = Pki::new();
    let up = TlsUpstream::start("sys", &pki.server(), &["http/1.1"], None).await;
    // rustls-native-certs takes SSL_CERT_FILE as the system's bundle.
    let proxy = Proxy::start_env(
        &config(&[("p", up.addr, "tls: {sni: localhost}".into())]),
        &[],
        &[("SSL_CERT_FILE", &pki.path("ca.pem"))],
    );
    let (status, body) = get_json(&c, &format!("http://{}/p", proxy.listener("public").await)).await;
    assert_eq!((status, &body["sni"]), (StatusCode::OK, &json!("localhost")), "{body}");
}

#[tokio::test]
async fn health_checks_of_a_tls_pool_speak_tls() {
    let pki = Pki::new();
    let up = TlsUpstream::start("checked", &pki.server(), &["http/1.1"], None).await;
    let extra =
        format!("{}, health_check: {{path: /health, interval: 200ms, timeout: 150ms}}", ca_file(&pki));
    let _proxy = Proxy::start(&config(&[("p", up.addr, extra)]));
    eventually!(scaled(Duration::from_secs(10)), up.health_hits.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn a_tls_file_the_node_cannot_use_refuses_the_config_naming_its_field() {
    let c = client();
    let pki = Pki::new();
    let up = TlsUpstream::start("u", &pki.server(), &["http/1.1"], None).await;
    let mut proxy = Proxy::start(&config(&[("p", up.addr, ca_file(&pki))]));
    let missing = Path::new(&pki.dir).join("missing.key").display().to_string();
    let (cert, _) = pki.client_files();
    let bad =
        format!("tls: {{ca_file: '{}', cert_file: '{cert}', key_file: '{missing}'}}", pki.path("ca.pem"));
    proxy.write_config(&config(&[("p", up.addr, bad)]));
    proxy.wait_for_log("config rejected", Duration::from_secs(10));

    let config = proxy.admin_json("/config").await;
    assert_eq!(config["active"]["version"], 1, "the previous config keeps serving");
    let error = config["last_attempt"]["errors"][0].as_str().unwrap();
    assert!(error.contains(&format!("pools[0].tls.key_file: cannot read {missing}")), "{error}");
    let (status, _) = get_json(&c, &format!("http://{}/p", proxy.listener("public").await)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_changed_ca_file_is_used_without_a_restart_or_a_new_config() {
    let c = client();
    let pki = Pki::new();
    let next = Authority::new("next-ca").unwrap();
    let up = TlsUpstream::start("rotated", &server_leaf(&next), &["http/1.1"], None).await;
    let mut proxy = Proxy::start(&config(&[("p", up.addr, ca_file(&pki))]));
    let url = format!("http://{}/p", proxy.listener("public").await);
    let (status, body) = get_json(&c, &url).await;
    assert_eq!((status, &body["category"]), (StatusCode::BAD_GATEWAY, &json!("upstream_tls")), "{body}");

    // The CA bundle gains the endpoint's CA: re-read at once on SIGHUP (else within 5 s).
    pki.write("ca.pem", &format!("{}{}", pki.ca.cert_pem, next.cert_pem));
    proxy.signal("HUP");
    proxy.wait_for_log("reloaded watched files", Duration::from_secs(10));
    let (status, body) = get_json(&c, &url).await;
    assert_eq!((status, &body["upstream"]), (StatusCode::OK, &json!("rotated")), "{body}");
}

#[tokio::test]
async fn changing_a_pools_tls_settings_retires_its_pooled_connections() {
    let c = client();
    let pki = Pki::new();
    let up = TlsUpstream::start("u", &pki.server(), &["http/1.1"], None).await;
    let proxy = Proxy::start(&config(&[("p", up.addr, ca_file(&pki))]));
    let url = format!("http://{}/p", proxy.listener("public").await);
    for _ in 0..3 {
        assert_eq!(get_json(&c, &url).await.0, StatusCode::OK);
    }
    assert_eq!(up.connections(), 1);

    let named = format!("tls: {{sni: localhost, ca_file: '{}'}}", pki.path("ca.pem"));
    proxy.write_config(&config(&[("p", up.addr, named)]));
    eventually!(scaled(Duration::from_secs(10)), proxy.version().await == 2);
    let (status, body) = get_json(&c, &url).await;
    assert_eq!((status, &body["sni"]), (StatusCode::OK, &json!("localhost")), "a new connection, with SNI");
    assert_eq!(up.connections(), 2);
}
