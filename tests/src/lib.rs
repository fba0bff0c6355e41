//! Harness for the fleet tests: a fresh PostgreSQL database per test, control planes and data
//! planes run in-process on `127.0.0.1:0`, the CLI called as a library, and a TCP forwarder that
//! can cut or freeze the way to the database. Upstreams, the HTTP client and the waits
//! (`eventually!`, deadlines scaled by `SLUICE_TEST_TIMEOUT_SCALE`) come from
//! `sluice-test-support`, re-exported here.
//!
//! The database server comes from `DATABASE_URL` (see `.cargo/config.toml`; the README says how
//! to get one).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use clap::Parser;
use sluice_bundle::sign::SigningKey;
use sluice_data_plane::subscribe::Managed;
use sluice_data_plane::{Options, Proxy};
use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub use sluice_test_support::*;

pub mod large;
pub mod pg;

// === database ===

/// A database of its own for one test, dropped afterwards.
pub struct Db {
    pub url: String,
    name: String,
    admin_url: String,
}

impl Db {
    pub async fn create() -> Self {
        let admin_url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("sluice_it_{}_{}", std::process::id(), fastrand::u32(..));
        let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("PostgreSQL at {admin_url} is needed for these tests (see README): {e}")
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b);
        Self { url: format!("{base}/{name}"), name, admin_url }
    }

    /// A copy of the database as it is now, as a backup would hold it (its own database, dropped
    /// with it). Whoever is connected to this one is disconnected first: PostgreSQL copies only
    /// an unused database.
    pub async fn backup(&self) -> Self {
        let name = format!("{}_backup_{}", self.name, fastrand::u32(..));
        let mut conn = sqlx::PgConnection::connect(&self.admin_url).await.unwrap();
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
            .bind(&self.name)
            .execute(&mut conn)
            .await
            .unwrap();
        let copy = format!("CREATE DATABASE {name} TEMPLATE {}", self.name);
        sqlx::query(sqlx::AssertSqlSafe(copy)).execute(&mut conn).await.unwrap();
        let base = self.admin_url.rsplit_once('/').map_or(self.admin_url.as_str(), |(b, _)| b);
        Self { url: format!("{base}/{name}"), name, admin_url: self.admin_url.clone() }
    }

    /// The URL with its host and port swapped for `addr` (to go through a [`Forwarder`]).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let (scheme_user, rest) = self.url.split_once('@').unwrap();
        let path = &rest[rest.find('/').unwrap()..];
        format!("{scheme_user}@{addr}{path}")
    }

    /// Where the database server listens.
    pub fn server(&self) -> SocketAddr {
        let rest = self.url.split_once('@').unwrap().1;
        let hostport = &rest[..rest.find('/').unwrap()];
        std::net::ToSocketAddrs::to_socket_addrs(hostport).unwrap().next().unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

// === keys ===

/// A signing key and its trusted-keys file on disk.
pub struct Keys {
    pub key: SigningKey,
    pub trusted_file: PathBuf,
}

impl Keys {
    pub fn generate(dir: &std::path::Path) -> Self {
        let key = SigningKey::generate().unwrap();
        let trusted_file = dir.join(format!("trusted-{}.json", key.key_id()));
        std::fs::write(&trusted_file, key.trusted_keys().to_file()).unwrap();
        Self { key, trusted_file }
    }

    pub fn signing_key(&self) -> SigningKey {
        SigningKey::from_file(&self.key.to_file()).unwrap()
    }
}

// === control planes ===

/// How a control plane signs: key files or directories, freshness lifetime, bundle cap.
pub struct Setup {
    pub signing_keys: Vec<PathBuf>,
    pub freshness_lifetime: Duration,
    pub max_bundle_bytes: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            signing_keys: Vec::new(),
            freshness_lifetime: sluice_control_plane::keys::DEFAULT_FRESHNESS_LIFETIME,
            max_bundle_bytes: sluice_bundle::sign::DEFAULT_MAX_PAYLOAD,
        }
    }
}

pub struct ControlPlane {
    pub url: String,
    pub addr: SocketAddr,
    running: Option<sluice_control_plane::Running>,
}

impl ControlPlane {
    pub async fn start(database_url: &str, key: SigningKey) -> Self {
        Self::start_with(database_url, key, "127.0.0.1:0".parse().unwrap()).await
    }

    /// A control plane on `addr`: the address of one stopped before, as after a restart.
    pub async fn start_on(database_url: &str, key: SigningKey, addr: SocketAddr) -> Self {
        Self::start_with(database_url, key, addr).await
    }

    async fn start_with(database_url: &str, key: SigningKey, listen: SocketAddr) -> Self {
        Self::start_secured(database_url, key, listen, Default::default()).await
    }

