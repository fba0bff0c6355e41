//! gRPC adapters: translate requests into calls on the domain and results back into messages.
//! No decisions are made here.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Instant;

use sluice_bundle::Format;
use sluice_bundle::sign::Signature;
use sluice_proto::v1 as pb;
use sluice_proto::v1::config_service_server::ConfigService;
use sluice_proto::v1::data_plane_service_server::DataPlaneService;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status, Streaming};

use opentelemetry::trace::TraceContextExt as _;
use sluice_observe::telemetry;
use tracing::Instrument as _;

use crate::store::MAX_VERSION;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::access::{Access, Caller, Rpc};
use crate::error::{Error, to_proto};
use crate::fleet::{self, Hello, Inbound, Push};
use crate::metrics::ApplyResult;
use crate::service::{ApplyInput, Author, ControlPlane, RolloutChoice, RolloutView};
use crate::store::{AuditFilter, VersionRow};

/// The operator API.
pub struct ConfigApi {
    pub cp: Arc<ControlPlane>,
    pub access: Arc<Access>,
}

/// The data-plane API.
pub struct DataPlaneApi {
    pub cp: Arc<ControlPlane>,
    pub access: Arc<Access>,
    pub shutdown: watch::Receiver<bool>,
    /// Streams end after this long (with jitter) so that clients reconnect and present their
    /// current certificate, which the CRL may have revoked since.
    pub max_stream_age: Option<std::time::Duration>,
}

/// What tonic records of a TLS connection (peer certificates). tonic names the type only with
/// its own TLS backend features, which would build a config we do not use; the stream names it.
type TlsConnectInfo = <sluice_tls::tokio_rustls::server::TlsStream<tokio::net::TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

/// Authenticates every call of a service before its handler runs: the caller, or a refusal
/// (logged, counted, audited). `service` names the service in the log.
pub fn authenticate<T>(access: &Access, service: &str, mut req: Request<T>) -> Result<Request<T>, Status> {
    let certs = req.extensions().get::<TlsConnectInfo>().and_then(|info| info.peer_certs());
    match access.authenticate(req.metadata(), certs.as_deref().map(Vec::as_slice)) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            Ok(req)
        }
        Err(refusal) => {
            access.refused(service, &refusal);
            Err(refusal.to_status())
        }
    }
}

/// The authenticated caller of a request, checked against the permission table for `fleet`.
fn authorized<T>(access: &Access, req: &Request<T>, rpc: Rpc, fleet: &str) -> Result<Caller, Status> {
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))?;
    access.authorize(&caller, rpc, fleet, None).map_err(|r| {
        access.refused(rpc.name(), &r);
        r.to_status()
    })?;
    Ok(caller)
}

fn format(f: i32) -> Format {
    if f == pb::DocumentFormat::Json as i32 { Format::Json } else { Format::Yaml }
}

fn summary(row: &VersionRow) -> pb::VersionSummary {
    pb::VersionSummary {
        fleet: row.fleet.clone(),
        version: row.version,
        sha256: row.sha256.clone(),
        author: row.author.clone(),
        message: row.message.clone(),
        created_at: row.created_at,
        parent_version: row.parent_version,
        origin: row.origin.clone(),
        key_id: row.key_id.clone(),
    }
}

/// The wire form of a stored bundle; the payload is shared, not copied.
pub fn signed_bundle(payload: &bytes::Bytes, signatures: &[Signature]) -> pb::SignedBundle {
    pb::SignedBundle {
        payload: payload.clone(),
        signatures: signatures
            .iter()
            .map(|s| pb::Signature { key_id: s.key_id.clone(), signature: s.signature.clone() })
            .collect(),
    }
}

// === impl ConfigApi ===

impl ConfigApi {
    async fn trust_set_info(&self) -> Result<pb::TrustSetInfo, Status> {
        Ok(match self.cp.trust_set().await? {
            None => pb::TrustSetInfo::default(),
            Some(t) => pb::TrustSetInfo {
                version: t.version,
                trust: Some(crate::keys::signed_statement(t.statement, t.signatures)),
                created_by: t.created_by,
                created_at: t.created_at,
            },
        })
    }

