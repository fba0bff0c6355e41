//! The OTLP/gRPC trace receiver `cargo xtask bench --observability` points sluice-proxy's tracing
//! at: a real gRPC server on `127.0.0.1:0` that counts the spans it is sent and drops them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

/// What the receiver was sent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Spans {
    pub spans: u64,
    /// Spans of kind server (one per sampled request) and client (one per upstream try).
    pub server: u64,
    pub client: u64,
    /// Export calls, each a batch of spans.
    pub exports: u64,
    /// The distinct `service.name`s of the resources the spans came from.
    pub services: Vec<String>,
}

#[derive(Default)]
struct Counts {
    spans: AtomicU64,
    server: AtomicU64,
    client: AtomicU64,
    exports: AtomicU64,
    services: Mutex<Vec<String>>,
}

/// A running receiver; dropping it stops the server.
pub struct Receiver {
    addr: SocketAddr,
    counts: Arc<Counts>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

// === impl Receiver ===

impl Receiver {
    /// Binds `127.0.0.1:0` and serves the OTLP trace service on a tokio runtime in a thread of its
    /// own. The port is bound before this returns, so a proxy pointed at it can export at once.
    pub fn start() -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the OTLP receiver")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let service = TraceServiceServer::new(Collector(Arc::clone(&counts)));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("otlp-receiver".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                        let _ = stopped.await;
                    })
                    .await
                    .context("the OTLP receiver failed")
            })
        })?;
        Ok(Self { addr, counts, stop: Some(stop), thread: Some(thread) })
    }

    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What was received so far.
    pub fn spans(&self) -> Spans {
        let c = &self.counts;
        Spans {
            spans: c.spans.load(Ordering::Relaxed),
            server: c.server.load(Ordering::Relaxed),
            client: c.client.load(Ordering::Relaxed),
            exports: c.exports.load(Ordering::Relaxed),
            services: c.services.lock().map(|s| s.clone()).unwrap_or_default(),
        }
    }

    /// Fails if the server has stopped on its own (it only stops when told to).
    pub fn check_running(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.thread.as_ref().is_some_and(|t| !t.is_finished()),
            "the OTLP receiver on {} has stopped",
            self.addr
        );
        Ok(())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The gRPC service: counts and forgets.
struct Collector(Arc<Counts>);

// === impl Collector ===

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let c = &self.0;
        c.exports.fetch_add(1, Ordering::Relaxed);
        for resource in &request.get_ref().resource_spans {
            let name = resource.resource.as_ref().and_then(|r| {
                r.attributes.iter().find(|kv| kv.key == "service.name").and_then(|kv| {
                    match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    }
                })
            });
            if let (Some(name), Ok(mut services)) = (name, c.services.lock())
                && !services.contains(&name)
            {
                services.push(name);
            }
            for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                c.spans.fetch_add(1, Ordering::Relaxed);
                if span.kind == SpanKind::Server as i32 {
                    c.server.fetch_add(1, Ordering::Relaxed);
                } else if span.kind == SpanKind::Client as i32 {
                    c.client.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    fn span(kind: SpanKind) -> Span {
        Span { name: "GET all".into(), kind: kind as i32, ..Default::default() }
    }

    #[test]
    fn counts_the_spans_it_is_sent_over_grpc() {
        let receiver = Receiver::start().unwrap();
        receiver.check_running().unwrap();
        let resource = Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue { value: Some(Value::StringValue("sluice-bench".into())) }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    spans: vec![span(SpanKind::Server), span(SpanKind::Client), span(SpanKind::Internal)],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let endpoint = receiver.endpoint();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
            client.export(request.clone()).await.unwrap();
            client.export(request).await.unwrap();
        });
        let want =
            Spans { spans: 6, server: 2, client: 2, exports: 2, services: vec!["sluice-bench".into()] };
        assert_eq!(receiver.spans(), want);
    }
}
