//! The control plane's domain: validate, diff, apply, roll back, and read history, data planes,
//! traffic reports and audit. Knows nothing of gRPC.

use std::sync::Arc;
use std::time::Duration;

use sluice_bundle::diff::{Change, diff};
use sluice_bundle::sign::{LEGACY_EXPIRY_SECS, Payload, sha256_hex};
use sluice_bundle::{Config, ConfigErrors, Format, parse, parse_value};

use opentelemetry::trace::{Status, TraceContextExt as _};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::error::{Error, Result};
use crate::fleet::{FleetHub, Head, Hold, Pacer, Plan};
use crate::keys::Keyring;
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::report::{NodeTraffic, TrafficReport};
use crate::rollout::{Assessment, Inputs, strategy_of};
use crate::store::{
    AuditEntry, AuditFilter, AuditRow, ChainProblem, DataPlaneRow, DuringRollout, KeyRow, NewVersion,
    Numbering, RolloutRow, Store, VersionRow, unix_now,
};
use sluice_bundle::rollout::{Rollout, STRATEGY_NAMES, builtin, parse_rollout};

/// Operator actions on a rollout.
pub const ROLLOUT_ACTIONS: [&str; 4] = ["pause", "resume", "promote", "abort"];

/// Everything a request handler needs.
pub struct ControlPlane {
    pub store: Store,
    pub hub: Arc<FleetHub>,
    pub metrics: Metrics,
    /// The keys this replica signs with, the active set, freshness statements.
    pub keyring: Arc<Keyring>,
    /// Largest payload stored or pushed; told to data planes.
    pub max_bundle_bytes: usize,
    pub pacer: Pacer,
    /// Data planes' messages on their way to the database.
    pub recorder: Recorder,
}

/// Room for large pushes in flight at once: 1,000 data planes × 10 MiB would be 10 GiB.
const PUSH_BUDGET_BYTES: usize = 256 << 20;

/// A document to apply.
#[derive(Debug, Clone)]
pub struct ApplyInput {
    pub fleet: String,
    pub document: Vec<u8>,
    pub format: Format,
    pub expect_version: Option<u64>,
    /// The authenticated principal: the version's author and the audit trail's actor.
    pub author: String,
    /// What the client said about who it is (`--author`): a description, kept in the audit
    /// detail, never taken as the actor.
    pub described_as: String,
    pub message: String,
    pub rollout: RolloutChoice,
    /// The new version's number at least this (0: the head + 1); see `Store::append_version`.
    pub min_version: u64,
}

/// Who changed something: the authenticated principal, and what the client typed.
#[derive(Debug, Clone, Default)]
pub struct Author {
    pub principal: String,
    pub described_as: String,
}

/// How an applied version reaches the fleet.
#[derive(Debug, Clone, Default)]
pub enum RolloutChoice {
    /// The fleet's default strategy, or every data plane at once without one.
    #[default]
    FleetDefault,
    /// A strategy document.
    Document(Vec<u8>, Format),
    /// A built-in strategy (`sluice_bundle::rollout::STRATEGY_NAMES`).
    Named(String),
}

/// What an apply or rollback did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub head: VersionRow,
    /// The content equalled the head, so no version was made.
    pub unchanged: bool,
    /// The rollout that walks the version through the fleet, if one does.
    pub rollout: Option<u64>,
}

/// A rollout as `sluice rollout status` shows it.
#[derive(Debug, Clone)]
pub struct RolloutView {
    pub row: RolloutRow,
    pub strategy: Rollout,
    pub inputs: Inputs,
    pub assessment: Assessment,
}

/// A data plane's state relative to its fleet's head, as `sluice dataplanes` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    Synced,
    Stale,
    Nacked,
    /// Serving the version meant for it, but its freshness statement has lapsed.
    StaleFreshness,
    /// Serving a version above the fleet's newest stored one: the database lost versions (a
    /// restore from an older backup, or another database). Nothing this control plane stores
    /// until its head passes that version can reach the node.
    Ahead,
    Disconnected,
}

