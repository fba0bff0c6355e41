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
use std::time::{Duration, Instant, SystemTime};

/// A batch goes to the writer once it holds this much.
const BATCH: usize = 64 * 1024;
/// Batches waiting for the writer before new ones are dropped (about 4 MiB).
const QUEUE: usize = 64;

/// The process's access-log writer.
#[derive(Debug)]
pub struct AccessLog {
    /// `None` once closed.
    tx: Mutex<Option<SyncSender<Vec<u8>>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Lines made; each is then written, dropped, or still in its thread's batch.
    pub logged: AtomicU64,
    /// Lines handed to the writer.
    pub written: AtomicU64,
    /// Lines dropped because the writer was behind.
    pub dropped: AtomicU64,
}

/// A thread's lines not yet handed to the writer. Bytes, not a `String`: values such as header
/// bytes and digits go in without a second UTF-8 check (escaping keeps every line valid UTF-8).
struct Batch {
    text: Vec<u8>,
    lines: u64,
    /// Set on worker threads, whose tick flushes; elsewhere each line goes at once.
    batching: bool,
}

thread_local! {
    static PENDING: RefCell<Batch> = const { RefCell::new(Batch { text: Vec::new(), lines: 0, batching: false }) };
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

    /// Appends one line to this thread's batch: the fields in `head`, then those `fill` writes.
    pub fn write(&self, head: &Fields, fill: impl FnOnce(&mut Line<'_>)) {
        PENDING.with_borrow_mut(|batch| {
            if batch.text.capacity() == 0 {
                batch.text.reserve(BATCH + 4096);
            }
            let mut line = Line::new(&mut batch.text);
            line.fields(head);
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
        let text = std::mem::replace(&mut batch.text, Vec::with_capacity(BATCH + 4096));
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
fn write_batches(rx: &Receiver<Vec<u8>>) {
    let stdout = std::io::stdout();
    while let Ok(text) = rx.recv() {
        let mut out = stdout.lock();
        let _ = out.write_all(&text);
        while let Ok(text) = rx.try_recv() {
            let _ = out.write_all(&text);
        }
        let _ = out.flush();
    }
}

/// A JSON key with the punctuation around it, in the three forms a value may need, so that
/// each is written in one copy; made by [`key!`].
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// `,"name":`, before a number or a literal.
    pub bare: &'static str,
    /// `,"name":"`, before a string.
    pub open: &'static str,
    /// `,"name":null`.
    pub null: &'static str,
}

/// `key!("route")`: the [`Key`] for `route`. Keys are plain identifiers, written as given.
macro_rules! key {
    ($name:literal) => {
        $crate::access_log::Key {
            bare: concat!(",\"", $name, "\":"),
            open: concat!(",\"", $name, "\":\""),
            null: concat!(",\"", $name, "\":null"),
        }
    };
}
pub(crate) use key;

/// Fields formatted ahead of the line they go in: a request's own, taken when it arrives, so
/// nothing of the request needs keeping until its response is done.
#[derive(Debug, Default)]
pub struct Fields(Vec<u8>);

impl Fields {
    pub fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    /// Writes fields; the line's opening brace comes when the fields are written in one.
    pub fn line(&mut self) -> Line<'_> {
        Line { out: &mut self.0, start: 0 }
    }
}

/// Builds one JSON object on one line, appended to a batch. Keys are written as given (callers
/// pass plain identifiers); values are escaped unless the method says they need not be.
pub struct Line<'a> {
    out: &'a mut Vec<u8>,
    /// Where this line starts in `out`.
    start: usize,
}

impl<'a> Line<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> Self {
        let start = out.len();
        Self { out, start }
    }

    /// Fields formatted earlier.
    #[inline]
    pub fn fields(&mut self, fields: &Fields) -> &mut Self {
        self.out.extend_from_slice(&fields.0);
        self
    }

    /// The wall-clock time of `at` (see [`push_time`]), as a string.
    #[inline]
    pub fn time(&mut self, key: Key, at: Instant) -> &mut Self {
        self.open(key);
        push_time(self.out, at);
        self.out.push(b'"');
        self
    }

    /// The key with its punctuation (`,"name":`) in one copy; `finish` turns the first comma
    /// into the opening brace.
    #[inline]
    fn key(&mut self, key: Key) {
        self.out.extend_from_slice(key.bare.as_bytes());
    }

    /// The key and a string's opening quote (`,"name":"`).
    #[inline]
    fn open(&mut self, key: Key) {
        self.out.extend_from_slice(key.open.as_bytes());
    }

    #[inline]
    fn null(&mut self, key: Key) {
        self.out.extend_from_slice(key.null.as_bytes());
    }

    /// A string, escaped.
    #[inline]
    pub fn str(&mut self, key: Key, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => {
                self.open(key);
                escape_into(self.out, v.as_bytes(), false);
                self.out.push(b'"');
            }
            None => self.null(key),
        }
        self
    }

    /// Header bytes, escaped; bytes above ASCII (obs-text) are read as ISO-8859-1, as RFC 9110
    /// says they historically were, so the line stays valid UTF-8.
    #[inline]
    pub fn header(&mut self, key: Key, value: Option<&[u8]>) -> &mut Self {
        match value {
            Some(v) => {
                self.open(key);
                escape_into(self.out, v, true);
                self.out.push(b'"');
            }
            None => self.null(key),
        }
        self
    }

    /// A string that needs no escaping: a config name (letters, digits, `.`, `_`, `-`), an
    /// endpoint address, a method token, an IP address, a hex id or a fixed word.
    #[inline]
    pub fn name(&mut self, key: Key, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.token(key, v.as_bytes()),
            None => {
                self.null(key);
                self
            }
        }
    }

    /// Bytes that need no escaping, as [`Line::name`] says.
    #[inline]
    pub fn token(&mut self, key: Key, value: &[u8]) -> &mut Self {
        debug_assert!(!needs_escape(value, true), "{value:?} needs escaping");
        self.open(key);
        self.out.extend_from_slice(value);
        self.out.push(b'"');
        self
    }

    #[inline]
    pub fn int(&mut self, key: Key, value: u64) -> &mut Self {
        self.key(key);
        push_int(self.out, value);
        self
    }

    /// An integer, or null.
    #[inline]
    pub fn opt_int(&mut self, key: Key, value: Option<u64>) -> &mut Self {
        match value {
            Some(v) => self.int(key, v),
            None => {
                self.null(key);
                self
            }
        }
    }

    /// A duration in milliseconds with three decimals (µs precision), or null.
    #[inline]
    pub fn millis(&mut self, key: Key, value: Option<Duration>) -> &mut Self {
        match value {
            Some(d) => {
                self.key(key);
                let ms = d.as_secs().saturating_mul(1000) + u64::from(d.subsec_millis());
                push_int(self.out, ms);
                let frac = d.subsec_micros() % 1000;
                let digit = |n: u32| b'0' + (n % 10) as u8;
                self.out.extend_from_slice(&[b'.', digit(frac / 100), digit(frac / 10), digit(frac)]);
            }
            None => self.null(key),
        }
        self
    }

    #[inline]
    pub fn bool(&mut self, key: Key, value: bool) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    #[inline]
    pub fn finish(self) {
        match self.out.get_mut(self.start) {
            Some(first) => *first = b'{',
            None => self.out.push(b'{'),
        }
        self.out.extend_from_slice(b"}\n");
    }
}

