//! `sluice certs init`: a development PKI and the credentials to use it, in one directory.

use std::io::Write;
use std::path::Path;

use sluice_bundle::access::token_sha256;
use sluice_tls::identity::{data_plane_uri, operator_uri};
use sluice_tls::pki::{Authority, Leaf};

use crate::{CertsCommand, Failure, exit, fail};

pub(crate) fn run(command: &CertsCommand, fleet: &str, err: &mut dyn Write) -> Result<u8, Failure> {
    let CertsCommand::Init { out, nodes, count, dns, ips, operator, trust_domain, days } = command;
    let nodes: Vec<String> = match (count, nodes.is_empty()) {
        (Some(n), _) => (1..=*n).map(|i| format!("node-{i}")).collect(),
        (None, true) => vec!["node-1".into(), "node-2".into()],
        (None, false) => nodes.clone(),
    };
    let io = |e: std::io::Error| fail(exit::REFUSED, format!("cannot write to {}: {e}", out.display()));
    let pki = |e: sluice_tls::pki::Error| fail(exit::REFUSED, format!("cannot make certificates: {e}"));
    std::fs::create_dir_all(out).map_err(io)?;
    if out.join("ca.key").exists() {
        return Err(fail(
            exit::REFUSED,
            format!("{} exists; not overwriting a CA", out.join("ca.key").display()),
        ));
    }
    let ca = Authority::new("sluice development CA").map_err(pki)?;
    write(out, "ca.crt", &ca.cert_pem, false).map_err(io)?;
    write(out, "ca.key", &ca.key_pem, true).map_err(io)?;

    let mut server = Leaf {
        common_name: "sluice-control-plane".into(),
        dns: std::iter::once("localhost".to_owned()).chain(dns.iter().cloned()).collect(),
        ips: [std::net::Ipv4Addr::LOCALHOST.into(), std::net::Ipv6Addr::LOCALHOST.into()].into(),
        server: true,
        valid_days: *days,
        ..Leaf::default()
    };
    server.ips.extend(ips.iter().copied());
    let issued = ca.issue(&server).map_err(pki)?;
    write(out, "control-plane.crt", &issued.cert_pem, false).map_err(io)?;
    write(out, "control-plane.key", &issued.key_pem, true).map_err(io)?;

    for node in &nodes {
        let leaf = Leaf {
            common_name: node.clone(),
            uris: vec![data_plane_uri(trust_domain, fleet, Some(node))],
            client: true,
            valid_days: *days,
            ..Leaf::default()
        };
        let issued = ca.issue(&leaf).map_err(pki)?;
        write(out, &format!("data-plane-{node}.crt"), &issued.cert_pem, false).map_err(io)?;
        write(out, &format!("data-plane-{node}.key"), &issued.key_pem, true).map_err(io)?;
    }

    let operator_san = operator_uri(trust_domain, operator);
    let leaf = Leaf {
        common_name: operator.clone(),
        uris: vec![operator_san.clone()],
        client: true,
        valid_days: *days,
        ..Leaf::default()
    };
    let issued = ca.issue(&leaf).map_err(pki)?;
    write(out, "operator.crt", &issued.cert_pem, false).map_err(io)?;
    write(out, "operator.key", &issued.key_pem, true).map_err(io)?;

    let token = random_token().map_err(|e| fail(exit::REFUSED, e))?;
    write(out, "operator.token", &format!("{token}\n"), true).map_err(io)?;
    let policy = format!(
        "# Who may do what on which fleet (re-read when it changes). Roles: viewer, operator, admin.\n\
         principals:\n\
         \x20 - name: {operator}\n\
         \x20   token_sha256: {}      # of operator.token; the token itself is never stored here\n\
         \x20   roles: {{ \"*\": admin }}\n\
         \x20 - name: {operator}-cert\n\
         \x20   certificate: {operator_san}\n\
         \x20   roles: {{ \"*\": admin }}\n",
        token_sha256(&token)
    );
    write(out, "policy.yaml", &policy, false).map_err(io)?;

    let d = out.display();
    let _ = writeln!(
        err,
        "wrote a development PKI to {d} (trust domain {trust_domain}, fleet {fleet}, nodes {}):\n\
         \x20 control plane: --tls-cert {d}/control-plane.crt --tls-key {d}/control-plane.key \
         --client-ca {d}/ca.crt --policy-file {d}/policy.yaml\n\
         \x20 data plane:    --ca-file {d}/ca.crt --cert {d}/data-plane-NODE.crt --key {d}/data-plane-NODE.key\n\
         \x20 sluice:        export SLUICE_CA_FILE={d}/ca.crt SLUICE_TOKEN_FILE={d}/operator.token\n\
         \x20                (or SLUICE_CERT={d}/operator.crt SLUICE_KEY={d}/operator.key)\n\
         policy line for the token: token_sha256: {}",
        nodes.join(", "),
        token_sha256(&token)
    );
    Ok(exit::OK)
}

/// 32 random bytes as hex.
fn random_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a file; a secret one only for its owner (0600), from the moment it exists.
fn write(dir: &Path, name: &str, text: &str, secret: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(dir.join(name))?;
    f.write_all(text.as_bytes())
}
