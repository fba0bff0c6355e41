//! The proxy binary against real upstreams on 127.0.0.1: routing, balancing, errors, streaming,
//! reloads, strict parsing, HTTP/2 and draining.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::support::*;
use http::StatusCode;
use http_body_util::BodyExt;
use serde_json::Value;

/// One listener, pool `p` with `up` as its endpoint, and route `r` to it; the extras are more
/// fields for the pool and the route (`", protocol: http2"`, `", timeout: 60s"`).
fn one_route(up: &Upstream, pool_extra: &str, route_extra: &str) -> String {
    format!(
        "{}pools:\n  - {{name: p{pool_extra}, endpoints: [{{address: '{}'}}]}}\nroutes:\n  - {{name: r, pool: p{route_extra}}}\n",
        listener_only(),
        up.addr
    )
}

fn listener_only() -> String {
    "listeners:\n  - {name: public, address: '127.0.0.1:0'}\n".to_owned()
}

/// Two upstreams routed by host and path.
fn two_upstreams(a: &Upstream, b: &Upstream) -> String {
    format!(
        "{}pools:\n  - {{name: a, endpoints: [{{address: '{}'}}]}}\n  - {{name: b, endpoints: [{{address: '{}'}}]}}\n\
         routes:\n  - {{name: api-users, match: {{host: api.example.com, path_prefix: /users}}, pool: b}}\n  - {{name: default, pool: a}}\n",
        listener_only(),
        a.addr,
        b.addr
    )
}

#[tokio::test]
async fn routes_by_host_and_path_and_sets_forwarding_headers() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let proxy = Proxy::start(&two_upstreams(&a, &b));
    let url = format!("http://{}", proxy.listener("public").await);
    let c = client();

    let req = request("GET", &format!("{url}/users/7?x=1"))
        .header("host", "api.example.com")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("x-forwarded-for", "203.0.113.9")
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(&c, req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["upstream"], "b");
    assert_eq!(body["path"], "/users/7?x=1");
    let seen = &body["headers"];
    assert_eq!(seen["host"][0], "api.example.com", "the client's Host is kept");
    assert_eq!(seen["x-forwarded-for"][0], "203.0.113.9, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"][0], "http");
    assert_eq!(seen["x-forwarded-host"][0], "api.example.com");
    assert!(seen.get("x-hop").is_none(), "headers named by Connection are hop-by-hop");
    assert!(seen.get("connection").is_none());
    // A request id is generated, sent upstream, and returned.
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(seen["x-request-id"][0], id);
    assert!(headers.get("keep-alive").is_none(), "the upstream's hop-by-hop headers are dropped");

    // Another host, and a path outside /users, go to the default route; a given id is kept.
    for (host, path) in [("www.example.com", "/users/7"), ("api.example.com", "/usersx")] {
        let req = request("GET", &format!("{url}{path}"))
            .header("host", host)
            .header("x-request-id", "trace-me-42")
            .body(full(""))
            .unwrap();
        let (status, headers, body) = send(&c, req).await;
        assert_eq!((status, body["upstream"].as_str()), (StatusCode::OK, Some("a")), "{host}{path}");
        assert_eq!(headers["x-request-id"], "trace-me-42");
        assert_eq!(body["headers"]["x-request-id"][0], "trace-me-42");
    }
}

