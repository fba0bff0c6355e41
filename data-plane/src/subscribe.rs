//! Managed mode: a stream to the control plane. Each pushed bundle is verified, compiled and
//! swapped in, then ACKed; or refused with a NACK that says why, while the last good snapshot
//! keeps serving. The last accepted bundle is kept on disk exactly as received, so a data plane
//! that starts while the control plane is away verifies and serves it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use sluice_bundle::Config;
use sluice_bundle::sign::{DEFAULT_MAX_PAYLOAD, Expectations, Signature, TrustedKeys, Verified, VerifyError};
use sluice_proto::v1 as pb;
use sluice_proto::v1::data_plane_service_client::DataPlaneServiceClient;
use sluice_tls::connect::TlsConnector;
use sluice_tls::{ClientFiles, Watched};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::server::Proxy;

/// How often a report is sent by default; each also keeps `last_seen` fresh on the control plane.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// `tokio::time::interval` panics on zero; no report interval is shorter than this.
const MIN_REPORT_EVERY: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CACHE_FILE: &str = "bundle.pb";

/// Who this data plane is and whom it trusts.
#[derive(Debug, Clone)]
pub struct Managed {
    /// `http://host:port` of the control plane.
    pub control_plane: String,
    pub fleet: String,
    pub node_id: String,
    pub labels: BTreeMap<String, String>,
    pub trusted: TrustedKeys,
    pub state_dir: PathBuf,
    /// Listener addresses this node binds instead of the config's.
    pub listener_overrides: Vec<(String, SocketAddr)>,
    /// How often a traffic report goes to the control plane ([`REPORT_EVERY`] by default).
    pub report_every: Duration,
    /// CA, and this node's certificate and key, for an `https://` control plane. Read anew at
    /// each connection, so a certificate rotated on disk is presented at the next reconnect.
    pub tls: Option<Arc<Watched<ClientFiles>>>,
}

/// The version being served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Active {
    version: u64,
    sha256: String,
}

/// Why a bundle was not applied, as a NACK says it.
struct Refusal {
    reason: String,
    details: Vec<pb::ConfigError>,
}

// === impl Managed ===

