//! Prometheus metrics: applies and how long they take, data-plane streams, pushes, ACKs and NACKs
//! per fleet, each fleet's version, data planes by sync state, and whether the database answers.
//! Written in the text format (version 0.0.4) by the data plane's encoder and served on a
//! listener of their own (`listener`).
//!
//! Recording is a relaxed atomic add; the per-fleet counters sit behind one map lock that is
//! taken once per stream, not per message. Label values are fleet names and fixed words only.

mod listener;

pub use listener::{Guard, serve};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use sluice_observe::metrics::{Encoder, Histogram};

use sluice_tls::Reload;

use crate::access::Access;
use crate::error::Error;
use crate::service::{ControlPlane, SyncState};

/// The text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What this control plane has counted since it started.
#[derive(Default)]
pub struct Metrics {
    /// By [`ApplyResult`].
    applies: [AtomicU64; 4],
    apply_duration: Histogram,
    fleets: Mutex<HashMap<String, Arc<FleetCounters>>>,
    /// Whether this control plane holds the rollout leadership.
    rollout_leader: std::sync::atomic::AtomicBool,
    /// Files watched (certificates, CRLs, the policy): reloaded on SIGHUP, reported here.
    watched: Mutex<Vec<Arc<dyn Reload>>>,
    /// TLS handshakes that failed or timed out (plaintext to the TLS port, bad certificates).
    tls_handshake_failures: AtomicU64,
    /// Where refusals are counted.
    access: OnceLock<Arc<Access>>,
    /// Departed data planes this replica forgot (`--dataplane-retention`).
    pruned: AtomicU64,
}

/// One fleet's data-plane traffic on this control plane.
#[derive(Debug, Default)]
pub struct FleetCounters {
    streams: AtomicU64,
    pushes: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
}

/// Counts one open stream in `sluice_cp_streams` until it is dropped.
#[derive(Debug)]
pub struct StreamGuard(Arc<FleetCounters>);

/// How an apply or rollback ended, as `sluice_cp_applies_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyResult {
    /// Stored, or equal to the head so nothing needed storing.
    Applied,
    /// Refused: the document, the fleet name or the rollback target is wrong.
    Invalid,
    /// The head was not the expected version.
    Conflict,
    /// The database or something else on our side failed.
    Error,
}

