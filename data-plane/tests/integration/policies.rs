//! Route policies together, as a new user would set them up: one route that strips a field and
//! adds one, rewrites `/v1/` to `/`, requires a JWT from a JWKS file and asks an external
//! authorization server (failing closed); a route that sends plain HTTP to HTTPS; a WebSocket
//! route behind the same JWT and authorization server.

#![allow(clippy::unwrap_used)]

use http::StatusCode;
use serde_json::json;
use sluice_example_authz::{Policy, start};
use sluice_test_support::jwt::{Issuer, jwks, now};
use tokio::io::AsyncWriteExt;

use crate::support::*;
use crate::websocket::{echo_server, frame, next_frame};

#[tokio::test]
async fn a_route_with_every_policy_at_once() {
    let up = Upstream::start("app").await;
    let (ws, _) = echo_server().await;
    let authz = start(
        Policy::from_json(
            r#"{"rules": [{"path_prefix": "/v1/blocked", "allow": false, "status": 451, "reason": "blocked"},
                          {"path_prefix": "/", "allow": true, "add_headers": {"x-authz": "ok"}}]}"#,
        )
        .unwrap(),
    )
    .await;
    let issuer = Issuer::es256("k1");
    let dir = temp_dir();
    let keys = dir.join("jwks.json");
    std::fs::write(&keys, jwks(&[&issuer])).unwrap();
    let jwt = format!(
        "jwks_file: '{}', issuer: https://idp.test, claims_to_headers: [{{claim: sub, header: X-User}}]",
        keys.display()
    );
    let config = format!(
        r#"listeners: [{{ name: public, address: '127.0.0.1:0' }}]
pools:
  - {{ name: app, endpoints: [{{ address: '{}' }}] }}
  - {{ name: chat, endpoints: [{{ address: '{ws}' }}] }}
  - {{ name: authz, protocol: http2, endpoints: [{{ address: '{}' }}] }}
routes:
  - name: api
    match: {{ path_prefix: /v1 }}
    pool: app
    rewrite: {{ path_prefix: / }}
    request_headers: {{ remove: [X-Debug], add: [{{ name: X-Gateway, value: sluice }}] }}
    jwt: {{ {jwt} }}
    ext_authz: {{ pool: authz, fail_mode: closed }}
  - {{ name: secure, match: {{ path_prefix: /account }}, pool: app, require_tls: true }}
  - name: chat
    match: {{ path_prefix: /chat }}
    pool: chat
    jwt: {{ {jwt}, from: {{ cookie: session }} }}
    ext_authz: {{ pool: authz }}
"#,
        up.addr,
        authz.addr()
    );
    let proxy = Proxy::start(&config);
    let addr = proxy.listener("public").await;
    let token = issuer.token(&json!({"iss": "https://idp.test", "sub": "ada", "exp": now() + 600}));
    let bearer = format!("Bearer {token}");
    let c = client();
    let get = |path: &str, headers: Vec<(&'static str, String)>| {
        let mut req = request("GET", &format!("http://{addr}{path}")).header("host", "shop.test");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        send(&c, req.body(full("")).unwrap())
    };

    // Everything in order: rewritten, fields changed, claim forwarded, authorized.
    let (status, _, body) = get(
        "/v1/users/7",
        vec![("authorization", bearer.clone()), ("x-debug", "1".into()), ("x-user", "mallory".into())],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["path"], "/users/7");
    let h = &body["headers"];
    assert!(h.get("x-debug").is_none());
    assert_eq!(
        (&h["x-gateway"], &h["x-user"], &h["x-authz"]),
        (&json!(["sluice"]), &json!(["ada"]), &json!(["ok"]))
    );
    // The authorization server saw the verified claim too, never the client's own field.
    let asked = authz.last_request().unwrap();
    let fields = &sluice_example_authz::http_request(&asked).unwrap().headers;
    assert_eq!(fields.get("x-user").map(String::as_str), Some("ada"));
    // No token: the JWT check refuses before the authorization server is asked.
    let calls = authz.calls();
    assert_eq!(get("/v1/users/7", vec![]).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(authz.calls(), calls);
    // The server's denial, as it gave it.
    assert_eq!(get("/v1/blocked", vec![("authorization", bearer.clone())]).await.0.as_u16(), 451);
    // Plain HTTP to HTTPS.
    let (status, headers, _) = get("/account?tab=2", vec![]).await;
    assert_eq!(
        (status, &headers["location"]),
        (StatusCode::MOVED_PERMANENTLY, &"https://shop.test/account?tab=2".parse().unwrap())
    );

    // WebSocket behind the same checks: refused without the cookie, passed through with it.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nHost: shop.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::io::AsyncReadExt::read(&mut s, &mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let hello = format!(
        "GET /chat HTTP/1.1\r\nHost: shop.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nCookie: session={token}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(hello.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let head = loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::io::AsyncReadExt::read(&mut s, &mut chunk).await.unwrap();
        assert!(n > 0);
        pending.extend_from_slice(&chunk[..n]);
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            break head;
        }
    };
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(&frame(1, b"hi", true)).await.unwrap();
    assert_eq!(next_frame(&mut s, &mut pending).await, (1, b"hi".to_vec()));

    let m = scrape(&proxy).await;
    assert_eq!(value(&m, "sluice_upgrades_total", &[("route", "chat")]), 1.0);
}
