//! The route table, compiled once per snapshot.
//!
//! Precedence is by specificity, so the order routes are written in only breaks exact ties
//! (Gateway API's rules, which Kubernetes users already know):
//!
//! 1. host: an exact host beats a wildcard (`*.example.com`; a longer suffix beats a shorter),
//!    which beats a route with no host;
//! 2. path: exact `path` beats `path_regex`, which beats `path_prefix` (longer prefix first);
//!    no path condition counts as prefix `/`;
//! 3. a route with `methods` beats one without;
//! 4. more header conditions beat fewer, then more query conditions beat fewer;
//! 5. the route written first.
//!
//! Matching walks the host tiers from most to least specific and returns the first route whose
//! conditions all hold. A small tier is scanned in precedence order; a large one is indexed by
//! exact path and by prefix, so a lookup costs a few hash probes per path segment whether the
//! tier has a hundred routes or ten thousand (only regex routes are scanned). Wildcard hosts are
//! found by probing the request host's suffixes. Lookups do not allocate unless the host has
//! upper-case letters.

use std::borrow::Cow;
use std::collections::HashMap;

use http::header::HeaderName;
use http::{HeaderMap, Method};
use regex::Regex;
use sluice_bundle::{ConfigError, ConfigErrors, Route, ValueMatch, ValueRule, anchored_regex};

/// Compiled route matching for one snapshot.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<Box<str>, Tier>,
    /// By suffix: `".example.com"` for `*.example.com`.
    wildcard: HashMap<Box<str>, Tier>,
    any: Tier,
    matchers: Box<[Matcher]>,
}

/// The routes of one host condition: all of them in precedence order, and, for a large tier,
/// indexed by their path condition. Path kinds rank exact, then regex, then prefix (longer
/// first), and each indexed list keeps precedence order, so probing in that order finds the
/// route the scan would.
#[derive(Debug, Default)]
struct Tier {
    all: Box<[u32]>,
    /// `None` for a tier small enough that scanning it is cheaper than hashing the path.
    index: Option<PathIndex>,
}

#[derive(Debug, Default)]
struct PathIndex {
    exact: HashMap<Box<str>, Box<[u32]>>,
    regex: Box<[u32]>,
    /// By prefix without its trailing slash; `/` for the root (and for no path condition).
    prefix: HashMap<Box<str>, Box<[u32]>>,
    /// The distinct lengths of those prefixes (the root's aside), longest first: a lookup hashes
    /// only the path's prefixes of these lengths that end at a `/`, unless there are so many
    /// lengths that walking the path's own `/`s is cheaper.
    lengths: Box<[usize]>,
}

/// Above this many distinct prefix lengths, a lookup walks the path's `/`s instead. Unit tests
/// use both ways (their tiers have up to three lengths).
const MAX_LENGTHS: usize = if cfg!(test) { 2 } else { 16 };

/// Tiers up to this many routes are scanned: a few `starts_with` beat hashing the path. Unit
/// tests index every tier of more than two, so they hold the index to the precedence rules.
const SCAN_UP_TO: usize = if cfg!(test) { 2 } else { 32 };

/// The parts of a request routing looks at.
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// The Host header or `:authority`, port and all.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

#[derive(Debug)]
struct Matcher {
    path: PathMatch,
    methods: Box<[Method]>,
    headers: Box<[HeaderCond]>,
    query: Box<[QueryCond]>,
}

#[derive(Debug)]
enum PathMatch {
    Exact(Box<str>),
    /// Without a trailing slash, except for `/` itself.
    Prefix(Box<str>),
    Regex(Regex),
}

#[derive(Debug)]
struct HeaderCond {
    name: HeaderName,
    rule: Rule,
}

#[derive(Debug)]
struct QueryCond {
    name: Box<str>,
    rule: Rule,
}

#[derive(Debug)]
enum Rule {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Regex(Regex),
    Present(bool),
}

// === impl Router ===

impl Router {
    /// Compiles routes; the index a lookup returns is the route's index in `routes`.
    pub fn compile(routes: &[Route]) -> Result<Self, ConfigErrors> {
        let mut errors = Vec::new();
        let mut matchers = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let mut error = |field: String, message: String| {
                errors.push(ConfigError { path: format!("routes[{i}].match.{field}"), message });
            };
            if let Some(m) = Matcher::compile(r, &mut error) {
                matchers.push(m);
            }
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // Sort all routes once by the non-host part of precedence; each tier keeps that order.
        let mut order: Vec<u32> = (0..routes.len() as u32).collect();
        order.sort_by_key(|i| std::cmp::Reverse(matchers[*i as usize].rank()));

        let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut wildcard: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut any = Vec::new();
        for i in order {
            match routes[i as usize].matcher.host.as_deref() {
                None => any.push(i),
                Some(h) => {
                    let h = normalize_host(h);
                    match h.strip_prefix('*') {
                        Some(suffix) => wildcard.entry(suffix.into()).or_default().push(i),
                        None => exact.entry(h.into()).or_default().push(i),
                    }
                }
            }
        }
        let tier = |ids: Vec<u32>| Tier::new(ids, &matchers);
        Ok(Self {
            exact: exact.into_iter().map(|(k, v)| (k, tier(v))).collect(),
            wildcard: wildcard.into_iter().map(|(k, v)| (k, tier(v))).collect(),
            any: tier(any),
            matchers: matchers.into_boxed_slice(),
        })
    }

