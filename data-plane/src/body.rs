//! Bodies on the request path. Both directions stream frame by frame; of a request body only its
//! start (the route's `request_body.buffer`) is read before it goes upstream ([`Early`]). A body
//! that makes no progress for its idle timeout, or a request body slower than the route's minimum
//! rate ([`Pace`]), ends with an error, which aborts the exchange on both sides.

pub(crate) mod client;
pub(crate) mod wire;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, Sleep};

use crate::resilience::retry::MAX_REPLAY_BODY;
use crate::sync::lock;

/// What went wrong while streaming a body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body stalled: no data for {0:?}")]
    Idle(Duration),
    /// A request body arrived slower than the route's minimum rate (bytes per second).
    #[error("request body arrived slower than {0} bytes per second")]
    TooSlow(u64),
    #[error("request body is larger than the route's limit of {0} bytes")]
    TooLarge(u64),
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    /// An HTTP/1.1 upstream's body broke off or was malformed.
    #[error("{0}")]
    Upstream(&'static str),
    /// An HTTP/1.1 client's body broke off or was malformed.
    #[error("{0}")]
    Client(&'static str),
}

/// The request body sent upstream: the client's body as it arrives (abandoned if it stalls,
/// refused past the route's size limit), or a copy of it kept for a retry.
pub struct RequestBody(ReqKind);

enum ReqKind {
    Client {
        /// What was read before the request went upstream, sent first.
        early: Option<Box<Early>>,
        body: Idle<ClientBody>,
        pace: Pace,
        /// Bytes left before the route's limit.
        allowance: u64,
        limit: u64,
        /// Where the body is copied while it fits, so a retry can send it again.
        copy: Option<Arc<Mutex<Replay>>>,
    },
    Replay {
        chunks: VecDeque<Bytes>,
        upload: Option<Arc<Upload>>,
    },
}

/// The start of a request body, read before the request took upstream capacity: its chunks,
/// and whether the body ended within them (with its trailers, if any).
#[derive(Debug, Default)]
pub struct Early {
    pub chunks: VecDeque<Bytes>,
    pub trailers: Option<http::HeaderMap>,
    pub ended: bool,
}

/// The slowest a request body may arrive: whole within `grace` plus one second per `min_rate`
/// bytes received, counted from `start` (Apache's `mod_reqtimeout` rule). Checked as data
/// arrives; a body that stops altogether is its idle timeout's.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub start: Instant,
    pub grace: Duration,
    /// Bytes per second; 0: no minimum.
    pub min_rate: u64,
    /// Bytes received so far.
    pub received: u64,
}

/// A copy of a request body, kept while it fits in its limit ([`MAX_REPLAY_BODY`] by default).
#[derive(Debug)]
pub struct Replay {
    chunks: Vec<Bytes>,
    size: usize,
    limit: usize,
    /// The whole body was copied.
    complete: bool,
    /// It did not fit (or had trailers); it cannot be replayed.
    spoiled: bool,
    /// Told once the copy is complete or spoiled (a mirror waits for it).
    settled: Option<Arc<Notify>>,
}

/// The first `limit` bytes of a response body, handed over once the body has been sent whole.
/// Dropped before that (the client gone, the body failed), it hands over nothing.
#[derive(Debug)]
pub struct Capture {
    chunks: Vec<Bytes>,
    size: usize,
    limit: usize,
    truncated: bool,
    to: Option<oneshot::Sender<Captured>>,
}

/// A captured response body: whole, or its first bytes when `truncated`.
#[derive(Debug)]
pub struct Captured {
    pub body: Bytes,
    pub truncated: bool,
}

/// A body with an idle timeout.
pub struct Idle<B> {
    inner: B,
    timer: IdleTimer,
    /// Told when the body has been read to its end.
    upload: Option<Arc<Upload>>,
}

/// When a request body finished going upstream. Shared by the body and its exchange: the
/// response timeout counts from this moment, and the upstream connection is only reused once
/// both directions are done.
#[derive(Debug, Default)]
pub struct Upload {
    done: OnceLock<Instant>,
}

/// Fires when a body has made no progress for `timeout`. The sleep is created only once the body
/// first has to wait, so small bodies that arrive in one piece never touch the timer wheel; and it
/// is re-armed lazily, so progress costs a flag store, not a timer reset. The price is precision:
/// a stall is detected between `timeout` and twice that.
struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

/// A body on one side of the proxy: read inline from an HTTP/1.1 connection by Sluice's own code,
/// or hyper's HTTP/2 stream.
pub enum Either<H1> {
    Http1(H1),
    Http2(Incoming),
}

/// A client's request body.
pub type ClientBody = Either<client::RequestBody>;

/// An upstream response body.
pub type UpstreamBody = Either<wire::ResponseBody>;

