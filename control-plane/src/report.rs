//! Traffic reports: each data plane's latest, and their sum over the fleet, which is what an
//! operator reads (`sluice shadow report`, `sluice canary report`).
//!
//! Reports are the data planes' own messages (`sluice.v1.RouteReport`), kept as they were sent;
//! adding them up is plain data work over those messages. Counters are cumulative since each
//! data plane started, so the sum of the latest reports is the fleet's traffic since then.

use std::cmp::Reverse;

use prost::Message as _;
use sluice_proto::v1 as pb;

use crate::error::{Error, Result};
use crate::store::ReportRow;

/// Most recent differing pairs kept per route in the fleet-wide sum.
pub const MAX_SAMPLES: usize = 10;

/// One data plane's latest report.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTraffic {
    pub node_id: String,
    /// Unix seconds, by the data plane's clock.
    pub at: i64,
    pub active_version: u64,
    pub connected: bool,
    /// Unix seconds the control plane last heard from it.
    pub last_seen: i64,
    pub routes: Vec<pb::RouteReport>,
}

/// Every data plane's latest report, and the connected ones' sum by route.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficReport {
    pub nodes: Vec<NodeTraffic>,
    pub routes: Vec<pb::RouteReport>,
}

// === impl NodeTraffic ===

impl NodeTraffic {
    /// A stored report, with only `route` when one is given.
    pub fn from_row(row: ReportRow, route: Option<&str>) -> Result<Self> {
        let report = pb::Report::decode(row.report.as_slice())
            .map_err(|e| Error::Internal(format!("stored report of {}: {e}", row.node_id)))?;
        let routes = report.routes.into_iter().filter(|r| route.is_none_or(|name| r.route == name)).collect();
        Ok(Self {
            node_id: row.node_id,
            at: row.at,
            active_version: row.active_version,
            connected: row.connected,
            last_seen: row.last_seen,
            routes,
        })
    }
}

// === impl TrafficReport ===

impl TrafficReport {
    /// The nodes' reports with their sum. A disconnected node's last report is shown but not
    /// added: its brake or guardrail state is no longer true, and a node that is gone for good
    /// (a replaced pod) would otherwise count forever.
    pub fn new(nodes: Vec<NodeTraffic>) -> Self {
        let routes = aggregate(nodes.iter().filter(|n| n.connected));
        Self { nodes, routes }
    }
}

/// Adds up the nodes' routes by route name, sorted by name; a mirror's fields most differing
/// first. Where something cannot be added
/// (pools, noise thresholds, histogram bounds), the first node that has it decides.
pub fn aggregate<'a>(nodes: impl IntoIterator<Item = &'a NodeTraffic>) -> Vec<pb::RouteReport> {
    let mut routes: Vec<pb::RouteReport> = Vec::new();
    for node in nodes {
        for route in &node.routes {
            match routes.iter_mut().find(|r| r.route == route.route) {
                Some(sum) => merge_route(sum, &node.node_id, route),
                None => routes.push(first_route(&node.node_id, route)),
            }
        }
    }
    routes.sort_by(|a, b| a.route.cmp(&b.route));
    for m in routes.iter_mut().filter_map(|r| r.mirror.as_mut()) {
        // As a data plane lists them: most differing first.
        m.fields.sort_by(|a, b| b.differed.cmp(&a.differed).then_with(|| a.field.cmp(&b.field)));
    }
    routes
}

/// A route as the first node reports it, with reasons naming that node.
fn first_route(node: &str, route: &pb::RouteReport) -> pb::RouteReport {
    let mut sum = pb::RouteReport { route: route.route.clone(), ..Default::default() };
    merge_route(&mut sum, node, route);
    sum
}

