//! `sluice shadow report` and `sluice canary report`: the data planes' traffic reports as the
//! control plane adds them up, with what an operator decides from (significant differences,
//! error rates, latency percentiles) computed here.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{Value, json};
use sluice_bundle::stats;
pub(crate) use sluice_bundle::stats::quantile;
use sluice_bundle::time::rfc3339_secs;
use sluice_proto::v1 as pb;

use crate::output::{OutputFormat, emit, table};

/// What is asked for: the fleet and, optionally, one route.
pub struct Scope<'a> {
    pub fleet: &'a str,
    pub route: Option<&'a str>,
    /// Unix seconds, for "resumes in Ns".
    pub now: i64,
}

/// Mirrored routes: counters, the guardrail, each field's diff and noise rates, recent samples.
pub fn shadow(
    out: &mut dyn Write,
    err: &mut dyn Write,
    fmt: OutputFormat,
    scope: &Scope,
    r: &pb::TrafficReport,
) {
    let mirrored = |routes: &[pb::RouteReport]| -> Vec<Value> {
        routes.iter().filter_map(|r| Some(mirror_json(&r.route, r.mirror.as_ref()?))).collect()
    };
    if fmt != OutputFormat::Table {
        return emit(out, fmt, &report_json(scope, r, mirrored));
    }
    let routes: Vec<(&str, &pb::MirrorReport)> =
        r.routes.iter().filter_map(|r| Some((r.route.as_str(), r.mirror.as_ref()?))).collect();
    if routes.is_empty() {
        let _ = writeln!(out, "{}", nothing(scope, r, "mirrors", "does not mirror"));
        return disconnected_note(err, r);
    }
    for (i, (route, m)) in routes.into_iter().enumerate() {
        if i > 0 {
            let _ = writeln!(out);
        }
        shadow_route(out, route, m, scope.now);
    }
    disconnected_note(err, r);
}

/// Routes that split traffic: each variant's requests, errors and latency, and the brake.
pub fn canary(
    out: &mut dyn Write,
    err: &mut dyn Write,
    fmt: OutputFormat,
    scope: &Scope,
    r: &pb::TrafficReport,
) {
    let split = |routes: &[pb::RouteReport]| -> Vec<Value> {
        routes.iter().filter(|r| splits(r)).map(canary_json).collect()
    };
    if fmt != OutputFormat::Table {
        return emit(out, fmt, &report_json(scope, r, split));
    }
    let routes: Vec<&pb::RouteReport> = r.routes.iter().filter(|r| splits(r)).collect();
    if routes.is_empty() {
        let _ = writeln!(out, "{}", nothing(scope, r, "splits traffic", "does not split traffic"));
        return disconnected_note(err, r);
    }
    for (i, route) in routes.into_iter().enumerate() {
        if i > 0 {
            let _ = writeln!(out);
        }
        canary_route(out, route);
    }
    disconnected_note(err, r);
}

/// Whether a route sends some traffic elsewhere than its stable pool.
fn splits(r: &pb::RouteReport) -> bool {
    r.brake.is_some() || r.variants.iter().any(|v| v.variant != "stable")
}

/// The line shown when no route qualifies: `any` says it of all routes, `this` of one.
fn nothing(scope: &Scope, r: &pb::TrafficReport, any: &str, this: &str) -> String {
    let why = if r.nodes.is_empty() { " (no data plane has reported)" } else { "" };
    match scope.route {
        Some(route) => format!("route {route} {this} in fleet {}{why}", scope.fleet),
        None => format!("no route {any} in fleet {}{why}", scope.fleet),
    }
}

/// Disconnected data planes: shown in JSON, left out of the totals.
fn disconnected_note(err: &mut dyn Write, r: &pb::TrafficReport) {
    for n in r.nodes.iter().filter(|n| !n.connected) {
        let _ = writeln!(
            err,
            "note: {} is disconnected (last seen {}); its last report is not in these totals",
            n.node_id,
            rfc3339_secs(n.last_seen)
        );
    }
}

/// The aggregate and every node, each route rendered by `routes`.
fn report_json(
    scope: &Scope,
    r: &pb::TrafficReport,
    routes: impl Fn(&[pb::RouteReport]) -> Vec<Value>,
) -> Value {
    let nodes: Vec<Value> = r
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node_id": n.node_id,
                "connected": n.connected,
                "last_seen": time(n.last_seen),
                "at": time(n.at),
                "active_version": n.active_version,
                "routes": routes(&n.routes),
            })
        })
        .collect();
    json!({"fleet": scope.fleet, "route": scope.route, "routes": routes(&r.routes), "nodes": nodes})
}

