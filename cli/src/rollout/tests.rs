use std::collections::VecDeque;

use super::*;

fn node(id: &str, version: u64, moved_at: Option<u32>, acked: bool) -> pb::RolloutNode {
    pb::RolloutNode {
        node_id: id.into(),
        active_version: version,
        moved: moved_at.is_some(),
        step: moved_at.unwrap_or_default(),
        connected: true,
        acked,
        ..Default::default()
    }
}

fn gate(name: &str, value: Option<f64>, threshold: f64, passed: Option<bool>) -> pb::GateValue {
    pb::GateValue { gate: name.into(), value, threshold, passed }
}

/// Rollout 7 of edge, version 3 from 2, baking in step 1 of 3 with one node moved and ACKed.
fn baking() -> pb::RolloutStatus {
    pb::RolloutStatus {
        exists: true,
        id: 7,
        fleet: "edge".into(),
        version: 3,
        from_version: 2,
        state: "progressing".into(),
        step: 1,
        steps: 3,
        reason: "step 1 started".into(),
        verdict: "step 1/3: baking, 42s left, 812 requests".into(),
        bake_seconds: 60.0,
        bake_left_seconds: 42.0,
        requests: 812,
        errors: 2,
        nodes: vec![
            node("dp-a", 3, Some(1), true),
            node("dp-b", 2, None, false),
            node("dp-c", 2, None, false),
        ],
        gates: vec![
            gate("error rate", Some(0.0025), 0.01, Some(true)),
            gate("p99", Some(0.012), 0.5, Some(true)),
            gate("p99 vs baseline", Some(1.234), 1.5, Some(true)),
        ],
        ..Default::default()
    }
}

#[test]
fn the_line_shows_state_step_nodes_acks_gates_and_verdict() {
    assert_eq!(
        line(&baking()),
        "rollout 7 edge v3 progressing step 1/3: nodes v3:1 v2:2, acks 1 nacks 0, error rate 0.2% <= 1.0%, \
         p99 12ms <= 500ms, p99 vs baseline 1.23x <= 1.50x — step 1/3: baking, 42s left, 812 requests"
    );
}

#[test]
fn unmeasured_gates_read_na_with_their_threshold() {
    let mut s = baking();
    s.gates = vec![gate("error rate", None, 0.01, None), gate("p99", None, 0.5, None)];
    s.verdict = "step 1/3: 0 of 1 data planes ACKed".into();
    let l = line(&s);
    assert!(l.contains("error rate n/a (max 1.0%), p99 n/a (max 500ms) — step 1/3: 0 of 1"), "{l}");
}

#[test]
fn a_breached_gate_reads_greater_than_its_threshold() {
    let mut s = baking();
    s.gates[0] = gate("error rate", Some(0.031), 0.01, Some(false));
    assert!(line(&s).contains("error rate 3.1% > 1.0%"), "{}", line(&s));
}

#[test]
fn a_finished_rollout_shows_why() {
    let mut s = baking();
    s.state = "failed".into();
    s.verdict = "step 1/3: error rate 3.1% > 1.0%, 812 requests".into();
    s.reason = "rolled back: step 1/3: error rate 3.1% > 1.0%, 812 requests".into();
    s.rollback_version = Some(4);
    s.nodes[0].nacked = true;
    let l = line(&s);
    assert!(l.starts_with("rollout 7 edge v3 failed step 1/3: nodes v3:1 v2:2, acks 1 nacks 1,"), "{l}");
    assert!(l.contains(", rolled back with v4 — step 1/3: error rate"), "{l}");
    assert!(l.ends_with(" — rolled back: step 1/3: error rate 3.1% > 1.0%, 812 requests"), "{l}");

    // While it runs, the reason is the last transition's: the verdict says more.
    assert!(!line(&baking()).contains("step 1 started"));
}

#[test]
fn a_pending_request_shows_in_the_line() {
    let mut s = baking();
    s.requested = "pause".into();
    assert!(line(&s).contains(", requested pause — "), "{}", line(&s));
}

