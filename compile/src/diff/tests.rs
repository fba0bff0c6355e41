use http::HeaderValue;
use proptest::prelude::*;
use serde_json::json;

use super::*;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn rules(ignore: &[&str]) -> DiffRules {
    DiffRules::new(&strings(&["content-type"]), &strings(ignore), &[], &[], false).unwrap()
}

fn masking(mask: &[&str], patterns: &[&str], defaults: bool) -> DiffRules {
    DiffRules::new(&strings(&["content-type", "x-user"]), &[], &strings(mask), &strings(patterns), defaults)
        .unwrap()
}

fn side<'a>(status: u16, headers: &'a HeaderMap, body: &'a [u8]) -> Side<'a> {
    Side { status, headers, body, truncated: false }
}

/// Fields differing between two JSON bodies (status 200, no headers).
fn diff_json(rules: &DiffRules, a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let (a, b) = (a.to_string(), b.to_string());
    let h = HeaderMap::new();
    let fields = rules.compare(&side(200, &h, a.as_bytes()), &side(200, &h, b.as_bytes()));
    fields.into_iter().map(String::from).collect()
}

fn summarize(rules: &DiffRules, body: &serde_json::Value) -> String {
    let body = body.to_string();
    rules.summary(&side(200, &HeaderMap::new(), body.as_bytes()), 1 << 20)
}

// === compare ===

#[test]
fn changed_field_is_reported_and_unchanged_is_not() {
    let a = json!({"user": {"age": 30, "city": "Oslo"}, "ok": true});
    let b = json!({"user": {"age": 31, "city": "Oslo"}, "ok": true});
    assert_eq!(diff_json(&rules(&[]), &a, &b), ["/user/age"]);
    assert!(diff_json(&rules(&[]), &a, &a).is_empty());
}

#[test]
fn key_order_and_number_spelling_are_not_differences() {
    let h = HeaderMap::new();
    let a = br#"{"a": 1, "b": 2.0}"#;
    let b = br#"{"b":2,"a":1.0}"#;
    assert!(rules(&[]).compare(&side(200, &h, a), &side(200, &h, b)).is_empty());
}

#[test]
fn ignored_pointer_is_never_reported() {
    let a = json!({"timestamp": 1, "v": 1});
    let b = json!({"timestamp": 2, "v": 1});
    assert!(diff_json(&rules(&["/timestamp"]), &a, &b).is_empty());
    // Present on one side only is ignored too.
    assert!(diff_json(&rules(&["/timestamp"]), &json!({"v": 1}), &b).is_empty());
}

#[test]
fn wildcard_ignore_covers_every_element() {
    let a = json!({"items": [{"id": 1, "price": 5}, {"id": 2, "price": 6}]});
    let b = json!({"items": [{"id": 9, "price": 5}, {"id": 8, "price": 7}]});
    assert_eq!(diff_json(&rules(&["/items/*/id"]), &a, &b), ["/items/*/price"]);
}

#[test]
fn keys_below_an_ignored_pointer_are_ignored() {
    let a = json!({"meta": {"trace": {"id": "a", "span": 1}}, "v": 1});
    let b = json!({"meta": {"trace": {"id": "b", "extra": 2}}, "v": 2});
    assert_eq!(diff_json(&rules(&["/meta"]), &a, &b), ["/v"]);
}

#[test]
fn concrete_index_and_escaped_keys_in_ignore_pointers() {
    let a = json!({"list": [1, 2, 3], "a/b": 1, "c~d": 1});
    let b = json!({"list": [9, 2, 8], "a/b": 2, "c~d": 2});
    assert_eq!(diff_json(&rules(&["/list/0", "/a~1b"]), &a, &b), ["/c~0d", "/list/*"]);
}

#[test]
fn array_indices_collapse_to_a_wildcard() {
    let a = json!({"items": [{"price": 1}, {"price": 2}, {"price": 3}]});
    let b = json!({"items": [{"price": 1}, {"price": 5}, {"price": 6}]});
    assert_eq!(diff_json(&rules(&[]), &a, &b), ["/items/*/price"]);
}

