//! `sluice-control-plane`: flags and signals around [`sluice_control_plane::start`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_bundle::sign::SigningKey;
use sluice_control_plane::{Options, store::Store};
use sluice_data_plane::telemetry::Telemetry;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

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
    /// Private key that signs bundles (`sluice keys generate`).
    #[arg(long, env = "SLUICE_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
    /// How long a signed bundle stays valid on data planes.
    #[arg(long, env = "SLUICE_BUNDLE_TTL", default_value = "30d", value_parser = duration)]
    bundle_ttl: Duration,
    /// Longest a database call may take before it fails.
    #[arg(long, env = "SLUICE_DB_TIMEOUT", default_value = "5s", value_parser = duration)]
    db_timeout: Duration,
    /// HTTP address for Prometheus `/metrics` and `/livez`, or `off`.
    #[arg(long, env = "SLUICE_METRICS_LISTEN", default_value = "127.0.0.1:9101", value_parser = metrics_listen)]
    metrics_listen: MetricsListen,
}

/// `--metrics-listen`: an address, or `None` for `off`.
#[derive(Clone, Copy)]
struct MetricsListen(Option<SocketAddr>);

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations and exit.
    Migrate,
}

/// `250ms`, `5s`, `30d`: the config's duration units plus days.
fn duration(s: &str) -> Result<Duration, String> {
    if let Some(days) = s.strip_suffix('d') {
        return days.parse::<u64>().map(|d| Duration::from_secs(d * 86_400)).map_err(|e| e.to_string());
    }
    sluice_bundle::Duration::parse(s).map(Into::into)
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let database_url = cli
        .database_url
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .context("--database-url (or SLUICE_DATABASE_URL / DATABASE_URL) is required")?;
    if let Some(Command::Migrate) = cli.command {
        let store = Store::connect(&database_url, cli.db_timeout).await?;
        store.migrate().await?;
        tracing::info!("migrations applied");
        return Ok(());
    }
    let key_path = cli.signing_key.context("--signing-key (or SLUICE_SIGNING_KEY) is required")?;
    let key_text = std::fs::read_to_string(&key_path)
        .with_context(|| format!("cannot read signing key {}", key_path.display()))?;
    let signing_key = SigningKey::from_file(&key_text).with_context(|| format!("{}", key_path.display()))?;
    let metrics_listener = match cli.metrics_listen {
        MetricsListen(Some(address)) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot bind the metrics listener to {address}"))?,
        ),
        MetricsListen(None) => None,
    };
    let telemetry = Telemetry::from_env("sluice-control-plane")?;
    let running = sluice_control_plane::start(Options {
        database_url,
        listen: cli.listen,
        signing_key,
        bundle_ttl: cli.bundle_ttl,
        db_timeout: cli.db_timeout,
        tracer: telemetry.as_ref().map(|t| t.tracer.clone()),
    })
    .await?;
    if let Some(listener) = metrics_listener
        && let Err(e) = running.serve_metrics(listener)
    {
        running.stop().await;
        return Err(anyhow::Error::new(e).context("cannot serve metrics"));
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    running.stop().await;
    if let Some(t) = telemetry {
        t.shutdown().await;
    }
    Ok(())
}
