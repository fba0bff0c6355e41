//! The admin listener: liveness, readiness, the active config, and the live state of pools
//! (breakers, endpoint health), routes (retries, hedges, rate limits) and listeners (overload),
//! on its own port.
//!
//! `/livez` and `/readyz` are always open (kubelet probes). Everything else needs the admin
//! token when one is configured; `main` refuses to bind beyond loopback without one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_bundle::time::rfc3339_secs;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

mod auth;
pub(crate) mod cache;
mod traffic;

use sluice_tls::{ServerFiles, Watched};

use crate::metrics::{Encoder, Histogram};
use crate::resilience::outlier::EndpointHealth;
use crate::resilience::retry::HEDGE_MIN_SAMPLES;
use crate::state::Shared;
use crate::sync::lock;
use tokio::time::Instant;

/// Binds the admin listener and serves it (over TLS with `tls`) until the process exits.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    address: SocketAddr,
    tls: Option<Arc<Watched<ServerFiles>>>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let (shared, tls) = (shared.clone(), tls.clone());
            tokio::spawn(async move {
                let io = match sluice_tls::server::accept(tcp, tls.as_ref()).await {
                    Ok(io) => io,
                    Err(e) => {
                        return tracing::debug!(%peer, error = %e, "admin listener: TLS handshake failed");
                    }
                };
                let svc = service_fn(move |req| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(handle(&shared, &req)) }
                });
                let mut http = http1::Builder::new();
                http.timer(TokioTimer::new()).header_read_timeout(std::time::Duration::from_secs(10));
                let _ = http.serve_connection(TokioIo::new(io), svc).await;
            });
        }
    });
    tracing::info!(address = %bound, "admin listener serving");
    Ok(bound)
}

fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let toggle = matches!(path, "/shadow/enable" | "/shadow/disable" | "/cache/purge");
    if toggle && req.method() != Method::POST {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": format!("{path} takes POST")}),
        );
    }
    if !toggle && req.method() != Method::GET && req.method() != Method::HEAD {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "admin endpoints are read-only, except POST /shadow/enable, /shadow/disable and /cache/purge"}),
        );
    }
    match path {
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(shared),
        _ if !authorized(shared, req) => {
            let mut resp = json_response(StatusCode::UNAUTHORIZED, &json!({"error": "admin token required"}));
            resp.headers_mut().insert("www-authenticate", HeaderValue::from_static("Bearer"));
            resp
        }
        "/" => text(
            StatusCode::OK,
            "sluice-proxy admin\n  /livez      process is up\n  /readyz     a config is active and not draining\n  /config     active config and its origin\n  /pools      breakers and endpoint health (ejections, checks)\n  /routes     retries, hedges and rate limiting per route\n  /listeners  overload protection per listener\n  /canary     traffic by variant, canary brakes\n  /shadow     mirroring, response diffs, guardrails\n  POST /shadow/disable?route=R, /shadow/enable?route=R   turn a route's mirroring off or on\n  /cache      response caches per route\n  POST /cache/purge?route=R[&path=P|&prefix=P]   remove a route's stored responses\n  /metrics    Prometheus metrics\n",
        ),
        "/canary" => json_response(StatusCode::OK, &traffic::canary(shared)),
        "/shadow" => json_response(StatusCode::OK, &traffic::shadow(shared)),
        "/shadow/enable" => traffic::set_mirroring(shared, req.uri().query(), true),
        "/shadow/disable" => traffic::set_mirroring(shared, req.uri().query(), false),
        "/config" => json_response(StatusCode::OK, &config(shared)),
        "/pools" => json_response(StatusCode::OK, &pools(shared)),
        "/routes" => json_response(StatusCode::OK, &routes(shared)),
        "/listeners" => json_response(StatusCode::OK, &listeners(shared)),
        "/cache" => json_response(StatusCode::OK, &cache::view(shared)),
        "/cache/purge" => cache::purge(shared, req.uri().query()),
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(metrics(shared))));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            resp
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": format!("no admin endpoint {path}")})),
    }
}

