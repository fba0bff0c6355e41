//! `cargo xtask cache-tests [--nginx] [--id TEST] [--max-required-failures N]`: sluice-proxy's
//! HTTP cache under the public http-cache-tests suite (npm package `http-cache-tests`, pinned),
//! and with `--nginx` nginx's `proxy_cache` beside it.
//!
//! The suite is installed once into target/cache-tests/http-cache-tests-<version>/ (`npm pack`,
//! integrity checked, `npm install`). A run starts the suite's origin server, a proxy in front of
//! it (deploy/conformance/cache-tests.yaml, or nginx.conf there) and the suite's client against
//! the proxy. The raw results go to target/cache-tests/<proxy>.json and are judged as the suite's
//! own report judges them (its lib/display.mjs): a `required` test fails when its result is not
//! `true` while the tests it depends on pass. Everything listens on 127.0.0.1, on ports free at
//! the start; what the task starts is stopped by pid when it ends, on errors too.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Map, Value};

use crate::{build_proxy, root};

/// The suite's version, and the integrity of its npm tarball (the registry's `dist.integrity`).
const VERSION: &str = "0.4.5";
const INTEGRITY: &str =
    "sha512-DjuwN9nUZXLTW+wav1LRESCZNVxl8SshwOy4z1pxuWbWt5/ay6sM9QQ1lebBaDO6P1IMBoK6mdf+PuVP/QNL8A==";

/// How long the suite's client may take: a full run takes about 20 s, most of it the waits of
/// the tests on staleness.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a server may take to answer after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(clap::Args)]
pub struct Args {
    /// Also run the suite against nginx's proxy_cache (Debian's nginx), and print both scores.
    #[arg(long, conflicts_with = "id")]
    nginx: bool,
    /// Run this test alone against sluice-proxy, showing each request and response.
    #[arg(long, value_name = "TEST")]
    id: Option<String>,
    /// Fail when sluice-proxy fails more required tests than this.
    #[arg(long, value_name = "N", default_value_t = 5)]
    max_required_failures: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    ensure_tool("node", "nodejs npm")?;
    ensure_tool("npm", "npm")?;
    if args.nginx {
        ensure_tool("nginx", "nginx")?;
    }
    let dir = root().join("target/cache-tests");
    std::fs::create_dir_all(&dir)?;
    let suite = install(&dir)?;
    let tests = list_tests(&suite)?;
    if let Some(id) = &args.id {
        ensure!(tests.iter().any(|t| t.id == *id), "http-cache-tests {VERSION} has no test {id}");
    }
    eprintln!("== building sluice-proxy (release)");
    let bin = build_proxy("release")?;

    let ports = free_ports(4)?;
    let &[origin, listener, admin, nginx_port] = ports.as_slice() else { bail!("four ports, not {ports:?}") };
    let mut procs = Procs { dir: dir.clone(), children: Vec::new() };
    start_origin(&mut procs, &suite, origin)?;
    let sluice = start_sluice(&mut procs, &bin, listener, admin, origin)?;
    if let Some(id) = &args.id {
        return run_one(&mut procs, &suite, listener, id);
    }
    let sluice_file = dir.join("sluice.json");
    let results = run_suite(&mut procs, "sluice client", &suite, listener, &sluice_file)?;
    let sluice_score = Score::new(&tests, &results)?;
    // Alone on the machine: many tests measure staleness in seconds.
    procs.stop(sluice);
    print_score("sluice-proxy", &sluice_score, &sluice_file);

    if args.nginx {
        start_nginx(&mut procs, &dir.join("nginx"), nginx_port, origin)?;
        let nginx_file = dir.join("nginx.json");
        let results = run_suite(&mut procs, "nginx client", &suite, nginx_port, &nginx_file)?;
        let nginx_score = Score::new(&tests, &results)?;
        print_score("nginx", &nginx_score, &nginx_file);
        print_side_by_side(&[("sluice-proxy", &sluice_score), ("nginx", &nginx_score)]);
    }
    drop(procs);

