use proptest::prelude::*;

use super::*;

const EXAMPLE: &str = r#"
listeners:
  - name: public
    address: 0.0.0.0:8080
pools:
  - name: users-v1
    balancer: round_robin
    endpoints:
      - address: 127.0.0.1:9001
        weight: 100
      - address: 127.0.0.1:9002
  - name: users-v2
    balancer: consistent_hash
    hash_on: { header: X-User }
    endpoints:
      - address: users-v2.internal:9003
    connect_timeout: 250ms
routes:
  - name: users
    match: { host: api.example.com, path_prefix: /users, methods: [GET, POST] }
    pool: users-v1
    timeout: 3s
  - name: beta
    match:
      host: "*.example.com"
      path_regex: /beta/[0-9]+
      headers: [{ name: x-cohort, exact: beta }]
      query: [{ name: debug, present: true }]
    pool: users-v2
  - name: default
    match: { path_prefix: / }
    pool: users-v1
"#;

fn errors(doc: &str) -> Vec<String> {
    match parse(doc.as_bytes(), Format::Yaml) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn parses_a_full_document() {
    let c = parse(EXAMPLE.as_bytes(), Format::Yaml).unwrap();
    assert_eq!(c.listeners[0].address, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.listeners[0].idle_timeout_or_default(), DEFAULT_LISTENER_IDLE_TIMEOUT);
    assert_eq!(c.pools[0].endpoints[0].weight, Some(100));
    assert_eq!(c.pools[0].endpoints[1].weight_or_default(), 1);
    assert_eq!(c.pools[1].hash_on, Some(HashOn::Header("X-User".into())));
    assert_eq!(c.pools[1].connect_timeout, Some(Duration::from_millis(250)));
    assert_eq!(c.routes[0].matcher.methods, ["GET", "POST"]);
    assert_eq!(c.routes[0].timeout_or_default(), Duration::from_secs(3));
    assert_eq!(c.routes[1].matcher.headers[0].rule(), ValueRule::Exact("beta"));
    assert_eq!(c.routes[1].matcher.query[0].rule(), ValueRule::Present(true));
    assert!(c.routes[2].matcher.host.is_none());
}

#[test]
fn json_and_yaml_mean_the_same() {
    let yaml = parse(EXAMPLE.as_bytes(), Format::Yaml).unwrap();
    let json = serde_json::to_vec(&yaml).unwrap();
    assert_eq!(parse(&json, Format::Json).unwrap(), yaml);
}

#[test]
fn reports_every_error_with_its_path() {
    let doc = r#"
listeners:
  - name: public
    address: 0.0.0.0:80800
    idle_timeout: 30
  - name: public
    address: 127.0.0.1:9000
    adress: x
pools:
  - name: a
    balancer: fastest
    endpoints:
      - address: http://127.0.0.1:9001
      - address: 127.0.0.1:9002
        weight: 0
  - name: b
    endpoints: []
routes:
  - name: r0
    match: { path_prefix: users, path_regex: "(" }
    pool: a
    timeout: 0s
  - name: r1
    match: { methods: [get], headers: [{ name: "bad name", exact: x, present: true }] }
    pool: nope
"#;
    let got = errors(doc);
    let want = [
        "listeners[0].address: invalid address \"0.0.0.0:80800\"",
        "listeners[0].idle_timeout: expected a duration string like 250ms or 30s, found a number (30)",
        "listeners[1].adress: unknown field `adress`; did you mean `address`?",
        "pools[0].balancer: unknown value \"fastest\"; expected one of: round_robin, weighted, least_request, consistent_hash",
        "pools[0].endpoints[0].address: invalid address \"http://127.0.0.1:9001\": write host:port without a scheme",
        "pools[0].endpoints[1].weight: weight 0 is out of range 1 to 10000; remove the endpoint",
        "pools[1].endpoints: a pool needs at least one endpoint",
        "routes[0].match: path_prefix and path_regex are exclusive; use one",
        "routes[0].match.path_prefix: \"users\" must start with /",
        "routes[0].match.path_regex: invalid regex \"(\"",
        "routes[0].timeout: must be greater than 0s",
        "routes[1].match.methods[0]: methods are case-sensitive; did you mean GET?",
        "routes[1].match.headers[0]: exact and present are exclusive; use one",
        "listeners[1].name: duplicate name `public`, already used by listeners[0]",
        "routes[1].pool: unknown pool `nope`; defined pools: a, b",
    ];
    for w in want {
        assert!(got.iter().any(|g| g.starts_with(w)), "missing {w:?} in:\n{}", got.join("\n"));
    }
    // The header name is reported too, and nothing is reported twice.
    assert!(
        got.iter().any(|g| g.starts_with("routes[1].match.headers[0].name: invalid header name")),
        "{got:#?}"
    );
    let mut dedup = got.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), got.len(), "{got:#?}");
}

