//! The processes a benchmark starts (nginx, HAProxy, sluice-proxy), the ports they use, what they
//! cost in CPU and memory (read from /proc), and stopping them by pid.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use super::compare::Target;

/// The upstream nginx every proxy forwards to; wrk also measures it directly.
pub(super) const UPSTREAM: u16 = 18000;
/// sluice-proxy with the plain config, and its admin listener. The comparisons' other targets and
/// servers have ports of their own (18001–18010, admin listeners 18904–18908), so none stands in
/// for another.
pub(super) const SLUICE: u16 = 18003;
pub(super) const SLUICE_ADMIN: u16 = 18903;

/// Children started for the benchmark, stopped (by pid) when it ends.
pub(super) struct Procs {
    pub(super) dir: PathBuf,
    pub(super) children: Vec<(&'static str, Child)>,
    /// The CPU processes started from now on are pinned to (`taskset`), threads and children
    /// included; `None`: any.
    pub(super) cpu: Option<usize>,
}

impl Procs {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self { dir, children: Vec::new(), cpu: None }
    }

    /// Starts `cmd`, its output going to `<dir>/<name>.log`.
    pub(super) fn spawn(&mut self, name: &'static str, cmd: Command) -> anyhow::Result<u32> {
        self.spawn_to(name, cmd, Stdio::null())
    }

    /// Starts `cmd` like `spawn`, but with its standard output going to `stdout`.
    pub(super) fn spawn_to(
        &mut self,
        name: &'static str,
        mut cmd: Command,
        stdout: impl Into<Stdio>,
    ) -> anyhow::Result<u32> {
        let log = std::fs::File::create(self.log(name))?;
        if let Some(cpu) = self.cpu {
            cmd = on_cpu(&cmd, cpu);
        }
        let child = cmd.stdout(stdout).stderr(log).spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.children.push((name, child));
        Ok(pid)
    }

    /// Stops child `pid` with SIGTERM and waits, up to `within`, for it to exit. Returns its name
    /// (for its log) and how it exited.
    pub(super) fn stop(&mut self, pid: u32, within: Duration) -> anyhow::Result<(&'static str, ExitStatus)> {
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

    pub(super) fn log(&self, name: &str) -> PathBuf {
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

/// `cmd` run by `taskset -c cpu`, which execs it (same pid) with that affinity; its threads and
/// children inherit it.
pub(super) fn on_cpu(cmd: &Command, cpu: usize) -> Command {
    let mut pinned = Command::new("taskset");
    pinned.args(["-c", &cpu.to_string()]).arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => pinned.env(key, v),
            None => pinned.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        pinned.current_dir(dir);
    }
    pinned
}

/// nginx with config `conf`, written to `<dir>/<name>.nginx.conf`.
pub(super) fn nginx(dir: &Path, name: &str, conf: &str) -> anyhow::Result<Command> {
    let path = dir.join(format!("{name}.nginx.conf"));
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new("nginx");
    cmd.arg("-p").arg(dir).arg("-e").arg(dir.join(format!("{name}.error.log"))).arg("-c").arg(path);
    Ok(cmd)
}

/// HAProxy with config `conf`, written to `<dir>/<name>.cfg`.
pub(super) fn haproxy(dir: &Path, name: &str, conf: &str) -> anyhow::Result<Command> {
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(path);
    Ok(cmd)
}

/// Writes the config of sluice-proxy target `t` and starts it (see `sluice_command`).
pub(super) fn spawn_sluice(
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
pub(super) fn sluice_command(dir: &Path, bin: &Path, t: Target, workers: usize) -> anyhow::Result<Command> {
    let admin = t.admin_port().with_context(|| format!("{} is not a sluice-proxy target", t.name))?;
    let (file, text) = t.sluice_config().with_context(|| format!("{} has no sluice config", t.name))?;
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
pub(super) fn ensure_ports_free(ports: &[u16]) -> anyhow::Result<()> {
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

/// Fails unless every program of `tools` is on the PATH; with `install`, installs the missing
/// ones with apt-get first.
pub(super) fn ensure_tools(install: bool, tools: &[&str]) -> anyhow::Result<()> {
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

/// Waits until something listens on `port`, failing early if a process of `procs` exits.
pub(super) fn wait_port(port: u16, procs: &mut Procs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        procs.check_alive()?;
        ensure!(Instant::now() < deadline, "nothing listening on 127.0.0.1:{port} after 20s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on Linux).
pub(super) const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time (user + system, in clock ticks) of a process, its threads and its children.
pub(super) fn cpu_ticks(pid: u32) -> u64 {
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
pub(super) fn rss_tree(pid: u32) -> u64 {
    let rss = |pid: u32| status_kib(pid, "VmRSS:") * 1024;
    rss(pid) + children(pid).into_iter().map(rss).sum::<u64>()
}

/// The largest RSS a process has had (`VmHWM`), in bytes.
pub(super) fn peak_rss(pid: u32) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_is_named() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let e = ensure_ports_free(&[port]).unwrap_err().to_string();
        assert!(e.contains(&port.to_string()), "{e}");
        drop(taken);
        ensure_ports_free(&[port]).unwrap();
    }
}