#[test]
fn a_ticking_bake_clock_is_no_change() {
    let before = baking();
    let mut after = baking();
    after.verdict = "step 1/3: baking, 41s left, 830 requests".into();
    after.bake_left_seconds = 41.0;
    after.requests = 830;
    after.gates[0].value = Some(0.003);
    after.gates[1].value = Some(0.013);
    after.updated_at = 1_800_000_001;
    assert_eq!(shape(&before), shape(&after));
}

#[test]
fn acks_gates_states_steps_and_requests_are_changes() {
    let before = shape(&baking());
    let changed = |edit: fn(&mut pb::RolloutStatus)| {
        let mut s = baking();
        edit(&mut s);
        shape(&s) != before
    };
    assert!(changed(|s| s.nodes[1].acked = true), "an ACK");
    assert!(changed(|s| s.nodes[1].nacked = true), "a NACK");
    assert!(changed(|s| s.nodes[1].active_version = 3), "a node moved");
    assert!(changed(|s| s.gates[0].passed = Some(false)), "a gate failed");
    assert!(changed(|s| s.gates[2].value = None), "a gate no longer measured");
    assert!(changed(|s| s.state = "paused".into()), "the state");
    assert!(changed(|s| s.step = 2), "the step");
    assert!(changed(|s| s.requested = "abort".into()), "a request");
    assert!(changed(|s| s.reason = "paused by alice".into()), "the reason");
    assert!(
        changed(|s| s.verdict = "step 1/3: waiting for traffic: 12 of 100 requests".into()),
        "the verdict"
    );
}

#[test]
fn the_view_shows_the_rollout_its_gates_and_its_nodes() {
    let mut s = baking();
    s.requested = "pause".into();
    s.nodes[2].nacked = true;
    s.nodes[2].nack_reason = "bad pool".into();
    s.nodes[2].connected = false;
    s.gates[2] = gate("p99 vs baseline", None, 1.5, None);
    let v = view(&s);
    let lines: Vec<&str> = v.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "Rollout 7 of edge: version 3 (from 2)",
            "State: progressing, step 1/3",
            "Reason: step 1 started",
            "Now: step 1/3: baking, 42s left, 812 requests",
        ]
    );
    assert!(lines.contains(&"Bake: 42s of 1m left"), "{v}");
    assert!(lines.contains(&"Requested: pause"), "{v}");
    let row = |first: &str| -> Vec<String> {
        let found = lines.iter().find(|l| l.trim_start().starts_with(first));
        let rest =
            found.unwrap_or_else(|| panic!("no row {first}:\n{v}")).trim_start()[first.len()..].to_owned();
        rest.split_whitespace().map(str::to_owned).collect()
    };
    assert_eq!(row("GATE"), ["VALUE", "THRESHOLD", "RESULT"]);
    assert_eq!(row("error rate"), ["0.2%", "1.0%", "pass"]);
    assert_eq!(row("p99 vs baseline"), ["n/a", "1.50x", "—"]);
    assert_eq!(row("p99 "), ["12ms", "500ms", "pass"]);
    assert_eq!(row("NODE"), ["VERSION", "MOVED", "CONNECTED", "ACK/NACK"]);
    assert_eq!(row("dp-a"), ["3", "step", "1", "yes", "ack"]);
    assert_eq!(row("dp-b"), ["2", "—", "yes", "—"]);
    assert_eq!(row("dp-c"), ["2", "—", "no", "NACK:", "bad", "pool"]);
}

#[test]
fn the_view_says_what_a_rollback_published() {
    let mut s = baking();
    s.state = "failed".into();
    s.rollback_version = Some(4);
    s.bake_seconds = 0.0;
    s.gates.clear();
    s.nodes.clear();
    let v = view(&s);
    assert!(v.contains("\nRolled back with version 4\n"), "{v}");
    assert!(!v.contains("Bake:"), "{v}");
    assert!(v.contains("\nno gates\n") && v.contains("\nno data planes\n"), "{v}");
}

