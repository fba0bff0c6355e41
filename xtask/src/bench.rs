//! `cargo xtask bench`: wrk against the upstream directly, nginx, HAProxy and sluice-proxy, all
//! proxying to the same nginx upstream on loopback. Runs are alternated and repeated; medians are
//! reported and written to docs/BENCHMARKS.md between the generated-section markers.
//! `--resilience` instead runs two sluice-proxy instances, one with its defaults and one with every
//! resilience feature configured, to show what the features cost on the fast path.
//! `--observability` runs three: metrics only (the defaults), with an access log, and tracing 1 %
//! of requests to an OTLP receiver the benchmark runs, to show what access logs and tracing cost.
//! `--mirror` runs three: without mirroring, mirroring every request to a shadow that answers in
//! 5 s (a server in the benchmark's process), and mirroring every request to a fast shadow (the
//! upstream nginx on a second port), to show what mirroring costs the primary traffic.

mod fanout;
mod receiver;
mod shadow;

use std::fmt::Write as _;
use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::{build_proxy, root};

const UPSTREAM: u16 = 18000;
const NGINX: u16 = 18001;
const HAPROXY: u16 = 18002;
const SLUICE: u16 = 18003;
const SLUICE_ADMIN: u16 = 18903;
/// The second sluice-proxy of `--resilience`, the one with every resilience feature configured.
const SLUICE_ALL: u16 = 18004;
const SLUICE_ALL_ADMIN: u16 = 18904;
/// The second and third sluice-proxy of `--observability` (the first, metrics only, is `SLUICE`).
const SLUICE_ACCESS_LOG: u16 = 18005;
const SLUICE_ACCESS_LOG_ADMIN: u16 = 18905;
const SLUICE_TRACING: u16 = 18006;
const SLUICE_TRACING_ADMIN: u16 = 18906;
/// Where the access-log instance's standard output, its access log, goes (in target/bench).
const ACCESS_LOG_FILE: &str = "access.log";
/// `OTEL_TRACES_SAMPLER_ARG` of the tracing instance: the share of requests traced.
const TRACE_SAMPLE: &str = "0.01";
const TRACE_SERVICE: &str = "sluice-bench";
/// The second and third sluice-proxy of `--mirror` (the first, without mirroring, is `SLUICE`).
const SLUICE_MIRROR_SLOW: u16 = 18007;
const SLUICE_MIRROR_SLOW_ADMIN: u16 = 18907;
const SLUICE_MIRROR_FAST: u16 = 18008;
const SLUICE_MIRROR_FAST_ADMIN: u16 = 18908;
/// `--mirror`'s shadows: the upstream nginx listening on a second port, and the slow shadow, which
/// answers every request `SHADOW_DELAY` after it arrived.
const SHADOW_FAST: u16 = 18009;
const SHADOW_SLOW: u16 = 18010;
const SHADOW_DELAY: Duration = Duration::from_secs(5);
/// What the mirroring instances add to the route: every request copied to pool `shadow`, with a
/// deadline above the slow shadow's delay, and the guardrail off so mirroring is never paused.
const MIRROR_ROUTE: &str =
    "    mirror: {pool: shadow, fraction: 1, timeout: 6s, guardrail: {enabled: false}}\n";
const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";
const MINIMAL_BEGIN: &str = "<!-- bench-minimal:begin -->";
const MINIMAL_END: &str = "<!-- bench-minimal:end -->";
const RESILIENCE_BEGIN: &str = "<!-- bench-resilience:begin -->";
const RESILIENCE_END: &str = "<!-- bench-resilience:end -->";
const OBSERVABILITY_BEGIN: &str = "<!-- bench-observability:begin -->";
const OBSERVABILITY_END: &str = "<!-- bench-observability:end -->";
const MIRROR_BEGIN: &str = "<!-- bench-mirror:begin -->";
const MIRROR_END: &str = "<!-- bench-mirror:end -->";
/// The route both sluice-proxy configs have (its counters are read from the admin listener).
const ROUTE: &str = "all";

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
    /// Run sluice-proxy twice instead of nginx and HAProxy: with its defaults, and with every
    /// resilience feature configured. Results go to the "resilience" section.
    #[arg(long, conflicts_with = "minimal")]
    resilience: bool,
    /// Run sluice-proxy three times instead of nginx and HAProxy: metrics only (the defaults), with
    /// an access log, and tracing 1 % of requests to an OTLP receiver the benchmark runs. Results
    /// go to the "observability" section.
    #[arg(long, conflicts_with_all = ["minimal", "resilience"])]
    observability: bool,
    /// Run sluice-proxy three times instead of nginx and HAProxy: without mirroring, mirroring every
    /// request to a shadow that answers in 5 s, and mirroring every request to a fast shadow.
    /// Results go to the "mirror" section.
    #[arg(long, conflicts_with_all = ["minimal", "resilience", "observability"])]
    mirror: bool,
    /// Instead of proxies: config fan-out, apply → every data plane verified and ACKed, with
    /// --streams data-plane streams in this process, in plaintext and with mTLS. Results go to
    /// the "fan-out" section.
    #[arg(long, conflicts_with_all = ["minimal", "resilience", "observability", "mirror"])]
    fanout: bool,
    /// Data-plane streams for --fanout.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
}

impl Args {
    fn mode(&self) -> Mode {
        if self.mirror {
            Mode::Mirror
        } else if self.observability {
            Mode::Observability
        } else if self.resilience {
            Mode::Resilience
        } else if self.minimal {
            Mode::Minimal
        } else {
            Mode::Same
        }
    }
}

/// What a run compares, and where in docs/BENCHMARKS.md its results go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// nginx and HAProxy doing the same header work as sluice-proxy.
    Same,
    /// nginx and HAProxy as bare proxies.
    Minimal,
    /// sluice-proxy with its defaults against sluice-proxy with every resilience feature.
    Resilience,
    /// sluice-proxy with metrics only against sluice-proxy with an access log and with tracing.
    Observability,
    /// sluice-proxy without mirroring against sluice-proxy mirroring to a slow and a fast shadow.
    Mirror,
}