// === impl ControlPlane ===

impl ControlPlane {
    pub fn new(store: Store, hub: Arc<FleetHub>, keyring: Arc<Keyring>, max_bundle_bytes: usize) -> Self {
        Self {
            store,
            hub,
            metrics: Metrics::default(),
            keyring,
            max_bundle_bytes,
            pacer: Pacer::new(PUSH_BUDGET_BYTES),
            recorder: Recorder::default(),
        }
    }

    /// Every signing key the database knows, and whether this replica holds it; then the keys
    /// this replica holds that the database does not know yet (state `held`: ready to activate).
    pub async fn signing_keys(&self) -> Result<Vec<(KeyRow, bool)>> {
        let held = self.keyring.held();
        let rows = self.store.signing_keys().await?;
        let unknown: Vec<KeyRow> = held
            .iter()
            .filter(|(id, _)| !rows.iter().any(|r| r.key_id == *id))
            .map(|(id, public)| KeyRow {
                key_id: id.clone(),
                public_key: public.clone(),
                state: "held".into(),
                added_by: String::new(),
                added_at: 0,
                retired_by: String::new(),
                retired_at: None,
            })
            .collect();
        Ok(rows
            .into_iter()
            .chain(unknown)
            .map(|r| {
                let has = held.iter().any(|(id, _)| *id == r.key_id);
                (r, has)
            })
            .collect())
    }

    /// Makes a held key active: it signs every version from now on, and at once the versions in
    /// use, whose new signatures every replica pushes. The versions it signed.
    pub async fn activate_key(&self, key_id: &str, actor: &str) -> Result<Vec<(String, u64)>> {
        let (public, sign) = self.keyring.signer(key_id)?;
        let signed = self.store.activate_key(key_id, &public, actor, sign).await?;
        self.keyring.refresh(&self.store).await?;
        tracing::info!(key_id, actor, signed = signed.len(), "signing key activated");
        Ok(signed)
    }

    /// Retires an active key: nothing is signed with it again.
    pub async fn retire_key(&self, key_id: &str, actor: &str) -> Result<()> {
        self.store.retire_key(key_id, actor).await?;
        self.keyring.refresh(&self.store).await?;
        tracing::info!(key_id, actor, "signing key retired");
        Ok(())
    }

    /// The newest trust set, if one was published.
    pub async fn trust_set(&self) -> Result<Option<crate::store::TrustRow>> {
        self.store.latest_trust_set().await
    }

    /// Stores a root-signed trust set above the newest and pushes it to every data plane.
    pub async fn publish_trust_set(
        &self,
        statement: &sluice_proto::v1::SignedStatement,
        actor: &str,
    ) -> Result<u64> {
        let (version, keys, signatures) = self.keyring.check_trust_set(statement)?;
        let key_ids: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.store.publish_trust_set(version, &statement.statement, &signatures, &key_ids, actor).await?;
        self.keyring.refresh(&self.store).await?;
        tracing::info!(version, ?keys, actor, "trust set published");
        Ok(version)
    }

    /// Refuses a document over the bundle cap before parsing it.
    fn check_size(&self, what: &str, size: usize) -> Result<()> {
        if size > self.max_bundle_bytes {
            return Err(Error::InvalidArgument(format!(
                "{what} is {size} bytes, more than the {} byte bundle cap (--max-bundle-size); \
                 nothing was stored",
                self.max_bundle_bytes
            )));
        }
        Ok(())
    }

    /// Every problem in a document; empty when it is valid.
    pub fn validate(document: &[u8], format: Format) -> std::result::Result<Config, ConfigErrors> {
        let config = parse(document, format)?;
        compile(&config)?;
        Ok(config)
    }

