use super::*;

fn errors(doc: &str) -> Vec<String> {
    match parse_rollout(doc.as_bytes(), Format::Yaml) {
        Ok(r) => panic!("expected errors, got {r:?}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_issues_example_parses_with_its_defaults() {
    let r = parse_rollout(
        b"steps: [{nodes: 1, bake: 60s}, {percent: 50, bake: 120s}, {percent: 100}]\n\
          gates: {max_error_rate: 1%, max_p99: 500ms, max_p99_ratio_vs_baseline: 1.5, min_requests: 100}\n",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(r.steps.len(), 3);
    assert_eq!((r.steps[0].size(), r.steps[0].bake), (StepSize::Nodes(1), Some(Duration::from_secs(60))));
    assert_eq!((r.steps[2].size(), r.steps[2].bake), (StepSize::Percent(100.0), None));
    let g = r.gates_or_default();
    assert_eq!(g.max_error_rate_or_default(), 0.01);
    assert_eq!(g.max_p99_or_default(), Duration::from_millis(500));
    assert_eq!(g.max_p99_ratio_vs_baseline, Some(1.5));
    assert_eq!(
        (r.interval_or_default(), r.progress_deadline_or_default()),
        (Duration::from_secs(60), Duration::from_secs(600))
    );
    // JSON says the same, and the canonical form reads back.
    let json = parse_rollout(
        br#"{"steps": [{"nodes": 1, "bake": "60s"}, {"percent": 50, "bake": "120s"}, {"percent": 100}],
            "gates": {"max_error_rate": "1%", "max_p99": "500ms", "max_p99_ratio_vs_baseline": 1.5, "min_requests": 100}}"#,
        Format::Json,
    )
    .unwrap();
    assert_eq!(json, r);
    let again = serde_json::to_vec(&r).unwrap();
    assert_eq!(parse_rollout(&again, Format::Json).unwrap(), r);
}

#[test]
fn defaults_match_the_spec() {
    let r = parse_rollout(b"steps: [{percent: 100}]", Format::Yaml).unwrap();
    let g = r.gates_or_default();
    assert_eq!(g.max_error_rate_or_default(), 0.01, "success rate at least 99%");
    assert_eq!(g.max_p99_or_default(), Duration::from_millis(500));
    assert_eq!(g.min_requests_or_default(), 100);
    assert_eq!(r.interval_or_default(), Duration::from_secs(60));
    assert_eq!(r.progress_deadline_or_default(), Duration::from_secs(600));
}

#[test]
fn a_step_covers_at_least_one_node_and_at_most_the_fleet() {
    let step = |doc: &str| parse_rollout(doc.as_bytes(), Format::Yaml).unwrap().steps[0].clone();
    assert_eq!(step("steps: [{nodes: 1}]").nodes_of(10), 1);
    assert_eq!(step("steps: [{nodes: 5}]").nodes_of(3), 3);
    assert_eq!(step("steps: [{percent: 50}]").nodes_of(3), 2, "rounded up");
    assert_eq!(step("steps: [{percent: 1}]").nodes_of(10), 1);
    assert_eq!(step("steps: [{percent: 100}]").nodes_of(7), 7);
    assert_eq!(step("steps: [{percent: 100}]").nodes_of(0), 0);
}

#[test]
fn reports_every_error_with_its_path() {
    let got = errors(
        "steps:\n  - {nodes: 2, percent: 10}\n  - {}\n  - {nodes: 0}\n  - {percent: 150, bake: 0s}\n  \
         - {percent: 50}\n  - {percent: 40, baek: 1s}\n\
         gates: {max_error_rate: 1, max_p99: fast, max_p99_ratio_vs_baseline: 0.5, min_requests: 0}\n\
         interval: 0s\n",
    );
    let want = [
        "steps[0]: nodes and percent are exclusive; use one",
        "steps[1]: needs nodes (a count) or percent (a share of the fleet)",
        "steps[2].nodes: must be at least 1",
        "steps[3].percent: 150 is out of range: above 0 and at most 100",
        "steps[3].bake: must be greater than 0s",
        "steps[5]: each step must reach more data planes than the one before",
        "steps[5].baek: unknown field `baek`; did you mean `bake`?",
        "gates.max_error_rate: expected a percentage like 1% or 0.5%, found a number (1)",
        "gates.max_p99_ratio_vs_baseline: 0.5 would fail a version exactly as fast as the baseline; use 1 or more",
        "gates.min_requests: must be at least 1",
        "interval: must be greater than 0s",
    ];
    let mut missing: Vec<&str> = want.iter().copied().filter(|w| !got.iter().any(|g| g == w)).collect();
    missing.sort();
    assert!(missing.is_empty(), "missing: {missing:#?}\ngot: {got:#?}");
    assert!(got.iter().any(|g| g.starts_with("gates.max_p99: ")), "{got:#?}");
    assert_eq!(errors("gates: {}"), ["steps: missing required field: a rollout needs at least one step"]);
    assert_eq!(errors("steps: []"), ["steps: a rollout needs at least one step"]);
}

#[test]
fn built_in_strategies_survive_a_round_trip_through_json() {
    for name in STRATEGY_NAMES {
        let Some(Some(rollout)) = builtin(name) else {
            assert_eq!(name, "all-at-once", "{name} is a rollout");
            continue;
        };
        // Stored as JSON by the control plane and parsed back by its rollout driver.
        let json = serde_json::to_vec(&rollout).unwrap();
        assert_eq!(parse_rollout(&json, Format::Json).unwrap(), rollout, "{name}");
        assert_eq!(rollout.steps.last().unwrap().nodes_of(7), 7, "{name} ends with every data plane");
    }
    assert_eq!(builtin("canary").unwrap().unwrap().steps[0].nodes_of(10), 1);
    assert!(builtin("yolo").is_none());
}
