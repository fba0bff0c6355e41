use std::path::PathBuf;

use serde_json::json;
use sluice_bundle::{ClaimHeader, TokenSource};
use sluice_test_support::jwt::{Issuer, jwks, now};

use super::*;
use crate::auth::jwks::{KeySources, SourceSpec};

/// A JWKS file in a new directory, and a source reading it.
fn source(set: &str) -> (PathBuf, Arc<KeySource>) {
    let dir = sluice_test_support::temp_dir();
    let path = dir.join("jwks.json");
    std::fs::write(&path, set).unwrap();
    let sources = KeySources::default();
    let keys = sources.get(&SourceSpec::File(path)).unwrap();
    (dir, keys)
}

fn rule() -> Jwt {
    Jwt {
        jwks_file: Some("/unused".into()),
        jwks_url: None,
        jwks_refresh: None,
        jwks_ca_file: None,
        issuer: Some("https://idp.test".into()),
        audiences: vec!["api".into()],
        leeway: None,
        from: None,
        claims_to_headers: vec![
            ClaimHeader { claim: "sub".into(), header: "x-user".into() },
            ClaimHeader { claim: "realm.roles".into(), header: "x-roles".into() },
        ],
        strip_token: None,
    }
}

fn claims(exp_in: i64) -> serde_json::Value {
    json!({"iss": "https://idp.test", "aud": ["other", "api"], "sub": "alice", "exp": (now() as i64 + exp_in),
           "realm": {"roles": ["admin", "dev"]}})
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(AUTHORIZATION, HeaderValue::try_from(format!("Bearer {token}")).unwrap());
    h
}

