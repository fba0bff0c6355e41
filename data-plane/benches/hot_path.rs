//! Hot-path pieces, each per request: routing, endpoint choice, request ids, header rules, a
//! route's header transform, a route's JWT check and the strict framing check. Run with `cargo bench -p sluice-data-plane --bench hot_path`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use sluice_bundle::{Format, parse};
use sluice_data_plane::headers;
use sluice_data_plane::listener::strict::Framing;
use sluice_data_plane::router::{RequestView, Router};
use sluice_data_plane::transform::{HeaderRules, Vars};
use sluice_data_plane::upstream::{PickContext, Pool, PoolRegistry};

/// 50 routes over 10 hosts, the kind of table a mid-sized fleet has.
fn config() -> sluice_bundle::Config {
    let mut doc = String::from("listeners: [{name: l, address: '127.0.0.1:0'}]\npools:\n");
    for b in ["round_robin", "weighted", "least_request"] {
        doc.push_str(&format!(
            "  - name: {b}\n    balancer: {b}\n    endpoints: [{{address: '10.0.0.1:80', weight: 3}}, {{address: '10.0.0.2:80'}}, {{address: '10.0.0.3:80'}}]\n"
        ));
    }
    doc.push_str("  - name: consistent_hash\n    balancer: consistent_hash\n    hash_on: {header: x-user}\n    endpoints: [{address: '10.0.0.1:80'}, {address: '10.0.0.2:80'}, {address: '10.0.0.3:80'}]\n");
    doc.push_str("routes:\n");
    for h in 0..10 {
        for r in 0..5 {
            doc.push_str(&format!(
                "  - {{name: r{h}-{r}, match: {{host: svc{h}.example.com, path_prefix: /api/v{r}}}, pool: round_robin}}\n"
            ));
        }
    }
    doc.push_str("  - {name: fallback, pool: round_robin}\n");
    parse(doc.as_bytes(), Format::Yaml).expect("bench config is valid")
}

fn routing(c: &mut Criterion) {
    let config = config();
    let router = Router::compile(&config.routes).expect("compiles");
    let headers = HeaderMap::new();
    c.bench_function("router/find_exact_host_prefix", |b| {
        b.iter(|| {
            let view = RequestView {
                method: &Method::GET,
                host: Some(black_box("svc7.example.com:8080")),
                path: black_box("/api/v3/users/42"),
                query: None,
                headers: &headers,
            };
            black_box(router.find(&view))
        })
    });
    c.bench_function("router/find_fallback", |b| {
        b.iter(|| {
            let view = RequestView {
                method: &Method::GET,
                host: Some(black_box("unknown.example.org")),
                path: black_box("/"),
                query: None,
                headers: &headers,
            };
            black_box(router.find(&view))
        })
    });
}

fn balancing(c: &mut Criterion) {
    let config = config();
    let registry = PoolRegistry::default();
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_static("user-1234"));
    let ctx = PickContext { headers: &headers, client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST) };
    let plans = sluice_compile::compile(&config).expect("compiles").pools;
    for (i, (p, plan)) in config.pools.iter().zip(plans).enumerate() {
        let pool = Pool::compile(i, p, plan, &registry).expect("compiles");
        c.bench_function(&format!("pick/{}", p.name), |b| {
            b.iter(|| black_box(pool.endpoints[pool.pick(&ctx, &[])].weight))
        });
    }
}

fn request_headers(c: &mut Criterion) {
    c.bench_function("headers/new_request_id", |b| b.iter(headers::new_request_id));
    let mut template = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "10.1.1.1"),
    ] {
        template.insert(k, HeaderValue::from_static(v));
    }
    let ip = HeaderValue::from_static("127.0.0.1");
    c.bench_function("headers/strip_and_forward", |b| {
        b.iter(|| {
            let mut h = template.clone();
            headers::strip_hop_by_hop(&mut h);
            let host = h.get("host").cloned();
            headers::set_forwarded(&mut h, &ip, HeaderValue::from_static("http"), host);
            black_box(h)
        })
    });
}

