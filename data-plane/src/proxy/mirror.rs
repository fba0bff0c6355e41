//! Mirror: whether this request is copied to the route's candidate pool, the copy's own task, and
//! telling that task how the primary went.
//!
//! The client's answer never waits for the copy: this phase may spawn and send on channels, but
//! not block, refuse the request or change what goes to the primary.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{HeaderMap, Request};
use hyper::body::Body as _;

use crate::body::ClientBody;
use tokio::sync::oneshot;

use super::context::Trail;
use super::route::Routed;
use super::upstream_request::Outgoing;
use crate::body::Capture;
use crate::headers::X_SLUICE_SHADOW;
use crate::shadow::{MirrorEntry, Primary, Shadow, Slot};
use crate::snapshot::Snapshot;

/// A copy on its way: what to tell it about the primary.
pub(super) struct Mirrored<'s> {
    mirror: &'s MirrorEntry,
    primary: oneshot::Sender<Primary>,
}

/// The route's mirror and a place among its copies in flight, when this request is copied.
pub(super) fn admit<'s>(
    routed: &Routed<'s>,
    req: &Request<ClientBody>,
    request_id: &HeaderValue,
) -> Option<(&'s MirrorEntry, Slot)> {
    let m = routed.route.mirror.as_deref()?;
    // A WebSocket is a conversation with one upstream; a copy could not take part in it.
    if crate::headers::websocket_upgrade(req.version(), req.headers()) {
        return None;
    }
    Some((m, m.admit(req.method(), request_id.as_bytes(), req.body().size_hint().lower())?))
}

/// Starts the copy's task. It sends once the body's copy is whole and compares once told how the
/// primary went.
pub(super) fn start<'s>(
    (mirror, slot): (&'s MirrorEntry, Slot),
    snapshot: &Arc<Snapshot>,
    routed: &Routed<'_>,
    out: &Outgoing<'_>,
    request_id: &HeaderValue,
    client_ip: IpAddr,
    trail: &mut Trail,
) -> Mirrored<'s> {
    let mut headers = out.first.headers().clone();
    headers.insert(X_SLUICE_SHADOW, HeaderValue::from_static("1"));
    let (tx, rx) = oneshot::channel();
    let shadow = Shadow {
        _slot: slot,
        method: out.first.method().clone(),
        path: out.first.uri().path_and_query().cloned(),
        host: routed.host.clone(),
        headers,
        body: out.copy.clone().zip(out.settled.clone()),
        primary: rx,
        request_id: request_id.clone(),
        client_ip,
        trace: out.trace.map(|t| (t.tracer.clone(), t.parent.clone())),
    };
    let (snapshot, index) = (snapshot.clone(), routed.index);
    tokio::spawn(async move {
        let route = &snapshot.routes[index];
        if let Some(m) = route.mirror.as_deref() {
            shadow.run(&route.name, m, &snapshot.pools).await;
        }
    });
    trail.mirrored = true;
    Mirrored { mirror, primary: tx }
}

impl Mirrored<'_> {
    /// The primary failed with `category` after `latency`.
    pub fn failed(self, category: &'static str, latency: Duration) {
        let _ = self.primary.send(Primary { outcome: Err(category), latency, body: None });
    }

    /// The primary answered: its status and headers as the upstream sent them, and (when the
    /// mirror compares bodies) a capture of its body to fill as it streams to the client.
    pub fn answered(self, status: u16, headers: &HeaderMap, latency: Duration) -> Option<Capture> {
        let m = self.mirror;
        let headers = if m.compares() { headers.clone() } else { HeaderMap::new() };
        let (capture, captured) = m.compares().then(|| Capture::new(m.max_body)).unzip();
        let _ = self.primary.send(Primary { outcome: Ok((status, headers)), latency, body: captured });
        capture
    }
}
