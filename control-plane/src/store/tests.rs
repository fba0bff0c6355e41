//! Against a real PostgreSQL: each test gets its own database from `#[sqlx::test]`.

use std::sync::Arc;

use super::*;

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
        s.append_version("edge", None, DuringRollout::Refuse, |_, _| Ok(Some(new_version(tag))), audit)
            .await
            .unwrap();
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
    s.append_version("edge", Some(0), DuringRollout::Refuse, |_, _| Ok(Some(new_version("a"))), audit)
        .await
        .unwrap();
    let err = s
        .append_version("edge", Some(0), DuringRollout::Refuse, |_, _| Ok(Some(new_version("b"))), audit)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { expected: 0, actual: 1 }), "{err}");
    s.append_version("edge", Some(1), DuringRollout::Refuse, |_, _| Ok(Some(new_version("b"))), audit)
        .await
        .unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn of_fifty_racing_applies_exactly_one_wins(pool: PgPool) {
    let s = Arc::new(store(pool));
    s.append_version("edge", None, DuringRollout::Refuse, |_, _| Ok(Some(new_version("base"))), audit)
        .await
        .unwrap();
    let racers: Vec<_> = (0..50)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.append_version(
                    "edge",
                    Some(1),
                    DuringRollout::Refuse,
                    move |_, _| Ok(Some(new_version(&format!("r{i}")))),
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
    s.append_version("edge", None, DuringRollout::Refuse, |_, _| Ok(Some(new_version("a"))), audit)
        .await
        .unwrap();
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
        s.append_version("edge", None, DuringRollout::Refuse, |_, _| Ok(Some(new_version(tag))), audit)
            .await
            .unwrap();
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
    s.append_version("edge", None, DuringRollout::Refuse, |_, _| Ok(Some(new_version("a"))), audit)
        .await
        .unwrap();
    let kept = s.append_version("edge", None, DuringRollout::Refuse, |_, _| Ok(None), audit).await.unwrap();
    assert!(!kept.created);
    assert_eq!(kept.head.version, 1);
    let (rows, _) = s.audit(&AuditFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(rows.len(), 1, "nothing audited for a no-op");
}

#[sqlx::test(migrations = "../migrations")]
async fn data_plane_state_is_recorded(pool: PgPool) {
    let s = store(pool);
    s.append_version("edge", None, DuringRollout::Refuse, |_, _| Ok(Some(new_version("a"))), audit)
        .await
        .unwrap();
    let labels = BTreeMap::from([("zone".to_owned(), "a".to_owned())]);
    s.record_hello("edge", "n1", &labels, "0.1.0", 0).await.unwrap();
    s.record_ack("edge", "n1", 1).await.unwrap();
    s.record_nack("edge", "n1", 2, "invalid config", &[("routes[0].pool".into(), "unknown pool".into())])
        .await
        .unwrap();
    let rows = s.data_planes(Some("edge")).await.unwrap();
    let n1 = &rows[0];
    assert_eq!((n1.active_version, n1.head_version, n1.last_nack_version), (1, 1, 2));
    assert_eq!(n1.labels, labels);
    assert_eq!(n1.last_nack_details, [("routes[0].pool".to_owned(), "unknown pool".to_owned())]);
    assert!(n1.connected);
    s.record_seen("edge", "n1", false).await.unwrap();
    assert!(!s.data_planes(None).await.unwrap()[0].connected);
    let (events, _) =
        s.audit(&AuditFilter { action: Some("nack".into()), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(events[0].actor, "data-plane:n1");
}

#[sqlx::test(migrations = "../migrations")]
async fn a_nodes_latest_report_replaces_the_one_before_unless_it_is_older(pool: PgPool) {
    let s = store(pool);
    s.record_hello("edge", "n1", &BTreeMap::new(), "0.1.0", 0).await.unwrap();
    s.record_seen("edge", "n1", false).await.unwrap();
    s.record_report(
        "edge",
        "n1",
        ReportFacts { at: 200, active_version: 3, ..Default::default() },
        b"second",
    )
    .await
    .unwrap();
    s.record_report(
        "edge",
        "n1",
        ReportFacts { at: 100, active_version: 2, ..Default::default() },
        b"first, delivered late",
    )
    .await
    .unwrap();
    s.record_report(
        "other",
        "n1",
        ReportFacts { at: 300, active_version: 1, ..Default::default() },
        b"other fleet",
    )
    .await
    .unwrap();
    let rows = s.reports("edge").await.unwrap();
    assert_eq!(rows.len(), 1);
    let n1 = &rows[0];
    assert_eq!((n1.at, n1.active_version, n1.report.as_slice()), (200, 3, b"second".as_slice()));
    assert!(n1.connected, "a report means the node is there");
    s.record_report(
        "edge",
        "n1",
        ReportFacts { at: 200, active_version: 4, ..Default::default() },
        b"same second",
    )
    .await
    .unwrap();
    assert_eq!(s.reports("edge").await.unwrap()[0].report, b"same second");
    assert!(!s.reports("other").await.unwrap()[0].connected, "no hello: not known as connected");
    assert!(s.reports("none").await.unwrap().is_empty());
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
