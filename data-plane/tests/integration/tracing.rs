//! Traces: the real proxy binary exports over OTLP/gRPC (configured by `OTEL_*` variables) to an
//! OTLP trace receiver running in the test, built from the opentelemetry-proto definitions.
//! Asserted: one server span per request and a client span per upstream try, their parent/child
//! relations and attributes, the `traceparent` the upstream received, and the access log's trace
//! id.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

const WITHIN: Duration = Duration::from_secs(15);
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// An OTLP trace receiver that keeps every span it is sent, with its resource's service name.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<(String, Span)>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Any::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    async fn start() -> (Self, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Self::default();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (receiver, format!("http://{addr}"))
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.0.lock().unwrap().clone()
    }
}

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Any> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()?.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Any::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Any::IntValue(i)) => *i,
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts the proxy exporting to `endpoint`, sampling as the environment says.
fn traced_proxy(upstreams: &[&Upstream], endpoint: &str, sampler: &[(&str, &str)]) -> Proxy {
    let endpoints: Vec<String> = upstreams.iter().map(|u| format!("{{address: {}}}", u.addr)).collect();
    let config = format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    access_log: {{}}\n\
         pools:\n  - name: app\n    balancer: round_robin\n    endpoints: [{}]\n\
         routes:\n  - name: items\n    match: {{path_prefix: /items}}\n    pool: app\n    \
         retries: {{max_attempts: 2, retry_on: [503]}}\n",
        endpoints.join(", ")
    );
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_SERVICE_NAME", "edge-proxy"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    env.extend_from_slice(sampler);
    Proxy::start_env(&config, &[], &env)
}

#[tokio::test]
async fn a_request_is_one_trace_continuing_the_clients_with_a_client_span_per_try() {
    let (receiver, endpoint) = Receiver::start().await;
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.set_fault(Fault::Status(503));
    let proxy = traced_proxy(&[&bad, &good], &endpoint, &[]);
    let web = proxy.listener("web").await;

    // Round robin starts at `bad` for the first request: its 503 is retried on `good`.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let req = request("GET", &format!("http://{web}/items/42?full=1"))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .header("user-agent", "trace-test/1");
    let (status, _, _) = send(&client(), req.body(full("")).unwrap()).await;
    assert_eq!(status, 200);

    eventually!(WITHIN, receiver.spans().len() >= 3);
    let spans = receiver.spans();
    assert!(spans.iter().all(|(service, _)| service == "edge-proxy"), "{spans:?}");
    let spans: Vec<Span> = spans.into_iter().map(|(_, s)| s).collect();
    assert!(spans.iter().all(|s| hex(&s.trace_id) == trace_id), "one trace, the client's: {spans:?}");

    let server: Vec<&Span> = spans.iter().filter(|s| s.kind == SERVER).collect();
    assert_eq!(server.len(), 1, "{spans:?}");
    let server = server[0];
    assert_eq!(server.name, "GET items");
    assert_eq!(hex(&server.parent_span_id), client_span, "child of the client's span");
    assert_eq!(text(server, "http.request.method"), "GET");
    assert_eq!(text(server, "http.route"), "items");
    assert_eq!(text(server, "url.path"), "/items/42");
    assert_eq!(text(server, "url.query"), "full=1");
    assert_eq!(text(server, "user_agent.original"), "trace-test/1");
    assert_eq!(int(server, "http.response.status_code"), 200);

    let mut tries: Vec<&Span> = spans.iter().filter(|s| s.kind == CLIENT).collect();
    tries.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(tries.len(), 2, "one client span per try: {spans:?}");
    for t in &tries {
        assert_eq!(t.parent_span_id, server.span_id, "tries are children of the server span");
        assert_eq!(t.name, "GET");
    }
    assert_eq!(int(tries[0], "http.response.status_code"), 503);
    assert_eq!(int(tries[0], "server.port"), i64::from(bad.addr.port()));
    assert_eq!(int(tries[1], "http.response.status_code"), 200);
    assert_eq!(int(tries[1], "server.port"), i64::from(good.addr.port()));
    assert_eq!(int(tries[1], "http.request.resend_count"), 1);

    // Each upstream saw the traceparent of its own try's span, in the same trace.
    for (upstream, span) in [(&bad, tries[0]), (&good, tries[1])] {
        let seen = upstream.seen();
        let got = seen.last().unwrap()["headers"]["traceparent"][0].as_str().unwrap().to_owned();
        assert_eq!(got, format!("00-{trace_id}-{}-01", hex(&span.span_id)));
    }

    // The access log carries the trace id.
    eventually!(WITHIN, !proxy.stdout_lines().is_empty());
    let line: Value = serde_json::from_str(&proxy.stdout_lines()[0]).unwrap();
    assert_eq!(line["trace_id"], trace_id);
}

#[tokio::test]
async fn without_a_traceparent_a_new_trace_starts_and_reaches_the_upstream() {
    let (receiver, endpoint) = Receiver::start().await;
    let up = Upstream::start("up").await;
    let proxy = traced_proxy(&[&up], &endpoint, &[]);
    let web = proxy.listener("web").await;
    assert_eq!(get(&format!("http://{web}/items")).await.0, 200);
    assert_eq!(get(&format!("http://{web}/nowhere")).await.0, 404);

    eventually!(WITHIN, receiver.spans().len() >= 3);
    let spans: Vec<Span> = receiver.spans().into_iter().map(|(_, s)| s).collect();
    let routed = spans.iter().find(|s| s.kind == SERVER && s.name == "GET items").unwrap();
    assert!(routed.parent_span_id.is_empty(), "a root span");
    let upstream_saw = up.seen()[0]["headers"]["traceparent"][0].as_str().unwrap().to_owned();
    assert!(upstream_saw.starts_with(&format!("00-{}-", hex(&routed.trace_id))), "{upstream_saw}");
    // The access log names the trace the proxy started.
    eventually!(WITHIN, proxy.stdout_lines().len() >= 2);
    let lines: Vec<Value> = proxy.stdout_lines().iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    let line = lines.iter().find(|l| l["path"] == "/items").expect("a line for /items");
    assert_eq!(line["trace_id"].as_str(), Some(&*hex(&routed.trace_id)), "{line}");
    // No route: the span keeps the method as its name and is not an error (404 < 500).
    let unrouted = spans.iter().find(|s| s.kind == SERVER && s.name == "GET").unwrap();
    assert_eq!(int(unrouted, "http.response.status_code"), 404);
    assert_ne!(unrouted.status.as_ref().map_or(0, |s| s.code), 2, "not an error status");
}

