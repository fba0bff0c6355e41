//! `cargo xtask demo`: a local fleet. PostgreSQL (the local server, started if it is installed
//! but down), a control plane, two data planes, three demo upstreams, and `examples/demo.yaml`
//! applied as version 1. `--standalone` runs one proxy on the file instead, with no database.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sluice_bundle::sign::SigningKey;
use sqlx::Connection;

use crate::{build, root, upstream};

const UPSTREAMS: [(&str, &str); 3] =
    [("users-v1-a", "127.0.0.1:9001"), ("users-v1-b", "127.0.0.1:9002"), ("users-v2", "127.0.0.1:9003")];
const CONTROL_PLANE: &str = "127.0.0.1:7001";
const FLEET: &str = "demo";
/// `(node, listener address, admin address)` of each data plane.
const NODES: [(&str, &str, &str); 2] =
    [("node-1", "127.0.0.1:8080", "127.0.0.1:9901"), ("node-2", "127.0.0.1:8081", "127.0.0.1:9902")];
const DEMO_DB: &str = "sluice_demo";

#[derive(clap::Args)]
pub struct Args {
    /// Build and run the release profile.
    #[arg(long)]
    release: bool,
    /// Start everything, check it as a user would, stop, and exit non-zero on any surprise (CI).
    #[arg(long)]
    check: bool,
    /// One proxy on examples/demo.yaml, no control plane or database.
    #[arg(long)]
    standalone: bool,
    /// Against the demo fleet running in another terminal: roll out a bad version with
    /// examples/rollout.yaml and watch it roll back by itself, then a good one that completes.
    #[arg(long, conflicts_with_all = ["standalone", "check"])]
    rollouts: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let bin = build(
        if args.release { "release" } else { "dev" },
        &["sluice-data-plane", "sluice-control-plane", "sluice-cli"],
    )?;
    let dir = root().join("target").join("demo");
    if args.rollouts {
        let rt = tokio::runtime::Runtime::new()?;
        return rt.block_on(rollouts(&bin, &dir, true));
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("sluice.yaml");
    std::fs::copy(root().join("examples/demo.yaml"), &config).context("copying examples/demo.yaml")?;

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        for (name, addr) in UPSTREAMS {
            upstream::spawn(name, addr.parse()?).await?;
        }
        let mut procs = Procs { children: Vec::new(), quiet: args.check };
        let outcome = if args.standalone {
            standalone(&bin, &config, &mut procs, args.check).await
        } else {
            fleet(&bin, &dir, &config, &mut procs, args.check).await
        };
        procs.stop();
        outcome
    })
}

