//! The response cache of routes with `cache` (RFC 9111, as a shared cache): the store, the
//! objects in it, requests for the same object waiting on one upstream request, and the body
//! tee that stores a response while it streams to its client. What a request may be answered
//! with is decided in `proxy::cache`; this module keeps objects and counts.
//!
//! Keys: the route (each route has its own store, replaced when its config changes), the pool
//! the request was split to, whether the request was authorized, the host and the path with its
//! query. A response with `Vary` leaves a marker under that key naming the fields, and is stored
//! under the key plus those fields' values; a new marker (another `Vary`, an invalidation)
//! orphans the variants of the old one, which eviction then takes.

pub(crate) mod control;

use std::collections::HashMap;
use std::hash::RandomState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, StatusCode};
use quick_cache::Lifecycle;
use tokio::sync::Notify;

use crate::sync::lock;

/// What a store entry costs beyond its bytes (the key, the map, the object's fields).
const OVERHEAD: u64 = 256;

/// The results a cached route's requests are counted by (`sluice_cache_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered from the store, fresh.
    Hit,
    /// Went upstream: nothing usable was stored.
    Miss,
    /// Answered from the store, stale (allowed by the request, `stale-while-revalidate` or
    /// `stale-if-error`).
    Stale,
    /// A stale object confirmed by the upstream (`304`) and answered from the store.
    Revalidated,
    /// Not looked up: a method, range or authorization the cache does not serve.
    Bypass,
    /// Answered from the store after waiting for another request's upstream answer.
    Coalesced,
}

impl Outcome {
    pub const ALL: [Outcome; 6] =
        [Self::Hit, Self::Miss, Self::Stale, Self::Revalidated, Self::Bypass, Self::Coalesced];

    pub fn name(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Revalidated => "revalidated",
            Self::Bypass => "bypass",
            Self::Coalesced => "coalesced",
        }
    }

    /// Whether the upstream answered this request (a hit says nothing about its health).
    pub fn upstream_answered(self) -> bool {
        matches!(self, Self::Miss | Self::Revalidated | Self::Bypass)
    }
}

/// `Cache-Status` (RFC 9211).
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What the cache did with a request, for `Cache-Status`, the access log and the counters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Note {
    pub outcome: Outcome,
    /// `fwd=` for a request that went upstream.
    pub fwd: Option<&'static str>,
    pub stored: bool,
    /// Seconds of freshness left (negative: stale) of what was served from the store.
    pub ttl: Option<i64>,
    pub detail: Option<&'static str>,
    /// The upstream's status (0: none).
    pub fwd_status: u16,
}

impl Note {
    pub fn new(outcome: Outcome, fwd: Option<&'static str>) -> Self {
        Self { outcome, fwd, stored: false, ttl: None, detail: None, fwd_status: 0 }
    }

    /// The `Cache-Status` member of this cache.
    pub fn header(&self) -> HeaderValue {
        let upstream_status = (self.fwd_status != 0).then_some(self.fwd_status);
        let mut s = String::from("sluice");
        match self.outcome {
            Outcome::Hit | Outcome::Stale | Outcome::Coalesced => s.push_str("; hit"),
            _ => {}
        }
        if let Some(fwd) = self.fwd {
            s.push_str("; fwd=");
            s.push_str(fwd);
            if let Some(st) = upstream_status {
                s.push_str("; fwd-status=");
                s.push_str(itoa::Buffer::new().format(st));
            }
        }
        if let Some(ttl) = self.ttl {
            s.push_str("; ttl=");
            s.push_str(itoa::Buffer::new().format(ttl));
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.outcome == Outcome::Coalesced {
            s.push_str("; collapsed");
        }
        if let Some(d) = self.detail {
            s.push_str("; detail=");
            s.push_str(d);
        }
        HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("sluice"))
    }
}

/// Why a response was passed through without being stored (`sluice_cache_not_stored_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    /// `no-store` (the response's or the request's).
    NoStore,
    /// `private`, or a response to an authorized request without `public`, `s-maxage` or
    /// `must-revalidate`.
    Private,
    /// Neither fresh nor revalidatable, a status not cacheable without explicit freshness, or a
    /// status not understood with `must-understand`.
    Uncacheable,
    /// `Vary: *`, or a field outside the route's `cache.vary`.
    Vary,
    /// Over the route's `cache.max_object`.
    TooLarge,
    /// Unreadable or conflicting caching fields (`Age`, `Cache-Control` values).
    Malformed,
    /// The body failed or the client left before it was whole.
    Incomplete,
}

