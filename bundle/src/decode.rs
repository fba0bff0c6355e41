//! A small decoder from a JSON value tree that keeps going after an error, so one pass reports
//! every problem with its path. serde's derive stops at the first one.

use serde_json::{Map, Value};

use crate::{ConfigError, ConfigErrors};

/// Collects errors while a document is decoded.
#[derive(Default)]
pub(crate) struct Decoder {
    errors: Vec<ConfigError>,
}

/// A value that can be read from a JSON node.
pub(crate) trait Decode: Sized {
    /// Reads `v`, or records why it cannot and returns `None`.
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self>;
}

/// The fields of one object, read by name; unknown names are reported when it is made.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

// === impl Decoder ===

impl Decoder {
    pub(crate) fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError { path: path.to_owned(), message: message.into() });
    }

    pub(crate) fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// The decoded value, or every error found. Errors are grouped by the list element they are
    /// in (`routes[2]...` together), in document order within each element.
    pub(crate) fn finish<T>(mut self, value: Option<T>) -> Result<T, ConfigErrors> {
        self.errors.sort_by_key(|e| element_key(&e.path));
        match value {
            Some(v) if self.errors.is_empty() => Ok(v),
            _ if self.errors.is_empty() => Err(ConfigErrors::single("", "invalid document")),
            _ => Err(ConfigErrors(self.errors)),
        }
    }

    /// Decodes a list, keeping a slot per element so later checks can use original indices.
    pub(crate) fn list<T>(
        &mut self,
        v: &Value,
        path: &str,
        item: impl Fn(&Value, &str, &mut Self) -> Option<T>,
    ) -> Vec<Option<T>> {
        match v {
            Value::Array(items) => {
                items.iter().enumerate().map(|(i, v)| item(v, &format!("{path}[{i}]"), self)).collect()
            }
            other => {
                self.error(path, format!("expected a list, found {}", describe(other)));
                Vec::new()
            }
        }
    }
}

// === impl Fields ===

impl<'a> Fields<'a> {
    /// Opens `v` as an object whose keys must be among `known`.
    pub(crate) fn new(v: &'a Value, path: &'a str, known: &[&str], d: &mut Decoder) -> Option<Self> {
        let Value::Object(map) = v else {
            d.error(path, format!("expected a mapping, found {}", describe(v)));
            return None;
        };
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                let hint = match closest(key, known) {
                    Some(k) => format!("; did you mean `{k}`?"),
                    None => format!("; expected one of: {}", known.join(", ")),
                };
                d.error(&join(path, key), format!("unknown field `{key}`{hint}"));
            }
        }
        Some(Self { map, path })
    }

    pub(crate) fn path(&self, key: &str) -> String {
        join(self.path, key)
    }

    /// The raw node under `key`, `null` counting as absent.
    pub(crate) fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A required field.
    pub(crate) fn req<T: Decode>(&self, key: &str, d: &mut Decoder) -> Option<T> {
        match self.raw(key) {
            Some(v) => T::decode(v, &self.path(key), d),
            None => {
                d.error(&self.path(key), "missing required field");
                None
            }
        }
    }

    /// An optional field: `Ok(None)` when absent, `Err(())` when present but invalid.
    pub(crate) fn opt<T: Decode>(&self, key: &str, d: &mut Decoder) -> Result<Option<T>, ()> {
        match self.raw(key) {
            Some(v) => T::decode(v, &self.path(key), d).map(Some).ok_or(()),
            None => Ok(None),
        }
    }

    /// A list field; absent means empty.
    pub(crate) fn list<T: Decode>(&self, key: &str, d: &mut Decoder) -> Vec<Option<T>> {
        match self.raw(key) {
            Some(v) => d.list(v, &self.path(key), T::decode),
            None => Vec::new(),
        }
    }
}

/// The top-level section and index of the element a path is in: `routes[2].pool` → `("routes", 2)`.
fn element_key(path: &str) -> (usize, usize) {
    let section =
        ["listeners", "pools", "routes"].iter().position(|s| path.starts_with(s)).map_or(0, |i| i + 1);
    let index = path
        .split_once('[')
        .and_then(|(_, rest)| rest.split_once(']'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0);
    (section, index)
}

/// `path.key`, or `key` at the root.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// A short description of a node for "expected X, found Y" messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) if s.len() <= 40 => format!("a string ({s:?})"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// The known name nearest to a misspelt one, if it is near enough to be a likely typo.
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(dist, k)| *dist <= 2.max(k.len() / 4))
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

// === scalar impls ===

impl Decode for String {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                d.error(path, format!("expected a string, found {}", describe(other)));
                None
            }
        }
    }
}

impl Decode for bool {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        match v {
            Value::Bool(b) => Some(*b),
            other => {
                d.error(path, format!("expected true or false, found {}", describe(other)));
                None
            }
        }
    }
}

impl Decode for u32 {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        match v.as_u64().map(u32::try_from) {
            Some(Ok(n)) => Some(n),
            _ => {
                d.error(
                    path,
                    format!("expected a whole number from 0 to {}, found {}", u32::MAX, describe(v)),
                );
                None
            }
        }
    }
}

/// A JSON integer or float; NaN and infinities are refused.
impl Decode for f64 {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        match v.as_f64() {
            Some(n) if n.is_finite() => Some(n),
            _ => {
                d.error(path, format!("expected a number, found {}", describe(v)));
                None
            }
        }
    }
}

impl Decode for crate::Duration {
    fn decode(v: &Value, path: &str, d: &mut Decoder) -> Option<Self> {
        match v {
            Value::String(s) => crate::Duration::parse(s).map_err(|e| d.error(path, e)).ok(),
            other => {
                d.error(
                    path,
                    format!("expected a duration string like 250ms or 30s, found {}", describe(other)),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names_only() {
        assert_eq!(closest("adress", &["name", "address"]), Some("address"));
        assert_eq!(closest("pathprefix", &["path", "path_prefix"]), Some("path_prefix"));
        assert_eq!(closest("zzz", &["name", "address"]), None);
    }
}