#[test]
fn a_broken_pool_does_not_make_its_routes_unknown() {
    let got = errors(
        "listeners: [{name: l, address: '127.0.0.1:1'}]\n\
         pools: [{name: a, endpoints: [{address: 'nope'}]}]\n\
         routes: [{name: r, pool: a}]\n",
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].starts_with("pools[0].endpoints[0].address: invalid address \"nope\""), "{got:?}");
}

#[test]
fn overlapping_listeners_and_shadowed_routes_are_refused() {
    let got = errors(
        "listeners:\n  - {name: a, address: '0.0.0.0:8080'}\n  - {name: b, address: '127.0.0.1:8080'}\n\
         pools: [{name: p, endpoints: [{address: '127.0.0.1:1'}]}]\n\
         routes:\n  - {name: r1, match: {path_prefix: /x/, methods: [GET, HEAD]}, pool: p}\n  - {name: r2, match: {path_prefix: /x, methods: [HEAD, GET]}, pool: p}\n",
    );
    assert_eq!(
        got,
        [
            "listeners[1].address: 127.0.0.1:8080 overlaps 0.0.0.0:8080 of listeners[0] (`a`)",
            "routes[1].match: same conditions as routes[0]; this route could never be chosen",
        ]
    );
}

#[test]
fn hash_on_goes_with_consistent_hash_only() {
    let base = "listeners: [{name: l, address: '127.0.0.1:1'}]\npools:\n";
    let got = errors(&format!(
        "{base}  - {{name: a, balancer: consistent_hash, endpoints: [{{address: 'h:1'}}]}}\n  - {{name: b, hash_on: source_ip, endpoints: [{{address: 'h:1'}}]}}\n  - {{name: c, balancer: consistent_hash, hash_on: {{header: a, cookie: b}}, endpoints: [{{address: 'h:1'}}]}}\n"
    ));
    assert_eq!(
        got,
        [
            "pools[0].hash_on: consistent_hash needs hash_on: source_ip, {header: NAME} or {cookie: NAME}",
            "pools[1].hash_on: hash_on only applies to balancer consistent_hash, not round_robin",
            "pools[2].hash_on: header and cookie are exclusive; use one",
        ]
    );
    let ok = parse(
        format!("{base}  - {{name: a, balancer: consistent_hash, hash_on: {{cookie: sid}}, endpoints: [{{address: 'h:1'}}]}}\n").as_bytes(),
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(ok.pools[0].hash_on, Some(HashOn::Cookie("sid".into())));
}

#[test]
fn host_patterns() {
    let doc = |host: &str| {
        format!(
            "listeners: [{{name: l, address: '127.0.0.1:1'}}]\npools: [{{name: p, endpoints: [{{address: 'h:1'}}]}}]\nroutes: [{{name: r, pool: p, match: {{host: '{host}'}}}}]\n"
        )
    };
    for good in ["api.example.com", "*.example.com", "10.0.0.1", "API.Example.com"] {
        parse(doc(good).as_bytes(), Format::Yaml).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for (bad, why) in [
        ("*", "leave host out"),
        ("a.*.com", "only be the first label"),
        ("api.example.com:8080", "leave the port out"),
        ("bad host", "expected a DNS name"),
    ] {
        let got = errors(&doc(bad));
        assert!(got[0].starts_with("routes[0].match.host: ") && got[0].contains(why), "{bad}: {got:?}");
    }
}

#[test]
fn document_level_problems() {
    assert_eq!(errors(""), ["expected a mapping, found nothing"]);
    assert_eq!(errors("listeners: []"), ["listeners: at least one listener is required"]);
    assert_eq!(
        errors("pools: []"),
        ["listeners: missing required field: a config needs at least one listener"]
    );
    let yaml = errors("listeners:\n  - name: a\n   address: x\n");
    assert!(yaml[0].starts_with("invalid YAML"), "{yaml:?}");
    let dup = errors("listeners: []\nlisteners: []\n");
    assert!(dup[0].starts_with("invalid YAML") && dup[0].contains("uplicate"), "{dup:?}");
    let json = parse(b"{\"listeners\": [", Format::Json).unwrap_err();
    assert!(json.to_string().contains("invalid JSON"), "{json}");
    let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
    assert!(parse(&big, Format::Yaml).unwrap_err().to_string().contains("byte limit"));
}

#[test]
fn schema_describes_the_fields_the_decoder_knows() {
    let schema = crate::schema::json_schema();
    let props = |def: &str| -> Vec<String> {
        let node = if def.is_empty() { &schema } else { &schema["$defs"][def] };
        node["properties"].as_object().unwrap_or_else(|| panic!("{def}")).keys().cloned().collect()
    };
    assert_eq!(props(""), ["listeners", "pools", "routes"]);
    assert_eq!(props("Listener"), ["name", "address", "idle_timeout"]);
    assert_eq!(
        props("Pool"),
        [
            "name",
            "balancer",
            "hash_on",
            "endpoints",
            "protocol",
            "connect_timeout",
            "idle_timeout",
            "max_idle_per_endpoint"
        ]
    );
    assert_eq!(props("Route"), ["name", "match", "pool", "timeout", "idle_timeout"]);
    assert_eq!(
        props("RouteMatch"),
        ["host", "path", "path_prefix", "path_regex", "methods", "headers", "query"]
    );
}

#[test]
fn the_published_schema_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.schema.json");
    let published: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        published == crate::schema::json_schema(),
        "docs/config.schema.json is stale: run `cargo run -p sluice-data-plane --bin sluice-proxy -- schema > docs/config.schema.json`"
    );
}

