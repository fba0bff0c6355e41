//! What the fields of a request and a response say about caching (RFC 9111 §5): `Cache-Control`
//! directives, `Age`, `Expires`, `Date`, `Surrogate-Control`. Parsing never fails: a value that
//! cannot be read is recorded as such, and the caller passes the response through (or treats it
//! as stale) rather than guessing.

use std::time::{Duration, SystemTime};

use http::header::{AGE, CACHE_CONTROL, DATE, EXPIRES, HeaderName};
use http::{HeaderMap, HeaderValue};

/// `Surrogate-Control`: `Cache-Control` addressed to reverse proxies (Edge Architecture 1.0),
/// which overrides it for this cache and goes no further.
pub(crate) const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// The device token this cache answers to in `Surrogate-Control: max-age=60;sluice`, announced
/// upstream in `Surrogate-Capability`.
pub(crate) const DEVICE: &str = "sluice";
/// `Surrogate-Capability`, sent upstream from cached routes.
pub(crate) const SURROGATE_CAPABILITY: HeaderName = HeaderName::from_static("surrogate-capability");
pub(crate) const CAPABILITY: HeaderValue = HeaderValue::from_static("sluice=\"Surrogate/1.0\"");

/// RFC 9111 §1.2.2: delta-seconds larger than this are taken as this.
const MAX_DELTA: u64 = 2_147_483_648;

/// A directive's number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seconds {
    Valid(u64),
    /// Present but unreadable (`max-age=a1`, `max-age='1'`, `-1`), or given twice with different
    /// values.
    Invalid,
}

/// The directives of a response's `Cache-Control` (or of its `Surrogate-Control` for us).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ResponseDirectives {
    pub no_store: bool,
    /// `no-cache` without field names: never reused without revalidation.
    pub no_cache: bool,
    /// `no-cache="a, b"`: those fields are not stored.
    pub no_cache_fields: Vec<HeaderName>,
    /// `private` without field names: a shared cache does not store it.
    pub private: bool,
    /// `private="a"`: those fields are not stored.
    pub private_fields: Vec<HeaderName>,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub must_understand: bool,
    pub max_age: Option<Seconds>,
    pub s_maxage: Option<Seconds>,
    pub stale_while_revalidate: Option<Seconds>,
    pub stale_if_error: Option<Seconds>,
}

/// The directives of a request's `Cache-Control`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RequestDirectives {
    pub no_store: bool,
    pub no_cache: bool,
    pub only_if_cached: bool,
    pub max_age: Option<Seconds>,
    /// `max-stale` without a value: any staleness.
    pub max_stale: Option<Option<Seconds>>,
    pub min_fresh: Option<Seconds>,
}

/// One directive: its name (any case) and its value, unquoted.
struct Directive<'a> {
    name: &'a [u8],
    value: Option<Value<'a>>,
    /// `max-age=60;device`: the device the directive is for (`Surrogate-Control` only).
    target: Option<&'a [u8]>,
}

enum Value<'a> {
    Token(&'a [u8]),
    Quoted(Vec<u8>),
}

impl Value<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Value::Token(t) => t,
            Value::Quoted(q) => q,
        }
    }
}

/// Splits the field lines into directives, honouring quoted strings (a comma or `max-age` inside
/// quotes is not a directive). Unparseable pieces are skipped up to the next comma.
fn directives<'a>(values: impl Iterator<Item = &'a HeaderValue>, mut each: impl FnMut(Directive<'a>)) {
    for v in values {
        let b = v.as_bytes();
        let mut i = 0;
        while i < b.len() {
            while i < b.len() && matches!(b[i], b' ' | b'\t' | b',') {
                i += 1;
            }
            let start = i;
            while i < b.len() && !matches!(b[i], b'=' | b',' | b' ' | b'\t' | b';') {
                i += 1;
            }
            let name = &b[start..i];
            let mut value = None;
            let mut broken = false;
            if i < b.len() && b[i] == b'=' {
                i += 1;
                if i < b.len() && b[i] == b'"' {
                    i += 1;
                    let mut q = Vec::new();
                    let mut closed = false;
                    while i < b.len() {
                        match b[i] {
                            b'\\' if i + 1 < b.len() => {
                                q.push(b[i + 1]);
                                i += 2;
                            }
                            b'"' => {
                                closed = true;
                                i += 1;
                                break;
                            }
                            c => {
                                q.push(c);
                                i += 1;
                            }
                        }
                    }
                    broken = !closed;
                    value = Some(Value::Quoted(q));
                } else {
                    let vs = i;
                    while i < b.len() && !matches!(b[i], b',' | b' ' | b'\t' | b';') {
                        i += 1;
                    }
                    value = Some(Value::Token(&b[vs..i]));
                }
            }
            let mut target = None;
            if i < b.len() && b[i] == b';' {
                i += 1;
                let ts = i;
                while i < b.len() && !matches!(b[i], b',' | b' ' | b'\t') {
                    i += 1;
                }
                target = Some(&b[ts..i]);
            }
            // Anything else up to the comma makes the directive unreadable.
            while i < b.len() && b[i] != b',' {
                if !matches!(b[i], b' ' | b'\t') {
                    broken = true;
                }
                i += 1;
            }
            if name.is_empty() {
                continue;
            }
            if broken {
                // Kept by name with an unreadable value, so a broken `max-age` is not ignored.
                each(Directive { name, value: Some(Value::Token(b"\0")), target });
            } else {
                each(Directive { name, value, target });
            }
        }
    }
}

