//! `--resilience`: sluice-proxy with its defaults against sluice-proxy with every resilience
//! feature configured, to show what the features cost on the fast path.

use std::fmt::Write as _;

use anyhow::Context as _;
use serde_json::Value;

use super::{Comparison, Entry, PLAIN, Start, Target};
use crate::bench::admin::admin_get;
use crate::bench::configs::{ROUTE, sluice_conf_with};
use crate::bench::processes::{Procs, spawn_sluice};
use crate::bench::report::{Results, Section, instances_memory, versus};
use crate::bench::side_by_side;

pub(super) const ENTRY: Entry = Entry {
    flag: Some("resilience"),
    help: "Run sluice-proxy twice instead of nginx and HAProxy: with its defaults, and with every \
           resilience feature configured. Results go to the \"resilience\" section",
    run: |args| side_by_side(Resilience::default(), args),
};

const SLUICE_ALL: u16 = 18004;
const SLUICE_ALL_ADMIN: u16 = 18904;

const DEFAULTS: Target = PLAIN.named("sluice, defaults");
const ALL: Target = Target::sluice(
    "sluice, all resilience features",
    SLUICE_ALL,
    SLUICE_ALL_ADMIN,
    "sluice-all.yaml",
    || all_features_conf(SLUICE_ALL),
);

/// The two instances, and their route counters once the runs are over.
#[derive(Default)]
struct Resilience {
    /// The route counters of each instance, or why they are missing.
    counters: Vec<(Target, Result<RouteCounters, String>)>,
}

/// Counters of the benchmark's route, from the admin listener's `/routes`.
#[derive(Debug, Default, PartialEq)]
struct RouteCounters {
    retries: u64,
    retries_denied: u64,
    hedges: u64,
    hedges_won: u64,
    rate_limited: u64,
    /// The route's live p95, which hedging waits for; absent until the route has seen enough requests.
    p95_ms: Option<f64>,
}

// What the all-features instance adds to the listener, the pool and the route. The limits are far
// above anything the benchmark reaches, so nothing is shed, tripped, ejected or rate limited: what
// is measured is the bookkeeping every request pays for. Hedging is the exception: without a fixed
// `delay` it fires after the route's live p95, so a few percent of requests really go upstream
// twice, and that work is part of the cost. `min_hosts` is 2 because the parser refuses less. With
// the single endpoint, success-rate and latency ejection never run (they compare peers), but every
// request still pays for the per-endpoint counting they feed on.
const ALL_LISTENER: &str =
    "    overload: {max_concurrent_requests: 100000, max_queued: 100, queue_timeout: 1s}\n";
const ALL_POOL: &str = "    health_check: {path: /small, interval: 1s, timeout: 1s}\n    \
     circuit_breaker: {max_connections: 100000, max_pending_requests: 100000, max_requests: 100000, \
     max_retries: 100, error_threshold_percent: 50, min_requests: 20, window: 10s, open_duration: 30s}\n    \
     outlier_detection: {consecutive_5xx: 5, interval: 10s, success_rate: {min_hosts: 2, min_requests: 100}, \
     latency: {factor: 5.0, min_requests: 100}}\n";
const ALL_ROUTE: &str = "    retries: {max_attempts: 3, retry_on: [connect_failure, reset, timeout, 503], \
     per_try_timeout: 5s, budget_percent: 20}\n    hedge: {budget_percent: 5}\n    \
     rate_limit: {requests_per_second: 10000000, burst: 10000000}\n    max_request_body: 10MiB\n";

/// The plain config with every resilience feature on top (see `ALL_LISTENER`).
fn all_features_conf(port: u16) -> String {
    sluice_conf_with(port, ALL_LISTENER, ALL_POOL, ALL_ROUTE)
}

impl Comparison for Resilience {
    fn section(&self) -> Section {
        Section {
            begin: "<!-- bench-resilience:begin -->",
            end: "<!-- bench-resilience:end -->",
            heading: Some("Cost of the resilience features"),
        }
    }

