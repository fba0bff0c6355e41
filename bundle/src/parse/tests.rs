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
    assert_eq!(
        props("Listener"),
        [
            "name",
            "address",
            "idle_timeout",
            "overload",
            "access_log",
            "tls",
            "http2",
            "proxy_protocol",
            "max_connections_per_client",
            "trusted_proxies",
            "request_headers",
            "response_headers"
        ]
    );
    assert_eq!(
        props("Cache"),
        ["memory_percent", "max_object", "vary", "authorized", "heuristic_percent", "coalesce_timeout"]
    );
    assert_eq!(props("Http2Limits"), ["max_concurrent_streams", "max_header_list_size"]);
    assert_eq!(props("RequestBodyRules"), ["buffer", "read_timeout", "min_rate"]);
    assert_eq!(props("HeaderOps"), ["set", "add", "remove"]);
    assert_eq!(props("HeaderEntry"), ["name", "value"]);
    assert_eq!(props("Rewrite"), ["path_prefix", "path_regex", "host"]);
    assert_eq!(props("Redirect"), ["scheme", "host", "port", "path", "path_prefix", "status", "strip_query"]);
    assert_eq!(props("DirectResponse"), ["status", "body", "content_type"]);
    assert_eq!(props("ListenerTls"), ["certificates", "client_auth", "alpn"]);
    assert_eq!(
        props("ServerCertificate"),
        ["cert_file", "key_file", "server_names", "default", "client_auth"]
    );
    assert_eq!(props("ClientAuth"), ["ca_file", "mode", "crl_file"]);
    assert_eq!(props("ClientCertificateRule"), ["subject", "san"]);
    assert_eq!(props("StringMatch"), ["exact", "prefix", "suffix", "regex"]);
    assert_eq!(
        props("UpstreamTls"),
        ["sni", "ca_file", "cert_file", "key_file", "alpn", "insecure_skip_verify"]
    );
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
            "max_idle_per_endpoint",
            "health_check",
            "circuit_breaker",
            "outlier_detection",
            "tls",
        ]
    );
    assert_eq!(
        props("Route"),
        [
            "name",
            "match",
            "pool",
            "redirect",
            "direct_response",
            "timeout",
            "idle_timeout",
            "retries",
            "hedge",
            "rate_limit",
            "max_request_body",
            "request_body",
            "rewrite",
            "request_headers",
            "response_headers",
            "canary",
            "cohorts",
            "mirror",
            "require_tls",
            "client_certificate",
            "jwt",
            "ext_authz",
            "cache"
        ]
    );
    assert_eq!(props("ExtAuthz"), ["pool", "timeout", "fail_mode", "headers", "max_body"]);
    assert_eq!(
        props("Jwt"),
        [
            "jwks_file",
            "jwks_url",
            "jwks_refresh",
            "jwks_ca_file",
            "issuer",
            "audiences",
            "leeway",
            "from",
            "claims_to_headers",
            "strip_token"
        ]
    );
    assert_eq!(props("TokenSource"), ["header", "cookie"]);
    assert_eq!(props("ClaimHeader"), ["claim", "header"]);
    assert_eq!(
        props("RouteMatch"),
        ["host", "path", "path_prefix", "path_regex", "methods", "headers", "query"]
    );
    assert_eq!(props("Overload"), ["max_concurrent_requests", "max_queued", "queue_timeout"]);
    assert_eq!(
        props("HealthCheck"),
        [
            "path",
            "host",
            "interval",
            "timeout",
            "jitter",
            "healthy_threshold",
            "unhealthy_threshold",
            "expected_status"
        ]
    );
    assert_eq!(
        props("CircuitBreaker"),
        [
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
            "error_threshold_percent",
            "min_requests",
            "window",
            "open_duration",
            "half_open_requests"
        ]
    );
    assert_eq!(
        props("OutlierDetection"),
        [
            "enabled",
            "consecutive_5xx",
            "interval",
            "base_ejection_time",
            "max_ejection_time",
            "max_ejection_percent",
            "success_rate",
            "latency"
        ]
    );
    assert_eq!(props("SuccessRateOutlier"), ["enabled", "min_hosts", "min_requests", "stdev_factor"]);
    assert_eq!(props("LatencyOutlier"), ["factor", "min_requests"]);
    assert_eq!(
        props("Retries"),
        [
            "max_attempts",
            "retry_on",
            "methods",
            "per_try_timeout",
            "backoff",
            "budget_percent",
            "min_retries_per_second"
        ]
    );
    assert_eq!(props("Backoff"), ["base", "max"]);
    assert_eq!(props("Hedge"), ["delay", "budget_percent"]);
    assert_eq!(props("RateLimit"), ["requests_per_second", "burst", "key"]);
    assert_eq!(props("Canary"), ["pool", "weight", "sticky", "brake"]);
    assert_eq!(props("CanaryBrake"), ["enabled", "max_error_percent", "min_requests", "window"]);
    assert_eq!(props("Cohorts"), ["header", "cookie", "values"]);
    assert_eq!(
        props("Mirror"),
        ["pool", "fraction", "methods", "max_body", "max_in_flight", "timeout", "diff", "guardrail"]
    );
    assert_eq!(
        props("MirrorDiff"),
        ["headers", "ignore", "mask", "mask_patterns", "mask_defaults", "baseline", "noise", "samples"]
    );
    assert_eq!(props("DiffBaseline"), ["pool", "fraction"]);
    assert_eq!(props("NoiseThresholds"), ["relative_percent", "absolute_percent"]);
    assert_eq!(props("Guardrail"), ["enabled", "latency_ratio", "consecutive", "cooldown"]);
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
    for example in ["demo", "edge-tls"] {
        let text = std::fs::read(format!("{root}/examples/{example}.yaml")).unwrap();
        parse(&text, Format::Yaml).unwrap_or_else(|e| panic!("examples/{example}.yaml: {e}"));
    }
    let manifest = std::fs::read_to_string(format!("{root}/deploy/standalone/configmap.yaml")).unwrap();
    let manifest: Value = serde_saphyr::from_str(&manifest).unwrap();
    let config = manifest["data"]["sluice.yaml"].as_str().unwrap();
    parse(config.as_bytes(), Format::Yaml)
        .unwrap_or_else(|e| panic!("deploy/standalone/configmap.yaml: {e}"));
}

// === access log ===

#[test]
fn parses_access_log_settings() {
    let c = parse(
        b"listeners:\n  - {name: a, address: '127.0.0.1:1', access_log: {sample: 0.25}}\n  \
          - {name: b, address: '127.0.0.1:2', access_log: {enabled: false}}\n  \
          - {name: c, address: '127.0.0.1:3', access_log: {}}\n  - {name: d, address: '127.0.0.1:4'}\n",
        Format::Yaml,
    )
    .unwrap();
    let samples: Vec<f64> =
        c.listeners.iter().map(|l| l.access_log.as_ref().map_or(0.0, AccessLog::effective_sample)).collect();
    assert_eq!(samples, [0.25, 0.0, 1.0, 0.0]);
}

#[test]
fn refuses_bad_access_log_settings_with_paths() {
    let errors = parse(
        b"listeners:\n  - {name: a, address: '127.0.0.1:1', access_log: {sample: 0, enabled: 3, file: x}}\n",
        Format::Yaml,
    )
    .unwrap_err()
    .to_string();
    for needle in [
        "listeners[0].access_log.sample: 0 is out of range",
        "listeners[0].access_log.enabled",
        "listeners[0].access_log.file",
    ] {
        assert!(errors.contains(needle), "missing {needle:?} in:\n{errors}");
    }
}

// === resilience ===

const RESILIENCE: &str = r#"
listeners:
  - name: public
    address: 0.0.0.0:8080
    overload: { max_concurrent_requests: 500, max_queued: 0, queue_timeout: 250ms }
pools:
  - name: users
    endpoints: [{ address: 127.0.0.1:9001 }, { address: 127.0.0.1:9002 }]
    health_check:
      path: /health?full=1
      host: health.internal:8080
      interval: 2s
      timeout: 2s
      jitter: 0s
      healthy_threshold: 1
      unhealthy_threshold: 4
      expected_status: 200-299
    circuit_breaker:
      max_connections: 100
      max_pending_requests: 50
      max_requests: 200
      max_retries: 0
      error_threshold_percent: 100
      min_requests: 1
      window: 30s
      open_duration: 1m
      half_open_requests: 5
    outlier_detection:
      enabled: true
      consecutive_5xx: 3
      interval: 5s
      base_ejection_time: 10s
      max_ejection_time: 10s
      max_ejection_percent: 0
      success_rate: { enabled: false, min_hosts: 2, min_requests: 10, stdev_factor: 2 }
      latency: { factor: 2.5, min_requests: 20 }
  - name: other
    endpoints: [{ address: 127.0.0.1:9003 }]
    health_check: { path: /, expected_status: 204 }
    outlier_detection: { enabled: false }
