//! The inline HTTP/1.1 server over real sockets, with a request path that echoes what it got.

use std::net::SocketAddr;
use std::sync::Mutex;

use http_body::Frame;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::body::client::head_end;
use crate::body::{BodyError, ProxyBody};
use crate::listener::ListenerState;
use crate::worker::Workers;

/// Answers every request with its method, target, version, `Host`, body and trailers, as text;
/// `/close` asks to close, `/204` has no content. Like the request path, it first asks the
/// framing check whether the request may be served, and answers 400 and closes if not.
struct Echo {
    /// Refused by the framing check, at admission.
    admitted_not: Mutex<Vec<Reject>>,
    /// Refused before admission: the head did not parse.
    refused: Mutex<Vec<Reject>>,
}

/// The echo and the connection's framing verdicts.
type EchoConn = (Arc<Echo>, Arc<StrictState>);

impl Serve for Echo {
    type Connection = EchoConn;

    fn workers(&self) -> &Workers {
        unreachable!("served directly")
    }

    fn drain_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn connection(
        &self,
        _: SocketAddr,
        _: Option<Arc<[sluice_bundle::Cidr]>>,
        _: Arc<StrictState>,
        _: Arc<ListenerState>,
        _: Option<crate::listener::tls::TlsFacts>,
    ) -> EchoConn {
        unreachable!("served directly")
    }

    async fn request(
        conn: Arc<EchoConn>,
        req: Request<ClientBody>,
    ) -> Result<Response<ProxyBody>, std::convert::Infallible> {
        if let Err(why) = conn.1.admit() {
            conn.0.admitted_not.lock().unwrap().push(why);
            let mut resp = Response::new(ProxyBody::full(why.message()));
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            return Ok(resp);
        }
        let (parts, body) = req.into_parts();
        let collected = body.collect().await;
        let (data, trailers) = match collected {
            Ok(c) => {
                let trailers = c.trailers().map(|t| format!("{t:?}")).unwrap_or_default();
                (c.to_bytes(), trailers)
            }
            Err(e) => (Bytes::from(format!("body error: {e}")), String::new()),
        };
        let host =
            parts.headers.get("host").map(|h| h.to_str().unwrap_or("?").to_owned()).unwrap_or_default();
        let text = format!(
            "{} {} {:?} host={host} body={} trailers={trailers}",
            parts.method,
            parts.uri,
            parts.version,
            String::from_utf8_lossy(&data)
        );
        let mut resp = Response::new(ProxyBody::full(Bytes::from(text)));
        match parts.uri.path() {
            "/close" => {
                resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            "/204" => *resp.status_mut() = StatusCode::NO_CONTENT,
            _ => {}
        }
        Ok(resp)
    }

    fn refused_by_parser(conn: Arc<EchoConn>, why: Reject) {
        conn.0.refused.lock().unwrap().push(why);
    }
}

/// A listener whose every connection is served by [`serve`] with `Echo`.
async fn server(idle: Duration) -> (SocketAddr, Arc<Echo>, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = Arc::new(Echo { admitted_not: Mutex::default(), refused: Mutex::default() });
    let (drain, _) = watch::channel(false);
    let (e, d) = (echo.clone(), drain.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let strict = Arc::new(StrictState::default());
            let conn = Arc::new((e.clone(), strict.clone()));
            tokio::spawn(serve::<Echo>(tcp, BytesMut::new(), conn, strict, idle, d.subscribe()));
        }
    });
    (addr, echo, drain)
}

/// Sends `wire`, then reads until the server closes (or 2 s pass).
async fn exchange(addr: SocketAddr, wire: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(wire).await.unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await.is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[test]
fn a_head_ends_at_its_first_blank_line_however_it_arrived() {
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", 0), Some(27));
    assert_eq!(
        head_end(b"GET / HTTP/1.1\nHost: a\n\nrest", 0),
        Some(24),
        "bare LF: the framing check refuses it"
    );
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0), None);
    // Resumed where the last search stopped, even inside the blank line.
    let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(head_end(whole, 26), Some(27));
    assert_eq!(head_end(whole, 25), Some(27));
}

