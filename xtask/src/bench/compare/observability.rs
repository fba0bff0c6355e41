//! `--observability`: sluice-proxy three times, metrics only (the defaults), with an access log,
//! and tracing 1 % of requests to an OTLP receiver the benchmark runs, to show what access logs
//! and tracing cost.

use std::fmt::Write as _;
use std::io::BufRead as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};

use super::{Comparison, Entry, PLAIN, Start, Target};
use crate::bench::admin::{admin_response, ok_body, prometheus_value};
use crate::bench::configs::{sluice_conf, sluice_conf_with};
use crate::bench::processes::{Procs, sluice_command, spawn_sluice};
use crate::bench::receiver;
use crate::bench::report::{Results, Section, instances_memory, versus};
use crate::bench::side_by_side;

pub(super) const ENTRY: Entry = Entry {
    flag: Some("observability"),
    help: "Run sluice-proxy three times instead of nginx and HAProxy: metrics only (the defaults), with \
           an access log, and tracing 1 % of requests to an OTLP receiver the benchmark runs. Results go \
           to the \"observability\" section",
    run: |args| side_by_side(Observability::default(), args),
};

const SLUICE_ACCESS_LOG: u16 = 18005;
const SLUICE_ACCESS_LOG_ADMIN: u16 = 18905;
const SLUICE_TRACING: u16 = 18006;
const SLUICE_TRACING_ADMIN: u16 = 18906;
/// Where the access-log instance's standard output, its access log, goes (in target/bench).
const ACCESS_LOG_FILE: &str = "access.log";
/// `OTEL_TRACES_SAMPLER_ARG` of the tracing instance: the share of requests traced.
const TRACE_SAMPLE: &str = "0.01";
const TRACE_SERVICE: &str = "sluice-bench";
const ACCESS_LOG_LISTENER: &str = "    access_log: {}\n";

/// Metrics only, since they cannot be switched off.
const METRICS: Target = PLAIN.named("sluice, metrics only");
/// An access log on the listener.
const ACCESS_LOG: Target = Target::sluice(
    "sluice, metrics + access log",
    SLUICE_ACCESS_LOG,
    SLUICE_ACCESS_LOG_ADMIN,
    "sluice-access-log.yaml",
    || access_log_conf(SLUICE_ACCESS_LOG),
);
/// Tracing 1 % of requests over OTLP (turned on by `tracing_env`).
const TRACING: Target = Target::sluice(
    "sluice, metrics + tracing 1 %",
    SLUICE_TRACING,
    SLUICE_TRACING_ADMIN,
    "sluice-tracing.yaml",
    || sluice_conf(SLUICE_TRACING),
);

/// The trace receiver, and what the access log and the tracing produced.
#[derive(Default)]
struct Observability {
    receiver: Option<receiver::Receiver>,
    observed: Option<Observed>,
}

/// What the access-log and tracing instances produced, or why it is unknown.
struct Observed {
    access_log: Result<AccessLogStats, String>,
    spans: Result<SpanStats, String>,
}

/// The access-log instance's output file, and its admin counters.
#[derive(Debug, Default, PartialEq)]
struct AccessLogStats {
    lines: u64,
    bytes: u64,
    /// The first line (from a warm-up check), as an example.
    first: String,
    /// `sluice_access_log_lines_total` by result.
    written: u64,
    dropped: u64,
}

/// What the trace receiver got once the tracing instance stopped (flushing its exporter).
#[derive(Debug, Default, PartialEq)]
struct SpanStats {
    spans: receiver::Spans,
    /// Spans the SDK's batch processor reported dropping (queue full), from the instance's log.
    sdk_dropped: u64,
}

/// The access-log instance's config: the plain one with an access log on the listener, every
/// request logged.
fn access_log_conf(port: u16) -> String {
    sluice_conf_with(port, ACCESS_LOG_LISTENER, "", "")
}

/// The environment that turns the tracing instance's tracing on.
fn tracing_env(otlp_endpoint: &str) -> [(&'static str, String); 4] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_endpoint.to_owned()),
        ("OTEL_TRACES_SAMPLER", "traceidratio".to_owned()),
        ("OTEL_TRACES_SAMPLER_ARG", TRACE_SAMPLE.to_owned()),
        ("OTEL_SERVICE_NAME", TRACE_SERVICE.to_owned()),
    ]
}