    /// Changes from a stored version (the head by default) to `document`.
    pub async fn diff(
        &self,
        fleet: &str,
        document: &[u8],
        format: Format,
        against: Option<u64>,
    ) -> Result<(u64, Vec<Change>)> {
        let new = parse(document, format).map_err(Error::InvalidConfig)?;
        let base = match against {
            Some(v) => Some(self.version(fleet, Some(v)).await?),
            None => self.store.head(fleet).await?,
        };
        match base {
            None => Ok((0, diff(&empty_config(), &new))),
            Some(row) => Ok((row.version, diff(&config_of(&row)?, &new))),
        }
    }

    /// Validates, signs and stores the next version, unless it equals the head.
    pub async fn apply(&self, input: ApplyInput) -> Result<Applied> {
        self.check_size("the document", input.document.len())?;
        let config = validate_span().in_scope(|| {
            let config = parse(&input.document, input.format).map_err(Error::InvalidConfig)?;
            compile(&config).map_err(Error::InvalidConfig)?;
            Ok::<_, Error>(config)
        })?;
        let strategy = self.strategy(&input.fleet, &input.rollout).await?;
        let during = match &strategy {
            Some((strategy, required)) => DuringRollout::Start { strategy, required: *required },
            None => DuringRollout::Refuse,
        };
        let origin = "apply".to_owned();
        self.append(
            &input.fleet,
            Numbering {
                expect_version: input.expect_version,
                min_version: input.min_version,
                auto_above: false,
            },
            during,
            config,
            Author { principal: input.author, described_as: input.described_as },
            input.message,
            origin,
            "apply",
        )
        .await
    }