#[test]
fn only_failed_and_aborted_rollouts_exit_non_zero() {
    for (state, code, done) in [
        ("pending", exit::OK, false),
        ("progressing", exit::OK, false),
        ("paused", exit::OK, false),
        ("rolling_back", exit::OK, false),
        ("succeeded", exit::OK, true),
        ("failed", exit::REFUSED, true),
        ("aborted", exit::REFUSED, true),
    ] {
        assert_eq!(exit_code(state), code, "{state}");
        assert_eq!(finished(state), done, "{state}");
    }
}

#[test]
fn json_has_the_status_with_times_and_strategy_parsed() {
    let mut s = baking();
    s.created_at = 1_795_336_620;
    s.strategy_json = r#"{"steps":[{"nodes":1}]}"#.into();
    let j = status_json(&s);
    assert_eq!(j["state"], "progressing");
    assert_eq!(j["created_at"], "2026-11-22T08:37:00Z");
    assert_eq!(j["updated_at"], Value::Null);
    assert_eq!(j["strategy"]["steps"][0]["nodes"], 1);
    assert_eq!(j["gates"][0]["gate"], "error rate");
    assert_eq!(j["nodes"][1]["step"], Value::Null, "a node not moved has no step");
}

#[test]
fn a_fleet_without_a_default_strategy_says_where_versions_go() {
    let mut out = Vec::new();
    default_strategy(&mut out, OutputFormat::Table, "edge", &pb::DefaultStrategy::default());
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "fleet edge has no default strategy: versions go to every data plane at once\n"
    );
    let mut out = Vec::new();
    let d = pb::DefaultStrategy { strategy_json: r#"{"steps":[{"percent":50}]}"#.into() };
    default_strategy(&mut out, OutputFormat::Table, "edge", &d);
    assert!(String::from_utf8(out).unwrap().contains("\"percent\": 50"));
}

#[test]
fn an_action_still_pending_says_so() {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut s = baking();
    s.requested = "pause".into();
    acted(&mut out, &mut err, OutputFormat::Table, &s);
    assert!(String::from_utf8(out).unwrap().starts_with("rollout 7 edge v3 progressing"));
    assert_eq!(String::from_utf8(err).unwrap(), "requested; the rollout leader has not acted on it yet\n");

    let (mut out, mut err) = (Vec::new(), Vec::new());
    s.requested.clear();
    s.state = "paused".into();
    acted(&mut out, &mut err, OutputFormat::Table, &s);
    assert!(err.is_empty());
}

// === watch ===

/// Answers from a script, then the last status forever.
struct Script {
    answers: VecDeque<Result<pb::RolloutStatus, Fetch>>,
    last: pb::RolloutStatus,
}

impl Source for Script {
    async fn fetch(&mut self) -> Result<pb::RolloutStatus, Fetch> {
        match self.answers.pop_front() {
            Some(Ok(s)) => {
                self.last = s.clone();
                Ok(s)
            }
            Some(Err(e)) => Err(e),
            None => Ok(self.last.clone()),
        }
    }
}

fn watching(fmt: OutputFormat, timeout: Option<&str>) -> Watch<'static> {
    Watch {
        fleet: "edge",
        fmt,
        redraw: false,
        timeout: timeout.map(|t| sluice_bundle::Duration::parse(t).unwrap()),
        every: Duration::from_millis(1),
    }
}

