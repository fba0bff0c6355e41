//! The access log: one JSON line per request on standard output. The request path formats the
//! line, once the response is done, into its worker thread's batch; a full batch (or each
//! worker's once-a-second tick) goes to a writer thread through a bounded channel. When the
//! writer falls behind (a slow log collector), batches are dropped and their lines counted
//! rather than slowing requests down. Like Envoy's file access log, a line may so wait up to a
//! second; draining flushes every batch before the process exits.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

/// A batch goes to the writer once it holds this much.
const BATCH: usize = 64 * 1024;
/// Batches waiting for the writer before new ones are dropped (about 4 MiB).
const QUEUE: usize = 64;

/// The process's access-log writer.
#[derive(Debug)]
pub struct AccessLog {
    /// `None` once closed.
    tx: Mutex<Option<SyncSender<String>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Lines made; each is then written, dropped, or still in its thread's batch.
    pub logged: AtomicU64,
    /// Lines handed to the writer.
    pub written: AtomicU64,
    /// Lines dropped because the writer was behind.
    pub dropped: AtomicU64,
}

/// A thread's lines not yet handed to the writer.
struct Batch {
    text: String,
    lines: u64,
    /// Set on worker threads, whose tick flushes; elsewhere each line goes at once.
    batching: bool,
}

thread_local! {
    static PENDING: RefCell<Batch> = const { RefCell::new(Batch { text: String::new(), lines: 0, batching: false }) };
}

impl AccessLog {
    /// Starts the writer thread (idle until a listener logs).
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let writer =
            std::thread::Builder::new().name("access-log".into()).spawn(move || write_batches(&rx))?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            logged: AtomicU64::new(0),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Appends one line, built by `fill`, to this thread's batch.
    pub fn write(&self, fill: impl FnOnce(&mut Line<'_>)) {
        PENDING.with_borrow_mut(|batch| {
            if batch.text.capacity() == 0 {
                batch.text.reserve(BATCH + 4096);
            }
            let mut line = Line::new(&mut batch.text);
            fill(&mut line);
            line.finish();
            batch.lines += 1;
            self.logged.fetch_add(1, Ordering::Relaxed);
            if !batch.batching || batch.text.len() >= BATCH {
                self.hand_over(batch);
            }
        });
    }

    /// Marks the calling thread as a worker whose tick calls [`AccessLog::flush_thread`].
    pub fn batch_this_thread() {
        PENDING.with_borrow_mut(|batch| batch.batching = true);
    }

    /// Hands the calling thread's batch to the writer.
    pub fn flush_thread(&self) {
        PENDING.with_borrow_mut(|batch| {
            if batch.lines > 0 {
                self.hand_over(batch);
            }
        });
    }

    fn hand_over(&self, batch: &mut Batch) {
        let text = std::mem::replace(&mut batch.text, String::with_capacity(BATCH + 4096));
        let lines = std::mem::take(&mut batch.lines);
        // Counted first, so a line on standard output is always already counted.
        self.written.fetch_add(lines, Ordering::Relaxed);
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|tx| tx.try_send(text).is_ok());
        if !sent {
            self.written.fetch_sub(lines, Ordering::Relaxed);
            self.dropped.fetch_add(lines, Ordering::Relaxed);
        }
    }

    /// Stops taking lines and waits until the writer has written what it holds (blocking).
    pub fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(PoisonError::into_inner).take());
        if let Some(writer) = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = writer.join();
        }
    }
}

/// Writes batches as they come, flushing whenever none is waiting. Standard output is locked
/// only while writing: held while idle, it would block every other writer in the process.
fn write_batches(rx: &Receiver<String>) {
    let stdout = std::io::stdout();
    while let Ok(text) = rx.recv() {
        let mut out = stdout.lock();
        let _ = out.write_all(text.as_bytes());
        while let Ok(text) = rx.try_recv() {
            let _ = out.write_all(text.as_bytes());
        }
        let _ = out.flush();
    }
}

/// Builds one JSON object on one line, appended to a batch.
pub struct Line<'a> {
    out: &'a mut String,
    /// Where this line starts in `out`.
    start: usize,
}

impl<'a> Line<'a> {
    pub fn new(out: &'a mut String) -> Self {
        let start = out.len();
        out.push('{');
        Self { out, start }
    }

