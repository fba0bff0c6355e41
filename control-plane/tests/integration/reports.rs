//! Traffic reports: data planes (streams written by hand) report to two control planes sharing
//! one database (`#[sqlx::test]`), and `GetTrafficReport` on either returns every node's latest
//! report and their sum.
//!
//! Run with: `cargo nextest run -p sluice-control-plane --test integration reports::` (PostgreSQL
//! from `DATABASE_URL`, see `.cargo/config.toml`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sluice_bundle::sign::SigningKey;
use sluice_proto::v1 as pb;
use sluice_proto::v1::config_service_client::ConfigServiceClient;
use sluice_proto::v1::data_plane_service_client::DataPlaneServiceClient;
use sluice_test_support::eventually;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const WITHIN: Duration = Duration::from_secs(20);

#[sqlx::test(migrations = false)]
async fn reports_from_two_nodes_add_up_and_a_new_report_replaces_the_last(
    _: PgPoolOptions,
    db: PgConnectOptions,
) {
    let url = format!(
        "postgres://{}@{}:{}/{}",
        db.get_username(),
        db.get_host(),
        db.get_port(),
        db.get_database().unwrap()
    );
    let (one, two) = (start(&url).await, start(&url).await);
    let (one_url, two_url) = (format!("http://{}", one.addr), format!("http://{}", two.addr));

    // `a` talks to the first control plane, `b` to the second.
    let a = DataPlaneStream::open(&one_url, "a").await;
    let b = DataPlaneStream::open(&two_url, "b").await;
    a.report(1000, users(10, 2, vec![6, 3, 1], guardrail("tripped", "candidate 3.0x slower", 1030, 1))).await;
    b.report(1001, users(20, 1, vec![10, 10, 0], guardrail("active", "", 0, 2))).await;

    let mut api = ConfigServiceClient::connect(two_url.clone()).await.unwrap();
    let report = report_until(&mut api, "", |r| r.nodes.len() == 2).await;
    let nodes: Vec<(&str, i64, bool)> =
        report.nodes.iter().map(|n| (n.node_id.as_str(), n.at, n.connected)).collect();
    assert_eq!(nodes, [("a", 1000, true), ("b", 1001, true)]);
    assert_eq!(report.nodes[0].active_version, 7);
    assert_eq!(report.routes.len(), 1);
    let route = &report.routes[0];
    let stable = &route.variants[0];
    assert_eq!(
        (stable.requests, stable.errors, stable.bucket_counts.as_slice()),
        (30, 3, [16, 13, 1].as_slice())
    );
    let m = route.mirror.as_ref().unwrap();
    assert_eq!((m.sent, m.completed, m.failed, m.compared, m.differed), (30, 28, 2, 26, 5));
    assert_eq!(m.dropped.get("in_flight"), Some(&5));
    assert_eq!(m.fields[0], pb::FieldDiff { field: "/name".into(), differed: 5, noise: 3 });
    assert_eq!(m.fields.len(), 2, "{:?}", m.fields);
    let samples: Vec<&str> = m.samples.iter().map(|s| s.request_id.as_str()).collect();
    assert_eq!(
        samples,
        ["b-7", "a-7", "b-6", "a-6", "b-5", "a-5", "b-4", "a-4", "b-3", "a-3"],
        "newest first, ten"
    );
    let g = m.guardrail.as_ref().unwrap();
    assert_eq!(
        (g.state.as_str(), g.reason.as_str(), g.resumes_at, g.trips),
        ("tripped", "a: candidate 3.0x slower", 1030, 3)
    );
    assert!(route.brake.as_ref().unwrap().engaged);
    assert_eq!(route.brake.as_ref().unwrap().reason, "b: error rate 5.0% > 1.0%");

    // `a` reports again: its new counters replace its old ones.
    a.report(1010, users(15, 2, vec![9, 5, 1], guardrail("active", "", 0, 1))).await;
    let mut api_one = ConfigServiceClient::connect(one_url).await.unwrap();
    let report = report_until(&mut api_one, "", |r| r.nodes.first().is_some_and(|n| n.at == 1010)).await;
    let route = &report.routes[0];
    assert_eq!(route.variants[0].requests, 35, "15 from a's latest report and 20 from b's, not 45");
    assert_eq!(route.variants[0].bucket_counts, [19, 15, 1]);
    assert_eq!(route.mirror.as_ref().unwrap().sent, 35);
    assert_eq!(route.mirror.as_ref().unwrap().guardrail.as_ref().unwrap().state, "active");

    // One route, or one that nobody reports.
    let only = api.get_traffic_report(request("users")).await.unwrap().into_inner();
    assert_eq!(only.routes.len(), 1);
    let none = api.get_traffic_report(request("nowhere")).await.unwrap().into_inner();
    assert!(none.routes.is_empty() && none.nodes.iter().all(|n| n.routes.is_empty()), "{none:?}");

    // `b` goes away: still listed, marked, and out of the sum.
    drop(b);
    let report =
        report_until(&mut api, "", |r| r.nodes.iter().any(|n| n.node_id == "b" && !n.connected)).await;
    assert_eq!(report.nodes.len(), 2);
    assert!(report.nodes[1].last_seen > 0);
    assert_eq!(report.nodes[1].routes.len(), 1, "its last report is kept");
    assert_eq!(report.routes[0].variants[0].requests, 15);
    assert!(!report.routes[0].brake.as_ref().unwrap().engaged, "b's brake no longer counts");

    let refused = api.get_traffic_report(pb::TrafficReportRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    drop((a, api, api_one));
    one.stop().await;
    two.stop().await;
}

async fn start(database_url: &str) -> sluice_control_plane::Running {
    sluice_control_plane::start(sluice_control_plane::Options {
        database_url: database_url.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        keyring: keyring(),
        max_bundle_bytes: sluice_bundle::sign::DEFAULT_MAX_PAYLOAD,
        db_timeout: Duration::from_secs(5),
        security: Default::default(),
        retention: None,
    })
    .await
    .unwrap()
}

/// A fresh signing key in a directory of its own.
fn keyring() -> sluice_control_plane::keys::Keyring {
    let dir =
        std::env::temp_dir().join(format!("sluice-reports-{}-{:08x}", std::process::id(), fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("signing-key.json"), SigningKey::generate().unwrap().to_file()).unwrap();
    let files = sluice_control_plane::keys::KeyFiles(vec![dir]);
    sluice_control_plane::keys::Keyring::load(files, sluice_control_plane::keys::DEFAULT_FRESHNESS_LIFETIME)
        .unwrap()
}

fn request(route: &str) -> pb::TrafficReportRequest {
    pb::TrafficReportRequest { fleet: "edge".into(), route: route.into() }
}

/// Asks until `done` holds (or fails at the deadline with the last answer).
async fn report_until(
    api: &mut ConfigServiceClient<tonic::transport::Channel>,
    route: &str,
    done: impl Fn(&pb::TrafficReport) -> bool,
) -> pb::TrafficReport {
    let mut report: pb::TrafficReport;
    eventually!(
        WITHIN,
        {
            report = api.get_traffic_report(request(route)).await.unwrap().into_inner();
            done(&report)
        },
        "the report never got there: {report:#?}"
    );
    report
}

// === reports ===

fn guardrail(state: &str, reason: &str, resumes_at: i64, trips: u64) -> pb::Guardrail {
    pb::Guardrail { state: state.into(), reason: reason.into(), since: 990, resumes_at, trips }
}

/// Route `users`: a stable variant and a mirror whose counters follow `requests` and `errors`
/// (fields, samples and the brake are the reporting node's, see [`DataPlaneStream::report`]).
fn users(requests: u64, errors: u64, bucket_counts: Vec<u64>, guardrail: pb::Guardrail) -> pb::RouteReport {
    pb::RouteReport {
        route: "users".into(),
        variants: vec![pb::VariantStats {
            variant: "stable".into(),
            pool: "users-v1".into(),
            requests,
            errors,
            bounds_seconds: vec![0.05, 0.25],
            bucket_counts,
            sum_seconds: 1.5,
        }],
        brake: None,
        mirror: Some(pb::MirrorReport {
            pool: "users-v2".into(),
            sent: requests,
            completed: requests - 1,
            failed: 1,
            dropped: [("in_flight".to_owned(), errors + 1)].into(),
            compared: requests - 2,
            differed: errors + 1,
            fields: Vec::new(),
            samples: Vec::new(),
            guardrail: Some(guardrail),
            baseline_compared: requests - 2,
            noise_relative: 0.2,
            noise_absolute: 0.0003,
        }),
    }
}

// === a data plane, by hand ===

/// One data-plane stream of fleet `edge`; ends when dropped.
struct DataPlaneStream {
    node: String,
    tx: mpsc::Sender<pb::DataPlaneMessage>,
    _pushes: tonic::Streaming<pb::ControlPlaneMessage>,
}

impl DataPlaneStream {
    async fn open(url: &str, node_id: &str) -> Self {
        let (tx, rx) = mpsc::channel(4);
        let hello = pb::Hello {
            node_id: node_id.into(),
            fleet: "edge".into(),
            active_version: 7,
            ..Default::default()
        };
        tx.send(pb::DataPlaneMessage { kind: Some(pb::data_plane_message::Kind::Hello(hello)) })
            .await
            .unwrap();
        let mut client = DataPlaneServiceClient::connect(url.to_owned()).await.unwrap();
        let pushes = client.stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Self { node: node_id.into(), tx, _pushes: pushes }
    }

    /// Reports `route` as of second `at`, with this node's fields, samples and brake.
    async fn report(&self, at: i64, mut route: pb::RouteReport) {
        let b = self.node == "b";
        if let Some(m) = route.mirror.as_mut() {
            m.fields = if b {
                vec![pb::FieldDiff { field: "/name".into(), differed: 3, noise: 2 }]
            } else {
                vec![
                    pb::FieldDiff { field: "/name".into(), differed: 2, noise: 1 },
                    pb::FieldDiff { field: "status".into(), differed: 1, noise: 0 },
                ]
            };
            // Eight samples each, newest first; b's are a second newer than a's of the same index.
            m.samples = (0..8)
                .rev()
                .map(|i| pb::DiffSample {
                    at: 900 + 2 * i + i64::from(b),
                    request_id: format!("{}-{i}", self.node),
                    method: "GET".into(),
                    path: format!("/users/{i}"),
                    fields: vec!["/name".into()],
                    primary: "200 {\"name\":\"***\"}".into(),
                    candidate: "200 {\"name\":null}".into(),
                })
                .collect();
        }
        route.brake = Some(pb::CanaryBrake {
            pool: "users-v2".into(),
            weight_percent: 10.0,
            engaged: b,
            reason: if b { "error rate 5.0% > 1.0%".into() } else { String::new() },
            engaged_at: if b { 995 } else { 0 },
        });
        let report = pb::Report { at, active_version: 7, routes: vec![route], ..Default::default() };
        self.tx
            .send(pb::DataPlaneMessage { kind: Some(pb::data_plane_message::Kind::Report(report)) })
            .await
            .unwrap();
    }
}
