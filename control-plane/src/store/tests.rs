//! Against a real PostgreSQL: each test gets its own database from `#[sqlx::test]`.

use std::sync::Arc;

use super::*;
use crate::recorder::{Nack, Recorder};

fn store(pool: PgPool) -> Store {
    Store::from_pool(pool, Duration::from_secs(5))
}

fn new_version(tag: &str) -> NewVersion {
    NewVersion {
        payload: format!("payload {tag}").into_bytes(),
        signatures: vec![Signature { key_id: "k1".into(), signature: vec![1, 2, 3] }],
        sha256: format!("sha-{tag}"),
        author: "alice".into(),
        message: format!("change {tag}"),
        origin: "apply".into(),
        key_id: "k1".into(),
    }
}

/// Appends a plain version with content `tag` to `edge`.
async fn append(s: &Store, tag: &str) -> Appended {
    s.append_version(
        "edge",
        Numbering::default(),
        DuringRollout::Refuse,
        |_, _, _| Ok(Some(new_version(tag))),
        audit,
    )
    .await
    .unwrap()
}

fn audit(row: &VersionRow) -> AuditEntry {
    AuditEntry {
        actor: row.author.clone(),
        action: "apply".into(),
        fleet: row.fleet.clone(),
        version: Some(row.version),
        detail: serde_json::json!({"sha256": row.sha256}),
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn versions_go_up_by_one_and_keep_their_bytes(pool: PgPool) {
    let s = store(pool);
    assert!(s.head("edge").await.unwrap().is_none());
    for tag in ["a", "b", "c"] {
        append(&s, tag).await;
    }
    let head = s.head("edge").await.unwrap().unwrap();
    assert_eq!((head.version, head.parent_version), (3, 2));
    assert_eq!(head.payload, &b"payload c"[..]);
    assert_eq!(head.signatures, vec![Signature { key_id: "k1".into(), signature: vec![1, 2, 3] }]);
    assert_eq!(s.version("edge", 1).await.unwrap().unwrap().sha256, "sha-a");
    let history: Vec<u64> = s.history("edge", 10).await.unwrap().iter().map(|v| v.version).collect();
    assert_eq!(history, [3, 2, 1]);
    assert!(s.head("other").await.unwrap().is_none(), "fleets are separate");
}

#[sqlx::test(migrations = "../migrations")]
async fn expect_version_guards_the_head(pool: PgPool) {
    let s = store(pool);
    s.append_version(
        "edge",
        Numbering { expect_version: Some(0), min_version: 0, auto_above: false },
        DuringRollout::Refuse,
        |_, _, _| Ok(Some(new_version("a"))),
        audit,
    )
    .await
    .unwrap();
    let err = s
        .append_version(
            "edge",
            Numbering { expect_version: Some(0), min_version: 0, auto_above: false },
            DuringRollout::Refuse,
            |_, _, _| Ok(Some(new_version("b"))),
            audit,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { expected: 0, actual: 1 }), "{err}");
    s.append_version(
        "edge",
        Numbering { expect_version: Some(1), min_version: 0, auto_above: false },
        DuringRollout::Refuse,
        |_, _, _| Ok(Some(new_version("b"))),
        audit,
    )
    .await
    .unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn of_fifty_racing_applies_exactly_one_wins(pool: PgPool) {
    let s = Arc::new(store(pool));
    append(&s, "base").await;
    let racers: Vec<_> = (0..50)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.append_version(
                    "edge",
                    Numbering { expect_version: Some(1), min_version: 0, auto_above: false },
                    DuringRollout::Refuse,
                    move |_, _, _| Ok(Some(new_version(&format!("r{i}")))),
                    audit,
                )
                .await
            })
        })
        .collect();
    let (mut won, mut conflicts) = (0, 0);
    for r in racers {
        match r.await.unwrap() {
            Ok(a) => {
                assert!(a.created);
                won += 1;
            }
            Err(Error::Conflict { expected: 1, actual: 2 }) => conflicts += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((won, conflicts), (1, 49));
    assert_eq!(s.head("edge").await.unwrap().unwrap().version, 2);
}

#[sqlx::test(migrations = "../migrations")]
async fn versions_and_audit_rows_cannot_be_changed(pool: PgPool) {
    let s = store(pool.clone());
    append(&s, "a").await;
    for sql in [
        "UPDATE versions SET author = 'mallory'",
        "DELETE FROM versions",
        "UPDATE audit_events SET actor = 'mallory'",
        "DELETE FROM audit_events",
    ] {
        let err = sqlx::query(sql).execute(&pool).await.unwrap_err();
        assert!(err.to_string().contains("immutable"), "{sql}: {err}");
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_tampered_audit_trail_is_detected(pool: PgPool) {
    let s = store(pool.clone());
    for tag in ["a", "b", "c"] {
        append(&s, tag).await;
    }
    let (rows, problem) = s.audit(&AuditFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(problem, None);
    assert_eq!(rows[0].prev_hash, rows[1].hash, "newest first, each following the one before");
    // Someone with superuser rights edits history behind the triggers' back.
    sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_events SET actor = 'mallory' WHERE id = (SELECT min(id) + 1 FROM audit_events)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (_, problem) = s.audit(&AuditFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert!(problem.unwrap().contains("was altered"));
}

#[sqlx::test(migrations = "../migrations")]
async fn unchanged_content_makes_no_version(pool: PgPool) {
    let s = store(pool);
    append(&s, "a").await;
    let kept = s
        .append_version("edge", Numbering::default(), DuringRollout::Refuse, |_, _, _| Ok(None), audit)
        .await
        .unwrap();
    assert!(!kept.created);
    assert_eq!(kept.head.version, 1);
    let (rows, _) = s.audit(&AuditFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(rows.len(), 1, "nothing audited for a no-op");
}

#[sqlx::test(migrations = "../migrations")]
async fn data_plane_state_is_recorded(pool: PgPool) {
    let s = store(pool);
    append(&s, "a").await;
    let labels = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
    let r = Recorder::default();
    r.hello("edge", "n1", HelloFacts { labels: labels.clone(), build: "0.1.0".into(), active_version: 0 });
    r.ack("edge", "n1", 1);
    let details = vec![("routes[0].pool".to_owned(), "unknown pool".to_owned())];
    r.nack("edge", "n1", Nack { version: 2, reason: "invalid config".into(), details: details.clone() });
    assert!(r.flush(&s).await);
    let rows = s.data_planes(Some("edge")).await.unwrap();
    let n1 = &rows[0];
    assert_eq!((n1.active_version, n1.head_version, n1.last_ack_version, n1.last_nack_version), (1, 1, 1, 2));
    assert_eq!((&n1.labels, n1.build.as_str()), (&labels, "0.1.0"));
    assert_eq!(n1.last_nack_details, details);
    assert!(n1.connected);
    r.disconnected("edge", "n1");
    assert!(r.flush(&s).await);
    let n1 = &s.data_planes(None).await.unwrap()[0];
    assert!(!n1.connected);
    assert_eq!((n1.active_version, n1.build.as_str()), (1, "0.1.0"), "a disconnect changes nothing else");
    let (events, _) =
        s.audit(&AuditFilter { action: Some("nack".into()), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(events[0].actor, "data-plane:n1");
}

fn report(r: &Recorder, fleet: &str, at: i64, active_version: u64, body: &[u8]) {
    r.report(fleet, "n1", ReportFacts { at, active_version, ..Default::default() }, body.to_vec());
}

#[sqlx::test(migrations = "../migrations")]
async fn a_nodes_latest_report_replaces_the_one_before_unless_it_is_older(pool: PgPool) {
    let s = store(pool);
    let r = Recorder::default();
    r.hello("edge", "n1", HelloFacts::default());
    r.disconnected("edge", "n1");
    assert!(r.flush(&s).await);
    // Each its own batch: the database keeps the newest, whatever order they arrive in.
    for (fleet, at, version, body) in [
        ("edge", 200, 3, b"second".as_slice()),
        ("edge", 100, 2, b"first, delivered late"),
        ("other", 300, 1, b"other fleet"),
    ] {
        report(&r, fleet, at, version, body);
        assert!(r.flush(&s).await);
    }
    let rows = s.reports("edge").await.unwrap();
    assert_eq!(rows.len(), 1);
    let n1 = &rows[0];
    assert_eq!((n1.at, n1.active_version, n1.report.as_slice()), (200, 3, b"second".as_slice()));
    assert!(n1.connected, "a report means the node is there");
    report(&r, "edge", 200, 4, b"same second");
    assert!(r.flush(&s).await);
    assert_eq!(s.reports("edge").await.unwrap()[0].report, b"same second");
    assert!(!s.reports("other").await.unwrap()[0].connected, "no hello: not known as connected");
    assert!(s.reports("none").await.unwrap().is_empty());
    // In one batch the recorder keeps the newer too.
    report(&r, "edge", 400, 6, b"newest");
    report(&r, "edge", 300, 5, b"older, arrived after");
    assert!(r.flush(&s).await);
    assert_eq!(s.reports("edge").await.unwrap()[0].report, b"newest");
}

#[tokio::test]
async fn an_unreachable_database_fails_fast_and_clearly() {
    let started = std::time::Instant::now();
    let err =
        Store::connect("postgres://postgres@127.0.0.1:1/none", Duration::from_secs(2)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("cannot connect to PostgreSQL"), "{err}");
}

#[sqlx::test(migrations = "../migrations")]
async fn departed_data_planes_and_old_reports_are_pruned_never_the_audit_trail(pool: PgPool) {
    let s = store(pool.clone());
    append(&s, "a").await;
    let r = Recorder::default();
    for node in ["gone", "here"] {
        r.hello("edge", node, HelloFacts::default());
        r.report(
            "edge",
            node,
            ReportFacts { at: 100, active_version: 1, ..Default::default() },
            b"r".to_vec(),
        );
    }
    r.nack("edge", "gone", Nack { version: 1, reason: "refused".into(), details: Vec::new() });
    r.disconnected("edge", "gone");
    assert!(r.flush(&s).await);
    let week = Duration::from_secs(7 * 86_400);
    assert_eq!(s.prune_departed(week).await.unwrap(), (0, 0), "nobody is a week old");
    for q in [
        "UPDATE data_planes SET last_seen = now() - interval '8 days' WHERE node_id = 'gone'",
        "UPDATE reports SET received_at = now() - interval '8 days' WHERE node_id = 'gone'",
    ] {
        sqlx::query(q).execute(&pool).await.unwrap();
    }
    assert_eq!(s.prune_departed(week).await.unwrap(), (1, 1));
    let nodes: Vec<String> = s.data_planes(None).await.unwrap().into_iter().map(|d| d.node_id).collect();
    assert_eq!(nodes, ["here"]);
    let reports: Vec<String> = s.reports("edge").await.unwrap().into_iter().map(|d| d.node_id).collect();
    assert_eq!(reports, ["here"]);
    let (events, problem) = s.audit(&AuditFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert!(problem.is_none(), "{problem:?}");
    let actions: Vec<(&str, &str)> = events.iter().map(|e| (e.actor.as_str(), e.action.as_str())).collect();
    assert!(
        actions.contains(&("data-plane:gone", "nack")),
        "the departed node's NACK stays audited: {actions:?}"
    );
    assert_eq!(s.prune_departed(week).await.unwrap(), (0, 0));
}

#[sqlx::test(migrations = "../migrations")]
async fn versions_are_numbered_above_what_connected_data_planes_serve(pool: PgPool) {
    let s = store(pool);
    let append = async |numbering: Numbering, during: DuringRollout<'_>| {
        s.append_version("edge", numbering, during, |_, _, v| Ok(Some(new_version(&format!("v{v}")))), audit)
            .await
    };
    let refused = |r: Result<Appended>| match r {
        Err(Error::FailedPrecondition(why)) => why,
        other => panic!("not refused: {other:?}"),
    };
    append(Numbering::default(), DuringRollout::Refuse).await.unwrap();
    // A restored database: n1 serves version 5, the head is 1.
    let r = Recorder::default();
    r.hello("edge", "n1", HelloFacts { active_version: 5, ..Default::default() });
    assert!(r.flush(&s).await);
    let why = refused(append(Numbering::default(), DuringRollout::Refuse).await);
    assert!(
        why.contains("serve version 5, above the fleet's head 1") && why.contains("--min-version 6"),
        "{why}"
    );
    let above = |min_version| Numbering { min_version, ..Default::default() };
    let why = refused(append(above(7), DuringRollout::Refuse).await);
    assert!(why.contains("--min-version 7 is more than one above"), "{why}");
    let strategy = serde_json::json!({"steps": [{"nodes": 1}]});
    let why = refused(append(above(6), DuringRollout::Start { strategy: &strategy, required: true }).await);
    assert!(why.contains("a rollout would start from the restored head"), "{why}");
    assert_eq!(s.head("edge").await.unwrap().unwrap().version, 1, "nothing stored while refused");
    assert_eq!(append(above(6), DuringRollout::Refuse).await.unwrap().head.version, 6);

    // The rollout leader's own rollback is never held up by a claim: it numbers above it.
    r.hello("edge", "n1", HelloFacts { active_version: 9, ..Default::default() });
    assert!(r.flush(&s).await);
    let leader = Numbering { expect_version: Some(6), auto_above: true, ..Default::default() };
    assert_eq!(append(leader, DuringRollout::Allow).await.unwrap().head.version, 10);
    // A data plane that is gone (a revoked certificate, say) holds nothing up.
    r.hello("edge", "n2", HelloFacts { active_version: 50, ..Default::default() });
    r.disconnected("edge", "n2");
    assert!(r.flush(&s).await);
    assert_eq!(append(Numbering::default(), DuringRollout::Refuse).await.unwrap().head.version, 11);
}
