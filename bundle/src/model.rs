//! The validated config model. Field names and shapes here are the wire format (YAML/JSON) and the
//! JSON Schema; `parse` is the only way in, so every value of these types has passed validation.
//!
//! Optional fields stay `None` when the document leaves them out; the `*_or_default` accessors
//! give the effective value. That keeps what the operator wrote apart from what the proxy does.

use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::Serialize;

use crate::Duration;
use crate::auth::{ExtAuthz, Jwt};
use crate::net::Cidr;
use crate::resilience::*;
use crate::tls::*;
use crate::traffic::*;
use crate::transform::{DirectResponse, HeaderOps, Redirect, Rewrite};

/// Downstream keep-alive idle time, and the time allowed to send request headers.
pub const DEFAULT_LISTENER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed to establish a TCP connection to an endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an unused pooled upstream connection is kept.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle pooled connections kept per endpoint.
pub const DEFAULT_MAX_IDLE_PER_ENDPOINT: u32 = 256;
/// Time from sending the request until the upstream's response headers arrive.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest pause in either body stream before the exchange is abandoned.
pub const DEFAULT_ROUTE_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Endpoint weight when none is given.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Largest endpoint weight.
pub const MAX_WEIGHT: u32 = 10_000;

/// One fleet's proxy configuration.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Addresses the proxy accepts traffic on. At least one.
    pub listeners: Vec<Listener>,
    /// Groups of upstream endpoints that routes send traffic to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<Pool>,
    /// Rules that pick a pool for each request. Precedence is by specificity, not order; see the
    /// config reference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

/// A socket the proxy accepts HTTP/1.1 and HTTP/2 on: cleartext (h2c by prior knowledge), or
/// over TLS with ALPN when `tls` is set.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Stable id of this listener.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"))]
    pub name: String,
    /// `ip:port` to bind, e.g. `0.0.0.0:8080` or `[::]:8080`.
    #[schemars(with = "String")]
    pub address: SocketAddr,
    /// Keep-alive idle time of a client connection, also the time allowed to send request headers.
    /// Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Limit on requests in progress, with a bounded queue. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overload: Option<Overload>,
    /// One JSON line per request on standard output. Absent: no access log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLog>,
    /// TLS termination. Absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// Limits for HTTP/2 clients. Absent: the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<Http2Limits>,
    /// `true`: every connection starts with a PROXY protocol header (v1 or v2), as a load
    /// balancer in front sends it; its source address is the client's. A connection without
    /// one is closed. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<bool>,
    /// Connections open at once from one client address (an IPv6 client counted by its /64);
    /// more are closed as they arrive. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections_per_client: Option<u32>,
    /// Proxies in front of this listener (addresses or networks) whose `X-Forwarded-For` and
    /// `X-Forwarded-Proto` are believed: a request from one of them is taken to come from the
    /// last address in `X-Forwarded-For` that is not itself trusted, over the scheme it names.
    /// Empty: no one's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<Cidr>,
    /// Fields changed on every request this listener takes, before a route's own changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderOps>,
    /// Fields changed on every response this listener sends, after a route's own changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderOps>,
}

/// What one HTTP/2 client connection may ask of a listener. The abuse limits (rapid resets,
/// pings, CONTINUATION frames) are fixed and documented; these depend on the traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http2Limits {
    /// Streams open at once per connection; more are refused (REFUSED_STREAM). 1 to 10000,
    /// default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<u32>,
    /// Largest decoded request header list (431 beyond it), which also bounds the CONTINUATION
    /// frames of one header block. 1KiB to 1MiB, default 64KiB (as for an HTTP/1.1 head).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_list_size: Option<ByteSize>,
}

// === impl Http2Limits ===

impl Http2Limits {
    pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;
    pub const DEFAULT_MAX_HEADER_LIST_SIZE: u64 = 64 * 1024;

    pub fn max_concurrent_streams_or_default(&self) -> u32 {
        self.max_concurrent_streams.unwrap_or(Self::DEFAULT_MAX_CONCURRENT_STREAMS)
    }

    pub fn max_header_list_size_or_default(&self) -> u64 {
        self.max_header_list_size.map_or(Self::DEFAULT_MAX_HEADER_LIST_SIZE, |b| b.0)
    }
}