#[test]
fn each_algorithm_verifies_and_claims_become_fields() {
    let issuers = [Issuer::rs256("r"), Issuer::es256("e"), Issuer::eddsa("d")];
    let (_dir, keys) = source(&jwks(&issuers.iter().collect::<Vec<_>>()));
    let policy = JwtPolicy::compile(&rule(), keys);
    for issuer in &issuers {
        let token = issuer.token(&claims(300));
        let (v, cached) =
            policy.check(&bearer(&token), now()).unwrap_or_else(|e| panic!("{}: {e}", issuer.alg()));
        assert!(!cached);
        let mut upstream = bearer(&token);
        upstream.insert("x-user", HeaderValue::from_static("mallory"));
        upstream.append("x-user", HeaderValue::from_static("root"));
        policy.forward(&mut upstream, &v);
        assert_eq!(upstream.get_all("x-user").iter().collect::<Vec<_>>(), ["alice"]);
        assert_eq!(upstream["x-roles"], r#"["admin","dev"]"#);
        assert!(upstream.contains_key(AUTHORIZATION), "kept unless strip_token");
        // The same token again is found in the cache.
        assert!(policy.check(&bearer(&token), now()).unwrap().1, "{}", issuer.alg());
    }
}

#[test]
fn refusals_say_why() {
    let rs = Issuer::rs256("r");
    let ed = Issuer::eddsa("d");
    let (_dir, keys) = source(&jwks(&[&rs]));
    let policy = JwtPolicy::compile(&rule(), keys);
    let check = |h: &HeaderMap| policy.check(h, now()).map(|_| ());
    assert_eq!(check(&HeaderMap::new()), Err(JwtError::Missing));
    let mut basic = HeaderMap::new();
    basic.insert(AUTHORIZATION, HeaderValue::from_static("Basic YTpi"));
    assert_eq!(check(&basic), Err(JwtError::Missing));
    assert!(matches!(check(&bearer("a.b")), Err(JwtError::Malformed(_))));
    assert!(matches!(check(&bearer("!!.!!.!!")), Err(JwtError::Malformed(_))));
    // `none` and HMAC are never accepted, whatever the key set holds.
    for alg in ["none", "HS256", "RS512"] {
        let t = rs.token_with_header(&json!({"alg": alg, "kid": "r"}), &claims(300));
        assert!(matches!(check(&bearer(&t)), Err(JwtError::Malformed(_))), "{alg}");
    }
    let crit = rs.token_with_header(&json!({"alg": "RS256", "kid": "r", "crit": ["exp"]}), &claims(300));
    assert!(matches!(check(&bearer(&crit)), Err(JwtError::Malformed(_))));
    // Signed by a key the set does not have, under its kid or another's.
    assert_eq!(check(&bearer(&ed.token(&claims(300)))), Err(JwtError::UnknownKey));
    let forged = ed.token_with_header(&json!({"alg": "RS256", "kid": "r"}), &claims(300));
    assert_eq!(check(&bearer(&forged)), Err(JwtError::BadSignature));
    // A payload changed after signing.
    let good = rs.token(&claims(300));
    let mut parts: Vec<&str> = good.split('.').collect();
    let evil = URL_SAFE_NO_PAD.encode(
        json!({"iss": "https://idp.test", "aud": "api", "sub": "root", "exp": now() + 300}).to_string(),
    );
    parts[1] = &evil;
    assert_eq!(check(&bearer(&parts.join("."))), Err(JwtError::BadSignature));
    // Time, within and beyond the default leeway of 60 s.
    assert!(check(&bearer(&rs.token(&claims(-30)))).is_ok());
    assert_eq!(check(&bearer(&rs.token(&claims(-61)))), Err(JwtError::Expired));
    let mut early = claims(300);
    early["nbf"] = json!(now() + 120);
    assert_eq!(check(&bearer(&rs.token(&early))), Err(JwtError::NotYetValid));
    let mut forever = claims(300);
    forever.as_object_mut().unwrap().remove("exp");
    assert!(matches!(check(&bearer(&rs.token(&forever))), Err(JwtError::Malformed(_))));
    let mut other = claims(300);
    other["iss"] = json!("https://evil.test");
    assert_eq!(check(&bearer(&rs.token(&other))), Err(JwtError::WrongIssuer));
    let mut other = claims(300);
    other["aud"] = json!("web");
    assert_eq!(check(&bearer(&rs.token(&other))), Err(JwtError::WrongAudience));
    // A large token is verified every time, never kept.
    let mut big = claims(300);
    big["pad"] = json!("x".repeat(5000));
    let big = rs.token(&big);
    assert!(!policy.check(&bearer(&big), now()).unwrap().1);
    assert!(!policy.check(&bearer(&big), now()).unwrap().1);
    // A cached token still expires.
    let soon = rs.token(&claims(0));
    assert!(policy.check(&bearer(&soon), now()).is_ok());
    assert_eq!(policy.check(&bearer(&soon), now() + 61).map(|_| ()), Err(JwtError::Expired));
}

#[test]
fn a_new_key_set_is_used_and_drops_verified_tokens() {
    let old = Issuer::es256("old");
    let new = Issuer::es256("new");
    let (dir, keys) = source(&jwks(&[&old]));
    let policy = JwtPolicy::compile(&rule(), keys.clone());
    let token = old.token(&claims(300));
    assert!(policy.check(&bearer(&token), now()).is_ok());
    assert!(policy.check(&bearer(&token), now()).unwrap().1);
    // The old key is retired: its tokens stop working at once, cached or not.
    std::fs::write(dir.join("jwks.json"), jwks(&[&new])).unwrap();
    assert!(keys.reload());
    assert_eq!(policy.check(&bearer(&token), now()).map(|_| ()), Err(JwtError::UnknownKey));
    assert!(policy.check(&bearer(&new.token(&claims(300))), now()).is_ok());
    // A broken file keeps the last good keys.
    std::fs::write(dir.join("jwks.json"), "{\"keys\": [").unwrap();
    assert!(!keys.reload());
    assert!(policy.check(&bearer(&new.token(&claims(300))), now()).is_ok());
    assert_eq!(keys.stats().failed, 1);
}

#[test]
fn tokens_from_a_header_or_a_cookie_and_stripped_on_request() {
    let ed = Issuer::eddsa("d");
    let (_dir, keys) = source(&jwks(&[&ed]));
    let token = ed.token(&claims(300));
    let mut r = rule();
    r.from = Some(TokenSource { header: None, cookie: Some("session".into()) });
    r.strip_token = Some(true);
    let policy = JwtPolicy::compile(&r, keys.clone());
    let mut h = HeaderMap::new();
    h.insert(COOKIE, HeaderValue::try_from(format!("theme=dark; session={token}")).unwrap());
    h.append(COOKIE, HeaderValue::from_static("lang=en"));
    let (v, _) = policy.check(&h, now()).unwrap();
    policy.forward(&mut h, &v);
    assert_eq!(h.get_all(COOKIE).iter().collect::<Vec<_>>(), ["theme=dark; lang=en"]);
    assert_eq!(policy.check(&bearer(&token), now()).map(|_| ()), Err(JwtError::Missing));

    r.from = Some(TokenSource { header: Some("x-token".into()), cookie: None });
    let policy = JwtPolicy::compile(&r, keys);
    for value in [token.clone(), format!("Bearer {token}")] {
        let mut h = HeaderMap::new();
        h.insert("x-token", HeaderValue::try_from(value).unwrap());
        let (v, _) = policy.check(&h, now()).unwrap();
        policy.forward(&mut h, &v);
        assert!(!h.contains_key("x-token"));
    }
}

#[test]
fn key_sets_keep_what_they_can_verify_with() {
    let rs = Issuer::rs256("r");
    let mut enc = rs.jwk();
    enc["use"] = json!("enc");
    let mut rs512 = rs.jwk();
    rs512["alg"] = json!("RS512");
    let set = json!({"keys": [enc, rs512, {"kty": "oct", "k": "c2VjcmV0"}, {"kty": "EC", "crv": "P-384", "x": "", "y": ""}, rs.jwk()]});
    assert_eq!(KeySet::parse(set.to_string().as_bytes()).unwrap().keys.len(), 1);
    let only_unusable = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]});
    assert!(KeySet::parse(only_unusable.to_string().as_bytes()).unwrap_err().contains("no usable key"));
    let short = json!({"keys": [{"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 128]), "e": "AQAB"}]});
    assert!(KeySet::parse(short.to_string().as_bytes()).unwrap_err().contains("1024 bits"));
    let bad_point = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}]});
    assert!(KeySet::parse(bad_point.to_string().as_bytes()).unwrap_err().starts_with("keys[0]"));
    assert!(KeySet::parse(b"[]").is_err());
}
