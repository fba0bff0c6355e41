//! Without a flag: the upstream directly, nginx, HAProxy and sluice-proxy, the proxies doing the
//! same header work as sluice-proxy (request ids, X-Forwarded-*). `--minimal`: nginx and HAProxy
//! as bare proxies. Each has its own section.

use std::fmt::Write as _;

use super::{Comparison, Entry, PLAIN, Start, Target};
use crate::bench::configs::{haproxy_conf, nginx_proxy_conf};
use crate::bench::processes::{Procs, UPSTREAM, haproxy, nginx, spawn_sluice};
use crate::bench::report::{Results, Section, mib};
use crate::bench::side_by_side;
use crate::bench::wrk::ratio;

pub(super) const SAME: Entry =
    Entry { flag: None, help: "", run: |args| side_by_side(Baseline { minimal: false }, args) };

pub(super) const MINIMAL: Entry = Entry {
    flag: Some("minimal"),
    help: "Run nginx and HAProxy as bare proxies, without the per-request header work sluice-proxy \
           does (request ids, X-Forwarded-*). Results go to the \"minimal\" section",
    run: |args| side_by_side(Baseline { minimal: true }, args),
};

const NGINX_PORT: u16 = 18001;
const HAPROXY_PORT: u16 = 18002;

const DIRECT: Target = Target::other("upstream direct", UPSTREAM);
const NGINX: Target = Target::other("nginx", NGINX_PORT);
const HAPROXY: Target = Target::other("HAProxy", HAPROXY_PORT);

/// nginx, HAProxy and sluice-proxy as proxies to the upstream; with `minimal`, nginx and HAProxy
/// skip the per-request header work.
struct Baseline {
    minimal: bool,
}

impl Comparison for Baseline {
    fn section(&self) -> Section {
        if self.minimal {
            Section {
                begin: "<!-- bench-minimal:begin -->",
                end: "<!-- bench-minimal:end -->",
                heading: None,
            }
        } else {
            Section { begin: "<!-- bench:begin -->", end: "<!-- bench:end -->", heading: None }
        }
    }

    fn tools(&self) -> &'static [&'static str] {
        &["nginx", "haproxy", "wrk"]
    }

    fn targets(&self) -> &'static [Target] {
        &[DIRECT, NGINX, HAPROXY, PLAIN]
    }

    fn start(&mut self, procs: &mut Procs, with: &Start<'_>) -> anyhow::Result<Vec<u32>> {
        let (dir, workers) = (procs.dir.clone(), with.workers);
        let nginx_conf = nginx_proxy_conf(&dir, "proxy", NGINX_PORT, workers, self.minimal);
        let nginx = procs.spawn("nginx", nginx(&dir, "proxy", &nginx_conf)?)?;
        let haproxy_conf = haproxy_conf(&dir, "haproxy", HAPROXY_PORT, workers, self.minimal);
        let haproxy = procs.spawn("HAProxy", haproxy(&dir, "haproxy", &haproxy_conf)?)?;
        let sluice = spawn_sluice(procs, "sluice-proxy", with.sluice_bin, PLAIN, workers)?;
        // "upstream direct" is charged the upstream's own CPU and memory.
        Ok(vec![with.upstream, nginx, haproxy, sluice])
    }

    fn machine(&self, w: usize) -> String {
        format!("the upstream (nginx, {w} workers) and the proxy under test ({w} workers/threads)")
    }

    fn versus(&self, out: &mut String, r: &Results, si: usize) {
        let sluice = r.runs_of(si, PLAIN);
        for other in [NGINX, HAPROXY] {
            let o = r.runs_of(si, other);
            let _ = writeln!(
                out,
                "\nsluice / {}: throughput {:.2}×, p99 {:.2}× (lower is better)",
                other.name,
                ratio(sluice, o, |r| r.rps),
                ratio(sluice, o, |r| r.p99_ms),
            );
        }
    }

    /// RSS of sluice-proxy and of every process started.
    fn notes(&self, out: &mut String, r: &Results) {
        let sluice = r.targets.iter().position(|t| *t == PLAIN);
        let rss = |of: &[u64]| sluice.and_then(|i| of.get(i).copied()).unwrap_or(0);
        let _ = writeln!(out, "### Memory (RSS)\n");
        let _ = writeln!(out, "| process | RSS |\n|---|---:|");
        let _ = writeln!(out, "| sluice-proxy, idle after start | {:.1} MiB |", mib(rss(&r.idle_rss)));
        let _ = writeln!(out, "| sluice-proxy, idle after the runs | {:.1} MiB |", mib(rss(&r.after_rss)));
        for (name, rss) in &r.others_rss {
            let _ = writeln!(out, "| {name} (all processes), after the runs | {:.1} MiB |", mib(*rss));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::compare::ports;
    use crate::bench::processes::{SLUICE, SLUICE_ADMIN};

    #[test]
    fn every_port_is_checked_free() {
        for minimal in [false, true] {
            assert_eq!(
                ports(&Baseline { minimal }),
                [UPSTREAM, NGINX_PORT, HAPROXY_PORT, SLUICE, SLUICE_ADMIN]
            );
        }
    }
}
