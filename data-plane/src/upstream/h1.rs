//! HTTP/1.1 to upstreams, driven inline in the request's own task (as Pingora does): the request
//! head is written from the request as it is, the response head parsed straight from the socket,
//! and the response body read from the connection by the body the client is sent. No connection
//! task, no channel between two tasks, no per-request allocation for the dispatch.
//!
//! Strict where framing is concerned: a response with a bad or conflicting `Content-Length`, a
//! malformed chunk or a head over the limit is an error, and a connection is only reused when both
//! messages ended exactly where their framing said (no stray bytes, request body sent whole,
//! neither side asked to close).

use std::future::poll_fn;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use tokio::io::AsyncWriteExt as _;

use crate::body::RequestBody;
use crate::body::client::head_end;
use crate::body::wire::{Chunk, Conn, Framing, ResponseBody, Return, Sending, Upload, poll_fill};
use crate::error::ProxyError;

/// Largest response head.
const MAX_HEAD: usize = 128 * 1024;
/// Most response headers.
const MAX_HEADERS: usize = 100;

/// A failed exchange. `unsent`: the request, when not one byte of it was written; `sent`: its
/// head (the body spent) when it was.
pub(crate) struct Failed {
    pub error: ProxyError,
    pub unsent: Option<Box<Request<RequestBody>>>,
    pub sent: Option<Box<Request<RequestBody>>>,
}

/// Sends `req` over `conn` and reads the response head. The body comes back with the response;
/// when it has been read to its end and the connection may be reused, it goes to `back`.
pub(crate) async fn send(
    mut conn: Conn,
    mut req: Box<Request<RequestBody>>,
    back: Return,
    endpoint: &str,
) -> Result<Response<ResponseBody>, Failed> {
    let (head, chunked, has_body) = encode_head(&req);
    // Flushed: over TLS the head may otherwise wait in the stream while we wait for an answer.
    let written = match conn.io.write_all(&head).await {
        Ok(()) => conn.io.flush().await,
        Err(e) => Err(e),
    };
    if let Err(e) = written {
        // A reused connection the upstream closed meanwhile fails here; nothing of the request
        // went, so it may go elsewhere as it is.
        tracing::debug!(endpoint, error = %e, "writing a request head failed");
        return Err(Failed { error: reset(endpoint), unsent: Some(req), sent: None });
    }
    // The head stays, for a retry if this try fails; its allocation is the request's own.
    let body = std::mem::replace(req.body_mut(), RequestBody::empty());
    let method = req.method();
    let mut upload = has_body.then(|| Upload::new(body, chunked));
    let mut upload_failed = false;
    let mut scanned = 0;
    let head = poll_fn(|cx| {
        if let Some(u) = upload.as_mut() {
            match u.poll_send(&mut conn.io, cx) {
                Poll::Ready(Ok(())) => upload = None,
                Poll::Ready(Err(Sending::Body(e))) => {
                    return Poll::Ready(Err(super::request_body_failed(&e)));
                }
                // The upstream stopped reading; it may still answer (a 413, say).
                Poll::Ready(Err(Sending::Io(e))) => {
                    tracing::debug!(endpoint, error = %e, "sending a request body failed");
                    upload = None;
                    upload_failed = true;
                }
                Poll::Pending => {}
            }
        }
        poll_head(&mut conn, &mut scanned, method, cx, endpoint)
    })
    .await;
    let (parts, framing, keep_alive) = match head {
        Ok(h) => h,
        Err(error) => return Err(Failed { error, unsent: None, sent: Some(req) }),
    };
    // Answered: the head is not needed for a retry any more, and its map serves another message.
    crate::headers::spare::give(std::mem::take(req.headers_mut()));
    drop(req);
    let keep_alive = keep_alive && !upload_failed;
    let body = ResponseBody::new(conn, framing, upload, keep_alive, back, endpoint);
    Ok(Response::from_parts(parts, body))
}

