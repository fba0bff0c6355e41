//! `sluice`: validate, diff, apply and roll back configs; see history, data planes, their
//! traffic reports (shadow, canary) and the audit trail; watch and steer progressive rollouts.
//! Data goes to stdout (table, JSON or YAML), messages to stderr.
//!
//! Rollouts: `sluice apply -f FILE --rollout STRATEGY.yaml` (or `--strategy canary|linear|
//! all-at-once`, or the fleet's default strategy, set with `sluice rollout default`) stores the
//! version and has the control plane walk it through the fleet step by step, judging health
//! gates after each. `sluice rollout status --watch --timeout 10m` follows it to the end (and is
//! the command for CI); `sluice rollout pause|resume|promote|abort` steer it.
//!
//! Exit codes: 0 success (for `diff`: no changes; for `rollout status`: the rollout did not fail);
//! 1 refused (invalid config, not found, no rollout to act on) or, for `diff`, changes found, or,
//! for `rollout status`, the rollout failed or was aborted; 2 usage error or, for `diff`, an
//! invalid document; 3 conflict (the head moved, `--expect-version`); 4 the control plane cannot
//! be reached; 5 the control plane failed (for example its database is down); 6 `rollout status
//! --watch --timeout` ran out of time before the rollout finished.

#![forbid(unsafe_code)]

mod output;
mod report;
mod rollout;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use prost::Message as _;
use sluice_bundle::{Format, parse};
use sluice_proto::v1 as pb;
use sluice_proto::v1::config_service_client::ConfigServiceClient;
use sluice_tls::connect::TlsConnector;
use sluice_tls::{ClientFiles, Watched};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

pub use output::OutputFormat;

