//! What operators watch exists: every metric the alert rules (deploy/observability/alerts.yaml)
//! and the Grafana dashboard name is one a real control plane or data plane exports, scraped from
//! their `/metrics`. Families are matched by their `# TYPE` line, so a family counts before its
//! first sample; a histogram's `_bucket`, `_sum` and `_count` count as the histogram.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use sluice_tests::*;

/// Family name → type, from a text-format scrape.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.trim().to_owned()))
        .collect()
}

/// Every `sluice_…` metric name in `text` (recording rules are `sluice:…` and not matched).
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("sluice_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let before = rest[..at].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

fn exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    families.contains_key(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|stem| families.get(stem).is_some_and(|t| t == "histogram"))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_name_is_exported() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    let metrics = cp.serve_metrics().await;
    let up = Upstream::named("up").await;
    let dp = DataPlane::start(&cp.url, "edge", "node-1", &keys.trusted_file, dir.join("n1")).await;
    assert_eq!(apply(&cp, "edge", &config_to(&up), &dir, "v1").await.code, 0);
    dp.wait_for_version(1).await;
    assert_eq!(try_get(&dp.url()).await.unwrap(), "up");

    let mut exports = families(&try_get(&format!("http://{metrics}/metrics")).await.unwrap());
    assert!(exports.contains_key("sluice_cp_applies_total"), "{exports:?}");
    let data_plane = families(&dp.admin_get("/metrics").await);
    assert!(data_plane.contains_key("sluice_requests_total"), "{data_plane:?}");
    exports.extend(data_plane);

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for file in ["deploy/observability/alerts.yaml", "deploy/observability/grafana-dashboard.json"] {
        let names = named(&std::fs::read_to_string(root.join(file)).unwrap());
        assert!(names.len() >= 10, "{file}: {names:?}");
        let missing: Vec<&String> = names.iter().filter(|n| !exported(n, &exports)).collect();
        assert!(missing.is_empty(), "{file} names metrics nothing exports: {missing:?}");
    }
    dp.stop().await;
    cp.stop().await;
}

#[test]
fn names_are_found_and_histograms_match_their_series() {
    let names = named("sum(rate(sluice_requests_total[5m])) / sluice:ratio + x_sluice_not{a=\"sluice_y\"}");
    assert_eq!(names, BTreeSet::from(["sluice_requests_total".to_owned(), "sluice_y".to_owned()]));
    let f = families("# TYPE sluice_d histogram\n# TYPE sluice_c counter\nsluice_c 1\n");
    assert!(exported("sluice_d_bucket", &f) && exported("sluice_c", &f));
    assert!(!exported("sluice_c_count", &f) && !exported("sluice_e", &f));
}
