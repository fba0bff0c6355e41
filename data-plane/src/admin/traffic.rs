//! `/canary`, `/shadow` and the mirroring switch. The two views are the shared ones
//! (`sluice_report`), built from the same route reports the data plane sends the control plane,
//! so they read exactly as `sluice canary report` and `sluice shadow report` do.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use sluice_report::{canary_view, shadow_view};

use super::json_response;
use crate::metrics::Encoder;
use crate::report::route_reports;
use crate::shadow::DROP_REASONS;
use crate::snapshot::Snapshot;
use crate::state::Shared;

/// Traffic by variant and each canary's brake.
pub(super) fn canary(shared: &Shared) -> Value {
    let routes = shared.serving.snapshot.load_full().map(|s| route_reports(&s)).unwrap_or_default();
    to_json(canary_view(&routes))
}

/// Each mirrored route: copies sent, dropped and failed, diff rates per field, masked samples and
/// the guardrail.
pub(super) fn shadow(shared: &Shared) -> Value {
    let routes = shared.serving.snapshot.load_full().map(|s| route_reports(&s)).unwrap_or_default();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    to_json(shadow_view(&routes, now))
}

/// A view as JSON. Views have only string keys, so this cannot fail.
fn to_json(view: impl serde::Serialize) -> Value {
    serde_json::to_value(view).unwrap_or_default()
}

/// `POST /shadow/enable?route=R` or `/shadow/disable?route=R`: an operator's switch, kept until
/// flipped back (a config change does not reset it).
pub(super) fn set_mirroring(shared: &Shared, query: Option<&str>, enabled: bool) -> Response<Full<Bytes>> {
    let route = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("route="))
        .filter(|r| !r.is_empty());
    let Some(route) = route else {
        return json_response(StatusCode::BAD_REQUEST, &json!({"error": "name the route: ?route=NAME"}));
    };
    let snap = shared.serving.snapshot.load_full();
    let Some(entry) = snap.as_deref().and_then(|s| s.routes.iter().find(|r| &*r.name == route)) else {
        return json_response(StatusCode::NOT_FOUND, &json!({"error": format!("no route `{route}`")}));
    };
    let Some(m) = &entry.mirror else {
        return json_response(
            StatusCode::CONFLICT,
            &json!({"error": format!("route `{route}` does not mirror")}),
        );
    };
    m.state.set_enabled(enabled);
    tracing::info!(route, enabled, "mirroring switched by an operator");
    let g = m.state.guard_view();
    json_response(
        StatusCode::OK,
        // As in `/shadow`: a reason that is not there is null.
        &json!({"route": route, "guardrail": {"state": g.state, "reason": (!g.reason.is_empty()).then_some(g.reason)}}),
    )
}

/// The traffic-split and mirror families of `/metrics`.
pub(super) fn metrics(e: &mut Encoder, snap: Option<&Snapshot>) {
    let routes = snap.map_or(&[][..], |s| &s.routes[..]);
    let pool_name = |i: usize| snap.map_or("", |s| &*s.pools[i].name);
    let split = || routes.iter().filter_map(|r| Some((r, r.split.as_deref()?)));
    e.family(
        "sluice_route_variant_requests_total",
        "counter",
        "Responses by route variant (stable, canary, cohort:<value>) and status class.",
    );
    for (r, s) in split() {
        for v in s.in_use() {
            e.status_counts(
                &[("route", &r.name), ("variant", &v.name), ("pool", pool_name(v.pool))],
                &v.stats.requests,
            );
        }
    }
    e.family(
        "sluice_route_variant_request_duration_seconds",
        "histogram",
        "From a request's arrival to the end of its response, by route variant.",
    );
    for (r, s) in split() {
        for v in s.in_use() {
            e.histogram(
                &[("route", &r.name), ("variant", &v.name), ("pool", pool_name(v.pool))],
                &v.stats.duration,
            );
        }
    }
    e.family(
        "sluice_canary_brake_engaged",
        "gauge",
        "1 while the canary's safety brake keeps all traffic off the canary.",
    );
    for (r, s) in split() {
        if let Some(b) = s.brake() {
            e.sample(&[("route", &r.name)], f64::from(u8::from(b.engaged())));
        }
    }

    let mirrors = || routes.iter().filter_map(|r| Some((r, r.mirror.as_deref()?)));
    e.family(
        "sluice_mirror_requests_total",
        "counter",
        "Shadow copies by result: ok (answered below 500), server_error (answered 5xx), failed (no answer: connect failure, reset, timeout).",
    );
    for (r, m) in mirrors() {
        let st = &m.state;
        let (completed, failed, server) = (
            st.completed.load(Ordering::Relaxed),
            st.failed.load(Ordering::Relaxed),
            st.server_errors.load(Ordering::Relaxed),
        );
        for (result, n) in [
            ("ok", completed - server.min(completed)),
            ("server_error", server),
            ("failed", failed - server.min(failed)),
        ] {
            e.sample(&[("route", &r.name), ("pool", pool_name(m.pool)), ("result", result)], n as f64);
        }
    }
    e.family(
        "sluice_mirror_dropped_total",
        "counter",
        "Requests picked for mirroring but not copied, by reason.",
    );
    for (r, m) in mirrors() {
        for (reason, n) in DROP_REASONS.iter().zip(&m.state.dropped) {
            e.sample(&[("route", &r.name), ("reason", reason)], n.load(Ordering::Relaxed) as f64);
        }
    }
    e.family("sluice_mirror_in_flight", "gauge", "Shadow copies in progress.");
    for (r, m) in mirrors() {
        e.sample(&[("route", &r.name)], m.state.in_flight() as f64);
    }
    let diffs: Vec<_> =
        mirrors().filter(|(_, m)| m.diff.is_some()).map(|(r, m)| (r, m.state.diff.view(0))).collect();
    e.family("sluice_mirror_compared_total", "counter", "Primary/shadow answer pairs compared.");
    for (r, v) in &diffs {
        e.sample(&[("route", &r.name)], v.compared as f64);
    }
    e.family("sluice_mirror_differed_total", "counter", "Compared pairs with at least one differing field.");
    for (r, v) in &diffs {
        e.sample(&[("route", &r.name)], v.differed as f64);
    }
    e.family(
        "sluice_mirror_diffs_total",
        "counter",
        "Compared pairs in which a field differed, by field (JSON pointer, `status`, `header:<name>`, `body`; at most 256 per route, then `other`).",
    );
    for (r, v) in &diffs {
        for f in &v.fields {
            e.sample(&[("route", &r.name), ("field", &f.field)], f.differed as f64);
        }
    }
    e.family(
        "sluice_mirror_guardrail_open",
        "gauge",
        "1 while mirroring is stopped: the guardrail tripped, or an operator disabled it.",
    );
    let guards: Vec<_> = mirrors().map(|(r, m)| (r, m.state.guard_view())).collect();
    for (r, g) in &guards {
        e.sample(&[("route", &r.name)], f64::from(u8::from(g.state != "active")));
    }
    e.family("sluice_mirror_guardrail_trips_total", "counter", "Times the guardrail stopped mirroring.");
    for (r, g) in &guards {
        e.sample(&[("route", &r.name)], g.trips as f64);
    }
}