/// Delta-seconds: digits only (leading zeros allowed), saturating at 2^31.
fn seconds(v: Option<&Value<'_>>) -> Seconds {
    let Some(v) = v else { return Seconds::Invalid };
    let b = v.bytes();
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return Seconds::Invalid;
    }
    let mut n: u64 = 0;
    for d in b {
        n = (n * 10 + u64::from(d - b'0')).min(MAX_DELTA);
    }
    Seconds::Valid(n)
}

/// A second occurrence with another value makes the directive invalid (RFC 9111 §4.2.1 lets a
/// cache treat the response as stale; it is the conservative reading).
fn once(slot: &mut Option<Seconds>, v: Seconds) {
    *slot = match *slot {
        None => Some(v),
        Some(old) if old == v => Some(v),
        Some(_) => Some(Seconds::Invalid),
    };
}

fn field_names(v: Option<&Value<'_>>) -> Vec<HeaderName> {
    let Some(v) = v else { return Vec::new() };
    v.bytes().split(|c| *c == b',').filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok()).collect()
}

impl ResponseDirectives {
    /// The directives this cache follows: `Surrogate-Control`'s when it has any for us, else
    /// `Cache-Control`'s.
    pub fn of(headers: &HeaderMap) -> Self {
        if headers.contains_key(SURROGATE_CONTROL) {
            let mut surrogate = Self::default();
            let mut any = false;
            directives(headers.get_all(SURROGATE_CONTROL).iter(), |d| {
                // `max-age=60;other-device`: addressed to someone else.
                if d.target.is_none_or(|t| t.eq_ignore_ascii_case(DEVICE.as_bytes())) {
                    any = true;
                    surrogate.apply(d);
                }
            });
            if any {
                // Surrogate-Control replaces what Cache-Control says about storing and
                // freshness for this cache; its other directives still apply.
                let cc = Self::parse(headers.get_all(CACHE_CONTROL).iter());
                return Self {
                    no_store: surrogate.no_store,
                    max_age: surrogate.max_age,
                    s_maxage: None,
                    no_cache: cc.no_cache,
                    no_cache_fields: cc.no_cache_fields,
                    private: cc.private,
                    private_fields: cc.private_fields,
                    public: cc.public,
                    must_revalidate: cc.must_revalidate,
                    proxy_revalidate: cc.proxy_revalidate,
                    must_understand: cc.must_understand,
                    stale_while_revalidate: surrogate.stale_while_revalidate.or(cc.stale_while_revalidate),
                    stale_if_error: surrogate.stale_if_error.or(cc.stale_if_error),
                };
            }
        }
        Self::parse(headers.get_all(CACHE_CONTROL).iter())
    }

    fn parse<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Self {
        let mut out = Self::default();
        directives(values, |mut d| {
            if d.target.is_some() && d.value.is_some() {
                // Only `Surrogate-Control` addresses devices; elsewhere the value is unreadable.
                d.value = Some(Value::Token(b"\0"));
            }
            out.apply(d)
        });
        out
    }

    fn apply(&mut self, d: Directive<'_>) {
        let name = d.name;
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            match &d.value {
                Some(v) if !v.bytes().is_empty() => {
                    self.no_cache_fields.extend(field_names(d.value.as_ref()))
                }
                _ => self.no_cache = true,
            }
        } else if is("private") {
            match &d.value {
                Some(v) if !v.bytes().is_empty() => self.private_fields.extend(field_names(d.value.as_ref())),
                _ => self.private = true,
            }
        } else if is("public") {
            self.public = true;
        } else if is("must-revalidate") {
            self.must_revalidate = true;
        } else if is("proxy-revalidate") {
            self.proxy_revalidate = true;
        } else if is("must-understand") {
            self.must_understand = true;
        } else if is("max-age") {
            once(&mut self.max_age, seconds(d.value.as_ref()));
        } else if is("s-maxage") {
            once(&mut self.s_maxage, seconds(d.value.as_ref()));
        } else if is("stale-while-revalidate") {
            once(&mut self.stale_while_revalidate, seconds(d.value.as_ref()));
        } else if is("stale-if-error") {
            once(&mut self.stale_if_error, seconds(d.value.as_ref()));
        }
    }

    /// Whether a stale copy must never be served without revalidation (no `max-stale`,
    /// `stale-while-revalidate` or `stale-if-error`): RFC 9111 §5.2.2.2, §5.2.2.8, §5.2.2.10.
    pub fn revalidate_when_stale(&self) -> bool {
        self.must_revalidate || self.proxy_revalidate || self.s_maxage.is_some() || self.no_cache
    }
}

