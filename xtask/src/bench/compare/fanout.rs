//! `cargo xtask bench --fanout`: from `apply` to every data plane having verified the bundle's
//! signature and ACKed it, and to `sluice dataplanes` showing every node SYNCED, with many
//! data-plane streams hosted in this process, against the real control-plane binary (release) on
//! PostgreSQL; once in plaintext on loopback, once with TLS and a client certificate per simulated
//! data plane (mTLS, each node's own identity). Every simulated data plane reports every 10 s, as
//! real ones do, and the control plane's memory and CPU are read from /proc.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use sluice_bundle::sign::{DEFAULT_MAX_PAYLOAD, Expectations, Signature, SigningKey, TrustedKeys};
use sluice_proto::v1 as pb;
use sluice_proto::v1::config_service_client::ConfigServiceClient;
use sluice_proto::v1::data_plane_service_client::DataPlaneServiceClient;
use sluice_tls::pki::{Authority, Leaf};
use sluice_tls::{ClientFiles, Watched};
use sqlx::Connection;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::Entry;
use crate::bench::processes::{TICKS_PER_SECOND, cpu_ticks, rss_tree};
use crate::{build, root};

pub(super) const ENTRY: Entry = Entry {
    flag: Some("fanout"),
    help: "Instead of proxies: config fan-out, apply → every data plane verified and ACKed, with \
           --streams data-plane streams in this process, in plaintext and with mTLS. Results go to \
           the \"fan-out\" section",
    run: |args| run(args.streams, args.rounds, !args.no_write),
};

const BEGIN: &str = "<!-- bench-fanout:begin -->";
const END: &str = "<!-- bench-fanout:end -->";
const FLEET: &str = "bench";
const DB: &str = "sluice_bench_fanout";
const LISTEN: &str = "127.0.0.1:7101";
const TOKEN: &str = "bench-operator-token";

/// How often each simulated data plane reports (a data plane's default).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// One configuration's figures: per round, each stream's apply → ACK time.
struct Outcome {
    tls: bool,
    apply: Vec<Duration>,
    acks: Vec<Vec<Duration>>,
    /// Per round: apply → every node SYNCED in the control plane's list.
    synced: Vec<Duration>,
    connect: Duration,
    /// The control plane's RSS before any stream, and with every stream connected and reporting.
    rss: (u64, u64),
    /// The control plane's CPU share of one core over one report period with nothing applied.
    idle_cpu: f64,
}

fn run(streams: usize, rounds: usize, write: bool) -> anyhow::Result<()> {
    let bin = build("release", &["sluice-control-plane"])?;
    let admin_url = crate::database_url()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut outcomes = Vec::new();
    for tls in [false, true] {
        outcomes.push(rt.block_on(one(&bin, &admin_url, streams, rounds, tls))?);
    }
    let report = render(&outcomes, streams, rounds);
    print!("{report}");
    if write {
        let path = root().join("docs/BENCHMARKS.md");
        let text = std::fs::read_to_string(&path)?;
        let section = format!("{BEGIN}\n{report}{END}");
        let updated = match (text.find(BEGIN), text.find(END)) {
            (Some(b), Some(e)) if e > b => format!("{}{section}{}", &text[..b], &text[e + END.len()..]),
            _ => format!("{}\n{section}\n", text.trim_end()),
        };
        std::fs::write(&path, updated)?;
        println!("updated {}", path.display());
    }
    Ok(())
}

