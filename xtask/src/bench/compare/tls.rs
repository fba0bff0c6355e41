//! `--tls`: nginx, HAProxy and sluice-proxy terminating TLS with the same ECDSA P-256
//! certificate, by the pinned method (each proxy alone on CPU 1 with one worker; wrk and the
//! upstream nginx on CPU 0), all three in their plain configurations. New connections (a full
//! handshake per request: wrk resumes no sessions), keep-alive small requests, 1 MiB responses,
//! each as requests per proxy CPU-second.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::{Comparison, Entry, Pins, Start, Target};
use crate::bench::configs::{haproxy_conf, nginx_proxy_conf, sluice_conf_with};
use crate::bench::processes::{Procs, SLUICE, SLUICE_ADMIN, haproxy, nginx, spawn_sluice};
use crate::bench::report::{Results, Section};
use crate::bench::side_by_side;
use crate::bench::wrk::{Run, Scenario, median, ratio, round_ratios};
use crate::root;

pub(super) const ENTRY: Entry = Entry {
    flag: Some("tls"),
    help: "nginx, HAProxy and sluice-proxy terminating TLS with one ECDSA P-256 certificate, pinned \
           as --pinned: new connections per second, keep-alive small requests, 1 MiB responses",
    run: |args| side_by_side(Tls, args),
};

const NGINX_PORT: u16 = 18021;
const HAPROXY_PORT: u16 = 18022;

const NGINX: Target = Target::other("nginx", NGINX_PORT).over_tls();
const HAPROXY: Target = Target::other("HAProxy", HAPROXY_PORT).over_tls();
const SLUICE_TLS: Target =
    Target::sluice("sluice-proxy", SLUICE, SLUICE_ADMIN, "sluice-tls.yaml", sluice_tls_conf).over_tls();

const OTHERS: [Target; 2] = [NGINX, HAPROXY];

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "TLS: new connection per request, 16 connections",
        path: "/small",
        connections: 16,
        close: true,
    },
    Scenario {
        name: "TLS: small response, 64 keep-alive connections",
        path: "/small",
        connections: 64,
        close: false,
    },
    Scenario { name: "TLS: 1 MiB response, 16 connections", path: "/1m", connections: 16, close: false },
];

struct Tls;

/// Where the certificate and key are written (target/bench/tls).
fn tls_dir() -> PathBuf {
    root().join("target/bench/tls")
}

fn sluice_tls_conf() -> String {
    let d = tls_dir();
    let listener = format!(
        "    tls:\n      certificates:\n        - {{cert_file: '{}', key_file: '{}'}}\n      alpn: [http/1.1]\n",
        d.join("cert.pem").display(),
        d.join("key.pem").display()
    );
    sluice_conf_with(SLUICE, &listener, "", "")
}

impl Comparison for Tls {
    fn section(&self) -> Section {
        Section {
            begin: "<!-- bench-tls:begin -->",
            end: "<!-- bench-tls:end -->",
            heading: Some("TLS termination, pinned"),
        }
    }

