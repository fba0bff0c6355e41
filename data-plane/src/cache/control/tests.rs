use std::time::{Duration, SystemTime};

use http::header::{AGE, CACHE_CONTROL, DATE, EXPIRES, LAST_MODIFIED};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::*;

fn headers(fields: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in fields {
        h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    h
}

fn cc(v: &str) -> ResponseDirectives {
    ResponseDirectives::of(&headers(&[("cache-control", v)]))
}

#[test]
fn directives_are_case_insensitive_and_quoted_strings_hide_commas() {
    let d = cc("No-Store, MAX-AGE=60");
    assert!(d.no_store);
    assert_eq!(d.max_age, Some(Seconds::Valid(60)));
    // `max-age` inside a quoted value is not a directive, before or after the real one.
    assert_eq!(cc(r#"extension="max-age=3600", max-age=1"#).max_age, Some(Seconds::Valid(1)));
    assert_eq!(cc(r#"max-age=1, extension="max-age=3600, x""#).max_age, Some(Seconds::Valid(1)));
    assert_eq!(cc(r#"max-age="1""#).max_age, Some(Seconds::Valid(1)));
    assert_eq!(cc("max-age=003600").max_age, Some(Seconds::Valid(3600)));
    assert_eq!(cc("max-age=99999999999").max_age, Some(Seconds::Valid(2_147_483_648)));
}

#[test]
fn unreadable_and_conflicting_values_are_invalid() {
    for v in [
        "max-age='3600'",
        "max-age=-1",
        "max-age=3600.0",
        "max-age=a1",
        "max-age =1",
        "max-age= 1",
        "max-age",
    ] {
        assert_eq!(cc(v).max_age, Some(Seconds::Invalid), "{v}");
    }
    assert_eq!(cc("max-age=1, max-age=1800").max_age, Some(Seconds::Invalid));
    let two = headers(&[("cache-control", "max-age=60"), ("cache-control", "max-age=60")]);
    assert_eq!(ResponseDirectives::of(&two).max_age, Some(Seconds::Valid(60)), "equal repeats are fine");
}

#[test]
fn field_names_of_no_cache_and_private() {
    let d = cc(r#"no-cache="Set-Cookie, X-A", private="x-b""#);
    assert!(!d.no_cache && !d.private);
    assert_eq!(d.no_cache_fields, ["set-cookie", "x-a"]);
    assert_eq!(d.private_fields, ["x-b"]);
    assert!(cc("no-cache").no_cache && cc("private").private);
}

#[test]
fn surrogate_control_for_us_overrides_cache_control() {
    let h = headers(&[("cache-control", "no-store"), ("surrogate-control", "max-age=10000;sluice")]);
    let d = ResponseDirectives::of(&h);
    assert!(!d.no_store);
    assert_eq!(d.max_age, Some(Seconds::Valid(10000)));
    // Addressed to another device: Cache-Control decides.
    let h = headers(&[("cache-control", "max-age=5"), ("surrogate-control", "max-age=3600;not-for-you")]);
    assert_eq!(ResponseDirectives::of(&h).max_age, Some(Seconds::Valid(5)));
    let h = headers(&[("cache-control", "max-age=10000"), ("surrogate-control", "no-store")]);
    assert!(ResponseDirectives::of(&h).no_store);
}

#[test]
fn age_must_be_one_line_of_digits() {
    assert_eq!(age(&headers(&[])), Ok(0));
    assert_eq!(age(&headers(&[("age", "30")])), Ok(30));
    for bad in ["old", "-1", "1.5", "3600, 0", "0, 0", "1;a=b", "1;2"] {
        assert_eq!(age(&headers(&[("age", bad)])), Err(()), "{bad}");
    }
    assert_eq!(age(&headers(&[("age", "0"), ("age", "0")])), Err(()));
    let _ = AGE;
}

#[test]
fn lifetime_prefers_s_maxage_then_max_age_then_expires() {
    let now = SystemTime::now();
    let date = httpdate::fmt_http_date(now);
    let later = httpdate::fmt_http_date(now + Duration::from_secs(100));
    let h = headers(&[("cache-control", "max-age=10, s-maxage=2"), ("date", &date), ("expires", &later)]);
    assert_eq!(lifetime(&ResponseDirectives::of(&h), &h, now, None), Some(Duration::from_secs(2)));
    let h = headers(&[("date", &date), ("expires", &later)]);
    assert_eq!(lifetime(&ResponseDirectives::of(&h), &h, now, None), Some(Duration::from_secs(100)));
    // An invalid Expires is in the past.
    let h = headers(&[("expires", "0")]);
    assert_eq!(lifetime(&ResponseDirectives::of(&h), &h, now, None), None);
    // Heuristic only when allowed, from Last-Modified.
    let old = httpdate::fmt_http_date(now - Duration::from_secs(1000));
    let h = headers(&[("date", &date), ("last-modified", &old)]);
    assert_eq!(lifetime(&ResponseDirectives::of(&h), &h, now, None), None);
    let got = lifetime(&ResponseDirectives::of(&h), &h, now, Some(10.0)).unwrap();
    assert!((99..=101).contains(&got.as_secs()), "{got:?}");
    let _ = (CACHE_CONTROL, DATE, EXPIRES, LAST_MODIFIED);
}

#[test]
fn request_directives() {
    let r = RequestDirectives::of(&headers(&[("cache-control", "max-stale, min-fresh=5, only-if-cached")]));
    assert_eq!(r.max_stale, Some(None));
    assert_eq!(r.min_fresh, Some(Seconds::Valid(5)));
    assert!(r.only_if_cached && !r.no_cache);
    let r = RequestDirectives::of(&headers(&[("cache-control", "max-stale=10, no-cache")]));
    assert_eq!(r.max_stale, Some(Some(Seconds::Valid(10))));
    assert!(r.no_cache);
}

mod any_input {
    use proptest::prelude::*;

    use super::*;

    fn field_value() -> impl Strategy<Value = HeaderValue> {
        // Visible ASCII, spaces and tabs, and the bytes directives are made of, in any order.
        proptest::collection::vec(
            prop_oneof![
                Just(b'='),
                Just(b','),
                Just(b'"'),
                Just(b'\\'),
                Just(b';'),
                Just(b' '),
                b'0'..=b'9',
                b'a'..=b'z',
                Just(b'-'),
                0x21u8..0x7f,
            ],
            0..64,
        )
        .prop_map(|b| HeaderValue::from_bytes(&b).unwrap())
    }

    proptest! {
        /// Whatever the fields say, reading them never panics, and a lifetime is never negative
        /// or beyond the 2^31 s ceiling (or a day, for the heuristic).
        #[test]
        fn caching_fields_of_any_shape_are_read_without_panicking(
            cc in proptest::collection::vec(field_value(), 0..4),
            sc in proptest::collection::vec(field_value(), 0..2),
            age_v in proptest::collection::vec(field_value(), 0..3),
            expires in proptest::option::of(field_value()),
        ) {
            let mut h = HeaderMap::new();
            for v in cc { h.append(CACHE_CONTROL, v); }
            for v in sc { h.append(SURROGATE_CONTROL, v); }
            for v in age_v { h.append(AGE, v); }
            if let Some(e) = expires { h.insert(EXPIRES, e); }
            let d = ResponseDirectives::of(&h);
            let _ = RequestDirectives::of(&h);
            let _ = age(&h);
            let now = SystemTime::now();
            if let Some(l) = lifetime(&d, &h, now, Some(10.0)) {
                prop_assert!(l <= Duration::from_secs(2_147_483_648).max(Duration::from_secs(86_400 * 365 * 200)));
            }
            let _ = initial_age(&h, now, now);
        }
    }
}
