use super::*;

const NOW: i64 = 1_800_000_000;

fn variant(name: &str, pool: &str, requests: u64, errors: u64, counts: [u64; 4]) -> pb::VariantStats {
    pb::VariantStats {
        variant: name.into(),
        pool: pool.into(),
        requests,
        errors,
        bounds_seconds: vec![0.01, 0.05, 0.1],
        bucket_counts: counts.to_vec(),
        sum_seconds: requests as f64 * 0.03,
    }
}

fn field(name: &str, differed: u64, noise: u64) -> pb::FieldDiff {
    pb::FieldDiff { field: name.into(), differed, noise }
}

/// Four routes: `checkout` splits three ways and its brake engaged; `users` has a canary that got
/// nothing yet (brake off) and a mirror with a baseline, diffs, samples and a tripped guardrail;
/// `search` mirrors without a baseline and has compared nothing yet; `static` neither splits nor
/// mirrors.
pub(crate) fn routes() -> Vec<pb::RouteReport> {
    let checkout = pb::RouteReport {
        route: "checkout".into(),
        variants: vec![
            variant("stable", "checkout-v1", 900, 9, [450, 360, 81, 9]),
            variant("canary", "checkout-v2", 80, 10, [10, 30, 30, 10]),
            variant("cohort:beta", "checkout-beta", 20, 0, [20, 0, 0, 0]),
        ],
        brake: Some(pb::CanaryBrake {
            pool: "checkout-v2".into(),
            weight_percent: 10.0,
            engaged: true,
            reason: "error rate 12.5% > 5.0% over 80 requests in 30s".into(),
            engaged_at: NOW - 60,
        }),
        mirror: None,
    };
    let users = pb::RouteReport {
        route: "users".into(),
        variants: vec![
            variant("stable", "users-v1", 100, 1, [50, 40, 9, 1]),
            pb::VariantStats { variant: "canary".into(), pool: "users-v2".into(), ..Default::default() },
        ],
        brake: Some(pb::CanaryBrake {
            pool: "users-v2".into(),
            weight_percent: 2.5,
            engaged: false,
            reason: String::new(),
            engaged_at: 0,
        }),
        mirror: Some(pb::MirrorReport {
            pool: "users-v3".into(),
            sent: 40,
            completed: 39,
            failed: 1,
            dropped: [("in_flight".to_owned(), 2), ("body_too_large".to_owned(), 1)].into(),
            compared: 20,
            differed: 5,
            fields: vec![field("/name", 5, 0), field("/updated_at", 4, 3), field("status", 1, 2)],
            samples: vec![pb::DiffSample {
                at: NOW - 5,
                request_id: "req-42".into(),
                method: "GET".into(),
                path: "/users/7".into(),
                fields: vec!["/name".into()],
                primary: "200 {\"name\":\"***\"}".into(),
                candidate: "200 {\"name\":null}".into(),
            }],
            guardrail: Some(pb::Guardrail {
                state: "tripped".into(),
                reason: "a: 5 bad pairs in a row; the last: the candidate took 3.0x as long".into(),
                since: NOW - 3,
                resumes_at: NOW + 12,
                trips: 2,
            }),
            baseline_compared: 10,
            noise_relative: 0.2,
            noise_absolute: 0.0003,
        }),
    };
    let search = pb::RouteReport {
        route: "search".into(),
        mirror: Some(pb::MirrorReport {
            pool: "search-v2".into(),
            sent: 3,
            dropped: [("in_flight".to_owned(), 0)].into(),
            fields: vec![field("status", 0, 0)],
            guardrail: Some(pb::Guardrail { state: "active".into(), since: NOW - 600, ..Default::default() }),
            noise_relative: 0.2,
            noise_absolute: 0.0003,
            ..Default::default()
        }),
        ..Default::default()
    };
    let plain = pb::RouteReport {
        route: "static".into(),
        variants: vec![variant("stable", "static", 5, 0, [5, 0, 0, 0])],
        ..Default::default()
    };
    vec![checkout, users, search, plain]
}

#[test]
fn canary_json() {
    insta::assert_json_snapshot!(canary_view(&routes()));
}

#[test]
fn shadow_json() {
    insta::assert_json_snapshot!(shadow_view(&routes(), NOW));
}

#[test]
fn no_routes_is_an_empty_list() {
    let empty = serde_json::to_value(canary_view(&[])).unwrap();
    assert_eq!(empty, serde_json::json!({"routes": []}));
    let empty = serde_json::to_value(shadow_view(&[], NOW)).unwrap();
    assert_eq!(empty, serde_json::json!({"routes": []}));
}