// === shadow ===

fn shadow_route(out: &mut dyn Write, route: &str, m: &pb::MirrorReport, now: i64) {
    let _ = writeln!(out, "route {route}: mirrored to {}", m.pool);
    let dropped = dropped(m);
    let total: u64 = dropped.values().sum();
    let dropped = if total == 0 {
        "0".to_owned()
    } else {
        let each: Vec<String> = dropped.iter().map(|(reason, n)| format!("{reason} {n}")).collect();
        format!("{total} ({})", each.join(", "))
    };
    let differed = match rate(m.differed, m.compared) {
        Some(r) => format!("{} ({})", m.differed, percent(r)),
        None => m.differed.to_string(),
    };
    let lines = [
        ("sent", m.sent.to_string()),
        ("completed", m.completed.to_string()),
        ("failed", m.failed.to_string()),
        ("dropped", dropped),
        ("compared", m.compared.to_string()),
        ("differed", differed),
        ("baseline", baseline(m)),
        ("guardrail", guardrail(m.guardrail.as_ref(), now)),
    ];
    for (name, value) in lines {
        let _ = writeln!(out, "  {name:<10} {value}");
    }
    if !m.fields.is_empty() {
        let _ = writeln!(out);
        let mut t = table(&["FIELD", "DIFFERED", "DIFF RATE", "NOISE RATE", "SIGNIFICANT"]);
        for f in &m.fields {
            let noise = if m.baseline_compared == 0 {
                "-".to_owned()
            } else {
                rate(f.noise, m.baseline_compared).map(percent).unwrap_or_default()
            };
            t.add_row(vec![
                f.field.clone(),
                f.differed.to_string(),
                rate(f.differed, m.compared).map(percent).unwrap_or_else(|| "-".into()),
                noise,
                if significant(f, m) { "yes" } else { "no" }.to_owned(),
            ]);
        }
        print_indented(out, &t.to_string());
    }
    if !m.samples.is_empty() {
        let _ = writeln!(out, "\n  recent differences, newest first:");
        for s in &m.samples {
            let _ = writeln!(
                out,
                "  {}  {}  {} {}  fields: {}",
                rfc3339_secs(s.at),
                s.request_id,
                s.method,
                s.path,
                s.fields.join(", ")
            );
            let _ = writeln!(out, "      primary:   {}", s.primary.replace('\n', "\n                 "));
            let _ = writeln!(out, "      candidate: {}", s.candidate.replace('\n', "\n                 "));
        }
    }
}

/// A table under its route's heading (without the table's own one-space left padding).
fn print_indented(out: &mut dyn Write, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "  {}", line.strip_prefix(' ').unwrap_or(line).trim_end());
    }
}