#[test]
fn the_shipped_configs_are_valid() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let demo = std::fs::read(format!("{root}/examples/demo.yaml")).unwrap();
    parse(&demo, Format::Yaml).unwrap_or_else(|e| panic!("examples/demo.yaml: {e}"));
    let manifest = std::fs::read_to_string(format!("{root}/deploy/standalone/configmap.yaml")).unwrap();
    let manifest: Value = serde_saphyr::from_str(&manifest).unwrap();
    let config = manifest["data"]["sluice.yaml"].as_str().unwrap();
    parse(config.as_bytes(), Format::Yaml)
        .unwrap_or_else(|e| panic!("deploy/standalone/configmap.yaml: {e}"));
}

// === property tests ===

fn arb_duration() -> impl Strategy<Value = Option<Duration>> {
    prop::option::of((1u64..3_600_000).prop_map(Duration::from_millis))
}

fn arb_value_match() -> impl Strategy<Value = ValueMatch> {
    ("[a-z][a-z0-9-]{0,8}", 0..4usize, "[a-z0-9]{0,6}", any::<bool>()).prop_map(|(name, kind, v, present)| {
        let mut m = ValueMatch { name, exact: None, prefix: None, regex: None, present: None };
        match kind {
            0 => m.exact = Some(v),
            1 => m.prefix = Some(v),
            2 => m.regex = Some(format!("{v}.*")),
            _ => m.present = Some(present),
        }
        m
    })
}

fn arb_pool(i: usize) -> impl Strategy<Value = Pool> {
    (
        prop::option::of(prop::sample::select(Balancer::ALL.to_vec())),
        prop::collection::vec(prop::option::of(1u32..=MAX_WEIGHT), 1..5),
        prop::option::of(prop::sample::select(UpstreamProtocol::ALL.to_vec())),
        arb_duration(),
        arb_duration(),
        prop::option::of(0u32..1000),
        0..3usize,
    )
        .prop_map(move |(balancer, weights, protocol, connect_timeout, idle_timeout, max_idle, hash)| {
            Pool {
                name: format!("pool-{i}"),
                balancer,
                hash_on: (balancer == Some(Balancer::ConsistentHash)).then(|| match hash {
                    0 => HashOn::SourceIp,
                    1 => HashOn::Header("x-user".into()),
                    _ => HashOn::Cookie("sid".into()),
                }),
                endpoints: weights
                    .into_iter()
                    .enumerate()
                    .map(|(j, weight)| Endpoint {
                        address: if j % 2 == 0 {
                            format!("127.0.0.{}:{}", i + 1, 9000 + j)
                        } else {
                            format!("svc-{j}.internal:80")
                        },
                        weight,
                    })
                    .collect(),
                protocol,
                connect_timeout,
                idle_timeout,
                max_idle_per_endpoint: max_idle,
            }
        })
}

