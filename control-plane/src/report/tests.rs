use super::*;

fn node(id: &str, connected: bool, routes: Vec<pb::RouteReport>) -> NodeTraffic {
    NodeTraffic { node_id: id.into(), at: 100, active_version: 3, connected, last_seen: 100, routes }
}

fn variant(name: &str, requests: u64, errors: u64, counts: Vec<u64>) -> pb::VariantStats {
    pb::VariantStats {
        variant: name.into(),
        pool: format!("{name}-pool"),
        requests,
        errors,
        bounds_seconds: vec![0.1, 0.5],
        bucket_counts: counts,
        sum_seconds: 1.0,
    }
}

fn sample(at: i64, id: &str) -> pb::DiffSample {
    pb::DiffSample {
        at,
        request_id: id.into(),
        method: "GET".into(),
        path: "/u".into(),
        ..Default::default()
    }
}

fn guardrail(state: &str, reason: &str, resumes_at: i64, trips: u64) -> Option<pb::Guardrail> {
    Some(pb::Guardrail { state: state.into(), reason: reason.into(), since: 90, resumes_at, trips })
}

fn field(name: &str, differed: u64, noise: u64) -> pb::FieldDiff {
    pb::FieldDiff { field: name.into(), differed, noise }
}

fn mirror(sent: u64, fields: Vec<pb::FieldDiff>, samples: Vec<pb::DiffSample>) -> pb::MirrorReport {
    pb::MirrorReport {
        pool: "shadow".into(),
        sent,
        completed: sent - 1,
        failed: 1,
        dropped: [("in_flight".to_owned(), 2)].into(),
        compared: sent - 1,
        differed: 3,
        fields,
        samples,
        guardrail: guardrail("active", "", 0, 1),
        baseline_compared: 10,
        noise_relative: 0.2,
        noise_absolute: 0.0003,
    }
}

fn route(name: &str) -> pb::RouteReport {
    pb::RouteReport { route: name.into(), ..Default::default() }
}

#[test]
fn variants_add_up_by_name_with_their_histograms() {
    let a = node(
        "a",
        true,
        vec![pb::RouteReport {
            variants: vec![variant("stable", 10, 1, vec![5, 4, 1]), variant("canary", 2, 0, vec![2, 0, 0])],
            ..route("users")
        }],
    );
    let b = node(
        "b",
        true,
        vec![pb::RouteReport {
            variants: vec![
                variant("stable", 20, 2, vec![10, 9, 1]),
                variant("cohort:beta", 1, 1, vec![0, 0, 1]),
            ],
            ..route("users")
        }],
    );
    let sum = aggregate([&a, &b]);
    assert_eq!(sum.len(), 1);
    let v = &sum[0].variants;
    assert_eq!(v.iter().map(|v| v.variant.as_str()).collect::<Vec<_>>(), ["stable", "canary", "cohort:beta"]);
    assert_eq!((v[0].requests, v[0].errors, v[0].sum_seconds), (30, 3, 2.0));
    assert_eq!(v[0].bucket_counts, [15, 13, 2]);
    assert_eq!(v[1].bucket_counts, [2, 0, 0], "a variant on one node only is that node's");
}

#[test]
fn histograms_with_other_bounds_are_not_added() {
    let a = node(
        "a",
        true,
        vec![pb::RouteReport { variants: vec![variant("stable", 10, 0, vec![5, 5, 0])], ..route("r") }],
    );
    let mut other = variant("stable", 4, 0, vec![4, 0, 0]);
    other.bounds_seconds = vec![0.2, 0.5];
    let b = node("b", true, vec![pb::RouteReport { variants: vec![other], ..route("r") }]);
    let sum = aggregate([&a, &b]);
    let v = &sum[0].variants[0];
    assert_eq!(v.requests, 14, "counts still add up");
    assert_eq!(
        (v.bounds_seconds.as_slice(), v.bucket_counts.as_slice()),
        ([0.1, 0.5].as_slice(), [5, 5, 0].as_slice())
    );
}

#[test]
fn mirrors_add_up_and_fields_merge_by_name() {
    let a = node(
        "a",
        true,
        vec![pb::RouteReport {
            mirror: Some(mirror(10, vec![field("/name", 3, 1), field("status", 1, 0)], vec![])),
            ..route("users")
        }],
    );
    let mut m = mirror(20, vec![field("/name", 4, 2), field("header:etag", 2, 2)], vec![]);
    m.dropped.insert("guardrail".into(), 5);
    m.pool = "other".into();
    m.noise_relative = 0.5;
    let b = node("b", true, vec![pb::RouteReport { mirror: Some(m), ..route("users") }]);
    let sum = aggregate([&a, &b]);
    let m = sum[0].mirror.as_ref().unwrap();
    assert_eq!((m.sent, m.completed, m.failed, m.compared, m.differed), (30, 28, 2, 28, 6));
    assert_eq!(m.baseline_compared, 20);
    assert_eq!(m.dropped, [("in_flight".to_owned(), 4), ("guardrail".to_owned(), 5)].into());
    assert_eq!(m.fields, [field("/name", 7, 3), field("header:etag", 2, 2), field("status", 1, 0)]);
    assert_eq!(
        (m.pool.as_str(), m.noise_relative, m.noise_absolute),
        ("shadow", 0.2, 0.0003),
        "the first node's"
    );
}

