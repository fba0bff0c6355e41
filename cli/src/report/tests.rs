use serde_json::{Value, json};
use sluice_bundle::time::rfc3339_secs;

use super::*;

fn field(name: &str, differed: u64, noise: u64) -> pb::FieldDiff {
    pb::FieldDiff { field: name.into(), differed, noise }
}

#[test]
fn latencies_read_in_their_unit() {
    assert_eq!(seconds(0.000_85), "850µs");
    assert_eq!(seconds(0.0125), "12.5ms");
    assert_eq!(seconds(0.012), "12ms");
    assert_eq!(seconds(1.25), "1.25s");
    assert_eq!(seconds(2.0), "2s");
}

const NOW: i64 = 1_800_000_000;

fn report() -> pb::TrafficReport {
    let users = pb::RouteReport {
        route: "users".into(),
        variants: vec![
            pb::VariantStats {
                variant: "stable".into(),
                pool: "users-v1".into(),
                requests: 100,
                errors: 1,
                bounds_seconds: vec![0.01, 0.05, 0.1],
                bucket_counts: vec![50, 40, 9, 1],
                sum_seconds: 3.0,
            },
            pb::VariantStats { variant: "canary".into(), pool: "users-v2".into(), ..Default::default() },
        ],
        brake: Some(pb::CanaryBrake {
            pool: "users-v2".into(),
            weight_percent: 10.0,
            engaged: true,
            reason: "b: error rate 12.5% > 5.0%".into(),
            engaged_at: NOW - 60,
        }),
        mirror: Some(pb::MirrorReport {
            pool: "users-v2".into(),
            sent: 40,
            completed: 39,
            failed: 1,
            dropped: [("in_flight".to_owned(), 2), ("body_too_large".to_owned(), 1)].into(),
            compared: 20,
            differed: 5,
            fields: vec![field("/name", 5, 0), field("status", 1, 2)],
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
                reason: "a: candidate 3.0x slower".into(),
                since: NOW - 3,
                resumes_at: NOW + 12,
                trips: 2,
            }),
            baseline_compared: 10,
            noise_relative: 0.2,
            noise_absolute: 0.0003,
        }),
    };
    let plain = pb::RouteReport {
        route: "static".into(),
        variants: vec![pb::VariantStats { variant: "stable".into(), ..Default::default() }],
        ..Default::default()
    };
    pb::TrafficReport {
        nodes: vec![
            pb::NodeTraffic {
                node_id: "a".into(),
                at: NOW - 1,
                active_version: 3,
                connected: true,
                routes: vec![users.clone(), plain.clone()],
                last_seen: NOW - 1,
            },
            pb::NodeTraffic {
                node_id: "old".into(),
                at: NOW - 900,
                active_version: 2,
                connected: false,
                routes: vec![],
                last_seen: NOW - 900,
            },
        ],
        routes: vec![plain, users],
    }
}