async fn standalone(bin: &Path, config: &Path, procs: &mut Procs, check: bool) -> anyhow::Result<()> {
    let (_, listen, admin) = NODES[0];
    let mut cmd = Command::new(bin.join("sluice-proxy"));
    cmd.arg("--config-file").arg(config).args(["--admin-listen", admin]);
    procs.spawn("sluice-proxy", cmd)?;
    wait_ready(admin, procs).await?;
    if check {
        check_routing(listen).await?;
        check_metrics(admin).await?;
        println!("standalone demo check passed");
        return Ok(());
    }
    println!(
        "\nSluice (standalone) is running.\n\n  proxy   http://{listen}\n  admin   http://{admin}/config\n  config  {}  (edit it, or `kill -HUP` the proxy, to reload)\n",
        config.display()
    );
    print_curls(listen, admin);
    println!("Ctrl-C stops everything.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// The development PKI under `dir/pki` (`sluice certs init`): TLS for the control plane, a
/// certificate per data plane, an operator token and the policy that makes it admin.
fn pki(bin: &Path, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let pki = dir.join("pki");
    let mut cmd = Command::new(bin.join("sluice"));
    cmd.args(["--fleet", FLEET, "certs", "init", "--out"]).arg(&pki);
    for (node, _, _) in NODES {
        cmd.args(["--node", node]);
    }
    let out = cmd.output().context("running sluice certs init")?;
    ensure!(out.status.success(), "sluice certs init: {}", String::from_utf8_lossy(&out.stderr));
    Ok(pki)
}

/// `sluice` against the demo's control plane, with the demo operator's token and CA.
fn sluice_command(bin: &Path, dir: &Path) -> Command {
    let pki = dir.join("pki");
    let mut cmd = Command::new(bin.join("sluice"));
    cmd.args(["--server", &format!("https://{CONTROL_PLANE}"), "--fleet", FLEET])
        .env("SLUICE_CA_FILE", pki.join("ca.crt"))
        .env("SLUICE_TOKEN_FILE", pki.join("operator.token"))
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_CERT")
        .env_remove("SLUICE_KEY");
    cmd
}

async fn fleet(bin: &Path, dir: &Path, config: &Path, procs: &mut Procs, check: bool) -> anyhow::Result<()> {
    let (database_url, private) = demo_database().await?;
    let outcome = run_fleet(bin, dir, config, procs, check, &database_url).await;
    if let Some(cluster) = private {
        procs.stop();
        if let Err(e) = cluster.stop() {
            eprintln!("cannot stop the private PostgreSQL: {e}");
        }
    }
    outcome
}

async fn run_fleet(
    bin: &Path,
    dir: &Path,
    config: &Path,
    procs: &mut Procs,
    check: bool,
    database_url: &str,
) -> anyhow::Result<()> {
    let key = SigningKey::generate()?;
    let (key_file, trusted_file) = (dir.join("signing-key.json"), dir.join("trusted-keys.json"));
    std::fs::write(&key_file, key.to_file())?;
    std::fs::write(&trusted_file, key.trusted_keys().to_file())?;
    let pki = pki(bin, dir)?;

    let mut cp = Command::new(bin.join("sluice-control-plane"));
    cp.args(["--database-url", database_url, "--listen", CONTROL_PLANE])
        .arg("--signing-key")
        .arg(&key_file)
        .arg("--tls-cert")
        .arg(pki.join("control-plane.crt"))
        .arg("--tls-key")
        .arg(pki.join("control-plane.key"))
        .arg("--client-ca")
        .arg(pki.join("ca.crt"))
        .arg("--policy-file")
        .arg(pki.join("policy.yaml"));
    procs.spawn("control plane", cp)?;
    let server = format!("https://{CONTROL_PLANE}");
    wait_port(CONTROL_PLANE, procs).await?;
    for (node, listen, admin) in NODES {
        let mut dp = Command::new(bin.join("sluice-proxy"));
        dp.args(["--control-plane", &server, "--fleet", FLEET, "--node-id", node, "--admin-listen", admin])
            .arg("--trusted-keys")
            .arg(&trusted_file)
            .arg("--state-dir")
            .arg(dir.join(node))
            .arg("--ca-file")
            .arg(pki.join("ca.crt"))
            .arg("--cert")
            .arg(pki.join(format!("data-plane-{node}.crt")))
            .arg("--key")
            .arg(pki.join(format!("data-plane-{node}.key")))
            .args(["--listener-address", &format!("public={listen}"), "--label", "demo=true"])
            .args(["--report-interval", "2s"]);
        procs.spawn(node, dp)?;
    }
    let sluice = |args: &[&str]| -> anyhow::Result<(bool, String)> {
        let out = sluice_command(bin, dir).args(args).output().context("running sluice")?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), text))
    };
    let config_arg = config.to_str().context("path")?;
    let (ok, text) = sluice(&["apply", "-f", config_arg, "-m", "demo: first version"])?;
    ensure!(ok, "sluice apply failed: {text}");
    for (_, _, admin) in NODES {
        wait_ready(admin, procs).await?;
    }

    if check {
        for (_, listen, admin) in NODES {
            check_routing(listen).await?;
            check_metrics(admin).await?;
        }
        // Without the token, nothing is read or changed (exit 7).
        let out = sluice_command(bin, dir).env_remove("SLUICE_TOKEN_FILE").arg("history").output()?;
        ensure!(out.status.code() == Some(7), "a call without a token should be refused: {out:?}");
        // An edit goes out to both data planes within a second.
        let edited = std::fs::read_to_string(config)?.replace("path_prefix: /v3", "path_prefix: /v3-moved");
        std::fs::write(config, edited)?;
        let (ok, text) = sluice(&["diff", "-f", config_arg])?;
        ensure!(!ok && text.contains("/v3-moved"), "sluice diff should report the change: {text}");
        let (ok, text) = sluice(&["apply", "-f", config_arg, "-m", "demo: move v3"])?;
        ensure!(ok, "second apply failed: {text}");
        let started = Instant::now();
        for (_, listen, _) in NODES {
            let url = format!("http://{listen}/v3-moved");
            while get(&url, Some("api.example.com")).await?.0 != 502 {
                ensure!(started.elapsed() < Duration::from_secs(1), "v2 did not reach {listen} within 1s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let (ok, text) = sluice(&["dataplanes"])?;
        ensure!(ok && text.matches("SYNCED").count() == 2, "dataplanes: {text}");
        // Mirrored traffic reaches the control plane's report, the one differing field named.
        for (_, listen, _) in NODES {
            for _ in 0..5 {
                let (status, _) = get(&format!("http://{listen}/orders/7"), Some("api.example.com")).await?;
                ensure!(status == 200, "/orders on {listen}: {status}");
            }
        }
        let started = Instant::now();
        loop {
            let (ok, text) = sluice(&["shadow", "report", "--route", "orders", "-o", "json"])?;
            let json: Value = serde_json::from_str(&text).unwrap_or_default();
            let route = &json["routes"][0];
            if ok && route["compared"] == 10 {
                let fields: Vec<&str> = route["fields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f["field"].as_str())
                    .collect();
                ensure!(fields == ["/upstream"], "shadow report fields: {text}");
                break;
            }
            ensure!(started.elapsed() < Duration::from_secs(15), "shadow report: {text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (ok, text) = sluice(&["rollback", "--to", "1"])?;
        ensure!(ok && text.contains("version 3 stored"), "rollback: {text}");
        rollouts(bin, dir, false).await?;
        let (ok, text) = sluice(&["audit"])?;
        ensure!(ok && text.contains("audit chain intact"), "audit: {text}");
        println!(
            "demo check passed: fleet up, routing by host and path, apply in <1s on both nodes, diff, dataplanes, shadow report, rollback, a bad rollout rolled back and a good one completed, audit"
        );
        return Ok(());
    }

    let sluice_bin = bin.join("sluice");
    println!(
        "\nA Sluice fleet is running, its control channel on TLS with client certificates.\n\n\
         \x20 control plane  https://{CONTROL_PLANE}   (database {database_url})\n\
         \x20 credentials    {}   (CA, certificates, the operator token, policy.yaml)\n\
         \x20 data planes    node-1 http://{} (admin http://{}/config), node-2 http://{} (admin http://{}/config)\n\
         \x20 upstreams      127.0.0.1:9001-9003\n\
         \x20 fleet          {FLEET}, version 1 from {}\n",
        pki.display(),
        NODES[0].1,
        NODES[0].2,
        NODES[1].1,
        NODES[1].2,
        config.display()
    );
    print_curls(NODES[0].1, NODES[0].2);
    println!(
        "Drive it with sluice:\n\n\
         \x20 export SLUICE_SERVER=https://{CONTROL_PLANE} SLUICE_FLEET={FLEET}\n\
         \x20 export SLUICE_CA_FILE={} SLUICE_TOKEN_FILE={}\n\
         \x20 alias sluice={}\n\
         \x20 sluice dataplanes                            # SYNCED / STALE / NACKED per node\n\
         \x20 $EDITOR {}    # change something, then:\n\
         \x20 sluice diff -f {}\n\
         \x20 sluice apply -f {} -m 'my change'\n\
         \x20 sluice history\n\
         \x20 sluice shadow report                         # /orders is mirrored to users-v2: what differs\n\
         \x20 sluice canary report                         # /catalog: a 20% canary, per variant\n\
         \x20 sluice rollback --to 1\n\
         \x20 sluice audit\n\n\
         To see a bundle refused (signed by an untrusted key), follow README.md, Quick start.\n\n\
         Ctrl-C stops everything.",
        pki.join("ca.crt").display(),
        pki.join("operator.token").display(),
        sluice_bin.display(),
        config.display(),
        config.display(),
        config.display()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// The scripted rollouts, against the running demo fleet, with traffic on both data planes: a
/// version that sends `/users` to a port nothing listens on is rolled back at its first step; one
/// that sends it to users-v2 completes. `show`: the watch and the audit print to the terminal.
async fn rollouts(bin: &Path, dir: &Path, show: bool) -> anyhow::Result<()> {
    let demo = std::fs::read_to_string(root().join("examples/demo.yaml"))?;
    let users = "    pool: users-v1\n    timeout: 3s";
    ensure!(demo.contains(users), "examples/demo.yaml: the users route changed; update the rollout script");
    let (bad, good) = (dir.join("rollout-bad.yaml"), dir.join("rollout-good.yaml"));
    std::fs::create_dir_all(dir)?;
    std::fs::write(&bad, demo.replace(users, "    pool: users-v3\n    timeout: 3s"))?;
    std::fs::write(&good, demo.replace(users, "    pool: users-v2\n    timeout: 3s"))?;
    let strategy = root().join("examples/rollout.yaml");
    let sluice = |args: &[&str], show: bool| -> anyhow::Result<(i32, String)> {
        let mut cmd = sluice_command(bin, dir);
        cmd.args(args);
        if show {
            let status = cmd.status().context("running sluice")?;
            return Ok((status.code().unwrap_or(-1), String::new()));
        }
        let out = cmd.output().context("running sluice")?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.code().unwrap_or(-1), text))
    };
    let say = |line: &str| {
        if show {
            println!("\n== {line}");
        }
    };

    // Steady traffic on both data planes: the gates judge what the moved node serves.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for (_, listen, _) in NODES {
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = get(&format!("http://{listen}/users/42"), Some("api.example.com")).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let outcome = async {
        for (file, what, expect) in [
            (&bad, "a bad version (/users to a dead port)", 1),
            (&good, "a good version (/users to users-v2)", 0),
        ] {
            say(&format!("sluice apply -f {} --rollout examples/rollout.yaml   # {what}", file.display()));
            let (code, text) = sluice(
                &[
                    "apply",
                    "-f",
                    file.to_str().context("path")?,
                    "--rollout",
                    strategy.to_str().context("path")?,
                    "-m",
                    what,
                ],
                show,
            )?;
            ensure!(code == 0, "apply with a rollout: {text}");
            say("sluice rollout status --watch --timeout 2m");
            let (code, text) = sluice(&["rollout", "status", "--watch", "--timeout", "2m"], show)?;
            ensure!(code == expect, "rollout of {what}: exit {code}, expected {expect}: {text}");
            if !show {
                let last = text.lines().rev().find(|l| l.contains("rollout ")).unwrap_or_default();
                let outcome = if expect == 0 { "succeeded" } else { "failed" };
                ensure!(last.contains(outcome), "rollout of {what} should have {outcome}: {text}");
            }
            if expect == 1 {
                say("sluice audit --limit 5   # the gate, the rollback and the failure, with the numbers");
                let (code, text) = sluice(&["audit", "--limit", "5"], show)?;
                ensure!(code == 0, "audit: {text}");
                ensure!(show || text.contains("error rate"), "the audit should say why: {text}");
            }
        }
        anyhow::Ok(())
    }
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in load {
        let _ = l.await;
    }
    outcome
}

fn print_curls(listen: &str, admin: &str) {
    println!(
        "Try:\n\
         \x20 curl -si -H 'Host: api.example.com' http://{listen}/users/42            # users-v1, alternating a/b\n\
         \x20 curl -si -H 'Host: api.example.com' -H 'X-Cohort: beta' http://{listen}/users/42   # users-v2\n\
         \x20 curl -si -H 'Host: www.example.com' http://{listen}/                     # users-v2 via *.example.com\n\
         \x20 curl -si http://{listen}/                                                # 404 JSON with request id\n\
         \x20 curl -si -H 'Host: api.example.com' http://{listen}/v3                   # 502: nothing on 9004\n\
         \x20 curl -si -H 'Host: api.example.com' http://{listen}/users/slow/5000      # 504 after the route's 3s\n\
         \x20 curl -si -H 'Host: api.example.com' http://{listen}/orders/7             # users-v1 answers; users-v2 gets a copy\n\
         \x20 curl -si -H 'Host: api.example.com' -b user=ann http://{listen}/catalog  # ann stays on one variant\n\n\
         Each request prints its access-log line (JSON) here. Metrics: curl -s http://{admin}/metrics\n\
         Shadow and canary figures: curl -s http://{admin}/shadow, curl -s http://{admin}/canary\n"
    );
}

/// The demo database, made fresh: on the server `DATABASE_URL` names or the local one, else on a
/// private cluster under target/pg, which the demo stops when it ends.
async fn demo_database() -> anyhow::Result<(String, Option<crate::pg::Cluster>)> {
    fresh_database(DEMO_DB).await
}

/// A fresh database `name`, on the server the demo uses (see [`demo_database`]).
pub(crate) async fn fresh_database(name: &str) -> anyhow::Result<(String, Option<crate::pg::Cluster>)> {
    let wanted = std::env::var("DATABASE_URL").unwrap_or_else(|_| crate::DEFAULT_DATABASE_URL.into());
    let (admin_url, private) = if crate::answers(&wanted) {
        (wanted, None)
    } else {
        let dir = root().join("target/pg");
        std::fs::create_dir_all(&dir)?;
        let lock = std::fs::File::create(root().join("target/pg.lock"))?;
        lock.lock()?;
        let cluster = crate::pg::Cluster::ensure(&dir, &[], &[]).map_err(|e| {
            anyhow::anyhow!(
                "nothing answers at {wanted}, and no private PostgreSQL could be started: {e}\n\
                 `cargo xtask demo --standalone` runs the proxy alone, with no database."
            )
        })?;
        eprintln!("nothing answers at {wanted}: started a private PostgreSQL at {}", cluster.url());
        (cluster.url(), Some(cluster))
    };
    let mut conn = sqlx::PgConnection::connect(&admin_url)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {admin_url}"))?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
        .execute(&mut conn)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
    let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b);
    Ok((format!("{base}/{name}"), private))
}

/// Children started for the demo, stopped (by pid) when it ends.
pub(crate) struct Procs {
    children: Vec<(&'static str, Child)>,
    quiet: bool,
}

impl Procs {
    pub(crate) fn new(quiet: bool) -> Self {
        Self { children: Vec::new(), quiet }
    }

    pub(crate) fn spawn(&mut self, name: &'static str, mut cmd: Command) -> anyhow::Result<()> {
        let child = cmd
            .stdout(if self.quiet { Stdio::null() } else { Stdio::inherit() })
            .stderr(if self.quiet { Stdio::null() } else { Stdio::inherit() })
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name, child));
        Ok(())
    }

    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{name} exited ({status}); is one of the demo's ports (7001, 8080-8081, 9001-9003, 9901-9902) in use?"
                );
            }
        }
        Ok(())
    }

    pub(crate) fn stop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
        for (_, c) in &mut self.children {
            let _ = c.wait();
        }
        // Waited for: never signalled again (their pids may be reused).
        self.children.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
        }
    }
}

