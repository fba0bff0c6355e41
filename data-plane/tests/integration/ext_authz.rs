//! External authorization through the running proxy, against the example server under
//! `examples/ext-authz` (Envoy's `ext_authz` gRPC API): allow with field changes, deny with the
//! server's answer, and slow, failing and crashed servers under both fail modes.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use sluice_example_authz::{AuthzHandle, Policy, http_request, start};

use crate::support::*;

const POLICY: &str = r#"{
  "rules": [
    { "path_prefix": "/admin", "header": { "name": "x-role", "value": "admin" }, "allow": true,
      "add_headers": { "x-authz-user": "%header:x-user%" }, "remove_headers": ["x-role"],
      "response_headers": { "x-authz-decision": "admin" } },
    { "path_prefix": "/admin", "allow": false, "reason": "admin only" },
    { "path_prefix": "/", "allow": true }
  ]
}"#;

fn config(up: &Upstream, authz: &AuthzHandle, extra: &str) -> String {
    format!(
        "listeners:\n  - {{name: public, address: '127.0.0.1:0'}}\n\
         pools:\n  - {{name: app, endpoints: [{{address: '{}'}}]}}\n  \
         - {{name: authz, protocol: http2, endpoints: [{{address: '{}'}}]}}\n\
         routes:\n  \
         - {{name: closed, match: {{path_prefix: /}}, pool: app, ext_authz: {{pool: authz, timeout: 300ms, headers: [x-role, x-user, content-type], max_body: 1KiB}}}}\n  \
         - {{name: open, match: {{path_prefix: /open}}, pool: app, ext_authz: {{pool: authz, timeout: 300ms, fail_mode: open}}}}\n{extra}",
        up.addr,
        authz.addr()
    )
}

async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = request(method, &format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client().request(req.body(full(body.to_owned())).unwrap()).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body).await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_server_allows_with_changes_and_denies_with_its_own_answer() {
    let up = Upstream::start("up").await;
    let authz = start(Policy::from_json(POLICY).unwrap()).await;
    let proxy = Proxy::start(&config(&up, &authz, ""));
    let addr = proxy.listener("public").await;

    let (status, headers, body) =
        call(addr, "GET", "/admin/users", &[("x-role", "admin"), ("x-user", "alice")], "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["x-authz-decision"], "admin", "the server's field for the answer");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["headers"]["x-authz-user"], json!(["alice"]), "{seen}");
    assert_eq!(seen["headers"]["x-authz-checked"], json!(["1"]));
    assert!(seen["headers"].get("x-role").is_none(), "the server removed it");

    let (status, headers, body) = call(addr, "GET", "/admin/users", &[("x-user", "mallory")], "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, r#"{"denied":"admin only"}"#, "the server's body, as it sent it");
    assert_eq!(headers["x-authz-reason"], "admin only");
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(up.hits(), 1, "a denied request never reaches the upstream");

    // What the server was asked: the route's fields only, the body's start, who and what.
    let (status, _, _) = call(
        addr,
        "POST",
        "/orders?x=1",
        &[("content-type", "text/plain"), ("cookie", "secret=1")],
        "two apples",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let asked = authz.last_request().unwrap();
    let http = http_request(&asked).unwrap();
    assert_eq!(
        (http.method.as_str(), http.path.as_str(), http.body.as_str()),
        ("POST", "/orders?x=1", "two apples")
    );
    assert_eq!(http.headers.get("content-type").map(String::as_str), Some("text/plain"));
    assert!(!http.headers.contains_key("cookie"), "only the fields the route sends: {:?}", http.headers);
    assert_eq!(http.size, 10);
    assert!(!http.id.is_empty());
    let route = asked.attributes.as_ref().unwrap().context_extensions.get("route");
    assert_eq!(route.map(String::as_str), Some("closed"));

    let s = scrape(&proxy).await;
    let checks = |r: &str| value(&s, "sluice_ext_authz_checks_total", &[("route", "closed"), ("result", r)]);
    assert_eq!((checks("allowed"), checks("denied")), (2.0, 1.0));
    assert_eq!(
        value(&s, "sluice_listener_errors_total", &[("listener", "public"), ("category", "denied")]),
        1.0
    );
}

#[tokio::test]
async fn failing_servers_close_or_open_the_route_as_configured() {
    let up = Upstream::start("up").await;
    let authz = start(Policy::from_json(POLICY).unwrap()).await;
    let proxy = Proxy::start(&config(&up, &authz, ""));
    let addr = proxy.listener("public").await;
    assert_eq!(call(addr, "GET", "/x", &[], "").await.0, StatusCode::OK);

    // Slow: past the timeout. Closed answers 503 without waiting for the server.
    authz.set_delay(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let (status, headers, body) = call(addr, "GET", "/x", &[], "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(started.elapsed() < Duration::from_secs(2), "waited {:?}", started.elapsed());
    assert!(body.contains("auth_unavailable"), "{body}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(call(addr, "GET", "/open/x", &[], "").await.0, StatusCode::OK);
    authz.set_delay(Duration::ZERO);

    // Refusing with a gRPC error.
    authz.set_error(Some(tonic::Code::Internal));
    assert_eq!(call(addr, "GET", "/x", &[], "").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(call(addr, "GET", "/open/x", &[], "").await.0, StatusCode::OK);
    authz.set_error(None);
    assert_eq!(call(addr, "GET", "/x", &[], "").await.0, StatusCode::OK);

    // Crashed: nothing listens any more.
    authz.stop().await;
    assert_eq!(call(addr, "GET", "/x", &[], "").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(call(addr, "GET", "/open/x", &[], "").await.0, StatusCode::OK);

    let s = scrape(&proxy).await;
    let checks =
        |route: &str, r: &str| value(&s, "sluice_ext_authz_checks_total", &[("route", route), ("result", r)]);
    assert_eq!(checks("closed", "timeout"), 1.0);
    assert_eq!(checks("open", "timeout"), 1.0);
    assert_eq!(checks("closed", "error") + checks("open", "error"), 4.0);
    assert_eq!(value(&s, "sluice_ext_authz_fail_open_total", &[("route", "open")]), 3.0);
}
