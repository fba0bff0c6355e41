//! `sluice rollout`: the fleet's progressive rollout as people and scripts read it (a full view,
//! a one-line summary, JSON), what changed between two polls, and the `--watch` loop that polls
//! until the rollout finishes, riding out control-plane restarts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_bundle::time::rfc3339_secs;
use sluice_proto::v1 as pb;
use tokio::time::Instant;

use crate::output::{OutputFormat, emit, render, table};
use crate::{Failure, exit, fail};

/// `succeeded`, `failed` and `aborted`: the rollout will not change any more.
pub fn finished(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "aborted")
}

/// The exit code a rollout in `state` gives: 1 when it failed or was aborted, 0 otherwise.
pub fn exit_code(state: &str) -> u8 {
    match state {
        "failed" | "aborted" => exit::REFUSED,
        _ => exit::OK,
    }
}

/// The error for a fleet without any rollout (exit 1).
pub fn no_rollout(fleet: &str) -> Failure {
    fail(exit::REFUSED, format!("fleet {fleet} has had no rollout"))
}

/// `rollout status` printed once: the full view for a person, the status as JSON or YAML else.
pub fn status(out: &mut dyn Write, fmt: OutputFormat, s: &pb::RolloutStatus) {
    match fmt {
        OutputFormat::Table => {
            let _ = out.write_all(view(s).as_bytes());
        }
        _ => emit(out, fmt, &status_json(s)),
    }
}

/// An operator action's result: the one-line summary (or the status as JSON or YAML), and a
/// note when the rollout leader has not carried out the request yet.
pub fn acted(out: &mut dyn Write, err: &mut dyn Write, fmt: OutputFormat, s: &pb::RolloutStatus) {
    match fmt {
        OutputFormat::Table => {
            let _ = writeln!(out, "{}", line(s));
        }
        _ => emit(out, fmt, &status_json(s)),
    }
    if !s.requested.is_empty() {
        let _ = writeln!(err, "requested; the rollout leader has not acted on it yet");
    }
}

/// The fleet's default strategy: pretty JSON, or what happens without one.
pub fn default_strategy(out: &mut dyn Write, fmt: OutputFormat, fleet: &str, d: &pb::DefaultStrategy) {
    let strategy = parse_json(&d.strategy_json);
    if fmt != OutputFormat::Table {
        return emit(out, fmt, &json!({"fleet": fleet, "strategy": strategy}));
    }
    if d.strategy_json.is_empty() {
        let _ =
            writeln!(out, "fleet {fleet} has no default strategy: versions go to every data plane at once");
        return;
    }
    let text = serde_json::to_string_pretty(&strategy).unwrap_or_else(|_| d.strategy_json.clone());
    let _ = writeln!(out, "{text}");
}

/// The status for scripts: every field, times as RFC 3339 (null for never), the strategy parsed.
pub fn status_json(s: &pb::RolloutStatus) -> Value {
    let nodes: Vec<Value> = s
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "active_version": n.active_version,
                "moved": n.moved,
                "step": n.moved.then_some(n.step),
                "connected": n.connected,
                "acked": n.acked,
                "nacked": n.nacked,
                "nack_reason": n.nack_reason,
            })
        })
        .collect();
    let gates: Vec<Value> = s
        .gates
        .iter()
        .map(|g| json!({"gate": g.gate, "value": g.value, "threshold": g.threshold, "passed": g.passed}))
        .collect();
    json!({
        "id": s.id,
        "fleet": s.fleet,
        "version": s.version,
        "from_version": s.from_version,
        "state": s.state,
        "step": s.step,
        "steps": s.steps,
        "reason": s.reason,
        "verdict": s.verdict,
        "requested": s.requested,
        "created_at": time(s.created_at),
        "created_by": s.created_by,
        "step_started_at": time(s.step_started_at),
        "updated_at": time(s.updated_at),
        "bake_seconds": s.bake_seconds,
        "bake_left_seconds": s.bake_left_seconds,
        "requests": s.requests,
        "errors": s.errors,
        "rollback_version": s.rollback_version,
        "strategy": parse_json(&s.strategy_json),
        "gates": gates,
        "nodes": nodes,
    })
}

