//! Semantic diff of two configs: what an operator changed, element by element and field by
//! field, with list elements identified by their names rather than their positions.

use std::fmt;

use serde_json::Value;

use crate::Config;

/// One difference between two configs.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Where, with list elements named: `routes[users].timeout`, `pools[web].endpoints[10.0.0.1:80]`.
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Removed,
    Changed,
}

// === impl Change ===

impl Change {
    pub fn kind(&self) -> ChangeKind {
        match (&self.old, &self.new) {
            (None, _) => ChangeKind::Added,
            (_, None) => ChangeKind::Removed,
            _ => ChangeKind::Changed,
        }
    }
}

impl fmt::Display for Change {
    /// `+ path: value`, `- path: value` or `~ path: old → new`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match (&self.old, &self.new) {
            (None, Some(new)) => write!(f, "+ {}: {}", self.path, show(new)),
            (Some(old), None) => write!(f, "- {}: {}", self.path, show(old)),
            (Some(old), Some(new)) => write!(f, "~ {}: {} → {}", self.path, show(old), show(new)),
            (None, None) => write!(f, "  {}", self.path),
        }
    }
}

/// Every difference from `old` to `new`, in document order.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let (a, b) =
        (serde_json::to_value(old).unwrap_or_default(), serde_json::to_value(new).unwrap_or_default());
    let mut changes = Vec::new();
    let empty = Value::Array(Vec::new());
    for section in ["listeners", "pools", "routes"] {
        // An absent section is an empty list, so its elements show one by one.
        diff_value(
            section,
            Some(a.get(section).unwrap_or(&empty)),
            Some(b.get(section).unwrap_or(&empty)),
            &mut changes,
        );
    }
    changes
}

