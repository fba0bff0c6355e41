//! Response diff for traffic shadowing: which fields of a primary and a candidate response differ,
//! per-field statistics with a Diffy-style noise floor, and masked samples.
//!
//! Everything here is pure and runs in shadow tasks, off the request path. Rules are compiled once
//! per snapshot. PII never leaves this module unmasked: field names are JSON pointers (with mask
//! patterns applied to their key segments), and samples are rendered by [`DiffRules::summary`].

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use http::HeaderMap;
use http::header::HeaderName;
use regex::Regex;
use serde_json::{Map, Number, Value};
use sluice_bundle::ConfigError;

/// What replaces a masked value or a pattern match.
const MASK: &str = "***";
/// The field that counts names beyond `DiffStats`' bound.
const OTHER: &str = "other";
/// The field for a difference at the document root (pointer ``), e.g. `[]` vs `{}`.
const ROOT: &str = "body";

/// Default PII key names, lowercase with `_` and `-` removed (how keys are compared to them).
const DEFAULT_KEYS: &[&str] = &[
    "email",
    "phone",
    "phonenumber",
    "mobile",
    "name",
    "firstname",
    "lastname",
    "fullname",
    "givenname",
    "familyname",
    "card",
    "cardnumber",
    "pan",
    "cvv",
    "cvc",
    "ssn",
    "iban",
    "password",
];
/// E-mail addresses (Unicode word characters, at least one dot in the domain).
const DEFAULT_EMAIL: &str = r"[\w.%+\-]+@[\w\-]+(?:\.[\w\-]+)+";
/// 13–19 digits, optionally separated by single spaces or dashes. No word boundaries: a card
/// number glued to letters must still be masked; masking a long ID too is the safe mistake.
const DEFAULT_CARD: &str = r"\d(?:[ \-]?\d){12,18}";

/// Compiled diff rules of one route.
#[derive(Debug)]
pub struct DiffRules {
    headers: Box<[HeaderName]>,
    ignore: Box<[Pointer]>,
    mask_pointers: Box<[Pointer]>,
    /// Bare key names, lowercase.
    mask_keys: Box<[Box<str>]>,
    default_keys: bool,
    /// User patterns, then the defaults.
    patterns: Box<[Regex]>,
}

/// One response as the diff sees it.
pub struct Side<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
    /// The body, whole unless `truncated` (it exceeded the mirror's body cap).
    pub body: &'a [u8],
    pub truncated: bool,
}

/// Per-route diff statistics, updated from shadow tasks and read for reports.
#[derive(Debug)]
pub struct DiffStats {
    max_fields: usize,
    max_samples: usize,
    inner: Mutex<StatsInner>,
}

#[derive(Debug, Default)]
struct StatsInner {
    compared: u64,
    differed: u64,
    baseline_compared: u64,
    fields: HashMap<Box<str>, Counts>,
    samples: VecDeque<Sample>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    differed: u64,
    noise: u64,
}

/// A kept primary/candidate pair; `primary` and `candidate` are [`DiffRules::summary`] texts.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: SystemTime,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub fields: Vec<Box<str>>,
    pub primary: String,
    pub candidate: String,
}

/// A copy of one route's statistics.
#[derive(Debug, Clone, Default)]
pub struct DiffView {
    /// Primary/candidate pairs compared.
    pub compared: u64,
    /// Pairs with at least one differing field.
    pub differed: u64,
    /// Primary/baseline pairs compared.
    pub baseline_compared: u64,
    /// Sorted by `differed` descending, then name.
    pub fields: Vec<FieldView>,
    /// Newest first.
    pub samples: Vec<Sample>,
}

/// One field's counts.
#[derive(Debug, Clone)]
pub struct FieldView {
    pub field: Box<str>,
    /// Primary/candidate pairs where it differed.
    pub differed: u64,
    /// Primary/baseline pairs where it differed.
    pub noise: u64,
}

/// A compiled JSON pointer; never empty (the root pointer is rejected).
#[derive(Debug)]
struct Pointer {
    segs: Box<[PatSeg]>,
}

