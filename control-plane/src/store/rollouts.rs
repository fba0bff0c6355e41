//! Rollouts in PostgreSQL: the rollout rows, the data planes each has moved, and the leader term
//! that fences every write. The state machine's rules live in `crate::rollout`; here a change is
//! only a compare-and-set: it happens if the rollout is in the state the caller expects and the
//! caller's term is still the leader's, together with its audit row, or not at all.

use sqlx::{PgConnection, Row};

use super::{AuditEntry, Store, VERSIONS_CHANNEL, VersionRow, append_audit, version_row};
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
    /// An operator action awaiting the leader (`pause`, `resume`, `promote`, `abort`), or empty.
    pub requested: String,
    pub requested_by: String,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// Traffic counters when the step began (`crate::rollout::Snapshot` as JSON).
    pub step_baseline: serde_json::Value,
    /// Seconds the current step has run, by the database's clock (the one that started it), so
    /// control planes with skewed clocks agree.
    pub step_elapsed: f64,
}

/// States a rollout is still running in.
pub const UNFINISHED: [&str; 4] = ["pending", "progressing", "paused", "rolling_back"];
/// Every state, in the order of the state machine.
pub const ROLLOUT_STATES: [&str; 7] =
    ["pending", "progressing", "paused", "rolling_back", "succeeded", "failed", "aborted"];

impl RolloutRow {
    pub fn unfinished(&self) -> bool {
        UNFINISHED.contains(&self.state.as_str())
    }

    /// Whether it holds the data planes it has not moved on `from_version` while the fleet's
    /// head is `head`: while it runs, and after it rolled back (to that head), so those data
    /// planes are never sent the rollback's content, which they already serve.
    pub fn holds(&self, head: u64) -> bool {
        self.unfinished()
            || self.rollback_version == Some(head)
            || (head == self.version && self.state != "succeeded")
    }
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
    /// The operator's request this carries out is done: clear it.
    pub clear_request: bool,
    /// With `restart_step`: the traffic counters the new step is judged against.
    pub step_baseline: Option<serde_json::Value>,
    /// The operator request the caller saw (empty: none): a request made since refuses the
    /// change, so it is never cleared unseen.
    pub expect_request: String,
}

/// A fleet's head and what its latest rollout holds back, read in one snapshot.
#[derive(Debug, Clone)]
pub struct PlanState {
    pub head: VersionRow,
    /// The latest rollout when it holds data planes back (`RolloutRow::holds`), with the version
    /// they stay on and the data planes it has moved.
    pub hold: Option<(RolloutRow, Option<VersionRow>, Vec<String>)>,
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
         EXTRACT(EPOCH FROM step_started_at)::BIGINT, reason, rollback_version, term, created_by, \
         requested, requested_by, EXTRACT(EPOCH FROM created_at)::BIGINT, \
         EXTRACT(EPOCH FROM updated_at)::BIGINT, step_baseline::text, \
         EXTRACT(EPOCH FROM now() - step_started_at)::FLOAT8 FROM rollouts"
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
            let Some(id) = insert_pending(&mut tx, fleet, version, from_version, strategy, actor).await?
            else {
                return Ok(None);
            };
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

