//! `cargo xtask bench`: proxies side by side under wrk on loopback, all in front of the same nginx
//! upstream. Runs are alternated and repeated; medians are written to docs/BENCHMARKS.md between
//! the markers of the comparison's section.
//!
//! Which comparison runs is chosen by one flag; each is a file in `bench/compare/` (the default
//! is nginx and HAProxy against sluice-proxy). What they share: `processes` (starting, measuring
//! and stopping them), `configs`, `wrk`, `admin` (reading sluice-proxy's admin listener) and
//! `report`.

mod admin;
mod compare;
mod configs;
mod processes;
mod receiver;
mod report;
mod shadow;
mod wrk;

use std::time::{Duration, Instant};

use anyhow::ensure;

use self::compare::{Comparison, Start, Target};
use self::processes::{Procs, TICKS_PER_SECOND, cpu_ticks, nginx, peak_rss, rss_tree, wait_port};
use self::report::Results;
use self::wrk::{Run, wrk_url};
use crate::{build_proxy, root};

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
    /// `--minimal`, `--resilience`, …: one flag per comparison (`compare::ALL`).
    #[command(flatten)]
    which: compare::Which,
    /// Data-plane streams for --fanout.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    (args.which.entry().run)(&args)
}

/// Runs comparison `c`: starts the upstream and the targets, checks each answers, runs wrk
/// `args.rounds` times per scenario and target in rotating order, then reports.
fn side_by_side(mut c: impl Comparison, args: &Args) -> anyhow::Result<()> {
    processes::ensure_tools(args.install, c.tools())?;
    processes::ensure_ports_free(&compare::ports(&c))?;
    let pins = c.pinned();
    let workers = if pins.is_some() { 1 } else { args.workers };
    if pins.is_some() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ensure!(cores >= 2, "the pinned method needs two CPUs; this machine has {cores}");
        processes::ensure_tools(false, &["taskset"])?;
    }
    let load_cpu = pins.map(|p| p.load);
    let sluice_bin = build_proxy("release")?;
    let dir = root().join("target/bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/1m"), vec![b'x'; 1 << 20])?;

    // `c` outlives `procs`: its in-process servers stop after the proxies that use them.
    c.prepare()?;
    let mut procs = Procs::new(dir.clone());
    procs.cpu = load_cpu;
    let upstream_conf = configs::upstream_conf(&dir, workers, c.upstream_ports());
    let upstream = procs.spawn("upstream nginx", nginx(&dir, "upstream", &upstream_conf)?)?;
    procs.cpu = pins.map(|p| p.proxy);
    let with = Start { sluice_bin: &sluice_bin, workers, upstream };
    let targets: Vec<Target> = c.targets().to_vec();
    let pids = c.start(&mut procs, &with)?;
    ensure!(pids.len() == targets.len(), "{} processes started for {} targets", pids.len(), targets.len());

    let mut served = vec![0u64; targets.len()];
    for (ti, t) in targets.iter().enumerate() {
        wait_port(t.port, &mut procs)?;
        for s in c.scenarios() {
            let check = wrk_url(&t.url(s.path), 1, 1, load_cpu, s.close, c.headers())?;
            ensure!(
                check.errors == 0 && check.rps > 0.0,
                "{} answers {} with errors: {check:?}",
                t.name,
                s.path
            );
            served[ti] += check.requests;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss: Vec<u64> = pids.iter().map(|p| rss_tree(*p)).collect();

    // runs[scenario][target]
    let mut runs = vec![vec![Vec::<Run>::new(); targets.len()]; c.scenarios().len()];
    let width = targets.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let started_at = Instant::now();
    for round in 0..args.rounds {
        for (si, s) in c.scenarios().iter().enumerate() {
            for k in 0..targets.len() {
                let ti = (k + round) % targets.len();
                let t = targets[ti];
                let before = cpu_ticks(pids[ti]);
                let mut r =
                    wrk_url(&t.url(s.path), s.connections, args.duration, load_cpu, s.close, c.headers())?;
                let ticks = cpu_ticks(pids[ti]).saturating_sub(before);
                r.cpu_us = ticks as f64 * 1e6 / TICKS_PER_SECOND / (r.rps * args.duration as f64).max(1.0);
                r.rss = rss_tree(pids[ti]);
                println!(
                    "round {}/{}  {:<32} {:<width$} {:>10.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  cpu {:>6.1} us/req  rss {:>5.1} MiB{}",
                    round + 1,
                    args.rounds,
                    s.name,
                    t.name,
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
    c.after_runs(&targets);
    std::thread::sleep(Duration::from_secs(2));
    let after_rss = pids.iter().map(|p| rss_tree(*p)).collect();
    let peak_rss = pids.iter().map(|p| peak_rss(*p)).collect();
    let others_rss = procs.children.iter().map(|(n, c)| (*n, rss_tree(c.id()))).collect();
    c.after_memory(&mut procs, &targets, &pids);

    let results = Results { targets, runs, served, idle_rss, after_rss, peak_rss, others_rss, took };
    let report = report::render(&c, args, &results);
    println!("\n{report}");
    if !args.no_write {
        report::write(&report, c.section())?;
        println!("wrote docs/BENCHMARKS.md");
    }
    Ok(())
}
