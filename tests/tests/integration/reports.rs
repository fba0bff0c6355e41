//! Traffic reports end to end: data planes report, the control plane keeps and adds them up,
//! `sluice shadow report` and `sluice canary report` show them.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::Value;
use sluice_proto::v1 as pb;
use sluice_proto::v1::data_plane_service_client::DataPlaneServiceClient;
use sluice_tests::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_shows_field_diffs_and_canary_percentiles_summed_over_the_fleet() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;

    // A real data plane reports as soon as it is connected.
    let real = DataPlane::start(&cp.url, "edge", "real-1", &keys.trusted_file, dir.join("real-1")).await;
    // Two more, by hand, with traffic on route `users`.
    let a = ReportingStream::open(&cp.url, "a").await;
    let b = ReportingStream::open(&cp.url, "b").await;
    a.report(users(now, [(60, 0, [30, 25, 5, 0]), (10, 1, [0, 10, 0, 0])], [(20, 1), (5, 5)], 60)).await;
    b.report(users(now, [(40, 2, [20, 15, 4, 1]), (0, 0, [0, 0, 0, 0])], [(10, 1), (5, 4)], 40)).await;
    let mut json: Value;
    eventually!(WITHIN, {
        let run = sluice(&["--server", &cp.url, "--fleet", "edge", "shadow", "report", "-o", "json"]).await;
        json = serde_json::from_str(&run.stdout).unwrap_or_default();
        json["nodes"].as_array().is_some_and(|n| n.len() == 3)
    });
    let nodes: Vec<&str> =
        json["nodes"].as_array().unwrap().iter().map(|n| n["node_id"].as_str().unwrap()).collect();
    assert_eq!(nodes, ["a", "b", "real-1"]);
    assert_eq!(json["nodes"][2]["connected"], true);
    let users_json = &json["routes"][0];
    assert_eq!(
        (users_json["compared"].as_u64(), users_json["baseline_compared"].as_u64()),
        (Some(100), Some(100))
    );

    let run = sluice(&["--server", &cp.url, "--fleet", "edge", "shadow", "report"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let out = &run.stdout;
    assert!(out.starts_with("route users: mirrored to users-v2\n"), "{out}");
    assert!(out.contains("guardrail  tripped (a: candidate 3.0x slower), resumes in "), "{out}");
    // /name differs 30% of the time against 2% noise; /updated_at 10% against 9%: noise.
    assert_eq!(row(out, "/name"), ["/name", "30", "30.00%", "2.00%", "yes"], "{out}");
    assert_eq!(row(out, "/updated_at"), ["/updated_at", "10", "10.00%", "9.00%", "no"], "{out}");
    assert!(out.contains("a-1  GET /users/1  fields: /name"), "{out}");

    let run = sluice(&["--server", &cp.url, "--fleet", "edge", "canary", "report", "--route", "users"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let out = &run.stdout;
    assert_eq!(
        row(out, "stable"),
        ["stable", "users-v1", "100", "2", "2.00%", "10ms", "77.8ms", "100ms"],
        "{out}"
    );
    assert_eq!(
        row(out, "canary"),
        ["canary", "users-v2", "10", "1", "10.00%", "30ms", "48ms", "49.6ms"],
        "{out}"
    );
    assert!(out.contains("brake: off (canary users-v2 at 10%)"), "{out}");

    let run =
        sluice(&["--server", &cp.url, "--fleet", "edge", "shadow", "report", "--route", "nowhere"]).await;
    assert_eq!((run.code, run.stdout.as_str()), (0, "route nowhere does not mirror in fleet edge\n"));
    let run = sluice(&["--server", &cp.url, "--fleet", "quiet", "canary", "report"]).await;
    assert_eq!(
        run.stdout, "no route splits traffic in fleet quiet (no data plane has reported)\n",
        "{run:?}"
    );

    drop((a, b));
    real.stop().await;
    cp.stop().await;
}

#[tokio::test]
async fn report_commands_name_an_unreachable_control_plane() {
    for command in ["shadow", "canary"] {
        let run = sluice(&["--server", "http://127.0.0.1:1", command, "report"]).await;
        assert_eq!(run.code, 4, "{run:?}");
        assert!(run.stderr.contains("cannot reach the control plane at http://127.0.0.1:1"), "{run:?}");
    }
}

/// The cells of the first table row that starts with `first`.
fn row(out: &str, first: &str) -> Vec<String> {
    let line = out.lines().find(|l| l.trim_start().starts_with(first)).unwrap_or_default();
    line.split_whitespace().map(str::to_owned).collect()
}

type Variant = (u64, u64, [u64; 4]);

/// Route `users` as one node sees it: `stable` and `canary` variants (requests, errors, latency
/// buckets), a mirror with fields `/name` and `/updated_at` (differed, noise), `pairs` compared
/// against the candidate and as many against the baseline, and a guardrail tripped on `a`.
fn users(
    now: i64,
    [stable, canary]: [Variant; 2],
    [name, updated]: [(u64, u64); 2],
    pairs: u64,
) -> pb::RouteReport {
    let variant = |name: &str, pool: &str, (requests, errors, counts): Variant| pb::VariantStats {
        variant: name.into(),
        pool: pool.into(),
        requests,
        errors,
        bounds_seconds: vec![0.01, 0.05, 0.1],
        bucket_counts: counts.to_vec(),
        sum_seconds: 0.0,
    };
    let field =
        |field: &str, (differed, noise): (u64, u64)| pb::FieldDiff { field: field.into(), differed, noise };
    pb::RouteReport {
        route: "users".into(),
        variants: vec![variant("stable", "users-v1", stable), variant("canary", "users-v2", canary)],
        brake: Some(pb::CanaryBrake { pool: "users-v2".into(), weight_percent: 10.0, ..Default::default() }),
        mirror: Some(pb::MirrorReport {
            pool: "users-v2".into(),
            sent: pairs,
            completed: pairs,
            compared: pairs,
            differed: name.0,
            fields: vec![field("/name", name), field("/updated_at", updated)],
            guardrail: Some(pb::Guardrail {
                state: if pairs == 60 { "tripped" } else { "active" }.into(),
                reason: if pairs == 60 { "candidate 3.0x slower".into() } else { String::new() },
                since: now,
                resumes_at: if pairs == 60 { now + 30 } else { 0 },
                trips: 1,
            }),
            baseline_compared: 50,
            noise_relative: 0.2,
            noise_absolute: 0.0003,
            ..Default::default()
        }),
    }
}

/// A data-plane stream of fleet `edge` written by hand; ends when dropped.
struct ReportingStream {
    node: String,
    tx: mpsc::Sender<pb::DataPlaneMessage>,
    _pushes: tonic::Streaming<pb::ControlPlaneMessage>,
}

impl ReportingStream {
    async fn open(url: &str, node_id: &str) -> Self {
        let (tx, rx) = mpsc::channel(4);
        let hello = pb::Hello { node_id: node_id.into(), fleet: "edge".into(), ..Default::default() };
        tx.send(pb::DataPlaneMessage { kind: Some(pb::data_plane_message::Kind::Hello(hello)) })
            .await
            .unwrap();
        let mut client = DataPlaneServiceClient::connect(url.to_owned()).await.unwrap();
        let pushes = client.stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Self { node: node_id.into(), tx, _pushes: pushes }
    }

    /// Reports `route`, with one masked sample.
    async fn report(&self, mut route: pb::RouteReport) {
        let at = route.mirror.as_ref().map_or(0, |m| m.guardrail.as_ref().map_or(0, |g| g.since));
        if let Some(m) = route.mirror.as_mut() {
            m.samples = vec![pb::DiffSample {
                at,
                request_id: format!("{}-1", self.node),
                method: "GET".into(),
                path: "/users/1".into(),
                fields: vec!["/name".into()],
                primary: "200 {\"name\":\"***\"}".into(),
                candidate: "200 {\"name\":null}".into(),
            }];
        }
        let report = pb::Report { at, routes: vec![route], ..Default::default() };
        self.tx
            .send(pb::DataPlaneMessage { kind: Some(pb::data_plane_message::Kind::Report(report)) })
            .await
            .unwrap();
    }
}

/// The latest report node `node` of fleet `edge` sent, as the control plane stored it.
async fn stored_report(db: &Db, node: &str) -> Option<pb::Report> {
    use prost::Message as _;
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let row: Option<(Vec<u8>,)> =
        sqlx::query_as("SELECT report FROM reports WHERE fleet = 'edge' AND node_id = $1")
            .bind(node)
            .fetch_optional(&mut conn)
            .await
            .unwrap();
    row.map(|(bytes,)| pb::Report::decode(bytes.as_slice()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_count_traffic_per_config_version() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    let dp = DataPlane::start(&cp.url, "edge", "dp-1", &keys.trusted_file, dir.join("dp-1")).await;
    let up = Upstream::named("v1").await;
    assert_eq!(apply(&cp, "edge", &config_to(&up), &dir, "v1").await.code, 0);
    dp.wait_for_version(1).await;
    for _ in 0..30 {
        try_get(&dp.url()).await.unwrap();
    }
    // Version 2 sends everything to an address nothing listens on: the proxy answers 502.
    let dead = "listeners:\n  - {name: public, address: '127.0.0.1:8080'}\n\
                pools:\n  - {name: dead, endpoints: [{address: '127.0.0.1:1'}]}\n\
                routes:\n  - {name: all, pool: dead}\n";
    assert_eq!(apply(&cp, "edge", dead, &dir, "v2").await.code, 0);
    dp.wait_for_version(2).await;
    for _ in 0..5 {
        assert!(try_get(&dp.url()).await.unwrap_err().starts_with("502"));
    }
    let mut versions: Vec<pb::VersionTraffic>;
    eventually!(WITHIN, {
        versions = stored_report(&db, "dp-1").await.map(|r| r.versions).unwrap_or_default();
        versions.len() == 2 && versions[1].requests == 5
    });
    let summary: Vec<(u64, u64, u64, u64)> =
        versions.iter().map(|v| (v.version, v.requests, v.errors, v.proxy_errors)).collect();
    assert_eq!(summary, [(1, 30, 0, 0), (2, 5, 5, 5)]);
    assert_eq!(versions[0].bucket_counts.iter().sum::<u64>(), 30);
    assert_eq!(versions[0].bucket_counts.len(), versions[0].bounds_seconds.len() + 1);
    assert!(versions[1].since >= versions[0].since);
    dp.stop().await;
}