    /// The fleet's head and its latest rollout's hold, consistent with each other: a rollback
    /// and the end of its rollout are either both seen or neither. `None` without versions.
    pub async fn plan_state(&self, fleet: &str) -> Result<Option<PlanState>> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .execute(&mut *tx)
                .await?;
            let head = sqlx::query(concat!(
                select_version!(),
                " WHERE v.fleet = $1 AND v.version = (SELECT head_version FROM fleets WHERE name = $1)"
            ))
            .bind(fleet)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(head) = head.map(version_row).transpose()? else { return Ok(None) };
            let latest =
                sqlx::query(concat!(select_rollout!(), " WHERE fleet = $1 ORDER BY id DESC LIMIT 1"))
                    .bind(fleet)
                    .fetch_optional(&mut *tx)
                    .await?;
            let hold = match latest.as_ref().map(rollout_row).transpose()? {
                Some(r) if r.holds(head.version) => {
                    let base =
                        sqlx::query(concat!(select_version!(), " WHERE v.fleet = $1 AND v.version = $2"))
                            .bind(fleet)
                            .bind(r.from_version as i64)
                            .fetch_optional(&mut *tx)
                            .await?
                            .map(version_row)
                            .transpose()?;
                    let moved = sqlx::query("SELECT node_id FROM rollout_nodes WHERE rollout_id = $1")
                        .bind(r.id as i64)
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map(|n| n.try_get(0))
                        .collect::<std::result::Result<Vec<String>, _>>()?;
                    Some((r, base, moved))
                }
                _ => None,
            };
            tx.commit().await?;
            Ok(Some(PlanState { head, hold }))
        })
        .await
    }

    /// Every unfinished rollout: what a new leader resumes.
    pub async fn unfinished_rollouts(&self) -> Result<Vec<RolloutRow>> {
        self.bounded(async {
            let rows = sqlx::query(concat!(select_rollout!(), " WHERE ", unfinished!(), " ORDER BY id"))
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
                     step_started_at = CASE WHEN $7 THEN now() ELSE step_started_at END, \
                     requested = CASE WHEN $9 THEN '' ELSE requested END, \
                     requested_by = CASE WHEN $9 THEN '' ELSE requested_by END, \
                     step_baseline = COALESCE($10::jsonb, step_baseline) \
                 WHERE id = $1 AND state = $8 AND requested = $11 \
                     AND $2 = (SELECT term FROM rollout_leader WHERE id = 1 FOR SHARE) \
                 RETURNING fleet",
            )
            .bind(t.id as i64)
            .bind(term as i64)
            .bind(t.to_state)
            .bind(t.step as i32)
            .bind(&t.reason)
            .bind(t.rollback_version.map(|v| v as i64))
            .bind(t.restart_step)
            .bind(t.from_state)
            .bind(t.clear_request)
            .bind(t.step_baseline.as_ref().map(|b| b.to_string()))
            .bind(&t.expect_request)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(fleet) = changed.map(|r| r.try_get::<String, _>(0)).transpose()? else {
                return Ok(false);
            };
            append_audit(&mut tx, audit).await?;
            // Every control plane reloads the fleet's plan: who gets which version.
            announce(&mut tx, &fleet).await?;
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
            let fleet: String = sqlx::query("SELECT fleet FROM rollouts WHERE id = $1")
                .bind(rollout as i64)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
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
            announce(&mut tx, &fleet).await?;
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

    /// Records an operator's request for the leader to carry out on the fleet's unfinished
    /// rollout, audited. A pending request is not overwritten, except by `abort`. `None` when
    /// the fleet has no unfinished rollout; the row as it is when another request is pending.
    pub async fn request_rollout(
        &self,
        fleet: &str,
        action: &str,
        actor: &str,
    ) -> Result<Option<RolloutRow>> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let row = match request(&mut tx, fleet, action, actor).await? {
                Some(id) => fetch(&mut tx, id).await?,
                None => {
                    let row =
                        sqlx::query(concat!(select_rollout!(), " WHERE fleet = $1 AND ", unfinished!()))
                            .bind(fleet)
                            .fetch_optional(&mut *tx)
                            .await?;
                    row.as_ref().map(rollout_row).transpose()?
                }
            };
            tx.commit().await?;
            Ok(row)
        })
        .await
    }

    /// The strategy applies of `fleet` use when they name none.
    pub async fn default_strategy(&self, fleet: &str) -> Result<Option<serde_json::Value>> {
        self.bounded(async {
            let row = sqlx::query("SELECT default_strategy::text FROM fleets WHERE name = $1")
                .bind(fleet)
                .fetch_optional(&self.pool)
                .await?;
            let text: Option<String> = row.map(|r| r.try_get(0)).transpose()?.flatten();
            text.map(|t| serde_json::from_str(&t).map_err(|e| sqlx::Error::Decode(Box::new(e)))).transpose()
        })
        .await
    }

    /// Sets (`None`: clears) the fleet's default strategy, audited.
    pub async fn set_default_strategy(
        &self,
        fleet: &str,
        strategy: Option<&serde_json::Value>,
        actor: &str,
    ) -> Result<()> {
        self.bounded(async {
            let mut tx = self.pool.begin().await?;
            let text = strategy.map(|s| s.to_string());
            sqlx::query(
                "INSERT INTO fleets (name, default_strategy) VALUES ($1, $2::jsonb) \
                 ON CONFLICT (name) DO UPDATE SET default_strategy = EXCLUDED.default_strategy",
            )
            .bind(fleet)
            .bind(&text)
            .execute(&mut *tx)
            .await?;
            let entry = AuditEntry {
                actor: actor.to_owned(),
                action: "default-strategy".into(),
                fleet: fleet.to_owned(),
                version: None,
                detail: serde_json::json!({"strategy": strategy}),
            };
            append_audit(&mut tx, &entry).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Becomes the rollout leader if no other control plane is: takes the lock on a connection of
    /// its own and raises the term. `None` while another holds it.
    pub async fn try_lead(&self, holder: &str) -> Result<Option<Leadership>> {
        self.bounded(async {
            // A connection of its own, kept between tries so a follower asking every second does
            // not open one each time; never a pooled one, which could go back to the pool holding
            // the lock if this were cancelled (timed out) just after the server granted it. Taken
            // out while in use: a cancelled try drops (closes) it, and the lock with it.
            let kept = self.candidate.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            let mut conn = match kept {
                Some(c) => c,
                None => self.pool.acquire().await?.detach(),
            };
            let got: bool =
                sqlx::query("SELECT pg_try_advisory_lock($1)").bind(LEADER_LOCK).fetch_one(&mut conn).await?.try_get(0)?;
            if !got {
                *self.candidate.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn);
                return Ok(None);
            }
            // The lock lives as long as this session. If the leader's host vanishes, the server
            // would keep the session (and the lock) until the kernel's keepalive gives up, two
            // hours by default: probe it within seconds instead, so another replica takes over
            // in about half a minute. (Ignored on a Unix socket, where death is seen at once.)
            for set in ["SET tcp_keepalives_idle = 10", "SET tcp_keepalives_interval = 5", "SET tcp_keepalives_count = 3"] {
                sqlx::query(set).execute(&mut conn).await?;
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

/// Records a pending rollout of `version` with its audit row, unless the fleet has an unfinished
/// one (`None`).
async fn insert_pending(
    tx: &mut PgConnection,
    fleet: &str,
    version: u64,
    from_version: u64,
    strategy: &serde_json::Value,
    actor: &str,
) -> std::result::Result<Option<i64>, sqlx::Error> {
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
        detail: serde_json::json!({
            "rollout": id,
            "state": "pending",
            "reason": format!("rollout of version {version} from {from_version} requested by {actor}"),
            "from_version": from_version,
            "strategy": strategy,
        }),
    };
    append_audit(tx, &entry).await?;
    Ok(Some(id))
}

/// The rollout of the version `row` just stored, from `from_version`, inside the apply's
/// transaction (which has checked that no other is unfinished).
pub(super) async fn insert(
    tx: &mut PgConnection,
    row: &VersionRow,
    from_version: u64,
    strategy: &serde_json::Value,
    actor: &str,
) -> std::result::Result<u64, sqlx::Error> {
    let id = insert_pending(tx, &row.fleet, row.version, from_version, strategy, actor).await?;
    id.map(|id| id as u64).ok_or_else(|| sqlx::Error::Protocol("another rollout is unfinished".into()))
}

/// Sets an operator's request on the fleet's unfinished rollout, with its audit row; the
/// rollout's id, or `None` if there is none or another request is pending (and this is not
/// `abort`, which takes precedence).
pub(super) async fn request(
    tx: &mut PgConnection,
    fleet: &str,
    action: &str,
    actor: &str,
) -> std::result::Result<Option<i64>, sqlx::Error> {
    let updated = sqlx::query(concat!(
        "UPDATE rollouts SET requested = $2, requested_by = $3, updated_at = now() WHERE fleet = $1 AND ",
        unfinished!(),
        " AND (requested = '' OR $2 = 'abort') RETURNING id, version"
    ))
    .bind(fleet)
    .bind(action)
    .bind(actor)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(r) = updated else { return Ok(None) };
    let (id, version): (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
    let entry = AuditEntry {
        actor: actor.to_owned(),
        action: "rollout-request".into(),
        fleet: fleet.to_owned(),
        version: Some(version as u64),
        detail: serde_json::json!({"rollout": id, "request": action}),
    };
    append_audit(tx, &entry).await?;
    Ok(Some(id))
}

/// Wakes every control plane to reload `fleet`'s plan when (and only if) the transaction commits.
async fn announce(tx: &mut PgConnection, fleet: &str) -> std::result::Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(VERSIONS_CHANNEL).bind(fleet).execute(&mut *tx).await?;
    Ok(())
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
        requested: r.try_get(12)?,
        requested_by: r.try_get(13)?,
        created_at: r.try_get(14)?,
        updated_at: r.try_get(15)?,
        step_baseline: {
            let text: String = r.try_get(16)?;
            serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))?
        },
        step_elapsed: r.try_get::<f64, _>(17)?.max(0.0),
    })
}

#[cfg(test)]
mod tests;
