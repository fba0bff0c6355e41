//! HTTP/1.1 served inline: each request head is judged by the strict framing check and parsed
//! straight from the connection's buffer, the request body is read from that buffer by whoever
//! polls it (the upload, in the request's own task), and the response is encoded and written by
//! the connection's task. One parse per head and no timer per request; hyper serves HTTP/2
//! (handed the bytes already read) and the admin listener.
//!
//! Refusals: a head the framing check refuses but that parses still goes to the request path,
//! which answers 400 in its admit phase (counted and logged with method and path); a head that
//! does not parse gets 400 here (431 when too large), counted through
//! [`Serve::refused_by_parser`]. Either way the connection closes after the answer.

use std::fmt::Write as _;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use sluice_tls::server::MaybeTls;
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_util::io::poll_read_buf;

use super::Serve;
use super::strict::{self, BodyFraming, Reject, StrictState};
use crate::body::ClientBody;
use crate::body::client::{Io, READ_SIZE, Shared};
use crate::headers::connection_has;
use crate::sync::lock;

/// Header fields parsed per head (the framing check allows as many).
const MAX_HEADERS: usize = 128;
/// Fields the request path may add to a request before it goes upstream.
const ADDED_FIELDS: usize = 8;
/// A response body chunk up to this size is copied behind its head into one write.
const COALESCE: usize = 16 * 1024;

/// What reading a head came to.
enum Head {
    /// A whole head, through its blank line.
    Ready(Bytes),
    /// The client closed, or stayed silent past the timeout between requests: close quietly.
    Gone,
    /// Larger than [`strict::MAX_HEAD`]: 431.
    TooLarge,
}

