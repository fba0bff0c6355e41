//! Rendering: tables for people, JSON and YAML for scripts. Data to stdout, notes to stderr.

use std::io::{IsTerminal, Write};

use clap::ValueEnum;
use comfy_table::presets::NOTHING;
use comfy_table::{Cell, Table};
use serde::Serialize;
use serde_json::{Value, json};
use sluice_bundle::time::rfc3339_secs;
use sluice_proto::v1 as pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

pub(crate) fn emit(out: &mut dyn Write, fmt: OutputFormat, value: &impl Serialize) {
    let text = match fmt {
        OutputFormat::Yaml => serde_saphyr::to_string(value).unwrap_or_default(),
        _ => serde_json::to_string_pretty(value).unwrap_or_default() + "\n",
    };
    let _ = out.write_all(text.as_bytes());
}

pub(crate) fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING);
    t.set_header(headers.iter().map(Cell::new));
    t
}

/// A table's text without trailing spaces (and without a final newline).
pub(crate) fn render(t: &Table) -> String {
    t.to_string().lines().map(str::trim_end).collect::<Vec<_>>().join("\n")
}

fn print_table(out: &mut dyn Write, t: &Table) {
    let _ = writeln!(out, "{}", render(t));
}

/// Colour only for a person at a terminal who has not asked for none.
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

pub fn config_errors(
    out: &mut dyn Write,
    err: &mut dyn Write,
    fmt: OutputFormat,
    name: &str,
    errors: &[pb::ConfigError],
) {
    if fmt != OutputFormat::Table {
        let list: Vec<Value> = errors.iter().map(|e| json!({"path": e.path, "message": e.message})).collect();
        return emit(out, fmt, &json!({"valid": false, "errors": list}));
    }
    let n = errors.len();
    let _ = writeln!(err, "{name}: {n} error{}", if n == 1 { "" } else { "s" });
    for e in errors {
        if e.path.is_empty() {
            let _ = writeln!(err, "  {}", e.message);
        } else {
            let _ = writeln!(err, "  {}: {}", e.path, e.message);
        }
    }
}

pub fn diff(out: &mut dyn Write, fmt: OutputFormat, fleet: &str, resp: &pb::DiffResponse) {
    let parse = |s: &Option<String>| s.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok());
    if fmt != OutputFormat::Table {
        let changes: Vec<Value> = resp
            .changes
            .iter()
            .map(|c| json!({"path": c.path, "old": parse(&c.old_json), "new": parse(&c.new_json)}))
            .collect();
        return emit(
            out,
            fmt,
            &json!({"fleet": fleet, "against_version": resp.against_version, "changes": changes}),
        );
    }
    if resp.changes.is_empty() {
        let _ = writeln!(out, "no changes against {fleet} version {}", resp.against_version);
        return;
    }
    let show = |v: Option<Value>| match v {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let paint = colour();
    for c in &resp.changes {
        let (old, new) = (parse(&c.old_json), parse(&c.new_json));
        let (sign, colour_code, text) = match (&old, &new) {
            (None, _) => ('+', "32", format!("{}: {}", c.path, show(new))),
            (_, None) => ('-', "31", format!("{}: {}", c.path, show(old))),
            _ => ('~', "33", format!("{}: {} → {}", c.path, show(old), show(new))),
        };
        if paint {
            let _ = writeln!(out, "\x1b[{colour_code}m{sign} {text}\x1b[0m");
        } else {
            let _ = writeln!(out, "{sign} {text}");
        }
    }
    let _ = writeln!(
        out,
        "{} change{} against {fleet} version {}",
        resp.changes.len(),
        if resp.changes.len() == 1 { "" } else { "s" },
        resp.against_version
    );
}

fn summary_json(v: &pb::VersionSummary) -> Value {
    json!({
        "fleet": v.fleet,
        "version": v.version,
        "parent_version": v.parent_version,
        "sha256": v.sha256,
        "author": v.author,
        "message": v.message,
        "origin": v.origin,
        "key_id": v.key_id,
        "created_at": rfc3339_secs(v.created_at),
    })
}