#[test]
fn samples_merge_newest_first_and_keep_ten() {
    let a_samples = (0..8).map(|i| sample(100 + 2 * i, &format!("a{i}"))).rev().collect();
    let b_samples = (0..8).map(|i| sample(101 + 2 * i, &format!("b{i}"))).rev().collect();
    let a =
        node("a", true, vec![pb::RouteReport { mirror: Some(mirror(5, vec![], a_samples)), ..route("r") }]);
    let b =
        node("b", true, vec![pb::RouteReport { mirror: Some(mirror(5, vec![], b_samples)), ..route("r") }]);
    let sum = aggregate([&a, &b]);
    let ids: Vec<&str> =
        sum[0].mirror.as_ref().unwrap().samples.iter().map(|s| s.request_id.as_str()).collect();
    assert_eq!(ids, ["b7", "a7", "b6", "a6", "b5", "a5", "b4", "a4", "b3", "a3"]);
}

#[test]
fn the_worst_guardrail_wins_and_trips_add_up() {
    let with = |state: &str, reason: &str, resumes_at: i64, trips: u64| {
        let mut m = mirror(5, vec![], vec![]);
        m.guardrail = guardrail(state, reason, resumes_at, trips);
        pb::RouteReport { mirror: Some(m), ..route("r") }
    };
    let a = node("a", true, vec![with("disabled", "by operator", 0, 0)]);
    let b = node("b", true, vec![with("tripped", "candidate 3.0x slower", 160, 2)]);
    let c = node("c", true, vec![with("active", "", 0, 1)]);
    let d = node("d", true, vec![with("tripped", "errors", 170, 1)]);
    let g = aggregate([&a, &b, &c, &d])[0].mirror.clone().unwrap().guardrail.unwrap();
    assert_eq!(g, guardrail("tripped", "b: candidate 3.0x slower", 160, 4).unwrap());

    let g = aggregate([&c, &a])[0].mirror.clone().unwrap().guardrail.unwrap();
    assert_eq!((g.state.as_str(), g.reason.as_str(), g.trips), ("disabled", "a: by operator", 1));
}

#[test]
fn the_brake_is_engaged_when_any_node_engaged_it() {
    let brake = |engaged: bool, reason: &str, at: i64| pb::RouteReport {
        brake: Some(pb::CanaryBrake {
            pool: "v2".into(),
            weight_percent: 10.0,
            engaged,
            reason: reason.into(),
            engaged_at: at,
        }),
        ..route("r")
    };
    let a = node("a", true, vec![brake(false, "", 0)]);
    let b = node("b", true, vec![brake(true, "error rate 12.5% > 5.0%", 150)]);
    let c = node("c", true, vec![brake(true, "later", 160)]);
    let sum = aggregate([&a, &b, &c]);
    let brake = sum[0].brake.as_ref().unwrap();
    assert!(brake.engaged);
    assert_eq!((brake.reason.as_str(), brake.engaged_at), ("b: error rate 12.5% > 5.0%", 150));
    assert!(!aggregate([&a])[0].brake.as_ref().unwrap().engaged);
    assert!(aggregate([&node("x", true, vec![route("r")])])[0].brake.is_none(), "no canary, no brake");
}

#[test]
fn routes_are_sorted_and_disconnected_nodes_are_shown_but_not_added() {
    let a = node(
        "a",
        true,
        vec![
            route("zeta"),
            pb::RouteReport { variants: vec![variant("stable", 1, 0, vec![1, 0, 0])], ..route("alpha") },
        ],
    );
    let gone = node(
        "gone",
        false,
        vec![pb::RouteReport { variants: vec![variant("stable", 50, 50, vec![0, 0, 50])], ..route("alpha") }],
    );
    let report = TrafficReport::new(vec![a, gone.clone()]);
    assert_eq!(report.routes.iter().map(|r| r.route.as_str()).collect::<Vec<_>>(), ["alpha", "zeta"]);
    assert_eq!(report.routes[0].variants[0].requests, 1);
    assert_eq!(report.nodes[1], gone);
}

#[test]
fn a_stored_report_is_decoded_and_filtered_by_route() {
    let report =
        pb::Report { at: 7, active_version: 2, routes: vec![route("a"), route("b")], ..Default::default() };
    let row = ReportRow {
        node_id: "n".into(),
        at: 7,
        active_version: 2,
        report: report.encode_to_vec(),
        connected: true,
        last_seen: 9,
    };
    let all = NodeTraffic::from_row(row.clone(), None).unwrap();
    assert_eq!(all.routes.len(), 2);
    let one = NodeTraffic::from_row(row.clone(), Some("b")).unwrap();
    assert_eq!(one.routes, [route("b")]);
    assert_eq!((one.at, one.active_version, one.last_seen), (7, 2, 9));
    let broken = NodeTraffic::from_row(ReportRow { report: vec![0xff, 0xff], ..row }, None);
    assert!(matches!(broken, Err(Error::Internal(_))), "{broken:?}");
}