    fn tools(&self) -> &'static [&'static str] {
        &["nginx", "haproxy", "wrk"]
    }

    fn targets(&self) -> &'static [Target] {
        &[NGINX, HAPROXY, SLUICE_TLS]
    }

    fn scenarios(&self) -> &'static [Scenario] {
        &SCENARIOS
    }

    fn pinned(&self) -> Option<Pins> {
        Some(Pins { load: 0, proxy: 1 })
    }

    /// One ECDSA P-256 certificate for localhost and 127.0.0.1, from a throwaway CA.
    fn prepare(&mut self) -> anyhow::Result<()> {
        use sluice_tls::pki::{Authority, Leaf};
        let ca = Authority::new("bench CA")?;
        let leaf = ca.issue(&Leaf {
            common_name: "localhost".into(),
            dns: vec!["localhost".into()],
            ips: vec!["127.0.0.1".parse()?],
            server: true,
            valid_days: 2,
            ..Leaf::default()
        })?;
        let d = tls_dir();
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("cert.pem"), &leaf.cert_pem)?;
        std::fs::write(d.join("key.pem"), &leaf.key_pem)?;
        // HAProxy reads certificate and key from one file.
        std::fs::write(d.join("haproxy.pem"), format!("{}{}", leaf.cert_pem, leaf.key_pem))?;
        Ok(())
    }

    fn start(&mut self, procs: &mut Procs, with: &Start<'_>) -> anyhow::Result<Vec<u32>> {
        let dir = procs.dir.clone();
        let d = tls_dir();
        let plain_listen = format!("listen 127.0.0.1:{NGINX_PORT} backlog=4096;");
        let nginx_conf = nginx_proxy_conf(&dir, "nginx-tls", NGINX_PORT, 1, true).replace(
            &plain_listen,
            &format!(
                "listen 127.0.0.1:{NGINX_PORT} ssl backlog=4096;\n    ssl_certificate {};\n    \
                 ssl_certificate_key {};\n    ssl_protocols TLSv1.2 TLSv1.3;",
                d.join("cert.pem").display(),
                d.join("key.pem").display()
            ),
        );
        anyhow::ensure!(nginx_conf.contains(" ssl backlog"), "the nginx config has no TLS listener");
        let haproxy_conf = haproxy_conf(&dir, "haproxy-tls", HAPROXY_PORT, 1, true).replace(
            &format!("bind 127.0.0.1:{HAPROXY_PORT}\n"),
            &format!(
                "bind 127.0.0.1:{HAPROXY_PORT} ssl crt {} alpn http/1.1\n",
                d.join("haproxy.pem").display()
            ),
        );
        anyhow::ensure!(haproxy_conf.contains(" ssl crt "), "the HAProxy config has no TLS bind");
        Ok(vec![
            procs.spawn("nginx TLS", nginx(&dir, "nginx-tls", &nginx_conf)?)?,
            procs.spawn("HAProxy TLS", haproxy(&dir, "haproxy-tls", &haproxy_conf)?)?,
            spawn_sluice(procs, "sluice-proxy", with.sluice_bin, SLUICE_TLS, 1)?,
        ])
    }

    fn machine(&self, _workers: usize) -> String {
        "each proxy terminating TLS with one worker pinned to CPU 1, alone; wrk (one thread, OpenSSL) \
         and the upstream nginx (one worker, plain HTTP) pinned to CPU 0"
            .into()
    }

    fn describe(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "All three in their plain configurations, with the same ECDSA P-256 certificate, TLS 1.3 \
             (what wrk's OpenSSL and every proxy agree on), HTTP/1.1 over TLS (wrk speaks no \
             HTTP/2). \"New connection per request\" sends `Connection: close`: each request is a TCP \
             connection and a full handshake (wrk does not resume sessions). Requests per CPU-second: \
             requests served ÷ the proxy's user + system CPU time over the run.\n"
        );
    }

    fn versus(&self, out: &mut String, r: &Results, si: usize) {
        let sluice = r.runs_of(si, SLUICE_TLS);
        for other in OTHERS {
            let o = r.runs_of(si, other);
            let (lo, hi) = round_ratios(sluice, o, Run::per_cpu_second);
            let _ = writeln!(
                out,
                "\nsluice-proxy / {}: requests per CPU-second {:.2}× (round by round {lo:.2}–{hi:.2}×), \
                 requests per second {:.2}×, p99 {:.2}× (lower is better)",
                other.name,
                ratio(sluice, o, Run::per_cpu_second),
                ratio(sluice, o, |r| r.rps),
                ratio(sluice, o, |r| r.p99_ms),
            );
        }
    }

    fn notes(&self, out: &mut String, r: &Results) {
        let per_cpu: Vec<String> = r
            .targets
            .iter()
            .map(|t| format!("{} {:.0}", t.name, median(r.runs_of(0, *t), Run::per_cpu_second)))
            .collect();
        let _ = writeln!(out, "New TLS connections per proxy CPU-second: {}.", per_cpu.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::compare::ports;

    #[test]
    fn every_port_is_checked_free_and_every_target_is_tls() {
        assert_eq!(
            ports(&Tls),
            [crate::bench::processes::UPSTREAM, SLUICE, NGINX_PORT, HAPROXY_PORT, SLUICE_ADMIN]
        );
        assert!(Tls.targets().iter().all(|t| t.url("/x").starts_with("https://127.0.0.1:")));
        assert!(sluice_tls_conf().contains("      certificates:\n        - {cert_file: '"));
    }
}
