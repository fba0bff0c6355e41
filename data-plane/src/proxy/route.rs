//! Route: the snapshot this request runs against (read once), the route that matches it, and the
//! pool that serves it (cohort, canary or stable).
//!
//! Decides which route and pool; it may not refuse a request for any other reason, and does no
//! I/O. Route policies that act on the matched route (authentication, header rules) go in
//! `limits`, after this.

use std::sync::Arc;

use crate::body::ClientBody;
use http::Request;
use http::header::{HOST, HeaderValue};

use super::context::{Connection, Trail};
use crate::error::ProxyError;
use crate::headers;
use crate::snapshot::{RouteEntry, Snapshot};
use crate::split::STABLE;
use crate::transform::LocalAnswer;
use crate::upstream::Pool;
use sluice_compile::router::RequestView;

/// Where a request goes.
pub(super) struct Routed<'s> {
    /// The route's index in the snapshot.
    pub index: usize,
    pub route: &'s RouteEntry,
    pub pool: &'s Pool,
    /// The host the client named, as the upstream gets it.
    pub host: Option<HeaderValue>,
}

/// A route that answers itself, and the host the client named.
pub(super) struct Local<'s> {
    pub route: &'s RouteEntry,
    pub answer: &'s LocalAnswer,
    pub host: Option<HeaderValue>,
}

/// Where a request goes: a pool, or nowhere (its route answers).
pub(super) enum Routing<'s> {
    Pool(Routed<'s>),
    Local(Local<'s>),
}

impl<'s> Routing<'s> {
    pub fn route(&self) -> &'s RouteEntry {
        match self {
            Self::Pool(r) => r.route,
            Self::Local(l) => l.route,
        }
    }

    pub fn host(&self) -> Option<&HeaderValue> {
        match self {
            Self::Pool(r) => r.host.as_ref(),
            Self::Local(l) => l.host.as_ref(),
        }
    }
}

/// The active snapshot, which the request keeps to its end.
pub(super) fn snapshot(conn: &Connection, trail: &mut Trail) -> Result<Arc<Snapshot>, ProxyError> {
    let snapshot = conn.serving.snapshot.load_full().ok_or(ProxyError::NoConfig)?;
    trail.snapshot = Some(snapshot.clone());
    Ok(snapshot)
}

/// `client`: who the request is from (a cohort or canary split may hash it).
pub(super) fn route<'s>(
    snapshot: &'s Snapshot,
    req: &Request<ClientBody>,
    client: std::net::IpAddr,
    trail: &mut Trail,
) -> Result<Routing<'s>, ProxyError> {
    // An absolute-form target (or HTTP/2's :authority) names the host; Host is then ignored and
    // replaced (RFC 9112 §3.2.2), so routing and the upstream agree on one host.
    let host = headers::request_host(req.uri(), req.headers());
    let view = RequestView {
        method: req.method(),
        host,
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let index = snapshot.router.find(&view).ok_or(ProxyError::NoRoute)?;
    trail.route = index as u32;
    let route = &snapshot.routes[index];
    let host = match req.uri().authority() {
        Some(_) => host.and_then(|h| HeaderValue::from_str(h).ok()),
        // The client's own field: it shares the request head's buffer, where a new value would be
        // an allocation, and a second one when it is first cloned.
        None => req.headers().get(HOST).filter(|_| host.is_some()).cloned(),
    };
    let (variant, pool) = match (&route.split, route.pool, &route.local) {
        (_, _, Some(answer)) => return Ok(Routing::Local(Local { route, answer, host })),
        (Some(s), _, None) => s.choose(req.headers(), client),
        (None, Some(pool), None) => (STABLE, pool),
        // The compile step gives every route a pool or a local answer.
        (None, None, None) => return Err(ProxyError::NoRoute),
    };
    trail.variant = variant;
    trail.pool = pool as u32;
    Ok(Routing::Pool(Routed { index, route, pool: &snapshot.pools[pool], host }))
}
