//! The canary and shadow views: what an operator reads about a route's traffic split and
//! mirroring, built once from the traffic reports (`sluice.v1.RouteReport`) and rendered by every
//! surface that shows them: the data plane's admin `/canary` and `/shadow` (its own routes), and
//! `sluice canary report` and `sluice shadow report` (the control plane's sum over a fleet, as
//! JSON, YAML or tables).
//!
//! All the arithmetic lives in the builders ([`canary_view`], [`shadow_view`], [`canary_fleet`],
//! [`shadow_fleet`]): rates, latency percentiles, significance against the noise floor, "resumes
//! in N s". Renderers only serialise a view or lay its values out.
//!
//! The canonical form, the same on every surface:
//! - A rate with nothing to divide by (no requests, no pairs compared, no baseline) is `null`,
//!   never `0.0`: a rate of zero would claim a measurement that was not made.
//! - A time is RFC 3339 (UTC, whole seconds); "never" (0 in a report) is `null`.
//! - Text that is not there (a reason) is `null`, never `""`.
//! - Latencies are in seconds (base units, like the histograms beside them), to the microsecond.
//!
//! API boundary: pure data work over the proto messages. No tokio, no sockets, no I/O.

#![forbid(unsafe_code)]

use std::fmt;

use serde::{Serialize, Serializer};
use sluice_bundle::time::rfc3339_secs;
use sluice_proto::v1 as pb;

mod canary;
mod shadow;

pub use canary::{BrakeView, CanaryView, RouteCanary, VariantView, canary_view};
pub use shadow::{FieldView, GuardrailView, RouteShadow, SampleView, ShadowView, shadow_view};

/// What a fleet-wide view covers: the fleet and, optionally, one route.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub fleet: &'a str,
    pub route: Option<&'a str>,
    /// Unix seconds, for "resumes in N s".
    pub now: i64,
}

/// A fleet's view: the connected data planes' sum by route, and every data plane's own routes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetView<R> {
    pub fleet: String,
    pub route: Option<String>,
    pub routes: Vec<R>,
    pub nodes: Vec<NodeView<R>>,
}

/// One data plane's latest report. A disconnected one's is shown but not in the fleet's sum.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView<R> {
    pub node_id: String,
    pub connected: bool,
    /// When the control plane last heard from it.
    pub last_seen: Option<Timestamp>,
    /// When it made this report, by its clock.
    pub at: Option<Timestamp>,
    pub active_version: u64,
    pub routes: Vec<R>,
}

/// The canary view of a fleet's traffic report.
pub fn canary_fleet(scope: &Scope, report: &pb::TrafficReport) -> FleetView<RouteCanary> {
    fleet(scope, report, |routes| canary_view(routes).routes)
}

/// The shadow view of a fleet's traffic report.
pub fn shadow_fleet(scope: &Scope, report: &pb::TrafficReport) -> FleetView<RouteShadow> {
    fleet(scope, report, |routes| shadow_view(routes, scope.now).routes)
}

fn fleet<R>(
    scope: &Scope,
    report: &pb::TrafficReport,
    view: impl Fn(&[pb::RouteReport]) -> Vec<R>,
) -> FleetView<R> {
    let nodes = report
        .nodes
        .iter()
        .map(|n| NodeView {
            node_id: n.node_id.clone(),
            connected: n.connected,
            last_seen: Timestamp::unix(n.last_seen),
            at: Timestamp::unix(n.at),
            active_version: n.active_version,
            routes: view(&n.routes),
        })
        .collect();
    FleetView {
        fleet: scope.fleet.to_owned(),
        route: scope.route.map(str::to_owned),
        routes: view(&report.routes),
        nodes,
    }
}

/// A moment, in Unix seconds; shown as RFC 3339 (`2026-11-22T08:37:00Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

// === impl Timestamp ===

impl Timestamp {
    /// A report's time: 0 means "never" (or "not set"), which is `None`.
    pub fn unix(secs: i64) -> Option<Self> {
        (secs != 0).then_some(Self(secs))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&rfc3339_secs(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `part` of `whole` as a fraction; `None` when there is nothing to divide by.
fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Text that may be empty in a report: `None` when it is.
fn text(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

#[cfg(test)]
mod tests;