// === one line ===

/// The rollout in one line: state, step, data planes per version, ACKs and NACKs, each gate
/// against its threshold, then the verdict (and, once finished, the reason):
///
/// `rollout 7 edge v3 progressing step 1/3: nodes v3:1 v2:2, acks 1 nacks 0, error rate 0.2% <=
/// 1.0%, p99 12ms <= 500ms — step 1/3: baking, 42s left, 812 requests`
pub fn line(s: &pb::RolloutStatus) -> String {
    let (acks, nacks) = acks(s);
    let mut facts = vec![format!("nodes {}", nodes_per_version(s)), format!("acks {acks} nacks {nacks}")];
    facts.extend(s.gates.iter().map(gate_reading));
    if !s.requested.is_empty() {
        facts.push(format!("requested {}", s.requested));
    }
    if let Some(v) = s.rollback_version {
        facts.push(format!("rolled back with v{v}"));
    }
    let mut text = format!(
        "rollout {} {} v{} {} step {}/{}: {}",
        s.id,
        s.fleet,
        s.version,
        s.state,
        s.step,
        s.steps,
        facts.join(", ")
    );
    if !s.verdict.is_empty() {
        let _ = write!(text, " — {}", s.verdict);
    }
    if finished(&s.state) && !s.reason.is_empty() && s.reason != s.verdict {
        let _ = write!(text, " — {}", s.reason);
    }
    text
}

/// What a watch compares between polls to decide whether to print: what the one-liner shows,
/// except what moves on its own while nothing happens (the bake clock, request counts, measured
/// values). A gate's pass or fail counts, its value does not; the verdict counts with its numbers
/// masked, so "baking, 42s left" and "baking, 41s left" are the same.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    id: u64,
    version: u64,
    state: String,
    step: u32,
    steps: u32,
    nodes: String,
    acks: usize,
    nacks: usize,
    /// Each gate: whether it is measured, and its result.
    gates: Vec<(String, bool, Option<bool>)>,
    requested: String,
    reason: String,
    rollback_version: Option<u64>,
    verdict: String,
}

pub fn shape(s: &pb::RolloutStatus) -> Shape {
    let (acks, nacks) = acks(s);
    Shape {
        id: s.id,
        version: s.version,
        state: s.state.clone(),
        step: s.step,
        steps: s.steps,
        nodes: nodes_per_version(s),
        acks,
        nacks,
        gates: s.gates.iter().map(|g| (g.gate.clone(), g.value.is_some(), g.passed)).collect(),
        requested: s.requested.clone(),
        reason: s.reason.clone(),
        rollback_version: s.rollback_version,
        verdict: mask_numbers(&s.verdict),
    }
}

/// `v3:1 v2:2`: how many data planes serve each version, newest first.
fn nodes_per_version(s: &pb::RolloutStatus) -> String {
    if s.nodes.is_empty() {
        return "none".to_owned();
    }
    let mut per: BTreeMap<u64, usize> = BTreeMap::new();
    for n in &s.nodes {
        *per.entry(n.active_version).or_default() += 1;
    }
    per.iter().rev().map(|(v, n)| format!("v{v}:{n}")).collect::<Vec<_>>().join(" ")
}

fn acks(s: &pb::RolloutStatus) -> (usize, usize) {
    (s.nodes.iter().filter(|n| n.acked).count(), s.nodes.iter().filter(|n| n.nacked).count())
}

/// `error rate 0.2% <= 1.0%`, `p99 812ms > 500ms`, `p99 vs baseline n/a (max 1.50x)`.
fn gate_reading(g: &pb::GateValue) -> String {
    let threshold = gate_value(&g.gate, g.threshold);
    match g.value {
        None => format!("{} n/a (max {threshold})", g.gate),
        Some(v) => {
            let op = if g.passed.unwrap_or(v <= g.threshold) { "<=" } else { ">" };
            format!("{} {} {op} {threshold}", g.gate, gate_value(&g.gate, v))
        }
    }
}

