//! Managed mode: a stream to the control plane. Each pushed bundle is verified, compiled and
//! swapped in, then ACKed; or refused with a NACK that says why, while the last good snapshot
//! keeps serving. The last accepted bundle is kept on disk exactly as received, so a data plane
//! that starts while the control plane is away verifies and serves it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prost::Message as _;
use sluice_bundle::Config;
use sluice_bundle::sign::freshness::{Claim, Freshness, FreshnessError};
use sluice_bundle::sign::trust::{RootKeys, TrustSet};
use sluice_bundle::sign::{
    DEFAULT_MAX_PAYLOAD, Expectations, MAX_PAYLOAD_CEILING, Payload, Signature, TrustedKeys, Verified,
    VerifyError, message_limit, sha256_hex,
};
use sluice_proto::v1 as pb;
use sluice_proto::v1::data_plane_service_client::DataPlaneServiceClient;
use sluice_tls::connect::TlsConnector;
use sluice_tls::watch::{Build, Contents};
use sluice_tls::{CertInfo, ClientFiles, TlsError, Watched};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::Instrument as _;

use crate::server::Proxy;

/// How often a report is sent by default; each also keeps `last_seen` fresh on the control plane.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// `tokio::time::interval` panics on zero; no report interval is shorter than this.
const MIN_REPORT_EVERY: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CACHE_FILE: &str = "bundle.pb";
/// The newest freshness statement of the cached bundle, beside it.
const FRESHNESS_FILE: &str = "freshness.pb";
/// The root-signed trust set in force.
const TRUST_FILE: &str = "trust.pb";

/// Who this data plane is and whom it trusts.
#[derive(Debug, Clone)]
pub struct Managed {
    /// `http://host:port` of the control plane.
    pub control_plane: String,
    pub fleet: String,
    pub node_id: String,
    pub labels: BTreeMap<String, String>,
    /// The keys bundles and statements must be signed with; re-read when the file changes.
    pub trusted: Arc<Watched<TrustedKeysFile>>,
    pub state_dir: PathBuf,
    /// Listener addresses this node binds instead of the config's.
    pub listener_overrides: Vec<(String, SocketAddr)>,
    /// How often a traffic report goes to the control plane ([`REPORT_EVERY`] by default).
    pub report_every: Duration,
    /// CA, and this node's certificate and key, for an `https://` control plane. Read anew at
    /// each connection, so a certificate rotated on disk is presented at the next reconnect.
    pub tls: Option<Arc<Watched<ClientFiles>>>,
    /// At boot, refuse a cached bundle no current freshness statement vouches for, instead of
    /// serving it with a warning.
    pub refuse_stale_cache: bool,
    /// Root keys trust sets on the stream must be signed with (a threshold of them); `None`:
    /// trust sets are ignored and the trusted-keys file rules.
    pub roots: Option<RootKeys>,
    /// The trust set in force, once one was taken: it, not the file, names the trusted keys.
    pub trust: Arc<ArcSwapOption<(u64, TrustedKeys)>>,
}

/// A trusted-keys file, watched.
#[derive(Debug, Clone)]
pub struct TrustedKeysFile(pub PathBuf);

/// The version being served, and what vouches for it.
#[derive(Debug, Clone, Default)]
struct Active {
    version: u64,
    sha256: String,
    /// The bundle as cached (its signatures grow with key rotations).
    bundle: pb::SignedBundle,
    /// The newest statement taken for it.
    freshness: Option<Freshness>,
}

/// What lasts across streams.
struct State {
    active: Active,
    /// The payload cap the control plane told (clamped); gRPC messages may be twice it.
    max_bundle: usize,
}

/// Why a bundle was not applied, as a NACK says it.
struct Refusal {
    reason: String,
    details: Vec<pb::ConfigError>,
}

/// Why a stream ended on purpose.
const RAISE_LIMIT: &str = "reconnecting with a message limit for the bundle cap the control plane told";

// === impl TrustedKeysFile ===

impl Build for TrustedKeysFile {
    type Output = TrustedKeys;

    fn paths(&self) -> Vec<PathBuf> {
        vec![self.0.clone()]
    }

