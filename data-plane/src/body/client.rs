//! A request body read inline from its HTTP/1.1 connection. The connection's socket and read
//! buffer are shared by the connection's task (heads, responses) and the body, which whoever
//! polls it (the upload, in the request's own task) reads straight from them. Chunked bodies are
//! decoded with the strict framing check's own states, so both agree on where a body ends.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use sluice_tls::server::MaybeTls;
use tokio::io::AsyncWrite;
use tokio_util::io::poll_read_buf;

use super::BodyError;
use crate::listener::strict::{BodyFraming, Chunk, MAX_HEAD, Reject, parse_trailers};
use crate::sync::lock;

/// Room made in the buffer before a read.
pub(crate) const READ_SIZE: usize = 8 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A connection's socket (TLS or not) and what has been read from it.
pub(crate) struct Io {
    pub(crate) tcp: MaybeTls,
    pub(crate) wire: Wire,
    /// Which request's body may read: a body kept past its response reads nothing more.
    generation: u64,
    /// Bytes of `100 Continue` still owed before the body's first read; 0: none.
    continue_left: usize,
    /// `100 Continue` was written but may sit in the TLS layer's buffer: flush before reading.
    continue_unflushed: bool,
}

/// The bytes read from a connection and not used yet, cut into heads and body pieces: the
/// parsing half of a connection, without its socket (the `http1_framing` fuzz target drives it
/// directly).
#[derive(Debug)]
pub struct Wire {
    pub(crate) buf: BytesMut,
    /// Where the search for the end of a head resumes.
    scanned: usize,
    body: BodyState,
    /// The chunked body's trailer section as read so far.
    trailers: Vec<u8>,
}

/// What the buffer gave of the body.
#[derive(Debug)]
pub enum Piece {
    Data(Bytes),
    Trailers(http::HeaderMap),
}

/// Where the current request body is in its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyState {
    Length(u64),
    Chunked(Chunk),
    Done,
    /// The client broke the framing or left mid-body: the connection cannot be reused.
    Broken,
}

pub(crate) type Shared = Arc<Mutex<Io>>;

/// A request body read inline from its HTTP/1.1 connection.
pub struct RequestBody {
    io: Shared,
    generation: u64,
    /// `Content-Length` (0 without a body), for the size hint; `None` when chunked.
    length: Option<u64>,
}

// === impl Io ===

impl Io {
    pub(crate) fn new(tcp: impl Into<MaybeTls>, buf: BytesMut) -> Shared {
        Arc::new(Mutex::new(Self {
            tcp: tcp.into(),
            wire: Wire::new(buf),
            generation: 0,
            continue_left: 0,
            continue_unflushed: false,
        }))
    }

    /// Starts the next request, whose body is framed as `body`. A body of an earlier request
    /// reads nothing more. `expect_continue`: the client waits for `100 Continue` before it sends
    /// the body.
    pub(crate) fn begin(io: &Shared, body: BodyFraming, expect_continue: bool) -> RequestBody {
        let mut this = lock(io);
        this.generation += 1;
        this.wire.begin(body);
        this.continue_left =
            if expect_continue && this.wire.body != BodyState::Done { CONTINUE.len() } else { 0 };
        let length = match body {
            BodyFraming::None => Some(0),
            BodyFraming::Length(n) => Some(n),
            BodyFraming::Chunked => None,
        };
        RequestBody { io: io.clone(), generation: this.generation, length }
    }

    /// Whether the current request body was read to its end, reading what has already arrived
    /// of it; one left unread (the response came first) means closing rather than waiting for
    /// it. After this, the request's body reads nothing more.
    pub(crate) fn finished(io: &Shared) -> bool {
        let mut this = lock(io);
        this.generation += 1;
        if this.continue_left > 0 {
            return this.wire.body == BodyState::Done;
        }
        while this.wire.take_data().is_some() {}
        this.wire.body == BodyState::Done
    }
}

// === impl Wire ===

impl Wire {
    pub fn new(buf: BytesMut) -> Self {
        Self { buf, scanned: 0, body: BodyState::Done, trailers: Vec::new() }
    }

    /// Appends bytes read.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole head (through the blank line that ends it), after any blank lines before
    /// it (RFC 9112 §2.2); `Ok(None)` while more bytes are needed; `HeadTooLarge` past
    /// [`MAX_HEAD`], whether the head arrived whole or in pieces.
    pub fn take_head(&mut self) -> Result<Option<Bytes>, Reject> {
        if self.scanned == 0 {
            let blank = self.buf.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(self.buf.len());
            self.buf.advance(blank);
        }
        match head_end(&self.buf, self.scanned) {
            Some(end) if end > MAX_HEAD => Err(Reject::HeadTooLarge),
            Some(end) => {
                self.scanned = 0;
                Ok(Some(self.buf.split_to(end).freeze()))
            }
            None if self.buf.len() > MAX_HEAD => Err(Reject::HeadTooLarge),
            None => {
                self.scanned = self.buf.len();
                Ok(None)
            }
        }
    }