#[derive(Debug)]
enum PatSeg {
    /// `*`: any key or index.
    Any,
    /// An unescaped key; `index` when it is also a valid RFC 6901 array index.
    Key { key: Box<str>, index: Option<usize> },
}

/// A step from a JSON value to one of its children.
#[derive(Debug, Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

// === impl DiffRules ===

impl DiffRules {
    /// Compiles a route's rules, reporting every bad entry at once.
    pub fn new(
        headers: &[String],
        ignore: &[String],
        mask: &[String],
        mask_patterns: &[String],
        mask_defaults: bool,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut err = |path: String, message: String| errors.push(ConfigError { path, message });

        let mut names: Vec<HeaderName> = Vec::with_capacity(headers.len());
        for (i, h) in headers.iter().enumerate() {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) if !names.contains(&name) => names.push(name),
                Ok(_) => {}
                Err(_) => err(format!("headers[{i}]"), format!("`{h}` is not a valid header name")),
            }
        }

        let mut ignored = Vec::with_capacity(ignore.len());
        for (i, p) in ignore.iter().enumerate() {
            match Pointer::parse(p) {
                Ok(p) => ignored.push(p),
                Err(m) => err(format!("ignore[{i}]"), m),
            }
        }

        let (mut mask_pointers, mut mask_keys) = (Vec::new(), Vec::new());
        for (i, m) in mask.iter().enumerate() {
            if m.starts_with('/') {
                match Pointer::parse(m) {
                    Ok(p) => mask_pointers.push(p),
                    Err(msg) => err(format!("mask[{i}]"), msg),
                }
            } else if m.is_empty() {
                err(format!("mask[{i}]"), "empty entry (expected a JSON pointer or a key name)".into());
            } else if m.contains('/') {
                // Most likely a pointer missing its leading `/`; a silently dead mask would leak.
                err(
                    format!("mask[{i}]"),
                    format!("`{m}` is neither a JSON pointer (must start with `/`) nor a key name (no `/`)"),
                );
            } else {
                mask_keys.push(m.to_lowercase().into_boxed_str());
            }
        }

        let mut patterns = Vec::with_capacity(mask_patterns.len() + 2);
        for (i, p) in mask_patterns.iter().enumerate() {
            match Regex::new(p) {
                Ok(re) => patterns.push(re),
                Err(e) => err(format!("mask_patterns[{i}]"), format!("invalid regex: {e}")),
            }
        }
        if mask_defaults {
            for p in [DEFAULT_EMAIL, DEFAULT_CARD] {
                match Regex::new(p) {
                    Ok(re) => patterns.push(re),
                    Err(e) => err("mask_defaults".into(), format!("invalid default pattern: {e}")),
                }
            }
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            headers: names.into(),
            ignore: ignored.into(),
            mask_pointers: mask_pointers.into(),
            mask_keys: mask_keys.into(),
            default_keys: mask_defaults,
            patterns: patterns.into(),
        })
    }

    /// The fields where the two responses differ, sorted and deduplicated.
    pub fn compare(&self, primary: &Side<'_>, candidate: &Side<'_>) -> Vec<Box<str>> {
        let mut fields: BTreeSet<Box<str>> = BTreeSet::new();
        if primary.status != candidate.status {
            fields.insert("status".into());
        }
        for name in &self.headers {
            if !primary.headers.get_all(name).iter().eq(candidate.headers.get_all(name).iter()) {
                fields.insert(format!("header:{name}").into());
            }
        }
        if !primary.truncated && !candidate.truncated && primary.body != candidate.body {
            match (parse(primary.body), parse(candidate.body)) {
                (Some(a), Some(b)) => {
                    let (tracker, root) = Tracker::new(&self.ignore);
                    let mut walk =
                        Walk { tracker, path: Vec::new(), raw: BTreeSet::new(), buf: String::new() };
                    walk.diff(&a, &b, root);
                    fields.extend(walk.raw.into_iter().map(|raw| self.mask_field(raw)));
                }
                _ => {
                    fields.insert(ROOT.into());
                }
            }
        }
        fields.into_iter().collect()
    }

    /// A masked summary of one response for a diff sample, at most `max_len` bytes:
    /// `{"status":200,"headers":{"content-type":"..."},"body":<masked JSON body>}`.
    ///
    /// Ignored pointers are removed; masked keys and pointers have their whole value replaced by
    /// `"***"`; pattern matches in strings, object keys and header values become `***`, and a
    /// number whose text matches a pattern becomes `"***"`. Absent compared headers are `null`.
    pub fn summary(&self, side: &Side<'_>, max_len: usize) -> String {
        let body = if side.truncated {
            Value::String("<truncated>".into())
        } else if side.body.is_empty() {
            Value::String("<empty>".into())
        } else {
            match parse(side.body) {
                Some(v) => {
                    let (mut ignore, ignore_root) = Tracker::new(&self.ignore);
                    let (mut mask, mask_root) = Tracker::new(&self.mask_pointers);
                    self.mask_value(v, &mut ignore, ignore_root, &mut mask, mask_root)
                }
                None => Value::String(format!("<{} bytes, not JSON>", side.body.len())),
            }
        };

        let mut headers = Map::new();
        for name in &self.headers {
            let mut joined: Option<String> = None;
            for v in side.headers.get_all(name) {
                let v = String::from_utf8_lossy(v.as_bytes());
                match &mut joined {
                    Some(j) => {
                        j.push_str(", ");
                        j.push_str(&v);
                    }
                    None => joined = Some(v.into_owned()),
                }
            }
            let value = joined.map_or(Value::Null, |j| Value::String(self.redact(&j)));
            headers.insert(name.as_str().to_owned(), value);
        }

        let mut out = Map::new();
        out.insert("status".into(), side.status.into());
        out.insert("headers".into(), Value::Object(headers));
        out.insert("body".into(), body);
        truncate(Value::Object(out).to_string(), max_len)
    }

    /// `text` with every mask pattern match replaced by `***`, e.g. for a sample's request path,
    /// whose query string may carry an e-mail address.
    pub fn redact(&self, text: &str) -> String {
        self.apply_patterns(text).into_owned()
    }

    fn apply_patterns<'s>(&self, s: &'s str) -> Cow<'s, str> {
        // Union of all patterns' matches on the original text, so overlapping patterns cannot
        // leave a piece of a match behind (as replacing pattern by pattern could).
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for re in &self.patterns {
            ranges.extend(re.find_iter(s).filter(|m| !m.is_empty()).map(|m| (m.start(), m.end())));
        }
        if ranges.is_empty() {
            return Cow::Borrowed(s);
        }
        ranges.sort_unstable();
        let mut out = String::with_capacity(s.len());
        let mut copied = 0;
        let mut iter = ranges.into_iter().peekable();
        while let Some((start, mut end)) = iter.next() {
            while let Some(&(next_start, next_end)) = iter.peek() {
                if next_start > end {
                    break;
                }
                end = end.max(next_end);
                iter.next();
            }
            out.push_str(s.get(copied..start).unwrap_or_default());
            out.push_str(MASK);
            copied = end;
        }
        out.push_str(s.get(copied..).unwrap_or_default());
        Cow::Owned(out)
    }

    /// A raw (escaped) field pointer with patterns applied to each key segment.
    fn mask_field(&self, raw: String) -> Box<str> {
        if self.patterns.is_empty() || !raw.starts_with('/') {
            return raw.into();
        }
        let mut out = String::with_capacity(raw.len());
        let mut changed = false;
        for seg in raw.split('/').skip(1) {
            out.push('/');
            let key = unescape_lossy(seg);
            match self.apply_patterns(&key) {
                Cow::Borrowed(_) => out.push_str(seg),
                Cow::Owned(masked) => {
                    changed = true;
                    push_escaped(&mut out, &masked);
                }
            }
        }
        if changed { out.into() } else { raw.into() }
    }

    fn key_masked(&self, key: &str) -> bool {
        self.mask_keys.iter().any(|m| lower_eq(key.chars(), m))
            || (self.default_keys
                && DEFAULT_KEYS.iter().any(|m| lower_eq(key.chars().filter(|c| !matches!(c, '_' | '-')), m)))
    }

    fn mask_value(
        &self,
        v: Value,
        ignore: &mut Tracker<'_>,
        ignore_at: Frame,
        mask: &mut Tracker<'_>,
        mask_at: Frame,
    ) -> Value {
        match v {
            Value::Object(map) => {
                let mut out = Map::with_capacity(map.len());
                for (k, child) in map {
                    let Some(ignore_child) = ignore.enter(ignore_at, Seg::Key(&k)) else { continue };
                    let masked = mask.enter(mask_at, Seg::Key(&k));
                    let value = match masked {
                        Some(mask_child) if !self.key_masked(&k) => {
                            self.mask_value(child, ignore, ignore_child, mask, mask_child)
                        }
                        _ => Value::String(MASK.into()),
                    };
                    out.insert(self.apply_patterns(&k).into_owned(), value);
                }
                Value::Object(out)
            }
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, child) in items.into_iter().enumerate() {
                    let Some(ignore_child) = ignore.enter(ignore_at, Seg::Index(i)) else { continue };
                    out.push(match mask.enter(mask_at, Seg::Index(i)) {
                        Some(mask_child) => self.mask_value(child, ignore, ignore_child, mask, mask_child),
                        None => Value::String(MASK.into()),
                    });
                }
                Value::Array(out)
            }
            Value::String(s) => match self.apply_patterns(&s) {
                Cow::Borrowed(_) => Value::String(s),
                Cow::Owned(masked) => Value::String(masked),
            },
            Value::Number(n) => {
                // A card number sent as a JSON number is still a card number.
                let text = n.to_string();
                if self.patterns.iter().any(|re| re.find_iter(&text).any(|m| !m.is_empty())) {
                    Value::String(MASK.into())
                } else {
                    Value::Number(n)
                }
            }
            v @ (Value::Null | Value::Bool(_)) => v,
        }
    }
}

