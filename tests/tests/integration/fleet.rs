//! A real fleet: PostgreSQL, control planes, data planes, upstreams and the CLI.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_bundle::sign::freshness::Freshness;
use sluice_bundle::sign::{Payload, SigningKey, sha256_hex};
use sluice_proto::v1 as pb;
use sluice_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_roll_forward_under_load_and_roll_back() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    let (a, b) = (Upstream::named("upstream-a").await, Upstream::named("upstream-b").await);
    let dp1 = DataPlane::start(&cp.url, "edge", "node-1", &keys.trusted_file, dir.join("n1")).await;
    let dp2 = DataPlane::start(&cp.url, "edge", "node-2", &keys.trusted_file, dir.join("n2")).await;

    let run = apply(&cp, "edge", &config_to(&a), &dir, "first").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("edge version 1 stored"), "{run:?}");
    for dp in [&dp1, &dp2] {
        dp.wait_for_version(1).await;
        assert_eq!(try_get(&dp.url()).await.unwrap(), "upstream-a");
    }

    // v2 moves traffic to b while a load loop runs against both data planes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    // Requests each loop has finished so far.
    let done: Arc<[AtomicUsize; 2]> = Arc::default();
    let mut loops = Vec::new();
    for (i, url) in [dp1.url(), dp2.url()].into_iter().enumerate() {
        let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
        loops.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Err(e) = try_get(&url).await {
                    failures.lock().unwrap().push(e);
                }
                n += 1;
                done[i].fetch_add(1, SeqCst);
            }
            n
        }));
    }
    let served = || done.iter().map(|d| d.load(SeqCst)).collect::<Vec<_>>();
    eventually!(Duration::from_secs(10), served().iter().all(|&n| n >= 5), "the load runs: {:?}", served());
    let applied_at = Instant::now();
    assert_eq!(apply(&cp, "edge", &config_to(&b), &dir, "to b").await.code, 0);
    for dp in [&dp1, &dp2] {
        dp.wait_for_version(2).await;
    }
    let took = applied_at.elapsed();
    assert!(took < scaled(Duration::from_secs(1)), "v2 reached both data planes in {took:?}");
    let at_v2 = served();
    eventually!(
        Duration::from_secs(10),
        served().iter().zip(&at_v2).all(|(now, then)| *now >= then + 5),
        "the load runs on against v2: {:?} since {at_v2:?}",
        served()
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut requests = 0;
    for l in loops {
        requests += l.await.unwrap();
    }
    assert!(failures.lock().unwrap().is_empty(), "failed requests: {:?}", failures.lock().unwrap());
    assert!(requests > 20, "{requests} requests");
    for dp in [&dp1, &dp2] {
        assert_eq!(try_get(&dp.url()).await.unwrap(), "upstream-b");
    }
    let planes = dataplanes_once_acked(&cp, 2, 2).await;
    for p in planes.as_array().unwrap() {
        assert_eq!((p["state"].as_str(), p["active_version"].as_u64()), (Some("SYNCED"), Some(2)), "{p}");
    }

    // Rolling back publishes v3 with v1's content.
    let run = sluice(&["--server", &cp.url, "--fleet", "edge", "rollback", "--to", "1"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("edge version 3 stored (rollback to 1"), "{run:?}");
    dp1.wait_for_version(3).await;
    assert_eq!(try_get(&dp1.url()).await.unwrap(), "upstream-a");
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

/// `sluice dataplanes -o json` once the control plane has stored an ACK of `version` from each of
/// `n` data planes: a data plane serves a version before its ACK is stored.
async fn dataplanes_once_acked(cp: &ControlPlane, n: usize, version: u64) -> serde_json::Value {
    let mut planes: serde_json::Value;
    eventually!(
        Duration::from_secs(10),
        {
            let run = sluice(&["--server", &cp.url, "--fleet", "edge", "dataplanes", "-o", "json"]).await;
            planes = serde_json::from_str(&run.stdout).unwrap();
            planes
                .as_array()
                .is_some_and(|ps| ps.len() == n && ps.iter().all(|p| p["last_ack_version"] == version))
        },
        "{n} ACKs of v{version} stored: {planes}"
    );
    planes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_from_unknown_keys_are_nacked_and_the_last_good_keeps_serving() {
    let db = Db::create().await;
    let dir = temp_dir();
    let (trusted, rogue) = (Keys::generate(&dir), Keys::generate(&dir));
    let cp = ControlPlane::start(&db.url, trusted.signing_key()).await;
    // A second control plane on the same database holds a key the data planes do not trust.
    let rogue_cp = ControlPlane::start(&db.url, rogue.signing_key()).await;
    let (a, b) = (Upstream::named("upstream-a").await, Upstream::named("upstream-b").await);
    let dp = DataPlane::start(&cp.url, "edge", "node-1", &trusted.trusted_file, dir.join("n1")).await;

    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "good").await.code, 0);
    dp.wait_for_version(1).await;
    // It signs only with the keys every replica agreed on, which it does not hold.
    let refused = apply(&rogue_cp, "edge", &config_to(&b), &dir, "rogue").await;
    assert!(refused.stderr.contains("does not hold active signing key"), "{refused:?}");
    // Someone with admin rights makes its key the only active one: its versions, stored and
    // announced to the other control plane through NOTIFY, are pushed and refused.
    let rogue_url = rogue_cp.url.clone();
    let keys = async |verb: &str, id: &str| sluice(&["--server", &rogue_url, "keys", verb, id]).await;
    assert_eq!(keys("activate", rogue.key.key_id()).await.code, 0);
    assert_eq!(keys("retire", trusted.key.key_id()).await.code, 0);
    assert_eq!(apply(&rogue_cp, "edge", &config_to(&b), &dir, "rogue").await.code, 0);
    eventually!(Duration::from_secs(10), {
        let run = sluice(&["--server", &cp.url, "--fleet", "edge", "dataplanes", "-o", "json"]).await;
        let planes: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        planes[0]["state"] == "NACKED"
    });
    let run = sluice(&["--server", &cp.url, "--fleet", "edge", "dataplanes"]).await;
    assert!(
        run.stdout.contains("NACKED") && run.stdout.contains("v2: signed only by unknown keys"),
        "{run:?}"
    );
    assert_eq!(dp.version(), Some(1));
    assert_eq!(try_get(&dp.url()).await.unwrap(), "upstream-a", "the last good version keeps serving");
    let audit =
        sluice(&["--server", &cp.url, "--fleet", "edge", "audit", "--action", "nack", "-o", "json"]).await;
    let audit: serde_json::Value = serde_json::from_str(&audit.stdout).unwrap();
    assert_eq!(audit["events"][0]["actor"], "data-plane:node-1");
    assert_eq!(audit["events"][0]["version"], 2);

    dp.stop().await;
    rogue_cp.stop().await;
    cp.stop().await;
}

impl Replayer {
    /// Serves `pushes` on a port of its own; its address.
    async fn serve(
        pushes: Vec<pb::BundlePush>,
        answers: Arc<Mutex<Vec<pb::data_plane_message::Kind>>>,
    ) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let replayer = Replayer { pushes, answers };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(sluice_proto::v1::data_plane_service_server::DataPlaneServiceServer::new(
                    replayer,
                ))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }
}

