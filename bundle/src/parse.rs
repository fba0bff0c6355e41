//! From bytes to a validated [`Config`]: YAML or JSON into a value tree, then one decoding pass
//! that checks every field and reports every problem with its path.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde_json::Value;

use crate::auth::*;
use crate::decode::{Decode, Decoder, Fields, describe, join};
use crate::model::*;
use crate::net::Cidr;
use crate::resilience::*;
use crate::tls::*;
use crate::traffic::*;
use crate::transform::*;
use crate::{ConfigErrors, Duration};

/// Largest document parsed at all: the ceiling of the bundle cap. The control plane refuses
/// documents over its own (smaller) cap before parsing them.
pub const MAX_DOCUMENT_BYTES: usize = crate::sign::MAX_PAYLOAD_CEILING;

/// Largest compiled regex; bounds the memory and time a hostile pattern can cost.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// How a document is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

// === impl Format ===

impl Format {
    /// `.json` files are JSON; everything else is read as YAML.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Self::Json,
            _ => Self::Yaml,
        }
    }
}

/// Parses and validates a config document.
pub fn parse(bytes: &[u8], format: Format) -> Result<Config, ConfigErrors> {
    parse_value(&read_document(bytes, format)?)
}

/// A YAML or JSON document (within the size cap) as a value tree.
pub(crate) fn read_document(bytes: &[u8], format: Format) -> Result<Value, ConfigErrors> {
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(ConfigErrors::single(
            "",
            format!("document is {} bytes, more than the {MAX_DOCUMENT_BYTES} byte limit", bytes.len()),
        ));
    }
    let value: Value = match format {
        Format::Json => serde_json::from_slice(bytes)
            .map_err(|e| ConfigErrors::single("", format!("invalid JSON: {e}")))?,
        Format::Yaml => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| ConfigErrors::single("", format!("document is not UTF-8: {e}")))?;
            serde_saphyr::from_str(text).map_err(|e| {
                let e = e.to_string();
                ConfigErrors::single("", format!("invalid YAML: {}", e.strip_prefix("error: ").unwrap_or(&e)))
            })?
        }
    };
    Ok(value)
}

/// Validates a document already read into a value tree.
pub fn parse_value(v: &Value) -> Result<Config, ConfigErrors> {
    let mut d = Decoder::default();
    let config = Config::decode(v, "", &mut d);
    d.finish(config)
}

// === Config ===

impl Decode for Config {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["listeners", "pools", "routes"], d)?;
        let listeners = f.list::<Listener>("listeners", d);
        let pools = f.list::<Pool>("pools", d);
        let routes = f.list::<Route>("routes", d);

        if f.raw("listeners").is_none() {
            d.error(&f.path("listeners"), "missing required field: a config needs at least one listener");
        } else if matches!(f.raw("listeners"), Some(Value::Array(a)) if a.is_empty()) {
            d.error(&f.path("listeners"), "at least one listener is required");
        }
        unique_names(&f, "listeners", d);
        unique_names(&f, "pools", d);
        unique_names(&f, "routes", d);
        check_listener_addresses(&f.path("listeners"), &listeners, d);

        // References are checked against every pool name written down, and from every route that
        // names a pool, so one error does not hide or cause another.
        let pool_names = raw_names(f.raw("pools"));
        let pool_set: HashSet<&str> = pool_names.iter().map(|(n, _)| *n).collect();
        if let Some(Value::Array(raw_routes)) = f.raw("routes") {
            for (i, route) in raw_routes.iter().enumerate() {
                check_pool_references(
                    &format!("{}[{i}]", f.path("routes")),
                    route,
                    &pool_names,
                    &pool_set,
                    d,
                );
                check_authz_pool(&format!("{}[{i}]", f.path("routes")), route, f.raw("pools"), d);
            }
        }
        check_shadowed_routes(&f.path("routes"), &routes, d);
        check_client_certificates(&f.path("routes"), &listeners, &routes, d);
        check_cache_shares(&f.path("routes"), &routes, d);

        Some(Config {
            listeners: listeners.into_iter().collect::<Option<_>>()?,
            pools: pools.into_iter().collect::<Option<_>>()?,
            routes: routes.into_iter().collect::<Option<_>>()?,
        })
    }
}

/// The routes' cache shares add up to at most the node's cache memory.
fn check_cache_shares(path: &str, routes: &[Option<Route>], d: &mut Decoder) {
    let shares: Vec<(usize, f64)> = (routes.iter().enumerate())
        .filter_map(|(i, r)| Some((i, r.as_ref()?.cache.as_ref()?.memory_percent)))
        .collect();
    let total: f64 = shares.iter().map(|(_, p)| p).sum();
    // A little slack for shares like 33.3 × 3.
    if total > 100.0 + 1e-9 {
        let named: Vec<String> = shares.iter().map(|(i, p)| format!("routes[{i}] {p}")).collect();
        d.error(
            path,
            format!(
                "the routes' cache.memory_percent add up to {total}, more than the node's cache memory ({})",
                named.join(", ")
            ),
        );
    }
}

/// A route that requires client certificates needs a listener that asks for them; without one it
/// would refuse every request.
fn check_client_certificates(
    path: &str,
    listeners: &[Option<Listener>],
    routes: &[Option<Route>],
    d: &mut Decoder,
) {
    // A listener that did not decode may be the one that asks: its own errors say enough.
    if listeners.iter().any(Option::is_none) {
        return;
    }
    let asks = listeners
        .iter()
        .flatten()
        .filter_map(|l| l.tls.as_ref())
        .any(|t| t.client_auth.is_some() || t.certificates.iter().any(|c| c.client_auth.is_some()));
    if asks {
        return;
    }
    for (i, r) in routes.iter().enumerate() {
        if r.as_ref().is_some_and(|r| r.client_certificate.is_some()) {
            d.error(
                &format!("{path}[{i}].client_certificate"),
                "no listener asks for client certificates (tls.client_auth), so this route would refuse every request",
            );
        }
    }
}

