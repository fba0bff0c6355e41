//! Route authentication in `/metrics`: JWT checks by outcome, each key source's loads and keys
//! (a source shared by routes is reported once), external authorization checks by result.

use std::sync::atomic::Ordering;

use crate::metrics::Encoder;
use crate::snapshot::Snapshot;

pub(super) fn metrics(e: &mut Encoder, snap: Option<&Snapshot>) {
    let routes = snap.map_or(&[][..], |s| &s.routes[..]);
    let jwt_routes = || routes.iter().filter(|r| r.jwt.is_some());
    e.family(
        "sluice_jwt_requests_total",
        "counter",
        "Requests checked by a route's jwt, by outcome: allowed, missing, malformed, unknown_key, \
         bad_signature, expired, not_yet_valid, wrong_issuer, wrong_audience, keys_unavailable.",
    );
    for r in jwt_routes() {
        for (outcome, n) in r.runtime.jwt.outcomes() {
            e.sample(&[("route", &r.name), ("outcome", outcome)], n as f64);
        }
    }
    e.family(
        "sluice_jwt_cache_hits_total",
        "counter",
        "Allowed requests whose token had been verified before (no signature check).",
    );
    for r in jwt_routes() {
        e.sample(&[("route", &r.name)], r.runtime.jwt.cached.load(Ordering::Relaxed) as f64);
    }
    let mut sources: Vec<_> = jwt_routes().filter_map(|r| r.jwt.as_ref().map(|j| &j.keys)).collect();
    sources.sort_by_key(|s| std::sync::Arc::as_ptr(s));
    sources.dedup_by_key(|s| std::sync::Arc::as_ptr(s));
    let stats: Vec<_> = sources.iter().map(|s| (&*s.name, s.stats())).collect();
    e.family(
        "sluice_jwks_loads_total",
        "counter",
        "Reads of a JWKS file (the first and each change) and fetches of a JWKS URL, by result.",
    );
    for (name, s) in &stats {
        e.sample(&[("jwks", name), ("result", "ok")], s.loaded as f64);
        e.sample(&[("jwks", name), ("result", "error")], s.failed as f64);
    }
    e.family("sluice_jwks_keys", "gauge", "Usable keys in a JWKS (0: none yet, tokens get 503).");
    for (name, s) in &stats {
        e.sample(&[("jwks", name)], s.keys as f64);
    }

    let authz_routes = || routes.iter().filter(|r| r.ext_authz.is_some());
    e.family(
        "sluice_ext_authz_checks_total",
        "counter",
        "Checks by a route's external authorization server, by result: allowed, denied, error (a \
         connection or gRPC error), timeout.",
    );
    for r in authz_routes() {
        let a = &r.runtime.authz;
        for (result, n) in
            [("allowed", &a.allowed), ("denied", &a.denied), ("error", &a.error), ("timeout", &a.timeout)]
        {
            e.sample(&[("route", &r.name), ("result", result)], n.load(Ordering::Relaxed) as f64);
        }
    }
    e.family(
        "sluice_ext_authz_fail_open_total",
        "counter",
        "Requests let through unchecked because the check failed and the route's fail_mode is open.",
    );
    for r in authz_routes() {
        e.sample(&[("route", &r.name)], r.runtime.authz.fail_open.load(Ordering::Relaxed) as f64);
    }
}
