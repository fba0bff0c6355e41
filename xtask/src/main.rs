//! Project tasks, in Rust rather than shell: `cargo xtask demo` runs the proxy in front of demo
//! upstreams; `cargo xtask bench` measures it against nginx and HAProxy.

#![allow(clippy::print_stdout)]

mod bench;
mod demo;
mod upstream;

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
