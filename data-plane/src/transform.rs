//! Header transforms (`request_headers`, `response_headers` on routes and listeners), compiled
//! once per snapshot: names parsed, static values made header values, a route's own name and path
//! prefix folded into the text. Per request only the variables that vary are rendered.

use std::borrow::Cow;
use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use sluice_bundle::{HeaderOps, HeaderPart, HeaderVariable, parse_header_value};
use sluice_compile::router::normalize_host;

use crate::listener::tls::TlsFacts;

/// One direction's compiled changes: `remove`, then `set`, then `add`.
#[derive(Debug, Default)]
pub struct HeaderRules {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, Value)]>,
    add: Box<[(HeaderName, Value)]>,
}

#[derive(Debug)]
enum Value {
    Static(HeaderValue),
    Rendered(Box<[Piece]>),
}

#[derive(Debug)]
enum Piece {
    Text(Box<str>),
    ClientIp,
    RequestId,
    TlsSubject,
    TlsUriSan,
}

/// A route's `match.path_prefix` and what replaces it (`rewrite.path_prefix`,
/// `redirect.path_prefix`).
#[derive(Debug)]
struct PrefixSwap {
    from: Box<str>,
    to: Box<str>,
}

impl PrefixSwap {
    /// `None` without a replacement (or, which the config check refuses, without a prefix).
    fn new(to: Option<&str>, route: &sluice_bundle::Route) -> Option<Self> {
        let from = route.matcher.path_prefix.as_deref()?;
        Some(Self { from: from.into(), to: to?.into() })
    }

    /// `path` with the prefix (which the route matched by whole segments, so the rest is empty or
    /// starts with `/`) replaced, joined with one `/`.
    fn apply(&self, path: &str) -> String {
        let (from, to) = (&*self.from, &*self.to);
        let rest = path.strip_prefix(from).unwrap_or(path);
        match (to.ends_with('/'), rest.starts_with('/')) {
            (true, true) => format!("{to}{}", &rest[1..]),
            (false, false) if !rest.is_empty() => format!("{to}/{rest}"),
            _ => format!("{to}{rest}"),
        }
    }
}

/// A route's `rewrite`, compiled.
#[derive(Debug)]
pub(crate) struct RewritePlan {
    prefix: Option<PrefixSwap>,
    regex: Option<(regex::Regex, Box<str>)>,
    pub host: Option<HeaderValue>,
}

// === impl RewritePlan ===

impl RewritePlan {
    /// `None`: the route rewrites nothing. What the config check accepted compiles.
    pub fn compile(route: &sluice_bundle::Route) -> Option<Box<Self>> {
        let r = route.rewrite.as_ref()?;
        Some(Box::new(Self {
            prefix: PrefixSwap::new(r.path_prefix.as_deref(), route),
            regex: r
                .path_regex
                .as_ref()
                .and_then(|x| Some((regex::Regex::new(&x.pattern).ok()?, x.substitution.as_str().into()))),
            host: r.host.as_deref().and_then(|h| HeaderValue::from_str(h).ok()),
        }))
    }

    /// The path and query to send for `uri`, if this rewrite changes the path; `Err` if the
    /// result is not a valid request target.
    pub fn path(&self, uri: &http::Uri) -> Option<Result<http::uri::PathAndQuery, ()>> {
        let path = uri.path();
        let new = if let Some(prefix) = &self.prefix {
            prefix.apply(path)
        } else {
            let (re, with) = self.regex.as_ref()?;
            let out = re.replace_all(path, &**with);
            if out.starts_with('/') { out.into_owned() } else { format!("/{out}") }
        };
        let target = match uri.query() {
            Some(q) => format!("{new}?{q}"),
            None => new,
        };
        Some(http::uri::PathAndQuery::from_maybe_shared(bytes::Bytes::from(target)).map_err(|_| ()))
    }
}

/// What a route that answers itself answers.
#[derive(Debug)]
pub(crate) enum LocalAnswer {
    Redirect(RedirectPlan),
    Direct { status: http::StatusCode, body: bytes::Bytes, content_type: Option<HeaderValue> },
}

#[derive(Debug)]
pub(crate) struct RedirectPlan {
    scheme: Option<&'static str>,
    host: Option<Box<str>>,
    port: Option<u16>,
    path: Option<Box<str>>,
    prefix: Option<PrefixSwap>,
    pub status: http::StatusCode,
    strip_query: bool,
}

// === impl LocalAnswer ===