routes:
  - name: users
    match: { path_prefix: /users }
    pool: users
    timeout: 2s
    retries:
      max_attempts: 10
      retry_on: [connect_failure, reset, timeout, 503, "504"]
      methods: [GET, POST, PURGE]
      per_try_timeout: 2s
      backoff: { base: 10ms, max: 10ms }
      budget_percent: 0
      min_retries_per_second: 0
    hedge: { delay: 50ms, budget_percent: 100 }
    rate_limit: { requests_per_second: 100, burst: 1, key: { header: X-Api-Key } }
    max_request_body: 64KiB
  - name: other
    pool: other
    rate_limit: { requests_per_second: 1, key: source_ip }
    max_request_body: 1
    hedge: {}
"#;

#[test]
fn parses_every_resilience_field() {
    let c = parse(RESILIENCE.as_bytes(), Format::Yaml).unwrap();
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    assert_eq!(
        c.listeners[0].overload,
        Some(Overload { max_concurrent_requests: 500, max_queued: Some(0), queue_timeout: Some(ms(250)) })
    );
    assert_eq!(
        c.pools[0].health_check,
        Some(HealthCheck {
            path: "/health?full=1".into(),
            host: Some("health.internal:8080".into()),
            interval: Some(s(2)),
            timeout: Some(s(2)),
            jitter: Some(s(0)),
            healthy_threshold: Some(1),
            unhealthy_threshold: Some(4),
            expected_status: Some(StatusRange { min: 200, max: 299 }),
        })
    );
    assert_eq!(
        c.pools[0].circuit_breaker,
        Some(CircuitBreaker {
            max_connections: Some(100),
            max_pending_requests: Some(50),
            max_requests: Some(200),
            max_retries: Some(0),
            error_threshold_percent: Some(100),
            min_requests: Some(1),
            window: Some(s(30)),
            open_duration: Some(s(60)),
            half_open_requests: Some(5),
        })
    );
    assert_eq!(
        c.pools[0].outlier_detection,
        Some(OutlierDetection {
            enabled: Some(true),
            consecutive_5xx: Some(3),
            interval: Some(s(5)),
            base_ejection_time: Some(s(10)),
            max_ejection_time: Some(s(10)),
            max_ejection_percent: Some(0),
            success_rate: Some(SuccessRateOutlier {
                enabled: Some(false),
                min_hosts: Some(2),
                min_requests: Some(10),
                stdev_factor: Some(2.0),
            }),
            latency: Some(LatencyOutlier { factor: 2.5, min_requests: Some(20) }),
        })
    );
    assert_eq!(
        c.pools[1].health_check.as_ref().unwrap().expected_status,
        Some(StatusRange { min: 204, max: 204 })
    );
    assert_eq!(c.pools[1].outlier_detection_or_default(), None);
    assert_eq!(
        c.routes[0].retries,
        Some(Retries {
            max_attempts: Some(10),
            retry_on: Some(vec![
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                RetryOn::Timeout,
                RetryOn::Status(503),
                RetryOn::Status(504),
            ]),
            methods: Some(vec!["GET".into(), "POST".into(), "PURGE".into()]),
            per_try_timeout: Some(s(2)),
            backoff: Some(Backoff { base: Some(ms(10)), max: Some(ms(10)) }),
            budget_percent: Some(0),
            min_retries_per_second: Some(0),
        })
    );
    assert_eq!(c.routes[0].hedge, Some(Hedge { delay: Some(ms(50)), budget_percent: Some(100) }));
    assert_eq!(
        c.routes[0].rate_limit,
        Some(RateLimit {
            requests_per_second: 100,
            burst: Some(1),
            key: Some(HashOn::Header("X-Api-Key".into())),
        })
    );
    assert_eq!(c.routes[0].max_request_body, Some(ByteSize(64 * 1024)));
    assert_eq!(c.routes[1].rate_limit.as_ref().unwrap().key, Some(HashOn::SourceIp));
    assert_eq!(c.routes[1].rate_limit.as_ref().unwrap().burst_or_default(), 1);
    assert_eq!(c.routes[1].max_request_body, Some(ByteSize(1)));
    assert_eq!(c.routes[1].hedge, Some(Hedge::default()));

    // JSON says the same, and what is serialized parses back to the same config.
    let json = serde_json::to_vec(&c).unwrap();
    assert_eq!(parse(&json, Format::Json).unwrap(), c);
}

#[test]
fn resilience_defaults() {
    let c = parse(EXAMPLE.as_bytes(), Format::Yaml).unwrap();
    let (pool, route) = (&c.pools[0], &c.routes[0]);
    assert_eq!((&c.listeners[0].overload, &pool.health_check), (&None, &None));
    assert_eq!((&route.hedge, &route.rate_limit, route.max_request_body), (&None, &None, None));

    let cb = pool.circuit_breaker_or_default();
    assert_eq!(
        (cb.max_connections_or_default(), cb.max_pending_requests_or_default(), cb.max_requests_or_default()),
        (1024, 1024, 1024)
    );
    assert_eq!(cb.max_retries_or_default(), 3);
    assert_eq!(cb.error_threshold_percent, None);
    assert_eq!(
        (cb.min_requests_or_default(), cb.window_or_default(), cb.open_duration_or_default()),
        (20, Duration::from_secs(10), Duration::from_secs(30))
    );
    assert_eq!(cb.half_open_requests_or_default(), 3);

    let od = pool.outlier_detection_or_default().expect("outlier detection is on by default");
    assert_eq!(od.consecutive_5xx_or_default(), 5);
    assert_eq!(od.interval_or_default(), Duration::from_secs(10));
    assert_eq!(od.base_ejection_time_or_default(), Duration::from_secs(30));
    assert_eq!(od.max_ejection_time_or_default(), Duration::from_secs(300));
    assert_eq!(od.max_ejection_percent_or_default(), 10);
    let sr = od.success_rate_or_default().expect("success-rate ejection is on by default");
    assert_eq!((sr.min_hosts_or_default(), sr.min_requests_or_default()), (5, 100));
    assert_eq!(sr.stdev_factor_or_default(), 1.9);
    assert_eq!(od.latency, None);

    let r = route.retries_or_default();
    assert_eq!(r.max_attempts_or_default(), 2);
    assert_eq!(r.retry_on_or_default(), [RetryOn::ConnectFailure, RetryOn::Reset]);
    assert_eq!(r.methods_or_default(), ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]);
    assert_eq!(r.per_try_timeout, None);
    assert_eq!(
        (r.backoff_base_or_default(), r.backoff_max_or_default()),
        (Duration::from_millis(25), Duration::from_millis(250))
    );
    assert_eq!((r.budget_percent_or_default(), r.min_retries_per_second_or_default()), (20, 10));

    let small = parse(
        b"listeners:\n  - {name: l, address: '127.0.0.1:1', overload: {max_concurrent_requests: 1}}\n\
          pools: [{name: p, endpoints: [{address: 'h:1'}], health_check: {path: /h}}]\n\
          routes: [{name: r, pool: p, hedge: {}, rate_limit: {requests_per_second: 7}}]\n",
        Format::Yaml,
    )
    .unwrap();
    let o = small.listeners[0].overload.as_ref().unwrap();
    assert_eq!((o.max_queued_or_default(), o.queue_timeout_or_default()), (100, Duration::from_secs(1)));
    let hc = small.pools[0].health_check.as_ref().unwrap();
    assert_eq!(
        (hc.interval_or_default(), hc.timeout_or_default()),
        (Duration::from_secs(5), Duration::from_secs(1))
    );
    assert_eq!(hc.jitter_or_default(), Duration::from_millis(500));
    assert_eq!((hc.healthy_threshold_or_default(), hc.unhealthy_threshold_or_default()), (2, 3));
    assert_eq!(hc.expected_status_or_default(), StatusRange { min: 200, max: 399 });
    assert_eq!(hc.host, None);
    assert_eq!(small.routes[0].hedge.as_ref().unwrap().budget_percent_or_default(), 5);
    assert_eq!(small.routes[0].hedge.as_ref().unwrap().delay, None);
    let rl = small.routes[0].rate_limit.as_ref().unwrap();
    assert_eq!((rl.burst_or_default(), &rl.key), (7, &None));
}