/// The request head as it goes on the wire, whether the body is chunked, and whether it has one.
fn encode_head(req: &Request<RequestBody>) -> (Vec<u8>, bool, bool) {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.uri().path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let has_body = !req.body().is_end_stream();
    let chunked = has_body && !req.headers().contains_key(CONTENT_LENGTH);
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if !has_body
        && !req.headers().contains_key(CONTENT_LENGTH)
        && matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
    {
        // An empty body of a method that usually has one: say so, as clients do.
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (out, chunked, has_body)
}

/// Reads until a whole final (non-1xx) response head is in the buffer, then takes it.
fn poll_head(
    conn: &mut Conn,
    scanned: &mut usize,
    method: &Method,
    cx: &mut Context<'_>,
    endpoint: &str,
) -> Poll<Result<(http::response::Parts, Framing, bool), ProxyError>> {
    let fail = |error| Poll::Ready(Err(error));
    loop {
        // Parsed only once its end is there: a head that trickles in is scanned once, not
        // parsed again from its start on every read.
        let whole = head_end(&conn.buf, *scanned).is_some();
        *scanned = conn.buf.len();
        if whole {
            match take_head(&mut conn.buf, method) {
                Ok(Some(head)) => {
                    *scanned = 0;
                    match head {
                        Parsed::Informational => continue,
                        Parsed::Final(parts, framing, keep_alive) => {
                            return Poll::Ready(Ok((parts, framing, keep_alive)));
                        }
                    }
                }
                Ok(None) => {}
                Err(why) => return fail(protocol(endpoint, why)),
            }
        }
        if conn.buf.len() >= MAX_HEAD {
            return fail(protocol(endpoint, "response head too large"));
        }
        match ready!(poll_fill(conn, cx)) {
            Ok(0) if conn.buf.is_empty() => return fail(reset(endpoint)),
            Ok(0) => return fail(protocol(endpoint, "connection closed in the middle of the response head")),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(endpoint, error = %e, "reading a response head failed");
                // TLS 1.3 endpoints refuse a client certificate after the handshake, here.
                return fail(super::tls::refused(&e, endpoint).unwrap_or_else(|| reset(endpoint)));
            }
        }
    }
}

enum Parsed {
    Informational,
    Final(http::response::Parts, Framing, bool),
}

/// A complete head at the start of `buf`, split off it: what it says; `None` if incomplete.
/// Field values are slices of the head (no copy, no allocation each).
fn take_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Parsed>, &'static str> {
    // Left uninitialised: filling 100 empty fields first cost more than parsing a small head.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
        Err(_) => return Err("malformed response head"),
    };
    if len > MAX_HEAD {
        return Err("response head too large");
    }
    let code = resp.code.ok_or("malformed response head")?;
    let status = StatusCode::from_u16(code).map_err(|_| "invalid response status")?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        buf.advance(len);
        return Ok(Some(Parsed::Informational));
    }
    let version = match resp.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err("unsupported HTTP version"),
    };
    // Where each field is, so the values can be slices of the head once it is off the buffer.
    let base = buf.as_ptr() as usize;
    let mut at = [Field::default(); MAX_HEADERS];
    for (f, h) in at.iter_mut().zip(resp.headers.iter()) {
        let (name, value) = (h.name.as_ptr() as usize - base, h.value.as_ptr() as usize - base);
        *f = Field {
            name: name as u32,
            name_end: (name + h.name.len()) as u32,
            value: value as u32,
            value_end: (value + h.value.len()) as u32,
        };
    }
    let fields = &at[..resp.headers.len()];
    let head = buf.split_to(len).freeze();
    let mut map = crate::headers::spare::map(fields.len());
    let (mut length, mut normalize, mut chunked, mut other_coding, mut close, mut keep_alive_token) =
        (None::<u64>, false, false, false, false, false);
    for f in fields {
        let raw = &head[f.value as usize..f.value_end as usize];
        let name = HeaderName::from_bytes(&head[f.name as usize..f.name_end as usize])
            .map_err(|_| "invalid response header name")?;
        if name == CONTENT_LENGTH {
            for part in raw.split(|b| *b == b',') {
                let digits = part.trim_ascii();
                // Sent on as it came only when it is one plain number.
                normalize |=
                    length.is_some() || digits.len() != part.len() || (digits.len() > 1 && digits[0] == b'0');
                let n = parse_length(digits).ok_or("invalid Content-Length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length values");
                }
                length = Some(n);
            }
        } else if name == TRANSFER_ENCODING {
            for coding in raw.split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|c| !c.is_empty()) {
                if chunked {
                    // Anything after `chunked` leaves the body without a framing we can read.
                    other_coding = true;
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    other_coding = true;
                }
            }
        } else if name == CONNECTION {
            let mut only_keep_alive = true;
            for token in raw.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                close |= token.eq_ignore_ascii_case(b"close");
                let keep = token.eq_ignore_ascii_case(b"keep-alive");
                keep_alive_token |= keep;
                only_keep_alive &= keep || token.is_empty();
            }
            // `Connection: keep-alive` (what keep-alive upstreams such as nginx send every time)
            // is read; kept, it would only be stripped again with the hop-by-hop fields, and the
            // `Keep-Alive` field it names is stripped by name anyway. Any other option stays for
            // that stripping to see.
            if only_keep_alive {
                continue;
            }
        }
        let value = HeaderValue::from_maybe_shared(head.slice(f.value as usize..f.value_end as usize))
            .map_err(|_| "invalid response header value")?;
        map.append(name, value);
    }
    let mut keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    let bodiless =
        *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
        // The connection now carries another protocol: never reused, never read as HTTP.
        keep_alive = false;
        Framing::Upgraded
    } else if bodiless {
        Framing::Done
    } else if chunked || other_coding {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3); a message with both is
        // suspect, so its connection is not used again.
        if length.is_some() {
            keep_alive = false;
        }
        map.remove(CONTENT_LENGTH);
        if chunked && !other_coding {
            Framing::Chunked(Chunk::Size)
        } else {
            keep_alive = false;
            Framing::Close
        }
    } else if let Some(n) = length {
        if normalize {
            map.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        if n == 0 { Framing::Done } else { Framing::Length(n) }
    } else {
        keep_alive = false;
        Framing::Close
    };
    let mut parts = Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = map;
    Ok(Some(Parsed::Final(parts, framing, keep_alive)))
}

