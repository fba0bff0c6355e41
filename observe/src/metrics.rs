//! Prometheus metrics: lock-free counters and histograms that the request path records into, and
//! the text exposition format (version 0.0.4) that the admin listener's `/metrics` writes.
//!
//! Label values are config names (listeners, routes, pools, endpoints) and fixed words, never
//! anything taken from a request, so the number of series stays bounded by the config.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the duration histograms, in seconds (and in µs below, for recording).
pub const DURATION_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// A duration histogram with fixed buckets; recording is a few relaxed atomic adds.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative), the last one for everything above the largest bound.
    counts: [AtomicU64; 15],
    sum_us: AtomicU64,
}

/// Responses counted by status class: 1xx to 5xx.
#[derive(Debug, Default)]
pub struct StatusCounts([AtomicU64; 5]);

/// Answered requests: how many by status class, and how long each took from its arrival to the
/// end of its response. Kept per listener, route, route variant and config version.
#[derive(Debug, Default)]
pub struct RequestStats {
    pub requests: StatusCounts,
    pub duration: Histogram,
}

/// One finished request, classified once for every `RequestStats` it counts in.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    class: usize,
    bucket: usize,
    us: u64,
}

/// The status classes, as label values, in `StatusCounts` order.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

// The request path records into these from another crate: `#[inline]` lets them be inlined
// there as they were when they lived in the data plane.

// === impl Outcome ===

impl Outcome {
    #[inline]
    pub fn new(status: u16, took: Duration) -> Self {
        let us = micros(took);
        Self { class: status_class(status), bucket: bucket(us), us }
    }

    /// A 5xx answer.
    #[inline]
    pub fn server_error(&self) -> bool {
        self.class == 4
    }
}

/// The index of a status in `STATUS_CLASSES`.
#[inline]
fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

#[inline]
fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// The histogram bucket of `us` microseconds.
#[inline]
fn bucket(us: u64) -> usize {
    BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(BUCKETS_US.len())
}

// === impl RequestStats ===

impl RequestStats {
    #[inline]
    pub fn record(&self, o: &Outcome) {
        self.requests.0[o.class].fetch_add(1, Ordering::Relaxed);
        self.duration.add_one(o.bucket, o.us);
    }
}

// === impl Histogram ===

impl Histogram {
    #[inline]
    pub fn observe(&self, d: Duration) {
        let us = micros(d);
        self.add_one(bucket(us), us);
    }

