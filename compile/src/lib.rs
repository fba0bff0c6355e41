//! One compile step, shared by both planes: a validated [`Config`] becomes the matchers and rules
//! a data plane serves with. The control plane runs the same [`compile`] before it signs, so a
//! published bundle compiles everywhere; it needs nothing of the proxy to do so.
//!
//! `sluice_bundle::parse` already refused everything this step could refuse (regexes, header
//! names, methods, addresses, references); the errors here are `ConfigError` values with the same
//! paths, kept so that a gap between the two is a clear error rather than a panic, and a property
//! test holds them together (`accepts.rs`). What a data plane adds on top (pool connections,
//! canary brakes, mirror state) cannot fail; only facts of the node can, and those are checked by
//! the data plane, never here: this crate reads no files.
//!
//! API boundary: no sockets, no tokio, no runtime state.

#![forbid(unsafe_code)]

#[cfg(test)]
mod accepts;
pub mod diff;
pub mod router;

use std::collections::HashMap;
use std::str::FromStr;

use http::uri::Authority;
use http::{HeaderName, Method};
use sluice_bundle::{Config, ConfigError, ConfigErrors, MAX_COHORTS, Mirror, Route};

use crate::diff::DiffRules;
use crate::router::Router;

/// A config's matchers and rules, by index: `pools[i]` is `config.pools[i]`, `routes[i]` is
/// `config.routes[i]`.
#[derive(Debug)]
pub struct Compiled {
    pub router: Router,
    pub pools: Vec<PoolPlan>,
    pub routes: Vec<RoutePlan>,
}

/// A pool's endpoints as requests address them.
#[derive(Debug)]
pub struct PoolPlan {
    pub endpoints: Box<[Authority]>,
}

/// A route with its pool references resolved to indexes.
#[derive(Debug)]
pub struct RoutePlan {
    /// `None`: the route answers itself (a redirect or a direct response).
    pub pool: Option<usize>,
    pub split: Option<SplitPlan>,
    pub mirror: Option<MirrorPlan>,
}

/// A route's canary and cohorts, resolved.
#[derive(Debug)]
pub struct SplitPlan {
    pub canary_pool: Option<usize>,
    pub cohorts: Option<CohortPlan>,
}

#[derive(Debug)]
pub struct CohortPlan {
    pub key: CohortKey,
    /// Each cohort value and its pool, in the config's (sorted) order.
    pub values: Vec<(Box<str>, usize)>,
}

/// What carries a request's cohort.
#[derive(Debug, Clone)]
pub enum CohortKey {
    Header(HeaderName),
    Cookie(Box<str>),
}

/// A route's mirror, resolved.
#[derive(Debug)]
pub struct MirrorPlan {
    pub pool: usize,
    pub methods: Box<[Method]>,
    pub diff: Option<DiffPlan>,
}

#[derive(Debug)]
pub struct DiffPlan {
    pub rules: DiffRules,
    /// The second baseline's pool.
    pub baseline_pool: Option<usize>,
}