#[test]
fn array_length_difference_is_reported_at_the_wildcard() {
    let a = json!({"arr": [1, 2]});
    let b = json!({"arr": [1, 2, 3, 4]});
    assert_eq!(diff_json(&rules(&[]), &a, &b), ["/arr/*"]);
    // Common elements are still compared.
    let c = json!({"arr": [{"x": 1}]});
    let d = json!({"arr": [{"x": 2}, {"x": 3}]});
    assert_eq!(diff_json(&rules(&[]), &c, &d), ["/arr/*", "/arr/*/x"]);
}

#[test]
fn type_change_is_reported_at_its_pointer_only() {
    let a = json!({"v": {"deep": 1}, "n": 1});
    let b = json!({"v": [1], "n": "1"});
    assert_eq!(diff_json(&rules(&[]), &a, &b), ["/n", "/v"]);
    assert_eq!(diff_json(&rules(&[]), &json!({}), &json!([])), ["body"]);
}

#[test]
fn key_missing_on_either_side_is_reported() {
    let a = json!({"a": 1, "b": {"c": 1}});
    let b = json!({"b": {"d": 1}, "e": null});
    assert_eq!(diff_json(&rules(&[]), &a, &b), ["/a", "/b/c", "/b/d", "/e"]);
}

#[test]
fn status_and_header_differences() {
    let mut a = HeaderMap::new();
    a.insert("content-type", HeaderValue::from_static("application/json"));
    a.insert("x-other", HeaderValue::from_static("1"));
    let mut b = HeaderMap::new();
    b.insert("content-type", HeaderValue::from_static("text/plain"));
    b.insert("x-other", HeaderValue::from_static("2"));
    let r = DiffRules::new(&strings(&["Content-Type", "ETag"]), &[], &[], &[], false).unwrap();
    let fields = r.compare(&side(200, &a, b""), &side(503, &b, b""));
    assert_eq!(fields, ["header:content-type".into(), "status".into()] as [Box<str>; 2]);

    // Absent on one side counts.
    b.insert("etag", HeaderValue::from_static("\"x\""));
    let fields = r.compare(&side(200, &a, b""), &side(200, &b, b""));
    assert_eq!(fields, ["header:content-type".into(), "header:etag".into()] as [Box<str>; 2]);
}

#[test]
fn non_json_bodies_differ_as_a_whole() {
    let h = HeaderMap::new();
    let r = rules(&[]);
    assert_eq!(
        r.compare(&side(200, &h, b"hello"), &side(200, &h, b"world")),
        ["body".into()] as [Box<str>; 1]
    );
    assert!(r.compare(&side(200, &h, b"hello"), &side(200, &h, b"hello")).is_empty());
    // One side JSON, the other not.
    assert_eq!(r.compare(&side(200, &h, b"{}"), &side(200, &h, b"")), ["body".into()] as [Box<str>; 1]);
}

#[test]
fn truncated_body_is_not_compared() {
    let h = HeaderMap::new();
    let r = rules(&[]);
    let primary = side(200, &h, b"{\"a\":1}");
    let candidate = Side { truncated: true, ..side(200, &h, b"{\"a\":") };
    assert!(r.compare(&primary, &candidate).is_empty());
    assert!(r.compare(&candidate, &primary).is_empty());
    let candidate = Side { status: 500, ..candidate };
    assert_eq!(r.compare(&primary, &candidate), ["status".into()] as [Box<str>; 1]);
}

#[test]
fn masked_fields_are_compared_but_named_only_by_pointer() {
    let r = masking(&["/user/phone"], &[], true);
    let a = json!({"user": {"email": "a@b.com", "phone": "1"}});
    let b = json!({"user": {"email": "c@d.com", "phone": "2"}});
    assert_eq!(diff_json(&r, &a, &b), ["/user/email", "/user/phone"]);
}