impl<H1: Body<Data = Bytes, Error = BodyError> + Unpin> Body for Either<H1> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Self::Http1(b) => Pin::new(b).poll_frame(cx),
            Self::Http2(b) => Pin::new(b).poll_frame(cx).map(|f| f.map(|f| f.map_err(BodyError::Hyper))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Http1(b) => b.is_end_stream(),
            Self::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Http1(b) => b.size_hint(),
            Self::Http2(b) => b.size_hint(),
        }
    }
}

/// The response body sent to the client.
pub struct ProxyBody(Kind);

/// What an upstream response body keeps for the request that made it, opaque to the body (the
/// request's counts and its record): dropped with the body, which ends the request. (An HTTP/1.1
/// body gives its connection back itself, once read whole.)
pub(crate) trait Completion: Send {}

// Upstream bodies are the common case; boxing them to shrink the rare `Full` (the proxy's own
// error answers) would cost an allocation per proxied response.
#[allow(clippy::large_enum_variant)]
enum Kind {
    Full(Option<Bytes>),
    Upstream {
        body: Idle<UpstreamBody>,
        /// Read to its end (hyper's `is_end_stream` stays false for chunked bodies).
        done: bool,
        /// The first bytes of the body, kept for a mirror's diff.
        capture: Option<Box<Capture>>,
        /// The route's cache storing the body.
        fill: Option<Box<crate::cache::Fill>>,
        /// Kept for its drop, after the rest.
        _completion: Box<dyn Completion>,
    },
}

// === impl Idle ===

impl<B> Idle<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self { inner, timer: IdleTimer { timeout, sleep: None, progressed: false }, upload: None }
    }

    /// Reports the end of this body to `upload`.
    pub fn reporting_to(mut self, upload: Option<Arc<Upload>>) -> Self {
        self.upload = upload;
        self
    }
}

// === impl Upload ===

impl Upload {
    pub(crate) fn finish(&self) {
        let _ = self.done.set(Instant::now());
    }

    /// When the body was read to its end, if it has been.
    pub fn finished_at(&self) -> Option<Instant> {
        self.done.get().copied()
    }
}