fn diff_value(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<Change>) {
    match (a, b) {
        (None, None) => {}
        (Some(a), Some(b)) if a == b => {}
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
                diff_value(&format!("{path}.{key}"), a.get(key), b.get(key), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if identity(a).is_some() && identity(b).is_some() => {
            let key = |v: &Value| {
                identity(std::slice::from_ref(v)).and_then(|mut ids| ids.pop()).unwrap_or_default()
            };
            for item in a {
                let id = key(item);
                diff_value(&format!("{path}[{id}]"), Some(item), b.iter().find(|x| key(x) == id), out);
            }
            for item in b.iter().filter(|x| !a.iter().any(|y| key(y) == key(x))) {
                diff_value(&format!("{path}[{}]", key(item)), None, Some(item), out);
            }
        }
        (a, b) => out.push(Change { path: path.to_owned(), old: a.cloned(), new: b.cloned() }),
    }
}

/// The identities of list elements that have one (`name`, an endpoint's `address`, a
/// certificate's `cert_file`), if all do and no two share one (a header added twice, two
/// conditions on one header): otherwise the list is compared whole.
fn identity(items: &[Value]) -> Option<Vec<String>> {
    let ids: Vec<String> = items
        .iter()
        .map(|v| {
            v.get("name")
                .or_else(|| v.get("address"))
                .or_else(|| v.get("cert_file"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect::<Option<_>>()?;
    let unique = ids.iter().enumerate().all(|(i, id)| !ids[..i].contains(id));
    unique.then_some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, parse};

    fn config(routes: &str, endpoints: &str) -> Config {
        let doc = format!(
            "listeners: [{{name: l, address: '127.0.0.1:1'}}]\npools: [{{name: p, endpoints: [{endpoints}]}}]\nroutes:\n{routes}"
        );
        parse(doc.as_bytes(), Format::Yaml).unwrap()
    }

    #[test]
    fn changes_are_named_not_numbered() {
        let old = config(
            "  - {name: users, match: {path_prefix: /users}, pool: p, timeout: 3s}\n  - {name: old, pool: p}\n",
            "{address: 'a:1'}, {address: 'b:1', weight: 2}",
        );
        let new = config(
            "  - {name: fresh, match: {path: /x}, pool: p}\n  - {name: users, match: {path_prefix: /users}, pool: p, timeout: 5s}\n",
            "{address: 'b:1', weight: 3}, {address: 'c:1'}",
        );
        let lines: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "- pools[p].endpoints[a:1]: {\"address\":\"a:1\"}",
                "~ pools[p].endpoints[b:1].weight: 2 → 3",
                "+ pools[p].endpoints[c:1]: {\"address\":\"c:1\"}",
                "~ routes[users].timeout: 3s → 5s",
                "- routes[old]: {\"name\":\"old\",\"pool\":\"p\"}",
                "+ routes[fresh]: {\"name\":\"fresh\",\"match\":{\"path\":\"/x\"},\"pool\":\"p\"}",
            ]
        );
    }

    #[test]
    fn route_policy_changes_are_named() {
        let doc = |route: &str| {
            let text = format!(
                "listeners: [{{name: l, address: '127.0.0.1:1'}}]\npools: [{{name: p, endpoints: [{{address: 'a:1'}}]}}, \
                 {{name: authz, protocol: http2, endpoints: [{{address: 'b:1'}}]}}]\nroutes: [{{name: api, pool: p, {route}}}]\n"
            );
            parse(text.as_bytes(), Format::Yaml).unwrap()
        };
        let old = doc("jwt: {jwks_file: /k.json, audiences: [a]}, ext_authz: {pool: authz}");
        let new = doc(
            "jwt: {jwks_file: /k.json, audiences: [a, b], leeway: 5s}, ext_authz: {pool: authz, fail_mode: open}",
        );
        let lines: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "~ routes[api].jwt.audiences: [\"a\"] → [\"a\",\"b\"]",
                "+ routes[api].jwt.leeway: 5s",
                "+ routes[api].ext_authz.fail_mode: open",
            ]
        );
    }

    #[test]
    fn tls_changes_name_the_certificate_by_its_file() {
        let doc = |certs: &str, route: &str| {
            let text = format!(
                "listeners: [{{name: l, address: '127.0.0.1:1', tls: {{certificates: [{certs}]}}}}]\n\
                 pools: [{{name: p, endpoints: [{{address: 'a:1'}}]}}]\nroutes: [{{name: r, pool: p{route}}}]\n"
            );
            parse(text.as_bytes(), Format::Yaml).unwrap()
        };
        let old = doc("{cert_file: /tls/a.pem, key_file: /tls/a.key, server_names: [a.test]}", "");
        let new = doc(
            "{cert_file: /tls/a.pem, key_file: /tls/a.key, server_names: [a.test, b.test]}, \
             {cert_file: /tls/c.pem, key_file: /tls/c.key, default: true}",
            ", require_tls: true",
        );
        let lines: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "~ listeners[l].tls.certificates[/tls/a.pem].server_names: [\"a.test\"] → [\"a.test\",\"b.test\"]",
                "+ listeners[l].tls.certificates[/tls/c.pem]: {\"cert_file\":\"/tls/c.pem\",\"key_file\":\"/tls/c.key\",\"default\":true}",
                "+ routes[r].require_tls: true",
            ]
        );
    }

    #[test]
    fn header_transforms_are_named_by_field_unless_a_name_repeats() {
        let doc = |ops: &str| {
            let text = format!(
                "listeners: [{{name: l, address: '127.0.0.1:1'}}]\npools: [{{name: p, endpoints: [{{address: 'a:1'}}]}}]\n\
                 routes: [{{name: r, pool: p, request_headers: {ops}}}]\n"
            );
            parse(text.as_bytes(), Format::Yaml).unwrap()
        };
        let lines = |a: &str, b: &str| -> Vec<String> {
            diff(&doc(a), &doc(b)).iter().map(ToString::to_string).collect()
        };
        assert_eq!(
            lines(
                "{set: [{name: X-A, value: '1'}, {name: X-B, value: '2'}]}",
                "{set: [{name: X-B, value: '3'}, {name: X-A, value: '1'}]}"
            ),
            ["~ routes[r].request_headers.set[X-B].value: 2 → 3"]
        );
        // Two fields of one name: the list is shown whole, never paired up wrongly.
        assert_eq!(
            lines(
                "{add: [{name: X-T, value: a}, {name: X-T, value: b}]}",
                "{add: [{name: X-T, value: a}, {name: X-T, value: c}]}"
            ),
            [
                "~ routes[r].request_headers.add: [{\"name\":\"X-T\",\"value\":\"a\"},{\"name\":\"X-T\",\"value\":\"b\"}] → [{\"name\":\"X-T\",\"value\":\"a\"},{\"name\":\"X-T\",\"value\":\"c\"}]"
            ]
        );
    }

    #[test]
    fn equal_configs_have_no_changes() {
        let c = config("  - {name: r, pool: p}\n", "{address: 'a:1'}");
        assert!(diff(&c, &c.clone()).is_empty());
    }
}