fn readyz(shared: &Shared) -> Response<Full<Bytes>> {
    if shared.draining.load(Ordering::SeqCst) {
        text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if shared.serving.snapshot.load().is_none() {
        text(StatusCode::SERVICE_UNAVAILABLE, "no config active\n")
    } else {
        // Stale freshness does not make it unready: draining a fleet because its control plane
        // is away would turn an outage of config into an outage of traffic.
        let now = unix_now();
        match shared.freshness.expires() {
            Some(at) if at <= now => text(
                StatusCode::OK,
                format!(
                    "ready; stale: no freshness statement vouches for the active bundle since {} (none renewed by the control plane)\n",
                    rfc3339_secs(at)
                ),
            ),
            _ => text(StatusCode::OK, "ready\n"),
        }
    }
}

fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let Some(token) = &shared.admin_token else {
        return true;
    };
    let Some(given) = req.headers().get(AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    // Constant time in the token's length, so response timing does not leak a prefix.
    given.len() == token.len()
        && given.iter().zip(token.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The active version, where it came from, what it contains and the latest change attempt.
fn config(shared: &Shared) -> Value {
    let status = lock(&shared.status).clone();
    let listeners: Vec<Value> = shared
        .listeners
        .addresses()
        .into_iter()
        .map(|(name, bound)| json!({"name": name, "bound": bound.to_string()}))
        .collect();
    let last_attempt = json!({
        "at": status.last_attempt.map(rfc3339),
        "accepted": status.last_errors.is_empty(),
        "errors": status.last_errors,
    });
    let Some(snap) = shared.serving.snapshot.load_full() else {
        return json!({"active": null, "listeners": listeners, "last_attempt": last_attempt});
    };
    let pools: Vec<Value> = snap
        .pools
        .iter()
        .map(|p| {
            json!({
                "name": &*p.name,
                "balancer": p.balancer.as_str(),
                "protocol": p.protocol().as_str(),
                "endpoints": p.endpoints.iter().map(|e| json!({
                    "address": &*e.address,
                    "weight": e.weight,
                    "in_flight": e.state.in_flight(),
                    "idle_connections": e.state.idle_connections(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "active": {
            "version": snap.meta.version,
            "source": snap.meta.source,
            "sha256": snap.meta.sha256,
            "loaded_at": rfc3339(snap.meta.loaded_at),
        },
        "listeners": listeners,
        "pools": pools,
        "routes": snap.config.routes,
        "worker_connections": shared.workers.connections(),
        "last_attempt": last_attempt,
        "draining": shared.draining.load(Ordering::SeqCst),
    })
}

/// Each pool's breaker and each endpoint's health, as the request path sees them now.
fn pools(shared: &Shared) -> Value {
    let Some(snap) = shared.serving.snapshot.load_full() else {
        return json!({"pools": []});
    };
    let now = Instant::now();
    let pools: Vec<Value> = snap
        .pools
        .iter()
        .map(|p| {
            let b = p.breaker.status(now);
            let [max_connections, max_pending, max_requests, max_retries] = b.limits;
            let breaker = json!({
                "state": b.state,
                "open_for_ms": b.open_for.filter(|_| b.state == "open").map(|d| d.as_millis() as u64),
                "trips": b.trips,
                "rejected": b.rejected,
                "last_trip": b.last_trip.map(|t| json!({"reason": t.reason, "at": rfc3339(t.at)})),
                "in_progress": {
                    "requests": b.active_requests,
                    "pending": b.pending,
                    "connections": b.connections,
                    "retries": b.active_retries,
                },
                "limits": {
                    "max_connections": max_connections,
                    "max_pending_requests": max_pending,
                    "max_requests": max_requests,
                    "max_retries": max_retries,
                },
                "window": b.window.map(|(requests, failures)| json!({"requests": requests, "failures": failures})),
            });
            let checked = p.health_check_configured();
            let endpoints: Vec<Value> = p
                .endpoints
                .iter()
                .map(|e| {
                    let h = &e.state.health;
                    let d = h.detail();
                    let state = endpoint_state(h);
                    json!({
                        "address": &*e.address,
                        "weight": e.weight,
                        "state": state,
                        "in_flight": e.state.in_flight(),
                        "idle_connections": e.state.idle_connections(),
                        "consecutive_failures": h.consecutive_failures(),
                        "ejected_for_ms": d.ejected_until
                            .filter(|_| h.is_ejected())
                            .map(|u| u.saturating_duration_since(now).as_millis() as u64),
                        "ejections": d.ejections,
                        "last_ejection": d.last_ejection.map(|(reason, at)| json!({"reason": reason, "at": rfc3339(at)})),
                        "health_check": checked.then(|| json!({
                            "passes_in_row": d.check.passes_in_row,
                            "failures_in_row": d.check.failures_in_row,
                            "last": d.check.last.map(|(passed, detail, at)| {
                                json!({"passed": passed, "detail": detail, "at": rfc3339(at)})
                            }),
                        })),
                    })
                })
                .collect();
            let tls = p.settings.tls.as_ref().map(|t| {
                json!({"verify": t.verifies(), "sni": t.sni(), "client_certificate": t.presents_certificate()})
            });
            json!({"name": &*p.name, "breaker": breaker, "tls": tls, "endpoints": endpoints})
        })
        .collect();
    json!({"pools": pools})
}

/// Each route's retry, hedge and rate-limit counters since the route first appeared.
fn routes(shared: &Shared) -> Value {
    let Some(snap) = shared.serving.snapshot.load_full() else {
        return json!({"routes": []});
    };
    let now = Instant::now();
    let routes: Vec<Value> = snap
        .routes
        .iter()
        .map(|r| {
            let rt = &r.runtime;
            let b = &rt.budgets;
            let (requests, retries) = b.retry_window(now);
            json!({
                "name": &*r.name,
                "pool": r.pool.map(|p| &*snap.pools[p].name),
                "retries": b.retries_total.load(Ordering::Relaxed),
                "retries_denied": b.retries_denied.load(Ordering::Relaxed),
                "retry_window": {"requests": requests, "retries": retries},
                "hedges": b.hedges_total.load(Ordering::Relaxed),
                "hedges_won": b.hedges_won.load(Ordering::Relaxed),
                "p95_ms": rt.latency.p95(now, HEDGE_MIN_SAMPLES).map(|d| d.as_secs_f64() * 1000.0),
                "rate_limited": rt.rate.limited_total.load(Ordering::Relaxed),
            })
        })
        .collect();
    json!({"routes": routes})
}

/// Each listener's overload protection: what is in progress and queued, and what was shed.
fn listeners(shared: &Shared) -> Value {
    let tls = shared.listeners.tls();
    let listeners: Vec<Value> = shared
        .listeners
        .states()
        .into_iter()
        .map(|(name, bound, state)| {
            let l = &state.limiter;
            let (in_progress, queued, max) = l.status();
            let tls = tls.iter().find(|(n, ..)| *n == name).map(|(_, state, edge)| listener_tls(state, edge));
            json!({
                "name": name,
                "address": bound.to_string(),
                "in_progress": in_progress,
                "queued": queued,
                "max_concurrent_requests": (max > 0).then_some(max),
                "shed": l.shed_total.load(Ordering::Relaxed),
                "tls": tls,
            })
        })
        .collect();
    json!({"listeners": listeners})
}

/// A TLS listener's certificates (as in use now) and its handshakes.
fn listener_tls(state: &crate::listener::ListenerState, edge: &crate::listener::tls::EdgeTls) -> Value {
    let certificates: Vec<Value> = edge
        .certificates()
        .into_iter()
        .map(|c| {
            json!({
                "cert_file": c.status.cert_file.map(|p| p.to_string_lossy().into_owned()),
                "server_names": c.server_names,
                "dns_names": c.cert.dns,
                "subject": c.cert.subject,
                "not_after": rfc3339_secs(c.cert.not_after),
                "default": c.default,
                "client_auth": c.client_auth,
                "reloads": c.status.reloads,
                "reload_failures": c.status.failures,
            })
        })
        .collect();
    let handshakes: serde_json::Map<String, Value> =
        state.tls.handshakes().into_iter().map(|(v, n)| (v.to_owned(), n.into())).collect();
    let failures: serde_json::Map<String, Value> =
        state.tls.failures().filter(|(_, n)| *n > 0).map(|(r, n)| (r.to_owned(), n.into())).collect();
    json!({"certificates": certificates, "handshakes": handshakes, "handshake_failures": failures})
}

/// The Prometheus exposition of everything above, plus request counts and durations. Read at
/// scrape time from the same atomics the request path updates.
fn metrics(shared: &Shared) -> String {
    let mut e = Encoder::new();
    let snap = shared.serving.snapshot.load_full();
    let now = Instant::now();
    let listeners = shared.listeners.states();

    e.family("sluice_listener_requests_total", "counter", "Responses sent by a listener, by status class.");
    for (name, _, l) in &listeners {
        e.status_counts(&[("listener", name)], &l.stats.requests);
    }
    e.family(
        "sluice_listener_errors_total",
        "counter",
        "Answers the proxy made itself (no upstream response), by listener and error category.",
    );
    for (name, _, l) in &listeners {
        for (category, n) in l.errors.iter() {
            e.sample(&[("listener", name), ("category", category)], n as f64);
        }
    }
    e.family(
        "sluice_listener_request_duration_seconds",
        "histogram",
        "From a request's arrival to the end of its response, by listener.",
    );
    for (name, _, l) in &listeners {
        e.histogram(&[("listener", name)], &l.stats.duration);
    }
    e.family("sluice_listener_requests_in_progress", "gauge", "Requests being served by a listener.");
    for (name, _, l) in &listeners {
        e.sample(&[("listener", name)], f64::from(l.limiter.status().0));
    }
    e.family("sluice_listener_requests_queued", "gauge", "Requests waiting for an overload slot.");
    for (name, _, l) in &listeners {
        e.sample(&[("listener", name)], f64::from(l.limiter.status().1));
    }
    e.family("sluice_listener_shed_total", "counter", "Requests refused with 503 by overload protection.");
    for (name, _, l) in &listeners {
        e.sample(&[("listener", name)], l.limiter.shed_total.load(Ordering::Relaxed) as f64);
    }
    e.family(
        "sluice_listener_connections_refused_total",
        "counter",
        "Connections closed as they arrived: per_client_limit (max_connections_per_client reached), \
         proxy_protocol (no valid PROXY protocol header).",
    );
    for (name, _, l) in &listeners {
        for (reason, n) in
            [("per_client_limit", &l.refused.per_client_limit), ("proxy_protocol", &l.refused.proxy_protocol)]
        {
            e.sample(&[("listener", name), ("reason", reason)], n.load(Ordering::Relaxed) as f64);
        }
    }

    let routes = snap.as_ref().map_or(&[][..], |s| &s.routes[..]);
    // A route that answers itself has no pool: its samples carry `pool=""`.
    let pool_of =
        |r: &crate::snapshot::RouteEntry| snap.as_ref().zip(r.pool).map_or("", |(s, p)| &*s.pools[p].name);
    e.family("sluice_requests_total", "counter", "Responses to requests a route matched, by status class.");
    for r in routes {
        e.status_counts(&[("route", &r.name), ("pool", pool_of(r))], &r.runtime.metrics.requests);
    }
    e.family(
        "sluice_request_duration_seconds",
        "histogram",
        "From a request's arrival to the end of its response, by route.",
    );
    for r in routes {
        e.histogram(&[("route", &r.name), ("pool", pool_of(r))], &r.runtime.metrics.duration);
    }
    let counter =
        |e: &mut Encoder, name: &str, help: &str, get: &dyn Fn(&crate::snapshot::RouteEntry) -> u64| {
            e.family(name, "counter", help);
            for r in routes {
                e.sample(&[("route", &r.name)], get(r) as f64);
            }
        };
    counter(&mut e, "sluice_retries_total", "Retries sent.", &|r| {
        r.runtime.budgets.retries_total.load(Ordering::Relaxed)
    });
    counter(
        &mut e,
        "sluice_retries_denied_total",
        "Retries refused by the retry budget or the breaker.",
        &|r| r.runtime.budgets.retries_denied.load(Ordering::Relaxed),
    );
    counter(&mut e, "sluice_hedges_total", "Hedged second tries sent.", &|r| {
        r.runtime.budgets.hedges_total.load(Ordering::Relaxed)
    });
    counter(&mut e, "sluice_hedges_won_total", "Hedged tries that answered first.", &|r| {
        r.runtime.budgets.hedges_won.load(Ordering::Relaxed)
    });
    counter(
        &mut e,
        "sluice_rate_limited_total",
        "Requests refused with 429 by the route's rate limit.",
        &|r| r.runtime.rate.limited_total.load(Ordering::Relaxed),
    );
    counter(
        &mut e,
        "sluice_upgrades_total",
        "WebSocket connections the route passed through (101 answers); each is counted in the \
         request metrics once it closes.",
        &|r| r.runtime.upgrades.load(Ordering::Relaxed),
    );
    traffic::metrics(&mut e, snap.as_deref());
    auth::metrics(&mut e, snap.as_deref());
    cache::metrics(&mut e, snap.as_deref());

    let pools = snap.as_ref().map_or(&[][..], |s| &s.pools[..]);
    e.family(
        "sluice_upstream_requests_total",
        "counter",
        "Tries that got a response from an endpoint, by status class.",
    );
    for p in pools {
        for ep in &p.endpoints {
            e.status_counts(&[("pool", &p.name), ("endpoint", &ep.address)], &ep.state.metrics.responses);
        }
    }
    e.family(
        "sluice_upstream_failures_total",
        "counter",
        "Tries that got no response: connect failure or timeout, reset, response timeout.",
    );
    for p in pools {
        for ep in &p.endpoints {
            let labels = [("pool", &*p.name), ("endpoint", &*ep.address)];
            e.sample(&labels, ep.state.metrics.failures.load(Ordering::Relaxed) as f64);
        }
    }
    e.family(
        "sluice_upstream_request_duration_seconds",
        "histogram",
        "Time from sending a try to its response headers, by pool.",
    );
    for p in pools {
        let merged = Histogram::default();
        for ep in &p.endpoints {
            merged.add(&ep.state.metrics.duration);
        }
        e.histogram(&[("pool", &p.name)], &merged);
    }
    e.family("sluice_pool_endpoints", "gauge", "Endpoints of a pool by state (healthy, ejected, unhealthy).");
    for p in pools {
        for state in ENDPOINT_STATES {
            let n = p.endpoints.iter().filter(|ep| endpoint_state(&ep.state.health) == state).count();
            e.sample(&[("pool", &p.name), ("state", state)], n as f64);
        }
    }
    e.family(
        "sluice_circuit_breaker_state",
        "gauge",
        "1 for the state a pool's breaker is in (closed, open, half_open).",
    );
    let statuses: Vec<_> = pools.iter().map(|p| p.breaker.status(now)).collect();
    for (p, b) in pools.iter().zip(&statuses) {
        for state in ["closed", "open", "half_open"] {
            let v = if b.state == state { 1.0 } else { 0.0 };
            e.sample(&[("pool", &p.name), ("state", state)], v);
        }
    }
    e.family("sluice_circuit_breaker_trips_total", "counter", "Times a pool's breaker opened.");
    for (p, b) in pools.iter().zip(&statuses) {
        e.sample(&[("pool", &p.name)], b.trips as f64);
    }
    e.family(
        "sluice_circuit_breaker_rejected_total",
        "counter",
        "Requests refused with 503 by a pool's breaker.",
    );
    for (p, b) in pools.iter().zip(&statuses) {
        e.sample(&[("pool", &p.name)], b.rejected as f64);
    }

    e.family("sluice_config_version", "gauge", "Version of the active config (0: none).");
    e.sample(&[], snap.as_ref().map_or(0.0, |s| s.meta.version as f64));
    e.family(
        "sluice_config_last_applied_timestamp_seconds",
        "gauge",
        "When the active config was applied, in seconds since the epoch.",
    );
    let applied_at = snap.as_ref().and_then(|s| s.meta.loaded_at.duration_since(UNIX_EPOCH).ok());
    e.sample(&[], applied_at.map_or(0.0, |d| d.as_secs_f64()));
    e.family("sluice_config_changes_total", "counter", "Configs applied and refused (NACKed) since start.");
    e.sample(&[("result", "applied")], shared.applied.load(Ordering::Relaxed) as f64);
    e.sample(&[("result", "refused")], shared.refused.load(Ordering::Relaxed) as f64);
    e.family(
        "sluice_access_log_lines_total",
        "counter",
        "Access-log lines made, handed to the writer, and dropped when it fell behind (the rest wait in a batch, up to a second).",
    );
    let log = &shared.serving.access_log;
    e.sample(&[("result", "logged")], log.logged.load(Ordering::Relaxed) as f64);
    e.sample(&[("result", "written")], log.written.load(Ordering::Relaxed) as f64);
    e.sample(&[("result", "dropped")], log.dropped.load(Ordering::Relaxed) as f64);
    e.family("sluice_worker_connections", "gauge", "Client connections open per worker thread.");
    for (i, n) in shared.workers.connections().iter().enumerate() {
        e.sample(&[("worker", &i.to_string())], *n as f64);
    }
    if let Some(at) = shared.freshness.expires() {
        e.family(
            "sluice_bundle_freshness_expiry_timestamp_seconds",
            "gauge",
            "When the active bundle's freshness statement lapses (Unix seconds): renewed every quarter of its lifetime while the control plane is reachable.",
        );
        e.sample(&[], at as f64);
        e.family(
            "sluice_bundle_freshness_stale",
            "gauge",
            "1 while no current freshness statement vouches for the active bundle.",
        );
        e.sample(&[], if at <= unix_now() { 1.0 } else { 0.0 });
    }
    e.family(
        "sluice_bundle_freshness_rejected_total",
        "counter",
        "Freshness statements refused, by reason (missing, signature, malformed, other_version, lapsed, future).",
    );
    for (reason, n) in shared.freshness.rejected() {
        e.sample(&[("reason", reason)], n as f64);
    }
    e.family(
        "sluice_trust_set_version",
        "gauge",
        "The root-signed trusted-key set in force (0: the --trusted-keys file).",
    );
    e.sample(&[], shared.freshness.trust_version() as f64);
    e.family(
        "sluice_trust_set_rejected_total",
        "counter",
        "Trust sets refused: too few root signatures, malformed, or not above the one in force.",
    );
    e.sample(&[], shared.freshness.trust_rejected() as f64);
    e.family(
        "sluice_http2_limit_hits_total",
        "counter",
        "Times an HTTP/2 peer ran into one of the proxy's abuse limits (refused stream, 431, or the connection ended with ENHANCE_YOUR_CALM), by limit; all HTTP/2 connections of the process.",
    );
    for (limit, n) in h2::sluice::hits() {
        e.sample(&[("limit", limit)], n as f64);
    }
    let tls_listeners = shared.listeners.tls();
    e.family(
        "sluice_tls_handshakes_total",
        "counter",
        "TLS handshakes completed on a listener, by protocol version.",
    );
    for (name, state, _) in &tls_listeners {
        for (version, n) in state.tls.handshakes() {
            e.sample(&[("listener", name), ("version", version)], n as f64);
        }
    }
    e.family(
        "sluice_tls_handshake_failures_total",
        "counter",
        "TLS handshakes on a listener that failed, by reason (not_tls, malformed, protocol_version, no_shared_parameters, client_certificate_missing, client_certificate_invalid, alert_received, closed, timeout, other).",
    );
    for (name, state, _) in &tls_listeners {
        for (reason, n) in state.tls.failures() {
            e.sample(&[("listener", name), ("reason", reason)], n as f64);
        }
    }
    let mut watched: Vec<_> = lock(&shared.tls).iter().map(|w| (None, w.status())).collect();
    for (name, _, tls) in &tls_listeners {
        watched.extend(tls.statuses().map(|s| (Some(("listener", name.clone())), s)));
    }
    watched.extend(shared.pools.tls_status().into_iter().map(|(pool, s)| (Some(("pool", pool)), s)));
    crate::metrics::tls_families(&mut e, &watched);
    e.finish()
}

const ENDPOINT_STATES: [&str; 3] = ["healthy", "ejected", "unhealthy"];

/// An endpoint's state as `/pools` and `/metrics` name it: failing its active checks wins over
/// being ejected by outlier detection.
fn endpoint_state(h: &EndpointHealth) -> &'static str {
    if h.is_check_failed() {
        "unhealthy"
    } else if h.is_ejected() {
        "ejected"
    } else {
        "healthy"
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_vec_pretty(body).unwrap_or_default();
    text.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn rfc3339(t: SystemTime) -> String {
    rfc3339_secs(t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0))
}