pub fn applied(out: &mut dyn Write, err: &mut dyn Write, fmt: OutputFormat, resp: &pb::ApplyResponse) {
    let v = resp.version.clone().unwrap_or_default();
    if fmt != OutputFormat::Table {
        return emit(
            out,
            fmt,
            &json!({"unchanged": resp.unchanged, "version": summary_json(&v), "rollout_id": resp.rollout_id}),
        );
    }
    if resp.unchanged {
        let _ = writeln!(err, "unchanged: {} version {} already has this content", v.fleet, v.version);
    } else {
        let _ = writeln!(
            out,
            "{} version {} stored ({}, parent {}, sha256 {}, signed by {})",
            v.fleet,
            v.version,
            v.origin,
            v.parent_version,
            short(&v.sha256),
            v.key_id
        );
    }
}

pub fn version(out: &mut dyn Write, err: &mut dyn Write, fmt: OutputFormat, detail: &pb::VersionDetail) {
    let v = detail.summary.clone().unwrap_or_default();
    let config: Value = serde_json::from_str(&detail.config_json).unwrap_or(Value::Null);
    match fmt {
        OutputFormat::Json => emit(out, fmt, &json!({"version": summary_json(&v), "config": config})),
        _ => {
            let _ = writeln!(
                err,
                "# {} version {} by {} at {} ({})",
                v.fleet,
                v.version,
                v.author,
                rfc3339_secs(v.created_at),
                v.origin
            );
            emit(out, OutputFormat::Yaml, &config);
        }
    }
}

pub fn history(out: &mut dyn Write, fmt: OutputFormat, versions: &[pb::VersionSummary]) {
    if fmt != OutputFormat::Table {
        return emit(out, fmt, &Value::Array(versions.iter().map(summary_json).collect()));
    }
    let mut t = table(&["VERSION", "CREATED", "AUTHOR", "ORIGIN", "SHA256", "MESSAGE"]);
    for v in versions {
        t.add_row(vec![
            v.version.to_string(),
            rfc3339_secs(v.created_at),
            v.author.clone(),
            v.origin.clone(),
            short(&v.sha256).to_owned(),
            v.message.clone(),
        ]);
    }
    print_table(out, &t);
}

pub fn purged(out: &mut dyn Write, fmt: OutputFormat, resp: &pb::PurgeCacheResponse) {
    if fmt != OutputFormat::Table {
        let nodes: Vec<Value> = resp
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "node_id": n.node_id,
                    "removed": n.error.is_empty().then_some(n.removed),
                    "error": (!n.error.is_empty()).then_some(&n.error),
                })
            })
            .collect();
        return emit(
            out,
            fmt,
            &json!({"purge_id": resp.purge_id, "connected": resp.connected, "nodes": nodes}),
        );
    }
    let mut t = table(&["NODE", "REMOVED", "ERROR"]);
    for n in &resp.nodes {
        let removed = if n.error.is_empty() { n.removed.to_string() } else { String::new() };
        t.add_row(vec![n.node_id.clone(), removed, n.error.clone()]);
    }
    let _ = writeln!(out, "{t}");
    let _ = writeln!(
        out,
        "purge {}: {} of {} connected data planes answered",
        resp.purge_id,
        resp.nodes.len(),
        resp.connected
    );
}

pub fn data_planes(out: &mut dyn Write, fmt: OutputFormat, planes: &[pb::DataPlaneStatus]) {
    if fmt != OutputFormat::Table {
        let list: Vec<Value> = planes
            .iter()
            .map(|d| {
                json!({
                    "node_id": d.node_id,
                    "fleet": d.fleet,
                    "state": d.state,
                    "active_version": d.active_version,
                    "head_version": d.head_version,
                    "connected": d.connected,
                    "last_seen": rfc3339_secs(d.last_seen),
                    "last_ack_version": d.last_ack_version,
                    "last_nack_version": d.last_nack_version,
                    "last_nack_reason": d.last_nack_reason,
                    "last_nack_details": d.last_nack_details.iter().map(|e| json!({"path": e.path, "message": e.message})).collect::<Vec<_>>(),
                    "labels": d.labels,
                    "build": d.build,
                    "freshness_expires_at": (d.freshness_expires_at > 0).then(|| rfc3339_secs(d.freshness_expires_at)),
                    "trust_version": d.trust_version,
                    "signature_key_ids": d.signature_key_ids,
                })
            })
            .collect();
        return emit(out, fmt, &Value::Array(list));
    }
    let mut t = table(&["NODE", "FLEET", "STATE", "ACTIVE", "HEAD", "LAST SEEN", "FRESH UNTIL", "LAST NACK"]);
    for d in planes {
        let nack = if d.state == "AHEAD" {
            format!(
                "serves v{}, above the fleet's head v{}: database restored? see docs/failure-modes.md",
                d.active_version, d.head_version
            )
        } else if d.last_nack_version > d.active_version {
            format!("v{}: {}", d.last_nack_version, d.last_nack_reason)
        } else {
            String::new()
        };
        t.add_row(vec![
            d.node_id.clone(),
            d.fleet.clone(),
            d.state.clone(),
            d.active_version.to_string(),
            d.head_version.to_string(),
            rfc3339_secs(d.last_seen),
            if d.freshness_expires_at > 0 { rfc3339_secs(d.freshness_expires_at) } else { "-".into() },
            nack,
        ]);
    }
    print_table(out, &t);
}

