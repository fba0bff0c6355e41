//! What an operator sees of the traffic: `/metrics` scraped after known traffic (parsed by an
//! independent Prometheus text parser) and the JSON access log on standard output.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use crate::support::*;
use serde_json::Value;

const WITHIN: Duration = Duration::from_secs(10);

fn config(upstream: &Upstream, access_log: &str) -> String {
    format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:0\n{access_log}\
         pools:\n  - name: app\n    endpoints: [{{address: {}}}]\n  \
         - name: dead\n    endpoints: [{{address: 127.0.0.1:1}}]\n\
         routes:\n  - name: app\n    match: {{path_prefix: /app}}\n    pool: app\n  \
         - name: dead\n    match: {{path_prefix: /dead}}\n    pool: dead\n",
        upstream.addr
    )
}

#[tokio::test]
async fn metrics_count_known_traffic() {
    let up = Upstream::start("u1").await;
    let proxy = Proxy::start(&config(&up, ""));
    let web = proxy.listener("web").await;
    for _ in 0..5 {
        assert_eq!(get(&format!("http://{web}/app/x")).await.0, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(&format!("http://{web}/nowhere")).await.0, 404);
    }
    for _ in 0..2 {
        assert_eq!(get(&format!("http://{web}/dead")).await.0, 502);
    }

    // A response is counted when its body is done, a moment after the client has read it.
    eventually!(WITHIN, {
        value(&scrape(&proxy).await, "sluice_listener_requests_total", &[("status_class", "2xx")]) == 5.0
    });
    let s = scrape(&proxy).await;
    let listener =
        |class| value(&s, "sluice_listener_requests_total", &[("listener", "web"), ("status_class", class)]);
    assert_eq!((listener("2xx"), listener("4xx"), listener("5xx")), (5.0, 3.0, 2.0));
    let route =
        |route, class| value(&s, "sluice_requests_total", &[("route", route), ("status_class", class)]);
    assert_eq!((route("app", "2xx"), route("app", "5xx"), route("dead", "5xx")), (5.0, 0.0, 2.0));
    assert_eq!(
        value(&s, "sluice_requests_total", &[("route", "app"), ("pool", "app")]),
        0.0,
        "1xx of app/app"
    );
    assert_eq!(value(&s, "sluice_request_duration_seconds_count", &[("route", "app")]), 5.0);
    assert_eq!(value(&s, "sluice_request_duration_seconds", &[("route", "dead")]), 2.0, "+Inf bucket");
    assert_eq!(value(&s, "sluice_listener_request_duration_seconds_count", &[("listener", "web")]), 10.0);

    let endpoint = up.addr.to_string();
    let upstream = &[("pool", "app"), ("endpoint", endpoint.as_str()), ("status_class", "2xx")];
    assert_eq!(value(&s, "sluice_upstream_requests_total", upstream), 5.0);
    assert_eq!(value(&s, "sluice_upstream_request_duration_seconds_count", &[("pool", "app")]), 5.0);
    assert!(value(&s, "sluice_upstream_failures_total", &[("pool", "dead")]) >= 2.0);
    assert_eq!(value(&s, "sluice_upstream_failures_total", &[("pool", "app")]), 0.0);

    assert_eq!(value(&s, "sluice_pool_endpoints", &[("pool", "app"), ("state", "healthy")]), 1.0);
    assert_eq!(value(&s, "sluice_circuit_breaker_state", &[("pool", "app"), ("state", "closed")]), 1.0);
    assert_eq!(value(&s, "sluice_circuit_breaker_state", &[("pool", "app"), ("state", "open")]), 0.0);
    assert_eq!(value(&s, "sluice_config_version", &[]), 1.0);
    assert_eq!(value(&s, "sluice_config_changes_total", &[("result", "applied")]), 1.0);
    assert_eq!(value(&s, "sluice_config_changes_total", &[("result", "refused")]), 0.0);
    assert!(value(&s, "sluice_config_last_applied_timestamp_seconds", &[]) > 1.7e9);
}

#[tokio::test]
async fn the_text_format_announces_each_family_once_before_its_samples() {
    let up = Upstream::start("u1").await;
    let proxy = Proxy::start(&config(&up, ""));
    let text = proxy.metrics_text().await;
    let mut announced = std::collections::HashSet::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap().to_owned();
            assert!(announced.insert(name.clone()), "{name} announced twice");
            current = name;
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|base| *base == current))
                .unwrap_or(name);
            assert_eq!(family, current, "sample {line:?} outside its family");
            assert!(name.starts_with("sluice_"), "{name}");
        }
    }
    assert!(announced.len() > 20, "{announced:?}");
}

#[tokio::test]
async fn a_refused_reload_is_counted() {
    let up = Upstream::start("u1").await;
    let proxy = Proxy::start(&config(&up, ""));
    proxy.write_config("listeners: []\nroutes: [{name: r, pool: missing}]\n");
    eventually!(WITHIN, {
        value(&scrape(&proxy).await, "sluice_config_changes_total", &[("result", "refused")]) == 1.0
    });
    assert_eq!(value(&scrape(&proxy).await, "sluice_config_version", &[]), 1.0, "the old config serves");
}

