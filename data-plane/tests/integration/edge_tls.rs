//! The public edge: TLS listeners, tried with real rustls clients (and raw bytes where a client
//! would refuse to misbehave): certificates by SNI, ALPN, client certificates per route, 421,
//! `require_tls`, XFCC, refused handshakes counted by reason, bad files NACKed, rotation under
//! load; and HTTP/2's abuse limits (rapid reset, ping floods, too many streams).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_parse::Scrape;
use serde_json::Value;
use sluice_tls::pki::{Authority, Issued, Leaf};
use sluice_tls::rustls::pki_types::ServerName;
use sluice_tls::rustls::pki_types::pem::PemObject;
use sluice_tls::rustls::{self, ClientConfig, HandshakeKind};
use sluice_tls::tokio_rustls::TlsConnector;
use sluice_tls::tokio_rustls::client::TlsStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// A CA for servers, one for clients, and the files a test's config names.
struct Pki {
    dir: PathBuf,
    servers: Authority,
    clients: Authority,
}

/// What a client saw of a TLS exchange.
struct Seen {
    status: StatusCode,
    version: Version,
    headers: http::HeaderMap,
    body: Value,
}

impl Pki {
    fn new() -> Self {
        let dir = temp_dir();
        let (servers, clients) = (Authority::new("server CA").unwrap(), Authority::new("client CA").unwrap());
        std::fs::write(dir.join("servers.pem"), &servers.cert_pem).unwrap();
        std::fs::write(dir.join("clients.pem"), &clients.cert_pem).unwrap();
        Self { dir, servers, clients }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// Issues a server certificate for `dns` (and 127.0.0.1), written as `<name>.crt/.key`.
    fn server(&self, name: &str, dns: &[&str], key_pem: Option<String>) -> Issued {
        let issued = self
            .servers
            .issue(&Leaf {
                common_name: name.into(),
                dns: dns.iter().map(|d| (*d).to_owned()).collect(),
                ips: vec!["127.0.0.1".parse().unwrap()],
                server: true,
                valid_days: 30,
                key_pem,
                ..Leaf::default()
            })
            .unwrap();
        self.write(name, &issued);
        issued
    }

    fn write(&self, name: &str, issued: &Issued) {
        // Beside and renamed, as Kubernetes and cert-manager do: no read sees half a file.
        for (ext, text) in [("crt", &issued.cert_pem), ("key", &issued.key_pem)] {
            let tmp = self.dir.join(format!("{name}.{ext}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.dir.join(format!("{name}.{ext}"))).unwrap();
        }
    }

    /// A client certificate named `cn`, from the client CA (or `ca`).
    fn client_identity(&self, cn: &str, ca: Option<&Authority>) -> (PathBuf, PathBuf) {
        let issued = ca
            .unwrap_or(&self.clients)
            .issue(&Leaf {
                common_name: cn.into(),
                uris: vec![format!("spiffe://example.test/{cn}")],
                client: true,
                valid_days: 30,
                ..Leaf::default()
            })
            .unwrap();
        let (cert, key) =
            (self.dir.join(format!("client-{cn}.crt")), self.dir.join(format!("client-{cn}.key")));
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        (cert, key)
    }

    /// A client trusting the server CA, offering `alpn`, presenting `me`.
    fn client(&self, alpn: &[&str], me: Option<&(PathBuf, PathBuf)>) -> Arc<ClientConfig> {
        let files = sluice_tls::ClientFiles {
            ca: self.dir.join("servers.pem"),
            identity: me.cloned(),
            alpn: alpn.iter().map(|a| a.as_bytes().to_vec()).collect(),
        };
        sluice_tls::Watched::load("test", files).unwrap().current()
    }
}

/// A client that accepts any certificate, to see which one a name gets (the proxy's own
/// `insecure_skip_verify` client).
fn any_cert_client() -> Arc<ClientConfig> {
    let files = sluice_tls::UpstreamFiles { ca: None, identity: None, alpn: vec![], verify: false };
    sluice_tls::Watched::load("test", files).unwrap().current()
}

/// A client that speaks TLS 1.2 only, trusting the server CA.
fn tls12_client(pki: &Pki) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(pki.dir.join("servers.pem")).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder_with_provider(sluice_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

async fn connect(
    addr: std::net::SocketAddr,
    sni: &str,
    config: &Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(config.clone()).connect(name, tcp).await
}

/// The certificate the server presented: its common name.
fn served_cn(tls: &TlsStream<TcpStream>) -> String {
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    sluice_tls::CertInfo::parse(leaf).unwrap().common_name.unwrap()
}

/// One request on `tls`, HTTP/2 if ALPN agreed on it; `Err` if the exchange failed.
async fn exchange(
    tls: TlsStream<TcpStream>,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Seen, String> {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let mut req = Request::builder().method(method);
    req = if h2 { req.uri(format!("https://{host}{path}")) } else { req.uri(path).header("host", host) };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<bytes::Bytes>::new()).unwrap();
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        send.send_request(req).await
    };
    let resp = resp.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Seen {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

async fn get(
    addr: std::net::SocketAddr,
    sni: &str,
    config: &Arc<ClientConfig>,
    host: &str,
    path: &str,
) -> Result<Seen, String> {
    let tls = connect(addr, sni, config).await.map_err(|e| e.to_string())?;
    exchange(tls, "GET", host, path, &[]).await
}

/// Handshake failures of listener `public` for `reasons`, summed.
fn failed(s: &Scrape, reasons: &[&str]) -> f64 {
    reasons
        .iter()
        .map(|r| value(s, "sluice_tls_handshake_failures_total", &[("listener", "public"), ("reason", r)]))
        .sum()
}

/// `/metrics` once `ready` holds (or after 5 s): a refused handshake is counted as its connection
/// closes, so the client may see the close first.
async fn scrape_when(proxy: &Proxy, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + scaled(Duration::from_secs(5));
    loop {
        let s = scrape(proxy).await;
        if ready(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn tls_listener(certificates: &str, extra: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: '127.0.0.1:0'\n    access_log: {{}}\n    tls:\n      certificates:\n{certificates}{extra}"
    )
}

/// A TLS listener serving `cert` and `key`, and one route to `up`.
fn one_certificate(cert: &str, key: &str, up: &Upstream) -> String {
    let certs = format!("        - {{cert_file: '{cert}', key_file: '{key}'}}\n");
    format!(
        "{}pools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\nroutes:\n  - {{name: r, pool: p}}\n",
        tls_listener(&certs, ""),
        up.addr
    )
}

#[tokio::test]
async fn sni_picks_the_certificate_alpn_brings_http2_and_upstreams_learn_https() {
    let pki = Pki::new();
    pki.server("a", &["a.test"], None);
    pki.server("b", &["b.test"], None);
    pki.server("wild", &["*.w.test"], None);
    let rsa =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rsa-2048.key")).unwrap();
    pki.server("rsa", &["rsa.test"], Some(rsa));
    let up = Upstream::start("up").await;
    let certs = format!(
        "        - {{cert_file: '{a}.crt', key_file: '{a}.key', server_names: [a.test]}}\n\
         \x20       - {{cert_file: '{b}.crt', key_file: '{b}.key', default: true}}\n\
         \x20       - {{cert_file: '{w}.crt', key_file: '{w}.key'}}\n\
         \x20       - {{cert_file: '{r}.crt', key_file: '{r}.key', server_names: [rsa.test]}}\n",
        a = pki.path("a"),
        b = pki.path("b"),
        w = pki.path("wild"),
        r = pki.path("rsa"),
    );
    let config = format!(
        "{}pools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\nroutes:\n  - {{name: r, pool: p}}\n",
        tls_listener(&certs, ""),
        up.addr
    );
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;
    let (h1, h2) = (pki.client(&["http/1.1"], None), pki.client(&["h2", "http/1.1"], None));

    // Each name gets its certificate, verified by a real client against the name it asked for.
    for (sni, cn) in [("a.test", "a"), ("b.test", "b"), ("x.w.test", "wild"), ("rsa.test", "rsa")] {
        let tls = connect(addr, sni, &h1).await.unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(served_cn(&tls), cn, "{sni}");
        let seen = exchange(tls, "GET", sni, "/hello", &[("x-forwarded-proto", "http")]).await.unwrap();
        assert_eq!((seen.status, seen.version), (StatusCode::OK, Version::HTTP_11), "{sni}");
        assert_eq!(seen.headers["x-upstream"], "up");
        assert_eq!(seen.body["headers"]["x-forwarded-proto"][0], "https", "the client's value is replaced");
    }
    // No SNI (an address) and an unknown name get the default.
    assert_eq!(served_cn(&connect(addr, "127.0.0.1", &h1).await.unwrap()), "b");
    let any = any_cert_client();
    assert_eq!(served_cn(&connect(addr, "nobody.test", &any).await.unwrap()), "b");
    assert_eq!(served_cn(&connect(addr, "a.b.w.test", &any).await.unwrap()), "b", "one label per wildcard");

    // ALPN h2: HTTP/2 over TLS.
    let tls = connect(addr, "a.test", &h2).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let seen = exchange(tls, "GET", "a.test", "/h2", &[]).await.unwrap();
    assert_eq!((seen.status, seen.version), (StatusCode::OK, Version::HTTP_2));
    assert_eq!(seen.body["path"], "/h2");

    // TLS 1.2 still works; a second connection resumes the first one's session.
    let tls12 = tls12_client(&pki);
    let tls = connect(addr, "a.test", &tls12).await.unwrap();
    assert_eq!(tls.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    exchange(tls, "GET", "a.test", "/", &[]).await.unwrap();
    let first = connect(addr, "b.test", &h1).await.unwrap();
    exchange(first, "GET", "b.test", "/", &[]).await.unwrap();
    let again = connect(addr, "b.test", &h1).await.unwrap();
    assert_eq!(again.get_ref().1.handshake_kind(), Some(HandshakeKind::Resumed));

    let s = scrape(&proxy).await;
    assert_eq!(
        value(&s, "sluice_tls_handshakes_total", &[("listener", "public"), ("version", "TLSv1.2")]),
        1.0
    );
    assert!(
        value(&s, "sluice_tls_handshakes_total", &[("listener", "public"), ("version", "TLSv1.3")]) >= 9.0
    );
    let expiry = value(
        &s,
        "sluice_tls_certificate_expiry_timestamp_seconds",
        &[("role", "listener"), ("listener", "public"), ("cert_file", &format!("{}.crt", pki.path("rsa")))],
    );
    let in_days = (expiry - std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_secs_f64()) / 86_400.0;
    assert!((29.0..=30.0).contains(&in_days), "{in_days}");

    // `/listeners` shows what is served: each certificate, its names and expiry, the handshakes.
    let listeners = proxy.admin_json("/listeners").await;
    let tls = &listeners["listeners"][0]["tls"];
    let certs = tls["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 4, "{tls}");
    assert_eq!(certs[0]["server_names"], serde_json::json!(["a.test"]));
    assert_eq!(certs[1]["dns_names"], serde_json::json!(["b.test"]));
    assert_eq!((certs[1]["default"].as_bool(), certs[0]["default"].as_bool()), (Some(true), Some(false)));
    assert_eq!(certs[3]["cert_file"], format!("{}.crt", pki.path("rsa")));
    assert!(certs[2]["not_after"].as_str().unwrap().ends_with('Z'), "{tls}");
    assert_eq!(tls["handshakes"]["TLSv1.2"], 1, "{tls}");

    // The access log says how each request came.
    let line =
        wait_for(Duration::from_secs(5), || proxy.stdout_lines().into_iter().find(|l| l.contains("\"/h2\"")))
            .await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (line["tls_version"].as_str(), line["sni"].as_str()),
        (Some("TLSv1.3"), Some("a.test")),
        "{line}"
    );
}

async fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + scaled(within);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn client_certificates_are_checked_per_route_forwarded_as_xfcc_and_never_taken_from_clients() {
    let pki = Pki::new();
    pki.server("open", &["open.test"], None);
    pki.server("strict", &["strict.test"], None);
    let up = Upstream::start("up").await;
    let certs = format!(
        "        - {{cert_file: '{o}.crt', key_file: '{o}.key'}}\n\
         \x20       - {{cert_file: '{s}.crt', key_file: '{s}.key', client_auth: {{ca_file: '{ca}'}}}}\n",
        o = pki.path("open"),
        s = pki.path("strict"),
        ca = pki.path("clients.pem"),
    );
    let optional = format!("      client_auth: {{ca_file: '{}', mode: optional}}\n", pki.path("clients.pem"));
    let config = format!(
        "{}pools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\nroutes:\n\
         \x20 - {{name: ops, match: {{path_prefix: /ops}}, pool: p, client_certificate: {{subject: {{exact: CN=ops}}, san: [{{prefix: 'spiffe://example.test/'}}]}}}}\n\
         \x20 - {{name: open, pool: p}}\n",
        tls_listener(&certs, &optional),
        up.addr
    );
    let mut proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;
    let (ops, dev) = (pki.client_identity("ops", None), pki.client_identity("dev", None));
    let anonymous = pki.client(&["http/1.1"], None);
    let as_ops = pki.client(&["h2"], Some(&ops));
    let as_dev = pki.client(&["http/1.1"], Some(&dev));

    // No certificate: open routes work, and a client's own XFCC never reaches the upstream.
    let tls = connect(addr, "open.test", &anonymous).await.unwrap();
    let seen = exchange(
        tls,
        "GET",
        "open.test",
        "/",
        &[("x-forwarded-client-cert", "Hash=forged;Subject=\"CN=ops\"")],
    )
    .await
    .unwrap();
    assert_eq!(seen.status, StatusCode::OK);
    assert!(seen.body["headers"].get("x-forwarded-client-cert").is_none(), "{}", seen.body);
    let seen = get(addr, "open.test", &anonymous, "open.test", "/ops/x").await.unwrap();
    assert_eq!(
        (seen.status, seen.body["category"].as_str()),
        (StatusCode::FORBIDDEN, Some("client_certificate"))
    );

    // The right certificate opens /ops (over HTTP/2 here), and the upstream learns who it was.
    let tls = connect(addr, "open.test", &as_ops).await.unwrap();
    let seen = exchange(tls, "GET", "open.test", "/ops/x", &[("x-forwarded-client-cert", "Hash=forged")])
        .await
        .unwrap();
    assert_eq!(seen.status, StatusCode::OK, "{}", seen.body);
    let xfcc = seen.body["headers"]["x-forwarded-client-cert"][0].as_str().unwrap().to_owned();
    assert!(xfcc.starts_with("Hash="), "{xfcc}");
    assert!(xfcc.contains(";Subject=\"CN=ops\";URI=spiffe://example.test/ops"), "{xfcc}");
    assert_eq!(seen.body["headers"]["x-forwarded-client-cert"].as_array().unwrap().len(), 1);

    // Another verified certificate is not enough for /ops.
    let seen = get(addr, "open.test", &as_dev, "open.test", "/ops/x").await.unwrap();
    assert_eq!(seen.status, StatusCode::FORBIDDEN);
    assert!(seen.body["error"].as_str().unwrap().contains("subject does not match"), "{}", seen.body);

    // A connection made for open.test may not carry requests for strict.test: 421.
    let seen = get(addr, "open.test", &as_ops, "strict.test", "/").await.unwrap();
    assert_eq!(
        (seen.status, seen.body["category"].as_str()),
        (StatusCode::MISDIRECTED_REQUEST, Some("misdirected"))
    );
    // However the host is spelled: routes read `STRICT.test.:443` as strict.test.
    for host in ["strict.test:443", "STRICT.test.", "Strict.Test.:8443"] {
        let seen = get(addr, "open.test", &anonymous, host, "/").await.unwrap();
        assert_eq!(seen.status, StatusCode::MISDIRECTED_REQUEST, "{host}");
    }
    // strict.test itself requires a certificate in the handshake.
    assert_eq!(get(addr, "strict.test", &as_dev, "strict.test", "/").await.unwrap().status, StatusCode::OK);
    let refused = get(addr, "strict.test", &anonymous, "strict.test", "/").await;
    assert!(refused.is_err(), "no certificate, no exchange");
    // A certificate from another CA is refused in the handshake, even where it is optional.
    let rogue = Authority::new("rogue CA").unwrap();
    let forged = pki.client_identity("ops-forged", Some(&rogue));
    let refused =
        get(addr, "open.test", &pki.client(&["http/1.1"], Some(&forged)), "open.test", "/ops/x").await;
    assert!(refused.is_err(), "a foreign certificate gets nothing");

    let hits = up.hits();
    let s = scrape_when(&proxy, |s| {
        failed(s, &["client_certificate_missing", "client_certificate_invalid"]) >= 2.0
    })
    .await;
    let failures = |reason| {
        value(&s, "sluice_tls_handshake_failures_total", &[("listener", "public"), ("reason", reason)])
    };
    assert_eq!(failures("client_certificate_missing"), 1.0);
    assert_eq!(failures("client_certificate_invalid"), 1.0);
    assert_eq!(
        value(
            &s,
            "sluice_listener_errors_total",
            &[("listener", "public"), ("category", "client_certificate")]
        ),
        2.0
    );
    assert_eq!(hits, 3, "refused requests never reach the upstream");

    // A verified session resumes, until the client CA or CRL changes: a certificate revoked
    // since must not come back on an old session.
    let as_dev = pki.client(&["http/1.1"], Some(&dev));
    exchange(connect(addr, "open.test", &as_dev).await.unwrap(), "GET", "open.test", "/", &[]).await.unwrap();
    let again = connect(addr, "open.test", &as_dev).await.unwrap();
    assert_eq!(again.get_ref().1.handshake_kind(), Some(HandshakeKind::Resumed));
    exchange(again, "GET", "open.test", "/", &[]).await.unwrap();
    let another = Authority::new("another client CA").unwrap();
    std::fs::write(pki.dir.join("clients.pem"), format!("{}{}", pki.clients.cert_pem, another.cert_pem))
        .unwrap();
    proxy.signal("HUP");
    proxy.wait_for_log("reloaded watched files", Duration::from_secs(10));
    let after = connect(addr, "open.test", &as_dev).await.unwrap();
    assert_eq!(
        after.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Full),
        "the trust changed: no resumption"
    );
}

#[tokio::test]
async fn plain_http_is_redirected_where_a_route_requires_tls() {
    let pki = Pki::new();
    pki.server("shop", &["shop.test"], None);
    let up = Upstream::start("up").await;
    let certs = format!("        - {{cert_file: '{s}.crt', key_file: '{s}.key'}}\n", s = pki.path("shop"));
    let config = format!(
        "{}  - {{name: plain, address: '127.0.0.1:0'}}\npools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\n\
         routes:\n  - {{name: shop, match: {{path_prefix: /shop}}, pool: p, require_tls: true}}\n  - {{name: rest, pool: p}}\n",
        tls_listener(&certs, ""),
        up.addr
    );
    let proxy = Proxy::start(&config);
    let plain = format!("http://{}", proxy.listener("plain").await);
    let c = client();
    let send = async |method: &str, host: &str, path: &str| {
        let req = request(method, &format!("{plain}{path}")).header("host", host).body(full("x")).unwrap();
        send(&c, req).await
    };
    let (status, headers, _) = send("GET", "shop.test:8080", "/shop/cart?item=7").await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "https://shop.test/shop/cart?item=7");
    let (status, headers, _) = send("POST", "shop.test", "/shop/pay").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT, "308 keeps the method and body");
    assert_eq!(headers["location"], "https://shop.test/shop/pay");
    let (status, _, _) = send("GET", "evil.test/x", "/shop").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "nothing odd goes into Location");
    assert_eq!(send("GET", "shop.test", "/other").await.0, StatusCode::OK, "other routes stay plain");
    assert_eq!(up.hits(), 1);

    let tls = pki.client(&["http/1.1"], None);
    let seen =
        get(proxy.listener("public").await, "shop.test", &tls, "shop.test", "/shop/cart").await.unwrap();
    assert_eq!(seen.status, StatusCode::OK, "over TLS the route serves");
}

/// A TLS 1.3-shaped ClientHello naming `sni`, offering `versions` (none: no supported_versions
/// extension, as TLS 1.1 clients send) with `legacy` as its record version.
fn client_hello(sni: &[u8], versions: &[u16], legacy: u16) -> Vec<u8> {
    fn u16s(v: usize) -> [u8; 2] {
        (v as u16).to_be_bytes()
    }
    let mut ext = Vec::new();
    let mut push = |kind: u16, body: Vec<u8>| {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&u16s(body.len()));
        ext.extend_from_slice(&body);
    };
    let mut name = vec![0u8];
    name.extend_from_slice(&u16s(sni.len()));
    name.extend_from_slice(sni);
    let mut list = u16s(name.len()).to_vec();
    list.extend_from_slice(&name);
    push(0x0000, list);
    if !versions.is_empty() {
        let mut v = vec![(versions.len() * 2) as u8];
        for version in versions {
            v.extend_from_slice(&version.to_be_bytes());
        }
        push(0x002b, v);
    }
    push(0x000a, vec![0, 2, 0x00, 0x1d]);
    push(0x000d, vec![0, 4, 0x04, 0x03, 0x08, 0x04]);
    let mut share = vec![0, 36, 0x00, 0x1d, 0, 32];
    share.extend_from_slice(&[9u8; 32]);
    push(0x0033, share);
    let mut body = legacy.to_be_bytes().to_vec();
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0, 4, 0x13, 0x01, 0xc0, 0x2b]);
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&u16s(ext.len()));
    body.extend_from_slice(&ext);
    let mut hs = vec![1, 0];
    hs.extend_from_slice(&u16s(body.len()));
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16s(hs.len()));
    record.extend_from_slice(&hs);
    record
}