/// A route's transform: strip one field, set a static one and one with variables, add one; the
/// clone of the map is measured alone as `headers/clone_only` to subtract.
fn header_transform(c: &mut Criterion) {
    let ops = sluice_bundle::HeaderOps {
        set: vec![
            sluice_bundle::HeaderEntry { name: "x-env".into(), value: "prod".into() },
            sluice_bundle::HeaderEntry { name: "x-client".into(), value: "%client_ip% %request_id%".into() },
        ],
        add: vec![sluice_bundle::HeaderEntry { name: "x-route".into(), value: "%route%".into() }],
        remove: vec!["x-internal".into()],
    };
    let rules = HeaderRules::compile(Some(&ops), "api", "/api").expect("rules");
    let mut template = HeaderMap::with_capacity(16);
    for (k, v) in [("host", "api.example.com"), ("user-agent", "wrk"), ("accept", "*/*"), ("x-internal", "1")]
    {
        template.insert(k, HeaderValue::from_static(v));
    }
    let id = HeaderValue::from_static("0f8fad5b-d9cb-469f-a165-70867728950e");
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    c.bench_function("headers/clone_only", |b| b.iter(|| black_box(template.clone())));
    c.bench_function("headers/route_transform", |b| {
        b.iter(|| {
            let mut h = template.clone();
            rules.apply(&mut h, &Vars::plain(client, &id));
            black_box(h)
        })
    });
}

/// A route's JWT check: a token seen before (the cache: the common case, a client reusing its
/// token), and the signature verification a new token costs, per algorithm.
fn jwt(c: &mut Criterion) {
    use sluice_data_plane::auth::jwks::{KeySources, SourceSpec};
    use sluice_data_plane::auth::jwt::JwtPolicy;
    use sluice_test_support::jwt::{Issuer, jwks, now};

    let issuers = [Issuer::rs256("r"), Issuer::es256("e"), Issuer::eddsa("d")];
    let dir = sluice_test_support::temp_dir();
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks(&issuers.iter().collect::<Vec<_>>())).expect("bench setup");
    let keys = KeySources::default().get(&SourceSpec::File(path)).expect("bench setup");
    let doc = "listeners: [{name: l, address: '127.0.0.1:0'}]\npools: [{name: p, endpoints: [{address: 'a:1'}]}]\nroutes:\n  - name: r\n    pool: p\n    jwt: {jwks_file: /k.json, issuer: https://idp.test, audiences: [api], claims_to_headers: [{claim: sub, header: x-user}]}\n";
    let rule =
        parse(doc.as_bytes(), Format::Yaml).expect("bench setup").routes[0].jwt.clone().expect("bench setup");
    let policy = JwtPolicy::compile(&rule, keys.clone());
    let claims =
        serde_json::json!({"iss": "https://idp.test", "aud": "api", "sub": "alice", "exp": now() + 3600});
    let set = keys.current().expect("bench setup");
    for issuer in &issuers {
        let token = issuer.token(&claims);
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::try_from(format!("Bearer {token}")).expect("bench setup"),
        );
        policy.check(&headers, now()).expect("bench setup");
        c.bench_function(&format!("jwt/cached_{}", issuer.alg()), |b| {
            b.iter(|| black_box(policy.check(black_box(&headers), now()).expect("bench setup")))
        });
        c.bench_function(&format!("jwt/verify_{}", issuer.alg()), |b| {
            b.iter(|| black_box(policy.verify(black_box(&token), &set, now()).expect("bench setup")))
        });
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn strict_framing(c: &mut Criterion) {
    let head = b"GET /api/v3/users/42 HTTP/1.1\r\nHost: svc7.example.com\r\nUser-Agent: wrk/4.2\r\nAccept: */*\r\nX-Request-Id: 0f8fad5b-d9cb-469f-a165-70867728950e\r\n\r\n";
    let mut framing = Framing::default();
    c.bench_function("strict/typical_get_head", |b| b.iter(|| black_box(framing.feed(black_box(head)))));
}

criterion_group!(benches, routing, balancing, request_headers, header_transform, jwt, strict_framing);
criterion_main!(benches);