/// A family with one sample per fleet: name, type, help, and the counter it reads.
type FleetFamily = (&'static str, &'static str, &'static str, fn(&FleetCounters) -> &AtomicU64);

const FLEET_FAMILIES: [FleetFamily; 4] = [
    ("sluice_cp_streams", "gauge", "Data-plane streams connected to this control plane.", |c| &c.streams),
    ("sluice_cp_pushes_total", "counter", "Bundles pushed to data planes.", |c| &c.pushes),
    ("sluice_cp_acks_total", "counter", "Bundles data planes accepted (ACK).", |c| &c.acks),
    ("sluice_cp_nacks_total", "counter", "Bundles data planes refused (NACK).", |c| &c.nacks),
];

/// The states of `sluice_cp_dataplanes`, in the order they are written.
const STATES: [SyncState; 6] = [
    SyncState::Synced,
    SyncState::Stale,
    SyncState::Nacked,
    SyncState::StaleFreshness,
    SyncState::Ahead,
    SyncState::Disconnected,
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Metrics ===

impl Metrics {
    pub fn record_apply(&self, result: ApplyResult, took: Duration) {
        self.applies[result as usize].fetch_add(1, Ordering::Relaxed);
        self.apply_duration.observe(took);
    }

    /// The counters of `fleet`, made on first use.
    pub fn fleet(&self, fleet: &str) -> Arc<FleetCounters> {
        let mut fleets = lock(&self.fleets);
        if let Some(c) = fleets.get(fleet) {
            return c.clone();
        }
        fleets.entry(fleet.to_owned()).or_default().clone()
    }

    pub fn pruned(&self, nodes: u64) {
        self.pruned.fetch_add(nodes, Ordering::Relaxed);
    }

    pub fn set_rollout_leader(&self, leads: bool) {
        self.rollout_leader.store(leads, Ordering::Relaxed);
    }

    /// Reports a watched set of files and reloads it on [`Metrics::reload_watched`].
    pub fn watch(&self, w: Arc<dyn Reload>) {
        lock(&self.watched).push(w);
    }

    /// Re-reads every watched file now (SIGHUP).
    pub fn reload_watched(&self) {
        for w in lock(&self.watched).iter() {
            w.check();
        }
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_access(&self, access: Arc<Access>) {
        let _ = self.access.set(access);
    }

    pub fn applies(&self, result: ApplyResult) -> u64 {
        self.applies[result as usize].load(Ordering::Relaxed)
    }

    fn fleets(&self) -> BTreeMap<String, Arc<FleetCounters>> {
        lock(&self.fleets).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

// === impl FleetCounters ===

impl FleetCounters {
    /// A stream of this fleet opened; it counts until the guard is dropped.
    pub fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    pub fn pushed(&self) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn acked(&self) {
        self.acks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn nacked(&self) {
        self.nacks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn streams(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }
}

// === impl StreamGuard ===

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl ApplyResult ===

impl ApplyResult {
    const ALL: [Self; 4] = [Self::Applied, Self::Invalid, Self::Conflict, Self::Error];

    pub fn of<T>(result: &Result<T, Error>) -> Self {
        match result {
            Ok(_) => Self::Applied,
            Err(Error::InvalidConfig(_) | Error::InvalidArgument(_) | Error::NotFound(_)) => Self::Invalid,
            Err(Error::Conflict { .. } | Error::FailedPrecondition(_)) => Self::Conflict,
            Err(Error::Unavailable(_) | Error::Internal(_)) => Self::Error,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Invalid => "invalid",
            Self::Conflict => "conflict",
            Self::Error => "error",
        }
    }
}

fn state_label(state: SyncState) -> &'static str {
    match state {
        SyncState::Synced => "synced",
        SyncState::Stale => "stale",
        SyncState::Nacked => "nacked",
        SyncState::StaleFreshness => "stale_freshness",
        SyncState::Ahead => "ahead",
        SyncState::Disconnected => "disconnected",
    }
}

/// Every metric in the text format. Data planes by state come from the database (the list
/// `sluice dataplanes` shows), read within the store's timeout; that read is also what
/// `sluice_cp_database_up` reports. While the database does not answer, that family is empty.
pub async fn render(cp: &ControlPlane) -> String {
    let data_planes = cp.data_planes(None).await;
    let m = &cp.metrics;
    let fleets = m.fleets();
    let mut e = Encoder::new();

    e.family(
        "sluice_cp_applies_total",
        "counter",
        "Applies and rollbacks handled, by result: applied (including unchanged), invalid, conflict (the head moved, or a rollout is unfinished), error.",
    );
    for result in ApplyResult::ALL {
        e.sample(&[("result", result.as_str())], m.applies(result) as f64);
    }
    e.family(
        "sluice_cp_apply_duration_seconds",
        "histogram",
        "Time to handle an apply or rollback: validate, sign, store, notify.",
    )
    .histogram(&[], &m.apply_duration);

    for (name, kind, help, counter) in FLEET_FAMILIES {
        e.family(name, kind, help);
        for (fleet, counters) in &fleets {
            e.sample(&[("fleet", fleet)], counter(counters).load(Ordering::Relaxed) as f64);
        }
    }

    e.family(
        "sluice_cp_fleet_version",
        "gauge",
        "Newest stored version of each fleet this control plane knows of.",
    );
    let mut versions = cp.hub.versions();
    versions.sort_unstable();
    for (fleet, version) in &versions {
        e.sample(&[("fleet", fleet)], *version as f64);
    }

    e.family("sluice_cp_dataplanes", "gauge", "Data planes by state against their fleet's head, as `sluice dataplanes` shows them; from the database, so every control plane on it reports the same.");
    let up = match data_planes {
        Ok(rows) => {
            let mut by_fleet: BTreeMap<&str, [u64; STATES.len()]> = BTreeMap::new();
            for (row, state) in &rows {
                let i = STATES.iter().position(|s| s == state).unwrap_or(STATES.len() - 1);
                by_fleet.entry(row.fleet.as_str()).or_default()[i] += 1;
            }
            for (fleet, counts) in by_fleet {
                for (state, n) in STATES.iter().zip(counts) {
                    e.sample(&[("fleet", fleet), ("state", state_label(*state))], n as f64);
                }
            }
            true
        }
        Err(err) => {
            tracing::debug!(error = %err, "metrics: cannot read the data planes");
            false
        }
    };
    e.family(
        "sluice_cp_rollout_leader",
        "gauge",
        "1 while this control plane drives rollouts (holds the leader lock), else 0.",
    )
    .sample(&[], if m.rollout_leader.load(Ordering::Relaxed) { 1.0 } else { 0.0 });
    e.family(
        "sluice_cp_dataplanes_pruned_total",
        "counter",
        "Data planes this control plane forgot after --dataplane-retention without a word from them.",
    )
    .sample(&[], m.pruned.load(Ordering::Relaxed) as f64);
    // Each fleet's latest rollout, from the database: the same on every control plane.
    let mut rollouts = Vec::new();
    for (fleet, _) in &versions {
        match cp.store.latest_rollout(fleet).await {
            Ok(Some(r)) => rollouts.push(r),
            Ok(None) => {}
            Err(err) => tracing::debug!(error = %err, "metrics: cannot read a rollout"),
        }
    }
    e.family(
        "sluice_cp_rollout_state",
        "gauge",
        "1 for the state each fleet's latest rollout is in, 0 for the others.",
    );
    for r in &rollouts {
        for state in crate::store::ROLLOUT_STATES {
            e.sample(&[("fleet", &r.fleet), ("state", state)], if r.state == state { 1.0 } else { 0.0 });
        }
    }
    e.family(
        "sluice_cp_rollout_step",
        "gauge",
        "The step (from 1) each fleet's latest rollout is at; the last once promoted.",
    );
    for r in &rollouts {
        // Promoted past the last step: shown as the last, as `sluice rollout status` does.
        let steps = r.strategy["steps"].as_array().map_or(1, Vec::len) as u32;
        e.sample(&[("fleet", &r.fleet)], f64::from((r.step + 1).min(steps)));
    }
    e.family(
        "sluice_cp_rollout_deadline_timestamp_seconds",
        "gauge",
        "Unix time by which the rollout leader must have judged a progressing rollout's current step (its start plus the later of its bake and the progress deadline, plus one gate interval); past it, the rollout is stuck.",
    );
    for r in rollouts.iter().filter(|r| r.state == "progressing") {
        let Ok(strategy) = crate::rollout::strategy_of(r) else { continue };
        let bake =
            strategy.steps.get(r.step as usize).and_then(|s| s.bake).map_or(Duration::ZERO, Into::into);
        let deadline: Duration = strategy.progress_deadline_or_default().into();
        let interval: Duration = strategy.interval_or_default().into();
        let by = r.step_started_at as f64 + (bake.max(deadline) + interval).as_secs_f64();
        e.sample(&[("fleet", &r.fleet)], by);
    }
    e.family(
        "sluice_cp_access_denied_total",
        "counter",
        "Calls refused: no or unknown credentials, a missing role, a data plane speaking for another, a credential used on the wrong service.",
    );
    if let Some(access) = m.access.get() {
        for (reason, n) in access.denials.counts() {
            e.sample(&[("reason", reason)], n as f64);
        }
    }
    e.family(
        "sluice_cp_tls_handshake_failures_total",
        "counter",
        "TLS handshakes on the gRPC listener that failed or timed out.",
    )
    .sample(&[], m.tls_handshake_failures.load(Ordering::Relaxed) as f64);
    let watched: Vec<_> = lock(&m.watched).iter().map(|w| (None, w.status())).collect();
    sluice_observe::metrics::tls_families(&mut e, &watched);
    e.family(
        "sluice_cp_database_up",
        "gauge",
        "1 when PostgreSQL answered this scrape's query within the database timeout, else 0.",
    )
    .sample(&[], if up { 1.0 } else { 0.0 });
    e.family(
        "sluice_cp_dataplane_writes_pending",
        "gauge",
        "Data planes whose latest messages (hello, ACK, NACK, report, disconnect) wait to be written to the database; written in batches.",
    )
    .sample(&[], cp.recorder.pending() as f64);
    e.family(
        "sluice_cp_dataplane_write_failures_total",
        "counter",
        "Batches of data planes' messages the database refused or did not answer in time; kept and tried again.",
    )
    .sample(&[], cp.recorder.failures() as f64);
    e.family(
        "sluice_cp_dataplane_nacks_dropped_total",
        "counter",
        "NACKs not recorded because 8 of the same data plane's were already waiting for the database.",
    )
    .sample(&[], cp.recorder.dropped_nacks() as f64);

    e.finish()
}

#[cfg(test)]
mod tests;
