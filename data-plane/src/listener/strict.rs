//! Strict HTTP/1.1 framing, checked below hyper.
//!
//! hyper resolves a request carrying both `Content-Length` and `Transfer-Encoding` by dropping
//! the length and reading chunked (RFC 9112 §6.3 allows that), it leaves bare-LF line endings
//! to the parser's leniency, and it reads a body as chunked when the last element of the last
//! `Transfer-Encoding` line is `chunked`, whatever came before. We refuse all of these outright,
//! as request smuggling defences do: such a request gets 400, the connection closes, and nothing
//! reaches an upstream.
//!
//! `Transfer-Encoding` is judged as one list over all its field lines (RFC 9110 §5.3):
//! - `chunked` more than once is refused: "a sender MUST NOT apply the chunked transfer coding
//!   more than once to a message body" (RFC 9112 §6.1);
//! - `chunked` that is not the final coding, or any coding after it, is refused: "If a
//!   Transfer-Encoding header field is present in a request and the chunked transfer coding is
//!   not the final encoding, the message body length cannot be determined reliably; the server
//!   MUST respond with the 400 (Bad Request) status code and then close the connection"
//!   (RFC 9112 §6.3);
//! - an empty list element is refused. RFC 9110 §5.6.1.2 asks a recipient to "parse and ignore a
//!   reasonable number of empty list elements", but implementations disagree here (hyper and
//!   others take the raw last element, so `chunked,` is not chunked to them; an RFC-following
//!   parser reads it as chunked), and a framing two parsers read differently is what smuggling
//!   needs. No sender has a reason to emit one, so the length "cannot be determined reliably".
//!
//! hyper does not expose the raw head, so [`StrictIo`] watches the bytes as hyper reads them and
//! follows the message framing (heads, `Content-Length` bodies, chunked bodies) to find each
//! request head. A verdict for the n-th head is recorded in [`StrictState`] before hyper can see
//! that head, and the proxy asks for it as the n-th request on the connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest request head accepted (request line and headers), as in hyper's buffer setting.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a head (hyper answers 431 above its own limit of 100 anyway).
const MAX_HEADERS: usize = 128;
/// Longest chunk extension tolerated, as in hyper.
const MAX_CHUNK_EXTENSION: u32 = 16 * 1024;

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reject {
    ContentLengthAndTransferEncoding = 1,
    ConflictingContentLength,
    InvalidContentLength,
    UnsupportedTransferEncoding,
    BareLf,
    ObsFold,
    Malformed,
    HeadTooLarge,
    /// The chunked body of an earlier request was malformed, so where this one starts is unknown.
    BadChunk,
    ChunkedTwice,
    ChunkedNotLast,
    EmptyTransferCoding,
}

/// The `Transfer-Encoding` list of one head, gathered over all its field lines.
#[derive(Debug, Default, Clone, Copy)]
struct Codings {
    present: bool,
    chunked: u32,
    /// A coding came after `chunked`.
    after_chunked: bool,
    empty: bool,
}

/// Verdicts shared between the connection's reader and the proxy.
#[derive(Debug, Default)]
pub struct StrictState {
    /// `(index + 1) << 8 | reason` of the first refused head; 0 while none is.
    bad: AtomicU64,
    /// Index of the next request the proxy will admit.
    next: AtomicU64,
}

/// Follows HTTP/1.1 framing over the bytes of a connection.
#[derive(Debug, Default)]
pub struct Framing {
    state: State,
    head: Vec<u8>,
    /// End-of-head detector: 0 mid-line, 1 after LF, 2 after LF CR.
    eol: u8,
    heads: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Head,
    Length(u64),
    Chunked(Chunk),
    /// HTTP/2, or a connection already refused: nothing more to check.
    Passthrough,
}

/// hyper's chunked decoder states, mirrored so both agree on where a body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64, u32),
    SizeLf(u64),
    Body(u64),
    BodyCr,
    BodyLf,
    Trailer,
    TrailerLf,
    EndCr,
    EndLf,
}

/// A connection whose reads are checked by a [`Framing`].
pub struct StrictIo<T> {
    inner: T,
    framing: Framing,
    state: std::sync::Arc<StrictState>,
}

// === impl Reject ===

impl Reject {
    pub fn message(self) -> &'static str {
        match self {
            Self::ContentLengthAndTransferEncoding => "both Content-Length and Transfer-Encoding",
            Self::ConflictingContentLength => "conflicting Content-Length values",
            Self::InvalidContentLength => "invalid Content-Length",
            Self::UnsupportedTransferEncoding => "unsupported Transfer-Encoding",
            Self::BareLf => "line ending without CR",
            Self::ObsFold => "obsolete header line folding",
            Self::Malformed => "malformed request head",
            Self::HeadTooLarge => "request head too large",
            Self::BadChunk => "malformed chunked body",
            Self::ChunkedTwice => "chunked transfer coding applied more than once",
            Self::ChunkedNotLast => "chunked is not the final transfer coding",
            Self::EmptyTransferCoding => "empty element in Transfer-Encoding",
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            1 => Self::ContentLengthAndTransferEncoding,
            2 => Self::ConflictingContentLength,
            3 => Self::InvalidContentLength,
            4 => Self::UnsupportedTransferEncoding,
            5 => Self::BareLf,
            6 => Self::ObsFold,
            8 => Self::HeadTooLarge,
            9 => Self::BadChunk,
            10 => Self::ChunkedTwice,
            11 => Self::ChunkedNotLast,
            12 => Self::EmptyTransferCoding,
            _ => Self::Malformed,
        }
    }
}