pub fn signing_keys(out: &mut dyn Write, fmt: OutputFormat, keys: &pb::SigningKeys) {
    if fmt != OutputFormat::Table {
        let list: Vec<Value> = keys
            .keys
            .iter()
            .map(|k| {
                json!({
                    "key_id": k.key_id,
                    "public_key": k.public_key,
                    "state": k.state,
                    "held": k.held,
                    "added_by": (!k.added_by.is_empty()).then_some(&k.added_by),
                    "added_at": (k.added_at > 0).then(|| rfc3339_secs(k.added_at)),
                    "retired_by": (!k.retired_by.is_empty()).then_some(&k.retired_by),
                    "retired_at": (k.retired_at > 0).then(|| rfc3339_secs(k.retired_at)),
                })
            })
            .collect();
        return emit(out, fmt, &json!({"keys": list, "signed": keys.signed}));
    }
    let mut t = table(&["KEY ID", "STATE", "HELD HERE", "ADDED", "BY", "RETIRED"]);
    for k in &keys.keys {
        t.add_row(vec![
            k.key_id.clone(),
            k.state.clone(),
            if k.held { "yes" } else { "no" }.into(),
            if k.added_at > 0 { rfc3339_secs(k.added_at) } else { String::new() },
            k.added_by.clone(),
            if k.retired_at > 0 {
                format!("{} by {}", rfc3339_secs(k.retired_at), k.retired_by)
            } else {
                String::new()
            },
        ]);
    }
    print_table(out, &t);
    if !keys.signed.is_empty() {
        let _ = writeln!(out, "signed versions in use: {}", keys.signed.join(", "));
    }
}

pub fn audit(out: &mut dyn Write, err: &mut dyn Write, fmt: OutputFormat, resp: &pb::ListAuditResponse) {
    if fmt != OutputFormat::Table {
        let events: Vec<Value> = resp
            .events
            .iter()
            .map(|e| {
                json!({
                    "id": e.id,
                    "at": rfc3339_secs(e.at),
                    "actor": e.actor,
                    "action": e.action,
                    "fleet": e.fleet,
                    "version": e.version,
                    "detail": serde_json::from_str::<Value>(&e.detail_json).unwrap_or(Value::Null),
                    "hash": e.hash,
                })
            })
            .collect();
        return emit(
            out,
            fmt,
            &json!({"chain_intact": resp.chain_intact, "chain_problem": resp.chain_problem, "events": events}),
        );
    }
    let mut t = table(&["ID", "TIME", "ACTOR", "ACTION", "FLEET", "VERSION", "DETAIL"]);
    for e in &resp.events {
        let detail: Value = serde_json::from_str(&e.detail_json).unwrap_or(Value::Null);
        let text = match (detail.get("message"), detail.get("reason")) {
            (Some(Value::String(m)), _) if !m.is_empty() => m.clone(),
            (_, Some(Value::String(r))) => r.clone(),
            _ => detail.get("origin").and_then(Value::as_str).unwrap_or_default().to_owned(),
        };
        t.add_row(vec![
            e.id.to_string(),
            rfc3339_secs(e.at),
            e.actor.clone(),
            e.action.clone(),
            e.fleet.clone(),
            e.version.map(|v| v.to_string()).unwrap_or_default(),
            text,
        ]);
    }
    print_table(out, &t);
    if resp.chain_intact {
        let _ = writeln!(err, "audit chain intact");
    } else {
        let _ = writeln!(err, "AUDIT CHAIN BROKEN: {}", resp.chain_problem);
    }
}
