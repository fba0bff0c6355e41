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
