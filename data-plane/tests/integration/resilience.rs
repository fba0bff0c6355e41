//! Resilience against real upstreams on 127.0.0.1 that misbehave on purpose (see `Fault`):
//! outlier ejection, circuit breakers, retries and their budget, per-try timeouts, hedging,
//! listener overload, rate limits, body limits and active health checks, and how that state
//! lives through a reload. Assertions are on who answered, statuses, headers and counts, never
//! on timings; every wait has a deadline.

#![allow(clippy::unwrap_used)]

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

// === helpers ===

/// The longest any single request in these tests may take before the test fails.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// A whole response.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    json: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Who answered: the upstream's `x-upstream`, or `-` when the proxy did.
    fn upstream(&self) -> &str {
        self.header("x-upstream").unwrap_or("-")
    }

    /// The proxy's error category, or `-`.
    fn category(&self) -> &str {
        self.json["category"].as_str().unwrap_or("-")
    }

    fn is_ok_from(&self, upstream: &str) -> bool {
        self.status == StatusCode::OK && self.upstream() == upstream
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text: String = self.text.chars().take(160).collect();
        if text.len() < self.text.len() {
            text.push_str("...");
        }
        write!(f, "{} from {} [", self.status.as_u16(), self.upstream())?;
        for name in [
            "x-sluice-circuit-open",
            "retry-after",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
        ] {
            if let Some(v) = self.header(name) {
                write!(f, " {name}: {v};")?;
            }
        }
        write!(f, " ] {text}")
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Sends a request; panics if no whole response comes within `REQUEST_DEADLINE`.
async fn call(c: &Client, method: &str, url: &str, body: Body) -> Reply {
    match try_call(c, method, url, body).await {
        Ok(r) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

async fn try_call(c: &Client, method: &str, url: &str, body: Body) -> Result<Reply, String> {
    let req = request(method, url).body(body).unwrap();
    let (status, headers, body) = try_send(c, req, REQUEST_DEADLINE).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok(Reply { status, headers, text, json })
}

async fn get_reply(c: &Client, url: &str) -> Reply {
    call(c, "GET", url, full("")).await
}

/// One listener `public`, pool `p` over `ups`, and the route lines given (YAML list items).
fn config_with_routes(listener_extra: &str, ups: &[&Upstream], pool_extra: &str, routes: &str) -> String {
    let endpoints: Vec<String> = ups.iter().map(|u| format!("{{address: '{}'}}", u.addr)).collect();
    format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:0'{listener_extra}}}\n\
         pools:\n  - {{name: p, endpoints: [{}]{pool_extra}}}\n\
         routes:\n{routes}",
        endpoints.join(", ")
    )
}

/// As `config_with_routes`, with one route `r` to `p` taking every request.
fn config(listener_extra: &str, ups: &[&Upstream], pool_extra: &str, route_extra: &str) -> String {
    config_with_routes(listener_extra, ups, pool_extra, &format!("  - {{name: r, pool: p{route_extra}}}\n"))
}

/// `/pools`, whole.
async fn pools(proxy: &Proxy) -> Value {
    proxy.admin_json("/pools").await
}

/// What admin `path` says, whatever it says, for failure messages (which must not panic
/// themselves).
async fn admin_text(proxy: &Proxy, path: &str) -> String {
    let (status, body) = get(&format!("http://{}{path}", proxy.admin)).await;
    format!("{path} ({}): {body}", status.as_u16())
}

/// The first few of `items`, and how many more there were, for failure messages.
fn first_few(items: &[String]) -> String {
    let mut s = items.iter().take(8).map(|i| format!("\n  {i}")).collect::<String>();
    if items.len() > 8 {
        s.push_str(&format!("\n  ... and {} more", items.len() - 8));
    }
    s
}

/// Pool `name` from `/pools`.
async fn pool(proxy: &Proxy, name: &str) -> Value {
    let all = pools(proxy).await;
    find_named(&all["pools"], name).unwrap_or_else(|| panic!("no pool {name} in /pools: {all}")).clone()
}

/// The entry of `list` (a JSON array) whose `name` is `name`.
fn find_named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|v| v["name"] == name)
}