    let failed = sluice_score.required.len();
    ensure!(
        failed <= args.max_required_failures,
        "sluice-proxy fails {failed} required tests, more than --max-required-failures {}",
        args.max_required_failures
    );
    Ok(())
}

/// Fails, with the Debian packages to install, unless `program` is on the PATH.
fn ensure_tool(program: &str, packages: &str) -> anyhow::Result<()> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ensure!(found, "cache-tests needs {program}: `sudo apt-get install -y {packages}`");
    Ok(())
}

/// The suite with its dependencies in `<dir>/http-cache-tests-<VERSION>`, installed if it is not
/// there. It is put together in a staging directory renamed into place at the end, so an
/// interrupted install is redone rather than taken for a whole one.
fn install(dir: &Path) -> anyhow::Result<PathBuf> {
    let suite = dir.join(format!("http-cache-tests-{VERSION}"));
    if suite.is_dir() {
        return Ok(suite);
    }
    eprintln!("== installing http-cache-tests {VERSION} into {}", suite.display());
    let staging = dir.join(format!("http-cache-tests-{VERSION}.partial"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let packed = Command::new("npm")
        .current_dir(&staging)
        .args(["pack", "--json", &format!("http-cache-tests@{VERSION}")])
        .stderr(Stdio::inherit())
        .output()
        .context("running npm pack")?;
    ensure!(packed.status.success(), "npm pack http-cache-tests@{VERSION} failed");
    let packed: Value = serde_json::from_slice(&packed.stdout).context("reading npm pack --json")?;
    // npm checks the download against the registry's integrity; this pins it to the one known.
    let integrity = packed[0]["integrity"].as_str().unwrap_or_default();
    ensure!(integrity == INTEGRITY, "http-cache-tests@{VERSION} has integrity {integrity}, not {INTEGRITY}");
    let tarball = staging.join(packed[0]["filename"].as_str().context("npm pack named no file")?);
    // And the file as it is on disk, the one unpacked.
    let on_disk = sha512_integrity(&tarball)?;
    ensure!(on_disk == INTEGRITY, "{} has integrity {on_disk}, not {INTEGRITY}", tarball.display());
    let status = Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(&staging).status()?;
    ensure!(status.success(), "unpacking {} failed", tarball.display());
    let package = staging.join("package");
    let status = Command::new("npm")
        .current_dir(&package)
        .args(["install", "--omit=dev", "--no-audit", "--no-fund"])
        .status()
        .context("running npm install")?;
    ensure!(status.success(), "npm install in {} failed", package.display());
    std::fs::rename(&package, &suite)?;
    std::fs::remove_dir_all(&staging)?;
    Ok(suite)
}

/// The `sha512-<base64>` integrity of a file, as npm writes it.
fn sha512_integrity(file: &Path) -> anyhow::Result<String> {
    let out = Command::new("node")
        .args([
            "-e",
            "const data = require('fs').readFileSync(process.argv[1]);\
             process.stdout.write('sha512-' + require('crypto').createHash('sha512').update(data).digest('base64'))",
        ])
        .arg(file)
        .output()
        .context("running node")?;
    ensure!(out.status.success(), "hashing {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// One test of the suite, as deploy/conformance/list-tests.mjs prints it.
#[derive(Debug)]
struct Test {
    id: String,
    name: String,
    kind: Kind,
    depends_on: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// What RFC 9111 requires.
    Required,
    /// What a good cache does ("optimal"): failing is allowed, and counted apart.
    Optimal,
    /// A behaviour recorded, neither right nor wrong.
    Check,
}

/// Every test the suite's client runs (its cli.mjs adds the surrogate-control suite to those of
/// tests/index.mjs).
fn list_tests(suite: &Path) -> anyhow::Result<Vec<Test>> {
    let lister = root().join("deploy/conformance/list-tests.mjs");
    let out =
        node(suite).arg(&lister).arg(suite).stderr(Stdio::inherit()).output().context("running node")?;
    ensure!(out.status.success(), "node {} failed", lister.display());
    parse_tests(&String::from_utf8_lossy(&out.stdout))
}

fn parse_tests(json: &str) -> anyhow::Result<Vec<Test>> {
    let list: Vec<Value> = serde_json::from_str(json).context("reading the list of tests")?;
    list.iter()
        .map(|t| {
            let text =
                |key: &str| t[key].as_str().map(str::to_owned).with_context(|| format!("no {key}: {t}"));
            let kind = match t["kind"].as_str() {
                Some("required") => Kind::Required,
                Some("optimal") => Kind::Optimal,
                Some("check") => Kind::Check,
                other => bail!("test {t} has kind {other:?}"),
            };
            let depends_on = t["depends_on"]
                .as_array()
                .map_or_else(Vec::new, |d| d.iter().filter_map(Value::as_str).map(str::to_owned).collect());
            Ok(Test { id: text("id")?, name: text("name")?, kind, depends_on })
        })
        .collect()
}

/// What one test's result says, with the names the suite's report gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Pass,
    Fail,
    OptionalFail,
    Yes,
    No,
    SetupFail,
    HarnessFail,
    DependencyFail,
    Retry,
    Untested,
}

impl Verdict {
    fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::OptionalFail => "optional_fail",
            Self::Yes => "yes",
            Self::No => "no",
            Self::SetupFail => "setup_fail",
            Self::HarnessFail => "harness_fail",
            Self::DependencyFail => "dependency_fail",
            Self::Retry => "retry",
            Self::Untested => "untested",
        }
    }

    const ALL: [Verdict; 10] = [
        Self::Pass,
        Self::Fail,
        Self::OptionalFail,
        Self::Yes,
        Self::No,
        Self::SetupFail,
        Self::HarnessFail,
        Self::DependencyFail,
        Self::Retry,
        Self::Untested,
    ];
}

/// The verdict on test `id` as the suite's `determineTestResult` gives it: untested without a
/// result; a dependency failure unless each test it depends on passes (or, a check, says yes); a
/// setup failure when the test could not set up what it checks; then by its kind.
fn judge(tests: &HashMap<&str, &Test>, results: &Map<String, Value>, id: &str) -> anyhow::Result<Verdict> {
    let test = tests.get(id).with_context(|| format!("no test {id}"))?;
    let Some(result) = results.get(id) else { return Ok(Verdict::Untested) };
    for dependency in &test.depends_on {
        if !matches!(judge(tests, results, dependency)?, Verdict::Pass | Verdict::Yes) {
            return Ok(Verdict::DependencyFail);
        }
    }
    // A result is `true` or `[error name, message]`.
    if result[0] == "Setup" {
        return Ok(if result[1] == "retry" { Verdict::Retry } else { Verdict::SetupFail });
    }
    if *result == Value::Bool(false) {
        return Ok(Verdict::HarnessFail);
    }
    let passed = *result == Value::Bool(true);
    Ok(match (test.kind, passed) {
        (Kind::Required | Kind::Optimal, true) => Verdict::Pass,
        (Kind::Required, false) => Verdict::Fail,
        (Kind::Optimal, false) => Verdict::OptionalFail,
        (Kind::Check, true) => Verdict::Yes,
        (Kind::Check, false) => Verdict::No,
    })
}

/// How a proxy did: the count of each verdict, and the failures with the suite's messages.
struct Score<'a> {
    counts: BTreeMap<Verdict, usize>,
    required: Vec<(&'a Test, String)>,
    optional: Vec<(&'a Test, String)>,
}

impl<'a> Score<'a> {
    fn new(tests: &'a [Test], results: &Map<String, Value>) -> anyhow::Result<Self> {
        let by_id: HashMap<&str, &Test> = tests.iter().map(|t| (t.id.as_str(), t)).collect();
        let mut score = Score { counts: BTreeMap::new(), required: Vec::new(), optional: Vec::new() };
        for t in tests {
            let verdict = judge(&by_id, results, &t.id)?;
            *score.counts.entry(verdict).or_default() += 1;
            let failure = (t, results.get(&t.id).map(message).unwrap_or_default());
            match verdict {
                Verdict::Fail => score.required.push(failure),
                Verdict::OptionalFail => score.optional.push(failure),
                _ => {}
            }
        }
        Ok(score)
    }

    fn count(&self, v: Verdict) -> usize {
        self.counts.get(&v).copied().unwrap_or(0)
    }
}

/// A failed result, `["Assertion", "Response 2 does not come from cache"]`, as one line.
fn message(result: &Value) -> String {
    match result.as_array().map(Vec::as_slice) {
        Some([Value::String(kind), Value::String(text)]) => format!("{kind}: {text}"),
        _ => result.to_string(),
    }
}

fn print_score(label: &str, score: &Score<'_>, results: &Path) {
    let counts: Vec<String> = score.counts.iter().map(|(v, n)| format!("{n} {}", v.name())).collect();
    println!("\n== {label}: {}", counts.join(", "));
    println!("results: {}", results.strip_prefix(root()).unwrap_or(results).display());
    println!("required failures: {}", score.required.len());
    for (t, msg) in &score.required {
        println!("  {}: {msg}\n      ({})", t.id, t.name);
    }
    println!("optional (\"optimal\") failures: {}", score.optional.len());
    for (t, msg) in &score.optional {
        println!("  {}: {msg}", t.id);
    }
}

fn print_side_by_side(scores: &[(&str, &Score<'_>)]) {
    let names: Vec<&str> = scores.iter().map(|(n, _)| *n).collect();
    println!("\n| verdict | {} |\n|---|{}", names.join(" | "), "---:|".repeat(names.len()));
    for v in Verdict::ALL {
        if scores.iter().any(|(_, s)| s.count(v) > 0) {
            let counts: Vec<String> = scores.iter().map(|(_, s)| s.count(v).to_string()).collect();
            println!("| {} | {} |", v.name(), counts.join(" | "));
        }
    }
}

/// `count` ports of 127.0.0.1 free now (held together while picked, so all differ).
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let held: Vec<TcpListener> =
        (0..count).map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0))).collect::<Result<_, _>>()?;
    Ok(held.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?)
}

