//! `sluice-proxy`: the data plane binary. Startup and signal handling only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use sluice_bundle::sign::trust::RootKeys;
use sluice_data_plane::subscribe::{Managed, TrustedKeysFile};
use sluice_data_plane::telemetry::Telemetry;
use sluice_data_plane::{FileSource, Options, Proxy};
use sluice_observe::logging::{self, LogFormat};
use sluice_tls::{ClientAuth, ClientFiles, ServerFiles, Watched};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    name = "sluice-proxy",
    version,
    about = "Sluice data plane: a reverse proxy that swaps its config atomically"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print the config document's JSON Schema (for editors).
    Schema,
    /// Validate a config file, print every error with its path, and exit.
    Check {
        /// The YAML or JSON config file.
        #[arg(long, value_name = "FILE")]
        config_file: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Serve this YAML or JSON config (standalone mode); it is reloaded on SIGHUP and when it changes.
    #[arg(long, env = "SLUICE_CONFIG_FILE", value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Address of the admin listener (/livez, /readyz, /config), or `off`.
    #[arg(long, env = "SLUICE_ADMIN_LISTEN", value_name = "ADDR", default_value = "127.0.0.1:9901")]
    admin_listen: String,
    /// Certificate of the admin listener (with --admin-tls-key): it then speaks HTTPS only. Needed,
    /// with a token, to bind it beyond loopback.
    #[arg(long, env = "SLUICE_ADMIN_TLS_CERT", value_name = "FILE")]
    admin_tls_cert: Option<PathBuf>,
    /// Private key of --admin-tls-cert.
    #[arg(long, env = "SLUICE_ADMIN_TLS_KEY", value_name = "FILE")]
    admin_tls_key: Option<PathBuf>,
    /// Allow the admin listener beyond loopback without TLS (its token and answers then cross
    /// the network in clear).
    #[arg(long, env = "SLUICE_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// File holding the bearer token the admin listener requires; needed to bind it beyond loopback.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN_FILE", value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// How long in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "SLUICE_DRAIN_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = duration)]
    drain_timeout: Duration,
    /// How often the config file is checked for changes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    watch_interval: Duration,
    /// Memory the routes' response caches share (each route with `cache` takes its
    /// `memory_percent`): 64MiB, 1GiB, or bytes.
    #[arg(long, env = "SLUICE_CACHE_MEMORY", value_name = "SIZE", default_value = "64MiB", value_parser = byte_size)]
    cache_memory: u64,
    /// Worker threads, each an event loop of its own (default: one per CPU).
    #[arg(long, env = "SLUICE_WORKERS")]
    workers: Option<usize>,
    /// Log line format on stderr: `text`, or `json` (one object per line; fields in
    /// docs/runbook.md, "Logs").
    #[arg(long, env = "SLUICE_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
    #[command(flatten)]
    managed: ManagedArgs,
}

/// Managed mode: config comes from a control plane as signed bundles.
#[derive(Args)]
struct ManagedArgs {
    /// Take config from this control plane (gRPC URL, e.g. http://127.0.0.1:7001).
    #[arg(long, env = "SLUICE_CONTROL_PLANE", value_name = "URL")]
    control_plane: Option<String>,
    /// The fleet this data plane serves.
    #[arg(long, env = "SLUICE_FLEET", value_name = "NAME")]
    fleet: Option<String>,
    /// This data plane's id within the fleet.
    #[arg(long, env = "SLUICE_NODE_ID", value_name = "ID")]
    node_id: Option<String>,
    /// Public keys bundles must be signed with (`sluice keys generate` writes one); re-read when
    /// it changes and on SIGHUP.
    #[arg(long, env = "SLUICE_TRUSTED_KEYS", value_name = "FILE")]
    trusted_keys: Option<PathBuf>,
    /// At boot without the control plane, refuse a cached bundle whose freshness statement has
    /// lapsed (and serve nothing) instead of serving it with a warning.
    #[arg(long, env = "SLUICE_REFUSE_STALE_CACHE")]
    refuse_stale_cache: bool,
    /// Root keys and their threshold (`sluice keys root init`): trust sets on the stream signed
    /// by that many of them replace --trusted-keys. Without it, trust sets are ignored.
    #[arg(long, env = "SLUICE_ROOT_KEYS", value_name = "FILE")]
    root_keys: Option<PathBuf>,
    /// Where the last accepted bundle is kept, to serve it when the control plane is away.
    #[arg(long, env = "SLUICE_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Bind listener NAME at ADDR on this node instead of the config's address (repeatable).
    #[arg(long = "listener-address", value_name = "NAME=ADDR")]
    listener_address: Vec<String>,
    /// A label reported to the control plane (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    label: Vec<String>,
    /// How often traffic statistics (canary, cohorts, mirroring) are reported to the control plane.
    #[arg(long, env = "SLUICE_REPORT_INTERVAL", value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    report_interval: Duration,
    /// CA bundle that verifies an https:// control plane.
    #[arg(long, env = "SLUICE_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// This data plane's client certificate (its URI SAN names its fleet and node); re-read when
    /// it changes.
    #[arg(long, env = "SLUICE_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// The private key of --cert.
    #[arg(long, env = "SLUICE_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
}