#[test]
fn heads_parse_into_requests_and_bad_ones_are_refused() {
    let p = parse(&Bytes::from_static(
        b"POST http://b.example/x?q=1 HTTP/1.0\r\nHost: a\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
    ))
    .unwrap_or_else(|_| panic!("parses"));
    assert_eq!((p.method, p.version), (Method::POST, Version::HTTP_10));
    assert_eq!(p.uri.host(), Some("b.example"));
    assert_eq!(p.headers.get_all("x-a").iter().count(), 2);
    for bad in [
        &b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        assert!(parse(&Bytes::copy_from_slice(bad)).is_err(), "{}", String::from_utf8_lossy(bad));
    }
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
    assert!(parse(&Bytes::from(format!("GET / HTTP/1.1\r\n{many}\r\n"))).is_err(), "too many fields");
}

#[test]
fn keep_alive_follows_the_version_and_connection_tokens() {
    let h = |v: &'static str| {
        let mut m = HeaderMap::new();
        m.insert(CONNECTION, HeaderValue::from_static(v));
        m
    };
    assert!(wants_keep_alive(Version::HTTP_11, &HeaderMap::new()));
    assert!(!wants_keep_alive(Version::HTTP_11, &h("te, Close")));
    assert!(!wants_keep_alive(Version::HTTP_10, &HeaderMap::new()));
    assert!(wants_keep_alive(Version::HTTP_10, &h("Keep-Alive")));
}

#[tokio::test]
async fn pipelined_requests_with_bodies_get_answers_in_order_on_one_connection() {
    let (addr, _, _) = server(Duration::from_secs(5)).await;
    let wire = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-Sum: 9\r\n\r\nGET /close HTTP/1.1\r\nHost: h\r\n\r\n";
    let (text, closed) = exchange(addr, wire).await;
    assert!(closed, "the last response asked to close: {text}");
    let answers: Vec<&str> = text.split("HTTP/1.1 200 OK").skip(1).collect();
    assert_eq!(answers.len(), 3, "{text}");
    assert!(answers[0].contains("POST /a HTTP/1.1 host=h body=hello"), "{}", answers[0]);
    assert!(answers[1].contains("body=abcde") && answers[1].contains("x-sum"), "{}", answers[1]);
    assert!(answers[2].contains("connection: close"), "{}", answers[2]);
    for a in answers {
        assert!(a.contains("\r\ndate: ") && a.contains("\r\ncontent-length: "), "{a}");
    }
}

/// A body of these chunks, of unknown length.
struct Chunks(std::collections::VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// Writes a response of `chunks` to a client of `version` and returns what it received and
/// whether the connection may be reused.
async fn written(version: Version, head: bool, chunks: &[&'static str]) -> (String, bool) {
    let body = Chunks(chunks.iter().map(|c| Bytes::from_static(c.as_bytes())).collect());
    written_response(version, head, Response::new(body)).await
}

async fn written_response(version: Version, head: bool, response: Response<Chunks>) -> (String, bool) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let io = Io::new(listener.accept().await.unwrap().0, BytesMut::new());
    let reusable = write_response(&io, response, version, head, true).await.unwrap();
    drop(io);
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    (String::from_utf8_lossy(&out).into_owned(), reusable)
}

#[tokio::test]
async fn responses_are_framed_for_the_client_and_the_method() {
    // Unknown length: chunked to HTTP/1.1, until close to HTTP/1.0.
    let (text, reusable) = written(Version::HTTP_11, false, &["ab", "cde"]).await;
    assert!(reusable && text.contains("transfer-encoding: chunked\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"), "{text}");
    let (text, reusable) = written(Version::HTTP_10, false, &["ab", "cde"]).await;
    assert!(!reusable && text.starts_with("HTTP/1.0 200 OK") && text.ends_with("\r\n\r\nabcde"), "{text}");
    assert!(!text.contains("transfer-encoding") && text.contains("connection: close"), "{text}");
    // A Content-Length from the request path is never passed through as it is: written once,
    // from what goes out, and never beside chunked.
    for declared in ["5", "abc", "5, 5"] {
        let mut resp =
            Response::new(Chunks(["ab", "cde"].iter().map(|c| Bytes::from_static(c.as_bytes())).collect()));
        resp.headers_mut().append(CONTENT_LENGTH, HeaderValue::from_static(declared));
        resp.headers_mut().append(CONTENT_LENGTH, HeaderValue::from_static("7"));
        let (text, _) = written_response(Version::HTTP_11, false, resp).await;
        assert_eq!(
            text.to_ascii_lowercase().matches("content-length").count()
                + text.matches("transfer-encoding").count(),
            1,
            "{declared}: {text}"
        );
    }
    // HEAD: the head only.
    let (text, reusable) = written(Version::HTTP_11, true, &["ab"]).await;
    assert!(reusable && text.ends_with("\r\n\r\n") && !text.contains("ab"), "{text}");
    let (addr, _, _) = server(Duration::from_secs(5)).await;
    let (text, _) = exchange(addr, b"GET /204 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 204 No Content") && text.ends_with("\r\n\r\n"), "{text}");
    // HTTP/1.0 keep-alive is kept and said.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await.unwrap();
    let mut buf = vec![0; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.contains("connection: keep-alive"), "{text}");
}