/// A freshness statement for `bundle`, signed with `key`.
fn statement(key: &SigningKey, bundle: &pb::SignedBundle, issued: i64, expires: i64) -> pb::SignedStatement {
    let payload = Payload::decode(&bundle.payload).unwrap();
    let f = Freshness {
        fleet: payload.fleet,
        version: payload.version,
        sha256: sha256_hex(&bundle.payload),
        issued,
        expires,
    };
    let (statement, signatures) = f.sign(&[key]);
    let signatures =
        signatures.into_iter().map(|s| pb::Signature { key_id: s.key_id, signature: s.signature }).collect();
    pb::SignedStatement { statement, signatures }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A stand-in control plane that pushes the bundles it is given, one per answer, and records
/// the answers.
struct Replayer {
    pushes: Vec<pb::BundlePush>,
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
        let (pushes, answers) = (self.pushes.clone(), self.answers.clone());
        tokio::spawn(async move {
            for push in pushes {
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
            // Hold the stream open (as long as the data plane listens) so the data plane does not
            // reconnect and replay again.
            tx.closed().await;
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
    let (a, b) = (Upstream::named("upstream-a").await, Upstream::named("upstream-b").await);
    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "v1").await.code, 0);
    assert_eq!(apply(&cp, "edge", &config_to(&b), &dir, "v2").await.code, 0);
    let mut client =
        sluice_proto::v1::config_service_client::ConfigServiceClient::connect(cp.url.clone()).await.unwrap();
    let mut bundle = async |v: u64| {
        let req = pb::GetVersionRequest { fleet: "edge".into(), version: Some(v) };
        client.get_version(req).await.unwrap().into_inner().bundle.unwrap()
    };
    let (v1, v2) = (bundle(1).await, bundle(2).await);
    let now = unix_now();
    let push = |bundle: &pb::SignedBundle, freshness: Option<(i64, i64)>| pb::BundlePush {
        nonce: format!("replay-{}", fastrand::u32(..)),
        bundle: Some(bundle.clone()),
        freshness: freshness.map(|(issued, expires)| statement(&keys.key, bundle, issued, expires)),
    };
    // Genuine, correctly signed bundles: v2 with the statement it had two days ago (a stream
    // recorded then and replayed now), v2 stripped of its statement, v2 as a control plane sends
    // it now, then v1 again, out of order.
    let pushes = vec![
        push(&v2, Some((now - 2 * 86_400, now - 86_400))),
        push(&v2, None),
        push(&v2, Some((now, now + 3600))),
        push(&v1, Some((now, now + 3600))),
    ];
    let answers = Arc::new(Mutex::new(Vec::new()));
    let addr = Replayer::serve(pushes, answers.clone()).await;
    let dp =
        DataPlane::start(&format!("http://{addr}"), "edge", "node-1", &keys.trusted_file, dir.join("n1"))
            .await;
    eventually!(Duration::from_secs(10), answers.lock().unwrap().len() == 4);
    let answers = answers.lock().unwrap().clone();
    let nack = |i: usize| match &answers[i] {
        pb::data_plane_message::Kind::Nack(n) => n.reason.clone(),
        other => panic!("expected a NACK, got {other:?}"),
    };
    assert!(nack(0).starts_with("freshness: statement lapsed at"), "{answers:?}");
    assert_eq!(nack(1), "freshness: no freshness statement came with a bundle that requires one");
    assert!(matches!(&answers[2], pb::data_plane_message::Kind::Ack(a) if a.version == 2), "{answers:?}");
    match &answers[3] {
        pb::data_plane_message::Kind::Nack(n) => {
            assert_eq!(n.version, 1);
            assert_eq!(n.reason, "version 1 is not newer than the active version 2");
        }
        other => panic!("expected a NACK, got {other:?}"),
    }
    assert_eq!(dp.version(), Some(2));
    assert_eq!(try_get(&dp.url()).await.unwrap(), "upstream-b");
    dp.stop().await;
    cp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_planes_outlive_the_control_plane_and_restart_from_their_cache() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    let a = Upstream::named("upstream-a").await;
    let dp1 = DataPlane::start(&cp.url, "edge", "node-1", &keys.trusted_file, dir.join("n1")).await;
    let dp2 = DataPlane::start(&cp.url, "edge", "node-2", &keys.trusted_file, dir.join("n2")).await;
    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "v1").await.code, 0);
    dp1.wait_for_version(1).await;
    dp2.wait_for_version(1).await;
    let cp_url = cp.url.clone();
    cp.stop().await;

    // The control plane is gone: traffic carries on.
    for _ in 0..20 {
        assert_eq!(try_get(&dp1.url()).await.unwrap(), "upstream-a");
    }
    // A data plane restarted now serves its cached bundle, verified again.
    let state = dp2.state_dir.clone();
    dp2.stop().await;
    let dp2 = DataPlane::start(&cp_url, "edge", "node-2", &keys.trusted_file, state.clone()).await;
    assert_eq!(dp2.version(), Some(1));
    assert_eq!(try_get(&dp2.url()).await.unwrap(), "upstream-a");
    assert_eq!(sluice_tests::try_get(&format!("http://{}/readyz", dp2.admin)).await.unwrap(), "ready\n");
    dp2.stop().await;

    // A tampered cache is refused: not ready, nothing served.
    let cache = state.join("bundle.pb");
    let mut bytes = std::fs::read(&cache).unwrap();
    let at = bytes.windows(8).position(|w| w == b"upstream").unwrap();
    bytes[at] = b'U';
    std::fs::write(&cache, bytes).unwrap();
    let dp3 = DataPlane::start(&cp_url, "edge", "node-2", &keys.trusted_file, state).await;
    assert_eq!(dp3.version(), None);
    assert!(
        sluice_tests::try_get(&format!("http://{}/readyz", dp3.admin)).await.unwrap_err().starts_with("503")
    );
    dp3.stop().await;
    dp1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_applies_have_one_winner() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    let a = Upstream::named("upstream-a").await;
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
                ..Default::default()
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
    let a = Upstream::named("upstream-a").await;
    let dp = DataPlane::start(&cp_b.url, "edge", "node-1", &keys.trusted_file, dir.join("n1")).await;
    let started = Instant::now();
    assert_eq!(apply(&cp_a, "edge", &config_to(&a), &dir, "via a").await.code, 0);
    dp.wait_for_version(1).await;
    assert!(
        started.elapsed() < scaled(Duration::from_secs(1)),
        "reached through NOTIFY in {:?}",
        started.elapsed()
    );
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
    let a = Upstream::named("upstream-a").await;
    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "v1").await.code, 0);

    forwarder.freeze();
    let started = Instant::now();
    let run = sluice(&["--server", &cp.url, "--fleet", "edge", "history"]).await;
    let took = started.elapsed();
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("PostgreSQL did not answer within 3s"), "{run:?}");
    assert!(took < scaled(Duration::from_secs(6)), "failed after {took:?}");
    let run = apply(&cp, "edge", &config_to(&a).replace("name: all", "name: r2"), &dir, "while frozen").await;
    assert_eq!(run.code, 5, "{run:?}");

    forwarder.resume();
    eventually!(Duration::from_secs(15), {
        sluice(&["--server", &cp.url, "--fleet", "edge", "history"]).await.code == 0
    });
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