/// `node` in the suite's directory, without the caller's `npm_*` variables: the suite reads its
/// settings from them (`npm_config_*` first), so one left over would override those given here.
fn node(suite: &Path) -> Command {
    let mut cmd = Command::new("node");
    cmd.current_dir(suite);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.to_ascii_lowercase().starts_with("npm_")) {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The suite's origin server on 127.0.0.1:`port`. It listens on every interface;
/// deploy/conformance/loopback.cjs, loaded first, narrows that to 127.0.0.1.
fn start_origin(procs: &mut Procs, suite: &Path, port: u16) -> anyhow::Result<u32> {
    let mut cmd = node(suite);
    cmd.arg("--require")
        .arg(root().join("deploy/conformance/loopback.cjs"))
        .arg("server/server.mjs")
        .env("npm_config_port", port.to_string())
        .env("npm_package_config_protocol", "http")
        .env("npm_package_config_pidfile", procs.dir.join("origin.pid"));
    let pid = procs.spawn_logged("origin", cmd, None)?;
    procs.wait_until("the origin server to answer", || http_status(port, "/").is_some())?;
    Ok(pid)
}

/// sluice-proxy on 127.0.0.1:`listener` in front of the origin, with
/// deploy/conformance/cache-tests.yaml, once it serves the origin's pages.
fn start_sluice(
    procs: &mut Procs,
    bin: &Path,
    listener: u16,
    admin: u16,
    origin: u16,
) -> anyhow::Result<u32> {
    let template = std::fs::read_to_string(root().join("deploy/conformance/cache-tests.yaml"))?;
    let config = procs.dir.join("sluice.yaml");
    std::fs::write(
        &config,
        fill(
            &template,
            &[
                ("127.0.0.1:18100", &format!("127.0.0.1:{listener}")),
                ("127.0.0.1:18000", &format!("127.0.0.1:{origin}")),
            ],
        )?,
    )?;
    // A refused config fails here with the parser's message, not as a proxy that never answers.
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
        .args(["--admin-listen", &format!("127.0.0.1:{admin}"), "--workers", "1"])
        .env("RUST_LOG", "warn");
    // Traces of a caller's OpenTelemetry settings have no place here.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("OTEL_")) {
            cmd.env_remove(key);
        }
    }
    let pid = procs.spawn_logged("sluice-proxy", cmd, None)?;
    procs.wait_until("sluice-proxy to be ready", || http_status(admin, "/readyz") == Some(200))?;
    procs.wait_until("sluice-proxy to serve the origin", || http_status(listener, "/") == Some(200))?;
    Ok(pid)
}

