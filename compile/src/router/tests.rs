use http::HeaderValue;
use proptest::prelude::*;
use sluice_bundle::{Format, parse};

use super::*;

/// A router over `routes` (YAML list items, each naming pool `p`).
fn router(routes: &str) -> (Router, Vec<String>) {
    let routes: String = routes.lines().map(|l| format!("  {}\n", l.trim())).collect();
    let doc = format!(
        "listeners: [{{name: l, address: '127.0.0.1:0'}}]\npools: [{{name: p, endpoints: [{{address: 'h:1'}}]}}]\nroutes:\n{routes}"
    );
    let config = parse(doc.as_bytes(), Format::Yaml).unwrap_or_else(|e| panic!("{e}"));
    let names = config.routes.iter().map(|r| r.name.clone()).collect();
    (Router::compile(&config.routes).unwrap(), names)
}

struct Req {
    method: Method,
    host: Option<&'static str>,
    uri: &'static str,
    headers: HeaderMap,
}

fn req(host: Option<&'static str>, uri: &'static str) -> Req {
    Req { method: Method::GET, host, uri, headers: HeaderMap::new() }
}

impl Req {
    fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }

    fn header(mut self, k: &'static str, v: &'static str) -> Self {
        self.headers.append(k, HeaderValue::from_static(v));
        self
    }
}

fn find<'a>((r, names): &'a (Router, Vec<String>), q: &Req) -> Option<&'a str> {
    let (path, query) = match q.uri.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (q.uri, None),
    };
    let view = RequestView { method: &q.method, host: q.host, path, query, headers: &q.headers };
    r.find(&view).map(|i| names[i].as_str())
}

#[test]
fn host_tiers_exact_then_longest_wildcard_then_any() {
    let r = router(
        "  - {name: any, pool: p}\n\
         - {name: wild, match: {host: '*.example.com'}, pool: p}\n\
         - {name: wild-deep, match: {host: '*.eu.example.com'}, pool: p}\n\
         - {name: exact, match: {host: api.example.com}, pool: p}\n",
    );
    assert_eq!(find(&r, &req(Some("api.example.com"), "/")), Some("exact"));
    assert_eq!(find(&r, &req(Some("API.Example.COM:8080"), "/")), Some("exact"));
    assert_eq!(find(&r, &req(Some("api.example.com."), "/")), Some("exact"));
    assert_eq!(find(&r, &req(Some("x.eu.example.com"), "/")), Some("wild-deep"));
    assert_eq!(find(&r, &req(Some("a.b.example.com"), "/")), Some("wild"));
    assert_eq!(find(&r, &req(Some("example.com"), "/")), Some("any"), "a wildcard needs a subdomain");
    assert_eq!(find(&r, &req(None, "/")), Some("any"));
}

#[test]
fn a_specific_host_falls_through_to_less_specific_tiers() {
    let r = router(
        "  - {name: api-users, match: {host: api.example.com, path_prefix: /users}, pool: p}\n\
         - {name: fallback, match: {path_prefix: /}, pool: p}\n",
    );
    assert_eq!(find(&r, &req(Some("api.example.com"), "/users/1")), Some("api-users"));
    assert_eq!(find(&r, &req(Some("api.example.com"), "/orders")), Some("fallback"));
}

#[test]
fn path_precedence_exact_regex_longest_prefix() {
    let r = router(
        "  - {name: root, match: {path_prefix: /}, pool: p}\n\
         - {name: users, match: {path_prefix: /users}, pool: p}\n\
         - {name: users-admin, match: {path_prefix: /users/admin/}, pool: p}\n\
         - {name: user-id, match: {path_regex: '/users/[0-9]+'}, pool: p}\n\
         - {name: users-me, match: {path: /users/me}, pool: p}\n",
    );
    assert_eq!(find(&r, &req(None, "/users/me")), Some("users-me"));
    assert_eq!(find(&r, &req(None, "/users/42")), Some("user-id"));
    assert_eq!(find(&r, &req(None, "/users/42/orders")), Some("users"), "regex matches the whole path");
    assert_eq!(find(&r, &req(None, "/users/admin")), Some("users-admin"), "trailing slash ignored");
    assert_eq!(find(&r, &req(None, "/users")), Some("users"));
    assert_eq!(find(&r, &req(None, "/usersx")), Some("root"), "prefixes match whole segments");
    assert_eq!(find(&r, &req(None, "/users/me?x=1")), Some("users-me"), "query is not part of the path");
}

