use super::*;

const NOW: i64 = 1_800_000_000;

fn payload(fleet: &str, version: u64) -> Payload {
    Payload {
        fleet: fleet.into(),
        version,
        parent_sha256: String::new(),
        created_at: NOW - 10,
        expires_at: NOW + 3600,
        requires_freshness: false,
        config: serde_json::json!({
            "listeners": [{"name": "l", "address": "127.0.0.1:8080"}],
            "pools": [{"name": "p", "endpoints": [{"address": "127.0.0.1:9001"}]}],
            "routes": [{"name": "r", "pool": "p"}]
        }),
    }
}

fn expect(active: Option<u64>) -> Expectations<'static> {
    Expectations { fleet: "edge", active_version: active, max_payload: DEFAULT_MAX_PAYLOAD }
}

#[test]
fn a_signed_bundle_verifies_to_its_config() {
    let key = SigningKey::generate().unwrap();
    let bytes = payload("edge", 3).encode();
    let v = key.trusted_keys().verify(&bytes, &[key.sign(&bytes)], &expect(Some(2))).unwrap();
    assert_eq!(v.payload.version, 3);
    assert_eq!(v.config.routes[0].name, "r");
    assert_eq!(v.sha256, sha256_hex(&bytes));
    assert_eq!(v.key_id, key.key_id());
}

#[test]
fn every_rejection_has_its_reason() {
    let key = SigningKey::generate().unwrap();
    let other = SigningKey::generate().unwrap();
    let trusted = key.trusted_keys();
    let good = payload("edge", 3).encode();
    let sig = key.sign(&good);

    let mut tampered = good.clone();
    let at = tampered.iter().position(|b| *b == b'9').unwrap(); // inside the endpoint port
    tampered[at] = b'8';
    let forged = Signature { key_id: key.key_id().into(), signature: other.sign(&good).signature };
    let mut invalid = payload("edge", 3);
    invalid.config["routes"][0]["pool"] = "missing".into();

    let cases: Vec<(Vec<u8>, Vec<Signature>, Expectations, VerifyError)> = vec![
        (good.clone(), vec![], expect(None), VerifyError::Unsigned),
        (
            good.clone(),
            vec![other.sign(&good)],
            expect(None),
            VerifyError::UnknownKey(vec![other.key_id().into()]),
        ),
        (tampered, vec![sig.clone()], expect(None), VerifyError::BadSignature(key.key_id().into())),
        (good.clone(), vec![forged], expect(None), VerifyError::BadSignature(key.key_id().into())),
        (
            payload("other", 3).encode(),
            vec![key.sign(&payload("other", 3).encode())],
            expect(None),
            VerifyError::WrongFleet { expected: "edge".into(), got: "other".into() },
        ),
        (good.clone(), vec![sig.clone()], expect(Some(3)), VerifyError::NotNewer { version: 3, active: 3 }),
        (good.clone(), vec![sig.clone()], expect(Some(7)), VerifyError::NotNewer { version: 3, active: 7 }),
        (
            good.clone(),
            vec![sig.clone()],
            Expectations { max_payload: 10, ..expect(None) },
            VerifyError::TooLarge { size: good.len(), max: 10 },
        ),
    ];
    for (bytes, sigs, exp, want) in cases {
        assert_eq!(trusted.verify(&bytes, &sigs, &exp).unwrap_err(), want);
    }

    let not_json = b"not a payload".to_vec();
    assert!(matches!(
        trusted.verify(&not_json, &[key.sign(&not_json)], &expect(None)),
        Err(VerifyError::Malformed(_))
    ));
    let err = trusted.verify(&invalid.encode(), &[key.sign(&invalid.encode())], &expect(None)).unwrap_err();
    assert!(err.to_string().contains("routes[0].pool: unknown pool `missing`"), "{err}");
}

#[test]
fn a_signature_is_bound_to_the_context_prefix() {
    let key = SigningKey::generate().unwrap();
    let bytes = payload("edge", 1).encode();
    // A raw ed25519 signature over the payload alone (no context) must not verify.
    let raw = key.key.sign(&bytes).to_bytes().to_vec();
    let sig = Signature { key_id: key.key_id().into(), signature: raw };
    assert_eq!(
        key.trusted_keys().verify(&bytes, &[sig], &expect(None)).unwrap_err(),
        VerifyError::BadSignature(key.key_id().into())
    );
}

#[test]
fn several_trusted_keys_allow_rotation() {
    let (old, new) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
    let mut trusted = old.trusted_keys();
    trusted.extend(new.trusted_keys());
    let bytes = payload("edge", 1).encode();
    for key in [&old, &new] {
        assert!(trusted.verify(&bytes, &[key.sign(&bytes)], &expect(None)).is_ok());
    }
    // An unknown signature alongside a good one does not matter.
    let stranger = SigningKey::generate().unwrap();
    assert!(trusted.verify(&bytes, &[stranger.sign(&bytes), new.sign(&bytes)], &expect(None)).is_ok());
}

#[test]
fn key_files_round_trip_and_catch_mistakes() {
    let key = SigningKey::generate().unwrap();
    let again = SigningKey::from_file(&key.to_file()).unwrap();
    assert_eq!(again.key_id(), key.key_id());
    let trusted = TrustedKeys::from_file(&key.trusted_keys().to_file()).unwrap();
    assert_eq!(trusted.key_ids(), [key.key_id()]);

    let wrong_id = key.to_file().replace(key.key_id(), "0000000000000000");
    assert!(SigningKey::from_file(&wrong_id).unwrap_err().to_string().contains("does not match"));
    let other = SigningKey::generate().unwrap();
    let swapped = key.trusted_keys().to_file().replace(key.key_id(), other.key_id());
    assert!(TrustedKeys::from_file(&swapped).unwrap_err().to_string().contains("does not match"));
    assert!(TrustedKeys::from_file("{\"keys\": []}").unwrap_err().to_string().contains("no keys"));
}

#[test]
fn key_ids_are_stable() {
    let key = SigningKey::from_secret(&[7u8; 32]);
    assert_eq!(key.key_id(), key_id(&key.key.verifying_key()));
    assert_eq!(key.key_id().len(), 16);
    assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
}
