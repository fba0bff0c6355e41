//! Clients that attack slowly: bodies sent a few bytes at a time hold no upstream capacity, and
//! bodies that stall or trickle are cut off with 408.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

/// One listener limited to `cap` requests in progress, and a pool limited to `cap` requests,
/// routed to `up`; `route_extra` adds route fields.
fn capped(up: &Upstream, cap: u32, route_extra: &str) -> String {
    format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:0', overload: {{max_concurrent_requests: {cap}, max_queued: 0}}}}\n\
         pools:\n  - {{name: p, endpoints: [{{address: '{}'}}], circuit_breaker: {{max_requests: {cap}}}}}\n\
         routes:\n  - {{name: r, pool: p{route_extra}}}\n",
        up.addr
    )
}

/// A connection from `127.0.0.<last>` that sends a POST head promising `length` bytes and then
/// the first `sent` bytes of it.
async fn slow_post(proxy: SocketAddr, last: u8, length: usize, sent: &[u8]) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 0)).unwrap();
    let mut s = socket.connect(proxy).await.unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(sent).await.unwrap();
    s
}

/// Reads what the proxy sends until it closes the connection.
async fn answer(mut s: TcpStream, within: Duration) -> (Duration, String) {
    let started = Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut buf))
        .await
        .expect("the proxy closes the connection")
        .ok();
    (started.elapsed(), String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test]
async fn slow_bodies_hold_no_upstream_capacity() {
    const SLOW: usize = 300;
    const CAP: u32 = 20;
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&capped(&up, CAP, ""));
    let addr = proxy.listener("public").await;

    // Far more slow uploads than the listener and the pool have room for, from four addresses.
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        slow.push(slow_post(addr, 2 + (i % 4) as u8, 4096, b"a few bytes").await);
    }

    // Ordinary requests, with and without bodies, all get through meanwhile.
    let c = client();
    let url = format!("http://{addr}");
    for i in 0..40 {
        let req = if i % 2 == 0 {
            request("GET", &format!("{url}/ok/{i}")).body(full("")).unwrap()
        } else {
            request("POST", &format!("{url}/upload")).body(full(vec![b'x'; 10_000])).unwrap()
        };
        let (status, _, body) = send(&c, req).await;
        assert_eq!(status, StatusCode::OK, "request {i} during the attack: {body}");
    }
    assert_eq!(up.hits(), 40, "no slow upload reached the upstream");

    // The slow uploads still get their answers once their bodies are whole.
    let mut s = slow.pop().unwrap();
    s.write_all(&vec![b'b'; 4096 - b"a few bytes".len()]).await.unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200", "a slow upload that completes is served");
    drop(slow);

    // The same attack on a route that streams bodies from their first byte fills the slots.
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&capped(&up, CAP, ", request_body: {buffer: 0}"));
    let addr = proxy.listener("public").await;
    let mut slow = Vec::new();
    // More than the slots: some may be shed while others take them.
    for i in 0..CAP as usize + 10 {
        slow.push(slow_post(addr, 2 + (i % 4) as u8, 4096, b"a few bytes").await);
    }
    let mut deadline = Deadline::after(scaled(Duration::from_secs(5)));
    loop {
        let req = request("GET", &format!("http://{addr}/ok")).body(full("")).unwrap();
        let (status, _, body) = send(&c, req).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        // A slow upload that arrived while this request held a slot was shed: one more.
        slow.push(slow_post(addr, 2 + (slow.len() % 4) as u8, 4096, b"a few bytes").await);
        deadline.tick(|| format!("streaming slow bodies never filled the slots: {status} {body}")).await;
    }
    drop(slow);
}

