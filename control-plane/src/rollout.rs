//! Progressive rollouts: the judgement that walks a version through its steps. `judge` is pure:
//! given the strategy, where the rollout stands, the clock and what the step's data planes have
//! answered and reported, it says what happens next, and why, with the measured values against
//! their thresholds. `Inputs` gathers what it needs from the database, the same on every control
//! plane; the leader's `driver` acts on the verdicts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use prost::Message as _;
use serde::{Deserialize, Serialize};
use sluice_bundle::Format;
use sluice_bundle::rollout::{Rollout, parse_rollout};
use sluice_bundle::stats::quantile;
use sluice_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::store::{DataPlaneRow, RolloutRow, Store, unix_now};

pub mod driver;

/// Where a rollout stands in its current step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepClock {
    /// Index of the current step.
    pub step: usize,
    /// How long the step has run.
    pub elapsed: Duration,
}

/// The current step's data planes and what they said about the new version.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepNodes {
    /// Data planes the step covers.
    pub expected: usize,
    /// Those that ACKed the new version.
    pub acked: usize,
    /// `(node, reason)` of each NACK of the new version.
    pub nacked: Vec<(String, String)>,
}

/// Traffic served on the new version by the step's data planes since the step began, and by
/// the data planes still on the previous version over the same time (the baseline).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepTraffic {
    pub requests: u64,
    /// 5xx answers and the proxy's own errors.
    pub errors: u64,
    /// Latency histogram: bounds in seconds and per-bucket counts (one more than the bounds).
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    /// The baseline's histogram, same bounds; empty when no node is left on the old version.
    pub baseline_counts: Vec<u64>,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Keep going as is; `why` says what is awaited (for `rollout status`).
    Wait { why: String },
    /// The step passed its gates: move to the next one.
    NextStep { why: String },
    /// The last step passed: the rollout succeeded.
    Succeed { why: String },
    /// A gate was breached or the step ran out of time: roll back.
    Fail { why: String },
}

/// One gate's measured value against its threshold, for `rollout status` and the audit.
#[derive(Debug, Clone, PartialEq)]
pub struct GateReading {
    pub gate: &'static str,
    /// `None` until there is enough traffic to measure.
    pub value: Option<f64>,
    pub threshold: f64,
    pub passed: Option<bool>,
}

/// Judges the current step.
///
/// In order: a NACK fails the step; ACKs missing past the progress deadline fail it; until every
/// node has ACKed, it waits. Then, once the step has served `min_requests` on the new version,
/// each gate is judged and any breach fails it, during the bake as well as at its end. After the
/// bake, a step with enough traffic and no breach passes; one without enough traffic waits for it
/// until the later of its bake and the progress deadline, then fails as inconclusive. A step
/// without a bake passes on its ACKs once its gates, if judged, hold. Past the last step
/// (promoted), the ACKs alone decide.
pub fn judge(rollout: &Rollout, clock: &StepClock, nodes: &StepNodes, traffic: &StepTraffic) -> Verdict {
    let label = match clock.step < rollout.steps.len() {
        true => format!("step {}/{}", clock.step + 1, rollout.steps.len()),
        false => "promoted".to_owned(),
    };
    let deadline: Duration = rollout.progress_deadline_or_default().get();
    if let Some((node, reason)) = nodes.nacked.first() {
        return Verdict::Fail { why: format!("{label}: {node} refused the version: {reason}") };
    }
    if nodes.acked < nodes.expected {
        if clock.elapsed >= deadline {
            return Verdict::Fail {
                why: format!(
                    "{label}: {} of {} data planes ACKed within the progress deadline of {}",
                    nodes.acked,
                    nodes.expected,
                    rollout.progress_deadline_or_default()
                ),
            };
        }
        return Verdict::Wait {
            why: format!("{label}: {} of {} data planes ACKed", nodes.acked, nodes.expected),
        };
    }
    // Past the last step (promoted): every data plane has the version; its ACKs are the verdict.
    let Some(step) = rollout.steps.get(clock.step) else {
        return Verdict::Succeed { why: format!("{label}: all {} data planes ACKed", nodes.expected) };
    };

    let gates = rollout.gates_or_default();
    let min = u64::from(gates.min_requests_or_default());
    let readings = readings(rollout, traffic);
    // Below `min_requests` no gate has a verdict yet (`readings` leaves them unjudged).
    if let Some(breach) = readings.iter().find(|r| r.passed == Some(false)) {
        return Verdict::Fail {
            why: format!("{label}: {}, {} requests", describe(breach), traffic.requests),
        };
    }
    let bake: Duration = step.bake.map(|b| b.get()).unwrap_or_default();
    let last = clock.step + 1 == rollout.steps.len();
    let passed = |why: String| if last { Verdict::Succeed { why } } else { Verdict::NextStep { why } };
    if step.bake.is_none() {
        return passed(format!("{label}: all {} data planes ACKed", nodes.expected));
    }
    if clock.elapsed < bake {
        let left = bake - clock.elapsed;
        return Verdict::Wait {
            why: format!("{label}: baking, {}s left, {} requests", left.as_secs(), traffic.requests),
        };
    }
    if traffic.requests >= min {
        let summary: Vec<String> = readings.iter().filter(|r| r.value.is_some()).map(describe).collect();
        return passed(format!(
            "{label}: gates passed ({}), {} requests",
            summary.join(", "),
            traffic.requests
        ));
    }
    if clock.elapsed >= deadline.max(bake) {
        return Verdict::Fail {
            why: format!(
                "{label}: inconclusive: {} requests by the progress deadline, {min} needed to judge the gates",
                traffic.requests
            ),
        };
    }
    Verdict::Wait { why: format!("{label}: waiting for traffic: {} of {min} requests", traffic.requests) }
}