/// The endpoint of `pool` (from `/pools`) at `addr`.
fn endpoint(pool: &Value, addr: SocketAddr) -> Value {
    let addr = addr.to_string();
    pool["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["address"] == addr.as_str()))
        .unwrap_or_else(|| panic!("no endpoint {addr} in pool {pool}"))
        .clone()
}

/// Route `name` from `/routes`.
async fn route_stats(proxy: &Proxy, name: &str) -> Value {
    let all = proxy.admin_json("/routes").await;
    find_named(&all["routes"], name).unwrap_or_else(|| panic!("no route {name} in /routes: {all}")).clone()
}

/// Listener `name` from `/listeners`.
async fn listener_stats(proxy: &Proxy, name: &str) -> Value {
    let all = proxy.admin_json("/listeners").await;
    find_named(&all["listeners"], name)
        .unwrap_or_else(|| panic!("no listener {name} in /listeners: {all}"))
        .clone()
}

/// Waits until the endpoint at `addr` in pool `p` is in `state`; returns that endpoint.
async fn wait_for_endpoint_state(proxy: &Proxy, addr: SocketAddr, state: &str, within: Duration) -> Value {
    wait_for(within, &format!("endpoint {addr} {state}"), async || {
        let p = pool(proxy, "p").await;
        let ep = endpoint(&p, addr);
        if ep["state"] == state { Ok(ep) } else { Err(p.to_string()) }
    })
    .await
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Outlier detection that ejects after three failures in a row, for a minute, one endpoint of
/// three at most.
const EJECT_AFTER_3: &str =
    ", outlier_detection: {consecutive_5xx: 3, max_ejection_percent: 50, base_ejection_time: 60s}";

// === the harness itself ===

/// The fault injection the other tests rely on, against an upstream directly (no proxy).
#[tokio::test]
async fn the_harness_injects_faults() {
    let up = Upstream::start("u").await;
    let url = format!("http://{}", up.addr);
    let c = client();

    up.set_fault(Fault::Status(503));
    let r = get_reply(&c, &format!("{url}/x")).await;
    assert_eq!((r.status, r.upstream(), r.text.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "u", "fault"));
    // /health is neither faulted nor counted as a hit.
    let r = get_reply(&c, &format!("{url}/health")).await;
    assert!(r.is_ok_from("u"), "{r}");
    up.set_health(503);
    assert_eq!(get_reply(&c, &format!("{url}/health")).await.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!((up.hits(), up.health_hits()), (1, 2));

    up.set_fault(Fault::ErrorRate(1.0, 502));
    assert_eq!(get_reply(&c, &format!("{url}/x")).await.status, StatusCode::BAD_GATEWAY);
    up.set_fault(Fault::ErrorRate(0.0, 502));
    assert!(get_reply(&c, &format!("{url}/x")).await.is_ok_from("u"));

    up.set_fault(Fault::Reset);
    let r = try_call(&c, "GET", &format!("{url}/x"), full("")).await;
    assert!(r.is_err(), "a reset gives no response: {r:?}");
    up.set_fault(Fault::ResetFirst(2));
    for i in 0..2 {
        let r = try_call(&c, "GET", &format!("{url}/x"), full("")).await;
        assert!(r.is_err(), "reset #{i}: {r:?}");
    }
    assert!(get_reply(&c, &format!("{url}/x")).await.is_ok_from("u"), "then normal again");

    up.set_fault(Fault::Slow(Duration::from_millis(50)));
    let r = call(&c, "PUT", &format!("{url}/upload"), full(vec![b'x'; 100])).await;
    assert_eq!((r.status, &r.json["received"]), (StatusCode::OK, &Value::from(100)), "{r}");

    up.set_fault(Fault::Hang);
    let req = request("GET", &format!("{url}/x")).body(full("")).unwrap();
    let r = try_send(&c, req, Duration::from_millis(300)).await;
    assert!(r.as_ref().is_err_and(|e| e.starts_with("no response within")), "{r:?}");
    assert_eq!(up.hits(), 9, "faulted requests count as hits");

    // kill drops requests in flight, not just the listening socket.
    let in_flight = tokio::spawn({
        let url = format!("{url}/x");
        async move { try_call(&client(), "GET", &url, full("")).await }
    });
    eventually!(Duration::from_secs(5), up.hits() == 10);
    let addr = up.kill();
    let r = in_flight.await.unwrap();
    assert!(r.as_ref().is_err_and(|e| !e.starts_with("no response within")), "{r:?}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the port is closed");
}

// === outlier detection ===

#[tokio::test]
async fn a_failing_endpoint_is_ejected_after_consecutive_failures() {
    let (u0, bad, u2) =
        (Upstream::start("u0").await, Upstream::start("bad").await, Upstream::start("u2").await);
    bad.set_fault(Fault::Status(500));
    let proxy = Proxy::start(&config("", &[&u0, &bad, &u2], EJECT_AFTER_3, ""));
    let url = format!("http://{}/", proxy.listener("public").await);
    let c = client();

    let mut failed = Vec::new();
    for i in 0..60 {
        let r = get_reply(&c, &url).await;
        if r.status != StatusCode::OK {
            failed.push(format!("#{i}: {r}"));
        }
    }
    assert!(
        (1..=3).contains(&failed.len()),
        "expected 1 to 3 of 60 requests to fail before the endpoint was ejected, got {}:{}\n\
         hits: u0 {} bad {} u2 {}\n{}",
        failed.len(),
        first_few(&failed),
        u0.hits(),
        bad.hits(),
        u2.hits(),
        admin_text(&proxy, "/pools").await
    );
    assert!(
        failed.iter().all(|f| f.contains(": 500 from bad")),
        "the upstream's 500s are passed through as they are: {failed:#?}"
    );

    let before = bad.hits();
    for i in 0..30 {
        let r = get_reply(&c, &url).await;
        assert!(r.status == StatusCode::OK && r.upstream() != "bad", "#{i} after ejection: {r}");
    }
    assert_eq!(
        bad.hits(),
        before,
        "the ejected endpoint got no more traffic; {}",
        admin_text(&proxy, "/pools").await
    );

    let p = pool(&proxy, "p").await;
    let ep = endpoint(&p, bad.addr);
    assert_eq!(ep["state"], "ejected", "{p}");
    assert!(
        ep["last_ejection"]["reason"].as_str().is_some_and(|r| r.contains("consecutive")),
        "the reason names consecutive failures: {ep}"
    );
    assert!(u64_of(&ep["ejected_for_ms"]) > 0, "{ep}");
    assert!(u64_of(&ep["ejections"]) >= 1, "{ep}");
    for up in [&u0, &u2] {
        assert_eq!(endpoint(&p, up.addr)["state"], "healthy", "{}: {p}", up.name);
    }
}

#[tokio::test]
async fn killing_an_endpoint_under_load_costs_at_most_a_few_requests() {
    let (u0, victim, u2) =
        (Upstream::start("u0").await, Upstream::start("victim").await, Upstream::start("u2").await);
    let proxy = Proxy::start(&config("", &[&u0, &victim, &u2], "", ""));
    // Each request takes at least 10 ms upstream, so some are in flight at the victim when it dies.
    let url = format!("http://{}/slow/10", proxy.listener("public").await);

    let mut workers = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        workers.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut failed) = (0usize, Vec::new());
            for i in 0..100 {
                match try_call(&c, "GET", &url, full("")).await {
                    Ok(r) if r.status == StatusCode::OK => ok += 1,
                    Ok(r) => failed.push(format!("#{i}: {r}")),
                    Err(e) => failed.push(format!("#{i}: {e}")),
                }
            }
            (ok, failed)
        }));
    }
    eventually!(Duration::from_secs(20), u0.hits() + victim.hits() + u2.hits() >= 80);
    let victim_addr = victim.kill();

    let (mut ok, mut failed) = (0, Vec::new());
    for w in workers {
        let (o, f) = w.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.len() <= 3,
        "expected at most 3 of 400 requests to fail when one endpoint of three died; {ok} ok, {} failed:{}",
        failed.len(),
        first_few(&failed)
    );
    let ep = wait_for_endpoint_state(&proxy, victim_addr, "ejected", Duration::from_secs(5)).await;
    assert!(u64_of(&ep["ejections"]) >= 1, "{ep}");
}