#[tokio::test]
async fn the_access_log_has_a_json_line_per_request() {
    let up = Upstream::start("u1").await;
    let proxy = Proxy::start(&config(&up, "    access_log: {}\n"));
    let web = proxy.listener("web").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = request("GET", &format!("http://{web}/app/items?page=2")).header("traceparent", traceparent);
    let (status, headers, _) = send(&client(), req.body(full("")).unwrap()).await;
    assert_eq!(status, 200);
    let request_id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(get(&format!("http://{web}/nowhere")).await.0, 404);

    eventually!(WITHIN, proxy.stdout_lines().len() >= 2);
    let lines: Vec<Value> = proxy.stdout_lines().iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ok = lines.iter().find(|l| l["request_id"] == request_id.as_str()).expect("a line for the request");
    assert_eq!(ok["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["host"], web.to_string());
    assert_eq!(ok["path"], "/app/items?page=2");
    assert_eq!(ok["config_version"], 1);
    assert_eq!((&ok["route"], &ok["pool"]), (&Value::from("app"), &Value::from("app")));
    assert_eq!(ok["endpoint"], up.addr.to_string());
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["retries"], 0);
    assert_eq!(ok["error"], Value::Null);
    assert_eq!(ok["mirrored"], false);
    let (total, upstream) =
        (ok["duration_ms"].as_f64().unwrap(), ok["upstream_duration_ms"].as_f64().unwrap());
    assert!(upstream > 0.0 && upstream <= total, "{ok}");
    assert!(ok["time"].as_str().unwrap().ends_with('Z'), "{ok}");

    let missing = lines.iter().find(|l| l["status"] == 404).expect("a line for the 404");
    assert_eq!((&missing["route"], &missing["error"]), (&Value::Null, &Value::from("no_route")));
    let s = scrape(&proxy).await;
    assert_eq!(value(&s, "sluice_access_log_lines_total", &[("result", "logged")]), 2.0);
    assert_eq!(value(&s, "sluice_access_log_lines_total", &[("result", "written")]), 2.0);
    assert_eq!(value(&s, "sluice_access_log_lines_total", &[("result", "dropped")]), 0.0);
}

#[tokio::test]
async fn access_logging_is_per_listener_and_sampled() {
    let up = Upstream::start("u1").await;
    let proxy = Proxy::start(&format!(
        "listeners:\n  - name: quiet\n    address: 127.0.0.1:0\n    access_log: {{enabled: false}}\n  \
         - name: half\n    address: 127.0.0.1:0\n    access_log: {{sample: 0.5}}\n\
         pools: [{{name: app, endpoints: [{{address: {}}}]}}]\nroutes: [{{name: app, pool: app}}]\n",
        up.addr
    ));
    let (quiet, half) = (proxy.listener("quiet").await, proxy.listener("half").await);
    for _ in 0..50 {
        assert_eq!(get(&format!("http://{quiet}/")).await.0, 200);
    }
    for _ in 0..400 {
        assert_eq!(get(&format!("http://{half}/")).await.0, 200);
    }
    eventually!(WITHIN, {
        value(
            &scrape(&proxy).await,
            "sluice_listener_requests_total",
            &[("status_class", "2xx"), ("listener", "half")],
        ) == 400.0
    });
    let logged = value(&scrape(&proxy).await, "sluice_access_log_lines_total", &[("result", "logged")]);
    // Binomial(400, 0.5): outside 140..=260 happens with odds below one in a billion.
    assert!((140.0..=260.0).contains(&logged), "{logged} lines for 400 requests sampled at 0.5");
    // Batches reach standard output within a second.
    eventually!(WITHIN, proxy.stdout_lines().len() == logged as usize);
    let written = value(&scrape(&proxy).await, "sluice_access_log_lines_total", &[("result", "written")]);
    assert_eq!(written, logged);
}

#[tokio::test]
async fn what_the_client_sent_is_logged_as_valid_json_whatever_its_bytes() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let up = Upstream::start("u1").await;
    let proxy = Proxy::start(&config(&up, "    access_log: {}\n"));
    let web = proxy.listener("web").await;
    // A request id with a quote and a backslash (kept: it is printable), a Host with a quote and
    // a Latin-1 byte, a path with a quote, a backslash and UTF-8 both raw and percent-encoded.
    let mut raw = b"GET /app/\"q\"\\x\xc3\xa9%C3%A9?a=1 HTTP/1.1\r\nhost: h\"st\xe9:81\r\n".to_vec();
    raw.extend_from_slice(b"x-request-id: id\"with\\both\r\nconnection: close\r\n\r\n");
    let mut conn = tokio::net::TcpStream::connect(web).await.unwrap();
    conn.write_all(&raw).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));

    eventually!(WITHIN, !proxy.stdout_lines().is_empty());
    let line = &proxy.stdout_lines()[0];
    let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["request_id"], "id\"with\\both", "{line}");
    assert_eq!(v["host"], "h\"st\u{e9}:81", "{line}");
    assert_eq!(v["path"], "/app/\"q\"\\x\u{e9}%C3%A9?a=1", "{line}");
}