    async fn signing_keys(&self, signed: Vec<String>) -> Result<Response<pb::SigningKeys>, Status> {
        let keys = self
            .cp
            .signing_keys()
            .await?
            .into_iter()
            .map(|(k, held)| pb::SigningKeyInfo {
                key_id: k.key_id,
                public_key: k.public_key,
                state: k.state,
                added_by: k.added_by,
                added_at: k.added_at,
                retired_by: k.retired_by,
                retired_at: k.retired_at.unwrap_or(0),
                held,
            })
            .collect();
        Ok(Response::new(pb::SigningKeys { keys, signed }))
    }

    /// The server span of a config RPC, continuing the caller's `traceparent` (gRPC metadata);
    /// the domain's spans (`validate`, `store version`, `publish`) are its children.
    fn rpc_span(
        &self,
        method: &'static str,
        metadata: &tonic::metadata::MetadataMap,
        fleet: &str,
    ) -> tracing::Span {
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format_args!("sluice.v1.ConfigService/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = "sluice.v1.ConfigService",
            rpc.method = method,
            sluice.fleet = fleet,
            sluice.version = tracing::field::Empty,
            sluice.unchanged = tracing::field::Empty,
        );
        let parent = telemetry::extract(&metadata.clone().into_headers());
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        span
    }
}

impl ConfigApi {
    /// Runs an apply or rollback within its span, ends the span, counts it, and answers.
    async fn observed(
        &self,
        span: tracing::Span,
        applying: impl Future<Output = crate::error::Result<crate::service::Applied>>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let started = Instant::now();
        let applied = applying.instrument(span.clone()).await;
        end_rpc_span(span, &applied);
        self.cp.metrics.record_apply(ApplyResult::of(&applied), started.elapsed());
        let applied = applied?;
        Ok(Response::new(pb::ApplyResponse {
            version: Some(summary(&applied.head)),
            unchanged: applied.unchanged,
            rollout_id: applied.rollout,
        }))
    }
}

fn rollout_choice(r: &pb::RolloutChoice) -> RolloutChoice {
    match &r.choice {
        Some(pb::rollout_choice::Choice::Document(d)) => RolloutChoice::Document(d.clone(), format(r.format)),
        Some(pb::rollout_choice::Choice::Name(n)) => RolloutChoice::Named(n.clone()),
        None => RolloutChoice::FleetDefault,
    }
}

fn rollout_status(view: Option<RolloutView>) -> pb::RolloutStatus {
    let Some(RolloutView { row, strategy, inputs, assessment: a }) = view else {
        return pb::RolloutStatus::default();
    };
    let (bake_seconds, bake_left_seconds) = crate::rollout::bake_left(&strategy, &row);
    let nodes = inputs
        .nodes
        .iter()
        .map(|n| {
            let step = inputs.moved.get(&n.node_id);
            let said = crate::rollout::answer(n, row.version).filter(|_| step.is_some());
            let nacked = said == Some(crate::rollout::Answer::Nacked);
            pb::RolloutNode {
                node_id: n.node_id.clone(),
                active_version: n.active_version,
                moved: step.is_some(),
                step: step.map_or(0, |s| s + 1),
                connected: n.connected,
                acked: said == Some(crate::rollout::Answer::Acked),
                nacked,
                nack_reason: if nacked { n.last_nack_reason.clone() } else { String::new() },
            }
        })
        .collect();
    let gates = a
        .readings
        .iter()
        .map(|r| pb::GateValue {
            gate: r.gate.into(),
            value: r.value,
            threshold: r.threshold,
            passed: r.passed,
        })
        .collect();
    let verdict = match (&a.verdict, row.unfinished() && !["paused", "pending"].contains(&row.state.as_str()))
    {
        _ if row.state == "pending" => "waiting for the rollout leader to start it".to_owned(),
        (crate::rollout::Verdict::Wait { why }, true) => why.clone(),
        (crate::rollout::Verdict::NextStep { why } | crate::rollout::Verdict::Succeed { why }, true) => {
            format!("{why}; moving on")
        }
        (crate::rollout::Verdict::Fail { why }, true) => format!("{why}; rolling back"),
        (_, false) => String::new(),
    };
    pb::RolloutStatus {
        exists: true,
        id: row.id,
        fleet: row.fleet.clone(),
        version: row.version,
        from_version: row.from_version,
        state: row.state.clone(),
        step: (row.step + 1).min(strategy.steps.len() as u32),
        steps: strategy.steps.len() as u32,
        reason: row.reason.clone(),
        verdict,
        requested: row.requested.clone(),
        created_at: row.created_at,
        step_started_at: row.step_started_at,
        updated_at: row.updated_at,
        bake_seconds,
        bake_left_seconds,
        strategy_json: row.strategy.to_string(),
        nodes,
        gates,
        requests: a.traffic.requests,
        errors: a.traffic.errors,
        rollback_version: row.rollback_version,
        created_by: row.created_by,
    }
}