/// A listener's access log: one JSON line per request, written to standard output off the
/// request path (lines are dropped and counted when the writer falls behind).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    /// Default true: a listener with an `access_log` block logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Share of requests logged, above 0 and at most 1. Default 1 (every request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample: Option<f64>,
}

impl AccessLog {
    /// The share of requests logged: 0 when off.
    pub fn effective_sample(&self) -> f64 {
        if self.enabled.unwrap_or(true) { self.sample.unwrap_or(1.0) } else { 0.0 }
    }
}

/// A named group of upstream endpoints and how to spread requests over them.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Stable id of this pool; runtime state (balancer position, in-flight counts) is kept by it.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"))]
    pub name: String,
    /// How an endpoint is chosen for each request. Default `round_robin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balancer: Option<Balancer>,
    /// What `consistent_hash` hashes. Required with that balancer, refused with the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
    /// The upstream servers. At least one.
    pub endpoints: Vec<Endpoint>,
    /// Protocol spoken to the endpoints. Default `http1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<UpstreamProtocol>,
    /// Time allowed to open a TCP connection to an endpoint. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// How long an unused pooled connection is kept open. Default 60s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Idle connections kept per endpoint. Default 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_per_endpoint: Option<u32>,
    /// Active health checks. Absent: none (endpoints are judged by live traffic only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Limits and the error-rate breaker. The limits apply at their defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Passive ejection of failing endpoints. On at its defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// TLS to the endpoints (certificates verified unless turned off). Absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

/// How a pool chooses an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balancer {
    /// Each endpoint in turn; weights are ignored.
    RoundRobin,
    /// Smooth weighted round robin: endpoint `i` gets `weight_i / sum(weights)` of requests,
    /// interleaved rather than in bursts.
    Weighted,
    /// Power of two choices: of two random endpoints, the one with fewer requests in flight.
    LeastRequest,
    /// A hash ring over endpoints (weighted); the same key goes to the same endpoint while the
    /// endpoint set is unchanged. Needs `hash_on`.
    ConsistentHash,
}

/// The request property `consistent_hash` hashes: `source_ip`, `{header: NAME}` or
/// `{cookie: NAME}`. A request without that header or cookie gets a random endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    /// The value of this request header.
    Header(String),
    /// The value of this cookie.
    Cookie(String),
    /// The client's IP address.
    SourceIp,
}

/// Protocol spoken to a pool's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// Cleartext HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// One upstream server.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// `host:port`: an IP address (`127.0.0.1:9001`, `[::1]:9001`) or a DNS name (`users:8080`).
    pub address: String,
    /// Share of traffic relative to the pool's other endpoints (1 to 10000). Default 1. Honoured by
    /// `weighted` and `consistent_hash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub weight: Option<u32>,
}

/// A rule that sends matching requests to a pool.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Stable id of this route.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"))]
    pub name: String,
    /// What a request must look like to take this route. Empty or absent matches everything.
    #[serde(rename = "match", default, skip_serializing_if = "RouteMatch::is_empty")]
    pub matcher: RouteMatch,
    /// Name of the pool that serves this route. Required unless the route answers itself
    /// (`redirect` or `direct_response`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Answer with a redirect instead of going to a pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Answer with this response instead of going to a pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Time from sending the request upstream until response headers arrive; then 504. Default 15s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Longest pause in the request or response body stream before the exchange is abandoned.
    /// Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Retry policy. Applies at its defaults when absent; `max_attempts: 1` turns retries off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Hedged reads. Absent: no hedging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<Hedge>,
    /// Local rate limit. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Largest request body accepted; larger gets 413. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body: Option<ByteSize>,
    /// How request bodies are read: buffered before an upstream slot is taken, with a read
    /// timeout and a minimum rate. Applies at its defaults when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<RequestBodyRules>,
    /// The path or host sent upstream, changed. Absent: as the client sent them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Fields changed on the request sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderOps>,
    /// Fields changed on the response sent to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderOps>,
    /// A weighted split to a canary pool. Absent: all traffic (not taken by a cohort) to `pool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Requests of a cohort (by header or cookie value) go to that cohort's pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohorts: Option<Cohorts>,
    /// A shadow copy of sampled requests to a candidate pool. Absent: no mirroring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// `true`: a request that did not come over TLS is redirected to `https` (301 for GET and
    /// HEAD, 308 for other methods, which keeps method and body). Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_tls: Option<bool>,
    /// Requests must come with a verified client certificate meeting these conditions; others
    /// get 403. Absent: no requirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateRule>,
    /// Requests must carry a valid JSON Web Token; others get 401. Absent: no requirement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
    /// Each request is first checked by an external authorization server (Envoy's `ext_authz`
    /// gRPC API). Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_authz: Option<ExtAuthz>,
    /// Responses are stored and answered from memory as HTTP caching allows (RFC 9111).
    /// Absent: nothing is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::cache::Cache>,
}