/// Every pool a route names (its own, canary, cohorts, mirror and the mirror's baseline) must
/// exist; the canary and the mirror must be another pool than the route's.
fn check_pool_references(
    path: &str,
    route: &Value,
    pool_names: &[(&str, usize)],
    pool_set: &HashSet<&str>,
    d: &mut Decoder,
) {
    let str_at = |pointer: &str| route.pointer(pointer).and_then(Value::as_str);
    let mut named: Vec<(String, &str)> = Vec::new();
    for (pointer, field) in [
        ("/pool", "pool"),
        ("/canary/pool", "canary.pool"),
        ("/mirror/pool", "mirror.pool"),
        ("/mirror/diff/baseline/pool", "mirror.diff.baseline.pool"),
        ("/ext_authz/pool", "ext_authz.pool"),
    ] {
        if let Some(pool) = str_at(pointer) {
            named.push((format!("{path}.{field}"), pool));
        }
    }
    if let Some(Value::Object(values)) = route.pointer("/cohorts/values") {
        for (value, pool) in values {
            if let Some(pool) = pool.as_str() {
                named.push((format!("{path}.cohorts.values.{value}"), pool));
            }
        }
    }
    for (at, pool) in named {
        if !pool_set.contains(pool) {
            let known: Vec<&str> = pool_names.iter().map(|(n, _)| *n).collect();
            let hint = if known.is_empty() {
                "no pools are defined".to_owned()
            } else {
                format!("defined pools: {}", known.join(", "))
            };
            d.error(&at, format!("unknown pool `{pool}`; {hint}"));
        }
    }
    let own = str_at("/pool");
    for (pointer, field, what) in
        [("/canary/pool", "canary.pool", "a canary"), ("/mirror/pool", "mirror.pool", "a mirror")]
    {
        if let Some(pool) = str_at(pointer).filter(|p| Some(*p) == own) {
            d.error(
                &format!("{path}.{field}"),
                format!("`{pool}` is the route's own pool; {what} needs another pool"),
            );
        }
    }
    if let Some(pool) = str_at("/mirror/diff/baseline/pool").filter(|p| Some(*p) == str_at("/mirror/pool")) {
        d.error(
            &format!("{path}.mirror.diff.baseline.pool"),
            format!("`{pool}` is the mirror's candidate; the baseline must run what the primary runs"),
        );
    }
}

/// An `ext_authz` pool speaks gRPC, so HTTP/2.
fn check_authz_pool(path: &str, route: &Value, pools: Option<&Value>, d: &mut Decoder) {
    let Some(name) = route.pointer("/ext_authz/pool").and_then(Value::as_str) else { return };
    let pool = pools
        .and_then(Value::as_array)
        .and_then(|ps| ps.iter().find(|p| p.get("name").and_then(Value::as_str) == Some(name)));
    if let Some(p) = pool
        && p.get("protocol").and_then(Value::as_str) != Some("http2")
    {
        d.error(
            &format!("{path}.ext_authz.pool"),
            format!("pool `{name}` speaks HTTP/1.1; ext_authz is gRPC: give the pool protocol: http2"),
        );
    }
}

/// `(name, index)` of every list element whose `name` is a string, valid or not otherwise.
fn raw_names(list: Option<&Value>) -> Vec<(&str, usize)> {
    let Some(Value::Array(items)) = list else {
        return Vec::new();
    };
    items.iter().enumerate().filter_map(|(i, item)| Some((item.get("name")?.as_str()?, i))).collect()
}

fn unique_names(f: &Fields<'_>, key: &str, d: &mut Decoder) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (name, i) in raw_names(f.raw(key)) {
        if let Some(prev) = first.get(name) {
            d.error(
                &format!("{}[{i}].name", f.path(key)),
                format!("duplicate name `{name}`, already used by {key}[{prev}]"),
            );
        } else {
            first.insert(name, i);
        }
    }
}

fn check_listener_addresses(path: &str, listeners: &[Option<Listener>], d: &mut Decoder) {
    for (i, a) in listeners.iter().enumerate() {
        let Some(a) = a else { continue };
        if a.address.port() == 0 {
            continue; // each bind of port 0 gets its own port
        }
        let clash = listeners[..i].iter().enumerate().find_map(|(j, b)| {
            let b = b.as_ref()?;
            let overlap = a.address.port() == b.address.port()
                && (a.address.ip() == b.address.ip()
                    || a.address.ip().is_unspecified()
                    || b.address.ip().is_unspecified());
            overlap.then_some((j, b))
        });
        if let Some((j, b)) = clash {
            d.error(
                &format!("{path}[{i}].address"),
                format!("{} overlaps {} of listeners[{j}] (`{}`)", a.address, b.address, b.name),
            );
        }
    }
}

fn check_shadowed_routes(path: &str, routes: &[Option<Route>], d: &mut Decoder) {
    // One canonical key per route, so 20,000 routes take 20,000 hash lookups, not 200 million
    // pairwise comparisons.
    let mut first: HashMap<MatchKey, usize> = HashMap::with_capacity(routes.len());
    for (i, a) in routes.iter().enumerate() {
        let Some(a) = a else { continue };
        match first.entry(match_key(&a.matcher)) {
            std::collections::hash_map::Entry::Occupied(j) => d.error(
                &format!("{path}[{i}].match"),
                format!("same conditions as routes[{}]; this route could never be chosen", j.get()),
            ),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
            }
        }
    }
}

/// What a match accepts, canonically: two matches with the same key accept exactly the same
/// requests in the same way (order-insensitive lists, case-insensitive host and header names).
#[derive(Debug, PartialEq, Eq, Hash)]
struct MatchKey {
    host: Option<String>,
    path: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
    methods: Vec<String>,
    headers: Vec<(String, String)>,
    query: Vec<(String, String)>,
}