impl Comparison for Observability {
    fn section(&self) -> Section {
        Section {
            begin: "<!-- bench-observability:begin -->",
            end: "<!-- bench-observability:end -->",
            heading: Some("Cost of metrics, access logs and tracing"),
        }
    }

    fn tools(&self) -> &'static [&'static str] {
        &["nginx", "wrk"]
    }

    fn targets(&self) -> &'static [Target] {
        &[METRICS, ACCESS_LOG, TRACING]
    }

    fn prepare(&mut self) -> anyhow::Result<()> {
        self.receiver = Some(receiver::Receiver::start()?);
        Ok(())
    }

    /// The access log goes to `ACCESS_LOG_FILE`; the tracing instance exports to the receiver.
    fn start(&mut self, procs: &mut Procs, with: &Start<'_>) -> anyhow::Result<Vec<u32>> {
        let (bin, workers) = (with.sluice_bin, with.workers);
        let endpoint = self.receiver.as_ref().map(receiver::Receiver::endpoint).unwrap_or_default();
        let metrics = spawn_sluice(procs, "sluice metrics only", bin, METRICS, workers)?;
        let cmd = sluice_command(&procs.dir, bin, ACCESS_LOG, workers)?;
        let log = std::fs::File::create(procs.dir.join(ACCESS_LOG_FILE))?;
        let access_log = procs.spawn_to("sluice access log", cmd, log)?;
        let mut cmd = sluice_command(&procs.dir, bin, TRACING, workers)?;
        cmd.envs(tracing_env(&endpoint));
        let tracing = procs.spawn("sluice tracing", cmd)?;
        Ok(vec![metrics, access_log, tracing])
    }

    fn after_memory(&mut self, procs: &mut Procs, targets: &[Target], pids: &[u32]) {
        self.observed = self.receiver.as_ref().map(|receiver| observe(procs, receiver, targets, pids));
    }

    fn machine(&self, w: usize) -> String {
        format!(
            "the upstream (nginx, {w} workers), the sluice-proxy instance under test ({w} worker threads; all \
             three instances run throughout, only one gets traffic at a time) and the OTLP trace receiver (a \
             gRPC server in the xtask process)"
        )
    }

    fn describe(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "The three instances have the same listener, pool and route as the defaults instance of the \
             resilience section:\n\n\
             - **{}**: the defaults. Prometheus metrics are always recorded and cannot be switched off, so this \
             is the baseline here; what the metrics themselves cost is measured separately with callgrind \
             (below this section).\n\
             - **{}**: the listener has `access_log: {{}}`, so every request is logged as one JSON line on \
             standard output, which goes to a file (`target/bench/{ACCESS_LOG_FILE}`).\n\
             - **{}**: `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<port>`, \
             `OTEL_TRACES_SAMPLER=traceidratio`, `OTEL_TRACES_SAMPLER_ARG={TRACE_SAMPLE}`, \
             `OTEL_SERVICE_NAME={TRACE_SERVICE}`, exporting over OTLP/gRPC to a trace receiver the benchmark \
             runs. wrk sends no `traceparent`, so 1 % of requests are sampled, each exporting a server span and \
             a client span; the other 99 % pay for the sampling decision and a span that records nothing.\n",
            METRICS.name, ACCESS_LOG.name, TRACING.name,
        );
    }

    fn versus(&self, out: &mut String, r: &Results, si: usize) {
        let base = r.runs_of(si, METRICS);
        let _ = writeln!(out);
        versus(out, "access log / metrics only", r.runs_of(si, ACCESS_LOG), base);
        versus(out, "tracing 1 % / metrics only", r.runs_of(si, TRACING), base);
    }

    /// What the access log and the trace receiver got, the memory of the three instances, and the
    /// access-log instance's config.
    fn notes(&self, out: &mut String, r: &Results) {
        let _ = writeln!(out, "### What the access log and the tracing produced\n");
        let _ = writeln!(
            out,
            "\"requests\" is all wrk completed against the instance, warm-up checks included. Access-log lines \
             are counted in the file the instance's standard output went to, and by the admin `/metrics` counter \
             `sluice_access_log_lines_total` (lines dropped when the writer falls behind are counted, not \
             written). Spans are counted by the trace receiver after the tracing instance stopped, which \
             flushes its exporter.\n"
        );
        let _ = writeln!(out, "| instance | requests | output |\n|---|---:|---|");
        let observed = self.observed.as_ref();
        let t = ACCESS_LOG;
        let text = match observed.map(|o| &o.access_log) {
            Some(Ok(a)) => format!(
                "{} lines, {:.1} MiB ({:.0} bytes a line); `sluice_access_log_lines_total`: {} written, {} dropped",
                a.lines,
                a.bytes as f64 / 1048576.0,
                a.bytes as f64 / a.lines.max(1) as f64,
                a.written,
                a.dropped
            ),
            Some(Err(e)) => format!("unavailable: {e}"),
            None => "unavailable".to_owned(),
        };
        let _ = writeln!(out, "| {} | {} | {text} |", t.name, r.served_of(t));
        let t = TRACING;
        let text = match observed.map(|o| &o.spans) {
            Some(Ok(s)) => {
                let services =
                    if s.spans.services.is_empty() { "none".to_owned() } else { s.spans.services.join(", ") };
                let dropped = if s.sdk_dropped > 0 {
                    format!("; the SDK dropped {} (queue full)", s.sdk_dropped)
                } else {
                    String::new()
                };
                format!(
                    "{} spans ({} server, {} client) in {} exports, service.name {services}: {:.2} % of requests \
                     sampled{dropped}",
                    s.spans.spans,
                    s.spans.server,
                    s.spans.client,
                    s.spans.exports,
                    s.spans.server as f64 * 100.0 / r.served_of(t).max(1) as f64,
                )
            }
            Some(Err(e)) => format!("unavailable: {e}"),
            None => "unavailable".to_owned(),
        };
        let _ = writeln!(out, "| {} | {} | {text} |", t.name, r.served_of(t));
        if let Some(Ok(a)) = observed.map(|o| &o.access_log)
            && !a.first.is_empty()
        {
            let _ =
                writeln!(out, "\nAn access-log line (from a warm-up check):\n\n```json\n{}\n```", a.first);
        }
        instances_memory(out, r);
        let _ = writeln!(
            out,
            "\nThe access-log instance's config (the other two have the same without `access_log`):\n\n```yaml\n{}```",
            access_log_conf(SLUICE_ACCESS_LOG)
        );
    }
}