/// Compiles `config`, reporting every problem at once, each at its path.
pub fn compile(config: &Config) -> Result<Compiled, ConfigErrors> {
    let mut errors = Vec::new();
    let router = Router::compile(&config.routes).map_err(|e| errors.extend(e.0)).ok();
    let pools: Vec<PoolPlan> =
        config.pools.iter().enumerate().map(|(i, p)| pool(p, &format!("pools[{i}]"), &mut errors)).collect();
    let by_name: HashMap<&str, usize> =
        config.pools.iter().enumerate().map(|(i, p)| (p.name.as_str(), i)).collect();
    let mut routes = Vec::with_capacity(config.routes.len());
    for (i, r) in config.routes.iter().enumerate() {
        let mut at = Resolver { by_name: &by_name, path: format!("routes[{i}]"), errors: &mut errors };
        if let Some(plan) = route(r, &mut at) {
            routes.push(plan);
        }
    }
    match router {
        Some(router) if errors.is_empty() => Ok(Compiled { router, pools, routes }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// Pool names to indexes, and where errors go.
struct Resolver<'a> {
    by_name: &'a HashMap<&'a str, usize>,
    /// The route's path, e.g. `routes[3]`.
    path: String,
    errors: &'a mut Vec<ConfigError>,
}

impl Resolver<'_> {
    fn error(&mut self, field: &str, message: String) {
        self.errors.push(ConfigError { path: format!("{}.{field}", self.path), message });
    }

    fn pool(&mut self, field: &str, name: &str) -> Option<usize> {
        let found = self.by_name.get(name).copied();
        if found.is_none() {
            self.error(field, format!("unknown pool `{name}`"));
        }
        found
    }
}

fn pool(p: &sluice_bundle::Pool, path: &str, errors: &mut Vec<ConfigError>) -> PoolPlan {
    let mut endpoints = Vec::with_capacity(p.endpoints.len());
    for (i, e) in p.endpoints.iter().enumerate() {
        match Authority::from_str(&e.address) {
            Ok(a) => endpoints.push(a),
            Err(err) => errors.push(ConfigError {
                path: format!("{path}.endpoints[{i}].address"),
                message: format!("invalid address {:?}: {err}", e.address),
            }),
        }
    }
    PoolPlan { endpoints: endpoints.into() }
}

fn route(r: &Route, at: &mut Resolver<'_>) -> Option<RoutePlan> {
    // `None`: the route answers itself (a redirect, a direct response).
    let pool = r.pool.as_ref().map(|name| at.pool("pool", name));
    let split = split(r, at);
    let mirror = match &r.mirror {
        Some(m) => Some(mirror(m, at)?),
        None => None,
    };
    let pool = match pool {
        Some(found) => Some(found?),
        None => None,
    };
    Some(RoutePlan { pool, split: split?, mirror })
}

/// `Some(None)`: the route has no split; `None`: it has errors.
fn split(r: &Route, at: &mut Resolver<'_>) -> Option<Option<SplitPlan>> {
    if r.canary.is_none() && r.cohorts.is_none() {
        return Some(None);
    }
    let before = at.errors.len();
    let canary_pool = r.canary.as_ref().and_then(|c| at.pool("canary.pool", &c.pool));
    let cohorts = r.cohorts.as_ref().and_then(|c| {
        let key = match (&c.header, &c.cookie) {
            (Some(h), None) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) => CohortKey::Header(name),
                Err(_) => {
                    at.error("cohorts.header", format!("invalid header name {h:?}"));
                    return None;
                }
            },
            (None, Some(c)) => CohortKey::Cookie(c.as_str().into()),
            _ => {
                at.error("cohorts", "needs exactly one of a header or a cookie".into());
                return None;
            }
        };
        // Variants are indexed by a byte: stable, canary, then the cohorts.
        if c.values.len() > MAX_COHORTS {
            at.error("cohorts.values", format!("{} cohorts; at most {MAX_COHORTS}", c.values.len()));
        }
        let values = c
            .values
            .iter()
            .filter_map(|(value, pool)| {
                let pool = at.pool(&format!("cohorts.values.{value}"), pool)?;
                Some((value.as_str().into(), pool))
            })
            .collect();
        Some(CohortPlan { key, values })
    });
    (at.errors.len() == before).then_some(Some(SplitPlan { canary_pool, cohorts }))
}

fn mirror(m: &Mirror, at: &mut Resolver<'_>) -> Option<MirrorPlan> {
    let before = at.errors.len();
    let pool = at.pool("mirror.pool", &m.pool);
    let mut methods = Vec::new();
    for (i, s) in m.methods_or_default().iter().enumerate() {
        match Method::from_bytes(s.as_bytes()) {
            Ok(method) => methods.push(method),
            Err(_) => at.error(&format!("mirror.methods[{i}]"), format!("invalid method {s:?}")),
        }
    }
    let diff = m.diff.as_ref().and_then(|d| {
        let rules =
            DiffRules::new(&d.headers, &d.ignore, &d.mask, &d.mask_patterns, d.mask_defaults_or_default())
                .map_err(|errors| {
                    for e in errors {
                        at.error(&format!("mirror.diff.{}", e.path), e.message);
                    }
                })
                .ok();
        let baseline_pool = match &d.baseline {
            Some(b) => Some(at.pool("mirror.diff.baseline.pool", &b.pool)?),
            None => None,
        };
        Some(DiffPlan { rules: rules?, baseline_pool })
    });
    if at.errors.len() > before {
        return None;
    }
    Some(MirrorPlan { pool: pool?, methods: methods.into(), diff })
}