fn match_key(m: &RouteMatch) -> MatchKey {
    fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
        v.sort();
        v
    }
    MatchKey {
        host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
        path: m.path.clone(),
        prefix: effective_prefix(m).map(str::to_owned),
        regex: m.path_regex.clone(),
        methods: sorted(m.methods.clone()),
        headers: sorted(
            m.headers.iter().map(|v| (v.name.to_ascii_lowercase(), format!("{:?}", v.rule()))).collect(),
        ),
        query: sorted(m.query.iter().map(|v| (v.name.clone(), format!("{:?}", v.rule()))).collect()),
    }
}

/// The prefix a match effectively has: no path condition at all means prefix `/`.
fn effective_prefix(m: &RouteMatch) -> Option<&str> {
    match (&m.path, &m.path_regex, &m.path_prefix) {
        (None, None, p) => Some(trim_prefix(p.as_deref().unwrap_or("/"))),
        (_, _, p) => p.as_deref().map(trim_prefix),
    }
}

/// `/users/` and `/users` match the same paths; `/` stays `/`.
fn trim_prefix(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() { "/" } else { t }
}

// === Listener ===

impl Decode for Listener {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(
            v,
            path,
            &[
                "name",
                "address",
                "idle_timeout",
                "overload",
                "access_log",
                "tls",
                "http2",
                "proxy_protocol",
                "max_connections_per_client",
                "trusted_proxies",
                "request_headers",
                "response_headers",
            ],
            d,
        )?;
        let name = name(&f, d);
        let address = f.req::<String>("address", d).and_then(|a| {
            a.parse::<SocketAddr>()
                .map_err(|_| {
                    d.error(
                        &f.path("address"),
                        format!("invalid address {a:?}: expected ip:port, like 0.0.0.0:8080 or [::]:8080"),
                    )
                })
                .ok()
        });
        let idle_timeout = positive(&f, "idle_timeout", d);
        let overload = f.opt::<Overload>("overload", d);
        let access_log = f.opt::<AccessLog>("access_log", d);
        let tls = f.opt::<ListenerTls>("tls", d);
        let http2 = f.opt::<Http2Limits>("http2", d);
        let proxy_protocol = f.opt::<bool>("proxy_protocol", d);
        let per_client = resilience::count(&f, "max_connections_per_client", resilience::ONE_OR_MORE, d);
        let trusted: Vec<Option<Cidr>> = f.list::<Cidr>("trusted_proxies", d);
        // A listener is not a route: it has no path prefix of its own.
        let request_headers = header_ops(&f, "request_headers", None, d);
        let response_headers = header_ops(&f, "response_headers", None, d);
        Some(Listener {
            name: name?,
            address: address?,
            idle_timeout: idle_timeout.ok()?,
            overload: overload.ok()?,
            access_log: access_log.ok()?,
            tls: tls.ok()?,
            http2: http2.ok()?,
            proxy_protocol: proxy_protocol.ok()?,
            max_connections_per_client: per_client.ok()?,
            trusted_proxies: trusted.into_iter().collect::<Option<_>>()?,
            request_headers: request_headers.ok()?,
            response_headers: response_headers.ok()?,
        })
    }
}

// === Redirect, DirectResponse ===

impl Decode for Redirect {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(
            v,
            path,
            &["scheme", "host", "port", "path", "path_prefix", "status", "strip_query"],
            d,
        )?;
        let before = d.error_count();
        let scheme = f.opt::<String>("scheme", d);
        if let Ok(Some(s)) = &scheme
            && s != "http"
            && s != "https"
        {
            d.error(&f.path("scheme"), format!("unknown scheme {s:?}; expected http or https"));
        }
        let host = f.opt::<String>("host", d);
        if let Ok(Some(h)) = &host
            && !is_dns_name(h)
            && h.parse::<IpAddr>().is_err()
        {
            d.error(
                &f.path("host"),
                format!("invalid host {h:?}: expected a name or address (the port is `port`)"),
            );
        }
        let port = f.opt::<u32>("port", d).and_then(|p| match p {
            Some(n) if !(1..=65535).contains(&n) => {
                d.error(&f.path("port"), format!("{n} is out of range 1 to 65535"));
                Err(())
            }
            p => Ok(p.map(|n| n as u16)),
        });
        let target = f.opt::<String>("path", d);
        let prefix = f.opt::<String>("path_prefix", d);
        for (key, value) in [("path", &target), ("path_prefix", &prefix)] {
            if let Ok(Some(p)) = value {
                check_target_path(p, &f.path(key), d);
            }
        }
        if matches!((&target, &prefix), (Ok(Some(_)), Ok(Some(_)))) {
            d.error(path, "path and path_prefix are exclusive; use one");
        }
        let status = f.opt::<u32>("status", d).map(|s| s.map(|n| n.min(u32::from(u16::MAX)) as u16));
        if let Ok(Some(s)) = status
            && ![301, 302, 303, 307, 308].contains(&s)
        {
            d.error(
                &f.path("status"),
                format!("{s} is not a redirect status; expected 301, 302, 303, 307 or 308"),
            );
        }
        let strip_query = f.opt::<bool>("strip_query", d);
        if d.error_count() > before {
            return None;
        }
        Some(Redirect {
            scheme: scheme.ok()?,
            host: host.ok()?,
            port: port.ok()?,
            path: target.ok()?,
            path_prefix: prefix.ok()?,
            status: status.ok()?,
            strip_query: strip_query.ok()?,
        })
    }
}

impl Decode for DirectResponse {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["status", "body", "content_type"], d)?;
        let before = d.error_count();
        let status = f.req::<u32>("status", d);
        if let Some(s) = status
            && !(200..=599).contains(&s)
        {
            d.error(&f.path("status"), format!("{s} is out of range 200 to 599"));
        }
        let status = status.map(|s| s.min(599) as u16);
        let body = f.opt::<String>("body", d);
        if let Ok(Some(b)) = &body
            && b.len() > MAX_DIRECT_BODY
        {
            d.error(&f.path("body"), format!("{} bytes is more than the largest body, 64KiB", b.len()));
        }
        let content_type = f.opt::<String>("content_type", d);
        if let Ok(Some(t)) = &content_type
            && (t.is_empty() || t.chars().any(|c| c.is_ascii_control()))
        {
            d.error(&f.path("content_type"), format!("invalid content type {t:?}"));
        }
        if d.error_count() > before {
            return None;
        }
        Some(DirectResponse { status: status?, body: body.ok()?, content_type: content_type.ok()? })
    }
}