/// Reads what the access log and tracing produced. The tracing instance is stopped for it: its
/// exporter sends what it still buffers on the way out. Failures are kept for the report.
fn observe(procs: &mut Procs, receiver: &receiver::Receiver, targets: &[Target], pids: &[u32]) -> Observed {
    let access_log = access_log_stats(&procs.dir.join(ACCESS_LOG_FILE), SLUICE_ACCESS_LOG_ADMIN);
    let spans = targets
        .iter()
        .position(|t| *t == TRACING)
        .and_then(|i| pids.get(i).copied())
        .context("no tracing instance")
        .and_then(|pid| span_stats(procs, receiver, pid));
    let observed = Observed {
        access_log: access_log.map_err(|e| format!("{e:#}")),
        spans: spans.map_err(|e| format!("{e:#}")),
    };
    match &observed.access_log {
        Ok(a) => println!(
            "access log: {} lines, {} bytes in {}; sluice_access_log_lines_total: {} written, {} dropped",
            a.lines,
            a.bytes,
            procs.dir.join(ACCESS_LOG_FILE).display(),
            a.written,
            a.dropped
        ),
        Err(e) => println!("access log unavailable: {e}"),
    }
    match &observed.spans {
        Ok(s) => println!("trace receiver: {:?}; spans the SDK dropped: {}", s.spans, s.sdk_dropped),
        Err(e) => println!("spans unavailable: {e}"),
    }
    observed
}

