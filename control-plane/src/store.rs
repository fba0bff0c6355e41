//! PostgreSQL storage. The only module that knows sqlx; its row types are not the domain's.
//!
//! Every call is bounded: a database that is down or frozen makes calls fail within the store
//! timeout with a clear error, and the pool reconnects by itself when it returns.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sluice_bundle::sign::Signature;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Row};

use crate::error::{Error, Result};

/// The columns of a version row; a macro so queries can `concat!` it into `&'static str`s.
macro_rules! select_version {
    () => {
        "SELECT v.fleet, v.version, v.payload, v.signatures::text AS signatures, \
         (SELECT COALESCE(json_agg(json_build_object('key_id', s.key_id, 'signature', encode(s.signature, 'hex')) \
           ORDER BY s.added_at, s.key_id), '[]'::json)::text FROM version_signatures s \
           WHERE s.fleet = v.fleet AND s.version = v.version) AS added_signatures, v.sha256, \
         v.parent_version, v.author, v.message, v.origin, v.key_id, \
         EXTRACT(EPOCH FROM v.created_at)::bigint AS created_at FROM versions v"
    };
}

/// The SQL condition for a rollout that is not finished (`rollouts::UNFINISHED`).
macro_rules! unfinished {
    () => {
        "state IN ('pending', 'progressing', 'paused', 'rolling_back')"
    };
}

/// Channel the control planes sharing a database announce new versions on; the payload is the
/// fleet's name.
pub const VERSIONS_CHANNEL: &str = "sluice_versions";
/// Fleet-wide cache purges and data planes' answers, between control-plane replicas.
pub const PURGES_CHANNEL: &str = "sluice_cache_purges";
/// Serialises audit appends so the hash chain is a chain (an arbitrary, fixed lock id).
const AUDIT_LOCK: i64 = 0x5_11CE_A0D1;

/// The database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    timeout: Duration,
    /// The connection this replica tries the rollout leader lock on, kept between tries (see
    /// `try_lead`).
    candidate: Arc<std::sync::Mutex<Option<PgConnection>>>,
}

/// A stored version.
#[derive(Debug, Clone)]
pub struct VersionRow {
    pub fleet: String,
    pub version: u64,
    /// The signed bytes, shared by every push of them.
    pub payload: bytes::Bytes,
    /// Made when it was stored, then any a key rotation added.
    pub signatures: Vec<Signature>,
    pub sha256: String,
    pub parent_version: u64,
    pub author: String,
    pub message: String,
    pub origin: String,
    pub key_id: String,
    pub created_at: i64,
}

/// A version about to be stored.
#[derive(Debug)]
pub struct NewVersion {
    pub payload: Vec<u8>,
    pub signatures: Vec<Signature>,
    pub sha256: String,
    pub author: String,
    pub message: String,
    pub origin: String,
    pub key_id: String,
}

/// The outcome of an append: the head afterwards, and whether it is new.
#[derive(Debug)]
pub struct Appended {
    pub head: VersionRow,
    pub created: bool,
    /// The rollout started with it, if one was.
    pub rollout: Option<u64>,
}

/// The highest version number there can be: versions are BIGINT, and a data plane's claim above
/// this is refused at its hello.
pub const MAX_VERSION: u64 = 1 << 62;

/// How an append numbers its version.
#[derive(Debug, Clone, Copy, Default)]
pub struct Numbering {
    /// Refuse (conflict) unless the head is this version (0: none yet).
    pub expect_version: Option<u64>,
    /// Number the version at least this (0: the head + 1).
    pub min_version: u64,
    /// Number it above what data planes serve, whatever that is (the rollout leader's own
    /// rollback, which nothing may hold up).
    pub auto_above: bool,
}

