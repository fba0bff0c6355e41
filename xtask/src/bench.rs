//! `cargo xtask bench`: wrk against the upstream directly, nginx, HAProxy and sluice-proxy, all
//! proxying to the same nginx upstream on loopback. Runs are alternated and repeated; medians are
//! reported and written to docs/BENCHMARKS.md between the generated-section markers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::{build_proxy, root};

const UPSTREAM: u16 = 18000;
const NGINX: u16 = 18001;
const HAPROXY: u16 = 18002;
const SLUICE: u16 = 18003;
const SLUICE_ADMIN: u16 = 18903;
const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";
const MINIMAL_BEGIN: &str = "<!-- bench-minimal:begin -->";
const MINIMAL_END: &str = "<!-- bench-minimal:end -->";

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Rounds: each runs every target once per scenario, in rotating order; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Worker processes (nginx) or threads (HAProxy, sluice) for each proxy.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Install nginx, haproxy and wrk with apt-get if they are missing.
    #[arg(long)]
    install: bool,
    /// Print the results without updating docs/BENCHMARKS.md.
    #[arg(long)]
    no_write: bool,
    /// Run nginx and HAProxy as bare proxies, without the per-request header work sluice-proxy
    /// does (request ids, X-Forwarded-*). Results go to the "minimal" section.
    #[arg(long)]
    minimal: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Nginx,
    Haproxy,
    Sluice,
}

struct Scenario {
    name: &'static str,
    path: &'static str,
    connections: u32,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario { name: "small response, 16 connections", path: "/small", connections: 16 },
    Scenario { name: "small response, 64 connections", path: "/small", connections: 64 },
    Scenario { name: "1 MiB response, 16 connections", path: "/1m", connections: 16 },
];

const TARGETS: [Target; 4] = [Target::Direct, Target::Nginx, Target::Haproxy, Target::Sluice];

