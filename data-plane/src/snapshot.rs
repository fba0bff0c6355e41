//! A compiled, immutable config: everything a request needs, built once per version.
//!
//! Architecture invariant: the request path loads the active snapshot once and uses that `Arc`
//! for the whole request, so no request sees a mix of two versions.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use sha2::{Digest, Sha256};
use sluice_bundle::{Config, ConfigError, ConfigErrors, DEFAULT_JWKS_REFRESH, RateLimit};
use sluice_compile::Compiled;

use crate::auth::ext_authz::AuthzPolicy;
use crate::auth::jwks::{KeySources, SourceSpec};
use crate::auth::jwt::JwtPolicy;
use crate::listener::tls::ClientCertRule;
use crate::metrics::RequestStats;
use crate::resilience::retry::{HedgePolicy, RetryPolicy};
use crate::routes::{RouteRegistry, RouteRuntime};
use crate::shadow::MirrorEntry;
use crate::split::Split;
use crate::transform::{HeaderRules, LocalAnswer, RewritePlan};
use crate::upstream::{HashKey, Pool, PoolRegistry, PoolTls};
use sluice_compile::router::Router;

/// One active version of the config.
#[derive(Debug)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub config: Config,
    /// The traffic this version served, for rollout gates.
    pub(crate) stats: Arc<VersionStats>,
    pub(crate) router: Router,
    pub(crate) routes: Box<[RouteEntry]>,
    pub(crate) pools: Box<[Pool]>,
}

/// Where a snapshot came from.
#[derive(Debug, Clone)]
pub struct SnapshotMeta {
    /// Increases with every accepted config.
    pub version: u64,
    /// `file:/path` for a local file.
    pub source: String,
    /// SHA-256 of the document as received, hex.
    pub sha256: String,
    pub loaded_at: SystemTime,
}

/// A route as the request path uses it.
#[derive(Debug)]
pub(crate) struct RouteEntry {
    pub name: Box<str>,
    /// `None`: the route answers itself (`local`).
    pub pool: Option<usize>,
    pub timeout: Duration,
    pub idle_timeout: Duration,
    pub retry: RetryPolicy,
    pub hedge: Option<HedgePolicy>,
    pub rate_limit: Option<RouteRateLimit>,
    /// Largest request body, in bytes; `u64::MAX` for no limit.
    pub max_body: u64,
    pub body: BodyRules,
    /// What a route without a pool answers (`redirect`, `direct_response`).
    pub local: Option<Box<LocalAnswer>>,
    /// `rewrite`; `None`: path and host as the client sent them.
    pub rewrite: Option<Box<RewritePlan>>,
    /// `request_headers` and `response_headers`; `None`: no changes.
    pub request_headers: Option<Box<HeaderRules>>,
    pub response_headers: Option<Box<HeaderRules>>,
    /// Canary and cohorts; `None`: `pool` serves everything.
    pub split: Option<Box<Split>>,
    pub mirror: Option<Box<MirrorEntry>>,
    /// Plain-HTTP requests are redirected to HTTPS.
    pub require_tls: bool,
    pub client_certificate: Option<Box<ClientCertRule>>,
    /// Requests must carry a valid JWT.
    pub jwt: Option<Box<JwtPolicy>>,
    /// Requests are checked by an external authorization server.
    pub ext_authz: Option<Box<AuthzPolicy>>,
    /// Its response cache (`cache`).
    pub(crate) cache: Option<Arc<crate::cache::RouteCache>>,
    pub runtime: Arc<RouteRuntime>,
}

/// How a route reads request bodies (`routes[].request_body`, defaults applied).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyRules {
    /// Bytes read before the request takes upstream capacity; 0: none.
    pub buffer: u64,
    /// Longest wait for more of the body (never longer than the route's idle timeout).
    pub read_timeout: Duration,
    /// Bytes per second; 0: no minimum.
    pub min_rate: u64,
}

/// Why a config did not compile into a snapshot.
#[derive(Debug)]
pub enum CompileError {
    /// The config itself (the step the control plane also runs).
    Config(ConfigErrors),
    /// Files it names on this node (a pool's TLS files).
    Files(ConfigErrors),
}

impl From<ConfigErrors> for CompileError {
    fn from(e: ConfigErrors) -> Self {
        Self::Config(e)
    }
}

/// What one config version served on this data plane.
#[derive(Debug, Default)]
pub(crate) struct VersionStats {
    /// Answers, the proxy's own included.
    pub served: RequestStats,
    /// Answers the proxy made itself because of an upstream (5xx with an error category).
    pub proxy_errors: AtomicU64,
}

/// A route's rate limit as the request path uses it.
#[derive(Debug)]
pub(crate) struct RouteRateLimit {
    pub limit: RateLimit,
    /// What keys its buckets; `None`: one bucket for the route.
    pub key: Option<HashKey>,
    /// `RateLimit-Limit`, formatted once.
    pub header: HeaderValue,
}

// === impl Snapshot ===