// === circuit breaker ===

#[tokio::test]
async fn the_breaker_opens_on_errors_and_closes_when_they_stop() {
    let up = Upstream::start("u").await;
    up.set_fault(Fault::Status(500));
    let pool_extra = ", outlier_detection: {enabled: false}, circuit_breaker: {error_threshold_percent: 50, \
                      min_requests: 10, window: 10s, open_duration: 2s, half_open_requests: 2}";
    let proxy = Proxy::start(&config("", &[&up], pool_extra, ""));
    let url = format!("http://{}/", proxy.listener("public").await);
    let c = client();

    let mut before_trip = Vec::new();
    let mut tripped = None;
    for _ in 0..40 {
        let r = get_reply(&c, &url).await;
        if r.header("x-sluice-circuit-open").is_some() {
            tripped = Some(r);
            break;
        }
        before_trip.push(r);
    }
    let Some(tripped) = tripped else {
        panic!(
            "no 503 with x-sluice-circuit-open in 40 requests to an always-500 upstream; saw {:?}\n{}",
            before_trip.iter().map(|r| r.status.as_u16()).collect::<Vec<_>>(),
            admin_text(&proxy, "/pools").await
        );
    };
    assert!(
        before_trip.len() >= 10 && before_trip.iter().all(|r| r.status == 500 && r.upstream() == "u"),
        "the 500s pass through until min_requests (10) have been judged: {before_trip:#?}"
    );
    assert_eq!(
        (tripped.status, tripped.category(), tripped.header("x-sluice-circuit-open")),
        (StatusCode::SERVICE_UNAVAILABLE, "circuit_open", Some("p")),
        "{tripped}"
    );
    assert!(tripped.header("retry-after").is_some(), "{tripped}");

    let breaker = pool(&proxy, "p").await["breaker"].clone();
    assert_eq!(breaker["state"], "open", "{breaker}");
    assert!(
        breaker["last_trip"]["reason"].as_str().is_some_and(|r| r.contains("error rate")),
        "the trip names the error rate: {breaker}"
    );
    assert!(u64_of(&breaker["trips"]) >= 1, "{breaker}");

    // While open, nothing reaches the upstream.
    let hits = up.hits();
    for i in 0..5 {
        let r = get_reply(&c, &url).await;
        assert_eq!((r.status, r.category()), (StatusCode::SERVICE_UNAVAILABLE, "circuit_open"), "#{i}: {r}");
    }
    assert_eq!(up.hits(), hits, "requests reached the upstream through an open breaker");
    let breaker = pool(&proxy, "p").await["breaker"].clone();
    assert!(u64_of(&breaker["rejected"]) >= 6, "the trip and 5 more were rejected: {breaker}");

    // Once the upstream recovers, the half-open probes succeed and the breaker closes.
    up.set_fault(Fault::None);
    wait_for(Duration::from_secs(10), "a 200 with the breaker closed", async || {
        let r = get_reply(&c, &url).await;
        let breaker = pool(&proxy, "p").await["breaker"].clone();
        if r.status == StatusCode::OK && breaker["state"] == "closed" {
            Ok(())
        } else {
            Err(format!("{r}; breaker {breaker}"))
        }
    })
    .await;
}