/// One wrk run.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// CPU time (user + kernel) the target's processes spent per request, in microseconds.
    cpu_us: f64,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Direct => "upstream direct",
            Self::Nginx => "nginx",
            Self::Haproxy => "HAProxy",
            Self::Sluice => "sluice-proxy",
        }
    }

    fn port(self) -> u16 {
        match self {
            Self::Direct => UPSTREAM,
            Self::Nginx => NGINX,
            Self::Haproxy => HAPROXY,
            Self::Sluice => SLUICE,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure_tools(args.install)?;
    let sluice_bin = build_proxy("release")?;
    let dir = root().join("target/bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/1m"), vec![b'x'; 1 << 20])?;

    let mut procs = Procs { dir: dir.clone(), children: Vec::new() };
    procs.spawn("upstream nginx", nginx(&dir, "upstream", &upstream_conf(&dir, args.workers))?)?;
    procs.spawn("nginx", nginx(&dir, "proxy", &nginx_proxy_conf(&dir, args.workers, args.minimal))?)?;
    std::fs::write(dir.join("haproxy.cfg"), haproxy_conf(&dir, args.workers, args.minimal))?;
    let mut haproxy = Command::new("haproxy");
    haproxy.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
    procs.spawn("HAProxy", haproxy)?;
    std::fs::write(dir.join("sluice.yaml"), sluice_conf())?;
    let mut sluice = Command::new(&sluice_bin);
    sluice
        .arg("--config-file")
        .arg(dir.join("sluice.yaml"))
        .args([
            "--admin-listen",
            &format!("127.0.0.1:{SLUICE_ADMIN}"),
            "--workers",
            &args.workers.to_string(),
        ])
        .env("RUST_LOG", "warn");
    let sluice_pid = procs.spawn("sluice-proxy", sluice)?;
    // Whose CPU each target's runs are charged to (for "direct", the upstream itself).
    let pids: Vec<u32> = procs.children.iter().map(|(_, c)| c.id()).collect();
    let pid_of = |t: Target| match t {
        Target::Direct => pids[0],
        Target::Nginx => pids[1],
        Target::Haproxy => pids[2],
        Target::Sluice => pids[3],
    };

    for t in TARGETS {
        wait_port(t.port(), &mut procs)?;
        for s in &SCENARIOS {
            let check = wrk(t.port(), s.path, 1, 1)?;
            ensure!(
                check.errors == 0 && check.rps > 0.0,
                "{} answers {} with errors: {check:?}",
                t.name(),
                s.path
            );
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = rss_tree(sluice_pid);

    // results[scenario][target] = runs
    let mut results = vec![vec![Vec::<Run>::new(); TARGETS.len()]; SCENARIOS.len()];
    let started = Instant::now();
    for round in 0..args.rounds {
        for (si, s) in SCENARIOS.iter().enumerate() {
            for k in 0..TARGETS.len() {
                let ti = (k + round) % TARGETS.len();
                let t = TARGETS[ti];
                let before = cpu_ticks(pid_of(t));
                let mut r = wrk(t.port(), s.path, s.connections, args.duration)?;
                let ticks = cpu_ticks(pid_of(t)).saturating_sub(before);
                r.cpu_us = ticks as f64 * 1e6 / TICKS_PER_SECOND / (r.rps * args.duration as f64).max(1.0);
                println!(
                    "round {}/{}  {:<32} {:<16} {:>10.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  cpu {:>6.1} us/req{}",
                    round + 1,
                    args.rounds,
                    s.name,
                    t.name(),
                    r.rps,
                    r.p50_ms,
                    r.p99_ms,
                    r.cpu_us,
                    if r.errors > 0 { format!("  ({} errors)", r.errors) } else { String::new() }
                );
                results[si][ti].push(r);
            }
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let after_rss = rss_tree(sluice_pid);
    let others_rss: Vec<(&str, u64)> = procs.children.iter().map(|(n, c)| (*n, rss_tree(c.id()))).collect();

    let report = report(&args, &results, idle_rss, after_rss, &others_rss, started.elapsed());
    println!("\n{report}");
    if !args.no_write {
        write_report(&report, args.minimal)?;
        println!("wrote docs/BENCHMARKS.md");
    }
    Ok(())
}

fn ensure_tools(install: bool) -> anyhow::Result<()> {
    let missing: Vec<&str> = [("nginx", "nginx"), ("haproxy", "haproxy"), ("wrk", "wrk")]
        .into_iter()
        .filter(|(bin, _)| {
            Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .map(|(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !install {
        bail!(
            "the benchmark needs {}: install with `sudo apt-get install -y {}` or rerun with --install",
            missing.join(", "),
            missing.join(" ")
        );
    }
    let status = Command::new("sh")
        .args([
            "-c",
            &format!(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}",
                missing.join(" ")
            ),
        ])
        .status()?;
    ensure!(status.success(), "apt-get install {} failed", missing.join(" "));
    Ok(())
}

/// Children started for the benchmark, stopped (by pid) when it ends.
struct Procs {
    dir: PathBuf,
    children: Vec<(&'static str, Child)>,
}

impl Procs {
    /// Starts `cmd`, its output going to `<dir>/<name>.log`.
    fn spawn(&mut self, name: &'static str, mut cmd: Command) -> anyhow::Result<u32> {
        let log = std::fs::File::create(self.log(name))?;
        let child =
            cmd.stdout(Stdio::null()).stderr(log).spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.children.push((name, child));
        Ok(pid)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.log", name.replace(' ', "-")))
    }

    /// Fails with the process's log if any has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for i in 0..self.children.len() {
            let (name, child) = &mut self.children[i];
            if let Some(status) = child.try_wait()? {
                let name = *name;
                let log = std::fs::read_to_string(self.log(name)).unwrap_or_default();
                bail!("{name} exited ({status}):\n{log}");
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
        for (_, c) in &mut self.children {
            let _ = c.wait();
        }
    }
}

fn nginx(dir: &Path, name: &str, conf: &str) -> anyhow::Result<Command> {
    let path = dir.join(format!("{name}.nginx.conf"));
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p").arg(dir).arg("-e").arg(dir.join(format!("{name}.error.log"))).arg("-c").arg(path);
    Ok(cmd)
}

fn nginx_common(dir: &Path, name: &str, workers: usize) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nworker_processes {workers};\npid {d}/{name}.pid;\nerror_log {d}/{name}.error.log warn;\n\
         events {{ worker_connections 10000; }}\n"
    )
}

fn temp_paths(dir: &Path, name: &str) -> String {
    let d = dir.display();
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("  {t}_temp_path {d}/{name}-{t}-temp;\n"))
        .collect()
}

fn upstream_conf(dir: &Path, workers: usize) -> String {
    format!(
        "{}http {{\n  access_log off;\n{}  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  \
         server {{\n    listen 127.0.0.1:{UPSTREAM} backlog=4096;\n    \
         location = /small {{ default_type text/plain; return 200 \"hello from the upstream\\n\"; }}\n    \
         location = /1m {{ root {}/www; }}\n  }}\n}}\n",
        nginx_common(dir, "upstream", workers),
        temp_paths(dir, "upstream"),
        dir.display()
    )
}

/// nginx as a reverse proxy doing what sluice-proxy does to every request: pass the client's
/// Host, set X-Forwarded-For/-Proto/-Host, and give each request an id it sends upstream and
/// returns to the client.
fn nginx_proxy_conf(dir: &Path, workers: usize, minimal: bool) -> String {
    let headers = if minimal {
        ""
    } else {
        "proxy_set_header Host $host;\n      \
         proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      \
         proxy_set_header X-Forwarded-Proto $scheme;\n      proxy_set_header X-Forwarded-Host $host;\n      \
         proxy_set_header X-Request-Id $request_id;\n      add_header X-Request-Id $request_id always;\n    "
    };
    format!(
        "{}http {{\n  access_log off;\n{}  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  \
         upstream backend {{ server 127.0.0.1:{UPSTREAM}; keepalive 256; keepalive_requests 10000000; }}\n  \
         server {{\n    listen 127.0.0.1:{NGINX} backlog=4096;\n    \
         location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n      \
         proxy_set_header Connection \"\";\n      {headers}}}\n  }}\n}}\n",
        nginx_common(dir, "proxy", workers),
        temp_paths(dir, "proxy"),
    )
}

/// HAProxy doing the same per-request work as nginx above.
fn haproxy_conf(dir: &Path, workers: usize, minimal: bool) -> String {
    let headers = if minimal {
        ""
    } else {
        "  option forwardfor\n  unique-id-format %[uuid()]\n  unique-id-header X-Request-Id\n  \
         http-request set-header X-Forwarded-Proto http\n  \
         http-request set-header X-Forwarded-Host %[req.hdr(host)]\n  \
         http-response set-header X-Request-Id %[unique-id]\n"
    };
    format!(
        "global\n  nbthread {workers}\n  maxconn 4096\n  pidfile {}/haproxy.pid\n\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  \
         option http-keep-alive\n  http-reuse always\n\n\
         frontend bench\n  bind 127.0.0.1:{HAPROXY}\n{headers}  default_backend upstream\n\n\
         backend upstream\n  server u1 127.0.0.1:{UPSTREAM}\n",
        dir.display()
    )
}

fn sluice_conf() -> String {
    format!(
        "listeners:\n  - name: bench\n    address: 127.0.0.1:{SLUICE}\npools:\n  - name: upstream\n    endpoints:\n      - address: 127.0.0.1:{UPSTREAM}\nroutes:\n  - name: all\n    pool: upstream\n"
    )
}

fn wait_port(port: u16, procs: &mut Procs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        procs.check_alive()?;
        ensure!(Instant::now() < deadline, "nothing listening on 127.0.0.1:{port} after 20s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn wrk(port: u16, path: &str, connections: u32, secs: u64) -> anyhow::Result<Run> {
    let threads = connections.min(2);
    let out = Command::new("wrk")
        .args([
            "--latency",
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{secs}s"),
            &format!("http://127.0.0.1:{port}{path}"),
        ])
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

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time (user + system, in clock ticks) of a process, its threads and its children.
fn cpu_ticks(pid: u32) -> u64 {
    let ticks = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                let fields: Vec<&str> = s.rsplit(')').next()?.split_whitespace().collect();
                Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0)
    };
    ticks(pid) + children(pid).into_iter().map(ticks).sum::<u64>()
}

/// Direct children of a process.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next()?.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// RSS in bytes of a process and its children (nginx workers).
fn rss_tree(pid: u32) -> u64 {
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024
    };
    rss(pid) + children(pid).into_iter().map(rss).sum::<u64>()
}

fn median(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn report(
    args: &Args,
    results: &[Vec<Vec<Run>>],
    idle_rss: u64,
    after_rss: u64,
    others: &[(&str, u64)],
    took: Duration,
) -> String {
    let mut out = String::new();
    let version = |cmd: &str, arg: &str| -> String {
        Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| {
                let text =
                    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                text.lines().next().unwrap_or("").trim().to_owned()
            })
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let (begin, end) = if args.minimal { (MINIMAL_BEGIN, MINIMAL_END) } else { (BEGIN, END) };
    let _ = writeln!(out, "{begin}");
    let _ = writeln!(
        out,
        "Generated by `cargo xtask bench --duration {} --rounds {} --workers {}{}` ({} s of wrk per run, \
         medians of {} alternated rounds, {:.0} min in all).\n",
        args.duration,
        args.rounds,
        args.workers,
        if args.minimal { " --minimal" } else { "" },
        args.duration,
        args.rounds,
        took.as_secs_f64() / 60.0
    );
    let _ = writeln!(
        out,
        "Machine: {cpu}, {cores} cores, shared by wrk (2 threads), the upstream (nginx, {w} workers) and the proxy \
         under test ({w} workers/threads). {} · {} · {}.\n",
        version("nginx", "-v"),
        version("haproxy", "-v"),
        version("wrk", "-v").split(" Copyright").next().unwrap_or(""),
        w = args.workers
    );
    for (si, s) in SCENARIOS.iter().enumerate() {
        let _ = writeln!(out, "### {}\n", s.name);
        let _ = writeln!(out, "| target | requests/s | p50 | p99 | CPU per request | errors |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for (ti, t) in TARGETS.iter().enumerate() {
            let runs = &results[si][ti];
            let errors: u64 = runs.iter().map(|r| r.errors).sum();
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.3} ms | {:.3} ms | {:.1} µs | {errors} |",
                t.name(),
                median(runs, |r| r.rps),
                median(runs, |r| r.p50_ms),
                median(runs, |r| r.p99_ms),
                median(runs, |r| r.cpu_us),
            );
        }
        let get = |t: Target| &results[si][TARGETS.iter().position(|x| *x == t).unwrap_or(0)];
        let sluice = get(Target::Sluice);
        for other in [Target::Nginx, Target::Haproxy] {
            let o = get(other);
            let _ = writeln!(
                out,
                "\nsluice / {}: throughput {:.2}×, p99 {:.2}× (lower is better)",
                other.name(),
                median(sluice, |r| r.rps) / median(o, |r| r.rps).max(1e-9),
                median(sluice, |r| r.p99_ms) / median(o, |r| r.p99_ms).max(1e-9),
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "### Memory (RSS)\n");
    let _ = writeln!(out, "| process | RSS |\n|---|---:|");
    let _ = writeln!(out, "| sluice-proxy, idle after start | {:.1} MiB |", idle_rss as f64 / 1048576.0);
    let _ = writeln!(out, "| sluice-proxy, idle after the runs | {:.1} MiB |", after_rss as f64 / 1048576.0);
    for (name, rss) in others {
        let _ =
            writeln!(out, "| {name} (all processes), after the runs | {:.1} MiB |", *rss as f64 / 1048576.0);
    }
    let _ = writeln!(out, "{end}");
    out
}

fn write_report(report: &str, minimal: bool) -> anyhow::Result<()> {
    let (begin, end) = if minimal { (MINIMAL_BEGIN, MINIMAL_END) } else { (BEGIN, END) };
    let path: PathBuf = root().join("docs/BENCHMARKS.md");
    let current =
        std::fs::read_to_string(&path).unwrap_or_else(|_| format!("# Benchmarks\n\n{begin}\n{end}\n"));
    let (Some(b), Some(e)) = (current.find(begin), current.find(end)) else {
        bail!("docs/BENCHMARKS.md has no {begin} … {end} section to replace");
    };
    let updated = format!("{}{}{}", &current[..b], report.trim_end(), &current[e + end.len()..]);
    std::fs::write(&path, updated)?;
    Ok(())
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
    }
}