impl Mode {
    /// The targets the mode compares.
    fn targets(self) -> &'static [Target] {
        match self {
            Self::Same | Self::Minimal => &[Target::Direct, Target::Nginx, Target::Haproxy, Target::Sluice],
            Self::Resilience => &[Target::SluiceDefaults, Target::SluiceAll],
            Self::Observability => &[Target::SluiceMetrics, Target::SluiceAccessLog, Target::SluiceTracing],
            Self::Mirror => &[Target::SluiceNoMirror, Target::SluiceMirrorSlow, Target::SluiceMirrorFast],
        }
    }

    /// Every port the mode listens on: the upstream's, the shadows', the targets' and their admin
    /// listeners'.
    fn ports(self) -> Vec<u16> {
        let mut ports = vec![UPSTREAM];
        if self == Self::Mirror {
            ports.extend([SHADOW_FAST, SHADOW_SLOW]);
        }
        for t in self.targets() {
            ports.extend([t.port()].into_iter().chain(t.admin_port()));
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    fn markers(self) -> (&'static str, &'static str) {
        match self {
            Self::Same => (BEGIN, END),
            Self::Minimal => (MINIMAL_BEGIN, MINIMAL_END),
            Self::Resilience => (RESILIENCE_BEGIN, RESILIENCE_END),
            Self::Observability => (OBSERVABILITY_BEGIN, OBSERVABILITY_END),
            Self::Mirror => (MIRROR_BEGIN, MIRROR_END),
        }
    }

    /// The flag that selects the mode, as it appears in the generated command line.
    fn flag(self) -> &'static str {
        match self {
            Self::Same => "",
            Self::Minimal => " --minimal",
            Self::Resilience => " --resilience",
            Self::Observability => " --observability",
            Self::Mirror => " --mirror",
        }
    }

    /// The heading of the section appended to docs/BENCHMARKS.md when its markers are missing.
    /// The older sections sit among hand-written analysis, so for them a missing marker is an
    /// error rather than a guess at where they belong.
    fn heading(self) -> Option<&'static str> {
        match self {
            Self::Same | Self::Minimal => None,
            Self::Resilience => Some("Cost of the resilience features"),
            Self::Observability => Some("Cost of metrics, access logs and tracing"),
            Self::Mirror => Some("Cost of mirroring"),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Direct,
    Nginx,
    Haproxy,
    Sluice,
    /// `--resilience`: the same config as `Sluice`, on the same ports.
    SluiceDefaults,
    /// `--resilience`: every resilience feature configured.
    SluiceAll,
    /// `--observability`: the same config as `Sluice`, on the same ports; metrics only, since
    /// they cannot be switched off.
    SluiceMetrics,
    /// `--observability`: an access log on the listener.
    SluiceAccessLog,
    /// `--observability`: tracing 1 % of requests over OTLP.
    SluiceTracing,
    /// `--mirror`: the same config as `Sluice`, on the same ports.
    SluiceNoMirror,
    /// `--mirror`: every request copied to the slow shadow.
    SluiceMirrorSlow,
    /// `--mirror`: every request copied to the fast shadow.
    SluiceMirrorFast,
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

/// One wrk run.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Requests completed.
    requests: u64,
    /// CPU time (user + kernel) the target's processes spent per request, in microseconds.
    cpu_us: f64,
    /// RSS of the target's processes right after the run, in bytes.
    rss: u64,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Direct => "upstream direct",
            Self::Nginx => "nginx",
            Self::Haproxy => "HAProxy",
            Self::Sluice => "sluice-proxy",
            Self::SluiceDefaults => "sluice, defaults",
            Self::SluiceAll => "sluice, all resilience features",
            Self::SluiceMetrics => "sluice, metrics only",
            Self::SluiceAccessLog => "sluice, metrics + access log",
            Self::SluiceTracing => "sluice, metrics + tracing 1 %",
            Self::SluiceNoMirror => "sluice, no mirror",
            Self::SluiceMirrorSlow => "sluice, 100% mirror to a 5 s shadow",
            Self::SluiceMirrorFast => "sluice, 100% mirror to a fast shadow",
        }
    }

    fn port(self) -> u16 {
        match self {
            Self::Direct => UPSTREAM,
            Self::Nginx => NGINX,
            Self::Haproxy => HAPROXY,
            Self::Sluice | Self::SluiceDefaults | Self::SluiceMetrics | Self::SluiceNoMirror => SLUICE,
            Self::SluiceAll => SLUICE_ALL,
            Self::SluiceAccessLog => SLUICE_ACCESS_LOG,
            Self::SluiceTracing => SLUICE_TRACING,
            Self::SluiceMirrorSlow => SLUICE_MIRROR_SLOW,
            Self::SluiceMirrorFast => SLUICE_MIRROR_FAST,
        }
    }

    /// Port of the admin listener, for sluice-proxy targets.
    fn admin_port(self) -> Option<u16> {
        match self {
            Self::Direct | Self::Nginx | Self::Haproxy => None,
            Self::Sluice | Self::SluiceDefaults | Self::SluiceMetrics | Self::SluiceNoMirror => {
                Some(SLUICE_ADMIN)
            }
            Self::SluiceAll => Some(SLUICE_ALL_ADMIN),
            Self::SluiceAccessLog => Some(SLUICE_ACCESS_LOG_ADMIN),
            Self::SluiceTracing => Some(SLUICE_TRACING_ADMIN),
            Self::SluiceMirrorSlow => Some(SLUICE_MIRROR_SLOW_ADMIN),
            Self::SluiceMirrorFast => Some(SLUICE_MIRROR_FAST_ADMIN),
        }
    }

    /// The config file of a sluice-proxy target, and its text.
    fn sluice_config(self) -> Option<(&'static str, String)> {
        match self {
            Self::Direct | Self::Nginx | Self::Haproxy => None,
            Self::Sluice | Self::SluiceDefaults | Self::SluiceMetrics | Self::SluiceNoMirror => {
                Some(("sluice.yaml", sluice_conf(self.port(), false)))
            }
            Self::SluiceAll => Some(("sluice-all.yaml", sluice_conf(self.port(), true))),
            Self::SluiceAccessLog => Some(("sluice-access-log.yaml", access_log_conf(self.port()))),
            Self::SluiceTracing => Some(("sluice-tracing.yaml", sluice_conf(self.port(), false))),
            Self::SluiceMirrorSlow => {
                Some(("sluice-mirror-slow.yaml", mirror_conf(self.port(), SHADOW_SLOW)))
            }
            Self::SluiceMirrorFast => {
                Some(("sluice-mirror-fast.yaml", mirror_conf(self.port(), SHADOW_FAST)))
            }
        }
    }
}

