//! The rollout leader. Every control plane runs this loop; the one holding the leader lock (see
//! `Store::try_lead`) walks every unfinished rollout once a tick: it starts pending ones, moves
//! the step's data planes onto the new version, judges the step, carries out operators' requests,
//! and rolls back. Every change is a compare-and-set fenced by its term, so a deposed leader that
//! has not noticed yet changes nothing, and a new leader resumes from what is stored.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{GateReading, Inputs, Verdict, snapshot, strategy_of, to_cover};
use crate::error::Result;
use crate::service::ControlPlane;
use crate::store::{AuditEntry, Leadership, ROLLOUT_STATES, RolloutRow, Transition};

/// How often the leader looks at its rollouts, and a follower at the leader lock.
pub const TICK: Duration = Duration::from_secs(1);

/// Who writes the leader's own changes in the audit trail.
const LEADER: &str = "rollout-leader";

/// Runs until shutdown; `holder` names this control plane in `rollout_leader`.
pub async fn run(cp: Arc<ControlPlane>, holder: String, mut shutdown: watch::Receiver<bool>) {
    let mut lead: Option<Leadership> = None;
    // When each rollout's step is judged next: every tick until its data planes have ACKed, then
    // at the strategy's interval.
    let mut judge_at: HashMap<(u64, u32, i64), Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Some(l) = lead.as_mut()
            && !l.still_leads(TICK * 2).await
        {
            tracing::warn!(term = l.term, "lost the rollout leadership");
            lead = None;
        }
        if lead.is_none() {
            match cp.store.try_lead(&holder).await {
                Ok(Some(l)) => {
                    tracing::info!(term = l.term, holder, "leading rollouts");
                    lead = Some(l);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot contend for the rollout leadership"),
            }
        }
        cp.metrics.set_rollout_leader(lead.is_some());
        let Some(term) = lead.as_ref().map(|l| l.term) else { continue };
        let rollouts = match cp.store.unfinished_rollouts().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the unfinished rollouts");
                continue;
            }
        };
        let leader = Leader { cp: &cp, term };
        for row in &rollouts {
            if let Err(e) = leader.advance(row, &mut judge_at).await {
                tracing::warn!(rollout = row.id, fleet = row.fleet, version = row.version, error = %e, "cannot advance a rollout");
            }
        }
        judge_at.retain(|(id, ..), _| rollouts.iter().any(|r| r.id == *id));
    }
}

/// One tick's leader.
struct Leader<'a> {
    cp: &'a ControlPlane,
    term: u64,
}

/// A change the leader makes to a rollout.
struct Change<'a> {
    to: &'static str,
    step: u32,
    /// The step (re)starts: its clock and traffic count from now.
    restart: bool,
    reason: String,
    rollback_version: Option<u64>,
    /// It carries out the operator's request, which is then done.
    clear_request: bool,
    readings: &'a [GateReading],
    /// What the audit row says instead of `reason`.
    note: Option<String>,
}

