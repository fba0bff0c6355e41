//! Project tasks, in Rust rather than shell: `cargo xtask demo` runs the proxy in front of demo
//! upstreams; `cargo xtask bench` measures it against nginx and HAProxy; `cargo xtask fuzz` runs
//! the fuzz targets; `cargo xtask skew` checks version skew; `cargo xtask cache-tests` runs the
//! http-cache-tests suite against its HTTP cache.

#![allow(clippy::print_stdout)]

mod bench;
mod cache_tests;
mod demo;
mod fuzz;
#[path = "../../tests/src/pg.rs"]
mod pg;
mod skew;
mod upstream;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// A local fleet (control plane, two data planes, demo upstreams, examples/demo.yaml applied).
    Demo(demo::Args),
    /// Benchmark sluice-proxy against nginx and HAProxy with wrk; writes docs/BENCHMARKS.md.
    Bench(bench::Args),
    /// Fuzz the cargo-fuzz targets of fuzz/ (nightly) from their seed corpora, N seconds each;
    /// fails if any crashes.
    Fuzz(fuzz::Args),
    /// The PostgreSQL the tests use: `DATABASE_URL` (or 127.0.0.1:5432) when it answers, else a
    /// private cluster under target/pg, started and left running. Writes `DATABASE_URL=…` to
    /// `$NEXTEST_ENV` (nextest's setup script) or stdout.
    PgEnv,
    /// Stop the private cluster under target/pg.
    PgStop,
    /// Version skew: the previous release's data plane against this control plane, and this
    /// data plane against the previous control plane (built from git into target/skew).
    Skew(skew::Args),
    /// The HTTP cache of sluice-proxy (release) under the http-cache-tests suite (npm, pinned;
    /// installed into target/cache-tests), optionally beside nginx's proxy_cache; fails above
    /// `--max-required-failures` required failures.
    CacheTests(cache_tests::Args),
    /// Serve demo upstreams only (what `demo` runs in front of the proxy).
    Upstreams {
        /// `name=ip:port`, repeatable.
        #[arg(long = "upstream", value_name = "NAME=ADDR", required = true)]
        upstreams: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Demo(args) => demo::run(args),
        Task::Bench(args) => bench::run(args),
        Task::Fuzz(args) => fuzz::run(args),
        Task::Skew(args) => skew::run(args),
        Task::CacheTests(args) => cache_tests::run(args),
        Task::PgEnv => {
            let url = database_url()?;
            let line = format!("DATABASE_URL={url}\n");
            match std::env::var_os("NEXTEST_ENV") {
                Some(file) => std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(file)?
                    .write_all(line.as_bytes())?,
                None => print!("{line}"),
            }
            Ok(())
        }
        Task::PgStop => {
            let cluster =
                pg::Cluster::ensure(&root().join("target/pg"), &[], &[]).map_err(anyhow::Error::msg)?;
            cluster.stop().map_err(anyhow::Error::msg)
        }
        Task::Upstreams { upstreams } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                for u in &upstreams {
                    let (name, addr) = u.split_once('=').context("--upstream takes NAME=ADDR")?;
                    upstream::spawn(name, addr.parse()?).await?;
                    println!("upstream {name} on http://{addr}");
                }
                tokio::signal::ctrl_c().await?;
                Ok(())
            })
        }
    }
}

/// A PostgreSQL URL that answers: `DATABASE_URL` or the default local server, else a private
/// cluster under target/pg (made, or started, and left running; a lock keeps two runs from
/// racing to make it).
fn database_url() -> anyhow::Result<String> {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    if answers(&url) {
        return Ok(url);
    }
    let dir = root().join("target/pg");
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::File::create(root().join("target/pg.lock"))?;
    lock.lock()?;
    let cluster = pg::Cluster::ensure(&dir, &[], &[]).map_err(anyhow::Error::msg)?;
    eprintln!(
        "nothing answers at {url}: using the private PostgreSQL at {} ({})",
        cluster.url(),
        dir.display()
    );
    Ok(cluster.url())
}

/// The server the README's commands expect by default.
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Whether the host and port of a PostgreSQL URL accept connections.
fn answers(url: &str) -> bool {
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else { return false };
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split(['/', '?']).next().unwrap_or_default();
    let hostport = if hostport.contains(':') { hostport.to_owned() } else { format!("{hostport}:5432") };
    std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .into_iter()
        .flatten()
        .any(|a| std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_millis(500)).is_ok())
}

/// The workspace root (xtask's parent directory).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// Builds `sluice-proxy` with `profile` and returns the binary's path.
fn build_proxy(profile: &str) -> anyhow::Result<PathBuf> {
    Ok(build(profile, &["sluice-data-plane"])?.join("sluice-proxy"))
}

/// Builds the binaries of `packages` with `profile`; returns the directory they are in.
fn build(profile: &str, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root()).args(["build", "--quiet", "--profile", profile, "--bins"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    let dir = if profile == "dev" { "debug" } else { profile };
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"));
    Ok(target.join(dir))
}