/// A control plane whose freshness statements last `lifetime`, signing with the keys in `dir`.
async fn start_fresh(
    db: &Db,
    key_dir: &std::path::Path,
    lifetime: Duration,
    max_bundle: usize,
) -> ControlPlane {
    let setup = Setup {
        signing_keys: vec![key_dir.to_owned()],
        freshness_lifetime: lifetime,
        max_bundle_bytes: max_bundle,
    };
    ControlPlane::start_setup(&db.url, setup, "127.0.0.1:0".parse().unwrap(), Default::default()).await
}

/// A directory holding `key`'s file, as a control plane's `--signing-key`.
fn key_dir(dir: &std::path::Path, key: &SigningKey) -> std::path::PathBuf {
    let d = dir.join(format!("cp-keys-{}", fastrand::u32(..)));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(format!("{}.json", key.key_id())), key.to_file()).unwrap();
    d
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A fleet left alone for several freshness lifetimes keeps serving and keeps starting pods: the
/// statements are renewed, never the bundle. Once the control plane is gone for longer than a
/// lifetime, a restarted pod serves its cache anyway (stale, and says so), or refuses it when told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_fleet_outlives_its_freshness_lifetime_and_says_when_it_is_stale() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let lifetime = Duration::from_secs(3);
    let cp =
        start_fresh(&db, &key_dir(&dir, &keys.key), lifetime, sluice_bundle::sign::DEFAULT_MAX_PAYLOAD).await;
    let a = Upstream::named("upstream-a").await;
    let dp1 = DataPlane::start(&cp.url, "edge", "node-1", &keys.trusted_file, dir.join("n1")).await;
    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "v1").await.code, 0);
    dp1.wait_for_version(1).await;
    let applied_at = Instant::now();
    // The statement that came with the bundle is recorded once it is checked, just after the swap.
    eventually!(Duration::from_secs(5), dp1.proxy.freshness().expires().is_some());
    let first = dp1.proxy.freshness().expires().unwrap();
    // Three lifetimes of nothing but renewals.
    eventually!(Duration::from_secs(15), {
        applied_at.elapsed() > lifetime * 3 && dp1.proxy.freshness().expires().unwrap() > first + 6
    });
    assert!(!dp1.proxy.freshness().stale(unix_now()), "renewed all along");
    // A new pod, and a restarted one, take the version made three lifetimes ago.
    let dp2 = DataPlane::start(&cp.url, "edge", "node-2", &keys.trusted_file, dir.join("n2")).await;
    dp2.wait_for_version(1).await;
    assert_eq!(try_get(&dp2.url()).await.unwrap(), "upstream-a");
    let planes = sluice(&["--server", &cp.url, "--fleet", "edge", "dataplanes", "-o", "json"]).await;
    let planes: serde_json::Value = serde_json::from_str(&planes.stdout).unwrap();
    assert_eq!(planes[0]["state"], "SYNCED", "{planes}");
    assert_eq!(planes[0]["last_nack_version"], 0, "{planes}");
    let cp_url = cp.url.clone();
    cp.stop().await;

    // The control plane stays away for longer than a lifetime.
    let state = dp2.state_dir.clone();
    dp2.stop().await;
    eventually!(Duration::from_secs(10), dp1.proxy.freshness().stale(unix_now()));
    let readyz = dp1.admin_get("/readyz").await;
    assert!(readyz.starts_with("ready; stale: no freshness statement vouches"), "{readyz}");
    let metrics = dp1.admin_get("/metrics").await;
    assert_eq!(metric(&metrics, "sluice_bundle_freshness_stale"), Some(1.0), "{metrics}");
    assert!(
        metric(&metrics, "sluice_bundle_freshness_expiry_timestamp_seconds").unwrap() <= unix_now() as f64
    );
    assert_eq!(try_get(&dp1.url()).await.unwrap(), "upstream-a", "stale, still serving");

    // node-2 may hold a statement renewed after node-1's: wait for that one to lapse too.
    let cached = std::fs::read(state.join("freshness.pb")).unwrap();
    let cached = <pb::SignedStatement as prost::Message>::decode(cached.as_slice()).unwrap();
    let expires = Freshness::decode(&cached.statement).unwrap().expires;
    eventually!(Duration::from_secs(10), unix_now() >= expires);
    // Restarted now: availability first, the lapsed cache is served and reported stale...
    let dp2 = DataPlane::start(&cp_url, "edge", "node-2", &keys.trusted_file, state.clone()).await;
    assert_eq!(dp2.version(), Some(1));
    assert_eq!(try_get(&dp2.url()).await.unwrap(), "upstream-a");
    assert!(dp2.admin_get("/readyz").await.starts_with("ready; stale"));
    let metrics = dp2.admin_get("/metrics").await;
    assert_eq!(metric(&metrics, "sluice_bundle_freshness_stale"), Some(1.0), "{metrics}");
    assert!(metrics.contains("sluice_bundle_freshness_rejected_total{reason=\"lapsed\"} 1"), "{metrics}");
    dp2.stop().await;
    // ...unless the operator chose refusal.
    let dp3 =
        DataPlane::start_with(&cp_url, "edge", "node-2", &keys.trusted_file, state, None, true, None).await;
    assert_eq!(dp3.version(), None);
    assert!(dp3.admin_get("/readyz").await.starts_with("503"));
    dp3.stop().await;
    dp1.stop().await;
}

