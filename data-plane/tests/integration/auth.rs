//! Route authentication through the running proxy: JWTs verified against a JWKS file (rotated
//! while serving) and a JWKS URL fetched in the background.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};
use sluice_test_support::jwt::{Issuer, jwks, now};

use crate::support::*;

fn claims(sub: &str, exp_in: i64) -> Value {
    json!({"iss": "https://idp.test", "aud": "api", "sub": sub, "exp": now() as i64 + exp_in})
}

/// GET `path` with these extra headers: status, headers and JSON body.
async fn call(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, Value) {
    let mut req = request("GET", &format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(full("")).unwrap()).await
}

#[tokio::test]
async fn a_route_requires_a_jwt_from_a_jwks_file() {
    let up = Upstream::start("up").await;
    let dir = temp_dir();
    let jwks_path = dir.join("jwks.json");
    let (old, new) = (Issuer::rs256("2026-11"), Issuer::eddsa("2026-12"));
    std::fs::write(&jwks_path, jwks(&[&old])).unwrap();
    let config = format!(
        r#"listeners: [{{ name: public, address: '127.0.0.1:0' }}]
pools: [{{ name: p, endpoints: [{{ address: '{}' }}] }}]
routes:
  - name: api
    match: {{ path_prefix: /api }}
    pool: p
    jwt:
      jwks_file: {}
      issuer: https://idp.test
      audiences: [api]
      claims_to_headers: [{{ claim: sub, header: X-User }}]
      strip_token: true
  - {{ name: open, pool: p }}
"#,
        up.addr,
        jwks_path.display()
    );
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;

    let (status, headers, body) = call(addr, "/api/x", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(body["category"], "unauthorized");
    assert_eq!(body["request_id"], headers["x-request-id"].to_str().unwrap());

    let token = old.token(&claims("alice", 300));
    let auth = format!("Bearer {token}");
    let (status, _, body) = call(addr, "/api/x", &[("authorization", &auth), ("x-user", "root")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["headers"]["x-user"], json!(["alice"]), "the claim, never the client's own field");
    assert!(body["headers"].get("authorization").is_none(), "strip_token: the token stays at the edge");
    assert_eq!(call(addr, "/api/x", &[("authorization", &auth)]).await.0, StatusCode::OK);
    // Another route is not affected.
    assert_eq!(call(addr, "/open", &[]).await.0, StatusCode::OK);

    let expired = format!("Bearer {}", old.token(&claims("alice", -120)));
    let (status, headers, _) = call(addr, "/api/x", &[("authorization", &expired)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"invalid_token\", error_description=\"the token has expired\""
    );
    let forged = format!(
        "Bearer {}",
        new.token_with_header(&json!({"alg": "RS256", "kid": "2026-11"}), &claims("root", 300))
    );
    assert_eq!(call(addr, "/api/x", &[("authorization", &forged)]).await.0, StatusCode::UNAUTHORIZED);

    // Rotation: the file now holds only the new key. Old tokens stop working, new ones work,
    // without a reload of the config.
    std::fs::write(&jwks_path, jwks(&[&new])).unwrap();
    eventually!(
        Duration::from_secs(20),
        call(addr, "/api/x", &[("authorization", &auth)]).await.0 == StatusCode::UNAUTHORIZED
    );
    let fresh = format!("Bearer {}", new.token(&claims("bob", 300)));
    let (status, _, body) = call(addr, "/api/x", &[("authorization", &fresh)]).await;
    assert_eq!((status, &body["headers"]["x-user"]), (StatusCode::OK, &json!(["bob"])));

    let s = scrape(&proxy).await;
    let outcome = |o: &str| value(&s, "sluice_jwt_requests_total", &[("route", "api"), ("outcome", o)]);
    assert_eq!(outcome("missing"), 1.0);
    assert_eq!(outcome("expired"), 1.0);
    assert_eq!(outcome("bad_signature"), 1.0);
    // The old token until the new file was read (each one from the cache), then refused once.
    assert_eq!(outcome("unknown_key"), 1.0);
    let allowed = outcome("allowed");
    assert!(allowed >= 3.0);
    assert_eq!(value(&s, "sluice_jwt_cache_hits_total", &[("route", "api")]), allowed - 2.0);
    let name = jwks_path.display().to_string();
    assert_eq!(value(&s, "sluice_jwks_loads_total", &[("jwks", &name), ("result", "ok")]), 2.0);
    assert_eq!(value(&s, "sluice_jwks_keys", &[("jwks", &name)]), 1.0);
    // Refused requests never reached the upstream: the allowed ones and the open route's.
    assert_eq!(up.hits() as f64, allowed + 1.0);
}

#[tokio::test]
async fn a_jwks_url_is_fetched_in_the_background_and_again_for_an_unknown_key() {
    let up = Upstream::start("up").await;
    let idp = Upstream::start("idp").await;
    let (first, second) = (Issuer::es256("a"), Issuer::rs256("b"));
    idp.set_fault(Fault::Status(500));
    let config = format!(
        r#"listeners: [{{ name: public, address: '127.0.0.1:0' }}]
pools: [{{ name: p, endpoints: [{{ address: '{}' }}] }}]
routes:
  - name: api
    pool: p
    jwt: {{ jwks_url: "http://{}/doc?tenant=1", jwks_refresh: 10m }}
"#,
        up.addr, idp.addr
    );
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;
    let auth = format!("Bearer {}", first.token(&claims("alice", 300)));

    // No keys yet: the proxy cannot tell a good token from a bad one, and says so with 503.
    let (status, headers, body) = call(addr, "/x", &[("authorization", &auth)]).await;
    assert_eq!(
        (status, body["category"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("auth_unavailable"))
    );
    assert_eq!(headers["retry-after"], "1");
    idp.set_doc(serde_json::from_str(&jwks(&[&first])).unwrap());
    idp.set_fault(Fault::None);
    eventually!(
        Duration::from_secs(20),
        call(addr, "/x", &[("authorization", &auth)]).await.0 == StatusCode::OK
    );
    let fetches = idp.hits();

    // The provider rotates to a key the proxy has not seen: the first token naming it is
    // refused and asks for an early fetch (the refresh is 10 minutes away).
    idp.set_doc(serde_json::from_str(&jwks(&[&first, &second])).unwrap());
    let rotated = format!("Bearer {}", second.token(&claims("bob", 300)));
    assert_eq!(call(addr, "/x", &[("authorization", &rotated)]).await.0, StatusCode::UNAUTHORIZED);
    eventually!(
        Duration::from_secs(20),
        call(addr, "/x", &[("authorization", &rotated)]).await.0 == StatusCode::OK
    );
    assert_eq!(idp.hits(), fetches + 1, "one early fetch");

    // Requests never wait for the provider: with it failing, the keys fetched are kept.
    idp.set_fault(Fault::Hang);
    assert_eq!(call(addr, "/x", &[("authorization", &auth)]).await.0, StatusCode::OK);
    let s = scrape(&proxy).await;
    let name = format!("http://{}/doc", idp.addr);
    assert!(value(&s, "sluice_jwks_loads_total", &[("jwks", &name), ("result", "error")]) >= 1.0);
    assert_eq!(value(&s, "sluice_jwks_loads_total", &[("jwks", &name), ("result", "ok")]), 2.0);
    assert_eq!(value(&s, "sluice_jwks_keys", &[("jwks", &name)]), 2.0);
}
