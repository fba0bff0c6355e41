//! `sluice cache purge`: a route's cache purged on every data plane of a fleet through the
//! control plane (and its other replicas), audited, with each data plane's answer.

#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sluice_tests::*;

/// An origin whose answers may be stored for ten minutes; its body counts the requests.
async fn origin() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let h = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                    async move {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("cache-control", "max-age=600")
                                .body(Full::new(Bytes::from(format!("answer #{n}"))))
                                .unwrap(),
                        )
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_reaches_every_data_plane_of_the_fleet_and_is_audited() {
    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
    // A second replica on the same database: dp-2 is its data plane, and the purge asked of the
    // first reaches it too.
    let replica = ControlPlane::start(&db.url, keys.signing_key()).await;
    let dp1 = DataPlane::start(&cp.url, "edge", "dp-1", &keys.trusted_file, dir.join("dp-1")).await;
    let dp2 = DataPlane::start(&replica.url, "edge", "dp-2", &keys.trusted_file, dir.join("dp-2")).await;
    let (addr, hits) = origin().await;
    let config = format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:8080'}}\npools:\n  - {{name: web, endpoints: [{{address: '{addr}'}}]}}\n\
         routes:\n  - {{name: plain, match: {{path_prefix: /plain}}, pool: web}}\n  - {{name: site, pool: web, cache: {{memory_percent: 50}}}}\n"
    );
    let run = apply(&cp, "edge", &config, &dir, "cache the site").await;
    assert_eq!(run.code, 0, "{run:?}");
    dp1.wait_for_version(1).await;
    dp2.wait_for_version(1).await;
    let dps = [&dp1, &dp2];
    for dp in dps {
        for path in ["/a?x=1", "/b"] {
            try_get(&format!("{}{path}", dp.url())).await.unwrap();
            try_get(&format!("{}{path}", dp.url())).await.unwrap();
        }
    }
    assert_eq!(hits.load(Ordering::SeqCst), 4, "each data plane stored both");
    // Wait until both data planes show as connected in the database.
    eventually!(Duration::from_secs(10), {
        let run = sluice(&["--server", &cp.url, "--fleet", "edge", "dataplanes", "-o", "json"]).await;
        let v: Value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
        v.as_array().is_some_and(|a| a.iter().filter(|d| d["connected"] == true).count() == 2)
    });

    let purge = |args: &'static [&'static str]| {
        let url = cp.url.clone();
        async move {
            let mut all = vec!["--server", &url, "--fleet", "edge", "cache", "purge", "-o", "json"];
            all.extend_from_slice(args);
            sluice(&all).await
        }
    };
    let run = purge(&["--route", "site", "--path", "/a"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["connected"], 2);
    let nodes: Vec<(String, u64)> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node_id"].as_str().unwrap().to_owned(), n["removed"].as_u64().unwrap()))
        .collect();
    assert_eq!(nodes, [("dp-1".to_owned(), 1), ("dp-2".to_owned(), 1)]);
    for dp in dps {
        try_get(&format!("{}/a?x=1", dp.url())).await.unwrap();
        try_get(&format!("{}/b", dp.url())).await.unwrap();
    }
    assert_eq!(hits.load(Ordering::SeqCst), 6, "/a went upstream again on both, /b did not");

    // A route without a cache: every data plane says so, and the command fails.
    let run = purge(&["--route", "plain"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("route `plain` has no cache"), "{run:?}");
    let run = purge(&["--route", "site", "--prefix", "no-slash"]).await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("prefix must start with /"), "{run:?}");

    let run =
        sluice(&["--server", &cp.url, "--fleet", "edge", "audit", "--action", "cache_purge", "-o", "json"])
            .await;
    assert_eq!(run.code, 0, "{run:?}");
    let events: Value = serde_json::from_str(&run.stdout).unwrap();
    let events = events["events"].as_array().or(events.as_array()).cloned().unwrap_or_default();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(events.iter().any(|e| e.to_string().contains(r#""path":"/a""#)), "{events:?}");
    dp1.stop().await;
    dp2.stop().await;
    replica.stop().await;
    cp.stop().await;
}
