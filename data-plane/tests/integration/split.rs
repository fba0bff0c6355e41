//! Canary, cohort and sticky routing against real upstreams: who answers, in what share, and the
//! safety brake taking a failing canary out of traffic.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;

const WITHIN: Duration = Duration::from_secs(10);

fn config(stable: &Upstream, canary: &Upstream, beta: &Upstream, route_extra: &str) -> String {
    format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    access_log: {{}}\n\
         pools:\n  - name: stable\n    endpoints: [{{address: {}}}]\n    outlier_detection: {{enabled: false}}\n  \
         - name: canary\n    endpoints: [{{address: {}}}]\n    outlier_detection: {{enabled: false}}\n  \
         - name: beta\n    endpoints: [{{address: {}}}]\n\
         routes:\n  - name: app\n    pool: stable\n    retries: {{max_attempts: 1}}\n{route_extra}",
        stable.addr, canary.addr, beta.addr
    )
}

/// Which upstream answered a request to `url` with these headers.
async fn who(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = request("GET", url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(full("")).unwrap()).await.unwrap();
    let upstream =
        resp.headers().get("x-upstream").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (resp.status().as_u16(), upstream)
}

/// Whether `n` draws at rate `p` giving `k` is within 4.5 standard deviations (a false alarm
/// about once in 150,000 runs).
fn plausible(k: usize, n: usize, p: f64) -> bool {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - mean).abs() <= 4.5 * sd
}