#[tokio::test]
async fn a_stalled_or_trickling_body_gets_408_and_frees_its_slots() {
    let up = Upstream::start("up").await;
    // One slot: a request still holding it would turn the next one away with 503.
    let proxy =
        Proxy::start(&capped(&up, 1, ", request_body: {buffer: 1KiB, read_timeout: 500ms, min_rate: 200}"));
    let addr = proxy.listener("public").await;
    let within = scaled(Duration::from_secs(5));

    // Stalls within the part read early: never reaches the upstream.
    let s = slow_post(addr, 1, 100, b"0123456789").await;
    let (waited, text) = answer(s, within).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("no request body bytes for 500ms"), "{text}");
    assert!(text.contains("\"category\":\"client_timeout\""), "{text}");
    assert!(waited < scaled(Duration::from_secs(2)), "cut off after {waited:?}");
    assert_eq!(up.hits(), 0);

    // Trickles: 10 bytes every 200 ms (50 bytes a second, under the minimum of 200), each gap
    // shorter than the read timeout.
    let mut s = slow_post(addr, 1, 1000, b"").await;
    let started = Instant::now();
    let mut refused = false;
    while started.elapsed() < within {
        if s.write_all(b"0123456789").await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut probe = [0u8; 1];
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(1), s.peek(&mut probe)).await {
            refused = true;
            break;
        }
    }
    assert!(refused, "a body at 50 bytes per second went on for {:?}", started.elapsed());
    let (_, text) = answer(s, within).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("slower than 200 bytes per second"), "{text}");
    assert_eq!(up.hits(), 0);

    // Larger than the early part: it goes upstream, then stalls. The upstream request is
    // abandoned and the slots it held are free again.
    let s = slow_post(addr, 1, 100_000, &[b'z'; 2048]).await;
    let (_, text) = answer(s, within).await;
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert_eq!(up.hits(), 1, "the upload had started upstream");
    let (status, _, body) =
        send(&client(), request("GET", &format!("http://{addr}/after")).body(full("")).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "the one slot is free again: {body}");

    // Each refusal is counted as a client timeout.
    let scrape = scrape(&proxy).await;
    let timeouts = value(
        &scrape,
        "sluice_listener_errors_total",
        &[("listener", "public"), ("category", "client_timeout")],
    );
    assert_eq!(timeouts, 3.0);
}

#[tokio::test]
async fn bodies_read_early_go_upstream_whole() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&capped(&up, 8, ""));
    let url = format!("http://{}", proxy.listener("public").await);
    let c = client();
    // Chunked, with a length, empty, and over the early part (streams on after 64 KiB).
    for (what, body, len) in [
        ("chunked", trickle(5, Duration::from_millis(20)), None),
        ("sized", full(vec![b'y'; 30_000]), Some(30_000u64)),
        ("empty", full(""), Some(0)),
        ("large", zeros(1 << 20), Some(1 << 20)),
    ] {
        let (status, _, seen) = send(&c, request("POST", &format!("{url}/upload")).body(body).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{what}: {seen}");
        if let Some(len) = len {
            assert_eq!(seen["received"], len, "{what}");
        } else {
            assert!(seen["received"].as_u64().unwrap() > 0, "{what}: {seen}");
        }
    }
}

/// Sends one request on `s` (keep-alive) and reads its answer's status line.
async fn status_on(s: &mut TcpStream, extra: &str) -> Option<String> {
    s.write_all(format!("GET /ok HTTP/1.1\r\nHost: a\r\n{extra}\r\n").as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    (n > 0).then(|| text.lines().next().unwrap_or_default().to_owned())
}

async fn connect_from(proxy: SocketAddr, last: u8) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 0)).unwrap();
    socket.connect(proxy).await.unwrap()
}

#[tokio::test]
async fn one_client_address_gets_at_most_its_connections() {
    let up = Upstream::start("up").await;
    let config = format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:0', max_connections_per_client: 3}}\n\
         pools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\nroutes:\n  - {{name: r, pool: p}}\n",
        up.addr
    );
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(addr, 2).await;
        assert_eq!(status_on(&mut s, "").await.as_deref(), Some("HTTP/1.1 200 OK"));
        held.push(s);
    }
    // A fourth from the same address is closed unanswered; other addresses are not affected.
    let mut fourth = connect_from(addr, 2).await;
    assert_eq!(status_on(&mut fourth, "").await, None, "the fourth connection is refused");
    let mut other = connect_from(addr, 3).await;
    assert_eq!(status_on(&mut other, "").await.as_deref(), Some("HTTP/1.1 200 OK"));
    // Once one closes, the address may open another.
    drop(held.pop());
    eventually!(Duration::from_secs(5), {
        let mut s = connect_from(addr, 2).await;
        status_on(&mut s, "").await.as_deref() == Some("HTTP/1.1 200 OK")
    });
    let refused = value(
        &scrape(&proxy).await,
        "sluice_listener_connections_refused_total",
        &[("listener", "public"), ("reason", "per_client_limit")],
    );
    assert!(refused >= 1.0, "{refused}");
    assert!(
        proxy.logs().iter().any(|l| l.contains("max_connections_per_client") && l.contains("127.0.0.2")),
        "the refusal is logged with the client"
    );
}