impl<B> Body for Idle<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer.progressed = true;
                if let Some(upload) = &this.upload
                    && (frame.is_none() || this.inner.is_end_stream())
                {
                    upload.finish();
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending if this.timer.expired(cx) => {
                Poll::Ready(Some(Err(BodyError::Idle(this.timer.timeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl RequestBody ===

impl RequestBody {
    /// The client's body: `early`, what was read of it already, then the rest from `body`.
    /// `limit` is the route's size limit (`u64::MAX` for none); `copy`, when given, receives the
    /// body as it streams so a retry can replay it.
    pub fn client(
        early: Option<Box<Early>>,
        body: Idle<ClientBody>,
        pace: Pace,
        limit: u64,
        copy: Option<Arc<Mutex<Replay>>>,
    ) -> Self {
        Self(ReqKind::Client { early, body, pace, allowance: limit, limit, copy })
    }

    /// A body of these chunks, as a replayed copy is sent (tests).
    #[cfg(test)]
    pub(crate) fn of_chunks(chunks: Vec<Bytes>) -> Self {
        Self(ReqKind::Replay { chunks: chunks.into_iter().collect(), upload: None })
    }

    /// No body: a bodiless request's, or what stays in a request kept for its head once its body
    /// has gone upstream.
    pub(crate) fn empty() -> Self {
        Self(ReqKind::Replay { chunks: VecDeque::new(), upload: None })
    }

    /// A complete copy of an earlier body, sent again; `upload` is told when it has gone.
    pub fn replay(replay: &Replay, upload: Option<Arc<Upload>>) -> Self {
        if let Some(u) = &upload
            && replay.size == 0
        {
            u.finish();
        }
        Self(ReqKind::Replay { chunks: replay.chunks.iter().cloned().collect(), upload })
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().0 {
            ReqKind::Client { early, body, pace, allowance, limit, copy } => {
                let frame = match early.as_mut().and_then(|e| e.next()) {
                    Some(frame) => Poll::Ready(Some(Ok(frame))),
                    None => {
                        // The rest; once the early part held the end, this only reports it.
                        *early = None;
                        let frame = Pin::new(&mut *body).poll_frame(cx);
                        if let Poll::Ready(Some(Ok(f))) = &frame
                            && let Some(data) = f.data_ref()
                            && pace.min_rate > 0
                            && pace.behind(data.len(), Instant::now())
                        {
                            return Poll::Ready(Some(Err(BodyError::TooSlow(pace.min_rate))));
                        }
                        frame
                    }
                };
                let Poll::Ready(Some(Ok(f))) = &frame else {
                    if let (Some(copy), Poll::Ready(None)) = (copy, &frame) {
                        let mut c = lock(copy);
                        c.complete = true;
                        c.settle();
                    }
                    return frame;
                };
                let Some(data) = f.data_ref() else {
                    // Trailers are not kept for replay.
                    if let Some(copy) = copy {
                        let mut c = lock(copy);
                        c.spoiled = true;
                        c.settle();
                    }
                    return frame;
                };
                let Some(left) = allowance.checked_sub(data.len() as u64) else {
                    return Poll::Ready(Some(Err(BodyError::TooLarge(*limit))));
                };
                *allowance = left;
                if let Some(c) = copy {
                    let mut c = lock(c);
                    if !c.spoiled {
                        c.size += data.len();
                        if c.size > c.limit {
                            c.spoiled = true;
                            c.chunks = Vec::new();
                            c.settle();
                        } else {
                            c.chunks.push(data.clone());
                            c.complete = match early {
                                Some(e) => e.is_spent() && e.ended,
                                None => body.is_end_stream(),
                            };
                            if c.complete {
                                c.settle();
                            }
                        }
                    }
                }
                frame
            }
            ReqKind::Replay { chunks, upload } => {
                let next = chunks.pop_front();
                if chunks.is_empty()
                    && let Some(u) = upload
                {
                    u.finish();
                }
                Poll::Ready(next.map(|b| Ok(Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            ReqKind::Client { early: Some(e), .. } if !e.is_spent() => false,
            ReqKind::Client { body, .. } => body.is_end_stream(),
            ReqKind::Replay { chunks, .. } => chunks.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            ReqKind::Client { early: Some(e), .. } if e.ended => {
                SizeHint::with_exact(e.chunks.iter().map(|c| c.len() as u64).sum())
            }
            ReqKind::Client { body, .. } => body.size_hint(),
            ReqKind::Replay { chunks, .. } => {
                SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum())
            }
        }
    }
}

// === impl Early ===

impl Early {
    /// The next frame read early: data, then the trailers.
    fn next(&mut self) -> Option<Frame<Bytes>> {
        match self.chunks.pop_front() {
            Some(data) => Some(Frame::data(data)),
            None => self.trailers.take().map(Frame::trailers),
        }
    }

    /// Everything read early has been handed on.
    fn is_spent(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }
}

// === impl Pace ===

impl Pace {
    /// When the body must be whole by, given what has arrived; `None`: no minimum.
    pub fn deadline(&self) -> Option<Instant> {
        (self.min_rate > 0).then(|| {
            self.start + self.grace + Duration::from_secs_f64(self.received as f64 / self.min_rate as f64)
        })
    }

    /// Counts `len` more bytes that arrived at `now`: whether they came after the body was due
    /// with what had arrived before them.
    pub fn behind(&mut self, len: usize, now: Instant) -> bool {
        let late = self.deadline().is_some_and(|d| now > d);
        self.received += len as u64;
        late
    }
}

// === impl Replay ===

impl Default for Replay {
    fn default() -> Self {
        Self::with_limit(MAX_REPLAY_BODY, None)
    }
}

impl Replay {
    /// A copy kept up to `limit` bytes; `settled` is told when it is complete or spoiled.
    pub fn with_limit(limit: usize, settled: Option<Arc<Notify>>) -> Self {
        Self { chunks: Vec::new(), size: 0, limit, complete: false, spoiled: false, settled }
    }

    /// Whether the whole body was copied and can be sent again.
    pub fn is_complete(&self) -> bool {
        self.complete && !self.spoiled
    }

    /// Bytes copied so far.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether the copy is given up (too large, or trailers).
    pub fn is_spoiled(&self) -> bool {
        self.spoiled
    }

    fn settle(&mut self) {
        if let Some(n) = self.settled.take() {
            n.notify_one();
        }
    }
}

// === impl Capture ===

impl Capture {
    pub fn new(limit: usize) -> (Self, oneshot::Receiver<Captured>) {
        let (to, from) = oneshot::channel();
        (Self { chunks: Vec::new(), size: 0, limit, truncated: false, to: Some(to) }, from)
    }

    fn push(&mut self, data: &Bytes) {
        if self.truncated {
            return;
        }
        let room = self.limit - self.size;
        if data.len() > room {
            self.chunks.push(data.slice(..room));
            self.size = self.limit;
            self.truncated = true;
        } else {
            self.chunks.push(data.clone());
            self.size += data.len();
        }
    }

    fn finish(&mut self) {
        if let Some(to) = self.to.take() {
            let body = match self.chunks.len() {
                0 => Bytes::new(),
                1 => self.chunks[0].clone(),
                _ => Bytes::from(self.chunks.concat()),
            };
            let _ = to.send(Captured { body, truncated: self.truncated });
        }
    }
}

// === impl IdleTimer ===

impl IdleTimer {
    /// Called when the body has to wait: arms the timer and reports whether it ran out with no
    /// progress since it was (re)armed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        if self.sleep.is_none() {
            self.progressed = false;
            self.sleep = Some(Box::pin(tokio::time::sleep(timeout)));
        }
        let Some(sleep) = self.sleep.as_mut() else {
            return false;
        };
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            if !self.progressed {
                return true;
            }
            self.progressed = false;
            sleep.as_mut().reset(Instant::now() + timeout);
        }
    }
}

// === impl ProxyBody ===

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper may stop polling once `is_end_stream` says the body is complete (HEAD, 204,
        // content-length bodies), so a finished body's capture is finished here as well.
        if let Kind::Upstream { body, done, capture, .. } = &mut self.0
            && (*done || body.is_end_stream())
            && let Some(c) = capture.as_deref_mut()
        {
            c.finish();
        }
    }
}

impl ProxyBody {
    /// The upstream connection of a `101` answer and the route's idle timeout, taken for the
    /// tunnel; the body keeps the request's completion until it is dropped, after the tunnel.
    pub(crate) fn take_upgraded(&mut self) -> Option<(wire::Conn, Duration)> {
        match &mut self.0 {
            Kind::Upstream { body, .. } => match &mut body.inner {
                Either::Http1(b) => b.take_upgraded().map(|c| (c, body.timer.timeout)),
                Either::Http2(_) => None,
            },
            Kind::Full(_) => None,
        }
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self(Kind::Full(Some(bytes.into())))
    }

    pub fn empty() -> Self {
        Self(Kind::Full(None))
    }

    /// An upstream response body, its first bytes copied into `capture` as it streams (for the
    /// mirror's diff; the client never waits for it). `completion` is kept until the body is
    /// finished or dropped.
    pub(crate) fn upstream(
        body: UpstreamBody,
        idle_timeout: Duration,
        capture: Option<Capture>,
        fill: Option<Box<crate::cache::Fill>>,
        completion: Box<dyn Completion>,
    ) -> Self {
        let mut fill = fill;
        // A body that is over before it starts (a 204, a HEAD's) is never polled.
        if body.is_end_stream()
            && let Some(mut f) = fill.take()
        {
            f.finish();
        }
        Self(Kind::Upstream {
            body: Idle::new(body, idle_timeout),
            done: false,
            capture: capture.map(Box::new),
            fill,
            _completion: completion,
        })
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().0 {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { body, done, capture, fill, .. } => {
                let frame = Pin::new(&mut *body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &frame
                    && let Some(data) = f.data_ref()
                {
                    if let Some(c) = capture.as_deref_mut() {
                        c.push(data);
                    }
                    if let Some(fill) = fill.as_deref_mut() {
                        fill.push(data);
                    }
                }
                if let (Poll::Ready(Some(Ok(f))), Some(fill)) = (&frame, fill.as_deref_mut())
                    && f.is_trailers()
                {
                    fill.trailers();
                }
                if let Poll::Ready(Some(Err(_))) = &frame {
                    // A body that failed is not stored.
                    *fill = None;
                }
                *done |= match &frame {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    _ => false,
                };
                if *done && let Some(c) = capture.as_deref_mut() {
                    c.finish();
                }
                if *done && let Some(mut f) = fill.take() {
                    f.finish();
                }
                frame
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { body, .. } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::sync::mpsc;

    use super::*;

    /// A body fed by hand through a channel, standing in for a slow peer.
    struct Channel(mpsc::Receiver<Bytes>);

    impl Body for Channel {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    async fn next(body: &mut Idle<Channel>) -> Option<Result<Frame<Bytes>, BodyError>> {
        poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_its_idle_timeout() {
        let (tx, rx) = mpsc::channel(1);
        let mut body = Idle::new(Channel(rx), Duration::from_secs(10));
        let started = Instant::now();
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(next(&mut body).await.unwrap().is_ok());
        let err = next(&mut body).await.unwrap().unwrap_err();
        assert!(matches!(err, BodyError::Idle(d) if d == Duration::from_secs(10)));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(10) && waited <= Duration::from_secs(20), "{waited:?}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_body_is_not_cut_off() {
        let (tx, rx) = mpsc::channel(1);
        let mut body = Idle::new(Channel(rx), Duration::from_secs(10));
        let feeder = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        for _ in 0..10 {
            assert!(next(&mut body).await.unwrap().is_ok());
        }
        assert!(next(&mut body).await.is_none(), "ends cleanly when the sender is done");
        feeder.await.unwrap();
    }

    #[tokio::test]
    async fn full_body_yields_its_bytes_once() {
        let mut b = ProxyBody::full("hello");
        assert_eq!(b.size_hint().exact(), Some(5));
        let frame = poll_fn(|cx| Pin::new(&mut b).poll_frame(cx)).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        assert!(b.is_end_stream());
    }
}
