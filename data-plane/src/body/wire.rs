//! HTTP/1.1 on an upstream connection, at the level of bytes: the connection itself, the request
//! body as it is written (chunked when its length is unknown), and the response body read and
//! de-framed from the socket by the body the client is sent. `upstream::h1` writes the heads and
//! parses the response's; this module sits with the other bodies so the response body needs
//! nothing above it (it gives its connection back through [`Pooling`]).

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::{BodyError, RequestBody};
use crate::resilience::breaker::ConnectionSlot;

mod stream;

pub(crate) use stream::Io;

/// Longest chunk-size line (size and extensions), and all trailers together.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// What a read asks the socket for at first, and at most.
const READ_SIZE: usize = 16 * 1024;
const MAX_READ_SIZE: usize = 128 * 1024;

/// An open connection to an endpoint, idle or in use by one exchange.
pub(crate) struct Conn {
    pub(crate) io: Io,
    /// Bytes read and not yet used.
    pub(crate) buf: BytesMut,
    /// Room made for the next read: grows while reads fill it.
    read_size: usize,
    /// Its place among the pool's open connections (the breaker's limit), given back on close.
    _slot: ConnectionSlot,
}

/// Where a connection goes once its exchange is over: the pool of its endpoint and worker.
pub(crate) trait Pooling: Send + Sync {
    fn give_back(&self, conn: Conn, worker: usize, max_idle: usize, generation: u64);
}

/// Where a connection returns to after an exchange.
pub(crate) struct Return {
    pub pool: Arc<dyn Pooling>,
    pub worker: usize,
    pub max_idle: usize,
    /// The pool's settings generation when the connection was taken.
    pub generation: u64,
}

/// The request body still going upstream.
pub(crate) struct Upload {
    body: RequestBody,
    chunked: bool,
    /// Encoded and not yet written: chunk-size line, data, CRLF (or the last chunk).
    pending: [Bytes; 3],
    /// The body ended and its last bytes are in `pending`.
    ending: bool,
}

/// The response body, read from the connection.
pub struct ResponseBody {
    state: Option<Reading>,
    /// Bytes still to come (`Content-Length`), for `size_hint`.
    hint: Option<u64>,
}

struct Reading {
    conn: Conn,
    framing: Framing,
    /// Still sending the request body (the upstream answered before it ended). Boxed: rare,
    /// and large.
    upload: Option<Box<Upload>>,
    /// Both sides allow the connection to be used again.
    keep_alive: bool,
    back: Option<Return>,
    endpoint: Box<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes.
    Close,
    Done,
    /// A `101 Switching Protocols`: no body; the connection, kept here, is no longer HTTP and is
    /// taken whole by the client connection's tunnel ([`ResponseBody::take_upgraded`]).
    Upgraded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

// === impl Conn ===

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("peer", &self.io.tcp().peer_addr().ok()).finish_non_exhaustive()
    }
}

impl Conn {
    pub(crate) fn new(io: Io, slot: ConnectionSlot) -> Self {
        Self { io, buf: BytesMut::new(), read_size: READ_SIZE, _slot: slot }
    }

    /// Whether an idle connection can carry a request: the upstream has neither closed it nor
    /// sent anything (an idle connection has nothing to say).
    pub(crate) fn is_usable(&mut self) -> bool {
        self.io.is_usable()
    }

    /// Readies a connection for its pool. One whose reads grew for a large body gives its
    /// buffer up (up to 128 KiB and more, held idle until the pool closes the connection) and
    /// starts small again; one that stayed small keeps it, so small exchanges allocate nothing.
    fn settle(&mut self) {
        settle(&mut self.buf, &mut self.read_size);
    }
}

fn settle(buf: &mut BytesMut, read_size: &mut usize) {
    if *read_size > READ_SIZE && buf.is_empty() {
        *buf = BytesMut::new();
        *read_size = READ_SIZE;
    }
}

/// Reads more into the connection's buffer; `Ok(0)` at end of stream.
pub(crate) fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
    conn.buf.reserve(conn.read_size);
    let room = conn.buf.capacity() - conn.buf.len();
    let n = ready!(poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf))?;
    // A read that filled all the room asks for more next time (large bodies), up to a bound
    // that keeps a connection's buffer small.
    if n >= room && conn.read_size < MAX_READ_SIZE {
        conn.read_size *= 2;
    }
    Poll::Ready(Ok(n))
}

/// Why sending the request body stopped.
pub(crate) enum Sending {
    /// The client's body failed (too large, stalled, gone).
    Body(BodyError),
    /// The upstream's socket refused more.
    Io(std::io::Error),
}

// === impl Upload ===

