//! The routes' response caches in `/metrics` and `/cache`, and purging them
//! (`POST /cache/purge?route=R[&path=P | &prefix=P]`, what `sluice cache purge` reaches every data
//! plane of a fleet with).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};

use super::json_response;
use crate::cache::{NotStored, Outcome, RouteCache};
use crate::metrics::Encoder;
use crate::snapshot::Snapshot;
use crate::state::Shared;

pub(super) fn metrics(e: &mut Encoder, snap: Option<&Snapshot>) {
    let routes = snap.map_or(&[][..], |s| &s.routes[..]);
    let cached = || routes.iter().filter_map(|r| Some((&*r.name, r.cache.as_deref()?)));
    e.family(
        "sluice_cache_requests_total",
        "counter",
        "Requests of routes with a cache, by result: hit, miss, stale (served stale), revalidated \
         (a 304 confirmed the stored object), bypass (not looked up: method, range, authorization), \
         coalesced (answered after waiting for another request's fetch).",
    );
    for (name, c) in cached() {
        for o in Outcome::ALL {
            e.sample(
                &[("route", name), ("result", o.name())],
                c.stats.results[o as usize].load(Ordering::Relaxed) as f64,
            );
        }
    }
    e.family(
        "sluice_cache_not_stored_total",
        "counter",
        "Upstream answers of cached routes passed through without being stored, by reason.",
    );
    for (name, c) in cached() {
        for why in NotStored::ALL {
            e.sample(
                &[("route", name), ("reason", why.name())],
                c.stats.not_stored[why as usize].load(Ordering::Relaxed) as f64,
            );
        }
    }
    e.family(
        "sluice_cache_bytes",
        "gauge",
        "Bytes a route's cache holds (bodies, fields, keys and overhead).",
    );
    for (name, c) in cached() {
        e.sample(&[("route", name)], c.weight() as f64);
    }
    e.family(
        "sluice_cache_capacity_bytes",
        "gauge",
        "Bytes a route's cache may hold (its share of --cache-memory).",
    );
    for (name, c) in cached() {
        e.sample(&[("route", name)], c.capacity() as f64);
    }
    e.family("sluice_cache_objects", "gauge", "Entries in a route's cache (objects and Vary markers).");
    for (name, c) in cached() {
        e.sample(&[("route", name)], c.len() as f64);
    }
    e.family(
        "sluice_cache_evictions_total",
        "counter",
        "Entries evicted to stay within a route's cache capacity.",
    );
    for (name, c) in cached() {
        e.sample(&[("route", name)], c.stats.evictions.load(Ordering::Relaxed) as f64);
    }
    e.family(
        "sluice_cache_invalidations_total",
        "counter",
        "Entries removed by unsafe requests (POST, PUT, DELETE, …) and purges.",
    );
    for (name, c) in cached() {
        e.sample(&[("route", name)], c.stats.invalidations.load(Ordering::Relaxed) as f64);
    }
}

/// `GET /cache`: each cached route's size and counters.
pub(super) fn view(shared: &Shared) -> Value {
    let snap = shared.serving.snapshot.load_full();
    let routes: Vec<Value> = snap
        .as_deref()
        .map(|s| {
            s.routes
                .iter()
                .filter_map(|r| {
                    let c = r.cache.as_deref()?;
                    let results: serde_json::Map<String, Value> = Outcome::ALL
                        .iter()
                        .map(|o| {
                            (o.name().to_owned(), json!(c.stats.results[*o as usize].load(Ordering::Relaxed)))
                        })
                        .collect();
                    Some(json!({
                        "route": &*r.name,
                        "bytes": c.weight(),
                        "capacity_bytes": c.capacity(),
                        "objects": c.len(),
                        "evictions": c.stats.evictions.load(Ordering::Relaxed),
                        "results": results,
                    }))
                })
                .collect()
        })
        .unwrap_or_default();
    json!({ "routes": routes })
}

/// `POST /cache/purge?route=R[&path=P | &prefix=P]` (values percent-encoded): removes what the
/// route's cache holds for exactly `path` (with any query), under `prefix`, or everything.
pub(super) fn purge(shared: &Shared, query: Option<&str>) -> Response<Full<Bytes>> {
    let mut route = None;
    let mut path = None;
    let mut prefix = None;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(v) = percent_decode(v) else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": format!("{k}: bad percent-encoding")}),
            );
        };
        match k {
            "route" => route = Some(v),
            "path" => path = Some(v),
            "prefix" => prefix = Some(v),
            _ => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": format!("unknown parameter `{k}`: route, path or prefix")}),
                );
            }
        }
    }
    let Some(route) = route.filter(|r| !r.is_empty()) else {
        return json_response(StatusCode::BAD_REQUEST, &json!({"error": "name the route: ?route=NAME"}));
    };
    if path.is_some() && prefix.is_some() {
        return json_response(StatusCode::BAD_REQUEST, &json!({"error": "give path or prefix, not both"}));
    }
    for (k, v) in [("path", &path), ("prefix", &prefix)] {
        if v.as_ref().is_some_and(|v| !v.starts_with('/')) {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": format!("{k} must start with /")}),
            );
        }
    }
    match purge_route(shared, &route, path.as_deref(), prefix.as_deref()) {
        Ok(removed) => json_response(StatusCode::OK, &json!({"route": route, "removed": removed})),
        Err(e @ PurgeError::NoRoute) => {
            json_response(StatusCode::NOT_FOUND, &json!({"error": e.message(&route)}))
        }
        Err(e @ PurgeError::NoCache) => {
            json_response(StatusCode::CONFLICT, &json!({"error": e.message(&route)}))
        }
    }
}

/// Why a purge found nothing to purge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PurgeError {
    NoRoute,
    NoCache,
}

impl PurgeError {
    pub fn message(self, route: &str) -> String {
        match self {
            Self::NoRoute => format!("no route `{route}`"),
            Self::NoCache => format!("route `{route}` has no cache"),
        }
    }
}

/// Removes what the active config's route `route` stored for exactly `path` (with any query),
/// under `prefix`, or everything: for the admin listener and the control plane's fleet purge.
pub(crate) fn purge_route(
    shared: &Shared,
    route: &str,
    path: Option<&str>,
    prefix: Option<&str>,
) -> Result<usize, PurgeError> {
    let snap = shared.serving.snapshot.load_full();
    let entry = snap
        .as_deref()
        .and_then(|s| s.routes.iter().find(|r| &*r.name == route))
        .ok_or(PurgeError::NoRoute)?;
    let cache = entry.cache.as_deref().ok_or(PurgeError::NoCache)?;
    let removed = purge_cache(cache, path, prefix);
    tracing::info!(route, path, prefix, removed, "cache purged");
    Ok(removed)
}

fn purge_cache(cache: &RouteCache, path: Option<&str>, prefix: Option<&str>) -> usize {
    cache.purge(path.map(str::as_bytes), prefix.map(str::as_bytes))
}

/// `%XX` decoded, `+` kept as it is (paths, not forms). `None`: a broken escape or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%2Fa%3Fb%3D1").as_deref(), Some("/a?b=1"));
        assert_eq!(percent_decode("/x+y").as_deref(), Some("/x+y"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