impl Leader<'_> {
    async fn advance(
        &self,
        row: &RolloutRow,
        judge_at: &mut HashMap<(u64, u32, i64), Instant>,
    ) -> Result<()> {
        if self.requested(row).await? {
            return Ok(());
        }
        match row.state.as_str() {
            "pending" => {
                let start = Change::to("progressing", 0, "started").restart();
                self.change(row, start).await?;
            }
            "progressing" => self.progress(row, judge_at).await?,
            "rolling_back" => self.roll_back(row).await?,
            // Paused waits for an operator (as in Argo Rollouts): no deadline runs meanwhile.
            _ => {}
        }
        Ok(())
    }

    /// Carries out an operator's request, if there is one; says whether it did anything.
    async fn requested(&self, row: &RolloutRow) -> Result<bool> {
        let by = &row.requested_by;
        let state = row.state.as_str();
        let steps = strategy_of(row)?.steps.len() as u32;
        let change = match (row.requested.as_str(), state) {
            ("", _) | ("abort", "rolling_back") => return Ok(false),
            ("abort", _) => {
                // The request stays until the rollback is done: it makes the end `aborted`.
                let mut abort = Change::to("rolling_back", row.step, format!("aborted by {by}"));
                abort.clear_request = false;
                abort
            }
            ("pause", "pending" | "progressing") => Change::to("paused", row.step, format!("paused by {by}")),
            ("resume", "paused") => {
                Change::to("progressing", row.step, format!("resumed by {by}: the step starts again"))
                    .restart()
            }
            ("promote", "pending" | "progressing" | "paused") => Change::to(
                "progressing",
                steps,
                format!("promoted by {by}: every data plane gets the version; succeeds on their ACKs"),
            )
            .restart(),
            // Kept out of `reason`, which says why the rollout is where it is.
            (request, _) => {
                let mut ignored = Change::to(static_state(state), row.step, row.reason.clone());
                ignored.note = Some(format!("{by}'s request to {request} ignored: the rollout is {state}"));
                ignored
            }
        };
        self.change(row, change).await?;
        Ok(true)
    }

    async fn progress(
        &self,
        row: &RolloutRow,
        judge_at: &mut HashMap<(u64, u32, i64), Instant>,
    ) -> Result<()> {
        let store = &self.cp.store;
        let mut inputs = Inputs::read(store, row).await?;
        let connected: Vec<String> = inputs.connected().map(str::to_owned).collect();
        let moved: BTreeSet<String> = inputs.moved.keys().cloned().collect();
        let target = inputs.target(row.step as usize);
        let new = to_cover(&row.fleet, &connected, &moved, target);
        if !new.is_empty() {
            if !store.cover_nodes(self.term, row.id, row.step, &new).await? {
                return Ok(());
            }
            tracing::info!(rollout = row.id, fleet = row.fleet, version = row.version, step = row.step + 1, nodes = ?new, "moving data planes");
            inputs.moved.extend(new.iter().map(|n| ((*n).to_owned(), row.step)));
        }
        let key = (row.id, row.step, row.step_started_at);
        if !new.is_empty() {
            // Data planes just moved are watched for their ACK every tick again.
            judge_at.remove(&key);
        }
        if judge_at.get(&key).is_some_and(|at| Instant::now() < *at) {
            return Ok(());
        }
        let a = inputs.assess(row);
        match a.verdict {
            Verdict::Wait { .. } => {
                if a.nodes.acked == a.nodes.expected {
                    judge_at.insert(key, Instant::now() + inputs.strategy.interval_or_default().get());
                }
            }
            Verdict::NextStep { why } => {
                let next = Change::to("progressing", row.step + 1, why).restart().read(&a.readings);
                self.change(row, next).await?;
            }
            Verdict::Succeed { why } => {
                self.change(row, Change::to("succeeded", row.step, why).read(&a.readings)).await?;
            }
            Verdict::Fail { why } => {
                tracing::warn!(
                    rollout = row.id,
                    version = row.version,
                    fleet = row.fleet,
                    reason = why,
                    "rollout failed a gate; rolling back"
                );
                let fail = Change::to("rolling_back", row.step, why).read(&a.readings);
                if self.change(row, fail).await?
                    && let Some(row) = store.rollout(row.id).await?
                {
                    self.roll_back(&row).await?;
                }
            }
        }
        Ok(())
    }

    /// Publishes the previous content as a new version (unless that is done already) and ends
    /// the rollout: the fleet's plan keeps the data planes that never moved where they are, and
    /// moves the others onto the rollback.
    async fn roll_back(&self, row: &RolloutRow) -> Result<()> {
        let head = self.cp.version(&row.fleet, None).await?;
        let rollback_version = if head.version == row.version {
            let message = format!("automatic rollback of rollout {}: {}", row.id, row.reason);
            // A trace of its own (validate, store, publish and the pushes under it), linked to
            // the apply that made the version rolled back.
            let span = tracing::info_span!(
                parent: None,
                "rollout rollback",
                sluice.fleet = %row.fleet,
                sluice.rollout = row.id as i64,
                sluice.version = row.version as i64,
            );
            if let Some(apply) = self.apply_trace(row) {
                span.add_link(apply);
            }
            let rolling_back = self.cp.roll_back_rollout(&row.fleet, row.from_version, row.version, message);
            let applied = rolling_back.instrument(span).await?;
            Some(applied.head.version)
        } else if head.origin == format!("rollback to {}", row.from_version) {
            // Published before a restart or a change of leader, or by an operator.
            Some(head.version)
        } else {
            // An operator rolled back to something else: every data plane gets that.
            None
        };
        let to = if row.requested == "abort" { "aborted" } else { "failed" };
        let reason = match rollback_version {
            Some(v) => format!(
                "{}; the data planes it moved are back on the previous content as version {v}",
                row.reason
            ),
            None => format!(
                "{}; the fleet follows version {} from an operator's rollback",
                row.reason, head.version
            ),
        };
        let mut end = Change::to(to, row.step, reason);
        end.rollback_version = rollback_version;
        self.change(row, end).await?;
        Ok(())
    }

    /// The span of the apply that made the rollout's version, when this replica traced it.
    fn apply_trace(&self, row: &RolloutRow) -> Option<opentelemetry::trace::SpanContext> {
        let plan = self.cp.hub.current(&row.fleet)?;
        (plan.head.version == row.version).then(|| plan.head.trace.clone()).flatten()
    }

    /// Applies `c` to `row` with its audit row; false when the rollout changed meanwhile or this
    /// control plane no longer leads.
    async fn change(&self, row: &RolloutRow, c: Change<'_>) -> Result<bool> {
        let step_baseline = match c.restart {
            true => {
                let reports = self.cp.store.reports(&row.fleet).await?;
                let (now, _) = snapshot(&reports, &[row.version, row.from_version])?;
                Some(serde_json::to_value(now).map_err(|e| crate::error::Error::Internal(e.to_string()))?)
            }
            false => None,
        };
        let t = Transition {
            id: row.id,
            from_state: static_state(&row.state),
            to_state: c.to,
            step: c.step,
            restart_step: c.restart,
            reason: c.reason.clone(),
            rollback_version: c.rollback_version,
            clear_request: c.clear_request && !row.requested.is_empty(),
            step_baseline,
            expect_request: row.requested.clone(),
        };
        let actor = if c.clear_request && !row.requested.is_empty()
            || c.to == "rolling_back" && row.requested == "abort"
        {
            row.requested_by.clone()
        } else {
            LEADER.to_owned()
        };
        let gates: Vec<serde_json::Value> = c
            .readings
            .iter()
            .map(|r| serde_json::json!({"gate": r.gate, "value": r.value, "threshold": r.threshold, "passed": r.passed}))
            .collect();
        let audit = AuditEntry {
            actor,
            action: "rollout".into(),
            fleet: row.fleet.clone(),
            version: Some(row.version),
            detail: serde_json::json!({
                "rollout": row.id,
                "from": row.state,
                "state": c.to,
                "step": c.step + 1,
                "reason": c.note.as_ref().unwrap_or(&c.reason),
                "gates": gates,
                "rollback_version": c.rollback_version,
                "term": self.term,
            }),
        };
        let done = self.cp.store.transition_rollout(self.term, &t, &audit).await?;
        if done {
            // A trace of its own, minutes after the apply perhaps: linked to the apply's span
            // when this replica traced it. The gate verdicts are its events.
            let span = tracing::info_span!(
                parent: None,
                "rollout",
                otel.name = %format_args!("rollout {}", c.to),
                sluice.fleet = %row.fleet,
                // As integers: an unsigned field would be exported as a string.
                sluice.rollout = row.id as i64,
                sluice.version = row.version as i64,
                sluice.step = i64::from(c.step) + 1,
                sluice.from = %row.state,
                sluice.to = c.to,
                sluice.reason = %c.reason,
            );
            if let Some(apply) = self.apply_trace(row) {
                span.add_link(apply);
            }
            span.in_scope(|| {
                for r in c.readings {
                    tracing::info!(gate = r.gate, value = ?r.value, threshold = r.threshold, passed = ?r.passed, "gate");
                }
                tracing::info!(
                    rollout = row.id,
                    version = row.version,
                    fleet = row.fleet,
                    from = row.state,
                    to = c.to,
                    step = c.step + 1,
                    reason = c.reason,
                    "rollout"
                );
            });
        }
        Ok(done)
    }
}

impl<'a> Change<'a> {
    fn to(to: &'static str, step: u32, reason: impl Into<String>) -> Self {
        Self {
            to,
            step,
            restart: false,
            reason: reason.into(),
            rollback_version: None,
            clear_request: true,
            readings: &[],
            note: None,
        }
    }

    fn restart(mut self) -> Self {
        self.restart = true;
        self
    }

    fn read(mut self, readings: &'a [GateReading]) -> Self {
        self.readings = readings;
        self
    }
}

/// The stored state's name, as the `&'static str` a transition takes.
fn static_state(state: &str) -> &'static str {
    ROLLOUT_STATES.into_iter().find(|s| *s == state).unwrap_or("pending")
}
