//! A compiled, immutable config: everything a request needs, built once per version.
//!
//! Architecture invariant: the request path loads the active snapshot once and uses that `Arc`
//! for the whole request, so no request sees a mix of two versions.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use sha2::{Digest, Sha256};
use sluice_bundle::{Config, RateLimit};

use crate::metrics::RequestStats;
use crate::resilience::retry::{HedgePolicy, RetryPolicy};
use crate::router::Router;
use crate::routes::{RouteRegistry, RouteRuntime};
use crate::shadow::MirrorEntry;
use crate::split::Split;
use crate::upstream::{HashKey, Pool, PoolRegistry};

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
    pub pool: usize,
    pub timeout: Duration,
    pub idle_timeout: Duration,
    pub retry: RetryPolicy,
    pub hedge: Option<HedgePolicy>,
    pub rate_limit: Option<RouteRateLimit>,
    /// Largest request body, in bytes; `u64::MAX` for no limit.
    pub max_body: u64,
    /// Canary and cohorts; `None`: `pool` serves everything.
    pub split: Option<Box<Split>>,
    pub mirror: Option<Box<MirrorEntry>>,
    pub runtime: Arc<RouteRuntime>,
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

/// A config that validated but could not be compiled.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    pub path: String,
    pub message: String,
}

// === impl Snapshot ===

impl Snapshot {
    /// Compiles a validated config. Pools and routes reuse the registries' state for names they
    /// know.
    pub fn compile(
        config: Config,
        meta: SnapshotMeta,
        registry: &PoolRegistry,
        route_registry: &RouteRegistry,
    ) -> Result<Self, CompileError> {
        let router = Router::compile(&config.routes).map_err(|e| split(&e))?;
        let mut pools = Vec::with_capacity(config.pools.len());
        for (i, p) in config.pools.iter().enumerate() {
            pools.push(Pool::compile(p, registry).map_err(|e| split(&format!("pools[{i}].{e}")))?);
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        let by_name: std::collections::HashMap<&str, usize> =
            config.pools.iter().enumerate().map(|(i, p)| (p.name.as_str(), i)).collect();
        let pool_index = |name: &str| by_name.get(name).copied();
        for (i, r) in config.routes.iter().enumerate() {
            let runtime = route_registry.runtime(&r.name);
            let at = |e: String| split(&format!("routes[{i}].{e}"));
            let traffic = Split::compile(r, pool_index, &runtime.split).map_err(at)?.map(Box::new);
            let mirror = match &r.mirror {
                Some(m) => {
                    Some(Box::new(MirrorEntry::compile(m, pool_index, runtime.mirror.clone()).map_err(at)?))
                }
                None => None,
            };
            let pool = pool_index(&r.pool).ok_or_else(|| CompileError {
                path: format!("routes[{i}].pool"),
                message: format!("unknown pool `{}`", r.pool),
            })?;
            routes.push(RouteEntry {
                name: r.name.as_str().into(),
                pool,
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
                split: traffic,
                mirror,
                runtime,
            });
        }
        Ok(Self {
            meta,
            config,
            stats: Arc::default(),
            router,
            routes: routes.into_boxed_slice(),
            pools: pools.into_boxed_slice(),
        })
    }
}

/// Compiles `config` as a data plane would and throws the result away: the control plane runs this
/// before it signs, so a bundle the data planes cannot compile is never published.
pub fn compile_check(config: &Config) -> Result<(), CompileError> {
    let meta = SnapshotMeta {
        version: 0,
        source: String::new(),
        sha256: String::new(),
        loaded_at: SystemTime::now(),
    };
    Snapshot::compile(config.clone(), meta, &PoolRegistry::new(1), &RouteRegistry::default()).map(drop)
}

/// `"a.b: message"` into its path and message.
fn split(e: &str) -> CompileError {
    let (path, message) = e.split_once(": ").unwrap_or(("", e));
    CompileError { path: path.to_owned(), message: message.to_owned() }
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