#[test]
fn reports_every_resilience_error_with_its_path() {
    let doc = r#"
listeners:
  - name: l
    address: 127.0.0.1:1
    overload: { max_queued: -1, queue_timeout: 0s }
pools:
  - name: a
    endpoints: [{ address: 'h:1' }]
    health_check:
      path: health#x
      host: "http://h"
      interval: 1s
      jitter: 1s
      healthy_threshold: 0
      expected_status: 399-200
      timout: 1s
  - name: b
    endpoints: [{ address: 'h:1' }]
    health_check: { path: /h, interval: 500ms }
    circuit_breaker: { max_requests: 0, max_retries: 0, min_requests: 5, window: 0s, open_duration: 10s }
    outlier_detection:
      consecutive_5xx: 0
      base_ejection_time: 10m
      max_ejection_percent: 101
      success_rate: { min_hosts: 1, stdev_factor: 0 }
      latency: { min_requests: 0 }
  - name: c
    endpoints: [{ address: 'h:1' }]
    circuit_breaker: { error_threshold_percent: 0 }
    outlier_detection: { enabled: 1, latency: { factor: 1 }, success_rate: { stdev_factor: 10.5 } }
routes:
  - name: r0
    pool: a
    retries:
      max_attempts: 11
      retry_on: [timeout, 404, "5xx", 503, "503"]
      methods: [get, GET, "BAD METHOD", GET]
      backoff: { base: 1s }
      budget_percent: 101
    hedge: { delay: 0s, budget_percent: 0 }
    rate_limit: { burst: 0, key: { header: "bad name" } }
    max_request_body: 0
    request_body: { buffer: 17MiB, read_timeout: 0s, min_rate: fast, max: 1 }
  - name: r1
    pool: b
    retries: { per_try_timeout: 20s, retry_on: [] , methods: [] }
    rate_limit: { requests_per_second: 0, key: client_ip }
    max_request_body: 10XB
  - name: r2
    pool: c
    timeout: 1s
    retries: { per_try_timeout: 2s, backoff: { base: 0s, max: 1ms } }
    max_request_body: -5
"#;
    let got = errors(doc);
    let want = [
        "listeners[0].overload.max_concurrent_requests: missing required field",
        "listeners[0].overload.max_queued: expected a whole number from 0 to 4294967295, found a number (-1)",
        "listeners[0].overload.queue_timeout: must be greater than 0s",
        "pools[0].health_check.timout: unknown field `timout`; did you mean `timeout`?",
        "pools[0].health_check.path: \"health#x\" must start with /",
        "pools[0].health_check.host: invalid host \"http://h\": write the host alone, without a scheme or path, like health.internal or 10.0.0.1:8080",
        "pools[0].health_check.healthy_threshold: must be at least 1, found 0",
        "pools[0].health_check.expected_status: invalid status range \"399-200\": 399 is above 200",
        "pools[0].health_check.jitter: jitter 1s must be shorter than interval 1s",
        "pools[1].health_check.timeout: timeout 1s (the default) is longer than interval 500ms",
        "pools[1].circuit_breaker.max_requests: must be at least 1, found 0",
        "pools[1].circuit_breaker.window: must be greater than 0s",
        "pools[1].circuit_breaker.min_requests: only applies to the error-rate breaker; set error_threshold_percent to turn it on",
        "pools[1].circuit_breaker.window: only applies to the error-rate breaker; set error_threshold_percent to turn it on",
        "pools[1].circuit_breaker.open_duration: only applies to the error-rate breaker; set error_threshold_percent to turn it on",
        "pools[1].outlier_detection.consecutive_5xx: must be at least 1, found 0",
        "pools[1].outlier_detection.max_ejection_percent: 101 is out of range 0 to 100",
        "pools[1].outlier_detection.success_rate.min_hosts: must be at least 2, found 1",
        "pools[1].outlier_detection.success_rate.stdev_factor: 0 is out of range: must be above 0 and at most 10",
        "pools[1].outlier_detection.latency.factor: missing required field",
        "pools[1].outlier_detection.latency.min_requests: must be at least 1, found 0",
        "pools[1].outlier_detection.max_ejection_time: max_ejection_time 5m (the default) is shorter than base_ejection_time 10m",
        "pools[2].circuit_breaker.error_threshold_percent: 0 is out of range 1 to 100",
        "pools[2].outlier_detection.enabled: expected true or false, found a number (1)",
        "pools[2].outlier_detection.success_rate.stdev_factor: 10.5 is out of range: must be above 0 and at most 10",
        "pools[2].outlier_detection.latency.factor: 1 is out of range: must be above 1 and at most 100",
        "routes[0].retries.max_attempts: 11 is out of range 1 to 10",
        "routes[0].retries.retry_on[1]: 404 is not a 5xx status; expected connect_failure, reset, timeout or a status from 500 to 599",
        "routes[0].retries.retry_on[2]: unknown value \"5xx\"; expected connect_failure, reset, timeout or a status from 500 to 599",
        "routes[0].retries.retry_on[0]: retrying on timeout needs per_try_timeout, the time after which a try counts as timed out",
        "routes[0].retries.retry_on[4]: 503 is listed twice",
        "routes[0].retries.methods[0]: methods are case-sensitive; did you mean GET?",
        "routes[0].retries.methods[2]: invalid method \"BAD METHOD\"",
        "routes[0].retries.methods[3]: GET is listed twice",
        "routes[0].retries.backoff.max: max 250ms (the default) is shorter than base 1s",
        "routes[0].retries.budget_percent: 101 is out of range 0 to 100",
        "routes[0].hedge.delay: must be greater than 0s",
        "routes[0].hedge.budget_percent: 0 is out of range 1 to 100",
        "routes[0].rate_limit.requests_per_second: missing required field",
        "routes[0].rate_limit.burst: must be at least 1, found 0",
        "routes[0].rate_limit.key.header: invalid header name \"bad name\"",
        "routes[0].max_request_body: must be at least 1 byte",
        "routes[0].request_body.max: unknown field `max`; expected one of: buffer, read_timeout, min_rate",
        "routes[0].request_body.buffer: 17825792 bytes is more than the largest buffer, 16MiB",
        "routes[0].request_body.read_timeout: must be greater than 0s",
        "routes[0].request_body.min_rate: invalid size \"fast\": expected bytes, like 65536, 64KiB or 10MiB",
        "routes[1].retries.per_try_timeout: per_try_timeout 20s is longer than the route's timeout 15s (the default)",
        "routes[1].retries.retry_on: an empty list retries nothing; use max_attempts: 1 to turn retries off",
        "routes[1].retries.methods: an empty list retries nothing; use max_attempts: 1 to turn retries off",
        "routes[1].rate_limit.requests_per_second: must be at least 1, found 0",
        "routes[1].rate_limit.key: expected source_ip, {header: NAME} or {cookie: NAME}, found a string (\"client_ip\")",
        "routes[1].max_request_body: invalid size \"10XB\": expected bytes, like 65536, 64KiB or 10MiB",
        "routes[2].retries.per_try_timeout: per_try_timeout 2s is longer than the route's timeout 1s",
        "routes[2].retries.backoff.base: must be greater than 0s",
        "routes[2].max_request_body: expected a size like 65536, 64KiB or 10MiB, found a number (-5)",
    ];
    let mut missing: Vec<&str> = want.iter().copied().filter(|w| !got.iter().any(|g| g == w)).collect();
    let extra: Vec<&String> = got.iter().filter(|g| !want.contains(&g.as_str())).collect();
    missing.sort();
    assert!(missing.is_empty() && extra.is_empty(), "missing: {missing:#?}\nextra: {extra:#?}");
}

/// The resilience fields of SPEC §7's example, exactly as written there.
#[test]
fn the_spec_example_resilience_fields_parse() {
    let c = parse(
        br#"
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
    health_check: { path: /health, interval: 5s, timeout: 1s }
    circuit_breaker: { error_threshold_percent: 50, min_requests: 20, open_duration: 30s }
routes:
  - name: users
    match: { host: api.example.com, path_prefix: /users }
    pool: users-v1
    timeout: 3s
    retries: { max_attempts: 2, budget_percent: 20 }
"#,
        Format::Yaml,
    )
    .unwrap();
    let hc = c.pools[0].health_check.as_ref().unwrap();
    assert_eq!(
        (hc.path.as_str(), hc.interval_or_default(), hc.timeout_or_default()),
        ("/health", Duration::from_secs(5), Duration::from_secs(1))
    );
    let cb = c.pools[0].circuit_breaker_or_default();
    assert_eq!(
        (cb.error_threshold_percent, cb.min_requests_or_default(), cb.open_duration_or_default()),
        (Some(50), 20, Duration::from_secs(30))
    );
    let r = c.routes[0].retries_or_default();
    assert_eq!((r.max_attempts_or_default(), r.budget_percent_or_default()), (2, 20));
}

