//! Against a real PostgreSQL: each test gets its own database from `#[sqlx::test]`.

use std::time::Duration;

use sqlx::PgPool;

use super::*;
use crate::store::AuditFilter;

fn store(pool: PgPool) -> Store {
    Store::from_pool(pool, Duration::from_secs(5))
}

fn strategy() -> serde_json::Value {
    serde_json::json!({"steps": [{"nodes": 1, "bake": "60s"}, {"percent": 100}]})
}

fn audit(action: &str, detail: &str) -> AuditEntry {
    AuditEntry {
        actor: "control-plane".into(),
        action: action.into(),
        fleet: "edge".into(),
        version: Some(2),
        detail: serde_json::json!({"reason": detail}),
    }
}

fn step_to(id: u64, from: &'static str, to: &'static str, step: u32, reason: &str) -> Transition {
    Transition {
        id,
        from_state: from,
        to_state: to,
        step,
        restart_step: true,
        reason: reason.into(),
        rollback_version: None,
        clear_request: false,
        step_baseline: None,
        expect_request: String::new(),
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_fleet_has_at_most_one_unfinished_rollout(pool: PgPool) {
    let s = store(pool);
    let r = s.start_rollout("edge", 2, 1, &strategy(), "alice").await.unwrap().unwrap();
    assert_eq!((r.state.as_str(), r.step, r.version, r.from_version), ("pending", 0, 2, 1));
    assert_eq!(r.strategy, strategy());
    assert_eq!(s.start_rollout("edge", 3, 2, &strategy(), "bob").await.unwrap(), None, "one is unfinished");
    assert!(s.start_rollout("other", 5, 4, &strategy(), "bob").await.unwrap().is_some(), "another fleet");
    assert_eq!(s.unfinished_rollouts().await.unwrap().len(), 2);

    // Once it has finished, the next one may start; the latest is the newest.
    let leader = s.try_lead("cp-1").await.unwrap().unwrap();
    let done = step_to(r.id, "pending", "succeeded", 1, "done");
    assert!(s.transition_rollout(leader.term, &done, &audit("rollout", "done")).await.unwrap());
    let next = s.start_rollout("edge", 3, 2, &strategy(), "bob").await.unwrap().unwrap();
    assert_eq!(s.latest_rollout("edge").await.unwrap().unwrap().id, next.id);
    let (events, problem) =
        s.audit(&AuditFilter { fleet: Some("edge".into()), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(problem, None, "the audit chain holds");
    assert_eq!(events.iter().filter(|e| e.action == "rollout").count(), 3, "two starts and one change");
}

#[sqlx::test(migrations = "../migrations")]
async fn changes_are_fenced_by_the_expected_state_and_the_leaders_term(pool: PgPool) {
    let s = store(pool);
    let r = s.start_rollout("edge", 2, 1, &strategy(), "alice").await.unwrap().unwrap();
    let mut first = s.try_lead("cp-1").await.unwrap().unwrap();
    assert!(first.still_leads(Duration::from_secs(1)).await);
    assert!(s.try_lead("cp-2").await.unwrap().is_none(), "one leader at a time");
    // The server probes the leader's session, so a vanished leader's lock goes in seconds.
    for (setting, value) in
        [("tcp_keepalives_idle", "10"), ("tcp_keepalives_interval", "5"), ("tcp_keepalives_count", "3")]
    {
        let shown: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(&mut first.conn)
            .await
            .unwrap();
        assert_eq!(shown, value, "{setting}");
    }

    let go = step_to(r.id, "pending", "progressing", 0, "started");
    assert!(s.transition_rollout(first.term, &go, &audit("rollout", "started")).await.unwrap());
    // The same change again finds the rollout no longer pending: refused, nothing audited.
    assert!(!s.transition_rollout(first.term, &go, &audit("rollout", "again")).await.unwrap());
    let stale_term = first.term;

    // The leader's session ends; another control plane takes over with a higher term, and the
    // old term can no longer write.
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(l) = s.try_lead("cp-2").await.unwrap() {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(second.term > stale_term);
    let next = step_to(r.id, "progressing", "progressing", 1, "step 1/2 passed");
    assert!(!s.transition_rollout(stale_term, &next, &audit("rollout", "stale")).await.unwrap());
    assert!(!s.cover_nodes(stale_term, r.id, 1, &["dp-9"]).await.unwrap());
    assert!(s.transition_rollout(second.term, &next, &audit("rollout", "step")).await.unwrap());
    let now = s.rollout(r.id).await.unwrap().unwrap();
    assert_eq!(
        (now.state.as_str(), now.step, now.term, now.reason.as_str()),
        ("progressing", 1, second.term, "step 1/2 passed")
    );
    let (events, _) =
        s.audit(&AuditFilter { fleet: Some("edge".into()), limit: 10, ..Default::default() }).await.unwrap();
    let details: Vec<&str> = events.iter().map(|e| e.detail.as_str()).collect();
    assert!(details.iter().all(|d| !d.contains("again") && !d.contains("stale")), "{details:?}");
}

#[sqlx::test(migrations = "../migrations")]
async fn moved_nodes_are_remembered_once(pool: PgPool) {
    let s = store(pool);
    let r = s.start_rollout("edge", 2, 1, &strategy(), "alice").await.unwrap().unwrap();
    let leader = s.try_lead("cp-1").await.unwrap().unwrap();
    assert!(s.cover_nodes(leader.term, r.id, 0, &["dp-2"]).await.unwrap());
    assert!(s.cover_nodes(leader.term, r.id, 1, &["dp-1", "dp-2"]).await.unwrap());
    assert_eq!(
        s.covered_nodes(r.id).await.unwrap(),
        [("dp-1".to_owned(), 1), ("dp-2".to_owned(), 0)],
        "a node keeps the step that first moved it"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_pending_request_is_not_overwritten_except_by_abort(pool: PgPool) {
    let s = store(pool);
    let r = s.start_rollout("edge", 2, 1, &strategy(), "alice").await.unwrap().unwrap();
    let paused = s.request_rollout("edge", "pause", "bob").await.unwrap().unwrap();
    assert_eq!((paused.requested.as_str(), paused.requested_by.as_str()), ("pause", "bob"));
    let promote = s.request_rollout("edge", "promote", "carol").await.unwrap().unwrap();
    assert_eq!(promote.requested, "pause", "bob's request stands");
    let abort = s.request_rollout("edge", "abort", "carol").await.unwrap().unwrap();
    assert_eq!((abort.requested.as_str(), abort.requested_by.as_str()), ("abort", "carol"));

    // A change made without having seen the request is refused, so it is never cleared unseen.
    let leader = s.try_lead("cp-1").await.unwrap().unwrap();
    let blind = step_to(r.id, "pending", "progressing", 0, "started");
    assert!(!s.transition_rollout(leader.term, &blind, &audit("rollout", "blind")).await.unwrap());
    let seen = Transition { expect_request: "abort".into(), clear_request: true, ..blind };
    assert!(s.transition_rollout(leader.term, &seen, &audit("rollout", "seen")).await.unwrap());
    assert_eq!(s.rollout(r.id).await.unwrap().unwrap().requested, "");
    assert!(s.request_rollout("other", "pause", "bob").await.unwrap().is_none(), "no rollout there");
}
