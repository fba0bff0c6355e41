//! Each route's lasting state: its retry and hedge budgets, its latency (for hedging after the
//! live p95) and its rate-limit buckets. Kept by route name across snapshots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sluice_bundle::{Config, RateLimit};

use crate::auth::ext_authz::AuthzStats;
use crate::auth::jwks::KeySources;
use crate::auth::jwt::JwtStats;
use crate::metrics::RequestStats;
use crate::resilience::latency::Latency;
use crate::resilience::limit::RateLimiter;
use crate::resilience::retry::Budgets;
use crate::shadow::MirrorState;
use crate::split::SplitRegistry;
use crate::sync::lock;

/// One route's lasting state.
#[derive(Debug, Default)]
pub struct RouteRuntime {
    /// Its requests, the proxy's own errors included.
    pub metrics: RequestStats,
    /// Its variants' counters and its canary's brake.
    pub(crate) split: SplitRegistry,
    /// Its mirror's counters, diff statistics and guardrail.
    pub(crate) mirror: Arc<MirrorState>,
    pub budgets: Budgets,
    pub latency: Latency,
    pub rate: RateLimiter,
    /// Its JWT checks, by outcome.
    pub(crate) jwt: JwtStats,
    /// Its external authorization checks, by result.
    pub(crate) authz: AuthzStats,
    /// WebSocket upgrades passed through (101 answers).
    pub upgrades: std::sync::atomic::AtomicU64,
    /// The rate limit its buckets were filled under; a change starts them afresh.
    rate_config: Mutex<Option<RateLimit>>,
}

/// Every route's lasting state, by name.
#[derive(Debug, Default)]
pub struct RouteRegistry {
    routes: Mutex<HashMap<String, Arc<RouteRuntime>>>,
    /// The JWT key sources routes name, shared by routes and snapshots naming the same one.
    pub(crate) jwks: KeySources,
    /// The routes' response caches and the node's cache memory.
    pub(crate) caches: crate::cache::Caches,
}

impl RouteRegistry {
    /// A registry whose routes' caches share `bytes`.
    pub fn with_cache_memory(bytes: u64) -> Self {
        let r = Self::default();
        r.caches.memory.store(bytes, std::sync::atomic::Ordering::Relaxed);
        r
    }

    /// The state of route `name`, created on first use.
    pub fn runtime(&self, name: &str) -> Arc<RouteRuntime> {
        lock(&self.routes).entry(name.to_owned()).or_default().clone()
    }

    /// Takes a new snapshot's rate limits (after the swap, so a refused config changes nothing).
    pub fn activate<'a>(&self, routes: impl IntoIterator<Item = (&'a RouteRuntime, Option<&'a RateLimit>)>) {
        for (rt, limit) in routes {
            let mut current = lock(&rt.rate_config);
            if current.as_ref() != limit {
                rt.rate.clear();
                *current = limit.cloned();
            }
        }
    }

    /// Forgets routes the active config no longer names.
    pub fn retain(&self, config: &Config) {
        // A set, not a scan per route: 20,000 routes would be 200 million comparisons.
        let names: std::collections::HashSet<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
        lock(&self.routes).retain(|name, _| names.contains(&**name));
        self.caches.retain(config);
    }
}
