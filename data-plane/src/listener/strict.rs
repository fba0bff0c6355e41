//! Strict HTTP/1.1 request framing.
//!
//! Parsers differ on a request carrying both `Content-Length` and `Transfer-Encoding` (RFC 9112
//! §6.3 allows dropping the length and reading chunked), on bare-LF line endings, and on a
//! `Transfer-Encoding` whose last element is `chunked` after other codings. We refuse all of
//! these outright, as request smuggling defences do: such a request gets 400, the connection
//! closes, and nothing reaches an upstream.
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
//! [`judge`] checks one whole head; the inline HTTP/1.1 server (`listener::h1`) calls it on
//! every head it reads and decodes chunked bodies with [`Chunk::next`], so the check and the
//! server cannot disagree on where a message ends. A refusal of the n-th head is recorded in
//! [`StrictState`], and the request path asks for it as the n-th request on the connection.
//! [`Framing`] follows the same framing over a byte stream, whatever its read boundaries; the
//! `http1_framing` fuzz target holds the server to its verdicts.

use std::sync::atomic::{AtomicU64, Ordering};

/// Largest request head accepted (request line and headers): 431 beyond.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in a head.
const MAX_HEADERS: usize = 128;
/// Longest chunk extension tolerated.
const MAX_CHUNK_EXTENSION: u32 = 16 * 1024;
/// Largest trailer section accepted.
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;

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
    /// `Content_Length` or `Transfer_Encoding`: servers that map `_` to `-` in field names (CGI
    /// and WSGI environments do) would frame the body by a field the proxy does not.
    FramingLookalike,
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
    /// The current chunked body's trailer section so far.
    trailers: Vec<u8>,
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

/// Where a chunked body is, byte by byte (hyper's decoder's states, as clients and upstreams
/// commonly read them). The inline HTTP/1.1 server decodes request bodies with the same states
/// ([`Chunk::next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
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
    /// Past the last chunk's final line: the body has ended.
    Done,
}

/// How the body after a request head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    None,
    Length(u64),
    Chunked,
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
            Self::FramingLookalike => {
                "a Content-Length or Transfer-Encoding field spelled with an underscore"
            }
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
            13 => Self::FramingLookalike,
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

    /// A refused head the request path never admitted: the connection ended before it asked
    /// (the listener's overload limit answered first, say).
    pub fn unanswered(&self) -> Option<Reject> {
        let bad = self.bad.load(Ordering::Acquire);
        (bad != 0 && (bad >> 8) > self.next.load(Ordering::Relaxed)).then(|| Reject::from_code(bad as u8))
    }

    /// Records that the `index`-th head is refused (the first refusal stands).
    pub(crate) fn refuse(&self, index: u64, why: Reject) {
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

    /// Checks one complete head and sets the state for what follows it. A first head of the
    /// HTTP/2 preface (within the size limit) ends the checking.
    fn judge(&mut self, head: &[u8]) -> Result<(), Reject> {
        if self.heads == 0 && head.len() <= MAX_HEAD && head.starts_with(b"PRI * HTTP/2.0\r\n") {
            self.state = State::Passthrough;
            return Ok(());
        }
        self.state = match judge(head)? {
            BodyFraming::Chunked => State::Chunked(Chunk::Start),
            BodyFraming::Length(n) => State::Length(n),
            BodyFraming::None => State::Head,
        };
        self.heads += 1;
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
            chunk = chunk.next_keeping(data[i], &mut self.trailers)?;
            i += 1;
            if chunk == Chunk::Done {
                self.trailers.clear();
                self.state = State::Head;
                return Some(i);
            }
        }
        self.state = State::Chunked(chunk);
        Some(i)
    }
}