    #[inline]
    fn add_one(&self, bucket: usize, us: u64) {
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Adds `other`'s counts to this one (to merge endpoints into their pool).
    pub fn add(&self, other: &Histogram) {
        for (c, o) in self.counts.iter().zip(&other.counts) {
            c.fetch_add(o.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_us.fetch_add(other.sum_us.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// `(counts per bucket, not cumulative, the last above every bound; sum in seconds)`: the
    /// form reports carry, which histograms of several data planes add up in.
    pub fn per_bucket(&self) -> (Vec<u64>, f64) {
        let counts = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        (counts, self.sum_us.load(Ordering::Relaxed) as f64 / 1e6)
    }

    /// `(cumulative counts per bound and +Inf, sum in seconds)`.
    pub fn read(&self) -> ([u64; 15], f64) {
        let mut cumulative = [0; 15];
        let mut total = 0;
        for (c, n) in cumulative.iter_mut().zip(&self.counts) {
            total += n.load(Ordering::Relaxed);
            *c = total;
        }
        (cumulative, self.sum_us.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

// === impl StatusCounts ===

impl StatusCounts {
    #[inline]
    pub fn record(&self, status: u16) {
        self.0[status_class(status)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, class: usize) -> u64 {
        self.0[class].load(Ordering::Relaxed)
    }

    /// Answers with a 5xx status.
    pub fn server_errors(&self) -> u64 {
        self.get(4)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// Writes the Prometheus text format. Each family is announced once (`# HELP`, `# TYPE`) and the
/// samples written after it are its own, as the format requires.
#[derive(Debug, Default)]
pub struct Encoder {
    out: String,
    /// The family being written.
    name: String,
}

impl Encoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the family `name`; `kind` is `counter`, `gauge` or `histogram`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {}", help.replace('\\', "\\\\").replace('\n', "\\n"));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        name.clone_into(&mut self.name);
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.series("", labels, None);
        self.value(value);
        self.out.push('\n');
        self
    }

    /// One sample per status class of the current family, labelled `status_class` after `labels`.
    pub fn status_counts(&mut self, labels: &[(&str, &str)], counts: &StatusCounts) -> &mut Self {
        for (i, class) in STATUS_CLASSES.iter().enumerate() {
            self.series("", labels, Some(("status_class", class)));
            self.value(counts.get(i) as f64);
            self.out.push('\n');
        }
        self
    }

    /// The `_bucket`, `_sum` and `_count` samples of the current (histogram) family.
    pub fn histogram(&mut self, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let (cumulative, sum) = h.read();
        for (i, count) in cumulative.iter().enumerate() {
            let le = DURATION_BUCKETS.get(i).map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            self.series("_bucket", labels, Some(("le", &le)));
            let _ = writeln!(self.out, "{count}");
        }
        self.series("_sum", labels, None);
        self.value(sum);
        self.out.push('\n');
        self.series("_count", labels, None);
        let _ = writeln!(self.out, "{}", cumulative[cumulative.len() - 1]);
        self
    }

    pub fn finish(self) -> String {
        self.out
    }

    /// `name{labels} ` of a sample of the current family; `last` is a label added after `labels`
    /// (`le` of a bucket, `status_class` of a count).
    fn series(&mut self, suffix: &str, labels: &[(&str, &str)], last: Option<(&str, &str)>) {
        self.out.push_str(&self.name);
        self.out.push_str(suffix);
        if !labels.is_empty() || last.is_some() {
            self.labels(labels, last);
        }
        self.out.push(' ');
    }

    fn labels(&mut self, labels: &[(&str, &str)], last: Option<(&str, &str)>) {
        self.out.push('{');
        for (i, (k, v)) in labels.iter().copied().chain(last).enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            for c in v.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    fn value(&mut self, v: f64) {
        if v.is_nan() {
            self.out.push_str("NaN");
        } else if v.is_infinite() {
            self.out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(self.out, "{v}");
        }
    }
}

/// The certificate families both planes write: expiry of each certificate in use, and reloads
/// refused, by role.
/// `watched`: each status with the label that tells it apart from others of its role, if it has
/// one (`("listener", name)`, `("pool", name)`), which also adds its `cert_file`.
pub fn tls_families(
    e: &mut Encoder,
    watched: &[(Option<(&'static str, String)>, sluice_tls::WatchedStatus)],
) {
    let labels = |owner: &Option<(&'static str, String)>, w: &sluice_tls::WatchedStatus| {
        let mut l = vec![("role", w.role.clone())];
        if let Some((key, name)) = owner {
            l.push((*key, name.clone()));
            let file = w.cert_file.as_deref().map(|p| p.to_string_lossy().into_owned());
            l.push(("cert_file", file.unwrap_or_default()));
        }
        l
    };
    let sample = |e: &mut Encoder, labels: Vec<(&str, String)>, value: f64| {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        e.sample(&labels, value);
    };
    e.family(
        "sluice_tls_certificate_expiry_timestamp_seconds",
        "gauge",
        "When the certificate in use expires (notAfter), in Unix seconds, by role (with listener or pool, and file, where a role has several).",
    );
    for (owner, w) in watched {
        if let Some(expiry) = w.expiry {
            sample(e, labels(owner, w), expiry as f64);
        }
    }
    e.family(
        "sluice_tls_reload_failures_total",
        "counter",
        "Changed certificate, key, CRL or policy files that could not be used (the last good ones stay), by role.",
    );
    for (owner, w) in watched {
        sample(e, labels(owner, w), w.failures as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounds_inclusive() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (c, sum) = h.read();
        assert_eq!(&c[..4], &[1, 1, 1, 2]);
        assert_eq!(c[13], 2, "10 s bucket");
        assert_eq!(c[14], 3, "+Inf");
        assert!((sum - 60.0035).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn status_classes() {
        let s = StatusCounts::default();
        for status in [200, 204, 404, 503, 101, 999] {
            s.record(status);
        }
        assert_eq!((0..5).map(|i| s.get(i)).collect::<Vec<_>>(), [1, 2, 0, 1, 2]);
    }

    #[test]
    fn writes_the_text_format_with_escaped_labels() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(2));
        let mut e = Encoder::new();
        e.family("sluice_x_total", "counter", "Things.").sample(&[("route", "a\"b\\c")], 3.0);
        e.family("sluice_d_seconds", "histogram", "Durations.").histogram(&[("route", "r")], &h);
        let text = e.finish();
        assert!(text.starts_with("# HELP sluice_x_total Things.\n# TYPE sluice_x_total counter\n"));
        assert!(text.contains("sluice_x_total{route=\"a\\\"b\\\\c\"} 3\n"), "{text}");
        assert!(text.contains("sluice_d_seconds_bucket{route=\"r\",le=\"0.001\"} 0\n"), "{text}");
        assert!(text.contains("sluice_d_seconds_bucket{route=\"r\",le=\"0.0025\"} 1\n"), "{text}");
        assert!(text.contains("sluice_d_seconds_bucket{route=\"r\",le=\"+Inf\"} 1\n"), "{text}");
        assert!(text.contains("sluice_d_seconds_sum{route=\"r\"} 0.002\n"), "{text}");
        assert!(text.contains("sluice_d_seconds_count{route=\"r\"} 1\n"), "{text}");
    }
}