/// Whether `v` holds a byte JSON needs escaped: a quote, a backslash, a control character, or
/// (for bytes not known to be UTF-8) anything above ASCII.
#[inline]
fn needs_escape(v: &[u8], bytes: bool) -> bool {
    // Eight bytes at a time (SWAR): a lane is flagged when it is below 0x20, equal to `"` or `\`,
    // or (for bytes) has its top bit set or is DEL. About a third of the work of a byte loop on
    // request ids and paths, which every logged request carries.
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_lane = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let flagged = |w: u64| {
        let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        let special = zero_lane(w ^ (ONES * u64::from(b'"'))) | zero_lane(w ^ (ONES * u64::from(b'\\')));
        let high = if bytes { (w | w.wrapping_add(ONES)) & HIGHS } else { 0 };
        below_space | special | high != 0
    };
    let word = |c: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        u64::from_le_bytes(w)
    };
    if v.len() < 8 {
        // One word, padded with a byte that is never flagged.
        let mut w = [b'a'; 8];
        w[..v.len()].copy_from_slice(v);
        return flagged(u64::from_le_bytes(w));
    }
    let mut chunks = v.chunks_exact(8);
    if chunks.any(|c| flagged(word(c))) {
        return true;
    }
    // The last bytes as the last eight, overlapping what was checked.
    !chunks.remainder().is_empty() && flagged(word(&v[v.len() - 8..]))
}