/// Checks one complete request head (through its blank line) and says how its body is framed.
/// Only the framing is examined (line endings, `Content-Length`, `Transfer-Encoding`); the parser
/// does the rest.
pub(crate) fn judge(head: &[u8]) -> Result<BodyFraming, Reject> {
    // Size first: a head that arrives in pieces is refused at this size before it is whole,
    // so a whole one must be too, whatever it starts with.
    if head.len() > MAX_HEAD {
        return Err(Reject::HeadTooLarge);
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
            // RFC 9112 §5.1: no whitespace between a field name and its colon; a parser that
            // allowed it would take `Content-Length : 5` for a length the proxy never saw.
            if name.last().is_some_and(|b| matches!(b, b' ' | b'\t')) {
                return Err(Reject::Malformed);
            }
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
            } else if (name.len() == 14 && name.eq_ignore_ascii_case(b"content_length"))
                || (name.len() == 17 && name.eq_ignore_ascii_case(b"transfer_encoding"))
            {
                return Err(Reject::FramingLookalike);
            }
        }
        start = lf + 1;
    }
    let chunked = codings.chunked()?;
    Ok(match (chunked, length) {
        (Some(_), Some(_)) => return Err(Reject::ContentLengthAndTransferEncoding),
        (Some(false), None) => return Err(Reject::UnsupportedTransferEncoding),
        (Some(true), None) if http10 => return Err(Reject::UnsupportedTransferEncoding),
        (Some(true), None) => BodyFraming::Chunked,
        (None, Some(n)) if n > 0 => BodyFraming::Length(n),
        (None, _) => BodyFraming::None,
    })
}

// === impl Chunk ===

impl Chunk {
    /// [`Chunk::next`], keeping the trailer section's bytes in `trailers` and, at the end of the
    /// body, holding a trailer section to the rules of a head ([`parse_trailers`]). Both the
    /// byte-stream check and the server's body decoder step with this.
    pub(crate) fn next_keeping(self, b: u8, trailers: &mut Vec<u8>) -> Option<Self> {
        // Past the last chunk: the trailer section (or the blank line that ends the body).
        if matches!(self, Self::EndCr | Self::EndLf | Self::Trailer | Self::TrailerLf) {
            trailers.push(b);
            if trailers.len() > MAX_TRAILERS {
                return None;
            }
        }
        let next = self.next(b)?;
        // More than the final CR LF: a trailer section.
        if next == Self::Done && trailers.len() > 2 && parse_trailers(trailers).is_none() {
            return None;
        }
        Some(next)
    }

    /// The state after the framing byte `b` (not called in `Body`, whose bytes are data), or
    /// `None` if the framing is broken.
    fn next(self, b: u8) -> Option<Self> {
        Some(match (self, b) {
            (Self::Start, _) => Self::Size(u64::from(hex(b)?)),
            (Self::Size(n), _) if hex(b).is_some() => {
                Self::Size(n.checked_mul(16)?.checked_add(u64::from(hex(b)?))?)
            }
            (Self::Size(n) | Self::SizeLws(n), b' ' | b'\t') => Self::SizeLws(n),
            (Self::Size(n) | Self::SizeLws(n), b';') => Self::Extension(n, 0),
            (Self::Size(n) | Self::SizeLws(n) | Self::Extension(n, _), b'\r') => Self::SizeLf(n),
            (Self::Extension(_, _), b'\n') => return None,
            (Self::Extension(n, len), _) if len < MAX_CHUNK_EXTENSION => Self::Extension(n, len + 1),
            (Self::SizeLf(0), b'\n') => Self::EndCr,
            (Self::SizeLf(n), b'\n') => Self::Body(n),
            (Self::BodyCr, b'\r') => Self::BodyLf,
            (Self::BodyLf, b'\n') => Self::Start,
            (Self::EndCr, b'\r') => Self::EndLf,
            (Self::Trailer, b'\r') => Self::TrailerLf,
            (Self::EndCr | Self::Trailer, _) => Self::Trailer,
            (Self::TrailerLf, b'\n') => Self::EndCr,
            (Self::EndLf, b'\n') => Self::Done,
            _ => return None,
        })
    }
}

/// Parses a chunked body's trailer section (its field lines and the blank line that ends it) as
/// strictly as a head: CR LF line endings only, no obsolete folding, valid names and values,
/// nothing after the blank line. `None` if it breaks any of these.
pub(crate) fn parse_trailers(section: &[u8]) -> Option<http::HeaderMap> {
    let mut start = 0;
    for lf in memchr::memchr_iter(b'\n', section) {
        if lf == 0 || section[lf - 1] != b'\r' || matches!(section.get(start), Some(b' ' | b'\t')) {
            return None;
        }
        start = lf + 1;
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let httparse::Status::Complete((used, parsed)) = httparse::parse_headers(section, &mut fields).ok()?
    else {
        return None;
    };
    if used != section.len() {
        return None;
    }
    let mut map = http::HeaderMap::with_capacity(parsed.len());
    for f in parsed {
        let name = http::HeaderName::from_bytes(f.name.as_bytes()).ok()?;
        map.append(name, http::HeaderValue::from_bytes(f.value).ok()?);
    }
    Some(map)
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

#[cfg(test)]
mod tests;