/// Every configured gate's value and threshold.
pub fn readings(rollout: &Rollout, traffic: &StepTraffic) -> Vec<GateReading> {
    let gates = rollout.gates_or_default();
    let enough = traffic.requests >= u64::from(gates.min_requests_or_default());
    let measured = |v: Option<f64>, threshold: f64, gate| {
        let value = v.filter(|_| enough);
        GateReading { gate, value, threshold, passed: value.map(|v| v <= threshold) }
    };
    let error_rate = (traffic.requests > 0).then(|| traffic.errors as f64 / traffic.requests as f64);
    let p99 = quantile(0.99, &traffic.bounds, &traffic.counts);
    let mut out = vec![
        measured(error_rate, gates.max_error_rate_or_default(), "error rate"),
        measured(p99, Duration::from(gates.max_p99_or_default()).as_secs_f64(), "p99"),
    ];
    if let Some(ratio) = gates.max_p99_ratio_vs_baseline {
        let baseline = quantile(0.99, &traffic.bounds, &traffic.baseline_counts);
        let value = p99.zip(baseline).filter(|(_, b)| *b > 0.0).map(|(p, b)| p / b);
        out.push(measured(value, ratio, "p99 vs baseline"));
    }
    out
}

/// `error rate 3.1% > 1.0%`, `p99 812ms > 500ms`, `p99 vs baseline 2.10x > 1.50x`.
fn describe(r: &GateReading) -> String {
    let op = if r.passed == Some(false) { ">" } else { "<=" };
    let Some(v) = r.value else {
        return format!("{} not measured yet", r.gate);
    };
    match r.gate {
        "error rate" => format!("error rate {:.1}% {op} {:.1}%", v * 100.0, r.threshold * 100.0),
        "p99" => format!("p99 {:.0}ms {op} {:.0}ms", v * 1000.0, r.threshold * 1000.0),
        _ => format!("{} {v:.2}x {op} {:.2}x", r.gate, r.threshold),
    }
}