impl NotStored {
    pub const ALL: [NotStored; 7] = [
        Self::NoStore,
        Self::Private,
        Self::Uncacheable,
        Self::Vary,
        Self::TooLarge,
        Self::Malformed,
        Self::Incomplete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::NoStore => "no_store",
            Self::Private => "private",
            Self::Uncacheable => "uncacheable",
            Self::Vary => "vary",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::Incomplete => "incomplete",
        }
    }
}

/// A route's `cache` as the request path uses it.
#[derive(Debug)]
pub(crate) struct Settings {
    pub max_object: u64,
    /// Lower case.
    pub vary: Box<[HeaderName]>,
    pub authorized: bool,
    pub heuristic: Option<f64>,
    pub coalesce: Duration,
}

/// Counters of one route's cache.
#[derive(Debug, Default)]
pub(crate) struct CacheStats {
    pub results: [AtomicU64; Outcome::ALL.len()],
    pub not_stored: [AtomicU64; NotStored::ALL.len()],
    pub evictions: AtomicU64,
    /// Objects removed by unsafe methods and purges.
    pub invalidations: AtomicU64,
}

impl CacheStats {
    pub fn count(&self, o: Outcome) {
        self.results[o as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn not_stored(&self, why: NotStored) {
        self.not_stored[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Where an object is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub pool: u32,
    pub authorized: bool,
    /// Host (lower case), a NUL, the path and query.
    pub target: Box<[u8]>,
    /// A `Vary` marker's generation and the request's values of its fields.
    pub variant: Option<(u64, Box<[u8]>)>,
}

/// A stored response.
#[derive(Debug)]
pub(crate) struct Object {
    pub status: StatusCode,
    /// As stored: no hop-by-hop fields, no `Age`, none that `no-cache="…"` or `private="…"` named.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the response (or the `304` that last confirmed it) arrived.
    pub response_time: SystemTime,
    /// Its age when it arrived (RFC 9111 §4.2.3, `corrected_initial_age`); `None`: unreadable,
    /// so it is stale.
    pub initial_age: Option<Duration>,
    /// `None`: stale from the start.
    pub lifetime: Option<Duration>,
    /// Never served stale without revalidation (`must-revalidate`, `proxy-revalidate`,
    /// `s-maxage`, `no-cache`).
    pub strict: bool,
    /// `no-cache`: every use revalidates.
    pub no_cache: bool,
    pub stale_while_revalidate: Option<Duration>,
    pub stale_if_error: Option<Duration>,
    pub etag: Option<HeaderValue>,
    pub last_modified: Option<HeaderValue>,
    weight: u64,
}

impl Object {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        response_time: SystemTime,
        initial_age: Option<Duration>,
        lifetime: Option<Duration>,
        cc: &control::ResponseDirectives,
    ) -> Self {
        let etag = headers.get(http::header::ETAG).cloned();
        let last_modified = headers.get(http::header::LAST_MODIFIED).cloned();
        let header_bytes: usize = headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 32).sum();
        let secs = |s: Option<control::Seconds>| s.and_then(control::Seconds::get).map(Duration::from_secs);
        Self {
            status,
            weight: OVERHEAD + (header_bytes + body.len()) as u64,
            headers,
            body,
            response_time,
            initial_age,
            lifetime,
            strict: cc.revalidate_when_stale(),
            no_cache: cc.no_cache,
            stale_while_revalidate: secs(cc.stale_while_revalidate),
            stale_if_error: secs(cc.stale_if_error),
            etag,
            last_modified,
        }
    }

    /// Its current age (RFC 9111 §4.2.3); `None`: unknown, so stale.
    pub fn age(&self, now: SystemTime) -> Option<Duration> {
        let resident = now.duration_since(self.response_time).unwrap_or_default();
        Some(self.initial_age? + resident)
    }

    /// How much longer it is fresh (negative: stale by that much).
    pub fn ttl(&self, now: SystemTime) -> i64 {
        match (self.lifetime, self.age(now)) {
            (Some(l), Some(a)) => l.as_secs() as i64 - a.as_secs() as i64 - i64::from(a.subsec_nanos() > 0),
            (_, Some(a)) => -(a.as_secs() as i64),
            _ => i64::MIN / 2,
        }
    }

    pub fn is_fresh(&self, now: SystemTime) -> bool {
        match (self.lifetime, self.age(now)) {
            (Some(l), Some(a)) => l > a,
            _ => false,
        }
    }

    /// How long it has been stale.
    pub fn staleness(&self, now: SystemTime) -> Option<Duration> {
        Some(self.age(now)?.saturating_sub(self.lifetime.unwrap_or_default()))
    }

    pub fn has_validator(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }
}

/// A key's entry.
#[derive(Debug, Clone)]
enum Stored {
    Object(Arc<Object>),
    /// The response here varies on these fields; variants are under keys with this generation.
    Vary {
        names: Arc<[HeaderName]>,
        generation: u64,
    },
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Key, Stored> for Weigh {
    fn weight(&self, key: &Key, val: &Stored) -> u64 {
        let k = key.target.len() + key.variant.as_ref().map_or(0, |(_, v)| v.len());
        k as u64
            + match val {
                Stored::Object(o) => o.weight,
                Stored::Vary { names, .. } => OVERHEAD + 32 * names.len() as u64,
            }
    }
}

/// Counts evictions.
#[derive(Clone)]
struct Evictions(Arc<CacheStats>);

impl Lifecycle<Key, Stored> for Evictions {
    type RequestState = ();

    fn begin_request(&self) {}

    fn on_evict(&self, _: &mut (), _: Key, _: Stored) {
        self.0.evictions.fetch_add(1, Ordering::Relaxed);
    }
}

type Store = quick_cache::sync::Cache<Key, Stored, Weigh, RandomState, Evictions>;

/// One route's cache.
pub(crate) struct RouteCache {
    store: Store,
    pub settings: Settings,
    pub stats: Arc<CacheStats>,
    capacity: u64,
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
    generation: AtomicU64,
    /// The pools objects were stored for (invalidation removes a target under each).
    pools: Mutex<Vec<u32>>,
    /// Bytes held by bodies being stored as they stream: at most the capacity, so concurrent
    /// large downloads cannot take more memory than the store itself may.
    filling: AtomicU64,
    /// What it was made for: a route with another config, or pools in another order, gets a new one.
    made_for: (sluice_bundle::Route, Box<[Box<str>]>),
}

impl std::fmt::Debug for RouteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteCache").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

/// What a lookup found under a key.
pub(crate) struct Found {
    pub object: Option<Arc<Object>>,
    /// The key the object is (or would be) under: the variant's when the key has a `Vary` marker.
    pub key: Key,
}

impl RouteCache {
    /// A cache for `route` (which has `cache`), holding at most `capacity` bytes.
    pub fn new(route: &sluice_bundle::Route, pools: Box<[Box<str>]>, capacity: u64) -> Self {
        let c = route.cache.as_ref().expect("a cached route");
        let max_object = c.max_object_or_default();
        let stats = Arc::new(CacheStats::default());
        // quick_cache splits its capacity into shards and refuses an object larger than a shard:
        // every shard holds at least 8 of the largest objects.
        let mut shards = 16usize;
        while shards > 1 && capacity / (shards as u64) < max_object.saturating_add(OVERHEAD) * 8 {
            shards /= 2;
        }
        let options = quick_cache::OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity((capacity / 4096).clamp(64, 1 << 20) as usize)
            .weight_capacity(capacity.max(1))
            .build()
            .expect("valid cache options");
        let store = Store::with_options(options, Weigh, RandomState::new(), Evictions(stats.clone()));
        Self {
            store,
            settings: Settings {
                max_object,
                vary: c
                    .vary_or_default()
                    .iter()
                    .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                    .collect(),
                authorized: c.authorized == Some(true),
                heuristic: c.heuristic_percent,
                coalesce: c.coalesce_timeout_or_default().get(),
            },
            stats,
            capacity,
            flights: Mutex::default(),
            generation: AtomicU64::new(1),
            pools: Mutex::default(),
            filling: AtomicU64::new(0),
            made_for: (route.clone(), pools),
        }
    }

    /// Whether this cache was made for `route` with these pools (and can be kept).
    pub fn made_for(&self, route: &sluice_bundle::Route, pools: &[Box<str>], capacity: u64) -> bool {
        self.capacity == capacity && self.made_for.0 == *route && *self.made_for.1 == *pools
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held (by the store's own reckoning: bodies, fields, keys and overhead).
    pub fn weight(&self) -> u64 {
        self.store.weight()
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// The object for a request, following a `Vary` marker with the request's fields.
    pub fn find(&self, key: Key, request: &HeaderMap) -> Found {
        match self.store.get(&key) {
            Some(Stored::Object(o)) => Found { object: Some(o), key },
            Some(Stored::Vary { names, generation }) => {
                let key = Key { variant: Some((generation, variance(&names, request))), ..key };
                let object = match self.store.get(&key) {
                    Some(Stored::Object(o)) => Some(o),
                    _ => None,
                };
                Found { object, key }
            }
            None => Found { object: None, key },
        }
    }

    /// Stores `object` under `key` (no variant), or under a variant of it when it varies on
    /// `vary` (the request's values of those fields were `request`).
    pub fn insert(&self, key: Key, vary: Option<Arc<[HeaderName]>>, request: &HeaderMap, object: Object) {
        if object.weight > self.settings.max_object + OVERHEAD * 64 {
            return;
        }
        {
            let mut pools = lock(&self.pools);
            if !pools.contains(&key.pool) {
                pools.push(key.pool);
            }
        }
        let object = Stored::Object(Arc::new(object));
        let Some(names) = vary else {
            self.store.insert(Key { variant: None, ..key }, object);
            return;
        };
        let base = Key { variant: None, ..key };
        let generation = match self.store.peek(&base) {
            Some(Stored::Vary { names: old, generation }) if *old == *names => generation,
            _ => {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                self.store.insert(base.clone(), Stored::Vary { names: names.clone(), generation });
                generation
            }
        };
        let variant = Key { variant: Some((generation, variance(&names, request))), ..base };
        self.store.insert(variant, object);
    }

    /// Replaces the object under `key` (a variant key stays under its marker) if it is still
    /// `old`, after a revalidation.
    pub fn replace(&self, key: Key, old: &Arc<Object>, object: Object) -> Arc<Object> {
        let new = Arc::new(object);
        if let Some(Stored::Object(cur)) = self.store.peek(&key)
            && Arc::ptr_eq(&cur, old)
        {
            self.store.insert(key, Stored::Object(new.clone()));
        }
        new
    }

    /// Removes what is stored for `target` (every pool, both authorization classes, every
    /// variant). Returns how many keys held something.
    pub fn invalidate(&self, target: &[u8]) -> usize {
        let pools = lock(&self.pools).clone();
        let mut removed = 0;
        for pool in pools {
            for authorized in [false, true] {
                let key = Key { pool, authorized, target: target.into(), variant: None };
                if self.store.remove(&key).is_some() {
                    removed += 1;
                }
            }
        }
        self.stats.invalidations.fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }

    /// Removes every object whose path (with its query) is `path`, or starts with `prefix`;
    /// both `None`: everything. Returns how many entries went.
    pub fn purge(&self, path: Option<&[u8]>, prefix: Option<&[u8]>) -> usize {
        let before = self.store.len();
        self.store.retain(|k, _| {
            let p = k.target.iter().position(|b| *b == 0).map_or(&k.target[..], |i| &k.target[i + 1..]);
            let hit = match (path, prefix) {
                (Some(want), _) => {
                    p == want || p.strip_prefix(want).is_some_and(|rest| rest.first() == Some(&b'?'))
                }
                (None, Some(pre)) => p.starts_with(pre),
                (None, None) => true,
            };
            !hit
        });
        let removed = before.saturating_sub(self.store.len());
        self.stats.invalidations.fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }

    /// Takes the lead in fetching `key`, or the flight already fetching it.
    pub fn join(self: &Arc<Self>, key: &Key) -> Join {
        let mut flights = lock(&self.flights);
        if let Some(f) = flights.get(key) {
            return Join::Follow(f.clone());
        }
        let flight = Arc::new(Flight::default());
        flights.insert(key.clone(), flight.clone());
        Join::Lead(Leader { cache: self.clone(), key: key.clone(), flight, stored: false })
    }
}

/// The values of `names` in `request`: each field's lines joined, absent fields marked apart
/// from empty ones.
pub(crate) fn variance(names: &[HeaderName], request: &HeaderMap) -> Box<[u8]> {
    let mut out = Vec::with_capacity(32);
    for name in names {
        let mut lines = request.get_all(name).iter().peekable();
        if lines.peek().is_none() {
            out.push(1);
        }
        for (i, v) in lines.enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend(
                v.as_bytes()
                    .split(|b| *b == b',')
                    .map(<[u8]>::trim_ascii)
                    .collect::<Vec<_>>()
                    .join(&b","[..]),
            );
        }
        out.push(0);
    }
    out.into_boxed_slice()
}

/// Requests for the same object while one of them is upstream.
#[derive(Debug, Default)]
pub(crate) struct Flight {
    notify: Notify,
    /// `Some(stored)` once the leader is done.
    done: Mutex<Option<bool>>,
}

pub(crate) enum Join {
    Lead(Leader),
    Follow(Arc<Flight>),
}

impl Flight {
    /// Waits for the leader, at most `timeout`. `Some(true)`: it stored the object; `Some(false)`:
    /// it did not (go upstream yourself, without waiting again); `None`: timed out.
    pub async fn wait(&self, timeout: Duration) -> Option<bool> {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(done) = *lock(&self.done) {
            return Some(done);
        }
        tokio::time::timeout(timeout, notified).await.ok()?;
        *lock(&self.done)
    }
}

/// The request fetching an object for others; dropping it lets them go.
pub(crate) struct Leader {
    cache: Arc<RouteCache>,
    key: Key,
    flight: Arc<Flight>,
    stored: bool,
}

impl Drop for Leader {
    fn drop(&mut self) {
        {
            let mut flights = lock(&self.cache.flights);
            if flights.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &self.flight)) {
                flights.remove(&self.key);
            }
        }
        *lock(&self.flight.done) = Some(self.stored);
        self.flight.notify.notify_waiters();
    }
}

/// A response being stored as it streams to its client.
pub(crate) struct Fill {
    cache: Arc<RouteCache>,
    key: Key,
    vary: Option<Arc<[HeaderName]>>,
    /// The request's fields `vary` names (only those).
    request: HeaderMap,
    object: Option<Object>,
    body: BytesMut,
    leader: Option<Leader>,
    spoiled: bool,
    /// What this body counts in its cache's `filling`.
    reserved: u64,
}

impl Fill {
    pub fn new(
        cache: Arc<RouteCache>,
        key: Key,
        vary: Option<Arc<[HeaderName]>>,
        request: HeaderMap,
        object: Object,
        leader: Option<Leader>,
    ) -> Self {
        Self {
            cache,
            key,
            vary,
            request,
            object: Some(object),
            body: BytesMut::new(),
            leader,
            spoiled: false,
            reserved: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.spoiled {
            return;
        }
        let n = data.len() as u64;
        let room = self.cache.filling.fetch_add(n, Ordering::Relaxed) + n <= self.cache.capacity;
        self.reserved += n;
        if !room || (self.body.len() + data.len()) as u64 > self.cache.settings.max_object {
            self.spoil(NotStored::TooLarge);
            return;
        }
        self.body.extend_from_slice(data);
    }

    /// Trailers are not stored: an answer that has them is passed through only.
    pub fn trailers(&mut self) {
        if !self.spoiled {
            self.spoil(NotStored::Uncacheable);
        }
    }

    fn spoil(&mut self, why: NotStored) {
        self.spoiled = true;
        self.body = BytesMut::new();
        self.release();
        self.cache.stats.not_stored(why);
    }

    fn release(&mut self) {
        self.cache.filling.fetch_sub(std::mem::take(&mut self.reserved), Ordering::Relaxed);
    }

    /// The body ended whole: the object goes into the store.
    pub fn finish(&mut self) {
        let Some(mut object) = self.object.take() else { return };
        if self.spoiled {
            return;
        }
        let body = std::mem::take(&mut self.body).freeze();
        self.release();
        object.weight += body.len() as u64;
        object.body = body;
        self.cache.insert(self.key.clone(), self.vary.take(), &self.request, object);
        if let Some(l) = &mut self.leader {
            l.stored = true;
        }
        self.leader = None;
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        self.release();
        if self.object.is_some() && !self.spoiled {
            self.cache.stats.not_stored(NotStored::Incomplete);
        }
    }
}

/// The routes' caches, by route name, kept across configs that leave a route as it was.
#[derive(Debug, Default)]
pub(crate) struct Caches {
    /// `--cache-memory`: what all routes' caches together may hold, in bytes.
    pub memory: AtomicU64,
    routes: Mutex<HashMap<String, Arc<RouteCache>>>,
}

impl Caches {
    /// The cache of `route` (which has `cache`) in a config with these pools: the current one
    /// when it was made for the same route config and pools, else a new, empty one.
    pub fn for_route(&self, route: &sluice_bundle::Route, pools: &[Box<str>]) -> Arc<RouteCache> {
        let share = route.cache.as_ref().map_or(0.0, |c| c.memory_percent);
        let capacity = (self.memory.load(Ordering::Relaxed) as f64 * share / 100.0) as u64;
        let mut routes = lock(&self.routes);
        if let Some(c) = routes.get(&route.name)
            && c.made_for(route, pools, capacity)
        {
            return c.clone();
        }
        let c = Arc::new(RouteCache::new(route, pools.into(), capacity));
        routes.insert(route.name.clone(), c.clone());
        c
    }

    /// Forgets the caches of routes the active config does not cache.
    pub fn retain(&self, config: &sluice_bundle::Config) {
        let names: std::collections::HashSet<&str> =
            config.routes.iter().filter(|r| r.cache.is_some()).map(|r| r.name.as_str()).collect();
        lock(&self.routes).retain(|name, _| names.contains(&**name));
    }
}

#[cfg(test)]
mod tests;
