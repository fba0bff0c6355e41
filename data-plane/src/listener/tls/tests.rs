#![allow(clippy::unwrap_used)]

use std::path::Path;

use sluice_bundle::{ClientCertificateRule, ServerCertificate, StringMatch};
use sluice_tls::CertInfo;
use sluice_tls::pki::{Authority, Issued, Leaf};

use super::*;

fn leaf(ca: &Authority, cn: &str, dns: &[&str]) -> Issued {
    ca.issue(&Leaf {
        common_name: cn.into(),
        dns: dns.iter().map(|d| (*d).to_owned()).collect(),
        server: true,
        client: true,
        valid_days: 30,
        ..Leaf::default()
    })
    .unwrap()
}

/// Writes `issued` as `<name>.crt` and `<name>.key` in `dir`; the certificate entry naming them.
fn entry(dir: &Path, name: &str, issued: &Issued, server_names: &[&str]) -> ServerCertificate {
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    ServerCertificate {
        cert_file: cert.to_string_lossy().into_owned(),
        key_file: key.to_string_lossy().into_owned(),
        server_names: server_names.iter().map(|n| (*n).to_owned()).collect(),
        default: None,
        client_auth: None,
    }
}

fn listener_tls(certificates: Vec<ServerCertificate>) -> ListenerTls {
    ListenerTls { certificates, client_auth: None, alpn: None }
}

#[tokio::test]
async fn sni_picks_exact_names_then_certificate_names_then_wildcards_then_the_default() {
    let dir = sluice_test_support::temp_dir();
    let ca = Authority::new("test CA").unwrap();
    let mut spec = listener_tls(vec![
        // Names from configuration: a wildcard, and an exact name a later entry's wildcard covers.
        entry(&dir, "wild", &leaf(&ca, "wild", &["*.example.com"]), &["*.example.com"]),
        // Names from the certificate itself.
        entry(&dir, "api", &leaf(&ca, "api", &["api.example.com", "api.example.org"]), &[]),
        entry(&dir, "fallback", &leaf(&ca, "fallback", &["fallback.test"]), &["fallback.test"]),
    ]);
    spec.certificates[2].default = Some(true);
    let mut errors = Vec::new();
    let tls = EdgeTls::load(0, &spec, &Resumptions::default(), &mut errors).unwrap();
    assert!(errors.is_empty(), "{errors:?}");

    assert_eq!(tls.choose(Some("api.example.com")), 1, "an exact name beats an earlier wildcard");
    assert_eq!(tls.choose(Some("API.Example.ORG")), 1, "names compare without case");
    assert_eq!(tls.choose(Some("www.example.com")), 0);
    assert_eq!(tls.choose(Some("a.b.example.com")), 2, "a wildcard covers one label only");
    assert_eq!(tls.choose(Some("unknown.test")), 2);
    assert_eq!(tls.choose(None), 2, "no SNI: the default");
    assert!(tls.same_client_auth(0, 1), "none asks for client certificates");
}

#[tokio::test]
async fn unusable_files_are_reported_with_the_field_that_names_them() {
    let dir = sluice_test_support::temp_dir();
    let ca = Authority::new("test CA").unwrap();
    let good = entry(&dir, "good", &leaf(&ca, "good", &["good.test"]), &[]);
    let other = leaf(&ca, "other", &["other.test"]);
    let mut mismatched = entry(&dir, "mismatched", &leaf(&ca, "m", &["m.test"]), &[]);
    std::fs::write(&mismatched.key_file, &other.key_pem).unwrap();
    let mut missing = good.clone();
    missing.key_file = dir.join("nope.key").to_string_lossy().into_owned();
    mismatched.server_names = vec!["m.test".into()];
    let mut spec = listener_tls(vec![good, missing, mismatched]);
    spec.client_auth = Some(sluice_bundle::ClientAuth {
        ca_file: dir.join("no-ca.pem").to_string_lossy().into_owned(),
        mode: None,
        crl_file: None,
    });

    let mut errors = Vec::new();
    assert!(EdgeTls::load(3, &spec, &Resumptions::default(), &mut errors).is_none());
    let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
    // The missing CA fails every certificate; it is reported once, at the listener's field.
    assert_eq!(
        paths,
        ["listeners[3].tls.client_auth.ca_file", "listeners[3].tls.certificates[1].key_file"],
        "{errors:?}"
    );

    spec.client_auth = None;
    let mut errors = Vec::new();
    assert!(EdgeTls::load(3, &spec, &Resumptions::default(), &mut errors).is_none());
    let paths: Vec<_> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["listeners[3].tls.certificates[1].key_file", "listeners[3].tls.certificates[2].key_file"],
        "{errors:?}"
    );
    assert!(errors[0].message.contains("nope.key"), "{}", errors[0].message);
    assert!(errors[1].message.contains("does not match"), "{}", errors[1].message);
}

