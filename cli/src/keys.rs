//! `sluice keys`: signing keys (generate, list, activate, retire), root keys and the trust sets
//! they sign, and `rotate`, which walks a whole rotation and waits for the fleet at each step.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_bundle::sign::trust::{RootKeys, TrustSet};
use sluice_bundle::sign::{SigningKey, TrustedKeys};
use sluice_proto::v1 as pb;

use crate::{
    Cli, Client, Failure, KeysCommand, RootCommand, TrustCommand, connect, exit, fail, from_status, output,
};

pub(crate) async fn run(
    cli: &Cli,
    command: &KeysCommand,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Failure> {
    match command {
        KeysCommand::Generate { out: dir } => {
            let key = SigningKey::generate().map_err(|e| fail(exit::REFUSED, e.to_string()))?;
            write_private(&dir.join("signing-key.json"), &key.to_file())?;
            write_public(&dir.join("trusted-keys.json"), &key.trusted_keys().to_file())?;
            let _ = writeln!(
                err,
                "wrote {} (private: give it to the control planes only) and {} (give it to data planes); key id {}",
                dir.join("signing-key.json").display(),
                dir.join("trusted-keys.json").display(),
                key.key_id()
            );
            Ok(exit::OK)
        }
        KeysCommand::Root { command: RootCommand::Init { out: dir, count, threshold } } => {
            let keys = (0..*count)
                .map(|_| SigningKey::generate().map_err(|e| fail(exit::REFUSED, e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            let mut public = TrustedKeys::default();
            for k in &keys {
                public.extend(k.trusted_keys());
            }
            let roots = RootKeys::new(*threshold, public).map_err(|e| fail(exit::USAGE, e.to_string()))?;
            for (i, k) in keys.iter().enumerate() {
                write_private(&dir.join(format!("root-key-{}.json", i + 1)), &k.to_file())?;
            }
            write_public(&dir.join("root-keys.json"), &roots.to_file())?;
            let _ = writeln!(
                err,
                "wrote {count} root keys (root-key-N.json: keep each offline, with a different person) and {} \
                 (give it to data planes as --root-keys); {threshold} of them sign a trust set",
                dir.join("root-keys.json").display()
            );
            Ok(exit::OK)
        }
        KeysCommand::List => {
            let keys = connect(cli).await?.list_signing_keys(pb::ListSigningKeysRequest {}).await;
            output::signing_keys(
                out,
                cli.output,
                &keys.map_err(|s| from_status(&s, &cli.server))?.into_inner(),
            );
            Ok(exit::OK)
        }
        KeysCommand::Activate { key_id } => {
            let keys = activate(&mut connect(cli).await?, cli, key_id).await?;
            output::signing_keys(out, cli.output, &keys);
            Ok(exit::OK)
        }
        KeysCommand::Retire { key_id } => {
            let keys = retire(&mut connect(cli).await?, cli, key_id).await?;
            output::signing_keys(out, cli.output, &keys);
            Ok(exit::OK)
        }
        KeysCommand::Trust { command: TrustCommand::Show } => {
            let info = connect(cli).await?.get_trust_set(pb::GetTrustSetRequest {}).await;
            let info = info.map_err(|s| from_status(&s, &cli.server))?.into_inner();
            let keys = info
                .trust
                .as_ref()
                .and_then(|t| TrustSet::decode(&t.statement).ok())
                .and_then(|t| t.trusted().ok())
                .map(|k| k.key_ids().into_iter().map(str::to_owned).collect::<Vec<_>>())
                .unwrap_or_default();
            if info.version == 0 {
                let _ = writeln!(out, "no trust set published: data planes trust their --trusted-keys files");
            } else {
                let _ =
                    writeln!(out, "trust set {} by {}: {}", info.version, info.created_by, keys.join(", "));
            }
            Ok(exit::OK)
        }
        KeysCommand::Trust { command: TrustCommand::Publish { trusted_keys, root_keys } } => {
            let text = std::fs::read_to_string(trusted_keys)
                .map_err(|e| fail(exit::USAGE, format!("cannot read {}: {e}", trusted_keys.display())))?;
            let keys = TrustedKeys::from_file(&text)
                .map_err(|e| fail(exit::USAGE, format!("{}: {e}", trusted_keys.display())))?;
            let roots = read_roots(root_keys)?;
            let mut client = connect(cli).await?;
            let version = publish(&mut client, cli, &keys, &roots).await?;
            let _ = writeln!(out, "published trust set {version}: {}", keys.key_ids().join(", "));
            Ok(exit::OK)
        }
        KeysCommand::Rotate { new_key, root_keys, wait } => {
            let roots = read_roots(root_keys)?;
            rotate(cli, new_key, &roots, (*wait).into(), out).await
        }
    }
}

/// Publish a trust set with the active keys and `new_key`, wait for every data plane to take
/// it, activate `new_key`, wait for every data plane to be in sync again (the versions in use
/// re-pushed with its signature), retire the old keys, publish a trust set with `new_key` alone
/// and wait for it too.
async fn rotate(
    cli: &Cli,
    new_key: &str,
    roots: &[SigningKey],
    wait: Duration,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let mut client = connect(cli).await?;
    let keys = client.list_signing_keys(pb::ListSigningKeysRequest {}).await;
    let keys = keys.map_err(|s| from_status(&s, &cli.server))?.into_inner().keys;
    let old: Vec<&pb::SigningKeyInfo> =
        keys.iter().filter(|k| k.state == "active" && k.key_id != new_key).collect();
    let Some(new) = keys.iter().find(|k| k.key_id == new_key && k.held) else {
        return Err(fail(
            exit::REFUSED,
            format!(
                "the control plane does not hold key {new_key}: add its file to every control plane's --signing-key first"
            ),
        ));
    };
    let trusted = |infos: &[&pb::SigningKeyInfo]| -> Result<TrustedKeys, Failure> {
        let entries: Vec<String> = infos
            .iter()
            .map(|k| {
                format!(
                    r#"{{"key_id":"{}","algorithm":"ed25519","public_key":"{}"}}"#,
                    k.key_id, k.public_key
                )
            })
            .collect();
        TrustedKeys::from_file(&format!(r#"{{"keys":[{}]}}"#, entries.join(","))).map_err(|e| {
            fail(exit::SERVER, format!("the control plane listed a key it cannot describe: {e}"))
        })
    };
    let both = trusted(&old.iter().copied().chain([new]).collect::<Vec<_>>())?;
    let step = |out: &mut dyn Write, s: String| {
        let _ = writeln!(out, "{s}");
    };

    let version = publish(&mut client, cli, &both, roots).await?;
    step(
        out,
        format!("1/4 published trust set {version} ({}); waiting for data planes", both.key_ids().join(", ")),
    );
    wait_for(&mut client, cli, wait, "take the trust set", |d| d.trust_version >= version).await?;

    let activated = activate(&mut client, cli, new_key).await?;
    step(
        out,
        format!("2/4 activated {new_key}; signed {}; waiting for data planes", activated.signed.join(", ")),
    );
    let holds_new = |d: &pb::DataPlaneStatus| d.signature_key_ids.iter().any(|k| k == new_key);
    wait_for(&mut client, cli, wait, "cache the new key's signature", holds_new).await?;

    for k in &old {
        retire(&mut client, cli, &k.key_id).await?;
    }
    step(
        out,
        format!("3/4 retired {}", old.iter().map(|k| k.key_id.as_str()).collect::<Vec<_>>().join(", ")),
    );

    let only_new = trusted(&[new])?;
    let version = publish(&mut client, cli, &only_new, roots).await?;
    step(out, format!("4/4 published trust set {version} ({new_key}); waiting for data planes"));
    wait_for(&mut client, cli, wait, "take the trust set", |d| d.trust_version >= version).await?;
    step(out, format!("rotated to {new_key}: bundles signed only by the old keys are refused from now on"));
    Ok(exit::OK)
}

/// Waits until every connected data plane of every fleet satisfies `done`.
async fn wait_for(
    client: &mut Client,
    cli: &Cli,
    within: Duration,
    what: &str,
    done: impl Fn(&pb::DataPlaneStatus) -> bool,
) -> Result<(), Failure> {
    let deadline = Instant::now() + within;
    loop {
        let planes = client.list_data_planes(pb::ListDataPlanesRequest { fleet: String::new() }).await;
        let planes = planes.map_err(|s| from_status(&s, &cli.server))?.into_inner().data_planes;
        let behind: Vec<String> = planes
            .iter()
            .filter(|d| d.connected && !done(d))
            .map(|d| format!("{}/{}", d.fleet, d.node_id))
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(fail(
                exit::TIMEOUT,
                format!(
                    "timed out waiting for data planes to {what}: {} (nothing was undone)",
                    behind.join(", ")
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn publish(
    client: &mut Client,
    cli: &Cli,
    keys: &TrustedKeys,
    roots: &[SigningKey],
) -> Result<u64, Failure> {
    let current = client.get_trust_set(pb::GetTrustSetRequest {}).await;
    let current = current.map_err(|s| from_status(&s, &cli.server))?.into_inner().version;
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let set = TrustSet::new(current + 1, issued, keys);
    let (statement, signatures) = set.sign(&roots.iter().collect::<Vec<_>>());
    let signatures =
        signatures.into_iter().map(|s| pb::Signature { key_id: s.key_id, signature: s.signature }).collect();
    let req = pb::PublishTrustSetRequest { trust: Some(pb::SignedStatement { statement, signatures }) };
    let info = client.publish_trust_set(req).await.map_err(|s| from_status(&s, &cli.server))?.into_inner();
    Ok(info.version)
}

async fn activate(client: &mut Client, cli: &Cli, key_id: &str) -> Result<pb::SigningKeys, Failure> {
    let req = pb::SigningKeyRequest { key_id: key_id.to_owned() };
    Ok(client.activate_signing_key(req).await.map_err(|s| from_status(&s, &cli.server))?.into_inner())
}

async fn retire(client: &mut Client, cli: &Cli, key_id: &str) -> Result<pb::SigningKeys, Failure> {
    let req = pb::SigningKeyRequest { key_id: key_id.to_owned() };
    Ok(client.retire_signing_key(req).await.map_err(|s| from_status(&s, &cli.server))?.into_inner())
}

fn read_roots(paths: &[std::path::PathBuf]) -> Result<Vec<SigningKey>, Failure> {
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p)
                .map_err(|e| fail(exit::USAGE, format!("cannot read root key {}: {e}", p.display())))?;
            SigningKey::from_file(&text).map_err(|e| fail(exit::USAGE, format!("{}: {e}", p.display())))
        })
        .collect()
}

/// A secret: mode 0600, never overwritten.
fn write_private(path: &Path, text: &str) -> Result<(), Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |e: std::io::Error| fail(exit::REFUSED, format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        return Err(fail(exit::REFUSED, format!("{} exists; not overwriting a key", path.display())));
    }
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)
}

fn write_public(path: &Path, text: &str) -> Result<(), Failure> {
    std::fs::write(path, text)
        .map_err(|e| fail(exit::REFUSED, format!("cannot write {}: {e}", path.display())))
}