// === impl StrictState ===

impl StrictState {
    /// Called once per HTTP/1 request, in order: may this one be served?
    pub fn admit(&self) -> Result<(), Reject> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        match self.bad.load(Ordering::Acquire) {
            0 => Ok(()),
            bad if index + 1 >= bad >> 8 => Err(Reject::from_code(bad as u8)),
            _ => Ok(()),
        }
    }

    /// A refused head the proxy never admitted: the connection ended before it asked, because
    /// hyper's parser refused the same head on its own (and answered 400 itself).
    pub fn unanswered(&self) -> Option<Reject> {
        let bad = self.bad.load(Ordering::Acquire);
        (bad != 0 && (bad >> 8) > self.next.load(Ordering::Relaxed)).then(|| Reject::from_code(bad as u8))
    }

    fn refuse(&self, index: u64, why: Reject) {
        let packed = ((index + 1) << 8) | why as u64;
        let _ = self.bad.compare_exchange(0, packed, Ordering::Release, Ordering::Relaxed);
    }
}

// === impl Framing ===

impl Framing {
    /// Follows `data`, the next bytes read from the client. Returns the index and reason of a
    /// refused head; after that it stops checking.
    pub fn feed(&mut self, mut data: &[u8]) -> Option<(u64, Reject)> {
        while !data.is_empty() {
            let used = match self.state {
                State::Passthrough => return None,
                State::Head => match self.feed_head(data) {
                    Ok(used) => used,
                    Err(why) => return Some(self.refuse(self.heads, why)),
                },
                State::Length(left) => {
                    let used = left.min(data.len() as u64);
                    self.state = if used == left { State::Head } else { State::Length(left - used) };
                    used as usize
                }
                State::Chunked(chunk) => match self.feed_chunk(chunk, data) {
                    Some(used) => used,
                    None => return Some(self.refuse(self.heads, Reject::BadChunk)),
                },
            };
            data = &data[used..];
        }
        None
    }

    fn refuse(&mut self, index: u64, why: Reject) -> (u64, Reject) {
        self.state = State::Passthrough;
        self.head = Vec::new();
        (index, why)
    }

    /// Collects a head until its blank line, then judges it. Returns bytes used.
    fn feed_head(&mut self, data: &[u8]) -> Result<usize, Reject> {
        let mut i = 0;
        if self.head.is_empty() {
            // Blank lines between messages are allowed (RFC 9112 §2.2).
            i = data.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(data.len());
        }
        let start = i;
        while i < data.len() {
            if self.eol == 0 {
                match memchr::memchr(b'\n', &data[i..]) {
                    Some(p) => {
                        i += p + 1;
                        self.eol = 1;
                    }
                    None => i = data.len(),
                }
                continue;
            }
            let b = data[i];
            i += 1;
            self.eol = match (self.eol, b) {
                (1 | 2, b'\n') => {
                    self.eol = 0;
                    self.head.extend_from_slice(&data[start..i]);
                    let head = std::mem::take(&mut self.head);
                    let verdict = self.judge(&head);
                    self.head = head;
                    self.head.clear();
                    verdict?;
                    return Ok(i);
                }
                (1, b'\r') => 2,
                _ => 0,
            };
        }
        self.head.extend_from_slice(&data[start..]);
        if self.head.len() > MAX_HEAD {
            return Err(Reject::HeadTooLarge);
        }
        Ok(data.len())
    }