#[tokio::test]
async fn unmatched_down_and_slow_upstreams_get_json_errors() {
    let slow = Upstream::start("slow").await;
    let down = Upstream::start("down").await.stop();
    let config = format!(
        "{}pools:\n  - {{name: slow, endpoints: [{{address: '{}'}}]}}\n  - {{name: down, endpoints: [{{address: '{down}'}}], connect_timeout: 1s}}\n\
         routes:\n  - {{name: slow, match: {{path_prefix: /slow}}, pool: slow, timeout: 300ms}}\n  - {{name: down, match: {{path_prefix: /down}}, pool: down}}\n",
        listener_only(),
        slow.addr
    );
    let proxy = Proxy::start(&config);
    let url = format!("http://{}", proxy.listener("public").await);
    let c = client();
    let cases = [
        ("/nowhere", StatusCode::NOT_FOUND, "no_route"),
        ("/down/x", StatusCode::BAD_GATEWAY, "connect_failure"),
        ("/slow/5000", StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
    ];
    for (path, want_status, want_category) in cases {
        let started = Instant::now();
        let (status, headers, body) =
            send(&c, request("GET", &format!("{url}{path}")).body(full("")).unwrap()).await;
        assert_eq!(status, want_status, "{path}: {body}");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body["category"], want_category, "{path}: {body}");
        assert_eq!(body["request_id"], headers["x-request-id"].to_str().unwrap());
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert!(started.elapsed() < scaled(Duration::from_secs(3)), "{path} took {:?}", started.elapsed());
    }
    // The slow upstream still answers within the route's timeout.
    let (status, _, _) = send(&c, request("GET", &format!("{url}/slow/10")).body(full("")).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn balancers_spread_requests_as_configured() {
    let ups = [Upstream::start("u0").await, Upstream::start("u1").await, Upstream::start("u2").await];
    let eps = |w: [u32; 3]| {
        ups.iter()
            .zip(w)
            .map(|(u, w)| format!("{{address: '{}', weight: {w}}}", u.addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let config = [
        listener_only(),
        "pools:\n".to_owned(),
        format!("  - {{name: rr, balancer: round_robin, endpoints: [{}]}}\n", eps([1, 1, 1])),
        format!("  - {{name: w, balancer: weighted, endpoints: [{}]}}\n", eps([3, 1, 1])),
        format!("  - {{name: lr, balancer: least_request, endpoints: [{}]}}\n", eps([1, 1, 1])),
        format!(
            "  - {{name: ch, balancer: consistent_hash, hash_on: {{header: x-user}}, endpoints: [{}]}}\n",
            eps([1, 1, 1])
        ),
        "routes:\n".to_owned(),
        "  - {name: rr, match: {path_prefix: /rr}, pool: rr}\n".to_owned(),
        "  - {name: w, match: {path_prefix: /w}, pool: w}\n".to_owned(),
        "  - {name: lr, match: {path_prefix: /lr}, pool: lr}\n".to_owned(),
        "  - {name: ch, match: {path_prefix: /ch}, pool: ch}\n".to_owned(),
    ]
    .concat();
    let proxy = Proxy::start(&config);
    let url = format!("http://{}", proxy.listener("public").await);
    let c = client();
    let tally = async |path: &str, n: usize, user: Option<&str>| {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..n {
            let mut req = request("GET", &format!("{url}{path}"));
            if let Some(u) = user {
                req = req.header("x-user", u);
            }
            let (status, _, body) = send(&c, req.body(full("")).unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            *counts.entry(body["upstream"].as_str().unwrap().to_owned()).or_default() += 1;
        }
        let mut v: Vec<usize> =
            ["u0", "u1", "u2"].iter().map(|u| counts.get(*u).copied().unwrap_or(0)).collect();
        v.shrink_to_fit();
        v
    };
    assert_eq!(tally("/rr", 30, None).await, [10, 10, 10]);
    assert_eq!(tally("/w", 50, None).await, [30, 10, 10]);
    let lr = tally("/lr", 60, None).await;
    assert!(lr.iter().all(|n| *n > 0), "sequential requests spread over all endpoints: {lr:?}");
    // The same user always lands on the same endpoint; different users spread out.
    for user in ["alice", "bob", "carol"] {
        let counts = tally("/ch", 10, Some(user)).await;
        assert!(counts.contains(&10), "{user}: {counts:?}");
    }
    let mut used = [false; 3];
    for i in 0..60 {
        let counts = tally("/ch", 1, Some(&format!("user-{i}"))).await;
        used[counts.iter().position(|n| *n == 1).unwrap()] = true;
    }
    assert_eq!(used, [true; 3]);
}

#[tokio::test]
async fn idle_and_slow_clients_are_disconnected() {
    let up = Upstream::start("u").await;
    let config = format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:0', idle_timeout: 300ms}}\npools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\nroutes:\n  - {{name: r, pool: p}}\n",
        up.addr
    );
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;
    // The upstream runs on this test's runtime, so the client side must not block it.
    async fn closed_within(mut s: tokio::net::TcpStream) -> (Duration, String) {
        use tokio::io::AsyncReadExt;
        let started = Instant::now();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("the proxy closes the connection rather than leaving it open")
            .unwrap();
        (started.elapsed(), String::from_utf8_lossy(&buf).into_owned())
    }
    use tokio::io::AsyncWriteExt;
    // Kept alive after a response, then idle.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let (waited, text) = closed_within(s).await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(waited < scaled(Duration::from_secs(2)), "idle connection lived {waited:?}");
    // A head that never finishes.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ").await.unwrap();
    let (waited, _) = closed_within(s).await;
    assert!(waited < scaled(Duration::from_secs(2)), "slow head lived {waited:?}");
    // A connection that never sends a byte.
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (waited, _) = closed_within(s).await;
    assert!(waited < scaled(Duration::from_secs(2)), "silent connection lived {waited:?}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn a_stalled_upstream_body_is_cut_off_after_the_idle_timeout() {
    let up = Upstream::start("stall").await;
    let config = one_route(&up, "", ", idle_timeout: 300ms");
    let proxy = Proxy::start(&config);
    let url = format!("http://{}/stall/1000", proxy.listener("public").await);
    let started = Instant::now();
    let resp = client().get(url.parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "headers arrive before the stall");
    let body = resp.into_body().collect().await;
    assert!(body.is_err(), "the client sees the body fail, not a short success");
    assert!(started.elapsed() < scaled(Duration::from_secs(3)), "cut off after {:?}", started.elapsed());
}

#[tokio::test]
async fn bodies_stream_through_with_bounded_memory() {
    const SIZE: u64 = 100 << 20;
    let up = Upstream::start("big").await;
    let config = one_route(&up, "", "");
    let proxy = Proxy::start(&config);
    let url = format!("http://{}", proxy.listener("public").await);
    let before = proxy.rss();

    // Download: count bytes as they arrive, never holding the body.
    let resp = client().get(format!("{url}/bytes/{SIZE}").parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        got += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(got, SIZE);

    // Upload: generated as it is sent, counted by the upstream as it arrives.
    let req = request("POST", &format!("{url}/upload")).body(zeros(SIZE)).unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["received"], SIZE);

    let peak = proxy.peak_rss();
    assert!(
        peak < before + (32 << 20),
        "peak RSS {} MiB (idle {} MiB) for a {} MiB body",
        peak >> 20,
        before >> 20,
        SIZE >> 20
    );
}

#[tokio::test]
async fn reloads_under_load_without_failed_requests() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let config_for = |u: &Upstream, extra_route: bool| {
        let mut c = one_route(u, "", "");
        if extra_route {
            c.push_str("  - {name: extra, match: {path: /extra}, pool: p}\n");
        }
        c
    };
    let proxy = Proxy::start(&config_for(&a, false));
    let url = format!("http://{}/load", proxy.listener("public").await);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (url, stop) = (url.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match c.get(url.parse().unwrap()).await {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        resp.into_body().collect().await.unwrap();
                        ok += 1;
                    }
                    Ok(resp) => failed.push(resp.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    // Ten reloads, alternating upstreams, each confirmed by the version moving on.
    for i in 0..10u64 {
        let target = if i % 2 == 0 { &b } else { &a };
        proxy.write_config(&config_for(target, i % 3 == 0));
        eventually!(Duration::from_secs(10), proxy.version().await == i + 2);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for w in workers {
        let (ok, failed) = w.await.unwrap();
        assert!(failed.is_empty(), "failed requests during reloads: {failed:?}");
        total += ok;
    }
    assert!(total > 100, "only {total} requests were made");
    assert!(a.hits() > 0 && b.hits() > 0, "traffic moved between upstreams: a={} b={}", a.hits(), b.hits());
}

#[tokio::test]
async fn an_invalid_reload_is_refused_and_traffic_continues() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let good = one_route(&a, "", "");
    let mut proxy = Proxy::start(&good);
    let url = format!("http://{}/", proxy.listener("public").await);

    let bad = format!(
        "{}pools:\n  - {{name: p, endpoints: [{{address: '{}', weight: 0}}]}}\nroutes:\n  - {{name: r, pool: missing, timeout: soon}}\n",
        listener_only(),
        b.addr
    );
    proxy.write_config(&bad);
    proxy.wait_for_log("config rejected", Duration::from_secs(10));
    let config = proxy.admin_json("/config").await;
    assert_eq!(config["active"]["version"], 1);
    assert_eq!(config["last_attempt"]["accepted"], false);
    let errors: Vec<&str> =
        config["last_attempt"]["errors"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    for want in [
        "pools[0].endpoints[0].weight: ",
        "routes[0].pool: unknown pool `missing`",
        "routes[0].timeout: invalid duration",
    ] {
        assert!(errors.iter().any(|e| e.starts_with(want)), "{want:?} not in {errors:?}");
    }
    let logged = proxy.logs().join("\n");
    assert!(logged.contains("routes[0].pool: unknown pool `missing`"), "every error is logged:\n{logged}");

    let (status, body) = get(&url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"upstream\":\"a\""), "{body}");

    // A fixed file is picked up on SIGHUP even without another change.
    let fixed = good.replace(&a.addr.to_string(), &b.addr.to_string());
    proxy.write_config(&fixed);
    proxy.signal("HUP");
    eventually!(Duration::from_secs(10), get(&url).await.1.contains("\"upstream\":\"b\""));
    assert_eq!(proxy.admin_json("/config").await["last_attempt"]["accepted"], true);
}

/// Sends `wire` on a fresh connection and returns everything the proxy sent until it closed.
fn exchange_until_close(addr: std::net::SocketAddr, wire: &[u8]) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(wire).unwrap();
    let mut out = Vec::new();
    // read_to_end returns only when the proxy closes the connection.
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn smuggling_shaped_requests_get_400_close_and_reach_nobody() {
    let up = Upstream::start("victim").await;
    let config =
        one_route(&up, "", "").replace("address: '127.0.0.1:0'", "address: '127.0.0.1:0', access_log: {}");
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;
    // Each carries a second request after what a lenient parser takes as the end of the first.
    let te = |fields: &str| {
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
        )
    };
    let attacks = [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nContent-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\nHost: a\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n".to_owned(),
        // `chunked` applied twice (RFC 9112 §6.1), in one line and across lines.
        te("Transfer-Encoding: chunked, chunked\r\n"),
        te("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
        te("Transfer-Encoding: gzip, chunked\r\nTransfer-Encoding: chunked\r\n"),
        // A coding after `chunked`, so `chunked` is not final (RFC 9112 §6.3).
        te("Transfer-Encoding: chunked, gzip\r\n"),
        te("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"),
        // Empty list elements next to `chunked`: parsers disagree on them.
        te("Transfer-Encoding: , chunked\r\n"),
        te("Transfer-Encoding: chunked,\r\n"),
        // Framing fields a lenient parser reads and a strict one ignores (or the reverse):
        // whitespace before the colon (RFC 9112 §5.1), `_` for `-` (CGI/WSGI map both to one
        // name), a control character around `chunked`, chunked on HTTP/1.0.
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length : 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
        te("Transfer-Encoding : chunked\r\nContent-Length: 5\r\n"),
        "POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
        te("Transfer_Encoding: chunked\r\nContent-Length: 5\r\n"),
        te("Transfer-Encoding: \x0cchunked\r\n"),
        te("Transfer-Encoding: chunked\x0b\r\n"),
        "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
        // Control characters, a bare CR, an empty or broken field name, a broken request line.
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\rContent-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: a\r\n\rX: b\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: a\r\nX\x01Y: b\r\n\r\n".to_owned(),
        "GET / HTTP/1.1\r\nHost: a\r\n: no name\r\n\r\n".to_owned(),
        "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
        "GET /  HTTP/1.1\r\nHost: a\r\n\r\n".to_owned(),
        "GET / HTTP/1.1 \r\nHost: a\r\n\r\n".to_owned(),
        "GET / HTTP/1.10\r\nHost: a\r\n\r\n".to_owned(),
    ];
    for attack in &attacks {
        let text = exchange_until_close(addr, attack.as_bytes());
        // An HTTP/1.0 request is answered in HTTP/1.0.
        assert!(
            text.starts_with("HTTP/1.1 400 ") || text.starts_with("HTTP/1.0 400 "),
            "{attack}\n=> {text}"
        );
        assert_eq!(
            text.matches("HTTP/1.").count(),
            1,
            "exactly one response, then close: {attack}\n=> {text}"
        );
    }
    // Host rules (RFC 9112 §3.2): one Host in HTTP/1.1; HTTP/1.0 may go without.
    for wire in ["GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "GET / HTTP/1.1\r\nX-No-Host: 1\r\n\r\n"] {
        let text = exchange_until_close(addr, wire.as_bytes());
        assert!(text.starts_with("HTTP/1.1 400 ") && text.contains("Host header"), "{text}");
    }
    assert_eq!(up.hits(), 0, "nothing reached the upstream");

    // Every refusal is counted and logged as a bad request, whichever parser refused it first.
    let refused = attacks.len() + 2;
    let want =
        format!("sluice_listener_errors_total{{listener=\"public\",category=\"bad_request\"}} {refused}");
    eventually!(Duration::from_secs(10), proxy.metrics_text().await.contains(&want));
    eventually!(Duration::from_secs(10), proxy.stdout_lines().len() >= refused);
    let lines: Vec<Value> = proxy.stdout_lines().iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), refused, "one access-log line per refusal");
    for line in &lines {
        assert_eq!(
            (&line["status"], &line["error"]),
            (&Value::from(400), &Value::from("bad_request")),
            "{line}"
        );
    }
    let answered =
        format!("sluice_listener_requests_total{{listener=\"public\",status_class=\"4xx\"}} {refused}");
    assert!(proxy.metrics_text().await.contains(&answered), "hyper's own 400s count as responses too");

    // A well-formed keep-alive request on the same proxy still works, as does HTTP/1.0 without Host.
    let (status, _) = get(&format!("http://{addr}/")).await;
    assert_eq!(status, StatusCode::OK);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert!(out.starts_with(b"HTTP/1.0 200 OK"), "{}", String::from_utf8_lossy(&out));
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn http2_cleartext_requests_are_proxied() {
    let up = Upstream::start("h2").await;
    let config = format!(
        "{}pools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\nroutes:\n  - {{name: r, match: {{host: h2.example.com}}, pool: p}}\n",
        listener_only(),
        up.addr
    );
    let proxy = Proxy::start(&config);
    // h2c with prior knowledge, over a connection we open ourselves so the request can name
    // h2.example.com in its :authority while going to the proxy's address.
    let tcp = tokio::net::TcpStream::connect(proxy.listener("public").await).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = request("GET", "http://h2.example.com/over-h2")
        .version(http::Version::HTTP_2)
        .body(full(""))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["path"], "/over-h2");
    assert_eq!(body["version"], "HTTP/1.1", "upstream gets HTTP/1.1");
    assert!(headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn upstream_connections_are_pooled_and_reused() {
    let up = Upstream::start("pooled").await;
    let config = one_route(&up, "", "");
    let proxy = Proxy::start_with(&config, &["--workers", "1"]);
    let url = format!("http://{}/", proxy.listener("public").await);
    let c = client();
    for _ in 0..50 {
        let (status, _, _) = send(&c, request("GET", &url).body(full("")).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
    }
    // HEAD responses have no body to read; their connection must come back all the same.
    for _ in 0..10 {
        let (status, _, _) = send(&c, request("HEAD", &url).body(full("")).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(up.hits(), 60);
    assert_eq!(up.connections(), 1, "one keep-alive upstream connection carried every request");
    let config = proxy.admin_json("/config").await;
    assert_eq!(config["pools"][0]["endpoints"][0]["idle_connections"], 1);
}

/// An upstream that closes each connection 50 ms after its one answer, though the answer let it
/// be kept: a pooled connection it closed while idle must not be handed the next request (a POST
/// on it would fail after being sent, and could not be retried).
#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_used() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let closed_tx = closed_tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(s);
                let _ = closed_tx.send(());
            });
        }
    });
    let config = format!(
        "{}pools:\n  - {{name: p, endpoints: [{{address: '{addr}'}}]}}\nroutes:\n  - {{name: r, pool: p}}\n",
        listener_only()
    );
    let proxy = Proxy::start_with(&config, &["--workers", "1"]);
    let url = format!("http://{}/", proxy.listener("public").await);
    for _ in 0..3 {
        let (status, _, _) = send(&client(), request("GET", &url).body(full("")).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        closed.recv().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (status, _, body) = send(&client(), request("POST", &url).body(full("x")).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        closed.recv().await.unwrap();
    }
}

#[tokio::test]
async fn connections_are_spread_evenly_over_workers() {
    let up = Upstream::start("u").await;
    let proxy = Proxy::start_with(&one_route(&up, "", ""), &["--workers", "2"]);
    let addr = proxy.listener("public").await;
    // Ten keep-alive connections, opened at once, each carrying a request and then held open.
    let mut held = Vec::new();
    let opened: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
                s
            })
        })
        .collect();
    for o in opened {
        held.push(o.await.unwrap());
    }
    let config = proxy.admin_json("/config").await;
    assert_eq!(config["worker_connections"], serde_json::json!([5, 5]), "{config}");
    drop(held);
}

#[tokio::test]
async fn chunked_responses_hand_their_connection_back() {
    let up = Upstream::start("chunky").await;
    let proxy = Proxy::start_with(&one_route(&up, "", ""), &["--workers", "1"]);
    let url = format!("http://{}/chunked", proxy.listener("public").await);
    let c = client();
    for _ in 0..5 {
        let resp = c.get(url.parse().unwrap()).await.unwrap();
        assert!(resp.headers().get("content-length").is_none(), "the response really is chunked");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"chunk one, chunk two");
    }
    assert_eq!(up.connections(), 1, "each chunked exchange returned its connection");
}

#[tokio::test]
async fn an_early_answer_during_an_upload_does_not_strand_the_next_request() {
    let up = Upstream::start("early").await;
    // Streamed from its first byte, so the upstream sees the upload while it trickles.
    let proxy = Proxy::start_with(&one_route(&up, "", ", request_body: {buffer: 0}"), &["--workers", "1"]);
    let addr = proxy.listener("public").await;
    // The upstream answers 413 at once while this upload would trickle for 10 s.
    let uploading = tokio::spawn(async move {
        let req = request("POST", &format!("http://{addr}/early"))
            .body(trickle(100, Duration::from_millis(100)))
            .unwrap();
        client().request(req).await.map(|r| r.status())
    });
    eventually!(Duration::from_secs(5), up.hits() == 1);
    let started = Instant::now();
    let (status, _) = get(&format!("http://{addr}/next")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        started.elapsed() < scaled(Duration::from_secs(2)),
        "waited {:?} behind the upload",
        started.elapsed()
    );
    assert_eq!(uploading.await.unwrap().unwrap(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn uploads_longer_than_the_response_timeout_complete() {
    let up = Upstream::start("patient").await;
    let proxy = Proxy::start(&one_route(&up, "", ", timeout: 300ms"));
    let url = format!("http://{}/upload", proxy.listener("public").await);
    // 1.2 s of upload against a 300 ms response timeout, which counts from the end of the body.
    let req = request("POST", &url).body(trickle(6, Duration::from_millis(200))).unwrap();
    let (status, _, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["received"], 6 * 1024);
}

#[tokio::test]
async fn an_absolute_form_target_sets_the_upstream_host() {
    let (inside, outside) = (Upstream::start("inside").await, Upstream::start("outside").await);
    let config = format!(
        "{}pools:\n  - {{name: in, endpoints: [{{address: '{}'}}]}}\n  - {{name: out, endpoints: [{{address: '{}'}}]}}\n\
         routes:\n  - {{name: in, match: {{host: internal.example.com}}, pool: in}}\n  - {{name: out, pool: out}}\n",
        listener_only(),
        inside.addr,
        outside.addr
    )
    .replace("\n         routes", "\nroutes");
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET http://user@internal.example.com/x HTTP/1.1\r\nHost: public.example.com\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let body: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["upstream"], "inside", "routed by the target's host");
    assert_eq!(
        body["headers"]["host"][0], "internal.example.com",
        "and the upstream sees that host, without userinfo"
    );
}

#[tokio::test]
async fn http2_upstreams_multiplex_one_connection() {
    let up = Upstream::start("h2-up").await;
    let config = one_route(&up, ", protocol: http2", "");
    let proxy = Proxy::start_with(&config, &["--workers", "1"]);
    let addr = proxy.listener("public").await;
    let one = |i: usize| async move {
        let req = request("GET", &format!("http://{addr}/h2/{i}"))
            .header("host", "svc.example.com")
            .body(full(""))
            .unwrap();
        send(&client(), req).await
    };
    let (status, _, body) = one(0).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let calls: Vec<_> = (1..20).map(|i| tokio::spawn(one(i))).collect();
    for c in calls {
        let (status, _, body) = c.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["version"], "HTTP/2.0");
        assert!(
            body["path"].as_str().unwrap().starts_with("http://svc.example.com/h2/"),
            "the client's host is the :authority: {body}"
        );
    }
    assert_eq!(up.hits(), 20);
    assert_eq!(up.connections(), 1, "concurrent requests share one HTTP/2 connection");
}

#[tokio::test]
async fn sigterm_fails_readiness_and_drains_in_flight_requests() {
    let up = Upstream::start("slow").await;
    let config = one_route(&up, "", "");
    let mut proxy = Proxy::start_with(&config, &["--drain-timeout", "10s"]);
    let addr = proxy.listener("public").await;
    assert_eq!(get(&format!("http://{}/readyz", proxy.admin)).await.0, StatusCode::OK);

    let in_flight = tokio::spawn(async move { get(&format!("http://{addr}/slow/1500")).await });
    eventually!(Duration::from_secs(5), up.hits() == 1);
    let started = Instant::now();
    proxy.signal("TERM");
    let admin = proxy.admin;
    eventually!(Duration::from_secs(2), {
        get(&format!("http://{admin}/readyz")).await.0 == StatusCode::SERVICE_UNAVAILABLE
    });
    // New connections are refused while the old request finishes.
    eventually!(Duration::from_secs(2), std::net::TcpStream::connect(addr).is_err());
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), 0);
    assert!(started.elapsed() < scaled(Duration::from_secs(10)));
}

#[tokio::test]
async fn drain_gives_up_at_the_deadline() {
    let up = Upstream::start("stuck").await;
    let config = one_route(&up, "", ", timeout: 60s");
    let mut proxy = Proxy::start_with(&config, &["--drain-timeout", "500ms"]);
    let addr = proxy.listener("public").await;
    let _stuck =
        tokio::spawn(async move { client().get(format!("http://{addr}/slow/30000").parse().unwrap()).await });
    eventually!(Duration::from_secs(5), up.hits() == 1);
    let started = Instant::now();
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), 0);
    assert!(started.elapsed() < scaled(Duration::from_secs(5)), "exited after {:?}", started.elapsed());
}

