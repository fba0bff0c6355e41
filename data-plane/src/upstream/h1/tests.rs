//! The inline HTTP/1.1 client against scripted upstreams on loopback: what goes on the wire, how
//! each framing is read, and when a connection is (not) used again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::*;
use crate::body::wire::{Io, Pooling, Return};
use crate::resilience::breaker::Breaker;

/// Connections given back, by count.
#[derive(Default)]
struct Pool(Mutex<usize>);

impl Pooling for Pool {
    fn give_back(&self, _conn: Conn, _worker: usize, _max_idle: usize, _generation: u64) {
        *self.0.lock().unwrap() += 1;
    }
}

impl Pool {
    fn given_back(&self) -> usize {
        *self.0.lock().unwrap()
    }
}

/// An upstream that reads one request (head, and `body_len` more bytes), hands its bytes over,
/// then writes `pieces` with a pause between them and closes when `close` says.
async fn upstream(
    pieces: Vec<&'static [u8]>,
    body_len: usize,
    close: bool,
) -> (std::net::SocketAddr, oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let head_end = got.windows(4).position(|w| w == b"\r\n\r\n");
            if head_end.is_some_and(|end| got.len() >= end + 4 + body_len) {
                break;
            }
            let n = sock.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(got);
        for piece in pieces {
            sock.write_all(piece).await.unwrap();
            sock.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if close {
            drop(sock);
        } else {
            // Keep the connection open until the client is done with it.
            let _ = sock.read(&mut buf).await;
        }
    });
    (addr, rx)
}

async fn conn(addr: std::net::SocketAddr) -> Conn {
    let slot = Arc::new(Breaker::default()).open_connection().unwrap();
    Conn::new(Io::Plain(TcpStream::connect(addr).await.unwrap()), slot)
}

fn back(pool: &Arc<Pool>) -> Return {
    Return { pool: pool.clone(), worker: 0, max_idle: 8, generation: 0 }
}

fn get(method: &str) -> Request<RequestBody> {
    Request::builder()
        .method(method)
        .uri("/a?b=1")
        .header("host", "up.example")
        .body(RequestBody::of_chunks(Vec::new()))
        .unwrap()
}

/// Sends `req` to an upstream answering `pieces`; the response's status, body, trailers, whether
/// the connection was given back, and the request's bytes on the wire.
async fn exchange(
    req: Request<RequestBody>,
    pieces: Vec<&'static [u8]>,
    body_len: usize,
) -> (Result<(StatusCode, http::HeaderMap, Bytes, Option<http::HeaderMap>), String>, usize, Vec<u8>) {
    let (addr, wire) = upstream(pieces, body_len, false).await;
    let pool = Arc::new(Pool::default());
    let result = match send(conn(addr).await, Box::new(req), back(&pool), "up").await {
        Err(f) => Err(f.error.to_string()),
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            match body.collect().await {
                Ok(c) => {
                    let trailers = c.trailers().cloned();
                    Ok((parts.status, parts.headers, c.to_bytes(), trailers))
                }
                Err(e) => Err(e.to_string()),
            }
        }
    };
    (result, pool.given_back(), wire.await.unwrap_or_default())
}

#[tokio::test]
async fn a_get_goes_out_as_written_and_a_sized_body_comes_back_on_a_reusable_connection() {
    let (result, reused, wire) = exchange(
        get("GET"),
        vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-Empty:\r\n\r\nhe", b"llo"],
        0,
    )
    .await;
    let (status, headers, body, _) = result.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    assert_eq!((headers["x-a"].as_bytes(), headers["x-empty"].as_bytes()), (&b"1"[..], &b""[..]));
    assert_eq!(headers["content-length"], "5");
    assert_eq!(reused, 1, "given back once the body was read");
    assert_eq!(String::from_utf8(wire).unwrap(), "GET /a?b=1 HTTP/1.1\r\nhost: up.example\r\n\r\n");
}

