//! The request path, as named phases over one request's record. [`handle`] is the list of them;
//! each phase is a file that says what it decides and what it may not do. Every failure is a
//! [`ProxyError`]; `error.rs` alone turns it into a response.
//!
//! | phase | decides |
//! |---|---|
//! | `admit` | framing, Host, dot segments, methods never forwarded |
//! | `route` | the snapshot, the route, the pool (cohort, canary, stable), or the route's own answer |
//! | `limits` | the route's policies (HTTPS, client certificate, rate, JWT, body size) |
//! | `read_body` | the body's start, read before any capacity is taken (408 if too slow) |
//! | `authorize` | the route's external authorization server's verdict (`ext_authz`) |
//! | `cache` | an answer from the route's cache, or how the upstream's answer is kept |
//! | `admit`, `limits` | then the listener's overload limit, the pool's breaker |
//! | `upstream_request` | the request as sent upstream, and what is kept to send it again |
//! | `mirror` | whether a copy goes to the candidate, and its task |
//! | `exchange` | tries: endpoint, retries, hedging, deadlines, budgets, outcomes |
//! | `respond` | the answer as the client gets it |
//! | `finish` | counting and logging the request once its response is done |

mod admit;
mod authorize;
mod cache;
mod context;
mod exchange;
mod finish;
mod limits;
mod mirror;
mod read_body;
mod respond;
mod route;
mod upstream_request;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::body::ClientBody;
use http::{Request, Response};
use tokio::time::Instant;

pub(crate) use self::context::Connection;
use self::context::Record;
pub(crate) use self::finish::refused_by_parser;
use self::limits::Passed;
use self::respond::Reply;
use self::route::Routing;
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::telemetry;

/// Serves one request. Never fails: errors become JSON responses carrying the request id.
pub(crate) async fn handle(
    conn: Arc<Connection>,
    req: Request<ClientBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    let mut record = Record::begin(&conn, &req);
    let method = telemetry::method_name(req.method());
    let result = proxy(&conn, req, &mut record).await;
    Ok(finish::respond(conn, record, method, result))
}

/// The phases in order; each may end the request with an error.
async fn proxy(
    conn: &Arc<Connection>,
    mut req: Request<ClientBody>,
    record: &mut Record,
) -> Result<Reply, ProxyError> {
    admit::request(conn, &req)?;

    let snapshot = route::snapshot(conn, &mut record.trail)?;
    let routing = route::route(&snapshot, &req, record.client, &mut record.trail)?;
    let checks = limits::check(conn, routing.route(), routing.host(), &req, record)?;
    let routed = match routing {
        Routing::Pool(routed) => routed,
        Routing::Local(l) => return respond::local(l.answer, &req, l.host.as_ref(), record.https),
    };
    // The verified claims replace the client's fields at once (and the token goes, if the route
    // says so), so the authorization server, the upstream and the mirror all see the same request.
    if let (Some(policy), Some(verified)) = (&routed.route.jwt, &checks.jwt) {
        policy.forward(req.headers_mut(), verified);
    }

    // A slow client waits here, holding no capacity of the listener or the pool.
    let body_start = read_body::read(&routed, &mut req, record.start).await?;
    authorize::check(conn, &routed, &mut req, &body_start, &mut *record).await?;
    let plan = match cache::lookup(&routed, &mut req, record).await? {
        cache::Lookup::Off => None,
        cache::Lookup::Forward(plan) => Some(plan),
        cache::Lookup::Answer(resp, refresh) => {
            if let Some(plan) = refresh {
                refresh_in_background(
                    conn.clone(),
                    req,
                    body_start,
                    &routed,
                    snapshot.clone(),
                    plan,
                    &record.trail,
                );
            }
            let mut resp = *resp;
            if let (Some(d), Some(r)) = (&checks.rate, &routed.route.rate_limit) {
                respond::rate_headers(resp.headers_mut(), &r.header, d);
            }
            return Ok(Reply::Local(resp));
        }
    };
    forward(conn, req, body_start, &routed, &snapshot, checks.rate, plan, true, record).await
}

