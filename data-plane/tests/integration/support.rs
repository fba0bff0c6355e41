//! The data plane's harness: the real `sluice-proxy` binary on a config file of its own, beside
//! what every crate's tests share (`sluice-test-support`: upstreams, client, waits).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use http::StatusCode;
use prometheus_parse::{Scrape, Value as Sample};
use serde_json::Value;
pub use sluice_test_support::*;

// === the proxy process ===

/// `sluice-proxy` running on a config file in its own temp directory.
pub struct Proxy {
    process: Process,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub admin: SocketAddr,
}

impl Proxy {
    /// Writes `config` (YAML) and starts the proxy on it, with the admin listener on a free port.
    pub fn start(config: &str) -> Self {
        Self::start_with(config, &[])
    }

    pub fn start_with(config: &str, args: &[&str]) -> Self {
        Self::start_env(config, args, &[])
    }

    /// Starts the proxy with extra arguments and environment variables.
    pub fn start_env(config: &str, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let dir = temp_dir();
        let path = dir.join("config.yaml");
        std::fs::write(&path, config).unwrap();
        let process = Process::spawn(
            "sluice-proxy",
            Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
                .arg("--config-file")
                .arg(&path)
                .args(["--admin-listen", "127.0.0.1:0", "--log-format", "json", "--watch-interval", "100ms"])
                .args(args)
                .env("RUST_LOG", "info")
                .envs(envs.iter().copied()),
        );
        let admin = "0.0.0.0:0".parse().unwrap();
        let mut proxy = Self { process, dir, config: path, admin };
        let line = proxy.wait_for_log("admin listener serving", Duration::from_secs(20));
        let v: Value = serde_json::from_str(&line).unwrap();
        proxy.admin = v["fields"]["address"].as_str().unwrap().parse().unwrap();
        proxy
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Log lines so far (JSON).
    pub fn logs(&self) -> Vec<String> {
        self.process.stderr.all()
    }

    /// Lines written to standard output so far (the access log).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.process.stdout.all()
    }

    /// The admin listener's `/metrics`, as text.
    pub async fn metrics_text(&self) -> String {
        let (status, body) = get(&format!("http://{}/metrics", self.admin)).await;
        assert_eq!(status, StatusCode::OK, "/metrics: {body}");
        body
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_for_log(&mut self, needle: &str, within: Duration) -> String {
        self.process.wait_for_log(needle, within)
    }

    /// The bound address of listener `name`, from `/config`.
    pub async fn listener(&self, name: &str) -> SocketAddr {
        let config = self.admin_json("/config").await;
        let l = config["listeners"].as_array().unwrap().iter().find(|l| l["name"] == name);
        l.unwrap_or_else(|| panic!("no listener {name} in {config}"))["bound"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    pub async fn admin_json(&self, path: &str) -> Value {
        let (status, body) = get(&format!("http://{}{path}", self.admin)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The active config version.
    pub async fn version(&self) -> u64 {
        self.admin_json("/config").await["active"]["version"].as_u64().unwrap()
    }

    /// Rewrites the config file (the proxy notices within its watch interval).
    pub fn write_config(&self, config: &str) {
        // Write beside and rename, as editors and ConfigMaps do, so no read sees half a file.
        let tmp = self.dir.join("config.yaml.tmp");
        std::fs::write(&tmp, config).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub fn signal(&self, sig: &str) {
        self.process.signal(sig);
    }

    /// Peak resident memory so far, in bytes.
    pub fn peak_rss(&self) -> u64 {
        status_field(self.pid(), "VmHWM:")
    }

    pub fn rss(&self) -> u64 {
        status_field(self.pid(), "VmRSS:")
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        self.process.wait_exit(within)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.process.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn status_field(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

// === metrics ===

/// The value of the sample `name` whose labels include all of `labels`; panics if there is none.
pub fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    match found.map(|s| &s.value) {
        Some(Sample::Counter(v) | Sample::Gauge(v) | Sample::Untyped(v)) => *v,
        Some(Sample::Histogram(buckets)) => buckets.last().map_or(0.0, |b| b.count),
        other => panic!("no sample {name} {labels:?}: {other:?}"),
    }
}

/// `/metrics`, parsed.
pub async fn scrape(proxy: &Proxy) -> Scrape {
    let text = proxy.metrics_text().await;
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}