/// A data plane's place in its fleet's rollout order: a hash of fleet and node id, the same on
/// every control plane and across restarts and reconnects.
pub fn rank(fleet: &str, node: &str) -> u64 {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::new().chain_update(fleet).chain_update([0]).chain_update(node).finalize();
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// Which data planes to move onto the new version now: the lowest-ranked of `known` not yet
/// `covered`, until `target` are. A node once covered stays covered (versions only go up, so it
/// cannot be moved back), which is also how a node keeps its cohort across reconnects; a node that
/// joins mid-rollout is taken in its rank's turn when the step needs more.
pub fn to_cover<'a>(
    fleet: &str,
    known: &'a [String],
    covered: &std::collections::BTreeSet<String>,
    target: usize,
) -> Vec<&'a str> {
    let mut candidates: Vec<&str> =
        known.iter().map(String::as_str).filter(|n| !covered.contains(*n)).collect();
    candidates.sort_by_key(|n| (rank(fleet, n), *n));
    candidates.dedup();
    candidates.truncate(target.saturating_sub(covered.len()));
    candidates
}

/// A data plane silent this long is not taken into a step, even if its stream looks open: data
/// planes report every 10 s by default.
const SILENT: Duration = Duration::from_secs(60);

/// Each data plane's cumulative traffic per config version, from its latest report: what a step
/// is judged on, as the difference from the snapshot taken when it began.
pub type Snapshot = BTreeMap<String, BTreeMap<u64, Counters>>;

/// Cumulative counters of one version on one data plane.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// When the data plane applied the version (Unix seconds): another value means it applied
    /// it again (a restart), and its counters started over.
    #[serde(default)]
    pub since: i64,
    pub requests: u64,
    pub errors: u64,
    pub counts: Vec<u64>,
}

/// What judging a rollout needs, read from the database.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub strategy: Rollout,
    /// The fleet's data planes.
    pub nodes: Vec<DataPlaneRow>,
    /// Data planes the rollout has moved, with the step (from 0) that moved each.
    pub moved: BTreeMap<String, u32>,
    /// Traffic now, and the latency buckets' bounds (the same on every data plane).
    pub now: Snapshot,
    pub bounds: Vec<f64>,
}

/// A rollout's current step judged.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub nodes: StepNodes,
    pub traffic: StepTraffic,
    pub readings: Vec<GateReading>,
    pub verdict: Verdict,
}

// === impl Inputs ===

impl Inputs {
    pub async fn read(store: &Store, row: &RolloutRow) -> Result<Self> {
        let strategy = strategy_of(row)?;
        let nodes = store.data_planes(Some(&row.fleet)).await?;
        let moved = store.covered_nodes(row.id).await?.into_iter().collect();
        let (now, bounds) = snapshot(&store.reports(&row.fleet).await?, &[row.version, row.from_version])?;
        Ok(Self { strategy, nodes, moved, now, bounds })
    }

    /// How many data planes the current step should have moved, of the connected ones and
    /// those moved already; every one of them once promoted past the last step.
    pub fn target(&self, step: usize) -> usize {
        let fleet = self.connected().chain(self.moved.keys().map(String::as_str)).collect::<BTreeSet<_>>();
        match self.strategy.steps.get(step) {
            Some(s) => s.nodes_of(fleet.len()),
            None => fleet.len(),
        }
    }

    /// Data planes connected now and heard from lately (hellos, ACKs and reports all count): a
    /// control plane that died without closing its streams leaves them marked connected.
    pub fn connected(&self) -> impl Iterator<Item = &str> {
        let recent = unix_now() - SILENT.as_secs() as i64;
        self.nodes.iter().filter(move |n| n.connected && n.last_seen >= recent).map(|n| n.node_id.as_str())
    }

