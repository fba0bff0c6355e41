//! Tracing with OpenTelemetry: one server span per request and a client span per upstream try,
//! exported over OTLP/gRPC. Configured by the standard `OTEL_*` variables and off unless an OTLP
//! endpoint is set. W3C `traceparent` is read from clients and written to upstreams.
//!
//! The request path uses the OpenTelemetry API directly rather than `tracing` spans: a span is
//! built without attributes, and attributes are added only when the sampler kept it, so an
//! unsampled request costs little more than reading its `traceparent`.

use std::net::IpAddr;
use std::time::Duration;

use http::header::{HOST, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Version};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The exporter and the tracer the request path uses.
#[derive(Debug, Clone)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    pub tracer: SdkTracer,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP trace exporter: {0}")]
pub struct TelemetryError(String);

impl Telemetry {
    /// Tracing as the `OTEL_*` environment asks: `None` when no OTLP endpoint is set
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`), when
    /// `OTEL_SDK_DISABLED=true` or when `OTEL_TRACES_EXPORTER=none`. The SDK itself reads the
    /// endpoint, headers, timeout, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
    /// `OTEL_TRACES_SAMPLER(_ARG)` and `OTEL_BSP_*`. Must run inside a tokio runtime, which must
    /// outlive the exporter.
    pub fn from_env(default_service_name: &'static str) -> Result<Option<Self>, TelemetryError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        if var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none() && var("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let named = var("OTEL_SERVICE_NAME").is_some()
            || var("OTEL_RESOURCE_ATTRIBUTES")
                .is_some_and(|v| v.split(',').any(|kv| kv.trim_start().starts_with("service.name=")));
        let mut resource = Resource::builder();
        if !named {
            resource = resource.with_service_name(default_service_name);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let scope = opentelemetry::InstrumentationScope::builder("sluice")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = provider.tracer_with_scope(scope);
        Ok(Some(Self { provider, tracer }))
    }

    /// Exports what is buffered and stops. Blocking work, done off the runtime's thread (the
    /// export itself needs the runtime running).
    pub async fn shutdown(self) {
        let provider = self.provider;
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(Duration::from_secs(5)));
        if let Ok(Err(e)) = done.await {
            tracing::warn!(error = %e, "trace exporter did not shut down cleanly");
        }
    }
}

/// Reads `traceparent` (and `tracestate`) from request headers.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// The trace context a caller sent in `traceparent` (HTTP headers or gRPC metadata); an empty
/// context when there is none, so spans made under it start a new trace.
pub fn extract(headers: &HeaderMap) -> Context {
    // Most requests carry none: one lookup by the constant name, rather than the propagator's
    // lookups by string (each parsing the name) and its clone of the current context.
    if !headers.contains_key(TRACEPARENT) {
        return Context::new();
    }
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// The server span of a request, a child of the client's `traceparent` if it sent one, with
/// what is known before routing. Named after the method until [`name_server_span`].
pub fn server_span<B>(tracer: &SdkTracer, req: &Request<B>, client: IpAddr) -> Span {
    let parent = extract(req.headers());
    let mut span = tracer
        .span_builder(method_name(req.method()))
        .with_kind(SpanKind::Server)
        .start_with_context(tracer, &parent);
    if !span.is_recording() {
        return span;
    }
    span.set_attributes([
        KeyValue::new("http.request.method", method_name(req.method())),
        KeyValue::new("url.path", req.uri().path().to_owned()),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new("client.address", client.to_string()),
        KeyValue::new("network.protocol.version", version_name(req.version())),
    ]);
    if let Some(q) = req.uri().query() {
        span.set_attribute(KeyValue::new("url.query", q.to_owned()));
    }
    let host = req.uri().authority().map(|a| a.as_str()).or_else(|| header(req.headers(), &HOST));
    if let Some(h) = host {
        let (name, port) = h.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).unwrap_or((h, ""));
        span.set_attribute(KeyValue::new("server.address", name.to_owned()));
        if let Ok(p) = port.parse::<u16>() {
            span.set_attribute(KeyValue::new("server.port", i64::from(p)));
        }
    }
    if let Some(ua) = header(req.headers(), &USER_AGENT) {
        span.set_attribute(KeyValue::new("user_agent.original", ua.to_owned()));
    }
    span
}

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Names the server span `{method} {route}` once routing is done (semantic conventions use the
/// route, never the raw path, so names stay few).
pub fn name_server_span(span: &mut Span, method: &str, route: &str) {
    if span.is_recording() {
        span.update_name(format!("{method} {route}"));
        span.set_attribute(KeyValue::new("http.route", route.to_owned()));
    }
}

fn version_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A try's client span. [`ClientSpan::finish`] ends it with the try's outcome; a try dropped
/// before it finished (a per-try timeout, the losing side of a hedge, the client gone) ends it
/// as cancelled.
pub struct ClientSpan(Option<Span>);

impl ClientSpan {
    pub fn new(span: Span) -> Self {
        Self(Some(span))
    }

    pub fn finish(mut self, status: Option<u16>, error: Option<&'static str>) {
        if let Some(span) = self.0.take() {
            end_with_status(span, status, error, false);
        }
    }
}

impl Drop for ClientSpan {
    fn drop(&mut self) {
        if let Some(span) = self.0.take() {
            end_with_status(span, None, Some("cancelled"), false);
        }
    }
}

/// The method as semantic conventions want it: known methods as they are, others `_OTHER`.
#[inline]
pub fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "_OTHER",
    }
}

/// A client span for one upstream try, child of `parent` (the server span).
pub fn client_span(tracer: &SdkTracer, parent: &SpanContext, method: &Method) -> Span {
    let cx = Context::new().with_remote_span_context(parent.clone());
    tracer.span_builder(method_name(method)).with_kind(SpanKind::Client).start_with_context(tracer, &cx)
}

/// The span of a shadow request: in the primary's trace (a child of its server span `primary`)
/// and linked to it, named apart so a trace view tells the copy from the real try.
pub fn shadow_span(tracer: &SdkTracer, primary: &SpanContext, method: &Method, route: &str) -> Span {
    let cx = Context::new().with_remote_span_context(primary.clone());
    let link =
        opentelemetry::trace::Link::new(primary.clone(), vec![KeyValue::new("sluice.link", "primary")], 0);
    tracer
        .span_builder(format!("shadow {} {route}", method_name(method)))
        .with_kind(SpanKind::Client)
        .with_links(vec![link])
        .start_with_context(tracer, &cx)
}

/// Writes `traceparent` for `span` into upstream request headers, replacing the client's.
pub fn inject(span: &SpanContext, headers: &mut HeaderMap) {
    if !span.is_valid() {
        return;
    }
    // `00-<32 hex>-<16 hex>-<2 hex>`, written by hand: this runs for every request while
    // tracing is on, sampled or not.
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    hex_into(&mut buf[3..35], &span.trace_id().to_bytes());
    buf[35] = b'-';
    hex_into(&mut buf[36..52], &span.span_id().to_bytes());
    buf[52] = b'-';
    hex_into(&mut buf[53..55], &[span.trace_flags().to_u8()]);
    if let Ok(v) = HeaderValue::from_bytes(&buf) {
        headers.insert(TRACEPARENT, v);
    }
    // tracestate is vendor data for the trace as a whole: passed through as the client sent it.
}

/// Lowercase hex of `bytes` into `out` (twice as long), a byte's two digits at a time.
pub fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0; 2]; 256];
        let mut i = 0;
        while i < 256 {
            pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
            i += 1;
        }
        pairs
    };
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(b)]);
    }
}

/// Ends a span with the response status: server spans are errors from 500 up, client spans
/// from 400 up (OpenTelemetry's HTTP conventions).
pub fn end_with_status(mut span: Span, status: Option<u16>, error: Option<&'static str>, server: bool) {
    if span.is_recording() {
        if let Some(s) = status {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(s)));
        }
        let failed = status.is_some_and(|s| s >= if server { 500 } else { 400 });
        if let Some(e) = error.filter(|_| failed || status.is_none()) {
            span.set_attribute(KeyValue::new("error.type", e));
            span.set_status(Status::error(e));
        } else if failed {
            let code = status.map(|s| s.to_string()).unwrap_or_default();
            span.set_attribute(KeyValue::new("error.type", code.clone()));
            span.set_status(Status::error(code));
        }
    }
    span.end();
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    #[test]
    fn injects_a_w3c_traceparent() {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("00-client-sent-this"));
        inject(&span, &mut headers);
        assert_eq!(headers[TRACEPARENT], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let unsampled = SpanContext::new(
            span.trace_id(),
            span.span_id(),
            TraceFlags::default(),
            false,
            TraceState::default(),
        );
        inject(&unsampled, &mut headers);
        assert_eq!(headers[TRACEPARENT], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    }
}