impl RequestDirectives {
    pub fn of(headers: &HeaderMap) -> Self {
        let mut out = Self::default();
        directives(headers.get_all(CACHE_CONTROL).iter(), |d| {
            let is = |n: &str| d.name.eq_ignore_ascii_case(n.as_bytes());
            if is("no-store") {
                out.no_store = true;
            } else if is("no-cache") {
                out.no_cache = true;
            } else if is("only-if-cached") {
                out.only_if_cached = true;
            } else if is("max-age") {
                once(&mut out.max_age, seconds(d.value.as_ref()));
            } else if is("max-stale") {
                out.max_stale = Some(d.value.as_ref().map(|v| seconds(Some(v))));
            } else if is("min-fresh") {
                once(&mut out.min_fresh, seconds(d.value.as_ref()));
            }
        });
        out
    }
}

/// `Age`: exactly one field line of digits. Anything else (a list, two lines, a sign, a fraction,
/// a parameter) is `Err`, and the response counts as stale.
pub(crate) fn age(headers: &HeaderMap) -> Result<u64, ()> {
    let mut all = headers.get_all(AGE).iter();
    let Some(first) = all.next() else { return Ok(0) };
    if all.next().is_some() {
        return Err(());
    }
    match seconds(Some(&Value::Token(first.as_bytes().trim_ascii()))) {
        Seconds::Valid(n) => Ok(n),
        Seconds::Invalid => Err(()),
    }
}

/// A response's age when it arrived at `now` for a request sent at `request_time` (RFC 9111
/// §4.2.3, `corrected_initial_age`); `None` when its `Age` is unreadable.
pub(crate) fn initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    now: SystemTime,
) -> Option<Duration> {
    let age_value = age(headers).ok()?;
    let date = date(headers, &DATE).ok().flatten().unwrap_or(now);
    let apparent = now.duration_since(date).unwrap_or_default();
    let delay = now.duration_since(request_time).unwrap_or_default();
    Some(apparent.max(Duration::from_secs(age_value) + delay))
}

/// An HTTP-date field with one line; `Err` if present but unreadable or repeated.
pub(crate) fn date(headers: &HeaderMap, name: &HeaderName) -> Result<Option<SystemTime>, ()> {
    let mut all = headers.get_all(name).iter();
    let Some(first) = all.next() else { return Ok(None) };
    if all.next().is_some() {
        return Err(());
    }
    let text = first.to_str().map_err(|_| ())?;
    httpdate::parse_http_date(text.trim()).map(Some).map_err(|_| ())
}

/// How long a response is fresh for (RFC 9111 §4.2.1), for a shared cache: `s-maxage`, then
/// `max-age`, then `Expires` − `Date`, then the heuristic when allowed. `None`: stale from the
/// start (an unreadable or conflicting value, or nothing to go on).
pub(crate) fn lifetime(
    cc: &ResponseDirectives,
    headers: &HeaderMap,
    response_time: SystemTime,
    heuristic: Option<f64>,
) -> Option<Duration> {
    if let Some(s) = cc.s_maxage {
        return valid(s);
    }
    if let Some(s) = cc.max_age {
        return valid(s);
    }
    let date = match date(headers, &DATE) {
        Ok(d) => d.unwrap_or(response_time),
        Err(()) => response_time,
    };
    if headers.contains_key(EXPIRES) {
        // An invalid `Expires` (`0`) means already expired.
        return date_field(headers, &EXPIRES).map(|e| e.duration_since(date).unwrap_or(Duration::ZERO));
    }
    let pct = heuristic?;
    let modified = date_field(headers, &http::header::LAST_MODIFIED)?;
    let since = date.duration_since(modified).ok()?;
    Some(since.mul_f64(pct / 100.0).min(Duration::from_secs(86_400)))
}

fn date_field(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    date(headers, name).ok().flatten()
}

fn valid(s: Seconds) -> Option<Duration> {
    match s {
        Seconds::Valid(n) => Some(Duration::from_secs(n)),
        Seconds::Invalid => None,
    }
}

impl Seconds {
    pub fn get(self) -> Option<u64> {
        match self {
            Seconds::Valid(n) => Some(n),
            Seconds::Invalid => None,
        }
    }
}

#[cfg(test)]
mod tests;