/// Exit codes (see the crate docs).
pub mod exit {
    pub const OK: u8 = 0;
    pub const REFUSED: u8 = 1;
    pub const CHANGES: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const CONFLICT: u8 = 3;
    pub const UNREACHABLE: u8 = 4;
    pub const SERVER: u8 = 5;
    /// `rollout status --watch --timeout`: the rollout had not finished in time.
    pub const TIMEOUT: u8 = 6;
    /// No usable credentials, or the credentials lack the permission the call needs.
    pub const DENIED: u8 = 7;
}

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Drive a Sluice fleet: validate, diff, apply, roll back, roll out, watch",
    after_help = "Exit codes: 0 ok; 1 refused, changes (diff) or a failed/aborted rollout; 2 usage; \
                  3 conflict; 4 control plane unreachable; 5 control plane failed; 6 timed out \
                  (rollout status --watch --timeout); 7 not authenticated or not permitted"
)]
pub struct Cli {
    /// Control plane address.
    #[arg(long, env = "SLUICE_SERVER", default_value = "http://127.0.0.1:7001", global = true)]
    pub server: String,
    /// Fleet to act on.
    #[arg(long, env = "SLUICE_FLEET", default_value = "default", global = true)]
    pub fleet: String,
    /// Output format for data.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How the CLI proves who it is and checks whom it talks to. A token is never a flag value
/// (`ps` shows those): it comes from `--token-file`, else `SLUICE_TOKEN`. A token and a client
/// certificate may both be given; the control plane then goes by the token.
#[derive(Args, Debug, Clone, Default)]
pub struct CredentialArgs {
    /// CA bundle that verifies an https:// control plane.
    #[arg(long, env = "SLUICE_CA_FILE", value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (mTLS), with --key.
    #[arg(long, env = "SLUICE_CERT", value_name = "FILE", global = true)]
    pub cert: Option<PathBuf>,
    /// Private key of --cert.
    #[arg(long, env = "SLUICE_KEY", value_name = "FILE", global = true)]
    pub key: Option<PathBuf>,
    /// File holding the bearer token (wins over SLUICE_TOKEN).
    #[arg(long, env = "SLUICE_TOKEN_FILE", value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check a config file offline: every error with its path.
    Validate(FileArg),
    /// Show what applying a file would change (exit 0: nothing, 1: changes).
    Diff {
        #[command(flatten)]
        file: FileArg,
        /// Compare with this version instead of the head.
        #[arg(long)]
        against: Option<u64>,
    },
    /// Validate, sign and store a file as the fleet's next version, and roll it out.
    ///
    /// With --rollout or --strategy, or else the fleet's default strategy, the control plane moves
    /// the version onto the data planes step by step and judges health gates after each step
    /// (follow it with `sluice rollout status --watch`); without any, every data plane gets it at
    /// once.
    Apply {
        #[command(flatten)]
        file: FileArg,
        #[command(flatten)]
        strategy: StrategyArgs,
        #[command(flatten)]
        change: ChangeArgs,
        /// Number the new version at least N (stored even if its content equals the head's,
        /// when N is above the head + 1): after restoring the database from an older backup,
        /// continue above the versions data planes serve (`sluice dataplanes` shows them AHEAD).
        /// At most one above the highest they report.
        #[arg(long, value_name = "N")]
        min_version: Option<u64>,
    },
    /// Print a stored version's config (the head by default).
    Get {
        #[arg(long)]
        version: Option<u64>,
    },
    /// List the fleet's versions, newest first.
    History {
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Publish a new version with the content of an earlier one.
    Rollback {
        /// The version whose content to restore.
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// The fleet's data planes: which version each serves, and whether it is SYNCED, STALE,
    /// NACKED, STALE_FRESHNESS, AHEAD (above the fleet's head: a restored database) or
    /// DISCONNECTED.
    Dataplanes {
        /// All fleets, not just --fleet.
        #[arg(long)]
        all: bool,
    },
    /// The audit trail, newest first, with a check of its hash chain.
    Audit {
        /// Only events this recent: a duration (`1h`, `30m`) or Unix seconds.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        /// `apply`, `rollback`, `nack`, `rollout`, `rollout-request`, `default-strategy`, `cache_purge` or
        /// `access_denied` (refused calls; those refused before naming a fleet need --all).
        #[arg(long)]
        action: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// All fleets, not just --fleet.
        #[arg(long)]
        all: bool,
    },
    /// Mirrored (shadow) traffic: what the data planes report.
    Shadow {
        #[command(subcommand)]
        command: ShadowCommand,
    },
    /// Canary and cohort traffic: what the data planes report.
    Canary {
        #[command(subcommand)]
        command: CanaryCommand,
    },
    /// Progressive rollouts: follow, pause, resume, promote or abort them; the default strategy.
    ///
    /// A rollout walks a version applied with a strategy through the fleet step by step; while
    /// each step bakes, its health gates (error rate, p99, p99 against the previous version) must
    /// hold, or the fleet goes back to the previous version. A fleet has at most one unfinished
    /// rollout, which these commands act on.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Response caches of the fleet's data planes.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Development certificates and credentials.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Remove stored answers from a route's cache on every connected data plane of the fleet
    /// (audited). Exit 1 if a data plane refused or did not answer in time.
    Purge {
        #[arg(long)]
        route: String,
        /// Exactly this path, with any query.
        #[arg(long, conflicts_with = "prefix")]
        path: Option<String>,
        /// Every path under this prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// How long to wait for the data planes' answers.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: sluice_bundle::Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Write a development PKI: a CA, the control plane's server certificate, a client
    /// certificate per data plane of --fleet, an operator certificate and token, and a policy
    /// file giving that operator admin on every fleet.
    Init {
        /// Directory to write into (created; an existing CA there is not overwritten).
        #[arg(long)]
        out: PathBuf,
        /// A data plane's node id (repeatable); by default node-1 and node-2.
        #[arg(long = "node", value_name = "ID")]
        nodes: Vec<String>,
        /// Instead of --node: this many data planes, node-1 … node-N.
        #[arg(long, conflicts_with = "nodes")]
        count: Option<u32>,
        /// DNS name of the control plane's certificate (repeatable; localhost is always in).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// IP address of the control plane's certificate (repeatable; 127.0.0.1 and ::1 are in).
        #[arg(long = "ip", value_name = "ADDR")]
        ips: Vec<std::net::IpAddr>,
        /// The operator's name in the policy and its certificate.
        #[arg(long, default_value = "admin")]
        operator: String,
        #[arg(long, default_value = sluice_tls::identity::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Days the certificates stay valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Write a new private signing key and its trusted-keys file.
    Generate {
        /// Directory to write `signing-key.json` (keep secret) and `trusted-keys.json` into.
        #[arg(long)]
        out: PathBuf,
    },
    /// The signing keys control planes agree on: active ones sign every version; `held` ones are
    /// held by the answering control plane and not activated yet.
    List,
    /// Make a key active: every control plane signs with it from now on, and the versions in use
    /// get its signature at once (pushed to data planes). Every control plane must hold its file.
    Activate { key_id: String },
    /// Stop signing with a key. Refused for the last active key, or while a version in use has no
    /// other active key's signature.
    Retire { key_id: String },
    /// Root keys: kept offline, they sign the trusted-key sets data planes take from the stream.
    Root {
        #[command(subcommand)]
        command: RootCommand,
    },
    /// Trusted-key sets signed by root keys, pushed to data planes started with --root-keys.
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// The whole rotation to a new signing key, waiting for the fleet at each step: publish a
    /// trust set naming the active keys and the new one, activate the new key, retire the old
    /// ones, publish a trust set naming the new key alone.
    Rotate {
        /// The new key (`sluice keys generate`; every control plane must already hold its file).
        #[arg(long)]
        new_key: String,
        /// Root private keys to sign the trust sets with (repeatable; as many as the threshold).
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
        /// Longest each step waits for every connected data plane.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        wait: sluice_bundle::Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum RootCommand {
    /// Write `count` root private keys (keep them offline) and `root-keys.json`, the public halves
    /// and the threshold, for data planes' --root-keys.
    Init {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 3)]
        count: usize,
        /// How many of them must sign a trust set.
        #[arg(long, default_value_t = 2)]
        threshold: usize,
    },
}

#[derive(Subcommand, Debug)]
pub enum TrustCommand {
    /// The newest trust set: its version and the keys it names.
    Show,
    /// Sign a trust set naming the keys in a trusted-keys file with root keys (here, never sent)
    /// and publish it as the next version.
    Publish {
        /// A trusted-keys file (`trusted-keys.json`) listing the keys to trust.
        #[arg(long)]
        trusted_keys: PathBuf,
        /// Root private keys to sign with (repeatable; as many as the threshold).
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ShadowCommand {
    /// Per mirrored route, summed over the fleet's connected data planes: shadow requests sent,
    /// failed and dropped, the guardrail, each field's diff and noise rates with whether it is
    /// significant, and the most recent differences (masked).
    Report(ReportArgs),
}

#[derive(Subcommand, Debug)]
pub enum CanaryCommand {
    /// Per route that splits traffic, summed over the fleet's connected data planes: each
    /// variant's requests, errors, error rate and p50/p95/p99 latency, and the safety brake.
    Report(ReportArgs),
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// The fleet's current (or latest) rollout: state, step, gates, data planes.
    ///
    /// Shows the state, the step, what the rollout waits for, each gate's value against its
    /// threshold and each data plane's version and ACK or NACK. Exit 1 when the rollout failed or
    /// was aborted, 6 when --watch --timeout ran out first.
    Status {
        /// Poll every second until the rollout succeeds (exit 0), fails or is aborted (exit 1).
        /// Keeps going while the control plane restarts. At a terminal with `-o table` the view is
        /// redrawn; otherwise one line (JSON object, YAML document) is printed per change.
        #[arg(long)]
        watch: bool,
        /// Give up watching after this long (`90s`, `5m`, `1h`) with exit code 6.
        #[arg(long, requires = "watch", value_parser = parse_duration, value_name = "DURATION")]
        timeout: Option<sluice_bundle::Duration>,
    },
    /// Hold the rollout at its current step until `resume`: no data plane moves, no deadline runs.
    Pause(ActorArg),
    /// Let a paused rollout go on: its current step starts again.
    Resume(ActorArg),
    /// Skip the remaining steps and gates: every data plane gets the version now, and the rollout
    /// succeeds on their ACKs.
    Promote(ActorArg),
    /// Stop the rollout and move its data planes back to the version the fleet served before.
    Abort(ActorArg),
    /// Show, set or clear the strategy applies use when they name none.
    ///
    /// Without a flag, prints the fleet's default strategy; --rollout or --strategy sets it,
    /// --clear removes it (versions then go to every data plane at once).
    Default {
        #[command(flatten)]
        strategy: StrategyArgs,
        /// Remove the default: versions go to every data plane at once.
        #[arg(long, conflicts_with_all = ["rollout", "strategy"])]
        clear: bool,
        #[command(flatten)]
        actor: ActorArg,
    },
}

/// How a version reaches the data planes.
#[derive(Args, Debug)]
pub struct StrategyArgs {
    /// A rollout strategy file (`steps`, `gates`, `interval`, `progress_deadline`; YAML, or JSON
    /// for `.json`).
    #[arg(long, value_name = "FILE", conflicts_with = "strategy")]
    pub rollout: Option<PathBuf>,
    /// A built-in rollout strategy: `canary`, `linear` or `all-at-once`.
    #[arg(long, value_name = "NAME")]
    pub strategy: Option<String>,
}

#[derive(Args, Debug)]
pub struct ActorArg {
    /// Who: defaults to $SLUICE_AUTHOR, then $USER or $LOGNAME.
    #[arg(long, env = "SLUICE_AUTHOR")]
    pub author: Option<String>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Only this route.
    #[arg(long)]
    pub route: Option<String>,
}

#[derive(Args, Debug)]
pub struct FileArg {
    /// The config file (YAML, or JSON for `.json`); `-` reads stdin.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct ChangeArgs {
    /// Why: stored with the version and in the audit trail.
    #[arg(short = 'm', long = "message", default_value = "")]
    pub message: String,
    /// Refuse unless the fleet's head is this version (0: no version yet).
    #[arg(long)]
    pub expect_version: Option<u64>,
    /// Who: defaults to $SLUICE_AUTHOR, then $USER or $LOGNAME.
    #[arg(long, env = "SLUICE_AUTHOR")]
    pub author: Option<String>,
}

/// A failure with the exit code it should produce.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure { code, message: message.into() }
}

/// Runs a parsed command, writing data to `out` and messages to `err`. Returns the exit code.
pub async fn run(cli: Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match execute(&cli, out, err).await {
        Ok(code) => code,
        Err(f) => {
            let _ = writeln!(err, "error: {}", f.message);
            f.code
        }
    }
}

async fn execute(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<u8, Failure> {
    let fmt = cli.output;
    match &cli.command {
        Command::Validate(file) => {
            let (bytes, format) = read_document(&file.file)?;
            match parse(&bytes, format) {
                Ok(c) => {
                    let _ = writeln!(
                        err,
                        "{}: valid ({} listeners, {} pools, {} routes)",
                        file.file.display(),
                        c.listeners.len(),
                        c.pools.len(),
                        c.routes.len()
                    );
                    Ok(exit::OK)
                }
                Err(errors) => {
                    let errors: Vec<pb::ConfigError> = errors
                        .iter()
                        .map(|e| pb::ConfigError { path: e.path.clone(), message: e.message.clone() })
                        .collect();
                    output::config_errors(out, err, fmt, &file.file.display().to_string(), &errors);
                    Ok(exit::REFUSED)
                }
            }
        }
        Command::Diff { file, against } => {
            let (document, format) = read_document(&file.file)?;
            let mut client = connect(cli).await?;
            let req = pb::DiffRequest {
                fleet: cli.fleet.clone(),
                document,
                format: proto_format(format),
                against_version: *against,
            };
            match client.diff(req).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    output::diff(out, fmt, &cli.fleet, &resp);
                    Ok(if resp.changes.is_empty() { exit::OK } else { exit::CHANGES })
                }
                Err(status) => {
                    if let Some(errors) = config_errors(&status) {
                        output::config_errors(out, err, fmt, &file.file.display().to_string(), &errors);
                        return Ok(exit::USAGE);
                    }
                    Err(from_status(&status, &cli.server))
                }
            }
        }
        Command::Apply { file, strategy, change, min_version } => {
            let (document, format) = read_document(&file.file)?;
            let rollout = rollout_choice(strategy)?;
            let mut client = connect(cli).await?;
            let req = pb::ApplyRequest {
                fleet: cli.fleet.clone(),
                document,
                format: proto_format(format),
                expect_version: change.expect_version,
                author: author(change.author.as_deref()),
                message: change.message.clone(),
                rollout,
                min_version: min_version.unwrap_or(0),
            };
            match client.apply(req).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    output::applied(out, err, fmt, &resp);
                    rollout_started(err, cli, &resp);
                    Ok(exit::OK)
                }
                Err(status) => {
                    if let Some(errors) = config_errors(&status) {
                        let name = match &strategy.rollout {
                            Some(r) => format!("{} (rollout {})", file.file.display(), r.display()),
                            None => file.file.display().to_string(),
                        };
                        output::config_errors(out, err, fmt, &name, &errors);
                        return Ok(exit::REFUSED);
                    }
                    Err(from_status(&status, &cli.server))
                }
            }
        }
        Command::Get { version } => {
            let mut client = connect(cli).await?;
            let req = pb::GetVersionRequest { fleet: cli.fleet.clone(), version: *version };
            let detail =
                client.get_version(req).await.map_err(|s| from_status(&s, &cli.server))?.into_inner();
            output::version(out, err, fmt, &detail);
            Ok(exit::OK)
        }
        Command::History { limit } => {
            let mut client = connect(cli).await?;
            let req = pb::ListHistoryRequest { fleet: cli.fleet.clone(), limit: *limit };
            let resp = client.list_history(req).await.map_err(|s| from_status(&s, &cli.server))?.into_inner();
            output::history(out, fmt, &resp.versions);
            Ok(exit::OK)
        }
        Command::Rollback { to, change } => {
            let mut client = connect(cli).await?;
            let req = pb::RollbackRequest {
                fleet: cli.fleet.clone(),
                to_version: *to,
                expect_version: change.expect_version,
                author: author(change.author.as_deref()),
                message: change.message.clone(),
            };
            let resp = client.rollback(req).await.map_err(|s| from_status(&s, &cli.server))?.into_inner();
            output::applied(out, err, fmt, &resp);
            rollout_started(err, cli, &resp);
            Ok(exit::OK)
        }
        Command::Dataplanes { all } => {
            let mut client = connect(cli).await?;
            let fleet = if *all { String::new() } else { cli.fleet.clone() };
            let resp = client
                .list_data_planes(pb::ListDataPlanesRequest { fleet })
                .await
                .map_err(|s| from_status(&s, &cli.server))?
                .into_inner();
            output::data_planes(out, fmt, &resp.data_planes);
            Ok(exit::OK)
        }
        Command::Audit { since, actor, action, limit, all } => {
            let since = since.as_deref().map(parse_since).transpose()?;
            let mut client = connect(cli).await?;
            let req = pb::ListAuditRequest {
                fleet: if *all { String::new() } else { cli.fleet.clone() },
                since,
                actor: actor.clone().unwrap_or_default(),
                action: action.clone().unwrap_or_default(),
                limit: *limit,
            };
            let resp = client.list_audit(req).await.map_err(|s| from_status(&s, &cli.server))?.into_inner();
            output::audit(out, err, fmt, &resp);
            Ok(if resp.chain_intact { exit::OK } else { exit::REFUSED })
        }
        Command::Shadow { command: ShadowCommand::Report(args) } => {
            let (scope, report) = traffic_report(cli, args).await?;
            report::shadow(out, err, fmt, &scope, &report);
            Ok(exit::OK)
        }
        Command::Canary { command: CanaryCommand::Report(args) } => {
            let (scope, report) = traffic_report(cli, args).await?;
            report::canary(out, err, fmt, &scope, &report);
            Ok(exit::OK)
        }
        Command::Rollout { command } => rollout(cli, command, out, err).await,
        Command::Keys { command } => keys::run(cli, command, out, err).await,
        Command::Cache { command: CacheCommand::Purge { route, path, prefix, timeout } } => {
            let mut client = connect(cli).await?;
            let req = pb::PurgeCacheRequest {
                fleet: cli.fleet.clone(),
                route: route.clone(),
                path: path.clone().unwrap_or_default(),
                prefix: prefix.clone().unwrap_or_default(),
                timeout_ms: u32::try_from(timeout.get().as_millis()).unwrap_or(u32::MAX),
            };
            let resp = client.purge_cache(req).await.map_err(|s| from_status(&s, &cli.server))?.into_inner();
            output::purged(out, fmt, &resp);
            let complete =
                resp.nodes.len() >= resp.connected as usize && resp.nodes.iter().all(|n| n.error.is_empty());
            if !complete {
                let _ = writeln!(
                    err,
                    "{} of {} connected data planes purged without error",
                    resp.nodes.iter().filter(|n| n.error.is_empty()).count(),
                    resp.connected
                );
            }
            Ok(if complete { exit::OK } else { exit::REFUSED })
        }
        Command::Certs { command } => certs::run(command, &cli.fleet, err),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "sluice", out);
            Ok(exit::OK)
        }
    }
}

