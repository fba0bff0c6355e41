//! Rollouts in PostgreSQL: the rollout rows, the data planes each has moved, and the leader term
//! that fences every write. The state machine's rules live in `crate::rollout`; here a change is
//! only a compare-and-set: it happens if the rollout is in the state the caller expects and the
//! caller's term is still the leader's, together with its audit row, or not at all.

use sqlx::{PgConnection, Row};

use super::{AuditEntry, Store, append_audit};
use crate::error::Result;

/// Session advisory lock key held by the control plane that drives rollouts.
const LEADER_LOCK: i64 = 0x5_11CE_1EAD;

/// A rollout as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRow {
    pub id: u64,
    pub fleet: String,
    pub version: u64,
    pub from_version: u64,
    pub strategy: serde_json::Value,
    /// `pending`, `progressing`, `paused`, `rolling_back`, `succeeded`, `failed` or `aborted`.
    pub state: String,
    pub step: u32,
    /// Unix seconds the current step began.
    pub step_started_at: i64,
    pub reason: String,
    pub rollback_version: Option<u64>,
    pub term: u64,
    pub created_by: String,
}

/// A change of one rollout, applied only from `from_state` and under the caller's term.
#[derive(Debug, Clone)]
pub struct Transition {
    pub id: u64,
    pub from_state: &'static str,
    pub to_state: &'static str,
    pub step: u32,
    /// The step starts (again) now: its bake and deadline count from here.
    pub restart_step: bool,
    pub reason: String,
    pub rollback_version: Option<u64>,
}

/// This control plane drives rollouts while it holds this: a session advisory lock on a
/// connection of its own (released when dropped, or when the database ends the session).
pub struct Leadership {
    conn: PgConnection,
    pub term: u64,
}

/// The columns of a rollout row, in `rollout_row`'s order.
macro_rules! select_rollout {
    () => {
        "SELECT id, fleet, version, from_version, strategy::text, state, step, \
         EXTRACT(EPOCH FROM step_started_at)::BIGINT, reason, rollback_version, term, created_by FROM rollouts"
    };
}

// === impl Store ===

