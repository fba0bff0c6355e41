//! Mirroring against real upstreams: clients never wait for or see the shadow, the diff finds
//! what changed (and not what is ignored or noise) without leaking masked values, and the
//! guardrail stops and resumes mirroring.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(15);

fn config(primary: &Upstream, candidate: &str, mirror: &str) -> String {
    config_with(primary, candidate, "", mirror)
}

/// `extra_pools` is more pool entries, YAML list items indented by two spaces.
fn config_with(primary: &Upstream, candidate: &str, extra_pools: &str, mirror: &str) -> String {
    format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:0\n\
         pools:\n  - name: primary\n    endpoints: [{{address: {}}}]\n  \
         - name: candidate\n    endpoints: [{{address: {candidate}}}]\n    outlier_detection: {{enabled: false}}\n\
         {extra_pools}\
         routes:\n  - name: app\n    pool: primary\n    mirror:\n{mirror}",
        primary.addr
    )
}

async fn shadow(proxy: &Proxy) -> Value {
    proxy.admin_json("/shadow").await["routes"][0].clone()
}

async fn post_admin(proxy: &Proxy, path: &str) -> (u16, Value) {
    let url = format!("http://{}{path}", proxy.admin);
    let (status, _, body) = send(&client(), request("POST", &url).body(full("")).unwrap()).await;
    (status.as_u16(), body)
}

#[tokio::test]
async fn clients_never_wait_for_a_slow_shadow() {
    let primary = Upstream::start("primary").await;
    let candidate = Upstream::start("candidate").await;
    candidate.set_fault(Fault::Slow(Duration::from_secs(5)));
    let proxy = Proxy::start(&config(
        &primary,
        &candidate.addr.to_string(),
        "      pool: candidate\n      timeout: 5s\n",
    ));
    let web = proxy.listener("web").await;

    // The primary takes 50 ms; the shadow 5 s. Ten requests one after another.
    let started = Instant::now();
    for _ in 0..10 {
        let t = Instant::now();
        let (status, body) = get(&format!("http://{web}/slow/50")).await;
        assert_eq!(status, 200, "{body}");
        assert!(t.elapsed() < scaled(Duration::from_secs(1)), "a request waited {:?}", t.elapsed());
    }
    assert!(started.elapsed() < scaled(Duration::from_secs(5)), "took {:?}", started.elapsed());

    // The candidate got a marked copy of each; the primary saw no mark.
    eventually!(WITHIN, candidate.hits() == 10);
    let seen = candidate.seen();
    assert!(
        seen.iter().all(|r| r["headers"]["x-sluice-shadow"][0] == "1" && r["path"] == "/slow/50"),
        "{seen:?}"
    );
    assert!(primary.seen().iter().all(|r| r["headers"].get("x-sluice-shadow").is_none()));
    let s = shadow(&proxy).await;
    assert_eq!(s["sent"], 10);
    assert_eq!(s["pool"], "candidate");
}

