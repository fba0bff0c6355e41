//! The control plane's domain: validate, diff, apply, roll back, and read history, data planes,
//! traffic reports and audit. Knows nothing of gRPC.

use std::sync::Arc;
use std::time::Duration;

use sluice_bundle::diff::{Change, diff};
use sluice_bundle::sign::{Payload, SigningKey, sha256_hex};
use sluice_bundle::{Config, ConfigErrors, Format, parse, parse_value};

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, Status, TraceContextExt as _, Tracer as _};
use opentelemetry_sdk::trace::{SdkTracer, Span};

use crate::error::{Error, Result};
use crate::fleet::{FleetHub, Head};
use crate::metrics::Metrics;
use crate::report::{NodeTraffic, TrafficReport};
use crate::store::{
    AuditEntry, AuditFilter, AuditRow, ChainProblem, DataPlaneRow, NewVersion, Store, VersionRow, unix_now,
};

/// Everything a request handler needs.
pub struct ControlPlane {
    pub store: Store,
    pub hub: Arc<FleetHub>,
    pub metrics: Metrics,
    /// Spans of applies, their storing and their pushes; `None`: no tracing.
    pub tracer: Option<SdkTracer>,
    key: SigningKey,
    bundle_ttl: Duration,
}

/// A document to apply.
#[derive(Debug, Clone)]
pub struct ApplyInput {
    pub fleet: String,
    pub document: Vec<u8>,
    pub format: Format,
    pub expect_version: Option<u64>,
    pub author: String,
    pub message: String,
}

/// What an apply or rollback did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub head: VersionRow,
    /// The content equalled the head, so no version was made.
    pub unchanged: bool,
}

/// A data plane's state relative to its fleet's head, as `sluice dataplanes` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    Synced,
    Stale,
    Nacked,
    Disconnected,
}

// === impl ControlPlane ===

impl ControlPlane {
    pub fn new(store: Store, hub: Arc<FleetHub>, key: SigningKey, bundle_ttl: Duration) -> Self {
        Self { store, hub, metrics: Metrics::default(), tracer: None, key, bundle_ttl }
    }

    pub fn with_tracer(mut self, tracer: Option<SdkTracer>) -> Self {
        self.tracer = tracer;
        self
    }

    /// A span under the current trace context (the apply's, set by the API layer), when tracing.
    fn child_span(&self, name: &'static str) -> Option<Span> {
        let tracer = self.tracer.as_ref()?;
        let cx = opentelemetry::Context::current();
        cx.has_active_span().then(|| tracer.start_with_context(name, &cx))
    }

    pub fn key_id(&self) -> &str {
        self.key.key_id()
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
        let config = parse(&input.document, input.format).map_err(Error::InvalidConfig)?;
        let origin = "apply".to_owned();
        self.append(&input.fleet, input.expect_version, config, input.author, input.message, origin, "apply")
            .await
    }

    /// Publishes a new version with the content of `to_version`.
    pub async fn rollback(
        &self,
        fleet: &str,
        to_version: u64,
        expect_version: Option<u64>,
        author: String,
        message: String,
    ) -> Result<Applied> {
        let target = self.version(fleet, Some(to_version)).await?;
        let config = config_of(&target)?;
        let message = if message.is_empty() { format!("rollback to version {to_version}") } else { message };
        let origin = format!("rollback to {to_version}");
        self.append(fleet, expect_version, config, author, message, origin, "rollback").await
    }

    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        fleet: &str,
        expect_version: Option<u64>,
        config: Config,
        author: String,
        message: String,
        origin: String,
        action: &'static str,
    ) -> Result<Applied> {
        if fleet.is_empty() || !fleet.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(Error::InvalidArgument(format!("invalid fleet name {fleet:?}")));
        }
        // Again for rollbacks: the data planes' compiler may have changed since the old version.
        compile(&config).map_err(Error::InvalidConfig)?;
        let author = if author.is_empty() { "unknown".to_owned() } else { author };
        let mut storing = self.child_span("store version");
        let config_json = serde_json::to_value(&config).map_err(|e| Error::Internal(e.to_string()))?;
        let (key, ttl) = (&self.key, self.bundle_ttl);
        let fleet_owned = fleet.to_owned();
        let audit_author = author.clone();
        let appended = self
            .store
            .append_version(
                fleet,
                expect_version,
                |head| {
                    if let Some(head) = head
                        && config_of(head)? == config
                    {
                        return Ok(None);
                    }
                    let now = unix_now();
                    let payload = Payload {
                        fleet: fleet_owned.clone(),
                        version: head.map_or(1, |h| h.version + 1),
                        parent_sha256: head.map(|h| h.sha256.clone()).unwrap_or_default(),
                        created_at: now,
                        expires_at: now + ttl.as_secs() as i64,
                        config: config_json.clone(),
                    }
                    .encode();
                    let signature = key.sign(&payload);
                    Ok(Some(NewVersion {
                        sha256: sha256_hex(&payload),
                        signatures: vec![signature],
                        payload,
                        author: author.clone(),
                        message: message.clone(),
                        origin: origin.clone(),
                        key_id: key.key_id().to_owned(),
                    }))
                },
                |row| AuditEntry {
                    actor: audit_author,
                    action: action.to_owned(),
                    fleet: row.fleet.clone(),
                    version: Some(row.version),
                    detail: serde_json::json!({
                        "sha256": row.sha256,
                        "parent_version": row.parent_version,
                        "origin": row.origin,
                        "message": row.message,
                    }),
                },
            )
            .await;
        if let Some(span) = storing.as_mut() {
            match &appended {
                Ok(a) => span.set_attributes([
                    KeyValue::new("sluice.fleet", fleet.to_owned()),
                    KeyValue::new("sluice.version", a.head.version as i64),
                    KeyValue::new("sluice.created", a.created),
                ]),
                Err(e) => span.set_status(Status::error(e.to_string())),
            }
            span.end();
        }
        let appended = appended?;
        if appended.created {
            tracing::info!(fleet, version = appended.head.version, origin = %appended.head.origin, "version stored");
            let mut publishing = self.child_span("publish");
            // Each data plane's push becomes a child of the apply that made the version.
            let apply = opentelemetry::Context::current().span().span_context().clone();
            self.hub.publish(Head::from_row(&appended.head, apply.is_valid().then_some(apply)));
            if let Some(span) = publishing.as_mut() {
                span.set_attribute(KeyValue::new("sluice.version", appended.head.version as i64));
                span.end();
            }
        }
        Ok(Applied { head: appended.head, unchanged: !appended.created })
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
        Ok(rows.into_iter().map(|r| (sync_state(&r), r)).map(|(s, r)| (r, s)).collect())
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

/// SYNCED: serving the head. NACKED: refused the head (or something newer than it serves).
/// STALE: behind and not refusing. DISCONNECTED: not connected now.
fn sync_state(r: &DataPlaneRow) -> SyncState {
    if !r.connected {
        SyncState::Disconnected
    } else if r.active_version == r.head_version {
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

/// The data planes' compile step, run before signing so a published bundle always compiles.
fn compile(config: &Config) -> std::result::Result<(), ConfigErrors> {
    sluice_data_plane::compile_check(config).map_err(|e| ConfigErrors::single(e.path, e.message))
}