    /// A control plane with TLS, authentication or both; its URL is https:// with TLS.
    pub async fn start_secured(
        database_url: &str,
        key: SigningKey,
        listen: SocketAddr,
        security: sluice_control_plane::Security,
    ) -> Self {
        let dir = temp_dir();
        std::fs::write(dir.join("signing-key.json"), key.to_file()).unwrap();
        let setup = Setup { signing_keys: vec![dir], ..Setup::default() };
        Self::start_setup(database_url, setup, listen, security).await
    }

    /// A control plane with the signing keys, freshness lifetime and bundle cap of `setup`.
    pub async fn start_setup(
        database_url: &str,
        setup: Setup,
        listen: SocketAddr,
        security: sluice_control_plane::Security,
    ) -> Self {
        let scheme = if security.tls.is_some() { "https" } else { "http" };
        let keyring = sluice_control_plane::keys::Keyring::load(
            sluice_control_plane::keys::KeyFiles(setup.signing_keys),
            setup.freshness_lifetime,
        )
        .unwrap();
        let running = sluice_control_plane::start(sluice_control_plane::Options {
            database_url: database_url.to_owned(),
            listen,
            keyring,
            max_bundle_bytes: setup.max_bundle_bytes,
            db_timeout: Duration::from_secs(3),
            security,
            retention: None,
        })
        .await
        .unwrap();
        Self { url: format!("{scheme}://{}", running.addr), addr: running.addr, running: Some(running) }
    }

    /// Re-reads the control plane's certificate, CRL and policy files now, as SIGHUP does.
    pub fn reload(&self) {
        self.running.as_ref().unwrap().reload();
    }

    /// Serves the control plane's `/metrics` on a port of its own; its address.
    pub async fn serve_metrics(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.running.as_ref().unwrap().serve_metrics(listener).unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

// === data planes ===

/// A managed data plane in this process.
pub struct DataPlane {
    pub node_id: String,
    pub proxy: Proxy,
    pub admin: SocketAddr,
    pub state_dir: PathBuf,
    task: JoinHandle<()>,
}

impl DataPlane {
    /// Connects to `control_plane` as `node_id` of `fleet`; every listener binds 127.0.0.1:0.
    pub async fn start(
        control_plane: &str,
        fleet: &str,
        node_id: &str,
        trusted_file: &std::path::Path,
        state_dir: PathBuf,
    ) -> Self {
        Self::start_tls(control_plane, fleet, node_id, trusted_file, state_dir, None).await
    }

    /// The same, presenting a client certificate to an https:// control plane.
    pub async fn start_tls(
        control_plane: &str,
        fleet: &str,
        node_id: &str,
        trusted_file: &std::path::Path,
        state_dir: PathBuf,
        tls: Option<Arc<sluice_tls::Watched<sluice_tls::ClientFiles>>>,
    ) -> Self {
        Self::start_with(control_plane, fleet, node_id, trusted_file, state_dir, tls, false, None).await
    }

    /// The same, refusing a stale cache at boot when `refuse_stale_cache`, and taking trust sets
    /// signed by `roots`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_with(
        control_plane: &str,
        fleet: &str,
        node_id: &str,
        trusted_file: &std::path::Path,
        state_dir: PathBuf,
        tls: Option<Arc<sluice_tls::Watched<sluice_tls::ClientFiles>>>,
        refuse_stale_cache: bool,
        roots: Option<sluice_bundle::sign::trust::RootKeys>,
    ) -> Self {
        let trusted = sluice_tls::Watched::load(
            "trusted_keys",
            sluice_data_plane::subscribe::TrustedKeysFile(trusted_file.to_owned()),
        )
        .unwrap();
        // Polled often, so tests see a changed file taken within a fraction of a second.
        trusted.spawn(Duration::from_millis(100));
        let proxy = Proxy::new(Options {
            workers: 1,
            drain_timeout: Duration::from_secs(2),
            admin_token: None,
            tracer: None,
            ..Options::default()
        })
        .unwrap();
        let managed = Managed {
            control_plane: control_plane.to_owned(),
            fleet: fleet.to_owned(),
            node_id: node_id.to_owned(),
            labels: [("test".to_owned(), "yes".to_owned())].into(),
            trusted,
            state_dir: state_dir.clone(),
            listener_overrides: vec![("public".into(), "127.0.0.1:0".parse().unwrap())],
            // Fast reports, so tests see traffic figures reach the control plane within a second.
            report_every: Duration::from_secs(1),
            tls,
            refuse_stale_cache,
            roots,
            trust: Default::default(),
        };
        managed.boot_from_cache(&proxy);
        let admin = proxy.serve_admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let task = tokio::spawn(managed.run(proxy.clone()));
        Self { node_id: node_id.to_owned(), proxy, admin, state_dir, task }
    }

    /// The bundle version being served, if any.
    pub fn version(&self) -> Option<u64> {
        self.proxy.snapshot().map(|s| s.meta.version)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.proxy.listener_address("public").expect("listener public"))
    }