    /// Index of the route that takes this request.
    pub fn find(&self, req: &RequestView<'_>) -> Option<usize> {
        let host = req.host.map(normalize_host);
        let host = host.as_deref().unwrap_or("");
        if let Some(i) = self.exact.get(host).and_then(|tier| tier.first(&self.matchers, req)) {
            return Some(i as usize);
        }
        // Wildcards, longest suffix first: `.b.example.com`, then `.example.com`, then `.com`.
        // A suffix must leave at least one character of the host before it.
        if !self.wildcard.is_empty() {
            for (at, _) in host.match_indices('.').filter(|(at, _)| *at > 0) {
                if let Some(i) = self.wildcard.get(&host[at..]).and_then(|t| t.first(&self.matchers, req)) {
                    return Some(i as usize);
                }
            }
        }
        self.any.first(&self.matchers, req).map(|i| i as usize)
    }
}

// === impl Tier ===

impl Tier {
    /// `ids` in precedence order.
    fn new(ids: Vec<u32>, matchers: &[Matcher]) -> Self {
        let index = (ids.len() > SCAN_UP_TO).then(|| {
            let mut exact: HashMap<Box<str>, Vec<u32>> = HashMap::new();
            let mut prefix: HashMap<Box<str>, Vec<u32>> = HashMap::new();
            let mut regex = Vec::new();
            for &i in &ids {
                match &matchers[i as usize].path {
                    PathMatch::Exact(p) => exact.entry(p.clone()).or_default().push(i),
                    PathMatch::Prefix(p) => prefix.entry(p.clone()).or_default().push(i),
                    PathMatch::Regex(_) => regex.push(i),
                }
            }
            let mut lengths: Vec<usize> = prefix.keys().filter(|p| &***p != "/").map(|p| p.len()).collect();
            lengths.sort_unstable_by(|a, b| b.cmp(a));
            lengths.dedup();
            let boxed = |m: HashMap<Box<str>, Vec<u32>>| {
                m.into_iter().map(|(k, v)| (k, v.into_boxed_slice())).collect()
            };
            PathIndex {
                exact: boxed(exact),
                regex: regex.into_boxed_slice(),
                prefix: boxed(prefix),
                lengths: lengths.into_boxed_slice(),
            }
        });
        Self { all: ids.into_boxed_slice(), index }
    }

    /// The first route of the tier, in precedence order, whose conditions all hold.
    fn first(&self, matchers: &[Matcher], req: &RequestView<'_>) -> Option<u32> {
        let test = |ids: &[u32]| ids.iter().copied().find(|i| matchers[*i as usize].matches(req));
        let Some(index) = &self.index else { return test(&self.all) };
        if let Some(i) = index.exact.get(req.path).and_then(|ids| test(ids)) {
            return Some(i);
        }
        if let Some(i) = test(&index.regex) {
            return Some(i);
        }
        if index.prefix.is_empty() {
            return None;
        }
        // Prefixes that match the path, longest first: the path itself and each ancestor at a
        // `/` boundary, then the root.
        let path = req.path;
        let probe = |len: usize| index.prefix.get(&path[..len]).and_then(|ids| test(ids));
        if index.lengths.len() <= MAX_LENGTHS {
            let bytes = path.as_bytes();
            for &len in index.lengths.iter() {
                if len <= path.len()
                    && (len == path.len() || bytes[len] == b'/')
                    && let Some(i) = probe(len)
                {
                    return Some(i);
                }
            }
        } else {
            if let Some(i) = probe(path.len()) {
                return Some(i);
            }
            for (at, _) in path.rmatch_indices('/').filter(|(at, _)| *at > 0) {
                if let Some(i) = probe(at) {
                    return Some(i);
                }
            }
        }
        index.prefix.get("/").and_then(|ids| test(ids))
    }
}