/// JSON string escaping (RFC 8259): quotes, backslashes and control characters; with `bytes`,
/// also DEL and every byte above ASCII, as `\u00XX` (ISO-8859-1).
#[inline]
fn escape_into(out: &mut Vec<u8>, v: &[u8], bytes: bool) {
    if needs_escape(v, bytes) {
        escape_each(out, v, bytes);
    } else {
        out.extend_from_slice(v);
    }
}

#[cold]
fn escape_each(out: &mut Vec<u8>, v: &[u8], bytes: bool) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in v {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b if b < 0x20 || (bytes && b >= 0x7f) => {
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
            }
            b => out.push(b),
        }
    }
}

/// Decimal digits without going through `fmt`.
fn push_int(out: &mut Vec<u8>, mut n: u64) {
    // Most values logged (status, retries, milliseconds) have three digits or fewer.
    let digit = |n: u64| b'0' + (n % 10) as u8;
    match n {
        0..10 => return out.push(digit(n)),
        10..100 => return out.extend_from_slice(&[digit(n / 10), digit(n)]),
        100..1000 => return out.extend_from_slice(&[digit(n / 100), digit(n / 10), digit(n)]),
        _ => {}
    }
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
    out.extend_from_slice(&digits[i..]);
}

/// A thread's clock for the log's times: the wall clock is not read for every request.
struct Clock {
    /// An instant and the wall-clock time read with it (µs since the epoch), read again once a
    /// time asked for is a second away from it, so the system clock's adjustments are followed.
    anchor: Option<(Instant, u64)>,
    /// The second last formatted, and its text (`2026-11-22T13:58:25`).
    second: u64,
    text: [u8; 19],
}

thread_local! {
    static CLOCK: RefCell<Clock> =
        const { RefCell::new(Clock { anchor: None, second: u64::MAX, text: [0; 19] }) };
}

/// Appends the wall-clock time of `at` as `2026-11-22T13:58:25.123Z`.
fn push_time(out: &mut Vec<u8>, at: Instant) {
    CLOCK.with_borrow_mut(|clock| clock.push(out, at));
}

// === impl Clock ===

impl Clock {
    fn push(&mut self, out: &mut Vec<u8>, at: Instant) {
        let us = self.micros(at);
        let second = us / 1_000_000;
        if second != self.second {
            self.second = second;
            let text = sluice_bundle::time::rfc3339_secs(second as i64);
            // `2026-11-22T13:58:25Z`: the years from 0 to 9999 have this length.
            if let Some(t) = text.as_bytes().get(..19) {
                self.text.copy_from_slice(t);
            }
        }
        out.extend_from_slice(&self.text);
        let ms = us / 1000 % 1000;
        let digit = |n: u64| b'0' + (n % 10) as u8;
        out.extend_from_slice(&[b'.', digit(ms / 100), digit(ms / 10), digit(ms), b'Z']);
    }

    /// The wall-clock time of `at`, in µs since the epoch.
    fn micros(&mut self, at: Instant) -> u64 {
        // How far `at` is from an anchor, and its time reckoned from that anchor.
        let from = |(i, w): (Instant, u64)| match at.checked_duration_since(i) {
            Some(d) => (d, w + d.as_micros() as u64),
            None => (i - at, w.saturating_sub((i - at).as_micros() as u64)),
        };
        if let Some((away, us)) = self.anchor.map(from)
            && away < Duration::from_secs(1)
        {
            return us;
        }
        let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros());
        let anchor = (Instant::now(), wall as u64);
        self.anchor = Some(anchor);
        from(anchor).1
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if it is well formed.
pub(crate) fn trace_id(traceparent: &[u8]) -> Option<&str> {
    // The fixed layout, read in place: logged requests carrying one pay no allocation.
    if traceparent.len() != 55 || [2, 35, 52].iter().any(|&i| traceparent[i] != b'-') {
        return None;
    }
    let (version, trace, span, flags) =
        (&traceparent[..2], &traceparent[3..35], &traceparent[36..52], &traceparent[53..]);
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
        let mut out = b"{\"earlier\":1}\n".to_vec();
        let mut head = Fields::with_capacity(8);
        head.line().time(key!("time"), Instant::now()).token(key!("method"), b"GET");
        let mut l = Line::new(&mut out);
        l.fields(&head)
            .str(key!("path"), Some("/a\"b\n\u{1}\\é"))
            .str(key!("route"), None)
            .int(key!("status"), 200)
            .bool(key!("mirrored"), false);
        l.millis(key!("ms"), Some(Duration::from_micros(1_005)))
            .millis(key!("none"), None)
            .millis(key!("big"), Some(Duration::from_secs(12)))
            .millis(key!("frac"), Some(Duration::from_micros(2_999)));
        l.header(key!("agent"), Some(b"caf\xe9 \x7f\"q\""))
            .name(key!("pool"), Some("users-v1.b_c"))
            .header(key!("missing"), None);
        l.finish();
        let out = String::from_utf8(out).unwrap();
        let line = out.lines().nth(1).unwrap();
        assert!(out.ends_with("}\n") && out.lines().count() == 2, "{out}");
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let time = v.as_object_mut().unwrap().remove("time").unwrap();
        assert!(time.as_str().is_some_and(|t| t.len() == 24 && t.ends_with('Z')), "{time}");
        let expected = serde_json::json!({
            "method": "GET",
            "path": "/a\"b\n\u{1}\\é", "route": null, "status": 200, "mirrored": false,
            "ms": 1.005, "none": null, "big": 12000.0, "frac": 2.999,
            "agent": "café \u{7f}\"q\"", "pool": "users-v1.b_c", "missing": null,
        });
        assert_eq!(v, expected);
    }