impl ManagedArgs {
    fn to_managed(&self, url: &str) -> anyhow::Result<Managed> {
        let need =
            |v: &Option<String>, flag: &str| v.clone().with_context(|| format!("managed mode needs {flag}"));
        let trusted_path = self.trusted_keys.as_ref().context("managed mode needs --trusted-keys FILE")?;
        let trusted =
            Watched::load("trusted_keys", TrustedKeysFile(trusted_path.clone())).context("--trusted-keys")?;
        let roots = match &self.root_keys {
            Some(path) => Some(RootKeys::load(path).context("--root-keys")?),
            None => None,
        };
        let pair = |s: &str, what: &str| -> anyhow::Result<(String, String)> {
            let (k, v) = s.split_once('=').with_context(|| format!("{what} takes NAME=VALUE, got {s:?}"))?;
            Ok((k.to_owned(), v.to_owned()))
        };
        let listener_overrides = self
            .listener_address
            .iter()
            .map(|s| {
                let (name, addr) = pair(s, "--listener-address")?;
                Ok((name, addr.parse().with_context(|| format!("--listener-address {s:?}: not an ip:port"))?))
            })
            .collect::<anyhow::Result<_>>()?;
        let https = url.starts_with("https://");
        let tls = match (https, &self.ca_file, &self.cert, &self.key) {
            (true, Some(ca), cert, key) => {
                let identity = match (cert, key) {
                    (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                    (None, None) => None,
                    _ => anyhow::bail!("--cert and --key go together"),
                };
                let files = ClientFiles { ca: ca.clone(), identity, alpn: vec![b"h2".to_vec()] };
                Some(Watched::load("data_plane_client", files)?)
            }
            (true, None, ..) => anyhow::bail!("an https:// control plane needs --ca-file to verify it"),
            (false, None, None, None) => None,
            (false, ..) => {
                anyhow::bail!("--ca-file, --cert and --key need an https:// control plane URL, not {url}")
            }
        };
        Ok(Managed {
            control_plane: url.to_owned(),
            fleet: need(&self.fleet, "--fleet NAME")?,
            node_id: need(&self.node_id, "--node-id ID")?,
            labels: self.label.iter().map(|s| pair(s, "--label")).collect::<anyhow::Result<_>>()?,
            trusted,
            state_dir: self.state_dir.clone().context("managed mode needs --state-dir DIR")?,
            listener_overrides,
            report_every: self.report_interval,
            tls,
            refuse_stale_cache: self.refuse_stale_cache,
            roots,
            trust: Default::default(),
        })
    }
}

fn byte_size(s: &str) -> Result<u64, String> {
    s.parse::<u64>().or_else(|_| sluice_bundle::ByteSize::parse(s).map(|b| b.0))
}

fn duration(s: &str) -> Result<Duration, String> {
    sluice_bundle::Duration::parse(s).map(Into::into)
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err("must be above zero".into()),
        d => Ok(d),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Schema) => {
            let schema = sluice_bundle::schema::json_schema();
            #[allow(clippy::print_stdout)]
            {
                println!("{}", serde_json::to_string_pretty(&schema).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Some(Command::Check { config_file }) => check(&config_file),
        None => {
            logging::init(cli.run.log_format, None::<tracing_subscriber::layer::Identity>);
            match run(cli.run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(path: &PathBuf) -> ExitCode {
    match FileSource::new(path).load() {
        Ok(loaded) => {
            let c = &loaded.config;
            eprintln!(
                "{}: ok ({} listeners, {} pools, {} routes)",
                path.display(),
                c.listeners.len(),
                c.pools.len(),
                c.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let lines = e.lines();
            eprintln!("{}: {} error{}", path.display(), lines.len(), if lines.len() == 1 { "" } else { "s" });
            for line in lines {
                eprintln!("  {line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Where config comes from.
enum Mode {
    Standalone(FileSource, sluice_data_plane::Loaded),
    Managed(Managed),
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let admin: Option<SocketAddr> = match args.admin_listen.as_str() {
        "off" => None,
        a => Some(a.parse().with_context(|| format!("--admin-listen {a:?} is not an ip:port or `off`"))?),
    };
    let admin_token = args.admin_token_file.as_deref().map(sluice_tls::files::secret).transpose()?;
    if let Some(addr) = admin
        && !addr.ip().is_loopback()
        && admin_token.is_none()
    {
        bail!(
            "the admin listener on {addr} is reachable beyond this host: give it a token with --admin-token-file"
        );
    }
    let admin_tls = match (&args.admin_tls_cert, &args.admin_tls_key) {
        (Some(cert), Some(key)) => {
            let files = ServerFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
                crl: None,
                client_auth: ClientAuth::Off,
                alpn: vec![b"http/1.1".to_vec()],
            };
            Some(Watched::load("data_plane_admin", files).context("--admin-tls-cert/--admin-tls-key")?)
        }
        (None, None) => None,
        _ => bail!("--admin-tls-cert and --admin-tls-key go together"),
    };
    if let Some(addr) = admin
        && !addr.ip().is_loopback()
        && admin_tls.is_none()
        && !args.insecure_plaintext
    {
        bail!(
            "the admin listener on {addr} is reachable beyond this host: serve it over TLS \
             (--admin-tls-cert, --admin-tls-key), or pass --insecure-plaintext to send its token in clear"
        );
    }
    let mode = match (&args.config_file, &args.managed.control_plane) {
        (Some(_), Some(_)) => {
            bail!("--config-file and --control-plane are exclusive: run standalone or managed")
        }
        (None, None) => {
            bail!("give --config-file FILE (standalone) or --control-plane URL (managed); see --help")
        }
        (Some(file), None) => {
            let source = FileSource::new(file);
            let loaded = source.load().map_err(|e| {
                for line in e.lines() {
                    tracing::error!("  {line}");
                }
                anyhow::anyhow!(
                    "{} is not a valid config ({} errors above)",
                    source.path().display(),
                    e.lines().len()
                )
            })?;
            Mode::Standalone(source, loaded)
        }
        (None, Some(url)) => Mode::Managed(args.managed.to_managed(url)?),
    };

    // This thread runs control work (admin, reloads, signals); traffic runs on the workers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let telemetry = Telemetry::from_env("sluice-proxy")?;
        if telemetry.is_some() {
            tracing::info!("tracing requests to the OTLP endpoint in OTEL_EXPORTER_OTLP_*ENDPOINT");
        }
        let proxy = Proxy::new(Options {
            workers: args.workers.unwrap_or_else(sluice_data_plane::worker::default_count),
            drain_timeout: args.drain_timeout,
            admin_token,
            tracer: telemetry.as_ref().map(|t| t.tracer.clone()),
            cache_memory: args.cache_memory,
        })
        .context("cannot start the worker threads")?;
        let background = match mode {
            Mode::Standalone(source, loaded) => {
                proxy.apply(loaded.config, &source.name(), loaded.sha256)?;
                let (proxy, interval) = (proxy.clone(), args.watch_interval);
                tokio::spawn(async move {
                    if let Err(e) = source.watch(proxy, interval).await {
                        tracing::error!(error = %e, "cannot watch the config file");
                    }
                })
            }
            Mode::Managed(managed) => {
                if let Some(tls) = &managed.tls {
                    proxy.watch_files(tls.clone());
                    tls.spawn(sluice_tls::watch::DEFAULT_INTERVAL);
                }
                proxy.watch_files(managed.trusted.clone());
                managed.trusted.spawn(sluice_tls::watch::DEFAULT_INTERVAL);
                managed.boot_from_cache(&proxy);
                tokio::spawn(managed.run(proxy.clone()))
            }
        };
        if let Some(addr) = admin {
            let serving = match admin_tls {
                Some(tls) => {
                    tls.spawn(sluice_tls::watch::DEFAULT_INTERVAL);
                    proxy.serve_admin_tls(addr, tls).await
                }
                None => proxy.serve_admin(addr).await,
            };
            serving.with_context(|| format!("cannot bind the admin listener on {addr}"))?;
        }

        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => break tracing::info!("SIGTERM received"),
                _ = int.recv() => break tracing::info!("SIGINT received"),
                // The config file (standalone) has its own SIGHUP handler; this one is for TLS and trusted keys.
                _ = hup.recv() => proxy.reload_files(),
            }
        }
        background.abort();
        tokio::select! {
            () = proxy.drain() => tracing::info!("drained; exiting"),
            _ = term.recv() => tracing::warn!("second SIGTERM: exiting without waiting"),
            _ = int.recv() => tracing::warn!("second SIGINT: exiting without waiting"),
        }
        // The drained requests' spans are ended; send them before the runtime goes.
        if let Some(t) = telemetry {
            t.shutdown().await;
        }
        Ok(())
    })
}
