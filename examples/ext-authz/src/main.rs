//! `sluice-example-authz`: serves `envoy.service.auth.v3.Authorization` (plaintext h2c) with the
//! policy in a JSON file, logging each decision.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use sluice_example_authz::{Authz, Policy};

/// Example Envoy external authorization (ext_authz) gRPC server.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (plaintext h2c).
    #[arg(long, default_value = "127.0.0.1:9191")]
    listen: SocketAddr,
    /// Policy file (JSON): see policy.json beside this crate.
    #[arg(long)]
    policy: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let args = Args::parse();

    let text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("reading {}", args.policy.display()))?;
    let policy = Policy::from_json(&text).with_context(|| format!("parsing {}", args.policy.display()))?;
    tracing::info!(listen = %args.listen, rules = policy.rules.len(), default_allow = policy.default_allow, "serving envoy.service.auth.v3.Authorization");

    tonic::transport::Server::builder()
        .add_service(Authz::new(policy).into_service())
        .serve_with_shutdown(args.listen, async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        })
        .await
        .with_context(|| format!("serving on {}", args.listen))?;
    Ok(())
}