    fn tools(&self) -> &'static [&'static str] {
        &["nginx", "wrk"]
    }

    fn targets(&self) -> &'static [Target] {
        &[DEFAULTS, ALL]
    }

    fn start(&mut self, procs: &mut Procs, with: &Start<'_>) -> anyhow::Result<Vec<u32>> {
        let defaults = spawn_sluice(procs, "sluice defaults", with.sluice_bin, DEFAULTS, with.workers)?;
        let all = spawn_sluice(procs, "sluice all features", with.sluice_bin, ALL, with.workers)?;
        Ok(vec![defaults, all])
    }

    fn after_runs(&mut self, targets: &[Target]) {
        self.counters = route_counters(targets);
    }

    fn machine(&self, w: usize) -> String {
        format!(
            "the upstream (nginx, {w} workers) and the sluice-proxy instance under test ({w} worker threads; \
             both instances run throughout, only one gets traffic at a time)"
        )
    }

    fn versus(&self, out: &mut String, r: &Results, si: usize) {
        let _ = writeln!(out);
        versus(out, "all features / defaults", r.runs_of(si, ALL), r.runs_of(si, DEFAULTS));
    }

    /// What the resilience features did during the runs, the memory of both instances, and the
    /// all-features config.
    fn notes(&self, out: &mut String, r: &Results) {
        let _ = writeln!(out, "### What the resilience features did\n");
        let _ = writeln!(
            out,
            "Counters of route `{ROUTE}` from each instance's admin `/routes` after the runs; \"requests\" is \
             all wrk completed against the instance, warm-up checks included. The all-features route hedges \
             without a fixed `delay`, that is after its live p95 (\"route p95\"), within a 5 % budget: each \
             hedge counted went upstream twice, and that work is part of the cost measured above. The other \
             limits (overload, circuit breaker, rate limit) are far above the load, so nothing was refused and \
             they cost only their bookkeeping.\n"
        );
        let _ = writeln!(
            out,
            "| instance | requests | retries | retries denied | hedges | hedges won | rate limited | route p95 |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let mut missing = Vec::new();
        for (t, counters) in &self.counters {
            let served = r.served_of(*t);
            let _ = match counters {
                Ok(c) => writeln!(
                    out,
                    "| {} | {served} | {} | {} | {} ({:.2} %) | {} | {} | {} |",
                    t.name,
                    c.retries,
                    c.retries_denied,
                    c.hedges,
                    c.hedges as f64 * 100.0 / served.max(1) as f64,
                    c.hedges_won,
                    c.rate_limited,
                    c.p95_ms.map_or_else(|| "–".to_owned(), |ms| format!("{ms:.3} ms")),
                ),
                Err(e) => {
                    missing.push(format!("{}: {e}", t.name));
                    writeln!(out, "| {} | {served} | – | – | – | – | – | – |", t.name)
                }
            };
        }
        for m in missing {
            let _ = writeln!(out, "\nCounters unavailable for {m}");
        }
        let all = self.counters.iter().find(|(t, _)| *t == ALL).and_then(|(_, c)| c.as_ref().ok());
        if all.is_some_and(|c| c.hedges == 0) {
            // sluice-proxy sends a hedge only to another endpoint than the first try's.
            let _ = writeln!(
                out,
                "\nNo request was hedged: a hedge goes to another endpoint than the first try, and the pool has \
                 one. Hedging cost here only its per-request setup (reading the live p95, the copy of the request \
                 kept for a second try, the hedge point on the request's timer)."
            );
        }
        instances_memory(out, r);
        let _ = writeln!(
            out,
            "\nThe all-features instance's config (the defaults instance has the same listener, pool and route \
             without the resilience settings):\n\n```yaml\n{}```",
            all_features_conf(SLUICE_ALL)
        );
    }
}

// === impl RouteCounters ===