/// SPEC §7's example, exactly as written there, canary, cohorts and mirror included.
const SPEC_EXAMPLE: &str = r#"
listeners:
  - name: public
    address: 0.0.0.0:8080
pools:
  - name: users-v1
    balancer: round_robin            # weighted | least_request | consistent_hash
    endpoints:
      - address: 127.0.0.1:9001
        weight: 100
      - address: 127.0.0.1:9002
    health_check: { path: /health, interval: 5s, timeout: 1s }
    circuit_breaker: { error_threshold_percent: 50, min_requests: 20, open_duration: 30s }
  - name: users-v2
    endpoints:
      - address: 127.0.0.1:9003
routes:
  - name: users
    match: { host: api.example.com, path_prefix: /users }
    pool: users-v1
    timeout: 3s
    retries: { max_attempts: 2, budget_percent: 20 }
    canary: { pool: users-v2, weight: 10 }
    cohorts: { header: X-Cohort, values: { beta: users-v2 } }
    mirror:
      pool: users-v2
      fraction: 0.25
      diff: { ignore: [/timestamp, /request_id], mask: [/email, /phone] }
  - name: default
    match: { path_prefix: / }
    pool: users-v1
"#;

#[test]
fn the_spec_example_traffic_fields_parse_with_their_defaults() {
    let c = parse(SPEC_EXAMPLE.as_bytes(), Format::Yaml).unwrap();
    let r = &c.routes[0];
    let canary = r.canary.as_ref().unwrap();
    assert_eq!((canary.pool.as_str(), canary.weight, canary.sticky.as_ref()), ("users-v2", 10.0, None));
    let brake = canary.brake_or_default().unwrap();
    assert_eq!(
        (brake.max_error_percent_or_default(), brake.min_requests_or_default(), brake.window_or_default()),
        (5.0, 20, Duration::from_secs(30))
    );
    let cohorts = r.cohorts.as_ref().unwrap();
    assert_eq!(cohorts.header.as_deref(), Some("X-Cohort"));
    assert_eq!(cohorts.values.get("beta").map(String::as_str), Some("users-v2"));
    let m = r.mirror.as_ref().unwrap();
    assert_eq!((m.pool.as_str(), m.fraction_or_default()), ("users-v2", 0.25));
    assert_eq!(
        (m.max_body_or_default(), m.max_in_flight_or_default(), m.timeout_or_default()),
        (ByteSize(64 * 1024), 100, Duration::from_secs(5))
    );
    assert_eq!(m.methods_or_default(), ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]);
    let diff = m.diff.as_ref().unwrap();
    assert_eq!(diff.ignore, ["/timestamp", "/request_id"]);
    assert_eq!(diff.mask, ["/email", "/phone"]);
    assert!(diff.mask_defaults_or_default());
    assert_eq!(diff.noise_or_default(), (0.2, 0.0003));
    let g = m.guardrail_or_default().unwrap();
    assert_eq!(
        (g.latency_ratio_or_default(), g.consecutive_or_default(), g.cooldown_or_default()),
        (2.0, 5, Duration::from_secs(10))
    );
    // And it survives the canonical round trip the control plane signs.
    let again = parse_value(&serde_json::to_value(&c).unwrap()).unwrap();
    assert_eq!(again, c);
}