/// Sends `bytes` (then closes its side if `close`), and reads until the server closes; what it
/// answered. Fails the test if the server keeps the connection open.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8], close: bool) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(bytes).await.unwrap();
    if close {
        tcp.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(scaled(Duration::from_secs(5)), tcp.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server closed the connection");
    out
}

#[tokio::test]
async fn bad_handshakes_are_closed_counted_by_reason_and_harm_no_one() {
    let pki = Pki::new();
    pki.server("a", &["a.test"], None);
    let up = Upstream::start("up").await;
    let (cert, key) = (format!("{}.crt", pki.path("a")), format!("{}.key", pki.path("a")));
    let proxy = Proxy::start(&one_certificate(&cert, &key, &up));
    let addr = proxy.listener("public").await;
    let good = pki.client(&["h2"], None);
    // A connection that stays open through it all.
    let keep = connect(addr, "a.test", &good).await.unwrap();
    let io = TokioIo::new(keep);
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(conn);

    let answered = raw(addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n", false).await;
    assert!(!answered.starts_with(b"HTTP/"), "no HTTP over a TLS port");
    let hello = client_hello(b"a.test", &[0x0304], 0x0303);
    raw(addr, &hello[..60], true).await;
    raw(addr, &client_hello(&[b'x'; 300], &[0x0304], 0x0303), false).await;
    raw(addr, &client_hello(b"a.test", &[], 0x0302), false).await;
    raw(addr, &client_hello(b"a.test", &[0x0302, 0x0301], 0x0302), false).await;

    let s =
        scrape_when(&proxy, |s| failed(s, &["not_tls", "closed", "malformed", "protocol_version"]) >= 5.0)
            .await;
    let failures = |reason| {
        value(&s, "sluice_tls_handshake_failures_total", &[("listener", "public"), ("reason", reason)])
    };
    assert_eq!(failures("not_tls"), 1.0);
    assert_eq!(failures("closed"), 1.0, "the truncated ClientHello");
    assert_eq!(failures("malformed"), 1.0, "the 300-byte server name");
    assert_eq!(failures("protocol_version"), 2.0, "TLS 1.1 and older");
    assert_eq!(up.hits(), 0, "nothing reached the upstream");

    let req = Request::get("https://a.test/still").body(Empty::<bytes::Bytes>::new()).unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the open connection was not disturbed");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn certificate_files_that_do_not_work_are_refused_with_their_field_and_the_last_good_config_serves() {
    let pki = Pki::new();
    pki.server("a", &["a.test"], None);
    let up = Upstream::start("up").await;
    let config = |key: &str| one_certificate(&format!("{}.crt", pki.path("a")), key, &up);
    let mut proxy = Proxy::start(&config(&format!("{}.key", pki.path("a"))));
    let addr = proxy.listener("public").await;
    let tls = pki.client(&["http/1.1"], None);
    assert_eq!(get(addr, "a.test", &tls, "a.test", "/").await.unwrap().status, StatusCode::OK);

    proxy.write_config(&config(&pki.path("missing.key")));
    proxy.wait_for_log("listeners[0].tls.certificates[0].key_file", Duration::from_secs(10));
    let status = proxy.admin_json("/config").await;
    let errors = status["last_attempt"]["errors"].to_string();
    assert!(
        errors.contains("listeners[0].tls.certificates[0].key_file") && errors.contains("missing.key"),
        "{status}"
    );
    pki.server("other", &["other.test"], None);
    proxy.write_config(&config(&format!("{}.key", pki.path("other"))));
    proxy.wait_for_log("does not match the certificate", Duration::from_secs(10));
    assert_eq!(proxy.version().await, 1, "neither was applied");
    assert_eq!(get(addr, "a.test", &tls, "a.test", "/").await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn a_certificate_rotated_on_disk_reaches_new_handshakes_while_requests_keep_succeeding() {
    let pki = Pki::new();
    // A mounted Kubernetes Secret: the files are links through `..data`, a link to the current
    // version's directory, which an update replaces in one rename.
    let secret = pki.dir.join("secret");
    let version = |name: &str, issued: &Issued| {
        let dir = secret.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), &issued.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &issued.key_pem).unwrap();
        std::os::unix::fs::symlink(name, secret.join("..data_tmp")).unwrap();
        std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    };
    version("v1", &pki.server("a", &["a.test"], None));
    for file in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{file}"), secret.join(file)).unwrap();
    }
    let up = Upstream::start("up").await;
    let (cert, key) = (secret.join("tls.crt"), secret.join("tls.key"));
    let proxy = Proxy::start(&one_certificate(cert.to_str().unwrap(), key.to_str().unwrap(), &up));
    let addr = proxy.listener("public").await;
    let tls = pki.client(&["http/1.1"], None);

    // Clients making new connections and reusing old ones, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, tls) = (stop.clone(), ok.clone(), failed.clone(), tls.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match get(addr, "a.test", &tls, "a.test", "/").await {
                    Ok(seen) if seen.status == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The same names under a new common name, swapped in while the load runs; no restart, no
    // signal: the proxy notices the files changed.
    let old = served_cn(&connect(addr, "a.test", &tls).await.unwrap());
    let rotated = pki.servers.issue(&Leaf {
        common_name: "a-rotated".into(),
        dns: vec!["a.test".into()],
        server: true,
        valid_days: 60,
        ..Leaf::default()
    });
    version("v2", &rotated.unwrap());
    let deadline = Instant::now() + scaled(Duration::from_secs(15));
    loop {
        // A fresh client: a resumed session would show the certificate of the first handshake.
        let fresh = pki.client(&["http/1.1"], None);
        if served_cn(&connect(addr, "a.test", &fresh).await.unwrap()) == "a-rotated" {
            break;
        }
        assert!(Instant::now() < deadline, "the rotated certificate was never served: {:?}", proxy.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(old, "a");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{} requests succeeded", ok.load(Ordering::Relaxed));
    assert!(ok.load(Ordering::Relaxed) > 20);
    let s = scrape(&proxy).await;
    assert_eq!(value(&s, "sluice_tls_reload_failures_total", &[("listener", "public")]), 0.0);
}

/// An HTTP/2 frame: type, flags, stream, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The client preface and an empty SETTINGS frame.
fn h2_preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out
}

/// `GET /` on `stream` (HPACK: `:method GET`, `:scheme http`, `:path /`, `:authority a`).
fn h2_get(stream: u32, end_stream: bool) -> Vec<u8> {
    frame(0x1, 0x4 | u8::from(end_stream), stream, &[0x82, 0x86, 0x84, 0x01, 0x01, b'a'])
}

/// Reads frames until the server closes or `within` passes: `(type, stream, error code)` of each
/// RST_STREAM and GOAWAY.
async fn h2_errors(tcp: &mut TcpStream, within: Duration) -> Vec<(u8, u32, u32)> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + scaled(within);
    let mut chunk = vec![0u8; 16 * 1024];
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 9 {
        let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
        let (kind, stream) =
            (buf[at + 3], u32::from_be_bytes(buf[at + 5..at + 9].try_into().unwrap()) & !(1 << 31));
        let payload = &buf[(at + 9).min(buf.len())..(at + 9 + len).min(buf.len())];
        match kind {
            0x3 if payload.len() == 4 => {
                out.push((kind, stream, u32::from_be_bytes(payload.try_into().unwrap())))
            }
            0x7 if payload.len() >= 8 => {
                out.push((kind, stream, u32::from_be_bytes(payload[4..8].try_into().unwrap())))
            }
            _ => {}
        }
        at += 9 + len;
    }
    out
}

const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[tokio::test]
async fn http2_clients_that_reset_ping_or_open_too_much_are_stopped_and_counted() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:0', http2: {{max_concurrent_streams: 10, max_header_list_size: 1KiB}}}}\npools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\nroutes:\n  - {{name: r, pool: p}}\n",
        up.addr
    ));
    let addr = proxy.listener("public").await;
    let hits = |s: &Scrape, limit| value(s, "sluice_http2_limit_hits_total", &[("limit", limit)]);
    let before = scrape(&proxy).await;

    // Rapid reset (CVE-2023-44487): streams opened and cancelled in one burst.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut burst = h2_preface();
    for i in 0..200u32 {
        burst.extend(h2_get(2 * i + 1, true));
        burst.extend(frame(0x3, 0, 2 * i + 1, &8u32.to_be_bytes()));
    }
    tcp.write_all(&burst).await.unwrap();
    let errors = h2_errors(&mut tcp, Duration::from_secs(5)).await;
    assert!(errors.iter().any(|e| e.0 == GOAWAY && e.2 == ENHANCE_YOUR_CALM), "{errors:?}");
    assert!(up.hits() < 200, "the burst was cut short: {} reached the upstream", up.hits());

    // A PING flood.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut pings = h2_preface();
    for i in 0..150u64 {
        pings.extend(frame(0x6, 0, 0, &i.to_be_bytes()));
    }
    tcp.write_all(&pings).await.unwrap();
    let errors = h2_errors(&mut tcp, Duration::from_secs(5)).await;
    assert!(errors.iter().any(|e| e.0 == GOAWAY && e.2 == ENHANCE_YOUR_CALM), "{errors:?}");

    // More streams at once than the listener allows: the 11th is refused, the connection lives
    // on; and a header list over its size gets 431.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut open = h2_preface();
    for i in 0..11u32 {
        open.extend(h2_get(2 * i + 1, false));
    }
    // `x-big: <2000 bytes>`, a literal without indexing (new name).
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 0x01, b'a', 0x00, 5];
    block.extend_from_slice(b"x-big");
    // HPACK's integer: 127 in the 7-bit prefix, then the rest 7 bits at a time.
    let rest = 2000u32 - 127;
    block.extend_from_slice(&[0x7f, (rest % 128) as u8 | 0x80, (rest / 128) as u8]);
    block.extend_from_slice(&[b'v'; 2000]);
    tcp.write_all(&open).await.unwrap();
    let errors = h2_errors(&mut tcp, Duration::from_secs(2)).await;
    assert!(errors.contains(&(RST_STREAM, 21, REFUSED_STREAM)), "{errors:?}");
    assert!(!errors.iter().any(|e| e.0 == GOAWAY), "{errors:?}");
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut big = h2_preface();
    big.extend(frame(0x1, 0x5, 1, &block));
    tcp.write_all(&big).await.unwrap();
    let errors = h2_errors(&mut tcp, Duration::from_secs(2)).await;
    assert!(!errors.iter().any(|e| e.0 == GOAWAY), "a large header list costs the stream only: {errors:?}");

    let after = scrape(&proxy).await;
    for limit in ["pending_accept_resets", "pings", "concurrent_streams", "header_list_size"] {
        assert!(hits(&after, limit) > hits(&before, limit), "{limit} not counted");
    }
    // Others are served as before.
    let (status, _) = crate::support::get(&format!("http://{addr}/fine")).await;
    assert_eq!(status, StatusCode::OK);
}