fn peer(subject: &str, uris: &[&str], dns: &[&str]) -> PeerCertificate {
    PeerCertificate {
        info: CertInfo {
            subject: subject.into(),
            uris: uris.iter().map(|u| (*u).to_owned()).collect(),
            dns: dns.iter().map(|d| (*d).to_owned()).collect(),
            ..CertInfo::default()
        },
        sha256: "ab12".into(),
    }
}

#[test]
fn xfcc_is_written_the_way_envoy_writes_it() {
    let p = peer("CN=ops,O=Example\\, Inc.", &["spiffe://example.org/ops"], &["ops.example.org", "x.test"]);
    assert_eq!(
        xfcc(&p, &["spiffe://example.org/proxy".into()]),
        "By=spiffe://example.org/proxy;Hash=ab12;Subject=\"CN=ops,O=Example\\\\, Inc.\";\
         URI=spiffe://example.org/ops;DNS=ops.example.org;DNS=x.test"
    );
    // A quote in the subject is escaped inside the quotes.
    assert_eq!(xfcc(&peer("CN=a\"b", &[], &[]), &[]), "Hash=ab12;Subject=\"CN=a\\\"b\"");
    // Nothing from a certificate can break the header: what cannot be sent is left out.
    assert_eq!(xfcc(&peer("CN=a\r\nX-Evil: 1", &[], &[]), &[]), "Hash=ab12");
}

fn facts(peer: Option<PeerCertificate>) -> TlsFacts {
    TlsFacts {
        version: "TLSv1.3",
        sni: None,
        h2: false,
        edge: Arc::new(EdgeTls { entries: Box::new([]), default: 0 }),
        entry: 0,
        peer,
        xfcc: None,
    }
}

#[test]
fn a_route_rule_checks_subject_and_any_san() {
    let m = |kind: &str, v: &str| {
        let mut s = StringMatch { exact: None, prefix: None, suffix: None, regex: None };
        match kind {
            "exact" => s.exact = Some(v.into()),
            "prefix" => s.prefix = Some(v.into()),
            "suffix" => s.suffix = Some(v.into()),
            _ => s.regex = Some(v.into()),
        }
        s
    };
    let rule = ClientCertRule::compile(&ClientCertificateRule {
        subject: Some(m("regex", "CN=(ops|sre),O=Example")),
        san: vec![m("prefix", "spiffe://example.org/team/"), m("suffix", ".ops.example.org")],
    });
    let ok = facts(Some(peer("CN=sre,O=Example", &["spiffe://example.org/team/a"], &[])));
    assert_eq!(rule.check(Some(&ok)), Ok(()));
    let by_dns = facts(Some(peer("CN=ops,O=Example", &[], &["db.ops.example.org"])));
    assert_eq!(rule.check(Some(&by_dns)), Ok(()));
    // The regex covers the whole subject, not a part of it.
    let longer = facts(Some(peer("CN=ops,O=Example,C=DE", &["spiffe://example.org/team/a"], &[])));
    assert_eq!(rule.check(Some(&longer)), Err("its subject does not match"));
    let no_san = facts(Some(peer("CN=ops,O=Example", &["spiffe://other.org/team/a"], &[])));
    assert_eq!(rule.check(Some(&no_san)), Err("none of its subject alternative names matches"));
    assert_eq!(rule.check(Some(&facts(None))), Err("none was presented over TLS"));
    assert_eq!(rule.check(None), Err("none was presented over TLS"));
    // An empty rule asks only for a verified certificate.
    let any = ClientCertRule::compile(&ClientCertificateRule::default());
    assert_eq!(any.check(Some(&no_san)), Ok(()));
}
