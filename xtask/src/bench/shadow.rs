//! The slow shadow `cargo xtask bench --mirror` mirrors to: an HTTP/1.1 server that answers every
//! request after a fixed delay, keeping connections open. A waiting request is a timer and a
//! small task on a single-threaded runtime, so thousands of them cost next to nothing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

const BODY: &str = "hello from the slow shadow\n";

/// What the shadow got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub connections: u64,
    pub requests: u64,
    pub answered: u64,
    /// Most requests waiting at once.
    pub peak_waiting: u64,
}

#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    requests: AtomicU64,
    answered: AtomicU64,
    waiting: AtomicU64,
    peak_waiting: AtomicU64,
}

/// A running shadow; dropping it stops the server.
pub struct SlowShadow {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

// === impl SlowShadow ===

impl SlowShadow {
    /// Binds `127.0.0.1:port` and serves on a tokio runtime in a thread of its own, answering each
    /// request `delay` after it arrived. The port is bound before this returns.
    pub fn start(port: u16, delay: Duration) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("binding the slow shadow on 127.0.0.1:{port}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (stop, mut stopped) = oneshot::channel::<()>();
        let shared = Arc::clone(&counts);
        let thread = std::thread::Builder::new().name("slow-shadow".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                loop {
                    let tcp = tokio::select! {
                        _ = &mut stopped => return Ok(()),
                        accepted = listener.accept() => match accepted {
                            Ok((tcp, _)) => tcp,
                            Err(_) => continue,
                        },
                    };
                    let _ = tcp.set_nodelay(true);
                    shared.connections.fetch_add(1, Ordering::Relaxed);
                    let counts = Arc::clone(&shared);
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| answer(Arc::clone(&counts), delay, req));
                        let _ = http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
                    });
                }
            })
        })?;
        Ok(Self { addr, counts, stop: Some(stop), thread: Some(thread) })
    }

    /// What was served so far.
    pub fn served(&self) -> Served {
        let c = &self.counts;
        Served {
            connections: c.connections.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            answered: c.answered.load(Ordering::Relaxed),
            peak_waiting: c.peak_waiting.load(Ordering::Relaxed),
        }
    }

    /// Fails if the server has stopped on its own (it only stops when told to).
    pub fn check_running(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.thread.as_ref().is_some_and(|t| !t.is_finished()),
            "the slow shadow on {} has stopped",
            self.addr
        );
        Ok(())
    }
}

impl Drop for SlowShadow {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits `delay`, then answers 200 with a short body. The request's body is not read: the
/// mirrored requests are GETs.
async fn answer(
    counts: Arc<Counts>,
    delay: Duration,
    _req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let waiting = counts.waiting.fetch_add(1, Ordering::Relaxed) + 1;
    counts.peak_waiting.fetch_max(waiting, Ordering::Relaxed);
    tokio::time::sleep(delay).await;
    counts.waiting.fetch_sub(1, Ordering::Relaxed);
    counts.answered.fetch_add(1, Ordering::Relaxed);
    let mut resp = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
    resp.headers_mut().insert("content-type", http::HeaderValue::from_static("text/plain"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::time::Instant;

    use super::*;

    /// Reads one response with a `content-length` off `stream`.
    fn read_response(stream: &mut std::net::TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap();
                if body.len() >= len {
                    return text;
                }
            }
        }
    }

    #[test]
    fn answers_after_the_delay_on_a_kept_connection() {
        let delay = Duration::from_millis(300);
        let shadow = SlowShadow::start(0, delay).unwrap();
        shadow.check_running().unwrap();
        let mut a = std::net::TcpStream::connect(("127.0.0.1", shadow.addr.port())).unwrap();
        let mut b = std::net::TcpStream::connect(("127.0.0.1", shadow.addr.port())).unwrap();
        let request = b"GET /small HTTP/1.1\r\nHost: shadow\r\n\r\n";
        let started = Instant::now();
        a.write_all(request).unwrap();
        b.write_all(request).unwrap();
        // Both wait at once: the second is not queued behind the first.
        for s in [&mut a, &mut b] {
            let text = read_response(s);
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.ends_with(BODY), "{text}");
        }
        let took = started.elapsed();
        assert!(took >= delay && took < delay * 2, "{took:?}");
        // The connection stays open for the next request.
        a.write_all(request).unwrap();
        assert!(read_response(&mut a).ends_with(BODY));
        let served = shadow.served();
        assert_eq!(served, Served { connections: 2, requests: 3, answered: 3, peak_waiting: 2 });
    }
}