impl fmt::Debug for Side<'_> {
    // Bodies and headers may carry PII; never print them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Side")
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .field("truncated", &self.truncated)
            .finish_non_exhaustive()
    }
}

fn parse(body: &[u8]) -> Option<Value> {
    if body.is_empty() { None } else { serde_json::from_slice(body).ok() }
}

/// Whether `chars`, lowercased, spell `lower` — without allocating.
fn lower_eq(chars: impl Iterator<Item = char>, lower: &str) -> bool {
    chars.flat_map(char::to_lowercase).eq(lower.chars())
}

/// Cuts `s` to at most `max_len` bytes on a char boundary, ending in `…` when cut.
fn truncate(mut s: String, max_len: usize) -> String {
    if s.len() <= max_len {
        return s;
    }
    const ELLIPSIS: &str = "…";
    let keep = s.floor_char_boundary(max_len.saturating_sub(ELLIPSIS.len()));
    s.truncate(keep);
    if max_len >= ELLIPSIS.len() {
        s.push_str(ELLIPSIS);
    }
    s
}

fn push_escaped(out: &mut String, key: &str) {
    for c in key.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
}

/// Undoes `push_escaped` (its output is always well formed).
fn unescape_lossy(seg: &str) -> Cow<'_, str> {
    if seg.contains('~') { Cow::Owned(seg.replace("~1", "/").replace("~0", "~")) } else { Cow::Borrowed(seg) }
}