#[tokio::test]
async fn the_breaker_limits_requests_in_progress() {
    let up = Upstream::start("u").await;
    let proxy = Proxy::start(&config("", &[&up], ", circuit_breaker: {max_requests: 1}", ""));
    let url = format!("http://{}/slow/1000", proxy.listener("public").await);

    let first = tokio::spawn({
        let url = url.clone();
        async move { get_reply(&client(), &url).await }
    });
    eventually!(Duration::from_secs(5), up.hits() == 1);
    let second = get_reply(&client(), &url).await;
    assert_eq!(
        (second.status, second.category(), second.header("x-sluice-circuit-open")),
        (StatusCode::SERVICE_UNAVAILABLE, "circuit_open", Some("p")),
        "a second request while one is in progress (max_requests 1): {second}"
    );
    assert!(second.header("retry-after").is_some(), "{second}");
    assert_eq!(up.hits(), 1, "the rejected request never reached the upstream");
    let first = first.await.unwrap();
    assert!(first.is_ok_from("u"), "the request in progress finishes: {first}");

    let breaker = pool(&proxy, "p").await["breaker"].clone();
    assert!(u64_of(&breaker["rejected"]) >= 1, "{breaker}");
    assert_eq!(breaker["limits"]["max_requests"], 1, "{breaker}");
    // With the slot free again, requests go through.
    let r = get_reply(&client(), &format!("http://{}/", proxy.listener("public").await)).await;
    assert!(r.is_ok_from("u"), "{r}");
}

