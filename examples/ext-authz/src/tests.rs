use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_proto::envoy::config::core::v3::HeaderValueOption;
use sluice_proto::envoy::service::auth::v3::attribute_context::{self, HttpRequest};
use sluice_proto::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use sluice_proto::envoy::service::auth::v3::check_response::HttpResponse;
use sluice_proto::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use tonic::Code;
use tonic::transport::Channel;

use super::*;

/// Upper bound for every call: a hang fails the test instead of stalling the run.
const BOUND: Duration = Duration::from_secs(1);

fn example_policy() -> Policy {
    Policy::from_json(include_str!("../policy.json")).expect("policy.json parses")
}

fn check(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> CheckRequest {
    let headers: HashMap<String, String> =
        headers.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
    let http = HttpRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
        size: i64::try_from(body.len()).expect("small body"),
        raw_body: body.to_vec(),
        ..HttpRequest::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
            ..AttributeContext::default()
        }),
    }
}

fn client(authz: &AuthzHandle) -> AuthorizationClient<Channel> {
    client_for(authz.addr())
}

fn client_for(addr: SocketAddr) -> AuthorizationClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}")).expect("url");
    AuthorizationClient::new(channel.connect_timeout(BOUND).connect_lazy())
}

async fn call(
    client: &mut AuthorizationClient<Channel>,
    request: CheckRequest,
) -> Result<CheckResponse, Status> {
    tokio::time::timeout(BOUND, client.check(request))
        .await
        .expect("answered within the bound")
        .map(Response::into_inner)
}

fn ok(response: &CheckResponse) -> &OkHttpResponse {
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(0), "{response:?}");
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("expected an OkResponse, got {other:?}"),
    }
}

fn denied(response: &CheckResponse) -> &DeniedHttpResponse {
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(7), "{response:?}");
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => denied,
        other => panic!("expected a DeniedResponse, got {other:?}"),
    }
}

fn headers(options: &[HeaderValueOption]) -> Vec<(&str, &str)> {
    options.iter().filter_map(|o| o.header.as_ref()).map(|h| (h.key.as_str(), h.value.as_str())).collect()
}