mod certs;
mod keys;

/// `sluice rollout ...`.
async fn rollout(
    cli: &Cli,
    command: &RolloutCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let fmt = cli.output;
    match command {
        RolloutCommand::Status { watch, timeout } => {
            let mut client = connect(cli).await?;
            let req = pb::GetRolloutRequest { fleet: cli.fleet.clone() };
            let s = client.get_rollout(req).await.map_err(|s| from_status(&s, &cli.server))?.into_inner();
            if !s.exists {
                return Err(rollout::no_rollout(&cli.fleet));
            }
            if !watch {
                rollout::status(out, fmt, &s);
                return Ok(rollout::exit_code(&s.state));
            }
            let w = rollout::Watch {
                fleet: &cli.fleet,
                fmt,
                redraw: fmt == OutputFormat::Table && std::io::stdout().is_terminal(),
                timeout: *timeout,
                every: Duration::from_secs(1),
            };
            let mut source = Remote { cli, fleet: &cli.fleet, client: Some(client) };
            rollout::watch(&mut source, &w, s, out, err).await
        }
        RolloutCommand::Default { strategy, clear, actor } => {
            let mut client = connect(cli).await?;
            let resp = if *clear || strategy.rollout.is_some() || strategy.strategy.is_some() {
                let req = pb::SetDefaultStrategyRequest {
                    fleet: cli.fleet.clone(),
                    rollout: rollout_choice(strategy)?,
                    actor: author(actor.author.as_deref()),
                };
                match client.set_default_strategy(req).await {
                    Ok(resp) => resp.into_inner(),
                    Err(status) => {
                        if let (Some(errors), Some(file)) = (config_errors(&status), &strategy.rollout) {
                            output::config_errors(out, err, fmt, &file.display().to_string(), &errors);
                            return Ok(exit::REFUSED);
                        }
                        return Err(from_status(&status, &cli.server));
                    }
                }
            } else {
                let req = pb::GetDefaultStrategyRequest { fleet: cli.fleet.clone() };
                client.get_default_strategy(req).await.map_err(|s| from_status(&s, &cli.server))?.into_inner()
            };
            rollout::default_strategy(out, fmt, &cli.fleet, &resp);
            Ok(exit::OK)
        }
        RolloutCommand::Pause(actor) => rollout_action(cli, "pause", actor, out, err).await,
        RolloutCommand::Resume(actor) => rollout_action(cli, "resume", actor, out, err).await,
        RolloutCommand::Promote(actor) => rollout_action(cli, "promote", actor, out, err).await,
        RolloutCommand::Abort(actor) => rollout_action(cli, "abort", actor, out, err).await,
    }
}