/// What an append does about the fleet's rollouts.
#[derive(Debug, Clone, Copy)]
pub enum DuringRollout<'a> {
    /// Refuse while the fleet has an unfinished rollout: one version rolls out at a time.
    Refuse,
    /// Store it anyway: the rollout leader's rollback of a failed or aborted rollout.
    Allow,
    /// Store it and, in the same transaction, ask the leader to abort the unfinished rollout, if
    /// there is one: an operator's rollback.
    Abort { actor: &'a str },
    /// Refuse like `Refuse`, and start a rollout of the new version with this strategy. With no
    /// version before it there is nothing to roll from: `required` refuses, otherwise the version
    /// goes to every data plane at once.
    Start { strategy: &'a serde_json::Value, required: bool },
}

/// What a data plane last told us.
#[derive(Debug, Clone)]
pub struct DataPlaneRow {
    pub fleet: String,
    pub node_id: String,
    pub labels: BTreeMap<String, String>,
    pub build: String,
    pub active_version: u64,
    pub head_version: u64,
    pub last_ack_version: u64,
    pub last_nack_version: u64,
    pub last_nack_reason: String,
    pub last_nack_details: Vec<(String, String)>,
    pub connected: bool,
    pub last_seen: i64,
    /// Unix seconds its active version's freshness statement lapses, as it last reported; 0:
    /// unknown.
    pub freshness_expires_at: i64,
    /// The root-signed trust set it last reported in force; 0: its trusted-keys file.
    pub trust_version: u64,
    /// Keys whose signatures its active bundle carries, as it last reported.
    pub signature_key_ids: Vec<String>,
}

/// A data plane, by fleet and node id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeKey {
    pub fleet: String,
    pub node_id: String,
}

/// What one data plane said since its facts were last written, merged: the latest of each.
/// `None` leaves the stored value alone.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    /// Its hello: the row is inserted (or replaced) with these.
    pub hello: Option<HelloFacts>,
    /// From its hello or its latest ACK, whichever came last.
    pub active_version: Option<u64>,
    pub last_ack_version: Option<u64>,
    /// Its latest stream event: a hello or a report (true), the stream ending (false).
    pub connected: Option<bool>,
    /// Its newest report (by the node's `at`), encoded, with the facts kept as columns.
    pub report: Option<(ReportFacts, Vec<u8>)>,
}

impl NodeFacts {
    fn report_facts(&self) -> Option<&ReportFacts> {
        self.report.as_ref().map(|(facts, _)| facts)
    }
}

/// What a hello says about a data plane.
#[derive(Debug, Clone, Default)]
pub struct HelloFacts {
    pub labels: BTreeMap<String, String>,
    pub build: String,
    pub active_version: u64,
}

/// What a report says beyond its traffic: kept as columns.
#[derive(Debug, Clone, Default)]
pub struct ReportFacts {
    /// Unix seconds, by the data plane's clock.
    pub at: i64,
    pub active_version: u64,
    pub freshness_expires_at: i64,
    pub trust_version: u64,
    pub signature_key_ids: Vec<String>,
}

/// A data plane's latest traffic report, as it was sent, with whether the node is connected.
#[derive(Debug, Clone)]
pub struct ReportRow {
    pub node_id: String,
    pub at: i64,
    pub active_version: u64,
    /// An encoded `sluice.v1.Report`.
    pub report: Vec<u8>,
    pub connected: bool,
    pub last_seen: i64,
}

/// An audit event to record.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub fleet: String,
    pub version: Option<u64>,
    pub detail: serde_json::Value,
}

/// A recorded audit event.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub id: u64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub fleet: String,
    pub version: Option<u64>,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Which audit events to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub fleet: Option<String>,
    pub since: Option<i64>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub limit: usize,
}

/// The audit chain's condition: `None` when intact, else the first problem.
pub type ChainProblem = Option<String>;

// === impl Store ===