#[tokio::test]
async fn an_unsampled_request_exports_nothing_but_still_propagates_its_trace() {
    let (receiver, endpoint) = Receiver::start().await;
    let up = Upstream::start("up").await;
    let proxy = traced_proxy(
        &[&up],
        &endpoint,
        &[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0")],
    );
    let web = proxy.listener("web").await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let req = request("GET", &format!("http://{web}/items"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-00"));
    assert_eq!(send(&client(), req.body(full("")).unwrap()).await.0, 200);
    // A sampled one alongside, so "nothing arrived" is not just "not yet exported".
    let sampled = "11111111111111111111111111111111";
    let req = request("GET", &format!("http://{web}/items"))
        .header("traceparent", format!("00-{sampled}-b7ad6b7169203331-01"));
    assert_eq!(send(&client(), req.body(full("")).unwrap()).await.0, 200);

    eventually!(WITHIN, receiver.spans().iter().any(|(_, s)| hex(&s.trace_id) == sampled));
    assert!(receiver.spans().iter().all(|(_, s)| hex(&s.trace_id) != trace_id), "unsampled spans exported");
    let seen = up.seen()[0]["headers"]["traceparent"][0].as_str().unwrap().to_owned();
    assert!(seen.starts_with(&format!("00-{trace_id}-")) && seen.ends_with("-00"), "{seen}");
    // An unsampled request's line still names its trace.
    eventually!(WITHIN, proxy.stdout_lines().len() >= 2);
    let traces: Vec<String> = proxy
        .stdout_lines()
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["trace_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(traces.contains(&trace_id.to_owned()) && traces.contains(&sampled.to_owned()), "{traces:?}");
}

#[tokio::test]
async fn with_tracing_off_the_clients_traceparent_passes_through() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&format!(
        "listeners: [{{name: web, address: '127.0.0.1:0'}}]\npools: [{{name: app, endpoints: [{{address: {}}}]}}]\n\
         routes: [{{name: r, pool: app}}]\n",
        up.addr
    ));
    let web = proxy.listener("web").await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = request("GET", &format!("http://{web}/")).header("traceparent", parent);
    assert_eq!(send(&client(), req.body(full("")).unwrap()).await.0, 200);
    assert_eq!(up.seen()[0]["headers"]["traceparent"][0], parent);
}

#[tokio::test]
async fn a_shadow_copy_is_its_own_span_in_the_trace_linked_to_the_primary() {
    let (receiver, endpoint) = Receiver::start().await;
    let (primary, candidate) = (Upstream::start("primary").await, Upstream::start("candidate").await);
    let config = format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    access_log: {{}}\n\
         pools:\n  - name: app\n    endpoints: [{{address: {}}}]\n  - name: next\n    endpoints: [{{address: {}}}]\n\
         routes:\n  - name: items\n    pool: app\n    mirror: {{pool: next}}\n",
        primary.addr, candidate.addr
    );
    let proxy = Proxy::start_env(
        &config,
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let web = proxy.listener("web").await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let req = request("GET", &format!("http://{web}/items/1"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"));
    assert_eq!(send(&client(), req.body(full("")).unwrap()).await.0, 200);

    eventually!(WITHIN, receiver.spans().len() >= 3);
    let spans: Vec<Span> = receiver.spans().into_iter().map(|(_, s)| s).collect();
    assert!(spans.iter().all(|s| hex(&s.trace_id) == trace_id), "one trace: {spans:?}");
    let server = spans.iter().find(|s| s.kind == SERVER).unwrap();
    let shadow = spans.iter().find(|s| s.name == "shadow GET items").unwrap();
    let primary_try = spans.iter().find(|s| s.kind == CLIENT && s.name == "GET").unwrap();
    assert_eq!(shadow.kind, CLIENT);
    assert_ne!(shadow.span_id, primary_try.span_id, "a separate span");
    assert_eq!(shadow.parent_span_id, server.span_id);
    assert_eq!(shadow.links.len(), 1, "{shadow:?}");
    assert_eq!(shadow.links[0].span_id, server.span_id, "linked to the primary's server span");
    assert_eq!(text(shadow, "sluice.pool"), "next");
    assert_eq!(int(shadow, "http.response.status_code"), 200);

    // The candidate saw the shadow span's traceparent and the shadow mark; the access log says
    // the request was mirrored.
    let seen = candidate.seen();
    assert_eq!(seen[0]["headers"]["traceparent"][0], format!("00-{trace_id}-{}-01", hex(&shadow.span_id)));
    assert_eq!(seen[0]["headers"]["x-sluice-shadow"][0], "1");
    eventually!(WITHIN, !proxy.stdout_lines().is_empty());
    let line: Value = serde_json::from_str(&proxy.stdout_lines()[0]).unwrap();
    assert_eq!((line["mirrored"].as_bool(), line["trace_id"].as_str()), (Some(true), Some(trace_id)));
}