/// Numbers compare by value, so `1` and `1.0` are equal.
fn number_eq(a: &Number, b: &Number) -> bool {
    if let (Some(x), Some(y)) = (a.as_i64(), b.as_i64()) {
        return x == y;
    }
    if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
        return x == y;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

// === impl Pointer ===

impl Pointer {
    fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("`{text}` is not a JSON pointer (must start with `/`)"));
        };
        let segs = rest
            .split('/')
            .map(|raw| {
                if raw == "*" {
                    return Ok(PatSeg::Any);
                }
                let key = unescape_strict(raw).ok_or_else(|| {
                    format!("`{text}` has an invalid escape (`~` must be followed by `0` or `1`)")
                })?;
                let index = array_index(&key);
                Ok(PatSeg::Key { key: key.into(), index })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { segs })
    }
}

fn unescape_strict(raw: &str) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '~' => match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

/// RFC 6901 `array-index`: `0` or digits without a leading zero.
fn array_index(key: &str) -> Option<usize> {
    let canonical = key == "0" || (!key.starts_with('0') && key.bytes().all(|b| b.is_ascii_digit()));
    if canonical { key.parse().ok() } else { None }
}

// === impl PatSeg ===

impl PatSeg {
    fn matches(&self, seg: Seg<'_>) -> bool {
        match (self, seg) {
            (PatSeg::Any, _) => true,
            (PatSeg::Key { key, .. }, Seg::Key(k)) => **key == *k,
            (PatSeg::Key { index, .. }, Seg::Index(i)) => *index == Some(i),
        }
    }
}