#[tokio::test]
async fn allows_and_denies_by_path_and_header() {
    let authz = start(example_policy()).await;
    let mut client = client(&authz);

    let response = call(&mut client, check("GET", "/healthz", &[], b"")).await.expect("answer");
    assert_eq!(headers(&ok(&response).headers), [(CHECKED_HEADER, "1")]);

    let admin = [("x-role", "admin"), ("x-user", "alice")];
    let response = call(&mut client, check("POST", "/admin/users", &admin, b"")).await.expect("answer");
    let allowed = ok(&response);
    assert_eq!(
        headers(&allowed.headers),
        [(CHECKED_HEADER, "1"), ("x-authz-role", "admin"), ("x-authz-user", "alice")]
    );
    assert_eq!(allowed.headers_to_remove, ["x-role"]);

    // Without x-user the copied header is left out.
    let response =
        call(&mut client, check("GET", "/admin", &[("x-role", "admin")], b"")).await.expect("answer");
    assert_eq!(headers(&ok(&response).headers), [(CHECKED_HEADER, "1"), ("x-authz-role", "admin")]);

    let response =
        call(&mut client, check("GET", "/admin", &[("x-role", "guest")], b"")).await.expect("answer");
    let refused = denied(&response);
    assert_eq!(refused.status.as_ref().map(|s| s.code), Some(403));
    assert_eq!(refused.body, r#"{"denied":"admin only"}"#);
    assert!(headers(&refused.headers).contains(&(REASON_HEADER, "admin only")));

    let response = call(&mut client, check("GET", "/api/x", &[], b"")).await.expect("answer");
    assert_eq!(denied(&response).status.as_ref().map(|s| s.code), Some(401));

    // No rule matches: the default denies.
    let response = call(&mut client, check("GET", "/other", &[], b"")).await.expect("answer");
    let refused = denied(&response);
    assert_eq!(refused.status.as_ref().map(|s| s.code), Some(403));
    assert_eq!(refused.body, format!(r#"{{"denied":"{NO_MATCH}"}}"#));
    assert_eq!(authz.calls(), 6);
}

#[tokio::test]
async fn records_the_requests_it_was_asked() {
    let authz = start(example_policy()).await;
    let mut client = client(&authz);
    for i in 0..RECENT + 3 {
        let path = format!("/healthz/{i}");
        call(&mut client, check("PUT", &path, &[("x-n", "v")], &[0; 5])).await.expect("answer");
    }
    assert_eq!(authz.calls(), u64::try_from(RECENT + 3).expect("small"));
    let requests = authz.requests();
    assert_eq!(requests.len(), RECENT);
    assert_eq!(http_request(&requests[0]).map(|h| h.path.as_str()), Some("/healthz/3"));
    let last = authz.last_request().expect("a request");
    let http = http_request(&last).expect("http attributes");
    assert_eq!((http.method.as_str(), http.path.as_str()), ("PUT", "/healthz/34"));
    assert_eq!(request_header(http, "X-N"), Some("v"));
    assert_eq!(http.raw_body.len(), 5);
}

#[tokio::test]
async fn delay_slows_every_answer() {
    let authz = start(example_policy()).await;
    let mut client = client(&authz);
    authz.set_delay(Duration::from_millis(200));

    let started = Instant::now();
    call(&mut client, check("GET", "/healthz", &[], b"")).await.expect("answer");
    assert!(started.elapsed() >= Duration::from_millis(200), "{:?}", started.elapsed());

    let early =
        tokio::time::timeout(Duration::from_millis(50), client.check(check("GET", "/", &[], b""))).await;
    assert!(early.is_err(), "answered before the delay: {early:?}");

    authz.set_delay(Duration::ZERO);
    let started = Instant::now();
    call(&mut client, check("GET", "/healthz", &[], b"")).await.expect("answer");
    assert!(started.elapsed() < Duration::from_millis(200), "{:?}", started.elapsed());
}

#[tokio::test]
async fn error_answers_every_call_with_the_code() {
    let authz = start(example_policy()).await;
    let mut client = client(&authz);

    authz.set_error(Some(Code::Unavailable));
    let error = call(&mut client, check("GET", "/healthz", &[], b"")).await.expect_err("an error");
    assert_eq!(error.code(), Code::Unavailable);
    authz.set_error(Some(Code::Internal));
    let error = call(&mut client, check("GET", "/healthz", &[], b"")).await.expect_err("an error");
    assert_eq!(error.code(), Code::Internal);

    authz.set_error(None);
    call(&mut client, check("GET", "/healthz", &[], b"")).await.expect("answer");
    assert_eq!(authz.calls(), 3);
}

#[tokio::test]
async fn set_policy_applies_to_the_next_call() {
    let authz = start(Policy::default()).await;
    let mut client = client(&authz);
    let response = call(&mut client, check("GET", "/", &[], b"")).await.expect("answer");
    denied(&response);
    authz.set_policy(Policy { rules: vec![], default_allow: true });
    let response = call(&mut client, check("GET", "/", &[], b"")).await.expect("answer");
    ok(&response);
}

#[tokio::test]
async fn stop_closes_connections_and_refuses_new_ones() {
    let authz = start(example_policy()).await;
    let addr = authz.addr();
    let mut client = client(&authz);
    call(&mut client, check("GET", "/healthz", &[], b"")).await.expect("answer");

    // A call in flight when the server crashes fails too.
    authz.set_delay(Duration::from_millis(500));
    let mut slow = client.clone();
    let in_flight = tokio::spawn(async move { call(&mut slow, check("GET", "/healthz", &[], b"")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    authz.stop().await;

    // Which code depends on when the client sees the connection close (Unknown "transport
    // error" or Unavailable): only that the calls fail is the contract.
    in_flight.await.expect("task").expect_err("the crash fails the call in flight");
    call(&mut client, check("GET", "/healthz", &[], b"")).await.expect_err("no server");
    // A new connection is refused.
    let mut fresh = client_for(addr);
    let error = call(&mut fresh, check("GET", "/healthz", &[], b"")).await.expect_err("no server");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    let refused = tokio::net::TcpStream::connect(addr).await.expect_err("nothing listens");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn drop_crashes_the_server() {
    let authz = start(example_policy()).await;
    let addr = authz.addr();
    let mut client = client(&authz);
    call(&mut client, check("GET", "/healthz", &[], b"")).await.expect("answer");
    drop(authz);
    // The server closes soon after the drop (stop() is the way to wait for it).
    let deadline = Instant::now() + BOUND;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(refused) if refused.kind() == std::io::ErrorKind::ConnectionRefused => break,
            // Connected, or reset while the listener closes.
            other => assert!(Instant::now() < deadline, "still listening after {BOUND:?}: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    call(&mut client, check("GET", "/healthz", &[], b"")).await.expect_err("no server");
}

/// The binary's way: `Authz` served by tonic's own server.
#[tokio::test]
async fn serves_under_tonic_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Authz::new(example_policy()).into_service())
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    let mut client = client_for(addr);
    let response = call(&mut client, check("GET", "/healthz", &[], b"")).await.expect("answer");
    ok(&response);
    let _ = stop.send(());
    tokio::time::timeout(BOUND, server).await.expect("stops").expect("task").expect("served");
}

#[test]
fn header_map_is_read_when_headers_is_empty() {
    use sluice_proto::envoy::config::core::v3::{HeaderMap, HeaderValue};
    let raw = |key: &str, value: &[u8]| HeaderValue {
        key: key.to_owned(),
        raw_value: value.to_vec(),
        ..Default::default()
    };
    let http = HttpRequest {
        path: "/admin".to_owned(),
        header_map: Some(HeaderMap { headers: vec![raw("x-role", b"admin"), raw("x-user", b"bob")] }),
        ..HttpRequest::default()
    };
    assert_eq!(request_header(&http, "x-user"), Some("bob"));
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request { http: Some(http), ..Default::default() }),
            ..AttributeContext::default()
        }),
    };
    let decision = example_policy().decide(&request);
    assert!(decision.allow, "{decision:?}");
    assert_eq!(decision.rule, Some(1));
    assert!(headers(&ok(&decision.response).headers).contains(&("x-authz-user", "bob")));
}

#[test]
fn policy_round_trips_and_rejects_unknown_fields() {
    let policy = example_policy();
    let text = serde_json::to_string(&policy).expect("serializes");
    assert_eq!(Policy::from_json(&text).expect("parses"), policy);
    let error = Policy::from_json(r#"{"rules": [{"path": "/", "allow": true}]}"#).expect_err("unknown field");
    assert!(error.to_string().contains("unknown field `path`"), "{error}");
}