impl Store {
    /// Records a new rollout of `version`, pending. `None` when the fleet already has an
    /// unfinished one.
    pub async fn start_rollout(
        &self,
        fleet: &str,
        version: u64,
        from_version: u64,
        strategy: &serde_json::Value,
        actor: &str,
    ) -> Result<Option<RolloutRow>> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO rollouts (fleet, version, from_version, strategy, state, created_by) \
                 VALUES ($1, $2, $3, $4::jsonb, 'pending', $5) ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(fleet)
            .bind(version as i64)
            .bind(from_version as i64)
            .bind(strategy.to_string())
            .bind(actor)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = inserted.map(|r| r.try_get::<i64, _>(0)).transpose()? else {
                return Ok(None);
            };
            let entry = AuditEntry {
                actor: actor.to_owned(),
                action: "rollout".into(),
                fleet: fleet.to_owned(),
                version: Some(version),
                detail: serde_json::json!({"rollout": id, "state": "pending", "from_version": from_version, "strategy": strategy}),
            };
            append_audit(&mut tx, &entry).await?;
            let row = fetch(&mut tx, id).await?;
            tx.commit().await?;
            Ok(row)
        })
        .await
    }

    pub async fn rollout(&self, id: u64) -> Result<Option<RolloutRow>> {
        self.bounded(async {
            let mut conn = self.pool.acquire().await?;
            fetch(&mut conn, id as i64).await
        })
        .await
    }

    /// The fleet's newest rollout, finished or not.
    pub async fn latest_rollout(&self, fleet: &str) -> Result<Option<RolloutRow>> {
        self.bounded(async {
            let row = sqlx::query(concat!(select_rollout!(), " WHERE fleet = $1 ORDER BY id DESC LIMIT 1"))
                .bind(fleet)
                .fetch_optional(&self.pool)
                .await?;
            row.map(|r| rollout_row(&r)).transpose()
        })
        .await
    }

    /// Every unfinished rollout: what a new leader resumes.
    pub async fn unfinished_rollouts(&self) -> Result<Vec<RolloutRow>> {
        self.bounded(async {
            let rows = sqlx::query(concat!(
                select_rollout!(),
                " WHERE state IN ('pending', 'progressing', 'paused', 'rolling_back') ORDER BY id"
            ))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(rollout_row).collect()
        })
        .await
    }

    /// Applies `t` with its audit row if the rollout is in `t.from_state` and `term` is still the
    /// leader's; says whether it did.
    pub async fn transition_rollout(&self, term: u64, t: &Transition, audit: &AuditEntry) -> Result<bool> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let changed = sqlx::query(
                "UPDATE rollouts SET state = $3, step = $4, reason = $5, \
                     rollback_version = COALESCE($6, rollback_version), term = $2, updated_at = now(), \
                     step_started_at = CASE WHEN $7 THEN now() ELSE step_started_at END \
                 WHERE id = $1 AND state = $8 AND $2 = (SELECT term FROM rollout_leader WHERE id = 1)",
            )
            .bind(t.id as i64)
            .bind(term as i64)
            .bind(t.to_state)
            .bind(t.step as i32)
            .bind(&t.reason)
            .bind(t.rollback_version.map(|v| v as i64))
            .bind(t.restart_step)
            .bind(t.from_state)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed != 1 {
                return Ok(false);
            }
            append_audit(&mut tx, audit).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Records that `nodes` were moved onto the rollout's version at `step` (under `term`).
    pub async fn cover_nodes(&self, term: u64, rollout: u64, step: u32, nodes: &[&str]) -> Result<bool> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let leads: bool = sqlx::query("SELECT term = $1 FROM rollout_leader WHERE id = 1 FOR SHARE")
                .bind(term as i64)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            if !leads {
                return Ok(false);
            }
            for node in nodes {
                sqlx::query(
                    "INSERT INTO rollout_nodes (rollout_id, node_id, step) VALUES ($1, $2, $3) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(rollout as i64)
                .bind(*node)
                .bind(step as i32)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// The data planes the rollout has moved, with the step that moved each, by node id.
    pub async fn covered_nodes(&self, rollout: u64) -> Result<Vec<(String, u32)>> {
        self.bounded(async {
            let rows =
                sqlx::query("SELECT node_id, step FROM rollout_nodes WHERE rollout_id = $1 ORDER BY node_id")
                    .bind(rollout as i64)
                    .fetch_all(&self.pool)
                    .await?;
            rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get::<i32, _>(1)? as u32))).collect()
        })
        .await
    }

    /// Becomes the rollout leader if no other control plane is: takes the lock on a connection of
    /// its own and raises the term. `None` while another holds it.
    pub async fn try_lead(&self, holder: &str) -> Result<Option<Leadership>> {
        self.bounded(async {
            let mut conn = self.pool.acquire().await?.detach();
            let got: bool =
                sqlx::query("SELECT pg_try_advisory_lock($1)").bind(LEADER_LOCK).fetch_one(&mut conn).await?.try_get(0)?;
            if !got {
                return Ok(None);
            }
            let term: i64 = sqlx::query(
                "UPDATE rollout_leader SET term = term + 1, holder = $1, since = now() WHERE id = 1 RETURNING term",
            )
            .bind(holder)
            .fetch_one(&mut conn)
            .await?
            .try_get(0)?;
            Ok(Some(Leadership { conn, term: term as u64 }))
        })
        .await
    }
}

// === impl Leadership ===

impl Leadership {
    /// Whether the session holding the lock is still alive (and with it the lock).
    pub async fn still_leads(&mut self, within: std::time::Duration) -> bool {
        matches!(
            tokio::time::timeout(within, sqlx::query("SELECT 1").execute(&mut self.conn)).await,
            Ok(Ok(_))
        )
    }
}

async fn fetch(conn: &mut PgConnection, id: i64) -> std::result::Result<Option<RolloutRow>, sqlx::Error> {
    let row =
        sqlx::query(concat!(select_rollout!(), " WHERE id = $1")).bind(id).fetch_optional(&mut *conn).await?;
    row.as_ref().map(rollout_row).transpose()
}

fn rollout_row(r: &sqlx::postgres::PgRow) -> std::result::Result<RolloutRow, sqlx::Error> {
    let strategy: String = r.try_get(4)?;
    Ok(RolloutRow {
        id: r.try_get::<i64, _>(0)? as u64,
        fleet: r.try_get(1)?,
        version: r.try_get::<i64, _>(2)? as u64,
        from_version: r.try_get::<i64, _>(3)? as u64,
        strategy: serde_json::from_str(&strategy).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        state: r.try_get(5)?,
        step: r.try_get::<i32, _>(6)? as u32,
        step_started_at: r.try_get(7)?,
        reason: r.try_get(8)?,
        rollback_version: r.try_get::<Option<i64>, _>(9)?.map(|v| v as u64),
        term: r.try_get::<i64, _>(10)? as u64,
        created_by: r.try_get(11)?,
    })
}

#[cfg(test)]
mod tests;
