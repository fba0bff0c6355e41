//! `sluice-control-plane`: flags and signals around [`sluice_control_plane::start`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_bundle::ByteSize;
use sluice_bundle::sign::trust::RootKeys;
use sluice_control_plane::access::{Access, PolicyFile};
use sluice_control_plane::keys::{KeyFiles, Keyring};
use sluice_control_plane::{Options, Security, store::Store};
use sluice_observe::logging::{self, LogFormat};
use sluice_observe::telemetry::Telemetry;
use sluice_tls::{ClientAuth, ServerFiles, Watched};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::Level;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;

#[derive(Parser)]
#[command(
    name = "sluice-control-plane",
    version,
    about = "Sluice control plane: signed, versioned config in PostgreSQL, streamed to data planes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// PostgreSQL URL, e.g. postgres://postgres@127.0.0.1:5432/sluice.
    #[arg(long, env = "SLUICE_DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// gRPC address for the CLI and data planes.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:7001")]
    listen: SocketAddr,
    /// Private signing-key file (`sluice keys generate`), or a directory of them (every `*.json`
    /// inside); repeatable. Re-read when it changes. Which of them sign is the database's active
    /// set (`sluice keys`).
    #[arg(long, env = "SLUICE_SIGNING_KEY", value_delimiter = ',', required = false)]
    signing_key: Vec<PathBuf>,
    /// How long a freshness statement vouches for a version: data planes refuse pushed bundles
    /// whose statement lapsed and report themselves stale. Renewed every quarter of it.
    #[arg(long, env = "SLUICE_FRESHNESS_LIFETIME", value_parser = duration, default_value = "12h")]
    freshness_lifetime: Duration,
    /// Root keys and their threshold (`sluice keys root init`): a trust set is stored only when
    /// that many of them signed it. Data planes check it themselves either way.
    #[arg(long, env = "SLUICE_ROOT_KEYS", value_name = "FILE")]
    root_keys: Option<PathBuf>,
    /// Replaced by freshness statements (--freshness-lifetime); accepted and ignored.
    #[arg(long, env = "SLUICE_BUNDLE_TTL", hide = true, value_parser = duration)]
    bundle_ttl: Option<Duration>,
    /// Largest signed bundle: a larger config is refused at apply. Told to data planes; gRPC
    /// messages may be twice it. At most 64MiB.
    #[arg(long, env = "SLUICE_MAX_BUNDLE_SIZE", value_parser = bundle_size, default_value = "16MiB")]
    max_bundle_size: usize,
    /// Longest a database call may take before it fails.
    #[arg(long, env = "SLUICE_DB_TIMEOUT", default_value = "5s", value_parser = duration)]
    db_timeout: Duration,
    /// HTTP address for Prometheus `/metrics` and `/livez`, or `off`.
    #[arg(long, env = "SLUICE_METRICS_LISTEN", default_value = "127.0.0.1:9101", value_parser = metrics_listen)]
    metrics_listen: MetricsListen,
    /// PEM certificate chain of the gRPC listener; with --tls-key, the listener speaks TLS only.
    #[arg(long, env = "SLUICE_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SLUICE_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA bundle that verifies client certificates (data planes, and operators who use one).
    #[arg(long, env = "SLUICE_CLIENT_CA", value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// PEM CRLs revoking client certificates; re-read when it changes.
    #[arg(long, env = "SLUICE_CRL", value_name = "FILE")]
    crl: Option<PathBuf>,
    /// Operators, their credentials (token hashes, certificate SANs) and roles per fleet.
    #[arg(long, env = "SLUICE_POLICY_FILE", value_name = "FILE")]
    policy_file: Option<PathBuf>,
    /// Trust domain of data-plane and operator certificates: `spiffe://<this>/…`.
    #[arg(long, env = "SLUICE_TRUST_DOMAIN", default_value = sluice_tls::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Accept data-plane certificates that name only a fleet (`…/fleet/<fleet>`): the holder may
    /// then speak for any node of that fleet. Weaker than per-node certificates.
    #[arg(long, env = "SLUICE_ALLOW_FLEET_SCOPED_CERTIFICATES")]
    allow_fleet_scoped_certificates: bool,
    /// Data-plane streams end after about this long, so data planes re-handshake with their
    /// current certificate (which the CRL may have revoked since).
    #[arg(long, env = "SLUICE_MAX_STREAM_AGE", default_value = "30m", value_parser = duration)]
    max_stream_age: Duration,
    /// File holding the bearer token `/metrics` needs; with --tls-cert, what lets the metrics
    /// listener bind beyond loopback.
    #[arg(long, env = "SLUICE_METRICS_TOKEN_FILE", value_name = "FILE")]
    metrics_token_file: Option<PathBuf>,
    /// Allow a listener beyond loopback without TLS: tokens, bundles and reports then cross the
    /// network in clear.
    #[arg(long, env = "SLUICE_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// No authentication at all: every caller is admin and every data plane is believed. Only
    /// on a loopback listener, for development.
    #[arg(long, env = "SLUICE_INSECURE_ALLOW_ANONYMOUS")]
    insecure_allow_anonymous: bool,
    /// Forget data planes not heard from for this long, and their last reports (pods an
    /// autoscaler replaced); `off` keeps them. At least 1h. The audit trail is never pruned.
    #[arg(long, env = "SLUICE_DATAPLANE_RETENTION", default_value = "7d", value_parser = retention)]
    dataplane_retention: Retention,
    /// Log line format on stderr: `text`, or `json` (one object per line; fields in
    /// docs/runbook.md, "Logs").
    #[arg(long, env = "SLUICE_LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,
}

