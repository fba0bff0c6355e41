//! Response caching (`routes[].cache`) through the real binary: hits with `Age` and
//! `Cache-Status`, revalidation with `304`s, authorized requests kept apart, a stampede
//! coalesced into one upstream request, memory bounds, invalidation, purges, config changes,
//! canary pools, `Vary`, stale answers, and malformed caching fields passed through.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::support::*;

const WITHIN: Duration = Duration::from_secs(10);

/// An origin whose answers the request's query describes: `cc` (Cache-Control), `etag`, `vary`,
/// `status`, `size` (body bytes), `delay` (ms), `h_NAME` (any field). A request with a matching
/// `If-None-Match` gets `304`. Bodies name the origin, the URL and how often it was asked.
struct Origin {
    addr: SocketAddr,
    state: Arc<OriginState>,
}

#[derive(Default)]
struct OriginState {
    name: String,
    hits: Mutex<HashMap<String, usize>>,
    /// The fields of each request, by URL, in order.
    seen: Mutex<HashMap<String, Vec<HeaderMap>>>,
    /// Answer everything with 503.
    failing: Mutex<bool>,
}

impl Origin {
    async fn start(name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState { name: name.into(), ..OriginState::default() });
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(s.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    fn hits(&self, url: &str) -> usize {
        self.state.hits.lock().unwrap().get(url).copied().unwrap_or(0)
    }

    fn seen(&self, url: &str) -> Vec<HeaderMap> {
        self.state.seen.lock().unwrap().get(url).cloned().unwrap_or_default()
    }

    fn fail(&self, on: bool) {
        *self.state.failing.lock().unwrap() = on;
    }
}

async fn answer(
    s: Arc<OriginState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let url = req.uri().path_and_query().unwrap().as_str().to_owned();
    let n = {
        let mut hits = s.hits.lock().unwrap();
        let n = hits.entry(url.clone()).or_default();
        *n += 1;
        *n
    };
    s.seen.lock().unwrap().entry(url.clone()).or_default().push(req.headers().clone());
    let q: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            (k.to_owned(), v.replace("%20", " ").replace("%2C", ",").replace("%3D", "=").replace("%22", "\""))
        })
        .collect();
    if let Some(ms) = q.get("delay") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
    }
    let mut resp = Response::builder();
    if *s.failing.lock().unwrap() {
        return Ok(resp.status(503).body(Full::new(Bytes::from_static(b"down"))).unwrap());
    }
    if let Some(cc) = q.get("cc") {
        resp = resp.header("cache-control", cc);
    }
    if let Some(v) = q.get("vary") {
        resp = resp.header("vary", v);
    }
    for (k, v) in &q {
        if let Some(name) = k.strip_prefix("h_") {
            resp = resp.header(name, v);
        }
    }
    if let Some(etag) = q.get("etag") {
        let etag = format!("\"{etag}\"");
        resp = resp.header("etag", &etag);
        if req.headers().get("if-none-match").is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
            return Ok(resp
                .status(304)
                .header("x-revalidated", n.to_string())
                .body(Full::new(Bytes::new()))
                .unwrap());
        }
    }
    let body = match q.get("size") {
        Some(size) => Bytes::from(vec![b'x'; size.parse().unwrap()]),
        None => Bytes::from(format!(
            "{} {url} #{n} lang={}",
            s.name,
            req.headers().get("accept-language").map_or("", |v| v.to_str().unwrap())
        )),
    };
    let status: u16 = q.get("status").map_or(200, |s| s.parse().unwrap());
    Ok(resp.status(status).body(Full::new(body)).unwrap())
}

/// A GET with these fields: status, fields, body.
async fn fetch(
    c: &Client,
    addr: SocketAddr,
    method: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut req = request(method, &format!("http://{addr}{path}")).header("host", "shop.test");
    for (k, v) in fields {
        req = req.header(*k, *v);
    }
    let (status, headers, body) =
        try_send(c, req.body(full("")).unwrap(), Duration::from_secs(10)).await.unwrap();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn field<'h>(h: &'h HeaderMap, name: &str) -> &'h str {
    h.get(name).map_or("", |v| v.to_str().unwrap())
}