/// Conditions a request must meet, all of them. At most one of `path`, `path_prefix`,
/// `path_regex`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// `api.example.com` (exact, case-insensitive, port ignored) or `*.example.com` (any
    /// subdomain, not the bare domain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The path, exactly (query string excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A path prefix matched by whole segments: `/users` matches `/users` and `/users/7`, not
    /// `/usersx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// A regular expression (Rust `regex` syntax) the whole path must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Request methods, e.g. `[GET, HEAD]`. Empty matches any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Conditions on request headers (names case-insensitive). All must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    /// Conditions on query parameters (names case-sensitive). All must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<ValueMatch>,
}

/// A condition on a named header or query parameter: exactly one of `exact`, `prefix`, `regex`,
/// `present`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// A regular expression the whole value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// `true`: the name must be present (any value); `false`: it must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// The one condition a [`ValueMatch`] holds, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueRule<'a> {
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
    Present(bool),
}

// === impl Listener ===

impl Listener {
    pub fn idle_timeout_or_default(&self) -> Duration {
        self.idle_timeout.unwrap_or(DEFAULT_LISTENER_IDLE_TIMEOUT)
    }
}

// === impl Pool ===

impl Pool {
    pub fn balancer_or_default(&self) -> Balancer {
        self.balancer.unwrap_or(Balancer::RoundRobin)
    }

    pub fn protocol_or_default(&self) -> UpstreamProtocol {
        self.protocol.unwrap_or(UpstreamProtocol::Http1)
    }

    pub fn connect_timeout_or_default(&self) -> Duration {
        self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    pub fn idle_timeout_or_default(&self) -> Duration {
        self.idle_timeout.unwrap_or(DEFAULT_POOL_IDLE_TIMEOUT)
    }

    pub fn max_idle_per_endpoint_or_default(&self) -> u32 {
        self.max_idle_per_endpoint.unwrap_or(DEFAULT_MAX_IDLE_PER_ENDPOINT)
    }

    pub fn circuit_breaker_or_default(&self) -> CircuitBreaker {
        self.circuit_breaker.clone().unwrap_or_default()
    }

    /// The outlier detection in effect, `None` when turned off.
    pub fn outlier_detection_or_default(&self) -> Option<OutlierDetection> {
        let o = self.outlier_detection.clone().unwrap_or_default();
        o.enabled_or_default().then_some(o)
    }
}

// === impl Endpoint ===

impl Endpoint {
    pub fn weight_or_default(&self) -> u32 {
        self.weight.unwrap_or(DEFAULT_WEIGHT)
    }
}

// === impl Route ===

impl Route {
    pub fn timeout_or_default(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_ROUTE_TIMEOUT)
    }

    pub fn idle_timeout_or_default(&self) -> Duration {
        self.idle_timeout.unwrap_or(DEFAULT_ROUTE_IDLE_TIMEOUT)
    }

    pub fn retries_or_default(&self) -> Retries {
        self.retries.clone().unwrap_or_default()
    }

    pub fn request_body_or_default(&self) -> RequestBodyRules {
        self.request_body.clone().unwrap_or_default()
    }
}

// === impl RouteMatch ===

impl RouteMatch {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

// === impl ValueMatch ===

impl ValueMatch {
    /// The condition this match holds. Validation guarantees exactly one is set; `Present(true)`
    /// is the answer for a value built by hand with none.
    pub fn rule(&self) -> ValueRule<'_> {
        if let Some(v) = &self.exact {
            ValueRule::Exact(v)
        } else if let Some(v) = &self.prefix {
            ValueRule::Prefix(v)
        } else if let Some(v) = &self.regex {
            ValueRule::Regex(v)
        } else {
            ValueRule::Present(self.present.unwrap_or(true))
        }
    }
}