impl LocalAnswer {
    /// `None`: the route goes to a pool.
    pub fn compile(route: &sluice_bundle::Route) -> Option<Box<Self>> {
        if let Some(d) = &route.direct_response {
            let body = bytes::Bytes::from(d.body.clone().unwrap_or_default());
            let content_type = match &d.content_type {
                Some(t) => HeaderValue::from_str(t).ok(),
                None if !body.is_empty() => Some(HeaderValue::from_static("text/plain; charset=utf-8")),
                None => None,
            };
            let status = http::StatusCode::from_u16(d.status).unwrap_or(http::StatusCode::OK);
            return Some(Box::new(Self::Direct { status, body, content_type }));
        }
        let r = route.redirect.as_ref()?;
        Some(Box::new(Self::Redirect(RedirectPlan {
            scheme: r.scheme.as_deref().map(|s| if s == "https" { "https" } else { "http" }),
            host: r.host.as_deref().map(Into::into),
            port: r.port,
            path: r.path.as_deref().map(Into::into),
            prefix: PrefixSwap::new(r.path_prefix.as_deref(), route),
            status: http::StatusCode::from_u16(r.status.unwrap_or(301))
                .unwrap_or(http::StatusCode::MOVED_PERMANENTLY),
            strip_query: r.strip_query == Some(true),
        })))
    }
}

// === impl RedirectPlan ===

impl RedirectPlan {
    /// The same host and target over HTTPS: what a route with `require_tls` answers a plain
    /// request (its status, 301 or 308, depends on the method).
    pub fn to_https() -> Self {
        Self {
            scheme: Some("https"),
            host: None,
            port: None,
            path: None,
            prefix: None,
            status: http::StatusCode::MOVED_PERMANENTLY,
            strip_query: false,
        }
    }

    /// Where to send a request for `uri` that named `host` (as sent, with any port) and came
    /// over HTTPS or not. `None` when the request's host is needed and is not a plain name or
    /// address (nothing that could bend the URL goes into `Location`).
    pub fn location(&self, uri: &http::Uri, host: Option<&str>, https: bool) -> Option<String> {
        let (req_host, req_port) = match host {
            Some(h) => split_host(h)?,
            None => (Cow::Borrowed(""), None),
        };
        let host = self.host.as_deref().unwrap_or(&req_host);
        if host.is_empty() {
            return None;
        }
        let scheme = self.scheme.unwrap_or(if https { "https" } else { "http" });
        let port = match self.port {
            Some(p) => Some(p),
            None if self.scheme.is_some() || self.host.is_some() => None,
            None => req_port,
        }
        .filter(|p| *p != if scheme == "https" { 443 } else { 80 });
        let path = match (&self.path, &self.prefix) {
            (Some(p), _) => p.to_string(),
            (None, Some(prefix)) => prefix.apply(uri.path()),
            (None, None) => uri.path().to_owned(),
        };
        let mut out = format!("{scheme}://");
        // An IPv6 address gets its brackets back.
        if host.contains(':') {
            out.push_str(&format!("[{host}]"));
        } else {
            out.push_str(host);
        }
        if let Some(p) = port {
            out.push_str(&format!(":{p}"));
        }
        out.push_str(&path);
        if let (Some(q), false) = (uri.query(), self.strip_query) {
            out.push('?');
            out.push_str(q);
        }
        Some(out)
    }
}

/// A request's host as the router reads it (`normalize_host`: case, trailing dot, brackets) and
/// its port, if it is a plain name or address with at most a numeric port.
fn split_host(h: &str) -> Option<(Cow<'_, str>, Option<u16>)> {
    let port = match h.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.1.strip_prefix(':'),
        None => h.rsplit_once(':').map(|(_, p)| p),
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    let name = normalize_host(h);
    let plain = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    plain.then_some((name, port))
}

/// What a value's variables are taken from.
pub struct Vars<'a> {
    pub(crate) client: IpAddr,
    pub(crate) request_id: &'a HeaderValue,
    pub(crate) tls: Option<&'a TlsFacts>,
}

impl<'a> Vars<'a> {
    /// A request without TLS (benchmarks).
    pub fn plain(client: IpAddr, request_id: &'a HeaderValue) -> Self {
        Self { client, request_id, tls: None }
    }
}

// === impl HeaderRules ===

impl HeaderRules {
    /// `route` and `prefix`: the route's name and `match.path_prefix` (a listener has neither;
    /// the config check refuses `%path_prefix%` where there is none). `None` for no changes.
    pub fn compile(ops: Option<&HeaderOps>, route: &str, prefix: &str) -> Option<Box<Self>> {
        let ops = ops?;
        // The config check accepted every name and value: what fails here is skipped, never a
        // panic on the data plane.
        let entries = |list: &[sluice_bundle::HeaderEntry]| -> Box<[(HeaderName, Value)]> {
            list.iter()
                .filter_map(|e| {
                    let name = HeaderName::from_bytes(e.name.as_bytes()).ok()?;
                    Some((name, Value::compile(&e.value, route, prefix)?))
                })
                .collect()
        };
        let rules = Self {
            remove: ops.remove.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect(),
            set: entries(&ops.set),
            add: entries(&ops.add),
        };
        Some(Box::new(rules))
    }