// === impl Tracker ===

/// Which pointers are still matching at a node: `stack[start..end]` holds their ids, and each
/// matched its first `depth` segments. One stack per walk, so descending allocates nothing.
#[derive(Debug, Clone, Copy)]
struct Frame {
    start: usize,
    end: usize,
    depth: usize,
}

struct Tracker<'r> {
    pointers: &'r [Pointer],
    stack: Vec<usize>,
}

impl<'r> Tracker<'r> {
    fn new(pointers: &'r [Pointer]) -> (Self, Frame) {
        let stack: Vec<usize> = (0..pointers.len()).collect();
        (Self { pointers, stack }, Frame { start: 0, end: pointers.len(), depth: 0 })
    }

    /// Steps from the node at `at` into its child `seg`: `None` when some pointer ends there
    /// (the child and everything below it are hit), else the child's frame.
    fn enter(&mut self, at: Frame, seg: Seg<'_>) -> Option<Frame> {
        // Whatever lies past `at.end` belongs to an earlier sibling's subtree.
        self.stack.truncate(at.end);
        for i in at.start..at.end {
            let Some(&id) = self.stack.get(i) else { break };
            let Some(segs) = self.pointers.get(id).map(|p| &p.segs) else { continue };
            if segs.get(at.depth).is_some_and(|s| s.matches(seg)) {
                if at.depth + 1 == segs.len() {
                    self.stack.truncate(at.end);
                    return None;
                }
                self.stack.push(id);
            }
        }
        Some(Frame { start: at.end, end: self.stack.len(), depth: at.depth + 1 })
    }
}

// === impl Walk ===

/// One JSON comparison: the current path, and the differing pointers found so far (escaped,
/// not yet masked; a set because index collapsing repeats names).
struct Walk<'r, 'a> {
    tracker: Tracker<'r>,
    path: Vec<Seg<'a>>,
    raw: BTreeSet<String>,
    buf: String,
}