// === retries ===

#[tokio::test]
async fn the_retry_budget_caps_a_retry_storm() {
    const N: usize = 200;
    let up = Upstream::start("u").await;
    up.set_fault(Fault::Status(503));
    let route_extra =
        ", retries: {max_attempts: 3, retry_on: [503], budget_percent: 20, min_retries_per_second: 1}";
    let proxy = Proxy::start(&config("", &[&up], ", outlier_detection: {enabled: false}", route_extra));
    let url = format!("http://{}/", proxy.listener("public").await);
    let c = client();

    for i in 0..N {
        let r = get_reply(&c, &url).await;
        assert!(
            r.status == 503 && r.upstream() == "u",
            "#{i}: the upstream's last 503 is passed through: {r}"
        );
    }
    let hits = up.hits();
    // 20% of the requests, plus 1/s over the 10 s window, plus slack; without a budget: 3N.
    let cap = N + N / 5 + 10 + 5;
    assert!(
        hits > N,
        "some requests were retried: {hits} upstream hits for {N} requests; {}",
        admin_text(&proxy, "/routes").await
    );
    assert!(
        hits <= cap,
        "the budget caps retries: {hits} upstream hits for {N} requests (cap {cap}); {}",
        admin_text(&proxy, "/routes").await
    );
    let route = route_stats(&proxy, "r").await;
    assert!(u64_of(&route["retries"]) > 0, "{route}");
    assert!(u64_of(&route["retries_denied"]) > 0, "{route}");
}

#[tokio::test]
async fn a_retried_put_replays_its_body_and_a_post_is_not_retried() {
    let (u0, u1) = (Upstream::start("u0").await, Upstream::start("u1").await);
    u0.set_fault(Fault::ResetFirst(1));
    let proxy = Proxy::start(&config("", &[&u0, &u1], "", ""));
    let url = format!("http://{}/upload", proxy.listener("public").await);
    let c = client();

    // Round robin sends one of the first two PUTs to u0 first, which resets it; the retry goes
    // to u1 with the whole body.
    let mut puts = 0;
    while u0.hits() == 0 && puts < 4 {
        let r = call(&c, "PUT", &url, full(vec![b'x'; 100])).await;
        puts += 1;
        assert_eq!((r.status, &r.json["received"]), (StatusCode::OK, &Value::from(100)), "PUT #{puts}: {r}");
    }
    assert_eq!(u0.hits(), 1, "a PUT reached u0 and was reset");
    assert_eq!(
        u0.hits() + u1.hits(),
        puts + 1,
        "{puts} PUTs and exactly one retry: u0 {} u1 {}",
        u0.hits(),
        u1.hits()
    );
    assert_eq!(u1.hits(), puts, "the retry went to the other endpoint");

    // A POST is not idempotent: its reset is the client's answer.
    u0.set_fault(Fault::ResetFirst(1));
    u1.set_fault(Fault::ResetFirst(1));
    let before = u0.hits() + u1.hits();
    let r = call(&c, "POST", &url, full(vec![b'x'; 100])).await;
    assert_eq!((r.status, r.category()), (StatusCode::BAD_GATEWAY, "upstream_reset"), "{r}");
    assert_eq!(u0.hits() + u1.hits(), before + 1, "the POST was tried once");
}

#[tokio::test]
async fn a_per_try_timeout_moves_on_from_a_hung_endpoint() {
    let (hung, ok) = (Upstream::start("hung").await, Upstream::start("ok").await);
    hung.set_fault(Fault::Hang);
    let route_extra =
        ", timeout: 10s, retries: {per_try_timeout: 200ms, retry_on: [timeout, connect_failure]}";
    let proxy = Proxy::start(&config("", &[&hung, &ok], "", route_extra));
    let url = format!("http://{}/", proxy.listener("public").await);
    let c = client();
    for i in 0..10 {
        let r = match tokio::time::timeout(Duration::from_secs(5), get_reply(&c, &url)).await {
            Ok(r) => r,
            Err(_) => panic!("#{i}: no answer within 5 s; hung has {} hits", hung.hits()),
        };
        assert!(r.is_ok_from("ok"), "#{i}: expected 200 from ok: {r}");
    }
    assert!(hung.hits() >= 1, "the hung endpoint was tried at all");
}

