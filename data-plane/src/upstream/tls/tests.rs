#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use sluice_bundle::{Format, parse};
use sluice_tls::pki::{Authority, Leaf};

use super::*;

/// The files of a CA and a client certificate it issued, in a fresh directory.
fn files() -> PathBuf {
    let dir = sluice_test_support::temp_dir();
    let ca = Authority::new("ca").unwrap();
    let me = ca
        .issue(&Leaf { common_name: "proxy".into(), client: true, valid_days: 30, ..Leaf::default() })
        .unwrap();
    let other =
        ca.issue(&Leaf { common_name: "x".into(), client: true, valid_days: 30, ..Leaf::default() }).unwrap();
    for (name, text) in [
        ("ca.pem", &ca.cert_pem),
        ("me.pem", &me.cert_pem),
        ("me.key", &me.key_pem),
        ("other.key", &other.key_pem),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

/// Pool 1 of a config whose second pool has `tls` (YAML flow mapping) and `protocol`.
fn pool(tls: &str, protocol: &str, address: &str) -> sluice_bundle::Pool {
    let doc = format!(
        "listeners: [{{name: l, address: '127.0.0.1:0'}}]\n\
         pools:\n  - {{name: a, endpoints: [{{address: '127.0.0.1:1'}}]}}\n  - {{name: b, protocol: {protocol}, tls: {tls}, endpoints: [{{address: '{address}'}}]}}\n\
         routes: [{{name: r, pool: a}}, {{name: s, match: {{path_prefix: /b}}, pool: b}}]\n"
    );
    parse(doc.as_bytes(), Format::Yaml).unwrap().pools.remove(1)
}

fn compile(tls: &str, files: &TlsFiles) -> Result<PoolTls, ConfigError> {
    PoolTls::compile(1, &pool(tls, "http1", "127.0.0.1:1"), files).map(Option::unwrap)
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn an_endpoint_is_verified_against_the_sni_else_its_ip_or_host() {
    let dir = files();
    let registry = TlsFiles::default();
    let tls = compile(&format!("{{ca_file: '{}'}}", path(&dir, "ca.pem")), &registry).unwrap();
    assert_eq!(tls.server_name("10.0.0.7:443").unwrap(), ServerName::try_from("10.0.0.7").unwrap());
    assert_eq!(tls.server_name("[::1]:443").unwrap(), ServerName::try_from("::1").unwrap());
    assert_eq!(
        tls.server_name("users.internal:8443").unwrap(),
        ServerName::try_from("users.internal").unwrap()
    );

    let named = compile(&format!("{{sni: api.example.com, ca_file: '{}'}}", path(&dir, "ca.pem")), &registry);
    assert_eq!(
        named.unwrap().server_name("10.0.0.7:443").unwrap(),
        ServerName::try_from("api.example.com").unwrap()
    );
}

#[test]
fn a_file_that_cannot_be_used_is_refused_at_the_field_that_names_it() {
    let dir = files();
    let registry = TlsFiles::default();
    let err = compile(&format!("{{ca_file: '{}'}}", path(&dir, "missing.pem")), &registry).unwrap_err();
    assert_eq!(err.path, "pools[1].tls.ca_file");
    assert!(
        err.message.starts_with(&format!("cannot read {}", path(&dir, "missing.pem"))),
        "{}",
        err.message
    );

    let mismatched = format!(
        "{{ca_file: '{}', cert_file: '{}', key_file: '{}'}}",
        path(&dir, "ca.pem"),
        path(&dir, "me.pem"),
        path(&dir, "other.key")
    );
    let err = compile(&mismatched, &registry).unwrap_err();
    assert_eq!(err.path, "pools[1].tls.key_file");
    assert!(err.message.contains("does not match the certificate"), "{}", err.message);

    let not_a_key = format!(
        "{{ca_file: '{}', cert_file: '{}', key_file: '{}'}}",
        path(&dir, "ca.pem"),
        path(&dir, "me.pem"),
        path(&dir, "ca.pem")
    );
    assert_eq!(compile(&not_a_key, &registry).unwrap_err().path, "pools[1].tls.key_file");
}

#[test]
fn pools_naming_the_same_files_share_one_watched_config() {
    let dir = files();
    let registry = TlsFiles::default();
    let spec = format!("{{ca_file: '{}'}}", path(&dir, "ca.pem"));
    let (a, b) = (compile(&spec, &registry).unwrap(), compile(&spec, &registry).unwrap());
    assert!(Arc::ptr_eq(&a.config, &b.config));
    assert_eq!(a, b, "the same settings: connections are kept");

    let other = compile(&format!("{{sni: other.internal, ca_file: '{}'}}", path(&dir, "ca.pem")), &registry);
    assert_ne!(a, other.unwrap(), "another name: connections are retired");
}

#[test]
fn alpn_defaults_to_the_pool_protocol() {
    let dir = files();
    let registry = TlsFiles::default();
    let spec = format!("{{ca_file: '{}'}}", path(&dir, "ca.pem"));
    let h2 = PoolTls::compile(1, &pool(&spec, "http2", "127.0.0.1:1"), &registry).unwrap().unwrap();
    assert_eq!(h2.config.source().alpn, vec![b"h2".to_vec()]);
    let h1 = compile(&spec, &registry).unwrap();
    assert_eq!(h1.config.source().alpn, vec![b"http/1.1".to_vec()]);
    let insecure = compile("{insecure_skip_verify: true}", &registry).unwrap();
    assert!(!insecure.verifies() && h1.verifies());
}