    /// The strategy an apply asked for, as stored, and whether it insisted on it (a fleet's
    /// default does not apply to its first version).
    async fn strategy(
        &self,
        fleet: &str,
        choice: &RolloutChoice,
    ) -> Result<Option<(serde_json::Value, bool)>> {
        let rollout = match choice {
            RolloutChoice::FleetDefault => {
                return Ok(self.store.default_strategy(fleet).await?.map(|s| (s, false)));
            }
            RolloutChoice::Document(bytes, format) => {
                Some(parse_rollout(bytes, *format).map_err(Error::InvalidConfig)?)
            }
            RolloutChoice::Named(name) => builtin(name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown strategy {name:?}; the built-in ones are {}",
                    STRATEGY_NAMES.join(", ")
                ))
            })?,
        };
        rollout
            .map(|r| serde_json::to_value(r).map(|v| (v, true)).map_err(|e| Error::Internal(e.to_string())))
            .transpose()
    }

    /// Publishes a new version with the content of `to_version`.
    pub async fn rollback(
        &self,
        fleet: &str,
        to_version: u64,
        expect_version: Option<u64>,
        author: Author,
        message: String,
    ) -> Result<Applied> {
        let target = self.version(fleet, Some(to_version)).await?;
        let config = config_of(&target)?;
        // Again: the data planes' compiler may have changed since the old version.
        validate_span().in_scope(|| compile(&config)).map_err(Error::InvalidConfig)?;
        let message = if message.is_empty() { format!("rollback to version {to_version}") } else { message };
        let origin = format!("rollback to {to_version}");
        // It ends the fleet's unfinished rollout, if there is one: the leader aborts it.
        let actor = if author.principal.is_empty() { "unknown".to_owned() } else { author.principal.clone() };
        let during = DuringRollout::Abort { actor: &actor };
        let numbering = Numbering { expect_version, min_version: 0, auto_above: false };
        self.append(fleet, numbering, during, config, author, message, origin, "rollback").await
    }

    /// The rollout leader's rollback of a failed or aborted rollout: the content of
    /// `from_version` as a new version, provided the head is still the rollout's `version`.
    pub async fn roll_back_rollout(
        &self,
        fleet: &str,
        from_version: u64,
        version: u64,
        message: String,
    ) -> Result<Applied> {
        let config = config_of(&self.version(fleet, Some(from_version)).await?)?;
        validate_span().in_scope(|| compile(&config)).map_err(Error::InvalidConfig)?;
        let origin = format!("rollback to {from_version}");
        let author = Author { principal: "rollout-leader".to_owned(), described_as: String::new() };
        // Above whatever data planes claim to serve: a rollback nothing may hold up.
        let numbering = Numbering { expect_version: Some(version), min_version: 0, auto_above: true };
        self.append(fleet, numbering, DuringRollout::Allow, config, author, message, origin, "rollback").await
    }

    /// The fleet's latest rollout, judged now.
    pub async fn rollout(&self, fleet: &str) -> Result<Option<RolloutView>> {
        let Some(row) = self.store.latest_rollout(fleet).await? else { return Ok(None) };
        let inputs = Inputs::read(&self.store, &row).await?;
        let assessment = inputs.assess(&row);
        Ok(Some(RolloutView { strategy: strategy_of(&row)?, row, inputs, assessment }))
    }

    /// Asks the rollout leader to `action` the fleet's unfinished rollout, and waits a few
    /// seconds for it to happen.
    pub async fn rollout_action(
        &self,
        fleet: &str,
        action: &str,
        actor: &str,
    ) -> Result<Option<RolloutView>> {
        if !ROLLOUT_ACTIONS.contains(&action) {
            return Err(Error::InvalidArgument(format!(
                "unknown rollout action {action:?}; one of {}",
                ROLLOUT_ACTIONS.join(", ")
            )));
        }
        let latest = self.store.latest_rollout(fleet).await?;
        let Some(current) = latest.filter(RolloutRow::unfinished) else {
            return Err(Error::FailedPrecondition(format!(
                "fleet `{fleet}` has no unfinished rollout to {action}"
            )));
        };
        let allowed = match action {
            "pause" => ["pending", "progressing"].contains(&current.state.as_str()),
            "resume" => current.state == "paused",
            "promote" => current.state != "rolling_back",
            _ => current.state != "rolling_back",
        };
        if !allowed {
            return Err(Error::FailedPrecondition(format!(
                "rollout {} is {}: it cannot be {}",
                current.id,
                current.state,
                match action {
                    "pause" => "paused",
                    "resume" => "resumed",
                    "promote" => "promoted",
                    _ => "aborted",
                }
            )));
        }
        let actor = if actor.is_empty() { "unknown" } else { actor };
        match self.store.request_rollout(fleet, action, actor).await? {
            None => {
                return Err(Error::FailedPrecondition(format!(
                    "fleet `{fleet}` has no unfinished rollout to {action}"
                )));
            }
            Some(r) if r.requested != action => {
                return Err(Error::FailedPrecondition(format!(
                    "rollout {} already has a request to {} by {} that the leader has not carried out yet",
                    r.id, r.requested, r.requested_by
                )));
            }
            Some(_) => {}
        }
        // The leader acts within a tick or two; answer with what it did, or with the request
        // still pending.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match self.store.rollout(current.id).await? {
                Some(r) if r.requested.is_empty() || r.state != current.state => break,
                _ => {}
            }
        }
        self.rollout(fleet).await
    }

    /// Sets (`None`: clears) the strategy the fleet's applies use when they name none.
    pub async fn set_default_strategy(
        &self,
        fleet: &str,
        choice: Option<&RolloutChoice>,
        actor: &str,
    ) -> Result<Option<serde_json::Value>> {
        check_fleet_name(fleet)?;
        let strategy = match choice {
            None | Some(RolloutChoice::FleetDefault) => None,
            Some(c) => self.strategy(fleet, c).await?.map(|(s, _)| s),
        };
        let actor = if actor.is_empty() { "unknown" } else { actor };
        self.store.set_default_strategy(fleet, strategy.as_ref(), actor).await?;
        Ok(strategy)
    }

    pub async fn default_strategy(&self, fleet: &str) -> Result<Option<serde_json::Value>> {
        self.store.default_strategy(fleet).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        fleet: &str,
        numbering: Numbering,
        during: DuringRollout<'_>,
        config: Config,
        author: Author,
        message: String,
        origin: String,
        action: &'static str,
    ) -> Result<Applied> {
        check_fleet_name(fleet)?;
        let Author { principal: author, described_as } = author;
        let author = if author.is_empty() { "unknown".to_owned() } else { author };
        // Sign and store, in one transaction.
        let storing = tracing::info_span!(
            "store version",
            sluice.fleet = fleet,
            sluice.version = tracing::field::Empty,
            sluice.created = tracing::field::Empty,
        );
        let config_json = serde_json::to_value(&config).map_err(|e| Error::Internal(e.to_string()))?;
        let keyring = &self.keyring;
        let fleet_owned = fleet.to_owned();
        let audit_author = author.clone();
        let appended = self
            .store
            .append_version(
                fleet,
                numbering,
                during,
                |head, active, version| {
                    // Unchanged: nothing to store, unless asked to number above the head.
                    if let Some(head) = head
                        && version == head.version + 1
                        && config_of(head)? == config
                    {
                        return Ok(None);
                    }
                    let now = unix_now();
                    let payload = Payload {
                        fleet: fleet_owned.clone(),
                        version,
                        parent_sha256: head.map(|h| h.sha256.clone()).unwrap_or_default(),
                        created_at: now,
                        // For data planes of earlier builds only; see LEGACY_EXPIRY_SECS.
                        expires_at: now + LEGACY_EXPIRY_SECS,
                        requires_freshness: true,
                        config: config_json.clone(),
                    }
                    .encode();
                    self.check_size("the signed bundle", payload.len())?;
                    let signatures = keyring.sign_payload(active, &payload)?;
                    Ok(Some(NewVersion {
                        sha256: sha256_hex(&payload),
                        signatures,
                        payload,
                        author: author.clone(),
                        message: message.clone(),
                        origin: origin.clone(),
                        key_id: active.join(","),
                    }))
                },
                |row| {
                    let mut detail = serde_json::json!({
                        "sha256": row.sha256,
                        "parent_version": row.parent_version,
                        "origin": row.origin,
                        "message": row.message,
                    });
                    if !described_as.is_empty() && described_as != audit_author {
                        detail["described_as"] = described_as.into();
                    }
                    AuditEntry {
                        actor: audit_author,
                        action: action.to_owned(),
                        fleet: row.fleet.clone(),
                        version: Some(row.version),
                        detail,
                    }
                },
            )
            .instrument(storing.clone())
            .await;
        match &appended {
            Ok(a) => {
                storing.record("sluice.version", a.head.version as i64);
                storing.record("sluice.created", a.created);
            }
            Err(e) => storing.set_status(Status::error(e.to_string())),
        }
        drop(storing);
        let appended = appended?;
        if appended.created {
            tracing::info!(fleet, version = appended.head.version, origin = %appended.head.origin, "version stored");
            // Pushes of it made now are children of the apply (the current span); those a
            // rollout makes later link to it (`fleet::push_span`).
            let apply = tracing::Span::current().context().span().span_context().clone();
            let publishing = tracing::info_span!(
                "publish",
                sluice.fleet = fleet,
                sluice.version = appended.head.version as i64
            );
            let head = Head::from_row(&appended.head, apply.is_valid().then_some(apply));
            let plan = async {
                Ok::<_, Error>(match appended.rollout {
                    // Nobody moves yet: the rollout leader moves the first step's data planes.
                    Some(rollout) => {
                        let base = self.store.version(fleet, appended.head.parent_version).await?;
                        let base = base.map(|b| Head::from_row(&b, None));
                        let hold = Hold { rollout, base, moved: Default::default(), finished: false };
                        Some(Arc::new(Plan { head, hold: Some(hold) }))
                    }
                    // A rollback may end a rollout: whom it reaches depends on that rollout.
                    None if matches!(during, DuringRollout::Allow | DuringRollout::Abort { .. }) => {
                        crate::fleet::plan(&self.store, fleet, Some(head)).await?
                    }
                    None => Some(Plan::all(head)),
                })
            }
            .instrument(publishing.clone())
            .await?;
            if let Some(plan) = plan {
                publishing.in_scope(|| self.hub.publish(plan));
            }
        }
        Ok(Applied { head: appended.head, unchanged: !appended.created, rollout: appended.rollout })
    }

    /// A stored version, the head when `version` is `None`.
    pub async fn version(&self, fleet: &str, version: Option<u64>) -> Result<VersionRow> {
        let row = match version {
            Some(v) => self.store.version(fleet, v).await?,
            None => self.store.head(fleet).await?,
        };
        row.ok_or_else(|| match version {
            Some(v) => Error::NotFound(format!("fleet `{fleet}` has no version {v}")),
            None => Error::NotFound(format!("fleet `{fleet}` has no versions yet")),
        })
    }

    pub async fn history(&self, fleet: &str, limit: usize) -> Result<Vec<VersionRow>> {
        self.store.history(fleet, limit.clamp(1, 1000)).await
    }

    pub async fn data_planes(&self, fleet: Option<&str>) -> Result<Vec<(DataPlaneRow, SyncState)>> {
        let rows = self.store.data_planes(fleet).await?;
        // In sync means serving what the fleet's plan has for it: a data plane a rollout holds
        // back is in sync on the version it is held on.
        let mut plans: std::collections::HashMap<String, Option<Arc<Plan>>> = Default::default();
        for r in &rows {
            if !plans.contains_key(&r.fleet) {
                plans.insert(r.fleet.clone(), crate::fleet::plan(&self.store, &r.fleet, None).await?);
            }
        }
        Ok(rows
            .into_iter()
            .map(|r| {
                let plan = plans.get(&r.fleet).and_then(Option::as_ref);
                let target = plan.and_then(|p| p.target(&r.node_id)).map_or(r.head_version, |h| h.version);
                let state = sync_state(&r, target, unix_now());
                (r, state)
            })
            .collect())
    }

    /// Every data plane's latest traffic report (only `route` when given) and their sum.
    pub async fn traffic_report(&self, fleet: &str, route: Option<&str>) -> Result<TrafficReport> {
        if fleet.is_empty() {
            return Err(Error::InvalidArgument("a traffic report needs a fleet".into()));
        }
        let rows = self.store.reports(fleet).await?;
        let nodes = rows.into_iter().map(|r| NodeTraffic::from_row(r, route)).collect::<Result<Vec<_>>>()?;
        Ok(TrafficReport::new(nodes))
    }

    pub async fn audit(&self, filter: &AuditFilter) -> Result<(Vec<AuditRow>, ChainProblem)> {
        self.store.audit(filter).await
    }
}