    /// GET an admin path (`/readyz`, `/metrics`): its body, whatever the status.
    pub async fn admin_get(&self, path: &str) -> String {
        match try_get(&format!("http://{}{path}", self.admin)).await {
            Ok(body) => body,
            Err(e) => e,
        }
    }

    /// Until it serves `version`: the snapshot swapped in and its listeners bound (they are bound
    /// just after the swap).
    pub async fn wait_for_version(&self, version: u64) {
        let bound = || {
            let Some(s) = self.proxy.snapshot() else { return false };
            let bound = self.proxy.listener_addresses();
            s.config.listeners.iter().all(|l| bound.iter().any(|(n, _)| *n == l.name))
        };
        eventually!(
            Duration::from_secs(10),
            self.version() == Some(version) && bound(),
            "{} on version {version}",
            self.node_id
        );
    }

    pub async fn stop(self) {
        self.task.abort();
        self.proxy.drain().await;
    }
}

// === load ===

/// GETs in a loop against some URLs until stopped: how many succeeded, and every failure.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<(u64, Vec<String>)>,
}

impl Load {
    pub fn start(urls: Vec<String>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                for url in &urls {
                    match try_get(url).await {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(e),
                    }
                }
            }
            (ok, failed)
        });
        Self { stop, task }
    }

    /// Stops and asserts the load ran and nothing failed.
    pub async fn stop_without_failures(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, failed) = self.task.await.unwrap();
        assert!(ok > 20, "the load ran ({ok} requests)");
        assert!(failed.is_empty(), "{} failed requests, e.g. {:?}", failed.len(), failed.first());
        ok
    }
}

/// A config with one listener (`public`) and one route to `upstream`.
pub fn config_to(upstream: &Upstream) -> String {
    format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:8080'}}\npools:\n  - {{name: {0}, endpoints: [{{address: '{1}'}}]}}\nroutes:\n  - {{name: all, pool: {0}}}\n",
        upstream.name, upstream.addr
    )
}

// === the CLI ===

/// Output of one `sluice` invocation.
#[derive(Debug)]
pub struct CliRun {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `sluice ARGS` in-process.
pub async fn sluice(args: &[&str]) -> CliRun {
    sluice_live(args).1.await
}

/// What a `sluice` invocation has written so far to one of its outputs.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The outputs of a `sluice` invocation that is still running (`rollout status --watch`).
pub struct Live {
    pub stdout: Output,
    pub stderr: Output,
}

/// `sluice ARGS` in-process, to be awaited, with its outputs readable while it runs: a test
/// waits for what it prints instead of guessing how long that takes.
pub fn sluice_live(args: &[&str]) -> (Live, impl Future<Output = CliRun> + use<>) {
    let cli = sluice_cli::Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied())).unwrap();
    let live = Live { stdout: Output::default(), stderr: Output::default() };
    let (mut out, mut err) = (live.stdout.clone(), live.stderr.clone());
    let run = async move {
        let code = sluice_cli::run(cli, &mut out, &mut err).await;
        CliRun { code, stdout: out.text(), stderr: err.text() }
    };
    (live, run)
}

/// `sluice apply` of `config` (written to a file in `dir`) to `fleet`.
pub async fn apply(
    cp: &ControlPlane,
    fleet: &str,
    config: &str,
    dir: &std::path::Path,
    message: &str,
) -> CliRun {
    let file = dir.join(format!("config-{}.yaml", fastrand::u32(..)));
    std::fs::write(&file, config).unwrap();
    sluice(&["--server", &cp.url, "--fleet", fleet, "apply", "-f", file.to_str().unwrap(), "-m", message])
        .await
}

// === fault injection ===

/// A TCP forwarder in front of a server, to freeze the path to it.
pub struct Forwarder {
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    task: JoinHandle<()>,
}

const FORWARD: u8 = 0;
const FREEZE: u8 = 1;

impl Forwarder {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(FORWARD));
        let m = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let m = m.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up = copy_unless(m.clone(), &mut cr, &mut sw);
                    let down = copy_unless(m, &mut sr, &mut cw);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Self { addr, mode, task }
    }

    /// Stops forwarding bytes but keeps connections open: the server looks frozen.
    pub fn freeze(&self) {
        self.mode.store(FREEZE, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.mode.store(FORWARD, Ordering::SeqCst);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies until EOF; while frozen, holds what it read instead of passing it on.
async fn copy_unless(
    mode: Arc<AtomicU8>,
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while mode.load(Ordering::SeqCst) == FREEZE {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
