//! Cache: for a route with `cache`, whether the request is answered from the store (fresh, or
//! stale where the response and the request allow), waits for another request fetching the same
//! object, or goes upstream (conditionally when a stale object has a validator); and, once the
//! upstream answered ([`settle`]), whether the answer is stored, confirms the stored object
//! (`304`), or is replaced by it (`stale-if-error`). Unsafe methods invalidate.
//!
//! Runs after every check that decides who may see what (JWT, `ext_authz`, client
//! certificates): a hit is only ever served to a request those let through. It may not hold any
//! upstream capacity: a hit takes none.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{
    AGE, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, DATE, ETAG, EXPIRES, HeaderName,
    HeaderValue, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED,
    LOCATION, RANGE, VARY,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};

use super::context::{Record, Trail};
use super::route::Routed;
use crate::body::{ClientBody, ProxyBody};
use crate::cache::control::{
    self, CAPABILITY, RequestDirectives, ResponseDirectives, SURROGATE_CAPABILITY, SURROGATE_CONTROL,
};
use crate::cache::{Fill, Found, Join, Key, Leader, NotStored, Note, Object, Outcome, RouteCache};
use crate::error::ProxyError;

/// What the cache decided before the exchange.
pub(super) enum Lookup {
    /// The route does not cache.
    Off,
    /// Answered from the store; with a plan, a stale answer whose request goes on upstream in the
    /// background to refresh it (`stale-while-revalidate`).
    Answer(Box<Response<ProxyBody>>, Option<Box<Plan>>),
    /// Goes upstream; [`settle`] decides what becomes of the answer.
    Forward(Box<Plan>),
}

/// A request going upstream from a cached route.
pub(super) struct Plan {
    cache: Arc<RouteCache>,
    key: Key,
    /// `false`: nothing from this request's answer is stored (`HEAD`, `no-store`, a bypass).
    store: bool,
    /// An unsafe method: a success invalidates the target.
    invalidate: bool,
    /// Not looked up (counted as a bypass already).
    bypass: bool,
    /// The stored object it revalidates, or may fall back on (`stale-if-error`).
    stale: Option<Arc<Object>>,
    /// The cache added validators of `stale` to the request.
    conditional: bool,
    leader: Option<Leader>,
    /// The request's fields the route may vary on, its method and its conditionals.
    request: HeaderMap,
    head: bool,
    request_time: SystemTime,
    authorized: bool,
}