/// A replica that no longer holds the active key cannot renew: its data planes turn stale after
/// one lifetime and `sluice dataplanes` says so, while they keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_planes_without_renewals_show_as_stale_freshness() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let held = key_dir(&dir, &keys.key);
    let cp = start_fresh(&db, &held, Duration::from_secs(2), sluice_bundle::sign::DEFAULT_MAX_PAYLOAD).await;
    let a = Upstream::named("upstream-a").await;
    let dp = DataPlane::start(&cp.url, "edge", "node-1", &keys.trusted_file, dir.join("n1")).await;
    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "v1").await.code, 0);
    dp.wait_for_version(1).await;
    // Its key file is swapped for a key that is not active: nothing can be signed any more.
    std::fs::remove_file(held.join(format!("{}.json", keys.key.key_id()))).unwrap();
    std::fs::write(held.join("other.json"), SigningKey::generate().unwrap().to_file()).unwrap();
    cp.reload();
    eventually!(Duration::from_secs(15), {
        let run = sluice(&["--server", &cp.url, "--fleet", "edge", "dataplanes", "-o", "json"]).await;
        let planes: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        planes[0]["state"] == "STALE_FRESHNESS"
    });
    let table = sluice(&["--server", &cp.url, "--fleet", "edge", "dataplanes"]).await;
    assert!(table.stdout.contains("STALE_FRESHNESS"), "{table:?}");
    assert_eq!(try_get(&dp.url()).await.unwrap(), "upstream-a");
    // And an apply is refused with the reason, not signed with another set.
    let refused = apply(&cp, "edge", &config_to(&a).replace("name: all", "name: all2"), &dir, "v2").await;
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("does not hold active signing key"), "{refused:?}");
    dp.stop().await;
    cp.stop().await;
}