/// nginx on 127.0.0.1:`port` in front of the origin, with deploy/conformance/nginx.conf and
/// everything of its own (config, pid file, logs, cache) in `dir`, emptied first. In the
/// foreground, as a child of this task; started by root, it runs as `nobody`.
fn start_nginx(procs: &mut Procs, dir: &Path, port: u16, origin: u16) -> anyhow::Result<u32> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let template = std::fs::read_to_string(root().join("deploy/conformance/nginx.conf"))?;
    let dir_text = dir.to_str().context("a path that is not UTF-8")?;
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        fill(
            &template,
            &[
                ("@DIR@", dir_text),
                ("@PORT@", &port.to_string()),
                ("@ORIGIN@", &format!("127.0.0.1:{origin}")),
            ],
        )?,
    )?;
    let mut cmd = if is_root() {
        // nginx started by root keeps a root master process; setpriv execs it (same pid) as
        // nobody, who then needs to own its directory.
        ensure_tool("setpriv", "util-linux")?;
        let (uid, gid) = (id(&["-u", "nobody"])?, id(&["-g", "nobody"])?);
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
        let mut cmd = Command::new("setpriv");
        cmd.args([&format!("--reuid={uid}"), &format!("--regid={gid}"), "--clear-groups", "--", "nginx"]);
        cmd
    } else {
        Command::new("nginx")
    };
    // -e: the error log before the config is read, otherwise the compiled-in /var/log/nginx.
    cmd.arg("-p").arg(dir).arg("-e").arg(dir.join("error.log")).arg("-c").arg(&conf);
    let pid = procs.spawn_logged("nginx", cmd, None)?;
    procs.wait_until("nginx to serve the origin", || http_status(port, "/") == Some(200))?;
    Ok(pid)
}