    #[test]
    fn the_word_at_a_time_check_agrees_with_the_byte_loop() {
        let slow = |v: &[u8], bytes: bool| {
            v.iter().any(|&b| b == b'"' || b == b'\\' || b < 0x20 || (bytes && b >= 0x7f))
        };
        // Every byte value, alone and at every position of a 17-byte string of safe bytes.
        for b in 0..=255u8 {
            for at in 0..17 {
                let mut v = vec![b'a'; 17];
                v[at] = b;
                for bytes in [false, true] {
                    assert_eq!(
                        needs_escape(&v, bytes),
                        slow(&v, bytes),
                        "byte {b:#x} at {at}, bytes {bytes}"
                    );
                }
            }
        }
        for _ in 0..10_000 {
            let v: Vec<u8> = (0..fastrand::usize(0..40)).map(|_| fastrand::u8(0x1c..0x82)).collect();
            for bytes in [false, true] {
                assert_eq!(needs_escape(&v, bytes), slow(&v, bytes), "{v:?}");
            }
        }
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
    fn wall_clock_times_follow_the_instants_they_are_taken_from() {
        let mut clock = Clock { anchor: None, second: u64::MAX, text: [0; 19] };
        let now = Instant::now();
        let wall = |back: i128| {
            let us = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_micros() as i128;
            us - back * 1000
        };
        let close = |a: u64, b: i128| (i128::from(a) - b).abs() <= 5_000;
        assert!(close(clock.micros(now), wall(0)));
        // Before and after the anchor, near it and far from it (the anchor is taken again).
        for back in [300, 5_000, 200] {
            let then = now.checked_sub(Duration::from_millis(back)).unwrap();
            assert!(close(clock.micros(then), wall(back as i128)), "{back} ms ago");
        }
        assert!(close(clock.micros(now + Duration::from_millis(700)), wall(-700)));
        assert!(close(clock.micros(now + Duration::from_secs(3)), wall(-3_000)));
    }

    #[test]
    fn timestamps_have_milliseconds() {
        // Anchored at 11:06:40.500; times within a second of it are not read from the clock.
        let i = Instant::now();
        let mut clock = Clock { anchor: Some((i, 1_795_000_000_500_000)), second: u64::MAX, text: [0; 19] };
        let mut at = |later_us: i64| {
            let d = Duration::from_micros(later_us.unsigned_abs());
            let t = if later_us >= 0 { i + d } else { i.checked_sub(d).unwrap() };
            let mut s = Vec::new();
            clock.push(&mut s, t);
            String::from_utf8(s).unwrap()
        };
        assert_eq!(at(0), "2026-11-18T11:06:40.500Z");
        assert_eq!(at(499_999), "2026-11-18T11:06:40.999Z");
        assert_eq!(at(500_000), "2026-11-18T11:06:41.000Z");
        assert_eq!(at(550_000), "2026-11-18T11:06:41.050Z");
        assert_eq!(at(-493_000), "2026-11-18T11:06:40.007Z");
        assert_eq!(at(-500_001), "2026-11-18T11:06:39.999Z");
    }

    #[test]
    fn numbers_of_every_length() {
        for n in [0, 7, 10, 99, 100, 999, 1_000, 65_535, 1_234_567_890, u64::MAX] {
            let mut out = Vec::new();
            push_int(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
