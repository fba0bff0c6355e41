//! The policy: rules tried in order, the first match decides; no match denies (unless
//! `default_allow`). Knows nothing of tonic: it maps a `CheckRequest` to a `CheckResponse`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_proto::envoy::config::core::v3::{HeaderValue, HeaderValueOption, header_value_option};
use sluice_proto::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, attribute_context::HttpRequest,
    check_response::HttpResponse,
};
use sluice_proto::envoy::r#type::v3::HttpStatus;
use sluice_proto::google::rpc::Status;

/// Upstream header added to every allowed request, so tests can see the server was asked.
pub const CHECKED_HEADER: &str = "x-authz-checked";
/// Header of every denied response: the reason.
pub const REASON_HEADER: &str = "x-authz-reason";
/// Reason when no rule matched and the default denies.
pub const NO_MATCH: &str = "no rule matched";

/// gRPC codes in `CheckResponse.status` (google.rpc.Code).
const GRPC_OK: i32 = 0;
const GRPC_PERMISSION_DENIED: i32 = 7;

/// A policy file (JSON): `{"rules": [...], "default_allow": false}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Tried in order; the first that matches decides.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// The decision when no rule matches: deny (403, reason [`NO_MATCH`]) unless true.
    #[serde(default)]
    pub default_allow: bool,
}

/// One rule: matches on the path prefix and, optionally, one header's exact value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Prefix of the request target (path and query, as the proxy sent it); empty matches all.
    #[serde(default)]
    pub path_prefix: String,
    /// A request header that must be present with exactly this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderMatch>,
    /// Allow or deny what matches.
    pub allow: bool,
    /// Allow: headers to set on the upstream request (overwriting the client's). A value
    /// `%header:NAME%` copies the request header NAME (the header is skipped when NAME is absent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add_headers: BTreeMap<String, String>,
    /// Allow: request headers to remove before the request goes upstream.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_headers: Vec<String>,
    /// Allow: headers added to the response the client gets (`response_headers_to_add`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub response_headers: BTreeMap<String, String>,
    /// Deny: the HTTP status (403 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Deny: the reason in the body and the `x-authz-reason` header (else names the rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A header that must be present with exactly `value` (the name is matched case-insensitively).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

/// What the policy decided for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allow: bool,
    /// Index of the rule that decided; `None` for the default.
    pub rule: Option<usize>,
    /// Why: the deny reason, or which rule allowed.
    pub reason: String,
    /// The answer to send back.
    pub response: CheckResponse,
}

// === impl Policy ===

impl Policy {
    /// Parses a policy file.
    pub fn from_json(text: &str) -> Result<Policy, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Decides one request. A request without HTTP attributes matches as path "" with no headers.
    pub fn decide(&self, request: &CheckRequest) -> Decision {
        let empty = HttpRequest::default();
        let http = http_request(request).unwrap_or(&empty);
        let matched = self.rules.iter().enumerate().find(|(_, rule)| rule.matches(http));
        match matched {
            Some((index, rule)) if rule.allow => {
                let reason = format!("rule {index} allows {:?}", rule.path_prefix);
                Decision { allow: true, rule: Some(index), reason, response: rule.allowed(http) }
            }
            Some((index, rule)) => {
                let reason = match &rule.reason {
                    Some(reason) => reason.clone(),
                    None => format!("rule {index} denies {:?}", rule.path_prefix),
                };
                let response = denied(rule.status.unwrap_or(403), &reason);
                Decision { allow: false, rule: Some(index), reason, response }
            }
            None if self.default_allow => {
                let reason = "default allows".to_owned();
                Decision { allow: true, rule: None, reason, response: Rule::default().allowed(http) }
            }
            None => Decision {
                allow: false,
                rule: None,
                reason: NO_MATCH.to_owned(),
                response: denied(403, NO_MATCH),
            },
        }
    }
}

// === impl Rule ===

impl Rule {
    fn matches(&self, http: &HttpRequest) -> bool {
        http.path.starts_with(&self.path_prefix)
            && self
                .header
                .as_ref()
                .is_none_or(|want| request_header(http, &want.name) == Some(want.value.as_str()))
    }

    fn allowed(&self, http: &HttpRequest) -> CheckResponse {
        let mut headers = vec![header(CHECKED_HEADER, "1")];
        for (name, value) in &self.add_headers {
            let value = match value.strip_prefix("%header:").and_then(|rest| rest.strip_suffix('%')) {
                Some(source) => match request_header(http, source) {
                    Some(value) => value,
                    None => continue,
                },
                None => value.as_str(),
            };
            headers.push(header(name, value));
        }
        let ok = OkHttpResponse {
            headers,
            headers_to_remove: self.remove_headers.clone(),
            response_headers_to_add: self.response_headers.iter().map(|(n, v)| header(n, v)).collect(),
            ..OkHttpResponse::default()
        };
        CheckResponse {
            status: Some(Status { code: GRPC_OK, ..Status::default() }),
            http_response: Some(HttpResponse::OkResponse(ok)),
            ..CheckResponse::default()
        }
    }
}

fn denied(status: u16, reason: &str) -> CheckResponse {
    let body = serde_json::json!({ "denied": reason }).to_string();
    let denied = DeniedHttpResponse {
        status: Some(HttpStatus { code: i32::from(status) }),
        headers: vec![header(REASON_HEADER, reason), header("content-type", "application/json")],
        body,
    };
    CheckResponse {
        status: Some(Status { code: GRPC_PERMISSION_DENIED, message: reason.to_owned(), details: vec![] }),
        http_response: Some(HttpResponse::DeniedResponse(denied)),
        ..CheckResponse::default()
    }
}

/// A header that replaces any of the same name.
fn header(name: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: name.to_owned(), value: value.to_owned(), raw_value: vec![] }),
        append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

/// The request's HTTP attributes (`attributes.request.http`), when the proxy sent them.
pub fn http_request(request: &CheckRequest) -> Option<&HttpRequest> {
    request.attributes.as_ref()?.request.as_ref()?.http.as_ref()
}

/// A request header by name (case-insensitive), from `headers` or, when the proxy sends raw
/// headers instead, `header_map`.
pub fn request_header<'a>(http: &'a HttpRequest, name: &str) -> Option<&'a str> {
    if let Some((_, value)) = http.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)) {
        return Some(value);
    }
    let raw = http.header_map.as_ref()?.headers.iter().find(|h| h.key.eq_ignore_ascii_case(name))?;
    if raw.value.is_empty() { std::str::from_utf8(&raw.raw_value).ok() } else { Some(&raw.value) }
}