fn render(
    f: fn(&mut dyn Write, &mut dyn Write, OutputFormat, &Scope, &pb::TrafficReport),
    fmt: OutputFormat,
    route: Option<&str>,
    r: &pb::TrafficReport,
) -> (String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    f(&mut out, &mut err, fmt, &Scope { fleet: "edge", route, now: NOW }, r);
    (String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

#[test]
fn shadow_table_shows_counters_guardrail_fields_and_samples() {
    let (out, err) = render(shadow, OutputFormat::Table, None, &report());
    assert!(out.starts_with("route users: mirrored to users-v2\n"), "{out}");
    assert!(!out.contains("static"), "routes without a mirror are left out:\n{out}");
    for line in [
        "  sent       40",
        "  dropped    3 (body_too_large 1, in_flight 2)",
        "  differed   5 (25.00%)",
        "  guardrail  tripped (a: candidate 3.0x slower), resumes in 12s; 2 trips",
    ] {
        assert!(out.contains(line), "no {line:?} in:\n{out}");
    }
    let row = |name: &str| out.lines().find(|l| l.trim_start().starts_with(name)).unwrap().to_owned();
    let cells = |l: String| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(cells(row("/name")), ["/name", "5", "25.00%", "0.00%", "yes"]);
    assert_eq!(cells(row("status")), ["status", "1", "5.00%", "20.00%", "no"]);
    assert!(out.contains("req-42  GET /users/7  fields: /name"), "{out}");
    assert!(out.contains("primary:   200 {\"name\":\"***\"}"), "{out}");
    assert!(out.contains("candidate: 200 {\"name\":null}"), "{out}");
    assert!(err.contains("old is disconnected"), "{err}");
}

#[test]
fn shadow_says_so_when_no_route_mirrors() {
    let mut r = report();
    r.routes.retain(|r| r.route == "static");
    let (out, _) = render(shadow, OutputFormat::Table, None, &r);
    assert_eq!(out, "no route mirrors in fleet edge\n");
    let (out, _) = render(shadow, OutputFormat::Table, Some("static"), &r);
    assert_eq!(out, "route static does not mirror in fleet edge\n");
    let (out, _) = render(canary, OutputFormat::Table, None, &pb::TrafficReport::default());
    assert_eq!(out, "no route splits traffic in fleet edge (no data plane has reported)\n");
}

#[test]
fn shadow_json_has_the_aggregate_and_every_node() {
    let (out, _) = render(shadow, OutputFormat::Json, None, &report());
    let doc: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["fleet"], "edge");
    let users = &doc["routes"][0];
    assert_eq!(doc["routes"].as_array().unwrap().len(), 1);
    assert_eq!(users["route"], "users");
    assert_eq!(users["dropped"], json!({"body_too_large": 1, "in_flight": 2}));
    assert_eq!(
        users["fields"][0],
        json!({"field": "/name", "differed": 5, "noise": 0, "diff_rate": 0.25, "noise_rate": 0.0, "significant": true})
    );
    assert_eq!(users["guardrail"]["state"], "tripped");
    assert_eq!(users["guardrail"]["resumes_at"], rfc3339_secs(NOW + 12));
    assert_eq!(users["samples"][0]["request_id"], "req-42");
    assert_eq!(doc["nodes"][0]["node_id"], "a");
    assert_eq!(doc["nodes"][0]["routes"][0]["route"], "users");
    assert_eq!(doc["nodes"][1]["connected"], false);
    assert_eq!(doc["nodes"][1]["routes"], json!([]));
}

#[test]
fn canary_table_shows_variants_percentiles_and_the_brake() {
    let (out, _) = render(canary, OutputFormat::Table, None, &report());
    assert!(out.starts_with("route users\n"), "{out}");
    assert!(!out.contains("route static"), "a route with only a stable variant does not split:\n{out}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("stable"), "stable users-v1 100 1 1.00% 10ms 77.8ms 100ms");
    assert_eq!(row("canary"), "canary users-v2 0 0 - - - -");
    assert!(out.contains("brake: ENGAGED since"), "{out}");
    assert!(out.contains("b: error rate 12.5% > 5.0%"), "{out}");
}

#[test]
fn canary_yaml_has_percentiles_in_seconds() {
    let (out, _) = render(canary, OutputFormat::Yaml, Some("users"), &report());
    let doc: Value = serde_saphyr::from_str(&out).unwrap();
    let stable = &doc["routes"][0]["variants"][0];
    assert_eq!(doc["route"], "users");
    assert_eq!(stable["p50_seconds"], 0.01);
    assert_eq!(stable["p99_seconds"], 0.1);
    assert_eq!(stable["error_rate"], 0.01);
    assert_eq!(doc["routes"][0]["brake"]["engaged"], true);
}

/// `report()` with a cohort on `users` and a route `search` whose mirror has compared nothing yet
/// (no baseline, no samples, guardrail active), so the tables show every kind of cell.
fn fuller_report() -> pb::TrafficReport {
    let mut r = report();
    let users = r.routes.iter_mut().find(|r| r.route == "users").unwrap();
    users.variants.push(pb::VariantStats {
        variant: "cohort:beta".into(),
        pool: "users-beta".into(),
        requests: 7,
        errors: 0,
        bounds_seconds: vec![0.0005, 0.001, 1.0, 2.5],
        bucket_counts: vec![1, 4, 0, 2, 0],
        sum_seconds: 4.1,
    });
    r.routes.push(pb::RouteReport {
        route: "search".into(),
        variants: vec![pb::VariantStats {
            variant: "stable".into(),
            pool: "search".into(),
            ..Default::default()
        }],
        brake: None,
        mirror: Some(pb::MirrorReport {
            pool: "search-v2".into(),
            sent: 2,
            fields: vec![field("status", 0, 0)],
            guardrail: Some(pb::Guardrail { state: "active".into(), since: NOW - 600, ..Default::default() }),
            noise_relative: 0.2,
            noise_absolute: 0.0003,
            ..Default::default()
        }),
    });
    r
}

/// A rendering as a person sees it: stdout, then what went to stderr.
fn screen(f: fn(&mut dyn Write, &mut dyn Write, OutputFormat, &Scope, &pb::TrafficReport)) -> String {
    let (out, err) = render(f, OutputFormat::Table, None, &fuller_report());
    format!("{out}--- stderr\n{err}")
}

#[test]
fn shadow_table() {
    insta::assert_snapshot!(screen(shadow));
}

#[test]
fn canary_table() {
    insta::assert_snapshot!(screen(canary));
}

#[test]
fn json_and_yaml_are_the_same_view() {
    for f in [shadow, canary] {
        let (json, _) = render(f, OutputFormat::Json, None, &fuller_report());
        let (yaml, _) = render(f, OutputFormat::Yaml, None, &fuller_report());
        let json: Value = serde_json::from_str(&json).unwrap();
        let yaml: Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(json, yaml);
    }
    let (json, _) = render(shadow, OutputFormat::Json, None, &fuller_report());
    let doc: Value = serde_json::from_str(&json).unwrap();
    let search = &doc["routes"][1];
    assert_eq!(search["route"], "search");
    assert_eq!(
        (&search["diff_rate"], &search["fields"][0]["diff_rate"], &search["fields"][0]["noise_rate"]),
        (&Value::Null, &Value::Null, &Value::Null),
        "nothing compared: no rate"
    );
    assert_eq!(
        (&search["guardrail"]["reason"], &search["guardrail"]["resumes_at"]),
        (&Value::Null, &Value::Null)
    );
}