/// `sluice rollout pause|resume|promote|abort`: asks the rollout leader, shows where it stands.
async fn rollout_action(
    cli: &Cli,
    action: &str,
    actor: &ActorArg,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let mut client = connect(cli).await?;
    let req = pb::RolloutActionRequest {
        fleet: cli.fleet.clone(),
        action: action.to_owned(),
        actor: author(actor.author.as_deref()),
    };
    let s = client.rollout_action(req).await.map_err(|s| from_status(&s, &cli.server))?.into_inner();
    rollout::acted(out, err, cli.output, &s);
    Ok(exit::OK)
}

/// The rollout an apply's `--rollout FILE` or `--strategy NAME` asks for; none without either.
fn rollout_choice(args: &StrategyArgs) -> Result<Option<pb::RolloutChoice>, Failure> {
    use pb::rollout_choice::Choice;
    if let Some(path) = &args.rollout {
        let (document, format) = read_document(path)?;
        let choice = Some(Choice::Document(document));
        return Ok(Some(pb::RolloutChoice { choice, format: proto_format(format) }));
    }
    Ok(args.strategy.as_ref().map(|name| pb::RolloutChoice {
        choice: Some(Choice::Name(name.clone())),
        format: proto_format(Format::Yaml),
    }))
}

/// After an apply or rollback that started a rollout: how to follow it.
fn rollout_started(err: &mut dyn Write, cli: &Cli, resp: &pb::ApplyResponse) {
    let Some(id) = resp.rollout_id else { return };
    let version = resp.version.as_ref().map(|v| v.version).unwrap_or_default();
    let fleet_flag = if cli.fleet == "default" { String::new() } else { format!(" --fleet {}", cli.fleet) };
    let _ = writeln!(
        err,
        "rollout {id} started for {} version {version}: watch it with `sluice rollout status --watch{fleet_flag}`",
        cli.fleet
    );
}

