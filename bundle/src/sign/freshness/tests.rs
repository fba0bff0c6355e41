use super::*;

const NOW: i64 = 1_800_000_000;

fn statement(version: u64, issued: i64, expires: i64) -> Freshness {
    Freshness { fleet: "edge".into(), version, sha256: "ab".repeat(32), issued, expires }
}

fn claim(sha: &str) -> Claim<'_> {
    Claim { fleet: "edge", version: 3, sha256: sha }
}

#[test]
fn a_current_statement_for_the_version_is_taken() {
    let key = SigningKey::generate().unwrap();
    let f = statement(3, NOW - 10, NOW + 3600);
    let (bytes, sigs) = f.sign(&[&key]);
    let sha = "ab".repeat(32);
    assert_eq!(key.trusted_keys().verify_freshness(&bytes, &sigs, claim(&sha), NOW).unwrap(), f);
}

#[test]
fn every_refusal_has_its_reason() {
    let key = SigningKey::generate().unwrap();
    let stranger = SigningKey::generate().unwrap();
    let trusted = key.trusted_keys();
    let sha = "ab".repeat(32);
    let check = |f: &Freshness, signer: &SigningKey| {
        let (bytes, sigs) = f.sign(&[signer]);
        trusted.verify_freshness(&bytes, &sigs, claim(&sha), NOW).unwrap_err().reason()
    };
    assert_eq!(check(&statement(3, NOW, NOW + 60), &stranger), "signature");
    assert_eq!(check(&statement(2, NOW, NOW + 60), &key), "other_version");
    let mut other_fleet = statement(3, NOW, NOW + 60);
    other_fleet.fleet = "core".into();
    assert_eq!(check(&other_fleet, &key), "other_version");
    let mut other_hash = statement(3, NOW, NOW + 60);
    other_hash.sha256 = "cd".repeat(32);
    assert_eq!(check(&other_hash, &key), "other_version");
    assert_eq!(check(&statement(3, NOW - 7200, NOW), &key), "lapsed");
    assert_eq!(check(&statement(3, NOW + CLOCK_SKEW_SECS + 1, NOW + 7200), &key), "future");
    // Issued a little in the future (the control plane's clock is ahead): still taken.
    let (bytes, sigs) = statement(3, NOW + CLOCK_SKEW_SECS, NOW + 1).sign(&[&key]);
    assert!(trusted.verify_freshness(&bytes, &sigs, claim(&sha), NOW).is_ok());
    // Unsigned, and a bundle signature passed off as a statement's.
    let bytes = statement(3, NOW, NOW + 60).encode();
    assert_eq!(trusted.verify_freshness(&bytes, &[], claim(&sha), NOW).unwrap_err().reason(), "signature");
    let as_bundle = key.sign(&bytes);
    assert_eq!(
        trusted.verify_freshness(&bytes, &[as_bundle], claim(&sha), NOW).unwrap_err().reason(),
        "signature"
    );
    let garbage = b"{}".to_vec();
    let sigs = vec![key.sign_in(CONTEXT, &garbage)];
    assert_eq!(
        trusted.verify_freshness(&garbage, &sigs, claim(&sha), NOW).unwrap_err().reason(),
        "malformed"
    );
}

#[test]
fn a_payload_from_an_earlier_build_needs_no_statement() {
    let old = br#"{"fleet":"edge","version":1,"parent_sha256":"","created_at":1,"expires_at":2,"config":{}}"#;
    let p = crate::sign::Payload::decode(old).unwrap();
    assert!(!p.requires_freshness);
    let mut new = p.clone();
    new.requires_freshness = true;
    assert!(String::from_utf8(new.encode()).unwrap().contains("\"requires_freshness\":true"));
    assert!(!String::from_utf8(p.encode()).unwrap().contains("requires_freshness"));
}
