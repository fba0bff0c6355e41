//! A request's spans made by hand with the OpenTelemetry SDK (what the data plane's request path
//! does, `sluice_observe::telemetry`) against the same spans made as `tracing` spans exported by
//! the `tracing-opentelemetry` layer (what the control plane does): a server span with the
//! request's attributes, renamed after routing, one client span under it, both ended with the
//! status. The processor drops what ends, so only the making of spans is measured; sampled (every
//! request traced) and not sampled (the usual case at a 1 % ratio).
//!
//!   cargo bench -p sluice-observe --bench spans

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry::Context;
use opentelemetry::trace::{Span as _, TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanProcessor};
use sluice_observe::telemetry;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Debug)]
struct Discard;

impl SpanProcessor for Discard {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
    fn on_end(&self, _: SpanData) {}
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn provider(sampled: bool) -> SdkTracerProvider {
    let sampler = if sampled { Sampler::AlwaysOn } else { Sampler::AlwaysOff };
    SdkTracerProvider::builder().with_span_processor(Discard).with_sampler(sampler).build()
}

fn request() -> http::Request<()> {
    http::Request::get("http://example.com:8080/small?x=1")
        .header("user-agent", "wrk")
        .header("traceparent", "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01")
        .body(())
        .unwrap()
}

fn spans(c: &mut Criterion) {
    let req = request();
    let client: IpAddr = "127.0.0.1".parse().unwrap();
    for sampled in [true, false] {
        let label = if sampled { "sampled" } else { "not sampled" };
        let tracer = provider(sampled).tracer("sluice");
        c.bench_function(&format!("request spans by hand, {label}"), |b| {
            b.iter(|| {
                let mut server = telemetry::server_span(&tracer, &req, client);
                telemetry::name_server_span(&mut server, "GET", "all");
                let upstream = telemetry::client_span(&tracer, server.span_context(), req.method());
                telemetry::ClientSpan::new(upstream).finish(Some(200), None);
                telemetry::end_with_status(server, Some(200), None, true);
            })
        });

        let provider = provider(sampled);
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("sluice"));
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
        tracing::dispatcher::with_default(&dispatch, || {
            c.bench_function(&format!("request spans through tracing-opentelemetry, {label}"), |b| {
                b.iter(|| {
                    let uri = req.uri();
                    let server = tracing::info_span!(
                        "request",
                        otel.name = "GET",
                        otel.kind = "server",
                        http.request.method = "GET",
                        url.path = uri.path(),
                        url.scheme = "http",
                        url.query = uri.query(),
                        client.address = %client,
                        network.protocol.version = "1.1",
                        server.address = uri.host(),
                        server.port = uri.port_u16().map(i64::from),
                        user_agent.original = req.headers().get("user-agent").and_then(|v| v.to_str().ok()),
                        http.route = tracing::field::Empty,
                        http.response.status_code = tracing::field::Empty,
                    );
                    let parent = telemetry::extract(req.headers());
                    if parent.span().span_context().is_valid() {
                        let _ = server.set_parent(parent);
                    }
                    server.record("otel.name", "GET all");
                    server.record("http.route", "all");
                    let upstream = tracing::info_span!(
                        parent: &server,
                        "upstream",
                        otel.name = "GET",
                        otel.kind = "client",
                        http.response.status_code = tracing::field::Empty,
                    );
                    upstream.record("http.response.status_code", 200_i64);
                    drop(upstream);
                    server.record("http.response.status_code", 200_i64);
                })
            });
        });
    }
}

criterion_group!(benches, spans);
criterion_main!(benches);
