//! Snapshot swaps under load. `cargo xtask bench --swaps` runs the same for 100 s under wrk.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const WITHIN: Duration = Duration::from_secs(15);

/// Generation `g` of the config: route `app-g`, pool `p-g`, whose one endpoint is upstream
/// `g % 2`. Each generation differs from the one before, so each write is a new version.
fn config(g: usize, upstreams: &[Upstream; 2]) -> String {
    format!(
        "listeners: [{{name: web, address: 127.0.0.1:0, access_log: {{}}}}]\n\
         pools: [{{name: p-{g}, endpoints: [{{address: {}}}]}}]\n\
         routes: [{{name: app-{g}, pool: p-{g}}}]\n",
        upstreams[g % 2].addr
    )
}

/// The number after the last `-` of a route or pool name.
fn generation(name: &Value) -> usize {
    name.as_str().and_then(|n| n.rsplit('-').next()?.parse().ok()).unwrap_or_else(|| panic!("{name}"))
}

/// Ten swaps a second while sixteen clients send requests: not one request fails, and each ran
/// against one version from routing to its access-log line. A request routed by one snapshot
/// and logged by another would show a version whose route, pool or endpoint belongs to another
/// generation, or an answer from the other upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_fail_nothing_and_mix_nothing() {
    let upstreams = [Upstream::named("even").await, Upstream::named("odd").await];
    let proxy = Proxy::start(&config(0, &upstreams));
    let web = proxy.listener("web").await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let client = client();
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let req = request("GET", &format!("http://{web}/")).body(full("")).unwrap();
                    answers.push(try_send(&client, req, scaled(Duration::from_secs(5))).await);
                }
                answers
            })
        })
        .collect();
    let mut written = 0;
    for g in 1..=30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.write_config(&config(g, &upstreams));
        written = g;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    // request id → the upstream that answered
    let mut answered = HashMap::new();
    for client in clients {
        for answer in client.await.unwrap() {
            let (status, headers, body) = answer.unwrap_or_else(|e| panic!("a request failed: {e}"));
            assert_eq!(status, 200, "{body:?}");
            let id = headers["x-request-id"].to_str().unwrap().to_owned();
            answered.insert(id, String::from_utf8_lossy(&body).into_owned());
        }
    }
    assert!(answered.len() > 100, "only {} requests in 3 s", answered.len());

    eventually!(WITHIN, proxy.stdout_lines().len() >= answered.len());
    let names = [upstreams[0].addr.to_string(), upstreams[1].addr.to_string()];
    let mut generation_of_version = HashMap::new();
    for line in proxy.stdout_lines() {
        let line: Value = serde_json::from_str(&line).unwrap();
        let g = generation(&line["route"]);
        assert_eq!(generation(&line["pool"]), g, "{line}");
        assert_eq!(line["endpoint"], names[g % 2].as_str(), "{line}");
        let id = line["request_id"].as_str().unwrap();
        assert_eq!(answered[id], ["even", "odd"][g % 2], "{line}");
        let version = line["config_version"].as_u64().unwrap();
        let seen = *generation_of_version.entry(version).or_insert(g);
        assert_eq!(seen, g, "version {version} logged with two generations: {line}");
    }
    // Versions are counted locally from 1; each generation is one version at most.
    let mut generations: Vec<usize> = generation_of_version.values().copied().collect();
    generations.sort_unstable();
    generations.dedup();
    assert_eq!(generations.len(), generation_of_version.len(), "two versions of one generation");
    // The swaps happened under the load (more than a handful of versions served requests).
    assert!(
        generation_of_version.len() >= 5,
        "requests saw {} of {written} versions",
        generation_of_version.len()
    );
}