    pub fn apply(&self, headers: &mut HeaderMap, vars: &Vars<'_>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            match value.render(vars) {
                Some(v) => headers.insert(name.clone(), v),
                None => headers.remove(name),
            };
        }
        for (name, value) in &self.add {
            if let Some(v) = value.render(vars) {
                headers.append(name.clone(), v);
            }
        }
    }
}

// === impl Value ===

impl Value {
    fn compile(text: &str, route: &str, prefix: &str) -> Option<Self> {
        let mut pieces: Vec<Piece> = Vec::new();
        let push_text = |pieces: &mut Vec<Piece>, t: &str| match pieces.last_mut() {
            Some(Piece::Text(last)) => *last = format!("{last}{t}").into(),
            _ => pieces.push(Piece::Text(t.into())),
        };
        for part in parse_header_value(text).ok()? {
            match part {
                HeaderPart::Text(t) => push_text(&mut pieces, &t),
                HeaderPart::Var(HeaderVariable::Route) => push_text(&mut pieces, route),
                HeaderPart::Var(HeaderVariable::PathPrefix) => push_text(&mut pieces, prefix),
                HeaderPart::Var(HeaderVariable::ClientIp) => pieces.push(Piece::ClientIp),
                HeaderPart::Var(HeaderVariable::RequestId) => pieces.push(Piece::RequestId),
                HeaderPart::Var(HeaderVariable::TlsSubject) => pieces.push(Piece::TlsSubject),
                HeaderPart::Var(HeaderVariable::TlsUriSan) => pieces.push(Piece::TlsUriSan),
            }
        }
        Some(match pieces.as_slice() {
            [] => Self::Static(HeaderValue::from_static("")),
            [Piece::Text(t)] => Self::Static(HeaderValue::from_str(t).ok()?),
            _ => Self::Rendered(pieces.into()),
        })
    }

