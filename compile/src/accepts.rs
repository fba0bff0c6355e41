//! `parse` and `compile` agree: every config `parse` accepts compiles, so the control plane's
//! check and a data plane's apply can fail only on what `parse` reports first. Documents are
//! built from fragments that are mostly valid and sometimes hostile (odd tokens, bad regexes,
//! lowercase methods, addresses `http` reads differently); `parse` must refuse what compile would.

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice_bundle::{ConfigError, Format, parse, parse_value};

use super::*;

/// Mostly `good`, sometimes one of `odd`.
fn pick(good: &'static [&'static str], odd: &'static [&'static str]) -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(good).prop_map(str::to_owned),
        1 => prop::sample::select(odd).prop_map(str::to_owned),
    ]
    .boxed()
}

fn header_name() -> BoxedStrategy<String> {
    pick(&["x-cohort", "X-User", "accept", "x_under"], &["", "a b", "x:y", "ü", "!#$%&'*+-.^_`|~", "X\u{7f}"])
}

fn regex() -> BoxedStrategy<String> {
    pick(
        &["/a/[0-9]+", "v\\d", ".*", "(?i)beta"],
        &["(", "a{100000}", "[[:alpha:]", "\\p{Greek}+", "(?P<x>a)"],
    )
}

fn method() -> BoxedStrategy<String> {
    pick(&["GET", "POST", "PUT", "BREW"], &["get", "", "G ET", "PATCH\u{0}", "M-SEARCH"])
}

fn address() -> BoxedStrategy<String> {
    pick(
        &["127.0.0.1:9001", "[::1]:9002", "backend.internal:80", "localhost:8080"],
        &[
            "a_b.example:80",
            "http://x:1",
            "x:0",
            "[::1]",
            "xn--bcher-kva.example:1",
            "host:99999",
            "1.2.3.4.5:1",
        ],
    )
}

fn pointer() -> BoxedStrategy<String> {
    pick(&["/id", "/items/*/at", "/a~1b", "email"], &["", "/", "a/b", "/~2", "/x~", "~0"])
}

fn value_match() -> BoxedStrategy<Value> {
    (header_name(), 0..4u8, regex())
        .prop_map(|(name, kind, re)| match kind {
            0 => json!({"name": name, "exact": "beta"}),
            1 => json!({"name": name, "prefix": "b"}),
            2 => json!({"name": name, "regex": re}),
            _ => json!({"name": name, "present": true}),
        })
        .boxed()
}

fn pool_name(pools: usize) -> BoxedStrategy<String> {
    prop_oneof![9 => (0..pools).prop_map(|i| format!("p{i}")), 1 => Just("missing".to_owned())].boxed()
}

/// A few cohorts, or about as many as a route may have.
fn cohort_values(pools: usize) -> BoxedStrategy<std::collections::BTreeMap<String, String>> {
    let many = (250..258usize)
        .prop_map(move |n| (0..n).map(|i| (format!("c{i}"), format!("p{}", i % pools))).collect());
    prop_oneof![
        9 => prop::collection::btree_map("[a-z]{1,6}", pool_name(pools), 1..4),
        1 => many,
    ]
    .boxed()
}

fn route(i: usize, pools: usize) -> impl Strategy<Value = Value> {
    let matcher = (
        prop::option::of(regex()),
        prop::collection::vec(method(), 0..3),
        prop::collection::vec(value_match(), 0..3),
        prop::collection::vec(value_match(), 0..2),
    );
    let split = (
        prop::option::of((pool_name(pools), 0.0..=100.0f64)),
        prop::option::of((any::<bool>(), header_name(), cohort_values(pools))),
    );
    let mirror = prop::option::of((
        pool_name(pools),
        prop::option::of(prop::collection::vec(method(), 1..3)),
        prop::option::of((
            prop::collection::vec(header_name(), 0..3),
            prop::collection::vec(pointer(), 0..3),
            prop::collection::vec(pointer(), 0..3),
            prop::collection::vec(regex(), 0..2),
            prop::option::of(pool_name(pools)),
        )),
    ));
    (pool_name(pools), matcher, split, mirror).prop_map(move |(pool, (re, methods, headers, query), split, mirror)| {
        let mut m = json!({"path_prefix": format!("/r{i}")});
        if let Some(re) = re {
            m = json!({"path_regex": format!("/r{i}{re}")});
        }
        m["methods"] = json!(methods);
        m["headers"] = json!(headers);
        m["query"] = json!(query);
        let mut r = json!({"name": format!("r{i}"), "match": m, "pool": pool});
        let (canary, cohorts) = split;
        if let Some((pool, weight)) = canary {
            r["canary"] = json!({"pool": pool, "weight": weight});
        }
        if let Some((by_header, header, values)) = cohorts {
            r["cohorts"] =
                if by_header { json!({"header": header, "values": values}) } else { json!({"cookie": "beta", "values": values}) };
        }
        if let Some((pool, methods, diff)) = mirror {
            r["mirror"] = json!({"pool": pool});
            if let Some(methods) = methods {
                r["mirror"]["methods"] = json!(methods);
            }
            if let Some((headers, ignore, mask, patterns, baseline)) = diff {
                r["mirror"]["diff"] =
                    json!({"headers": headers, "ignore": ignore, "mask": mask, "mask_patterns": patterns});
                if let Some(pool) = baseline {
                    r["mirror"]["diff"]["baseline"] = json!({"pool": pool});
                }
            }
        }
        r
    })
}

