//! Respond: the upstream's answer shaped for the client. Hop-by-hop headers gone, `RateLimit-*`
//! added, the mirror told how the primary went, and what the request holds until its body is
//! done gathered in one place.
//!
//! Shapes the answer; it may not send anything or retry. Response header rules from route
//! policies go here; a cache stores what this phase returns (and answers hits before `exchange`).

use std::time::Duration;

use crate::body::{ClientBody, ProxyBody, UpstreamBody};
use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, LOCATION, UPGRADE};
use http::{HeaderMap, Request, Response, StatusCode, Version};

use super::context::Trail;
use super::exchange::Won;
use super::limits::Passed;
use super::mirror::Mirrored;
use super::route::Routed;
use crate::body::Capture;
use crate::error::ProxyError;
use crate::headers::{RATELIMIT_LIMIT, RATELIMIT_REMAINING};
use crate::resilience::breaker::{Admitted, RetrySlot};
use crate::resilience::limit::{OwnedPermit, RateDecision};
use crate::transform::LocalAnswer;
use crate::upstream::InFlight;

/// What a request is answered with, apart from the proxy's errors.
pub(super) enum Reply {
    Upstream(Answer),
    /// A route's own answer (a redirect, a direct response), whole.
    Local(Response<ProxyBody>),
}

/// A route that answers itself: its redirect or its direct response, made here. A redirect
/// whose `Location` needs the request's host gets 400 when that host is not a plain name.
pub(super) fn local(
    answer: &LocalAnswer,
    req: &Request<ClientBody>,
    host: Option<&HeaderValue>,
    https: bool,
) -> Result<Reply, ProxyError> {
    let resp = match answer {
        LocalAnswer::Direct { status, body, content_type } => {
            let mut resp = Response::new(ProxyBody::full(body.clone()));
            *resp.status_mut() = *status;
            if let Some(t) = content_type {
                resp.headers_mut().insert(CONTENT_TYPE, t.clone());
            }
            resp
        }
        LocalAnswer::Redirect(plan) => {
            let host = host.and_then(|h| h.to_str().ok());
            let location =
                plan.location(req.uri(), host, https).and_then(|l| HeaderValue::from_str(&l).ok()).ok_or(
                    ProxyError::BadRequest("this route redirects, and the request names no usable host"),
                )?;
            let mut resp = Response::new(ProxyBody::full(Bytes::new()));
            *resp.status_mut() = plan.status;
            resp.headers_mut().insert(LOCATION, location);
            resp
        }
    };
    Ok(Reply::Local(resp))
}

/// An upstream answer ready for the client, its body still to stream.
pub(super) struct Answer {
    pub parts: http::response::Parts,
    pub body: UpstreamBody,
    pub idle_timeout: Duration,
    /// Where the mirror's diff gets the body's first bytes.
    pub capture: Option<Capture>,
    /// Where the route's cache stores the body as it streams.
    pub fill: Option<Box<crate::cache::Fill>>,
    pub held: Held,
}

/// What a request holds until its response body is done: its endpoint's in-flight count, its
/// place in the pool's breaker and in its listener's limit, and its retry slot if it was retried.
pub(super) struct Held {
    _in_flight: InFlight,
    _admitted: Admitted,
    _permit: OwnedPermit,
    _retry: Option<RetrySlot>,
}

pub(super) fn answer(
    won: Won<Box<Response<UpstreamBody>>>,
    routed: &Routed<'_>,
    passed: Passed,
    permit: OwnedPermit,
    mirrored: Option<Mirrored<'_>>,
    trail: &Trail,
) -> Result<Reply, ProxyError> {
    let Won { endpoint, in_flight, retry, answer: resp } = won;
    let route = routed.route;
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        // Only to the WebSocket handshake this request was, and only to WebSocket.
        let why = if !trail.upgrade {
            Some("101 Switching Protocols without an upgrade request")
        } else if !resp
            .headers()
            .get(UPGRADE)
            .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
        {
            Some("101 Switching Protocols to another protocol than the websocket asked for")
        } else {
            None
        };
        if let Some(reason) = why {
            return Err(ProxyError::UpstreamProtocol {
                endpoint: routed.pool.endpoints[endpoint].address.clone(),
                reason: reason.into(),
            });
        }
    }
    let (mut parts, body) = resp.into_parts();
    crate::headers::strip_hop_by_hop(&mut parts.headers);
    if switching {
        parts.headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        route.runtime.upgrades.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    // What the shadow compares against: the upstream's answer, before the proxy adds to it.
    let latency = Duration::from_micros(trail.upstream_us.min(u64::MAX - 1));
    let capture = mirrored.and_then(|m| m.answered(parts.status.as_u16(), &parts.headers, latency));
    if let (Some(d), Some(r)) = (passed.rate, &route.rate_limit) {
        rate_headers(&mut parts.headers, &r.header, &d);
    }
    // The upstream's HTTP version is its own business; hyper picks ours for the client.
    parts.version = Version::HTTP_11;
    let held = Held { _in_flight: in_flight, _admitted: passed.admitted, _permit: permit, _retry: retry };
    Ok(Reply::Upstream(Answer { parts, body, idle_timeout: route.idle_timeout, capture, fill: None, held }))
}

/// `RateLimit-Limit` and `-Remaining` for an allowed request (`-Reset` only comes with a 429:
/// formatting it for every answer costs more than it tells a client that is not limited).
pub(super) fn rate_headers(headers: &mut HeaderMap, limit: &HeaderValue, d: &RateDecision) {
    headers.insert(RATELIMIT_LIMIT, limit.clone());
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
}