#[tokio::test]
async fn connection_options_other_than_keep_alive_reach_the_hop_by_hop_stripping() {
    // Plain keep-alive: read (the connection is reused), nothing of it left to strip.
    let (result, reused, _) = exchange(
        get("GET"),
        vec![b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n"],
        0,
    )
    .await;
    let (_, mut headers, _, _) = result.unwrap();
    assert_eq!(reused, 1);
    crate::headers::strip_hop_by_hop(&mut headers);
    assert!(headers.get("connection").is_none() && headers.get("keep-alive").is_none());

    // An option naming a field: that field is stripped as `respond` strips the answer.
    let (result, _, _) = exchange(
        get("GET"),
        vec![b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, X-Hop\r\nX-Hop: secret\r\nX-Kept: 1\r\nContent-Length: 0\r\n\r\n"],
        0,
    )
    .await;
    let (_, mut headers, _, _) = result.unwrap();
    crate::headers::strip_hop_by_hop(&mut headers);
    assert!(headers.get("x-hop").is_none(), "a field Connection names is hop-by-hop");
    assert!(headers.get("connection").is_none());
    assert_eq!(headers["x-kept"], "1");

    // `close` still ends the connection.
    let (result, reused, _) =
        exchange(get("GET"), vec![b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"], 0)
            .await;
    assert!(result.is_ok());
    assert_eq!(reused, 0, "an answer with Connection: close ends its connection");
}

#[tokio::test]
async fn a_content_length_goes_on_as_one_plain_number_and_repeated_fields_keep_their_order() {
    for (given, sent) in [
        ("Content-Length: 3\r\n", "3"),
        ("Content-Length: 003\r\n", "3"),
        ("Content-Length: 3, 3\r\n", "3"),
        ("Content-Length: 3\r\nContent-Length: 3\r\n", "3"),
    ] {
        let head = format!("HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\n{given}Set-Cookie: b=2\r\n\r\nabc");
        let (result, reused, _) = exchange(get("GET"), vec![head.leak().as_bytes()], 0).await;
        let (_, headers, body, _) = result.unwrap();
        assert_eq!(&body[..], b"abc", "{given:?}");
        let lengths: Vec<_> = headers.get_all("content-length").iter().collect();
        assert_eq!(lengths, [sent], "{given:?}");
        let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(reused, 1);
    }
}

#[tokio::test]
async fn a_chunked_body_arriving_in_pieces_is_decoded_with_its_trailers() {
    let (result, reused, _) = exchange(
        get("GET"),
        vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"5;ext=1\r\nhel",
            b"lo\r\n",
            b"6\r\n world\r\n0\r\n",
            b"X-Checksum: abc\r\n\r\n",
        ],
        0,
    )
    .await;
    let (status, headers, body, trailers) = result.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello world"[..]));
    assert!(!headers.contains_key("content-length"));
    assert_eq!(trailers.unwrap()["x-checksum"], "abc");
    assert_eq!(reused, 1);
}

#[tokio::test]
async fn bodies_without_framing_or_with_close_end_the_connection() {
    for (answer, body) in [
        (&b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"[..], &b"ok"[..]),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok"),
        // Too many bytes: the extra ones belong to no response.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", b"ok"),
        // Transfer-Encoding overrides Content-Length; such a message is suspect.
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", b"ok"),
    ] {
        let (result, reused, _) = exchange(get("GET"), vec![answer], 0).await;
        assert_eq!(&result.unwrap().2[..], body, "{}", String::from_utf8_lossy(answer));
        assert_eq!(reused, 0, "{}", String::from_utf8_lossy(answer));
    }
    // HTTP/1.0 that asks to keep the connection may have it.
    let answer = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok";
    assert_eq!(exchange(get("GET"), vec![answer], 0).await.1, 1);

    // No length at all: the body runs until the upstream closes.
    let (addr, _) = upstream(vec![b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the end"], 0, true).await;
    let pool = Arc::new(Pool::default());
    let resp = send(conn(addr).await, Box::new(get("GET")), back(&pool), "up").await.ok().unwrap();
    assert_eq!(&resp.into_body().collect().await.unwrap().to_bytes()[..], b"until the end");
    assert_eq!(pool.given_back(), 0);
}

#[tokio::test]
async fn heads_without_bodies_and_informational_answers() {
    // HEAD: the length describes the GET's body; none follows.
    let (result, reused, _) =
        exchange(get("HEAD"), vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"], 0).await;
    let (_, headers, body, _) = result.unwrap();
    assert_eq!(headers["content-length"], "10");
    assert_eq!((body.len(), reused), (0, 1));
    for status in ["204 No Content", "304 Not Modified"] {
        let answer: &'static [u8] =
            Box::leak(format!("HTTP/1.1 {status}\r\n\r\n").into_bytes().into_boxed_slice());
        let (result, reused, _) = exchange(get("GET"), vec![answer], 0).await;
        assert_eq!((result.unwrap().2.len(), reused), (0, 1), "{status}");
    }
    // 100 Continue (and 103) come before the answer and are passed over.
    let (result, _, _) = exchange(
        get("GET"),
        vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        ],
        0,
    )
    .await;
    assert_eq!(result.unwrap().0, StatusCode::CREATED);
}

#[tokio::test]
async fn bad_framing_is_an_error_not_a_guess() {
    for (answer, want) in [
        (&b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello"[..], "conflicting Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", "invalid Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
            "conflicting Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", "malformed response head"),
        (b"HTTP/2.0 200 OK\r\n\r\n", "malformed response head"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n", "invalid chunk size"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
            "chunk data not followed by CRLF",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "closed the connection mid-body"),
    ] {
        let (addr, _) = upstream(vec![answer], 0, true).await;
        let pool = Arc::new(Pool::default());
        let error = match send(conn(addr).await, Box::new(get("GET")), back(&pool), "up").await {
            Err(f) => f.error.to_string(),
            Ok(resp) => resp.into_body().collect().await.err().map(|e| e.to_string()).unwrap_or_default(),
        };
        assert!(error.contains(want), "{}: {error}", String::from_utf8_lossy(answer));
        assert_eq!(pool.given_back(), 0);
    }
    // A head past the limit.
    let huge: &'static [u8] = Box::leak(
        format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX_HEAD)).into_bytes().into_boxed_slice(),
    );
    let (addr, _) = upstream(vec![huge], 0, true).await;
    let error = send(conn(addr).await, Box::new(get("GET")), back(&Arc::new(Pool::default())), "up")
        .await
        .err()
        .unwrap();
    assert!(error.error.to_string().contains("response head too large"), "{}", error.error);
    // Nothing at all: the connection was reset (and the request may have reached the upstream).
    let (addr, _) = upstream(vec![], 0, true).await;
    let error = send(conn(addr).await, Box::new(get("GET")), back(&Arc::new(Pool::default())), "up")
        .await
        .err()
        .unwrap();
    assert!(matches!(error.error, ProxyError::UpstreamReset { .. }) && error.unsent.is_none());
}

#[tokio::test]
async fn request_bodies_are_sized_or_chunked() {
    let with_body = |length: Option<usize>| {
        let mut b = Request::builder().method("POST").uri("/p").header("host", "h");
        if let Some(n) = length {
            b = b.header("content-length", n);
        }
        b.body(RequestBody::of_chunks(vec![Bytes::from_static(b"abc"), Bytes::from_static(b"de")])).unwrap()
    };
    let ok: Vec<&'static [u8]> = vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"];
    let (_, reused, wire) = exchange(with_body(Some(5)), ok.clone(), 5).await;
    assert_eq!(
        String::from_utf8(wire).unwrap(),
        "POST /p HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\n\r\nabcde"
    );
    assert_eq!(reused, 1);
    let chunked = "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
    let (_, reused, wire) = exchange(with_body(None), ok.clone(), chunked.len()).await;
    assert_eq!(
        String::from_utf8(wire).unwrap(),
        format!("POST /p HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n{chunked}")
    );
    assert_eq!(reused, 1);
    // An empty POST says so.
    let empty = Request::builder().method("POST").uri("/p").body(RequestBody::of_chunks(Vec::new())).unwrap();
    let (_, _, wire) = exchange(empty, ok, 0).await;
    assert_eq!(String::from_utf8(wire).unwrap(), "POST /p HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
}

/// Chunked decoding gives the same bytes however the input is cut.
#[test]
fn chunk_decoding_does_not_depend_on_how_bytes_arrive() {
    let input = b"4;a=b\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nT: 1\r\n\r\n";
    for step in 1..input.len() {
        let mut buf = bytes::BytesMut::new();
        let mut state = Chunk::Size;
        let mut out = Vec::new();
        let mut trailers = None;
        let mut done = false;
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            while !done {
                let (next, frame) = crate::body::wire::decode_chunk(&mut buf, state).unwrap();
                let progressed = frame.is_some() || next != Framing::Chunked(state);
                match frame {
                    Some(f) if f.is_data() => out.extend_from_slice(&f.into_data().unwrap()),
                    Some(f) => trailers = f.into_trailers().ok(),
                    None => {}
                }
                match next {
                    Framing::Chunked(s) => state = s,
                    _ => done = true,
                }
                if !progressed {
                    break;
                }
            }
        }
        assert!(done, "step {step}");
        assert_eq!(out, b"Wikipedia in\r\n\r\nchunks.", "step {step}");
        assert_eq!(trailers.unwrap()["t"], "1", "step {step}");
    }
}