// === Rewrite ===

impl Decode for Rewrite {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["path_prefix", "path_regex", "host"], d)?;
        let before = d.error_count();
        let prefix = f.opt::<String>("path_prefix", d);
        if let Ok(Some(p)) = &prefix {
            check_target_path(p, &f.path("path_prefix"), d);
        }
        let regex = f.opt::<RegexRewrite>("path_regex", d);
        if matches!((&prefix, &regex), (Ok(Some(_)), Ok(Some(_)))) {
            d.error(path, "path_prefix and path_regex are exclusive; use one");
        }
        let host = f.opt::<String>("host", d);
        if let Ok(Some(h)) = &host {
            let name = match h.rsplit_once(':') {
                Some((n, port)) if port.parse::<u16>().is_ok() => n,
                _ => h.as_str(),
            };
            if !is_dns_name(name) && name.parse::<IpAddr>().is_err() {
                d.error(
                    &f.path("host"),
                    format!("invalid host {h:?}: expected a name or address, with an optional :port"),
                );
            }
        }
        if d.error_count() > before {
            return None;
        }
        Some(Rewrite { path_prefix: prefix.ok()?, path_regex: regex.ok()?, host: host.ok()? })
    }
}

impl Decode for RegexRewrite {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["pattern", "substitution"], d)?;
        let pattern = f.req::<String>("pattern", d);
        let substitution = f.req::<String>("substitution", d);
        if let Some(p) = &pattern {
            check_regex_unanchored(p, &f.path("pattern"), d);
        }
        if let Some(s) = &substitution
            && !s.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
        {
            d.error(
                &f.path("substitution"),
                format!("{s:?}: use printable characters, no spaces, ? or #; percent-encode the rest"),
            );
        }
        Some(RegexRewrite { pattern: pattern?, substitution: substitution? })
    }
}

// === HeaderOps ===

/// A `request_headers`/`response_headers` block. `route_prefix`: for a route, whether it matches
/// by `path_prefix` (which `%path_prefix%` needs); `None` for a listener, which has none.
fn header_ops(
    f: &Fields<'_>,
    key: &str,
    route_prefix: Option<bool>,
    d: &mut Decoder,
) -> Result<Option<HeaderOps>, ()> {
    let Some(v) = f.raw(key) else { return Ok(None) };
    let path = f.path(key);
    let before = d.error_count();
    let ops = Fields::new(v, &path, &["set", "add", "remove"], d).ok_or(())?;
    let entries = |list: &str, d: &mut Decoder| -> Vec<HeaderEntry> {
        let Some(items) = ops.raw(list) else { return Vec::new() };
        let list_path = ops.path(list);
        let Some(items) = items.as_array() else {
            d.error(&list_path, format!("expected a list of {{name, value}}, found {}", describe(items)));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let at = format!("{list_path}[{i}]");
            let Some(e) = Fields::new(item, &at, &["name", "value"], d) else { continue };
            let name = e.req::<String>("name", d);
            let value = e.req::<String>("value", d);
            if let Some(n) = &name {
                check_field_name(n, &e.path("name"), d);
            }
            if let Some(v) = &value {
                match parse_header_value(v) {
                    Err(why) => d.error(&e.path("value"), why),
                    Ok(parts) => {
                        let names_prefix = parts.contains(&HeaderPart::Var(HeaderVariable::PathPrefix));
                        match route_prefix {
                            Some(false) if names_prefix => d.error(
                                &e.path("value"),
                                "%path_prefix% needs a route that matches by match.path_prefix",
                            ),
                            None if names_prefix => {
                                d.error(&e.path("value"), "%path_prefix% is a route's; a listener has none")
                            }
                            _ => {}
                        }
                    }
                }
            }
            if let (Some(name), Some(value)) = (name, value) {
                out.push(HeaderEntry { name, value });
            }
        }
        out
    };
    let set = entries("set", d);
    let add = entries("add", d);
    let remove: Vec<Option<String>> = ops.list::<String>("remove", d);
    for (i, n) in remove.iter().enumerate() {
        if let Some(n) = n {
            check_field_name(n, &format!("{}[{i}]", ops.path("remove")), d);
        }
    }
    if d.error_count() > before {
        return Err(());
    }
    Ok(Some(HeaderOps { set, add, remove: remove.into_iter().flatten().collect() }))
}

/// A path a rewrite or redirect puts into the request target.
fn check_target_path(p: &str, at: &str, d: &mut Decoder) {
    if !(p.starts_with('/') && p.bytes().all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')) {
        d.error(at, format!("{p:?} must start with / and be a path (printable, no ? or #)"));
    }
}

fn check_field_name(name: &str, path: &str, d: &mut Decoder) {
    if check_header_name(name, path, d).is_none() {
        return;
    }
    // Upstreams that trust it take it as the proof of a client's identity: a config may not
    // write one, nor remove the one the proxy made.
    if name.eq_ignore_ascii_case("x-forwarded-client-cert") {
        d.error(path, format!("{name} is the proxy's to write, from a verified client certificate only"));
    } else if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        d.error(
            path,
            format!("{name} is the proxy's to write (connection and framing fields, Host); it cannot be changed here"),
        );
    }
}

// === Cidr ===

impl Decode for Cidr {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        match v {
            Value::String(s) => Cidr::parse(s).map_err(|e| d.error(path, e)).ok(),
            other => {
                d.error(path, format!("expected a network like 10.0.0.0/8, found {}", describe(other)));
                None
            }
        }
    }
}

// === Http2Limits ===