impl Store {
    /// Connects (within `timeout`) and keeps a small pool. Statements time out on the server too.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::InvalidArgument(format!("invalid database URL: {e}")))?
            .application_name("sluice-control-plane")
            .options([("statement_timeout", format!("{}", timeout.as_millis()))]);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(timeout)
            .connect_with(options)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        Ok(Self { pool, timeout, candidate: Default::default() })
    }

    /// A store over an existing pool (tests get one per test from `#[sqlx::test]`).
    pub fn from_pool(pool: PgPool, timeout: Duration) -> Self {
        Self { pool, timeout, candidate: Default::default() }
    }

    /// Applies the embedded migrations.
    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("../migrations")
            .run(&self.pool)
            .await
            .map_err(|e| Error::Unavailable(format!("migrations failed: {e}")))
    }

    /// A dedicated connection that hears version announcements.
    pub async fn listener(&self) -> Result<PgListener> {
        let mut listener = self.bounded(PgListener::connect_with(&self.pool)).await?;
        self.bounded(listener.listen(VERSIONS_CHANNEL)).await?;
        self.bounded(listener.listen(PURGES_CHANNEL)).await?;
        Ok(listener)
    }

    /// Tells every replica (this one too) about a purge or a data plane's answer to one.
    pub async fn notify_purges(&self, payload: &str) -> Result<()> {
        self.bounded(
            sqlx::query("SELECT pg_notify($1, $2)").bind(PURGES_CHANNEL).bind(payload).execute(&self.pool),
        )
        .await?;
        Ok(())
    }

    /// Runs `f`, failing cleanly if the database does not answer in time.
    async fn bounded<T>(&self, f: impl Future<Output = std::result::Result<T, sqlx::Error>>) -> Result<T> {
        let silent = || Error::Unavailable(format!("PostgreSQL did not answer within {:?}", self.timeout));
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => Err(silent()),
            Ok(r) => r.map_err(Error::from),
        }
    }

    /// Forgets data planes not heard from for `older_than` (pods an autoscaler replaced) and
    /// latest reports older than that. The audit trail (their NACKs among it) is kept.
    /// Returns how many data planes and reports went.
    pub async fn prune_departed(&self, older_than: Duration) -> Result<(u64, u64)> {
        let secs = older_than.as_secs_f64();
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let nodes =
                sqlx::query("DELETE FROM data_planes WHERE last_seen < now() - make_interval(secs => $1)")
                    .bind(secs)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            let reports =
                sqlx::query("DELETE FROM reports WHERE received_at < now() - make_interval(secs => $1)")
                    .bind(secs)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            tx.commit().await?;
            Ok((nodes, reports))
        })
        .await
    }

    pub async fn head(&self, fleet: &str) -> Result<Option<VersionRow>> {
        self.bounded(async {
            let row = sqlx::query(concat!(
                select_version!(),
                " WHERE v.fleet = $1 AND v.version = (SELECT head_version FROM fleets WHERE name = $1)"
            ))
            .bind(fleet)
            .fetch_optional(&self.pool)
            .await?;
            row.map(version_row).transpose()
        })
        .await
    }

    pub async fn version(&self, fleet: &str, version: u64) -> Result<Option<VersionRow>> {
        self.bounded(async {
            let row = sqlx::query(concat!(select_version!(), " WHERE v.fleet = $1 AND v.version = $2"))
                .bind(fleet)
                .bind(version as i64)
                .fetch_optional(&self.pool)
                .await?;
            row.map(version_row).transpose()
        })
        .await
    }

    /// Newest first.
    pub async fn history(&self, fleet: &str, limit: usize) -> Result<Vec<VersionRow>> {
        self.bounded(async {
            let rows = sqlx::query(concat!(
                select_version!(),
                " WHERE v.fleet = $1 ORDER BY v.version DESC LIMIT $2"
            ))
            .bind(fleet)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter().map(version_row).collect()
        })
        .await
    }

    /// In one transaction: locks the fleet's head, checks `numbering.expect_version`, lets `build`
    /// make the next version (numbered the head + 1, or `numbering.min_version` when higher; it
    /// must pass what the fleet's data planes serve, and by at most one) from the current head
    /// (`None`: nothing to store), stores it with its
    /// audit event, and announces it. Concurrent appends to one fleet queue on the head's lock,
    /// so with `expect_version` exactly one of them wins.
    pub async fn append_version(
        &self,
        fleet: &str,
        numbering: Numbering,
        during: DuringRollout<'_>,
        build: impl FnOnce(Option<&VersionRow>, &[String], u64) -> Result<Option<NewVersion>> + Send,
        audit: impl FnOnce(&VersionRow) -> AuditEntry + Send,
    ) -> Result<Appended> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("INSERT INTO fleets (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
                .bind(fleet)
                .execute(&mut *tx)
                .await?;
            let head: i64 = sqlx::query("SELECT head_version FROM fleets WHERE name = $1 FOR UPDATE")
                .bind(fleet)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            let head = head as u64;
            if let Some(expected) = numbering.expect_version
                && expected != head
            {
                return Ok(Err(Error::Conflict { expected, actual: head }));
            }
            // What the fleet's connected data planes serve: above the head only when the database
            // lost versions (restored from an older backup). A version numbered at or below it
            // would never reach them, or worse, share a number with different content. Only
            // connected ones: a node that claimed a version and was cut off (a revoked
            // certificate) stops holding up the fleet.
            let served: i64 = sqlx::query(
                "SELECT COALESCE(MAX(active_version), 0) FROM data_planes WHERE fleet = $1 AND connected",
            )
                .bind(fleet)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            let served = (served.max(0) as u64).min(MAX_VERSION);
            if numbering.min_version > served.max(head) + 1 {
                // Only to continue just above what data planes serve: a typo cannot make the
                // fleet's numbering jump.
                return Ok(Err(Error::FailedPrecondition(format!(
                    "--min-version {} is more than one above every version of `{fleet}` (the head is {head}, \
                     the highest a data plane serves is {served})",
                    numbering.min_version
                ))));
            }
            let mut version = (head + 1).max(numbering.min_version);
            if served > head && numbering.auto_above {
                // The leader's automatic rollback of a rollout: never held up.
                version = version.max(served + 1);
            }
            if served > head && matches!(during, DuringRollout::Start { .. }) {
                return Ok(Err(Error::FailedPrecondition(format!(
                    "data planes of `{fleet}` serve version {served}, above the fleet's head {head}: a rollout \
                     would start from the restored head; apply with --min-version {} --strategy all-at-once \
                     first (docs/failure-modes.md)",
                    served + 1
                ))));
            }
            if version <= served {
                return Ok(Err(Error::FailedPrecondition(format!(
                    "data planes of `{fleet}` serve version {served}, above the fleet's head {head}: was the \
                     database restored from an older backup? `sluice dataplanes` shows them AHEAD; apply \
                     with --min-version {} to continue above them (docs/failure-modes.md)",
                    served + 1
                ))));
            }
            if matches!(during, DuringRollout::Refuse | DuringRollout::Start { .. })
                && let Some(r) =
                    sqlx::query(concat!("SELECT id, version, state FROM rollouts WHERE fleet = $1 AND ", unfinished!()))
                .bind(fleet)
                .fetch_optional(&mut *tx)
                .await?
            {
                let (id, version, state): (i64, i64, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                return Ok(Err(Error::FailedPrecondition(format!(
                    "rollout {id} of {fleet} version {version} is {state}: one version rolls out at a time; \
                     promote or abort it first (`sluice rollout promote|abort`)"
                ))));
            }
            if let DuringRollout::Start { required: true, .. } = during
                && head == 0
            {
                return Ok(Err(Error::FailedPrecondition(format!(
                    "fleet `{fleet}` has no version yet, so there is nothing to roll out from: \
                     apply its first version without a rollout"
                ))));
            }
            let current = match head {
                0 => None,
                v => Some(version_row(
                    sqlx::query(concat!(select_version!(), " WHERE v.fleet = $1 AND v.version = $2"))
                        .bind(fleet)
                        .bind(v as i64)
                        .fetch_one(&mut *tx)
                        .await?,
                )?),
            };
            // The active signing keys, stable until this commits (a rotation waits for it).
            sqlx::query("SELECT pg_advisory_xact_lock_shared($1)").bind(keys::KEYS_LOCK).execute(&mut *tx).await?;
            let active = keys::active_keys(&mut tx).await?;
            let new = match build(current.as_ref(), &active, version) {
                Ok(Some(new)) => new,
                Ok(None) => {
                    let head = current.ok_or_else(|| sqlx::Error::Protocol("nothing to keep".into()))?;
                    return Ok(Ok(Appended { head, created: false, rollout: None }));
                }
                Err(e) => return Ok(Err(e)),
            };
            let signatures = signatures_json(&new.signatures);
            sqlx::query(
                "INSERT INTO versions (fleet, version, payload, signatures, sha256, parent_version, author, message, origin, key_id) \
                 VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, $8, $9, $10)",
            )
            .bind(fleet)
            .bind(version as i64)
            .bind(&new.payload)
            .bind(&signatures)
            .bind(&new.sha256)
            .bind(head as i64)
            .bind(&new.author)
            .bind(&new.message)
            .bind(&new.origin)
            .bind(&new.key_id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE fleets SET head_version = $2 WHERE name = $1")
                .bind(fleet)
                .bind(version as i64)
                .execute(&mut *tx)
                .await?;
            let row = version_row(
                sqlx::query(concat!(select_version!(), " WHERE v.fleet = $1 AND v.version = $2"))
                    .bind(fleet)
                    .bind(version as i64)
                    .fetch_one(&mut *tx)
                    .await?,
            )?;
            let entry = audit(&row);
            append_audit(&mut tx, &entry).await?;
            let rollout = match during {
                DuringRollout::Start { strategy, .. } if head > 0 => {
                    Some(rollouts::insert(&mut tx, &row, head, strategy, &entry.actor).await?)
                }
                DuringRollout::Abort { actor } => {
                    rollouts::request(&mut tx, fleet, "abort", actor).await?;
                    None
                }
                _ => None,
            };
            // Delivered to every listening control plane when (and only if) this commits.
            sqlx::query("SELECT pg_notify($1, $2)").bind(VERSIONS_CHANNEL).bind(fleet).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Ok(Appended { head: row, created: true, rollout }))
        })
        .await?
    }

    /// Appends one audit event on its own (refused access, aggregated by the caller).
    pub async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            append_audit(&mut tx, entry).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Records a NACK on the data plane and in the audit trail.
    pub async fn record_nack(
        &self,
        fleet: &str,
        node_id: &str,
        version: u64,
        reason: &str,
        details: &[(String, String)],
    ) -> Result<()> {
        let details_json = serde_json::Value::Array(
            details.iter().map(|(p, m)| serde_json::json!({"path": p, "message": m})).collect(),
        );
        let entry = AuditEntry {
            actor: format!("data-plane:{node_id}"),
            action: "nack".into(),
            fleet: fleet.into(),
            version: Some(version),
            detail: serde_json::json!({"reason": reason, "details": details_json}),
        };
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "UPDATE data_planes SET last_nack_version = $3, last_nack_reason = $4, last_nack_details = $5::jsonb, \
                 last_seen = now() WHERE fleet = $1 AND node_id = $2",
            )
            .bind(fleet)
            .bind(node_id)
            .bind(version as i64)
            .bind(reason)
            .bind(details_json.to_string())
            .execute(&mut *tx)
            .await?;
            append_audit(&mut tx, &entry).await?;
            tx.commit().await
        })
        .await
    }

    /// Writes what data planes said since the last batch, one merged entry per node, in one
    /// transaction: a node with a hello is inserted or updated whole, every other field is set
    /// only where the batch has it, and a report is kept unless a newer one (by the node's `at`)
    /// is already stored, so a report that a previous stream delivers late does not overwrite a
    /// fresh one. Every node in the batch counts as seen now.
    pub async fn record_facts(&self, batch: &[(NodeKey, NodeFacts)]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let hellos: Vec<_> = batch.iter().filter_map(|(k, f)| Some((k, f.hello.as_ref()?, f))).collect();
        let reports: Vec<_> = batch.iter().filter_map(|(k, f)| Some((k, f.report.as_ref()?))).collect();
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            if !hellos.is_empty() {
                sqlx::query(
                    "INSERT INTO data_planes (fleet, node_id, labels, build, active_version, connected, last_seen) \
                     SELECT fleet, node_id, labels, build, active_version, connected, now() \
                     FROM UNNEST($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::bigint[], $6::bool[]) \
                     AS h(fleet, node_id, labels, build, active_version, connected) \
                     ON CONFLICT (fleet, node_id) DO UPDATE SET labels = EXCLUDED.labels, build = EXCLUDED.build, \
                     active_version = EXCLUDED.active_version, connected = EXCLUDED.connected, last_seen = now()",
                )
                .bind(hellos.iter().map(|(k, ..)| k.fleet.as_str()).collect::<Vec<_>>())
                .bind(hellos.iter().map(|(k, ..)| k.node_id.as_str()).collect::<Vec<_>>())
                .bind(hellos.iter().map(|(_, h, _)| serde_json::to_string(&h.labels).unwrap_or_else(|_| "{}".into())).collect::<Vec<_>>())
                .bind(hellos.iter().map(|(_, h, _)| h.build.as_str()).collect::<Vec<_>>())
                .bind(hellos.iter().map(|(_, h, f)| f.active_version.unwrap_or(h.active_version) as i64).collect::<Vec<_>>())
                .bind(hellos.iter().map(|(.., f)| f.connected.unwrap_or(true)).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "UPDATE data_planes d SET \
                 active_version = COALESCE(u.active_version, d.active_version), \
                 last_ack_version = COALESCE(u.last_ack_version, d.last_ack_version), \
                 connected = COALESCE(u.connected, d.connected), \
                 freshness_expires_at = COALESCE(u.freshness_expires_at, d.freshness_expires_at), \
                 trust_version = COALESCE(u.trust_version, d.trust_version), \
                 signature_key_ids = COALESCE(u.signature_key_ids, d.signature_key_ids), \
                 last_seen = now() \
                 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bool[], $6::bigint[], \
                 $7::bigint[], $8::text[]) AS u(fleet, node_id, active_version, last_ack_version, connected, \
                 freshness_expires_at, trust_version, signature_key_ids) \
                 WHERE d.fleet = u.fleet AND d.node_id = u.node_id",
            )
            .bind(batch.iter().map(|(k, _)| k.fleet.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|(k, _)| k.node_id.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|(_, f)| f.active_version.map(|v| v as i64)).collect::<Vec<_>>())
            .bind(batch.iter().map(|(_, f)| f.last_ack_version.map(|v| v as i64)).collect::<Vec<_>>())
            .bind(batch.iter().map(|(_, f)| f.connected).collect::<Vec<_>>())
            .bind(batch.iter().map(|(_, f)| f.report_facts().map(|r| r.freshness_expires_at)).collect::<Vec<_>>())
            .bind(batch.iter().map(|(_, f)| f.report_facts().map(|r| r.trust_version as i64)).collect::<Vec<_>>())
            .bind(batch.iter().map(|(_, f)| f.report_facts().map(|r| r.signature_key_ids.join(","))).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
            if !reports.is_empty() {
                sqlx::query(
                    "INSERT INTO reports (fleet, node_id, at, active_version, report) \
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bytea[]) \
                     ON CONFLICT (fleet, node_id) DO UPDATE SET at = EXCLUDED.at, \
                     active_version = EXCLUDED.active_version, report = EXCLUDED.report, received_at = now() \
                     WHERE reports.at <= EXCLUDED.at",
                )
                .bind(reports.iter().map(|(k, _)| k.fleet.as_str()).collect::<Vec<_>>())
                .bind(reports.iter().map(|(k, _)| k.node_id.as_str()).collect::<Vec<_>>())
                .bind(reports.iter().map(|(_, (r, _))| r.at).collect::<Vec<_>>())
                .bind(reports.iter().map(|(_, (r, _))| r.active_version as i64).collect::<Vec<_>>())
                .bind(reports.iter().map(|(_, (_, bytes))| bytes.as_slice()).collect::<Vec<_>>())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })
        .await
    }

    /// The latest report of every data plane of `fleet`, by node id.
    pub async fn reports(&self, fleet: &str) -> Result<Vec<ReportRow>> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT r.node_id, r.at, r.active_version, r.report, COALESCE(d.connected, false) AS connected, \
                 EXTRACT(EPOCH FROM COALESCE(d.last_seen, r.received_at))::bigint AS last_seen \
                 FROM reports r LEFT JOIN data_planes d ON d.fleet = r.fleet AND d.node_id = r.node_id \
                 WHERE r.fleet = $1 ORDER BY r.node_id",
            )
            .bind(fleet)
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|r| {
                    Ok(ReportRow {
                        node_id: r.try_get("node_id")?,
                        at: r.try_get("at")?,
                        active_version: r.try_get::<i64, _>("active_version")? as u64,
                        report: r.try_get("report")?,
                        connected: r.try_get("connected")?,
                        last_seen: r.try_get("last_seen")?,
                    })
                })
                .collect()
        })
        .await
    }

    pub async fn data_planes(&self, fleet: Option<&str>) -> Result<Vec<DataPlaneRow>> {
        self.bounded(async {
            let rows = sqlx::query(
                "SELECT d.fleet, d.node_id, d.labels::text AS labels, d.build, d.active_version, \
                 COALESCE(f.head_version, 0) AS head_version, d.last_ack_version, d.last_nack_version, \
                 d.last_nack_reason, d.last_nack_details::text AS last_nack_details, d.connected, \
                 EXTRACT(EPOCH FROM d.last_seen)::bigint AS last_seen, d.freshness_expires_at, d.trust_version, d.signature_key_ids \
                 FROM data_planes d LEFT JOIN fleets f ON f.name = d.fleet \
                 WHERE $1::text IS NULL OR d.fleet = $1 ORDER BY d.fleet, d.node_id",
            )
            .bind(fleet)
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|r| {
                    let details: Vec<serde_json::Value> =
                        serde_json::from_str(&r.try_get::<String, _>("last_nack_details")?)
                            .unwrap_or_default();
                    Ok(DataPlaneRow {
                        fleet: r.try_get("fleet")?,
                        node_id: r.try_get("node_id")?,
                        labels: serde_json::from_str(&r.try_get::<String, _>("labels")?).unwrap_or_default(),
                        build: r.try_get("build")?,
                        active_version: r.try_get::<i64, _>("active_version")? as u64,
                        head_version: r.try_get::<i64, _>("head_version")? as u64,
                        last_ack_version: r.try_get::<i64, _>("last_ack_version")? as u64,
                        last_nack_version: r.try_get::<i64, _>("last_nack_version")? as u64,
                        last_nack_reason: r.try_get("last_nack_reason")?,
                        last_nack_details: details
                            .iter()
                            .map(|d| {
                                let s = |k: &str| {
                                    d.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned()
                                };
                                (s("path"), s("message"))
                            })
                            .collect(),
                        connected: r.try_get("connected")?,
                        last_seen: r.try_get("last_seen")?,
                        freshness_expires_at: r.try_get("freshness_expires_at")?,
                        trust_version: r.try_get::<i64, _>("trust_version")? as u64,
                        signature_key_ids: r
                            .try_get::<String, _>("signature_key_ids")?
                            .split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned)
                            .collect(),
                    })
                })
                .collect()
        })
        .await
    }

    /// Audit events matching `filter`, newest first, and whether the whole chain checks out.
    pub async fn audit(&self, filter: &AuditFilter) -> Result<(Vec<AuditRow>, ChainProblem)> {
        let all = self
            .bounded(async {
                let rows = sqlx::query(
                    "SELECT id, at, actor, action, fleet, version, detail, prev_hash, hash FROM audit_events ORDER BY id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|r| {
                        Ok(AuditRow {
                            id: r.try_get::<i64, _>("id")? as u64,
                            at: r.try_get("at")?,
                            actor: r.try_get("actor")?,
                            action: r.try_get("action")?,
                            fleet: r.try_get("fleet")?,
                            version: r.try_get::<Option<i64>, _>("version")?.map(|v| v as u64),
                            detail: r.try_get("detail")?,
                            prev_hash: r.try_get("prev_hash")?,
                            hash: r.try_get("hash")?,
                        })
                    })
                    .collect::<std::result::Result<Vec<_>, sqlx::Error>>()
            })
            .await?;
        let problem = check_chain(&all);
        let mut rows: Vec<AuditRow> = all
            .into_iter()
            .rev()
            .filter(|r| filter.fleet.as_ref().is_none_or(|f| *f == r.fleet))
            .filter(|r| filter.since.is_none_or(|s| r.at >= s))
            .filter(|r| filter.actor.as_ref().is_none_or(|a| *a == r.actor))
            .filter(|r| filter.action.as_ref().is_none_or(|a| *a == r.action))
            .collect();
        rows.truncate(filter.limit.max(1));
        Ok((rows, problem))
    }
}