/// The fleet's rollout for a watch: a lost connection is dropped and made again on the next read.
struct Remote<'a> {
    cli: &'a Cli,
    fleet: &'a str,
    client: Option<Client>,
}

// === impl Remote ===

impl rollout::Source for Remote<'_> {
    async fn fetch(&mut self) -> Result<pb::RolloutStatus, rollout::Fetch> {
        use rollout::Fetch;
        let client = match &mut self.client {
            Some(client) => client,
            None => {
                let connecting = channel(self.cli).map_err(Fetch::Failed)?;
                let channel = connecting.await.map_err(|e| Fetch::Lost(source_chain(&e)))?;
                self.client.insert(client(channel, credentials(self.cli).map_err(Fetch::Failed)?))
            }
        };
        match client.get_rollout(pb::GetRolloutRequest { fleet: self.fleet.to_owned() }).await {
            Ok(resp) => Ok(resp.into_inner()),
            Err(status) if lost(&status) => {
                self.client = None;
                let why = match std::error::Error::source(&status) {
                    Some(source) => format!("{}: {}", status.message(), source_chain(source)),
                    None => status.message().to_owned(),
                };
                Err(Fetch::Lost(why))
            }
            Err(status) => Err(Fetch::Failed(from_status(&status, &self.cli.server))),
        }
    }
}