/// A request head, parsed.
struct Parsed {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

/// A deadline without a timer per request: the sleep is made when the connection first has to
/// wait, and moved only when it fires before the current deadline.
struct Deadline {
    at: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

/// Serves HTTP/1.1 requests on `tcp` (with `buf`, bytes already read from it) until the client
/// leaves, a request or response asks to close, the framing breaks, a head is slow, or `drain`
/// changes (after the response in progress).
pub(super) async fn serve<S: Serve>(
    tcp: impl Into<MaybeTls>,
    buf: BytesMut,
    conn: Arc<S::Connection>,
    strict: Arc<StrictState>,
    idle_timeout: Duration,
    drain: watch::Receiver<bool>,
) {
    let io = Io::new(tcp, buf);
    let mut deadline = Deadline { at: Instant::now(), sleep: None };
    let mut index = 0u64;
    // One wait for the drain for the connection's life: a new one per request registered and
    // unregistered a waiter each time.
    let mut watch = drain.clone();
    let mut drained = std::pin::pin!(async move { watch.changed().await });
    loop {
        deadline.at = Instant::now() + idle_timeout;
        let head = tokio::select! {
            biased;
            head = read_head(&io, &mut deadline) => head,
            _ = &mut drained => return,
        };
        let head = match head {
            Ok(Head::Ready(head)) => head,
            Ok(Head::Gone) | Err(_) => return,
            Ok(Head::TooLarge) => {
                return refuse::<S>(
                    &io,
                    conn,
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    Reject::HeadTooLarge,
                )
                .await;
            }
        };
        let judged = strict::judge(&head);
        let Parsed { method, uri, version, mut headers } = match parse(&head) {
            Ok(parsed) => parsed,
            Err(why) => {
                return refuse::<S>(&io, conn, StatusCode::BAD_REQUEST, judged.err().unwrap_or(why)).await;
            }
        };
        // A refused framing: the request path answers 400 at admission, nothing of a body is
        // read, and the connection closes after the answer.
        let refused = judged.is_err();
        let framing = judged.unwrap_or_else(|why| {
            strict.refuse(index, why);
            BodyFraming::None
        });
        if let BodyFraming::Length(n) = framing {
            one_length(&mut headers, n);
        }
        index += 1;
        let keep_alive = !refused && wants_keep_alive(version, &headers);
        let head_request = method == Method::HEAD;
        let expects = version == Version::HTTP_11
            && headers.get(EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let body = Io::begin(&io, framing, expects);
        let mut req = Request::new(ClientBody::Http1(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = headers;
        let Ok(mut response) = S::request(conn.clone(), req).await;
        // A WebSocket handshake the upstream accepted: the connection becomes its tunnel.
        if let Some((upstream, idle)) = response.body_mut().take_upgraded() {
            let (parts, body) = response.into_parts();
            if write_all(&io, &mut [switching_head(&parts)]).await.is_ok() {
                let _ = super::tunnel::run(&io, upstream, idle).await;
            }
            // The request ends here: counted and logged with the tunnel's whole duration.
            drop(body);
            let _ = poll_fn(|cx| Pin::new(&mut lock(&io).tcp).poll_shutdown(cx)).await;
            return;
        }
        let keep_alive = keep_alive && !*drain.borrow();
        let reusable = match write_response(&io, response, version, head_request, keep_alive).await {
            Ok(reusable) => reusable && Io::finished(&io),
            Err(_) => false,
        };
        if !reusable {
            let _ = poll_fn(|cx| Pin::new(&mut lock(&io).tcp).poll_shutdown(cx)).await;
            return;
        }
    }
}

/// Answers a head that could not be served and closes.
async fn refuse<S: Serve>(io: &Shared, conn: Arc<S::Connection>, status: StatusCode, why: Reject) {
    let mut text = BytesMut::with_capacity(128);
    let _ = write!(text, "HTTP/1.1 {} {}\r\n", status.as_str(), status.canonical_reason().unwrap_or(""));
    text.extend_from_slice(b"content-length: 0\r\nconnection: close\r\ndate: ");
    date::with(|d| text.extend_from_slice(d));
    text.extend_from_slice(b"\r\n\r\n");
    let _ = write_all(io, &mut [text.freeze()]).await;
    let _ = poll_fn(|cx| Pin::new(&mut lock(io).tcp).poll_shutdown(cx)).await;
    S::refused_by_parser(conn, why);
}

/// Reads until the buffer holds a whole head.
async fn read_head(io: &Shared, deadline: &mut Deadline) -> io::Result<Head> {
    poll_fn(|cx| {
        let mut guard = lock(io);
        let io = &mut *guard;
        loop {
            match io.wire.take_head() {
                Ok(Some(head)) => return Poll::Ready(Ok(Head::Ready(head))),
                Ok(None) => {}
                Err(_) => return Poll::Ready(Ok(Head::TooLarge)),
            }
            io.wire.buf.reserve(READ_SIZE);
            match poll_read_buf(Pin::new(&mut io.tcp), cx, &mut io.wire.buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Head::Gone)),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if deadline.expired(cx) => return Poll::Ready(Ok(Head::Gone)),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// Parses a whole head. Only what the framing check let through gets here when it matters; this
/// refuses what is not a valid HTTP/1.x request line and fields.
fn parse(head: &Bytes) -> Result<Parsed, Reject> {
    // Left uninitialised: filling 128 empty fields first cost more than parsing a small head.
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut fields) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Reject::Malformed),
    }
    let method =
        Method::from_bytes(req.method.unwrap_or_default().as_bytes()).map_err(|_| Reject::Malformed)?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(Reject::Malformed),
    };
    let target = req.path.unwrap_or_default();
    let uri = Uri::from_maybe_shared(head.slice_ref(target.as_bytes())).map_err(|_| Reject::Malformed)?;
    // Room for what the request path adds (forwarding headers, the request id, trace context)
    // without growing the map, which rehashes every field.
    let mut headers = crate::headers::spare::map(req.headers.len() + ADDED_FIELDS);
    for field in req.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| Reject::Malformed)?;
        let value =
            HeaderValue::from_maybe_shared(head.slice_ref(field.value)).map_err(|_| Reject::Malformed)?;
        headers.append(name, value);
    }
    Ok(Parsed { method, uri, version, headers })
}

/// Leaves one `Content-Length: n` where the client sent the same length repeated (`5, 5`, or two
/// fields), which RFC 9110 §8.6 allows a recipient to accept: passed on as sent, a next hop could
/// read the list differently.
fn one_length(headers: &mut HeaderMap, n: u64) {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let plain = values.next().is_some_and(|v| !v.as_bytes().contains(&b',')) && values.next().is_none();
    if !plain {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    }
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 only with `keep-alive`.
fn wants_keep_alive(version: Version, headers: &HeaderMap) -> bool {
    match version {
        Version::HTTP_11 => !connection_has(headers, b"close"),
        _ => connection_has(headers, b"keep-alive"),
    }
}

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and no known length).
    Close,
}

/// Writes `response`; `Ok(true)` when all of it went out as framed and neither side asked to
/// close, so the connection may carry another request.
async fn write_response<B>(
    io: &Shared,
    response: Response<B>,
    version: Version,
    head_request: bool,
    keep_alive: bool,
) -> io::Result<bool>
where
    B: Body<Data = Bytes> + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut framing = match (bodiless, declared, body.size_hint().exact()) {
        (true, ..) => Framing::Empty,
        (false, Some(n), _) | (false, None, Some(n)) => Framing::Length(n),
        (false, None, None) if version == Version::HTTP_11 => Framing::Chunked,
        (false, None, None) => Framing::Close,
    };
    let mut out = BytesMut::with_capacity(256 + 64 * parts.headers.len());
    out.extend_from_slice(if version == Version::HTTP_10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    write_fields(&mut out, &parts.headers);
    // A HEAD or 304 answer keeps the length the full answer would have; 1xx and 204 have none
    // (RFC 9110 §8.6).
    let length = match framing {
        Framing::Length(n) => Some(n),
        Framing::Empty if !status.is_informational() && status != StatusCode::NO_CONTENT => declared,
        _ => None,
    };
    if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !parts.headers.contains_key(DATE) {
        out.extend_from_slice(b"date: ");
        date::with(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    // The request path asks to close with `Connection: close` (after a refusal, say).
    let keep_alive = keep_alive
        && !connection_has(&parts.headers, b"close")
        && framing != Framing::Close
        && status != StatusCode::SWITCHING_PROTOCOLS;
    // The fields may be slices of the upstream's read buffer (`upstream::h1`): holding them for a
    // long body would hold that whole buffer.
    let mut parts = parts;
    crate::headers::spare::give(std::mem::take(&mut parts.headers));
    drop(parts);
    match (keep_alive, version) {
        (false, _) => out.extend_from_slice(b"connection: close\r\n"),
        (true, Version::HTTP_10) => out.extend_from_slice(b"connection: keep-alive\r\n"),
        (true, _) => {}
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::Empty {
        write_all(io, &mut [out.freeze()]).await?;
        return Ok(keep_alive);
    }
    let mut sent = 0u64;
    loop {
        // Frames that are ready go out with what is queued; before waiting, the queue is written.
        let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending if out.is_empty() => Poll::Pending,
            Poll::Pending => Poll::Ready(None),
        })
        .await;
        let frame = match next {
            None => {
                write_all(io, &mut [out.split().freeze()]).await?;
                continue;
            }
            Some(None) => break,
            Some(Some(Err(_))) => {
                // Mid-body failure: what was queued goes out, then the connection closes so the
                // client sees the body cut short.
                write_all(io, &mut [out.split().freeze()]).await?;
                return Ok(false);
            }
            Some(Some(Ok(frame))) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let (Framing::Chunked, Some(trailers)) = (framing, frame.trailers_ref()) {
                    out.extend_from_slice(b"0\r\n");
                    for (name, value) in trailers {
                        out.extend_from_slice(name.as_str().as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(value.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                    framing = Framing::Empty;
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            Framing::Length(n) if sent > n => {
                write_all(io, &mut [out.split().freeze()]).await?;
                return Ok(false);
            }
            Framing::Chunked => {
                // The chunk-size line, formatted in place (no allocation per chunk).
                let _ = write!(out, "{:x}\r\n", data.len());
                if data.len() <= COALESCE {
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                } else {
                    write_all(io, &mut [out.split().freeze(), data, Bytes::from_static(b"\r\n")]).await?;
                }
            }
            Framing::Empty => {}
            Framing::Length(_) | Framing::Close => {
                if data.len() <= COALESCE {
                    out.extend_from_slice(&data);
                } else {
                    write_all(io, &mut [out.split().freeze(), data]).await?;
                }
            }
        }
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    write_all(io, &mut [out.freeze()]).await?;
    Ok(keep_alive
        && match framing {
            Framing::Length(n) => sent == n,
            Framing::Close => false,
            Framing::Empty | Framing::Chunked => true,
        })
}

/// The head of a `101 Switching Protocols`: the answer's fields, the framing ones left out, and
/// `Connection: upgrade`.
fn switching_head(parts: &http::response::Parts) -> Bytes {
    let mut out = BytesMut::with_capacity(128 + 64 * parts.headers.len());
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    write_fields(&mut out, &parts.headers);
    out.extend_from_slice(b"connection: upgrade\r\n\r\n");
    out.freeze()
}

/// A response's fields but the framing ones, which are this server's to write from what it will
/// actually send: a `Content-Length` passed through beside `Transfer-Encoding`, or twice, or
/// unparsable, would let the client's parser see a different message boundary.
fn write_fields(out: &mut BytesMut, headers: &HeaderMap) {
    for (name, value) in headers {
        if name == TRANSFER_ENCODING || name == CONNECTION || name == CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes every byte of `bufs`, vectored, then flushes (over TLS the last records may still be
/// in the session's buffer; on plain TCP a no-op). One lock per poll, whatever it takes.
async fn write_all(io: &Shared, bufs: &mut [Bytes]) -> io::Result<()> {
    let mut first = 0;
    poll_fn(|cx| {
        let mut guard = lock(io);
        let tcp = &mut guard.tcp;
        loop {
            while first < bufs.len() && bufs[first].is_empty() {
                first += 1;
            }
            if first == bufs.len() {
                return Pin::new(&mut *tcp).poll_flush(cx);
            }
            let mut slices = [IoSlice::new(&[]); 3];
            let count = (bufs.len() - first).min(slices.len());
            for (slice, buf) in slices.iter_mut().zip(&bufs[first..]) {
                *slice = IoSlice::new(buf);
            }
            let mut n = ready!(Pin::new(&mut *tcp).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            while n > 0 {
                let take = n.min(bufs[first].len());
                bufs[first].advance(take);
                n -= take;
                if bufs[first].is_empty() {
                    first += 1;
                }
            }
        }
    })
    .await
}

// === impl Deadline ===

impl Deadline {
    /// Called when the connection has to wait: whether the deadline has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let at = self.at;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= at {
                return true;
            }
            sleep.as_mut().reset(at);
        }
    }
}

/// The `Date` value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    pub(super) fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != second {
                let text = httpdate::fmt_http_date(now);
                if text.len() == 29 {
                    c.1.copy_from_slice(text.as_bytes());
                    c.0 = second;
                }
            }
            f(&c.1);
        });
    }
}

#[cfg(test)]
mod tests;
