//! What both planes record telemetry with, so the control plane needs none of the proxy for it:
//! lock-free counters and histograms with the Prometheus text encoder ([`metrics`]), and
//! OpenTelemetry setup from `OTEL_*` with the spans the request path makes ([`telemetry`]), and
//! log lines as text or JSON ([`logging`]).

#![forbid(unsafe_code)]

pub mod logging;
pub mod metrics;
pub mod telemetry;
