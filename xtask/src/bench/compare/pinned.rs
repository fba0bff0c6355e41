//! `--pinned`: SPEC §5's per-core method. Each proxy runs one worker on CPU 1, alone; wrk (one
//! thread) and the upstream nginx (one worker) share CPU 0. What counts is the work a proxy does
//! per CPU-second it spends, so a proxy cannot look fast by taking more cores than another. nginx
//! and HAProxy run twice: plain, as users run them, and doing sluice-proxy's header work (request
//! ids, X-Forwarded-*).

use std::fmt::Write as _;

use super::{Comparison, Entry, PLAIN, Pins, Start, Target};
use crate::bench::configs::{haproxy_conf, nginx_proxy_conf};
use crate::bench::processes::{Procs, UPSTREAM, haproxy, nginx, spawn_sluice};
use crate::bench::report::{Results, Section, mib};
use crate::bench::side_by_side;
use crate::bench::wrk::{Run, Scenario, median, ratio, round_ratios};

pub(super) const ENTRY: Entry = Entry {
    flag: Some("pinned"),
    help: "Each proxy alone on one CPU with one worker (wrk and the upstream on the other): requests \
           per proxy CPU-second, p99 at 64 connections, added latency at 1 connection, 1 MiB \
           throughput; nginx and HAProxy both plain and doing sluice-proxy's header work",
    run: |args| side_by_side(Pinned, args),
};

const NGINX_SAME_PORT: u16 = 18001;
const HAPROXY_SAME_PORT: u16 = 18002;
const NGINX_PLAIN_PORT: u16 = 18011;
const HAPROXY_PLAIN_PORT: u16 = 18012;

const DIRECT: Target = Target::other("upstream direct", UPSTREAM);
const NGINX_PLAIN: Target = Target::other("nginx, plain", NGINX_PLAIN_PORT);
const NGINX_SAME: Target = Target::other("nginx, same header work", NGINX_SAME_PORT);
const HAPROXY_PLAIN: Target = Target::other("HAProxy, plain", HAPROXY_PLAIN_PORT);
const HAPROXY_SAME: Target = Target::other("HAProxy, same header work", HAPROXY_SAME_PORT);

const OTHERS: [Target; 4] = [NGINX_PLAIN, NGINX_SAME, HAPROXY_PLAIN, HAPROXY_SAME];

const SMALL_64: usize = 0;
const SMALL_1: usize = 1;
const LARGE: usize = 2;

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "pinned: small response, 64 connections",
        path: "/small",
        connections: 64,
        close: false,
    },
    Scenario { name: "pinned: small response, 1 connection", path: "/small", connections: 1, close: false },
    Scenario { name: "pinned: 1 MiB response, 16 connections", path: "/1m", connections: 16, close: false },
];

/// RSS sluice-proxy should stay under after the runs (issue 19's target).
const RSS_TARGET: u64 = 16 << 20;

struct Pinned;

impl Comparison for Pinned {
    fn section(&self) -> Section {
        Section {
            begin: "<!-- bench-pinned:begin -->",
            end: "<!-- bench-pinned:end -->",
            heading: Some("Per core, pinned (SPEC §5)"),
        }
    }