fn check_fleet_name(fleet: &str) -> Result<()> {
    if fleet.is_empty() || !fleet.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(Error::InvalidArgument(format!("invalid fleet name {fleet:?}")));
    }
    Ok(())
}

/// SYNCED: serving `target`, the version meant for it (the head, unless a rollout holds it
/// back). STALE_FRESHNESS: serving it, but the freshness statement it last reported has lapsed.
/// NACKED: refused something newer than it serves. STALE: behind and not refusing.
/// AHEAD: serving a version above the fleet's head. DISCONNECTED: not connected now.
fn sync_state(r: &DataPlaneRow, target: u64, now: i64) -> SyncState {
    if !r.connected {
        SyncState::Disconnected
    } else if r.active_version > r.head_version {
        SyncState::Ahead
    } else if r.active_version == target && r.freshness_expires_at > 0 && r.freshness_expires_at <= now {
        SyncState::StaleFreshness
    } else if r.active_version == target {
        SyncState::Synced
    } else if r.last_nack_version > r.active_version {
        SyncState::Nacked
    } else {
        SyncState::Stale
    }
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "SYNCED",
            Self::Stale => "STALE",
            Self::Nacked => "NACKED",
            Self::StaleFreshness => "STALE_FRESHNESS",
            Self::Ahead => "AHEAD",
            Self::Disconnected => "DISCONNECTED",
        }
    }
}