fn dropped(m: &pb::MirrorReport) -> BTreeMap<&str, u64> {
    m.dropped.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

fn baseline(m: &pb::MirrorReport) -> String {
    if m.baseline_compared == 0 {
        return "none (every difference counts)".into();
    }
    format!(
        "{} pairs; significant when the diff rate exceeds the noise rate by over {}% of it and {} points",
        m.baseline_compared,
        trim_decimals(format!("{:.4}", m.noise_relative * 100.0)),
        trim_decimals(format!("{:.4}", m.noise_absolute * 100.0))
    )
}

fn guardrail(g: Option<&pb::Guardrail>, now: i64) -> String {
    let Some(g) = g else { return "-".into() };
    let mut text = g.state.clone();
    if !g.reason.is_empty() {
        text += &format!(" ({})", g.reason);
    }
    if g.state == "tripped" && g.resumes_at > 0 {
        text += &format!(", resumes in {}s", (g.resumes_at - now).max(0));
    }
    if g.trips > 0 {
        text += &format!("; {} trip{}", g.trips, if g.trips == 1 { "" } else { "s" });
    }
    text
}

/// Whether a field's differences stand above the noise floor: the data plane's rule.
pub(crate) fn significant(f: &pb::FieldDiff, m: &pb::MirrorReport) -> bool {
    stats::significant(
        f.differed,
        f.noise,
        m.compared,
        m.baseline_compared,
        m.noise_relative,
        m.noise_absolute,
    )
}

fn mirror_json(route: &str, m: &pb::MirrorReport) -> Value {
    let fields: Vec<Value> = m
        .fields
        .iter()
        .map(|f| {
            json!({
                "field": f.field,
                "differed": f.differed,
                "noise": f.noise,
                "diff_rate": rate(f.differed, m.compared),
                "noise_rate": rate(f.noise, m.baseline_compared),
                "significant": significant(f, m),
            })
        })
        .collect();
    let samples: Vec<Value> = m
        .samples
        .iter()
        .map(|s| {
            json!({
                "at": time(s.at),
                "request_id": s.request_id,
                "method": s.method,
                "path": s.path,
                "fields": s.fields,
                "primary": s.primary,
                "candidate": s.candidate,
            })
        })
        .collect();
    let guardrail = m.guardrail.as_ref().map(|g| {
        json!({
            "state": g.state,
            "reason": g.reason,
            "since": time(g.since),
            "resumes_at": time(g.resumes_at),
            "trips": g.trips,
        })
    });
    json!({
        "route": route,
        "pool": m.pool,
        "sent": m.sent,
        "completed": m.completed,
        "failed": m.failed,
        "dropped": dropped(m),
        "compared": m.compared,
        "differed": m.differed,
        "diff_rate": rate(m.differed, m.compared),
        "baseline_compared": m.baseline_compared,
        "noise_relative": m.noise_relative,
        "noise_absolute": m.noise_absolute,
        "guardrail": guardrail,
        "fields": fields,
        "samples": samples,
    })
}

// === canary ===

fn canary_route(out: &mut dyn Write, r: &pb::RouteReport) {
    let _ = writeln!(out, "route {}", r.route);
    let mut t = table(&["VARIANT", "POOL", "REQUESTS", "ERRORS", "ERROR RATE", "P50", "P95", "P99"]);
    for v in &r.variants {
        let q = |q: f64| {
            quantile(q, &v.bounds_seconds, &v.bucket_counts).map(seconds).unwrap_or_else(|| "-".into())
        };
        t.add_row(vec![
            v.variant.clone(),
            v.pool.clone(),
            v.requests.to_string(),
            v.errors.to_string(),
            rate(v.errors, v.requests).map(percent).unwrap_or_else(|| "-".into()),
            q(0.5),
            q(0.95),
            q(0.99),
        ]);
    }
    print_indented(out, &t.to_string());
    let brake = match &r.brake {
        None => "none (no canary)".to_owned(),
        Some(b) if b.engaged => format!(
            "ENGAGED since {}: {} (canary {} gets no traffic; configured weight {}%)",
            rfc3339_secs(b.engaged_at),
            b.reason,
            b.pool,
            b.weight_percent
        ),
        Some(b) => format!("off (canary {} at {}%)", b.pool, b.weight_percent),
    };
    let _ = writeln!(out, "  brake: {brake}");
}

fn canary_json(r: &pb::RouteReport) -> Value {
    let variants: Vec<Value> = r
        .variants
        .iter()
        .map(|v| {
            let q = |q: f64| quantile(q, &v.bounds_seconds, &v.bucket_counts);
            json!({
                "variant": v.variant,
                "pool": v.pool,
                "requests": v.requests,
                "errors": v.errors,
                "error_rate": rate(v.errors, v.requests),
                "p50_seconds": q(0.5),
                "p95_seconds": q(0.95),
                "p99_seconds": q(0.99),
                "sum_seconds": v.sum_seconds,
                "bounds_seconds": v.bounds_seconds,
                "bucket_counts": v.bucket_counts,
            })
        })
        .collect();
    let brake = r.brake.as_ref().map(|b| {
        json!({
            "pool": b.pool,
            "weight_percent": b.weight_percent,
            "engaged": b.engaged,
            "reason": b.reason,
            "engaged_at": time(b.engaged_at),
        })
    });
    json!({"route": r.route, "variants": variants, "brake": brake})
}

// === formatting ===

fn rate(n: u64, of: u64) -> Option<f64> {
    (of > 0).then(|| n as f64 / of as f64)
}

fn percent(fraction: f64) -> String {
    format!("{:.2}%", fraction * 100.0)
}

/// Decimals without trailing zeros: `12.50` → `12.5`, `12.0` → `12`.
fn trim_decimals(v: String) -> String {
    if !v.contains('.') {
        return v;
    }
    v.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// `850µs`, `12.5ms`, `1.25s`.
fn seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{}s", trim_decimals(format!("{s:.2}")))
    } else if s >= 0.001 {
        format!("{}ms", trim_decimals(format!("{:.1}", s * 1e3)))
    } else {
        format!("{:.0}µs", s * 1e6)
    }
}

/// RFC 3339, or null for "never" (0).
fn time(secs: i64) -> Value {
    if secs == 0 { Value::Null } else { Value::String(rfc3339_secs(secs)) }
}

#[cfg(test)]
mod tests;
