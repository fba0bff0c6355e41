use sluice_bundle::Format;
use sluice_bundle::rollout::parse_rollout;

use super::*;

fn strategy() -> Rollout {
    parse_rollout(
        b"steps: [{nodes: 1, bake: 60s}, {percent: 50, bake: 120s}, {percent: 100}]\n\
          gates: {max_error_rate: 1%, max_p99: 500ms, max_p99_ratio_vs_baseline: 1.5, min_requests: 100}\n\
          progress_deadline: 5m\n",
        Format::Yaml,
    )
    .unwrap()
}

const BOUNDS: [f64; 4] = [0.05, 0.1, 0.5, 1.0];

/// `requests` answered, `errors` of them failed, every one in the bucket of `latency` seconds; the
/// baseline likewise at `baseline` seconds.
fn traffic(requests: u64, errors: u64, latency: f64, baseline: f64) -> StepTraffic {
    let bucket = |s: f64| {
        let mut counts = vec![0; BOUNDS.len() + 1];
        counts[BOUNDS.iter().position(|b| s <= *b).unwrap_or(BOUNDS.len())] = requests;
        counts
    };
    StepTraffic {
        requests,
        errors,
        bounds: BOUNDS.to_vec(),
        counts: bucket(latency),
        baseline_counts: bucket(baseline),
    }
}

fn at(step: usize, secs: u64) -> StepClock {
    StepClock { step, elapsed: Duration::from_secs(secs) }
}

fn acked(n: usize) -> StepNodes {
    StepNodes { expected: n, acked: n, nacked: Vec::new() }
}

fn why(v: &Verdict) -> &str {
    match v {
        Verdict::Wait { why }
        | Verdict::NextStep { why }
        | Verdict::Succeed { why }
        | Verdict::Fail { why } => why,
    }
}

#[test]
fn a_healthy_step_bakes_then_moves_on_and_the_last_succeeds() {
    let r = strategy();
    let good = traffic(500, 1, 0.04, 0.04);
    let v = judge(&r, &at(0, 30), &acked(1), &good);
    assert_eq!(v, Verdict::Wait { why: "step 1/3: baking, 30s left, 500 requests".into() });
    let v = judge(&r, &at(0, 60), &acked(1), &good);
    assert!(matches!(v, Verdict::NextStep { .. }), "{v:?}");
    assert_eq!(
        why(&v),
        "step 1/3: gates passed (error rate 0.2% <= 1.0%, p99 50ms <= 500ms, p99 vs baseline 1.00x <= 1.50x), 500 requests"
    );
    // The last step has no bake: it passes on its ACKs.
    assert_eq!(
        judge(&r, &at(2, 1), &acked(4), &StepTraffic::default()),
        Verdict::Succeed { why: "step 3/3: all 4 data planes ACKed".into() }
    );
}

#[test]
fn a_breached_gate_fails_the_step_at_once_with_the_numbers() {
    let r = strategy();
    let v = judge(&r, &at(1, 10), &acked(2), &traffic(412, 13, 0.04, 0.04));
    assert_eq!(v, Verdict::Fail { why: "step 2/3: error rate 3.2% > 1.0%, 412 requests".into() });
    let v = judge(&r, &at(0, 10), &acked(1), &traffic(200, 0, 0.9, 0.04));
    assert_eq!(v, Verdict::Fail { why: "step 1/3: p99 995ms > 500ms, 200 requests".into() });
    // Slower than the baseline by more than 1.5x, though under the absolute p99.
    let v = judge(&r, &at(0, 10), &acked(1), &traffic(200, 0, 0.4, 0.1));
    assert!(matches!(v, Verdict::Fail { .. }), "{v:?}");
    assert!(why(&v).starts_with("step 1/3: p99 vs baseline 4.9") && why(&v).contains("x > 1.50x"), "{v:?}");
}

#[test]
fn gates_wait_for_min_requests_and_a_quiet_step_is_inconclusive() {
    let r = strategy();
    // 5 errors out of 10 is not judged yet: too few requests.
    let v = judge(&r, &at(0, 10), &acked(1), &traffic(10, 5, 0.04, 0.04));
    assert!(matches!(v, Verdict::Wait { .. }), "{v:?}");
    let v = judge(&r, &at(0, 90), &acked(1), &traffic(10, 0, 0.04, 0.04));
    assert_eq!(v, Verdict::Wait { why: "step 1/3: waiting for traffic: 10 of 100 requests".into() });
    let v = judge(&r, &at(0, 300), &acked(1), &traffic(10, 0, 0.04, 0.04));
    assert_eq!(
        v,
        Verdict::Fail {
            why:
                "step 1/3: inconclusive: 10 requests by the progress deadline, 100 needed to judge the gates"
                    .into()
        }
    );
}

