//! Upstream pools: endpoints, how one is chosen, and the connections to them.
//!
//! Architecture invariant: what must outlive a snapshot (balancer position, per-endpoint counts,
//! pooled connections) lives in [`PoolRegistry`], keyed by pool name and endpoint address. A
//! compiled [`Pool`] only points into it, so a reload keeps that state for every name it keeps.

mod balance;
mod conn;
mod health;
mod pool;

pub use balance::{Balance, HashKey, Inputs, cookie, stable_hash};
pub use conn::{ConnSettings, Lease, SendError};
pub use pool::{Endpoint, EndpointState, InFlight, PickContext, Pool, PoolRegistry};

use crate::body::BodyError;
use crate::error::ProxyError;

/// Names what went wrong sending to an endpoint, from the error and its causes.
pub(crate) fn classify(e: &hyper::Error, endpoint: &str) -> ProxyError {
    let mut causes = std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |c| c.source());
    if let Some(body) = causes.find_map(|c| c.downcast_ref::<BodyError>()) {
        return match body {
            BodyError::TooLarge(limit) => ProxyError::PayloadTooLarge { limit: *limit },
            BodyError::Idle(d) => ProxyError::ClientTimeout(format!("request body stalled for {d:?}").into()),
            BodyError::Hyper(h) => ProxyError::DownstreamBody(h.to_string().into()),
        };
    }
    if e.is_parse() || e.is_parse_status() {
        return ProxyError::UpstreamProtocol { endpoint: endpoint.into(), reason: e.to_string().into() };
    }
    ProxyError::UpstreamReset { endpoint: endpoint.into() }
}