#[tokio::test]
async fn a_dead_or_black_holed_shadow_costs_clients_nothing() {
    let primary = Upstream::start("primary").await;
    let hung = Upstream::start("hung").await;
    hung.set_fault(Fault::Hang);
    for candidate in ["127.0.0.1:1".to_owned(), hung.addr.to_string()] {
        let proxy = Proxy::start(&config(
            &primary,
            &candidate,
            "      pool: candidate\n      timeout: 1s\n      guardrail: {enabled: false}\n",
        ));
        let web = proxy.listener("web").await;
        for _ in 0..20 {
            let t = Instant::now();
            assert_eq!(get(&format!("http://{web}/x")).await.0, 200);
            assert!(t.elapsed() < scaled(Duration::from_secs(1)));
        }
        // Every copy fails (refused, or the 1 s timeout), and is counted as failed.
        eventually!(WITHIN, shadow(&proxy).await["failed"] == 20);
        let m = proxy.metrics_text().await;
        assert!(
            m.contains(r#"sluice_mirror_requests_total{route="app",pool="candidate",result="failed"} 20"#),
            "{m}"
        );
    }
}

#[tokio::test]
async fn the_diff_finds_a_changed_field_but_not_ignored_ones_or_noise_and_masks_pii() {
    let primary = Upstream::start("primary").await;
    let candidate = Upstream::start("candidate").await;
    let baseline = Upstream::start("baseline").await;
    let doc = |age: u32, served_by: &str| {
        json!({"user": {"id": 7, "email": "jane.doe@example.com", "phone": "+44 20 7946 0958", "age": age,
               "note": "card 4111 1111 1111 1111 on file"}, "served_by": served_by})
    };
    primary.set_doc(doc(30, "primary"));
    candidate.set_doc(doc(31, "candidate"));
    baseline.set_doc(doc(30, "baseline"));
    let cfg = config_with(
        &primary,
        &candidate.addr.to_string(),
        &format!("  - name: baseline\n    endpoints: [{{address: {}}}]\n", baseline.addr),
        "      pool: candidate\n      diff:\n        ignore: [/timestamp, /request_id]\n        \
         baseline: {pool: baseline, fraction: 1}\n",
    );
    let proxy = Proxy::start(&cfg);
    let web = proxy.listener("web").await;
    for _ in 0..20 {
        let (status, body) = get(&format!("http://{web}/doc")).await;
        assert_eq!(status, 200);
        assert!(body.contains("\"age\":30"), "clients get the primary's answer: {body}");
    }
    eventually!(WITHIN, shadow(&proxy).await["compared"] == 20);
    eventually!(WITHIN, shadow(&proxy).await["baseline_compared"] == 20);
    let s = shadow(&proxy).await;
    let field = |name: &str| s["fields"].as_array().unwrap().iter().find(|f| f["field"] == name).cloned();
    let age = field("/user/age").unwrap();
    assert_eq!(
        (age["differed"].as_u64(), age["diff_rate"].as_f64(), age["significant"].as_bool()),
        (Some(20), Some(1.0), Some(true))
    );
    // `served_by` differs between any two servers: the baseline shows it is noise.
    let served_by = field("/served_by").unwrap();
    assert_eq!((served_by["noise"].as_u64(), served_by["significant"].as_bool()), (Some(20), Some(false)));
    assert!(field("/timestamp").is_none() && field("/request_id").is_none(), "{s}");
    assert!(field("/user/email").is_none(), "unchanged fields are not reported");

    // Samples say what differed, with PII masked.
    let samples = s["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 10, "the default ring keeps 10");
    assert!(samples[0]["fields"].as_array().unwrap().iter().any(|f| f == "/user/age"));
    let everything = proxy.admin_json("/shadow").await.to_string() + &proxy.metrics_text().await;
    for secret in ["jane.doe@example.com", "7946 0958", "4111 1111 1111 1111"] {
        assert!(!everything.contains(secret), "{secret} leaked: {everything}");
    }
    assert!(samples[0]["candidate"].as_str().unwrap().contains("31"), "{}", samples[0]);
    let m = proxy.metrics_text().await;
    assert!(m.contains(r#"sluice_mirror_diffs_total{route="app",field="/user/age"} 20"#), "{m}");
    assert!(m.contains(r#"sluice_mirror_compared_total{route="app"} 20"#));
}

#[tokio::test]
async fn the_guardrail_stops_a_slow_candidate_and_resumes_after_the_cooldown() {
    let primary = Upstream::start("primary").await;
    let candidate = Upstream::start("candidate").await;
    candidate.set_fault(Fault::Slow(Duration::from_millis(300)));
    let proxy = Proxy::start(&config(
        &primary,
        &candidate.addr.to_string(),
        "      pool: candidate\n      guardrail: {latency_ratio: 2, consecutive: 3, cooldown: 2s}\n",
    ));
    let web = proxy.listener("web").await;
    let url = format!("http://{web}/x");

    // Three slow pairs in a row trip it.
    for _ in 0..3 {
        assert_eq!(get(&url).await.0, 200);
    }
    eventually!(WITHIN, shadow(&proxy).await["guardrail"]["state"] == "tripped");
    let s = shadow(&proxy).await;
    let reason = s["guardrail"]["reason"].as_str().unwrap();
    assert!(reason.starts_with("3 bad pairs in a row; the last: the candidate took 3"), "{reason}");
    assert!(s["guardrail"]["resumes_at"].is_string());
    assert!(proxy.metrics_text().await.contains("sluice_mirror_guardrail_open{route=\"app\"} 1"));

    // While tripped, nothing is mirrored and the drops say why.
    let hits = candidate.hits();
    for _ in 0..5 {
        assert_eq!(get(&url).await.0, 200);
    }
    assert_eq!(candidate.hits(), hits);
    assert_eq!(shadow(&proxy).await["dropped"]["guardrail"], 5);

    // After the cooldown, mirroring resumes; a fast candidate keeps it on.
    candidate.set_fault(Fault::None);
    eventually!(WITHIN, {
        let _ = get(&url).await;
        shadow(&proxy).await["guardrail"]["state"] == "active"
    });
    let hits = candidate.hits();
    for _ in 0..5 {
        assert_eq!(get(&url).await.0, 200);
    }
    eventually!(WITHIN, candidate.hits() == hits + 5);
    let s = shadow(&proxy).await;
    assert_eq!(
        (s["guardrail"]["state"].as_str(), s["guardrail"]["trips"].as_u64()),
        (Some("active"), Some(1))
    );

    // An operator can turn it off and on.
    let (status, body) = post_admin(&proxy, "/shadow/disable?route=app").await;
    assert_eq!((status, body["guardrail"]["state"].as_str()), (200, Some("disabled")));
    let hits = candidate.hits();
    assert_eq!(get(&url).await.0, 200);
    assert_eq!(candidate.hits(), hits);
    assert_eq!(post_admin(&proxy, "/shadow/enable?route=app").await.0, 200);
    assert_eq!(get(&url).await.0, 200);
    eventually!(WITHIN, candidate.hits() == hits + 1);
    assert_eq!(post_admin(&proxy, "/shadow/disable?route=nope").await.0, 404);
    assert_eq!(post_admin(&proxy, "/shadow/disable").await.0, 400);
}

#[tokio::test]
async fn bodies_are_mirrored_whole_or_not_at_all_and_the_in_flight_cap_holds() {
    let primary = Upstream::start("primary").await;
    let candidate = Upstream::start("candidate").await;
    let proxy = Proxy::start(&config(
        &primary,
        &candidate.addr.to_string(),
        "      pool: candidate\n      methods: [POST]\n      max_body: 1KiB\n      diff: {ignore: [/upstream]}\n",
    ));
    let web = proxy.listener("web").await;
    let post = |body: Vec<u8>| {
        let url = format!("http://{web}/upload");
        async move { send(&client(), request("POST", &url).body(full(body)).unwrap()).await }
    };
    // A small body reaches the candidate whole: both answer with the byte count, no diff.
    for _ in 0..3 {
        let (status, _, body) = post(vec![b'a'; 700]).await;
        assert_eq!((status.as_u16(), body["received"].as_u64()), (200, Some(700)));
    }
    eventually!(WITHIN, shadow(&proxy).await["compared"] == 3);
    assert_eq!(shadow(&proxy).await["differed"], 0);
    // Larger ones are not mirrored, and are counted: one announced by its Content-Length, one
    // (3 KiB, chunked) found out while it streams to the primary.
    let (status, _, body) = post(vec![b'a'; 100_000]).await;
    assert_eq!((status.as_u16(), body["received"].as_u64()), (200, Some(100_000)));
    let url = format!("http://{web}/upload");
    let (status, _, _) =
        send(&client(), request("POST", &url).body(trickle(3, Duration::from_millis(10))).unwrap()).await;
    assert_eq!(status, 200);
    eventually!(WITHIN, shadow(&proxy).await["dropped"]["body_too_large"] == 2);
    assert_eq!(candidate.hits(), 3, "only the three small posts");
    // GET is not in `methods`: not mirrored.
    assert_eq!(get(&format!("http://{web}/x")).await.0, 200);

    // At most max_in_flight copies at once; the rest are dropped and counted.
    let hung = Upstream::start("hung").await;
    hung.set_fault(Fault::Hang);
    let proxy = Proxy::start(&config(
        &primary,
        &hung.addr.to_string(),
        "      pool: candidate\n      max_in_flight: 2\n      timeout: 30s\n",
    ));
    let web = proxy.listener("web").await;
    for _ in 0..5 {
        assert_eq!(get(&format!("http://{web}/x")).await.0, 200);
    }
    let s = shadow(&proxy).await;
    assert_eq!((s["sent"].as_u64(), s["dropped"]["in_flight"].as_u64()), (Some(2), Some(3)), "{s}");
}

#[tokio::test]
async fn the_mirrored_share_is_decided_by_request_id() {
    let primary = Upstream::start("primary").await;
    let candidate = Upstream::start("candidate").await;
    let proxy = Proxy::start(&config(
        &primary,
        &candidate.addr.to_string(),
        "      pool: candidate\n      fraction: 0.25\n",
    ));
    let web = proxy.listener("web").await;
    let url = format!("http://{web}/x");
    for i in 0..400 {
        let req = request("GET", &url).header("x-request-id", format!("req-{i}")).body(full("")).unwrap();
        assert_eq!(send(&client(), req).await.0, 200);
    }
    eventually!(WITHIN, candidate.hits() == shadow(&proxy).await["sent"].as_u64().unwrap() as usize);
    let mirrored: Vec<String> = candidate
        .seen()
        .iter()
        .map(|r| r["headers"]["x-request-id"][0].as_str().unwrap().to_owned())
        .collect();
    let k = mirrored.len() as f64;
    assert!((k - 100.0).abs() <= 4.5 * (400.0f64 * 0.25 * 0.75).sqrt(), "{k} of 400 mirrored at 0.25");
    // The same id again gets the same answer.
    let before = candidate.hits();
    for id in mirrored.iter().take(5) {
        let req = request("GET", &url).header("x-request-id", id.as_str()).body(full("")).unwrap();
        send(&client(), req).await;
    }
    let not_mirrored = (0..400).map(|i| format!("req-{i}")).find(|id| !mirrored.contains(id)).unwrap();
    for _ in 0..5 {
        let req = request("GET", &url).header("x-request-id", not_mirrored.as_str()).body(full("")).unwrap();
        send(&client(), req).await;
    }
    eventually!(WITHIN, candidate.hits() == before + 5);
}

/// A chunked request body that ends in a trailer.
struct WithTrailer(u8);

impl http_body::Body for WithTrailer {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        self.0 += 1;
        std::task::Poll::Ready(match self.0 {
            1 => Some(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"some data")))),
            2 => {
                let mut trailers = http::HeaderMap::new();
                trailers.insert("x-checksum", "abc".parse().unwrap());
                Some(Ok(http_body::Frame::trailers(trailers)))
            }
            _ => None,
        })
    }
}

#[tokio::test]
async fn a_body_ending_in_trailers_is_not_mirrored_and_says_so() {
    use http_body_util::BodyExt as _;
    let primary = Upstream::start("primary").await;
    let candidate = Upstream::start("candidate").await;
    let proxy = Proxy::start(&config(
        &primary,
        &candidate.addr.to_string(),
        "      pool: candidate\n      methods: [POST]\n",
    ));
    let web = proxy.listener("web").await;
    // hyper sends request trailers only when the `Trailer` header announces them.
    let req = request("POST", &format!("http://{web}/upload"))
        .header("trailer", "x-checksum")
        .body(WithTrailer(0).boxed())
        .unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!((status.as_u16(), body["received"].as_u64()), (200, Some(9)));
    eventually!(WITHIN, shadow(&proxy).await["dropped"]["trailers"] == 1);
    assert_eq!(shadow(&proxy).await["dropped"]["body_too_large"], 0);
    assert_eq!(candidate.hits(), 0);
}