fn document() -> impl Strategy<Value = Value> {
    (1..4usize, 0..5usize).prop_flat_map(|(n_pools, n_routes)| {
        let pools =
            prop::collection::vec(prop::collection::vec(address(), 1..3), n_pools).prop_map(|pools| {
                pools
                    .into_iter()
                    .enumerate()
                    .map(|(i, addresses)| {
                        let endpoints: Vec<Value> = addresses.iter().map(|a| json!({"address": a})).collect();
                        json!({"name": format!("p{i}"), "endpoints": endpoints})
                    })
                    .collect::<Vec<_>>()
            });
        let routes: Vec<_> = (0..n_routes).map(|i| route(i, n_pools)).collect();
        (pools, routes).prop_map(|(pools, routes)| {
            json!({
                "listeners": [{"name": "public", "address": "127.0.0.1:8080"}],
                "pools": pools,
                "routes": routes,
            })
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, max_global_rejects: 4096, ..ProptestConfig::default() })]

    /// Too many refusals fail the run (`max_global_rejects`), so this cannot pass by accepting
    /// nothing.
    #[test]
    fn every_config_parse_accepts_compiles(doc in document()) {
        let parsed = parse_value(&doc);
        prop_assume!(parsed.is_ok());
        let config = parsed.unwrap();
        if let Err(e) = compile(&config) {
            prop_assert!(false, "parse accepted what compile refuses: {e}\n{doc:#}");
        }
    }
}

fn demo() -> Config {
    let doc = r#"
listeners: [{name: public, address: 127.0.0.1:8080}]
pools:
  - {name: a, endpoints: [{address: 127.0.0.1:9001}]}
  - {name: b, endpoints: [{address: 127.0.0.1:9002}]}
routes:
  - name: one
    match: {path_prefix: /one, methods: [GET], headers: [{name: x-beta, regex: "y.*"}]}
    pool: a
    canary: {pool: b, weight: 10}
    cohorts: {header: x-cohort, values: {beta: b, gamma: a}}
    mirror: {pool: b, diff: {ignore: [/id], baseline: {pool: a}}}
  - {name: two, pool: b}
"#;
    parse(doc.as_bytes(), Format::Yaml).expect("valid")
}

#[test]
fn plans_resolve_pools_by_index() {
    let compiled = compile(&demo()).expect("compiles");
    assert_eq!(compiled.pools[1].endpoints[0].as_str(), "127.0.0.1:9002");
    let one = &compiled.routes[0];
    assert_eq!(one.pool, Some(0));
    let split = one.split.as_ref().expect("split");
    assert_eq!(split.canary_pool, Some(1));
    let cohorts = split.cohorts.as_ref().expect("cohorts");
    assert!(matches!(&cohorts.key, CohortKey::Header(h) if h == "x-cohort"));
    let values: Vec<(&str, usize)> = cohorts.values.iter().map(|(v, p)| (&**v, *p)).collect();
    assert_eq!(values, [("beta", 1), ("gamma", 0)]);
    let mirror = one.mirror.as_ref().expect("mirror");
    assert_eq!((mirror.pool, mirror.diff.as_ref().and_then(|d| d.baseline_pool)), (1, Some(0)));
    assert!(compiled.routes[1].split.is_none() && compiled.routes[1].mirror.is_none());
}

/// A `Config` built in code skips `parse`; compile still names every problem with its path.
#[test]
fn errors_are_values_with_paths_all_at_once() {
    let mut config = demo();
    config.routes[0].matcher.headers[0].regex = Some("(".into());
    config.routes[0].matcher.methods.push("G ET".into());
    config.routes[0].cohorts.as_mut().expect("cohorts").values.insert("delta".into(), "nope".into());
    config.routes[1].pool = Some("gone".into());
    config.pools[0].endpoints[0].address = "a b:1".into();
    let errors = compile(&config).expect_err("refused").0;
    let paths: Vec<&str> = errors.iter().map(|e: &ConfigError| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[0].match.methods[1]",
            "routes[0].match.headers[0].regex",
            "pools[0].endpoints[0].address",
            "routes[0].cohorts.values.delta",
            "routes[1].pool",
        ],
        "{errors:?}"
    );
    assert!(errors.iter().all(|e| !e.message.is_empty()));
    assert_eq!(errors[4].message, "unknown pool `gone`");
}