/// A gate's value in its unit: the error rate as a percentage, p99 (seconds) in milliseconds,
/// ratios as `1.23x`.
fn gate_value(gate: &str, v: f64) -> String {
    match gate {
        "error rate" => format!("{:.1}%", v * 100.0),
        "p99" => format!("{:.0}ms", v * 1000.0),
        _ => format!("{v:.2}x"),
    }
}

/// Every number (digits with their decimal points) replaced by `#`.
fn mask_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_number = false;
    for c in text.chars() {
        let part = c.is_ascii_digit() || (in_number && c == '.');
        if part && !in_number {
            out.push('#');
        } else if !part {
            out.push(c);
        }
        in_number = part;
    }
    out
}

// === full view ===

/// The rollout for a person: what, where it stands and why, then a table of gates and one of
/// data planes.
pub fn view(s: &pb::RolloutStatus) -> String {
    let mut text = String::new();
    let _ =
        writeln!(text, "Rollout {} of {}: version {} (from {})", s.id, s.fleet, s.version, s.from_version);
    let _ = writeln!(text, "State: {}, step {}/{}", s.state, s.step, s.steps);
    if !s.reason.is_empty() {
        let _ = writeln!(text, "Reason: {}", s.reason);
    }
    if !s.verdict.is_empty() {
        let _ = writeln!(text, "Now: {}", s.verdict);
    }
    if s.bake_seconds > 0.0 {
        let _ = writeln!(text, "Bake: {} of {} left", secs(s.bake_left_seconds), secs(s.bake_seconds));
    }
    let _ = writeln!(
        text,
        "Traffic: {} requests, {} errors on version {} this step",
        s.requests, s.errors, s.version
    );
    if !s.requested.is_empty() {
        let _ = writeln!(text, "Requested: {}", s.requested);
    }
    if let Some(v) = s.rollback_version {
        let _ = writeln!(text, "Rolled back with version {v}");
    }
    if s.created_at != 0 {
        let by = if s.created_by.is_empty() { String::new() } else { format!(" by {}", s.created_by) };
        let _ = writeln!(text, "Started: {}{by}", rfc3339_secs(s.created_at));
    }

    text.push('\n');
    if s.gates.is_empty() {
        text.push_str("no gates\n");
    } else {
        let mut t = table(&["GATE", "VALUE", "THRESHOLD", "RESULT"]);
        for g in &s.gates {
            let result = match g.passed {
                Some(true) => "pass",
                Some(false) => "FAIL",
                None => "—",
            };
            t.add_row(vec![
                g.gate.clone(),
                g.value.map(|v| gate_value(&g.gate, v)).unwrap_or_else(|| "n/a".into()),
                gate_value(&g.gate, g.threshold),
                result.to_owned(),
            ]);
        }
        let _ = writeln!(text, "{}", render(&t));
    }

    text.push('\n');
    if s.nodes.is_empty() {
        text.push_str("no data planes\n");
    } else {
        let mut t = table(&["NODE", "VERSION", "MOVED", "CONNECTED", "ACK/NACK"]);
        for n in &s.nodes {
            let answer = if n.nacked {
                format!("NACK: {}", n.nack_reason)
            } else if n.acked {
                "ack".to_owned()
            } else {
                "—".to_owned()
            };
            t.add_row(vec![
                n.node_id.clone(),
                n.active_version.to_string(),
                if n.moved { format!("step {}", n.step) } else { "—".to_owned() },
                if n.connected { "yes" } else { "no" }.to_owned(),
                answer,
            ]);
        }
        let _ = writeln!(text, "{}", render(&t));
    }
    text
}

/// Whole seconds, shortest form: `42s`, `2m`, `90s`.
fn secs(s: f64) -> String {
    sluice_bundle::Duration::from_secs(s.max(0.0).round() as u64).to_string()
}

fn time(secs: i64) -> Value {
    if secs == 0 { Value::Null } else { Value::String(rfc3339_secs(secs)) }
}

