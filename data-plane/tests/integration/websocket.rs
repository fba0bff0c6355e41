//! WebSocket through the proxy: the handshake passed to an HTTP/1.1 upstream, frames both ways
//! over the tunnel, the idle timeout, and what is never passed (h2c upgrades, mirrored copies).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// RFC 6455 §4.2.2: the accept value for a key.
fn accept(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    );
    STANDARD.encode(digest.as_ref())
}

/// Reads up to the end of an HTTP head; the head and whatever came after it.
async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole head: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A WebSocket echo server: answers the handshake, then sends back each frame's payload in an
/// unmasked frame of the same opcode. Counts handshakes.
pub(crate) async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let count = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let count = count.clone();
            tokio::spawn(async move {
                let (head, mut pending) = read_head(&mut s).await;
                let lower = head.to_ascii_lowercase();
                assert!(
                    lower.contains("upgrade: websocket") && lower.contains("connection: upgrade"),
                    "{head}"
                );
                let key = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("sec-websocket-key: ")
                            .or_else(|| l.strip_prefix("Sec-WebSocket-Key: "))
                    })
                    .unwrap()
                    .trim()
                    .to_owned();
                count.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept(&key)
                );
                s.write_all(answer.as_bytes()).await.unwrap();
                loop {
                    while let Some((opcode, payload, used)) = parse_frame(&pending) {
                        pending.drain(..used);
                        if opcode == 8 {
                            let _ = s.write_all(&frame(8, &payload, false)).await;
                            return;
                        }
                        s.write_all(&frame(opcode, &payload, false)).await.unwrap();
                    }
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, handshakes)
}

/// One frame (FIN set), masked as a client must.
pub(crate) fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let mask = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A whole frame at the start of `buf`: opcode, unmasked payload, bytes used.
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (b0, b1) = (*buf.first()?, *buf.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let mask = if masked {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let payload = buf.get(at..at + len)?;
    let payload = match mask {
        Some(m) => payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]).collect(),
        None => payload.to_vec(),
    };
    Some((b0 & 0x0f, payload, at + len))
}

/// Opens a WebSocket to `path` through the proxy: the 101 head and the connection.
pub(crate) async fn open(proxy: SocketAddr, path: &str) -> (String, TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let hello = format!(
        "GET {path} HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(hello.as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut s).await;
    (head, s, rest)
}

/// Reads one whole frame.
pub(crate) async fn next_frame(s: &mut TcpStream, pending: &mut Vec<u8>) -> (u8, Vec<u8>) {
    loop {
        if let Some((op, payload, used)) = parse_frame(pending) {
            pending.drain(..used);
            return (op, payload);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed mid-frame");
        pending.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn websocket_frames_pass_both_ways_and_the_tunnel_closes_when_idle() {
    let (ws, handshakes) = echo_server().await;
    let config = format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:0'}}\n\
         pools:\n  - {{name: chat, endpoints: [{{address: '{ws}'}}]}}\n\
         routes:\n  - {{name: chat, match: {{path_prefix: /chat}}, pool: chat, idle_timeout: 1s}}\n"
    );
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;

    let (head, mut s, mut pending) = open(addr, "/chat/room1").await;
    assert!(head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains(&format!("sec-websocket-accept: {}", accept(KEY))), "{head}");
    // Text, then a binary frame larger than one read, each echoed through both directions.
    s.write_all(&frame(1, b"hello through sluice", true)).await.unwrap();
    assert_eq!(next_frame(&mut s, &mut pending).await, (1, b"hello through sluice".to_vec()));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&frame(2, &big, true)).await.unwrap();
    assert_eq!(next_frame(&mut s, &mut pending).await, (2, big));
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);

    // Quiet for longer than the route's idle timeout: the proxy closes the tunnel.
    let quiet = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the tunnel stayed open past its idle timeout");
    assert!(quiet.elapsed() >= Duration::from_millis(900), "closed after {:?}", quiet.elapsed());

    // A closed tunnel is one request of the route, with its 101, and one upgrade.
    let s = scrape(&proxy).await;
    assert_eq!(value(&s, "sluice_upgrades_total", &[("route", "chat")]), 1.0);
    assert_eq!(value(&s, "sluice_requests_total", &[("route", "chat"), ("status_class", "1xx")]), 1.0);

    // A close frame from the client ends the conversation at once.
    let (_, mut s, mut pending) = open(addr, "/chat/room2").await;
    s.write_all(&frame(8, &[0x03, 0xe8], true)).await.unwrap();
    assert_eq!(next_frame(&mut s, &mut pending).await.0, 8);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.unwrap().unwrap();
}

#[tokio::test]
async fn only_websocket_is_upgraded_and_never_mirrored() {
    let up = Upstream::start("up").await;
    let candidate = Upstream::start("candidate").await;
    let config = format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:0'}}\n\
         pools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\n  - {{name: c, endpoints: [{{address: '{}'}}]}}\n\
         routes:\n  - {{name: app, pool: p, mirror: {{pool: c, fraction: 1.0}}}}\n",
        up.addr, candidate.addr
    );
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;
    // `Upgrade: h2c` is dropped with the other hop-by-hop fields: the upstream answers plain HTTP.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n").await.unwrap();
    let (head, _) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = up.seen();
    let headers = &seen.last().unwrap()["headers"];
    assert!(headers.get("upgrade").is_none() && headers.get("http2-settings").is_none(), "{headers}");

    // A WebSocket handshake goes to the primary only; this upstream does not speak WebSocket,
    // so the client gets its plain answer.
    let (head, _, _) = open(addr, "/ws").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = up.seen();
    let headers = &seen.last().unwrap()["headers"];
    assert_eq!(headers["upgrade"], serde_json::json!(["websocket"]));
    assert_eq!(headers["connection"], serde_json::json!(["upgrade"]));
    eventually!(Duration::from_secs(10), candidate.hits() >= 1, "the plain request was mirrored");
    stays_for!(Duration::from_millis(500), candidate.hits() == 1);
}