#[tokio::test]
async fn listeners_are_added_and_removed_by_reload() {
    let up = Upstream::start("u").await;
    let body = format!(
        "pools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\nroutes:\n  - {{name: r, pool: p}}\n",
        up.addr
    );
    let proxy = Proxy::start(&format!("{}{body}", listener_only()));
    let first = proxy.listener("public").await;

    proxy.write_config(&format!("listeners:\n  - {{name: public, address: '127.0.0.1:0'}}\n  - {{name: second, address: '127.0.0.1:0'}}\n{body}"));
    eventually!(Duration::from_secs(10), proxy.version().await == 2);
    let second = proxy.listener("second").await;
    assert_eq!(proxy.listener("public").await, first, "an unchanged listener keeps its socket");
    assert_eq!(get(&format!("http://{second}/")).await.0, StatusCode::OK);

    proxy.write_config(&format!("listeners:\n  - {{name: second, address: '{second}'}}\n{body}"));
    eventually!(Duration::from_secs(10), proxy.version().await == 3);
    eventually!(Duration::from_secs(5), std::net::TcpStream::connect(first).is_err());
    assert_eq!(get(&format!("http://{second}/")).await.0, StatusCode::OK);

    // A listener that cannot bind refuses the whole change.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    proxy.write_config(&format!("listeners:\n  - {{name: second, address: '{second}'}}\n  - {{name: third, address: '{taken_addr}'}}\n{body}"));
    eventually!(Duration::from_secs(10), {
        proxy.admin_json("/config").await["last_attempt"]["accepted"] == false
    });
    let config: Value = proxy.admin_json("/config").await;
    assert_eq!(config["active"]["version"], 3);
    assert!(config["last_attempt"]["errors"][0].as_str().unwrap().contains("cannot bind"), "{config}");
}