#[test]
fn methods_then_header_count_then_query_count_then_order() {
    let r = router(
        "  - {name: plain, match: {path_prefix: /a}, pool: p}\n\
         - {name: get, match: {path_prefix: /a, methods: [GET]}, pool: p}\n\
         - {name: hdr, match: {path_prefix: /a, headers: [{name: x-env, exact: canary}]}, pool: p}\n\
         - {name: hdr2, match: {path_prefix: /a, headers: [{name: x-env, prefix: can}, {name: x-beta, present: true}]}, pool: p}\n\
         - {name: qry, match: {path_prefix: /b, query: [{name: debug, exact: 'a b'}]}, pool: p}\n\
         - {name: tie-first, match: {path_prefix: /b, query: [{name: v, present: true}]}, pool: p}\n\
         - {name: tie-second, match: {path_prefix: /b, query: [{name: w, present: true}]}, pool: p}\n\
         - {name: absent, match: {path_prefix: /c, headers: [{name: x-debug, present: false}]}, pool: p}\n",
    );
    assert_eq!(find(&r, &req(None, "/a")), Some("get"));
    assert_eq!(find(&r, &req(None, "/a").method(Method::POST)), Some("plain"));
    assert_eq!(find(&r, &req(None, "/a").method(Method::POST).header("x-env", "canary")), Some("hdr"));
    assert_eq!(
        find(&r, &req(None, "/a").method(Method::POST).header("x-env", "canary").header("x-beta", "")),
        Some("hdr2")
    );
    assert_eq!(find(&r, &req(None, "/b?debug=a%20b")), Some("qry"), "query values are percent-decoded");
    assert_eq!(find(&r, &req(None, "/b?v&w=1")), Some("tie-first"));
    assert_eq!(find(&r, &req(None, "/b?w=1")), Some("tie-second"));
    assert_eq!(find(&r, &req(None, "/b")), None);
    assert_eq!(find(&r, &req(None, "/c")), Some("absent"));
    assert_eq!(find(&r, &req(None, "/c").header("x-debug", "1")), None);
}

#[test]
fn header_regex_and_multiple_values() {
    let r = router("  - {name: re, match: {headers: [{name: x-user, regex: 'u[0-9]+'}]}, pool: p}\n");
    assert_eq!(find(&r, &req(None, "/").header("x-user", "u12")), Some("re"));
    assert_eq!(find(&r, &req(None, "/").header("x-user", "u12x")), None, "whole value must match");
    assert_eq!(find(&r, &req(None, "/").header("x-user", "nope").header("x-user", "u7")), Some("re"));
}

#[test]
fn percent_decoding() {
    assert_eq!(&*percent_decode("a%20b%zz%4"), b"a b%zz%4");
    assert_eq!(&*percent_decode("%41%42"), b"AB");
    assert!(matches!(percent_decode("plain"), Cow::Borrowed(_)));
}