impl Decode for Http2Limits {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["max_concurrent_streams", "max_header_list_size"], d)?;
        let streams = resilience::count(&f, "max_concurrent_streams", 1..=10_000, d);
        let size = f.opt::<ByteSize>("max_header_list_size", d).and_then(|b| match b {
            Some(ByteSize(n)) if !(1024..=1 << 20).contains(&n) => {
                d.error(&f.path("max_header_list_size"), format!("{n} bytes is out of range 1KiB to 1MiB"));
                Err(())
            }
            b => Ok(b),
        });
        Some(Http2Limits { max_concurrent_streams: streams.ok()?, max_header_list_size: size.ok()? })
    }
}

// === AccessLog ===

impl Decode for AccessLog {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["enabled", "sample"], d)?;
        let enabled = f.opt::<bool>("enabled", d);
        let sample = f.opt::<f64>("sample", d).and_then(|s| match s {
            Some(n) if !(n > 0.0 && n <= 1.0) => {
                d.error(&f.path("sample"), format!("{n} is out of range: must be above 0 and at most 1"));
                Err(())
            }
            s => Ok(s),
        });
        Some(AccessLog { enabled: enabled.ok()?, sample: sample.ok()? })
    }
}

// === Pool ===

impl Decode for Pool {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(
            v,
            path,
            &[
                "name",
                "balancer",
                "hash_on",
                "endpoints",
                "protocol",
                "connect_timeout",
                "idle_timeout",
                "max_idle_per_endpoint",
                "health_check",
                "circuit_breaker",
                "outlier_detection",
                "tls",
            ],
            d,
        )?;
        let name = name(&f, d);
        let balancer = f.opt::<Balancer>("balancer", d);
        let hash_on = f.opt::<HashOn>("hash_on", d);
        match (&balancer, &hash_on) {
            (Ok(Some(Balancer::ConsistentHash)), Ok(None)) => d.error(
                &f.path("hash_on"),
                "consistent_hash needs hash_on: source_ip, {header: NAME} or {cookie: NAME}",
            ),
            (Ok(b), Ok(Some(_))) if *b != Some(Balancer::ConsistentHash) => d.error(
                &f.path("hash_on"),
                format!(
                    "hash_on only applies to balancer consistent_hash, not {}",
                    b.unwrap_or(Balancer::RoundRobin).as_str()
                ),
            ),
            _ => {}
        }

        let endpoints = match f.raw("endpoints") {
            None => {
                d.error(&f.path("endpoints"), "missing required field: a pool needs at least one endpoint");
                Vec::new()
            }
            Some(Value::Array(a)) if a.is_empty() => {
                d.error(&f.path("endpoints"), "a pool needs at least one endpoint");
                Vec::new()
            }
            Some(_) => f.list::<Endpoint>("endpoints", d),
        };
        for (i, e) in endpoints.iter().enumerate() {
            let Some(e) = e else { continue };
            if let Some(j) =
                endpoints[..i].iter().position(|o| o.as_ref().is_some_and(|o| o.address == e.address))
            {
                d.error(
                    &format!("{}[{i}].address", f.path("endpoints")),
                    format!(
                        "duplicate endpoint {}, already endpoints[{j}]; use weight to give it more traffic",
                        e.address
                    ),
                );
            }
        }

        let protocol = f.opt::<UpstreamProtocol>("protocol", d);
        let connect_timeout = positive(&f, "connect_timeout", d);
        let idle_timeout = positive(&f, "idle_timeout", d);
        let max_idle = f.opt::<u32>("max_idle_per_endpoint", d);
        let health_check = f.opt::<HealthCheck>("health_check", d);
        let circuit_breaker = f.opt::<CircuitBreaker>("circuit_breaker", d);
        let outlier_detection = f.opt::<OutlierDetection>("outlier_detection", d);
        let tls = f.opt::<UpstreamTls>("tls", d);
        // Read from the raw value so that another problem in `tls` does not hide this one.
        let offered: Option<Vec<&str>> = f
            .raw("tls")
            .and_then(|t| t.get("alpn"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect());
        if let (Some(offered), Ok(protocol)) = (offered, &protocol) {
            let protocol = protocol.unwrap_or(UpstreamProtocol::Http1);
            let wanted = match protocol {
                UpstreamProtocol::Http1 => Alpn::Http1,
                UpstreamProtocol::Http2 => Alpn::H2,
            };
            if !offered.is_empty() && !offered.contains(&wanted.as_str()) {
                d.error(
                    &join(&f.path("tls"), "alpn"),
                    format!("the pool speaks {}, so alpn must offer {}", protocol.as_str(), wanted.as_str()),
                );
            }
        }
        Some(Pool {
            name: name?,
            balancer: balancer.ok()?,
            hash_on: hash_on.ok()?,
            endpoints: endpoints.into_iter().collect::<Option<_>>()?,
            protocol: protocol.ok()?,
            connect_timeout: connect_timeout.ok()?,
            idle_timeout: idle_timeout.ok()?,
            max_idle_per_endpoint: max_idle.ok()?,
            health_check: health_check.ok()?,
            circuit_breaker: circuit_breaker.ok()?,
            outlier_detection: outlier_detection.ok()?,
            tls: tls.ok()?,
        })
    }
}

// === impl Balancer ===

impl Balancer {
    pub const ALL: [Balancer; 4] =
        [Self::RoundRobin, Self::Weighted, Self::LeastRequest, Self::ConsistentHash];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::Weighted => "weighted",
            Self::LeastRequest => "least_request",
            Self::ConsistentHash => "consistent_hash",
        }
    }
}

impl Decode for Balancer {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        one_of(v, path, d, &Self::ALL, |b| b.as_str())
    }
}

// === impl UpstreamProtocol ===

impl UpstreamProtocol {
    pub const ALL: [UpstreamProtocol; 2] = [Self::Http1, Self::Http2];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "http2",
        }
    }
}

impl Decode for UpstreamProtocol {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        one_of(v, path, d, &Self::ALL, |p| p.as_str())
    }
}

