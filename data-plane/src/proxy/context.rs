//! What every phase shares: the client connection and the request's record (what it is, and what
//! it did so far). Plain data: no phase logic lives here.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderValue;
use opentelemetry::trace::SpanContext;
use opentelemetry_sdk::trace::{SdkTracer, Span};
use sluice_bundle::Cidr;
use tokio::time::Instant;

use crate::access_log::Fields;
use crate::listener::ListenerState;
use crate::listener::strict::StrictState;
use crate::listener::tls::TlsFacts;
use crate::snapshot::{RouteEntry, Snapshot};
use crate::split::STABLE;
use crate::state::Serving;

/// One client connection, shared by the requests on it.
pub(crate) struct Connection {
    pub serving: Arc<Serving>,
    pub peer: SocketAddr,
    /// The peer's IP as a header value, formatted once per connection.
    pub client_ip: HeaderValue,
    /// The listener's trusted proxies, when the peer is one: its requests' `X-Forwarded-For`
    /// and `X-Forwarded-Proto` name the client and the scheme.
    pub trusted: Option<Arc<[Cidr]>>,
    pub strict: Arc<StrictState>,
    /// The listener's overload protection, counters and access-log sampling.
    pub listener: Arc<ListenerState>,
    /// What the TLS handshake established; `None`: plain TCP.
    pub tls: Option<Box<TlsFacts>>,
}

/// Who a request is from and what it is called, as the phases that write headers need it.
#[derive(Clone, Copy)]
pub(super) struct Who<'a> {
    pub request_id: &'a HeaderValue,
    pub client: IpAddr,
    pub https: bool,
}

/// One request from arrival to the end of its response: its id, when it started, its server span
/// and access-log head (when traced or logged), and its trail.
pub(super) struct Record {
    pub request_id: HeaderValue,
    pub start: Instant,
    /// Who the request is from: the peer, or the client a trusted proxy names.
    pub client: IpAddr,
    /// It came over HTTPS: this connection's TLS, or a trusted proxy's `X-Forwarded-Proto`.
    pub https: bool,
    /// The server span, when tracing is on.
    pub span: Option<Box<Span>>,
    /// The request's own access-log fields, when it is logged.
    pub log: Option<Fields>,
    /// Fields the route's authorization server added to the answer (`response_headers_to_add`).
    pub authz_response: Vec<(http::HeaderName, HeaderValue)>,
    pub trail: Trail,
}

/// What a request did, filled in by the phases as it goes, for its metrics and access-log line.
/// Compact: it rides in every response body.
pub(super) struct Trail {
    pub snapshot: Option<Arc<Snapshot>>,
    /// Index in the snapshot (`NONE`: not routed).
    pub route: u32,
    /// The pool that served it (`NONE`: none chosen) and its variant of the route.
    pub pool: u32,
    pub variant: u8,
    /// A copy went to the route's mirror.
    pub mirrored: bool,
    /// The endpoint that answered, or the last one tried (`NONE`: none).
    pub endpoint: u32,
    /// The answering (or last) try's time to response headers, in µs (`u64::MAX`: none).
    pub upstream_us: u64,
    pub retries: u32,
    /// Let through by a half-open breaker as a probe.
    pub probe: bool,
    /// Sent upstream as a WebSocket upgrade.
    pub upgrade: bool,
    /// What the route's cache did (routes with `cache` only).
    pub cache: Option<crate::cache::Note>,
}

/// Not set (an index in a [`Trail`]).
pub(super) const NONE: u32 = u32::MAX;

/// What an upstream try needs to trace itself: the tracer and its parent, the server span
/// (only when that span is being recorded).
#[derive(Clone, Copy)]
pub(super) struct TraceParent<'a> {
    pub tracer: &'a SdkTracer,
    pub parent: &'a SpanContext,
}

// === impl Connection ===

impl Connection {
    pub fn new(
        serving: Arc<Serving>,
        peer: SocketAddr,
        trusted: Option<Arc<[Cidr]>>,
        strict: Arc<StrictState>,
        listener: Arc<ListenerState>,
        tls: Option<TlsFacts>,
    ) -> Self {
        let client_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { serving, peer, client_ip, trusted, strict, listener, tls: tls.map(Box::new) }
    }
}

// === impl Record ===

impl Record {
    pub fn who(&self) -> Who<'_> {
        Who { request_id: &self.request_id, client: self.client, https: self.https }
    }
}

// === impl Trail ===

impl Trail {
    /// The route the request matched, if it got that far.
    pub fn route(&self) -> Option<&RouteEntry> {
        self.snapshot.as_deref()?.routes.get(self.route as usize)
    }
}

impl Default for Trail {
    fn default() -> Self {
        Self {
            snapshot: None,
            route: NONE,
            pool: NONE,
            variant: STABLE,
            mirrored: false,
            endpoint: NONE,
            upstream_us: u64::MAX,
            retries: 0,
            probe: false,
            upgrade: false,
            cache: None,
        }
    }
}