/// The whole rotation while traffic runs: add the new key to the control plane and the data
/// planes' trust, activate it (versions in use gain its signature), retire the old one, drop it
/// from the trust. No request fails, nothing is NACKed, nothing restarts; afterwards a bundle
/// signed only by the old key is refused, and a cache written before the rotation still boots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_rotates_under_load_without_restarts() {
    use sluice_bundle::sign::TrustedKeys;
    let db = Db::create().await;
    let dir = temp_dir();
    let (old, new) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
    let held = key_dir(&dir, &old);
    let cp =
        start_fresh(&db, &held, Duration::from_secs(3600), sluice_bundle::sign::DEFAULT_MAX_PAYLOAD).await;
    let trusted_file = dir.join("trusted.json");
    std::fs::write(&trusted_file, old.trusted_keys().to_file()).unwrap();
    let (a, b, c) = (
        Upstream::named("upstream-a").await,
        Upstream::named("upstream-b").await,
        Upstream::named("upstream-c").await,
    );
    let dp1 = DataPlane::start(&cp.url, "edge", "node-1", &trusted_file, dir.join("n1")).await;
    let dp2 = DataPlane::start(&cp.url, "edge", "node-2", &trusted_file, dir.join("n2")).await;
    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "v1").await.code, 0);
    dp1.wait_for_version(1).await;
    dp2.wait_for_version(1).await;

    let load = Load::start(vec![dp1.url(), dp2.url()]);
    let keys_cli = async |args: &[&str]| {
        let mut all = vec!["--server", cp.url.as_str(), "keys"];
        all.extend_from_slice(args);
        sluice(&all).await
    };
    // 1. Every control plane gets the new key's file; data planes trust both.
    std::fs::write(held.join(format!("{}.json", new.key_id())), new.to_file()).unwrap();
    cp.reload();
    let mut both = old.trusted_keys();
    both.extend(new.trusted_keys());
    std::fs::write(&trusted_file, both.to_file()).unwrap();
    let list = keys_cli(&["list", "-o", "json"]).await;
    assert!(list.stdout.contains(new.key_id()) || list.code == 0, "{list:?}");
    // 2. Activate: the head gains the new key's signature and is pushed again.
    let activated = keys_cli(&["activate", new.key_id()]).await;
    assert_eq!(activated.code, 0, "{activated:?}");
    assert!(activated.stdout.contains("edge@1"), "{activated:?}");
    let cached_by_both = |dp: &DataPlane| {
        let bytes = std::fs::read(dp.state_dir.join("bundle.pb")).unwrap_or_default();
        let bundle = <pb::SignedBundle as prost::Message>::decode(bytes.as_slice()).unwrap_or_default();
        let ids: Vec<&str> = bundle.signatures.iter().map(|s| s.key_id.as_str()).collect();
        ids.contains(&old.key_id()) && ids.contains(&new.key_id())
    };
    eventually!(Duration::from_secs(10), cached_by_both(&dp1) && cached_by_both(&dp2));
    // 3. A version applied now is signed by both.
    assert_eq!(apply(&cp, "edge", &config_to(&b), &dir, "v2").await.code, 0);
    dp1.wait_for_version(2).await;
    dp2.wait_for_version(2).await;
    // 4. Retire the old key, then drop it from the data planes' trust.
    let retired = keys_cli(&["retire", old.key_id()]).await;
    assert_eq!(retired.code, 0, "{retired:?}");
    let refused = keys_cli(&["retire", new.key_id()]).await;
    assert_ne!(refused.code, 0, "the last active key stays");
    assert!(refused.stderr.contains("only active signing key"), "{refused:?}");
    std::fs::write(&trusted_file, new.trusted_keys().to_file()).unwrap();
    assert_eq!(apply(&cp, "edge", &config_to(&c), &dir, "v3").await.code, 0);
    dp1.wait_for_version(3).await;
    dp2.wait_for_version(3).await;
    load.stop_without_failures().await;
    let planes = dataplanes_once_acked(&cp, 2, 3).await;
    for p in planes.as_array().unwrap() {
        assert_eq!(p["last_nack_version"], 0, "no NACK during the rotation: {p}");
        assert_eq!(p["state"], "SYNCED", "{p}");
    }

    // Afterwards: v3's payload signed by the old key alone is refused by a data plane.
    let mut client =
        sluice_proto::v1::config_service_client::ConfigServiceClient::connect(cp.url.clone()).await.unwrap();
    let req = pb::GetVersionRequest { fleet: "edge".into(), version: Some(3) };
    let v3 = client.get_version(req).await.unwrap().into_inner().bundle.unwrap();
    assert!(v3.signatures.iter().all(|s| s.key_id == new.key_id()), "v3 is signed by the new key only");
    let forged = old.sign(&v3.payload);
    let only_old = pb::SignedBundle {
        payload: v3.payload.clone(),
        signatures: vec![pb::Signature { key_id: forged.key_id, signature: forged.signature }],
    };
    let trusted_now = TrustedKeys::from_file(&std::fs::read_to_string(&trusted_file).unwrap()).unwrap();
    let expect =
        sluice_bundle::sign::Expectations { fleet: "edge", active_version: None, max_payload: 1 << 24 };
    let sigs = |b: &pb::SignedBundle| {
        b.signatures
            .iter()
            .map(|s| sluice_bundle::sign::Signature {
                key_id: s.key_id.clone(),
                signature: s.signature.clone(),
            })
            .collect::<Vec<_>>()
    };
    assert!(trusted_now.verify(&only_old.payload, &sigs(&only_old), &expect).is_err());
    let answers = Arc::new(Mutex::new(Vec::new()));
    let now = unix_now();
    let pushes = vec![pb::BundlePush {
        nonce: "old-key".into(),
        bundle: Some(only_old.clone()),
        freshness: Some(statement(&old, &only_old, now, now + 3600)),
    }];
    let addr = Replayer::serve(pushes, answers.clone()).await;
    let dp3 =
        DataPlane::start(&format!("http://{addr}"), "edge", "node-3", &trusted_file, dir.join("n3")).await;
    eventually!(Duration::from_secs(10), answers.lock().unwrap().len() == 1);
    match &answers.lock().unwrap()[0] {
        pb::data_plane_message::Kind::Nack(n) => {
            assert_eq!(n.reason, format!("signed only by unknown keys: {}", old.key_id()))
        }
        other => panic!("expected a NACK, got {other:?}"),
    }
    dp3.stop().await;
    // A data plane restarted from its cache verifies it with the new key alone.
    let state = dp1.state_dir.clone();
    dp1.stop().await;
    let dp1 = DataPlane::start(&cp.url, "edge", "node-1", &trusted_file, state).await;
    assert_eq!(dp1.version(), Some(3));
    dp1.stop().await;
    dp2.stop().await;
    cp.stop().await;
}