// === hedging ===

#[tokio::test]
async fn a_hedge_beats_a_hung_endpoint() {
    let (hung, ok) = (Upstream::start("hung").await, Upstream::start("ok").await);
    hung.set_fault(Fault::Hang);
    let route_extra = ", hedge: {delay: 50ms, budget_percent: 100}, retries: {max_attempts: 1}";
    let proxy =
        Proxy::start(&config("", &[&hung, &ok], ", outlier_detection: {enabled: false}", route_extra));
    let url = format!("http://{}/", proxy.listener("public").await);
    let c = client();
    for i in 0..10 {
        let r = match tokio::time::timeout(Duration::from_secs(5), get_reply(&c, &url)).await {
            Ok(r) => r,
            Err(_) => panic!("#{i}: no answer within 5 s; hung has {} hits", hung.hits()),
        };
        assert!(r.is_ok_from("ok"), "#{i}: expected 200 from ok: {r}");
    }
    assert!(hung.hits() >= 1, "the hung endpoint was tried at all");
    let route = route_stats(&proxy, "r").await;
    assert!(u64_of(&route["hedges"]) >= 1, "{route}");
    assert!(u64_of(&route["hedges_won"]) >= 1, "{route}");
}

// === overload, rate limits, body limits ===

#[tokio::test]
async fn an_overloaded_listener_sheds_with_503() {
    let up = Upstream::start("u").await;
    let listener_extra = ", overload: {max_concurrent_requests: 2, max_queued: 2, queue_timeout: 200ms}";
    let proxy = Proxy::start(&config(listener_extra, &[&up], "", ""));
    let base = format!("http://{}", proxy.listener("public").await);

    let calls: Vec<_> = (0..10)
        .map(|_| {
            let url = format!("{base}/slow/1500");
            tokio::spawn(async move { get_reply(&client(), &url).await })
        })
        .collect();
    let mut replies = Vec::new();
    for call in calls {
        replies.push(call.await.unwrap());
    }
    let ok = replies.iter().filter(|r| r.is_ok_from("u")).count();
    let shed = replies
        .iter()
        .filter(|r| {
            r.status == StatusCode::SERVICE_UNAVAILABLE
                && r.category() == "overloaded"
                && r.header("retry-after").is_some()
        })
        .count();
    assert_eq!((ok, shed), (2, 8), "10 requests at 2 concurrent + 2 queued for 200 ms: {replies:#?}");
    assert_eq!(up.hits(), 2, "shed requests never reached the upstream");

    let r = get_reply(&client(), &format!("{base}/")).await;
    assert!(r.is_ok_from("u"), "after the burst: {r}");
    let l = listener_stats(&proxy, "public").await;
    assert!(u64_of(&l["shed"]) >= 8, "{l}");
    assert_eq!(l["max_concurrent_requests"], 2, "{l}");
}