/// Waits until the access-log file holds every line the instance counts as written (its writer
/// flushes whenever it runs out of lines), then reads the file and the counters.
fn access_log_stats(path: &Path, admin: u16) -> anyhow::Result<AccessLogStats> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = admin_response(admin, "/metrics")?;
        let metrics = ok_body(&response).with_context(|| format!("GET 127.0.0.1:{admin}/metrics"))?;
        let count = |result: &str| {
            let sample = format!("sluice_access_log_lines_total{{result=\"{result}\"}}");
            prometheus_value(metrics, &sample)
                .map(|v| v as u64)
                .with_context(|| format!("no {sample} in the admin /metrics"))
        };
        let (written, dropped) = (count("written")?, count("dropped")?);
        let (lines, bytes, first) = count_lines(path)?;
        if lines >= written {
            return Ok(AccessLogStats { lines, bytes, first, written, dropped });
        }
        ensure!(
            Instant::now() < deadline,
            "{} has {lines} lines 30 s after the runs, but the proxy counts {written} written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Lines and bytes of a file, and its first line (without the line end).
fn count_lines(path: &Path) -> anyhow::Result<(u64, u64, String)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let (mut lines, mut bytes) = (u64::from(first.ends_with('\n')), first.len() as u64);
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
        bytes += buf.len() as u64;
        let n = buf.len();
        reader.consume(n);
    }
    Ok((lines, bytes, first.trim_end().to_owned()))
}

/// Stops the tracing instance, whose exporter flushes on the way out, then reads what the receiver
/// got and whether the SDK logged dropping spans.
fn span_stats(procs: &mut Procs, receiver: &receiver::Receiver, pid: u32) -> anyhow::Result<SpanStats> {
    receiver.check_running()?;
    let (name, status) = procs.stop(pid, Duration::from_secs(60))?;
    ensure!(status.success(), "{name} exited with {status}");
    let log = std::fs::read_to_string(procs.log(name)).unwrap_or_default();
    Ok(SpanStats { spans: receiver.spans(), sdk_dropped: sdk_dropped_spans(&log) })
}