fn arb_route(i: usize, pools: usize) -> impl Strategy<Value = Route> {
    (
        0..pools,
        prop::option::of(prop::sample::select(vec!["api.example.com", "*.example.com", "10.1.2.3"])),
        0..4usize,
        prop::sample::subsequence(vec!["GET", "HEAD", "POST", "PURGE"], 0..3),
        prop::collection::vec(arb_value_match(), 0..3),
        prop::collection::vec(arb_value_match(), 0..2),
        arb_duration(),
        arb_duration(),
    )
        .prop_map(move |(pool, host, path_kind, methods, headers, query, timeout, idle_timeout)| {
            // Every route gets its own path so none shadows another.
            let mut m = RouteMatch {
                host: host.map(str::to_owned),
                methods: methods.into_iter().map(str::to_owned).collect(),
                headers,
                query,
                ..RouteMatch::default()
            };
            match path_kind {
                0 => m.path = Some(format!("/r{i}")),
                1 => m.path_regex = Some(format!("/r{i}/[0-9]+")),
                _ => m.path_prefix = Some(format!("/r{i}")),
            }
            Route {
                name: format!("route-{i}"),
                matcher: m,
                pool: format!("pool-{pool}"),
                timeout,
                idle_timeout,
            }
        })
}

fn arb_config() -> impl Strategy<Value = Config> {
    (1..4usize, 1..4usize, 0..6usize).prop_flat_map(|(nl, np, nr)| {
        let listeners = prop::collection::vec(arb_duration(), nl).prop_map(|idles| {
            idles
                .into_iter()
                .enumerate()
                .map(|(i, idle_timeout)| Listener {
                    name: format!("listener-{i}"),
                    address: format!("127.0.0.1:{}", 8000 + i).parse().unwrap(),
                    idle_timeout,
                })
                .collect::<Vec<_>>()
        });
        let pools: Vec<_> = (0..np).map(arb_pool).collect();
        let routes: Vec<_> = (0..nr).map(|i| arb_route(i, np)).collect();
        (listeners, pools, routes).prop_map(|(listeners, pools, routes)| Config { listeners, pools, routes })
    })
}

proptest! {
    #[test]
    fn valid_configs_round_trip_through_json(config in arb_config()) {
        let json = serde_json::to_string_pretty(&config).unwrap();
        prop_assert_eq!(parse(json.as_bytes(), Format::Json).unwrap(), config.clone());
        // JSON is YAML too: the YAML reader must agree.
        prop_assert_eq!(parse(json.as_bytes(), Format::Yaml).unwrap(), config);
    }

    /// Replacing any one leaf of a valid document with a value of the wrong type gives an error at
    /// exactly that path.
    #[test]
    fn a_wrong_leaf_is_reported_at_its_path(config in arb_config(), pick in any::<prop::sample::Index>()) {
        let mut value = serde_json::to_value(&config).unwrap();
        let mut leaves = Vec::new();
        collect_leaves(&value, String::new(), &mut leaves);
        let (path, pointer) = pick.get(&leaves).clone();
        let target = value.pointer_mut(&pointer).unwrap();
        // A list where a scalar belongs is wrong for every leaf in the model.
        *target = serde_json::json!([1]);
        let errs = parse_value(&value).unwrap_err();
        prop_assert!(
            errs.iter().any(|e| e.path == path),
            "no error at {}: {}", path, errs
        );
    }

    #[test]
    fn arbitrary_input_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse(&bytes, Format::Yaml);
        let _ = parse(&bytes, Format::Json);
    }
}

/// `(config path, JSON pointer)` of every scalar in `v`.
fn collect_leaves(v: &Value, path: String, out: &mut Vec<(String, String)>) {
    fn pointer(path: &str) -> String {
        let mut p = String::new();
        for part in path.split(['.', '[']) {
            p.push('/');
            p.push_str(part.trim_end_matches(']'));
        }
        p
    }
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                collect_leaves(v, p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                collect_leaves(v, format!("{path}[{i}]"), out);
            }
        }
        _ => out.push((path.clone(), pointer(&path))),
    }
}