/// Signatures stored as a JSON array of `{key_id, signature (hex)}`.
fn parse_signatures(json: &str) -> Vec<Signature> {
    let list: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    list.iter()
        .filter_map(|s| {
            Some(Signature {
                key_id: s.get("key_id")?.as_str()?.to_owned(),
                signature: unhex(s.get("signature")?.as_str()?)?,
            })
        })
        .collect()
}

fn version_row(r: sqlx::postgres::PgRow) -> std::result::Result<VersionRow, sqlx::Error> {
    // The signatures made when it was stored, then those a key rotation added.
    let mut signatures = parse_signatures(&r.try_get::<String, _>("signatures")?);
    signatures.extend(parse_signatures(&r.try_get::<String, _>("added_signatures")?));
    Ok(VersionRow {
        fleet: r.try_get("fleet")?,
        version: r.try_get::<i64, _>("version")? as u64,
        payload: bytes::Bytes::from(r.try_get::<Vec<u8>, _>("payload")?),
        signatures,
        sha256: r.try_get("sha256")?,
        parent_version: r.try_get::<i64, _>("parent_version")? as u64,
        author: r.try_get("author")?,
        message: r.try_get("message")?,
        origin: r.try_get("origin")?,
        key_id: r.try_get("key_id")?,
        created_at: r.try_get("created_at")?,
    })
}

