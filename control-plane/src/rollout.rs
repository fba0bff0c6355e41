//! Progressive rollouts: the judgement that walks a version through its steps. Pure: given the
//! strategy, where the rollout stands, the clock and what the step's data planes have answered
//! and reported, it says what happens next, and why, with the measured values against their
//! thresholds. Persisting the state, assigning versions to nodes and publishing a rollback act on
//! its verdicts (the driver, next to come).

use std::time::Duration;

use sluice_bundle::rollout::Rollout;
use sluice_bundle::stats::quantile;

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
/// until the progress deadline, then fails as inconclusive (a rollout succeeds only on passed
/// gates). A step without a bake passes on its ACKs once its gates, if judged, hold.
pub fn judge(rollout: &Rollout, clock: &StepClock, nodes: &StepNodes, traffic: &StepTraffic) -> Verdict {
    let label = format!("step {}/{}", clock.step + 1, rollout.steps.len());
    let Some(step) = rollout.steps.get(clock.step) else {
        return Verdict::Succeed { why: format!("{label}: no steps left") };
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

#[cfg(test)]
mod tests;