impl RouteCounters {
    /// Reads route `name` out of a `/routes` document.
    fn parse(doc: &Value, name: &str) -> anyhow::Result<Self> {
        let route = doc
            .get("routes")
            .and_then(Value::as_array)
            .context("no \"routes\" list")?
            .iter()
            .find(|r| r.get("name").and_then(Value::as_str) == Some(name))
            .with_context(|| format!("no route {name:?}"))?;
        let count = |key: &str| {
            route
                .get(key)
                .and_then(Value::as_u64)
                .with_context(|| format!("route {name:?} has no count {key:?}"))
        };
        Ok(Self {
            retries: count("retries")?,
            retries_denied: count("retries_denied")?,
            hedges: count("hedges")?,
            hedges_won: count("hedges_won")?,
            rate_limited: count("rate_limited")?,
            p95_ms: route.get("p95_ms").and_then(Value::as_f64),
        })
    }
}

/// Prints the admin `/routes` document of every sluice-proxy target and reads its route's counters.
fn route_counters(targets: &[Target]) -> Vec<(Target, Result<RouteCounters, String>)> {
    targets
        .iter()
        .filter_map(|t| Some((*t, t.admin_port()?)))
        .map(|(t, port)| {
            let counters = admin_get(port, "/routes").and_then(|doc| {
                println!("admin /routes of {}:\n{}", t.name, serde_json::to_string_pretty(&doc)?);
                RouteCounters::parse(&doc, ROUTE)
            });
            (t, counters.map_err(|e| format!("{e:#}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::admin::json_body;
    use crate::bench::compare::ports;
    use crate::bench::configs::sluice_conf;
    use crate::bench::processes::{SLUICE, SLUICE_ADMIN, UPSTREAM};

    #[test]
    fn both_sluice_configs_parse() {
        use sluice_bundle::{Format, parse};
        for text in [sluice_conf(SLUICE_ALL), all_features_conf(SLUICE_ALL)] {
            if let Err(e) = parse(text.as_bytes(), Format::Yaml) {
                panic!("{e}\n{text}");
            }
        }
        let all = parse(all_features_conf(SLUICE_ALL).as_bytes(), Format::Yaml).unwrap();
        let route = &all.routes[0];
        assert!(route.retries.is_some() && route.hedge.is_some() && route.rate_limit.is_some());
        assert!(route.max_request_body.is_some());
        let pool = &all.pools[0];
        assert!(pool.health_check.is_some() && pool.circuit_breaker.is_some());
        assert!(pool.outlier_detection.is_some() && all.listeners[0].overload.is_some());
        assert_eq!(DEFAULTS.sluice_config(), PLAIN.sluice_config());
    }

    #[test]
    fn every_port_is_checked_free() {
        assert_eq!(
            ports(&Resilience::default()),
            [UPSTREAM, SLUICE, SLUICE_ALL, SLUICE_ADMIN, SLUICE_ALL_ADMIN]
        );
    }

    #[test]
    fn reads_route_counters() {
        let response = "HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1\r\n\r\n\
            {\"routes\":[{\"name\":\"other\",\"retries\":9},{\"name\":\"all\",\"pool\":\"upstream\",\
            \"retries\":3,\"retries_denied\":1,\"retry_window\":{\"requests\":10,\"retries\":0},\
            \"hedges\":42,\"hedges_won\":7,\"p95_ms\":0.5,\"rate_limited\":0}]}";
        let c = RouteCounters::parse(&json_body(response).unwrap(), "all").unwrap();
        let want = RouteCounters {
            retries: 3,
            retries_denied: 1,
            hedges: 42,
            hedges_won: 7,
            rate_limited: 0,
            p95_ms: Some(0.5),
        };
        assert_eq!(c, want);
        let no_p95 = serde_json::json!({"routes": [{"name": "all", "retries": 0, "retries_denied": 0,
            "hedges": 0, "hedges_won": 0, "p95_ms": null, "rate_limited": 0}]});
        assert_eq!(RouteCounters::parse(&no_p95, "all").unwrap().p95_ms, None);
        assert!(RouteCounters::parse(&no_p95, "missing").is_err());
    }
}