fn signatures_json(signatures: &[Signature]) -> String {
    serde_json::Value::Array(
        signatures
            .iter()
            .map(|s| serde_json::json!({"key_id": s.key_id, "signature": hex(&s.signature)}))
            .collect(),
    )
    .to_string()
}

/// The node was heard from now, and is (or no longer is) connected.
async fn append_audit(tx: &mut PgConnection, e: &AuditEntry) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(AUDIT_LOCK).execute(&mut *tx).await?;
    let prev: String = sqlx::query("SELECT hash FROM audit_events ORDER BY id DESC LIMIT 1")
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?
        .unwrap_or_default();
    let at = unix_now();
    let detail = e.detail.to_string();
    let hash = chain_hash(&prev, at, &e.actor, &e.action, &e.fleet, e.version, &detail);
    sqlx::query(
        "INSERT INTO audit_events (at, actor, action, fleet, version, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(at)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.fleet)
    .bind(e.version.map(|v| v as i64))
    .bind(detail)
    .bind(prev)
    .bind(hash)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A row's hash: SHA-256 over the previous hash and the row's fields, one per line.
fn chain_hash(
    prev: &str,
    at: i64,
    actor: &str,
    action: &str,
    fleet: &str,
    version: Option<u64>,
    detail: &str,
) -> String {
    let version = version.map(|v| v.to_string()).unwrap_or_default();
    let text = format!("{prev}\n{at}\n{actor}\n{action}\n{fleet}\n{version}\n{detail}");
    hex(&Sha256::digest(text.as_bytes()))
}

/// Walks the chain from the first row; the first break found, if any.
fn check_chain(rows: &[AuditRow]) -> ChainProblem {
    let mut prev = String::new();
    for r in rows {
        if r.prev_hash != prev {
            return Some(format!("event {} does not follow from the one before it", r.id));
        }
        let expected = chain_hash(&r.prev_hash, r.at, &r.actor, &r.action, &r.fleet, r.version, &r.detail);
        if r.hash != expected {
            return Some(format!("event {} was altered after it was written", r.id));
        }
        prev = r.hash.clone();
    }
    None
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

mod keys;
mod rollouts;

pub use keys::{KEYS_CHANGED, KeyRow, TrustRow};
pub use rollouts::{Leadership, PlanState, ROLLOUT_STATES, RolloutRow, Transition, UNFINISHED};

#[cfg(test)]
mod tests;