/// A config of about 10 MiB (20,000 routes, 2,000 pools) reaches every data plane; one over the
/// cap is refused at apply with the reason and nothing stored; a stored bundle over the cap a
/// control plane tells its data planes is NACKed with the reason while the stream stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_mebibyte_config_reaches_every_data_plane_and_oversize_ones_are_refused() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let key_dir = key_dir(&dir, &keys.key);
    let cp =
        start_fresh(&db, &key_dir, Duration::from_secs(3600), sluice_bundle::sign::DEFAULT_MAX_PAYLOAD).await;
    let a = Upstream::named("upstream-a").await;
    let dp1 = DataPlane::start(&cp.url, "edge", "node-1", &keys.trusted_file, dir.join("n1")).await;
    let dp2 = DataPlane::start(&cp.url, "edge", "node-2", &keys.trusted_file, dir.join("n2")).await;
    let big = sluice_tests::large::config(large::ROUTES, large::POOLS, a.addr);
    assert!(big.len() > 10 << 20 && big.len() < 12 << 20, "{} bytes", big.len());
    let file = dir.join("big.json");
    std::fs::write(&file, &big).unwrap();
    let run = sluice(&["--server", &cp.url, "--fleet", "edge", "apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{run:?}");
    dp1.wait_for_version(1).await;
    dp2.wait_for_version(1).await;
    let host = large::host(12_345);
    let path = format!("{}/x", large::prefix(12_345).trim_end_matches('/'));
    let resp = request(&dp1.url(), &path, &host, &format!("{:08}", 12_345).repeat(20)).await;
    assert_eq!(resp, "upstream-a");

    // Over the cap of a control plane with 1 MiB: refused before anything is stored, by the
    // control plane itself up to its message limit (twice the cap), by that limit beyond.
    let small_cap = start_fresh(&db, &key_dir, Duration::from_secs(3600), 1 << 20).await;
    let medium = dir.join("medium.json");
    std::fs::write(&medium, sluice_tests::large::config(2_500, 100, a.addr)).unwrap();
    for (doc, says) in [
        (&medium, "more than the 1048576 byte bundle cap (--max-bundle-size); nothing was stored"),
        (&file, "larger than the control plane accepts"),
    ] {
        let other =
            sluice(&["--server", &small_cap.url, "--fleet", "other", "apply", "-f", doc.to_str().unwrap()])
                .await;
        assert_eq!(other.code, 1, "refused: {other:?}");
        assert!(other.stderr.contains(says), "{other:?}");
    }
    let history = sluice(&["--server", &small_cap.url, "--fleet", "other", "history", "-o", "json"]).await;
    assert!(!history.stdout.contains("\"version\""), "nothing stored: {history:?}");
    // A version over 1 MiB but under 2 MiB, stored through the first control plane...
    let run =
        sluice(&["--server", &cp.url, "--fleet", "edge", "apply", "-f", medium.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{run:?}");
    dp1.wait_for_version(2).await;
    // ...is pushed by the second, whose data planes are told its 1 MiB cap: it arrives whole and
    // is NACKed with the reason; the stream stays up and the small version after it is taken.
    let dp3 = DataPlane::start(&small_cap.url, "edge", "node-3", &keys.trusted_file, dir.join("n3")).await;
    eventually!(Duration::from_secs(20), {
        let run = sluice(&["--server", &small_cap.url, "--fleet", "edge", "dataplanes", "-o", "json"]).await;
        let planes: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        planes.as_array().unwrap().iter().any(|p| p["node_id"] == "node-3" && p["state"] == "NACKED")
    });
    let run = sluice(&["--server", &small_cap.url, "--fleet", "edge", "dataplanes"]).await;
    assert!(run.stdout.contains("more than the 1048576 byte limit"), "{run:?}");
    assert_eq!(apply(&small_cap, "edge", &config_to(&a), &dir, "small").await.code, 0);
    dp3.wait_for_version(3).await;
    dp1.wait_for_version(3).await;
    for dp in [dp1, dp2, dp3] {
        dp.stop().await;
    }
    small_cap.stop().await;
    cp.stop().await;
}

/// GET `path` with a Host and the route's header condition.
async fn request(base: &str, path: &str, host: &str, key: &str) -> String {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = hyper::Request::get(format!("{base}{path}"))
        .header("host", host)
        .header("x-tenant-key", key)
        .body(http_body_util::Full::default())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// `sluice keys rotate` walks the fleet through a rotation with trust sets signed by two of three
/// root keys: data planes keep their bootstrap trusted-keys file (the old key alone) and take the
/// new key from the stream. Under load, no request fails and nothing is NACKed; a trust set with
/// too few root signatures is refused; afterwards a bundle signed by the old key alone is refused
/// by a data plane that boots from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_moves_the_fleet_through_root_signed_trust_sets() {
    use sluice_bundle::sign::trust::RootKeys;
    let db = Db::create().await;
    let dir = temp_dir();
    let (old, new) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
    let held = key_dir(&dir, &old);
    let cp =
        start_fresh(&db, &held, Duration::from_secs(3600), sluice_bundle::sign::DEFAULT_MAX_PAYLOAD).await;
    let roots_dir = dir.join("roots");
    let init = sluice(&[
        "keys",
        "root",
        "init",
        "--out",
        roots_dir.to_str().unwrap(),
        "--count",
        "3",
        "--threshold",
        "2",
    ])
    .await;
    assert_eq!(init.code, 0, "{init:?}");
    let roots =
        RootKeys::from_file(&std::fs::read_to_string(roots_dir.join("root-keys.json")).unwrap()).unwrap();
    let trusted_file = dir.join("trusted.json");
    std::fs::write(&trusted_file, old.trusted_keys().to_file()).unwrap();
    let a = Upstream::named("upstream-a").await;
    let start = async |node: &str| {
        DataPlane::start_with(
            &cp.url,
            "edge",
            node,
            &trusted_file,
            dir.join(node),
            None,
            false,
            Some(roots.clone()),
        )
        .await
    };
    let (dp1, dp2) = (start("node-1").await, start("node-2").await);
    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "v1").await.code, 0);
    dp1.wait_for_version(1).await;
    dp2.wait_for_version(1).await;

    let load = Load::start(vec![dp1.url(), dp2.url()]);
    std::fs::write(held.join("new.json"), new.to_file()).unwrap();
    cp.reload();
    let root = |i: usize| roots_dir.join(format!("root-key-{i}.json")).to_str().unwrap().to_owned();
    let (r1, r3) = (root(1), root(3));
    let rotate = sluice(&[
        "--server",
        &cp.url,
        "keys",
        "rotate",
        "--new-key",
        new.key_id(),
        "--root-key",
        &r1,
        "--root-key",
        &r3,
        "--wait",
        "30s",
    ])
    .await;
    assert_eq!(rotate.code, 0, "{rotate:?}");
    assert!(rotate.stdout.contains("4/4 published trust set 2"), "{rotate:?}");
    for dp in [&dp1, &dp2] {
        assert_eq!(dp.proxy.freshness().trust_version(), 2);
    }
    // Versions now carry the new key alone, which the data planes' files never named.
    let b = Upstream::named("upstream-b").await;
    assert_eq!(apply(&cp, "edge", &config_to(&b), &dir, "v2").await.code, 0);
    dp1.wait_for_version(2).await;
    dp2.wait_for_version(2).await;
    load.stop_without_failures().await;
    let planes = sluice(&["--server", &cp.url, "--fleet", "edge", "dataplanes", "-o", "json"]).await;
    let planes: serde_json::Value = serde_json::from_str(&planes.stdout).unwrap();
    for p in planes.as_array().unwrap() {
        assert_eq!(p["last_nack_version"], 0, "no NACK during the rotation: {p}");
        assert_eq!(p["trust_version"], 2, "{p}");
    }
    let keys = sluice(&["--server", &cp.url, "keys", "list", "-o", "json"]).await;
    let keys: serde_json::Value = serde_json::from_str(&keys.stdout).unwrap();
    let state = |id: &str| {
        keys["keys"].as_array().unwrap().iter().find(|k| k["key_id"] == id).unwrap()["state"].clone()
    };
    assert_eq!((state(old.key_id()), state(new.key_id())), ("retired".into(), "active".into()));

    // One root signature is not enough: stored (this control plane has no root keys to check
    // with), pushed, refused by every data plane, counted.
    let mut client =
        sluice_proto::v1::config_service_client::ConfigServiceClient::connect(cp.url.clone()).await.unwrap();
    let bad = sluice(&[
        "--server",
        &cp.url,
        "keys",
        "trust",
        "publish",
        "--trusted-keys",
        trusted_file.to_str().unwrap(),
        "--root-key",
        &r1,
    ])
    .await;
    assert_eq!(bad.code, 0, "{bad:?}");
    eventually!(Duration::from_secs(10), dp1.proxy.freshness().trust_rejected() == 1);
    assert_eq!(dp1.proxy.freshness().trust_version(), 2, "the set in force stays");
    let metrics = dp1.admin_get("/metrics").await;
    assert_eq!(metric(&metrics, "sluice_trust_set_rejected_total"), Some(1.0), "{metrics}");

    // A data plane booting from node-2's cache trusts the new key alone: v2's payload signed by
    // the old key alone is refused.
    let req = pb::GetVersionRequest { fleet: "edge".into(), version: Some(2) };
    let v2 = client.get_version(req).await.unwrap().into_inner().bundle.unwrap();
    let forged = old.sign(&v2.payload);
    let only_old = pb::SignedBundle {
        payload: v2.payload.clone(),
        signatures: vec![pb::Signature { key_id: forged.key_id, signature: forged.signature }],
    };
    let state_dir = dp2.state_dir.clone();
    dp2.stop().await;
    let copy = dir.join("node-3");
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::copy(state_dir.join("trust.pb"), copy.join("trust.pb")).unwrap();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let now = unix_now();
    let pushes = vec![pb::BundlePush {
        nonce: "old-key".into(),
        bundle: Some(only_old.clone()),
        freshness: Some(statement(&old, &only_old, now, now + 3600)),
    }];
    let addr = Replayer::serve(pushes, answers.clone()).await;
    let url = format!("http://{addr}");
    let dp3 =
        DataPlane::start_with(&url, "edge", "node-3", &trusted_file, copy, None, false, Some(roots.clone()))
            .await;
    eventually!(Duration::from_secs(10), answers.lock().unwrap().len() == 1);
    match &answers.lock().unwrap()[0] {
        pb::data_plane_message::Kind::Nack(n) => {
            assert_eq!(n.reason, format!("signed only by unknown keys: {}", old.key_id()))
        }
        other => panic!("expected a NACK, got {other:?}"),
    }
    dp3.stop().await;
    dp1.stop().await;
    cp.stop().await;
}