impl Upload {
    pub(crate) fn new(body: RequestBody, chunked: bool) -> Self {
        Self { body, chunked, pending: [Bytes::new(), Bytes::new(), Bytes::new()], ending: false }
    }

    /// Writes what is pending and pulls the next frames until the body has gone whole.
    pub(crate) fn poll_send(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), Sending>> {
        loop {
            while self.pending.iter().any(|b| !b.is_empty()) {
                let slices = [
                    IoSlice::new(&self.pending[0]),
                    IoSlice::new(&self.pending[1]),
                    IoSlice::new(&self.pending[2]),
                ];
                let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices)).map_err(Sending::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(Sending::Io(std::io::ErrorKind::WriteZero.into())));
                }
                let mut left = n;
                for part in &mut self.pending {
                    let take = left.min(part.len());
                    part.advance(take);
                    left -= take;
                }
            }
            // Before waiting on the client (or for the response): what TLS still holds goes out.
            ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(Sending::Io)?;
            if self.ending {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers are not sent to HTTP/1.1 upstreams (they did not ask with `TE`).
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    if self.chunked {
                        self.pending =
                            [Bytes::from(format!("{:x}\r\n", data.len())), data, Bytes::from_static(b"\r\n")];
                    } else {
                        self.pending[1] = data;
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(Sending::Body(e))),
                None => {
                    self.ending = true;
                    if self.chunked {
                        self.pending[2] = Bytes::from_static(b"0\r\n\r\n");
                    }
                }
            }
        }
    }
}

// === impl ResponseBody ===

impl ResponseBody {
    /// The body of a response whose head has been read from `conn`; `upload` is what is left of
    /// the request body when the upstream answered before it ended.
    pub(crate) fn new(
        conn: Conn,
        framing: Framing,
        upload: Option<Upload>,
        keep_alive: bool,
        back: Return,
        endpoint: &str,
    ) -> Self {
        let hint = match framing {
            Framing::Length(n) => Some(n),
            Framing::Done | Framing::Upgraded => Some(0),
            _ => None,
        };
        let mut body = Self {
            state: Some(Reading {
                conn,
                framing,
                upload: upload.map(Box::new),
                keep_alive,
                back: Some(back),
                endpoint: endpoint.into(),
            }),
            hint,
        };
        body.release_if_done();
        body
    }

    /// Hands the connection back once the exchange is over and it may carry another.
    fn release_if_done(&mut self) {
        let Some(r) = &self.state else { return };
        if r.framing != Framing::Done || r.upload.is_some() {
            return;
        }
        if let Some(mut r) = self.state.take()
            && r.keep_alive
            && r.conn.buf.is_empty()
            && let Some(back) = r.back.take()
        {
            r.conn.settle();
            back.pool.give_back(r.conn, back.worker, back.max_idle, back.generation);
        }
    }

