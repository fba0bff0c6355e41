//! `--mirror`: sluice-proxy three times, without mirroring, mirroring every request to a shadow
//! that answers in 5 s (a server in the benchmark's process), and mirroring every request to a
//! fast shadow (the upstream nginx on a second port), to show what mirroring costs the primary
//! traffic.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{Comparison, Entry, PLAIN, Start, Target};
use crate::bench::admin::{admin_response, ok_body, prometheus_value};
use crate::bench::configs::{ROUTE, sluice_conf_with};
use crate::bench::processes::{Procs, spawn_sluice};
use crate::bench::report::{Results, Section, mib, versus};
use crate::bench::shadow;
use crate::bench::side_by_side;
use crate::bench::wrk::{SCENARIOS, ratio};

pub(super) const ENTRY: Entry = Entry {
    flag: Some("mirror"),
    help: "Run sluice-proxy three times instead of nginx and HAProxy: without mirroring, mirroring every \
           request to a shadow that answers in 5 s, and mirroring every request to a fast shadow. Results \
           go to the \"mirror\" section",
    run: |args| side_by_side(Mirror::default(), args),
};

const SLUICE_MIRROR_SLOW: u16 = 18007;
const SLUICE_MIRROR_SLOW_ADMIN: u16 = 18907;
const SLUICE_MIRROR_FAST: u16 = 18008;
const SLUICE_MIRROR_FAST_ADMIN: u16 = 18908;
/// The shadows: the upstream nginx listening on a second port, and the slow shadow, which answers
/// every request `SHADOW_DELAY` after it arrived.
const SHADOW_FAST: u16 = 18009;
const SHADOW_SLOW: u16 = 18010;
const SHADOW_DELAY: Duration = Duration::from_secs(5);
/// What the mirroring instances add to the route: every request copied to pool `shadow`, with a
/// deadline above the slow shadow's delay, and the guardrail off so mirroring is never paused.
const MIRROR_ROUTE: &str =
    "    mirror: {pool: shadow, fraction: 1, timeout: 6s, guardrail: {enabled: false}}\n";
/// Throughput of the slow-mirror instance at least this share of the baseline's.
const MIRROR_THROUGHPUT_TARGET: f64 = 0.90;
/// p99 of the slow-mirror instance at most this multiple of the baseline's.
const MIRROR_P99_TARGET: f64 = 1.05;

const NO_MIRROR: Target = PLAIN.named("sluice, no mirror");
/// Every request copied to the slow shadow.
const MIRROR_SLOW: Target = Target::sluice(
    "sluice, 100% mirror to a 5 s shadow",
    SLUICE_MIRROR_SLOW,
    SLUICE_MIRROR_SLOW_ADMIN,
    "sluice-mirror-slow.yaml",
    || mirror_conf(SLUICE_MIRROR_SLOW, SHADOW_SLOW),
);
/// Every request copied to the fast shadow.
const MIRROR_FAST: Target = Target::sluice(
    "sluice, 100% mirror to a fast shadow",
    SLUICE_MIRROR_FAST,
    SLUICE_MIRROR_FAST_ADMIN,
    "sluice-mirror-fast.yaml",
    || mirror_conf(SLUICE_MIRROR_FAST, SHADOW_FAST),
);

/// The slow shadow, and what the mirrors did.
#[derive(Default)]
struct Mirror {
    slow_shadow: Option<shadow::SlowShadow>,
    mirrored: Option<Mirrored>,
}

/// What the mirroring instances did with their copies, and what the slow shadow was sent.
struct Mirrored {
    /// The mirror counters of each mirroring instance, or why they are missing.
    counters: Vec<(Target, Result<MirrorCounters, String>)>,
    slow_shadow: shadow::Served,
}

/// A route's mirror counters, from the admin `/metrics`.
#[derive(Debug, Default, PartialEq)]
struct MirrorCounters {
    /// `sluice_mirror_requests_total` by result: answered below 500, answered 5xx, no answer.
    ok: u64,
    server_error: u64,
    failed: u64,
    /// `sluice_mirror_dropped_total`: over `max_in_flight`, and for any other reason.
    dropped_in_flight: u64,
    dropped_other: u64,
    /// `sluice_mirror_in_flight` when read.
    in_flight: u64,
    guardrail_trips: u64,
}