    /// The value for this request; `None` when it comes out empty (a variable with nothing to
    /// name) or not a valid field value.
    fn render(&self, vars: &Vars<'_>) -> Option<HeaderValue> {
        let pieces = match self {
            Self::Static(v) => return (!v.is_empty()).then(|| v.clone()),
            Self::Rendered(pieces) => pieces,
        };
        let mut out = Vec::with_capacity(64);
        for piece in pieces.iter() {
            match piece {
                Piece::Text(t) => out.extend_from_slice(t.as_bytes()),
                Piece::ClientIp => {
                    use std::io::Write as _;
                    let _ = write!(out, "{}", vars.client);
                }
                Piece::RequestId => out.extend_from_slice(vars.request_id.as_bytes()),
                Piece::TlsSubject => {
                    if let Some(peer) = vars.tls.and_then(|t| t.peer.as_ref()) {
                        out.extend_from_slice(peer.info.subject.as_bytes());
                    }
                }
                Piece::TlsUriSan => {
                    if let Some(uri) =
                        vars.tls.and_then(|t| t.peer.as_ref()).and_then(|p| p.info.uris.first())
                    {
                        out.extend_from_slice(uri.as_bytes());
                    }
                }
            }
        }
        if out.is_empty() {
            return None;
        }
        HeaderValue::from_bytes(&out).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_bundle::HeaderEntry;

    fn entry(name: &str, value: &str) -> HeaderEntry {
        HeaderEntry { name: name.into(), value: value.into() }
    }

    #[test]
    fn removes_then_sets_then_adds_with_variables() {
        let ops = HeaderOps {
            set: vec![
                entry("x-route", "%route% at %path_prefix%"),
                entry("x-from", "%client_ip%/%request_id%"),
            ],
            add: vec![entry("x-tag", "a"), entry("x-tag", "b"), entry("x-cert", "%tls_subject%")],
            remove: vec!["x-internal".into(), "x-tag".into()],
        };
        let rules = HeaderRules::compile(Some(&ops), "api", "/api").unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-internal", HeaderValue::from_static("secret"));
        h.insert("x-tag", HeaderValue::from_static("client's"));
        h.append("x-route", HeaderValue::from_static("one"));
        h.append("x-route", HeaderValue::from_static("two"));
        let id = HeaderValue::from_static("req-1");
        rules.apply(&mut h, &Vars::plain("192.0.2.7".parse().unwrap(), &id));
        assert!(h.get("x-internal").is_none());
        assert_eq!(h.get_all("x-route").iter().collect::<Vec<_>>(), ["api at /api"]);
        assert_eq!(h["x-from"], "192.0.2.7/req-1");
        assert_eq!(h.get_all("x-tag").iter().collect::<Vec<_>>(), ["a", "b"], "the client's removed first");
        assert!(h.get("x-cert").is_none(), "no verified certificate: not sent");
    }

    fn rewrite(prefix: Option<(&str, &str)>, regex: Option<(&str, &str)>) -> RewritePlan {
        RewritePlan {
            prefix: prefix.map(|(from, to)| PrefixSwap { from: from.into(), to: to.into() }),
            regex: regex.map(|(p, s)| (regex::Regex::new(p).unwrap(), s.into())),
            host: None,
        }
    }

    #[test]
    fn prefix_rewrites_join_by_segments_and_keep_the_query() {
        let path = |rw: &RewritePlan, uri: &str| rw.path(&uri.parse().unwrap()).unwrap().unwrap().to_string();
        let to_root = rewrite(Some(("/v1", "/")), None);
        assert_eq!(path(&to_root, "/v1/users?x=1"), "/users?x=1");
        assert_eq!(path(&to_root, "/v1"), "/");
        let to_api = rewrite(Some(("/v1", "/api")), None);
        assert_eq!(path(&to_api, "/v1/users"), "/api/users");
        assert_eq!(path(&to_api, "/v1"), "/api");
        let re = rewrite(None, Some(("^/old/(.*)$", "/new/$1")));
        assert_eq!(path(&re, "/old/a/b?q"), "/new/a/b?q");
        assert_eq!(path(&re, "/other"), "/other");
        assert!(rewrite(None, None).path(&"/x".parse().unwrap()).is_none());
    }

    fn redirect(yaml: &str) -> RedirectPlan {
        let doc = format!(
            "listeners: [{{name: l, address: '127.0.0.1:1'}}]\nroutes: [{{name: r, match: {{path_prefix: /old}}, redirect: {yaml}}}]\n"
        );
        let config = sluice_bundle::parse(doc.as_bytes(), sluice_bundle::Format::Yaml).unwrap();
        match *LocalAnswer::compile(&config.routes[0]).unwrap() {
            LocalAnswer::Redirect(r) => r,
            LocalAnswer::Direct { .. } => unreachable!(),
        }
    }

    #[test]
    fn redirects_keep_what_they_do_not_change() {
        let to = |yaml: &str, uri: &str, host: &str, https: bool| {
            redirect(yaml).location(&uri.parse().unwrap(), Some(host), https)
        };
        let to_https = "{scheme: https}";
        assert_eq!(to(to_https, "/old/a?x=1", "a.test:8080", false).unwrap(), "https://a.test/old/a?x=1");
        assert_eq!(to("{}", "/old", "a.test:8080", false).unwrap(), "http://a.test:8080/old");
        assert_eq!(
            to("{host: b.test, port: 8443, scheme: https}", "/old", "a.test", false).unwrap(),
            "https://b.test:8443/old"
        );
        assert_eq!(
            to("{port: 443, scheme: https}", "/old", "a.test", false).unwrap(),
            "https://a.test/old",
            "default port left out"
        );
        assert_eq!(
            to("{path_prefix: /new, strip_query: true}", "/old/x?y", "a.test", true).unwrap(),
            "https://a.test/new/x"
        );
        assert_eq!(
            to("{path: /moved}", "/old/x?y", "[2001:db8::1]:8080", false).unwrap(),
            "http://[2001:db8::1]:8080/moved?y"
        );
        assert_eq!(
            to(to_https, "/old", "a.test.", false).unwrap(),
            "https://a.test/old",
            "trailing dot dropped"
        );
        assert_eq!(to(to_https, "/old", "evil.test/x@y", false), None, "nothing that bends the URL");
        assert_eq!(to(to_https, "/old", "a.test:99999", false), None);
        assert_eq!(
            redirect("{host: b.test}").location(&"/old".parse().unwrap(), None, false).unwrap(),
            "http://b.test/old"
        );
        assert_eq!(redirect(to_https).location(&"/old".parse().unwrap(), None, false), None);
        assert_eq!(redirect("{status: 308}").status, http::StatusCode::PERMANENT_REDIRECT);
    }

    #[test]
    fn nothing_to_change_compiles_to_nothing() {
        assert!(HeaderRules::compile(None, "r", "").is_none());
    }
}
