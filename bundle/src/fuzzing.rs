//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz), here so that `cargo test` replays
//! their seed corpora (`fuzz/corpus/<target>/`) without libFuzzer. Each asserts what must hold
//! for every input, beyond not panicking. Not an API: inputs that break an assertion panic.

use std::sync::OnceLock;

use crate::sign::freshness::{self, Claim, Freshness, FreshnessError};
use crate::sign::trust::{self, RootKeys, TrustError, TrustSet};
use crate::sign::{
    DEFAULT_MAX_PAYLOAD, Expectations, Payload, Signature, SigningKey, TrustedKeys, VerifyError,
};
use crate::{Format, diff, parse, parse_value};

/// The fleet and the version a data plane serves in `bundle_verify`: seeds for fleet `fuzz` above
/// version 1 reach the config checks.
pub const FLEET: &str = "fuzz";
pub const ACTIVE_VERSION: u64 = 1;

/// `config_parse`: a document read as YAML and as JSON. One that is accepted survives the
/// canonical round trip the control plane signs (to a JSON value and back, and as JSON text
/// read as JSON and as YAML) unchanged, and differs from itself in nothing.
pub fn config_parse(data: &[u8]) {
    for format in [Format::Yaml, Format::Json] {
        let config = match parse(data, format) {
            Ok(c) => c,
            Err(e) => {
                assert!(!e.0.is_empty(), "refused without an error");
                let _ = e.to_string();
                continue;
            }
        };
        let value = serde_json::to_value(&config).unwrap_or_else(|e| panic!("cannot serialise: {e}"));
        match parse_value(&value) {
            Ok(again) => assert_eq!(again, config, "changed by the round trip through a JSON value"),
            Err(e) => panic!("its own JSON value is refused: {e}\n{value}"),
        }
        let text = value.to_string();
        for read_as in [Format::Json, Format::Yaml] {
            match parse(text.as_bytes(), read_as) {
                Ok(again) => {
                    assert_eq!(again, config, "changed by the round trip through JSON text ({read_as:?})")
                }
                Err(e) => panic!("its own JSON text read as {read_as:?} is refused: {e}\n{text}"),
            }
        }
        assert!(diff::diff(&config, &config).is_empty(), "differs from itself");
    }
}