async fn run_watch(w: &Watch<'_>, answers: Vec<Result<pb::RolloutStatus, Fetch>>) -> (u8, String, String) {
    let mut source = Script { answers: answers.into(), last: baking() };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = match watch(&mut source, w, baking(), &mut out, &mut err).await {
        Ok(code) => code,
        Err(f) => {
            err.extend_from_slice(f.message.as_bytes());
            f.code
        }
    };
    (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

fn with(edit: impl FnOnce(&mut pb::RolloutStatus)) -> pb::RolloutStatus {
    let mut s = baking();
    edit(&mut s);
    s
}

fn lost() -> Result<pb::RolloutStatus, Fetch> {
    Err(Fetch::Lost("connection refused".into()))
}

#[tokio::test]
async fn a_watch_prints_a_line_per_change_and_rides_out_an_outage() {
    let answers = vec![
        Ok(with(|s| s.verdict = "step 1/3: baking, 41s left, 815 requests".into())),
        lost(),
        lost(),
        lost(),
        Ok(with(|s| s.nodes[1].acked = true)),
        Ok(with(|s| s.nodes[1].acked = true)),
        lost(),
        Ok(with(|s| {
            s.state = "succeeded".into();
            s.step = 3;
            s.reason = "step 3/3: gates passed".into();
        })),
    ];
    let (code, out, err) = run_watch(&watching(OutputFormat::Table, None), answers).await;
    assert_eq!(code, exit::OK, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "the first, the ACK, the end:\n{out}");
    assert!(lines[0].contains("acks 1 nacks 0"), "{out}");
    assert!(lines[1].contains("acks 2 nacks 0"), "{out}");
    assert!(
        lines[2].contains(" succeeded step 3/3: ") && lines[2].ends_with(" — step 3/3: gates passed"),
        "{out}"
    );
    assert_eq!(
        err.lines().filter(|l| *l == "lost the control plane (connection refused); retrying").count(),
        2,
        "once per outage:\n{err}"
    );
}

#[tokio::test]
async fn a_watch_exits_1_when_the_rollout_fails_or_is_aborted() {
    for state in ["failed", "aborted"] {
        let answers = vec![Ok(with(|s| s.state = state.into()))];
        let (code, out, _) = run_watch(&watching(OutputFormat::Table, None), answers).await;
        assert_eq!(code, exit::REFUSED, "{state}");
        assert!(out.lines().last().unwrap().contains(&format!(" {state} step 1/3")), "{out}");
    }
}

#[tokio::test]
async fn a_watch_gives_up_at_its_timeout_and_says_where_the_rollout_stands() {
    let (code, out, err) = run_watch(&watching(OutputFormat::Table, Some("50ms")), vec![]).await;
    assert_eq!(code, exit::TIMEOUT);
    assert_eq!(out.lines().count(), 1, "nothing changed:\n{out}");
    assert_eq!(err, "timed out after 50ms; rollout 7 is progressing at step 1/3\n");

    let outage = std::iter::repeat_with(lost).take(10_000).collect();
    let (code, _, err) = run_watch(&watching(OutputFormat::Table, Some("50ms")), outage).await;
    assert_eq!(code, exit::TIMEOUT);
    assert!(
        err.ends_with("rollout 7 was progressing at step 1/3 when the control plane was last reachable\n"),
        "{err}"
    );
}

#[tokio::test]
async fn a_watch_stops_on_an_error_that_is_not_an_outage() {
    let answers = vec![Err(Fetch::Failed(fail(exit::REFUSED, "fleet edge is unknown")))];
    let (code, _, err) = run_watch(&watching(OutputFormat::Table, None), answers).await;
    assert_eq!(code, exit::REFUSED);
    assert!(err.contains("fleet edge is unknown"), "{err}");
}

#[tokio::test]
async fn a_json_watch_prints_one_object_per_line_per_change() {
    let answers = vec![Ok(with(|s| s.bake_left_seconds = 41.0)), Ok(with(|s| s.state = "succeeded".into()))];
    let (code, out, _) = run_watch(&watching(OutputFormat::Json, None), answers).await;
    assert_eq!(code, exit::OK);
    let states: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["progressing", "succeeded"]);
}

#[tokio::test]
async fn a_yaml_watch_prints_one_document_per_change() {
    let answers = vec![Ok(with(|s| s.state = "succeeded".into()))];
    let (_, out, _) = run_watch(&watching(OutputFormat::Yaml, None), answers).await;
    assert_eq!(out.matches("---\n").count(), 2, "{out}");
    assert!(out.starts_with("---\n"), "{out}");
    assert!(out.contains("state: succeeded"), "{out}");
}
