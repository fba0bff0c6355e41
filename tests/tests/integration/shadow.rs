//! Dark launching as an operator does it: a route applied through the control plane mirrors a
//! quarter of its traffic to a candidate that changed one JSON field; clients see only the
//! primary; `sluice shadow report` names exactly that field, with PII masked; a slow candidate
//! trips the guardrail, which says why and resumes after its cooldown. And `sluice canary report`
//! for a weighted canary.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::*;

const WITHIN: Duration = Duration::from_secs(20);
const PRIMARY: &str = r#"{"user": {"id": 7, "email": "jane.doe@example.com", "plan": "pro"}, "ts": __TS__}"#;
const CANDIDATE: &str =
    r#"{"user": {"id": 7, "email": "jane.doe@example.com", "plan": "enterprise"}, "ts": __TS__}"#;

fn config(primary: &Upstream, candidate: &Upstream) -> String {
    format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:8080'}}\n\
         pools:\n  - {{name: users-v1, endpoints: [{{address: '{}'}}]}}\n  \
         - {{name: users-v2, endpoints: [{{address: '{}'}}]}}\n\
         routes:\n  - name: users\n    pool: users-v1\n    mirror:\n      pool: users-v2\n      fraction: 0.25\n      \
         diff: {{ignore: [/ts]}}\n      guardrail: {{latency_ratio: 2, consecutive: 3, cooldown: 3s}}\n",
        primary.addr, candidate.addr
    )
}

async fn report(cp: &ControlPlane) -> Value {
    let run = sluice(&["--server", &cp.url, "--fleet", "edge", "shadow", "report", "-o", "json"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str::<Value>(&run.stdout).unwrap()["routes"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_candidate_is_diffed_and_guarded_without_clients_noticing() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    let dp = DataPlane::start(&cp.url, "edge", "dp-1", &keys.trusted_file, dir.join("dp-1")).await;
    let primary = Upstream::json("users-v1", PRIMARY).await;
    let candidate = Upstream::json("users-v2", CANDIDATE).await;
    candidate.set_fault(Fault::Slow(Duration::from_millis(5)));
    let run = apply(&cp, "edge", &config(&primary, &candidate), &dir, "mirror users to v2").await;
    assert_eq!(run.code, 0, "{run:?}");
    dp.wait_for_version(1).await;

    // Clients get the primary's answer, every time, at the primary's pace.
    for _ in 0..200 {
        let started = Instant::now();
        let body = try_get(&format!("{}/users/7", dp.url())).await.unwrap();
        assert!(body.contains(r#""plan": "pro""#), "{body}");
        assert!(started.elapsed() < scaled(Duration::from_secs(1)));
    }

    // The report (through the control plane) names exactly the changed field.
    let mut users: Value;
    eventually!(WITHIN, {
        users = report(&cp).await;
        users["compared"].as_u64().unwrap_or(0) > 0 && users["compared"] == users["sent"]
    });
    let compared = users["compared"].as_u64().unwrap();
    assert!((20..=80).contains(&compared), "{compared} of 200 mirrored at 0.25");
    let fields: Vec<&str> =
        users["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["/user/plan"], "{users}");
    assert_eq!(users["fields"][0]["differed"].as_u64(), Some(compared));
    let table = sluice(&["--server", &cp.url, "--fleet", "edge", "shadow", "report"]).await;
    assert!(table.stdout.contains("/user/plan"), "{}", table.stdout);
    assert!(table.stdout.contains("100.00%"), "{}", table.stdout);
    assert!(
        !table.stdout.contains("jane.doe@example.com") && !users.to_string().contains("jane.doe@example.com")
    );
    assert!(users["samples"][0]["candidate"].as_str().unwrap().contains("enterprise"), "{users}");

    // The candidate gets slow: three slow pairs in a row and the guardrail stops mirroring, saying
    // why. Clients still never wait.
    candidate.set_fault(Fault::Slow(Duration::from_millis(400)));
    let mut tripped: Value;
    let sent_before = users["sent"].as_u64().unwrap();
    eventually!(WITHIN, {
        for _ in 0..20 {
            let started = Instant::now();
            assert!(try_get(&format!("{}/users/7", dp.url())).await.unwrap().contains("pro"));
            assert!(started.elapsed() < scaled(Duration::from_millis(300)), "a client waited for the shadow");
        }
        tripped = report(&cp).await;
        tripped["guardrail"]["state"] == "tripped"
    });
    let reason = tripped["guardrail"]["reason"].as_str().unwrap();
    assert!(reason.contains("3 bad pairs in a row; the last: the candidate took"), "{reason}");
    assert!(tripped["sent"].as_u64().unwrap() > sent_before);
    let table = sluice(&["--server", &cp.url, "--fleet", "edge", "shadow", "report"]).await;
    assert!(table.stdout.contains("tripped"), "{}", table.stdout);

    // After the 3 s cooldown it is back on by itself.
    eventually!(WITHIN, report(&cp).await["guardrail"]["state"] == "active");
    let resumed = report(&cp).await;
    assert_eq!(resumed["guardrail"]["trips"], 1);
    assert!(
        resumed["guardrail"]["reason"].as_str().unwrap().starts_with("dp-1: resumed after the cooldown"),
        "{resumed}"
    );
    dp.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_report_shows_each_variant() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    let dp = DataPlane::start(&cp.url, "edge", "dp-1", &keys.trusted_file, dir.join("dp-1")).await;
    let (stable, canary) = (Upstream::named("v1").await, Upstream::named("v2").await);
    let config = format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:8080'}}\n\
         pools:\n  - {{name: v1, endpoints: [{{address: '{}'}}]}}\n  - {{name: v2, endpoints: [{{address: '{}'}}]}}\n\
         routes:\n  - name: users\n    pool: v1\n    canary: {{pool: v2, weight: 25}}\n",
        stable.addr, canary.addr
    );
    assert_eq!(apply(&cp, "edge", &config, &dir, "canary 25%").await.code, 0);
    dp.wait_for_version(1).await;
    let mut answers = [0usize; 2];
    for _ in 0..400 {
        match try_get(&dp.url()).await.unwrap().as_str() {
            "v1" => answers[0] += 1,
            "v2" => answers[1] += 1,
            other => panic!("{other}"),
        }
    }
    assert!((60..=140).contains(&answers[1]), "{answers:?}");
    let mut json: Value;
    eventually!(WITHIN, {
        let run = sluice(&["--server", &cp.url, "--fleet", "edge", "canary", "report", "-o", "json"]).await;
        json = serde_json::from_str(&run.stdout).unwrap_or_default();
        let variants = json["routes"][0]["variants"].as_array().cloned().unwrap_or_default();
        variants.iter().map(|v| v["requests"].as_u64().unwrap_or(0)).sum::<u64>() == 400
    });
    let variant = |name: &str| {
        json["routes"][0]["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["variant"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(variant("canary")["requests"].as_u64(), Some(answers[1] as u64));
    assert_eq!(variant("stable")["pool"], "v1");
    let table = sluice(&["--server", &cp.url, "--fleet", "edge", "canary", "report"]).await;
    assert!(table.stdout.contains("canary") && table.stdout.contains("v2"), "{}", table.stdout);
    dp.stop().await;
}