/// `bundle_verify`: the bytes as a bundle payload, a freshness statement and a trust set, each
/// signed under its own context by a fixed key, then verified as a data plane does.
///
/// - A bundle that verifies is for `FLEET`, newer than `ACTIVE_VERSION`, and named by its SHA-256.
/// - A changed byte, a forged signature, or a signature made for another context is refused.
/// - A freshness statement verifies exactly when it vouches at the time it was issued.
/// - A trust set that verifies decodes to the same set and lists keys; key files written back
///   read the same.
pub fn bundle_verify(data: &[u8]) {
    let k = keys();
    let signed = [k.signer.sign(data)];
    let expect =
        Expectations { fleet: FLEET, active_version: Some(ACTIVE_VERSION), max_payload: DEFAULT_MAX_PAYLOAD };
    match k.trusted.verify(data, &signed, &expect) {
        Ok(v) => {
            assert_eq!(v.sha256, crate::sign::sha256_hex(data));
            assert_eq!(v.key_id, k.signer.key_id());
            assert_eq!(v.payload.fleet, FLEET);
            assert!(v.payload.version > ACTIVE_VERSION);
            assert_eq!(Payload::decode(data).ok().as_ref(), Some(&v.payload));
            assert_eq!(parse_value(&v.payload.config).ok().as_ref(), Some(&v.config));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    if !data.is_empty() {
        let mut tampered = data.to_vec();
        tampered[data.len() / 2] ^= 1;
        let got = k.trusted.verify(&tampered, &signed, &expect);
        assert!(matches!(got, Err(VerifyError::BadSignature(_))), "a changed byte gave {got:?}");
    }
    let forged = Signature {
        key_id: k.signer.key_id().to_owned(),
        signature: data.iter().copied().cycle().take(64).collect(),
    };
    assert!(k.trusted.verify(data, &[forged], &expect).is_err(), "a signature from the input verified");
    assert_eq!(k.trusted.verify(data, &[], &expect).err(), Some(VerifyError::Unsigned));

    freshness_statement(k, data, &signed);
    trust_set(k, data, &signed);
    key_files(data);
}

fn freshness_statement(k: &Keys, data: &[u8], bundle_signed: &[Signature]) {
    let signed = [k.signer.sign_in(freshness::CONTEXT, data)];
    let Ok(f) = Freshness::decode(data) else {
        let claim = Claim { fleet: FLEET, version: 2, sha256: "" };
        let got = k.trusted.verify_freshness(data, &signed, claim, 0);
        assert!(matches!(got, Err(FreshnessError::Malformed(_))), "not a statement, yet {got:?}");
        return;
    };
    let claim = Claim { fleet: &f.fleet, version: f.version, sha256: &f.sha256 };
    match k.trusted.verify_freshness(data, &signed, claim, f.issued) {
        Ok(g) => {
            assert_eq!(g, f);
            assert!(f.issued < f.expires, "vouches though lapsed: {f:?}");
        }
        Err(e) => assert!(
            f.issued >= f.expires && matches!(e, FreshnessError::Lapsed { .. }),
            "{f:?} refused at its own issue time: {e}"
        ),
    }
    let other = Claim { version: f.version.wrapping_add(1), ..claim };
    let got = k.trusted.verify_freshness(data, &signed, other, f.issued);
    assert!(matches!(got, Err(FreshnessError::OtherVersion { .. })), "another version's claim gave {got:?}");
    // A bundle signature is no statement signature.
    let got = k.trusted.verify_freshness(data, bundle_signed, claim, f.issued);
    assert!(matches!(got, Err(FreshnessError::Signature(_))), "a bundle signature gave {got:?}");
}

fn trust_set(k: &Keys, data: &[u8], bundle_signed: &[Signature]) {
    let signed = [k.root.sign_in(trust::CONTEXT, data)];
    match k.roots.verify(data, &signed, 0) {
        Ok(set) => {
            assert!(set.version > 0);
            assert_eq!(TrustSet::decode(data).ok().as_ref(), Some(&set));
            let trusted = set.trusted().unwrap_or_else(|e| panic!("a verified set lists bad keys: {e}"));
            assert!(!trusted.key_ids().is_empty());
            let got = k.roots.verify(data, &signed, set.version);
            assert!(matches!(got, Err(TrustError::NotNewer { .. })), "the same version again gave {got:?}");
        }
        // Version 0 is never above the one in force.
        Err(e) => assert!(
            matches!(e, TrustError::Malformed(_) | TrustError::NotNewer { version: 0, current: 0 }),
            "refused for {e}"
        ),
    }
    // Neither a bundle signature nor the bundle key's signature is a root's.
    let got = k.roots.verify(data, bundle_signed, 0);
    assert_eq!(got.err(), Some(TrustError::Threshold { got: 0, need: 1 }));
    let got = k.roots.verify(data, &[k.signer.sign_in(trust::CONTEXT, data)], 0);
    assert_eq!(got.err(), Some(TrustError::Threshold { got: 0, need: 1 }));
}

/// Key files that are read are written back the same.
fn key_files(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(keys) = TrustedKeys::from_file(text) {
        let again = TrustedKeys::from_file(&keys.to_file()).map(|k| k.key_ids().join(","));
        assert_eq!(again.ok(), Some(keys.key_ids().join(",")));
    }
    if let Ok(roots) = RootKeys::from_file(text) {
        let again = RootKeys::from_file(&roots.to_file()).map(|r| (r.threshold(), r.key_ids().join(",")));
        assert_eq!(again.ok(), Some((roots.threshold(), roots.key_ids().join(","))));
    }
    if let Ok(key) = SigningKey::from_file(text) {
        let again = SigningKey::from_file(&key.to_file()).map(|k| k.key_id().to_owned());
        assert_eq!(again.ok().as_deref(), Some(key.key_id()));
    }
}

/// Fixed keys, so a crash reproduces: the bundle signer (secret 07…07) and one root key (09…09).
struct Keys {
    signer: SigningKey,
    trusted: TrustedKeys,
    root: SigningKey,
    roots: RootKeys,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = |id: &str, byte: &str| {
            let file = format!(
                r#"{{"key_id": "{id}", "algorithm": "ed25519", "secret_key": "{}"}}"#,
                byte.repeat(32)
            );
            SigningKey::from_file(&file).unwrap_or_else(|e| panic!("fixed key {id}: {e}"))
        };
        let signer = key("fe812c12f3ab4ce6", "07");
        let root = key("dbc298251c51321b", "09");
        let roots = RootKeys::new(1, root.trusted_keys()).unwrap_or_else(|e| panic!("root keys: {e}"));
        Keys { trusted: signer.trusted_keys(), signer, root, roots }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parse_replays_its_corpus() {
        let seeds = sluice_test_support::corpus::seeds("config_parse");
        for (path, bytes) in &seeds {
            eprintln!("{}", path.display());
            config_parse(bytes);
        }
        // The seeds reach past the parser: some are valid in each format, some are not.
        let valid = |f: Format| seeds.iter().filter(|(_, b)| parse(b, f).is_ok()).count();
        assert!(valid(Format::Yaml) > 0 && valid(Format::Json) > 0);
        assert!(valid(Format::Yaml) < seeds.len());
    }

    #[test]
    fn bundle_verify_replays_its_corpus() {
        let seeds = sluice_test_support::corpus::seeds("bundle_verify");
        for (path, bytes) in &seeds {
            eprintln!("{}", path.display());
            bundle_verify(bytes);
        }
        // The seeds reach each check's success: a bundle, a statement and a trust set.
        let k = keys();
        let expect = Expectations {
            fleet: FLEET,
            active_version: Some(ACTIVE_VERSION),
            max_payload: DEFAULT_MAX_PAYLOAD,
        };
        assert!(seeds.iter().any(|(_, b)| k.trusted.verify(b, &[k.signer.sign(b)], &expect).is_ok()));
        assert!(seeds.iter().any(|(_, b)| Freshness::decode(b).is_ok_and(|f| f.issued < f.expires)));
        assert!(
            seeds.iter().any(|(_, b)| k.roots.verify(b, &[k.root.sign_in(trust::CONTEXT, b)], 0).is_ok())
        );
    }

    #[test]
    fn the_fixed_keys_load() {
        let k = keys();
        assert_eq!(k.signer.key_id(), "fe812c12f3ab4ce6");
        assert_eq!(k.roots.key_ids(), ["dbc298251c51321b"]);
    }
}
