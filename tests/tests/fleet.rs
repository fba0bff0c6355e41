//! A real fleet: PostgreSQL, control planes, data planes, upstreams and the CLI.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_proto::v1 as pb;
use sluice_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_roll_forward_under_load_and_roll_back() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    let (a, b) = (Upstream::start("upstream-a").await, Upstream::start("upstream-b").await);
    let dp1 = DataPlane::start(&cp.url, "edge", "node-1", &keys.trusted_file, dir.join("n1")).await;
    let dp2 = DataPlane::start(&cp.url, "edge", "node-2", &keys.trusted_file, dir.join("n2")).await;

    let run = apply(&cp, "edge", &config_to(&a), &dir, "first").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("edge version 1 stored"), "{run:?}");
    for dp in [&dp1, &dp2] {
        dp.wait_for_version(1).await;
        assert_eq!(get(&dp.url()).await.unwrap(), "upstream-a");
    }

    // v2 moves traffic to b while a load loop runs against both data planes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut loops = Vec::new();
    for url in [dp1.url(), dp2.url()] {
        let (stop, failures) = (stop.clone(), failures.clone());
        loops.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Err(e) = get(&url).await {
                    failures.lock().unwrap().push(e);
                }
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let applied_at = Instant::now();
    assert_eq!(apply(&cp, "edge", &config_to(&b), &dir, "to b").await.code, 0);
    for dp in [&dp1, &dp2] {
        dp.wait_for_version(2).await;
    }
    let took = applied_at.elapsed();
    assert!(took < Duration::from_secs(1), "v2 reached both data planes in {took:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut requests = 0;
    for l in loops {
        requests += l.await.unwrap();
    }
    assert!(failures.lock().unwrap().is_empty(), "failed requests: {:?}", failures.lock().unwrap());
    assert!(requests > 20, "{requests} requests");
    for dp in [&dp1, &dp2] {
        assert_eq!(get(&dp.url()).await.unwrap(), "upstream-b");
    }
    let planes = sluice(&["--server", &cp.url, "--fleet", "edge", "dataplanes", "-o", "json"]).await;
    let planes: serde_json::Value = serde_json::from_str(&planes.stdout).unwrap();
    for p in planes.as_array().unwrap() {
        assert_eq!((p["state"].as_str(), p["active_version"].as_u64()), (Some("SYNCED"), Some(2)), "{p}");
    }

    // Rolling back publishes v3 with v1's content.
    let run = sluice(&["--server", &cp.url, "--fleet", "edge", "rollback", "--to", "1"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("edge version 3 stored (rollback to 1"), "{run:?}");
    dp1.wait_for_version(3).await;
    assert_eq!(get(&dp1.url()).await.unwrap(), "upstream-a");
    let v1 = sluice(&["--server", &cp.url, "--fleet", "edge", "get", "--version", "1", "-o", "json"]).await;
    let v3 = sluice(&["--server", &cp.url, "--fleet", "edge", "get", "-o", "json"]).await;
    let config = |r: &CliRun| serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["config"].clone();
    assert_eq!(config(&v1), config(&v3), "v3's content equals v1's");

    let history = sluice(&["--server", &cp.url, "--fleet", "edge", "history", "-o", "json"]).await;
    let history: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    let origins: Vec<&str> =
        history.as_array().unwrap().iter().map(|v| v["origin"].as_str().unwrap()).collect();
    assert_eq!(origins, ["rollback to 1", "apply", "apply"]);
    let audit = sluice(&["--server", &cp.url, "--fleet", "edge", "audit", "-o", "json"]).await;
    assert_eq!(audit.code, 0, "{audit:?}");
    let audit: serde_json::Value = serde_json::from_str(&audit.stdout).unwrap();
    assert_eq!(audit["chain_intact"], true);
    let actions: Vec<&str> =
        audit["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["rollback", "apply", "apply"]);

    dp1.stop().await;
    dp2.stop().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_from_unknown_keys_are_nacked_and_the_last_good_keeps_serving() {
    let db = Db::create().await;
    let dir = temp_dir();
    let (trusted, rogue) = (Keys::generate(&dir), Keys::generate(&dir));
    let cp = ControlPlane::start(&db.url, trusted.signing_key()).await;
    // A second control plane on the same database signs with a key the data planes do not trust.
    let rogue_cp = ControlPlane::start(&db.url, rogue.signing_key()).await;
    let (a, b) = (Upstream::start("upstream-a").await, Upstream::start("upstream-b").await);
    let dp = DataPlane::start(&cp.url, "edge", "node-1", &trusted.trusted_file, dir.join("n1")).await;

    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "good").await.code, 0);
    dp.wait_for_version(1).await;
    // Stored through the rogue control plane, announced to the other via NOTIFY, pushed, refused.
    assert_eq!(apply(&rogue_cp, "edge", &config_to(&b), &dir, "rogue").await.code, 0);
    eventually_async(Duration::from_secs(10), async || {
        let run = sluice(&["--server", &cp.url, "--fleet", "edge", "dataplanes", "-o", "json"]).await;
        let planes: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        planes[0]["state"] == "NACKED"
    })
    .await;
    let run = sluice(&["--server", &cp.url, "--fleet", "edge", "dataplanes"]).await;
    assert!(
        run.stdout.contains("NACKED") && run.stdout.contains("v2: signed only by unknown keys"),
        "{run:?}"
    );
    assert_eq!(dp.version(), Some(1));
    assert_eq!(get(&dp.url()).await.unwrap(), "upstream-a", "the last good version keeps serving");
    let audit =
        sluice(&["--server", &cp.url, "--fleet", "edge", "audit", "--action", "nack", "-o", "json"]).await;
    let audit: serde_json::Value = serde_json::from_str(&audit.stdout).unwrap();
    assert_eq!(audit["events"][0]["actor"], "data-plane:node-1");
    assert_eq!(audit["events"][0]["version"], 2);

    dp.stop().await;
    rogue_cp.stop().await;
    cp.stop().await;
}

/// A stand-in control plane that pushes the bundles it is given, one per answer, and records
/// the answers.
struct Replayer {
    bundles: Vec<pb::SignedBundle>,
    answers: Arc<Mutex<Vec<pb::data_plane_message::Kind>>>,
}

#[tonic::async_trait]
impl sluice_proto::v1::data_plane_service_server::DataPlaneService for Replayer {
    type StreamStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::ControlPlaneMessage, tonic::Status>> + Send>,
    >;

    async fn stream(
        &self,
        req: tonic::Request<tonic::Streaming<pb::DataPlaneMessage>>,
    ) -> Result<tonic::Response<Self::StreamStream>, tonic::Status> {
        let mut incoming = req.into_inner();
        let _hello = incoming.message().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (bundles, answers) = (self.bundles.clone(), self.answers.clone());
        tokio::spawn(async move {
            for (i, bundle) in bundles.into_iter().enumerate() {
                let push = pb::BundlePush { nonce: format!("replay-{i}"), bundle: Some(bundle) };
                let message =
                    pb::ControlPlaneMessage { kind: Some(pb::control_plane_message::Kind::Bundle(push)) };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
                // Skip reports until the answer to this push.
                while let Ok(Some(m)) = incoming.message().await {
                    if let Some(
                        k @ (pb::data_plane_message::Kind::Ack(_) | pb::data_plane_message::Kind::Nack(_)),
                    ) = m.kind
                    {
                        answers.lock().unwrap().push(k);
                        break;
                    }
                }
            }
            // Hold the stream open so the data plane does not reconnect and replay again.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(tx);
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_older_version_is_refused() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    let (a, b) = (Upstream::start("upstream-a").await, Upstream::start("upstream-b").await);
    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "v1").await.code, 0);
    assert_eq!(apply(&cp, "edge", &config_to(&b), &dir, "v2").await.code, 0);
    let mut client =
        sluice_proto::v1::config_service_client::ConfigServiceClient::connect(cp.url.clone()).await.unwrap();
    let mut bundle = async |v: u64| {
        let req = pb::GetVersionRequest { fleet: "edge".into(), version: Some(v) };
        client.get_version(req).await.unwrap().into_inner().bundle.unwrap()
    };
    let (v1, v2) = (bundle(1).await, bundle(2).await);
    // Genuine, correctly signed bundles, sent out of order: v2, then v1 again.
    let answers = Arc::new(Mutex::new(Vec::new()));
    let replayer = Replayer { bundles: vec![v2, v1], answers: answers.clone() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(sluice_proto::v1::data_plane_service_server::DataPlaneServiceServer::new(replayer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dp =
        DataPlane::start(&format!("http://{addr}"), "edge", "node-1", &keys.trusted_file, dir.join("n1"))
            .await;
    eventually(Duration::from_secs(10), || answers.lock().unwrap().len() == 2).await;
    let answers = answers.lock().unwrap().clone();
    assert!(matches!(&answers[0], pb::data_plane_message::Kind::Ack(a) if a.version == 2), "{answers:?}");
    match &answers[1] {
        pb::data_plane_message::Kind::Nack(n) => {
            assert_eq!(n.version, 1);
            assert_eq!(n.reason, "version 1 is not newer than the active version 2");
        }
        other => panic!("expected a NACK, got {other:?}"),
    }
    assert_eq!(dp.version(), Some(2));
    assert_eq!(get(&dp.url()).await.unwrap(), "upstream-b");
    dp.stop().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_planes_outlive_the_control_plane_and_restart_from_their_cache() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    let a = Upstream::start("upstream-a").await;
    let dp1 = DataPlane::start(&cp.url, "edge", "node-1", &keys.trusted_file, dir.join("n1")).await;
    let dp2 = DataPlane::start(&cp.url, "edge", "node-2", &keys.trusted_file, dir.join("n2")).await;
    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "v1").await.code, 0);
    dp1.wait_for_version(1).await;
    dp2.wait_for_version(1).await;
    let cp_url = cp.url.clone();
    cp.stop().await;

    // The control plane is gone: traffic carries on.
    for _ in 0..20 {
        assert_eq!(get(&dp1.url()).await.unwrap(), "upstream-a");
    }
    // A data plane restarted now serves its cached bundle, verified again.
    let state = dp2.state_dir.clone();
    dp2.stop().await;
    let dp2 = DataPlane::start(&cp_url, "edge", "node-2", &keys.trusted_file, state.clone()).await;
    assert_eq!(dp2.version(), Some(1));
    assert_eq!(get(&dp2.url()).await.unwrap(), "upstream-a");
    assert_eq!(sluice_tests::get(&format!("http://{}/readyz", dp2.admin)).await.unwrap(), "ready\n");
    dp2.stop().await;

    // A tampered cache is refused: not ready, nothing served.
    let cache = state.join("bundle.pb");
    let mut bytes = std::fs::read(&cache).unwrap();
    let at = bytes.windows(8).position(|w| w == b"upstream").unwrap();
    bytes[at] = b'U';
    std::fs::write(&cache, bytes).unwrap();
    let dp3 = DataPlane::start(&cp_url, "edge", "node-2", &keys.trusted_file, state).await;
    assert_eq!(dp3.version(), None);
    assert!(sluice_tests::get(&format!("http://{}/readyz", dp3.admin)).await.unwrap_err().starts_with("503"));
    dp3.stop().await;
    dp1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_applies_have_one_winner() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    let a = Upstream::start("upstream-a").await;
    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "base").await.code, 0);
    let mut racers = Vec::new();
    for i in 0..50 {
        let url = cp.url.clone();
        let config = config_to(&a).replace("name: all", &format!("name: r{i}"));
        racers.push(tokio::spawn(async move {
            let mut client =
                sluice_proto::v1::config_service_client::ConfigServiceClient::connect(url).await.unwrap();
            let req = pb::ApplyRequest {
                fleet: "edge".into(),
                document: config.into_bytes(),
                format: 0,
                expect_version: Some(1),
                author: format!("racer-{i}"),
                message: String::new(),
                rollout: None,
            };
            client.apply(req).await.map(|_| ()).map_err(|s| s.code())
        }));
    }
    let mut outcomes = (0, 0);
    for r in racers {
        match r.await.unwrap() {
            Ok(()) => outcomes.0 += 1,
            Err(tonic::Code::Aborted) => outcomes.1 += 1,
            Err(code) => panic!("unexpected {code:?}"),
        }
    }
    assert_eq!(outcomes, (1, 49));
    // And through the CLI, a conflict is exit code 3 with a clear message.
    let file = dir.join("late.yaml");
    std::fs::write(&file, config_to(&a)).unwrap();
    let run = sluice(&[
        "--server",
        &cp.url,
        "--fleet",
        "edge",
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--expect-version",
        "1",
    ])
    .await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("conflict: the fleet's head is version 2, not the expected 1"), "{run:?}");
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_planes_sharing_a_database_all_push() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let (cp_a, cp_b) = (
        ControlPlane::start(&db.url, keys.signing_key()).await,
        ControlPlane::start(&db.url, keys.signing_key()).await,
    );
    let a = Upstream::start("upstream-a").await;
    let dp = DataPlane::start(&cp_b.url, "edge", "node-1", &keys.trusted_file, dir.join("n1")).await;
    let started = Instant::now();
    assert_eq!(apply(&cp_a, "edge", &config_to(&a), &dir, "via a").await.code, 0);
    dp.wait_for_version(1).await;
    assert!(started.elapsed() < Duration::from_secs(1), "reached through NOTIFY in {:?}", started.elapsed());
    dp.stop().await;
    cp_a.stop().await;
    cp_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_fails_calls_fast_and_they_recover() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let forwarder = Forwarder::start(db.server()).await;
    let cp = ControlPlane::start(&db.url_via(forwarder.addr), keys.signing_key()).await;
    let a = Upstream::start("upstream-a").await;
    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "v1").await.code, 0);

    forwarder.freeze();
    let started = Instant::now();
    let run = sluice(&["--server", &cp.url, "--fleet", "edge", "history"]).await;
    let took = started.elapsed();
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("PostgreSQL did not answer within 3s"), "{run:?}");
    assert!(took < Duration::from_secs(6), "failed after {took:?}");
    let run = apply(&cp, "edge", &config_to(&a).replace("name: all", "name: r2"), &dir, "while frozen").await;
    assert_eq!(run.code, 5, "{run:?}");

    forwarder.resume();
    eventually_async(Duration::from_secs(15), async || {
        sluice(&["--server", &cp.url, "--fleet", "edge", "history"]).await.code == 0
    })
    .await;
    let history = sluice(&["--server", &cp.url, "--fleet", "edge", "history", "-o", "json"]).await;
    let versions: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(versions.as_array().unwrap().len(), 1, "nothing half-written while frozen");
    cp.stop().await;
}

#[tokio::test]
async fn the_cli_names_an_unreachable_control_plane() {
    let run = sluice(&["--server", "http://127.0.0.1:1", "history"]).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("cannot reach the control plane at http://127.0.0.1:1"), "{run:?}");
}