async fn one(
    bin: &Path,
    admin_url: &str,
    streams: usize,
    rounds: usize,
    tls: bool,
) -> anyhow::Result<Outcome> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {DB} WITH (FORCE)")))
        .execute(&mut conn)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {DB}"))).execute(&mut conn).await?;
    let base = admin_url.rsplit_once('/').map_or(admin_url, |(b, _)| b);
    let database_url = format!("{base}/{DB}");

    let dir = root().join("target/bench").join(if tls { "fanout-tls" } else { "fanout-plain" });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let key = SigningKey::generate()?;
    let trusted = Arc::new(key.trusted_keys());
    std::fs::write(dir.join("signing-key.json"), key.to_file())?;
    let mut cmd = Command::new(bin.join("sluice-control-plane"));
    cmd.args(["--database-url", &database_url, "--listen", LISTEN, "--metrics-listen", "off"])
        .arg("--signing-key")
        .arg(dir.join("signing-key.json"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let ca = Authority::new("bench CA")?;
    if tls {
        let server = ca.issue(&Leaf {
            common_name: "cp".into(),
            ips: vec!["127.0.0.1".parse()?],
            server: true,
            valid_days: 1,
            ..Leaf::default()
        })?;
        std::fs::write(dir.join("ca.crt"), &ca.cert_pem)?;
        std::fs::write(dir.join("cp.crt"), &server.cert_pem)?;
        std::fs::write(dir.join("cp.key"), &server.key_pem)?;
        let policy = format!(
            "principals:\n  - {{name: bench, token_sha256: {}, roles: {{'*': admin}}}}\n",
            sluice_bundle::access::token_sha256(TOKEN)
        );
        std::fs::write(dir.join("policy.yaml"), policy)?;
        cmd.arg("--tls-cert").arg(dir.join("cp.crt")).arg("--tls-key").arg(dir.join("cp.key"));
        cmd.arg("--client-ca").arg(dir.join("ca.crt")).arg("--policy-file").arg(dir.join("policy.yaml"));
    } else {
        cmd.arg("--insecure-allow-anonymous");
    }
    let mut cp = Guard(cmd.spawn().context("starting sluice-control-plane")?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(LISTEN).await.is_err() {
        ensure!(cp.0.try_wait()?.is_none(), "the control plane exited");
        ensure!(Instant::now() < deadline, "the control plane is not listening on {LISTEN}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("{}://{LISTEN}", if tls { "https" } else { "http" });
    let pid = cp.0.id();
    let rss_before = rss_tree(pid);

    // The data planes: each its own connection (and, with TLS, its own certificate).
    let (acked_tx, mut acked_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let started = Instant::now();
    let mut connecting = tokio::task::JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..streams {
        let node = format!("node-{i}");
        let channel_tls = if tls {
            let leaf = ca.issue(&Leaf {
                common_name: node.clone(),
                uris: vec![sluice_tls::identity::data_plane_uri("sluice.local", FLEET, Some(&node))],
                client: true,
                valid_days: 1,
                ..Leaf::default()
            })?;
            let (c, k) = (dir.join(format!("{node}.crt")), dir.join(format!("{node}.key")));
            std::fs::write(&c, &leaf.cert_pem)?;
            std::fs::write(&k, &leaf.key_pem)?;
            let files =
                ClientFiles { ca: dir.join("ca.crt"), identity: Some((c, k)), alpn: vec![b"h2".to_vec()] };
            Some(Watched::load("bench", files)?)
        } else {
            None
        };
        let (url, trusted, acked, limit) = (url.clone(), trusted.clone(), acked_tx.clone(), limit.clone());
        let offset = REPORT_EVERY.mul_f64(i as f64 / streams as f64);
        connecting.spawn(async move {
            let permit = limit.acquire_owned().await?;
            let channel = channel(&url, channel_tls).await?;
            drop(permit);
            data_plane(channel, node, trusted, acked, offset).await
        });
    }
    drop(acked_tx);

    let mut operator = ConfigServiceClient::new(channel(&url, operator_tls(&dir, tls)?).await?)
        .max_decoding_message_size(64 << 20);
    let (mut apply, mut acks, mut synced) = (Vec::new(), Vec::new(), Vec::new());
    let (mut connect, mut rss_after, mut idle_cpu) = (Duration::ZERO, 0, 0.0);
    for round in 0..=rounds {
        let document = format!(
            "listeners:\n  - {{name: public, address: '127.0.0.1:18080'}}\npools:\n  - {{name: p, endpoints: [{{address: '127.0.0.1:{}'}}]}}\nroutes:\n  - {{name: r, pool: p}}\n",
            19000 + round
        );
        let req = authorized(
            pb::ApplyRequest {
                fleet: FLEET.into(),
                document: document.into_bytes(),
                message: format!("fan-out round {round}"),
                ..Default::default()
            },
            tls,
        )?;
        let t0 = Instant::now();
        let version = operator.apply(req).await?.into_inner().version.context("no version")?.version;
        let took = t0.elapsed();
        let mut times = Vec::with_capacity(streams);
        let wait = Instant::now() + Duration::from_secs(120);
        while times.len() < streams {
            let Ok(Some((v, at))) = tokio::time::timeout_at(wait.into(), acked_rx.recv()).await else {
                anyhow::bail!(
                    "round {round}: {} of {streams} data planes ACKed version {version}",
                    times.len()
                );
            };
            if v == version {
                times.push(at.saturating_duration_since(t0));
            }
        }
        if round == 0 {
            // The first version reaches streams as they connect: it measures connecting, not fan-out.
            connect = started.elapsed();
            all_synced(&mut operator, tls, version, streams).await?;
            // One report period with every stream up: every node's reports are flowing.
            let ticks = cpu_ticks(pid);
            tokio::time::sleep(REPORT_EVERY).await;
            idle_cpu = (cpu_ticks(pid) - ticks) as f64 / TICKS_PER_SECOND / REPORT_EVERY.as_secs_f64();
            rss_after = rss_tree(pid);
            continue;
        }
        all_synced(&mut operator, tls, version, streams).await?;
        synced.push(t0.elapsed());
        times.sort();
        apply.push(took);
        acks.push(times);
    }
    connecting.abort_all();
    cp.stop();
    Ok(Outcome { tls, apply, acks, synced, connect, rss: (rss_before, rss_after), idle_cpu })
}

fn authorized<T>(message: T, tls: bool) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(message);
    if tls {
        req.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse()?);
    }
    Ok(req)
}

/// Waits until the control plane lists `streams` data planes SYNCED on `version`, as
/// `sluice dataplanes` shows them (polled every 100 ms).
async fn all_synced(
    operator: &mut ConfigServiceClient<Channel>,
    tls: bool,
    version: u64,
    streams: usize,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let req = authorized(pb::ListDataPlanesRequest { fleet: FLEET.into() }, tls)?;
        let list = operator.list_data_planes(req).await?.into_inner().data_planes;
        let synced = list.iter().filter(|d| d.state == "SYNCED" && d.active_version == version).count();
        if synced == streams {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{synced} of {streams} data planes SYNCED on version {version}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The operator's channel: TLS with the CA only (the token authenticates it).
fn operator_tls(dir: &Path, tls: bool) -> anyhow::Result<Option<Arc<Watched<ClientFiles>>>> {
    if !tls {
        return Ok(None);
    }
    let files = ClientFiles { ca: dir.join("ca.crt"), identity: None, alpn: vec![b"h2".to_vec()] };
    Ok(Some(Watched::load("bench-operator", files)?))
}

async fn channel(url: &str, tls: Option<Arc<Watched<ClientFiles>>>) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())?.connect_timeout(Duration::from_secs(30));
    Ok(match tls {
        Some(tls) => endpoint.connect_with_connector(sluice_tls::connect::TlsConnector::new(tls)).await?,
        None => endpoint.connect().await?,
    })
}

/// One simulated data plane: hello, then for each push verify the signature as a data plane
/// does, ACK it and say when.
async fn data_plane(
    channel: Channel,
    node: String,
    trusted: Arc<TrustedKeys>,
    acked: mpsc::UnboundedSender<(u64, Instant)>,
    report_offset: Duration,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(4);
    let hello = pb::Hello { node_id: node, fleet: FLEET.into(), ..Default::default() };
    tx.send(pb::DataPlaneMessage { kind: Some(pb::data_plane_message::Kind::Hello(hello)) }).await?;
    let mut inbound =
        DataPlaneServiceClient::new(channel).stream(ReceiverStream::new(rx)).await?.into_inner();
    let mut active = None;
    // Each node's first report at its own point of the period, as a fleet's nodes start at
    // different times.
    let first = tokio::time::Instant::now() + report_offset;
    let mut reports = tokio::time::interval_at(first, REPORT_EVERY);
    loop {
        let message = tokio::select! {
            m = inbound.message() => match m? {
                Some(m) => m,
                None => return Ok(()),
            },
            _ = reports.tick() => {
                let report = report(active.unwrap_or(0));
                tx.send(pb::DataPlaneMessage { kind: Some(pb::data_plane_message::Kind::Report(report)) }).await?;
                continue;
            }
        };
        let Some(pb::control_plane_message::Kind::Bundle(push)) = message.kind else { continue };
        let bundle = push.bundle.unwrap_or_default();
        let signatures: Vec<Signature> = bundle
            .signatures
            .iter()
            .map(|s| Signature { key_id: s.key_id.clone(), signature: s.signature.clone() })
            .collect();
        let expect = Expectations { fleet: FLEET, active_version: active, max_payload: DEFAULT_MAX_PAYLOAD };
        let verified =
            trusted.verify(&bundle.payload, &signatures, &expect).map_err(|e| anyhow::anyhow!("{e}"))?;
        let version = verified.payload.version;
        active = Some(version);
        let ack = pb::Ack { nonce: push.nonce, version };
        tx.send(pb::DataPlaneMessage { kind: Some(pb::data_plane_message::Kind::Ack(ack)) }).await?;
        let _ = acked.send((version, Instant::now()));
    }
}

/// A report the size of a real one for a route with a canary: two variants' latency histograms
/// and the active version's traffic.
fn report(active_version: u64) -> pb::Report {
    let bounds: Vec<f64> = (0..20).map(|i| 0.001 * 2f64.powi(i / 2)).collect();
    let counts: Vec<u64> = (0..21).map(|i| 1000 + i * 37).collect();
    let variant = |name: &str, pool: &str| pb::VariantStats {
        variant: name.into(),
        pool: pool.into(),
        requests: 21_000,
        errors: 12,
        bounds_seconds: bounds.clone(),
        bucket_counts: counts.clone(),
        sum_seconds: 812.5,
    };
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    pb::Report {
        at: at.as_secs() as i64,
        active_version,
        routes: vec![pb::RouteReport {
            route: "r".into(),
            variants: vec![variant("stable", "p"), variant("canary", "p-canary")],
            ..Default::default()
        }],
        versions: vec![pb::VersionTraffic {
            version: active_version,
            since: at.as_secs() as i64 - 600,
            requests: 42_000,
            errors: 20,
            proxy_errors: 3,
            bounds_seconds: bounds.clone(),
            bucket_counts: counts.clone(),
            sum_seconds: 1625.0,
        }],
        ..Default::default()
    }
}

struct Guard(Child);

impl Guard {
    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn render(outcomes: &[Outcome], streams: usize, rounds: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Config fan-out\n\n`cargo xtask bench --fanout --streams {streams} --rounds {rounds}`: the release \
         control plane on PostgreSQL, {streams} data-plane streams hosted in the benchmark process (each \
         verifies the bundle's ed25519 signature as a data plane does, then ACKs, and reports every \
         10 s with two variants' latency histograms). Time from sending `Apply` (validate, sign, \
         store, notify) to each stream's ACK, every round's times together; \"all SYNCED\": the \
         slowest round's time until `ListDataPlanes` (what `sluice dataplanes` shows) has every node \
         SYNCED on the new version, polled every 100 ms. Memory per stream: the control plane's RSS \
         with every stream connected and reporting, less its RSS before any, divided by the streams. \
         CPU: the control plane's over one report period with nothing applied. With TLS each stream \
         has its own client certificate (mTLS, a node identity checked against its hello) and the \
         operator a token.\n"
    );
    let _ = writeln!(
        out,
        "| control channel | apply | ACK p50 | ACK p99 | last ACK | all SYNCED | connect all | memory per stream | CPU, reports only |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let mut all: Vec<Duration> = o.acks.iter().flatten().copied().collect();
        all.sort();
        let mut apply = o.apply.clone();
        apply.sort();
        let mut synced = o.synced.clone();
        synced.sort();
        let per_stream = o.rss.1.saturating_sub(o.rss.0) as f64 / streams.max(1) as f64 / 1024.0;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} KiB | {:.0} % of a core |",
            if o.tls { "TLS 1.3, mTLS per node, token" } else { "plaintext, loopback" },
            ms(quantile(&apply, 0.5)),
            ms(quantile(&all, 0.5)),
            ms(quantile(&all, 0.99)),
            ms(all.last().copied().unwrap_or_default()),
            ms(synced.last().copied().unwrap_or_default()),
            ms(o.connect),
            per_stream,
            o.idle_cpu * 100.0,
        );
    }
    let _ = writeln!(out);
    out
}
