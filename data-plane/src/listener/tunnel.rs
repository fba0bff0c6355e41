//! A WebSocket after its `101`: the client's connection and the upstream's, joined byte for byte
//! until either side closes or neither says anything for the route's idle timeout. Bytes either
//! side sent early (after its head, before the switch) go first.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::body::client::Shared;
use crate::body::wire::Conn;
use crate::sync::lock;

/// When either side last sent something, in ms after the tunnel began.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

/// The client's side: its connection's unread bytes, then its socket (one lock per poll).
struct Client<'a> {
    io: &'a Shared,
    activity: &'a Activity,
}

/// The upstream's side: what was read past the `101` head, then its connection.
struct Upstream<'a> {
    conn: &'a mut Conn,
    activity: &'a Activity,
}

/// Joins the two until one closes (or fails) or both are quiet for `idle`.
pub(super) async fn run(io: &Shared, mut upstream: Conn, idle: Duration) -> io::Result<(u64, u64)> {
    let activity = Activity { start: Instant::now(), last_ms: AtomicU64::new(0) };
    let mut client = Client { io, activity: &activity };
    let mut up = Upstream { conn: &mut upstream, activity: &activity };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut up);
    tokio::pin!(copy);
    loop {
        let quiet_until =
            activity.start + Duration::from_millis(activity.last_ms.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            done = &mut copy => return done,
            () = tokio::time::sleep_until(quiet_until) => {
                let last = Duration::from_millis(activity.last_ms.load(Ordering::Relaxed));
                if activity.start.elapsed() >= last + idle {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "websocket idle"));
                }
            }
        }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
}

/// Fills `buf` from `pending` if it holds anything; true if it did.
fn from_pending(pending: &mut bytes::BytesMut, buf: &mut ReadBuf<'_>) -> bool {
    if pending.is_empty() {
        return false;
    }
    let n = pending.len().min(buf.remaining());
    buf.put_slice(&pending[..n]);
    pending.advance(n);
    true
}

impl AsyncRead for Client<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut io = lock(self.io);
        if from_pending(&mut io.wire.buf, buf) {
            return Poll::Ready(Ok(()));
        }
        let read = Pin::new(&mut io.tcp).poll_read(cx, buf);
        if read.is_ready() {
            self.activity.touch();
        }
        read
    }
}

impl AsyncWrite for Client<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut lock(self.io).tcp).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(self.io).tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(self.io).tcp).poll_shutdown(cx)
    }
}

impl AsyncRead for Upstream<'_> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if from_pending(&mut this.conn.buf, buf) {
            return Poll::Ready(Ok(()));
        }
        let read = Pin::new(&mut this.conn.io).poll_read(cx, buf);
        if read.is_ready() {
            this.activity.touch();
        }
        read
    }
}

impl AsyncWrite for Upstream<'_> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn.io).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn.io).poll_shutdown(cx)
    }
}
