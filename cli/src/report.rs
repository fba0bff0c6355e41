//! `sluice shadow report` and `sluice canary report`: the data planes' traffic reports as the
//! control plane adds them up, shown through the views every surface shares
//! (`sluice_report`): `-o json` and `-o yaml` serialise them, the tables lay their values out.
//! Nothing is computed here that the view does not already hold.

use std::io::Write;

use serde::Serialize;
use sluice_proto::v1 as pb;
pub use sluice_report::Scope;
use sluice_report::{
    FleetView, GuardrailView, NodeView, RouteCanary, RouteShadow, canary_fleet, shadow_fleet,
};

use crate::output::{OutputFormat, emit, table};

/// Mirrored routes: counters, the guardrail, each field's diff and noise rates, recent samples.
pub fn shadow(
    out: &mut dyn Write,
    err: &mut dyn Write,
    fmt: OutputFormat,
    scope: &Scope,
    r: &pb::TrafficReport,
) {
    let view = shadow_fleet(scope, r);
    render(out, err, fmt, &view, ("mirrors", "does not mirror"), shadow_route);
}

/// Routes that split traffic: each variant's requests, errors and latency, and the brake.
pub fn canary(
    out: &mut dyn Write,
    err: &mut dyn Write,
    fmt: OutputFormat,
    scope: &Scope,
    r: &pb::TrafficReport,
) {
    let view = canary_fleet(scope, r);
    render(out, err, fmt, &view, ("splits traffic", "does not split traffic"), canary_route);
}

/// The view as JSON or YAML, or each of its routes as `route` lays it out; `nothing` says, of
/// any route and of the one asked for, that it does not qualify.
fn render<R: Serialize>(
    out: &mut dyn Write,
    err: &mut dyn Write,
    fmt: OutputFormat,
    view: &FleetView<R>,
    nothing: (&str, &str),
    route: fn(&mut dyn Write, &R),
) {
    if fmt != OutputFormat::Table {
        return emit(out, fmt, view);
    }
    if view.routes.is_empty() {
        let why = if view.nodes.is_empty() { " (no data plane has reported)" } else { "" };
        let (any, this) = nothing;
        let _ = match &view.route {
            Some(name) => writeln!(out, "route {name} {this} in fleet {}{why}", view.fleet),
            None => writeln!(out, "no route {any} in fleet {}{why}", view.fleet),
        };
    }
    for (i, r) in view.routes.iter().enumerate() {
        if i > 0 {
            let _ = writeln!(out);
        }
        route(out, r);
    }
    disconnected_note(err, &view.nodes);
}

/// Disconnected data planes: shown in JSON, left out of the totals.
fn disconnected_note<R>(err: &mut dyn Write, nodes: &[NodeView<R>]) {
    for n in nodes.iter().filter(|n| !n.connected) {
        let _ = writeln!(
            err,
            "note: {} is disconnected (last seen {}); its last report is not in these totals",
            n.node_id,
            or_dash(n.last_seen)
        );
    }
}

// === shadow ===

fn shadow_route(out: &mut dyn Write, m: &RouteShadow) {
    let _ = writeln!(out, "route {}: mirrored to {}", m.route, m.pool);
    let total: u64 = m.dropped.values().sum();
    let dropped = if total == 0 {
        "0".to_owned()
    } else {
        let each: Vec<String> = m.dropped.iter().map(|(reason, n)| format!("{reason} {n}")).collect();
        format!("{total} ({})", each.join(", "))
    };
    let differed = match m.diff_rate {
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
        ("guardrail", guardrail(m.guardrail.as_ref())),
    ];
    for (name, value) in lines {
        let _ = writeln!(out, "  {name:<10} {value}");
    }
    if !m.fields.is_empty() {
        let _ = writeln!(out);
        let mut t = table(&["FIELD", "DIFFERED", "DIFF RATE", "NOISE RATE", "SIGNIFICANT"]);
        for f in &m.fields {
            t.add_row(vec![
                f.field.clone(),
                f.differed.to_string(),
                f.diff_rate.map_or_else(|| "-".into(), percent),
                f.noise_rate.map_or_else(|| "-".into(), percent),
                if f.significant { "yes" } else { "no" }.to_owned(),
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
                or_dash(s.at),
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

fn baseline(m: &RouteShadow) -> String {
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

fn guardrail(g: Option<&GuardrailView>) -> String {
    let Some(g) = g else { return "-".into() };
    let mut text = g.state.clone();
    if let Some(reason) = &g.reason {
        text += &format!(" ({reason})");
    }
    if let Some(secs) = g.resumes_in_seconds {
        text += &format!(", resumes in {secs}s");
    }
    if g.trips > 0 {
        text += &format!("; {} trip{}", g.trips, if g.trips == 1 { "" } else { "s" });
    }
    text
}

// === canary ===

fn canary_route(out: &mut dyn Write, r: &RouteCanary) {
    let _ = writeln!(out, "route {}", r.route);
    let mut t = table(&["VARIANT", "POOL", "REQUESTS", "ERRORS", "ERROR RATE", "P50", "P95", "P99"]);
    for v in &r.variants {
        let latency = |q: Option<f64>| q.map_or_else(|| "-".into(), seconds);
        t.add_row(vec![
            v.variant.clone(),
            v.pool.clone(),
            v.requests.to_string(),
            v.errors.to_string(),
            v.error_rate.map_or_else(|| "-".into(), percent),
            latency(v.p50_seconds),
            latency(v.p95_seconds),
            latency(v.p99_seconds),
        ]);
    }
    print_indented(out, &t.to_string());
    let brake = match &r.brake {
        None => "none (no canary)".to_owned(),
        Some(b) if b.engaged => format!(
            "ENGAGED since {}: {} (canary {} gets no traffic; configured weight {}%)",
            or_dash(b.engaged_at),
            b.reason.as_deref().unwrap_or("-"),
            b.pool,
            b.weight_percent
        ),
        Some(b) => format!("off (canary {} at {}%)", b.pool, b.weight_percent),
    };
    let _ = writeln!(out, "  brake: {brake}");
}

// === formatting ===

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

/// A time, or `-` for "never".
fn or_dash(t: Option<sluice_report::Timestamp>) -> String {
    t.map_or_else(|| "-".into(), |t| t.to_string())
}

#[cfg(test)]
mod tests;
