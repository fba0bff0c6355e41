//! The request path, as named phases over one request's record. [`handle`] is the list of them;
//! each phase is a file that says what it decides and what it may not do. Every failure is a
//! [`ProxyError`]; `error.rs` alone turns it into a response.
//!
//! | phase | decides |
//! |---|---|
//! | `admit` | the listener's limit, framing, Host, methods never forwarded |
//! | `route` | the snapshot, the route, the pool (cohort, canary, stable) |
//! | `limits` | the route's policies (rate, body size), the pool's breaker |
//! | `upstream_request` | the request as sent upstream, and what is kept to send it again |
//! | `mirror` | whether a copy goes to the candidate, and its task |
//! | `exchange` | tries: endpoint, retries, hedging, deadlines, budgets, outcomes |
//! | `respond` | the answer as the client gets it |
//! | `finish` | counting and logging the request once its response is done |

mod admit;
mod context;
mod exchange;
mod finish;
mod limits;
mod mirror;
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
use self::respond::Answer;
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
    conn: &Connection,
    req: Request<ClientBody>,
    record: &mut Record,
) -> Result<Answer, ProxyError> {
    let permit = admit::permit(conn).await?;
    admit::request(conn, &req)?;

    let snapshot = route::snapshot(conn, &mut record.trail)?;
    let routed = route::route(conn, &snapshot, &req, &mut record.trail)?;

    let now = Instant::now();
    let passed = limits::check(conn, &routed, &req, now, &mut record.trail)?;

    let mirror = mirror::admit(&routed, &req, &record.request_id);
    let trace = conn.serving.tracer.as_ref().zip(record.span.as_deref());
    let out = upstream_request::build(
        conn,
        req,
        &routed,
        &record.request_id,
        trace,
        mirror.as_ref().map(|(m, _)| m.max_body),
    );
    let mirrored = mirror.map(|m| {
        mirror::start(m, &snapshot, &routed, &out, &record.request_id, conn.peer.ip(), &mut record.trail)
    });

    let won =
        exchange::forward(&routed, out, conn.peer.ip(), passed.admitted.probe, now, &mut record.trail).await;
    let won = match won {
        Ok(won) => won,
        Err(e) => {
            if let Some(m) = mirrored {
                m.failed(e.category(), Duration::from_micros(record.trail.upstream_us.min(u64::MAX - 1)));
            }
            return Err(e);
        }
    };

    respond::answer(won, &routed, passed, permit, mirrored, &record.trail)
}
