use super::*;

fn head(version: u64) -> Arc<Head> {
    Arc::new(Head {
        fleet: "edge".into(),
        version,
        sha256: format!("sha-{version}"),
        payload: bytes::Bytes::new(),
        signatures: Vec::new(),
        trace: None,
        traced_pushes: Default::default(),
    })
}

fn held(version: u64, base: u64, moved: &[&str], finished: bool) -> Arc<Plan> {
    let moved = moved.iter().map(|n| (*n).to_owned()).collect();
    let hold = Hold { rollout: 1, base: Some(head(base)), moved, finished };
    Arc::new(Plan { head: head(version), hold: Some(hold) })
}

fn target(hub: &FleetHub, node: &str) -> Option<u64> {
    hub.subscribe("edge").borrow().as_ref()?.target(node).map(|h| h.version)
}

#[test]
fn a_rollout_holds_the_nodes_it_has_not_moved_and_plans_only_move_forward() {
    let hub = FleetHub::default();
    hub.publish(Plan::all(head(1)));
    hub.publish(held(2, 1, &[], false));
    assert_eq!((target(&hub, "a"), target(&hub, "b")), (Some(1), Some(1)), "pending: nobody moves");
    hub.publish(held(2, 1, &["a"], false));
    assert_eq!((target(&hub, "a"), target(&hub, "b")), (Some(2), Some(1)));
    // A late announcement of an earlier moment of the same rollout changes nothing.
    hub.publish(held(2, 1, &[], false));
    assert_eq!(target(&hub, "a"), Some(2));
    // Rolled back: the moved node gets the rollback, the other stays where it was.
    hub.publish(held(3, 1, &["a"], true));
    assert_eq!((target(&hub, "a"), target(&hub, "b")), (Some(3), Some(1)));
    hub.publish(held(2, 1, &["a", "b"], false));
    assert_eq!(target(&hub, "b"), Some(1), "an older head never comes back");
    // The next plain apply reaches everyone.
    hub.publish(Plan::all(head(4)));
    assert_eq!((target(&hub, "a"), target(&hub, "b")), (Some(4), Some(4)));
}

/// The apply publishes its head with its trace; the database's announcement of the same head,
/// read without one, may come before or after, and a rollout's later holds are read without it
/// too: the pushes of that version stay traced either way.
#[test]
fn a_heads_trace_survives_announcements_of_it() {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    let traced = |version: u64| {
        let apply = SpanContext::new(
            TraceId::from(7_u128),
            SpanId::from(9_u64),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let h = head(version);
        Arc::new(Head { trace: Some(apply), ..Arc::try_unwrap(h).unwrap() })
    };
    let trace = |hub: &FleetHub| hub.current("edge").and_then(|p| p.head.trace.clone());
    let hub = FleetHub::default();
    hub.publish(Plan::all(head(1)));
    // The announcement first, then the apply's own publication of the same plan.
    hub.publish(Plan::all(head(2)));
    assert!(trace(&hub).is_none());
    hub.publish(Plan::all(traced(2)));
    assert!(trace(&hub).is_some(), "the same plan with its trace replaces the untraced one");
    hub.publish(Plan::all(head(2)));
    assert!(trace(&hub).is_some(), "and an untraced copy does not replace it");
    // A rollout: the apply publishes its pending hold, then holds read from the database grow.
    let hold = |moved: &[&str], h: Arc<Head>| {
        let moved = moved.iter().map(|n| (*n).to_owned()).collect();
        Arc::new(Plan {
            head: h,
            hold: Some(Hold { rollout: 1, base: Some(head(2)), moved, finished: false }),
        })
    };
    hub.publish(hold(&[], traced(3)));
    hub.publish(hold(&["a"], head(3)));
    assert_eq!(target(&hub, "a"), Some(3));
    assert!(trace(&hub).is_some(), "a newer hold of the same head keeps its trace");
    hub.publish(Plan::all(head(4)));
    assert!(trace(&hub).is_none(), "a new head has the trace of its own apply, if any");
}

/// Large pushes wait for room in the budget and give it back when answered; small ones never wait.
#[tokio::test]
async fn large_pushes_are_paced_by_the_byte_budget() {
    let pacer = Pacer::new(4 << 20);
    assert!(pacer.room(512 << 10).await.is_none(), "small payloads take no room");
    let first = pacer.room(3 << 20).await;
    assert!(first.is_some());
    let second = pacer.room(3 << 20);
    tokio::pin!(second);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(100), &mut second).await.is_err(),
        "a second 3 MiB push waits while the first holds its room"
    );
    drop(first);
    assert!(second.await.is_some(), "and goes once the first is answered");
    // A payload larger than the whole budget still goes, alone.
    assert!(pacer.room(64 << 20).await.is_some());
}

/// Every connected data plane holds one session task for as long as its stream lives: at 10,000
/// streams each KiB of its future is 10 MiB. A database call awaited inline (instead of boxed, or
/// handed to the recorder) makes it tens of KiB.
#[tokio::test]
async fn a_sessions_task_stays_small() {
    let dir =
        std::env::temp_dir().join(format!("sluice-session-{}-{:08x}", std::process::id(), fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("signing-key.json"),
        sluice_bundle::sign::SigningKey::generate().unwrap().to_file(),
    )
    .unwrap();
    let keyring =
        crate::keys::Keyring::load(crate::keys::KeyFiles(vec![dir.clone()]), Duration::from_secs(600));
    let pool =
        sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://postgres@127.0.0.1:1/none").unwrap();
    let store = Store::from_pool(pool, Duration::from_secs(1));
    let cp = ControlPlane::new(store, Arc::default(), Arc::new(keyring.unwrap()), 1 << 20);
    let hello = Hello {
        node_id: "n1".into(),
        fleet: "edge".into(),
        labels: BTreeMap::new(),
        build: String::new(),
        active_version: 0,
        active_sha256: String::new(),
        signature_key_ids: Vec::new(),
    };
    let (push, _pushes) = push_queue();
    let task = session(Arc::new(cp), hello, Box::pin(tokio_stream::empty()), push, watch::channel(false).1);
    let size = std::mem::size_of_val(&task);
    assert!(size <= 4096, "a session's future is {size} bytes");
    std::fs::remove_dir_all(dir).unwrap();
}
