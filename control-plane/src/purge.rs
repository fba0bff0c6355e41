//! Fleet-wide cache purges (`sluice cache purge`). An order goes to every replica through
//! PostgreSQL's NOTIFY (this one included), each replica hands it to its sessions of the fleet,
//! and each data plane's answer comes back the same way to the replica waiting for it. No
//! purge is stored: the audit trail records that it was asked for, the answer says who did it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};

/// Orders waiting in a fleet's channel for slow sessions; older ones are dropped (and logged).
const ORDER_BACKLOG: usize = 64;

/// What goes between replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    Purge { id: String, fleet: String, route: String, path: String, prefix: String },
    Purged { id: String, node: String, removed: u64, error: String },
}

/// This replica's purges in motion.
#[derive(Default)]
pub struct Purges {
    /// Per fleet, the orders its sessions forward.
    orders: Mutex<HashMap<String, broadcast::Sender<Arc<pb::CachePurge>>>>,
    /// Purges this replica was asked for, by id: where their answers go.
    waiting: Mutex<HashMap<String, mpsc::UnboundedSender<pb::PurgeResult>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Purges {
    /// The orders for `fleet`, for one session.
    pub fn subscribe(&self, fleet: &str) -> broadcast::Receiver<Arc<pb::CachePurge>> {
        lock(&self.orders)
            .entry(fleet.to_owned())
            .or_insert_with(|| broadcast::channel(ORDER_BACKLOG).0)
            .subscribe()
    }

    /// A notice from NOTIFY: an order for our sessions, or an answer for a purge we wait on.
    pub fn receive(&self, payload: &str) {
        match serde_json::from_str::<Notice>(payload) {
            Ok(Notice::Purge { id, fleet, route, path, prefix }) => {
                if let Some(tx) = lock(&self.orders).get(&fleet) {
                    let _ = tx.send(Arc::new(pb::CachePurge { purge_id: id, route, path, prefix }));
                }
            }
            Ok(Notice::Purged { id, node, removed, error }) => {
                if let Some(tx) = lock(&self.waiting).get(&id) {
                    let _ = tx.send(pb::PurgeResult { node_id: node, removed, error });
                }
            }
            Err(e) => tracing::warn!(error = %e, "unreadable cache purge notice"),
        }
    }

    /// Waits for the answers to purge `id`: until `expected` have come or `within` has passed.
    pub fn expect(self: &Arc<Self>, id: &str) -> Waiting {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.waiting).insert(id.to_owned(), tx);
        Waiting { purges: self.clone(), id: id.to_owned(), rx }
    }
}

/// Answers to one purge, as they come; stops listening when dropped.
pub struct Waiting {
    purges: Arc<Purges>,
    id: String,
    rx: mpsc::UnboundedReceiver<pb::PurgeResult>,
}

impl Waiting {
    /// Answers until `expected` data planes have answered (once each) or `within` has passed.
    pub async fn collect(mut self, expected: usize, within: Duration) -> Vec<pb::PurgeResult> {
        let mut got: Vec<pb::PurgeResult> = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while got.len() < expected {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) => {
                    if !got.iter().any(|g| g.node_id == r.node_id) {
                        got.push(r);
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        got.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        got
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        lock(&self.purges.waiting).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn orders_reach_the_fleets_sessions_and_answers_the_waiting_purge() {
        let purges = Arc::new(Purges::default());
        let mut session = purges.subscribe("f");
        let mut other = purges.subscribe("g");
        let waiting = purges.expect("p1");
        let order = Notice::Purge {
            id: "p1".into(),
            fleet: "f".into(),
            route: "r".into(),
            path: "/a".into(),
            prefix: String::new(),
        };
        purges.receive(&serde_json::to_string(&order).unwrap());
        let got = session.try_recv().unwrap();
        assert_eq!((got.purge_id.as_str(), got.route.as_str(), got.path.as_str()), ("p1", "r", "/a"));
        assert!(other.try_recv().is_err(), "another fleet's sessions are not told");
        for node in ["b", "a", "a"] {
            let answer =
                Notice::Purged { id: "p1".into(), node: node.into(), removed: 2, error: String::new() };
            purges.receive(&serde_json::to_string(&answer).unwrap());
        }
        // An answer for a purge nobody here waits for is dropped.
        purges.receive(r#"{"kind":"purged","id":"p2","node":"z","removed":1,"error":""}"#);
        purges.receive("not json");
        let answers = waiting.collect(3, Duration::from_millis(50)).await;
        let nodes: Vec<&str> = answers.iter().map(|a| a.node_id.as_str()).collect();
        assert_eq!(nodes, ["a", "b"], "once per node, sorted");
        assert!(lock(&purges.waiting).is_empty(), "no longer waiting");
    }
}