#[test]
fn pii_in_keys_is_masked_in_field_names() {
    let r = masking(&[], &[], true);
    let a = json!({"by_user": {"jane@example.com": 1}});
    let b = json!({"by_user": {"jane@example.com": 2}});
    assert_eq!(diff_json(&r, &a, &b), ["/by_user/***"]);
}

// === summary ===

#[test]
fn summary_has_status_headers_and_body() {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    let s = rules(&["/ts"]).summary(&side(201, &h, br#"{"ts":1,"v":[1,"x"]}"#), 1000);
    assert_eq!(s, r#"{"status":201,"headers":{"content-type":"application/json"},"body":{"v":[1,"x"]}}"#);
}

#[test]
fn summary_of_non_json_truncated_and_empty_bodies() {
    let h = HeaderMap::new();
    let r = rules(&[]);
    assert!(r.summary(&side(200, &h, b"<html>"), 1000).ends_with(r#""body":"<6 bytes, not JSON>"}"#));
    let truncated = Side { truncated: true, ..side(200, &h, b"{\"a\"") };
    assert!(r.summary(&truncated, 1000).ends_with(r#""body":"<truncated>"}"#));
    assert!(r.summary(&side(204, &h, b""), 1000).ends_with(r#""body":"<empty>"}"#));
}

#[test]
fn default_keys_are_masked_at_any_depth() {
    let r = masking(&[], &[], true);
    let body = json!({
        "users": [
            {"Email": "jane.doe+x@example.org", "first-name": "Jane", "id": 7},
            {"contact": {"PHONE_NUMBER": 5551234, "card": {"pan": "x", "exp": "01/30"}}}
        ],
        "kept": "visible"
    });
    let s = summarize(&r, &body);
    for secret in ["jane.doe", "Jane", "5551234", "01/30"] {
        assert!(!s.contains(secret), "{secret} leaked in {s}");
    }
    assert!(s.contains(r#""Email":"***""#), "{s}");
    assert!(s.contains(r#""card":"***""#), "{s}");
    assert!(s.contains(r#""kept":"visible""#) && s.contains(r#""id":7"#), "{s}");
}

#[test]
fn default_keys_are_not_masked_without_defaults() {
    let r = masking(&[], &[], false);
    assert!(summarize(&r, &json!({"name": "Widget"})).contains("Widget"));
}

#[test]
fn masked_pointer_and_bare_key_replace_the_whole_value() {
    let r = masking(&["/orders/*/address", "Token"], &[], false);
    let body = json!({
        "orders": [{"address": {"street": "Main St 1"}, "total": 3}],
        "auth": {"token": "s3cr3t"},
        "address": "not masked here"
    });
    let s = summarize(&r, &body);
    assert!(!s.contains("Main St") && !s.contains("s3cr3t"), "{s}");
    assert!(s.contains(r#""address":"***","total":3"#), "{s}");
    assert!(s.contains("not masked here"), "{s}");
}

#[test]
fn mask_pattern_inside_free_text() {
    let r = masking(&[], &[], true);
    let s = summarize(&r, &json!({"note": "contact me at a@b.com please"}));
    assert!(!s.contains("a@b.com"), "{s}");
    assert!(s.contains("contact me at *** please"), "{s}");
}

#[test]
fn card_numbers_are_masked_as_strings_and_numbers() {
    let r = masking(&[], &[], true);
    let body = json!({"memo": "paid with 4111-1111-1111-1111 ok", "ref": 4_111_111_111_111_111_u64, "n": 42});
    let s = summarize(&r, &body);
    assert!(!s.contains("1111"), "{s}");
    assert!(s.contains("paid with *** ok") && s.contains(r#""ref":"***""#), "{s}");
    assert!(s.contains(r#""n":42"#), "{s}");
}

#[test]
fn user_patterns_mask_header_values() {
    let r = masking(&[], &[r"tok_[a-z0-9]+"], false);
    let mut h = HeaderMap::new();
    h.append("x-user", HeaderValue::from_static("id=1; tok_abc123"));
    h.append("x-user", HeaderValue::from_static("tok_zz"));
    let s = r.summary(&side(200, &h, b"{}"), 1000);
    assert!(!s.contains("tok_"), "{s}");
    assert!(s.contains(r#""x-user":"id=1; ***, ***""#), "{s}");
    assert!(s.contains(r#""content-type":null"#), "{s}");
}

#[test]
fn overlapping_patterns_leave_nothing_behind() {
    let r = masking(&[], &["abc", "bcdef"], false);
    assert!(summarize(&r, &json!({"s": "xabcdefy"})).contains(r#""s":"x***y""#));
}

#[test]
fn summary_is_cut_on_a_char_boundary() {
    let r = rules(&[]);
    let body = json!({"s": "ééééééééééééééééééééééééééééééé"});
    let full = summarize(&r, &body);
    for max in 0..full.len() + 2 {
        let body = body.to_string();
        let s = r.summary(&side(200, &HeaderMap::new(), body.as_bytes()), max);
        assert!(s.len() <= max, "{max}: {s}");
        if max >= full.len() {
            assert_eq!(s, full);
        } else if max >= 3 {
            assert!(s.ends_with('…') && full.starts_with(s.trim_end_matches('…')), "{max}: {s}");
        }
    }
}

#[test]
fn redact_masks_request_paths() {
    let r = masking(&[], &[], true);
    assert_eq!(r.redact("/users?email=a@b.com&x=1"), "/users?email=***&x=1");
}

/// A place in a body where a secret may end up.
#[derive(Debug, Clone)]
enum Spot {
    Value,
    FreeText,
    Key,
    InArray,
    Header,
}

fn email() -> impl Strategy<Value = String> {
    ("[a-zA-Z0-9._%+-]{1,16}", "[a-z0-9-]{1,12}", prop::collection::vec("[a-z]{2,6}", 1..3))
        .prop_map(|(local, host, tlds)| format!("{local}@{host}.{}", tlds.join(".")))
}

fn card() -> impl Strategy<Value = String> {
    prop::collection::vec((0u8..10, prop::sample::select(vec!["", "", " ", "-"])), 13..=19).prop_map(
        |digits| {
            let mut s = String::new();
            for (i, (d, sep)) in digits.iter().enumerate() {
                if i > 0 {
                    s.push_str(sep);
                }
                s.push(char::from(b'0' + d));
            }
            s
        },
    )
}

fn spot() -> impl Strategy<Value = Spot> {
    prop_oneof![
        Just(Spot::Value),
        Just(Spot::FreeText),
        Just(Spot::Key),
        Just(Spot::InArray),
        Just(Spot::Header)
    ]
}

proptest! {
    #[test]
    fn masked_values_never_appear_in_summaries(
        secret in prop_oneof![email(), card()],
        spot in spot(),
        key in "[a-z]{1,8}",
        depth in 0usize..4,
    ) {
        let r = masking(&[], &[], true);
        let mut headers = HeaderMap::new();
        let mut leaf = match spot {
            Spot::Value | Spot::Header => json!({ key.clone(): secret }),
            Spot::FreeText => json!({ key.clone(): format!("see {secret}, thanks") }),
            Spot::Key => json!({ secret.clone(): {key.clone(): 1} }),
            Spot::InArray => json!({ key.clone(): ["a", secret, 3] }),
        };
        if matches!(spot, Spot::Header) {
            headers.insert("x-user", HeaderValue::from_str(&format!("u {secret}")).unwrap());
        }
        for level in 0..depth {
            leaf = json!({ format!("l{level}"): [leaf] });
        }
        let body = leaf.to_string();
        let s = r.summary(&side(200, &headers, body.as_bytes()), 1 << 20);
        prop_assert!(!s.contains(&secret), "{} leaked in {}", secret, s);
        // Field names are reported too.
        let fields = r.compare(&side(200, &headers, body.as_bytes()), &side(200, &HeaderMap::new(), b"{}"));
        prop_assert!(fields.iter().all(|f| !f.contains(&secret)), "{} leaked in {:?}", secret, fields);
    }

    #[test]
    fn values_under_pii_keys_never_appear(
        secret in "[A-Za-z0-9 ]{0,12}",
        key in prop::sample::select(vec!["email", "E-Mail", "phone_number", "PhoneNumber", "NAME", "first_name",
            "cardNumber", "card-number", "CVV", "ssn", "IBAN", "password", "given-name", "Family_Name"]),
        nested in any::<bool>(),
    ) {
        let r = masking(&[], &[], true);
        let secret = format!("MARK{secret}");
        let body = if nested { json!({"a": [{"b": {key: {"x": secret}}}]}) } else { json!({key: secret}) };
        let s = summarize(&r, &body);
        prop_assert!(!s.contains("MARK"), "{}", s);
    }
}

// === new ===

#[test]
fn new_reports_every_error_with_its_path() {
    let errors = DiffRules::new(
        &strings(&["ok", "bad header"]),
        &strings(&["/fine", "a/b", "/x~2"]),
        &strings(&["email", "", "user/email", "/ok", "nope~"]),
        &strings(&["[a-z]+", "(unclosed"]),
        true,
    )
    .unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["headers[1]", "ignore[1]", "ignore[2]", "mask[1]", "mask[2]", "mask_patterns[1]"]);
    assert_eq!(errors[1].to_string(), "ignore[1]: `a/b` is not a JSON pointer (must start with `/`)");
    assert!(errors[5].message.starts_with("invalid regex"), "{}", errors[5]);
}

// === DiffStats ===

fn names(items: &[&str]) -> Vec<Box<str>> {
    items.iter().map(|s| Box::from(*s)).collect()
}

fn sample(id: &str) -> Sample {
    Sample {
        at: SystemTime::UNIX_EPOCH,
        request_id: id.into(),
        method: "GET".into(),
        path: "/".into(),
        fields: names(&["status"]),
        primary: String::new(),
        candidate: String::new(),
    }
}

#[test]
fn stats_count_pairs_and_fields() {
    let stats = DiffStats::new(10, 4);
    stats.record(&names(&["/a", "status"]));
    stats.record(&names(&["/a"]));
    stats.record(&[]);
    stats.record_noise(&names(&["/b"]));
    let v = stats.view(usize::MAX);
    assert_eq!((v.compared, v.differed, v.baseline_compared), (3, 2, 1));
    let fields: Vec<(&str, u64, u64)> = v.fields.iter().map(|f| (&*f.field, f.differed, f.noise)).collect();
    assert_eq!(fields, [("/a", 2, 0), ("status", 1, 0), ("/b", 0, 1)]);
}

#[test]
fn stats_count_names_beyond_the_bound_as_other() {
    let stats = DiffStats::new(2, 1);
    stats.record(&names(&["/a", "/b"]));
    stats.record(&names(&["/a", "/c", "/d"]));
    stats.record(&names(&["/e"]));
    stats.record_noise(&names(&["/f", "/b"]));
    let v = stats.view(usize::MAX);
    let fields: Vec<(&str, u64, u64)> = v.fields.iter().map(|f| (&*f.field, f.differed, f.noise)).collect();
    // `other` counts pairs, not names.
    assert_eq!(fields, [("/a", 2, 0), ("other", 2, 1), ("/b", 1, 1)]);
}

#[test]
fn samples_are_a_newest_first_ring() {
    let stats = DiffStats::new(10, 3);
    for id in ["1", "2", "3", "4", "5"] {
        stats.sample(sample(id));
    }
    let ids: Vec<String> = stats.view(usize::MAX).samples.into_iter().map(|s| s.request_id).collect();
    assert_eq!(ids, ["5", "4", "3"]);

    let none = DiffStats::new(10, 0);
    none.sample(sample("1"));
    assert!(none.view(usize::MAX).samples.is_empty());
}
