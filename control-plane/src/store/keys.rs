//! Signing keys in PostgreSQL: which keys are active (agreed by every replica), and signatures
//! added to stored versions. Key changes and applies serialise on one advisory lock, so a version
//! stored during a rotation is signed by the key set of one side of it, never half of each.

use sqlx::{PgConnection, Row};

use super::{AuditEntry, Store, VERSIONS_CHANNEL, VersionRow, append_audit, version_row};
use crate::error::{Error, Result};
use sluice_bundle::sign::Signature;

/// Taken shared by every append, exclusively by key changes.
pub(super) const KEYS_LOCK: i64 = 0x5_11CE_4E75;
/// Announced on [`VERSIONS_CHANNEL`] when the key set or a version's signatures changed: not a
/// fleet name (those never contain `*`), so followers reload the keys and every fleet.
pub const KEYS_CHANGED: &str = "*";

/// A signing key as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub key_id: String,
    /// Hex ed25519 public key.
    pub public_key: String,
    /// `active` or `retired`.
    pub state: String,
    pub added_by: String,
    pub added_at: i64,
    pub retired_by: String,
    pub retired_at: Option<i64>,
}

// === impl Store ===

impl Store {
    /// Every key, active first, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<KeyRow>> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT key_id, public_key, state, added_by, EXTRACT(EPOCH FROM added_at)::bigint AS added_at, \
                 retired_by, EXTRACT(EPOCH FROM retired_at)::bigint AS retired_at \
                 FROM signing_keys ORDER BY state, added_at, key_id",
            )
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(KeyRow {
                        key_id: r.try_get("key_id")?,
                        public_key: r.try_get("public_key")?,
                        state: r.try_get("state")?,
                        added_by: r.try_get("added_by")?,
                        added_at: r.try_get("added_at")?,
                        retired_by: r.try_get("retired_by")?,
                        retired_at: r.try_get("retired_at")?,
                    })
                })
                .collect()
        })
        .await
    }

    /// The first control plane on a database makes the keys it holds the active set; later ones
    /// (and restarts) change nothing. True if it did.
    pub async fn bootstrap_signing_keys(&self, held: &[(String, String)], actor: &str) -> Result<bool> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(KEYS_LOCK).execute(&mut *tx).await?;
            let any: bool = sqlx::query("SELECT EXISTS (SELECT 1 FROM signing_keys)")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            if any || held.is_empty() {
                return Ok(false);
            }
            for (key_id, public_key) in held {
                insert_active(&mut tx, key_id, public_key, actor).await?;
                let detail = serde_json::json!({"key_id": key_id, "bootstrap": true});
                let entry = audit(actor, "signing_key_activated", detail);
                append_audit(&mut tx, &entry).await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Makes a key active and, in the same transaction, adds its signature (`sign`) to every
    /// version in use: each fleet's head, a rollout's base, and what any data plane serves. Then
    /// announces it, so every replica pushes the new signatures. The versions it signed.
    pub async fn activate_key(
        &self,
        key_id: &str,
        public_key: &str,
        actor: &str,
        sign: impl Fn(&[u8]) -> Signature + Send,
    ) -> Result<Vec<(String, u64)>> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(KEYS_LOCK).execute(&mut *tx).await?;
            let state: Option<String> = sqlx::query("SELECT state FROM signing_keys WHERE key_id = $1")
                .bind(key_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
            match state.as_deref() {
                Some("active") => {}
                Some(_) => {
                    return Ok(Err(Error::FailedPrecondition(format!(
                        "signing key {key_id} was retired; a retired key is never used again: generate a new one"
                    ))));
                }
                None => insert_active(&mut tx, key_id, public_key, actor).await?,
            }
            let in_use = versions_in_use(&mut tx).await?;
            let mut signed = Vec::new();
            for v in &in_use {
                if v.signatures.iter().any(|s| s.key_id == key_id) {
                    continue;
                }
                let s = sign(&v.payload);
                sqlx::query(
                    "INSERT INTO version_signatures (fleet, version, key_id, signature) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&v.fleet)
                .bind(v.version as i64)
                .bind(&s.key_id)
                .bind(&s.signature)
                .execute(&mut *tx)
                .await?;
                signed.push((v.fleet.clone(), v.version));
            }
            let detail = serde_json::json!({
                "key_id": key_id,
                "signed": signed.iter().map(|(f, v)| format!("{f}@{v}")).collect::<Vec<_>>(),
            });
            append_audit(&mut tx, &audit(actor, "signing_key_activated", detail)).await?;
            sqlx::query("SELECT pg_notify($1, $2)").bind(VERSIONS_CHANNEL).bind(KEYS_CHANGED).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Ok(signed))
        })
        .await?
    }

    /// Retires a key: nothing is signed with it again. Refused for the last active key, and
    /// while a version in use has no signature from another active key (retiring would strand
    /// it on data planes that stop trusting this one).
    pub async fn retire_key(&self, key_id: &str, actor: &str) -> Result<()> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(KEYS_LOCK).execute(&mut *tx).await?;
            let active = active_keys(&mut tx).await?;
            if !active.iter().any(|k| k == key_id) {
                return Ok(Err(Error::NotFound(format!("no active signing key {key_id}"))));
            }
            let others: Vec<&String> = active.iter().filter(|k| *k != key_id).collect();
            if others.is_empty() {
                return Ok(Err(Error::FailedPrecondition(format!(
                    "{key_id} is the only active signing key: activate its successor first"
                ))));
            }
            let stranded: Vec<String> = versions_in_use(&mut tx)
                .await?
                .iter()
                .filter(|v| !v.signatures.iter().any(|s| others.contains(&&s.key_id)))
                .map(|v| format!("{}@{}", v.fleet, v.version))
                .collect();
            if !stranded.is_empty() {
                return Ok(Err(Error::FailedPrecondition(format!(
                    "versions in use are signed by no other active key: {}; activate the new key \
                     (which signs them) before retiring {key_id}",
                    stranded.join(", ")
                ))));
            }
            sqlx::query(
                "UPDATE signing_keys SET state = 'retired', retired_by = $2, retired_at = now() WHERE key_id = $1",
            )
            .bind(key_id)
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            let detail = serde_json::json!({"key_id": key_id});
            append_audit(&mut tx, &audit(actor, "signing_key_retired", detail)).await?;
            sqlx::query("SELECT pg_notify($1, $2)").bind(VERSIONS_CHANNEL).bind(KEYS_CHANGED).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Ok(()))
        })
        .await?
    }
}