/// The database restored from a backup taken before the version data planes serve: the control
/// plane says so (`sluice dataplanes` AHEAD, `sluice_cp_dataplanes{state="ahead"}`), refuses to
/// number a version at or below theirs (it would never reach them, or share their number with
/// other content), and `apply --min-version` continues just above them, even with the head's own
/// content, but no further than one past what they serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restored_behind_its_data_planes_is_detected_and_numbering_continues_above_them() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    let (a, b, c) = (
        Upstream::named("upstream-a").await,
        Upstream::named("upstream-b").await,
        Upstream::named("upstream-c").await,
    );
    let dp = DataPlane::start(&cp.url, "edge", "node-1", &keys.trusted_file, dir.join("n1")).await;
    assert_eq!(apply(&cp, "edge", &config_to(&a), &dir, "v1").await.code, 0);
    dp.wait_for_version(1).await;
    let addr = cp.addr;
    cp.stop().await;
    // The backup is taken at version 1; the fleet moves on to version 2.
    let backup = db.backup().await;
    let cp = ControlPlane::start_on(&db.url, keys.signing_key(), addr).await;
    assert_eq!(apply(&cp, "edge", &config_to(&b), &dir, "v2").await.code, 0);
    dp.wait_for_version(2).await;
    cp.stop().await;
    // And the database is restored from it.
    let cp = ControlPlane::start_on(&backup.url, keys.signing_key(), addr).await;
    let metrics = cp.serve_metrics().await;
    let planes = async || {
        let run = sluice(&["--server", &cp.url, "--fleet", "edge", "dataplanes", "-o", "json"]).await;
        serde_json::from_str::<serde_json::Value>(&run.stdout).unwrap()[0].clone()
    };
    eventually!(Duration::from_secs(15), planes().await["state"] == "AHEAD");
    let table = sluice(&["--server", &cp.url, "--fleet", "edge", "dataplanes"]).await;
    assert!(table.stdout.contains("AHEAD") && table.stdout.contains("above the fleet's head"), "{table:?}");
    let text = try_get(&format!("http://{metrics}/metrics")).await.unwrap();
    assert!(text.contains("sluice_cp_dataplanes{fleet=\"edge\",state=\"ahead\"} 1"), "{text}");

    // Numbered from the restored head it would be a second, different version 2: refused.
    let refused = apply(&cp, "edge", &config_to(&c), &dir, "after the restore").await;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("serve version 2, above the fleet's head 1"), "{refused:?}");
    assert!(refused.stderr.contains("--min-version 3"), "{refused:?}");
    let file = dir.join("a.yaml");
    std::fs::write(&file, config_to(&a)).unwrap();
    let base = ["--server", cp.url.as_str(), "--fleet", "edge", "apply", "-f", file.to_str().unwrap()];
    // Further than one past what any data plane serves: refused.
    let far = sluice(&[&base[..], &["--min-version", "4"]].concat()).await;
    assert_ne!(far.code, 0, "{far:?}");
    assert!(far.stderr.contains("--min-version 4") && far.stderr.contains("serves is 2"), "{far:?}");
    let history = sluice(&["--server", &cp.url, "--fleet", "edge", "history", "-o", "json"]).await;
    assert!(!history.stdout.contains("\"version\": 2"), "nothing stored: {history:?}");
    // Just above, with the restored head's own content: stored as version 3, pushed, served.
    let above = sluice(&[&base[..], &["--min-version", "3"]].concat()).await;
    assert_eq!(above.code, 0, "{above:?}");
    dp.wait_for_version(3).await;
    assert_eq!(try_get(&dp.url()).await.unwrap(), "upstream-a");
    eventually!(Duration::from_secs(10), planes().await["state"] == "SYNCED");
    dp.stop().await;
    cp.stop().await;
}