fn merge_route(sum: &mut pb::RouteReport, node: &str, route: &pb::RouteReport) {
    for v in &route.variants {
        match sum.variants.iter_mut().find(|s| s.variant == v.variant) {
            Some(s) => merge_variant(s, v),
            None => sum.variants.push(v.clone()),
        }
    }
    if let Some(b) = &route.brake {
        match &mut sum.brake {
            Some(s) => merge_brake(s, node, b),
            None => {
                let mut first =
                    pb::CanaryBrake { engaged: false, reason: String::new(), engaged_at: 0, ..b.clone() };
                merge_brake(&mut first, node, b);
                sum.brake = Some(first);
            }
        }
    }
    if let Some(m) = &route.mirror {
        match &mut sum.mirror {
            Some(s) => merge_mirror(s, node, m),
            None => {
                // Counters start at zero; what cannot be added (pool, thresholds) is this node's.
                let mut first = pb::MirrorReport {
                    pool: m.pool.clone(),
                    noise_relative: m.noise_relative,
                    noise_absolute: m.noise_absolute,
                    ..Default::default()
                };
                merge_mirror(&mut first, node, m);
                sum.mirror = Some(first);
            }
        }
    }
}

fn merge_variant(sum: &mut pb::VariantStats, v: &pb::VariantStats) {
    sum.requests += v.requests;
    sum.errors += v.errors;
    sum.sum_seconds += v.sum_seconds;
    if sum.bucket_counts.is_empty() {
        sum.bounds_seconds.clone_from(&v.bounds_seconds);
        sum.bucket_counts.clone_from(&v.bucket_counts);
    } else if sum.bounds_seconds == v.bounds_seconds && sum.bucket_counts.len() == v.bucket_counts.len() {
        for (s, c) in sum.bucket_counts.iter_mut().zip(&v.bucket_counts) {
            *s += c;
        }
    }
    // Otherwise the bounds differ (data planes of different builds): buckets cannot be added, so
    // the percentiles come from the first node's histogram alone while the counts stay summed.
}

/// Engaged when any node's brake is; the reason and time are the first engaged node's.
fn merge_brake(sum: &mut pb::CanaryBrake, node: &str, b: &pb::CanaryBrake) {
    if b.engaged && !sum.engaged {
        sum.engaged = true;
        sum.reason = format!("{node}: {}", b.reason);
        sum.engaged_at = b.engaged_at;
    }
}

fn merge_mirror(sum: &mut pb::MirrorReport, node: &str, m: &pb::MirrorReport) {
    sum.sent += m.sent;
    sum.completed += m.completed;
    sum.failed += m.failed;
    sum.compared += m.compared;
    sum.differed += m.differed;
    sum.baseline_compared += m.baseline_compared;
    for (reason, n) in &m.dropped {
        *sum.dropped.entry(reason.clone()).or_default() += n;
    }
    for f in &m.fields {
        match sum.fields.iter_mut().find(|s| s.field == f.field) {
            Some(s) => {
                s.differed += f.differed;
                s.noise += f.noise;
            }
            None => sum.fields.push(f.clone()),
        }
    }
    sum.samples.extend(m.samples.iter().cloned());
    // Stable: of samples made in the same second, the earlier node's come first.
    sum.samples.sort_by_key(|s| Reverse(s.at));
    sum.samples.truncate(MAX_SAMPLES);
    if let Some(g) = &m.guardrail {
        let worse = sum.guardrail.as_ref().is_none_or(|s| severity(&g.state) > severity(&s.state));
        let trips = sum.guardrail.as_ref().map_or(0, |s| s.trips) + g.trips;
        if worse {
            let reason = if g.reason.is_empty() { String::new() } else { format!("{node}: {}", g.reason) };
            sum.guardrail = Some(pb::Guardrail { reason, ..g.clone() });
        }
        if let Some(s) = &mut sum.guardrail {
            s.trips = trips;
        }
    }
}

/// How much a guardrail state stops mirroring: tripped (by the candidate's behaviour) is worse
/// than disabled (by an operator), which is worse than active.
fn severity(state: &str) -> u8 {
    match state {
        "tripped" => 2,
        "disabled" => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests;
