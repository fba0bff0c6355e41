//! Limits: the matched route's policies ([`check`]: HTTPS only (a redirect), the client
//! certificate, rate limit, JWT, body size), then, once the body's start has been read, the pool's
//! breaker ([`admit`], which may make this request a half-open probe).
//!
//! Refuses or lets through; it may not change the request. New per-route policies (JWT, IP
//! allow-lists, header rules that refuse) go in `check`, before the breaker, so a refused request
//! never counts against the pool.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, Request};
use hyper::body::Body as _;

use crate::body::ClientBody;
use tokio::time::Instant;

use super::context::{Connection, Record, Trail};
use super::route::Routed;
use crate::auth::jwt::{Verified, unix_now};
use crate::error::ProxyError;
use crate::resilience::breaker::{Admitted, Refusal};
use crate::resilience::limit::RateDecision;
use crate::snapshot::{RouteEntry, RouteRateLimit};
use crate::transform::RedirectPlan;
use crate::upstream::{Inputs, Pool};
use http::HeaderValue;

/// A request the limits let through.
pub(super) struct Passed {
    /// The rate limit's verdict, for the response's `RateLimit-*` headers.
    pub rate: Option<RateDecision>,
    /// Its place in the pool's breaker, held until the response is done.
    pub admitted: Admitted,
}

/// What the route's policies found: the rate limit's verdict and the verified token.
pub(super) struct Checks {
    pub rate: Option<RateDecision>,
    pub jwt: Option<Arc<Verified>>,
}

/// The route's policies, for the request `record` describes (its arrival is the rate limit's
/// clock). The rate limit comes before the JWT check, as nginx's `limit_req` comes before its
/// access phase: a flood of forged tokens costs signature checks only up to the limit.
pub(super) fn check(
    conn: &Connection,
    route: &RouteEntry,
    host: Option<&HeaderValue>,
    req: &Request<ClientBody>,
    record: &Record,
) -> Result<Checks, ProxyError> {
    if route.require_tls && !record.https {
        return Err(require_tls(host, req));
    }
    if let Some(rule) = &route.client_certificate {
        rule.check(conn.tls.as_deref()).map_err(ProxyError::ClientCertificate)?;
    }
    let rate = match &route.rate_limit {
        None => None,
        Some(RouteRateLimit { limit, key, .. }) => {
            let inputs = Inputs { headers: req.headers(), client_ip: record.client };
            // Requests without the key's header or cookie share one bucket (key 0).
            let key = key.as_ref().map(|k| k.hash(&inputs).unwrap_or(0));
            let d = route.runtime.rate.check(limit, key, record.start);
            if !d.allowed {
                return Err(ProxyError::RateLimited {
                    limit: d.limit,
                    reset: d.reset_secs,
                    retry_after: d.reset_secs,
                });
            }
            Some(d)
        }
    };
    let jwt = match &route.jwt {
        None => None,
        Some(policy) => {
            let result = policy.check(req.headers(), unix_now());
            route.runtime.jwt.count(result.as_ref().map(|_| ()).map_err(|e| *e));
            let (verified, cached) = result.map_err(ProxyError::Unauthorized)?;
            if cached {
                route.runtime.jwt.cached.fetch_add(1, Ordering::Relaxed);
            }
            Some(verified)
        }
    };
    if req.body().size_hint().lower() > route.max_body {
        return Err(ProxyError::PayloadTooLarge { limit: route.max_body });
    }
    Ok(Checks { rate, jwt })
}

/// A place in the pool's breaker, held until the response is done.
pub(super) fn admit(routed: &Routed<'_>, now: Instant, trail: &mut Trail) -> Result<Admitted, ProxyError> {
    let admitted = routed.pool.breaker.admit(now).map_err(|r| circuit_open(routed.pool, r, now))?;
    trail.probe = admitted.probe;
    Ok(admitted)
}

/// The redirect of a plain-HTTP request to the same host and target over HTTPS (port 443: the
/// port a TLS listener is reached on from outside is not known here). GET and HEAD get 301,
/// others 308, which keeps method and body.
fn require_tls(host: Option<&HeaderValue>, req: &Request<ClientBody>) -> ProxyError {
    let host = host.and_then(|h| h.to_str().ok());
    match RedirectPlan::to_https().location(req.uri(), host, false) {
        Some(location) => ProxyError::RequireTls {
            location: location.into(),
            permanent: matches!(*req.method(), Method::GET | Method::HEAD),
        },
        None => ProxyError::BadRequest(
            "this route is served over HTTPS only, and the request names no usable host",
        ),
    }
}

/// The 503 for a request the pool's breaker refused.
fn circuit_open(pool: &Pool, refusal: Refusal, now: Instant) -> ProxyError {
    let retry_after = match &refusal {
        Refusal::Open(_) => pool.breaker.status(now).open_for.map_or(1, |d| d.as_secs_f64().ceil() as u64),
        Refusal::Limit(..) => 1,
    };
    ProxyError::CircuitOpen {
        pool: pool.name.clone(),
        reason: refusal.to_string().into(),
        retry_after: retry_after.max(1),
    }
}