/// A string naming one of `all`.
fn one_of<T: Copy>(
    v: &Value,
    path: &str,
    d: &mut Decoder,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Option<T> {
    let s = String::decode(v, path, d)?;
    let found = all.iter().copied().find(|x| name(*x) == s);
    if found.is_none() {
        let names: Vec<&str> = all.iter().map(|x| name(*x)).collect();
        d.error(path, format!("unknown value {s:?}; expected one of: {}", names.join(", ")));
    }
    found
}

// === HashOn ===

impl Decode for HashOn {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        const HINT: &str = "expected source_ip, {header: NAME} or {cookie: NAME}";
        match v {
            Value::String(s) if s == "source_ip" => Some(HashOn::SourceIp),
            Value::Object(_) => {
                let f = Fields::new(v, path, &["header", "cookie"], d)?;
                match (f.raw("header").is_some(), f.raw("cookie").is_some()) {
                    (true, false) => {
                        let h = f.req::<String>("header", d)?;
                        check_header_name(&h, &f.path("header"), d)?;
                        Some(HashOn::Header(h))
                    }
                    (false, true) => {
                        let c = f.req::<String>("cookie", d)?;
                        check_cookie_name(&c, &f.path("cookie"), d)?;
                        Some(HashOn::Cookie(c))
                    }
                    (true, true) => {
                        d.error(path, "header and cookie are exclusive; use one");
                        None
                    }
                    (false, false) => {
                        d.error(path, HINT);
                        None
                    }
                }
            }
            other => {
                d.error(path, format!("{HINT}, found {}", describe(other)));
                None
            }
        }
    }
}

// === Endpoint ===

impl Decode for Endpoint {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["address", "weight"], d)?;
        let address = f.req::<String>("address", d).and_then(|a| match check_host_port(&a) {
            Ok(()) => Some(a),
            Err(e) => {
                d.error(&f.path("address"), e);
                None
            }
        });
        let weight = f.opt::<u32>("weight", d).and_then(|w| match w {
            Some(w) if !(1..=MAX_WEIGHT).contains(&w) => {
                let why = if w == 0 { "; remove the endpoint to stop sending it traffic" } else { "" };
                d.error(&f.path("weight"), format!("weight {w} is out of range 1 to {MAX_WEIGHT}{why}"));
                Err(())
            }
            w => Ok(w),
        });
        Some(Endpoint { address: address?, weight: weight.ok()? })
    }
}

/// `host:port` where host is an IP address (IPv6 in brackets) or a DNS name.
fn check_host_port(a: &str) -> Result<(), String> {
    if a.contains("://") {
        return Err(format!("invalid address {a:?}: write host:port without a scheme, like 127.0.0.1:9001"));
    }
    if let Ok(sa) = a.parse::<SocketAddr>() {
        return if sa.port() == 0 { Err(format!("invalid address {a:?}: port 0")) } else { Ok(()) };
    }
    let bad = |why: &str| Err(format!("invalid address {a:?}: {why}"));
    let Some((host, port)) = a.rsplit_once(':') else {
        return bad("expected host:port, like 127.0.0.1:9001 or users.internal:8080");
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return bad("the port must be a number from 1 to 65535"),
        Ok(_) => {}
    }
    if host.parse::<IpAddr>().is_ok() {
        return bad("IPv6 addresses go in brackets, like [::1]:9001");
    }
    if !is_dns_name(host) {
        return bad("the host is neither an IP address nor a valid DNS name");
    }
    Ok(())
}

fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

// === Route ===