impl Snapshot {
    /// Compiles a validated config with the step the control plane runs before it signs, then
    /// gives pools and routes the registries' state for names they know. That shared step cannot
    /// fail on what `parse` accepted; what can is a fact of this node (a pool's TLS files).
    pub fn compile(
        config: Config,
        meta: SnapshotMeta,
        registry: &PoolRegistry,
        route_registry: &RouteRegistry,
    ) -> Result<Self, CompileError> {
        let Compiled { router, pools: pool_plans, routes: route_plans } = sluice_compile::compile(&config)?;
        let mut node_errors = Vec::new();
        let pools: Box<[Pool]> = (config.pools.iter().zip(pool_plans).enumerate())
            .filter_map(|(i, (p, plan))| {
                Pool::compile(i, p, plan, registry).map_err(|e| node_errors.extend(e.0)).ok()
            })
            .collect();
        if !node_errors.is_empty() {
            return Err(CompileError::Files(ConfigErrors(node_errors)));
        }
        let pool_names: Box<[Box<str>]> = config.pools.iter().map(|p| p.name.as_str().into()).collect();
        let routes = config
            .routes
            .iter()
            .zip(route_plans)
            .enumerate()
            .map(|(i, (r, plan))| {
                let runtime = route_registry.runtime(&r.name);
                let jwt = r.jwt.as_ref().and_then(|j| {
                    jwt_policy(j, &route_registry.jwks)
                        .map_err(|(field, e)| {
                            node_errors
                                .push(ConfigError { path: format!("routes[{i}].jwt.{field}"), message: e })
                        })
                        .ok()
                });
                let ext_authz = r.ext_authz.as_ref().and_then(|a| {
                    authz_policy(a, &config, &pools)
                        .map_err(|e| {
                            node_errors
                                .push(ConfigError { path: format!("routes[{i}].ext_authz.pool"), message: e })
                        })
                        .ok()
                });
                let split = plan
                    .pool
                    .zip(plan.split)
                    .map(|(pool, s)| Box::new(Split::compile(r, pool, s, &runtime.split)));
                let mirror = plan
                    .mirror
                    .zip(r.mirror.as_ref())
                    .map(|(m, cfg)| Box::new(MirrorEntry::compile(cfg, m, runtime.mirror.clone())));
                RouteEntry {
                    name: r.name.as_str().into(),
                    pool: plan.pool,
                    timeout: r.timeout_or_default().get(),
                    idle_timeout: r.idle_timeout_or_default().get(),
                    retry: RetryPolicy::compile(&r.retries_or_default()),
                    hedge: r.hedge.as_ref().map(HedgePolicy::compile),
                    rate_limit: r.rate_limit.as_ref().map(|l| RouteRateLimit {
                        limit: l.clone(),
                        key: l.key.as_ref().map(HashKey::new),
                        header: HeaderValue::from(l.burst_or_default()),
                    }),
                    max_body: r.max_request_body.map_or(u64::MAX, |b| b.0),
                    body: {
                        let b = r.request_body_or_default();
                        BodyRules {
                            buffer: b.buffer_or_default(),
                            read_timeout: b
                                .read_timeout_or_default()
                                .get()
                                .min(r.idle_timeout_or_default().get()),
                            min_rate: b.min_rate_or_default(),
                        }
                    },
                    local: LocalAnswer::compile(r),
                    rewrite: RewritePlan::compile(r),
                    request_headers: HeaderRules::compile(r.request_headers.as_ref(), &r.name, prefix(r)),
                    response_headers: HeaderRules::compile(r.response_headers.as_ref(), &r.name, prefix(r)),
                    split,
                    mirror,
                    require_tls: r.require_tls == Some(true),
                    client_certificate: r
                        .client_certificate
                        .as_ref()
                        .map(|c| Box::new(ClientCertRule::compile(c))),
                    jwt,
                    ext_authz,
                    cache: r.cache.as_ref().map(|_| route_registry.caches.for_route(r, &pool_names)),
                    runtime,
                }
            })
            .collect();
        if !node_errors.is_empty() {
            return Err(CompileError::Files(ConfigErrors(node_errors)));
        }
        Ok(Self { meta, config, stats: Arc::default(), router, routes, pools })
    }
}

/// A route's `jwt` with its key source: a JWKS file read now (its errors name the field), or a
/// URL whose fetching starts now.
fn jwt_policy(
    j: &sluice_bundle::Jwt,
    sources: &KeySources,
) -> Result<Box<JwtPolicy>, (&'static str, String)> {
    let (field, spec) = match (&j.jwks_file, &j.jwks_url) {
        (Some(file), _) => ("jwks_file", SourceSpec::File(file.into())),
        (None, Some(url)) => (
            "jwks_url",
            SourceSpec::Url {
                url: url.clone(),
                refresh: j.jwks_refresh.unwrap_or(DEFAULT_JWKS_REFRESH).get(),
                ca: j.jwks_ca_file.as_ref().map(Into::into),
            },
        ),
        (None, None) => return Err(("jwks_file", "missing".into())),
    };
    let keys = sources.get(&spec).map_err(|e| (field, e))?;
    Ok(Box::new(JwtPolicy::compile(j, keys)))
}

/// A route's `ext_authz` against its pool (compiled already: its endpoints and TLS).
fn authz_policy(
    a: &sluice_bundle::ExtAuthz,
    config: &Config,
    pools: &[Pool],
) -> Result<Box<AuthzPolicy>, String> {
    let index = config
        .pools
        .iter()
        .position(|p| p.name == a.pool)
        .ok_or_else(|| format!("unknown pool {}", a.pool))?;
    let pool = pools.get(index).ok_or_else(|| format!("pool {} did not compile", a.pool))?;
    let endpoints = pool.endpoints.iter().map(|e| (Arc::from(&*e.address), e.tls_name.clone())).collect();
    let tls = pool.settings.tls.as_ref().map(PoolTls::watched);
    AuthzPolicy::compile(a, endpoints, tls, pool.settings.connect_timeout).map(Box::new)
}

/// A route's `match.path_prefix` (empty without one), for `%path_prefix%`.
fn prefix(r: &sluice_bundle::Route) -> &str {
    r.matcher.path_prefix.as_deref().unwrap_or_default()
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