/// Looks the request up in its route's cache.
pub(super) async fn lookup(
    routed: &Routed<'_>,
    req: &mut Request<ClientBody>,
    record: &mut Record,
) -> Result<Lookup, ProxyError> {
    let Some(cache) = &routed.route.cache else { return Ok(Lookup::Off) };
    let trail = &mut record.trail;
    let method = req.method();
    let head = method == Method::HEAD;
    let target = target(routed, req);
    let authorized = req.headers().contains_key(AUTHORIZATION)
        || routed.route.jwt.is_some()
        || routed.route.ext_authz.is_some()
        || routed.route.client_certificate.is_some();
    let key = Key { pool: trail.pool, authorized, target, variant: None };
    let plan = |key, store, invalidate| Plan {
        cache: cache.clone(),
        key,
        store,
        invalidate,
        bypass: false,
        stale: None,
        conditional: false,
        leader: None,
        request: HeaderMap::new(),
        head,
        request_time: SystemTime::now(),
        authorized,
    };
    // A WebSocket handshake is a conversation, never an object.
    if crate::headers::websocket_upgrade(req.version(), req.headers()) {
        bypass(cache, trail, Note { detail: Some("upgrade"), ..Note::new(Outcome::Bypass, Some("bypass")) });
        return Ok(Lookup::Forward(Box::new(Plan { bypass: true, ..plan(key, false, false) })));
    }
    if method != Method::GET && !head {
        let safe = matches!(*method, Method::OPTIONS | Method::TRACE);
        let mut note = Note::new(Outcome::Bypass, Some("method"));
        note.detail = None;
        bypass(cache, trail, note);
        return Ok(Lookup::Forward(Box::new(Plan { bypass: true, ..plan(key, false, !safe) })));
    }
    if authorized && !cache.settings.authorized {
        bypass(
            cache,
            trail,
            Note { detail: Some("authorized"), ..Note::new(Outcome::Bypass, Some("bypass")) },
        );
        return Ok(Lookup::Forward(Box::new(Plan { bypass: true, ..plan(key, false, false) })));
    }
    if req.headers().contains_key(RANGE) {
        // Ranges are passed through (and never stored); see docs/config.md.
        bypass(cache, trail, Note { detail: Some("range"), ..Note::new(Outcome::Bypass, Some("bypass")) });
        return Ok(Lookup::Forward(Box::new(Plan { bypass: true, ..plan(key, false, false) })));
    }
    req.headers_mut().insert(SURROGATE_CAPABILITY, CAPABILITY);
    let rd = RequestDirectives::of(req.headers());
    let mut coalesced = false;
    let mut waited = false;
    loop {
        let now = SystemTime::now();
        let Found { object, key } = cache.find(key.clone(), req.headers());
        if let Some(obj) = &object {
            match usable(obj, &rd, now) {
                Use::Fresh => {
                    let outcome = if coalesced { Outcome::Coalesced } else { Outcome::Hit };
                    let note = Note { ttl: Some(obj.ttl(now)), ..Note::new(outcome, None) };
                    return Ok(Lookup::Answer(Box::new(serve(cache, obj, req, now, note, trail)), None));
                }
                Use::Stale(detail) => {
                    let note = Note {
                        ttl: Some(obj.ttl(now)),
                        detail: Some(detail),
                        ..Note::new(Outcome::Stale, None)
                    };
                    return Ok(Lookup::Answer(Box::new(serve(cache, obj, req, now, note, trail)), None));
                }
                Use::StaleWhileRevalidate => {
                    let note = Note {
                        ttl: Some(obj.ttl(now)),
                        detail: Some("stale-while-revalidate"),
                        ..Note::new(Outcome::Stale, None)
                    };
                    let resp = serve(cache, obj, req, now, note, trail);
                    // One refresh at a time per object; a HEAD cannot refresh a body.
                    let refresh = match cache.join(&key) {
                        Join::Lead(leader) if !head => {
                            for name in CONDITIONALS {
                                req.headers_mut().remove(name);
                            }
                            let mut p = plan(key, true, false);
                            p.request = kept_fields(&cache.settings.vary, req.headers());
                            if obj.has_validator() {
                                add_validators(obj, req.headers_mut());
                                p.conditional = true;
                            }
                            p.stale = object.clone();
                            p.leader = Some(leader);
                            Some(Box::new(p))
                        }
                        _ => None,
                    };
                    return Ok(Lookup::Answer(Box::new(resp), refresh));
                }
                Use::Revalidate => {}
            }
        }
        if rd.only_if_cached {
            cache.stats.count(Outcome::Miss);
            trail.cache = Some(Note::new(Outcome::Miss, Some("miss")));
            return Err(ProxyError::NotCached);
        }
        // Wait for a request already fetching this object, or lead the ones that come.
        let mut leader = None;
        if !waited && !cache.settings.coalesce.is_zero() {
            match cache.join(&key) {
                Join::Lead(l) if !head && !rd.no_store => leader = Some(l),
                Join::Lead(_) => {}
                Join::Follow(flight) => {
                    waited = true;
                    if flight.wait(cache.settings.coalesce).await == Some(true) {
                        coalesced = true;
                        continue;
                    }
                    // Not stored, or too slow: go upstream without waiting again.
                    coalesced = false;
                    continue;
                }
            }
        }
        let variant = key.variant.is_some();
        let mut p = plan(key, !head && !rd.no_store, false);
        p.leader = leader;
        p.request = kept_fields(&cache.settings.vary, req.headers());
        let fwd = match &object {
            Some(obj) => {
                let fwd = if rd.no_cache { "request" } else { "stale" };
                // Validators of its own take precedence over the client's: the answer then
                // updates the object, and the client's conditionals are answered from it.
                if obj.has_validator() && !has_conditionals(req.headers()) {
                    add_validators(obj, req.headers_mut());
                    p.conditional = true;
                }
                p.stale = object.clone();
                fwd
            }
            None if variant => "vary-miss",
            None => "uri-miss",
        };
        trail.cache = Some(Note::new(Outcome::Miss, Some(fwd)));
        return Ok(Lookup::Forward(Box::new(p)));
    }
}