#[tokio::test]
async fn the_proxy_protocol_names_the_client() {
    let up = Upstream::start("up").await;
    let config = format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:0', proxy_protocol: true, max_connections_per_client: 1, access_log: {{}}}}\n\
         pools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\nroutes:\n  - {{name: r, pool: p}}\n",
        up.addr
    );
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;
    let seen_for = |s: &str| {
        let body: serde_json::Value = serde_json::from_str(&s[s.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        body["headers"]["x-forwarded-for"][0].as_str().unwrap().to_owned()
    };
    let exchange = |header: Vec<u8>| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&header).await.unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok();
        String::from_utf8_lossy(&out).into_owned()
    };
    // Version 1, and version 2 with a TLV after the addresses.
    let text = exchange(b"PROXY TCP4 203.0.113.7 127.0.0.1 5000 80\r\n".to_vec()).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(seen_for(&text), "203.0.113.7");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x10".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 9, 127, 0, 0, 1, 0x0f, 0xa0, 0, 80, 0x04, 0x00, 0x01, 0xaa]);
    let text = exchange(v2).await;
    assert_eq!(seen_for(&text), "198.51.100.9");
    eventually!(
        Duration::from_secs(5),
        proxy.stdout_lines().iter().any(|l| l.contains("\"client_ip\":\"198.51.100.9\""))
    );

    // Without a header the connection is closed unanswered, and counted.
    let text = exchange(Vec::new()).await;
    assert_eq!(text, "", "a request without a PROXY header is not served");

    // The per-client limit counts the client the header names.
    let mut first = TcpStream::connect(addr).await.unwrap();
    first.write_all(b"PROXY TCP4 203.0.113.50 127.0.0.1 1 80\r\n").await.unwrap();
    assert_eq!(status_on(&mut first, "").await.as_deref(), Some("HTTP/1.1 200 OK"));
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(b"PROXY TCP4 203.0.113.50 127.0.0.1 2 80\r\n").await.unwrap();
    assert_eq!(status_on(&mut second, "").await, None, "the same client behind the balancer");
    let text = exchange(b"PROXY TCP4 203.0.113.51 127.0.0.1 3 80\r\n".to_vec()).await;
    assert!(text.starts_with("HTTP/1.1 200"), "another client: {text}");

    let s = scrape(&proxy).await;
    let refused = |reason| {
        value(&s, "sluice_listener_connections_refused_total", &[("listener", "public"), ("reason", reason)])
    };
    assert_eq!((refused("proxy_protocol"), refused("per_client_limit")), (1.0, 1.0));
}

#[tokio::test]
async fn trusted_proxies_name_the_client_and_its_scheme() {
    let up = Upstream::start("up").await;
    let config = format!(
        "listeners:\n  - {{name: behind-lb, address: '127.0.0.1:0', trusted_proxies: ['127.0.0.0/8']}}\n  \
         - {{name: direct, address: '127.0.0.1:0'}}\n\
         pools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\n\
         routes:\n  - {{name: r, pool: p, require_tls: true, rate_limit: {{requests_per_second: 1, burst: 1, key: source_ip}}}}\n",
        up.addr
    );
    let proxy = Proxy::start(&config);
    let (behind, direct) = (proxy.listener("behind-lb").await, proxy.listener("direct").await);
    let get = |addr: SocketAddr, xff: &'static str, xfp: &'static str| async move {
        let req = request("GET", &format!("http://{addr}/ok"))
            .header("x-forwarded-for", xff)
            .header("x-forwarded-proto", xfp)
            .body(full(""))
            .unwrap();
        send(&client(), req).await
    };
    // The balancer says the client came over HTTPS: no redirect; the client is the address the
    // balancer appended, not the one the client claimed.
    let (status, _, body) = get(behind, "192.0.2.1, 198.51.100.1", "https").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(body["headers"]["x-forwarded-for"][0], "192.0.2.1, 198.51.100.1, 127.0.0.1");
    // The rate limit keys on that client: another client has its own bucket, the same one not.
    assert_eq!(get(behind, "198.51.100.2", "https").await.0, StatusCode::OK);
    assert_eq!(get(behind, "203.0.113.1, 198.51.100.1", "https").await.0, StatusCode::TOO_MANY_REQUESTS);
    // What a client says to a listener that trusts no one changes nothing.
    let (status, headers, _) = get(direct, "198.51.100.3", "https").await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert!(headers["location"].to_str().unwrap().starts_with("https://"));
}
