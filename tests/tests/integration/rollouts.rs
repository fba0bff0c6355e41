//! Progressive rollouts on a real fleet: PostgreSQL, control planes, three data planes, upstreams
//! and steady client traffic. Bakes are seconds long by config; the tests wait for states, never
//! for fixed times.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_proto::v1 as pb;
use sluice_proto::v1::config_service_client::ConfigServiceClient;
use sluice_tests::*;
use tokio::task::JoinHandle;

const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

/// A fleet of three data planes on one database, with client traffic on every one. The data
/// planes connect to the last control plane.
struct Fleet {
    db: Db,
    dir: std::path::PathBuf,
    keys: Keys,
    cps: Vec<Option<ControlPlane>>,
    dps: Vec<DataPlane>,
    good: Upstream,
    stop: Arc<AtomicBool>,
    load: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Version 1 (to a healthy upstream) on every data plane, and traffic flowing. With several
    /// control planes the first is the rollout leader.
    async fn start(control_planes: usize) -> Self {
        let db = Db::create().await;
        let dir = temp_dir();
        let keys = Keys::generate(&dir);
        let mut cps = Vec::new();
        for i in 0..control_planes {
            let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
            if i == 0 {
                let addr = cp.addr;
                eventually!(Duration::from_secs(10), leader(&db).await.1.ends_with(&addr.to_string()));
            }
            cps.push(Some(cp));
        }
        let good = Upstream::named("good").await;
        let url = cps.last().unwrap().as_ref().unwrap().url.clone();
        let mut dps = Vec::new();
        for node in NODES {
            dps.push(DataPlane::start(&url, "edge", node, &keys.trusted_file, dir.join(node)).await);
        }
        let mut fleet = Self { db, dir, keys, cps, dps, good, stop: Arc::default(), load: Vec::new() };
        let v1 = apply_with(fleet.cp(), &config_to(&fleet.good), None).await.unwrap();
        assert_eq!(v1.version.unwrap().version, 1);
        for dp in &fleet.dps {
            dp.wait_for_version(1).await;
        }
        for dp in &fleet.dps {
            let (url, stop) = (dp.url(), fleet.stop.clone());
            fleet.load.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = try_get(&url).await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        fleet
    }

    /// The first running control plane.
    fn cp(&self) -> &ControlPlane {
        self.cps.iter().flatten().next().unwrap()
    }

    fn versions(&self) -> Vec<Option<u64>> {
        self.dps.iter().map(DataPlane::version).collect()
    }

    /// How many data planes serve `version`.
    fn on(&self, version: u64) -> usize {
        self.dps.iter().filter(|d| d.version() == Some(version)).count()
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for l in self.load {
            let _ = l.await;
        }
        for dp in self.dps {
            dp.stop().await;
        }
        for cp in self.cps.into_iter().flatten() {
            cp.stop().await;
        }
        drop(self.db);
    }
}

/// The rollout leader's term and holder (`pid@address`), from the database.
async fn leader(db: &Db) -> (i64, String) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query_as("SELECT term, holder FROM rollout_leader").fetch_one(&mut conn).await.unwrap()
}

/// A strategy with short bakes: one node, then everyone.
fn strategy(first_bake: &str) -> String {
    format!(
        "steps: [{{nodes: 1, bake: {first_bake}}}, {{percent: 100, bake: 1s}}]\n\
         gates: {{max_error_rate: 5%, max_p99: 2s, min_requests: 20}}\ninterval: 1s\nprogress_deadline: 30s\n"
    )
}

async fn client(cp: &ControlPlane) -> ConfigServiceClient<tonic::transport::Channel> {
    ConfigServiceClient::connect(cp.url.clone()).await.unwrap()
}

