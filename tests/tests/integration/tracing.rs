//! The control plane's traces (tracing spans exported by tracing-opentelemetry, as the binary
//! sets it up), received by an OTLP/gRPC trace receiver in the test (from the opentelemetry-proto
//! definitions): an apply continues its caller's trace; validating, storing, publishing and
//! pushing the version to each data plane (until its ACK) are spans under it; a rollout's later
//! steps and pushes are traces of their own, linked to the apply.

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
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;

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
    // What sluice-control-plane's main installs when OTEL_EXPORTER_OTLP_ENDPOINT is set.
    let spans = tracing_opentelemetry::layer().with_tracer(provider.tracer("sluice")).with_filter(
        tracing_subscriber::filter::Targets::new().with_target("sluice_control_plane", tracing::Level::INFO),
    );
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans)).unwrap();

    let db = Db::create().await;
    let dir = temp_dir();
    let keys = Keys::generate(&dir);
    let cp = ControlPlane::start(&db.url, keys.signing_key()).await;
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
    for name in ["validate", "store version", "publish"] {
        let span =
            spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} span: {spans:#?}"));
        assert_eq!(span.parent_span_id, apply.span_id, "{name} is a child of the apply");
    }
    let store = spans.iter().find(|s| s.name == "store version").unwrap();
    assert_eq!(attr(store, "sluice.created"), Some(Any::BoolValue(true)));
    assert_eq!(attr(store, "sluice.version"), Some(Any::IntValue(1)));
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

    // Version 2 rolls out one node, then the rest: each step's pushes are made by the rollout
    // leader after the apply ended, in traces of their own linked to the apply's span.
    receiver.0.lock().unwrap().clear();
    let next = Upstream::named("next").await;
    let mut req = tonic::Request::new(pb::ApplyRequest {
        fleet: "edge".into(),
        document: config_to(&next).into_bytes(),
        format: pb::DocumentFormat::Yaml as i32,
        rollout: Some(pb::RolloutChoice {
            choice: Some(pb::rollout_choice::Choice::Document(
                b"steps: [{nodes: 1}, {percent: 100}]".to_vec(),
            )),
            format: pb::DocumentFormat::Yaml as i32,
        }),
        ..Default::default()
    });
    req.metadata_mut().insert("traceparent", format!("00-{trace_id}-{caller}-01").parse().unwrap());
    client.apply(req).await.unwrap();
    dp1.wait_for_version(2).await;
    dp2.wait_for_version(2).await;
    eventually!(Duration::from_secs(10), {
        let p = provider.clone();
        tokio::task::spawn_blocking(move || p.force_flush()).await.unwrap().unwrap();
        let spans = receiver.0.lock().unwrap();
        spans.iter().filter(|s| s.name == "push bundle").count() == 2
            && spans.iter().any(|s| s.name == "rollout succeeded")
    });
    let spans = receiver.0.lock().unwrap().clone();
    let apply = spans.iter().find(|s| s.name == "sluice.v1.ConfigService/Apply").expect("the second apply");
    assert_eq!(hex(&apply.trace_id), trace_id);
    let linked =
        |s: &Span| s.links.iter().any(|l| l.span_id == apply.span_id && l.trace_id == apply.trace_id);
    for push in spans.iter().filter(|s| s.name == "push bundle") {
        assert!(push.parent_span_id.is_empty(), "a rollout's push starts a trace: {push:#?}");
        assert_ne!(push.trace_id, apply.trace_id);
        assert!(linked(push), "and links to the apply: {push:#?}");
        assert_eq!(attr(push, "sluice.outcome"), Some(Any::StringValue("ack".into())));
    }
    let steps: Vec<&Span> = spans.iter().filter(|s| s.name.starts_with("rollout ")).collect();
    assert!(steps.iter().any(|s| s.name == "rollout progressing"), "{steps:#?}");
    for step in &steps {
        assert!(linked(step), "a rollout step links to the apply: {step:#?}");
        assert_eq!(attr(step, "sluice.fleet"), Some(Any::StringValue("edge".into())));
    }
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
}