impl<'a> Walk<'_, 'a> {
    fn diff(&mut self, a: &'a Value, b: &'a Value, at: Frame) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for (k, va) in x {
                    let Some(child) = self.tracker.enter(at, Seg::Key(k)) else { continue };
                    self.path.push(Seg::Key(k));
                    match y.get(k) {
                        Some(vb) => self.diff(va, vb, child),
                        None => self.emit(),
                    }
                    self.path.pop();
                }
                for k in y.keys().filter(|k| !x.contains_key(*k)) {
                    if self.tracker.enter(at, Seg::Key(k)).is_some() {
                        self.path.push(Seg::Key(k));
                        self.emit();
                        self.path.pop();
                    }
                }
            }
            (Value::Array(x), Value::Array(y)) => {
                let common = x.len().min(y.len());
                for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                    let Some(child) = self.tracker.enter(at, Seg::Index(i)) else { continue };
                    self.path.push(Seg::Index(i));
                    self.diff(va, vb, child);
                    self.path.pop();
                }
                // Every extra element has the same name; one not ignored is enough.
                if (common..x.len().max(y.len())).any(|i| self.tracker.enter(at, Seg::Index(i)).is_some()) {
                    self.path.push(Seg::Index(common));
                    self.emit();
                    self.path.pop();
                }
            }
            (Value::Number(x), Value::Number(y)) if number_eq(x, y) => {}
            (Value::String(x), Value::String(y)) if x == y => {}
            (Value::Bool(x), Value::Bool(y)) if x == y => {}
            (Value::Null, Value::Null) => {}
            _ => self.emit(),
        }
    }

    fn emit(&mut self) {
        self.buf.clear();
        for seg in &self.path {
            self.buf.push('/');
            match seg {
                Seg::Key(k) => push_escaped(&mut self.buf, k),
                Seg::Index(_) => self.buf.push('*'),
            }
        }
        if self.buf.is_empty() {
            self.buf.push_str(ROOT);
        }
        if !self.raw.contains(self.buf.as_str()) {
            self.raw.insert(self.buf.clone());
        }
    }
}

// === impl DiffStats ===

impl DiffStats {
    /// At most `max_fields` distinct names are tracked (plus `other`, which counts the rest);
    /// at most `max_samples` samples are kept.
    pub fn new(max_fields: usize, max_samples: usize) -> Self {
        Self { max_fields, max_samples, inner: Mutex::new(StatsInner::default()) }
    }

    /// A compared primary/candidate pair and its differing fields.
    pub fn record(&self, fields: &[Box<str>]) {
        let mut inner = self.lock();
        inner.compared += 1;
        if !fields.is_empty() {
            inner.differed += 1;
        }
        inner.count(fields, self.max_fields, |c| &mut c.differed);
    }

    /// A compared primary/baseline pair: each field here differed between two baselines (noise).
    pub fn record_noise(&self, fields: &[Box<str>]) {
        let mut inner = self.lock();
        inner.baseline_compared += 1;
        inner.count(fields, self.max_fields, |c| &mut c.noise);
    }

    /// Keeps a sample (newest first, ring of `max_samples`).
    pub fn sample(&self, sample: Sample) {
        if self.max_samples == 0 {
            return;
        }
        let mut inner = self.lock();
        inner.samples.truncate(self.max_samples - 1);
        inner.samples.push_front(sample);
    }

    /// A copy of the statistics with the `samples` newest samples (only those are cloned).
    pub fn view(&self, samples: usize) -> DiffView {
        let inner = self.lock();
        let mut fields: Vec<FieldView> = inner
            .fields
            .iter()
            .map(|(field, c)| FieldView { field: field.clone(), differed: c.differed, noise: c.noise })
            .collect();
        fields.sort_unstable_by(|a, b| b.differed.cmp(&a.differed).then_with(|| a.field.cmp(&b.field)));
        DiffView {
            compared: inner.compared,
            differed: inner.differed,
            baseline_compared: inner.baseline_compared,
            fields,
            samples: inner.samples.iter().take(samples).cloned().collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatsInner> {
        // Counters stay meaningful even if a holder panicked.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StatsInner {
    /// Adds one to each field's counter, and at most one to `other` per pair.
    fn count(&mut self, fields: &[Box<str>], max_fields: usize, counter: fn(&mut Counts) -> &mut u64) {
        let mut overflowed = false;
        for field in fields {
            if let Some(c) = self.fields.get_mut(&**field) {
                *counter(c) += 1;
            } else if self.fields.len() - usize::from(self.fields.contains_key(OTHER)) < max_fields {
                *counter(self.fields.entry(field.clone()).or_default()) += 1;
            } else {
                overflowed = true;
            }
        }
        if overflowed {
            *counter(self.fields.entry(OTHER.into()).or_default()) += 1;
        }
    }
}

#[cfg(test)]
mod tests;