/// Lower-case host without port or trailing dot; `[::1]:80` becomes `::1`. The form routes match
/// hosts in, and so the one every host check uses (the 421 of TLS listeners).
pub fn normalize_host(raw: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = raw.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(ip, _)| ip)
    } else {
        match raw.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => raw,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

// === impl Matcher ===

impl Matcher {
    /// `None` after reporting what does not compile, each with its field below `match`.
    fn compile(r: &Route, error: &mut impl FnMut(String, String)) -> Option<Self> {
        let m = &r.matcher;
        let mut ok = true;
        let mut fail = |field: String, message: String| {
            ok = false;
            error(field, message);
        };
        let path = if let Some(p) = &m.path {
            Some(PathMatch::Exact(p.as_str().into()))
        } else if let Some(re) = &m.path_regex {
            anchored_regex(re)
                .map_err(|e| fail("path_regex".into(), format!("invalid regex: {e}")))
                .ok()
                .map(PathMatch::Regex)
        } else {
            let p = m.path_prefix.as_deref().unwrap_or("/").trim_end_matches('/');
            Some(PathMatch::Prefix(if p.is_empty() { "/".into() } else { p.into() }))
        };
        let mut methods = Vec::with_capacity(m.methods.len());
        for (i, s) in m.methods.iter().enumerate() {
            match Method::from_bytes(s.as_bytes()) {
                Ok(method) => methods.push(method),
                Err(_) => fail(format!("methods[{i}]"), format!("invalid method {s:?}")),
            }
        }
        let mut headers = Vec::with_capacity(m.headers.len());
        for (i, h) in m.headers.iter().enumerate() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| fail(format!("headers[{i}].name"), format!("invalid header name {:?}", h.name)));
            let rule = Rule::compile(h)
                .map_err(|e| fail(format!("headers[{i}].regex"), format!("invalid regex: {e}")));
            if let (Ok(name), Ok(rule)) = (name, rule) {
                headers.push(HeaderCond { name, rule });
            }
        }
        let mut query = Vec::with_capacity(m.query.len());
        for (i, q) in m.query.iter().enumerate() {
            match Rule::compile(q) {
                Ok(rule) => query.push(QueryCond { name: q.name.as_str().into(), rule }),
                Err(e) => fail(format!("query[{i}].regex"), format!("invalid regex: {e}")),
            }
        }
        let path = path?;
        ok.then(|| Self { path, methods: methods.into(), headers: headers.into(), query: query.into() })
    }

    /// Precedence within a host tier; higher wins.
    fn rank(&self) -> (u8, usize, bool, usize, usize) {
        let (kind, len) = match &self.path {
            PathMatch::Exact(p) => (3, p.len()),
            PathMatch::Regex(_) => (2, 0),
            PathMatch::Prefix(p) => (1, p.len()),
        };
        (kind, len, !self.methods.is_empty(), self.headers.len(), self.query.len())
    }

    fn matches(&self, req: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Exact(p) => req.path == &**p,
            PathMatch::Prefix(p) => prefix_matches(p, req.path),
            PathMatch::Regex(re) => re.is_match(req.path),
        };
        path_ok
            && (self.methods.is_empty() || self.methods.contains(req.method))
            && self.headers.iter().all(|h| h.matches(req.headers))
            && self.query.iter().all(|q| q.matches(req.query.unwrap_or("")))
    }
}

/// Whole-segment prefix match: `/users` matches `/users` and `/users/7`, not `/usersx`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix) && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
}

// === impl Rule ===

impl Rule {
    fn compile(m: &ValueMatch) -> Result<Self, regex::Error> {
        Ok(match m.rule() {
            ValueRule::Exact(v) => Self::Exact(v.as_bytes().into()),
            ValueRule::Prefix(v) => Self::Prefix(v.as_bytes().into()),
            ValueRule::Regex(r) => Self::Regex(anchored_regex(r)?),
            ValueRule::Present(p) => Self::Present(p),
        })
    }

    /// Whether a present value satisfies the rule.
    fn accepts(&self, value: &[u8]) -> bool {
        match self {
            Self::Exact(v) => value == &**v,
            Self::Prefix(v) => value.starts_with(v),
            Self::Regex(re) => std::str::from_utf8(value).is_ok_and(|s| re.is_match(s)),
            Self::Present(p) => *p,
        }
    }
}

impl HeaderCond {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().peekable();
        match self.rule {
            Rule::Present(p) => values.peek().is_some() == p,
            _ => values.any(|v| self.rule.accepts(v.as_bytes())),
        }
    }
}

impl QueryCond {
    fn matches(&self, query: &str) -> bool {
        let mut values = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .filter(|(k, _)| percent_decode(k) == self.name.as_bytes())
            .peekable();
        match self.rule {
            Rule::Present(p) => values.peek().is_some() == p,
            _ => values.any(|(_, v)| self.rule.accepts(&percent_decode(v))),
        }
    }
}

/// `%XX` decoding; malformed escapes are kept as written. Borrows when there is nothing to decode.
fn percent_decode(s: &str) -> Cow<'_, [u8]> {
    if !s.contains('%') {
        return Cow::Borrowed(s.as_bytes());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) =
                (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c)))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests;