fn config(origin: &Origin, cache: &str, extra_routes: &str) -> String {
    format!(
        r#"listeners: [{{ name: public, address: '127.0.0.1:0', access_log: {{}}, http2: {{ max_concurrent_streams: 1000 }} }}]
pools:
  - {{ name: app, endpoints: [{{ address: '{}' }}] }}
routes:
{extra_routes}  - name: site
    pool: app
    retries: {{ max_attempts: 1 }}
    cache: {{ {cache} }}
"#,
        origin.addr
    )
}

#[tokio::test]
async fn hits_carry_age_and_cache_status_and_stale_objects_revalidate_with_304s() {
    let origin = Origin::start("o").await;
    let proxy = Proxy::start(&config(&origin, "memory_percent: 50", ""));
    let addr = proxy.listener("public").await;
    let c = client();
    let fresh = "/page?cc=max-age%3D60";

    let (status, h, first) = fetch(&c, addr, "GET", fresh, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(field(&h, "cache-status"), "sluice; fwd=uri-miss; fwd-status=200; stored");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, h, second) = fetch(&c, addr, "GET", fresh, &[]).await;
    assert_eq!((status, &second), (StatusCode::OK, &first), "the stored answer, body and all");
    assert_eq!(origin.hits(fresh), 1);
    let age: u64 = field(&h, "age").parse().unwrap();
    assert!((1..=2).contains(&age), "age {age}");
    assert!(field(&h, "cache-status").starts_with("sluice; hit; ttl=5"), "{h:?}");
    assert!(h.contains_key("x-request-id"), "every answer has its own request id");

    // HEAD from the stored GET; the client's own conditionals answered from the store.
    let (status, h, body) = fetch(&c, addr, "HEAD", fresh, &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    assert_eq!(field(&h, "content-length"), first.len().to_string());
    assert_eq!(origin.hits(fresh), 1);

    // A stale object with a validator: a conditional request, the 304 refreshes it.
    let etagged = "/doc?cc=max-age%3D1&etag=v1&h_x-version=1";
    let (_, _, body) = fetch(&c, addr, "GET", etagged, &[]).await;
    let (status, h, _) = fetch(&c, addr, "GET", etagged, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(status, 304, "answered from the store: {h:?}");
    assert_eq!(field(&h, "etag"), "\"v1\"");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, h, again) = fetch(&c, addr, "GET", etagged, &[]).await;
    assert_eq!((status, &again), (StatusCode::OK, &body));
    assert!(field(&h, "cache-status").starts_with("sluice; fwd=stale; fwd-status=304; ttl="), "{h:?}");
    assert_eq!(field(&h, "x-revalidated"), "2", "the 304's fields update the stored ones");
    let seen = origin.seen(etagged);
    assert_eq!(seen.len(), 2);
    assert_eq!(field(&seen[1], "if-none-match"), "\"v1\"");
    let (_, h, _) = fetch(&c, addr, "GET", etagged, &[]).await;
    assert!(field(&h, "cache-status").starts_with("sluice; hit"), "fresh again: {h:?}");

    // An unsafe method invalidates; the next GET goes upstream.
    let (status, _, _) = fetch(&c, addr, "POST", fresh, &[]).await;
    assert_eq!(status, 200);
    let (_, h, _) = fetch(&c, addr, "GET", fresh, &[]).await;
    assert_eq!(field(&h, "cache-status"), "sluice; fwd=uri-miss; fwd-status=200; stored");
    assert_eq!(origin.hits(fresh), 3);
    // As does a response naming another URL of the same host in Location.
    let (_, _, _) = fetch(&c, addr, "DELETE", "/other?h_location=/page%3Fcc%3Dmax-age%253D60", &[]).await;

    // Responses the origin keeps private, or does not want stored, never are.
    for path in ["/p?cc=private,%20max-age%3D60", "/n?cc=no-store", "/s?h_set-cookie2=a"] {
        fetch(&c, addr, "GET", path, &[]).await;
        fetch(&c, addr, "GET", path, &[]).await;
        assert_eq!(origin.hits(path), 2, "{path}");
    }

    let s = scrape(&proxy).await;
    let results = |r: &str| value(&s, "sluice_cache_requests_total", &[("route", "site"), ("result", r)]);
    let counted: Vec<f64> =
        ["hit", "miss", "revalidated", "bypass", "stale"].iter().map(|r| results(r)).collect();
    assert_eq!(counted, [4.0, 9.0, 1.0, 2.0, 0.0], "hit, miss, revalidated, bypass, stale");
    assert!(value(&s, "sluice_cache_bytes", &[("route", "site")]) > 0.0);
    assert_eq!(value(&s, "sluice_cache_capacity_bytes", &[("route", "site")]), (32 << 20) as f64);
    assert_eq!(value(&s, "sluice_cache_not_stored_total", &[("route", "site"), ("reason", "private")]), 2.0);
    assert_eq!(value(&s, "sluice_cache_not_stored_total", &[("route", "site"), ("reason", "no_store")]), 2.0);
    eventually!(WITHIN, proxy.stdout_lines().iter().any(|l| l.contains(r#""cache":"revalidated""#)));
    let lines: Vec<Value> = proxy.stdout_lines().iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let caches: Vec<&str> = lines.iter().map(|l| l["cache"].as_str().unwrap_or("null")).collect();
    assert!(caches.contains(&"hit") && caches.contains(&"miss") && caches.contains(&"bypass"), "{caches:?}");
}

#[tokio::test]
async fn authorized_requests_never_get_someone_elses_answer() {
    let origin = Origin::start("o").await;
    let extra = "  - name: members\n    match: { path_prefix: /members }\n    pool: app\n    cache: { memory_percent: 10, authorized: true }\n";
    let proxy = Proxy::start(&config(&origin, "memory_percent: 10", extra));
    let addr = proxy.listener("public").await;
    let c = client();
    let page = "/home?cc=max-age%3D60";

    // By default a request with credentials is neither answered from the store nor stored.
    let (_, h, alice) = fetch(&c, addr, "GET", page, &[("authorization", "Bearer alice")]).await;
    assert_eq!(field(&h, "cache-status"), "sluice; fwd=bypass; fwd-status=200; detail=authorized");
    let (_, _, bob) = fetch(&c, addr, "GET", page, &[("authorization", "Bearer bob")]).await;
    assert_ne!(alice, bob);
    let (_, _, anonymous) = fetch(&c, addr, "GET", page, &[]).await;
    assert_eq!(origin.hits(page), 3);
    // The anonymous answer is stored, and still never given to a request with credentials.
    let (_, _, again) = fetch(&c, addr, "GET", page, &[]).await;
    assert_eq!(again, anonymous);
    let (_, _, carol) = fetch(&c, addr, "GET", page, &[("authorization", "Bearer carol")]).await;
    assert_ne!(carol, anonymous);
    assert_eq!(origin.hits(page), 4);
    let s = scrape(&proxy).await;
    let results = |r: &str| value(&s, "sluice_cache_requests_total", &[("route", "site"), ("result", r)]);
    assert_eq!(
        (results("bypass"), results("miss"), results("hit")),
        (3.0, 1.0, 1.0),
        "a bypass is not also a miss"
    );

    // With `authorized: true`, only answers that say they may be shared are stored, and only
    // requests with credentials get them.
    let plain = "/members/plain?cc=max-age%3D60";
    fetch(&c, addr, "GET", plain, &[("authorization", "Bearer alice")]).await;
    let (_, h, _) = fetch(&c, addr, "GET", plain, &[("authorization", "Bearer bob")]).await;
    assert_eq!(origin.hits(plain), 2, "max-age alone does not make it shareable: {h:?}");
    let shared = "/members/news?cc=public,%20max-age%3D60";
    let (_, _, first) = fetch(&c, addr, "GET", shared, &[("authorization", "Bearer alice")]).await;
    let (_, _, second) = fetch(&c, addr, "GET", shared, &[("authorization", "Bearer bob")]).await;
    assert_eq!((first.as_str(), origin.hits(shared)), (second.as_str(), 1));
    let (_, _, outsider) = fetch(&c, addr, "GET", shared, &[]).await;
    assert_ne!(outsider, first, "an anonymous request is another class");
    assert_eq!(origin.hits(shared), 2);
}

#[tokio::test]
async fn a_stampede_on_a_cold_key_makes_one_upstream_request() {
    let origin = Origin::start("o").await;
    let proxy = Proxy::start(&config(&origin, "memory_percent: 10", ""));
    let addr = proxy.listener("public").await;
    let slow = "/hot?cc=max-age%3D60&delay=300";
    // Ten HTTP/2 connections of 100 streams each: 1,000 requests at once.
    let clients: Vec<Client> = (0..10).map(|_| h2_client()).collect();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let c = clients[i % 10].clone();
        tasks.push(tokio::spawn(async move { fetch(&c, addr, "GET", slow, &[]).await }));
    }
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let (status, _, body) = t.await.unwrap();
        assert_eq!(status, 200);
        bodies.insert(body);
    }
    assert_eq!(origin.hits(slow), 1, "one upstream request for 1,000 clients");
    assert_eq!(bodies.len(), 1);
    let s = scrape(&proxy).await;
    let results = |r: &str| value(&s, "sluice_cache_requests_total", &[("route", "site"), ("result", r)]);
    assert_eq!(results("miss"), 1.0);
    assert_eq!(results("coalesced") + results("hit"), 999.0);
    assert!(results("coalesced") > 0.0);
}

#[tokio::test]
async fn memory_stays_bounded_and_purges_and_config_changes_drop_entries() {
    let origin = Origin::start("o").await;
    let cfg = |timeout: &str| {
        config(&origin, "memory_percent: 50, max_object: 64KiB", "")
            .replace("retries:", &format!("timeout: {timeout}\n    retries:"))
    };
    let proxy = Proxy::start_with(&cfg("15s"), &["--cache-memory", "1MiB"]);
    let addr = proxy.listener("public").await;
    let c = client();
    for i in 0..40 {
        fetch(&c, addr, "GET", &format!("/obj/{i}?cc=max-age%3D600&size=40000"), &[]).await;
    }
    let big = "/big?cc=max-age%3D600&size=70000";
    let (_, _, body) = fetch(&c, addr, "GET", big, &[]).await;
    assert_eq!(body.len(), 70_000, "passed through whole");
    fetch(&c, addr, "GET", big, &[]).await;
    assert_eq!(origin.hits(big), 2, "over max_object: not stored");
    let s = scrape(&proxy).await;
    let bytes = value(&s, "sluice_cache_bytes", &[("route", "site")]);
    assert_eq!(value(&s, "sluice_cache_capacity_bytes", &[("route", "site")]), 524_288.0);
    assert!(bytes > 200_000.0 && bytes <= 524_288.0, "{bytes}");
    assert!(value(&s, "sluice_cache_evictions_total", &[("route", "site")]) > 0.0);
    assert_eq!(
        value(&s, "sluice_cache_not_stored_total", &[("route", "site"), ("reason", "too_large")]),
        2.0
    );

    // A purge by path (with any query) and by prefix, on the admin listener.
    let kept = "/keep?cc=max-age%3D600";
    fetch(&c, addr, "GET", kept, &[]).await;
    let purge = |q: &str| {
        let c = client();
        let url = format!("http://{}/cache/purge?{q}", proxy.admin);
        async move {
            let (status, _, body) = send(&c, request("POST", &url).body(full("")).unwrap()).await;
            (status, body)
        }
    };
    let (status, body) = purge("route=site&path=%2Fkeep").await;
    assert_eq!((status, body["removed"].as_u64()), (StatusCode::OK, Some(1)), "{body}");
    fetch(&c, addr, "GET", kept, &[]).await;
    assert_eq!(origin.hits(kept), 2);
    assert_eq!(purge("route=nowhere").await.0, 404);
    assert_eq!(purge("route=site&path=%2Fa&prefix=%2Fb").await.0, 400);

    // Another config for the route: its entries go.
    fetch(&c, addr, "GET", kept, &[]).await;
    assert_eq!(origin.hits(kept), 2);
    proxy.write_config(&cfg("14s"));
    eventually!(WITHIN, proxy.version().await == 2);
    fetch(&c, addr, "GET", kept, &[]).await;
    assert_eq!(origin.hits(kept), 3);
}

#[tokio::test]
async fn canary_pools_vary_and_stale_answers() {
    let stable = Origin::start("stable").await;
    let beta = Origin::start("beta").await;
    let config = format!(
        r#"listeners: [{{ name: public, address: '127.0.0.1:0' }}]
pools:
  - {{ name: stable, endpoints: [{{ address: '{}' }}] }}
  - {{ name: beta, endpoints: [{{ address: '{}' }}] }}
routes:
  - name: site
    pool: stable
    retries: {{ max_attempts: 1 }}
    cohorts: {{ header: x-cohort, values: {{ beta: beta }} }}
    cache: {{ memory_percent: 10, vary: [accept-language] }}
"#,
        stable.addr, beta.addr
    );
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;
    let c = client();
    let page = "/p?cc=max-age%3D60";
    let (_, _, b) = fetch(&c, addr, "GET", page, &[("x-cohort", "beta")]).await;
    let (_, _, s) = fetch(&c, addr, "GET", page, &[]).await;
    assert!(b.starts_with("beta") && s.starts_with("stable"), "{b} / {s}");
    assert_eq!(fetch(&c, addr, "GET", page, &[("x-cohort", "beta")]).await.2, b);
    assert_eq!(fetch(&c, addr, "GET", page, &[]).await.2, s);
    assert_eq!((stable.hits(page), beta.hits(page)), (1, 1));
    // What canary brakes and rollout gates judge counts the upstream's answers, not the hits.
    let s = scrape(&proxy).await;
    let judged: f64 = s
        .samples
        .iter()
        .filter(|x| {
            x.metric == "sluice_route_variant_requests_total" && x.labels.get("route") == Some("site")
        })
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(judged, 2.0);

    // Vary: one stored answer per language.
    let v = "/v?cc=max-age%3D60&vary=accept-language";
    let en = fetch(&c, addr, "GET", v, &[("accept-language", "en")]).await.2;
    let de = fetch(&c, addr, "GET", v, &[("accept-language", "de")]).await.2;
    assert_eq!(fetch(&c, addr, "GET", v, &[("accept-language", "en")]).await.2, en);
    assert_eq!(fetch(&c, addr, "GET", v, &[("accept-language", "de")]).await.2, de);
    assert_eq!(stable.hits(v), 2);
    // A field the route does not vary on: passed through.
    let star = "/star?cc=max-age%3D60&vary=*";
    fetch(&c, addr, "GET", star, &[]).await;
    fetch(&c, addr, "GET", star, &[]).await;
    assert_eq!(stable.hits(star), 2);

    // stale-if-error: the upstream fails, the stale object answers.
    let sie = "/sie?cc=max-age%3D1,%20stale-if-error%3D60";
    let (_, _, body) = fetch(&c, addr, "GET", sie, &[]).await;
    // stale-while-revalidate: served stale at once, refreshed behind.
    let swr = "/swr?cc=max-age%3D1,%20stale-while-revalidate%3D60";
    let (_, _, old) = fetch(&c, addr, "GET", swr, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, h, stale) = fetch(&c, addr, "GET", swr, &[]).await;
    assert_eq!(stale, old);
    assert!(field(&h, "cache-status").contains("detail=stale-while-revalidate"), "{h:?}");
    eventually!(WITHIN, stable.hits(swr) == 2);
    eventually!(WITHIN, fetch(&c, addr, "GET", swr, &[]).await.2 != old);
    assert_eq!(stable.hits(swr), 2, "the refreshed object answers");

    stable.fail(true);
    let (status, h, stale) = fetch(&c, addr, "GET", sie, &[]).await;
    assert_eq!((status, &stale), (StatusCode::OK, &body), "{h:?}");
    assert!(field(&h, "cache-status").contains("detail=stale-if-error"), "{h:?}");
    let (status, _, _) = fetch(&c, addr, "GET", "/never-stored?cc=max-age%3D60", &[]).await;
    assert_eq!(status, 503);
    stable.fail(false);

    // Malformed caching fields: passed through, not stored, counted.
    for path in
        ["/m1?cc=max-age%3D1,%20max-age%3D2", "/m2?cc=max-age%3D60&h_age=abc", "/m3?cc=max-age%3D%2760%27"]
    {
        fetch(&c, addr, "GET", path, &[]).await;
        fetch(&c, addr, "GET", path, &[]).await;
        assert_eq!(stable.hits(path), 2, "{path}");
    }
    let many: String = (0..300).map(|i| format!("x-f{i}")).collect::<Vec<_>>().join(",");
    let path = format!("/m4?cc=max-age%3D60&vary={many}");
    fetch(&c, addr, "GET", &path, &[]).await;
    fetch(&c, addr, "GET", &path, &[]).await;
    assert_eq!(stable.hits(&path), 2);
    let s = scrape(&proxy).await;
    assert_eq!(
        value(&s, "sluice_cache_not_stored_total", &[("route", "site"), ("reason", "malformed")]),
        6.0
    );
    assert_eq!(value(&s, "sluice_cache_not_stored_total", &[("route", "site"), ("reason", "vary")]), 4.0);
}