/// `--dataplane-retention`: how long, or `None` for `off`.
#[derive(Clone, Copy)]
struct Retention(Option<Duration>);

fn retention(s: &str) -> Result<Retention, String> {
    if s == "off" {
        return Ok(Retention(None));
    }
    let d = duration(s)?;
    if d < Duration::from_secs(3600) {
        // Shorter would forget data planes that are only briefly cut off from every replica.
        return Err("must be at least 1h (or `off`)".into());
    }
    Ok(Retention(Some(d)))
}

/// `--metrics-listen`: an address, or `None` for `off`.
#[derive(Clone, Copy)]
struct MetricsListen(Option<SocketAddr>);

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations and exit.
    Migrate,
}

/// How the gRPC listener is secured, from the flags; every problem with them at once.
fn security(cli: &Cli) -> anyhow::Result<Security> {
    let mut problems = Vec::new();
    let loopback = cli.listen.ip().is_loopback();
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            let files = ServerFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: cli.client_ca.clone(),
                crl: cli.crl.clone(),
                // Operators may come with a token and no certificate; data planes need one.
                client_auth: if cli.client_ca.is_some() { ClientAuth::Optional } else { ClientAuth::Off },
                alpn: vec![b"h2".to_vec()],
            };
            match Watched::load("control_plane_server", files) {
                Ok(w) => Some(w),
                Err(e) => {
                    problems.push(format!("--tls-cert/--tls-key: {e}"));
                    None
                }
            }
        }
        (None, None) => None,
        _ => {
            problems.push("--tls-cert and --tls-key go together".to_owned());
            None
        }
    };
    let plaintext = cli.tls_cert.is_none() && cli.tls_key.is_none();
    if plaintext && (cli.client_ca.is_some() || cli.crl.is_some()) {
        problems.push("--client-ca and --crl need TLS (--tls-cert, --tls-key)".to_owned());
    }
    if plaintext && !loopback && !cli.insecure_plaintext {
        problems.push(format!(
            "refusing to serve {} without TLS beyond loopback: give --tls-cert and --tls-key \
             (`sluice certs init` makes a development set), or pass --insecure-plaintext",
            cli.listen
        ));
    }
    let policy = match &cli.policy_file {
        Some(path) => match Watched::load("policy", PolicyFile(path.clone())) {
            Ok(p) => Some(p),
            Err(e) => {
                problems.push(format!("--policy-file: {e}"));
                None
            }
        },
        None if cli.insecure_allow_anonymous => None,
        None => {
            problems.push(
                "--policy-file is required: it names the operators and their roles \
                 (`sluice certs init` writes one); for a loopback-only development control plane \
                 without authentication, pass --insecure-allow-anonymous"
                    .to_owned(),
            );
            None
        }
    };
    if cli.insecure_allow_anonymous && !loopback {
        problems.push(format!(
            "--insecure-allow-anonymous is only allowed on a loopback listener, not {}",
            cli.listen
        ));
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    if cli.insecure_allow_anonymous {
        tracing::warn!(
            "--insecure-allow-anonymous: every caller on {} is admin and every data plane is believed",
            cli.listen
        );
    }
    if plaintext && !loopback {
        tracing::warn!(listen = %cli.listen, "--insecure-plaintext: tokens, bundles and reports cross the network in clear");
    }
    Ok(Security {
        tls,
        access: Access {
            trust_domain: cli.trust_domain.clone(),
            fleet_scoped: cli.allow_fleet_scoped_certificates,
            policy,
            anonymous: cli.insecure_allow_anonymous,
            denials: Default::default(),
            audit_every: sluice_control_plane::access::AUDIT_EVERY,
        },
        max_stream_age: Some(cli.max_stream_age),
    })
}

/// `250ms`, `5s`, `30d`: the config's duration units plus days.
fn duration(s: &str) -> Result<Duration, String> {
    if let Some(days) = s.strip_suffix('d') {
        let days = days.parse::<u64>().map_err(|e| e.to_string())?;
        return days
            .checked_mul(86_400)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{days} days is too long"));
    }
    sluice_bundle::Duration::parse(s).map(Into::into)
}

