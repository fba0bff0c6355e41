//! Header transforms: fields set, added and removed on requests and responses, per route and
//! per listener, with values that may name a few per-request variables.

use schemars::JsonSchema;
use serde::Serialize;

/// Changes to one direction's header fields, applied in this order: `remove`, `set`, `add`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Fields replaced (every field of the name) with this value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderEntry>,
    /// Fields added beside any of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderEntry>,
    /// Names of fields removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A field and its value: text, with `%client_ip%`, `%request_id%`, `%route%`, `%path_prefix%`,
/// `%tls_subject%` or `%tls_uri_san%` replaced per request (`%%` for a percent sign). A value that
/// comes out empty (no verified client certificate) is not sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderEntry {
    pub name: String,
    pub value: String,
}

/// How a route changes the request's target before it goes upstream. At most one of
/// `path_prefix` and `path_regex`; the query is kept either way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the part of the path the route's `match.path_prefix` matched: with `/v1` matched,
    /// `path_prefix: /` sends `/v1/users` as `/users`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Replaces every match of `pattern` in the path with `substitution` (`$1`, `${name}` name
    /// groups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<RegexRewrite>,
    /// The `Host` sent upstream (`name` or `name:port`); `X-Forwarded-Host` keeps the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A regex substitution on the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    pub pattern: String,
    pub substitution: String,
}

/// A route that answers with a redirect instead of going to a pool. What is not given is kept
/// from the request: with only `scheme: https`, `http://a.test:8080/x?y` becomes
/// `https://a.test/x?y` (a new scheme or host drops the port unless `port` is given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The whole path, replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Replaces what the route's `match.path_prefix` matched, as `rewrite.path_prefix` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// 301, 302, 303, 307 or 308. Default 301.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `true`: the query string is dropped. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_query: Option<bool>,
}

/// A route that answers with this response itself: a health page, a maintenance switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// 200 to 599.
    pub status: u16,
    /// Up to 64 KiB of text. Absent: an empty body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Default `text/plain; charset=utf-8` when there is a body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

/// The largest `direct_response.body`.
pub const MAX_DIRECT_BODY: usize = 64 * 1024;

/// What a value may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderVariable {
    /// The client's address (as trusted proxies name it).
    ClientIp,
    RequestId,
    /// The route's name.
    Route,
    /// The route's `match.path_prefix`.
    PathPrefix,
    /// The verified client certificate's subject (RFC 4514).
    TlsSubject,
    /// Its first URI SAN (a SPIFFE id, say).
    TlsUriSan,
}

/// One piece of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderPart {
    Text(String),
    Var(HeaderVariable),
}

/// Fields no transform may touch: the connection's and the framing's, which the proxy writes
/// itself, and `Host`, which routing read (a host rewrite is `rewrite.host`).
pub const RESERVED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
    ":authority",
];

const VARIABLES: [(&str, HeaderVariable); 6] = [
    ("client_ip", HeaderVariable::ClientIp),
    ("request_id", HeaderVariable::RequestId),
    ("route", HeaderVariable::Route),
    ("path_prefix", HeaderVariable::PathPrefix),
    ("tls_subject", HeaderVariable::TlsSubject),
    ("tls_uri_san", HeaderVariable::TlsUriSan),
];

/// Splits a value into text and variables. Text must be printable ASCII or tabs (and any bytes
/// above 0x7f); a `%` starts a variable or is doubled.
pub fn parse_header_value(value: &str) -> Result<Vec<HeaderPart>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('%') {
        text.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('%') {
            text.push('%');
            rest = after;
            continue;
        }
        let Some(end) = rest.find('%') else {
            return Err(format!("unclosed variable in {value:?}: write %% for a percent sign"));
        };
        let name = &rest[..end];
        let Some((_, var)) = VARIABLES.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = VARIABLES.iter().map(|(n, _)| *n).collect();
            return Err(format!("unknown variable %{name}%; expected one of %{}%", known.join("%, %")));
        };
        if !text.is_empty() {
            parts.push(HeaderPart::Text(std::mem::take(&mut text)));
        }
        parts.push(HeaderPart::Var(*var));
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    if let Some(c) = text.chars().find(|c| c.is_ascii_control() && *c != '\t') {
        return Err(format!("{value:?} contains the control character {c:?}"));
    }
    if !text.is_empty() {
        parts.push(HeaderPart::Text(text));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_into_text_and_variables() {
        assert_eq!(
            parse_header_value("id=%request_id%; from %client_ip%%%").unwrap(),
            [
                HeaderPart::Text("id=".into()),
                HeaderPart::Var(HeaderVariable::RequestId),
                HeaderPart::Text("; from ".into()),
                HeaderPart::Var(HeaderVariable::ClientIp),
                HeaderPart::Text("%".into()),
            ]
        );
        assert_eq!(parse_header_value("plain").unwrap(), [HeaderPart::Text("plain".into())]);
        assert!(parse_header_value("").unwrap().is_empty());
        assert!(parse_header_value("%host%").unwrap_err().contains("unknown variable %host%"));
        assert!(parse_header_value("50%").unwrap_err().contains("%%"));
        assert!(parse_header_value("a\r\nX-Evil: 1").unwrap_err().contains("control character"));
    }
}
