//! `--cache`: cache hits, sluice-proxy's `cache` against nginx's `proxy_cache` (its cache
//! directory on tmpfs, so both serve from memory), the same objects (a small one and 1 MiB, both
//! `Cache-Control: public, max-age=3600` from the upstream), pinned (SPEC §5): hits per proxy
//! CPU-second is the figure. The first request of each scenario (the check before the runs)
//! stores the object; every measured request is a hit.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::{Comparison, Entry, Pins, Start, Target};
use crate::bench::configs::sluice_conf_with;
use crate::bench::processes::{Procs, UPSTREAM, nginx, spawn_sluice};
use crate::bench::report::{Results, Section, instances_memory};
use crate::bench::side_by_side;
use crate::bench::wrk::{Scenario, ratio};

pub(super) const ENTRY: Entry = Entry {
    flag: Some("cache"),
    help: "Cache hits, pinned: sluice-proxy's route cache against nginx's proxy_cache (on tmpfs), \
           a small object and 1 MiB. Results go to the \"cache\" section",
    run: |args| side_by_side(Cache, args),
};

const NGINX_CACHE_PORT: u16 = 18021;
const SLUICE_CACHE: u16 = 18022;
const SLUICE_CACHE_ADMIN: u16 = 18922;

const NGINX: Target = Target::other("nginx proxy_cache", NGINX_CACHE_PORT);
const SLUICE: Target =
    Target::sluice("sluice, route cache", SLUICE_CACHE, SLUICE_CACHE_ADMIN, "sluice-cache.yaml", || {
        cache_conf(SLUICE_CACHE)
    });

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "pinned: small cached object, 64 connections",
        path: "/c/small",
        connections: 64,
        close: false,
    },
    Scenario {
        name: "pinned: small cached object, 1 connection",
        path: "/c/small",
        connections: 1,
        close: false,
    },
    Scenario {
        name: "pinned: 1 MiB cached object, 16 connections",
        path: "/c/1m",
        connections: 16,
        close: false,
    },
];

struct Cache;

/// The plain config with a cache on its route.
fn cache_conf(port: u16) -> String {
    sluice_conf_with(port, "", "", "    cache: { memory_percent: 100, max_object: 2MiB }\n")
}

/// nginx's cache directory: tmpfs, so its hits come from memory as sluice-proxy's do.
fn nginx_cache_dir() -> PathBuf {
    PathBuf::from(format!("/dev/shm/sluice-bench-nginx-cache-{}", std::process::id()))
}

/// nginx as a caching proxy with its defaults otherwise (no header work), as users run it.
fn nginx_cache_conf(dir: &std::path::Path, workers: usize) -> String {
    let d = dir.display();
    let cache = nginx_cache_dir();
    format!(
        "daemon off;\nworker_processes {workers};\npid {d}/cache.pid;\nerror_log {d}/cache.error.log warn;\n\
         events {{ worker_connections 10000; }}\nhttp {{\n  access_log off;\n  \
         client_body_temp_path {d}/cache-client_body-temp;\n  proxy_temp_path {d}/cache-proxy-temp;\n  \
         fastcgi_temp_path {d}/cache-fastcgi-temp;\n  uwsgi_temp_path {d}/cache-uwsgi-temp;\n  \
         scgi_temp_path {d}/cache-scgi-temp;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  \
         proxy_cache_path {} levels=1:2 keys_zone=bench:10m max_size=64m inactive=60m use_temp_path=off;\n  \
         upstream backend {{ server 127.0.0.1:{UPSTREAM}; keepalive 256; keepalive_requests 10000000; }}\n  \
         server {{\n    listen 127.0.0.1:{NGINX_CACHE_PORT} backlog=4096;\n    \
         location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n      proxy_cache bench;\n      proxy_cache_lock on;\n      \
         add_header X-Cache-Status $upstream_cache_status;\n    }}\n  }}\n}}\n",
        cache.display()
    )
}

impl Comparison for Cache {
    fn section(&self) -> Section {
        Section {
            begin: "<!-- bench-cache:begin -->",
            end: "<!-- bench-cache:end -->",
            heading: Some("Cache hits"),
        }
    }

    fn tools(&self) -> &'static [&'static str] {
        &["nginx", "wrk"]
    }

    fn targets(&self) -> &'static [Target] {
        &[NGINX, SLUICE]
    }

    fn scenarios(&self) -> &'static [Scenario] {
        &SCENARIOS
    }

    fn pinned(&self) -> Option<Pins> {
        Some(Pins { load: 0, proxy: 1 })
    }

    fn start(&mut self, procs: &mut Procs, with: &Start<'_>) -> anyhow::Result<Vec<u32>> {
        let dir = procs.dir.clone();
        let _ = std::fs::remove_dir_all(nginx_cache_dir());
        std::fs::create_dir_all(nginx_cache_dir())?;
        let nginx =
            procs.spawn("nginx proxy_cache", nginx(&dir, "cache", &nginx_cache_conf(&dir, with.workers))?)?;
        let sluice = spawn_sluice(procs, "sluice cache", with.sluice_bin, SLUICE, with.workers)?;
        Ok(vec![nginx, sluice])
    }

    fn after_memory(&mut self, _procs: &mut Procs, _targets: &[Target], _pids: &[u32]) {
        let _ = std::fs::remove_dir_all(nginx_cache_dir());
    }

    fn machine(&self, _: usize) -> String {
        "pinned: wrk (one thread) and the upstream (nginx, one worker) on CPU 0, the caching proxy under test \
         alone on CPU 1 with one worker (both run throughout, only one gets traffic at a time)"
            .to_owned()
    }

    fn versus(&self, out: &mut String, r: &Results, si: usize) {
        let (s, n) = (r.runs_of(si, SLUICE), r.runs_of(si, NGINX));
        let _ = writeln!(
            out,
            "\nsluice / nginx proxy_cache: hits per proxy CPU-second {:.2}×, throughput {:.2}×, p99 {:.2}× (lower is better)",
            ratio(n, s, |r| r.cpu_us),
            ratio(s, n, |r| r.rps),
            ratio(s, n, |r| r.p99_ms),
        );
    }

    fn notes(&self, out: &mut String, r: &Results) {
        let _ = writeln!(
            out,
            "Hits per proxy CPU-second is 1 / (the proxy's CPU time per request): wrk and the upstream are on \
             the other CPU. nginx caches in a tmpfs directory (`proxy_cache_path` under /dev/shm) with \
             `proxy_cache_lock on`; sluice-proxy's route has `cache: {{memory_percent: 100, max_object: 2MiB}}` \
             (64 MiB, the default --cache-memory). Each answer is a hit: sluice-proxy adds `Age` and \
             `Cache-Status`, nginx `X-Cache-Status`."
        );
        instances_memory(out, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::compare::ports;

    #[test]
    fn the_cache_configs_cache() {
        use sluice_bundle::{Format, parse};
        let c = parse(cache_conf(SLUICE_CACHE).as_bytes(), Format::Yaml).unwrap();
        assert!(c.routes[0].cache.is_some());
        assert!(nginx_cache_conf(std::path::Path::new("/tmp/b"), 1).contains("proxy_cache bench;"));
        assert_eq!(ports(&Cache), [UPSTREAM, NGINX_CACHE_PORT, SLUICE_CACHE, SLUICE_CACHE_ADMIN]);
    }
}