impl Decode for Route {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(
            v,
            path,
            &[
                "name",
                "match",
                "pool",
                "redirect",
                "direct_response",
                "timeout",
                "idle_timeout",
                "retries",
                "hedge",
                "rate_limit",
                "max_request_body",
                "request_body",
                "rewrite",
                "request_headers",
                "response_headers",
                "canary",
                "cohorts",
                "mirror",
                "require_tls",
                "client_certificate",
                "jwt",
                "ext_authz",
                "cache",
            ],
            d,
        )?;
        let name = name(&f, d);
        let matcher = f.opt::<RouteMatch>("match", d);
        let pool = f.opt::<String>("pool", d);
        let redirect = f.opt::<Redirect>("redirect", d);
        let direct_response = f.opt::<DirectResponse>("direct_response", d);
        let actions: Vec<&str> =
            ["pool", "redirect", "direct_response"].into_iter().filter(|k| f.raw(k).is_some()).collect();
        match actions.as_slice() {
            [] => d.error(&f.path("pool"), "missing required field (or redirect, or direct_response)"),
            ["pool"] => {}
            [_] => {
                // A route that answers itself has nothing to send upstream.
                for field in [
                    "timeout",
                    "idle_timeout",
                    "retries",
                    "hedge",
                    "max_request_body",
                    "request_body",
                    "rewrite",
                    "request_headers",
                    "canary",
                    "cohorts",
                    "mirror",
                    "ext_authz",
                    "cache",
                ] {
                    if f.raw(field).is_some() {
                        d.error(
                            &f.path(field),
                            format!("only applies to a route with a pool, not one with {}", actions[0]),
                        );
                    }
                }
            }
            _ => d.error(path, format!("{} are exclusive; use one", actions.join(" and "))),
        }
        let timeout = positive(&f, "timeout", d);
        let idle_timeout = positive(&f, "idle_timeout", d);
        let retries = f.opt::<Retries>("retries", d);
        // Read from the raw value so that another problem in `retries` does not hide this one.
        let per_try = f
            .raw("retries")
            .and_then(|r| r.get("per_try_timeout"))
            .and_then(Value::as_str)
            .and_then(|t| Duration::parse(t).ok());
        if let (Ok(timeout), Some(per_try)) = (&timeout, per_try) {
            let (route, default) = match timeout {
                Some(t) => (*t, ""),
                None => (DEFAULT_ROUTE_TIMEOUT, " (the default)"),
            };
            if per_try > route {
                d.error(
                    &join(&f.path("retries"), "per_try_timeout"),
                    format!("per_try_timeout {per_try} is longer than the route's timeout {route}{default}"),
                );
            }
        }
        let hedge = f.opt::<Hedge>("hedge", d);
        let rate_limit = f.opt::<RateLimit>("rate_limit", d);
        let max_request_body = f.opt::<ByteSize>("max_request_body", d).and_then(|b| match b {
            Some(ByteSize(0)) => {
                d.error(&f.path("max_request_body"), "must be at least 1 byte");
                Err(())
            }
            b => Ok(b),
        });
        let request_body = f.opt::<RequestBodyRules>("request_body", d);
        let prefix = f.raw("match").and_then(|m| m.get("path_prefix")).and_then(Value::as_str);
        let request_headers = header_ops(&f, "request_headers", Some(prefix.is_some()), d);
        let response_headers = header_ops(&f, "response_headers", Some(prefix.is_some()), d);
        let rewrite = f.opt::<Rewrite>("rewrite", d);
        // `path_prefix` in a rewrite or redirect replaces what the route's prefix matched.
        let replaces = [
            ("rewrite", matches!(&rewrite, Ok(Some(Rewrite { path_prefix: Some(_), .. })))),
            ("redirect", matches!(&redirect, Ok(Some(Redirect { path_prefix: Some(_), .. })))),
        ];
        for (key, _) in replaces.iter().filter(|(_, replaces)| *replaces && prefix.is_none()) {
            d.error(
                &join(&f.path(key), "path_prefix"),
                "needs a route that matches by match.path_prefix: it replaces what that matched",
            );
        }
        let canary = f.opt::<Canary>("canary", d);
        let cohorts = f.opt::<Cohorts>("cohorts", d);
        let mirror = f.opt::<Mirror>("mirror", d);
        let require_tls = f.opt::<bool>("require_tls", d);
        let client_certificate = f.opt::<ClientCertificateRule>("client_certificate", d);
        let jwt = f.opt::<Jwt>("jwt", d);
        let ext_authz = f.opt::<ExtAuthz>("ext_authz", d);
        let cache = f.opt::<crate::cache::Cache>("cache", d);
        // The body bytes sent for the check are what was read before it.
        if let (Ok(Some(ExtAuthz { max_body: Some(max), .. })), Ok(rules)) = (&ext_authz, &request_body) {
            let buffer = rules.as_ref().map_or(DEFAULT_BODY_BUFFER, RequestBodyRules::buffer_or_default);
            if max.0 > buffer {
                d.error(
                    &join(&f.path("ext_authz"), "max_body"),
                    format!("{} bytes is more than the route's request_body.buffer ({buffer} bytes), what is read before the check", max.0),
                );
            }
        }
        Some(Route {
            name: name?,
            matcher: matcher.ok()?.unwrap_or_default(),
            pool: pool.ok()?,
            redirect: redirect.ok()?,
            direct_response: direct_response.ok()?,
            timeout: timeout.ok()?,
            idle_timeout: idle_timeout.ok()?,
            retries: retries.ok()?,
            hedge: hedge.ok()?,
            rate_limit: rate_limit.ok()?,
            max_request_body: max_request_body.ok()?,
            request_body: request_body.ok()?,
            rewrite: rewrite.ok()?,
            request_headers: request_headers.ok()?,
            response_headers: response_headers.ok()?,
            canary: canary.ok()?,
            cohorts: cohorts.ok()?,
            mirror: mirror.ok()?,
            require_tls: require_tls.ok()?,
            client_certificate: client_certificate.ok()?,
            jwt: jwt.ok()?,
            ext_authz: ext_authz.ok()?,
            cache: cache.ok()?,
        })
    }
}

impl Decode for RouteMatch {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(
            v,
            path,
            &["host", "path", "path_prefix", "path_regex", "methods", "headers", "query"],
            d,
        )?;
        let before = d.error_count();
        let host = f.opt::<String>("host", d).ok().flatten();
        if let Some(Err(e)) = host.as_deref().map(check_host_match) {
            d.error(&f.path("host"), e);
        }
        let path_kinds: Vec<&str> =
            ["path", "path_prefix", "path_regex"].into_iter().filter(|k| f.raw(k).is_some()).collect();
        if path_kinds.len() > 1 {
            d.error(path, format!("{} are exclusive; use one", path_kinds.join(" and ")));
        }
        let exact = f.opt::<String>("path", d).ok().flatten();
        let prefix = f.opt::<String>("path_prefix", d).ok().flatten();
        for (key, p) in [("path", &exact), ("path_prefix", &prefix)] {
            if let Some(p) = p {
                if !p.starts_with('/') {
                    d.error(&f.path(key), format!("{p:?} must start with /"));
                } else if p.contains(['?', '#']) {
                    d.error(
                        &f.path(key),
                        format!("{p:?}: paths are matched without the query string or fragment"),
                    );
                }
            }
        }
        let regex = f.opt::<String>("path_regex", d).ok().flatten();
        if let Some(r) = &regex {
            check_regex(r, &f.path("path_regex"), d);
        }

        let methods = methods(&f, "methods", d);
        let headers = f.list::<ValueMatch>("headers", d);
        if let Some(Value::Array(raw)) = f.raw("headers") {
            for (i, h) in raw.iter().enumerate() {
                if let Some(name) = h.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                    check_header_name(name, &format!("{}[{i}].name", f.path("headers")), d);
                }
            }
        }
        let query = f.list::<ValueMatch>("query", d);
        if d.error_count() > before {
            return None;
        }
        Some(RouteMatch {
            host,
            path: exact,
            path_prefix: prefix,
            path_regex: regex,
            methods: methods.into_iter().collect::<Option<_>>()?,
            headers: headers.into_iter().collect::<Option<_>>()?,
            query: query.into_iter().collect::<Option<_>>()?,
        })
    }
}