/// The config a stored version carries.
pub fn config_of(row: &VersionRow) -> Result<Config> {
    let payload = Payload::decode(&row.payload)
        .map_err(|e| Error::Internal(format!("stored version {}: {e}", row.version)))?;
    parse_value(&payload.config)
        .map_err(|e| Error::Internal(format!("stored version {} is invalid: {e}", row.version)))
}

fn empty_config() -> Config {
    Config { listeners: Vec::new(), pools: Vec::new(), routes: Vec::new() }
}

/// The span of checking a config before it is signed: parsing and compiling.
fn validate_span() -> tracing::Span {
    tracing::info_span!("validate")
}

/// The data planes' compile step, run before signing so a published bundle always compiles. It
/// reads nothing from any node: certificates and key files are checked where they live.
fn compile(config: &Config) -> std::result::Result<(), ConfigErrors> {
    sluice_compile::compile(config).map(drop)
}

/// A fleet-wide cache purge as asked for.
#[derive(Debug, Clone)]
pub struct Purge {
    pub fleet: String,
    pub route: String,
    /// Empty: not given.
    pub path: String,
    pub prefix: String,
}

/// Longest route name, path or prefix a purge takes (they travel in a NOTIFY of at most 8 KB).
const MAX_PURGE_FIELD: usize = 2048;

