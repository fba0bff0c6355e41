//! Upstream pools: endpoints, how one is chosen, and the connections to them.
//!
//! Architecture invariant: what must outlive a snapshot (balancer position, per-endpoint counts,
//! pooled connections) lives in [`PoolRegistry`], keyed by pool name and endpoint address. A
//! compiled [`Pool`] only points into it, so a reload keeps that state for every name it keeps.

mod balance;
mod conn;
mod h1;
mod health;
mod pool;
mod tls;

pub use balance::{Balance, HashKey, Inputs, stable_hash};
pub use conn::{ConnSettings, SendError};

#[doc(hidden)]
pub(crate) use h1::read_response;
pub use pool::{Endpoint, EndpointState, InFlight, PickContext, Pool, PoolRegistry};
pub use tls::PoolTls;

use http::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use sluice_bundle::UpstreamProtocol;

use crate::body::BodyError;
use crate::error::ProxyError;

/// The request target sent upstream: origin-form (`/path?query`) for HTTP/1.1; for HTTP/2 an
/// absolute URI whose authority (`:authority`) is the client's host, as `Host` is for HTTP/1.1.
pub(crate) fn upstream_uri(
    protocol: UpstreamProtocol,
    endpoint: &Endpoint,
    host: Option<&HeaderValue>,
    path: Option<&PathAndQuery>,
) -> Result<Uri, ProxyError> {
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(path.cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    if protocol == UpstreamProtocol::Http2 {
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(
            host.and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| endpoint.authority.clone()),
        );
    }
    Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))
}

/// What a failure of the client's body while it was being sent upstream means for the exchange.
pub(crate) fn request_body_failed(e: &BodyError) -> ProxyError {
    match e {
        BodyError::TooLarge(limit) => ProxyError::PayloadTooLarge { limit: *limit },
        BodyError::Idle(d) => ProxyError::ClientTimeout(format!("request body stalled for {d:?}").into()),
        BodyError::TooSlow(_) => ProxyError::ClientTimeout(e.to_string().into()),
        BodyError::Hyper(h) => ProxyError::DownstreamBody(h.to_string().into()),
        BodyError::Upstream(why) | BodyError::Client(why) => ProxyError::DownstreamBody((*why).into()),
    }
}

/// Names what went wrong sending to an endpoint, from the error and its causes.
pub(crate) fn classify(e: &hyper::Error, endpoint: &str) -> ProxyError {
    let mut causes = std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |c| c.source());
    if let Some(body) = causes.find_map(|c| c.downcast_ref::<BodyError>()) {
        return request_body_failed(body);
    }
    let mut causes = std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |c| c.source());
    if let Some(refused) = causes.find_map(|c| tls::refused(c.downcast_ref()?, endpoint)) {
        return refused;
    }
    if e.is_parse() || e.is_parse_status() {
        return ProxyError::UpstreamProtocol { endpoint: endpoint.into(), reason: e.to_string().into() };
    }
    ProxyError::UpstreamReset { endpoint: endpoint.into() }
}