/// Ends an RPC's span with its outcome.
fn end_rpc_span(span: tracing::Span, result: &crate::error::Result<crate::service::Applied>) {
    match result {
        Ok(applied) => {
            span.record("sluice.version", applied.head.version as i64);
            span.record("sluice.unchanged", applied.unchanged);
        }
        Err(e) => span.set_status(opentelemetry::trace::Status::error(e.to_string())),
    }
}

#[tonic::async_trait]
impl ConfigService for ConfigApi {
    async fn validate(
        &self,
        req: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        authorized(&self.access, &req, Rpc::Validate, "")?;
        let req = req.into_inner();
        let errors = match ControlPlane::validate(&req.document, format(req.format)) {
            Ok(_) => Vec::new(),
            Err(e) => to_proto(&e),
        };
        Ok(Response::new(pb::ValidateResponse { errors }))
    }

    async fn diff(&self, req: Request<pb::DiffRequest>) -> Result<Response<pb::DiffResponse>, Status> {
        authorized(&self.access, &req, Rpc::Diff, &req.get_ref().fleet)?;
        let req = req.into_inner();
        let (against, changes) =
            self.cp.diff(&req.fleet, &req.document, format(req.format), req.against_version).await?;
        let json = |v: &Option<serde_json::Value>| v.as_ref().map(ToString::to_string);
        Ok(Response::new(pb::DiffResponse {
            against_version: against,
            changes: changes
                .iter()
                .map(|c| pb::Change { path: c.path.clone(), old_json: json(&c.old), new_json: json(&c.new) })
                .collect(),
        }))
    }

    async fn apply(&self, req: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let caller = authorized(&self.access, &req, Rpc::Apply, &req.get_ref().fleet)?;
        let span = self.rpc_span("Apply", req.metadata(), &req.get_ref().fleet);
        let req = req.into_inner();
        let applying = self.cp.apply(ApplyInput {
            fleet: req.fleet,
            document: req.document,
            format: format(req.format),
            expect_version: req.expect_version,
            author: caller.principal(),
            described_as: req.author,
            message: req.message,
            rollout: req.rollout.map(|r| rollout_choice(&r)).unwrap_or_default(),
            min_version: req.min_version,
        });
        self.observed(span, Box::pin(applying)).await
    }

