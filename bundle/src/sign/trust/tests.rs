use super::*;

fn roots(n: usize, threshold: usize) -> (Vec<SigningKey>, RootKeys) {
    let keys: Vec<SigningKey> = (0..n).map(|_| SigningKey::generate().unwrap()).collect();
    let mut trusted = keys[0].trusted_keys();
    for k in &keys[1..] {
        trusted.extend(k.trusted_keys());
    }
    (keys, RootKeys::new(threshold, trusted).unwrap())
}

#[test]
fn a_set_signed_by_the_threshold_is_taken_once() {
    let (keys, roots) = roots(3, 2);
    let signing = SigningKey::generate().unwrap();
    let set = TrustSet::new(4, 1, &signing.trusted_keys());
    let (bytes, sigs) = set.sign(&[&keys[0], &keys[2]]);
    let taken = roots.verify(&bytes, &sigs, 3).unwrap();
    assert_eq!(taken.trusted().unwrap().key_ids(), vec![signing.key_id()]);
    assert_eq!(roots.verify(&bytes, &sigs, 4).unwrap_err(), TrustError::NotNewer { version: 4, current: 4 });
}

#[test]
fn too_few_root_signatures_are_refused() {
    let (keys, roots) = roots(3, 2);
    let stranger = SigningKey::generate().unwrap();
    let set = TrustSet::new(1, 1, &stranger.trusted_keys());
    // One root key, the same root key twice, a stranger, a bundle-context signature: never two.
    let (bytes, one) = set.sign(&[&keys[1]]);
    assert_eq!(roots.verify(&bytes, &one, 0).unwrap_err(), TrustError::Threshold { got: 1, need: 2 });
    let twice = [one.clone(), one.clone()].concat();
    assert_eq!(roots.verify(&bytes, &twice, 0).unwrap_err(), TrustError::Threshold { got: 1, need: 2 });
    let (_, strange) = set.sign(&[&stranger]);
    let mixed = [one.clone(), strange].concat();
    assert_eq!(roots.verify(&bytes, &mixed, 0).unwrap_err(), TrustError::Threshold { got: 1, need: 2 });
    let as_bundle = vec![one[0].clone(), keys[0].sign(&bytes)];
    assert_eq!(roots.verify(&bytes, &as_bundle, 0).unwrap_err(), TrustError::Threshold { got: 1, need: 2 });
}

#[test]
fn root_files_round_trip_and_check_the_threshold() {
    let (_, roots) = roots(2, 2);
    let again = RootKeys::from_file(&roots.to_file()).unwrap();
    assert_eq!(again.threshold(), 2);
    assert_eq!(again.key_ids(), roots.key_ids());
    let too_high = roots.to_file().replace("\"threshold\": 2", "\"threshold\": 3");
    assert!(RootKeys::from_file(&too_high).unwrap_err().to_string().contains("between 1 and the 2"));
}