    /// The time, as a string.
    pub fn time(&mut self, key: &str, t: SystemTime) -> &mut Self {
        self.key(key);
        self.out.push('"');
        push_timestamp(self.out, t);
        self.out.push('"');
        self
    }

    fn key(&mut self, key: &str) {
        if self.out.len() > self.start + 1 {
            self.out.push(',');
        }
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    pub fn str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        self.key(key);
        match value {
            Some(v) => {
                self.out.push('"');
                escape_into(self.out, v);
                self.out.push('"');
            }
            None => self.out.push_str("null"),
        }
        self
    }

    pub fn int(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        push_int(self.out, value);
        self
    }

    /// A duration in milliseconds with three decimals (µs precision), or null.
    pub fn millis(&mut self, key: &str, value: Option<Duration>) -> &mut Self {
        self.key(key);
        match value {
            Some(d) => {
                let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
                push_int(self.out, us / 1000);
                self.out.push('.');
                let frac = us % 1000;
                self.out.push_str(&"00"[..2 - usize::from(frac >= 10) - usize::from(frac >= 100)]);
                push_int(self.out, frac);
            }
            None => self.out.push_str("null"),
        }
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
        self
    }

    pub fn finish(self) {
        self.out.push_str("}\n");
    }
}

/// JSON string escaping (RFC 8259): quotes, backslashes and control characters.
fn escape_into(out: &mut String, v: &str) {
    if !v.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Decimal digits without going through `fmt`.
fn push_int(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[i..]).unwrap_or_default());
}

thread_local! {
    /// The formatted second last used on this thread: `(seconds since the epoch, "...T13:58:25")`.
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Appends `2026-11-22T13:58:25.123Z`, formatting the date and time once per second per thread.
pub(crate) fn push_timestamp(out: &mut String, t: SystemTime) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    SECOND.with_borrow_mut(|(secs, text)| {
        if *secs != since.as_secs() {
            *secs = since.as_secs();
            *text =
                sluice_bundle::time::rfc3339_secs(since.as_secs() as i64).trim_end_matches('Z').to_owned();
        }
        out.push_str(text);
    });
    let ms = since.subsec_millis();
    out.push('.');
    out.push_str(&"00"[..2 - usize::from(ms >= 10) - usize::from(ms >= 100)]);
    push_int(out, u64::from(ms));
    out.push('Z');
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is well formed.
pub(crate) fn trace_id(traceparent: &[u8]) -> Option<&str> {
    let parts: Vec<&[u8]> = traceparent.split(|&b| b == b'-').collect();
    let [version, trace, span, flags] = parts[..] else {
        return None;
    };
    let hex = |p: &[u8], n: usize| p.len() == n && p.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let ok = hex(version, 2)
        && version != b"ff"
        && hex(trace, 32)
        && trace.iter().any(|&b| b != b'0')
        && hex(span, 16)
        && span.iter().any(|&b| b != b'0')
        && hex(flags, 2);
    ok.then(|| std::str::from_utf8(trace).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_json_object_each() {
        let mut out = String::from("{\"earlier\":1}\n");
        let mut l = Line::new(&mut out);
        l.str("path", Some("/a\"b\n\u{1}\\é")).str("route", None).int("status", 200).bool("mirrored", false);
        l.millis("ms", Some(Duration::from_micros(1_005)))
            .millis("none", None)
            .millis("big", Some(Duration::from_secs(12)));
        l.finish();
        let line = out.lines().nth(1).unwrap();
        assert!(out.ends_with("}\n") && out.lines().count() == 2, "{out}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let expected = serde_json::json!({
            "path": "/a\"b\n\u{1}\\é", "route": null, "status": 200, "mirrored": false,
            "ms": 1.005, "none": null, "big": 12000.0,
        });
        assert_eq!(v, expected);
    }

    #[test]
    fn reads_the_trace_id_of_a_valid_traceparent_only() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(good), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"garbage",
        ] {
            assert_eq!(trace_id(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn timestamps_have_milliseconds() {
        let at = |ms| {
            let mut s = String::new();
            push_timestamp(&mut s, SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
            s
        };
        assert_eq!(at(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(at(1_795_000_000_007), "2026-11-18T11:06:40.007Z");
        assert_eq!(at(1_795_000_001_050), "2026-11-18T11:06:41.050Z");
    }
}