/// A status that says the control plane is not there (now): down, restarting, the connection
/// dropped, or no answer in time.
fn lost(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => true,
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// The fleet's traffic report (one route's with `--route`), and what it covers.
async fn traffic_report<'a>(
    cli: &'a Cli,
    args: &'a ReportArgs,
) -> Result<(report::Scope<'a>, pb::TrafficReport), Failure> {
    let mut client = connect(cli).await?;
    let req =
        pb::TrafficReportRequest { fleet: cli.fleet.clone(), route: args.route.clone().unwrap_or_default() };
    let resp = client.get_traffic_report(req).await.map_err(|s| from_status(&s, &cli.server))?.into_inner();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let scope = report::Scope { fleet: &cli.fleet, route: args.route.as_deref(), now: now.as_secs() as i64 };
    Ok((scope, resp))
}

fn read_document(path: &Path) -> Result<(Vec<u8>, Format), Failure> {
    let bytes = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .map_err(|e| fail(exit::USAGE, format!("cannot read stdin: {e}")))?;
        buf
    } else {
        std::fs::read(path).map_err(|e| fail(exit::USAGE, format!("cannot read {}: {e}", path.display())))?
    };
    Ok((bytes, Format::from_path(path)))
}

fn proto_format(format: Format) -> i32 {
    match format {
        Format::Json => pb::DocumentFormat::Json as i32,
        Format::Yaml => pb::DocumentFormat::Yaml as i32,
    }
}

/// `--author`, else $USER or $LOGNAME, else `unknown`.
fn author(given: Option<&str>) -> String {
    given
        .map(str::to_owned)
        .or_else(|| ["USER", "LOGNAME"].iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty())))
        .unwrap_or_else(|| "unknown".into())
}

/// `90s`, `5m`, `1h` for clap.
fn parse_duration(s: &str) -> Result<sluice_bundle::Duration, String> {
    sluice_bundle::Duration::parse(s)
}

/// `1h`/`30m`/`90s` ago, or Unix seconds.
fn parse_since(s: &str) -> Result<i64, Failure> {
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs);
    }
    let ago = sluice_bundle::Duration::parse(s)
        .map_err(|_| fail(exit::USAGE, format!("--since {s:?}: give a duration like 1h or Unix seconds")))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Ok(now.saturating_sub(ago.get()).as_secs() as i64)
}

