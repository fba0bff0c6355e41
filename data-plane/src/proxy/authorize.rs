//! Authorize: the route's external authorization server is asked about the request (its head,
//! and the start of its body when the route sends some), after the body's start has been read
//! and before the request takes any capacity, so a slow server holds none either.
//!
//! Allowed, the request goes on with the server's field changes (and its answer will carry the
//! fields the server adds to it); denied, the client gets the
//! server's answer; a server that fails is the route's `fail_mode`'s to decide. It may change
//! the request's fields, nothing else.

use std::sync::atomic::Ordering;

use http::Request;
use http::header::CONTENT_LENGTH;
use sluice_proto::envoy::config::core::v3::socket_address::PortSpecifier;
use sluice_proto::envoy::config::core::v3::{Address, SocketAddress, address};
use sluice_proto::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request as AttrRequest};
use sluice_proto::envoy::service::auth::v3::{AttributeContext, CheckRequest};

use super::context::{Connection, Record};
use super::read_body::BodyStart;
use super::route::Routed;
use crate::auth::ext_authz::{AuthzPolicy, Failure, Verdict, header_map};
use crate::body::ClientBody;
use crate::error::ProxyError;
use crate::headers;

pub(super) async fn check(
    conn: &Connection,
    routed: &Routed<'_>,
    req: &mut Request<ClientBody>,
    body: &BodyStart,
    record: &mut Record,
) -> Result<(), ProxyError> {
    let Some(policy) = routed.route.ext_authz.as_deref() else { return Ok(()) };
    let stats = &routed.route.runtime.authz;
    let request = check_request(conn, policy, routed, req, body, record);
    let failure = match policy.check(request).await {
        Ok(Verdict::Allow(changes)) => {
            stats.allowed.fetch_add(1, Ordering::Relaxed);
            record.authz_response = changes.apply(req.headers_mut());
            return Ok(());
        }
        Ok(Verdict::Deny(denied)) => {
            stats.denied.fetch_add(1, Ordering::Relaxed);
            return Err(ProxyError::Denied(denied));
        }
        Err(failure) => failure,
    };
    let reason = match failure {
        Failure::Timeout => {
            stats.timeout.fetch_add(1, Ordering::Relaxed);
            format!("no answer within {} ms", policy.timeout.as_millis())
        }
        Failure::Error(e) => {
            stats.error.fetch_add(1, Ordering::Relaxed);
            e
        }
    };
    tracing::debug!(request_id = ?record.request_id, route = %routed.route.name, pool = %policy.pool, %reason, fail_open = policy.fail_open, "authorization check failed");
    if policy.fail_open {
        stats.fail_open.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    Err(ProxyError::AuthzUnavailable { pool: policy.pool.clone(), reason: reason.into() })
}

/// The request as the API describes it: who sent it, its head (the fields the route sends) and
/// the start of its body, up to the route's `max_body`.
fn check_request(
    conn: &Connection,
    policy: &AuthzPolicy,
    routed: &Routed<'_>,
    req: &Request<ClientBody>,
    body: &BodyStart,
    record: &Record,
) -> CheckRequest {
    let source = Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: record.client.to_string(),
                port_specifier: Some(PortSpecifier::PortValue(u32::from(conn.peer.port()))),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let mut raw = Vec::new();
    if policy.max_body > 0
        && let Some(early) = &body.early
    {
        for chunk in &early.chunks {
            let take = (policy.max_body - raw.len()).min(chunk.len());
            raw.extend_from_slice(&chunk[..take]);
            if raw.len() == policy.max_body {
                break;
            }
        }
    }
    // Text goes as `body` (what OPA's plugin parses), anything else as `raw_body`.
    let (body_text, raw_body) = match String::from_utf8(raw) {
        Ok(text) => (text, Vec::new()),
        Err(e) => (String::new(), e.into_bytes()),
    };
    let size = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
        .unwrap_or(if body.early.is_none() { 0 } else { -1 });
    let host = headers::request_host(req.uri(), req.headers()).unwrap_or_default();
    let http = HttpRequest {
        id: record.request_id.to_str().unwrap_or_default().to_owned(),
        method: req.method().as_str().to_owned(),
        headers: header_map(req.headers().iter().filter(|(n, _)| policy.sends(n))),
        path: req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        host: host.to_owned(),
        scheme: if record.https { "https" } else { "http" }.to_owned(),
        protocol: format!("{:?}", req.version()),
        size,
        body: body_text,
        raw_body,
        ..Default::default()
    };
    let mut context = AttributeContext {
        source: Some(source),
        request: Some(AttrRequest { time: None, http: Some(http) }),
        ..Default::default()
    };
    context.context_extensions.insert("route".to_owned(), routed.route.name.to_string());
    CheckRequest { attributes: Some(context) }
}