    /// Judges `row`'s current step as it was read.
    pub fn assess(&self, row: &RolloutRow) -> Assessment {
        // Data planes the step still has to move count as not having ACKed.
        let expected = self.moved.len().max(self.target(row.step as usize));
        let mut nodes = StepNodes { expected, ..Default::default() };
        for n in self.nodes.iter().filter(|n| self.moved.contains_key(&n.node_id)) {
            match answer(n, row.version) {
                Some(Answer::Nacked) => nodes.nacked.push((n.node_id.clone(), n.last_nack_reason.clone())),
                Some(Answer::Acked) => nodes.acked += 1,
                None => {}
            }
        }
        let baseline: Snapshot = serde_json::from_value(row.step_baseline.clone()).unwrap_or_default();
        let mut traffic = StepTraffic { bounds: self.bounds.clone(), ..Default::default() };
        for (node, versions) in &self.now {
            let moved = self.moved.contains_key(node);
            let version = if moved { row.version } else { row.from_version };
            let Some(now) = versions.get(&version) else { continue };
            let before = baseline.get(node).and_then(|v| v.get(&version));
            let d = since(now, before);
            if moved {
                traffic.requests += d.requests;
                traffic.errors += d.errors;
                add(&mut traffic.counts, &d.counts);
            } else {
                add(&mut traffic.baseline_counts, &d.counts);
            }
        }
        let clock = StepClock { step: row.step as usize, elapsed: Duration::from_secs_f64(row.step_elapsed) };
        let readings = readings(&self.strategy, &traffic);
        let verdict = judge(&self.strategy, &clock, &nodes, &traffic);
        Assessment { nodes, traffic, readings, verdict }
    }
}

/// What a data plane said about a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Acked,
    Nacked,
}

/// Whether `node` ACKed or NACKed `version` (a NACK counts until it serves the version after all);
/// `None` while it has said neither.
pub fn answer(node: &DataPlaneRow, version: u64) -> Option<Answer> {
    if node.last_nack_version == version && node.active_version != version {
        Some(Answer::Nacked)
    } else if node.active_version == version || node.last_ack_version == version {
        Some(Answer::Acked)
    } else {
        None
    }
}

/// The strategy a rollout row carries.
pub fn strategy_of(row: &RolloutRow) -> Result<Rollout> {
    let json = serde_json::to_vec(&row.strategy).map_err(|e| Error::Internal(e.to_string()))?;
    parse_rollout(&json, Format::Json)
        .map_err(|e| Error::Internal(format!("rollout {} has an invalid strategy: {e}", row.id)))
}

/// The counters of `versions` in each data plane's latest report.
pub fn snapshot(reports: &[crate::store::ReportRow], versions: &[u64]) -> Result<(Snapshot, Vec<f64>)> {
    let mut out = Snapshot::new();
    let mut bounds = Vec::new();
    for row in reports {
        let report = pb::Report::decode(row.report.as_slice())
            .map_err(|e| Error::Internal(format!("stored report of {}: {e}", row.node_id)))?;
        for v in report.versions.into_iter().filter(|v| versions.contains(&v.version)) {
            if bounds.is_empty() {
                bounds = v.bounds_seconds.clone();
            }
            let counters =
                Counters { since: v.since, requests: v.requests, errors: v.errors, counts: v.bucket_counts };
            out.entry(row.node_id.clone()).or_default().insert(v.version, counters);
        }
    }
    Ok((out, bounds))
}

/// What was counted since `before`; everything when the counters started over since (the data
/// plane restarted or applied the version again: another `since`, or any counter went down).
fn since(now: &Counters, before: Option<&Counters>) -> Counters {
    let continues = |b: &Counters| {
        b.since == now.since
            && b.requests <= now.requests
            && b.errors <= now.errors
            && b.counts.len() == now.counts.len()
            && b.counts.iter().zip(&now.counts).all(|(b, n)| b <= n)
    };
    match before {
        Some(b) if continues(b) => Counters {
            since: now.since,
            requests: now.requests - b.requests,
            errors: now.errors - b.errors,
            counts: now.counts.iter().zip(&b.counts).map(|(n, b)| n - b).collect(),
        },
        _ => now.clone(),
    }
}

fn add(sum: &mut Vec<u64>, counts: &[u64]) {
    if sum.len() < counts.len() {
        sum.resize(counts.len(), 0);
    }
    for (s, c) in sum.iter_mut().zip(counts) {
        *s += c;
    }
}

/// Seconds left in the current step's bake, and the bake, for `rollout status`.
pub fn bake_left(strategy: &Rollout, row: &RolloutRow) -> (f64, f64) {
    let bake = strategy.steps.get(row.step as usize).and_then(|s| s.bake).map(|b| b.get().as_secs_f64());
    let Some(bake) = bake else { return (0.0, 0.0) };
    (bake, (bake - row.step_elapsed).max(0.0))
}

#[cfg(test)]
mod tests;