/// The control plane's client; every call carries the caller's credentials and trace context.
type Client = ConfigServiceClient<InterceptedService<Channel, Credentials>>;

/// What every call carries: the bearer token, if any, and the trace context.
#[derive(Clone)]
struct Credentials {
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let mut req = with_trace_context(req, |var| std::env::var(var).ok());
        if let Some(token) = &self.token {
            req.metadata_mut().insert("authorization", token.clone());
        }
        Ok(req)
    }
}

/// Passes the trace context in `TRACEPARENT` (and `TRACESTATE`), the W3C environment carrier that
/// CI systems and tools like otel-cli set, to the control plane as `traceparent` metadata: the
/// apply's spans then join the caller's trace.
fn with_trace_context(mut req: Request<()>, env: impl Fn(&str) -> Option<String>) -> Request<()> {
    for (var, key) in [("TRACEPARENT", "traceparent"), ("TRACESTATE", "tracestate")] {
        if let Some(v) = env(var).and_then(|v| MetadataValue::try_from(v.trim()).ok()) {
            req.metadata_mut().insert(key, v);
        }
    }
    req
}

/// The bearer token: `--token-file`, else `SLUICE_TOKEN`; marked sensitive so it is never logged.
fn credentials(cli: &Cli) -> Result<Credentials, Failure> {
    let token =
        match &cli.credentials.token_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                fail(exit::USAGE, format!("cannot read --token-file {}: {e}", path.display()))
            })?),
            None => std::env::var("SLUICE_TOKEN").ok(),
        };
    let token = match token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => {
            let mut v = MetadataValue::try_from(format!("Bearer {t}"))
                .map_err(|_| fail(exit::USAGE, "the token has characters a header cannot carry"))?;
            v.set_sensitive(true);
            Some(v)
        }
        None => None,
    };
    Ok(Credentials { token })
}

/// A connection to the control plane, over TLS for an https:// URL.
fn channel(cli: &Cli) -> Result<impl Future<Output = Result<Channel, tonic::transport::Error>>, Failure> {
    let server = &cli.server;
    let endpoint = endpoint(server)?;
    let c = &cli.credentials;
    let tls = if server.starts_with("https://") {
        let ca = c.ca_file.clone().ok_or_else(|| {
            fail(exit::USAGE, format!("{server} is https: give --ca-file (or SLUICE_CA_FILE) to verify it"))
        })?;
        let identity = match (&c.cert, &c.key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err(fail(exit::USAGE, "--cert and --key go together")),
        };
        let files = ClientFiles { ca, identity, alpn: vec![b"h2".to_vec()] };
        Some(Watched::load("cli", files).map_err(|e| fail(exit::USAGE, e.to_string()))?)
    } else {
        if c.cert.is_some() {
            return Err(fail(exit::USAGE, format!("--cert needs an https:// control plane, not {server}")));
        }
        None
    };
    Ok(async move {
        match tls {
            Some(tls) => endpoint.connect_with_connector(TlsConnector::new(tls)).await,
            None => endpoint.connect().await,
        }
    })
}

/// A client of the control plane, or exit code 4 naming the address.
async fn connect(cli: &Cli) -> Result<Client, Failure> {
    let server = &cli.server;
    let unreachable =
        |why: String| fail(exit::UNREACHABLE, format!("cannot reach the control plane at {server}: {why}"));
    let credentials = credentials(cli)?;
    let channel = channel(cli)?.await.map_err(|e| unreachable(source_chain(&e)))?;
    Ok(client(channel, credentials))
}