fn bypass(cache: &RouteCache, trail: &mut Trail, note: Note) {
    cache.stats.count(Outcome::Bypass);
    trail.cache = Some(note);
}

/// Host (lower case) and path with query: the part of the key that names the resource.
fn target(routed: &Routed<'_>, req: &Request<ClientBody>) -> Box<[u8]> {
    let host = routed.host.as_ref().map_or(&b""[..], HeaderValue::as_bytes);
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut t = Vec::with_capacity(host.len() + 1 + pq.len());
    t.extend(host.iter().map(u8::to_ascii_lowercase));
    t.push(0);
    t.extend_from_slice(pq.as_bytes());
    t.into_boxed_slice()
}

enum Use {
    Fresh,
    /// Stale, but this request or the response allows it (the reason, for `Cache-Status`).
    Stale(&'static str),
    /// Stale within its `stale-while-revalidate`: served, and refreshed in the background.
    StaleWhileRevalidate,
    Revalidate,
}

/// Whether a stored object answers this request (RFC 9111 §4, §5.2.1; RFC 5861).
fn usable(obj: &Object, rd: &RequestDirectives, now: SystemTime) -> Use {
    if rd.no_cache || obj.no_cache {
        return Use::Revalidate;
    }
    let Some(age) = obj.age(now) else { return Use::Revalidate };
    let lifetime = obj.lifetime.unwrap_or_default();
    if let Some(max) = rd.max_age {
        match max.get() {
            Some(m) if age.as_secs() <= m => {}
            _ => return Use::Revalidate,
        }
    }
    if let Some(min) = rd.min_fresh {
        match min.get() {
            Some(m) if lifetime.saturating_sub(age) >= Duration::from_secs(m) => {}
            _ => return Use::Revalidate,
        }
    }
    if obj.is_fresh(now) {
        return Use::Fresh;
    }
    if obj.strict {
        return Use::Revalidate;
    }
    let stale = age.saturating_sub(lifetime);
    match rd.max_stale {
        Some(None) => return Use::Stale("max-stale"),
        Some(Some(s)) if s.get().is_some_and(|s| stale <= Duration::from_secs(s)) => {
            return Use::Stale("max-stale");
        }
        _ => {}
    }
    if obj.stale_while_revalidate.is_some_and(|w| stale <= w) {
        return Use::StaleWhileRevalidate;
    }
    Use::Revalidate
}

/// A request's conditional fields (RFC 9110 §13.1).
const CONDITIONALS: [HeaderName; 5] =
    [IF_NONE_MATCH, IF_MODIFIED_SINCE, IF_MATCH, IF_UNMODIFIED_SINCE, IF_RANGE];

fn has_conditionals(h: &HeaderMap) -> bool {
    CONDITIONALS.iter().any(|n| h.contains_key(n))
}

fn add_validators(obj: &Object, h: &mut HeaderMap) {
    if let Some(etag) = &obj.etag {
        h.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = &obj.last_modified {
        h.insert(IF_MODIFIED_SINCE, lm.clone());
    }
}

/// The request's fields a stored answer depends on: the route's `vary` fields and conditionals.
fn kept_fields(vary: &[HeaderName], h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in vary.iter().chain([&IF_NONE_MATCH, &IF_MODIFIED_SINCE]) {
        for v in h.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

/// A stored object as this request's answer: `304` when the request's own conditionals match
/// it, else the object with its `Age` (and no body for `HEAD`).
fn serve(
    cache: &RouteCache,
    obj: &Object,
    req: &Request<ClientBody>,
    now: SystemTime,
    note: Note,
    trail: &mut Trail,
) -> Response<ProxyBody> {
    cache.stats.count(note.outcome);
    trail.cache = Some(note);
    answer(obj, req.headers(), req.method() == Method::HEAD, now)
}

fn answer(obj: &Object, request: &HeaderMap, head: bool, now: SystemTime) -> Response<ProxyBody> {
    let age = obj.age(now).map_or(u64::from(u32::MAX), |a| a.as_secs());
    if obj.status == StatusCode::OK && not_modified(obj, request) {
        let mut resp = Response::new(ProxyBody::empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        let h = resp.headers_mut();
        for name in [CACHE_CONTROL, CONTENT_LOCATION, DATE, ETAG, EXPIRES, VARY, LAST_MODIFIED] {
            for v in obj.headers.get_all(&name) {
                h.append(name.clone(), v.clone());
            }
        }
        h.insert(AGE, HeaderValue::from(age));
        return resp;
    }
    let body = if head { ProxyBody::empty() } else { ProxyBody::full(obj.body.clone()) };
    let mut resp = Response::new(body);
    *resp.status_mut() = obj.status;
    *resp.headers_mut() = obj.headers.clone();
    let h = resp.headers_mut();
    if !head && obj.status != StatusCode::NO_CONTENT && obj.status != StatusCode::NOT_MODIFIED {
        h.insert(CONTENT_LENGTH, HeaderValue::from(obj.body.len()));
    }
    h.insert(AGE, HeaderValue::from(age));
    resp
}

/// RFC 9110 §13.1.2–3: `If-None-Match` (weak comparison) decides when present, else
/// `If-Modified-Since` against the stored `Last-Modified`.
fn not_modified(obj: &Object, request: &HeaderMap) -> bool {
    if request.contains_key(IF_NONE_MATCH) {
        let Some(etag) = &obj.etag else { return false };
        let weak =
            |t: &[u8]| -> Vec<u8> { t.trim_ascii().strip_prefix(b"W/").unwrap_or(t.trim_ascii()).to_vec() };
        let ours = weak(etag.as_bytes());
        return request
            .get_all(IF_NONE_MATCH)
            .iter()
            .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii() == b"*" || weak(t) == ours));
    }
    let (Some(ims), Some(lm)) = (request.get(IF_MODIFIED_SINCE), &obj.last_modified) else { return false };
    let parse = |v: &HeaderValue| v.to_str().ok().and_then(|s| httpdate::parse_http_date(s.trim()).ok());
    matches!((parse(ims), parse(lm)), (Some(since), Some(modified)) if modified <= since)
}

/// What becomes of an upstream answer to a planned request.
pub(super) enum Settled {
    /// Passed on; stored as it streams when `Fill` is given.
    Pass(Option<Box<Fill>>),
    /// Answered from the store instead (a `304` confirmed the object, or `stale-if-error`).
    Answer(Box<Response<ProxyBody>>),
}

/// Decides about the upstream's answer `parts` (already without hop-by-hop fields).
pub(super) fn settle(plan: Box<Plan>, parts: &mut http::response::Parts, trail: &mut Trail) -> Settled {
    let Plan {
        cache,
        key,
        store,
        invalidate,
        bypass,
        stale,
        conditional,
        leader,
        request,
        head,
        request_time,
        authorized,
    } = *plan;
    let status = parts.status;
    if let Some(n) = trail.cache.as_mut() {
        n.fwd_status = status.as_u16();
    }
    let now = SystemTime::now();
    let surrogate = parts.headers.contains_key(SURROGATE_CONTROL);
    let cc = ResponseDirectives::of(&parts.headers);
    // Surrogate-Control is for this cache only.
    if surrogate {
        parts.headers.remove(SURROGATE_CONTROL);
    }
    if invalidate {
        if status.is_success() || status.is_redirection() {
            invalidate_after(&cache, &key, &parts.headers);
        }
        return Settled::Pass(None);
    }
    if bypass {
        return Settled::Pass(None);
    }
    if let (Some(obj), true) = (&stale, conditional)
        && status == StatusCode::NOT_MODIFIED
    {
        let updated = refreshed(obj, parts, request_time, now, &cache);
        let updated = cache.replace(key, obj, updated);
        let note = Note {
            ttl: Some(updated.ttl(now)),
            fwd_status: 304,
            ..Note::new(Outcome::Revalidated, Some("stale"))
        };
        cache.stats.count(Outcome::Revalidated);
        trail.cache = Some(note);
        drop(leader);
        return Settled::Answer(Box::new(answer(&updated, &request, head, now)));
    }
    if let Some(obj) = &stale
        && matches!(status.as_u16(), 500 | 502 | 503 | 504)
        && let Some(resp) = stale_on_error(&cache, obj, &request, head, now, trail)
    {
        return Settled::Answer(Box::new(resp));
    }
    cache.stats.count(Outcome::Miss);
    if !store {
        return Settled::Pass(None);
    }
    match storable(&cache, &cc, status, &parts.headers, authorized, request_time, now) {
        Err(why) => {
            cache.stats.not_stored(why);
            Settled::Pass(None)
        }
        Ok((object, vary)) => {
            if let Some(n) = trail.cache.as_mut() {
                n.stored = true;
            }
            // Fields only this request's answer carries (the rate limit's) are not part of it.
            Settled::Pass(Some(Box::new(Fill::new(cache, key, vary, request, object, leader))))
        }
    }
}

/// A stale object instead of the upstream's error, when its `stale-if-error` allows.
pub(super) fn stale_on_error(
    cache: &RouteCache,
    obj: &Object,
    request: &HeaderMap,
    head: bool,
    now: SystemTime,
    trail: &mut Trail,
) -> Option<Response<ProxyBody>> {
    let window = obj.stale_if_error?;
    if obj.strict || obj.staleness(now)? > window {
        return None;
    }
    cache.stats.count(Outcome::Stale);
    let fwd_status = trail.cache.map_or(0, |n| n.fwd_status);
    trail.cache = Some(Note {
        ttl: Some(obj.ttl(now)),
        detail: Some("stale-if-error"),
        fwd_status,
        ..Note::new(Outcome::Stale, Some("stale"))
    });
    Some(answer(obj, request, head, now))
}

impl Plan {
    /// On an exchange that failed outright: the stale object, if `stale-if-error` allows.
    pub fn on_error(&self, trail: &mut Trail) -> Option<Response<ProxyBody>> {
        let obj = self.stale.as_ref()?;
        stale_on_error(&self.cache, obj, &self.request, self.head, SystemTime::now(), trail)
    }
}

/// Status codes a response may be stored with on heuristic freshness alone (RFC 9110 §15.1).
fn heuristically_cacheable(s: StatusCode) -> bool {
    matches!(s.as_u16(), 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Status codes this cache understands (`must-understand`).
fn understood(s: StatusCode) -> bool {
    matches!(
        s.as_u16(),
        200 | 203
            | 204
            | 300
            | 301
            | 302
            | 303
            | 307
            | 308
            | 400
            | 403
            | 404
            | 405
            | 410
            | 414
            | 500
            | 501
            | 502
            | 503
            | 504
    )
}

/// Fields never stored (RFC 9111 §3.1), besides the hop-by-hop ones already gone.
const NOT_STORED: [HeaderName; 5] = [
    AGE,
    HeaderName::from_static("proxy-authentication-info"),
    HeaderName::from_static("proxy-authenticate"),
    crate::headers::RATELIMIT_LIMIT,
    crate::headers::RATELIMIT_REMAINING,
];

#[allow(clippy::type_complexity)]
fn storable(
    cache: &RouteCache,
    cc: &ResponseDirectives,
    status: StatusCode,
    headers: &HeaderMap,
    authorized: bool,
    request_time: SystemTime,
    now: SystemTime,
) -> Result<(Object, Option<Arc<[HeaderName]>>), NotStored> {
    if status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational()
    {
        return Err(NotStored::Uncacheable);
    }
    if cc.must_understand {
        if !understood(status) {
            return Err(NotStored::Uncacheable);
        }
    } else if cc.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    if authorized && !(cc.public || cc.s_maxage.is_some() || cc.must_revalidate) {
        return Err(NotStored::Private);
    }
    let vary = vary_names(headers, &cache.settings.vary)?;
    if let Some(len) = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > cache.settings.max_object
    {
        return Err(NotStored::TooLarge);
    }
    let age = control::age(headers);
    let explicit = cc.s_maxage.is_some() || cc.max_age.is_some() || headers.contains_key(EXPIRES);
    let lifetime = control::lifetime(cc, headers, now, cache.settings.heuristic);
    if !explicit && !heuristically_cacheable(status) {
        return Err(NotStored::Uncacheable);
    }
    let initial_age = control::initial_age(headers, request_time, now);
    let validator = headers.contains_key(ETAG) || headers.contains_key(LAST_MODIFIED);
    let fresh = matches!((lifetime, initial_age), (Some(l), Some(a)) if l > a);
    if !fresh && !validator {
        let malformed = age.is_err() || [cc.max_age, cc.s_maxage].iter().flatten().any(|s| s.get().is_none());
        return Err(if malformed { NotStored::Malformed } else { NotStored::Uncacheable });
    }
    let mut stored = headers.clone();
    for name in NOT_STORED.iter().chain(&cc.no_cache_fields).chain(&cc.private_fields) {
        stored.remove(name);
    }
    Ok((Object::new(status, stored, Bytes::new(), now, initial_age, lifetime, cc), vary))
}

/// The fields a response varies on: `Err` for `*` or one the route does not allow.
fn vary_names(headers: &HeaderMap, allowed: &[HeaderName]) -> Result<Option<Arc<[HeaderName]>>, NotStored> {
    let mut names: Vec<HeaderName> = Vec::new();
    for v in headers.get_all(VARY) {
        for t in v.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii).filter(|t| !t.is_empty()) {
            if t == b"*" {
                return Err(NotStored::Vary);
            }
            let Ok(name) = HeaderName::from_bytes(t) else { return Err(NotStored::Vary) };
            if !allowed.contains(&name) {
                return Err(NotStored::Vary);
            }
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if names.is_empty() {
        return Ok(None);
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Ok(Some(names.into()))
}

/// The stored object updated by a `304` (RFC 9111 §3.2, §4.3.4): its fields replace the stored
/// ones, except those describing the stored body and the validator it was selected by.
fn refreshed(
    obj: &Object,
    parts: &http::response::Parts,
    request_time: SystemTime,
    now: SystemTime,
    cache: &RouteCache,
) -> Object {
    const KEEP: [HeaderName; 4] =
        [CONTENT_LENGTH, http::header::CONTENT_ENCODING, http::header::CONTENT_RANGE, ETAG];
    let mut headers = obj.headers.clone();
    let cc_new = ResponseDirectives::of(&parts.headers);
    let mut replaced: Vec<&HeaderName> = Vec::new();
    for (name, value) in &parts.headers {
        if KEEP.contains(name)
            || name.as_str() == "content-md5"
            || NOT_STORED.contains(name)
            || cc_new.no_cache_fields.contains(name)
            || cc_new.private_fields.contains(name)
        {
            continue;
        }
        if !replaced.contains(&name) {
            headers.remove(name);
            replaced.push(name);
        }
        headers.append(name.clone(), value.clone());
    }
    let cc = ResponseDirectives::of(&headers);
    let lifetime = control::lifetime(&cc, &headers, now, cache.settings.heuristic);
    let initial_age = control::initial_age(&parts.headers, request_time, now);
    Object::new(obj.status, headers, obj.body.clone(), now, initial_age, lifetime, &cc)
}

/// After a successful unsafe request: its target, and the `Location` and `Content-Location` it
/// names on the same host (RFC 9111 §4.4).
fn invalidate_after(cache: &RouteCache, key: &Key, headers: &HeaderMap) {
    cache.invalidate(&key.target);
    let host_end = key.target.iter().position(|b| *b == 0).unwrap_or(key.target.len());
    let host = &key.target[..host_end];
    for name in [LOCATION, CONTENT_LOCATION] {
        let Some(v) = headers.get(&name).and_then(|v| v.to_str().ok()) else { continue };
        let path = if v.starts_with('/') && !v.starts_with("//") {
            Some(v.to_owned())
        } else {
            v.parse::<http::Uri>().ok().and_then(|u| {
                let same = u.authority().is_some_and(|a| a.as_str().as_bytes().eq_ignore_ascii_case(host));
                same.then(|| u.path_and_query().map_or("/".to_owned(), |p| p.as_str().to_owned()))
            })
        };
        if let Some(p) = path {
            let mut t = host.to_vec();
            t.push(0);
            t.extend_from_slice(p.as_bytes());
            cache.invalidate(&t);
        }
    }
}

/// The results of a route's cache so far, for the access log.
pub(super) fn log_name(trail: &Trail) -> Option<&'static str> {
    trail.cache.map(|n| n.outcome.name())
}
