//! What data planes say (hellos, ACKs, NACKs, reports, streams ending), merged per node in
//! memory and written to PostgreSQL in batches by one task. A session never waits for the
//! database: with 10,000 streams, one write each would need 10,000 round trips (and more pool
//! connections than a database has) for what one statement per table does. Pending facts are
//! bounded by the nodes connected: a node's newer fact replaces its older one.
//!
//! NACKs go through here too, so each lands after the hello that made its node's row, and each
//! gets its own audit event.

use std::collections::HashMap;
use std::mem;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::store::{HelloFacts, NodeFacts, NodeKey, ReportFacts, Store};

/// Nodes per transaction: statements stay small enough to never near the statement timeout.
const BATCH: usize = 1_000;
/// NACKs kept per node while the database is away; a node NACKs once per push.
const MAX_NACKS: usize = 8;
/// After a failed write, the next try.
const RETRY: Duration = Duration::from_secs(1);

/// Facts waiting to be written, and the task that writes them.
#[derive(Default)]
pub struct Recorder {
    pending: Mutex<HashMap<NodeKey, Entry>>,
    wake: Notify,
    failures: AtomicU64,
    dropped_nacks: AtomicU64,
}

/// One node's pending facts.
#[derive(Debug, Default)]
struct Entry {
    facts: NodeFacts,
    nacks: Vec<Nack>,
}

/// A NACK to record with its audit event.
#[derive(Debug, Clone)]
pub struct Nack {
    pub version: u64,
    pub reason: String,
    pub details: Vec<(String, String)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Recorder ===

impl Recorder {
    pub fn hello(&self, fleet: &str, node: &str, hello: HelloFacts) {
        self.update(fleet, node, |e| {
            e.facts.active_version = Some(hello.active_version);
            e.facts.connected = Some(true);
            e.facts.hello = Some(hello);
        });
    }

    pub fn ack(&self, fleet: &str, node: &str, version: u64) {
        self.update(fleet, node, |e| {
            e.facts.active_version = Some(version);
            e.facts.last_ack_version = Some(version);
        });
    }

    pub fn nack(&self, fleet: &str, node: &str, nack: Nack) {
        let dropped = &self.dropped_nacks;
        self.update(fleet, node, |e| {
            if e.nacks.len() < MAX_NACKS {
                e.nacks.push(nack);
            } else {
                dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(fleet, node, version = nack.version, "NACK not recorded: {MAX_NACKS} of this data plane's NACKs are already waiting for the database");
            }
        });
    }

    /// Keeps the newer report (by the node's `at`; the later one on a tie).
    pub fn report(&self, fleet: &str, node: &str, facts: ReportFacts, encoded: Vec<u8>) {
        self.update(fleet, node, |e| {
            e.facts.connected = Some(true);
            if e.facts.report.as_ref().is_none_or(|(r, _)| r.at <= facts.at) {
                e.facts.report = Some((facts, encoded));
            }
        });
    }

    pub fn disconnected(&self, fleet: &str, node: &str) {
        self.update(fleet, node, |e| e.facts.connected = Some(false));
    }

    /// Nodes with facts not written yet.
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Batches that failed to write (and were kept for the next try).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// NACKs not recorded because too many of the node's were waiting.
    pub fn dropped_nacks(&self) -> u64 {
        self.dropped_nacks.load(Ordering::Relaxed)
    }

    fn update(&self, fleet: &str, node: &str, f: impl FnOnce(&mut Entry)) {
        let key = NodeKey { fleet: fleet.to_owned(), node_id: node.to_owned() };
        f(lock(&self.pending).entry(key).or_default());
        self.wake.notify_one();
    }

    /// Writes whatever is pending whenever something is, until `stop`. A write that fails keeps
    /// its facts (under any newer ones) and is tried again after [`RETRY`].
    pub async fn run(&self, store: Store, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
            if !self.flush(&store).await {
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => self.wake.notify_one(),
                    _ = stop.changed() => return,
                }
            }
        }
    }

    /// Writes everything pending now; false if the database failed (what was not written is
    /// pending again).
    pub async fn flush(&self, store: &Store) -> bool {
        let mut batch: Vec<(NodeKey, Entry)> = mem::take(&mut *lock(&self.pending)).into_iter().collect();
        while !batch.is_empty() {
            let rest = batch.split_off(batch.len().min(BATCH));
            let facts: Vec<(NodeKey, NodeFacts)> =
                batch.iter_mut().map(|(k, e)| (k.clone(), mem::take(&mut e.facts))).collect();
            if let Err(e) = store.record_facts(&facts).await {
                for ((_, e), (_, f)) in batch.iter_mut().zip(facts) {
                    e.facts = f;
                }
                return self.failed(batch.into_iter().chain(rest), &e);
            }
            for i in 0..batch.len() {
                let (key, entry) = &mut batch[i];
                while let Some(nack) = entry.nacks.first() {
                    let result = store
                        .record_nack(&key.fleet, &key.node_id, nack.version, &nack.reason, &nack.details)
                        .await;
                    if let Err(e) = result {
                        return self.failed(batch.drain(i..).chain(rest), &e);
                    }
                    entry.nacks.remove(0);
                }
            }
            batch = rest;
        }
        true
    }

    /// Puts `unwritten` back under whatever arrived since.
    fn failed(&self, unwritten: impl Iterator<Item = (NodeKey, Entry)>, error: &crate::error::Error) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut pending = lock(&self.pending);
        for (key, older) in unwritten {
            let mut entry = match pending.remove(&key) {
                Some(newer) => merge(older, newer),
                None => older,
            };
            let over = entry.nacks.len().saturating_sub(MAX_NACKS);
            if over > 0 {
                entry.nacks.truncate(MAX_NACKS);
                self.dropped_nacks.fetch_add(over as u64, Ordering::Relaxed);
                tracing::warn!(
                    fleet = key.fleet,
                    node = key.node_id,
                    over,
                    "NACKs not recorded: too many of this data plane's were waiting for the database"
                );
            }
            pending.insert(key, entry);
        }
        tracing::warn!(error = %error, waiting = pending.len(), "cannot record data planes' messages; trying again in {RETRY:?}");
        false
    }
}

/// `older` then `newer`, as if they had arrived together (NACKs not capped yet).
fn merge(older: Entry, newer: Entry) -> Entry {
    let (o, n) = (older.facts, newer.facts);
    let report = match (o.report, n.report) {
        (Some(o), Some(n)) => Some(if n.0.at >= o.0.at { n } else { o }),
        (o, n) => n.or(o),
    };
    let mut nacks = older.nacks;
    nacks.extend(newer.nacks);
    Entry {
        facts: NodeFacts {
            hello: n.hello.or(o.hello),
            active_version: n.active_version.or(o.active_version),
            last_ack_version: n.last_ack_version.or(o.last_ack_version),
            connected: n.connected.or(o.connected),
            report,
        },
        nacks,
    }
}

#[cfg(test)]
mod tests;
