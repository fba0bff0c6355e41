//! Mirrored routes: copies sent, completed, failed and dropped; each field's diff and noise rates
//! and whether it stands above the noise floor; masked samples; the guardrail.

use std::collections::BTreeMap;

use serde::Serialize;
use sluice_bundle::stats;
use sluice_proto::v1 as pb;

use crate::{Timestamp, rate, text};

/// Every route that mirrors traffic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowView {
    pub routes: Vec<RouteShadow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteShadow {
    pub route: String,
    /// The candidate pool copies go to.
    pub pool: String,
    pub sent: u64,
    pub completed: u64,
    pub failed: u64,
    /// Requests picked for mirroring but not copied, by reason, sorted by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Primary/candidate pairs compared, and those with at least one counted difference.
    pub compared: u64,
    pub differed: u64,
    /// `differed / compared`; `None` when nothing was compared.
    pub diff_rate: Option<f64>,
    /// Primary/baseline pairs compared for the noise floor (0 without a baseline).
    pub baseline_compared: u64,
    /// The noise thresholds (fractions) significance is judged by.
    pub noise_relative: f64,
    pub noise_absolute: f64,
    pub guardrail: Option<GuardrailView>,
    /// Most differing first, as reported.
    pub fields: Vec<FieldView>,
    /// Newest first.
    pub samples: Vec<SampleView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldView {
    /// A JSON pointer, `status`, `header:<name>` or `body`.
    pub field: String,
    pub differed: u64,
    pub noise: u64,
    /// `differed / compared`; `None` when nothing was compared.
    pub diff_rate: Option<f64>,
    /// `noise / baseline_compared`; `None` without a baseline.
    pub noise_rate: Option<f64>,
    /// Whether the diff rate stands above the noise floor (`sluice_bundle::stats::significant`).
    pub significant: bool,
}

/// A differing pair, masked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleView {
    pub at: Option<Timestamp>,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub fields: Vec<String>,
    pub primary: String,
    pub candidate: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardrailView {
    /// `active`, `tripped` or `disabled` (by an operator).
    pub state: String,
    pub reason: Option<String>,
    /// When the state began.
    pub since: Option<Timestamp>,
    /// When mirroring resumes by itself (reports set it only while tripped).
    pub resumes_at: Option<Timestamp>,
    /// Seconds from the view's `now` to `resumes_at` (0 once past it); only while tripped.
    pub resumes_in_seconds: Option<i64>,
    pub trips: u64,
}

/// The shadow view of `routes`: those that mirror, in their order. `now` (Unix seconds) is for
/// "resumes in N s".
pub fn shadow_view(routes: &[pb::RouteReport], now: i64) -> ShadowView {
    let routes = routes.iter().filter_map(|r| Some(route(&r.route, r.mirror.as_ref()?, now))).collect();
    ShadowView { routes }
}

fn route(route: &str, m: &pb::MirrorReport, now: i64) -> RouteShadow {
    RouteShadow {
        route: route.to_owned(),
        pool: m.pool.clone(),
        sent: m.sent,
        completed: m.completed,
        failed: m.failed,
        dropped: m.dropped.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        compared: m.compared,
        differed: m.differed,
        diff_rate: rate(m.differed, m.compared),
        baseline_compared: m.baseline_compared,
        noise_relative: m.noise_relative,
        noise_absolute: m.noise_absolute,
        guardrail: m.guardrail.as_ref().map(|g| guardrail(g, now)),
        fields: m.fields.iter().map(|f| field(f, m)).collect(),
        samples: m.samples.iter().map(sample).collect(),
    }
}

fn field(f: &pb::FieldDiff, m: &pb::MirrorReport) -> FieldView {
    FieldView {
        field: f.field.clone(),
        differed: f.differed,
        noise: f.noise,
        diff_rate: rate(f.differed, m.compared),
        noise_rate: rate(f.noise, m.baseline_compared),
        significant: stats::significant(
            f.differed,
            f.noise,
            m.compared,
            m.baseline_compared,
            m.noise_relative,
            m.noise_absolute,
        ),
    }
}

fn sample(s: &pb::DiffSample) -> SampleView {
    SampleView {
        at: Timestamp::unix(s.at),
        request_id: s.request_id.clone(),
        method: s.method.clone(),
        path: s.path.clone(),
        fields: s.fields.clone(),
        primary: s.primary.clone(),
        candidate: s.candidate.clone(),
    }
}

fn guardrail(g: &pb::Guardrail, now: i64) -> GuardrailView {
    let resumes_at = Timestamp::unix(g.resumes_at);
    GuardrailView {
        state: g.state.clone(),
        reason: text(&g.reason),
        since: Timestamp::unix(g.since),
        resumes_at,
        resumes_in_seconds: resumes_at.filter(|_| g.state == "tripped").map(|t| (t.0 - now).max(0)),
        trips: g.trips,
    }
}
