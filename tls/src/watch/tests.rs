use std::path::PathBuf;

use super::*;
use crate::pki::{Authority, Leaf};
use crate::{ClientAuth, ServerFiles};

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-tls-{}-{}", std::process::id(), fastrand_u64()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fastrand_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

fn server_leaf(ca: &Authority, days: i64) -> crate::pki::Issued {
    ca.issue(&Leaf {
        common_name: "cp".into(),
        dns: vec!["localhost".into()],
        server: true,
        valid_days: days,
        ..Leaf::default()
    })
    .unwrap()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn files(d: &Path) -> ServerFiles {
    ServerFiles {
        cert: d.join("tls.crt"),
        key: d.join("tls.key"),
        client_ca: None,
        crl: None,
        client_auth: ClientAuth::Off,
        alpn: vec![b"h2".to_vec()],
    }
}

#[test]
fn a_changed_certificate_is_picked_up_and_a_broken_one_keeps_the_last_good() {
    let d = dir();
    let ca = Authority::new("test CA").unwrap();
    let first = server_leaf(&ca, 30);
    write(&d.join("tls.crt"), &first.cert_pem);
    write(&d.join("tls.key"), &first.key_pem);
    let w = Watched::load("control_plane_server", files(&d)).unwrap();
    let expiry = w.status().expiry.unwrap();
    assert!(expiry > 0);
    assert!(!w.check(), "nothing changed");
    let before = w.current();

    // A certificate without its key (a half-done rotation): refused, counted, last good kept.
    let second = server_leaf(&ca, 60);
    write(&d.join("tls.crt"), &second.cert_pem);
    assert!(!w.check());
    assert!(Arc::ptr_eq(&before, &w.current()), "the last good config stays in use");
    assert_eq!(w.status().failures, 1);
    assert!(!w.check(), "the same broken files are not reported again");
    assert_eq!(w.status().failures, 1);

    // The matching key arrives: the new certificate is used and its expiry reported.
    write(&d.join("tls.key"), &second.key_pem);
    assert!(w.check());
    assert!(!Arc::ptr_eq(&before, &w.current()));
    let status = w.status();
    assert_eq!((status.reloads, status.failures), (1, 1));
    assert!(status.expiry.unwrap() > expiry + 20 * 86_400, "the new certificate's expiry");

    // A file that disappears is a failure too, reported once, and the config stays.
    std::fs::remove_file(d.join("tls.key")).unwrap();
    assert!(!w.check());
    assert!(!w.check());
    assert_eq!(w.status().failures, 2);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn a_kubernetes_style_symlink_swap_is_seen() {
    // Kubernetes mounts a Secret as `tls.crt -> ..data/tls.crt`, `..data -> ..2026_01_01_…`, and
    // updates it by pointing `..data` at a new directory.
    let d = dir();
    let ca = Authority::new("test CA").unwrap();
    let (a, b) = (server_leaf(&ca, 30), server_leaf(&ca, 90));
    for (name, leaf) in [("..v1", &a), ("..v2", &b)] {
        std::fs::create_dir_all(d.join(name)).unwrap();
        write(&d.join(name).join("tls.crt"), &leaf.cert_pem);
        write(&d.join(name).join("tls.key"), &leaf.key_pem);
    }
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", d.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", d.join("tls.key")).unwrap();
    let w = Watched::load("x", files(&d)).unwrap();
    let first = w.status().expiry.unwrap();

    std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    assert!(w.check());
    assert!(w.status().expiry.unwrap() > first + 50 * 86_400);
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn bad_files_fail_the_first_load_with_the_file_named() {
    let d = dir();
    let ca = Authority::new("test CA").unwrap();
    let (a, b) = (server_leaf(&ca, 30), server_leaf(&ca, 30));
    write(&d.join("tls.crt"), &a.cert_pem);
    write(&d.join("tls.key"), &b.key_pem);
    let err = Watched::load("x", files(&d)).err().unwrap();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("tls.key"), "{err}");

    write(&d.join("tls.key"), "not a key");
    let err = Watched::load("x", files(&d)).err().unwrap();
    assert_eq!(err, TlsError::NoKey { path: d.join("tls.key") });

    let mut mtls = files(&d);
    mtls.client_auth = ClientAuth::Required;
    write(&d.join("tls.key"), &a.key_pem);
    let err = Watched::load("x", mtls).err().unwrap();
    assert!(err.to_string().contains("no client CA"), "{err}");

    let err = Watched::load("x", ServerFiles { cert: d.join("missing.crt"), ..files(&d) }).err().unwrap();
    assert!(
        err.to_string().starts_with(&format!("cannot read {}", d.join("missing.crt").display())),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(d);
}