#[tokio::test]
async fn a_rate_limited_route_answers_429_with_ratelimit_headers() {
    let up = Upstream::start("u").await;
    let routes = "  - {name: keyed, match: {path_prefix: /keyed}, pool: p, \
                  rate_limit: {requests_per_second: 1, burst: 3, key: {header: x-user}}}\n  \
                  - {name: r, pool: p, rate_limit: {requests_per_second: 1, burst: 3}}\n";
    let proxy = Proxy::start(&config_with_routes("", &[&up], "", routes));
    let base = format!("http://{}", proxy.listener("public").await);
    let c = client();

    let mut replies = Vec::new();
    for _ in 0..5 {
        replies.push(get_reply(&c, &format!("{base}/")).await);
    }
    for (i, want) in ["2", "1", "0"].into_iter().enumerate() {
        let r = &replies[i];
        assert!(
            r.is_ok_from("u")
                && r.header("ratelimit-limit") == Some("3")
                && r.header("ratelimit-remaining") == Some(want),
            "#{i}: expected 200 with ratelimit-limit 3, ratelimit-remaining {want}: {replies:#?}"
        );
    }
    for r in &replies[3..] {
        assert!(
            r.status == StatusCode::TOO_MANY_REQUESTS
                && r.category() == "rate_limited"
                && r.header("ratelimit-limit") == Some("3")
                && r.header("ratelimit-remaining") == Some("0")
                && r.header("ratelimit-reset").is_some()
                && r.header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| s >= 1),
            "expected 429 rate_limited with ratelimit-limit 3, remaining 0, a reset and retry-after >= 1: {replies:#?}"
        );
    }
    assert_eq!(up.hits(), 3, "limited requests never reached the upstream");

    // One bucket per x-user: a exhausting theirs leaves b's full.
    let keyed = async |user: &str| {
        let req = request("GET", &format!("{base}/keyed")).header("x-user", user).body(full("")).unwrap();
        let (status, headers, _) = try_send(&c, req, REQUEST_DEADLINE).await.unwrap();
        let remaining = headers.get("ratelimit-remaining").map(|v| v.to_str().unwrap().to_owned());
        (status.as_u16(), remaining)
    };
    let mut a = Vec::new();
    for _ in 0..4 {
        a.push(keyed("a").await);
    }
    let b = keyed("b").await;
    assert_eq!(
        a.iter().map(|s| s.0).collect::<Vec<_>>(),
        [200, 200, 200, 429],
        "user a: {a:?} (status, ratelimit-remaining)"
    );
    assert_eq!(b, (200, Some("2".to_owned())), "user b has a bucket of their own; a: {a:?}");

    let r = route_stats(&proxy, "r").await;
    assert!(u64_of(&r["rate_limited"]) >= 2, "{r}");
    // Answered requests take nothing from the retry budget.
    assert_eq!((u64_of(&r["retries"]), u64_of(&r["retries_denied"])), (0, 0), "{r}");
    let k = route_stats(&proxy, "keyed").await;
    assert!(u64_of(&k["rate_limited"]) >= 1, "{k}");
}

