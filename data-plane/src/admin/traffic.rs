//! `/canary`, `/shadow` and the mirroring switch: the same figures the periodic report sends
//! the control plane, as JSON, with rates and percentiles worked out.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use sluice_bundle::time::rfc3339_secs;
use sluice_proto::v1 as pb;

use super::json_response;
use crate::metrics::Encoder;
use crate::report::route_reports;
use crate::shadow::DROP_REASONS;
use crate::snapshot::Snapshot;
use crate::state::Shared;

/// Traffic by variant and each canary's brake.
pub(super) fn canary(shared: &Shared) -> Value {
    let Some(snap) = shared.serving.snapshot.load_full() else {
        return json!({"routes": []});
    };
    let routes: Vec<Value> = route_reports(&snap)
        .into_iter()
        .filter(|r| !r.variants.is_empty())
        .map(|r| {
            let variants: Vec<Value> = r
                .variants
                .iter()
                .map(|v| {
                    json!({
                        "variant": v.variant,
                        "pool": v.pool,
                        "requests": v.requests,
                        "errors": v.errors,
                        "error_rate": rate(v.errors, v.requests),
                        "p50_ms": quantile(v, 0.5).map(millis),
                        "p95_ms": quantile(v, 0.95).map(millis),
                        "p99_ms": quantile(v, 0.99).map(millis),
                    })
                })
                .collect();
            let brake = r.brake.map(|b| {
                json!({
                    "pool": b.pool,
                    "weight_percent": b.weight_percent,
                    "engaged": b.engaged,
                    "reason": (!b.reason.is_empty()).then_some(b.reason),
                    "engaged_at": (b.engaged_at > 0).then(|| rfc3339_secs(b.engaged_at)),
                })
            });
            json!({"route": r.route, "variants": variants, "canary": brake})
        })
        .collect();
    json!({"routes": routes})
}

/// Each mirrored route: copies sent, dropped and failed, diff rates per field, masked samples and
/// the guardrail.
pub(super) fn shadow(shared: &Shared) -> Value {
    let Some(snap) = shared.serving.snapshot.load_full() else {
        return json!({"routes": []});
    };
    let routes: Vec<Value> = route_reports(&snap)
        .into_iter()
        .filter_map(|r| {
            let m = r.mirror?;
            let fields: Vec<Value> = m
                .fields
                .iter()
                .map(|f| {
                    let diff_rate = rate(f.differed, m.compared);
                    let noise_rate = rate(f.noise, m.baseline_compared);
                    json!({
                        "field": f.field,
                        "differed": f.differed,
                        "diff_rate": diff_rate,
                        "noise": f.noise,
                        "noise_rate": (m.baseline_compared > 0).then_some(noise_rate),
                        "significant": significant(f, &m),
                    })
                })
                .collect();
            let samples: Vec<Value> = m
                .samples
                .iter()
                .map(|s| {
                    json!({
                        "at": rfc3339_secs(s.at),
                        "request_id": s.request_id,
                        "method": s.method,
                        "path": s.path,
                        "fields": s.fields,
                        "primary": s.primary,
                        "candidate": s.candidate,
                    })
                })
                .collect();
            let g = m.guardrail.unwrap_or_default();
            Some(json!({
                "route": r.route,
                "pool": m.pool,
                "sent": m.sent,
                "completed": m.completed,
                "failed": m.failed,
                "dropped": m.dropped,
                "compared": m.compared,
                "differed": m.differed,
                "diff_rate": rate(m.differed, m.compared),
                "baseline_compared": m.baseline_compared,
                "fields": fields,
                "samples": samples,
                "guardrail": {
                    "state": g.state,
                    "reason": (!g.reason.is_empty()).then_some(g.reason),
                    "since": rfc3339_secs(g.since),
                    "resumes_at": (g.resumes_at > 0).then(|| rfc3339_secs(g.resumes_at)),
                    "trips": g.trips,
                },
            }))
        })
        .collect();
    json!({"routes": routes})
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
        &json!({"route": route, "guardrail": {"state": g.state, "reason": g.reason}}),
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

fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// Whether a field's diff rate stands above its noise floor (see `shadow::diff`).
fn significant(f: &pb::FieldDiff, m: &pb::MirrorReport) -> bool {
    sluice_bundle::stats::significant(
        f.differed,
        f.noise,
        m.compared,
        m.baseline_compared,
        m.noise_relative,
        m.noise_absolute,
    )
}

/// Seconds as milliseconds, to the microsecond.
fn millis(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e3
}

/// The `q` quantile of a variant's latency, in seconds.
fn quantile(v: &pb::VariantStats, q: f64) -> Option<f64> {
    sluice_bundle::stats::quantile(q, &v.bounds_seconds, &v.bucket_counts)
}