/// A list of request methods: tokens, case-sensitive (a lowercase standard method gets a hint), each
/// once. Every element is decoded; the caller tells errors apart by the decoder's error count.
fn methods(f: &Fields<'_>, key: &str, d: &mut Decoder) -> Vec<Option<String>> {
    let methods: Vec<Option<String>> = f.list::<String>(key, d);
    for (i, m) in methods.iter().enumerate() {
        let Some(m) = m else { continue };
        let p = format!("{}[{i}]", f.path(key));
        if m.is_empty() || !m.bytes().all(is_token_byte) {
            d.error(&p, format!("invalid method {m:?}"));
        } else if m.bytes().any(|b| b.is_ascii_lowercase()) && is_standard_method(&m.to_ascii_uppercase()) {
            d.error(&p, format!("methods are case-sensitive; did you mean {}?", m.to_ascii_uppercase()));
        } else if methods[..i].contains(&Some(m.clone())) {
            d.error(&p, format!("{m} is listed twice"));
        }
    }
    methods
}

fn is_standard_method(m: &str) -> bool {
    matches!(m, "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE" | "PATCH")
}

/// `api.example.com`, `*.example.com` or an IP address; no port, no scheme.
fn check_host_match(h: &str) -> Result<(), String> {
    if h == "*" {
        return Err("\"*\" is not a host pattern; leave host out to match any host".into());
    }
    if let Some(suffix) = h.strip_prefix("*.") {
        return if is_dns_name(suffix) {
            Ok(())
        } else {
            Err(format!("invalid host pattern {h:?}: expected *.example.com"))
        };
    }
    if h.contains('*') {
        return Err(format!(
            "invalid host pattern {h:?}: a wildcard may only be the first label, like *.example.com"
        ));
    }
    if h.parse::<IpAddr>().is_ok() || is_dns_name(h) {
        return Ok(());
    }
    if h.rsplit_once(':').is_some_and(|(host, port)| is_dns_name(host) && port.parse::<u16>().is_ok()) {
        return Err(format!("invalid host {h:?}: leave the port out, hosts match on any port"));
    }
    Err(format!("invalid host {h:?}: expected a DNS name like api.example.com or *.example.com"))
}

impl Decode for ValueMatch {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        let f = Fields::new(v, path, &["name", "exact", "prefix", "regex", "present"], d)?;
        let name = f.req::<String>("name", d);
        if name.as_deref() == Some("") {
            d.error(&f.path("name"), "must not be empty");
        }
        let exact = f.opt::<String>("exact", d);
        let prefix = f.opt::<String>("prefix", d);
        let regex = f.opt::<String>("regex", d);
        let present = f.opt::<bool>("present", d);
        let set: Vec<&str> =
            ["exact", "prefix", "regex", "present"].into_iter().filter(|k| f.raw(k).is_some()).collect();
        match set.len() {
            0 => d.error(path, "needs one of exact, prefix, regex, present"),
            1 => {}
            _ => d.error(path, format!("{} are exclusive; use one", set.join(" and "))),
        }
        if let Ok(Some(r)) = &regex {
            check_regex(r, &f.path("regex"), d);
        }
        if set.len() != 1 {
            return None;
        }
        Some(ValueMatch {
            name: name.filter(|n| !n.is_empty())?,
            exact: exact.ok()?,
            prefix: prefix.ok()?,
            regex: regex.ok()?,
            present: present.ok()?,
        })
    }
}

/// Compiles `pattern` the way the data plane will (anchored, size-limited) and reports failure.
fn check_regex(pattern: &str, path: &str, d: &mut Decoder) -> Option<()> {
    match anchored_regex(pattern) {
        Ok(_) => Some(()),
        Err(e) => {
            let msg = e.to_string();
            // The regex crate's message spans several lines with a caret; keep the last line.
            let why = msg.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(&msg).trim();
            let why = why.strip_prefix("error: ").unwrap_or(why);
            d.error(path, format!("invalid regex {pattern:?}: {why}"));
            None
        }
    }
}

/// Compiles `pattern` unanchored, as searching (masking) uses it, and reports failure.
fn check_regex_unanchored(pattern: &str, path: &str, d: &mut Decoder) {
    if let Err(e) = regex::RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).build() {
        let msg = e.to_string();
        let why = msg.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or(&msg).trim();
        let why = why.strip_prefix("error: ").unwrap_or(why);
        d.error(path, format!("invalid regex {pattern:?}: {why}"));
    }
}

/// A regex that must match the whole input, as route matching uses it.
pub fn anchored_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$")).size_limit(REGEX_SIZE_LIMIT).build()
}

fn check_header_name(h: &str, path: &str, d: &mut Decoder) -> Option<()> {
    if !h.is_empty() && h.bytes().all(is_token_byte) {
        Some(())
    } else {
        d.error(path, format!("invalid header name {h:?}"));
        None
    }
}

fn check_cookie_name(c: &str, path: &str, d: &mut Decoder) -> Option<()> {
    if !c.is_empty() && c.bytes().all(is_token_byte) {
        Some(())
    } else {
        d.error(path, format!("invalid cookie name {c:?}"));
        None
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

// === shared field readers ===

/// The element's `name`: a stable id of 1 to 63 letters, digits, `.`, `_` or `-`.
fn name(f: &Fields<'_>, d: &mut Decoder) -> Option<String> {
    let n = f.req::<String>("name", d)?;
    let ok = n.len() <= 63
        && n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Some(n)
    } else {
        d.error(
            &f.path("name"),
            format!("invalid name {n:?}: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"),
        );
        None
    }
}

/// An optional duration that must be above zero.
pub(crate) fn positive(f: &Fields<'_>, key: &str, d: &mut Decoder) -> Result<Option<Duration>, ()> {
    match f.opt::<Duration>(key, d)? {
        Some(t) if t.is_zero() => {
            d.error(&f.path(key), "must be greater than 0s");
            Err(())
        }
        t => Ok(t),
    }
}

mod auth;
mod cache;
mod resilience;
#[cfg(test)]
mod tests;
mod tls;
mod traffic;