impl Managed {
    /// Serves the cached bundle, verified again, if there is one. A cache that fails
    /// verification (tampered, expired, or for another fleet) is refused and logged.
    pub fn boot_from_cache(&self, proxy: &Proxy) -> Option<u64> {
        let path = self.state_dir.join(CACHE_FILE);
        let bytes = std::fs::read(&path).ok()?;
        let bundle = match pb::SignedBundle::decode(bytes.as_slice()) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cached bundle is unreadable; waiting for the control plane");
                return None;
            }
        };
        match self.accept(proxy, &bundle, &Active::default()) {
            Ok(active) => {
                tracing::info!(
                    version = active.version,
                    "serving the cached bundle until the control plane answers"
                );
                Some(active.version)
            }
            Err(refusal) => {
                tracing::error!(path = %path.display(), reason = %refusal.reason, "cached bundle refused; waiting for the control plane");
                None
            }
        }
    }

    /// Streams from the control plane until the process ends, reconnecting with jittered
    /// exponential backoff. Traffic is served throughout.
    pub async fn run(self, proxy: Proxy) {
        let mut active = proxy
            .snapshot()
            .map(|s| Active { version: s.meta.version, sha256: s.meta.sha256.clone() })
            .unwrap_or_default();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.stream(&proxy, &mut active, &mut backoff).await {
                Ok(()) => {
                    tracing::warn!(control_plane = %self.control_plane, "control plane closed the stream")
                }
                Err(e) => {
                    tracing::warn!(control_plane = %self.control_plane, error = %e, "control plane stream failed")
                }
            }
            // Full jitter: anywhere up to the current backoff, so a fleet does not reconnect in step.
            let wait = backoff.mul_f64(fastrand::f64());
            tracing::info!(retry_in = ?wait, "reconnecting to the control plane");
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One stream: hello, then bundles in and ACK/NACK and reports out.
    async fn stream(
        &self,
        proxy: &Proxy,
        active: &mut Active,
        backoff: &mut Duration,
    ) -> Result<(), tonic::Status> {
        let endpoint = Endpoint::from_shared(self.control_plane.clone())
            .map_err(|e| tonic::Status::invalid_argument(format!("bad control plane URL: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        let connected = match &self.tls {
            Some(tls) => endpoint.connect_with_connector(TlsConnector::new(tls.clone())).await,
            None => endpoint.connect().await,
        };
        let channel =
            connected.map_err(|e| tonic::Status::unavailable(format!("cannot connect: {}", chain(&e))))?;
        let (tx, rx) = mpsc::channel::<pb::DataPlaneMessage>(16);
        let hello = pb::Hello {
            node_id: self.node_id.clone(),
            fleet: self.fleet.clone(),
            labels: self.labels.clone().into_iter().collect(),
            build: env!("CARGO_PKG_VERSION").into(),
            active_version: active.version,
            active_sha256: active.sha256.clone(),
        };
        send(&tx, pb::data_plane_message::Kind::Hello(hello)).await;
        let mut inbound =
            DataPlaneServiceClient::new(channel).stream(ReceiverStream::new(rx)).await?.into_inner();
        tracing::info!(control_plane = %self.control_plane, active = active.version, "connected to the control plane");
        *backoff = Duration::from_millis(100);
        // The first tick is immediate: a report right after the hello.
        let mut reports = tokio::time::interval(self.report_every.max(MIN_REPORT_EVERY));
        reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = inbound.message() => match message? {
                    None => return Ok(()),
                    Some(pb::ControlPlaneMessage { kind: Some(pb::control_plane_message::Kind::Bundle(push)) }) => {
                        let answer = self.on_push(proxy, active, push);
                        send(&tx, answer).await;
                    }
                    Some(_) => {}
                },
                _ = reports.tick() => {
                    let report = pb::Report {
                        at: unix_now(),
                        active_version: active.version,
                        routes: crate::report::routes(proxy),
                        versions: crate::report::versions(proxy),
                    };
                    send(&tx, pb::data_plane_message::Kind::Report(report)).await;
                }
            }
        }
    }

    /// Applies a pushed bundle and says how it went.
    fn on_push(
        &self,
        proxy: &Proxy,
        active: &mut Active,
        push: pb::BundlePush,
    ) -> pb::data_plane_message::Kind {
        let bundle = push.bundle.unwrap_or_default();
        let version = sluice_bundle::sign::Payload::decode(&bundle.payload).map(|p| p.version).unwrap_or(0);
        if sluice_bundle::sign::sha256_hex(&bundle.payload) == active.sha256 {
            // Already serving exactly this (a resend after reconnecting).
            return pb::data_plane_message::Kind::Ack(pb::Ack { nonce: push.nonce, version: active.version });
        }
        match self.accept(proxy, &bundle, active) {
            Ok(now) => {
                *active = now;
                tracing::info!(version = active.version, "bundle applied; ACK");
                pb::data_plane_message::Kind::Ack(pb::Ack { nonce: push.nonce, version: active.version })
            }
            Err(refusal) => {
                tracing::warn!(version, reason = %refusal.reason, "bundle refused; NACK");
                pb::data_plane_message::Kind::Nack(pb::Nack {
                    nonce: push.nonce,
                    version,
                    reason: refusal.reason,
                    details: refusal.details,
                })
            }
        }
    }

    /// Verify → compile → swap → persist.
    fn accept(&self, proxy: &Proxy, bundle: &pb::SignedBundle, active: &Active) -> Result<Active, Refusal> {
        let signatures: Vec<Signature> = bundle
            .signatures
            .iter()
            .map(|s| Signature { key_id: s.key_id.clone(), signature: s.signature.clone() })
            .collect();
        let expect = Expectations {
            fleet: &self.fleet,
            active_version: (active.version > 0).then_some(active.version),
            now: unix_now(),
            max_payload: DEFAULT_MAX_PAYLOAD,
        };
        let verified = self.trusted.verify(&bundle.payload, &signatures, &expect).map_err(|e| {
            let r = refusal(e);
            proxy.record_rejection(vec![r.reason.clone()]);
            r
        })?;
        let Verified { payload, config, sha256, .. } = verified;
        let config = self.with_overrides(config);
        let source = format!("control-plane:{} fleet {}", self.control_plane, self.fleet);
        proxy
            .apply_version(config, &source, sha256.clone(), Some(payload.version))
            .map_err(|e| Refusal { reason: e.to_string(), details: Vec::new() })?;
        if let Err(e) = self.persist(bundle) {
            tracing::warn!(error = %e, "cannot cache the bundle; a restart without the control plane would not serve it");
        }
        Ok(Active { version: payload.version, sha256 })
    }

    fn with_overrides(&self, mut config: Config) -> Config {
        for (name, address) in &self.listener_overrides {
            match config.listeners.iter_mut().find(|l| &l.name == name) {
                Some(l) => l.address = *address,
                None => {
                    tracing::warn!(listener = %name, "--listener-address names a listener the config does not have")
                }
            }
        }
        config
    }

    /// Writes the bundle exactly as received, atomically (temporary file, then rename).
    fn persist(&self, bundle: &pb::SignedBundle) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        let tmp = self.state_dir.join(format!("{CACHE_FILE}.tmp"));
        std::fs::write(&tmp, bundle.encode_to_vec())?;
        std::fs::rename(tmp, self.state_dir.join(CACHE_FILE))
    }
}

fn refusal(e: VerifyError) -> Refusal {
    match &e {
        VerifyError::InvalidConfig(errors) => Refusal {
            reason: format!(
                "invalid config ({} error{}): {}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" },
                errors.iter().next().map(ToString::to_string).unwrap_or_default()
            ),
            details: errors
                .iter()
                .map(|e| pb::ConfigError { path: e.path.clone(), message: e.message.clone() })
                .collect(),
        },
        _ => Refusal { reason: e.to_string(), details: Vec::new() },
    }
}

async fn send(tx: &mpsc::Sender<pb::DataPlaneMessage>, kind: pb::data_plane_message::Kind) {
    let _ = tx.send(pb::DataPlaneMessage { kind: Some(kind) }).await;
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An error and its sources, for a log line that says why (a TLS failure is two levels down).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        parts.push(c.to_string());
        cur = c.source();
    }
    parts.dedup();
    parts.join(": ")
}