#[tokio::test]
async fn renaming_or_swapping_listeners_keeps_their_sockets() {
    let up = Upstream::start("u").await;
    let body = format!(
        "pools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\nroutes:\n  - {{name: r, pool: p}}\n",
        up.addr
    );
    let proxy = Proxy::start(&format!(
        "listeners:\n  - {{name: a, address: '127.0.0.1:0'}}\n  - {{name: b, address: '127.0.0.1:0'}}\n{body}"
    ));
    let (a, b) = (proxy.listener("a").await, proxy.listener("b").await);
    // Swap the two addresses between the names: both ports are already bound by this process.
    proxy.write_config(&format!(
        "listeners:\n  - {{name: a, address: '{b}'}}\n  - {{name: b, address: '{a}'}}\n{body}"
    ));
    eventually!(Duration::from_secs(10), proxy.version().await == 2);
    assert_eq!((proxy.listener("a").await, proxy.listener("b").await), (b, a));
    // And a rename.
    proxy.write_config(&format!(
        "listeners:\n  - {{name: c, address: '{b}'}}\n  - {{name: b, address: '{a}'}}\n{body}"
    ));
    eventually!(Duration::from_secs(10), proxy.version().await == 3);
    assert_eq!(proxy.listener("c").await, b);
    for addr in [a, b] {
        assert_eq!(get(&format!("http://{addr}/")).await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_removed_listener_closes_stragglers_at_the_drain_deadline() {
    let up = Upstream::start("slow").await;
    let body = format!(
        "pools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\nroutes:\n  - {{name: r, pool: p, timeout: 60s}}\n",
        up.addr
    );
    let proxy = Proxy::start_with(
        &format!(
            "listeners:\n  - {{name: a, address: '127.0.0.1:0'}}\n  - {{name: b, address: '127.0.0.1:0'}}\n{body}"
        ),
        &["--drain-timeout", "500ms"],
    );
    let a = proxy.listener("a").await;
    let stuck =
        tokio::spawn(async move { client().get(format!("http://{a}/slow/30000").parse().unwrap()).await });
    eventually!(Duration::from_secs(5), up.hits() == 1);
    let b = proxy.listener("b").await;
    proxy.write_config(&format!("listeners:\n  - {{name: b, address: '{b}'}}\n{body}"));
    eventually!(Duration::from_secs(10), proxy.version().await == 2);
    let started = Instant::now();
    let outcome =
        tokio::time::timeout(Duration::from_secs(5), stuck).await.expect("closed at the deadline").unwrap();
    assert!(outcome.is_err(), "the straggler's connection was closed");
    assert!(started.elapsed() < scaled(Duration::from_secs(3)));
}

#[tokio::test]
async fn a_refused_reload_leaves_pooled_connections_alone() {
    let up = Upstream::start("u").await;
    let proxy = Proxy::start_with(&one_route(&up, "", ""), &["--workers", "1"]);
    let url = format!("http://{}/", proxy.listener("public").await);
    assert_eq!(get(&url).await.0, StatusCode::OK);
    // Changes the pool's protocol (which would retire its connections) but cannot bind.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = one_route(&up, ", protocol: http2", "").replace(
        "pools:",
        &format!("  - {{name: extra, address: '{}'}}\npools:", taken.local_addr().unwrap()),
    );
    proxy.write_config(&refused);
    eventually!(Duration::from_secs(10), {
        proxy.admin_json("/config").await["last_attempt"]["accepted"] == false
    });
    assert_eq!(get(&url).await.0, StatusCode::OK);
    assert_eq!(up.connections(), 1, "the pooled HTTP/1.1 connection was kept and reused");
}

#[tokio::test]
async fn balancer_position_survives_a_reload() {
    let (u0, u1) = (Upstream::start("u0").await, Upstream::start("u1").await);
    let config = |extra: &str| {
        format!(
            "{}pools:\n  - {{name: p, endpoints: [{{address: '{}'}}, {{address: '{}'}}]}}\nroutes:\n  - {{name: r, pool: p}}\n{extra}",
            listener_only(),
            u0.addr,
            u1.addr
        )
    };
    let proxy = Proxy::start(&config(""));
    let url = format!("http://{}/", proxy.listener("public").await);
    assert!(get(&url).await.1.contains("\"upstream\":\"u0\""));
    proxy.write_config(&config("  - {name: other, match: {path: /other}, pool: p}\n"));
    eventually!(Duration::from_secs(10), proxy.version().await == 2);
    assert!(get(&url).await.1.contains("\"upstream\":\"u1\""), "round robin carried on where it was");
}

#[tokio::test]
async fn admin_endpoints_report_liveness_readiness_and_config() {
    let up = Upstream::start("u").await;
    let config = format!(
        "{}pools:\n  - {{name: p, balancer: least_request, endpoints: [{{address: '{}', weight: 5}}]}}\nroutes:\n  - {{name: r, pool: p}}\n",
        listener_only(),
        up.addr
    );
    let proxy = Proxy::start(&config);
    let admin = format!("http://{}", proxy.admin);
    assert_eq!(get(&format!("{admin}/livez")).await, (StatusCode::OK, "ok\n".to_owned()));
    assert_eq!(get(&format!("{admin}/readyz")).await, (StatusCode::OK, "ready\n".to_owned()));
    let c = proxy.admin_json("/config").await;
    assert_eq!(c["active"]["version"], 1);
    assert!(c["active"]["source"].as_str().unwrap().starts_with("file:/"));
    assert_eq!(c["active"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(c["pools"][0]["balancer"], "least_request");
    assert_eq!(c["pools"][0]["endpoints"][0]["weight"], 5);
    assert_eq!(c["routes"][0]["name"], "r");
    assert_eq!(get(&format!("{admin}/nope")).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn admin_token_protects_everything_but_probes() {
    let up = Upstream::start("u").await;
    let dir = temp_dir();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let config = one_route(&up, "", "");
    let proxy = Proxy::start_with(&config, &["--admin-token-file", token_file.to_str().unwrap()]);
    let admin = format!("http://{}", proxy.admin);
    assert_eq!(get(&format!("{admin}/readyz")).await.0, StatusCode::OK);
    assert_eq!(get(&format!("{admin}/config")).await.0, StatusCode::UNAUTHORIZED);
    let req = request("GET", &format!("{admin}/config"))
        .header("authorization", "Bearer s3cret")
        .body(full(""))
        .unwrap();
    assert_eq!(send(&client(), req).await.0, StatusCode::OK);
}

#[test]
fn an_invalid_file_at_startup_prints_every_error_and_exits_nonzero() {
    let dir = temp_dir();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, "listeners:\n  - {name: l, address: nowhere}\npools:\n  - {name: p, balancer: fastest, endpoints: []}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
        .args(["check", "--config-file", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for want in [
        "3 errors",
        "listeners[0].address: invalid address \"nowhere\"",
        "pools[0].balancer: unknown value \"fastest\"",
        "pools[0].endpoints: a pool needs at least one endpoint",
    ] {
        assert!(stderr.contains(want), "{want:?} not in:\n{stderr}");
    }
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
        .args(["--config-file", path.to_str().unwrap(), "--admin-listen", "off"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("pools[0].balancer"));
}

#[tokio::test]
async fn beyond_loopback_the_admin_listener_needs_tls_and_a_token() {
    let up = Upstream::start("u").await;
    let dir = temp_dir();
    let config = dir.join("config.yaml");
    std::fs::write(&config, one_route(&up, "", "")).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "admin-secret").unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-proxy"))
        .args(["--config-file", config.to_str().unwrap(), "--admin-listen", "0.0.0.0:0"])
        .args(["--admin-token-file", token.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("serve it over TLS (--admin-tls-cert, --admin-tls-key)"), "{stderr}");

    // With a certificate it serves HTTPS only; the token still guards all but the probes.
    let ca = sluice_tls::pki::Authority::new("ca").unwrap();
    let leaf = sluice_tls::pki::Leaf {
        common_name: "admin".into(),
        ips: vec!["127.0.0.1".parse().unwrap()],
        server: true,
        valid_days: 1,
        ..Default::default()
    };
    let issued = ca.issue(&leaf).unwrap();
    for (name, text) in
        [("admin.crt", &issued.cert_pem), ("admin.key", &issued.key_pem), ("ca.crt", &ca.cert_pem)]
    {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let (cert, key) = (dir.join("admin.crt"), dir.join("admin.key"));
    let proxy = Proxy::start_with(
        &one_route(&up, "", ""),
        &["--admin-tls-cert", cert.to_str().unwrap(), "--admin-tls-key", key.to_str().unwrap()],
    );
    let files = sluice_tls::ClientFiles { ca: dir.join("ca.crt"), identity: None, alpn: vec![] };
    let tls_client = sluice_tls::Watched::load("test", files).unwrap();
    let https = async |path: &str| {
        let tcp = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
        let name = sluice_tls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = sluice_tls::tokio_rustls::TlsConnector::from(tls_client.current())
            .connect(name, tcp)
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    assert!(https("/livez").await.starts_with("HTTP/1.1 200"), "probes need no token");
    assert!(
        https("/metrics")
            .await
            .contains("sluice_tls_certificate_expiry_timestamp_seconds{role=\"data_plane_admin\"}")
    );
    let plain = client().get(format!("http://{}/livez", proxy.admin).parse().unwrap()).await;
    assert!(plain.is_err(), "no plaintext on the TLS port: {plain:?}");
}

#[test]
fn schema_subcommand_prints_a_json_schema() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-proxy")).arg("schema").output().unwrap();
    assert!(out.status.success());
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "Sluice config");
    assert!(schema["properties"]["listeners"].is_object());
    assert!(schema["$defs"]["Route"]["properties"]["match"].is_object());
}

#[tokio::test]
async fn a_repeated_content_length_goes_upstream_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&one_route(&up, "", ""));
    let addr = proxy.listener("public").await;
    for lengths in ["Content-Length: 5, 5\r\n", "Content-Length: 5\r\nContent-Length: 5\r\n"] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let wire = format!("POST /echo HTTP/1.1\r\nHost: a\r\n{lengths}Connection: close\r\n\r\nhello");
        s.write_all(wire.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        let body: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
        assert_eq!(body["headers"]["content-length"], serde_json::json!(["5"]), "{lengths:?}: {text}");
    }
}

#[tokio::test]
async fn header_transforms_change_requests_and_responses() {
    let up = Upstream::start("up").await;
    let down = Upstream::start("down").await.stop();
    let config = format!(
        r#"listeners:
  - name: public
    address: '127.0.0.1:0'
    request_headers: {{ add: [{{ name: X-Listener, value: l }}] }}
    response_headers: {{ set: [{{ name: X-Served-By, value: sluice }}] }}
pools:
  - {{ name: p, endpoints: [{{ address: '{}' }}] }}
  - {{ name: down, endpoints: [{{ address: '{down}' }}], connect_timeout: 1s }}
routes:
  - name: api
    match: {{ path_prefix: /api }}
    pool: p
    request_headers:
      set: [{{ name: X-Route, value: "%route%:%path_prefix%" }}, {{ name: X-Client, value: "%client_ip% %request_id%" }}]
      remove: [X-Secret, X-Forwarded-Host]
    response_headers:
      set: [{{ name: Strict-Transport-Security, value: max-age=60 }}]
      remove: [X-Upstream]
  - name: down
    match: {{ path_prefix: /down }}
    pool: down
    response_headers: {{ add: [{{ name: X-Failed-Route, value: "%route%" }}] }}
"#,
        up.addr
    );
    let proxy = Proxy::start(&config);
    let url = format!("http://{}", proxy.listener("public").await);
    let req = request("GET", &format!("{url}/api/users"))
        .header("x-secret", "from the client")
        .header("x-route", "the client's")
        .body(full(""))
        .unwrap();
    let (status, headers, body) = send(&client(), req).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = &body["headers"];
    let id = headers["x-request-id"].to_str().unwrap();
    assert_eq!(seen["x-route"], serde_json::json!(["api:/api"]), "set replaces the client's");
    assert_eq!(seen["x-client"][0], format!("127.0.0.1 {id}"));
    assert_eq!(seen["x-listener"][0], "l");
    assert!(seen.get("x-secret").is_none() && seen.get("x-forwarded-host").is_none(), "{seen}");
    assert_eq!(headers["strict-transport-security"], "max-age=60");
    assert_eq!(headers["x-served-by"], "sluice");
    assert!(headers.get("x-upstream").is_none(), "removed from the response");

    // The proxy's own answers get the route's and the listener's changes too.
    let (status, headers, _) =
        send(&client(), request("GET", &format!("{url}/down")).body(full("")).unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        (&headers["x-failed-route"], &headers["x-served-by"]),
        (&"down".parse().unwrap(), &"sluice".parse().unwrap())
    );
    assert!(headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn rewrites_change_the_path_and_host_sent_upstream() {
    let up = Upstream::start("up").await;
    let config = format!(
        r#"listeners: [{{ name: public, address: '127.0.0.1:0' }}]
pools: [{{ name: p, endpoints: [{{ address: '{}' }}] }}]
routes:
  - {{ name: v1, match: {{ path_prefix: /v1 }}, pool: p, rewrite: {{ path_prefix: /, host: api.internal }} }}
  - {{ name: legacy, match: {{ path_prefix: /legacy }}, pool: p, rewrite: {{ path_regex: {{ pattern: "^/legacy/([a-z]+)/([0-9]+)$", substitution: "/$2/$1" }} }} }}
"#,
        up.addr
    );
    let proxy = Proxy::start(&config);
    let url = format!("http://{}", proxy.listener("public").await);
    let get = |path: &str| {
        let url = format!("{url}{path}");
        async move {
            send(&client(), request("GET", &url).header("host", "www.example.com").body(full("")).unwrap())
                .await
        }
    };
    let (status, _, body) = get("/v1/users/7?full=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["path"], "/users/7?full=1");
    assert_eq!(body["headers"]["host"][0], "api.internal");
    assert_eq!(body["headers"]["x-forwarded-host"][0], "www.example.com", "the client's host");
    assert_eq!(get("/v1").await.2["path"], "/");
    let (_, _, body) = get("/legacy/users/42").await;
    assert_eq!(body["path"], "/42/users");
    assert_eq!(body["headers"]["host"][0], "www.example.com", "no host rewrite on this route");
    assert_eq!(get("/legacy/other").await.2["path"], "/legacy/other", "no match, no change");
}

#[tokio::test]
async fn routes_answer_with_redirects_and_direct_responses() {
    let up = Upstream::start("up").await;
    let config = format!(
        r#"listeners: [{{ name: public, address: '127.0.0.1:0', response_headers: {{ set: [{{ name: X-Edge, value: "1" }}] }} }}]
pools: [{{ name: p, endpoints: [{{ address: '{}' }}] }}]
routes:
  - {{ name: app, match: {{ path_prefix: /app }}, pool: p }}
  - {{ name: to-https, match: {{ path_prefix: /secure }}, redirect: {{ scheme: https }} }}
  - {{ name: moved, match: {{ path_prefix: /old }}, redirect: {{ path_prefix: /app, status: 308 }} }}
  - {{ name: health, match: {{ path: /healthz }}, direct_response: {{ status: 200, body: "ok\n" }} }}
  - {{ name: maintenance, match: {{ path_prefix: /shop }}, direct_response: {{ status: 503, body: '{{"down":true}}', content_type: application/json }}, rate_limit: {{ requests_per_second: 1, burst: 1 }} }}
"#,
        up.addr
    );
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;
    let c = client();
    let get = |path: &str| {
        request("GET", &format!("http://{addr}{path}"))
            .header("host", "www.example.com:8080")
            .body(full(""))
            .unwrap()
    };
    let resp = c.request(get("/secure/login?next=/")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(resp.headers()["location"], "https://www.example.com/secure/login?next=/");
    assert_eq!(resp.headers()["x-edge"], "1", "the listener's response changes apply");
    assert!(resp.headers().contains_key("x-request-id"));
    let resp = c.request(get("/old/items?page=2")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(resp.headers()["location"], "http://www.example.com:8080/app/items?page=2");
    let resp = c.request(get("/healthz")).await.unwrap();
    assert_eq!(
        (resp.status(), &resp.headers()["content-type"]),
        (StatusCode::OK, &"text/plain; charset=utf-8".parse().unwrap())
    );
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "ok\n");
    let resp = c.request(get("/shop/cart")).await.unwrap();
    assert_eq!(
        (resp.status(), &resp.headers()["content-type"]),
        (StatusCode::SERVICE_UNAVAILABLE, &"application/json".parse().unwrap())
    );
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "{\"down\":true}");
    // The route's policies still apply before it answers.
    assert_eq!(c.request(get("/shop/cart")).await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(up.hits(), 0, "nothing went upstream");
    // Counted per route, with no pool.
    let s = scrape(&proxy).await;
    assert_eq!(
        value(&s, "sluice_requests_total", &[("route", "health"), ("pool", ""), ("status_class", "2xx")]),
        1.0
    );
    assert_eq!(value(&s, "sluice_requests_total", &[("route", "to-https"), ("status_class", "3xx")]), 1.0);
}

#[tokio::test]
async fn dot_segments_are_refused_before_routing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("up").await;
    let config = format!(
        "{}pools:\n  - {{name: p, endpoints: [{{address: '{}'}}]}}\nroutes:\n  - {{name: public, match: {{path_prefix: /public}}, pool: p}}\n",
        listener_only(),
        up.addr
    );
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;
    for path in ["/public/../admin", "/public/%2e%2e/admin", "/public/./x", "/public/.%2E/admin"] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400 ") && text.contains("segments"), "{path}: {text}");
    }
    assert_eq!(up.hits(), 0, "none reached the upstream");
    let (status, _) = get(&format!("http://{addr}/public/app.js")).await;
    assert_eq!(status, StatusCode::OK);
}