fn parse_json(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

// === watch ===

/// Where a watch reads the rollout from.
pub(crate) trait Source {
    async fn fetch(&mut self) -> Result<pb::RolloutStatus, Fetch>;
}

/// Why a read gave no status.
#[derive(Debug)]
pub(crate) enum Fetch {
    /// The control plane cannot be reached (or dropped the connection): try again.
    Lost(String),
    /// Anything else ends the watch.
    Failed(Failure),
}

/// How to watch.
#[derive(Debug, Clone)]
pub(crate) struct Watch<'a> {
    pub fleet: &'a str,
    pub fmt: OutputFormat,
    /// Redraw the full view each poll (a person at a terminal) instead of a line per change.
    pub redraw: bool,
    pub timeout: Option<sluice_bundle::Duration>,
    /// Time between polls.
    pub every: Duration,
}

/// Shows `first`, then polls `source` every `w.every` until the rollout finishes (exit 0 when it
/// succeeded, 1 when it failed or was aborted) or `w.timeout` passes (exit 6). A lost control
/// plane is reported once per outage and retried.
pub(crate) async fn watch(
    source: &mut impl Source,
    w: &Watch<'_>,
    first: pb::RolloutStatus,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    let deadline = w.timeout.map(|t| Instant::now() + t.get());
    let mut printer = Printer { fmt: w.fmt, redraw: w.redraw, shown: None };
    let mut last = first;
    let mut lost = false;
    printer.show(out, &last);
    loop {
        if finished(&last.state) {
            return Ok(exit_code(&last.state));
        }
        let next = Instant::now() + w.every;
        match deadline {
            Some(d) if d <= next => {
                tokio::time::sleep_until(d).await;
                break;
            }
            _ => tokio::time::sleep_until(next).await,
        }
        let fetched = match deadline {
            Some(d) => match tokio::time::timeout_at(d, source.fetch()).await {
                Ok(fetched) => fetched,
                Err(_) => break,
            },
            None => source.fetch().await,
        };
        match fetched {
            Ok(s) if !s.exists => return Err(no_rollout(w.fleet)),
            Ok(s) => {
                if lost {
                    let _ = writeln!(err, "reconnected to the control plane");
                    lost = false;
                }
                printer.show(out, &s);
                last = s;
            }
            Err(Fetch::Lost(why)) => {
                if !lost {
                    let _ = writeln!(err, "lost the control plane ({why}); retrying");
                    lost = true;
                }
            }
            Err(Fetch::Failed(f)) => return Err(f),
        }
    }
    let _ = writeln!(err, "{}", timed_out(w.timeout.unwrap_or_default(), &last, lost));
    Ok(exit::TIMEOUT)
}

/// `timed out after 2m; rollout 7 is progressing at step 2/3`.
pub fn timed_out(after: sluice_bundle::Duration, s: &pb::RolloutStatus, lost: bool) -> String {
    let (is, tail) = if lost { ("was", " when the control plane was last reachable") } else { ("is", "") };
    format!("timed out after {after}; rollout {} {is} {} at step {}/{}{tail}", s.id, s.state, s.step, s.steps)
}

/// Prints each poll: the full view redrawn, or a line (a JSON object, a YAML document) when
/// something changed.
struct Printer {
    fmt: OutputFormat,
    redraw: bool,
    shown: Option<Shape>,
}

// === impl Printer ===

impl Printer {
    fn show(&mut self, out: &mut dyn Write, s: &pb::RolloutStatus) {
        if self.redraw {
            let _ = write!(out, "\x1b[H\x1b[2J{}", view(s));
            let _ = out.flush();
            return;
        }
        let shape = shape(s);
        if self.shown.as_ref() == Some(&shape) {
            return;
        }
        self.shown = Some(shape);
        let text = match self.fmt {
            OutputFormat::Table => format!("{} {}\n", clock(), line(s)),
            OutputFormat::Json => serde_json::to_string(&status_json(s)).unwrap_or_default() + "\n",
            OutputFormat::Yaml => {
                let doc = serde_saphyr::to_string(&status_json(s)).unwrap_or_default();
                format!("---\n{}", doc.trim_start_matches("---\n"))
            }
        };
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

/// The time of day, UTC: `12:03:04Z`.
fn clock() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let stamp = rfc3339_secs(now.as_secs() as i64);
    stamp.get(11..).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests;
