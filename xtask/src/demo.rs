//! `cargo xtask demo`: the proxy on examples/demo.yaml in front of three demo upstreams.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::{build_proxy, root, upstream};

const UPSTREAMS: [(&str, &str); 3] =
    [("users-v1-a", "127.0.0.1:9001"), ("users-v1-b", "127.0.0.1:9002"), ("users-v2", "127.0.0.1:9003")];
const PROXY: &str = "127.0.0.1:8080";
const ADMIN: &str = "127.0.0.1:9901";

#[derive(clap::Args)]
pub struct Args {
    /// Build and run the release profile.
    #[arg(long)]
    release: bool,
    /// Start everything, check requests through the proxy, stop, and exit non-zero on any
    /// surprise (what CI runs).
    #[arg(long)]
    check: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let proxy_bin = build_proxy(if args.release { "release" } else { "dev" })?;
    let dir = root().join("target").join("demo");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("sluice.yaml");
    std::fs::copy(root().join("examples/demo.yaml"), &config).context("copying examples/demo.yaml")?;

    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        for (name, addr) in UPSTREAMS {
            upstream::spawn(name, addr.parse()?).await?;
        }
        let mut proxy = Proxy::start(&proxy_bin, &config, args.check)?;
        wait_ready(&mut proxy.child).await?;
        let outcome = if args.check { check().await } else { interactive(&config).await };
        proxy.stop();
        outcome
    })
}

struct Proxy {
    child: Child,
}

impl Proxy {
    fn start(bin: &Path, config: &Path, quiet: bool) -> anyhow::Result<Self> {
        let child = Command::new(bin)
            .arg("--config-file")
            .arg(config)
            .args(["--admin-listen", ADMIN])
            .stderr(if quiet { Stdio::null() } else { Stdio::inherit() })
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self { child })
    }

    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

async fn wait_ready(child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = get(&format!("http://{ADMIN}/readyz"), None).await {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "sluice-proxy exited ({status}) before becoming ready; is port 8080, 9901 or 9001-9003 in use?"
            );
        }
        ensure!(Instant::now() < deadline, "sluice-proxy not ready after 20s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn interactive(config: &Path) -> anyhow::Result<()> {
    println!(
        "\n\
         Sluice demo is running.\n\
         \n  proxy   http://{PROXY}\n  admin   http://{ADMIN}/config\n  config  {}  (edit it, or `kill -HUP` the proxy, to reload)\n\
         \nTry:\n\
         \x20 curl -si -H 'Host: api.example.com' http://{PROXY}/users/42            # users-v1, alternating a/b\n\
         \x20 curl -si -H 'Host: api.example.com' -H 'X-Cohort: beta' http://{PROXY}/users/42   # users-v2\n\
         \x20 curl -si -H 'Host: www.example.com' http://{PROXY}/                     # users-v2 via *.example.com\n\
         \x20 curl -si http://{PROXY}/                                                # 404 JSON with request id\n\
         \x20 curl -si -H 'Host: api.example.com' http://{PROXY}/v3                   # 502: nothing on 9004\n\
         \x20 curl -si -H 'Host: api.example.com' http://{PROXY}/users/slow/5000      # 504 after the route's 3s\n\
         \nCtrl-C stops everything.\n",
        config.display()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// What a user would try first, asserted.
async fn check() -> anyhow::Result<()> {
    let proxy = format!("http://{PROXY}");
    let upstream_of = |body: &str| -> String {
        serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["upstream"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (status, body) = get(&format!("{proxy}/users/42"), Some("api.example.com")).await?;
        ensure!(status == 200, "/users/42: {status} {body}");
        seen.push(upstream_of(&body));
    }
    seen.sort();
    ensure!(seen == ["users-v1-a", "users-v1-b"], "round robin over users-v1: {seen:?}");
    let (status, body) = get(&format!("{proxy}/anything"), Some("www.example.com")).await?;
    ensure!(status == 200 && upstream_of(&body) == "users-v2", "*.example.com: {status} {body}");
    let (status, body) = get(&format!("{proxy}/"), None).await?;
    let json: Value = serde_json::from_str(&body).unwrap_or_default();
    ensure!(
        status == 404 && json["category"] == "no_route" && json["request_id"].is_string(),
        "no route: {status} {body}"
    );
    let (status, body) = get(&format!("{proxy}/v3"), Some("api.example.com")).await?;
    ensure!(status == 502 && body.contains("connect_failure"), "down upstream: {status} {body}");
    let (status, body) = get(&format!("http://{ADMIN}/config"), None).await?;
    ensure!(status == 200 && body.contains("\"version\": 1"), "admin /config: {status} {body}");
    println!("demo check passed: routing by host and path, round robin, JSON 404 and 502, admin /config");
    Ok(())
}

async fn get(url: &str, host: Option<&str>) -> anyhow::Result<(u16, String)> {
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