impl ControlPlane {
    /// Asks every connected data plane of the fleet (on every replica) to purge, audited first;
    /// waits up to `wait` for their answers. Returns the purge's id, how many data planes were
    /// connected, and the answers that came.
    pub async fn purge_cache(
        &self,
        p: Purge,
        wait: Duration,
        actor: &str,
    ) -> Result<(String, u32, Vec<sluice_proto::v1::PurgeResult>)> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if p.fleet.is_empty() || p.route.is_empty() {
            return bad("name the fleet and the route".into());
        }
        if !p.path.is_empty() && !p.prefix.is_empty() {
            return bad("give a path or a prefix, not both".into());
        }
        for (name, v) in [("route", &p.route), ("path", &p.path), ("prefix", &p.prefix)] {
            if v.len() > MAX_PURGE_FIELD {
                return bad(format!("{name} is longer than {MAX_PURGE_FIELD} bytes"));
            }
            if name != "route" && !v.is_empty() && !v.starts_with('/') {
                return bad(format!("{name} must start with /"));
            }
            if v.chars().any(char::is_control) {
                return bad(format!("{name} has control characters"));
            }
        }
        let connected = self.store.data_planes(Some(&p.fleet)).await?.iter().filter(|r| r.connected).count();
        let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let waiting = self.hub.purges.expect(&id);
        let entry = AuditEntry {
            actor: actor.to_owned(),
            action: "cache_purge".to_owned(),
            fleet: p.fleet.clone(),
            version: None,
            detail: serde_json::json!({
                "purge_id": id,
                "route": p.route,
                "path": (!p.path.is_empty()).then_some(&p.path),
                "prefix": (!p.prefix.is_empty()).then_some(&p.prefix),
                "connected": connected,
            }),
        };
        self.store.record_audit(&entry).await?;
        let notice = crate::purge::Notice::Purge {
            id: id.clone(),
            fleet: p.fleet.clone(),
            route: p.route,
            path: p.path,
            prefix: p.prefix,
        };
        self.store
            .notify_purges(&serde_json::to_string(&notice).map_err(|e| Error::Internal(e.to_string()))?)
            .await?;
        let nodes = waiting.collect(connected, wait).await;
        tracing::info!(
            fleet = p.fleet,
            purge = id,
            connected,
            answered = nodes.len(),
            actor,
            "cache purge sent"
        );
        Ok((id, u32::try_from(connected).unwrap_or(u32::MAX), nodes))
    }
}