/// The request's way upstream and back, once it may go: capacity, the request as sent, the
/// mirror, the exchange, the answer and what the cache makes of it.
#[allow(clippy::too_many_arguments)]
async fn forward(
    conn: &Connection,
    req: Request<ClientBody>,
    body_start: read_body::BodyStart,
    routed: &route::Routed<'_>,
    snapshot: &Arc<crate::snapshot::Snapshot>,
    rate: Option<crate::resilience::limit::RateDecision>,
    plan: Option<Box<cache::Plan>>,
    mirror: bool,
    record: &mut Record,
) -> Result<Reply, ProxyError> {
    let permit = admit::permit(conn).await?;
    let now = Instant::now();
    let passed = Passed { rate, admitted: limits::admit(routed, now, &mut record.trail)? };

    let mirror = if mirror { mirror::admit(routed, &req, &record.request_id) } else { None };
    let trace = conn.serving.tracer.as_ref().zip(record.span.as_deref());
    let out = upstream_request::build(
        conn,
        req,
        body_start,
        routed,
        record.who(),
        trace,
        mirror.as_ref().map(|(m, _)| m.max_body),
    )?;
    record.trail.upgrade = out.upgrade;
    let mirrored = mirror.map(|m| {
        mirror::start(m, snapshot, routed, &out, &record.request_id, record.client, &mut record.trail)
    });

    let won = exchange::forward(
        routed,
        out,
        &record.request_id,
        record.client,
        passed.admitted.probe,
        now,
        &mut record.trail,
    )
    .await;
    let won = match won {
        Ok(won) => won,
        Err(e) => {
            if let Some(m) = mirrored {
                m.failed(e.category(), Duration::from_micros(record.trail.upstream_us.min(u64::MAX - 1)));
            }
            if let Some(resp) = plan.as_ref().and_then(|p| p.on_error(&mut record.trail)) {
                return Ok(Reply::Local(resp));
            }
            return Err(e);
        }
    };

    let reply = respond::answer(won, routed, passed, permit, mirrored, &record.trail)?;
    match (plan, reply) {
        (Some(plan), Reply::Upstream(mut answer)) => {
            match cache::settle(plan, &mut answer.parts, &mut record.trail) {
                cache::Settled::Pass(fill) => {
                    answer.fill = fill;
                    Ok(Reply::Upstream(answer))
                }
                cache::Settled::Answer(resp) => Ok(Reply::Local(*resp)),
            }
        }
        (_, reply) => Ok(reply),
    }
}

/// `stale-while-revalidate`: the client has its stale answer; its request goes on upstream in a
/// task of its own (logged and counted as a request, never mirrored), and the answer replaces
/// the stored object.
fn refresh_in_background(
    conn: Arc<Connection>,
    req: Request<ClientBody>,
    body_start: read_body::BodyStart,
    routed: &route::Routed<'_>,
    snapshot: Arc<crate::snapshot::Snapshot>,
    plan: Box<cache::Plan>,
    client: &context::Trail,
) {
    let (index, pool, variant, host) = (routed.index, client.pool, client.variant, routed.host.clone());
    tokio::spawn(async move {
        let mut record = Record::begin(&conn, &req);
        record.trail.snapshot = Some(snapshot.clone());
        record.trail.route = index as u32;
        record.trail.pool = pool;
        record.trail.variant = variant;
        let routed = route::Routed {
            index,
            route: &snapshot.routes[index],
            pool: &snapshot.pools[pool as usize],
            host,
        };
        let method = telemetry::method_name(req.method());
        let result =
            forward(&conn, req, body_start, &routed, &snapshot, None, Some(plan), false, &mut record).await;
        let resp = finish::respond(conn.clone(), record, method, result);
        // Read to its end (the cache stores it as it goes); the route's idle timeout bounds it.
        let mut body = resp.into_body();
        while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await {}
    });
}