fn is_root() -> bool {
    id(&["-u"]).is_ok_and(|uid| uid == 0)
}

/// `id ARGS` as a number.
fn id(args: &[&str]) -> anyhow::Result<u32> {
    let out = Command::new("id").args(args).output().context("running id")?;
    ensure!(out.status.success(), "id {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// `template` with each key of `values` replaced, everywhere, by its value; each key must occur.
/// One pass over the template: a value is never taken for a key.
fn fill(template: &str, values: &[(&str, &str)]) -> anyhow::Result<String> {
    let mut at = Vec::new();
    for &(key, value) in values {
        let before = at.len();
        at.extend(template.match_indices(key).map(|(i, _)| (i, key, value)));
        ensure!(at.len() > before, "the template has no {key}");
    }
    at.sort_by_key(|&(i, ..)| i);
    let (mut out, mut from) = (String::with_capacity(template.len()), 0);
    for (i, key, value) in at {
        out.push_str(&template[from..i]);
        out.push_str(value);
        from = i + key.len();
    }
    out.push_str(&template[from..]);
    Ok(out)
}

/// The suite's client, all tests or the one `id` names, against the proxy on `port`.
fn client(suite: &Path, port: u16, id: &str) -> Command {
    let mut cmd = node(suite);
    cmd.args(["--no-warnings", "cli.mjs"])
        .env("npm_config_base", format!("http://127.0.0.1:{port}"))
        // Empty: every test (unset, cli.mjs looks for a test named `undefined`).
        .env("npm_package_config_id", id);
    cmd
}

/// Runs every test against the proxy on `port`; the results, by test id, are also written to
/// `out`.
fn run_suite(
    procs: &mut Procs,
    name: &'static str,
    suite: &Path,
    port: u16,
    out: &Path,
) -> anyhow::Result<Map<String, Value>> {
    eprintln!("== running http-cache-tests {VERSION} against 127.0.0.1:{port}");
    // No results of an earlier run left to be taken for this one's.
    let _ = std::fs::remove_file(out);
    let partial = out.with_extension("json.partial");
    let pid = procs.spawn_logged(name, client(suite, port, ""), Some(File::create(&partial)?))?;
    let status = procs.wait(pid, CLIENT_TIMEOUT)?;
    // A proxy or origin that died at the end makes failures that are not the cache's either.
    procs.check_alive()?;
    // cli.mjs reports its own errors on stderr and exits 0 with no results.
    let text = std::fs::read_to_string(&partial)?;
    let results = match serde_json::from_str(&text) {
        Ok(Value::Object(results)) if status.success() && !results.is_empty() => results,
        _ => bail!("the suite's client ({status}) gave no results:\n{}", procs.log_tail(name)),
    };
    std::fs::rename(&partial, out)?;
    Ok(results)
}

/// Runs test `id` against the proxy on `listener`, the suite's account of it on the terminal.
fn run_one(procs: &mut Procs, suite: &Path, listener: u16, id: &str) -> anyhow::Result<()> {
    let pid = procs.spawn("client", client(suite, listener, id))?;
    let status = procs.wait(pid, CLIENT_TIMEOUT)?;
    ensure!(status.success(), "the suite's client: {status}");
    eprintln!("logs: {}", ["origin", "sluice-proxy"].map(|n| procs.log(n).display().to_string()).join(", "));
    Ok(())
}

/// The status code of `GET path` on 127.0.0.1:`port`, if something there answers HTTP.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").ok()?;
    // What arrived of the status line, even if the connection then failed.
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let head = &head[..got];
    // `HTTP/1.1 200`
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

/// What the task started, stopped by pid when it ends (`Drop`, so on errors too).
struct Procs {
    /// Where their logs go: `<name>.log`.
    dir: PathBuf,
    children: Vec<(&'static str, Child)>,
}

impl Procs {
    /// Starts `cmd` as it is set up (its output where the caller put it).
    fn spawn(&mut self, name: &'static str, mut cmd: Command) -> anyhow::Result<u32> {
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.children.push((name, child));
        Ok(pid)
    }

    /// Starts `cmd` with its standard error, and its output unless `stdout` is given, going to
    /// `<dir>/<name>.log`.
    fn spawn_logged(
        &mut self,
        name: &'static str,
        mut cmd: Command,
        stdout: Option<File>,
    ) -> anyhow::Result<u32> {
        let log = File::create(self.log(name))?;
        let stdout = match stdout {
            Some(file) => file,
            None => log.try_clone()?,
        };
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(log);
        self.spawn(name, cmd)
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.log", name.replace(' ', "-")))
    }

    /// The last lines of `<name>.log`, with its path.
    fn log_tail(&self, name: &str) -> String {
        let path = self.log(name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("{tail}\n(the log: {})", path.display())
    }

    /// Fails, with its log, if any process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for i in 0..self.children.len() {
            if let Some(status) = self.children[i].1.try_wait()? {
                let name = self.children[i].0;
                bail!("{name} exited ({status}):\n{}", self.log_tail(name));
            }
        }
        Ok(())
    }

    /// Waits until `ready` holds, failing if a process exits first or `START_TIMEOUT` passes.
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !ready() {
            self.check_alive()?;
            ensure!(Instant::now() < deadline, "waited {} s for {what}", START_TIMEOUT.as_secs());
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Waits, up to `within`, for process `pid` to exit by itself; fails as soon as another
    /// exits (a proxy that died would make the rest of the run fail for nothing).
    fn wait(&mut self, pid: u32, within: Duration) -> anyhow::Result<ExitStatus> {
        let i = self.index(pid)?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.children[i].1.try_wait()? {
                self.children.remove(i);
                return Ok(status);
            }
            self.check_alive()?;
            let name = self.children[i].0;
            ensure!(Instant::now() < deadline, "{name} still runs after {} s", within.as_secs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops process `pid`: SIGTERM, then SIGKILL if it still runs 10 s later.
    fn stop(&mut self, pid: u32) {
        if let Ok(i) = self.index(pid) {
            let (_, mut child) = self.children.remove(i);
            terminate(&mut child);
        }
    }

    fn index(&self, pid: u32) -> anyhow::Result<usize> {
        self.children.iter().position(|(_, c)| c.id() == pid).with_context(|| format!("{pid} is not ours"))
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        // The last started first: the client and the proxies before the origin.
        while let Some((_, mut child)) = self.children.pop() {
            terminate(&mut child);
        }
    }
}

/// SIGTERM to `child`, then SIGKILL if it still runs 10 s later; waited for, so its pid is never
/// signalled again.
fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(id: &str, kind: Kind, depends_on: &[&str]) -> Test {
        Test {
            id: id.into(),
            name: format!("{id}?"),
            kind,
            depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect(),
        }
    }

    #[test]
    fn judges_as_the_suites_report() {
        let tests = [
            test("none", Kind::Check, &[]),
            test("ok", Kind::Required, &["none"]),
            test("bad", Kind::Required, &["none"]),
            test("slow", Kind::Optimal, &[]),
            test("after-bad", Kind::Required, &["bad"]),
            test("after-no", Kind::Required, &["no"]),
            test("no", Kind::Check, &[]),
            test("setup", Kind::Required, &[]),
            test("retry", Kind::Required, &[]),
            test("absent", Kind::Required, &[]),
            test("error", Kind::Required, &[]),
        ];
        let results: Value = serde_json::json!({
            "none": true,
            "ok": true,
            "bad": ["Assertion", "Response 2 does not come from cache"],
            "slow": ["Assertion", "Response 2 comes from cache"],
            "after-bad": true,
            "after-no": ["Assertion", "x"],
            "no": ["Assertion", "no"],
            "setup": ["Setup", "Response 1 header a is missing"],
            "retry": ["Setup", "retry"],
            "error": ["TypeError", "fetch failed"],
        });
        let results = results.as_object().unwrap();
        let score = Score::new(&tests, results).unwrap();
        let by_id: HashMap<&str, &Test> = tests.iter().map(|t| (t.id.as_str(), t)).collect();
        let verdict = |id| judge(&by_id, results, id).unwrap();
        assert_eq!(verdict("none"), Verdict::Yes);
        assert_eq!(verdict("ok"), Verdict::Pass);
        assert_eq!(verdict("bad"), Verdict::Fail);
        assert_eq!(verdict("slow"), Verdict::OptionalFail);
        assert_eq!(verdict("after-bad"), Verdict::DependencyFail);
        assert_eq!(verdict("after-no"), Verdict::DependencyFail);
        assert_eq!(verdict("no"), Verdict::No);
        assert_eq!(verdict("setup"), Verdict::SetupFail);
        assert_eq!(verdict("retry"), Verdict::Retry);
        assert_eq!(verdict("absent"), Verdict::Untested);
        assert_eq!(verdict("error"), Verdict::Fail);
        let failed: Vec<(&str, &str)> =
            score.required.iter().map(|(t, m)| (t.id.as_str(), m.as_str())).collect();
        assert_eq!(
            failed,
            [("bad", "Assertion: Response 2 does not come from cache"), ("error", "TypeError: fetch failed")]
        );
        assert_eq!(score.optional.len(), 1);
        assert_eq!(score.counts.values().sum::<usize>(), tests.len());
    }

    #[test]
    fn reads_the_list_of_tests() {
        let tests = parse_tests(
            r#"[{"id":"a","suite":"s","name":"A","kind":"required","depends_on":[]},
                {"id":"b","suite":"s","name":"B","kind":"optimal","depends_on":["a"]}]"#,
        )
        .unwrap();
        assert_eq!(tests[1].kind, Kind::Optimal);
        assert_eq!(tests[1].depends_on, ["a"]);
        assert!(parse_tests(r#"[{"id":"a","name":"A","kind":"maybe"}]"#).is_err());
    }

    #[test]
    fn fills_the_conformance_configs() {
        let yaml = std::fs::read_to_string(root().join("deploy/conformance/cache-tests.yaml")).unwrap();
        // A port picked for one address is not taken for the other's.
        let filled =
            fill(&yaml, &[("127.0.0.1:18100", "127.0.0.1:18000"), ("127.0.0.1:18000", "127.0.0.1:40001")])
                .unwrap();
        assert!(filled.contains("address: 127.0.0.1:18000\n"), "{filled}");
        assert!(filled.contains("- address: 127.0.0.1:40001\n"), "{filled}");
        assert!(!filled.contains("18100"));
        let nginx = std::fs::read_to_string(root().join("deploy/conformance/nginx.conf")).unwrap();
        let filled = fill(&nginx, &[("@DIR@", "/d"), ("@PORT@", "1"), ("@ORIGIN@", "127.0.0.1:2")]).unwrap();
        assert!(filled.contains("listen 127.0.0.1:1;") && filled.contains("proxy_pass http://127.0.0.1:2;"));
        assert!(filled.contains("proxy_cache_path /d/cache ") && !filled.contains('@'), "{filled}");
        assert!(fill("x", &[("@DIR@", "/d")]).is_err());
    }

    #[test]
    fn one_test_or_nginx() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let parse = |argv: &[&str]| {
            <Cli as clap::Parser>::try_parse_from(std::iter::once("cache-tests").chain(argv.iter().copied()))
        };
        let args = parse(&[]).unwrap().args;
        assert!(!args.nginx && args.id.is_none() && args.max_required_failures == 5);
        assert_eq!(
            parse(&["--nginx", "--max-required-failures", "0"]).unwrap().args.max_required_failures,
            0
        );
        assert_eq!(
            parse(&["--id", "age-parse-prefix"]).unwrap().args.id.as_deref(),
            Some("age-parse-prefix")
        );
        assert!(parse(&["--id", "x", "--nginx"]).is_err());
    }

    #[test]
    fn reads_a_status_line() {
        let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = server.local_addr().unwrap().port();
        let answer = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            // The whole request first, and the connection closed only after the client's side,
            // so no unread byte turns the close into a reset that could beat the answer.
            let mut request = Vec::new();
            let mut buf = [0; 512];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the client closed before its request was whole");
                request.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let _ = s.read_to_end(&mut request);
        });
        assert_eq!(http_status(port, "/readyz"), Some(503));
        answer.join().unwrap();
        let closed = free_ports(1).unwrap()[0];
        assert_eq!(http_status(closed, "/"), None);
    }
}