#[test]
fn parses_every_traffic_field() {
    let c = parse(
        br#"
listeners: [{ name: l, address: "127.0.0.1:8080" }]
pools:
  - { name: a, endpoints: [{ address: "127.0.0.1:1" }] }
  - { name: b, endpoints: [{ address: "127.0.0.1:2" }] }
  - { name: c, endpoints: [{ address: "127.0.0.1:3" }] }
routes:
  - name: r
    pool: a
    canary:
      pool: b
      weight: 2.5
      sticky: { cookie: session }
      brake: { max_error_percent: 10, min_requests: 50, window: 1m }
    cohorts: { cookie: cohort, values: { beta: b, gamma: c } }
    mirror:
      pool: b
      fraction: 1
      methods: [GET, POST]
      max_body: 1MiB
      max_in_flight: 7
      timeout: 2s
      diff:
        headers: [content-type, etag]
        ignore: [/ts, "/items/*/id", "/a~1b"]
        mask: [email, /user/ssn]
        mask_patterns: ['\d{3}-\d{2}-\d{4}']
        mask_defaults: false
        baseline: { pool: c, fraction: 0.05 }
        noise: { relative_percent: 50, absolute_percent: 1 }
        samples: 3
      guardrail: { latency_ratio: 3, consecutive: 2, cooldown: 1s }
"#,
        Format::Yaml,
    )
    .unwrap();
    let r = &c.routes[0];
    let canary = r.canary.as_ref().unwrap();
    assert_eq!(canary.sticky, Some(HashOn::Cookie("session".into())));
    assert_eq!(canary.weight, 2.5);
    assert_eq!(canary.brake_or_default().unwrap().window_or_default(), Duration::from_secs(60));
    assert_eq!(r.cohorts.as_ref().unwrap().values.len(), 2);
    let m = r.mirror.as_ref().unwrap();
    assert_eq!(m.methods_or_default(), ["GET", "POST"]);
    assert_eq!(m.max_body_or_default(), ByteSize(1 << 20));
    let diff = m.diff.as_ref().unwrap();
    assert_eq!(diff.noise_or_default(), (0.5, 0.01));
    assert_eq!(diff.baseline.as_ref().unwrap().fraction_or_default(), 0.05);
    assert!(!diff.mask_defaults_or_default());
    assert_eq!(m.guardrail_or_default().unwrap().consecutive_or_default(), 2);
    let off = parse(
        br#"
listeners: [{ name: l, address: "127.0.0.1:8080" }]
pools:
  - { name: a, endpoints: [{ address: "127.0.0.1:1" }] }
  - { name: b, endpoints: [{ address: "127.0.0.1:2" }] }
routes:
  - name: r
    pool: a
    canary: { pool: b, weight: 0, brake: { enabled: false } }
    mirror: { pool: b, guardrail: { enabled: false } }
"#,
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(off.routes[0].canary.as_ref().unwrap().brake_or_default(), None);
    assert_eq!(off.routes[0].mirror.as_ref().unwrap().guardrail_or_default(), None);
}

#[test]
fn reports_every_traffic_error_with_its_path() {
    let got = errors(
        r#"
listeners: [{ name: l, address: "127.0.0.1:8080" }]
pools:
  - { name: a, endpoints: [{ address: "127.0.0.1:1" }] }
  - { name: b, endpoints: [{ address: "127.0.0.1:2" }] }
routes:
  - name: r
    pool: a
    canary: { pool: a, weight: 120, sticky: { header: "bad header" }, brake: { min_requests: 0 } }
    cohorts: { header: X-Cohort, cookie: c, values: { beta: nope } }
    mirror:
      pool: ghost
      fraction: 0
      methods: []
      max_in_flight: 0
      diff:
        ignore: [timestamp, "/a~2"]
        mask: ["", user/email]
        mask_patterns: ["(unclosed"]
        baseline: { pool: ghost }
        samples: 1000
      guardrail: { latency_ratio: 0.5, cooldown: 0s }
  - name: s
    match: { path_prefix: /s }
    pool: a
    mirror: { pool: a }
    cohorts: { values: {} }
"#,
    );
    let want = [
        "routes[0].canary.pool: `a` is the route's own pool; a canary needs another pool",
        "routes[0].canary.weight: 120 is out of range: a percentage from 0 to 100",
        "routes[0].canary.sticky.header: invalid header name \"bad header\"",
        "routes[0].canary.brake.min_requests: must be at least 1, found 0",
        "routes[0].cohorts: header and cookie are exclusive; use one",
        "routes[0].cohorts.values.beta: unknown pool `nope`; defined pools: a, b",
        "routes[0].mirror.pool: unknown pool `ghost`; defined pools: a, b",
        "routes[0].mirror.fraction: must be above 0; remove the block to turn it off",
        "routes[0].mirror.methods: an empty list mirrors nothing; remove the mirror instead",
        "routes[0].mirror.max_in_flight: must be at least 1, found 0",
        "routes[0].mirror.diff.ignore[0]: \"timestamp\" is not a JSON pointer: it must start with /",
        "routes[0].mirror.diff.ignore[1]: \"/a~2\": `~` must be written ~0 (and `/` inside a key ~1)",
        "routes[0].mirror.diff.mask[0]: expected a JSON pointer like /user/email or a key name",
        "routes[0].mirror.diff.mask[1]: \"user/email\" is neither a JSON pointer (they start with /) nor a key name (no /)",
        "routes[0].mirror.diff.mask_patterns[0]: invalid regex \"(unclosed\": unclosed group",
        "routes[0].mirror.diff.baseline.pool: unknown pool `ghost`; defined pools: a, b",
        "routes[0].mirror.diff.baseline.pool: `ghost` is the mirror's candidate; the baseline must run what the primary runs",
        "routes[0].mirror.diff.samples: 1000 is out of range 1 to 100",
        "routes[0].mirror.guardrail.latency_ratio: 0.5 is out of range: above 1 and at most 1000",
        "routes[0].mirror.guardrail.cooldown: must be greater than 0s",
        "routes[1].mirror.pool: `a` is the route's own pool; a mirror needs another pool",
        "routes[1].cohorts: needs the header or the cookie that carries the cohort",
        "routes[1].cohorts.values: needs at least one cohort value",
    ];
    let mut missing: Vec<&str> = want.iter().copied().filter(|w| !got.iter().any(|g| g == w)).collect();
    let extra: Vec<&String> = got.iter().filter(|g| !want.contains(&g.as_str())).collect();
    missing.sort();
    assert!(missing.is_empty() && extra.is_empty(), "missing: {missing:#?}\nextra: {extra:#?}");
}

#[test]
fn resilience_value_forms() {
    let route = |extra: &str| {
        format!(
            "listeners: [{{name: l, address: '127.0.0.1:1'}}]\npools: [{{name: p, endpoints: [{{address: 'h:1'}}]}}]\nroutes: [{{name: r, pool: p, {extra}}}]\n"
        )
    };
    for (text, bytes) in
        [("512", 512), ("'512'", 512), ("64KiB", 65_536), ("10MiB", 10 << 20), ("1GB", 1_000_000_000)]
    {
        let c = parse(route(&format!("max_request_body: {text}")).as_bytes(), Format::Yaml).unwrap();
        assert_eq!(c.routes[0].max_request_body, Some(ByteSize(bytes)), "{text}");
    }
    let pool = |hc: &str| {
        format!(
            "listeners: [{{name: l, address: '127.0.0.1:1'}}]\npools: [{{name: p, endpoints: [{{address: 'h:1'}}], health_check: {{path: /h, {hc}}}}}]\n"
        )
    };
    for (text, range) in [("200", (200, 200)), ("'200'", (200, 200)), ("500-599", (500, 599))] {
        let c = parse(pool(&format!("expected_status: {text}")).as_bytes(), Format::Yaml).unwrap();
        let want = StatusRange { min: range.0, max: range.1 };
        assert_eq!(c.pools[0].health_check.as_ref().unwrap().expected_status, Some(want), "{text}");
    }
    for good in ["h", "health.internal:8080", "10.0.0.1", "10.0.0.1:80", "[::1]", "[::1]:8080"] {
        parse(pool(&format!("host: '{good}'")).as_bytes(), Format::Yaml)
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for (bad, why) in [
        ("::1", "in brackets"),
        ("h:0", "port"),
        ("h:x", "port"),
        ("bad host", "expected a DNS name"),
        ("[h]", "expected a DNS name"),
    ] {
        let got = errors(&pool(&format!("host: '{bad}'")));
        assert!(
            got.len() == 1 && got[0].starts_with("pools[0].health_check.host: ") && got[0].contains(why),
            "{bad}: {got:?}"
        );
    }
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
                health_check: None,
                circuit_breaker: None,
                outlier_detection: None,
                tls: (i % 2 == 1).then(|| UpstreamTls {
                    sni: Some("api.internal".into()),
                    ca_file: Some("/etc/sluice/ca.pem".into()),
                    cert_file: None,
                    key_file: None,
                    alpn: None,
                    insecure_skip_verify: None,
                }),
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
                pool: Some(format!("pool-{pool}")),
                redirect: None,
                direct_response: None,
                timeout,
                idle_timeout,
                retries: None,
                hedge: None,
                rate_limit: None,
                max_request_body: None,
                request_body: i.is_multiple_of(3).then_some(RequestBodyRules {
                    buffer: Some(ByteSize(0)),
                    read_timeout: timeout,
                    min_rate: Some(ByteSize(1024)),
                }),
                canary: None,
                cohorts: None,
                mirror: None,
                require_tls: i.is_multiple_of(2).then_some(true),
                client_certificate: None,
                jwt: None,
                ext_authz: None,
                cache: (i == 0).then(|| crate::Cache {
                    memory_percent: 12.5,
                    max_object: Some(ByteSize(4096)),
                    vary: Some(vec!["accept".into()]),
                    authorized: Some(true),
                    heuristic_percent: Some(10.0),
                    coalesce_timeout: Some(Duration::from_secs(2)),
                }),
                rewrite: (i % 3 == 1).then(|| Rewrite {
                    path_prefix: None,
                    path_regex: Some(RegexRewrite {
                        pattern: "^/old/(.*)".into(),
                        substitution: "/new/$1".into(),
                    }),
                    host: Some("backend.internal:8080".into()),
                }),
                request_headers: i.is_multiple_of(2).then(|| HeaderOps {
                    set: vec![HeaderEntry {
                        name: "X-Route".into(),
                        value: "%route% for %client_ip%".into(),
                    }],
                    add: vec![HeaderEntry { name: "X-Tag".into(), value: "a".into() }],
                    remove: vec!["X-Internal".into()],
                }),
                response_headers: (i == 1).then(|| HeaderOps {
                    set: vec![HeaderEntry {
                        name: "Strict-Transport-Security".into(),
                        value: "max-age=63072000".into(),
                    }],
                    ..HeaderOps::default()
                }),
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
                    overload: None,
                    access_log: None,
                    tls: (i == 1).then(|| ListenerTls {
                        certificates: vec![ServerCertificate {
                            cert_file: "/etc/sluice/edge.pem".into(),
                            key_file: "/etc/sluice/edge.key".into(),
                            server_names: vec!["*.example.com".into()],
                            default: None,
                            client_auth: None,
                        }],
                        client_auth: None,
                        alpn: None,
                    }),
                    http2: (i == 2).then_some(Http2Limits {
                        max_concurrent_streams: Some(250),
                        max_header_list_size: Some(ByteSize(32 * 1024)),
                    }),
                    proxy_protocol: (i == 1).then_some(true),
                    max_connections_per_client: (i == 2).then_some(64),
                    trusted_proxies: if i == 0 {
                        vec![Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("2001:db8::1").unwrap()]
                    } else {
                        Vec::new()
                    },
                    request_headers: (i == 0)
                        .then(|| HeaderOps { remove: vec!["X-Debug".into()], ..HeaderOps::default() }),
                    response_headers: None,
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

/// Cohort variants are indexed by a byte after stable and canary: 254 cohorts at most.
#[test]
fn a_route_has_at_most_254_cohorts() {
    let doc = |n: usize| {
        let values: Vec<String> = (0..n).map(|i| format!("c{i}: a")).collect();
        format!(
            "listeners: [{{ name: l, address: \"127.0.0.1:8080\" }}]\n\
             pools: [{{ name: a, endpoints: [{{ address: \"127.0.0.1:1\" }}] }}]\n\
             routes: [{{ name: r, pool: a, cohorts: {{ header: x-c, values: {{ {} }} }} }}]\n",
            values.join(", ")
        )
    };
    assert!(parse(doc(254).as_bytes(), Format::Yaml).is_ok());
    let errs = parse(doc(255).as_bytes(), Format::Yaml).unwrap_err();
    assert_eq!(errs.to_string(), "1 config error\n  routes[0].cohorts.values: 255 cohorts; at most 254");
}

#[test]
fn tls_settings_parse_and_name_files_only() {
    let doc = r#"
listeners:
  - name: edge
    address: 0.0.0.0:8443
    tls:
      certificates:
        - { cert_file: /etc/sluice/a.pem, key_file: /etc/sluice/a.key, server_names: [a.example.com, "*.a.example.com"] }
        - { cert_file: /etc/sluice/b.pem, key_file: /etc/sluice/b.key, default: true,
            client_auth: { ca_file: /etc/sluice/ca.pem, mode: optional } }
      alpn: [h2, http/1.1]
pools:
  - name: api
    protocol: http2
    endpoints: [{ address: "api.internal:443" }]
    tls: { ca_file: /etc/sluice/upstream-ca.pem, cert_file: /etc/sluice/me.pem, key_file: /etc/sluice/me.key }
routes:
  - name: admin
    pool: api
    require_tls: true
    client_certificate: { subject: { prefix: "CN=ops" }, san: [{ suffix: .example.com }] }
"#;
    let c = parse(doc.as_bytes(), Format::Yaml).unwrap();
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.default_index(), 1);
    assert_eq!(tls.client_auth_for(0), None);
    assert_eq!(tls.client_auth_for(1).unwrap().mode_or_default(), ClientAuthMode::Optional);
    assert_eq!(tls.alpn_or_default(), [Alpn::H2, Alpn::Http1]);
    assert!(c.pools[0].tls.as_ref().unwrap().verifies());
    assert_eq!(c.routes[0].require_tls, Some(true));
    let rule = c.routes[0].client_certificate.as_ref().unwrap();
    assert_eq!(rule.subject.as_ref().unwrap().rule(), StringRule::Prefix("CN=ops"));
    assert_eq!(rule.san[0].rule(), StringRule::Suffix(".example.com"));
    assert_eq!(parse_value(&serde_json::to_value(&c).unwrap()).unwrap(), c, "round trip");
}

#[test]
fn http2_limits_are_checked_with_paths() {
    let doc = |limits: &str| {
        format!(
            "listeners: [{{name: l, address: '127.0.0.1:1', http2: {limits}}}]\npools: [{{name: p, endpoints: [{{address: 'a:1'}}]}}]\nroutes: [{{name: r, pool: p}}]\n"
        )
    };
    let ok =
        parse(doc("{max_concurrent_streams: 500, max_header_list_size: 32KiB}").as_bytes(), Format::Yaml)
            .unwrap();
    let limits = ok.listeners[0].http2.as_ref().unwrap();
    assert_eq!(
        (limits.max_concurrent_streams_or_default(), limits.max_header_list_size_or_default()),
        (500, 32 * 1024)
    );
    assert_eq!(
        errors(&doc("{max_concurrent_streams: 0, max_header_list_size: 2MiB, pings: 3}")),
        [
            "listeners[0].http2.pings: unknown field `pings`; expected one of: max_concurrent_streams, max_header_list_size",
            "listeners[0].http2.max_concurrent_streams: 0 is out of range 1 to 10000",
            "listeners[0].http2.max_header_list_size: 2097152 bytes is out of range 1KiB to 1MiB",
        ]
    );
}

#[test]
fn client_address_settings_are_checked_with_paths() {
    let doc = |fields: &str| {
        format!(
            "listeners: [{{name: l, address: '127.0.0.1:1', {fields}}}]\npools: [{{name: p, endpoints: [{{address: 'a:1'}}]}}]\nroutes: [{{name: r, pool: p}}]\n"
        )
    };
    let ok = parse(
        doc("proxy_protocol: true, max_connections_per_client: 100, trusted_proxies: [10.0.0.0/8, '2001:db8::1']")
            .as_bytes(),
        Format::Yaml,
    )
    .unwrap();
    let l = &ok.listeners[0];
    assert_eq!((l.proxy_protocol, l.max_connections_per_client), (Some(true), Some(100)));
    assert_eq!(
        l.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["10.0.0.0/8", "2001:db8::1/128"]
    );
    assert_eq!(parse_value(&serde_json::to_value(&ok).unwrap()).unwrap(), ok, "round trip");
    assert_eq!(
        errors(&doc(
            "proxy_protocol: v2, max_connections_per_client: 0, trusted_proxies: [10.1.0.0/8, lb.internal, 7]"
        )),
        [
            "listeners[0].proxy_protocol: expected true or false, found a string (\"v2\")",
            "listeners[0].max_connections_per_client: must be at least 1, found 0",
            "listeners[0].trusted_proxies[0]: invalid network \"10.1.0.0/8\": it has host bits set; did you mean 10.0.0.0/8?",
            "listeners[0].trusted_proxies[1]: invalid network \"lb.internal\": expected an address or address/prefix, like 10.0.0.0/8 or 2001:db8::/32",
            "listeners[0].trusted_proxies[2]: expected a network like 10.0.0.0/8, found a number (7)",
        ]
    );
}

#[test]
fn tls_mistakes_are_reported_with_paths() {
    let doc = r#"
listeners:
  - name: edge
    address: 0.0.0.0:8443
    tls:
      certificates:
        - { cert_file: "-----BEGIN CERTIFICATE-----\nMIIB", key_file: relative/a.key, server_names: [10.0.0.1, "a.*.com"] }
        - { cert_file: /b.pem, key_file: /b.key, default: true, server_names: [x.example.com] }
        - { cert_file: /c.pem, key_file: /c.key, default: true, server_names: [X.example.com] }
      alpn: [h3]
  - name: empty
    address: 0.0.0.0:8444
    tls: { certificates: [] }
pools:
  - name: p
    protocol: http2
    endpoints: [{ address: "a:1" }]
    tls: { sni: "10.0.0.1", cert_file: /me.pem, alpn: [http/1.1], insecure_skip_verify: true, ca_file: /ca.pem }
routes:
  - name: r
    pool: p
    client_certificate: { subject: { exact: a, prefix: b }, san: [{}] }
"#;
    assert_eq!(
        errors(doc),
        [
            "listeners[0].tls.certificates[0].cert_file: this is PEM text, not a path: bundles are signed but not encrypted, so they name files on the node and never carry certificates or keys",
            "listeners[0].tls.certificates[0].key_file: \"relative/a.key\" must be an absolute path on the node",
            "listeners[0].tls.certificates[0].server_names[0]: \"10.0.0.1\": SNI carries DNS names only; a client connecting by address sends none, so it gets the default certificate",
            "listeners[0].tls.certificates[0].server_names[1]: invalid host pattern \"a.*.com\": a wildcard may only be the first label, like *.example.com",
            "listeners[0].tls.certificates[2].default: certificates[1] is already the default; only one certificate can be",
            "listeners[0].tls.certificates[2].server_names[0]: \"X.example.com\" is already served by certificates[1]",
            "listeners[0].tls.alpn[0]: unknown value \"h3\"; expected one of: h2, http/1.1",
            "listeners[1].tls.certificates: TLS needs at least one certificate",
            "pools[0].tls.sni: \"10.0.0.1\" is not a DNS name; SNI carries DNS names only",
            "pools[0].tls.key_file: cert_file needs its key_file",
            "pools[0].tls.ca_file: insecure_skip_verify turns verification off, so ca_file would be unused",
            "pools[0].tls.alpn: the pool speaks http2, so alpn must offer h2",
            "routes[0].client_certificate.subject: exact and prefix are exclusive; use one",
            "routes[0].client_certificate.san[0]: needs one of exact, prefix, suffix, regex",
        ]
    );
    // With every listener readable, a client-certificate rule nobody can meet is refused.
    let doc = "listeners: [{name: l, address: '127.0.0.1:1'}]\npools: [{name: p, endpoints: [{address: 'a:1'}]}]\nroutes: [{name: r, pool: p, client_certificate: {}}]\n";
    assert_eq!(
        errors(doc),
        [
            "routes[0].client_certificate: no listener asks for client certificates (tls.client_auth), so this route would refuse every request"
        ]
    );
}

#[test]
fn header_transforms_are_checked_with_paths() {
    let doc = r#"
listeners:
  - name: l
    address: 127.0.0.1:1
    response_headers: { set: [{ name: X-Prefix, value: "%path_prefix%" }] }
pools: [{ name: p, endpoints: [{ address: "a:1" }] }]
routes:
  - name: api
    match: { path_prefix: /api }
    pool: p
    request_headers:
      set: [{ name: X-Route, value: "%route% %path_prefix% %%" }]
      add: [{ name: X-From, value: "%client_ip%" }, { name: X-Cert, value: "%tls_uri_san%" }]
      remove: [X-Internal]
  - name: bad
    match: { path: /bad }
    pool: p
    request_headers:
      set: [{ name: Content-Length, value: "5" }, { name: "X Y", value: a }, { name: X-A, value: "%host%" }]
      add: [{ name: X-B, value: "50%" }, { name: X-C }, { name: X-D, value: "a\r\nX-E: b" }, { name: X-P, value: "%path_prefix%" }]
      remove: [Host, "bad name", X-Forwarded-Client-Cert]
      replace: []
    response_headers: { set: { X-A: b } }
"#;
    let got = errors(doc);
    let want = [
        "listeners[0].response_headers.set[0].value: %path_prefix% is a route's; a listener has none",
        "routes[1].request_headers.replace: unknown field `replace`; expected one of: set, add, remove",
        "routes[1].request_headers.set[0].name: Content-Length is the proxy's to write (connection and framing fields, Host); it cannot be changed here",
        "routes[1].request_headers.set[1].name: invalid header name \"X Y\"",
        "routes[1].request_headers.set[2].value: unknown variable %host%; expected one of %client_ip%, %request_id%, %route%, %path_prefix%, %tls_subject%, %tls_uri_san%",
        "routes[1].request_headers.add[0].value: unclosed variable in \"50%\": write %% for a percent sign",
        "routes[1].request_headers.add[1].value: missing required field",
        "routes[1].request_headers.add[2].value: \"a\\r\\nX-E: b\" contains the control character '\\r'",
        "routes[1].request_headers.add[3].value: %path_prefix% needs a route that matches by match.path_prefix",
        "routes[1].request_headers.remove[0]: Host is the proxy's to write (connection and framing fields, Host); it cannot be changed here",
        "routes[1].request_headers.remove[1]: invalid header name \"bad name\"",
        "routes[1].request_headers.remove[2]: X-Forwarded-Client-Cert is the proxy's to write, from a verified client certificate only",
        "routes[1].response_headers.set: expected a list of {name, value}, found a mapping",
    ];
    let mut missing: Vec<&str> = want.iter().copied().filter(|w| !got.iter().any(|g| g == w)).collect();
    let extra: Vec<&String> = got.iter().filter(|g| !want.contains(&g.as_str())).collect();
    missing.sort();
    assert!(missing.is_empty() && extra.is_empty(), "missing: {missing:#?}\nextra: {extra:#?}");
    let ok = doc.split("  - name: bad").next().unwrap();
    let ok = ok.replace("%path_prefix%\" }] }", "%route%\" }] }");
    let c = parse(ok.as_bytes(), Format::Yaml).unwrap();
    let ops = c.routes[0].request_headers.as_ref().unwrap();
    assert_eq!((ops.set.len(), ops.add.len(), ops.remove.as_slice()), (1, 2, &["X-Internal".to_owned()][..]));
    assert_eq!(parse_value(&serde_json::to_value(&c).unwrap()).unwrap(), c, "round trip");
}

#[test]
fn rewrites_are_checked_with_paths() {
    let doc = r#"
listeners: [{ name: l, address: 127.0.0.1:1 }]
pools: [{ name: p, endpoints: [{ address: "a:1" }] }]
routes:
  - { name: v1, match: { path_prefix: /v1 }, pool: p, rewrite: { path_prefix: /, host: api.internal:8080 } }
  - { name: re, match: { path: /x }, pool: p, rewrite: { path_regex: { pattern: "^/x$", substitution: "/y/${0}" } } }
  - { name: bad1, match: { path: /a }, pool: p, rewrite: { path_prefix: /b } }
  - { name: bad2, match: { path_prefix: /c }, pool: p, rewrite: { path_prefix: "c d", path_regex: { pattern: "(", substitution: "a b" }, host: "http://h/", to: x } }
"#;
    let got = errors(doc);
    let want = [
        "routes[2].rewrite.path_prefix: needs a route that matches by match.path_prefix: it replaces what that matched",
        "routes[3].rewrite.to: unknown field `to`; expected one of: path_prefix, path_regex, host",
        "routes[3].rewrite.path_prefix: \"c d\" must start with / and be a path (printable, no ? or #)",
        "routes[3].rewrite.path_regex.pattern: invalid regex \"(\": unclosed group",
        "routes[3].rewrite.path_regex.substitution: \"a b\": use printable characters, no spaces, ? or #; percent-encode the rest",
        "routes[3].rewrite: path_prefix and path_regex are exclusive; use one",
        "routes[3].rewrite.host: invalid host \"http://h/\": expected a name or address, with an optional :port",
    ];
    let mut missing: Vec<&str> = want.iter().copied().filter(|w| !got.iter().any(|g| g == w)).collect();
    let extra: Vec<&String> = got.iter().filter(|g| !want.contains(&g.as_str())).collect();
    missing.sort();
    assert!(missing.is_empty() && extra.is_empty(), "missing: {missing:#?}\nextra: {extra:#?}");
}

#[test]
fn routes_that_answer_themselves_are_checked_with_paths() {
    let doc = r#"
listeners: [{ name: l, address: 127.0.0.1:1 }]
pools: [{ name: p, endpoints: [{ address: "a:1" }] }]
routes:
  - { name: https, match: { host: a.test }, redirect: { scheme: https } }
  - { name: health, match: { path: /healthz }, direct_response: { status: 200, body: "ok\n" } }
  - { name: moved, match: { path_prefix: /old }, redirect: { path_prefix: /new, status: 308, strip_query: true }, response_headers: { set: [{ name: X-A, value: b }] } }
  - { name: none, match: { path: /n } }
  - { name: both, match: { path: /b }, pool: p, redirect: {} }
  - { name: extras, match: { path: /e }, direct_response: { status: 503 }, retries: { max_attempts: 1 }, mirror: { pool: p } }
  - { name: bad, match: { path: /x }, redirect: { scheme: ftp, host: "a/b", port: 0, path: "x", path_prefix: /y, status: 200 } }
  - { name: bad2, match: { path: /y }, direct_response: { status: 99, content_type: "" } }
  - { name: bad3, match: { path: /z }, redirect: { path_prefix: /y } }
"#;
    let got = errors(doc);
    let want = [
        "routes[3].pool: missing required field (or redirect, or direct_response)",
        "routes[4]: pool and redirect are exclusive; use one",
        "routes[5].retries: only applies to a route with a pool, not one with direct_response",
        "routes[5].mirror: only applies to a route with a pool, not one with direct_response",
        "routes[6].redirect.scheme: unknown scheme \"ftp\"; expected http or https",
        "routes[6].redirect.host: invalid host \"a/b\": expected a name or address (the port is `port`)",
        "routes[6].redirect.port: 0 is out of range 1 to 65535",
        "routes[6].redirect.path: \"x\" must start with / and be a path (printable, no ? or #)",
        "routes[6].redirect: path and path_prefix are exclusive; use one",
        "routes[6].redirect.status: 200 is not a redirect status; expected 301, 302, 303, 307 or 308",
        "routes[8].redirect.path_prefix: needs a route that matches by match.path_prefix: it replaces what that matched",
        "routes[7].direct_response.status: 99 is out of range 200 to 599",
        "routes[7].direct_response.content_type: invalid content type \"\"",
    ];
    let mut missing: Vec<&str> = want.iter().copied().filter(|w| !got.iter().any(|g| g == w)).collect();
    let extra: Vec<&String> = got.iter().filter(|g| !want.contains(&g.as_str())).collect();
    missing.sort();
    assert!(missing.is_empty() && extra.is_empty(), "missing: {missing:#?}\nextra: {extra:#?}");
    let ok: String = doc
        .lines()
        .filter(|l| {
            !l.contains("name: none")
                && !l.contains("name: both")
                && !l.contains("name: extras")
                && !l.contains("name: bad")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let c = parse(ok.as_bytes(), Format::Yaml).unwrap();
    assert_eq!(c.routes.len(), 3);
    assert!(c.routes[0].pool.is_none() && c.routes[0].redirect.is_some());
    assert_eq!(parse_value(&serde_json::to_value(&c).unwrap()).unwrap(), c, "round trip");
    sluice_compile_free_check(&c);
}

/// Routes without a pool pass the checks a data plane makes too (the compile step lives in
/// another crate; here only that no pool name is required).
fn sluice_compile_free_check(c: &Config) {
    assert!(
        c.routes.iter().all(|r| r.pool.is_none() == (r.redirect.is_some() || r.direct_response.is_some()))
    );
}

#[test]
fn jwt_rules_are_checked_with_paths() {
    let doc = r#"
listeners: [{ name: l, address: 127.0.0.1:1 }]
pools: [{ name: p, endpoints: [{ address: "a:1" }] }]
routes:
  - name: a
    pool: p
    jwt:
      jwks_file: /etc/sluice/jwks.json
      issuer: https://idp.example
      audiences: [api, admin]
      leeway: 30s
      from: { cookie: session }
      claims_to_headers: [{ claim: sub, header: X-User }, { claim: realm.role, header: X-Role }]
      strip_token: true
  - name: b
    pool: p
    match: { path_prefix: /b }
    jwt: { jwks_url: "https://idp.example/.well-known/jwks.json", jwks_refresh: 1m, jwks_ca_file: /ca.pem }
"#;
    let c = parse(doc.as_bytes(), Format::Yaml).unwrap();
    let a = c.routes[0].jwt.as_ref().unwrap();
    assert_eq!(a.jwks_file.as_deref(), Some("/etc/sluice/jwks.json"));
    assert_eq!(a.audiences, ["api", "admin"]);
    assert_eq!(a.from.as_ref().unwrap().cookie.as_deref(), Some("session"));
    assert_eq!(a.claims_to_headers[1].claim, "realm.role");
    let b = c.routes[1].jwt.as_ref().unwrap();
    assert_eq!(b.jwks_refresh, Some(Duration::from_secs(60)));

    let doc = r#"
listeners: [{ name: l, address: 127.0.0.1:1 }]
pools: [{ name: p, endpoints: [{ address: "a:1" }] }]
routes:
  - name: none
    pool: p
    jwt: { issuer: x }
  - name: both
    pool: p
    match: { path: /both }
    jwt: { jwks_file: jwks.json, jwks_url: "https://a/", jwks_refresh: 1s }
  - name: url
    pool: p
    match: { path: /url }
    jwt:
      jwks_url: "http://user:pw@idp/jwks"
      jwks_ca_file: /ca.pem
      issuer: ""
      audiences: [""]
      leeway: 2h
      from: { header: X-Token, cookie: t }
      claims_to_headers: [{ claim: "a..b", header: Host }, { claim: sub, header: x-u }, { claim: email, header: X-U }]
  - name: scheme
    pool: p
    match: { path: /scheme }
    jwt: { jwks_url: "ftp://idp/jwks", jwks_refresh: 1m, from: {} }
"#;
    assert_eq!(
        errors(doc),
        [
            "routes[0].jwt.jwks_file: missing required field (or jwks_url)",
            "routes[1].jwt: jwks_file and jwks_url are exclusive; use one",
            "routes[1].jwt.jwks_file: \"jwks.json\" must be an absolute path on the node",
            "routes[1].jwt.jwks_refresh: 1s is shorter than the shortest refresh, 10s",
            "routes[2].jwt.jwks_url: credentials in a URL would travel in every bundle; serve the JWKS without them",
            "routes[2].jwt.jwks_ca_file: only applies with an https jwks_url",
            "routes[2].jwt.issuer: must not be empty (leave it out for any issuer)",
            "routes[2].jwt.audiences[0]: must not be empty",
            "routes[2].jwt.leeway: 2h is more than the largest leeway, 1h",
            "routes[2].jwt.from: header and cookie are exclusive; use one",
            "routes[2].jwt.claims_to_headers[0].claim: \"a..b\": a claim name, or names joined by '.'",
            "routes[2].jwt.claims_to_headers[0].header: Host is the proxy's to write (connection and framing fields, Host); it cannot be changed here",
            "routes[2].jwt.claims_to_headers[2].header: X-U is already set from another claim",
            "routes[3].jwt.jwks_url: \"ftp://idp/jwks\" must start with https:// or http://",
            "routes[3].jwt.from: needs one of header, cookie",
        ]
    );
}

#[test]
fn ext_authz_is_checked_with_paths() {
    let doc = r#"
listeners: [{ name: l, address: 127.0.0.1:1 }]
pools:
  - { name: p, endpoints: [{ address: "a:1" }] }
  - { name: authz, protocol: http2, endpoints: [{ address: "b:1" }] }
routes:
  - name: a
    pool: p
    ext_authz: { pool: authz, timeout: 100ms, fail_mode: open, headers: [Authorization, x-user], max_body: 4KiB }
"#;
    let c = parse(doc.as_bytes(), Format::Yaml).unwrap();
    let a = c.routes[0].ext_authz.as_ref().unwrap();
    assert_eq!((a.pool.as_str(), a.fail_mode), ("authz", Some(FailMode::Open)));
    assert_eq!(a.headers.as_deref(), Some(&["Authorization".to_owned(), "x-user".to_owned()][..]));

    let doc = r#"
listeners: [{ name: l, address: 127.0.0.1:1 }]
pools:
  - { name: p, endpoints: [{ address: "a:1" }] }
routes:
  - name: a
    pool: p
    ext_authz: { pool: p, timeout: 0s, fail_mode: maybe, headers: ["bad name"], max_body: 128KiB }
  - name: b
    match: { path: /b }
    pool: p
    request_body: { buffer: 1KiB }
    ext_authz: { pool: nowhere, max_body: 2KiB }
  - name: c
    match: { path: /c }
    direct_response: { status: 200 }
    ext_authz: { pool: p }
"#;
    assert_eq!(
        errors(doc),
        [
            "routes[0].ext_authz.timeout: must be greater than 0s",
            "routes[0].ext_authz.fail_mode: unknown value \"maybe\"; expected one of: open, closed",
            "routes[0].ext_authz.headers[0]: invalid header name \"bad name\"",
            "routes[0].ext_authz.pool: pool `p` speaks HTTP/1.1; ext_authz is gRPC: give the pool protocol: http2",
            "routes[1].ext_authz.max_body: 2048 bytes is more than the route's request_body.buffer (1024 bytes), what is read before the check",
            "routes[1].ext_authz.pool: unknown pool `nowhere`; defined pools: p",
            "routes[2].ext_authz: only applies to a route with a pool, not one with direct_response",
            "routes[2].ext_authz.pool: pool `p` speaks HTTP/1.1; ext_authz is gRPC: give the pool protocol: http2",
        ]
    );
}

#[test]
fn cache_is_checked_with_paths() {
    let doc = r#"
listeners: [{ name: l, address: 127.0.0.1:1 }]
pools: [{ name: p, endpoints: [{ address: "a:1" }] }]
routes:
  - name: a
    pool: p
    cache: { memory_percent: 25, max_object: 2MiB, vary: [Accept-Encoding], authorized: true, heuristic_percent: 10, coalesce_timeout: 0s }
"#;
    let c = parse(doc.as_bytes(), Format::Yaml).unwrap();
    let cache = c.routes[0].cache.as_ref().unwrap();
    assert_eq!(cache.max_object_or_default(), 2 << 20);
    assert_eq!(cache.vary_or_default(), ["accept-encoding"]);
    assert!(cache.coalesce_timeout_or_default().get().is_zero());

    let doc = r#"
listeners: [{ name: l, address: 127.0.0.1:1 }]
pools: [{ name: p, endpoints: [{ address: "a:1" }] }]
routes:
  - name: a
    pool: p
    cache: { memory_percent: 0, max_object: 0, vary: ["bad name"], heuristic_percent: 101, coalesce_timeout: 2m, ttl: 5s }
  - name: b
    match: { path: /b }
    pool: p
    cache: { memory_percent: 70 }
  - name: c
    match: { path: /c }
    pool: p
    cache: { memory_percent: 40 }
  - name: d
    match: { path: /d }
    direct_response: { status: 200 }
    cache: { memory_percent: 1 }
"#;
    let mut got = errors(doc);
    got.sort();
    assert_eq!(
        got,
        [
            "routes: the routes' cache.memory_percent add up to 111, more than the node's cache memory (routes[1] 70, routes[2] 40, routes[3] 1)",
            "routes[0].cache.coalesce_timeout: at most 60s: a waiting request holds its client",
            "routes[0].cache.heuristic_percent: 101 is out of range 0 to 100",
            "routes[0].cache.max_object: must be above 0; remove the cache block to turn caching off",
            "routes[0].cache.memory_percent: 0 is out of range: a percentage above 0, at most 100",
            "routes[0].cache.ttl: unknown field `ttl`; expected one of: memory_percent, max_object, vary, authorized, heuristic_percent, coalesce_timeout",
            "routes[0].cache.vary[0]: invalid header name \"bad name\"",
            "routes[3].cache: only applies to a route with a pool, not one with direct_response",
        ]
    );
}