    /// Starts the body of the head just taken.
    pub(crate) fn begin(&mut self, body: BodyFraming) {
        self.body = match body {
            BodyFraming::None | BodyFraming::Length(0) => BodyState::Done,
            BodyFraming::Length(n) => BodyState::Length(n),
            BodyFraming::Chunked => BodyState::Chunked(Chunk::Start),
        };
        self.trailers.clear();
    }

    /// Whether the body has ended (`Some(true)`), broke its framing (`Some(false)`), or needs
    /// more bytes (`None`).
    pub fn body_ended(&self) -> Option<bool> {
        match self.body {
            BodyState::Done => Some(true),
            BodyState::Broken => Some(false),
            BodyState::Length(_) | BodyState::Chunked(_) => None,
        }
    }

    /// Takes the next body bytes (or the trailers) from the buffer, stepping over chunk framing;
    /// `None` when it has none to give. Sets `Broken` on a framing error and `Done` at the end.
    pub fn take_data(&mut self) -> Option<Piece> {
        loop {
            match self.body {
                BodyState::Done | BodyState::Broken => return None,
                _ if self.buf.is_empty() => return None,
                BodyState::Length(left) => {
                    let n = left.min(self.buf.len() as u64);
                    self.body = if n == left { BodyState::Done } else { BodyState::Length(left - n) };
                    return Some(Piece::Data(self.buf.split_to(n as usize).freeze()));
                }
                BodyState::Chunked(Chunk::Body(left)) => {
                    let n = left.min(self.buf.len() as u64);
                    self.body =
                        BodyState::Chunked(if n == left { Chunk::BodyCr } else { Chunk::Body(left - n) });
                    return Some(Piece::Data(self.buf.split_to(n as usize).freeze()));
                }
                BodyState::Chunked(mut chunk) => {
                    let mut used = 0;
                    while used < self.buf.len() && !matches!(chunk, Chunk::Body(_) | Chunk::Done) {
                        match chunk.next_keeping(self.buf[used], &mut self.trailers) {
                            Some(next) => chunk = next,
                            None => {
                                self.body = BodyState::Broken;
                                return None;
                            }
                        }
                        used += 1;
                    }
                    self.buf.advance(used);
                    if chunk != Chunk::Done {
                        self.body = BodyState::Chunked(chunk);
                        continue;
                    }
                    self.body = BodyState::Done;
                    // More than the final CRLF: a trailer section.
                    if self.trailers.len() > 2 {
                        return match parse_trailers(&self.trailers) {
                            Some(t) => Some(Piece::Trailers(t)),
                            None => {
                                self.body = BodyState::Broken;
                                None
                            }
                        };
                    }
                }
            }
        }
    }
}

/// The length of the head at the start of `buf` (through the blank line that ends it: LF then LF
/// or CR LF, as the framing check sees it), searching from `from`.
pub(crate) fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let from = from.saturating_sub(2);
    for lf in memchr::memchr_iter(b'\n', &buf[from..]) {
        let lf = from + lf;
        match buf.get(lf + 1..) {
            Some([b'\n', ..]) => return Some(lf + 2),
            Some([b'\r', b'\n', ..]) => return Some(lf + 3),
            _ => {}
        }
    }
    None
}

// === impl RequestBody ===

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut guard = lock(&self.io);
        let io = &mut *guard;
        if io.generation != self.generation {
            return Poll::Ready(None);
        }
        while io.continue_left > 0 {
            let from = CONTINUE.len() - io.continue_left;
            let n = ready!(Pin::new(&mut io.tcp).poll_write(cx, &CONTINUE[from..]))
                .map_err(|_| BodyError::Client("the client connection failed"))?;
            if n == 0 {
                return Poll::Ready(Some(Err(BodyError::Client("the client connection failed"))));
            }
            io.continue_left -= n;
            io.continue_unflushed = io.continue_left == 0;
        }
        if io.continue_unflushed {
            ready!(Pin::new(&mut io.tcp).poll_flush(cx))
                .map_err(|_| BodyError::Client("the client connection failed"))?;
            io.continue_unflushed = false;
        }
        loop {
            match io.wire.take_data() {
                Some(Piece::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Some(Piece::Trailers(t)) => return Poll::Ready(Some(Ok(Frame::trailers(t)))),
                None => {}
            }
            match io.wire.body {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Broken => {
                    return Poll::Ready(Some(Err(BodyError::Client("malformed chunked body"))));
                }
                _ => {}
            }
            io.wire.buf.reserve(READ_SIZE);
            match ready!(poll_read_buf(Pin::new(&mut io.tcp), cx, &mut io.wire.buf)) {
                Ok(0) | Err(_) => {
                    io.wire.body = BodyState::Broken;
                    return Poll::Ready(Some(Err(BodyError::Client(
                        "the client closed the connection mid-body",
                    ))));
                }
                Ok(_) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.length == Some(0) {
            return true;
        }
        let io = lock(&self.io);
        io.generation != self.generation || io.wire.body == BodyState::Done
    }

    fn size_hint(&self) -> SizeHint {
        self.length.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