#[tokio::test]
async fn expect_continue_is_answered_when_the_body_is_first_read() {
    let (addr, _, _) = server(Duration::from_secs(5)).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PUT /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"xyz").await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200 OK") && text.contains("body=xyz"), "{text}");
}

#[tokio::test]
async fn refused_heads_get_400_or_431_and_close() {
    let (addr, echo, _) = server(Duration::from_secs(5)).await;
    let (text, closed) = exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n").await;
    assert!(
        closed && text.starts_with("HTTP/1.1 400 Bad Request\r\n") && text.contains("connection: close"),
        "{text}"
    );
    let huge = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(strict::MAX_HEAD));
    let (text, closed) = exchange(addr, huge.as_bytes()).await;
    assert!(closed && text.starts_with("HTTP/1.1 431 "), "{text}");
    // The HTTP/2 preface is only a preface as a connection's first bytes.
    let (text, closed) =
        exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert!(
        closed && text.starts_with("HTTP/1.1 200 OK") && text.contains("HTTP/1.1 400 Bad Request"),
        "{text}"
    );
    // A head that parses but frames its body two ways: refused at admission, nothing of it read.
    let (text, closed) = exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
    )
    .await;
    assert!(
        closed && text.starts_with("HTTP/1.1 400 Bad Request\r\n") && text.matches("HTTP/1.1").count() == 1,
        "{text}"
    );
    assert_eq!(*echo.admitted_not.lock().unwrap(), [Reject::ContentLengthAndTransferEncoding]);
    assert_eq!(*echo.refused.lock().unwrap(), [Reject::ObsFold, Reject::HeadTooLarge, Reject::Malformed]);
}

#[tokio::test]
async fn a_client_that_breaks_the_chunked_framing_gets_no_reuse() {
    let (addr, _, _) = server(Duration::from_secs(5)).await;
    let (text, closed) =
        exchange(addr, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /next HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert!(closed, "{text}");
    assert!(text.contains("body error: malformed chunked body") && !text.contains("/next"), "{text}");
}

#[tokio::test]
async fn an_unread_body_closes_the_connection_and_is_never_taken_for_a_request() {
    let (addr, _, _) = server(Duration::from_secs(5)).await;
    // The echo reads bodies, but a body whose bytes have not arrived when the response is done
    // cannot be skipped: here the client says 10 bytes and sends 3, then a would-be request.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc").await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("body error: the client closed the connection mid-body"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "{text}");
}

#[tokio::test]
async fn idle_connections_and_slow_heads_are_closed_and_drain_closes_idle_ones() {
    let (addr, _, drain) = server(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let (_, closed) = exchange(addr, b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: ").await;
    assert!(closed && started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
    let mut buf = vec![0; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
    drain.send_replace(true);
    let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(n, 0, "an idle keep-alive connection closes at once on drain");
}