/// A mirroring instance's config: the plain one plus pool `shadow`, whose one endpoint is
/// 127.0.0.1:`shadow`, and `MIRROR_ROUTE` on the route.
fn mirror_conf(port: u16, shadow: u16) -> String {
    let pool = format!("  - name: shadow\n    endpoints:\n      - address: 127.0.0.1:{shadow}\n");
    sluice_conf_with(port, "", &pool, MIRROR_ROUTE)
}

impl Comparison for Mirror {
    fn section(&self) -> Section {
        Section {
            begin: "<!-- bench-mirror:begin -->",
            end: "<!-- bench-mirror:end -->",
            heading: Some("Cost of mirroring"),
        }
    }

    fn tools(&self) -> &'static [&'static str] {
        &["nginx", "wrk"]
    }

    fn targets(&self) -> &'static [Target] {
        &[NO_MIRROR, MIRROR_SLOW, MIRROR_FAST]
    }

    fn upstream_ports(&self) -> &'static [u16] {
        &[SHADOW_FAST]
    }

    fn own_ports(&self) -> &'static [u16] {
        &[SHADOW_SLOW]
    }

    fn prepare(&mut self) -> anyhow::Result<()> {
        self.slow_shadow = Some(shadow::SlowShadow::start(SHADOW_SLOW, SHADOW_DELAY)?);
        Ok(())
    }

    fn start(&mut self, procs: &mut Procs, with: &Start<'_>) -> anyhow::Result<Vec<u32>> {
        let (bin, workers) = (with.sluice_bin, with.workers);
        let none = spawn_sluice(procs, "sluice no mirror", bin, NO_MIRROR, workers)?;
        let slow = spawn_sluice(procs, "sluice mirror slow", bin, MIRROR_SLOW, workers)?;
        let fast = spawn_sluice(procs, "sluice mirror fast", bin, MIRROR_FAST, workers)?;
        Ok(vec![none, slow, fast])
    }

    fn after_runs(&mut self, targets: &[Target]) {
        self.mirrored = self.slow_shadow.as_ref().map(|s| mirrored(targets, s));
    }

    fn machine(&self, w: usize) -> String {
        format!(
            "the upstream (nginx, {w} workers, also the fast shadow), the sluice-proxy instance under test ({w} \
             worker threads; all three instances run throughout, only one gets traffic at a time) and the slow \
             shadow (a hyper server on one thread of the xtask process)"
        )
    }

    fn describe(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "The three instances have the same listener, pool and route as the defaults instance of the \
             resilience section; the two that mirror add a pool `shadow` and, on the route, \
             `{}` (config below). Every request is picked for a copy; at most `max_in_flight` (default 100) \
             copies wait on the shadow at once, and a request picked while 100 wait is counted as dropped, \
             not copied. wrk's latency distribution is measured at saturation (no fixed-rate step: wrk2 is \
             not packaged for Debian).\n\n\
             - **{}**: the defaults, the baseline.\n\
             - **{}**: the shadow answers every request {} s after it arrived and keeps connections open.\n\
             - **{}**: the shadow is the upstream nginx on a second port (127.0.0.1:{SHADOW_FAST}), so every \
             request really is copied and answered: the full cost of copying, on the same two cores. A copy \
             reads at most `max_body` (default 64 KiB) of the shadow's answer, so for 1 MiB responses it \
             stops there and closes that connection.\n",
            MIRROR_ROUTE.trim().strip_prefix("mirror: ").unwrap_or(MIRROR_ROUTE.trim()),
            NO_MIRROR.name,
            MIRROR_SLOW.name,
            SHADOW_DELAY.as_secs(),
            MIRROR_FAST.name,
        );
    }

    fn versus(&self, out: &mut String, r: &Results, si: usize) {
        let base = r.runs_of(si, NO_MIRROR);
        let _ = writeln!(out);
        versus(out, "mirror to 5 s shadow / no mirror", r.runs_of(si, MIRROR_SLOW), base);
        versus(out, "mirror to fast shadow / no mirror", r.runs_of(si, MIRROR_FAST), base);
    }

    /// Whether mirroring to the slow shadow kept to its targets, what the mirrors did, the memory
    /// of the three instances, and the slow-mirror instance's config.
    fn notes(&self, out: &mut String, r: &Results) {
        let _ = writeln!(out, "### Against the target\n");
        let _ = writeln!(
            out,
            "Target: mirroring every request to a shadow that answers in {} s changes throughput by less \
             than {:.0} % and p99 by less than {:.0} % (a lower p99 counts as met).\n",
            SHADOW_DELAY.as_secs(),
            (1.0 - MIRROR_THROUGHPUT_TARGET) * 100.0,
            (MIRROR_P99_TARGET - 1.0) * 100.0
        );
        let _ = writeln!(out, "| scenario | throughput | p99 | met |\n|---|---:|---:|---|");
        for (si, s) in SCENARIOS.iter().enumerate() {
            let (slow, base) = (r.runs_of(si, MIRROR_SLOW), r.runs_of(si, NO_MIRROR));
            let rps = ratio(slow, base, |r| r.rps);
            let p99 = ratio(slow, base, |r| r.p99_ms);
            let verdict = match (rps >= MIRROR_THROUGHPUT_TARGET, p99 <= MIRROR_P99_TARGET) {
                (true, true) => "yes",
                (false, true) => "**no** (throughput)",
                (true, false) => "**no** (p99)",
                (false, false) => "**no** (throughput and p99)",
            };
            let _ = writeln!(out, "| {} | {rps:.2}× | {p99:.2}× | {verdict} |", s.name);
        }

        let _ = writeln!(out, "\n### What the mirrors did\n");
        let _ = writeln!(
            out,
            "\"requests\" is all wrk completed against the instance, warm-up checks included; the other columns \
             are the route's `sluice_mirror_*` counters from the instance's admin `/metrics`, read once its last \
             copies had finished. \"sent\" is copies that went to the shadow (`sluice_mirror_requests_total`, \
             all results); \"answered\" those it answered below 500; \"dropped, in flight\" requests picked \
             while `max_in_flight` copies were waiting (`sluice_mirror_dropped_total{{reason=\"in_flight\"}}`). \
             wrk does not count the requests still in progress when a run stops, so \"sent\" can exceed \
             \"requests\" by a few.\n"
        );
        let _ = writeln!(
            out,
            "| instance | requests | sent | answered | failed | dropped, in flight | dropped, other | guardrail trips |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let mirrored = self.mirrored.as_ref();
        let mut missing = Vec::new();
        for (t, counters) in mirrored.map(|m| m.counters.as_slice()).unwrap_or_default() {
            let served = r.served_of(*t);
            let share = |n: u64| format!("{n} ({:.2} %)", n as f64 * 100.0 / served.max(1) as f64);
            let _ = match counters {
                Ok(c) => writeln!(
                    out,
                    "| {} | {served} | {} | {} | {} | {} | {} | {} |",
                    t.name,
                    share(c.sent()),
                    c.ok,
                    c.server_error + c.failed,
                    share(c.dropped_in_flight),
                    c.dropped_other,
                    c.guardrail_trips,
                ),
                Err(e) => {
                    missing.push(format!("{}: {e}", t.name));
                    writeln!(out, "| {} | {served} | – | – | – | – | – | – |", t.name)
                }
            };
        }
        for m in missing {
            let _ = writeln!(out, "\nCounters unavailable for {m}");
        }
        if let Some(s) = mirrored.map(|m| m.slow_shadow) {
            let _ = writeln!(
                out,
                "\nThe slow shadow itself received {} requests on {} connections, answered {}, and had at most \
                 {} waiting at once.",
                s.requests, s.connections, s.answered, s.peak_waiting
            );
        }

        let _ = writeln!(out, "\n### Memory (RSS)\n");
        let _ = writeln!(
            out,
            "RSS right after each wrk run (while the last copies still wait on the shadow), in the order the \
             runs were made, and the instance's peak RSS (`VmHWM` in /proc/<pid>/status) read after all runs.\n"
        );
        let _ = writeln!(
            out,
            "| instance | idle after start | after its first run | largest after a run | after its last run | \
             peak (VmHWM) | idle after the runs |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for (i, t) in r.targets.iter().enumerate() {
            let at = |of: &[u64]| of.get(i).copied().unwrap_or(0);
            // In the order they were made: rounds, then scenarios.
            let rounds = r.runs.iter().map(|s| s.get(i).map_or(0, Vec::len)).max().unwrap_or(0);
            let after_runs: Vec<u64> = (0..rounds)
                .flat_map(|round| r.runs.iter().filter_map(move |s| s.get(i)?.get(round).map(|run| run.rss)))
                .collect();
            let _ = writeln!(
                out,
                "| {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
                t.name,
                mib(at(&r.idle_rss)),
                mib(after_runs.first().copied().unwrap_or(0)),
                mib(after_runs.iter().copied().max().unwrap_or(0)),
                mib(after_runs.last().copied().unwrap_or(0)),
                mib(at(&r.peak_rss)),
                mib(at(&r.after_rss)),
            );
        }
        let _ = writeln!(
            out,
            "\nThe 5 s shadow instance's config (the fast one has the shadow on port {SHADOW_FAST}, the \
             no-mirror instance neither the pool `shadow` nor the `mirror`):\n\n```yaml\n{}```",
            mirror_conf(SLUICE_MIRROR_SLOW, SHADOW_SLOW)
        );
    }
}

