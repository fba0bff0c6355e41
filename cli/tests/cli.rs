//! The `sluice` binary's offline commands, run as a user would run them. Commands that talk to a
//! control plane are tested against a real one in `tests/tests/integration/fleet.rs`.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use sluice_bundle::sign::{SigningKey, TrustedKeys};

fn sluice(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env_remove("SLUICE_SERVER")
        .env_remove("SLUICE_FLEET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const BROKEN: &str = "\
listeners:
  - name: public
    address: not-an-address
pools:
  - name: web
    endpoints: []
routes:
  - name: all
    match: { path_prefix: /, methd: GET }
    pool: missing
";

#[test]
fn validate_lists_every_error_with_its_path_and_exits_1() {
    let dir = temp_dir();
    let file = dir.join("broken.yaml");
    std::fs::write(&file, BROKEN).unwrap();

    let run = sluice(&["validate", "-f", file.to_str().unwrap()], None);
    assert_eq!(run.status.code(), Some(1));
    let err = text(&run.stderr);
    assert!(err.contains("4 errors"), "{err}");
    for path in ["listeners[0].address", "pools[0].endpoints", "routes[0].match.methd", "routes[0].pool"] {
        assert!(err.contains(&format!("{path}: ")), "missing {path} in:\n{err}");
    }
    assert!(err.contains("did you mean `methods`"), "{err}");
    assert!(run.stdout.is_empty(), "data goes to stdout only on request: {}", text(&run.stdout));

    // The same errors, machine-readable, on stdout.
    let run = sluice(&["validate", "-f", file.to_str().unwrap(), "-o", "json"], None);
    assert_eq!(run.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(doc["valid"], false);
    let paths: Vec<&str> =
        doc["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), 4, "{paths:?}");
    assert!(paths.contains(&"routes[0].pool"), "{paths:?}");
}

#[test]
fn validate_accepts_the_shipped_example_and_reads_stdin() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo.yaml");
    let run = sluice(&["validate", "-f", example], None);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("valid ("), "{}", text(&run.stderr));

    let run = sluice(&["validate", "-f", "-"], Some("listeners: ["));
    assert_eq!(run.status.code(), Some(1));
    assert!(text(&run.stderr).contains("line 1 column 12"), "{}", text(&run.stderr));
}

#[test]
fn usage_errors_exit_2() {
    let run = sluice(&["validate"], None);
    assert_eq!(run.status.code(), Some(2));
    assert!(text(&run.stderr).contains("--file"), "{}", text(&run.stderr));

    let run = sluice(&["apply", "-f", "x.yaml", "--expect-version", "two"], None);
    assert_eq!(run.status.code(), Some(2));
}

#[test]
fn keys_generate_writes_a_private_key_only_its_owner_can_read_and_never_overwrites_it() {
    let dir = temp_dir().join("keys");
    let run = sluice(&["keys", "generate", "--out", dir.to_str().unwrap()], None);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));

    let private = dir.join("signing-key.json");
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "signing key mode {mode:o}");

    // The trusted-keys file names exactly the new key, so data planes accept what it signs.
    let key = SigningKey::from_file(&std::fs::read_to_string(&private).unwrap()).unwrap();
    let trusted =
        TrustedKeys::from_file(&std::fs::read_to_string(dir.join("trusted-keys.json")).unwrap()).unwrap();
    assert_eq!(trusted.key_ids(), vec![key.key_id()]);
    assert!(text(&run.stderr).contains(key.key_id()), "{}", text(&run.stderr));

    let before = std::fs::read(&private).unwrap();
    let run = sluice(&["keys", "generate", "--out", dir.to_str().unwrap()], None);
    assert_eq!(run.status.code(), Some(1));
    assert!(text(&run.stderr).contains("not overwriting"), "{}", text(&run.stderr));
    assert_eq!(std::fs::read(&private).unwrap(), before, "the existing key must survive");
}

#[test]
fn completions_cover_the_subcommands() {
    let run = sluice(&["completions", "bash"], None);
    assert_eq!(run.status.code(), Some(0));
    let script = text(&run.stdout);
    for sub in ["validate", "apply", "rollback", "dataplanes", "audit", "shadow", "canary"] {
        assert!(script.contains(sub), "bash completion lacks {sub}");
    }
}