/// The active key ids, in a transaction that holds [`KEYS_LOCK`] (shared or exclusive).
pub(super) async fn active_keys(tx: &mut PgConnection) -> std::result::Result<Vec<String>, sqlx::Error> {
    sqlx::query("SELECT key_id FROM signing_keys WHERE state = 'active' ORDER BY added_at, key_id")
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect()
}

async fn insert_active(
    tx: &mut PgConnection,
    key_id: &str,
    public_key: &str,
    actor: &str,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO signing_keys (key_id, public_key, state, added_by) VALUES ($1, $2, 'active', $3)",
    )
    .bind(key_id)
    .bind(public_key)
    .bind(actor)
    .execute(&mut *tx)
    .await
    .map(drop)
}

/// Versions some data plane is meant to serve or serves: heads, the base of each fleet's latest
/// rollout and its rollback, and every data plane's active version.
async fn versions_in_use(tx: &mut PgConnection) -> std::result::Result<Vec<VersionRow>, sqlx::Error> {
    let rows = sqlx::query(concat!(
        select_version!(),
        " WHERE (v.fleet, v.version) IN (\
            SELECT name, head_version FROM fleets \
            UNION SELECT fleet, from_version FROM rollouts r WHERE r.id = (SELECT max(id) FROM rollouts WHERE fleet = r.fleet) \
            UNION SELECT fleet, rollback_version FROM rollouts WHERE rollback_version IS NOT NULL \
            UNION SELECT fleet, active_version FROM data_planes WHERE active_version > 0) \
         ORDER BY v.fleet, v.version"
    ))
    .fetch_all(&mut *tx)
    .await?;
    rows.into_iter().map(version_row).collect()
}

fn audit(actor: &str, action: &str, detail: serde_json::Value) -> AuditEntry {
    AuditEntry {
        actor: actor.to_owned(),
        action: action.to_owned(),
        fleet: String::new(),
        version: None,
        detail,
    }
}

/// A trusted-key set as stored: the root-signed statement, as the operator published it.
#[derive(Debug, Clone)]
pub struct TrustRow {
    pub version: u64,
    pub statement: Vec<u8>,
    pub signatures: Vec<Signature>,
    pub created_by: String,
    pub created_at: i64,
}

impl Store {
    /// The newest trust set, if one was published.
    pub async fn latest_trust_set(&self) -> Result<Option<TrustRow>> {
        self.bounded(async {
            let row = sqlx::query(
                "SELECT version, statement, signatures::text AS signatures, created_by, \
                 EXTRACT(EPOCH FROM created_at)::bigint AS created_at FROM trust_sets ORDER BY version DESC LIMIT 1",
            )
            .fetch_optional(&self.pool)
            .await?;
            row.map(|r| {
                Ok(TrustRow {
                    version: r.try_get::<i64, _>("version")? as u64,
                    statement: r.try_get("statement")?,
                    signatures: super::parse_signatures(&r.try_get::<String, _>("signatures")?),
                    created_by: r.try_get("created_by")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .transpose()
        })
        .await
    }

    /// Stores a trust set above the newest one, audited, and announces it.
    pub async fn publish_trust_set(
        &self,
        version: u64,
        statement: &[u8],
        signatures: &[Signature],
        keys: &[&str],
        actor: &str,
    ) -> Result<()> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(KEYS_LOCK).execute(&mut *tx).await?;
            let newest: i64 = sqlx::query("SELECT COALESCE(max(version), 0) FROM trust_sets")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            if version <= newest as u64 {
                return Ok(Err(Error::FailedPrecondition(format!(
                    "trust set version {version} is not above the newest published ({newest})"
                ))));
            }
            sqlx::query(
                "INSERT INTO trust_sets (version, statement, signatures, created_by) VALUES ($1, $2, $3::jsonb, $4)",
            )
            .bind(version as i64)
            .bind(statement)
            .bind(super::signatures_json(signatures))
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            let detail = serde_json::json!({"trust_version": version, "keys": keys});
            append_audit(&mut tx, &audit(actor, "trust_set_published", detail)).await?;
            sqlx::query("SELECT pg_notify($1, $2)").bind(VERSIONS_CHANNEL).bind(KEYS_CHANGED).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Ok(()))
        })
        .await?
    }
}