#[test]
fn fleet_json_has_the_sum_and_every_node() {
    let report = pb::TrafficReport {
        nodes: vec![
            pb::NodeTraffic {
                node_id: "a".into(),
                at: NOW - 1,
                active_version: 3,
                connected: true,
                routes: routes(),
                last_seen: NOW - 1,
            },
            pb::NodeTraffic {
                node_id: "gone".into(),
                at: NOW - 900,
                active_version: 2,
                connected: false,
                routes: vec![],
                last_seen: NOW - 890,
            },
        ],
        routes: routes(),
    };
    let scope = Scope { fleet: "edge", route: Some("users"), now: NOW };
    let fleet = shadow_fleet(&scope, &report);
    assert_eq!(fleet.routes, shadow_view(&report.routes, NOW).routes, "the sum is the plain view");
    assert_eq!(fleet.nodes[0].routes, fleet.routes);
    let json = serde_json::to_value(&fleet).unwrap();
    let nodes = json["nodes"].clone();
    assert_eq!((json["fleet"].as_str(), json["route"].as_str()), (Some("edge"), Some("users")));
    assert_eq!(
        nodes[1],
        serde_json::json!({
            "node_id": "gone",
            "connected": false,
            "last_seen": "2027-01-15T07:45:10Z",
            "at": "2027-01-15T07:45:00Z",
            "active_version": 2,
            "routes": [],
        })
    );
    let canary = canary_fleet(&scope, &report);
    assert_eq!(canary.routes, canary_view(&report.routes).routes);
}

#[test]
fn rates_are_null_when_nothing_was_measured() {
    let shadow = shadow_view(&routes(), NOW);
    let search = shadow.routes.iter().find(|r| r.route == "search").unwrap();
    assert_eq!(search.diff_rate, None, "nothing compared");
    assert_eq!((search.fields[0].diff_rate, search.fields[0].noise_rate), (None, None));
    assert!(!search.fields[0].significant);
    let users = shadow.routes.iter().find(|r| r.route == "users").unwrap();
    assert_eq!(users.fields[0].noise_rate, Some(0.0), "a baseline without noise is a measured 0");

    let canary = canary_view(&routes());
    let idle = &canary.routes[1].variants[1];
    assert_eq!((idle.variant.as_str(), idle.error_rate, idle.p50_seconds), ("canary", None, None));
}

#[test]
fn guardrail_says_when_mirroring_resumes() {
    let view =
        |routes: &[pb::RouteReport], now| shadow_view(routes, now).routes[0].guardrail.clone().unwrap();
    let mut routes = routes();
    assert_eq!(view(&routes, NOW).resumes_in_seconds, Some(12));
    assert_eq!(view(&routes, NOW + 20).resumes_in_seconds, Some(0), "past it: due now");
    routes[1].mirror.as_mut().unwrap().guardrail.as_mut().unwrap().state = "disabled".into();
    assert_eq!(view(&routes, NOW).resumes_in_seconds, None, "only a tripped guardrail resumes by itself");
}

#[test]
fn times_and_texts_that_are_not_there_are_null() {
    let canary = canary_view(&routes());
    let off = canary.routes[1].brake.clone().unwrap();
    assert_eq!((off.reason, off.engaged_at), (None, None));
    let on = canary.routes[0].brake.clone().unwrap();
    assert_eq!(on.engaged_at.map(|t| t.to_string()).as_deref(), Some("2027-01-15T07:59:00Z"));
    assert_eq!(Timestamp::unix(0), None);
}

#[test]
fn only_routes_that_split_or_mirror_are_shown() {
    let canary: Vec<String> = canary_view(&routes()).routes.into_iter().map(|r| r.route).collect();
    assert_eq!(canary, ["checkout", "users"], "a route with only its stable variant does not split");
    let shadow: Vec<String> = shadow_view(&routes(), NOW).routes.into_iter().map(|r| r.route).collect();
    assert_eq!(shadow, ["users", "search"]);
}

#[test]
fn a_field_is_significant_above_the_noise_floor() {
    let significant = |f: pb::FieldDiff, compared: u64, baseline_compared: u64| {
        let mirror = pb::MirrorReport {
            compared,
            baseline_compared,
            noise_relative: 0.2,
            noise_absolute: 0.0003,
            fields: vec![f],
            ..Default::default()
        };
        let route = pb::RouteReport { route: "r".into(), mirror: Some(mirror), ..Default::default() };
        shadow_view(&[route], NOW).routes[0].fields[0].significant
    };
    assert!(!significant(field("f", 100, 90), 1000, 1000), "1 point over 9% noise is under 20%");
    assert!(significant(field("f", 200, 90), 1000, 1000));
    assert!(significant(field("f", 1, 0), 1000, 1000), "no noise: only the absolute floor");
    assert!(!significant(field("f", 0, 0), 1000, 1000));
    assert!(significant(field("f", 1, 0), 1000, 0), "without a baseline every difference counts");
    assert!(!significant(field("f", 0, 0), 1000, 0));
    assert!(!significant(field("f", 0, 0), 0, 0), "nothing compared");
}