    /// Checks one complete head and sets the state for what follows it. Only the framing is
    /// examined (line endings, `Content-Length`, `Transfer-Encoding`); hyper parses the rest.
    fn judge(&mut self, head: &[u8]) -> Result<(), Reject> {
        // Size first: a head that arrives in pieces is refused at this size before it is whole,
        // so a whole one must be too, whatever it starts with.
        if head.len() > MAX_HEAD {
            return Err(Reject::HeadTooLarge);
        }
        if self.heads == 0 && head.starts_with(b"PRI * HTTP/2.0\r\n") {
            self.state = State::Passthrough;
            return Ok(());
        }
        let mut length: Option<u64> = None;
        let mut codings = Codings::default();
        let mut http10 = false;
        let mut start = 0;
        let mut fields = 0;
        for lf in memchr::memchr_iter(b'\n', head) {
            if lf == 0 || head[lf - 1] != b'\r' {
                return Err(Reject::BareLf);
            }
            let line = &head[start..lf - 1];
            if start == 0 {
                http10 = request_line_version(line).ok_or(Reject::Malformed)? == 0;
            } else if line.is_empty() {
                break;
            } else if matches!(line[0], b' ' | b'\t') {
                return Err(Reject::ObsFold);
            } else {
                fields += 1;
                if fields > MAX_HEADERS {
                    return Err(Reject::Malformed);
                }
                let colon = memchr::memchr(b':', line).ok_or(Reject::Malformed)?;
                let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
                if name.eq_ignore_ascii_case(b"content-length") {
                    for part in value.split(|b| *b == b',') {
                        let n = parse_length(part.trim_ascii()).ok_or(Reject::InvalidContentLength)?;
                        if length.is_some_and(|l| l != n) {
                            return Err(Reject::ConflictingContentLength);
                        }
                        length = Some(n);
                    }
                } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                    codings.add(value);
                }
            }
            start = lf + 1;
        }
        let chunked = codings.chunked()?;
        let next = match (chunked, length) {
            (Some(_), Some(_)) => return Err(Reject::ContentLengthAndTransferEncoding),
            (Some(false), None) => return Err(Reject::UnsupportedTransferEncoding),
            (Some(true), None) if http10 => return Err(Reject::UnsupportedTransferEncoding),
            (Some(true), None) => State::Chunked(Chunk::Start),
            (None, Some(n)) if n > 0 => State::Length(n),
            (None, _) => State::Head,
        };
        self.heads += 1;
        self.state = next;
        Ok(())
    }

    /// Steps through a chunked body. Returns bytes used, or `None` if the framing is broken.
    fn feed_chunk(&mut self, mut chunk: Chunk, data: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < data.len() {
            if let Chunk::Body(left) = chunk {
                let used = left.min((data.len() - i) as u64);
                i += used as usize;
                chunk = if used == left { Chunk::BodyCr } else { Chunk::Body(left - used) };
                continue;
            }
            let b = data[i];
            i += 1;
            chunk = match (chunk, b) {
                (Chunk::Start, _) => Chunk::Size(u64::from(hex(b)?)),
                (Chunk::Size(n), _) if hex(b).is_some() => {
                    Chunk::Size(n.checked_mul(16)?.checked_add(u64::from(hex(b)?))?)
                }
                (Chunk::Size(n) | Chunk::SizeLws(n), b' ' | b'\t') => Chunk::SizeLws(n),
                (Chunk::Size(n) | Chunk::SizeLws(n), b';') => Chunk::Extension(n, 0),
                (Chunk::Size(n) | Chunk::SizeLws(n) | Chunk::Extension(n, _), b'\r') => Chunk::SizeLf(n),
                (Chunk::Extension(_, _), b'\n') => return None,
                (Chunk::Extension(n, len), _) if len < MAX_CHUNK_EXTENSION => Chunk::Extension(n, len + 1),
                (Chunk::SizeLf(0), b'\n') => Chunk::EndCr,
                (Chunk::SizeLf(n), b'\n') => Chunk::Body(n),
                (Chunk::BodyCr, b'\r') => Chunk::BodyLf,
                (Chunk::BodyLf, b'\n') => Chunk::Start,
                (Chunk::EndCr, b'\r') => Chunk::EndLf,
                (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
                (Chunk::EndCr | Chunk::Trailer, _) => Chunk::Trailer,
                (Chunk::TrailerLf, b'\n') => Chunk::EndCr,
                (Chunk::EndLf, b'\n') => {
                    self.state = State::Head;
                    return Some(i);
                }
                _ => return None,
            };
        }
        self.state = State::Chunked(chunk);
        Some(i)
    }
}

// === impl Codings ===

impl Codings {
    /// Adds one field line's elements, in order.
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        for element in value.split(|b| *b == b',') {
            let coding = element.trim_ascii();
            if coding.is_empty() {
                self.empty = true;
            } else if coding.eq_ignore_ascii_case(b"chunked") {
                self.after_chunked |= self.chunked > 0;
                self.chunked += 1;
            } else {
                self.after_chunked |= self.chunked > 0;
            }
        }
    }

    /// `None` without `Transfer-Encoding`; whether the body is chunked, or why the list is refused.
    fn chunked(&self) -> Result<Option<bool>, Reject> {
        if !self.present {
            return Ok(None);
        }
        if self.empty {
            return Err(Reject::EmptyTransferCoding);
        }
        if self.chunked > 1 {
            return Err(Reject::ChunkedTwice);
        }
        if self.after_chunked {
            return Err(Reject::ChunkedNotLast);
        }
        Ok(Some(self.chunked == 1))
    }
}

/// `METHOD SP target SP HTTP/1.x`: the minor version, or `None` for anything else.
fn request_line_version(line: &[u8]) -> Option<u8> {
    let first_space = memchr::memchr(b' ', line)?;
    if first_space == 0 || line.len() < first_space + 11 {
        return None;
    }
    match &line[line.len() - 9..] {
        b" HTTP/1.1" => Some(1),
        b" HTTP/1.0" => Some(0),
        _ => None,
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Digits only: no sign, no spaces, no empty value.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

// === impl StrictIo ===

impl<T> StrictIo<T> {
    pub fn new(inner: T, state: std::sync::Arc<StrictState>) -> Self {
        Self { inner, framing: Framing::default(), state }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StrictIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some((index, why)) = this.framing.feed(&buf.filled()[before..]) {
            this.state.refuse(index, why);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StrictIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