/// The control plane's address with the CLI's timeouts, or exit code 2 when it is no URL.
fn endpoint(server: &str) -> Result<Endpoint, Failure> {
    Ok(Endpoint::from_shared(server.to_owned())
        .map_err(|e| fail(exit::USAGE, format!("--server {server:?} is not a URL: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30)))
}

fn client(channel: Channel, credentials: Credentials) -> Client {
    // Room for the largest document and version any control plane accepts; each enforces its
    // own, smaller cap with a clear error.
    let limit = sluice_bundle::sign::message_limit(sluice_bundle::sign::MAX_PAYLOAD_CEILING);
    ConfigServiceClient::with_interceptor(channel, credentials)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}

fn source_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    parts.dedup();
    parts.join(": ")
}

/// Config errors a status carries in its details.
fn config_errors(status: &tonic::Status) -> Option<Vec<pb::ConfigError>> {
    if status.code() != Code::InvalidArgument || status.details().is_empty() {
        return None;
    }
    pb::ValidateResponse::decode(status.details()).ok().map(|r| r.errors)
}

fn from_status(status: &tonic::Status, server: &str) -> Failure {
    let message = status.message().to_owned();
    match status.code() {
        Code::Aborted => fail(exit::CONFLICT, format!("conflict: {message}")),
        Code::Unauthenticated => fail(exit::DENIED, format!("not authenticated: {message}")),
        Code::PermissionDenied => fail(exit::DENIED, format!("permission denied: {message}")),
        Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition => fail(exit::REFUSED, message),
        // The control plane's message limit (twice its bundle cap) refused the request unread.
        Code::OutOfRange | Code::ResourceExhausted if message.contains("message length too large") => fail(
            exit::REFUSED,
            format!(
                "refused: the request is larger than the control plane accepts (twice its --max-bundle-size): {message}"
            ),
        ),
        // A status made on this side from a transport failure carries that failure as its source;
        // one the control plane sent (its database is down, say) does not.
        Code::Unavailable if std::error::Error::source(status).is_some() => {
            fail(exit::UNREACHABLE, format!("lost the control plane at {server}: {message}"))
        }
        Code::Unavailable | Code::Internal | Code::Unknown | Code::DeadlineExceeded => {
            fail(exit::SERVER, format!("the control plane failed: {message}"))
        }
        _ => fail(exit::SERVER, format!("{}: {message}", status.code())),
    }
}

#[cfg(test)]
mod trace_tests {
    use super::*;

    #[test]
    fn passes_the_environments_trace_context_as_metadata() {
        let parent = "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01";
        let env = |var: &str| match var {
            "TRACEPARENT" => Some(format!("{parent}\n")),
            "TRACESTATE" => Some("vendor=x".to_owned()),
            _ => None,
        };
        let req = with_trace_context(Request::new(()), env);
        assert_eq!(req.metadata().get("traceparent").unwrap(), parent);
        assert_eq!(req.metadata().get("tracestate").unwrap(), "vendor=x");
        let bare = with_trace_context(Request::new(()), |_| None);
        assert!(bare.metadata().get("traceparent").is_none());
    }
}

#[cfg(test)]
mod rollout_args_tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()))
    }

    fn apply_strategy(args: &[&str]) -> Option<pb::RolloutChoice> {
        let cli = parse(args).unwrap();
        let Command::Apply { strategy, .. } = &cli.command else { panic!("not apply: {cli:?}") };
        rollout_choice(strategy).unwrap()
    }

    #[test]
    fn apply_sends_a_strategy_file_in_its_format_or_a_name() {
        let dir = std::env::temp_dir().join(format!("sluice-cli-rollout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("strategy.json");
        std::fs::write(&json, r#"{"steps": [{"nodes": 1}]}"#).unwrap();
        let yaml = dir.join("strategy.yaml");
        std::fs::write(&yaml, "steps: [{percent: 100}]\n").unwrap();

        let choice = apply_strategy(&["apply", "-f", "c.yaml", "--rollout", json.to_str().unwrap()]).unwrap();
        assert_eq!(choice.format, pb::DocumentFormat::Json as i32);
        assert_eq!(
            choice.choice,
            Some(pb::rollout_choice::Choice::Document(br#"{"steps": [{"nodes": 1}]}"#.to_vec()))
        );
        let choice = apply_strategy(&["apply", "-f", "c.yaml", "--rollout", yaml.to_str().unwrap()]).unwrap();
        assert_eq!(choice.format, pb::DocumentFormat::Yaml as i32);

        let choice = apply_strategy(&["apply", "-f", "c.yaml", "--strategy", "canary"]).unwrap();
        assert_eq!(choice.choice, Some(pb::rollout_choice::Choice::Name("canary".into())));
        assert_eq!(apply_strategy(&["apply", "-f", "c.yaml"]), None, "the fleet's default decides");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_strategy_file_is_a_usage_error() {
        let cli = parse(&["apply", "-f", "c.yaml", "--rollout", "/nonexistent/strategy.yaml"]).unwrap();
        let Command::Apply { strategy, .. } = &cli.command else { panic!("not apply") };
        let f = rollout_choice(strategy).unwrap_err();
        assert_eq!(f.code, exit::USAGE);
        assert!(f.message.contains("/nonexistent/strategy.yaml"), "{}", f.message);
    }

    #[test]
    fn conflicting_or_incomplete_rollout_flags_are_usage_errors() {
        for args in [
            &["apply", "-f", "c.yaml", "--rollout", "s.yaml", "--strategy", "canary"][..],
            &["rollout", "default", "--clear", "--strategy", "linear"],
            &["rollout", "default", "--clear", "--rollout", "s.yaml"],
            &["rollout", "status", "--timeout", "5m"],
            &["rollout", "status", "--watch", "--timeout", "300"],
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.exit_code(), i32::from(exit::USAGE), "{args:?}");
        }
        let cli = parse(&["rollout", "status", "--watch", "--timeout", "1m30s"]).unwrap();
        let Command::Rollout { command: RolloutCommand::Status { watch, timeout } } = cli.command else {
            panic!("not rollout status")
        };
        assert!(watch);
        assert_eq!(timeout.map(|t| t.get()), Some(Duration::from_secs(90)));
    }
}