    fn build(&self, contents: &Contents) -> Result<(TrustedKeys, Option<CertInfo>), TlsError> {
        let text = String::from_utf8_lossy(contents.get(&self.0));
        let keys = TrustedKeys::from_file(&text)
            .map_err(|e| TlsError::Invalid { path: self.0.clone(), reason: e.to_string() })?;
        tracing::info!(path = %self.0.display(), keys = ?keys.key_ids(), "trusted keys loaded");
        Ok((keys, None))
    }
}

// === impl Managed ===

impl Managed {
    /// Serves the cached bundle, verified again, if there is one. A cache that fails
    /// verification (tampered, signed by keys no longer trusted, for another fleet) is refused
    /// and logged. One no current freshness statement vouches for is served with a warning
    /// (availability first), or refused with `refuse_stale_cache`.
    pub fn boot_from_cache(&self, proxy: &Proxy) -> Option<u64> {
        let _node = self.span().entered();
        if let Some(cached) = read_statement(&self.state_dir.join(TRUST_FILE)) {
            self.take_trust(proxy, &cached, false);
        }
        let path = self.state_dir.join(CACHE_FILE);
        let bytes = std::fs::read(&path).ok()?;
        let bundle = match pb::SignedBundle::decode(bytes.as_slice()) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cached bundle is unreadable; waiting for the control plane");
                return None;
            }
        };
        let statement = read_statement(&self.state_dir.join(FRESHNESS_FILE));
        let verified = match self.verify(&bundle, None, MAX_PAYLOAD_CEILING) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(path = %path.display(), reason = %e, "cached bundle refused; waiting for the control plane");
                proxy.record_rejection(vec![e.to_string()]);
                return None;
            }
        };
        let (freshness, expires) = match self.judge(&verified, statement.as_ref(), unix_now()) {
            Ok(cover) => cover,
            Err(e) if self.refuse_stale_cache => {
                tracing::error!(path = %path.display(), reason = %e, "cached bundle is not vouched for by a current freshness statement and --refuse-stale-cache is set; waiting for the control plane");
                proxy.record_rejection(vec![format!("freshness: {e}")]);
                proxy.freshness().refused(&e);
                return None;
            }
            Err(e) => {
                tracing::warn!(version = verified.payload.version, reason = %e, "serving the cached bundle although no current freshness statement vouches for it (availability first; --refuse-stale-cache refuses instead) until the control plane answers");
                proxy.freshness().refused(&e);
                (None, lapsed_at(&verified.payload, statement.as_ref()))
            }
        };
        match self.swap(proxy, verified, bundle, freshness, expires) {
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

    /// What every log line about this node's versions sits in: its fleet and node id.
    fn span(&self) -> tracing::Span {
        tracing::info_span!("managed", fleet = %self.fleet, node = %self.node_id)
    }

    /// Streams from the control plane until the process ends, reconnecting with jittered
    /// exponential backoff. Traffic is served throughout.
    pub async fn run(self, proxy: Proxy) {
        let span = self.span();
        self.serve(proxy).instrument(span).await
    }

    async fn serve(self, proxy: Proxy) {
        let active = match proxy.snapshot() {
            Some(s) => {
                let cached = std::fs::read(self.state_dir.join(CACHE_FILE))
                    .ok()
                    .and_then(|b| pb::SignedBundle::decode(b.as_slice()).ok())
                    .filter(|b| sha256_hex(&b.payload) == s.meta.sha256);
                Active {
                    version: s.meta.version,
                    sha256: s.meta.sha256.clone(),
                    bundle: cached.unwrap_or_default(),
                    freshness: read_statement(&self.state_dir.join(FRESHNESS_FILE))
                        .and_then(|st| Freshness::decode(&st.statement).ok())
                        .filter(|f| f.sha256 == s.meta.sha256),
                }
            }
            None => Active::default(),
        };
        let mut state = State { active, max_bundle: DEFAULT_MAX_PAYLOAD };
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.stream(&proxy, &mut state, &mut backoff).await {
                Ok(()) => {
                    tracing::warn!(control_plane = %self.control_plane, "control plane closed the stream")
                }
                Err(e) if e.message() == RAISE_LIMIT => {
                    tracing::info!(max_bundle = state.max_bundle, "{RAISE_LIMIT}");
                    continue;
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

    /// One stream: hello, then bundles and statements in, and ACK/NACK and reports out.
    async fn stream(
        &self,
        proxy: &Proxy,
        state: &mut State,
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
        let active = &state.active;
        let hello = pb::Hello {
            node_id: self.node_id.clone(),
            fleet: self.fleet.clone(),
            labels: self.labels.clone().into_iter().collect(),
            build: env!("CARGO_PKG_VERSION").into(),
            active_version: active.version,
            active_sha256: active.sha256.clone(),
            signature_key_ids: key_ids(&active.bundle),
        };
        send(&tx, pb::data_plane_message::Kind::Hello(hello)).await;
        // Room for a bundle over the cap to arrive whole and be NACKed with the reason.
        let limit = message_limit(state.max_bundle);
        let mut inbound = DataPlaneServiceClient::new(channel)
            .max_decoding_message_size(limit)
            .stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        tracing::info!(control_plane = %self.control_plane, active = active.version, "connected to the control plane");
        *backoff = Duration::from_millis(100);
        // The first tick is immediate: a report right after the hello.
        let mut reports = tokio::time::interval(self.report_every.max(MIN_REPORT_EVERY));
        reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = inbound.message() => {
                    use pb::control_plane_message::Kind;
                    match message?.map(|m| m.kind) {
                        None => return Ok(()),
                        Some(Some(Kind::Bundle(push))) => {
                            let answer = self.on_push(proxy, state, push);
                            send(&tx, answer).await;
                        }
                        Some(Some(Kind::Freshness(statement))) => self.renew(proxy, state, &statement),
                        Some(Some(Kind::Trust(statement))) => self.take_trust(proxy, &statement, true),
                        Some(Some(Kind::CachePurge(purge))) => {
                            let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
                            let result = crate::admin::cache::purge_route(
                                &proxy.shared,
                                &purge.route,
                                opt(&purge.path).as_deref(),
                                opt(&purge.prefix).as_deref(),
                            );
                            let answer = pb::CachePurged {
                                purge_id: purge.purge_id,
                                removed: result.map_or(0, |n| n as u64),
                                error: result.err().map(|e| e.message(&purge.route)).unwrap_or_default(),
                            };
                            send(&tx, pb::data_plane_message::Kind::CachePurged(answer)).await;
                        }
                        Some(Some(Kind::Settings(settings))) => {
                            let told = usize::try_from(settings.max_bundle_bytes).unwrap_or(usize::MAX);
                            let cap = if told == 0 { DEFAULT_MAX_PAYLOAD } else { told.min(MAX_PAYLOAD_CEILING) };
                            let raise = message_limit(cap) > limit;
                            state.max_bundle = cap;
                            if raise {
                                return Err(tonic::Status::aborted(RAISE_LIMIT));
                            }
                        }
                        // A kind from a newer control plane.
                        Some(None) => {}
                    }
                }
                _ = reports.tick() => {
                    let report = pb::Report {
                        at: unix_now(),
                        active_version: state.active.version,
                        routes: crate::report::routes(&proxy.shared),
                        versions: crate::report::versions(&proxy.shared),
                        freshness_expires_at: proxy.freshness().expires().unwrap_or(0),
                        trust_version: proxy.freshness().trust_version(),
                        signature_key_ids: key_ids(&state.active.bundle),
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
        state: &mut State,
        push: pb::BundlePush,
    ) -> pb::data_plane_message::Kind {
        let bundle = push.bundle.unwrap_or_default();
        let version = Payload::decode(&bundle.payload).map(|p| p.version).unwrap_or(0);
        let ack = |version| pb::data_plane_message::Kind::Ack(pb::Ack { nonce: push.nonce.clone(), version });
        if sha256_hex(&bundle.payload) == state.active.sha256 {
            // Already serving exactly this: a resend after reconnecting, or signatures added by
            // a key rotation, which the cache takes so it still verifies once the old key goes.
            self.resigned(state, bundle);
            if let Some(statement) = &push.freshness {
                self.renew(proxy, state, statement);
            }
            return ack(state.active.version);
        }
        let accepted = self
            .verify(&bundle, Some(state.active.version).filter(|v| *v > 0), state.max_bundle)
            .map_err(|e| {
                proxy.record_rejection(vec![e.to_string()]);
                refusal(e)
            })
            .and_then(|verified| {
                let (freshness, expires) =
                    self.judge(&verified, push.freshness.as_ref(), unix_now()).map_err(|e| {
                        proxy.freshness().refused(&e);
                        let e = VerifyError::Freshness(e);
                        proxy.record_rejection(vec![e.to_string()]);
                        refusal(e)
                    })?;
                let active = self.swap(proxy, verified, bundle, freshness, expires)?;
                match &push.freshness {
                    Some(statement) => self.persist_statement(statement),
                    None => {
                        let _ = std::fs::remove_file(self.state_dir.join(FRESHNESS_FILE));
                    }
                }
                Ok(active)
            });
        match accepted {
            Ok(now) => {
                state.active = now;
                tracing::info!(version = state.active.version, "bundle applied; ACK");
                ack(state.active.version)
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

    /// Verifies the bundle's signatures and claims against the keys trusted now.
    fn verify(
        &self,
        bundle: &pb::SignedBundle,
        active: Option<u64>,
        max_payload: usize,
    ) -> Result<Verified, VerifyError> {
        let expect = Expectations { fleet: &self.fleet, active_version: active, max_payload };
        self.keys().verify(&bundle.payload, &signatures(&bundle.signatures), &expect)
    }

    /// The keys trusted now: the root-signed trust set in force, else the trusted-keys file.
    fn keys(&self) -> Arc<TrustedKeys> {
        match self.trust.load_full() {
            Some(t) => Arc::new(t.1.clone()),
            None => self.trusted.current(),
        }
    }

    /// Takes a trust set signed by the threshold of root keys and above the one in force;
    /// anything else is logged and counted and changes nothing. `fresh`: from the stream (cached
    /// when taken), else read back from the cache at boot.
    fn take_trust(&self, proxy: &Proxy, statement: &pb::SignedStatement, fresh: bool) {
        let Some(roots) = &self.roots else {
            if fresh {
                tracing::debug!(
                    "a trust set came on the stream; without --root-keys the trusted-keys file rules"
                );
            }
            return;
        };
        let current = self.trust.load().as_ref().map_or(0, |t| t.0);
        let checked =
            roots.verify(&statement.statement, &signatures(&statement.signatures), current).and_then(|set| {
                Ok((
                    set.trusted()
                        .map_err(|e| sluice_bundle::sign::trust::TrustError::Malformed(e.to_string()))?,
                    set,
                ))
            });
        match checked {
            Ok((keys, TrustSet { version, .. })) => {
                tracing::info!(version, keys = ?keys.key_ids(), "trust set taken: it names the keys bundles must be signed with");
                self.trust.store(Some(Arc::new((version, keys))));
                proxy.freshness().set_trust_version(version);
                if fresh && let Err(e) = self.persist(TRUST_FILE, &statement.encode_to_vec()) {
                    tracing::warn!(error = %e, "cannot cache the trust set");
                }
            }
            // The one in force again: every stream starts with it.
            Err(sluice_bundle::sign::trust::TrustError::NotNewer { version, current })
                if version == current => {}
            Err(e) => {
                proxy.freshness().trust_refused();
                tracing::warn!(reason = %e, "trust set refused; the keys in force stay");
            }
        }
    }

    /// What vouches for a verified bundle now: its freshness statement (and when that lapses),
    /// or, for a bundle from a control plane of an earlier build, its own `expires_at`.
    fn judge(
        &self,
        verified: &Verified,
        statement: Option<&pb::SignedStatement>,
        now: i64,
    ) -> Result<(Option<Freshness>, i64), FreshnessError> {
        let payload = &verified.payload;
        match statement {
            Some(s) => {
                let claim = Claim { fleet: &self.fleet, version: payload.version, sha256: &verified.sha256 };
                let f = self.keys().verify_freshness(&s.statement, &signatures(&s.signatures), claim, now)?;
                let expires = f.expires;
                Ok((Some(f), expires))
            }
            None if payload.requires_freshness => Err(FreshnessError::Missing),
            None if payload.expires_at > now => Ok((None, payload.expires_at)),
            None => Err(FreshnessError::Lapsed { expires: payload.expires_at, now }),
        }
    }

    /// Compile → swap → cache, and the freshness it is served with.
    fn swap(
        &self,
        proxy: &Proxy,
        verified: Verified,
        bundle: pb::SignedBundle,
        freshness: Option<Freshness>,
        expires: i64,
    ) -> Result<Active, Refusal> {
        let Verified { payload, config, sha256, .. } = verified;
        let config = self.with_overrides(config);
        let source = format!("control-plane:{} fleet {}", self.control_plane, self.fleet);
        proxy
            .apply_version(config, &source, sha256.clone(), Some(payload.version))
            .map_err(|e| Refusal { reason: e.to_string(), details: Vec::new() })?;
        proxy.freshness().set_expires(expires);
        if let Err(e) = self.persist(CACHE_FILE, &bundle.encode_to_vec()) {
            tracing::warn!(error = %e, "cannot cache the bundle; a restart without the control plane would not serve it");
        }
        Ok(Active { version: payload.version, sha256, bundle, freshness })
    }

    /// Takes a renewed statement for the active version; a refused one is logged and counted,
    /// and changes nothing.
    fn renew(&self, proxy: &Proxy, state: &mut State, statement: &pb::SignedStatement) {
        let active = &mut state.active;
        if active.version == 0 {
            return;
        }
        let claim = Claim { fleet: &self.fleet, version: active.version, sha256: &active.sha256 };
        let checked = self.keys().verify_freshness(
            &statement.statement,
            &signatures(&statement.signatures),
            claim,
            unix_now(),
        );
        match checked {
            Ok(f) if active.freshness.as_ref().is_some_and(|old| old.issued >= f.issued) => {}
            Ok(f) => {
                tracing::debug!(version = active.version, expires = f.expires, "freshness renewed");
                proxy.freshness().set_expires(f.expires);
                active.freshness = Some(f);
                self.persist_statement(statement);
            }
            Err(e) => {
                proxy.freshness().refused(&e);
                tracing::warn!(version = active.version, reason = %e, "freshness statement refused; the active bundle keeps serving");
            }
        }
    }

    /// The same payload with another signature set: cached if it still verifies.
    fn resigned(&self, state: &mut State, bundle: pb::SignedBundle) {
        if bundle.signatures == state.active.bundle.signatures {
            return;
        }
        match self.verify(&bundle, None, MAX_PAYLOAD_CEILING) {
            Ok(_) => {
                if let Err(e) = self.persist(CACHE_FILE, &bundle.encode_to_vec()) {
                    tracing::warn!(error = %e, "cannot cache the bundle's new signatures");
                }
                tracing::info!(version = state.active.version, keys = ?bundle.signatures.iter().map(|s| &s.key_id).collect::<Vec<_>>(), "bundle signatures updated");
                state.active.bundle = bundle;
            }
            Err(e) => {
                tracing::warn!(reason = %e, "resent bundle's signatures refused; keeping the cached ones")
            }
        }
    }

    fn persist_statement(&self, statement: &pb::SignedStatement) {
        if let Err(e) = self.persist(FRESHNESS_FILE, &statement.encode_to_vec()) {
            tracing::warn!(error = %e, "cannot cache the freshness statement");
        }
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

    /// Writes a cache file exactly as received, atomically (temporary file, then rename).
    fn persist(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        let tmp = self.state_dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(tmp, self.state_dir.join(name))
    }
}

fn read_statement(path: &Path) -> Option<pb::SignedStatement> {
    pb::SignedStatement::decode(std::fs::read(path).ok()?.as_slice()).ok()
}

/// When a bundle served stale stopped being vouched for: its statement's expiry if the
/// statement says, else its own `expires_at` (for the metric an alert compares with now).
fn lapsed_at(payload: &Payload, statement: Option<&pb::SignedStatement>) -> i64 {
    statement
        .and_then(|s| Freshness::decode(&s.statement).ok())
        .filter(|f| f.version == payload.version)
        .map_or(payload.expires_at.min(unix_now()), |f| f.expires)
}

/// The keys that signed a bundle, each once.
fn key_ids(bundle: &pb::SignedBundle) -> Vec<String> {
    let mut ids: Vec<String> = bundle.signatures.iter().map(|s| s.key_id.clone()).collect();
    ids.sort();
    ids.dedup();
    ids
}

fn signatures(s: &[pb::Signature]) -> Vec<Signature> {
    s.iter().map(|s| Signature { key_id: s.key_id.clone(), signature: s.signature.clone() }).collect()
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