#[tokio::test]
async fn a_body_over_the_route_limit_gets_413() {
    let up = Upstream::start("u").await;
    let proxy = Proxy::start(&config("", &[&up], "", ", max_request_body: 1KiB"));
    let url = format!("http://{}/upload", proxy.listener("public").await);
    let c = client();

    let r = call(&c, "POST", &url, full(vec![b'x'; 2048])).await;
    assert_eq!((r.status, r.category()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"), "{r}");
    assert_eq!(up.hits(), 0, "a Content-Length over the limit is refused before the upstream is asked");

    let r = call(&c, "POST", &url, full(vec![b'x'; 512])).await;
    assert!(r.is_ok_from("u") && r.json["received"] == 512, "a 512-byte body passes: {r}");

    // Chunked, with no length to judge up front: 3 KiB in 1 KiB pieces.
    let r = call(&client(), "POST", &url, trickle(3, Duration::from_millis(20))).await;
    assert_eq!(
        (r.status, r.category()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "a chunked body growing past the limit: {r}"
    );
}

// === active health checks ===

/// Checks every 200 ms. The timeout is the whole interval, so that a loaded machine answering
/// slowly does not fail an endpoint for the wrong reason.
const HEALTH_CHECK: &str = ", health_check: {path: /health, interval: 200ms, timeout: 200ms, \
                            healthy_threshold: 2, unhealthy_threshold: 2}";

#[tokio::test]
async fn active_health_checks_take_an_endpoint_out_and_back() {
    let (u0, u1) = (Upstream::start("u0").await, Upstream::start("u1").await);
    let proxy = Proxy::start(&config("", &[&u0, &u1], HEALTH_CHECK, ""));
    let url = format!("http://{}/", proxy.listener("public").await);
    let c = client();

    wait_for(Duration::from_secs(5), "both endpoints checked and healthy", async || {
        let p = pool(&proxy, "p").await;
        let checked = |u: &Upstream| {
            let ep = endpoint(&p, u.addr);
            ep["state"] == "healthy" && ep["health_check"]["last"]["passed"] == true
        };
        if checked(&u0) && checked(&u1) { Ok(()) } else { Err(p.to_string()) }
    })
    .await;

    u0.set_health(503);
    // Unhealthy, with the last check failed on the 503 (rather than, say, timing out).
    let ep = wait_for(Duration::from_secs(5), "u0 unhealthy, its last check failed with 503", async || {
        let p = pool(&proxy, "p").await;
        let ep = endpoint(&p, u0.addr);
        let last = &ep["health_check"]["last"];
        let on_503 = last["passed"] == false && last["detail"].as_str().is_some_and(|d| d.contains("503"));
        if ep["state"] == "unhealthy" && on_503 { Ok(ep) } else { Err(p.to_string()) }
    })
    .await;
    let check = &ep["health_check"];
    assert!(u64_of(&check["failures_in_row"]) >= 2, "{ep}");

    let before = u0.hits();
    for i in 0..20 {
        let r = get_reply(&c, &url).await;
        assert!(r.is_ok_from("u1"), "#{i}: expected u1 while u0 is unhealthy: {r}");
    }
    assert_eq!(u0.hits(), before);

    u0.set_health(200);
    wait_for_endpoint_state(&proxy, u0.addr, "healthy", Duration::from_secs(5)).await;
    let mut from_u0 = 0;
    for _ in 0..10 {
        let r = get_reply(&c, &url).await;
        assert_eq!(r.status, StatusCode::OK, "{r}");
        from_u0 += usize::from(r.upstream() == "u0");
    }
    assert!(from_u0 >= 1, "traffic returned to u0 once it was healthy again");
    assert!(u0.health_hits() > 0 && u1.health_hits() > 0);
}

#[tokio::test]
async fn when_every_endpoint_is_unhealthy_traffic_still_flows() {
    let (u0, u1) = (Upstream::start("u0").await, Upstream::start("u1").await);
    u0.set_health(503);
    u1.set_health(503);
    let proxy = Proxy::start(&config("", &[&u0, &u1], HEALTH_CHECK, ""));
    let url = format!("http://{}/", proxy.listener("public").await);
    for u in [&u0, &u1] {
        wait_for_endpoint_state(&proxy, u.addr, "unhealthy", Duration::from_secs(5)).await;
    }
    let c = client();
    for i in 0..10 {
        let r = get_reply(&c, &url).await;
        assert_eq!(r.status, StatusCode::OK, "#{i}: fail open, not 503: {r}");
    }
}

// === reloads ===

#[tokio::test]
async fn ejections_survive_a_reload_and_removed_pools_disappear() {
    let (u0, bad, u2) =
        (Upstream::start("u0").await, Upstream::start("bad").await, Upstream::start("u2").await);
    bad.set_fault(Fault::Status(500));
    let ups = [&u0, &bad, &u2];
    let proxy = Proxy::start(&config("", &ups, EJECT_AFTER_3, ""));
    let url = format!("http://{}/", proxy.listener("public").await);
    let c = client();
    for _ in 0..30 {
        get_reply(&c, &url).await;
    }
    let ep = wait_for_endpoint_state(&proxy, bad.addr, "ejected", Duration::from_secs(5)).await;
    let ejections = u64_of(&ep["ejections"]);

    // A change elsewhere (the route's timeout) keeps the pool, and the ejection with it.
    proxy.write_config(&config("", &ups, EJECT_AFTER_3, ", timeout: 20s"));
    eventually!(Duration::from_secs(10), proxy.version().await == 2);
    let p = pool(&proxy, "p").await;
    let ep = endpoint(&p, bad.addr);
    assert_eq!(ep["state"], "ejected", "after the reload: {p}");
    assert_eq!(u64_of(&ep["ejections"]), ejections, "the same ejection, not a new one: {p}");
    let before = bad.hits();
    for i in 0..10 {
        let r = get_reply(&c, &url).await;
        assert!(r.status == StatusCode::OK && r.upstream() != "bad", "#{i}: {r}");
    }
    assert_eq!(bad.hits(), before, "still no traffic for the ejected endpoint");

    // Route to a new pool instead: `p` goes away.
    proxy.write_config(&format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:0'}}\n\
         pools:\n  - {{name: q, endpoints: [{{address: '{}'}}]}}\n\
         routes:\n  - {{name: r, pool: q}}\n",
        u0.addr
    ));
    eventually!(Duration::from_secs(10), proxy.version().await == 3);
    let all = pools(&proxy).await;
    assert!(find_named(&all["pools"], "p").is_none(), "a removed pool is gone: {all}");
    assert!(find_named(&all["pools"], "q").is_some(), "{all}");
    assert!(get_reply(&c, &url).await.is_ok_from("u0"));
}