async fn apply_with(
    cp: &ControlPlane,
    config: &str,
    rollout: Option<&str>,
) -> Result<pb::ApplyResponse, tonic::Status> {
    let req = pb::ApplyRequest {
        fleet: "edge".into(),
        document: config.as_bytes().to_vec(),
        format: pb::DocumentFormat::Yaml as i32,
        author: "alice".into(),
        message: "test".into(),
        rollout: rollout.map(|r| pb::RolloutChoice {
            choice: Some(pb::rollout_choice::Choice::Document(r.as_bytes().to_vec())),
            format: pb::DocumentFormat::Yaml as i32,
        }),
        ..Default::default()
    };
    client(cp).await.apply(req).await.map(|r| r.into_inner())
}

async fn status(cp: &ControlPlane) -> pb::RolloutStatus {
    let req = pb::GetRolloutRequest { fleet: "edge".into() };
    client(cp).await.get_rollout(req).await.unwrap().into_inner()
}

async fn act(cp: &ControlPlane, action: &str) -> Result<pb::RolloutStatus, tonic::Status> {
    let req = pb::RolloutActionRequest { fleet: "edge".into(), action: action.into(), actor: "bob".into() };
    client(cp).await.rollout_action(req).await.map(|r| r.into_inner())
}

async fn wait_for_state(cp: &ControlPlane, state: &str, within: Duration) -> pb::RolloutStatus {
    let mut s: pb::RolloutStatus;
    eventually!(
        within,
        {
            s = status(cp).await;
            s.state == state
        },
        "rollout never became {state}: {s:#?}"
    );
    s
}

/// The audit trail of the fleet, oldest first, as `(actor, action, version, detail)`.
async fn audit(cp: &ControlPlane) -> Vec<(String, String, Option<u64>, serde_json::Value)> {
    let req = pb::ListAuditRequest { fleet: "edge".into(), limit: 1000, ..Default::default() };
    let resp = client(cp).await.list_audit(req).await.unwrap().into_inner();
    assert!(resp.chain_intact, "{}", resp.chain_problem);
    let mut events: Vec<_> = resp
        .events
        .into_iter()
        .map(|e| (e.actor, e.action, e.version, serde_json::from_str(&e.detail_json).unwrap()))
        .collect();
    events.reverse();
    events
}