proptest! {
    /// Declaration order only matters for ties: two routes that differ in specificity resolve
    /// the same way whichever is written first.
    #[test]
    fn order_does_not_matter_without_ties(a in 1usize..6, b in 1usize..6, depth in 1usize..6) {
        prop_assume!(a != b);
        let prefix = |n: usize| (0..n).map(|i| format!("/s{i}")).collect::<String>();
        let ra = format!("  - {{name: a, match: {{path_prefix: '{}'}}, pool: p}}\n", prefix(a));
        let rb = format!("  - {{name: b, match: {{path_prefix: '{}'}}, pool: p}}\n", prefix(b));
        let path: &'static str = Box::leak(prefix(depth).into_boxed_str());
        let one = router(&format!("{ra}{rb}"));
        let two = router(&format!("{rb}{ra}"));
        prop_assert_eq!(find(&one, &req(None, path)), find(&two, &req(None, path)));
        let expect = if depth >= a.max(b) { Some(if a > b { "a" } else { "b" }) }
            else if depth >= a.min(b) { Some(if a < b { "a" } else { "b" }) }
            else { None };
        prop_assert_eq!(find(&one, &req(None, path)), expect);
    }

    #[test]
    fn arbitrary_requests_never_panic(host in "\\PC{0,30}", path in "/\\PC{0,30}", query in "\\PC{0,30}") {
        let r = router(
            "  - {name: a, match: {host: '*.x.com', path_regex: '/a.*', query: [{name: q, prefix: '%'}]}, pool: p}\n\
             - {name: b, match: {path_prefix: /b}, pool: p}\n",
        );
        let h = HeaderMap::new();
        let view = RequestView { method: &Method::GET, host: Some(&host), path: &path, query: Some(&query), headers: &h };
        let _ = r.0.find(&view);
    }
}

/// What the index replaced: every tier scanned in precedence order, wildcards longest first.
fn find_linear(r: &Router, req: &RequestView<'_>) -> Option<usize> {
    let host = req.host.map(normalize_host);
    let host = host.as_deref().unwrap_or("");
    let first = |t: &Tier| t.all.iter().copied().find(|i| r.matchers[*i as usize].matches(req));
    if let Some(i) = r.exact.get(host).and_then(first) {
        return Some(i as usize);
    }
    let mut wild: Vec<(&Box<str>, &Tier)> = r.wildcard.iter().collect();
    wild.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(b.0)));
    for (suffix, tier) in wild {
        if host.len() > suffix.len()
            && host.ends_with(&**suffix)
            && let Some(i) = first(tier)
        {
            return Some(i as usize);
        }
    }
    first(&r.any).map(|i| i as usize)
}

proptest! {
    /// The indexed lookup picks exactly the route a scan in precedence order would, over
    /// random tables of exact, prefix and regex paths, exact and wildcard hosts, and methods.
    #[test]
    fn the_index_finds_what_a_scan_finds(
        routes in proptest::collection::vec((0usize..4, 0usize..4, 0usize..4, any::<bool>()), 1..24),
        host in 0usize..6,
        path in 0usize..8,
        post in any::<bool>(),
    ) {
        let hosts = ["", "a.x.com", "b.a.x.com", "*.x.com", "*.a.x.com"];
        let paths = ["", "/a", "/a/b", "/a/b/c"];
        let mut yaml = String::new();
        for (i, (h, kind, p, methods)) in routes.iter().enumerate() {
            let mut m = Vec::new();
            if !hosts[*h].is_empty() {
                m.push(format!("host: '{}'", hosts[*h]));
            }
            match (kind, paths[*p]) {
                (_, "") => {}
                (0, p) => m.push(format!("path: '{p}'")),
                (1, p) => m.push(format!("path_regex: '{p}.*'")),
                (_, p) => m.push(format!("path_prefix: '{p}'")),
            }
            if *methods {
                m.push("methods: [POST]".into());
            }
            // Unique conditions per route, so the parser does not refuse twins.
            m.push(format!("headers: [{{name: x-n, present: {}}}]", i % 2 == 0));
            m.push(format!("query: [{{name: q{i}, present: false}}]"));
            yaml.push_str(&format!("  - {{name: r{i}, match: {{{}}}, pool: p}}\n", m.join(", ")));
        }
        let r = router(&yaml);
        let hosts_req = ["a.x.com", "b.a.x.com", "c.b.a.x.com", "x.com", "A.X.COM:8080", "other"];
        let paths_req = ["/", "/a", "/a/", "/a/b", "/a/bc", "/a/b/c/d", "/b", "//a"];
        let headers = HeaderMap::new();
        let method = if post { Method::POST } else { Method::GET };
        let view = RequestView {
            method: &method,
            host: Some(hosts_req[host]),
            path: paths_req[path],
            query: None,
            headers: &headers,
        };
        prop_assert_eq!(r.0.find(&view), find_linear(&r.0, &view));
    }
}
