//! Large configs: validating, compiling and swapping in the ~10 MiB config of 20,000 routes and
//! 2,000 pools, and route lookup at 10,000 routes against 10 in two shapes (10,000 hosts with one
//! prefix each; one host with 10,000 prefixes). Run with
//! `cargo bench -p sluice-data-plane --bench large_config`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use sluice_bundle::{Format, parse};
use sluice_data_plane::router::{RequestView, Router};
use sluice_data_plane::{Options, Proxy};

#[path = "../../tests/src/large.rs"]
#[allow(dead_code)]
mod large;

const UPSTREAM: &str = "127.0.0.1:9";

fn big_document() -> String {
    large::config(large::ROUTES, large::POOLS, UPSTREAM.parse().expect("address"))
}

fn validate_compile_swap(c: &mut Criterion) {
    let doc = big_document();
    let mut g = c.benchmark_group("config_20k_routes");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("validate", |b| {
        b.iter(|| black_box(parse(black_box(doc.as_bytes()), Format::Json).expect("valid")))
    });
    let config = parse(doc.as_bytes(), Format::Json).expect("valid");
    g.bench_function("compile", |b| {
        b.iter(|| sluice_compile::compile(black_box(&config)).expect("compiles"))
    });
    // Compile, bind (the listener is kept: same address), swap, as a pushed bundle is applied.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let _in_runtime = rt.enter();
    let proxy = Proxy::new(Options { workers: 1, ..Options::default() }).expect("proxy");
    let mut version = 0;
    g.bench_function("compile_and_swap", |b| {
        b.iter(|| {
            version += 1;
            proxy.apply_version(config.clone(), "bench", String::new(), Some(version)).expect("applies")
        })
    });
    g.bench_function("validate_compile_and_swap", |b| {
        b.iter(|| {
            version += 1;
            let config = parse(doc.as_bytes(), Format::Json).expect("valid");
            proxy.apply_version(config, "bench", String::new(), Some(version)).expect("applies")
        })
    });
    g.finish();
}

/// A router over `n` routes, each `(host, path_prefix)`, with the header condition of the large
/// config on every route.
fn router(routes: impl Iterator<Item = (Option<String>, String)>) -> Router {
    let mut doc = String::from(
        "listeners: [{name: l, address: '127.0.0.1:0'}]\npools: [{name: p, endpoints: [{address: '10.0.0.1:80'}]}]\nroutes:\n",
    );
    for (i, (host, prefix)) in routes.enumerate() {
        let host = host.map(|h| format!("host: '{h}', ")).unwrap_or_default();
        doc.push_str(&format!("  - {{name: r{i}, match: {{{host}path_prefix: '{prefix}'}}, pool: p}}\n"));
    }
    let config = parse(doc.as_bytes(), Format::Yaml).expect("bench config is valid");
    Router::compile(&config.routes).expect("compiles")
}

fn lookup(c: &mut Criterion) {
    let headers = {
        let mut h = HeaderMap::new();
        h.insert("x-tenant-key", HeaderValue::from_static("k"));
        h
    };
    let mut g = c.benchmark_group("router_lookup");
    for n in [10usize, 10_000] {
        // Shape 1: n hosts, one prefix each; the request names one in the middle.
        let hosts = router((0..n).map(|i| (Some(large::host(i)), large::prefix(i))));
        let host = large::host(n / 2);
        let path = format!("{}42", large::prefix(n / 2));
        g.bench_function(format!("hosts_{n}"), |b| {
            b.iter(|| {
                let view = RequestView {
                    method: &Method::GET,
                    host: Some(black_box(&host)),
                    path: black_box(&path),
                    query: None,
                    headers: &headers,
                };
                black_box(hosts.find(&view)).expect("routed")
            })
        });
        // Shape 2: one host, n prefixes; the request takes one in the middle.
        let prefixes = router((0..n).map(|i| (Some("api.example.com".to_owned()), large::prefix(i))));
        g.bench_function(format!("prefixes_{n}"), |b| {
            b.iter(|| {
                let view = RequestView {
                    method: &Method::GET,
                    host: Some(black_box("api.example.com")),
                    path: black_box(&path),
                    query: None,
                    headers: &headers,
                };
                black_box(prefixes.find(&view)).expect("routed")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, lookup, validate_compile_swap);
criterion_main!(benches);