/// Offsets of a header field in the head.
#[derive(Clone, Copy, Default)]
struct Field {
    name: u32,
    name_end: u32,
    value: u32,
    value_end: u32,
}

/// Decimal digits only (no sign, no spaces), at most 19 of them.
fn parse_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn reset(endpoint: &str) -> ProxyError {
    ProxyError::UpstreamReset { endpoint: endpoint.into() }
}

fn protocol(endpoint: &str, why: &'static str) -> ProxyError {
    ProxyError::UpstreamProtocol { endpoint: endpoint.into(), reason: why.into() }
}

/// A response read from `reads` the way [`send`] and its body read one (the head once it is whole,
/// then the body by the framing the head gave), without a socket: status, body, trailers count,
/// whether the connection could be reused. For the `http1_response` fuzz target.
#[doc(hidden)]
pub(crate) fn read_response<'a>(
    method: &Method,
    reads: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(u16, Vec<u8>, usize, bool), &'static str> {
    let mut buf = bytes::BytesMut::new();
    let mut head: Option<(u16, bool)> = None;
    let mut framing = Framing::Done;
    let (mut body, mut trailers) = (Vec::new(), 0);
    for read in reads {
        buf.extend_from_slice(read);
        loop {
            if head.is_none() {
                match take_head(&mut buf, method)? {
                    None if buf.len() >= MAX_HEAD => return Err("response head too large"),
                    None => break,
                    Some(Parsed::Informational) => continue,
                    Some(Parsed::Final(parts, f, keep_alive)) => {
                        head = Some((parts.status.as_u16(), keep_alive));
                        framing = f;
                    }
                }
            }
            match crate::body::wire::take_frame(&mut framing, &mut buf)? {
                Some(frame) if frame.is_data() => {
                    body.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..]))
                }
                Some(_) => trailers += 1,
                None => break,
            }
        }
    }
    let (status, keep_alive) = head.ok_or("no complete response head")?;
    match framing {
        Framing::Done => Ok((status, body, trailers, keep_alive && buf.is_empty())),
        Framing::Close | Framing::Upgraded => Ok((status, body, trailers, false)),
        _ => Err("upstream closed the connection mid-body"),
    }
}

#[cfg(test)]
mod tests;
