//! The control plane's traces, received by an OTLP/gRPC trace receiver in the test (from the
//! opentelemetry-proto definitions): an apply continues its caller's trace, and storing the
//! version and pushing it to each data plane (until its ACK) are spans under it.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_sdk::trace::SdkTracerProvider;
use sluice_proto::v1 as pb;
use sluice_tests::*;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans =
            request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<Any> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.clone()?.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_is_traced_from_the_caller_through_storing_to_each_data_planes_ack() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let receiver = Receiver::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let exporter =
        opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(endpoint).build().unwrap();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).build();

    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start_traced(&db.url, keys.signing_key(), Some(provider.tracer("sluice"))).await;
    let up = Upstream::named("up").await;
    let dp1 = DataPlane::start(&cp.url, "edge", "node-1", &keys.trusted_file, dir.join("n1")).await;
    let dp2 = DataPlane::start(&cp.url, "edge", "node-2", &keys.trusted_file, dir.join("n2")).await;

    let (trace_id, caller) = ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174");
    let mut client = pb::config_service_client::ConfigServiceClient::connect(cp.url.clone()).await.unwrap();
    let mut req = tonic::Request::new(pb::ApplyRequest {
        fleet: "edge".into(),
        document: config_to(&up).into_bytes(),
        format: pb::DocumentFormat::Yaml as i32,
        author: "test".into(),
        message: "traced".into(),
        ..Default::default()
    });
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-{caller}-01").parse().unwrap());
    client.apply(req).await.unwrap();
    dp1.wait_for_version(1).await;
    dp2.wait_for_version(1).await;

    // Both pushes end at their ACK; export what the batch holds.
    eventually!(Duration::from_secs(10), {
        let p = provider.clone();
        tokio::task::spawn_blocking(move || p.force_flush()).await.unwrap().unwrap();
        receiver.0.lock().unwrap().iter().filter(|s| s.name == "push bundle").count() == 2
    });
    let spans = receiver.0.lock().unwrap().clone();
    assert!(spans.iter().all(|s| hex(&s.trace_id) == trace_id), "all in the caller's trace: {spans:#?}");
    let apply = spans.iter().find(|s| s.name == "sluice.v1.ConfigService/Apply").expect("the apply span");
    assert_eq!(hex(&apply.parent_span_id), caller);
    assert_eq!(apply.kind, 2, "server span");
    assert_eq!(attr(apply, "sluice.fleet"), Some(Any::StringValue("edge".into())));
    assert_eq!(attr(apply, "sluice.version"), Some(Any::IntValue(1)));
    let store = spans.iter().find(|s| s.name == "store version").expect("the store span");
    assert_eq!(store.parent_span_id, apply.span_id);
    assert_eq!(attr(store, "sluice.created"), Some(Any::BoolValue(true)));
    let mut nodes: Vec<String> = spans
        .iter()
        .filter(|s| s.name == "push bundle")
        .map(|s| {
            assert_eq!(s.parent_span_id, apply.span_id, "a push is a child of its apply");
            assert_eq!(attr(s, "sluice.outcome"), Some(Any::StringValue("ack".into())));
            match attr(s, "sluice.node") {
                Some(Any::StringValue(n)) => n,
                other => panic!("{other:?}"),
            }
        })
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["node-1", "node-2"]);
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
}