/// What a benchmark measured: everything the report is made of.
struct Results {
    targets: Vec<Target>,
    /// `runs[scenario][target]`, targets in the order of `targets`.
    runs: Vec<Vec<Vec<Run>>>,
    /// Requests each target served in all, checks included.
    served: Vec<u64>,
    /// RSS of each target's processes, idle after start and idle after the runs.
    idle_rss: Vec<u64>,
    after_rss: Vec<u64>,
    /// Peak RSS (`VmHWM`) of each target's main process, read after the runs.
    peak_rss: Vec<u64>,
    /// RSS of every process started, after the runs.
    others_rss: Vec<(&'static str, u64)>,
    /// The route counters of each sluice-proxy target (`--resilience` only), or why they are missing.
    counters: Vec<(Target, Result<RouteCounters, String>)>,
    /// What the access log and the trace receiver got (`--observability` only).
    observed: Option<Observed>,
    /// What the mirrors did and the slow shadow got (`--mirror` only).
    mirrored: Option<Mirrored>,
    took: Duration,
}

/// What `--mirror`'s instances did with their copies, and what the slow shadow was sent.
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

/// What `--observability`'s access-log and tracing instances produced, or why it is unknown. A
/// failure is kept for the report rather than returned: it should not throw away minutes of runs.
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

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.fanout {
        return fanout::run(args.streams, args.rounds, !args.no_write);
    }
    let mode = args.mode();
    ensure_tools(args.install, mode)?;
    ensure_ports_free(&mode.ports())?;
    let sluice_bin = build_proxy("release")?;
    let dir = root().join("target/bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/1m"), vec![b'x'; 1 << 20])?;

    // Declared before `procs`, so they outlive the proxies exporting and mirroring to them.
    let receiver = if mode == Mode::Observability { Some(receiver::Receiver::start()?) } else { None };
    let slow_shadow =
        if mode == Mode::Mirror { Some(shadow::SlowShadow::start(SHADOW_SLOW, SHADOW_DELAY)?) } else { None };
    let mut procs = Procs { dir: dir.clone(), children: Vec::new() };
    let upstream_conf = upstream_conf(&dir, args.workers, mode == Mode::Mirror);
    let upstream = procs.spawn("upstream nginx", nginx(&dir, "upstream", &upstream_conf)?)?;
    // Each target with the process its CPU is charged to (for "direct", the upstream itself).
    let started: Vec<(Target, u32)> = match mode {
        Mode::Same | Mode::Minimal => {
            let mut t = vec![(Target::Direct, upstream)];
            t.extend(start_proxies(&mut procs, &sluice_bin, args.workers, mode == Mode::Minimal)?);
            t
        }
        Mode::Resilience => start_sluices(&mut procs, &sluice_bin, args.workers)?,
        Mode::Observability => {
            let endpoint = receiver.as_ref().map(receiver::Receiver::endpoint).unwrap_or_default();
            start_observed(&mut procs, &sluice_bin, args.workers, &endpoint)?
        }
        Mode::Mirror => start_mirrors(&mut procs, &sluice_bin, args.workers)?,
    };
    let targets: Vec<Target> = started.iter().map(|(t, _)| *t).collect();
    let pids: Vec<u32> = started.iter().map(|(_, p)| *p).collect();

    let mut served = vec![0u64; targets.len()];
    for (ti, t) in targets.iter().enumerate() {
        wait_port(t.port(), &mut procs)?;
        for s in &SCENARIOS {
            let check = wrk(t.port(), s.path, 1, 1)?;
            ensure!(
                check.errors == 0 && check.rps > 0.0,
                "{} answers {} with errors: {check:?}",
                t.name(),
                s.path
            );
            served[ti] += check.requests;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss: Vec<u64> = pids.iter().map(|p| rss_tree(*p)).collect();

    // runs[scenario][target]
    let mut runs = vec![vec![Vec::<Run>::new(); targets.len()]; SCENARIOS.len()];
    let width = targets.iter().map(|t| t.name().len()).max().unwrap_or(0);
    let started_at = Instant::now();
    for round in 0..args.rounds {
        for (si, s) in SCENARIOS.iter().enumerate() {
            for k in 0..targets.len() {
                let ti = (k + round) % targets.len();
                let t = targets[ti];
                let before = cpu_ticks(pids[ti]);
                let mut r = wrk(t.port(), s.path, s.connections, args.duration)?;
                let ticks = cpu_ticks(pids[ti]).saturating_sub(before);
                r.cpu_us = ticks as f64 * 1e6 / TICKS_PER_SECOND / (r.rps * args.duration as f64).max(1.0);
                r.rss = rss_tree(pids[ti]);
                println!(
                    "round {}/{}  {:<32} {:<width$} {:>10.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  cpu {:>6.1} us/req  rss {:>5.1} MiB{}",
                    round + 1,
                    args.rounds,
                    s.name,
                    t.name(),
                    r.rps,
                    r.p50_ms,
                    r.p99_ms,
                    r.cpu_us,
                    r.rss as f64 / 1048576.0,
                    if r.errors > 0 { format!("  ({} errors)", r.errors) } else { String::new() }
                );
                served[ti] += r.requests;
                runs[si][ti].push(r);
            }
        }
    }
    let took = started_at.elapsed();
    let counters = if mode == Mode::Resilience { route_counters(&targets) } else { Vec::new() };
    let mirrored = slow_shadow.as_ref().map(|s| mirrored(&targets, s));
    std::thread::sleep(Duration::from_secs(2));
    let after_rss = pids.iter().map(|p| rss_tree(*p)).collect();
    let peak_rss = pids.iter().map(|p| peak_rss(*p)).collect();
    let others_rss = procs.children.iter().map(|(n, c)| (*n, rss_tree(c.id()))).collect();
    let observed = receiver.as_ref().map(|receiver| observe(&mut procs, receiver, &targets, &pids));

    let results = Results {
        targets,
        runs,
        served,
        idle_rss,
        after_rss,
        peak_rss,
        others_rss,
        counters,
        observed,
        mirrored,
        took,
    };
    let report = report(&args, &results);
    println!("\n{report}");
    if !args.no_write {
        write_report(&report, mode)?;
        println!("wrote docs/BENCHMARKS.md");
    }
    Ok(())
}

/// Starts nginx, HAProxy and sluice-proxy as proxies to the upstream.
fn start_proxies(
    procs: &mut Procs,
    sluice_bin: &Path,
    workers: usize,
    minimal: bool,
) -> anyhow::Result<Vec<(Target, u32)>> {
    let dir = procs.dir.clone();
    let nginx = procs.spawn("nginx", nginx(&dir, "proxy", &nginx_proxy_conf(&dir, workers, minimal))?)?;
    std::fs::write(dir.join("haproxy.cfg"), haproxy_conf(&dir, workers, minimal))?;
    let mut haproxy = Command::new("haproxy");
    haproxy.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
    let haproxy = procs.spawn("HAProxy", haproxy)?;
    let sluice = spawn_sluice(procs, "sluice-proxy", sluice_bin, Target::Sluice, workers)?;
    Ok(vec![(Target::Nginx, nginx), (Target::Haproxy, haproxy), (Target::Sluice, sluice)])
}

/// Starts the two sluice-proxy instances `--resilience` compares.
fn start_sluices(procs: &mut Procs, sluice_bin: &Path, workers: usize) -> anyhow::Result<Vec<(Target, u32)>> {
    let defaults = spawn_sluice(procs, "sluice defaults", sluice_bin, Target::SluiceDefaults, workers)?;
    let all = spawn_sluice(procs, "sluice all features", sluice_bin, Target::SluiceAll, workers)?;
    Ok(vec![(Target::SluiceDefaults, defaults), (Target::SluiceAll, all)])
}

/// Starts the three sluice-proxy instances `--observability` compares: metrics only, with an
/// access log (its standard output going to `ACCESS_LOG_FILE`), and tracing to `otlp_endpoint`.
fn start_observed(
    procs: &mut Procs,
    sluice_bin: &Path,
    workers: usize,
    otlp_endpoint: &str,
) -> anyhow::Result<Vec<(Target, u32)>> {
    let metrics = spawn_sluice(procs, "sluice metrics only", sluice_bin, Target::SluiceMetrics, workers)?;
    let cmd = sluice_command(&procs.dir, sluice_bin, Target::SluiceAccessLog, workers)?;
    let log = std::fs::File::create(procs.dir.join(ACCESS_LOG_FILE))?;
    let access_log = procs.spawn_to("sluice access log", cmd, log)?;
    let mut cmd = sluice_command(&procs.dir, sluice_bin, Target::SluiceTracing, workers)?;
    cmd.envs(tracing_env(otlp_endpoint));
    let tracing = procs.spawn("sluice tracing", cmd)?;
    Ok(vec![
        (Target::SluiceMetrics, metrics),
        (Target::SluiceAccessLog, access_log),
        (Target::SluiceTracing, tracing),
    ])
}

/// Starts the three sluice-proxy instances `--mirror` compares: without mirroring, and mirroring
/// every request to the slow and to the fast shadow.
fn start_mirrors(procs: &mut Procs, sluice_bin: &Path, workers: usize) -> anyhow::Result<Vec<(Target, u32)>> {
    let none = spawn_sluice(procs, "sluice no mirror", sluice_bin, Target::SluiceNoMirror, workers)?;
    let slow = spawn_sluice(procs, "sluice mirror slow", sluice_bin, Target::SluiceMirrorSlow, workers)?;
    let fast = spawn_sluice(procs, "sluice mirror fast", sluice_bin, Target::SluiceMirrorFast, workers)?;
    Ok(vec![
        (Target::SluiceNoMirror, none),
        (Target::SluiceMirrorSlow, slow),
        (Target::SluiceMirrorFast, fast),
    ])
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

/// Writes the config of sluice-proxy target `t` and starts it (see `sluice_command`).
fn spawn_sluice(
    procs: &mut Procs,
    name: &'static str,
    bin: &Path,
    t: Target,
    workers: usize,
) -> anyhow::Result<u32> {
    let cmd = sluice_command(&procs.dir, bin, t, workers)?;
    procs.spawn(name, cmd)
}

/// Writes the config of sluice-proxy target `t` into `dir` and returns the command that runs it,
/// after `sluice-proxy check` accepts the config: a refused config then fails here with the
/// parser's message instead of as a proxy that never listens. `OTEL_*` variables of the caller's
/// environment are not passed on: only the tracing instance of `--observability` traces.
fn sluice_command(dir: &Path, bin: &Path, t: Target, workers: usize) -> anyhow::Result<Command> {
    let admin = t.admin_port().with_context(|| format!("{} is not a sluice-proxy target", t.name()))?;
    let (file, text) = t.sluice_config().with_context(|| format!("{} has no sluice config", t.name()))?;
    let config = dir.join(file);
    std::fs::write(&config, text)?;
    let check = Command::new(bin).arg("check").arg("--config-file").arg(&config).output()?;
    ensure!(
        check.status.success(),
        "sluice-proxy refuses {}:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut cmd = Command::new(bin);
    cmd.arg("--config-file")
        .arg(&config)
        .args(["--admin-listen", &format!("127.0.0.1:{admin}"), "--workers", &workers.to_string()])
        .env("RUST_LOG", "warn");
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("OTEL_")) {
            cmd.env_remove(key);
        }
    }
    Ok(cmd)
}

/// Fails if something already listens on a port the benchmark needs. Otherwise it would stand in
/// unnoticed for the process the benchmark starts there: nginx gives up binding after a few
/// seconds and exits, while the port goes on answering.
fn ensure_ports_free(ports: &[u16]) -> anyhow::Result<()> {
    // std sets SO_REUSEADDR, so connections of an earlier run in TIME_WAIT do not count as busy.
    let busy: Vec<String> = ports
        .iter()
        .filter(|p| std::net::TcpListener::bind(("127.0.0.1", **p)).is_err())
        .map(u16::to_string)
        .collect();
    ensure!(
        busy.is_empty(),
        "127.0.0.1 port(s) {} already in use (another benchmark, or a leftover?): see `ss -ltnp`, stop it \
         and rerun",
        busy.join(", ")
    );
    Ok(())
}

fn ensure_tools(install: bool, mode: Mode) -> anyhow::Result<()> {
    let tools: &[&str] = match mode {
        Mode::Resilience | Mode::Observability | Mode::Mirror => &["nginx", "wrk"],
        Mode::Same | Mode::Minimal => &["nginx", "haproxy", "wrk"],
    };
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|bin| {
            Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
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
    fn spawn(&mut self, name: &'static str, cmd: Command) -> anyhow::Result<u32> {
        self.spawn_to(name, cmd, Stdio::null())
    }

    /// Starts `cmd` like `spawn`, but with its standard output going to `stdout`.
    fn spawn_to(
        &mut self,
        name: &'static str,
        mut cmd: Command,
        stdout: impl Into<Stdio>,
    ) -> anyhow::Result<u32> {
        let log = std::fs::File::create(self.log(name))?;
        let child = cmd.stdout(stdout).stderr(log).spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.children.push((name, child));
        Ok(pid)
    }

    /// Stops child `pid` with SIGTERM and waits, up to `within`, for it to exit. Returns its name
    /// (for its log) and how it exited.
    fn stop(&mut self, pid: u32, within: Duration) -> anyhow::Result<(&'static str, ExitStatus)> {
        let i = self
            .children
            .iter()
            .position(|(_, c)| c.id() == pid)
            .with_context(|| format!("{pid} is not a process of the benchmark"))?;
        let name = self.children[i].0;
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.children[i].1.try_wait()? {
                self.children.remove(i);
                return Ok((name, status));
            }
            ensure!(Instant::now() < deadline, "{name} still runs {} s after SIGTERM", within.as_secs());
            std::thread::sleep(Duration::from_millis(50));
        }
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

/// The upstream nginx; with `shadow` it also listens on `SHADOW_FAST`, as `--mirror`'s fast shadow.
fn upstream_conf(dir: &Path, workers: usize, shadow: bool) -> String {
    let shadow =
        if shadow { format!("listen 127.0.0.1:{SHADOW_FAST} backlog=4096;\n    ") } else { String::new() };
    format!(
        "{}http {{\n  access_log off;\n{}  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  \
         server {{\n    listen 127.0.0.1:{UPSTREAM} backlog=4096;\n    {shadow}\
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

/// sluice-proxy's config: one listener on `port`, one pool, one catch-all route, and with
/// `resilience` every resilience feature on top (see `ALL_LISTENER`).
fn sluice_conf(port: u16, resilience: bool) -> String {
    if resilience {
        sluice_conf_with(port, ALL_LISTENER, ALL_POOL, ALL_ROUTE)
    } else {
        sluice_conf_with(port, "", "", "")
    }
}

/// The access-log instance's config: the plain one with an access log on the listener, every
/// request logged.
fn access_log_conf(port: u16) -> String {
    sluice_conf_with(port, ACCESS_LOG_LISTENER, "", "")
}

const ACCESS_LOG_LISTENER: &str = "    access_log: {}\n";

/// A mirroring instance's config: the plain one plus pool `shadow`, whose one endpoint is
/// 127.0.0.1:`shadow`, and `MIRROR_ROUTE` on the route.
fn mirror_conf(port: u16, shadow: u16) -> String {
    let pool = format!("  - name: shadow\n    endpoints:\n      - address: 127.0.0.1:{shadow}\n");
    sluice_conf_with(port, "", &pool, MIRROR_ROUTE)
}

/// The plain config with `listener`, `pool` and `route` settings added.
fn sluice_conf_with(port: u16, listener: &str, pool: &str, route: &str) -> String {
    format!(
        "listeners:\n  - name: bench\n    address: 127.0.0.1:{port}\n{listener}pools:\n  - name: upstream\n    endpoints:\n      - address: 127.0.0.1:{UPSTREAM}\n{pool}routes:\n  - name: {ROUTE}\n    pool: upstream\n{route}"
    )
}

// What the all-features instance adds to the listener, the pool and the route. The limits are far
// above anything the benchmark reaches, so nothing is shed, tripped, ejected or rate limited: what
// is measured is the bookkeeping every request pays for. Hedging is the exception: without a fixed
// `delay` it fires after the route's live p95, so a few percent of requests really go upstream
// twice, and that work is part of the cost. `min_hosts` is 2 because the parser refuses less. With
// the single endpoint, success-rate and latency ejection never run (they compare peers), but every
// request still pays for the per-endpoint counting they feed on.
const ALL_LISTENER: &str =
    "    overload: {max_concurrent_requests: 100000, max_queued: 100, queue_timeout: 1s}\n";
const ALL_POOL: &str = "    health_check: {path: /small, interval: 1s, timeout: 1s}\n    \
     circuit_breaker: {max_connections: 100000, max_pending_requests: 100000, max_requests: 100000, \
     max_retries: 100, error_threshold_percent: 50, min_requests: 20, window: 10s, open_duration: 30s}\n    \
     outlier_detection: {consecutive_5xx: 5, interval: 10s, success_rate: {min_hosts: 2, min_requests: 100}, \
     latency: {factor: 5.0, min_requests: 100}}\n";
const ALL_ROUTE: &str = "    retries: {max_attempts: 3, retry_on: [connect_failure, reset, timeout, 503], \
     per_try_timeout: 5s, budget_percent: 20}\n    hedge: {budget_percent: 5}\n    \
     rate_limit: {requests_per_second: 10000000, burst: 10000000}\n    max_request_body: 10MiB\n";

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
    let rss = |pid: u32| status_kib(pid, "VmRSS:") * 1024;
    rss(pid) + children(pid).into_iter().map(rss).sum::<u64>()
}

/// The largest RSS a process has had (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") * 1024
}

/// A `kB` field of /proc/`pid`/status, such as `VmRSS:`; 0 if unreadable.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

fn median(runs: &[Run], f: impl Fn(&Run) -> f64) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(f).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `f` of `a`'s median run over `f` of `b`'s.
fn ratio(a: &[Run], b: &[Run], f: impl Fn(&Run) -> f64 + Copy) -> f64 {
    median(a, f) / median(b, f).max(1e-9)
}

/// Counters of the benchmark's route, from the admin listener's `/routes`.
#[derive(Debug, Default, PartialEq)]
struct RouteCounters {
    retries: u64,
    retries_denied: u64,
    hedges: u64,
    hedges_won: u64,
    rate_limited: u64,
    /// The route's live p95, which hedging waits for; absent until the route has seen enough requests.
    p95_ms: Option<f64>,
}

impl RouteCounters {
    /// Reads route `name` out of a `/routes` document.
    fn parse(doc: &Value, name: &str) -> anyhow::Result<Self> {
        let route = doc
            .get("routes")
            .and_then(Value::as_array)
            .context("no \"routes\" list")?
            .iter()
            .find(|r| r.get("name").and_then(Value::as_str) == Some(name))
            .with_context(|| format!("no route {name:?}"))?;
        let count = |key: &str| {
            route
                .get(key)
                .and_then(Value::as_u64)
                .with_context(|| format!("route {name:?} has no count {key:?}"))
        };
        Ok(Self {
            retries: count("retries")?,
            retries_denied: count("retries_denied")?,
            hedges: count("hedges")?,
            hedges_won: count("hedges_won")?,
            rate_limited: count("rate_limited")?,
            p95_ms: route.get("p95_ms").and_then(Value::as_f64),
        })
    }
}

/// Prints the admin `/routes` document of every sluice-proxy target and reads its route's counters.
/// A failure is kept for the report rather than returned: it should not throw away minutes of runs.
fn route_counters(targets: &[Target]) -> Vec<(Target, Result<RouteCounters, String>)> {
    targets
        .iter()
        .filter_map(|t| Some((*t, t.admin_port()?)))
        .map(|(t, port)| {
            let counters = admin_get(port, "/routes").and_then(|doc| {
                println!("admin /routes of {}:\n{}", t.name(), serde_json::to_string_pretty(&doc)?);
                RouteCounters::parse(&doc, ROUTE)
            });
            (t, counters.map_err(|e| format!("{e:#}")))
        })
        .collect()
}

/// GETs `path` from the admin listener on `port` and decodes its JSON.
fn admin_get(port: u16, path: &str) -> anyhow::Result<Value> {
    json_body(&admin_response(port, path)?).with_context(|| format!("GET 127.0.0.1:{port}{path}"))
}

/// GETs `path` from the admin listener on `port`: the whole response. HTTP/1.0, so the response
/// ends where the connection does and needs no framing of its own.
fn admin_response(port: u16, path: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to the admin listener on {port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The JSON body of an HTTP response, which must be a 200.
fn json_body(response: &str) -> anyhow::Result<Value> {
    serde_json::from_str(ok_body(response)?).context("the response body is not JSON")
}

/// The body of an HTTP response, which must be a 200.
fn ok_body(response: &str) -> anyhow::Result<&str> {
    let (head, body) = response.split_once("\r\n\r\n").context("the response has no end of head")?;
    let status = head.lines().next().unwrap_or("");
    ensure!(status.split_whitespace().nth(1) == Some("200"), "answered {status:?}: {body}");
    Ok(body)
}

/// The value of `sample` (a metric name with its labels, as exposed: `name{k="v"}`) in a
/// Prometheus text exposition.
fn prometheus_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
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
/// A failure is kept for the report rather than returned: it should not throw away minutes of runs.
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
        .filter(|t| matches!(t, Target::SluiceMirrorSlow | Target::SluiceMirrorFast))
        .filter_map(|t| Some((*t, t.admin_port()?)))
        .map(|(t, port)| {
            let c = settled(port);
            match &c {
                Ok(c) => println!("mirror counters of {}: {c:?}", t.name()),
                Err(e) => println!("mirror counters of {} unavailable: {e:#}", t.name()),
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

/// Reads what `--observability`'s access log and tracing produced. The tracing instance is
/// stopped for it: its exporter sends what it still buffers on the way out.
fn observe(procs: &mut Procs, receiver: &receiver::Receiver, targets: &[Target], pids: &[u32]) -> Observed {
    let access_log = access_log_stats(&procs.dir.join(ACCESS_LOG_FILE), SLUICE_ACCESS_LOG_ADMIN);
    let spans = targets
        .iter()
        .position(|t| *t == Target::SluiceTracing)
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

fn report(args: &Args, r: &Results) -> String {
    let mode = args.mode();
    let (begin, end) = mode.markers();
    let mut out = String::new();
    let _ = writeln!(out, "{begin}");
    header(&mut out, args, r.took);
    for (si, s) in SCENARIOS.iter().enumerate() {
        let runs = &r.runs[si];
        scenario_table(&mut out, s, &r.targets, runs);
        let get = |t: Target| {
            r.targets.iter().position(|x| *x == t).map(|i| runs[i].as_slice()).unwrap_or_default()
        };
        match mode {
            Mode::Same | Mode::Minimal => {
                let sluice = get(Target::Sluice);
                for other in [Target::Nginx, Target::Haproxy] {
                    let o = get(other);
                    let _ = writeln!(
                        out,
                        "\nsluice / {}: throughput {:.2}×, p99 {:.2}× (lower is better)",
                        other.name(),
                        ratio(sluice, o, |r| r.rps),
                        ratio(sluice, o, |r| r.p99_ms),
                    );
                }
            }
            Mode::Resilience => {
                let _ = writeln!(out);
                versus(
                    &mut out,
                    "all features / defaults",
                    get(Target::SluiceAll),
                    get(Target::SluiceDefaults),
                );
            }
            Mode::Observability => {
                let base = get(Target::SluiceMetrics);
                let _ = writeln!(out);
                versus(&mut out, "access log / metrics only", get(Target::SluiceAccessLog), base);
                versus(&mut out, "tracing 1 % / metrics only", get(Target::SluiceTracing), base);
            }
            Mode::Mirror => {
                let base = get(Target::SluiceNoMirror);
                let _ = writeln!(out);
                versus(&mut out, "mirror to 5 s shadow / no mirror", get(Target::SluiceMirrorSlow), base);
                versus(&mut out, "mirror to fast shadow / no mirror", get(Target::SluiceMirrorFast), base);
            }
        }
        let _ = writeln!(out);
    }
    match mode {
        Mode::Same | Mode::Minimal => memory(&mut out, r),
        Mode::Resilience => resilience_notes(&mut out, r),
        Mode::Observability => observability_notes(&mut out, r),
        Mode::Mirror => mirror_notes(&mut out, r),
    }
    let _ = writeln!(out, "{end}");
    out
}

/// `what: throughput X×, p99 Y×, CPU per request Z×` of `runs` against `base`.
fn versus(out: &mut String, what: &str, runs: &[Run], base: &[Run]) {
    let _ = writeln!(
        out,
        "{what}: throughput {:.2}×, p99 {:.2}×, CPU per request {:.2}×",
        ratio(runs, base, |r| r.rps),
        ratio(runs, base, |r| r.p99_ms),
        ratio(runs, base, |r| r.cpu_us),
    );
}

/// The command line and the machine.
fn header(out: &mut String, args: &Args, took: Duration) {
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
    let mode = args.mode();
    let date = version("date", "+%F");
    let on = if date.is_empty() { String::new() } else { format!(" on {date}") };
    let _ = writeln!(
        out,
        "Generated{on} by `cargo xtask bench --duration {} --rounds {} --workers {}{}` ({} s of wrk per run, \
         medians of {} alternated rounds, {:.0} min in all).\n",
        args.duration,
        args.rounds,
        args.workers,
        mode.flag(),
        args.duration,
        args.rounds,
        took.as_secs_f64() / 60.0
    );
    let wrk = version("wrk", "-v");
    let wrk = wrk.split(" Copyright").next().unwrap_or("");
    let w = args.workers;
    let _ = match mode {
        Mode::Same | Mode::Minimal => writeln!(
            out,
            "Machine: {cpu}, {cores} cores, shared by wrk (2 threads), the upstream (nginx, {w} workers) and the \
             proxy under test ({w} workers/threads). {} · {} · {wrk}.\n",
            version("nginx", "-v"),
            version("haproxy", "-v"),
        ),
        Mode::Resilience => writeln!(
            out,
            "Machine: {cpu}, {cores} cores, shared by wrk (2 threads), the upstream (nginx, {w} workers) and the \
             sluice-proxy instance under test ({w} worker threads; both instances run throughout, only one \
             gets traffic at a time). {} · {wrk}.\n",
            version("nginx", "-v"),
        ),
        Mode::Observability => writeln!(
            out,
            "Machine: {cpu}, {cores} cores, shared by wrk (2 threads), the upstream (nginx, {w} workers), the \
             sluice-proxy instance under test ({w} worker threads; all three instances run throughout, only one \
             gets traffic at a time) and the OTLP trace receiver (a gRPC server in the xtask process). {} · \
             {wrk}.\n",
            version("nginx", "-v"),
        ),
        Mode::Mirror => writeln!(
            out,
            "Machine: {cpu}, {cores} cores, shared by wrk (2 threads), the upstream (nginx, {w} workers, also \
             the fast shadow), the sluice-proxy instance under test ({w} worker threads; all three instances run \
             throughout, only one gets traffic at a time) and the slow shadow (a hyper server on one thread of \
             the xtask process). {} · {wrk}.\n",
            version("nginx", "-v"),
        ),
    };
    if mode == Mode::Observability {
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
            Target::SluiceMetrics.name(),
            Target::SluiceAccessLog.name(),
            Target::SluiceTracing.name(),
        );
    }
    if mode == Mode::Mirror {
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
            Target::SluiceNoMirror.name(),
            Target::SluiceMirrorSlow.name(),
            SHADOW_DELAY.as_secs(),
            Target::SluiceMirrorFast.name(),
        );
    }
}

/// One scenario's medians, a row per target.
fn scenario_table(out: &mut String, s: &Scenario, targets: &[Target], runs: &[Vec<Run>]) {
    let _ = writeln!(out, "### {}\n", s.name);
    let _ = writeln!(out, "| target | requests/s | p50 | p99 | CPU per request | errors |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for (t, runs) in targets.iter().zip(runs) {
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
}

/// RSS of sluice-proxy and of every process started.
fn memory(out: &mut String, r: &Results) {
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    let sluice = r.targets.iter().position(|t| *t == Target::Sluice);
    let rss = |of: &[u64]| sluice.and_then(|i| of.get(i).copied()).unwrap_or(0);
    let _ = writeln!(out, "### Memory (RSS)\n");
    let _ = writeln!(out, "| process | RSS |\n|---|---:|");
    let _ = writeln!(out, "| sluice-proxy, idle after start | {:.1} MiB |", mib(rss(&r.idle_rss)));
    let _ = writeln!(out, "| sluice-proxy, idle after the runs | {:.1} MiB |", mib(rss(&r.after_rss)));
    for (name, rss) in &r.others_rss {
        let _ = writeln!(out, "| {name} (all processes), after the runs | {:.1} MiB |", mib(*rss));
    }
}

/// What the resilience features did during the runs, the memory of both instances, and the
/// all-features config.
fn resilience_notes(out: &mut String, r: &Results) {
    let _ = writeln!(out, "### What the resilience features did\n");
    let _ = writeln!(
        out,
        "Counters of route `{ROUTE}` from each instance's admin `/routes` after the runs; \"requests\" is \
         all wrk completed against the instance, warm-up checks included. The all-features route hedges \
         without a fixed `delay`, that is after its live p95 (\"route p95\"), within a 5 % budget: each \
         hedge counted went upstream twice, and that work is part of the cost measured above. The other \
         limits (overload, circuit breaker, rate limit) are far above the load, so nothing was refused and \
         they cost only their bookkeeping.\n"
    );
    let _ = writeln!(
        out,
        "| instance | requests | retries | retries denied | hedges | hedges won | rate limited | route p95 |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut missing = Vec::new();
    for (t, counters) in &r.counters {
        let served =
            r.targets.iter().position(|x| x == t).and_then(|i| r.served.get(i).copied()).unwrap_or(0);
        let _ = match counters {
            Ok(c) => writeln!(
                out,
                "| {} | {served} | {} | {} | {} ({:.2} %) | {} | {} | {} |",
                t.name(),
                c.retries,
                c.retries_denied,
                c.hedges,
                c.hedges as f64 * 100.0 / served.max(1) as f64,
                c.hedges_won,
                c.rate_limited,
                c.p95_ms.map_or_else(|| "–".to_owned(), |ms| format!("{ms:.3} ms")),
            ),
            Err(e) => {
                missing.push(format!("{}: {e}", t.name()));
                writeln!(out, "| {} | {served} | – | – | – | – | – | – |", t.name())
            }
        };
    }
    for m in missing {
        let _ = writeln!(out, "\nCounters unavailable for {m}");
    }
    let all = r.counters.iter().find(|(t, _)| *t == Target::SluiceAll).and_then(|(_, c)| c.as_ref().ok());
    if all.is_some_and(|c| c.hedges == 0) {
        // sluice-proxy sends a hedge only to another endpoint than the first try's.
        let _ = writeln!(
            out,
            "\nNo request was hedged: a hedge goes to another endpoint than the first try, and the pool has \
             one. Hedging cost here only its per-request setup (reading the live p95, the copy of the request \
             kept for a second try, the hedge point on the request's timer)."
        );
    }
    instances_memory(out, r);
    let _ = writeln!(
        out,
        "\nThe all-features instance's config (the defaults instance has the same listener, pool and route \
         without the resilience settings):\n\n```yaml\n{}```",
        sluice_conf(SLUICE_ALL, true)
    );
}

/// RSS of each sluice-proxy instance, idle after start and after the runs.
fn instances_memory(out: &mut String, r: &Results) {
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    let _ = writeln!(out, "\n### Memory (RSS)\n");
    let _ = writeln!(out, "| instance | idle after start | idle after the runs |\n|---|---:|---:|");
    for (i, t) in r.targets.iter().enumerate() {
        let rss = |of: &[u64]| of.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "| {} | {:.1} MiB | {:.1} MiB |",
            t.name(),
            mib(rss(&r.idle_rss)),
            mib(rss(&r.after_rss))
        );
    }
}

/// What the access log and the trace receiver got, the memory of the three instances, and the
/// access-log instance's config.
fn observability_notes(out: &mut String, r: &Results) {
    let served = |t: Target| {
        r.targets.iter().position(|x| *x == t).and_then(|i| r.served.get(i).copied()).unwrap_or(0)
    };
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
    let observed = r.observed.as_ref();
    let t = Target::SluiceAccessLog;
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
    let _ = writeln!(out, "| {} | {} | {text} |", t.name(), served(t));
    let t = Target::SluiceTracing;
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
                s.spans.server as f64 * 100.0 / served(t).max(1) as f64,
            )
        }
        Some(Err(e)) => format!("unavailable: {e}"),
        None => "unavailable".to_owned(),
    };
    let _ = writeln!(out, "| {} | {} | {text} |", t.name(), served(t));
    if let Some(Ok(a)) = observed.map(|o| &o.access_log)
        && !a.first.is_empty()
    {
        let _ = writeln!(out, "\nAn access-log line (from a warm-up check):\n\n```json\n{}\n```", a.first);
    }
    instances_memory(out, r);
    let _ = writeln!(
        out,
        "\nThe access-log instance's config (the other two have the same without `access_log`):\n\n```yaml\n{}```",
        access_log_conf(SLUICE_ACCESS_LOG)
    );
}

/// Throughput of the slow-mirror instance at least this share of the baseline's.
const MIRROR_THROUGHPUT_TARGET: f64 = 0.90;
/// p99 of the slow-mirror instance at most this multiple of the baseline's.
const MIRROR_P99_TARGET: f64 = 1.05;

/// Whether mirroring to the slow shadow kept to its targets, what the mirrors did, the memory of
/// the three instances, and the slow-mirror instance's config.
fn mirror_notes(out: &mut String, r: &Results) {
    let get = |si: usize, t: Target| {
        r.targets.iter().position(|x| *x == t).map(|i| r.runs[si][i].as_slice()).unwrap_or_default()
    };
    let _ = writeln!(
        out,
        "### Against the target
"
    );
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
        let (slow, base) = (get(si, Target::SluiceMirrorSlow), get(si, Target::SluiceNoMirror));
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
    let mirrored = r.mirrored.as_ref();
    let mut missing = Vec::new();
    for (t, counters) in mirrored.map(|m| m.counters.as_slice()).unwrap_or_default() {
        let served =
            r.targets.iter().position(|x| x == t).and_then(|i| r.served.get(i).copied()).unwrap_or(0);
        let share = |n: u64| format!("{n} ({:.2} %)", n as f64 * 100.0 / served.max(1) as f64);
        let _ = match counters {
            Ok(c) => writeln!(
                out,
                "| {} | {served} | {} | {} | {} | {} | {} | {} |",
                t.name(),
                share(c.sent()),
                c.ok,
                c.server_error + c.failed,
                share(c.dropped_in_flight),
                c.dropped_other,
                c.guardrail_trips,
            ),
            Err(e) => {
                missing.push(format!("{}: {e}", t.name()));
                writeln!(out, "| {} | {served} | – | – | – | – | – | – |", t.name())
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

    let mib = |bytes: u64| bytes as f64 / 1048576.0;
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
            t.name(),
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

fn write_report(report: &str, mode: Mode) -> anyhow::Result<()> {
    let (begin, end) = mode.markers();
    let path: PathBuf = root().join("docs/BENCHMARKS.md");
    let current =
        std::fs::read_to_string(&path).unwrap_or_else(|_| format!("# Benchmarks\n\n{begin}\n{end}\n"));
    std::fs::write(&path, splice(&current, report, mode)?)?;
    Ok(())
}

/// `current` with `mode`'s generated section replaced by `report` (which carries the markers). A
/// mode with a heading of its own gets its section appended when neither marker is there yet.
fn splice(current: &str, report: &str, mode: Mode) -> anyhow::Result<String> {
    let (begin, end) = mode.markers();
    match (current.find(begin), current.find(end), mode.heading()) {
        (Some(b), Some(e), _) if b < e => {
            Ok(format!("{}{}{}", &current[..b], report.trim_end(), &current[e + end.len()..]))
        }
        (None, None, Some(heading)) => {
            Ok(format!("{}\n\n## {heading}\n\n{}\n", current.trim_end(), report.trim_end()))
        }
        _ => bail!("docs/BENCHMARKS.md has no {begin} … {end} section to replace"),
    }
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

    #[test]
    fn both_sluice_configs_parse() {
        use sluice_bundle::{Format, parse};
        for resilience in [false, true] {
            let text = sluice_conf(SLUICE_ALL, resilience);
            if let Err(e) = parse(text.as_bytes(), Format::Yaml) {
                panic!("{e}\n{text}");
            }
        }
        let all = parse(sluice_conf(SLUICE_ALL, true).as_bytes(), Format::Yaml).unwrap();
        let route = &all.routes[0];
        assert!(route.retries.is_some() && route.hedge.is_some() && route.rate_limit.is_some());
        assert!(route.max_request_body.is_some());
        let pool = &all.pools[0];
        assert!(pool.health_check.is_some() && pool.circuit_breaker.is_some());
        assert!(pool.outlier_detection.is_some() && all.listeners[0].overload.is_some());
    }

    #[test]
    fn observability_configs_parse() {
        use sluice_bundle::{Format, parse};
        let targets = [Target::SluiceMetrics, Target::SluiceAccessLog, Target::SluiceTracing];
        let mut files = Vec::new();
        for t in targets {
            let (file, text) = t.sluice_config().unwrap();
            let config = match parse(text.as_bytes(), Format::Yaml) {
                Ok(c) => c,
                Err(e) => panic!("{e}\n{text}"),
            };
            let listener = &config.listeners[0];
            assert_eq!(listener.address.port(), t.port());
            let sample = listener.access_log.as_ref().map(|a| a.effective_sample());
            // Only the access-log instance logs, and it logs every request.
            assert_eq!(sample, (t == Target::SluiceAccessLog).then_some(1.0), "{}", t.name());
            // Otherwise the configs are the plain one, on the instance's port.
            if t != Target::SluiceAccessLog {
                assert_eq!(text, sluice_conf(t.port(), false));
            }
            files.push(file);
        }
        assert_eq!(
            access_log_conf(SLUICE_ACCESS_LOG),
            sluice_conf(SLUICE_ACCESS_LOG, false).replace("18005\n", "18005\n    access_log: {}\n")
        );
        // Three instances, three ports, three admin ports, three config files.
        let distinct = |v: Vec<u16>| v.iter().collect::<std::collections::BTreeSet<_>>().len();
        assert_eq!(distinct(targets.map(Target::port).to_vec()), 3);
        assert_eq!(distinct(targets.map(|t| t.admin_port().unwrap()).to_vec()), 3);
        files.dedup();
        assert_eq!(files.len(), 3);
        // The tracing instance is told to sample 1 % and where to export.
        let env = tracing_env("http://127.0.0.1:4317");
        assert!(env.contains(&("OTEL_TRACES_SAMPLER_ARG", "0.01".to_owned())));
        assert!(env.contains(&("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317".to_owned())));
    }

    #[test]
    fn observability_excludes_the_other_modes() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let parse = |argv: &[&str]| {
            <Cli as clap::Parser>::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
        };
        assert_eq!(parse(&["--observability"]).unwrap().args.mode(), Mode::Observability);
        assert_eq!(parse(&["--resilience"]).unwrap().args.mode(), Mode::Resilience);
        assert!(parse(&["--observability", "--resilience"]).is_err());
        assert!(parse(&["--observability", "--minimal"]).is_err());
        assert_eq!(Mode::Observability.flag(), " --observability");
        assert_eq!(parse(&["--mirror"]).unwrap().args.mode(), Mode::Mirror);
        for other in ["--minimal", "--resilience", "--observability"] {
            assert!(parse(&["--mirror", other]).is_err(), "{other}");
        }
        assert_eq!(Mode::Mirror.flag(), " --mirror");
    }

    #[test]
    fn mirror_configs_parse() {
        use sluice_bundle::{Format, parse};
        let targets = [Target::SluiceNoMirror, Target::SluiceMirrorSlow, Target::SluiceMirrorFast];
        let mut files = Vec::new();
        for t in targets {
            let (file, text) = t.sluice_config().unwrap();
            let config = match parse(text.as_bytes(), Format::Yaml) {
                Ok(c) => c,
                Err(e) => panic!("{e}\n{text}"),
            };
            assert_eq!(config.listeners[0].address.port(), t.port());
            let shadow = match t {
                Target::SluiceMirrorSlow => Some(SHADOW_SLOW),
                Target::SluiceMirrorFast => Some(SHADOW_FAST),
                _ => None,
            };
            let route = &config.routes[0];
            match shadow {
                None => {
                    assert_eq!(text, sluice_conf(t.port(), false));
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
                    assert_eq!(route.pool, "upstream");
                    assert!(text.starts_with(&sluice_conf(t.port(), false).replace(
                        "routes:\n  - name: all\n    pool: upstream\n",
                        &format!("  - name: shadow\n    endpoints:\n      - address: 127.0.0.1:{port}\n")
                    )));
                }
            }
            files.push(file);
        }
        files.dedup();
        assert_eq!(files.len(), 3);
        // The fast shadow is the upstream nginx on a second port, only when asked for.
        let dir = Path::new("/tmp/bench");
        assert!(upstream_conf(dir, 2, true).contains(&format!("listen 127.0.0.1:{SHADOW_FAST} ")));
        assert!(!upstream_conf(dir, 2, false).contains(&SHADOW_FAST.to_string()));
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
    fn mirror_report_checks_the_target() {
        let run = |rps: f64, p99_ms: f64, rss: u64| Run { rps, p99_ms, cpu_us: 20.0, rss, ..Run::default() };
        let targets = vec![Target::SluiceNoMirror, Target::SluiceMirrorSlow, Target::SluiceMirrorFast];
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
            targets,
            runs,
            served: vec![10_000, 10_000, 10_000],
            idle_rss: vec![8 << 20; 3],
            after_rss: vec![12 << 20; 3],
            peak_rss: vec![20 << 20; 3],
            others_rss: Vec::new(),
            counters: Vec::new(),
            observed: None,
            mirrored: Some(Mirrored {
                counters: vec![
                    (
                        Target::SluiceMirrorSlow,
                        Ok(MirrorCounters { ok: 200, dropped_in_flight: 9_800, ..MirrorCounters::default() }),
                    ),
                    (Target::SluiceMirrorFast, Err("no route".into())),
                ],
                slow_shadow: shadow::Served {
                    connections: 100,
                    requests: 200,
                    answered: 200,
                    peak_waiting: 100,
                },
            }),
            took: Duration::from_secs(60),
        };
        let args = Args {
            duration: 10,
            rounds: 2,
            workers: 2,
            install: false,
            no_write: true,
            minimal: false,
            resilience: false,
            observability: false,
            mirror: true,
            fanout: false,
            streams: 0,
        };
        let report = report(&args, &results);
        assert!(report.starts_with(&format!("{MIRROR_BEGIN}\n")), "{report}");
        assert!(report.ends_with(&format!("{MIRROR_END}\n")), "{report}");
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

    #[test]
    fn reads_access_log_and_span_counts() {
        let metrics = "# TYPE sluice_access_log_lines_total counter\n\
            sluice_access_log_lines_total{result=\"written\"} 123456\n\
            sluice_access_log_lines_total{result=\"dropped\"} 7\n";
        let sample = |r: &str| format!("sluice_access_log_lines_total{{result=\"{r}\"}}");
        assert_eq!(prometheus_value(metrics, &sample("written")), Some(123456.0));
        assert_eq!(prometheus_value(metrics, &sample("dropped")), Some(7.0));
        assert_eq!(prometheus_value(metrics, &sample("other")), None);
        assert_eq!(prometheus_value(metrics, "sluice_access_log_lines_total"), None);

        let response = format!("HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n{metrics}");
        assert_eq!(ok_body(&response).unwrap(), metrics);

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
    fn observability_report_compares_with_metrics_only() {
        let run = |rps: f64, p99_ms: f64, cpu_us: f64| Run { rps, p99_ms, cpu_us, ..Run::default() };
        let targets = vec![Target::SluiceMetrics, Target::SluiceAccessLog, Target::SluiceTracing];
        let per_scenario =
            vec![vec![run(1000.0, 1.0, 10.0)], vec![run(800.0, 1.5, 12.0)], vec![run(900.0, 1.0, 11.0)]];
        let results = Results {
            targets,
            runs: vec![per_scenario; SCENARIOS.len()],
            served: vec![10_000, 10_000, 10_000],
            idle_rss: vec![0; 3],
            after_rss: vec![0; 3],
            peak_rss: vec![0; 3],
            others_rss: Vec::new(),
            counters: Vec::new(),
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
            mirrored: None,
            took: Duration::from_secs(60),
        };
        let args = Args {
            duration: 10,
            rounds: 3,
            workers: 2,
            install: false,
            no_write: true,
            minimal: false,
            resilience: false,
            observability: true,
            mirror: false,
            fanout: false,
            streams: 0,
        };
        let report = report(&args, &results);
        assert!(report.starts_with(&format!("{OBSERVABILITY_BEGIN}\n")), "{report}");
        assert!(report.ends_with(&format!("{OBSERVABILITY_END}\n")), "{report}");
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

    #[test]
    fn every_port_a_mode_uses_is_checked_free() {
        assert_eq!(Mode::Same.ports(), [UPSTREAM, NGINX, HAPROXY, SLUICE, SLUICE_ADMIN]);
        assert_eq!(Mode::Resilience.ports(), [UPSTREAM, SLUICE, SLUICE_ALL, SLUICE_ADMIN, SLUICE_ALL_ADMIN]);
        assert_eq!(
            Mode::Observability.ports(),
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
        assert_eq!(
            Mode::Mirror.ports(),
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
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = ensure_ports_free(&[port]).unwrap_err().to_string();
        assert!(e.contains(&port.to_string()), "{e}");
        drop(taken);
        ensure_ports_free(&[port]).unwrap();
    }

    #[test]
    fn defaults_config_is_the_plain_one() {
        assert_eq!(
            sluice_conf(SLUICE, false),
            "listeners:\n  - name: bench\n    address: 127.0.0.1:18003\npools:\n  - name: upstream\n    \
             endpoints:\n      - address: 127.0.0.1:18000\nroutes:\n  - name: all\n    pool: upstream\n"
        );
    }

    #[test]
    fn reads_route_counters() {
        let response = "HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1\r\n\r\n\
            {\"routes\":[{\"name\":\"other\",\"retries\":9},{\"name\":\"all\",\"pool\":\"upstream\",\
            \"retries\":3,\"retries_denied\":1,\"retry_window\":{\"requests\":10,\"retries\":0},\
            \"hedges\":42,\"hedges_won\":7,\"p95_ms\":0.5,\"rate_limited\":0}]}";
        let c = RouteCounters::parse(&json_body(response).unwrap(), "all").unwrap();
        let want = RouteCounters {
            retries: 3,
            retries_denied: 1,
            hedges: 42,
            hedges_won: 7,
            rate_limited: 0,
            p95_ms: Some(0.5),
        };
        assert_eq!(c, want);
        let no_p95 = serde_json::json!({"routes": [{"name": "all", "retries": 0, "retries_denied": 0,
            "hedges": 0, "hedges_won": 0, "p95_ms": null, "rate_limited": 0}]});
        assert_eq!(RouteCounters::parse(&no_p95, "all").unwrap().p95_ms, None);
        assert!(RouteCounters::parse(&no_p95, "missing").is_err());
        assert!(json_body("HTTP/1.1 404 Not Found\r\n\r\n{}").is_err());
        assert!(json_body("HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn replaces_or_appends_the_generated_section() {
        let doc = format!("# B\n\n{BEGIN}\nold\n{END}\n\nanalysis\n");
        let report = format!("{BEGIN}\nnew\n{END}\n");
        assert_eq!(
            splice(&doc, &report, Mode::Same).unwrap(),
            format!("# B\n\n{BEGIN}\nnew\n{END}\n\nanalysis\n")
        );
        // The older sections are never appended: where they go is up to the hand-written text.
        assert!(splice(&doc, "x", Mode::Minimal).is_err());

        let res = format!("{RESILIENCE_BEGIN}\nnew\n{RESILIENCE_END}\n");
        let appended = splice(&doc, &res, Mode::Resilience).unwrap();
        assert_eq!(
            appended,
            format!("{}\n\n## Cost of the resilience features\n\n{}\n", doc.trim_end(), res.trim_end())
        );
        // Once appended, the section is replaced in place like the others.
        let again = format!("{RESILIENCE_BEGIN}\nnewer\n{RESILIENCE_END}\n");
        assert_eq!(
            splice(&appended, &again, Mode::Resilience).unwrap(),
            appended.replace("new\n", "newer\n")
        );
        // Half a pair of markers is a broken file, not a missing section.
        assert!(splice(&format!("{doc}{RESILIENCE_BEGIN}\n"), &res, Mode::Resilience).is_err());

        // The observability section is appended after the others, with its own heading, and then
        // replaced in place without touching the resilience section.
        let obs = format!("{OBSERVABILITY_BEGIN}\nnew\n{OBSERVABILITY_END}\n");
        let both = splice(&appended, &obs, Mode::Observability).unwrap();
        assert_eq!(
            both,
            format!(
                "{}\n\n## Cost of metrics, access logs and tracing\n\n{}\n",
                appended.trim_end(),
                obs.trim_end()
            )
        );
        let again = format!("{OBSERVABILITY_BEGIN}\nnewer\n{OBSERVABILITY_END}\n");
        let replaced = splice(&both, &again, Mode::Observability).unwrap();
        assert_eq!(replaced, both.replace(&obs.trim_end().to_owned(), again.trim_end()));
        assert!(replaced.contains(&res.trim_end().to_owned()));
        assert!(splice(&format!("{doc}{OBSERVABILITY_END}\n"), &obs, Mode::Observability).is_err());

        // So is the mirror section.
        let mirror = format!("{MIRROR_BEGIN}\nnew\n{MIRROR_END}\n");
        let three = splice(&replaced, &mirror, Mode::Mirror).unwrap();
        assert_eq!(
            three,
            format!("{}\n\n## Cost of mirroring\n\n{}\n", replaced.trim_end(), mirror.trim_end())
        );
        // The hand-written analysis after it stays.
        let again = format!("{MIRROR_BEGIN}\nnewer\n{MIRROR_END}\n");
        let again = splice(&format!("{three}\nanalysis\n"), &again, Mode::Mirror).unwrap();
        assert!(again.ends_with(&format!("{MIRROR_BEGIN}\nnewer\n{MIRROR_END}\n\nanalysis\n")), "{again}");
    }
}