#[tokio::test]
async fn the_canary_gets_its_weight_and_cohorts_their_pool() {
    let (s, c, b) =
        (Upstream::start("stable").await, Upstream::start("canary").await, Upstream::start("beta").await);
    let proxy = Proxy::start(&config(
        &s,
        &c,
        &b,
        "    canary: {pool: canary, weight: 20}\n    cohorts: {header: X-Cohort, values: {beta: beta}}\n",
    ));
    let web = proxy.listener("web").await;
    let url = format!("http://{web}/x");

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..600 {
        let (status, upstream) = who(&url, &[]).await;
        assert_eq!(status, 200);
        *counts.entry(upstream).or_default() += 1;
    }
    let canary = counts.get("canary").copied().unwrap_or(0);
    assert_eq!(counts.get("beta"), None, "no cohort header, no beta");
    assert!(plausible(canary, 600, 0.2), "canary got {canary} of 600 at weight 20: {counts:?}");

    // A cohort member always goes to its pool; an unknown cohort value is ordinary traffic.
    for _ in 0..20 {
        assert_eq!(who(&url, &[("x-cohort", "beta")]).await.1, "beta");
    }
    let mut unknown = 0;
    for _ in 0..50 {
        let (_, upstream) = who(&url, &[("x-cohort", "gamma")]).await;
        assert_ne!(upstream, "beta");
        unknown += 1;
    }
    assert_eq!(unknown, 50);

    // Counted by variant, on /canary and in /metrics.
    eventually!(WITHIN, {
        let j = proxy.admin_json("/canary").await;
        let total: u64 = j["routes"][0]["variants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["requests"].as_u64().unwrap())
            .sum();
        total == 670
    });
    let canary_json = proxy.admin_json("/canary").await;
    let route = &canary_json["routes"][0];
    let get = |variant: &str, key: &str| {
        route["variants"].as_array().unwrap().iter().find(|v| v["variant"] == variant).unwrap()[key].clone()
    };
    assert_eq!(get("cohort:beta", "requests").as_u64(), Some(20));
    assert_eq!(get("cohort:beta", "pool").as_str(), Some("beta"));
    assert!(get("stable", "p99_seconds").as_f64().is_some());
    assert_eq!(route["brake"]["weight_percent"].as_f64(), Some(20.0));
    assert_eq!(route["brake"]["engaged"].as_bool(), Some(false));
    // The access log names each request's variant.
    eventually!(WITHIN, proxy.stdout_lines().len() == 670);
    let mut logged: HashMap<String, usize> = HashMap::new();
    for line in proxy.stdout_lines() {
        let line: serde_json::Value = serde_json::from_str(&line).unwrap();
        *logged.entry(line["variant"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(logged.get("cohort:beta"), Some(&20));
    assert_eq!(
        logged.get("canary").copied().unwrap_or(0) as u64,
        get("canary", "requests").as_u64().unwrap()
    );
    assert_eq!(logged.values().sum::<usize>(), 670);
    let metrics = proxy.metrics_text().await;
    assert!(
        metrics.contains(r#"sluice_route_variant_requests_total{route="app",variant="cohort:beta",pool="beta",status_class="2xx"} 20"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_sticky_key_keeps_each_user_on_one_variant() {
    let (s, c, b) =
        (Upstream::start("stable").await, Upstream::start("canary").await, Upstream::start("beta").await);
    let proxy = Proxy::start(&config(
        &s,
        &c,
        &b,
        "    canary: {pool: canary, weight: 30, sticky: {cookie: session}}\n",
    ));
    let web = proxy.listener("web").await;
    let url = format!("http://{web}/x");
    let mut on_canary = 0;
    for user in 0..200 {
        let cookie = format!("theme=dark; session=user-{user}");
        let (_, first) = who(&url, &[("cookie", &cookie)]).await;
        for _ in 0..4 {
            assert_eq!(who(&url, &[("cookie", &cookie)]).await.1, first, "user-{user} switched variants");
        }
        if first == "canary" {
            on_canary += 1;
        }
    }
    assert!(plausible(on_canary, 200, 0.3), "{on_canary} of 200 users on the canary at weight 30");

    // Raising the weight only moves users onto the canary, never off it.
    let before: Vec<bool> = {
        let mut v = Vec::new();
        for user in 0..100 {
            v.push(who(&url, &[("cookie", &format!("session=user-{user}"))]).await.1 == "canary");
        }
        v
    };
    proxy.write_config(&config(
        &s,
        &c,
        &b,
        "    canary: {pool: canary, weight: 60, sticky: {cookie: session}}\n",
    ));
    eventually!(WITHIN, proxy.version().await == 2);
    for (user, was_canary) in before.iter().enumerate() {
        if *was_canary {
            assert_eq!(who(&url, &[("cookie", &format!("session=user-{user}"))]).await.1, "canary");
        }
    }
}

#[tokio::test]
async fn the_brake_takes_a_failing_canary_out_until_its_config_changes() {
    let (s, c, b) =
        (Upstream::start("stable").await, Upstream::start("canary").await, Upstream::start("beta").await);
    c.set_fault(Fault::Status(503));
    let canary = |weight: u32| {
        format!(
            "    canary: {{pool: canary, weight: {weight}, brake: {{max_error_percent: 10, min_requests: 10, window: 1m}}}}\n"
        )
    };
    let proxy = Proxy::start(&config(&s, &c, &b, &canary(50)));
    let web = proxy.listener("web").await;
    let url = format!("http://{web}/x");

    // The canary fails every request; once 10 have, the brake engages and only stable answers.
    let mut failures = 0;
    for _ in 0..200 {
        if who(&url, &[]).await.0 == 503 {
            failures += 1;
        }
    }
    assert!((10..=40).contains(&failures), "{failures} failed requests before the brake engaged");
    eventually!(WITHIN, proxy.admin_json("/canary").await["routes"][0]["brake"]["engaged"] == true);
    for _ in 0..50 {
        assert_eq!(who(&url, &[]).await, (200, "stable".to_owned()));
    }
    let j = proxy.admin_json("/canary").await;
    let reason = j["routes"][0]["brake"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("error rate 100.0% > 10.0% over"), "{reason}");
    assert!(proxy.metrics_text().await.contains("sluice_canary_brake_engaged{route=\"app\"} 1"));

    // A config that leaves the canary as it was keeps the brake on...
    c.set_fault(Fault::None);
    proxy.write_config(&format!(
        "{}  - name: other\n    match: {{path_prefix: /other}}\n    pool: stable\n",
        config(&s, &c, &b, &canary(50))
    ));
    eventually!(WITHIN, proxy.version().await == 2);
    for _ in 0..30 {
        assert_eq!(who(&url, &[]).await.1, "stable");
    }
    // ...and one that changes it releases it.
    proxy.write_config(&config(&s, &c, &b, &canary(40)));
    eventually!(WITHIN, proxy.version().await == 3);
    let mut reached = false;
    for _ in 0..100 {
        reached |= who(&url, &[]).await.1 == "canary";
    }
    assert!(reached, "the canary gets traffic again after its config changed");
    assert_eq!(proxy.admin_json("/canary").await["routes"][0]["brake"]["engaged"], false);
}