/// The spans OpenTelemetry's batch span processor says it dropped (queue full): it logs the count
/// when it shuts down, if there were any.
fn sdk_dropped_spans(log: &str) -> u64 {
    log.split("dropped_span_count")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start_matches(['=', ':', '"', ' ']);
            rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Args;
    use crate::bench::compare::{Which, ports};
    use crate::bench::processes::{SLUICE, SLUICE_ADMIN, UPSTREAM};
    use crate::bench::report::render;
    use crate::bench::wrk::{Run, SCENARIOS};

    #[test]
    fn configs_parse() {
        use sluice_bundle::{Format, parse};
        let targets = [METRICS, ACCESS_LOG, TRACING];
        let mut files = Vec::new();
        for t in targets {
            let (file, text) = t.sluice_config().unwrap();
            let config = match parse(text.as_bytes(), Format::Yaml) {
                Ok(c) => c,
                Err(e) => panic!("{e}\n{text}"),
            };
            let listener = &config.listeners[0];
            assert_eq!(listener.address.port(), t.port);
            let sample = listener.access_log.as_ref().map(|a| a.effective_sample());
            // Only the access-log instance logs, and it logs every request.
            assert_eq!(sample, (t == ACCESS_LOG).then_some(1.0), "{}", t.name);
            // Otherwise the configs are the plain one, on the instance's port.
            if t != ACCESS_LOG {
                assert_eq!(text, sluice_conf(t.port));
            }
            files.push(file);
        }
        assert_eq!(
            access_log_conf(SLUICE_ACCESS_LOG),
            sluice_conf(SLUICE_ACCESS_LOG).replace("18005\n", "18005\n    access_log: {}\n")
        );
        // Three instances, three ports, three admin ports, three config files.
        let distinct = |v: Vec<u16>| v.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert_eq!(distinct(targets.map(|t| t.port).to_vec()), 3);
        assert_eq!(distinct(targets.map(|t| t.admin_port().unwrap()).to_vec()), 3);
        files.dedup();
        assert_eq!(files.len(), 3);
        // The tracing instance is told to sample 1 % and where to export.
        let env = tracing_env("http://127.0.0.1:4317");
        assert!(env.contains(&("OTEL_TRACES_SAMPLER_ARG", "0.01".to_owned())));
        assert!(env.contains(&("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317".to_owned())));
    }

    #[test]
    fn every_port_is_checked_free() {
        assert_eq!(
            ports(&Observability::default()),
            [
                UPSTREAM,
                SLUICE,
                SLUICE_ACCESS_LOG,
                SLUICE_TRACING,
                SLUICE_ADMIN,
                SLUICE_ACCESS_LOG_ADMIN,
                SLUICE_TRACING_ADMIN
            ]
        );
    }

    #[test]
    fn reads_access_log_and_span_counts() {
        let log = "2026-01-01T00:00:00Z  WARN opentelemetry_sdk: name=\"BatchSpanProcessor.Shutdown\" \
            dropped_span_count=42 message=\"Spans were dropped\"\n";
        assert_eq!(sdk_dropped_spans(log), 42);
        assert_eq!(sdk_dropped_spans("{\"dropped_span_count\":3}"), 3);
        assert_eq!(sdk_dropped_spans("nothing dropped\n"), 0);

        let path = std::env::temp_dir().join(format!("xtask-bench-count-lines-{}", std::process::id()));
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n").unwrap();
        let counted = count_lines(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(counted.unwrap(), (3, 24, "{\"a\":1}".to_owned()));
    }

    #[test]
    fn report_compares_with_metrics_only() {
        let run = |rps: f64, p99_ms: f64, cpu_us: f64| Run { rps, p99_ms, cpu_us, ..Run::default() };
        let per_scenario =
            vec![vec![run(1000.0, 1.0, 10.0)], vec![run(800.0, 1.5, 12.0)], vec![run(900.0, 1.0, 11.0)]];
        let results = Results {
            targets: vec![METRICS, ACCESS_LOG, TRACING],
            runs: vec![per_scenario; SCENARIOS.len()],
            served: vec![10_000, 10_000, 10_000],
            idle_rss: vec![0; 3],
            after_rss: vec![0; 3],
            peak_rss: vec![0; 3],
            others_rss: Vec::new(),
            took: Duration::from_secs(60),
        };
        let c = Observability {
            receiver: None,
            observed: Some(Observed {
                access_log: Ok(AccessLogStats {
                    lines: 10_000,
                    bytes: 5_000_000,
                    first: "{\"status\":200}".into(),
                    written: 10_000,
                    dropped: 0,
                }),
                spans: Ok(SpanStats {
                    spans: receiver::Spans {
                        spans: 200,
                        server: 100,
                        client: 100,
                        exports: 2,
                        services: vec![TRACE_SERVICE.into()],
                    },
                    sdk_dropped: 0,
                }),
            }),
        };
        let args = Args {
            duration: 10,
            rounds: 3,
            workers: 2,
            install: false,
            no_write: true,
            which: Which::of("observability"),
            streams: 0,
        };
        let report = render(&c, &args, &results);
        assert!(report.starts_with("<!-- bench-observability:begin -->\n"), "{report}");
        assert!(report.ends_with("<!-- bench-observability:end -->\n"), "{report}");
        assert!(report.contains("cargo xtask bench --duration 10 --rounds 3 --workers 2 --observability"));
        assert!(report.contains("callgrind"));
        // The ratios once per scenario, the outputs once.
        for (line, times) in [
            (
                "access log / metrics only: throughput 0.80×, p99 1.50×, CPU per request 1.20×\n",
                SCENARIOS.len(),
            ),
            (
                "tracing 1 % / metrics only: throughput 0.90×, p99 1.00×, CPU per request 1.10×\n",
                SCENARIOS.len(),
            ),
            (
                "| sluice, metrics + access log | 10000 | 10000 lines, 4.8 MiB (500 bytes a line); \
                 `sluice_access_log_lines_total`: 10000 written, 0 dropped |\n",
                1,
            ),
            (
                "| sluice, metrics + tracing 1 % | 10000 | 200 spans (100 server, 100 client) in 2 exports, \
                 service.name sluice-bench: 1.00 % of requests sampled |\n",
                1,
            ),
        ] {
            assert_eq!(report.matches(line).count(), times, "{line}\n{report}");
        }
    }
}
