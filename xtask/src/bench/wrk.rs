//! Running wrk, reading its output, and the statistics the report takes of its runs.

use std::process::Command;

use anyhow::{Context, bail, ensure};

use super::processes::on_cpu;

/// What wrk is asked for: a path, with so many connections.
pub(super) struct Scenario {
    pub(super) name: &'static str,
    pub(super) path: &'static str,
    pub(super) connections: u32,
    /// `Connection: close`: a new connection (and TLS handshake) for every request.
    pub(super) close: bool,
}

pub(super) const SCENARIOS: [Scenario; 3] = [
    Scenario { name: "small response, 16 connections", path: "/small", connections: 16, close: false },
    Scenario { name: "small response, 64 connections", path: "/small", connections: 64, close: false },
    Scenario { name: "1 MiB response, 16 connections", path: "/1m", connections: 16, close: false },
];

/// One wrk run.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Run {
    pub(super) rps: f64,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) errors: u64,
    /// Requests completed.
    pub(super) requests: u64,
    /// CPU time (user + kernel) the target's processes spent per request, in microseconds.
    pub(super) cpu_us: f64,
    /// RSS of the target's processes right after the run, in bytes.
    pub(super) rss: u64,
}

impl Run {
    /// Requests per second of the target's CPU time (user + system).
    pub(super) fn per_cpu_second(&self) -> f64 {
        1e6 / self.cpu_us.max(1e-9)
    }
}

/// Runs wrk against http://127.0.0.1:`port``path` for `secs` seconds: two threads, or one
/// pinned to `cpu`.
pub(super) fn wrk(
    port: u16,
    path: &str,
    connections: u32,
    secs: u64,
    cpu: Option<usize>,
) -> anyhow::Result<Run> {
    wrk_url(&format!("http://127.0.0.1:{port}{path}"), connections, secs, cpu, false, &[])
}

/// Runs wrk against `url` (http or https); with `close`, every request on a new connection;
/// `headers` (`Name: value`) go with every request.
pub(super) fn wrk_url(
    url: &str,
    connections: u32,
    secs: u64,
    cpu: Option<usize>,
    close: bool,
    headers: &[&str],
) -> anyhow::Result<Run> {
    let threads = if cpu.is_some() { 1 } else { connections.min(2) };
    let mut cmd = Command::new("wrk");
    cmd.args([
        "--latency",
        "-t",
        &threads.to_string(),
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{secs}s"),
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    let out = match cpu {
        Some(cpu) => on_cpu(&cmd, cpu),
        None => cmd,
    }
    .output()
    .context("running wrk")?;
    ensure!(out.status.success(), "wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

fn parse_wrk(text: &str) -> anyhow::Result<Run> {
    let mut run = Run::default();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Requests/sec:") => run.rps = words.next().context("rps")?.parse()?,
            Some("50%") => run.p50_ms = millis(words.next().context("p50")?)?,
            Some("99%") => run.p99_ms = millis(words.next().context("p99")?)?,
            // `123456 requests in 10.00s, 20.00MB read`
            Some(n) if line.contains(" requests in ") => run.requests = n.parse().context("requests")?,
            Some("Non-2xx") => {
                run.errors += line.rsplit(' ').next().unwrap_or("0").parse::<u64>().unwrap_or(0)
            }
            Some("Socket") => {
                run.errors += line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    ensure!(run.rps > 0.0, "could not read wrk output:\n{text}");
    Ok(run)
}

/// `123.45us`, `1.20ms`, `2.00s` in milliseconds.
fn millis(v: &str) -> anyhow::Result<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        bail!("unknown latency unit in {v:?}")
    };
    Ok(num.parse::<f64>()? * scale)
}

pub(super) fn median(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `f` of `a`'s median run over `f` of `b`'s.
pub(super) fn ratio(a: &[Run], b: &[Run], f: impl Fn(&Run) -> f64 + Copy) -> f64 {
    median(a, f) / median(b, f).max(1e-9)
}

/// The lowest and highest of `f(a[i]) / f(b[i])`, round by round (runs in round order): how far
/// one noisy round can move the median's ratio.
pub(super) fn round_ratios(a: &[Run], b: &[Run], f: impl Fn(&Run) -> f64) -> (f64, f64) {
    a.iter()
        .zip(b)
        .map(|(x, y)| f(x) / f(y).max(1e-9))
        .fold((f64::INFINITY, 0.0), |(lo, hi), r| (lo.min(r), hi.max(r)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 10s test @ http://127.0.0.1:18000/small\n  2 threads and 16 connections\n  Latency Distribution\n     50%  190.00us\n     75%  250.00us\n     90%  300.00us\n     99%    1.23ms\n  123456 requests in 10.00s, 20.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 5\nRequests/sec:  12345.67\nTransfer/sec:      2.00MB\n";
        let r = parse_wrk(text).unwrap();
        assert_eq!(r.rps, 12345.67);
        assert!((r.p50_ms - 0.19).abs() < 1e-9);
        assert!((r.p99_ms - 1.23).abs() < 1e-9);
        assert_eq!(r.errors, 8);
        assert_eq!(r.requests, 123456);
    }
}