    /// The connection of a `101` answer, for the tunnel; `None` for any other answer.
    pub(crate) fn take_upgraded(&mut self) -> Option<Conn> {
        match &self.state {
            Some(r) if r.framing == Framing::Upgraded => self.state.take().map(|r| r.conn),
            _ => None,
        }
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(r) = self.state.as_mut() else { return Poll::Ready(None) };
        // What follows a 101 is the other protocol's: never read as a body.
        if r.framing == Framing::Upgraded {
            return Poll::Ready(None);
        }
        // The upstream answered before the request body ended: keep sending it alongside.
        if let Some(u) = r.upload.as_mut() {
            match u.poll_send(&mut r.conn.io, cx) {
                Poll::Ready(Ok(())) => r.upload = None,
                Poll::Ready(Err(_)) => {
                    r.upload = None;
                    r.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let frame = match take_frame(&mut r.framing, &mut r.conn.buf) {
                Ok(frame) => frame,
                Err(why) => return Poll::Ready(Some(Err(BodyError::Upstream(why)))),
            };
            if let Some(frame) = frame {
                if let Framing::Length(left) = r.framing {
                    self.hint = Some(left);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            if r.framing == Framing::Done {
                return Poll::Ready(None);
            }
            match ready!(poll_fill(&mut r.conn, cx)) {
                Ok(0) if r.framing == Framing::Close => {
                    r.framing = Framing::Done;
                    r.keep_alive = false;
                }
                Ok(0) => {
                    return Poll::Ready(Some(Err(BodyError::Upstream(
                        "upstream closed the connection mid-body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(endpoint = %r.endpoint, error = %e, "reading a response body failed");
                    return Poll::Ready(Some(Err(BodyError::Upstream(
                        "upstream reset the connection mid-body",
                    ))));
                }
            }
        }
    }
}

/// The next frame of a body with this framing that `buf` holds; `None` when more bytes are
/// needed or the body is done (`Framing::Done`).
pub(crate) fn take_frame(
    framing: &mut Framing,
    buf: &mut BytesMut,
) -> Result<Option<Frame<Bytes>>, &'static str> {
    Ok(match *framing {
        Framing::Done | Framing::Upgraded => None,
        Framing::Length(left) if !buf.is_empty() => {
            let take = left.min(buf.len() as u64);
            *framing = if take == left { Framing::Done } else { Framing::Length(left - take) };
            Some(Frame::data(buf.split_to(take as usize).freeze()))
        }
        Framing::Close if !buf.is_empty() => Some(Frame::data(buf.split().freeze())),
        Framing::Chunked(state) => {
            let (next, frame) = decode_chunk(buf, state)?;
            *framing = next;
            frame
        }
        Framing::Length(_) | Framing::Close => None,
    })
}

/// Takes what it can of a chunked body from `buf`: the next state and a frame (data, or the
/// trailers), or `None` when more bytes are needed.
pub(crate) fn decode_chunk(
    buf: &mut BytesMut,
    state: Chunk,
) -> Result<(Framing, Option<Frame<Bytes>>), &'static str> {
    let mut state = state;
    loop {
        match state {
            Chunk::Size => {
                let Some(end) = memchr::memchr(b'\n', buf) else {
                    return if buf.len() > MAX_CHUNK_LINE {
                        Err("chunk-size line too long")
                    } else {
                        Ok((Framing::Chunked(state), None))
                    };
                };
                let line = buf[..end].strip_suffix(b"\r").ok_or("chunk-size line without CRLF")?;
                let size = line.split(|b| *b == b';').next().unwrap_or_default();
                let size = parse_hex(size).ok_or("invalid chunk size")?;
                buf.advance(end + 1);
                state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok((Framing::Chunked(state), None));
                }
                let take = left.min(buf.len() as u64);
                let data = buf.split_to(take as usize).freeze();
                let next = if take == left { Chunk::DataEnd } else { Chunk::Data(left - take) };
                return Ok((Framing::Chunked(next), Some(Frame::data(data))));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok((Framing::Chunked(state), None));
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF");
                }
                buf.advance(2);
                state = Chunk::Size;
            }
            Chunk::Trailers => {
                // Trailer fields, then an empty line.
                let Some(end) = find_blank_line(buf) else {
                    return if buf.len() > MAX_TRAILERS {
                        Err("trailers too large")
                    } else {
                        Ok((Framing::Chunked(state), None))
                    };
                };
                let block = buf.split_to(end);
                let mut trailers = HeaderMap::new();
                for line in block[..].split(|b| *b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)) {
                    if line.is_empty() {
                        continue;
                    }
                    let colon = line.iter().position(|b| *b == b':').ok_or("malformed trailer")?;
                    let name = HeaderName::from_bytes(&line[..colon]).map_err(|_| "invalid trailer name")?;
                    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii())
                        .map_err(|_| "invalid trailer value")?;
                    trailers.append(name, value);
                }
                let frame = (!trailers.is_empty()).then(|| Frame::trailers(trailers));
                return Ok((Framing::Done, frame));
            }
        }
    }
}

/// The length of the trailer section at the start of `buf`, its final CRLF included.
fn find_blank_line(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4)
}

/// Hex digits, at most 15 of them (sizes below 2^60).
fn parse_hex(digits: &[u8]) -> Option<u64> {
    let digits = digits.trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, b| Some(n * 16 + u64::from((*b as char).to_digit(16)?)))
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let frame = this.poll_data(cx);
        match &frame {
            Poll::Ready(None) | Poll::Ready(Some(Ok(_))) => this.release_if_done(),
            // A broken body leaves the connection in an unknown state: closed with the body.
            Poll::Ready(Some(Err(_))) => this.state = None,
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.state.as_ref().is_none_or(|r| matches!(r.framing, Framing::Done | Framing::Upgraded))
    }

    fn size_hint(&self) -> SizeHint {
        match self.hint {
            Some(n) if self.state.is_some() => SizeHint::with_exact(n),
            Some(_) => SizeHint::with_exact(0),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_grown_for_a_large_body_goes_back_small() {
        // Grown: a read filled 128 KiB of room; the body is read and the buffer empty.
        let mut buf = BytesMut::with_capacity(MAX_READ_SIZE);
        let mut read_size = MAX_READ_SIZE;
        settle(&mut buf, &mut read_size);
        assert_eq!((buf.capacity(), read_size), (0, READ_SIZE));

        // Small exchanges keep their buffer: nothing to allocate for the next one.
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        let mut read_size = READ_SIZE;
        settle(&mut buf, &mut read_size);
        assert_eq!((buf.capacity(), read_size), (READ_SIZE, READ_SIZE));
    }
}
