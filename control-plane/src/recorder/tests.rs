//! Against a real PostgreSQL (`#[sqlx::test]`), and one that does not answer.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::*;

fn store(pool: PgPool) -> Store {
    Store::from_pool(pool, Duration::from_secs(5))
}

fn hello(version: u64) -> HelloFacts {
    HelloFacts {
        labels: BTreeMap::from([("zone".into(), "a".into())]),
        build: "b1".into(),
        active_version: version,
    }
}

fn states(rows: &[crate::store::DataPlaneRow]) -> Vec<(String, u64, u64, bool)> {
    rows.iter().map(|r| (r.node_id.clone(), r.active_version, r.last_ack_version, r.connected)).collect()
}

#[sqlx::test(migrations = "../migrations")]
async fn thousands_of_nodes_land_in_a_few_batches_with_their_latest_facts(pool: PgPool) {
    let s = store(pool);
    let r = Recorder::default();
    let n = 2 * BATCH + 17;
    for i in 0..n {
        r.hello("edge", &format!("n{i:05}"), hello(1));
    }
    // Later facts of the same nodes merge into the one pending entry.
    for i in 0..n {
        let node = format!("n{i:05}");
        match i % 3 {
            0 => r.ack("edge", &node, 2),
            1 => r.disconnected("edge", &node),
            _ => r.report(
                "edge",
                &node,
                ReportFacts { at: 7, active_version: 1, ..Default::default() },
                vec![1],
            ),
        }
    }
    assert_eq!(r.pending(), n);
    assert!(r.flush(&s).await);
    assert_eq!(r.pending(), 0);
    let rows = s.data_planes(Some("edge")).await.unwrap();
    assert_eq!(rows.len(), n);
    let expected: Vec<_> = (0..n)
        .map(|i| match i % 3 {
            0 => (format!("n{i:05}"), 2, 2, true),
            1 => (format!("n{i:05}"), 1, 0, false),
            _ => (format!("n{i:05}"), 1, 0, true),
        })
        .collect();
    let mut got = states(&rows);
    got.sort();
    assert_eq!(got, expected);
    assert_eq!(s.reports("edge").await.unwrap().len(), n / 3);
    assert!(rows.iter().all(|r| r.build == "b1" && r.labels["zone"] == "a"));
}

#[sqlx::test(migrations = "../migrations")]
async fn an_ack_for_a_node_the_database_does_not_know_is_no_row(pool: PgPool) {
    let s = store(pool);
    let r = Recorder::default();
    r.ack("edge", "ghost", 3);
    r.disconnected("edge", "ghost");
    assert!(r.flush(&s).await);
    assert!(s.data_planes(None).await.unwrap().is_empty(), "only a hello makes a data plane's row");
}

/// A pool to a port nothing listens on: every write fails at once.
fn unreachable() -> Store {
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    Store::from_pool(pool, Duration::from_secs(1))
}

#[sqlx::test(migrations = "../migrations")]
async fn what_a_failed_write_held_is_written_later_under_newer_facts(pool: PgPool) {
    let (down, up) = (unreachable(), store(pool));
    let r = Recorder::default();
    r.hello("edge", "n1", hello(1));
    r.ack("edge", "n1", 2);
    r.nack("edge", "n1", Nack { version: 3, reason: "refused".into(), details: vec![] });
    r.report(
        "edge",
        "n1",
        ReportFacts { at: 20, active_version: 2, ..Default::default() },
        b"newer".to_vec(),
    );
    assert!(!r.flush(&down).await);
    assert_eq!((r.pending(), r.failures()), (1, 1));
    // While the database is away: a late older report, and a disconnect.
    r.report(
        "edge",
        "n1",
        ReportFacts { at: 10, active_version: 1, ..Default::default() },
        b"older".to_vec(),
    );
    r.disconnected("edge", "n1");
    assert!(r.flush(&up).await);
    let rows = up.data_planes(Some("edge")).await.unwrap();
    assert_eq!(states(&rows), [("n1".to_owned(), 2, 2, false)]);
    assert_eq!(rows[0].last_nack_version, 3);
    assert_eq!(up.reports("edge").await.unwrap()[0].report, b"newer");
}

#[tokio::test]
async fn nacks_waiting_for_an_absent_database_are_capped_per_node() {
    let down = unreachable();
    let r = Recorder::default();
    for round in 0..3u64 {
        for v in 0..MAX_NACKS as u64 {
            r.nack("edge", "n1", Nack { version: round * 100 + v, reason: "x".into(), details: vec![] });
        }
        assert!(!r.flush(&down).await);
    }
    assert_eq!(r.dropped_nacks(), 2 * MAX_NACKS as u64, "each round's NACKs beyond the cap");
    let kept: Vec<u64> = lock(&r.pending).values().flat_map(|e| e.nacks.iter().map(|n| n.version)).collect();
    assert_eq!(kept, (0..MAX_NACKS as u64).collect::<Vec<_>>(), "the oldest are kept, in order");
}