    fn tools(&self) -> &'static [&'static str] {
        &["nginx", "haproxy", "wrk"]
    }

    fn targets(&self) -> &'static [Target] {
        &[DIRECT, NGINX_PLAIN, NGINX_SAME, HAPROXY_PLAIN, HAPROXY_SAME, PLAIN]
    }

    fn scenarios(&self) -> &'static [Scenario] {
        &SCENARIOS
    }

    fn pinned(&self) -> Option<Pins> {
        Some(Pins { load: 0, proxy: 1 })
    }

    fn start(&mut self, procs: &mut Procs, with: &Start<'_>) -> anyhow::Result<Vec<u32>> {
        let dir = procs.dir.clone();
        let mut pids = vec![with.upstream];
        for (name, port, minimal) in
            [("nginx-plain", NGINX_PLAIN_PORT, true), ("nginx-same", NGINX_SAME_PORT, false)]
        {
            let conf = nginx_proxy_conf(&dir, name, port, 1, minimal);
            pids.push(
                procs.spawn(if minimal { "nginx plain" } else { "nginx same" }, nginx(&dir, name, &conf)?)?,
            );
        }
        for (name, port, minimal) in
            [("haproxy-plain", HAPROXY_PLAIN_PORT, true), ("haproxy-same", HAPROXY_SAME_PORT, false)]
        {
            let conf = haproxy_conf(&dir, name, port, 1, minimal);
            pids.push(procs.spawn(
                if minimal { "HAProxy plain" } else { "HAProxy same" },
                haproxy(&dir, name, &conf)?,
            )?);
        }
        pids.push(spawn_sluice(procs, "sluice-proxy", with.sluice_bin, PLAIN, 1)?);
        Ok(pids)
    }

    fn machine(&self, _workers: usize) -> String {
        "each proxy with one worker pinned to CPU 1, alone; wrk (one thread) and the upstream nginx \
         (one worker) pinned to CPU 0"
            .into()
    }

    fn describe(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "Requests per CPU-second: requests served ÷ the proxy's user + system CPU time over the \
             run (all its processes). \"Added\" latency is the proxy's minus the upstream's own, \
             measured the same way without a proxy.\n"
        );
    }

    fn versus(&self, out: &mut String, r: &Results, si: usize) {
        let sluice = r.runs_of(si, PLAIN);
        let direct = r.runs_of(si, DIRECT);
        match si {
            SMALL_64 => {
                for other in OTHERS {
                    let o = r.runs_of(si, other);
                    let (lo, hi) = round_ratios(sluice, o, Run::per_cpu_second);
                    let _ = writeln!(
                        out,
                        "\nsluice-proxy / {}: requests per CPU-second {:.2}× (round by round {lo:.2}–{hi:.2}×), \
                         p99 {:.2}× (lower is better)",
                        other.name,
                        ratio(sluice, o, Run::per_cpu_second),
                        ratio(sluice, o, |r| r.p99_ms),
                    );
                }
            }
            SMALL_1 => {
                let _ = writeln!(out, "\n| proxy | added p50 | added p99 |\n|---|---:|---:|");
                for t in OTHERS.iter().chain([&PLAIN]) {
                    let runs = r.runs_of(si, *t);
                    let added = |f: fn(&Run) -> f64| median(runs, f) - median(direct, f);
                    let _ = writeln!(
                        out,
                        "| {} | {:+.3} ms | {:+.3} ms |",
                        t.name,
                        added(|r| r.p50_ms),
                        added(|r| r.p99_ms)
                    );
                }
            }
            LARGE => {
                let _ = writeln!(out, "\n| proxy | MiB/s | of the upstream direct |\n|---|---:|---:|");
                for t in OTHERS.iter().chain([&PLAIN]) {
                    let runs = r.runs_of(si, *t);
                    let _ = writeln!(
                        out,
                        "| {} | {:.0} | {:.2}× |",
                        t.name,
                        median(runs, |r| r.rps),
                        ratio(runs, direct, |r| r.rps)
                    );
                }
            }
            _ => {}
        }
    }

    fn notes(&self, out: &mut String, r: &Results) {
        let Some(i) = r.targets.iter().position(|t| *t == PLAIN) else { return };
        let rss = |of: &[u64]| of.get(i).copied().unwrap_or(0);
        let after = rss(&r.after_rss);
        let _ = writeln!(out, "### sluice-proxy's memory (RSS)\n");
        let _ = writeln!(out, "| when | RSS |\n|---|---:|");
        let _ = writeln!(out, "| idle after start | {:.1} MiB |", mib(rss(&r.idle_rss)));
        let _ = writeln!(out, "| idle after the runs | {:.1} MiB |", mib(after));
        let _ = writeln!(out, "| peak | {:.1} MiB |", mib(rss(&r.peak_rss)));
        let verdict = if after < RSS_TARGET { "under" } else { "over" };
        let _ = writeln!(out, "\nAfter load: {verdict} the 16 MiB target.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::compare::ports;
    use crate::bench::processes::{SLUICE, SLUICE_ADMIN};

    #[test]
    fn every_port_is_checked_free() {
        assert_eq!(
            ports(&Pinned),
            [
                UPSTREAM,
                NGINX_SAME_PORT,
                HAPROXY_SAME_PORT,
                SLUICE,
                NGINX_PLAIN_PORT,
                HAPROXY_PLAIN_PORT,
                SLUICE_ADMIN
            ]
        );
    }

    #[test]
    fn the_versus_lines_name_every_other_proxy() {
        let run = Run { rps: 1000.0, p50_ms: 1.0, p99_ms: 2.0, cpu_us: 20.0, ..Run::default() };
        let targets = Pinned.targets().to_vec();
        let runs = vec![vec![vec![run]; targets.len()]; SCENARIOS.len()];
        let n = targets.len();
        let results = Results {
            targets,
            runs,
            served: vec![0; n],
            idle_rss: vec![0; n],
            after_rss: vec![1 << 20; n],
            peak_rss: vec![0; n],
            others_rss: Vec::new(),
            took: std::time::Duration::ZERO,
        };
        let mut out = String::new();
        for si in 0..SCENARIOS.len() {
            Pinned.versus(&mut out, &results, si);
        }
        Pinned.notes(&mut out, &results);
        for other in OTHERS {
            assert!(
                out.contains(&format!(
                    "sluice-proxy / {}: requests per CPU-second 1.00× (round by round 1.00–1.00×)",
                    other.name
                )),
                "{out}"
            );
        }
        assert!(out.contains("| sluice-proxy | +0.000 ms | +0.000 ms |"), "{out}");
        assert!(out.contains("| sluice-proxy | 1000 | 1.00× |"), "{out}");
        assert!(out.contains("under the 16 MiB target"), "{out}");
    }
}
