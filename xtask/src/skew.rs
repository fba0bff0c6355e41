//! `cargo xtask skew`: a fleet across the protocol change of signed-bundle freshness. The
//! previous release (the commit before the change, built from git into `target/skew`) on one
//! side, this tree on the other:
//!
//! - a previous data plane on this control plane: it takes versions (it ignores statements and
//!   settings it does not know), serves them, and is SYNCED;
//! - this data plane on a previous control plane: it takes versions with no freshness statement
//!   (they do not require one) by their own `expires_at`, and serves them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use sluice_bundle::sign::SigningKey;

use crate::demo::{Procs, fresh_database, get, wait_port, wait_ready};
use crate::{build, root, upstream};

/// The last commit before freshness statements, signature sets and stream settings.
pub const PREVIOUS: &str = "693426ddf020f242697ffb2489310afc6c6dbb00";

#[derive(clap::Args)]
pub struct Args {
    /// The previous release to build (a commit, tag or branch).
    #[arg(long, default_value = PREVIOUS)]
    previous: String,
}

const UPSTREAM: &str = "127.0.0.1:9121";

pub fn run(args: Args) -> anyhow::Result<()> {
    let old = build_previous(&args.previous)?;
    let new = build("dev", &["sluice-data-plane", "sluice-control-plane", "sluice-cli"])?;
    let dir = root().join("target/skew/run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        upstream::spawn("skew-upstream", UPSTREAM.parse()?).await?;
        let mut procs = Procs::new(true);
        let outcome = async {
            scenario(&dir.join("a"), &new, &old, &new, "previous data plane, this control plane", &mut procs)
                .await?;
            procs.stop();
            scenario(&dir.join("b"), &old, &new, &new, "this data plane, previous control plane", &mut procs)
                .await
        }
        .await;
        procs.stop();
        outcome
    })?;
    println!(
        "skew check passed: previous data plane with this control plane, this data plane with the previous control plane"
    );
    Ok(())
}

/// The previous release's binaries: a git worktree at `rev` under target/skew, built there.
fn build_previous(rev: &str) -> anyhow::Result<PathBuf> {
    let base = root().join("target/skew");
    let src = base.join("src");
    let git = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Command::new("git").current_dir(root()).args(args).output().context("running git")
    };
    let commit = git(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")])?;
    if !commit.status.success() {
        bail!(
            "{rev} is not in this clone (a shallow clone? `git fetch --unshallow`); the skew check needs the previous release's source"
        );
    }
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_owned();
    let head = Command::new("git").current_dir(&src).args(["rev-parse", "HEAD"]).output();
    if !head.is_ok_and(|h| h.status.success() && String::from_utf8_lossy(&h.stdout).trim() == commit) {
        let _ = git(&["worktree", "remove", "--force", src.to_str().context("path")?]);
        let _ = std::fs::remove_dir_all(&src);
        let added = git(&["worktree", "add", "--detach", src.to_str().context("path")?, &commit])?;
        ensure!(added.status.success(), "git worktree add: {}", String::from_utf8_lossy(&added.stderr));
    }
    eprintln!("building the previous release ({}) in {}", &commit[..12], src.display());
    let status = Command::new(env!("CARGO"))
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", base.join("target"))
        .args([
            "build",
            "--quiet",
            "--locked",
            "--bins",
            "-p",
            "sluice-data-plane",
            "-p",
            "sluice-control-plane",
        ])
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "building the previous release failed");
    Ok(base.join("target/debug"))
}

/// A control plane from `cp_bin`, one data plane from `dp_bin`, `sluice` from `cli_bin`: two
/// versions applied, each served; the data plane SYNCED and never NACKing.
async fn scenario(
    dir: &Path,
    cp_bin: &Path,
    dp_bin: &Path,
    cli_bin: &Path,
    what: &str,
    procs: &mut Procs,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let (database_url, _cluster) = fresh_database("sluice_skew").await?;
    let key = SigningKey::generate()?;
    let (key_file, trusted_file) = (dir.join("signing-key.json"), dir.join("trusted-keys.json"));
    std::fs::write(&key_file, key.to_file())?;
    std::fs::write(&trusted_file, key.trusted_keys().to_file())?;
    let (listen, public, admin) = ("127.0.0.1:7121", "127.0.0.1:8121", "127.0.0.1:9931");
    let mut cp = Command::new(cp_bin.join("sluice-control-plane"));
    cp.args(["--database-url", &database_url, "--listen", listen, "--metrics-listen", "off"])
        .arg("--signing-key")
        .arg(&key_file)
        .arg("--insecure-allow-anonymous");
    procs.spawn("control plane", cp)?;
    wait_port(listen, procs).await?;
    let server = format!("http://{listen}");
    let mut dp = Command::new(dp_bin.join("sluice-proxy"));
    dp.args(["--control-plane", &server, "--fleet", "skew", "--node-id", "skew-1", "--admin-listen", admin])
        .arg("--trusted-keys")
        .arg(&trusted_file)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--listener-address", &format!("public={public}"), "--report-interval", "1s"]);
    procs.spawn("data plane", dp)?;
    let sluice = |args: &[&str]| -> anyhow::Result<(bool, String)> {
        let out = Command::new(cli_bin.join("sluice"))
            .args(["--server", &server, "--fleet", "skew"])
            .args(args)
            .env_remove("SLUICE_TOKEN")
            .output()
            .context("running sluice")?;
        Ok((
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        ))
    };
    for (version, prefix) in [(1, "/one"), (2, "/two")] {
        let config = dir.join(format!("v{version}.yaml"));
        std::fs::write(
            &config,
            format!(
                "listeners: [{{name: public, address: '127.0.0.1:8080'}}]\npools: [{{name: up, endpoints: [{{address: '{UPSTREAM}'}}]}}]\nroutes: [{{name: r, match: {{path_prefix: {prefix}}}, pool: up}}]\n"
            ),
        )?;
        let (ok, text) =
            sluice(&["apply", "-f", config.to_str().context("path")?, "-m", &format!("v{version}")])?;
        ensure!(ok, "{what}: apply v{version}: {text}");
        wait_ready(admin, procs).await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) =
                get(&format!("http://{public}{prefix}"), None).await.unwrap_or((0, String::new()));
            if status == 200 && body.contains("skew-upstream") {
                break;
            }
            procs.check_alive()?;
            ensure!(Instant::now() < deadline, "{what}: v{version} is not served ({status} {body})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The control plane agrees: the data plane is in sync and never refused anything.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, text) = sluice(&["dataplanes", "-o", "json"])?;
        let planes: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let p = &planes[0];
        if ok && p["state"] == "SYNCED" && p["active_version"] == 2 {
            ensure!(p["last_nack_version"] == 0, "{what}: a NACK: {text}");
            break;
        }
        ensure!(Instant::now() < deadline, "{what}: not SYNCED on version 2: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    procs.stop();
    println!("skew: {what}: two versions applied, served, SYNCED, no NACK");
    Ok(())
}