#[test]
fn a_nack_or_missing_acks_past_the_deadline_fail_the_step() {
    let r = strategy();
    let nacked = StepNodes {
        expected: 2,
        acked: 1,
        nacked: vec![("dp-3".into(), "routes[0].pool: unknown pool".into())],
    };
    assert_eq!(
        judge(&r, &at(1, 1), &nacked, &StepTraffic::default()),
        Verdict::Fail { why: "step 2/3: dp-3 refused the version: routes[0].pool: unknown pool".into() }
    );
    let slow = StepNodes { expected: 2, acked: 1, nacked: Vec::new() };
    assert_eq!(
        judge(&r, &at(1, 10), &slow, &StepTraffic::default()),
        Verdict::Wait { why: "step 2/3: 1 of 2 data planes ACKed".into() }
    );
    assert_eq!(
        judge(&r, &at(1, 300), &slow, &StepTraffic::default()),
        Verdict::Fail { why: "step 2/3: 1 of 2 data planes ACKed within the progress deadline of 5m".into() }
    );
}

#[test]
fn readings_show_each_gate_once_measured() {
    let r = strategy();
    let none = readings(&r, &traffic(50, 0, 0.04, 0.04));
    assert!(none.iter().all(|g| g.value.is_none() && g.passed.is_none()), "{none:?}");
    let some = readings(&r, &traffic(100, 2, 0.04, 0.04));
    let gates: Vec<(&str, Option<bool>)> = some.iter().map(|g| (g.gate, g.passed)).collect();
    assert_eq!(gates, [("error rate", Some(false)), ("p99", Some(true)), ("p99 vs baseline", Some(true))]);
}

#[test]
fn nodes_are_taken_in_a_stable_order_and_never_given_back() {
    use std::collections::BTreeSet;
    let known: Vec<String> = (0..10).map(|i| format!("dp-{i}")).collect();
    let first = to_cover("edge", &known, &BTreeSet::new(), 1);
    assert_eq!(first.len(), 1);
    // The same answer on every call, whatever the order nodes are listed in.
    let mut shuffled = known.clone();
    shuffled.reverse();
    assert_eq!(to_cover("edge", &shuffled, &BTreeSet::new(), 1), first);
    // Another fleet orders its nodes differently (a node is not always first everywhere).
    let orders: BTreeSet<Vec<&str>> =
        ["a", "b", "c", "d"].iter().map(|f| to_cover(f, &known, &BTreeSet::new(), 3)).collect();
    assert!(orders.len() > 1);

    // Growing to half: the first node stays, four more are added.
    let mut covered: BTreeSet<String> = first.iter().map(|n| (*n).to_owned()).collect();
    let more = to_cover("edge", &known, &covered, 5);
    assert_eq!(more.len(), 4);
    assert!(more.iter().all(|n| !covered.contains(*n)));
    covered.extend(more.iter().map(|n| (*n).to_owned()));
    // Nothing to do once the step has its nodes, even if the fleet shrank meanwhile.
    assert!(to_cover("edge", &known[..3], &covered, 5).is_empty());
    // A node joining mid-step is taken only if the step needs more nodes.
    let mut grown = known.clone();
    grown.push("dp-new".into());
    assert!(to_cover("edge", &grown, &covered, 5).is_empty());
    assert_eq!(to_cover("edge", &grown, &covered, 11).len(), 6);
}

#[test]
fn a_step_counts_traffic_since_it_began_and_notices_counters_that_started_over() {
    let c = |since, requests, errors, counts: &[u64]| Counters {
        since,
        requests,
        errors,
        counts: counts.to_vec(),
    };
    let before = c(100, 5000, 20, &[4000, 980, 20]);
    assert_eq!(since(&c(100, 6000, 30, &[4800, 1170, 30]), Some(&before)), c(100, 1000, 10, &[800, 190, 10]));
    // A data plane that restarted (the version applied again) counts from zero, even once its
    // new totals pass the old ones.
    let restarted = c(200, 6000, 20, &[5000, 990, 10]);
    assert_eq!(since(&restarted, Some(&before)), restarted);
    // Any counter going down means the same, whatever `since` says.
    let fewer_errors = c(100, 6000, 5, &[5000, 995, 5]);
    assert_eq!(since(&fewer_errors, Some(&before)), fewer_errors);
    // A data plane that was not in the snapshot: all of its traffic is the step's.
    assert_eq!(since(&before, None), before);
}
