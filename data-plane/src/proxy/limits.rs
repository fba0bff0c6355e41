//! Limits: the matched route's policies, then the pool's breaker. Rate limit, body size, the
//! breaker's admission (which may make this request a half-open probe).
//!
//! Refuses or lets through; it may not change the request. New per-route policies (JWT, IP
//! allow-lists, header rules that refuse) go here, before the breaker, so a refused request
//! never counts against the pool.

use http::Request;
use hyper::body::Body as _;

use crate::body::ClientBody;
use tokio::time::Instant;

use super::context::{Connection, Trail};
use super::route::Routed;
use crate::error::ProxyError;
use crate::resilience::breaker::{Admitted, Refusal};
use crate::resilience::limit::RateDecision;
use crate::snapshot::RouteRateLimit;
use crate::upstream::{Inputs, Pool};

/// A request the limits let through.
pub(super) struct Passed {
    /// The rate limit's verdict, for the response's `RateLimit-*` headers.
    pub rate: Option<RateDecision>,
    /// Its place in the pool's breaker, held until the response is done.
    pub admitted: Admitted,
}

pub(super) fn check(
    conn: &Connection,
    routed: &Routed<'_>,
    req: &Request<ClientBody>,
    now: Instant,
    trail: &mut Trail,
) -> Result<Passed, ProxyError> {
    let route = routed.route;
    let rate = match &route.rate_limit {
        None => None,
        Some(RouteRateLimit { limit, key, .. }) => {
            let inputs = Inputs { headers: req.headers(), client_ip: conn.peer.ip() };
            // Requests without the key's header or cookie share one bucket (key 0).
            let key = key.as_ref().map(|k| k.hash(&inputs).unwrap_or(0));
            let d = route.runtime.rate.check(limit, key, now);
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
    if req.body().size_hint().lower() > route.max_body {
        return Err(ProxyError::PayloadTooLarge { limit: route.max_body });
    }
    let admitted = routed.pool.breaker.admit(now).map_err(|r| circuit_open(routed.pool, r, now))?;
    trail.probe = admitted.probe;
    Ok(Passed { rate, admitted })
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