/// One sample of a control plane's `/metrics`, by its series (`name{labels}` as written).
async fn metric(addr: std::net::SocketAddr, series: &str) -> Option<f64> {
    let text = try_get(&format!("http://{addr}/metrics")).await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn config_to_nowhere() -> String {
    // A port nothing listens on: every request fails with 502.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:8080'}}\npools:\n  - {{name: broken, endpoints: [{{address: '{closed}'}}]}}\nroutes:\n  - {{name: all, pool: broken}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_version_walks_every_step_to_succeeded() {
    let fleet = Fleet::start(1).await;
    let next = Upstream::named("next").await;
    let applied = apply_with(fleet.cp(), &config_to(&next), Some(&strategy("6s"))).await.unwrap();
    assert_eq!(applied.version.unwrap().version, 2);
    assert!(applied.rollout_id.is_some());

    // Step 1: exactly one data plane moves; the others stay on version 1 while it bakes.
    eventually!(Duration::from_secs(10), fleet.on(2) == 1);
    let s = status(fleet.cp()).await;
    assert_eq!((s.state.as_str(), s.step, s.steps), ("progressing", 1, 2), "{s:#?}");
    assert_eq!(s.nodes.iter().filter(|n| n.moved).count(), 1, "{s:#?}");
    assert_eq!(fleet.on(1), 2);

    let done = wait_for_state(fleet.cp(), "succeeded", Duration::from_secs(60)).await;
    assert_eq!(fleet.versions(), vec![Some(2); 3]);
    assert!(done.reason.contains("step 2/2: gates passed"), "{done:#?}");
    assert!(done.nodes.iter().all(|n| n.moved && n.acked), "{done:#?}");
    for dp in &fleet.dps {
        assert_eq!(try_get(&dp.url()).await.unwrap(), "next");
    }

    // Each step's verdict is audited with the gate values against their thresholds.
    let steps: Vec<_> = audit(fleet.cp())
        .await
        .into_iter()
        .filter(|(_, action, ..)| action == "rollout")
        .map(|(_, _, _, d)| d)
        .collect();
    let states: Vec<&str> = steps.iter().map(|d| d["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "progressing", "progressing", "succeeded"], "{steps:#?}");
    let gates = steps[2]["gates"].as_array().unwrap();
    assert_eq!(gates[0]["gate"], "error rate");
    assert_eq!(gates[0]["passed"], true);
    assert_eq!(gates[0]["threshold"], 0.05);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_version_is_rolled_back_at_the_first_step_and_the_rest_of_the_fleet_never_sees_it() {
    let fleet = Fleet::start(1).await;
    // Watch every data plane's version for the whole rollout.
    let seen: Arc<std::sync::Mutex<Vec<BTreeSet<u64>>>> =
        Arc::new(std::sync::Mutex::new(vec![BTreeSet::new(); 3]));
    let proxies: Vec<_> = fleet.dps.iter().map(|d| d.proxy.clone()).collect();
    let (watching, watch_stop) = (seen.clone(), fleet.stop.clone());
    let watcher = tokio::spawn(async move {
        while !watch_stop.load(Ordering::Relaxed) {
            for (i, p) in proxies.iter().enumerate() {
                if let Some(s) = p.snapshot() {
                    watching.lock().unwrap()[i].insert(s.meta.version);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });

    apply_with(fleet.cp(), &config_to_nowhere(), Some(&strategy("30s"))).await.unwrap();
    let failed = wait_for_state(fleet.cp(), "failed", Duration::from_secs(30)).await;
    assert!(failed.reason.starts_with("step 1/2: error rate"), "{failed:#?}");
    assert!(failed.reason.contains("> 5.0%"), "{failed:#?}");
    assert_eq!(failed.rollback_version, Some(3), "{failed:#?}");

    // The moved data plane is back on the old content as version 3; the others never moved.
    let moved: Vec<usize> =
        (0..3).filter(|i| failed.nodes.iter().any(|n| n.node_id == NODES[*i] && n.moved)).collect();
    assert_eq!(moved.len(), 1, "{failed:#?}");
    fleet.dps[moved[0]].wait_for_version(3).await;
    for dp in &fleet.dps {
        assert_eq!(try_get(&dp.url()).await.unwrap(), "good");
    }
    // Every data plane serves what is meant for it: none is stale.
    let mut expected = vec![(1, "SYNCED".to_owned()); 3];
    expected[moved[0]] = (3, "SYNCED".to_owned());
    eventually!(Duration::from_secs(10), {
        let req = pb::ListDataPlanesRequest { fleet: "edge".into() };
        let planes = client(fleet.cp()).await.list_data_planes(req).await.unwrap().into_inner().data_planes;
        planes.into_iter().map(|p| (p.active_version, p.state)).collect::<Vec<_>>() == expected
    });
    // The watcher has seen the moved data plane's last version; then, for a while, no data plane
    // moves again.
    eventually!(Duration::from_secs(10), seen.lock().unwrap()[moved[0]].contains(&3));
    let settled: Vec<Option<u64>> = (0..3).map(|i| Some(if i == moved[0] { 3 } else { 1 })).collect();
    stays_for!(Duration::from_millis(300), fleet.versions() == settled, "no data plane moves again");
    fleet.stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    for (i, versions) in seen.iter().enumerate() {
        let expected: BTreeSet<u64> = if i == moved[0] { [1, 2, 3].into() } else { [1].into() };
        assert_eq!(versions, &expected, "{} served these versions", NODES[i]);
    }

    // The audit trail tells the story, in order.
    let story: Vec<String> = audit(fleet.cp())
        .await
        .into_iter()
        .filter(|(_, action, ..)| action == "rollout" || action == "rollback")
        .map(|(actor, action, version, d)| match action.as_str() {
            "rollback" => format!("{actor} rollback v{}", version.unwrap()),
            _ => format!("{actor} {} {}", d["state"].as_str().unwrap(), d["reason"].as_str().unwrap_or("")),
        })
        .collect();
    assert_eq!(story.len(), 5, "{story:#?}");
    // An anonymous control plane records `anonymous`, whatever the client typed as its author.
    assert!(story[0].starts_with("anonymous pending"), "{story:#?}");
    assert!(story[1].starts_with("rollout-leader progressing started"), "{story:#?}");
    assert!(story[2].starts_with("rollout-leader rolling_back step 1/2: error rate"), "{story:#?}");
    assert_eq!(story[3], "rollout-leader rollback v3", "{story:#?}");
    assert!(story[4].starts_with("rollout-leader failed step 1/2: error rate"), "{story:#?}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_a_data_plane_refuses_halts_the_rollout() {
    let fleet = Fleet::start(1).await;
    // A second listener on an address that is taken: the data plane cannot bind it and NACKs.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:8080'}}\n  - {{name: extra, address: '{}'}}\n{}",
        taken.local_addr().unwrap(),
        config_to(&fleet.good).split_once("pools:").map(|(_, rest)| format!("pools:{rest}")).unwrap()
    );
    apply_with(fleet.cp(), &config, Some(&strategy("2s"))).await.unwrap();
    let failed = wait_for_state(fleet.cp(), "failed", Duration::from_secs(30)).await;
    assert!(failed.reason.contains("refused the version"), "{failed:#?}");
    let nacked: Vec<_> = failed.nodes.iter().filter(|n| n.moved).collect();
    assert_eq!(nacked.len(), 1, "the rollout stopped at its first node: {failed:#?}");
    assert!(failed.reason.contains(&format!("{} refused the version", nacked[0].node_id)), "{failed:#?}");
    // Nothing else was moved, and every data plane kept serving.
    assert_eq!(fleet.on(2), 0);
    for dp in &fleet.dps {
        assert_eq!(try_get(&dp.url()).await.unwrap(), "good");
    }
    drop(taken);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_pause_resume_promote_and_abort() {
    let fleet = Fleet::start(1).await;
    let cp = fleet.cp();
    let next = Upstream::named("next").await;
    // A bake long enough that only operators move this rollout on.
    apply_with(cp, &config_to(&next), Some(&strategy("10m"))).await.unwrap();
    eventually!(Duration::from_secs(10), fleet.on(2) == 1);

    // One version rolls out at a time.
    let refused = apply_with(cp, &config_to(&fleet.good), None).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("promote or abort it first"), "{refused:?}");

    let paused = act(cp, "pause").await.unwrap();
    assert_eq!((paused.state.as_str(), paused.requested.as_str()), ("paused", ""), "{paused:#?}");
    // The actor is the authenticated principal (`anonymous` here), never what the client typed.
    assert_eq!(paused.reason, "paused by anonymous");
    let again = act(cp, "pause").await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    let resumed = act(cp, "resume").await.unwrap();
    assert_eq!(resumed.state, "progressing", "{resumed:#?}");
    assert_eq!(resumed.step, 1);

    // Promote: every data plane gets the version, and it succeeds on their ACKs.
    let promoted = act(cp, "promote").await.unwrap();
    assert!(
        promoted.reason.starts_with("promoted by anonymous")
            || promoted.reason.starts_with("promoted: all 3"),
        "{promoted:#?}"
    );
    let done = wait_for_state(cp, "succeeded", Duration::from_secs(20)).await;
    assert_eq!(done.reason, "promoted: all 3 data planes ACKed", "{done:#?}");
    assert_eq!(fleet.versions(), vec![Some(2); 3]);

    // Abort: the next rollout's moved data plane goes back to version 2's content.
    let third = Upstream::named("third").await;
    apply_with(cp, &config_to(&third), Some(&strategy("10m"))).await.unwrap();
    eventually!(Duration::from_secs(10), fleet.on(3) == 1);
    act(cp, "abort").await.unwrap();
    let aborted = wait_for_state(cp, "aborted", Duration::from_secs(20)).await;
    assert!(aborted.reason.starts_with("aborted by anonymous"), "{aborted:#?}");
    assert_eq!(aborted.rollback_version, Some(4));
    eventually!(Duration::from_secs(10), fleet.on(4) == 1 && fleet.on(2) == 2);
    for dp in &fleet.dps {
        assert_eq!(try_get(&dp.url()).await.unwrap(), "next");
    }
    let none = act(cp, "resume").await.unwrap_err();
    assert_eq!(none.code(), tonic::Code::FailedPrecondition, "nothing left to act on: {none:?}");

    // `rollback --to` during a rollout ends it, and every data plane follows the rollback.
    apply_with(cp, &config_to(&third), Some(&strategy("10m"))).await.unwrap();
    eventually!(Duration::from_secs(10), fleet.versions().contains(&Some(5)));
    let req = pb::RollbackRequest {
        fleet: "edge".into(),
        to_version: 1,
        author: "carol".into(),
        ..Default::default()
    };
    let rolled = client(cp).await.rollback(req).await.unwrap().into_inner();
    assert_eq!(rolled.version.unwrap().version, 6);
    let ended = wait_for_state(cp, "aborted", Duration::from_secs(20)).await;
    assert!(ended.reason.starts_with("aborted by anonymous"), "{ended:#?}");
    eventually!(Duration::from_secs(10), fleet.versions() == vec![Some(6); 3]);
    for dp in &fleet.dps {
        assert_eq!(try_get(&dp.url()).await.unwrap(), "good");
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_control_plane_resumes_the_rollout_where_it_was() {
    let mut fleet = Fleet::start(1).await;
    let next = Upstream::named("next").await;
    apply_with(fleet.cp(), &config_to(&next), Some(&strategy("20s"))).await.unwrap();
    eventually!(Duration::from_secs(10), fleet.on(2) == 1);
    let before = status(fleet.cp()).await;
    let moved: Vec<_> = before.nodes.iter().filter(|n| n.moved).map(|n| n.node_id.clone()).collect();
    // An operator watches through the restart.
    let server = fleet.cp().url.clone();
    let args = ["--server", &server, "--fleet", "edge", "rollout", "status", "--watch", "--timeout", "60s"];
    let (live, watch) = sluice_live(&args);
    let restart = async {
        // Once the watch shows the rollout: down in the middle of step 1, then back on the same
        // address (the data planes reconnect).
        eventually!(Duration::from_secs(10), !live.stdout.text().is_empty(), "the watch shows the rollout");
        let cp = fleet.cps[0].take().unwrap();
        let addr = cp.addr;
        cp.stop().await;
        // Back once the watch has noticed.
        eventually!(
            Duration::from_secs(10),
            live.stderr.text().contains("lost the control plane"),
            "the watch notices: {}",
            live.stderr.text()
        );
        fleet.cps[0] = Some(ControlPlane::start_on(&fleet.db.url, fleet.keys.signing_key(), addr).await);
        let after = status(fleet.cp()).await;
        assert_eq!((after.id, after.step, after.state.as_str()), (before.id, 1, "progressing"), "{after:#?}");
        let still: Vec<_> = after.nodes.iter().filter(|n| n.moved).map(|n| n.node_id.clone()).collect();
        assert_eq!(still, moved, "the same data plane stays moved");

        let done = wait_for_state(fleet.cp(), "succeeded", Duration::from_secs(60)).await;
        assert!(done.reason.contains("step 2/2: gates passed"), "{done:#?}");
        eventually!(Duration::from_secs(10), fleet.versions() == vec![Some(2); 3]);
    };
    let (watched, ()) = tokio::join!(watch, restart);
    assert_eq!(watched.code, 0, "the watch rode out the restart: {watched:?}");
    assert!(watched.stderr.contains("lost the control plane"), "{watched:?}");
    assert!(watched.stdout.lines().last().unwrap().contains("succeeded"), "{watched:?}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_control_planes_one_leads_and_the_other_takes_over_when_it_dies() {
    let mut fleet = Fleet::start(2).await;
    let (first, second) = (fleet.cps[0].as_ref().unwrap().addr, fleet.cps[1].as_ref().unwrap().addr);
    let (term, holder) = leader(&fleet.db).await;
    assert!(holder.ends_with(&first.to_string()), "{holder}");
    let metrics = [
        fleet.cps[0].as_ref().unwrap().serve_metrics().await,
        fleet.cps[1].as_ref().unwrap().serve_metrics().await,
    ];
    assert_eq!(metric(metrics[0], "sluice_cp_rollout_leader").await, Some(1.0));
    assert_eq!(metric(metrics[1], "sluice_cp_rollout_leader").await, Some(0.0));

    // Driven by the first; pushed by the second, which the data planes are connected to.
    let next = Upstream::named("next").await;
    apply_with(fleet.cp(), &config_to(&next), Some(&strategy("4s"))).await.unwrap();
    eventually!(Duration::from_secs(10), fleet.on(2) == 1);
    assert_eq!(leader(&fleet.db).await, (term, holder), "the second never took over meanwhile");
    // What "stuck" is judged against: the step's start, the later of its bake (4s) and the
    // progress deadline (30s), and one gate interval (1s).
    let deadline = r#"sluice_cp_rollout_deadline_timestamp_seconds{fleet="edge"}"#;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let by = metric(metrics[1], deadline).await.expect("a progressing rollout has a deadline");
    assert!(by > now + 20.0 && by <= now + 32.0, "{by} against now {now}");

    // The leader dies mid-step; the other takes over with a higher term and finishes the job.
    fleet.cps[0].take().unwrap().stop().await;
    eventually!(Duration::from_secs(15), leader(&fleet.db).await.1.ends_with(&second.to_string()));
    let (new_term, _) = leader(&fleet.db).await;
    assert!(new_term > term);
    eventually!(Duration::from_secs(5), {
        metric(metrics[1], "sluice_cp_rollout_leader").await == Some(1.0)
    });
    let done = wait_for_state(fleet.cp(), "succeeded", Duration::from_secs(60)).await;
    assert_eq!(done.step, 2, "{done:#?}");
    let state = r#"sluice_cp_rollout_state{fleet="edge",state="succeeded"}"#;
    assert_eq!(metric(metrics[1], state).await, Some(1.0));
    let progressing = r#"sluice_cp_rollout_state{fleet="edge",state="progressing"}"#;
    assert_eq!(metric(metrics[1], progressing).await, Some(0.0));
    assert_eq!(metric(metrics[1], r#"sluice_cp_rollout_step{fleet="edge"}"#).await, Some(2.0));
    assert_eq!(metric(metrics[1], deadline).await, None, "a finished rollout has none");
    eventually!(Duration::from_secs(10), fleet.versions() == vec![Some(2); 3]);
    // The steps the new leader took are written under its term.
    let last = audit(fleet.cp()).await.into_iter().rev().find(|(_, a, ..)| a == "rollout").unwrap();
    assert_eq!(last.3["term"], new_term);
    fleet.stop().await;
}

/// The issue's "done when", as a new user would try it: apply a bad version with a rollout
/// file, watch it fail its first gate and roll back, read why in the audit; then a good one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cli_a_bad_version_rolls_back_by_itself_and_a_good_one_completes() {
    let fleet = Fleet::start(1).await;
    let server = fleet.cp().url.clone();
    let strategy_file = fleet.dir.join("canary.yaml");
    std::fs::write(&strategy_file, strategy("30s")).unwrap();
    let bad = fleet.dir.join("bad.yaml");
    std::fs::write(&bad, config_to_nowhere()).unwrap();
    let base = ["--server", server.as_str(), "--fleet", "edge"];
    fn with<'a>(base: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(args).copied().collect()
    }

    let run = sluice(&with(
        &base,
        &["apply", "-f", bad.to_str().unwrap(), "--rollout", strategy_file.to_str().unwrap()],
    ))
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("rollout 1 started"), "{run:?}");
    let watch = sluice(&with(&base, &["rollout", "status", "--watch", "--timeout", "60s"])).await;
    assert_eq!(watch.code, 1, "a failed rollout exits non-zero: {watch:?}");
    let last = watch.stdout.lines().last().unwrap();
    assert!(last.contains("failed") && last.contains("error rate"), "{watch:?}");
    assert!(watch.stdout.lines().count() >= 2, "one line per change: {watch:?}");

    let audit = sluice(&with(&base, &["audit", "-o", "json"])).await;
    let events: serde_json::Value = serde_json::from_str(&audit.stdout).unwrap();
    let failed = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "rollout" && e["detail"]["state"] == "failed")
        .unwrap_or_else(|| panic!("no failed rollout in {events:#}"));
    assert!(failed["detail"]["reason"].as_str().unwrap().contains("error rate"), "{failed:#}");
    let judged =
        events["events"].as_array().unwrap().iter().find(|e| e["detail"]["state"] == "rolling_back").unwrap();
    let gate = &judged["detail"]["gates"][0];
    assert_eq!(
        (&gate["gate"], &gate["passed"], &gate["threshold"]),
        (&"error rate".into(), &false.into(), &0.05.into())
    );

    let next = Upstream::named("next").await;
    let good = fleet.dir.join("good.yaml");
    std::fs::write(&good, config_to(&next)).unwrap();
    std::fs::write(&strategy_file, strategy("2s")).unwrap();
    let run = sluice(&with(
        &base,
        &["apply", "-f", good.to_str().unwrap(), "--rollout", strategy_file.to_str().unwrap()],
    ))
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let watch = sluice(&with(&base, &["rollout", "status", "--watch", "--timeout", "60s"])).await;
    assert_eq!(watch.code, 0, "{watch:?}");
    assert!(watch.stdout.lines().last().unwrap().contains("succeeded"), "{watch:?}");
    let json = sluice(&with(&base, &["rollout", "status", "-o", "json"])).await;
    let status: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(status["state"], "succeeded", "{json:?}");
    assert_eq!(status["version"], 4, "{json:?}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strategies_come_by_name_file_or_fleet_default_and_bad_ones_are_refused_with_paths() {
    let fleet = Fleet::start(1).await;
    let server = fleet.cp().url.clone();
    let base = ["--server", server.as_str(), "--fleet", "edge"];
    let run = |args: &'static [&'static str]| {
        let args: Vec<&str> = base.iter().chain(args).copied().collect();
        async move { sluice(&args).await }
    };
    let file = |name: &str, text: &str| {
        let path = fleet.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };

    // Every problem in a strategy file, each with its path; nothing stored.
    let bad =
        file("bad-strategy.yaml", "steps: [{nodes: 0}, {percent: 150}]\ngates: {max_error_rate: lots}\n");
    let next = Upstream::named("next").await;
    let config = file("next.yaml", &config_to(&next));
    let args: Vec<&str> = base.iter().copied().chain(["apply", "-f", &config, "--rollout", &bad]).collect();
    let refused = sluice(&args).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    for path in ["steps[0].nodes", "steps[1].percent", "gates.max_error_rate"] {
        assert!(refused.stderr.contains(path), "{path} in {refused:?}");
    }
    let args: Vec<&str> =
        base.iter().copied().chain(["apply", "-f", &config, "--strategy", "yolo"]).collect();
    let unknown = sluice(&args).await;
    assert!(unknown.code != 0 && unknown.stderr.contains("canary, linear, all-at-once"), "{unknown:?}");
    assert!(!status(fleet.cp()).await.exists, "nothing was started");

    // The fleet's default applies to applies that name no strategy; `all-at-once` overrides it.
    let set = run(&["rollout", "default", "--strategy", "canary"]).await;
    assert_eq!(set.code, 0, "{set:?}");
    assert!(set.stdout.contains("\"nodes\": 1"), "{set:?}");
    let args: Vec<&str> = base.iter().copied().chain(["apply", "-f", &config]).collect();
    let applied = sluice(&args).await;
    assert!(applied.stderr.contains("rollout 1 started"), "{applied:?}");
    let started = status(fleet.cp()).await;
    assert_eq!((started.steps, started.version), (3, 2), "the built-in canary: {started:#?}");
    eventually!(Duration::from_secs(10), fleet.on(2) == 1);
    let aborted = run(&["rollout", "abort"]).await;
    assert_eq!(aborted.code, 0, "{aborted:?}");
    wait_for_state(fleet.cp(), "aborted", Duration::from_secs(10)).await;

    let third = Upstream::named("third").await;
    let config = file("third.yaml", &config_to(&third));
    let args: Vec<&str> =
        base.iter().copied().chain(["apply", "-f", &config, "--strategy", "all-at-once"]).collect();
    let applied = sluice(&args).await;
    assert!(applied.code == 0 && !applied.stderr.contains("rollout"), "{applied:?}");
    eventually!(Duration::from_secs(10), fleet.versions() == vec![Some(4); 3]);
    let cleared = run(&["rollout", "default", "--clear"]).await;
    assert_eq!(cleared.code, 0, "{cleared:?}");
    let shown = run(&["rollout", "default"]).await;
    assert!(
        shown.stdout.contains("no default strategy") || shown.stderr.contains("no default strategy"),
        "{shown:?}"
    );
    fleet.stop().await;
}

/// Assignment follows the node id: a data plane keeps its cohort when it comes back without its
/// cache, and one that joins mid-rollout gets the previous version until a step takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_planes_keep_their_cohort_across_reconnects_and_late_joiners_wait_their_turn() {
    let mut fleet = Fleet::start(1).await;
    let next = Upstream::named("next").await;
    apply_with(fleet.cp(), &config_to(&next), Some(&strategy("5m"))).await.unwrap();
    eventually!(Duration::from_secs(10), fleet.on(2) == 1);
    let moved = fleet.versions().iter().position(|v| *v == Some(2)).unwrap();
    let kept = (moved + 1) % 3;

    // Both come back as new processes with empty state directories.
    let url = fleet.cp().url.clone();
    for i in [moved, kept] {
        let old = fleet.dps.remove(i);
        old.stop().await;
        let dir = fleet.dir.join(format!("{}-again", NODES[i]));
        fleet.dps.insert(i, DataPlane::start(&url, "edge", NODES[i], &fleet.keys.trusted_file, dir).await);
    }
    fleet.dps[moved].wait_for_version(2).await;
    fleet.dps[kept].wait_for_version(1).await;

    // A fourth data plane joins during step 1: the step has its one node, so it waits on 1.
    let late =
        DataPlane::start(&url, "edge", "node-4", &fleet.keys.trusted_file, fleet.dir.join("node-4")).await;
    late.wait_for_version(1).await;
    let s = status(fleet.cp()).await;
    assert_eq!(s.nodes.iter().filter(|n| n.moved).count(), 1, "{s:#?}");
    assert_eq!(s.nodes.len(), 4, "{s:#?}");

    // Promoted: everyone, the late one included, gets the version.
    act(fleet.cp(), "promote").await.unwrap();
    wait_for_state(fleet.cp(), "succeeded", Duration::from_secs(20)).await;
    late.wait_for_version(2).await;
    eventually!(Duration::from_secs(10), fleet.versions() == vec![Some(2); 3]);
    late.stop().await;
    fleet.stop().await;
}
