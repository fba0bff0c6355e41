//! Routes that split traffic: each variant's requests, errors and latency, and the canary's brake.

use serde::Serialize;
use sluice_bundle::stats::quantile;
use sluice_proto::v1 as pb;

use crate::{Timestamp, rate, text};

/// Every route that sends some traffic elsewhere than its stable pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryView {
    pub routes: Vec<RouteCanary>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteCanary {
    pub route: String,
    /// `stable`, `canary`, `cohort:<value>`, as reported.
    pub variants: Vec<VariantView>,
    /// `None` when the route has no canary (cohorts only).
    pub brake: Option<BrakeView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantView {
    pub variant: String,
    pub pool: String,
    pub requests: u64,
    /// Answers with a 5xx status, the proxy's own included.
    pub errors: u64,
    /// `errors / requests`; `None` without requests.
    pub error_rate: Option<f64>,
    /// Latency percentiles interpolated within the histogram's buckets; `None` without requests.
    pub p50_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// The histogram they come from, as reported (per bucket, not cumulative; one count more
    /// than bounds), for whoever wants to add histograms up themselves.
    pub sum_seconds: f64,
    pub bounds_seconds: Vec<f64>,
    pub bucket_counts: Vec<u64>,
}

/// The canary's safety brake: engaged, the canary gets no traffic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrakeView {
    pub pool: String,
    /// The configured canary share, in percent.
    pub weight_percent: f64,
    pub engaged: bool,
    pub reason: Option<String>,
    pub engaged_at: Option<Timestamp>,
}

/// The canary view of `routes`: those that split traffic, in their order.
pub fn canary_view(routes: &[pb::RouteReport]) -> CanaryView {
    CanaryView { routes: routes.iter().filter(|r| splits(r)).map(route).collect() }
}

/// Whether a route sends some traffic elsewhere than its stable pool.
fn splits(r: &pb::RouteReport) -> bool {
    r.brake.is_some() || r.variants.iter().any(|v| v.variant != "stable")
}

fn route(r: &pb::RouteReport) -> RouteCanary {
    RouteCanary {
        route: r.route.clone(),
        variants: r.variants.iter().map(variant).collect(),
        brake: r.brake.as_ref().map(|b| BrakeView {
            pool: b.pool.clone(),
            weight_percent: b.weight_percent,
            engaged: b.engaged,
            reason: text(&b.reason),
            engaged_at: Timestamp::unix(b.engaged_at),
        }),
    }
}

fn variant(v: &pb::VariantStats) -> VariantView {
    let q = |q: f64| quantile(q, &v.bounds_seconds, &v.bucket_counts).map(to_microsecond);
    VariantView {
        variant: v.variant.clone(),
        pool: v.pool.clone(),
        requests: v.requests,
        errors: v.errors,
        error_rate: rate(v.errors, v.requests),
        p50_seconds: q(0.5),
        p95_seconds: q(0.95),
        p99_seconds: q(0.99),
        sum_seconds: v.sum_seconds,
        bounds_seconds: v.bounds_seconds.clone(),
        bucket_counts: v.bucket_counts.clone(),
    }
}

/// Seconds rounded to the microsecond: an interpolated percentile is no more precise than that,
/// and `0.077778` reads better than `0.07777777777777778`.
fn to_microsecond(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e6
}