// === impl MirrorCounters ===

impl MirrorCounters {
    /// Reads the mirror counters of route `route` out of a Prometheus text exposition.
    fn parse(metrics: &str, route: &str) -> anyhow::Result<Self> {
        let value = |sample: String| {
            prometheus_value(metrics, &sample)
                .map(|v| v as u64)
                .with_context(|| format!("no {sample} in the admin /metrics"))
        };
        let result = |r: &str| {
            value(format!("sluice_mirror_requests_total{{route=\"{route}\",pool=\"shadow\",result=\"{r}\"}}"))
        };
        let dropped =
            |r: &str| value(format!("sluice_mirror_dropped_total{{route=\"{route}\",reason=\"{r}\"}}"));
        Ok(Self {
            ok: result("ok")?,
            server_error: result("server_error")?,
            failed: result("failed")?,
            dropped_in_flight: dropped("in_flight")?,
            // Every other reason, whichever the proxy reports.
            dropped_other: metrics
                .lines()
                .filter_map(|l| {
                    l.strip_prefix(&format!("sluice_mirror_dropped_total{{route=\"{route}\",reason=\""))
                })
                .filter(|l| !l.starts_with("in_flight\""))
                .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
                .sum::<f64>() as u64,
            in_flight: value(format!("sluice_mirror_in_flight{{route=\"{route}\"}}"))?,
            guardrail_trips: value(format!("sluice_mirror_guardrail_trips_total{{route=\"{route}\"}}"))?,
        })
    }