fn bundle_size(s: &str) -> Result<usize, String> {
    let n = ByteSize::parse(s)?.get();
    let ceiling = sluice_bundle::sign::MAX_PAYLOAD_CEILING as u64;
    if n == 0 || n > ceiling {
        return Err(format!("must be between 1 byte and {}", ByteSize(ceiling)));
    }
    Ok(n as usize)
}

fn metrics_listen(s: &str) -> Result<MetricsListen, String> {
    if s == "off" {
        return Ok(MetricsListen(None));
    }
    s.parse()
        .map(|a| MetricsListen(Some(a)))
        .map_err(|e| format!("{e} (want an address like 127.0.0.1:9101, or `off`)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The exporter needs the runtime; the log lines and the spans go through one subscriber.
    let telemetry = match runtime.block_on(async { Telemetry::from_env("sluice-control-plane") }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Spans of this crate only (apply, validate, store, publish, pushes, rollout steps), whatever
    // RUST_LOG says of the log lines: the dependencies' own spans would flood a trace.
    let spans = telemetry.as_ref().map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer.clone())
            .with_filter(Targets::new().with_target("sluice_control_plane", Level::INFO))
    });
    logging::init(cli.log_format, spans);
    match runtime.block_on(run(cli, telemetry)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, telemetry: Option<Telemetry>) -> anyhow::Result<()> {
    let database_url = cli
        .database_url
        .clone()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .context("--database-url (or SLUICE_DATABASE_URL / DATABASE_URL) is required")?;
    if let Some(Command::Migrate) = cli.command {
        let store = Store::connect(&database_url, cli.db_timeout).await?;
        store.migrate().await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let security = security(&cli)?;
    if cli.signing_key.is_empty() {
        anyhow::bail!("--signing-key (or SLUICE_SIGNING_KEY) is required: a key file or a directory of them");
    }
    if cli.bundle_ttl.is_some() {
        tracing::warn!(
            "--bundle-ttl is replaced by freshness statements and ignored; see --freshness-lifetime"
        );
    }
    let roots = match &cli.root_keys {
        Some(path) => Some(RootKeys::load(path).context("--root-keys")?),
        None => None,
    };
    let keyring = Keyring::load(KeyFiles(cli.signing_key.clone()), cli.freshness_lifetime)
        .context("--signing-key")?
        .with_roots(roots);
    let metrics_token = cli.metrics_token_file.as_deref().map(sluice_tls::files::secret).transpose()?;
    // Beyond loopback: TLS (the gRPC listener's certificate) and a token, unless told otherwise.
    let metrics_tls = match (&cli.metrics_listen, &cli.tls_cert, &cli.tls_key) {
        (MetricsListen(Some(a)), Some(cert), Some(key)) if !a.ip().is_loopback() => {
            let files = ServerFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
                crl: None,
                client_auth: ClientAuth::Off,
                alpn: vec![b"http/1.1".to_vec()],
            };
            Some(Watched::load("control_plane_metrics", files)?)
        }
        _ => None,
    };
    let metrics_listener = match cli.metrics_listen {
        MetricsListen(Some(address))
            if !address.ip().is_loopback()
                && (metrics_tls.is_none() || metrics_token.is_none())
                && !cli.insecure_plaintext =>
        {
            anyhow::bail!(
                "refusing to serve metrics on {address} beyond loopback without TLS (--tls-cert, \
                 --tls-key) and a token (--metrics-token-file); pass --insecure-plaintext to serve \
                 them in clear to whoever can reach the port"
            );
        }
        MetricsListen(Some(address)) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot bind the metrics listener to {address}"))?,
        ),
        MetricsListen(None) => None,
    };
    let running = sluice_control_plane::start(Options {
        database_url,
        listen: cli.listen,
        keyring,
        max_bundle_bytes: cli.max_bundle_size,
        db_timeout: cli.db_timeout,
        security,
        retention: cli.dataplane_retention.0,
    })
    .await?;
    let guard = sluice_control_plane::metrics::Guard { tls: metrics_tls, token: metrics_token };
    if let Some(listener) = metrics_listener
        && let Err(e) = running.serve_metrics_guarded(listener, guard)
    {
        running.stop().await;
        return Err(anyhow::Error::new(e).context("cannot serve metrics"));
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break tracing::info!("SIGTERM received"),
            _ = int.recv() => break tracing::info!("SIGINT received"),
            _ = hup.recv() => {
                tracing::info!("SIGHUP received: re-reading certificate, CRL, policy and signing-key files");
                running.reload();
            }
        }
    }
    running.stop().await;
    if let Some(t) = telemetry {
        t.shutdown().await;
    }
    Ok(())
}