    async fn get_version(
        &self,
        req: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::VersionDetail>, Status> {
        authorized(&self.access, &req, Rpc::GetVersion, &req.get_ref().fleet)?;
        let req = req.into_inner();
        let row = self.cp.version(&req.fleet, req.version).await?;
        let config = crate::service::config_of(&row)?;
        Ok(Response::new(pb::VersionDetail {
            summary: Some(summary(&row)),
            config_json: serde_json::to_string(&config).map_err(|e| Error::Internal(e.to_string()))?,
            bundle: Some(signed_bundle(&row.payload, &row.signatures)),
        }))
    }

    async fn list_history(
        &self,
        req: Request<pb::ListHistoryRequest>,
    ) -> Result<Response<pb::ListHistoryResponse>, Status> {
        authorized(&self.access, &req, Rpc::ListHistory, &req.get_ref().fleet)?;
        let req = req.into_inner();
        let limit = if req.limit == 0 { 50 } else { req.limit as usize };
        let rows = self.cp.history(&req.fleet, limit).await?;
        Ok(Response::new(pb::ListHistoryResponse { versions: rows.iter().map(summary).collect() }))
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let caller = authorized(&self.access, &req, Rpc::Rollback, &req.get_ref().fleet)?;
        let span = self.rpc_span("Rollback", req.metadata(), &req.get_ref().fleet);
        let req = req.into_inner();
        // A rollback is an apply of old content, through the same path: counted with them.
        let by = Author { principal: caller.principal(), described_as: req.author };
        let rolling_back = self.cp.rollback(&req.fleet, req.to_version, req.expect_version, by, req.message);
        self.observed(span, Box::pin(rolling_back)).await
    }

    async fn list_data_planes(
        &self,
        req: Request<pb::ListDataPlanesRequest>,
    ) -> Result<Response<pb::ListDataPlanesResponse>, Status> {
        let caller = authorized(&self.access, &req, Rpc::ListDataPlanes, &req.get_ref().fleet)?;
        let req = req.into_inner();
        let fleet = (!req.fleet.is_empty()).then_some(req.fleet.as_str());
        let rows = self.cp.data_planes(fleet).await?;
        Ok(Response::new(pb::ListDataPlanesResponse {
            data_planes: rows
                .into_iter()
                // Over every fleet: only the fleets the caller may see.
                .filter(|(r, _)| caller.may_view(&r.fleet))
                .map(|(r, state)| pb::DataPlaneStatus {
                    node_id: r.node_id,
                    fleet: r.fleet,
                    labels: r.labels.into_iter().collect(),
                    build: r.build,
                    active_version: r.active_version,
                    head_version: r.head_version,
                    state: state.as_str().into(),
                    last_ack_version: r.last_ack_version,
                    last_nack_version: r.last_nack_version,
                    last_nack_reason: r.last_nack_reason,
                    last_nack_details: r
                        .last_nack_details
                        .into_iter()
                        .map(|(path, message)| pb::ConfigError { path, message })
                        .collect(),
                    last_seen: r.last_seen,
                    freshness_expires_at: r.freshness_expires_at,
                    trust_version: r.trust_version,
                    signature_key_ids: r.signature_key_ids,
                    connected: r.connected,
                })
                .collect(),
        }))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let caller = authorized(&self.access, &req, Rpc::ListAudit, &req.get_ref().fleet)?;
        let req = req.into_inner();
        let some = |s: String| (!s.is_empty()).then_some(s);
        let filter = AuditFilter {
            fleet: some(req.fleet),
            since: req.since,
            actor: some(req.actor),
            action: some(req.action),
            limit: if req.limit == 0 { 100 } else { req.limit as usize },
        };
        let (rows, problem) = self.cp.audit(&filter).await?;
        Ok(Response::new(pb::ListAuditResponse {
            events: rows
                .into_iter()
                // Over every fleet: only the fleets the caller may see (fleet-less rows, such as
                // refusals without a fleet, only to those who may see every fleet).
                .filter(|r| caller.may_view(if r.fleet.is_empty() { "*" } else { &r.fleet }))
                .map(|r| pb::AuditEvent {
                    id: r.id,
                    at: r.at,
                    actor: r.actor,
                    action: r.action,
                    fleet: r.fleet,
                    version: r.version,
                    detail_json: r.detail,
                    hash: r.hash,
                    prev_hash: r.prev_hash,
                })
                .collect(),
            chain_intact: problem.is_none(),
            chain_problem: problem.unwrap_or_default(),
        }))
    }

    async fn get_rollout(
        &self,
        req: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        authorized(&self.access, &req, Rpc::GetRollout, &req.get_ref().fleet)?;
        let view = self.cp.rollout(&req.into_inner().fleet).await?;
        Ok(Response::new(rollout_status(view)))
    }

    async fn rollout_action(
        &self,
        req: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::RolloutStatus>, Status> {
        let caller = authorized(&self.access, &req, Rpc::RolloutAction, &req.get_ref().fleet)?;
        let req = req.into_inner();
        let view = self.cp.rollout_action(&req.fleet, &req.action, &caller.principal()).await?;
        Ok(Response::new(rollout_status(view)))
    }

    async fn set_default_strategy(
        &self,
        req: Request<pb::SetDefaultStrategyRequest>,
    ) -> Result<Response<pb::DefaultStrategy>, Status> {
        let caller = authorized(&self.access, &req, Rpc::SetDefaultStrategy, &req.get_ref().fleet)?;
        let req = req.into_inner();
        let choice = req.rollout.as_ref().map(rollout_choice);
        let strategy = self.cp.set_default_strategy(&req.fleet, choice.as_ref(), &caller.principal()).await?;
        Ok(Response::new(pb::DefaultStrategy {
            strategy_json: strategy.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    async fn get_default_strategy(
        &self,
        req: Request<pb::GetDefaultStrategyRequest>,
    ) -> Result<Response<pb::DefaultStrategy>, Status> {
        authorized(&self.access, &req, Rpc::GetDefaultStrategy, &req.get_ref().fleet)?;
        let strategy = self.cp.default_strategy(&req.into_inner().fleet).await?;
        Ok(Response::new(pb::DefaultStrategy {
            strategy_json: strategy.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    async fn list_signing_keys(
        &self,
        req: Request<pb::ListSigningKeysRequest>,
    ) -> Result<Response<pb::SigningKeys>, Status> {
        authorized(&self.access, &req, Rpc::ListSigningKeys, "")?;
        self.signing_keys(Vec::new()).await
    }

    async fn activate_signing_key(
        &self,
        req: Request<pb::SigningKeyRequest>,
    ) -> Result<Response<pb::SigningKeys>, Status> {
        let caller = authorized(&self.access, &req, Rpc::ActivateSigningKey, "*")?;
        let signed = self.cp.activate_key(&req.get_ref().key_id, &caller.principal()).await?;
        self.signing_keys(signed.into_iter().map(|(f, v)| format!("{f}@{v}")).collect()).await
    }

    async fn retire_signing_key(
        &self,
        req: Request<pb::SigningKeyRequest>,
    ) -> Result<Response<pb::SigningKeys>, Status> {
        let caller = authorized(&self.access, &req, Rpc::RetireSigningKey, "*")?;
        self.cp.retire_key(&req.get_ref().key_id, &caller.principal()).await?;
        self.signing_keys(Vec::new()).await
    }

    async fn get_trust_set(
        &self,
        req: Request<pb::GetTrustSetRequest>,
    ) -> Result<Response<pb::TrustSetInfo>, Status> {
        authorized(&self.access, &req, Rpc::GetTrustSet, "")?;
        Ok(Response::new(self.trust_set_info().await?))
    }

    async fn publish_trust_set(
        &self,
        req: Request<pb::PublishTrustSetRequest>,
    ) -> Result<Response<pb::TrustSetInfo>, Status> {
        let caller = authorized(&self.access, &req, Rpc::PublishTrustSet, "*")?;
        let statement = req.into_inner().trust.unwrap_or_default();
        self.cp.publish_trust_set(&statement, &caller.principal()).await?;
        Ok(Response::new(self.trust_set_info().await?))
    }

    async fn purge_cache(
        &self,
        req: Request<pb::PurgeCacheRequest>,
    ) -> Result<Response<pb::PurgeCacheResponse>, Status> {
        let caller = authorized(&self.access, &req, Rpc::PurgeCache, &req.get_ref().fleet)?;
        let r = req.into_inner();
        let wait = match r.timeout_ms {
            0 => std::time::Duration::from_secs(5),
            ms => std::time::Duration::from_millis(u64::from(ms).min(60_000)),
        };
        let purge = crate::service::Purge { fleet: r.fleet, route: r.route, path: r.path, prefix: r.prefix };
        let (id, connected, nodes) = self.cp.purge_cache(purge, wait, &caller.principal()).await?;
        Ok(Response::new(pb::PurgeCacheResponse { purge_id: id, connected, nodes }))
    }

    async fn get_traffic_report(
        &self,
        req: Request<pb::TrafficReportRequest>,
    ) -> Result<Response<pb::TrafficReport>, Status> {
        authorized(&self.access, &req, Rpc::GetTrafficReport, &req.get_ref().fleet)?;
        let req = req.into_inner();
        let route = (!req.route.is_empty()).then_some(req.route.as_str());
        let report = self.cp.traffic_report(&req.fleet, route).await?;
        Ok(Response::new(pb::TrafficReport {
            nodes: report
                .nodes
                .into_iter()
                .map(|n| pb::NodeTraffic {
                    node_id: n.node_id,
                    at: n.at,
                    active_version: n.active_version,
                    connected: n.connected,
                    routes: n.routes,
                    last_seen: n.last_seen,
                })
                .collect(),
            routes: report.routes,
        }))
    }
}

type PushStream = Pin<Box<dyn Stream<Item = Result<pb::ControlPlaneMessage, Status>> + Send>>;

#[tonic::async_trait]
impl DataPlaneService for DataPlaneApi {
    type StreamStream = PushStream;

    /// The first message must be a hello; then the session runs until either side goes away.
    async fn stream(
        &self,
        req: Request<Streaming<pb::DataPlaneMessage>>,
    ) -> Result<Response<PushStream>, Status> {
        let caller = req
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))?;
        let mut incoming = req.into_inner();
        let hello = match incoming.message().await? {
            Some(pb::DataPlaneMessage { kind: Some(pb::data_plane_message::Kind::Hello(h)) }) => h,
            _ => return Err(Status::invalid_argument("the first message on the stream must be a hello")),
        };
        if hello.node_id.is_empty() || hello.fleet.is_empty() {
            return Err(Status::invalid_argument("hello needs node_id and fleet"));
        }
        // Stored as BIGINT, and numbering continues above it: nothing near the end of the range.
        if hello.active_version > MAX_VERSION {
            return Err(Status::invalid_argument(format!(
                "hello names version {}, above any version",
                hello.active_version
            )));
        }
        // Nothing a stream says reaches the fleet's state before its hello matches its identity.
        if let Err(r) = self.access.authorize(&caller, Rpc::Stream, &hello.fleet, Some(&hello.node_id)) {
            self.access.refused(Rpc::Stream.name(), &r);
            return Err(r.to_status());
        }
        let hello = Hello {
            node_id: hello.node_id,
            fleet: hello.fleet,
            labels: hello.labels.into_iter().collect(),
            build: hello.build,
            active_version: hello.active_version,
            active_sha256: hello.active_sha256,
            signature_key_ids: hello.signature_key_ids,
        };
        let (push_tx, push_rx) = fleet::push_queue();
        // Jittered, so a fleet that connected together does not reconnect together.
        let age = self.max_stream_age.map(|a| a.mul_f64(fastrand::f64().mul_add(0.2, 0.9)));
        let deadline = age.map(|a| tokio::time::Instant::now() + a);
        // Inbound: messages off the wire, read by the session itself; nothing after the stream's
        // age or a broken message.
        let inbound = incoming
            .map_while(Result::ok)
            .take_while(move |_| deadline.is_none_or(|d| tokio::time::Instant::now() < d))
            .filter_map(|m| match m.kind {
                Some(pb::data_plane_message::Kind::Ack(a)) => {
                    Some(Inbound::Ack { nonce: a.nonce, version: a.version })
                }
                Some(pb::data_plane_message::Kind::Nack(n)) => Some(Inbound::Nack {
                    nonce: n.nonce,
                    version: n.version,
                    reason: n.reason,
                    details: n.details.into_iter().map(|d| (d.path, d.message)).collect(),
                }),
                Some(pb::data_plane_message::Kind::Report(r)) => Some(Inbound::Report(Box::new(r))),
                Some(pb::data_plane_message::Kind::CachePurged(p)) => Some(Inbound::CachePurged(p)),
                Some(pb::data_plane_message::Kind::Hello(_)) | None => None,
            });
        let settings = pb::StreamSettings {
            max_bundle_bytes: self.cp.max_bundle_bytes as u64,
            freshness_lifetime_seconds: self.cp.keyring.lifetime().as_secs(),
        };
        tokio::spawn(fleet::session(
            self.cp.clone(),
            hello,
            Box::pin(inbound),
            push_tx,
            self.shutdown.clone(),
        ));
        // One task per stream: the outbound side is the session's pushes turned into messages as
        // the connection asks for them.
        let outbound = Outbound {
            settings: Some(settings),
            pushes: push_rx,
            expires: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        };
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// A data-plane stream's messages: its settings, then the session's pushes, until the session
/// ends or the stream reaches its age (then an `unavailable` status: reconnect).
struct Outbound {
    settings: Option<pb::StreamSettings>,
    pushes: fleet::PushReceiver,
    expires: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for Outbound {
    type Item = Result<pb::ControlPlaneMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Self::Item>> {
        use pb::control_plane_message::Kind;
        let message = |kind| Poll::Ready(Some(Ok(pb::ControlPlaneMessage { kind: Some(kind) })));
        if let Some(settings) = self.settings.take() {
            return message(Kind::Settings(settings));
        }
        if let Some(expires) = self.expires.as_mut()
            && expires.as_mut().poll(cx).is_ready()
        {
            self.expires = None;
            self.pushes.close();
            return Poll::Ready(Some(Err(Status::unavailable(
                "the stream reached its maximum age; reconnect",
            ))));
        }
        let kind = match ready!(Pin::new(&mut self.pushes).poll_next(cx)) {
            None => return Poll::Ready(None),
            Some(Push::Bundle { nonce, head, freshness }) => Kind::Bundle(pb::BundlePush {
                nonce,
                bundle: Some(signed_bundle(&head.payload, &head.signatures)),
                freshness: freshness.map(|f| (*f).clone()),
            }),
            Some(Push::Freshness(f)) => Kind::Freshness((*f).clone()),
            Some(Push::Trust(t)) => Kind::Trust((*t).clone()),
            Some(Push::CachePurge(p)) => Kind::CachePurge((*p).clone()),
        };
        message(kind)
    }
}