    /// Copies sent to the shadow: finished either way, or still waiting for it.
    fn sent(&self) -> u64 {
        self.ok + self.server_error + self.failed + self.in_flight
    }
}

/// Waits (up to the mirror's timeout and some) for the mirroring instances' last copies to finish,
/// then reads their mirror counters from the admin `/metrics`, and what the slow shadow was sent.
fn mirrored(targets: &[Target], slow_shadow: &shadow::SlowShadow) -> Mirrored {
    let read = |port: u16| -> anyhow::Result<MirrorCounters> {
        let response = admin_response(port, "/metrics")?;
        let metrics = ok_body(&response).with_context(|| format!("GET 127.0.0.1:{port}/metrics"))?;
        MirrorCounters::parse(metrics, ROUTE)
    };
    let settled = |port: u16| -> anyhow::Result<MirrorCounters> {
        let deadline = Instant::now() + SHADOW_DELAY + Duration::from_secs(10);
        loop {
            let c = read(port)?;
            if c.in_flight == 0 || Instant::now() >= deadline {
                return Ok(c);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let counters = targets
        .iter()
        .filter(|t| [MIRROR_SLOW, MIRROR_FAST].contains(t))
        .filter_map(|t| Some((*t, t.admin_port()?)))
        .map(|(t, port)| {
            let c = settled(port);
            match &c {
                Ok(c) => println!("mirror counters of {}: {c:?}", t.name),
                Err(e) => println!("mirror counters of {} unavailable: {e:#}", t.name),
            }
            (t, c.map_err(|e| format!("{e:#}")))
        })
        .collect();
    if let Err(e) = slow_shadow.check_running() {
        println!("{e:#}");
    }
    let served = slow_shadow.served();
    println!("slow shadow: {served:?}");
    Mirrored { counters, slow_shadow: served }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Args;
    use crate::bench::compare::{Which, ports};
    use crate::bench::configs::{sluice_conf, upstream_conf};
    use crate::bench::processes::{SLUICE, SLUICE_ADMIN, UPSTREAM};
    use crate::bench::report::render;
    use crate::bench::wrk::Run;

    #[test]
    fn configs_parse() {
        use sluice_bundle::{Format, parse};
        let targets = [NO_MIRROR, MIRROR_SLOW, MIRROR_FAST];
        let mut files = Vec::new();
        for t in targets {
            let (file, text) = t.sluice_config().unwrap();
            let config = match parse(text.as_bytes(), Format::Yaml) {
                Ok(c) => c,
                Err(e) => panic!("{e}\n{text}"),
            };
            assert_eq!(config.listeners[0].address.port(), t.port);
            let shadow = match t {
                t if t == MIRROR_SLOW => Some(SHADOW_SLOW),
                t if t == MIRROR_FAST => Some(SHADOW_FAST),
                _ => None,
            };
            let route = &config.routes[0];
            match shadow {
                None => {
                    assert_eq!(text, sluice_conf(t.port));
                    assert!(route.mirror.is_none());
                }
                Some(port) => {
                    // Every request copied, for longer than the slow shadow takes, never paused.
                    let m = route.mirror.as_ref().unwrap();
                    assert_eq!(m.pool, "shadow");
                    assert_eq!(m.fraction_or_default(), 1.0);
                    assert!(m.timeout_or_default().get() > SHADOW_DELAY);
                    assert!(m.guardrail_or_default().is_none(), "{text}");
                    let pool = config.pools.iter().find(|p| p.name == "shadow").unwrap();
                    assert_eq!(pool.endpoints.len(), 1);
                    assert!(text.contains(&format!("      - address: 127.0.0.1:{port}\n")), "{text}");
                    // The primary pool and route are the plain ones.
                    assert_eq!(route.pool.as_deref(), Some("upstream"));
                    assert!(text.starts_with(&sluice_conf(t.port).replace(
                        "routes:\n  - name: all\n    pool: upstream\n",
                        &format!("  - name: shadow\n    endpoints:\n      - address: 127.0.0.1:{port}\n")
                    )));
                }
            }
            files.push(file);
        }
        files.dedup();
        assert_eq!(files.len(), 3);
        // The fast shadow is the upstream nginx on a second port.
        let dir = std::path::Path::new("/tmp/bench");
        let upstream = upstream_conf(dir, 2, Mirror::default().upstream_ports());
        assert!(upstream.contains(&format!("listen 127.0.0.1:{SHADOW_FAST} ")));
    }

    #[test]
    fn every_port_is_checked_free() {
        assert_eq!(
            ports(&Mirror::default()),
            [
                UPSTREAM,
                SLUICE,
                SLUICE_MIRROR_SLOW,
                SLUICE_MIRROR_FAST,
                SHADOW_FAST,
                SHADOW_SLOW,
                SLUICE_ADMIN,
                SLUICE_MIRROR_SLOW_ADMIN,
                SLUICE_MIRROR_FAST_ADMIN
            ]
        );
    }

    #[test]
    fn reads_mirror_counters() {
        let metrics = "# TYPE sluice_mirror_requests_total counter\n\
            sluice_mirror_requests_total{route=\"all\",pool=\"shadow\",result=\"ok\"} 900\n\
            sluice_mirror_requests_total{route=\"all\",pool=\"shadow\",result=\"server_error\"} 2\n\
            sluice_mirror_requests_total{route=\"all\",pool=\"shadow\",result=\"failed\"} 3\n\
            sluice_mirror_dropped_total{route=\"all\",reason=\"in_flight\"} 123456\n\
            sluice_mirror_dropped_total{route=\"all\",reason=\"body_too_large\"} 1\n\
            sluice_mirror_dropped_total{route=\"all\",reason=\"guardrail\"} 0\n\
            sluice_mirror_dropped_total{route=\"all\",reason=\"body_incomplete\"} 1\n\
            sluice_mirror_dropped_total{route=\"all\",reason=\"trailers\"} 0\n\
            sluice_mirror_in_flight{route=\"all\"} 100\n\
            sluice_mirror_guardrail_open{route=\"all\"} 0\n\
            sluice_mirror_guardrail_trips_total{route=\"all\"} 0\n";
        let c = MirrorCounters::parse(metrics, "all").unwrap();
        let want = MirrorCounters {
            ok: 900,
            server_error: 2,
            failed: 3,
            dropped_in_flight: 123456,
            dropped_other: 2,
            in_flight: 100,
            guardrail_trips: 0,
        };
        assert_eq!(c, want);
        assert_eq!(c.sent(), 1005);
        let e = MirrorCounters::parse(metrics, "other").unwrap_err().to_string();
        assert!(e.contains("route=\"other\""), "{e}");
    }

    #[test]
    fn report_checks_the_target() {
        let run = |rps: f64, p99_ms: f64, rss: u64| Run { rps, p99_ms, cpu_us: 20.0, rss, ..Run::default() };
        // Scenario 0 meets the target, 1 misses it on p99, 2 on throughput. Two rounds, the RSS
        // after each run growing with the run's place in time.
        let mut runs = Vec::new();
        for (si, (rps, p99)) in [(980.0, 1.04), (1000.0, 1.10), (850.0, 0.90)].into_iter().enumerate() {
            let mib = |round: u64| (10 + round * 3 + si as u64) << 20;
            runs.push(vec![
                vec![run(1000.0, 1.0, mib(0)), run(1000.0, 1.0, mib(1))],
                vec![run(rps, p99, mib(0)), run(rps, p99, mib(1))],
                vec![run(500.0, 2.0, mib(0)), run(500.0, 2.0, mib(1))],
            ]);
        }
        let results = Results {
            targets: vec![NO_MIRROR, MIRROR_SLOW, MIRROR_FAST],
            runs,
            served: vec![10_000, 10_000, 10_000],
            idle_rss: vec![8 << 20; 3],
            after_rss: vec![12 << 20; 3],
            peak_rss: vec![20 << 20; 3],
            others_rss: Vec::new(),
            took: Duration::from_secs(60),
        };
        let c = Mirror {
            slow_shadow: None,
            mirrored: Some(Mirrored {
                counters: vec![
                    (
                        MIRROR_SLOW,
                        Ok(MirrorCounters { ok: 200, dropped_in_flight: 9_800, ..MirrorCounters::default() }),
                    ),
                    (MIRROR_FAST, Err("no route".into())),
                ],
                slow_shadow: shadow::Served {
                    connections: 100,
                    requests: 200,
                    answered: 200,
                    peak_waiting: 100,
                },
            }),
        };
        let args = Args {
            duration: 10,
            rounds: 2,
            workers: 2,
            install: false,
            no_write: true,
            which: Which::of("mirror"),
            streams: 0,
        };
        let report = render(&c, &args, &results);
        assert!(report.starts_with("<!-- bench-mirror:begin -->\n"), "{report}");
        assert!(report.ends_with("<!-- bench-mirror:end -->\n"), "{report}");
        assert!(report.contains("cargo xtask bench --duration 10 --rounds 2 --workers 2 --mirror`"));
        for line in [
            "| small response, 16 connections | 0.98× | 1.04× | yes |\n",
            "| small response, 64 connections | 1.00× | 1.10× | **no** (p99) |\n",
            "| 1 MiB response, 16 connections | 0.85× | 0.90× | **no** (throughput) |\n",
            "| sluice, 100% mirror to a 5 s shadow | 10000 | 200 (2.00 %) | 200 | 0 | 9800 (98.00 %) | 0 | 0 |\n",
            "| sluice, 100% mirror to a fast shadow | 10000 | – | – | – | – | – | – |\n",
            "Counters unavailable for sluice, 100% mirror to a fast shadow: no route\n",
            "received 200 requests on 100 connections, answered 200, and had at most 100 waiting at once",
            // First run 10 MiB (round 1, scenario 1), largest and last 15 MiB (round 2, scenario 3).
            "| sluice, no mirror | 8.0 MiB | 10.0 MiB | 15.0 MiB | 15.0 MiB | 20.0 MiB | 12.0 MiB |\n",
            "mirror to 5 s shadow / no mirror: throughput 0.98×, p99 1.04×, CPU per request 1.00×\n",
            "mirror to fast shadow / no mirror: throughput 0.50×, p99 2.00×, CPU per request 1.00×\n",
            "    mirror: {pool: shadow, fraction: 1, timeout: 6s, guardrail: {enabled: false}}\n```",
        ] {
            assert!(report.contains(line), "{line}\n{report}");
        }
    }
}
