//! A large config document, as a busy multi-tenant edge might have: `routes` routes spread over
//! `pools` pools, each route with a host, a long path prefix and a header condition. Used by
//! the fleet tests (a 10 MiB bundle reaches every data plane) and the benchmarks (compile and
//! swap; route lookup). Kept free of the harness so benchmarks can include it by path.

use std::fmt::Write as _;
use std::net::SocketAddr;

/// Routes and pools of the issue's "about 10 MiB" config.
pub const ROUTES: usize = 20_000;
pub const POOLS: usize = 2_000;

/// The host of route `i`.
pub fn host(i: usize) -> String {
    format!("svc-{i}.tenant-{}.example.com", i % 97)
}

/// The path prefix of route `i`: long, like generated API paths are.
pub fn prefix(i: usize) -> String {
    format!("/api/v1/tenants/{}/services/{i}/{}", i % 97, "resources/collections/items/".repeat(6))
}

/// The document as JSON. Every pool points at `upstream`.
pub fn config(routes: usize, pools: usize, upstream: SocketAddr) -> String {
    let mut doc = String::with_capacity(routes * 560 + pools * 80);
    doc.push_str(r#"{"listeners":[{"name":"public","address":"127.0.0.1:8080"}],"pools":["#);
    for p in 0..pools {
        let sep = if p == 0 { "" } else { "," };
        let _ = write!(doc, r#"{sep}{{"name":"pool-{p}","endpoints":[{{"address":"{upstream}"}}]}}"#);
    }
    doc.push_str(r#"],"routes":["#);
    for i in 0..routes {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(
            doc,
            r#"{sep}{{"name":"route-{i}","match":{{"host":"{}","path_prefix":"{}","headers":[{{"name":"x-tenant-key","exact":"{}"}}]}},"pool":"pool-{}","timeout":"10s"}}"#,
            host(i),
            prefix(i).trim_end_matches('/'),
            format!("{i:08}").repeat(20),
            i % pools.max(1),
        );
    }
    doc.push_str("]}");
    doc
}