pub(crate) async fn wait_port(addr: &str, procs: &mut Procs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        procs.check_alive()?;
        ensure!(Instant::now() < deadline, "nothing listening on {addr} after 30s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

pub(crate) async fn wait_ready(admin: &str, procs: &mut Procs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = get(&format!("http://{admin}/readyz"), None).await {
            return Ok(());
        }
        procs.check_alive()?;
        ensure!(Instant::now() < deadline, "the data plane with admin {admin} is not ready after 30s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The traffic `check_routing` sent shows in the data plane's metrics (2 × 200 on `users`, one
/// 502 on `users-v3`; a response is counted when it is done, a moment after the client has it).
async fn check_metrics(admin: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let wanted = [
        r#"sluice_requests_total{route="users",pool="users-v1",status_class="2xx"} 2"#,
        r#"sluice_requests_total{route="users-v3",pool="users-v3",status_class="5xx"} 1"#,
    ];
    loop {
        let (status, text) = get(&format!("http://{admin}/metrics"), None).await?;
        ensure!(status == 200, "{admin}/metrics: {status}");
        if wanted.iter().all(|w| text.lines().any(|l| l == *w)) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{admin}/metrics lacks {wanted:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a user would try first, asserted.
async fn check_routing(listen: &str) -> anyhow::Result<()> {
    let proxy = format!("http://{listen}");
    let upstream_of = |body: &str| -> String {
        serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["upstream"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (status, body) = get(&format!("{proxy}/users/42"), Some("api.example.com")).await?;
        ensure!(status == 200, "{listen} /users/42: {status} {body}");
        seen.push(upstream_of(&body));
    }
    seen.sort();
    ensure!(seen == ["users-v1-a", "users-v1-b"], "round robin over users-v1 on {listen}: {seen:?}");
    let (status, body) = get(&format!("{proxy}/anything"), Some("www.example.com")).await?;
    ensure!(status == 200 && upstream_of(&body) == "users-v2", "*.example.com on {listen}: {status} {body}");
    let (status, body) = get(&format!("{proxy}/"), None).await?;
    let json: Value = serde_json::from_str(&body).unwrap_or_default();
    ensure!(
        status == 404 && json["category"] == "no_route" && json["request_id"].is_string(),
        "no route: {status} {body}"
    );
    let (status, body) = get(&format!("{proxy}/v3"), Some("api.example.com")).await?;
    ensure!(status == 502 && body.contains("connect_failure"), "down upstream: {status} {body}");
    Ok(())
}

pub(crate) async fn get(url: &str, host: Option<&str>) -> anyhow::Result<(u16, String)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = http::Request::get(url);
    if let Some(h) = host {
        req = req.header("host", h);
    }
    let resp =
        tokio::time::timeout(Duration::from_secs(10), client.request(req.body(Empty::new())?)).await??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
