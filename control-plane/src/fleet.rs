//! Fleets in motion: the newest version of each fleet, fanned out to every connected data plane
//! of that fleet, and the conversation with each data plane.
//!
//! A new version reaches the data planes of this control plane straight from the apply, and
//! those of other control planes on the same database through PostgreSQL's LISTEN/NOTIFY: no
//! polling anywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use opentelemetry::trace::{SpanContext, Status, TraceContextExt as _};
use prost::Message as _;
use sluice_bundle::sign::Signature;
use sluice_proto::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_stream::{Stream, StreamExt as _};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::metrics::FleetCounters;
use crate::recorder::Nack;
use crate::service::ControlPlane;
use crate::store::{HelloFacts, ReportFacts, Store, VersionRow};

/// A fleet's newest version, as it is pushed.
#[derive(Debug)]
pub struct Head {
    pub fleet: String,
    pub version: u64,
    pub sha256: String,
    /// Shared by every push of it: one copy per version, not per stream.
    pub payload: bytes::Bytes,
    pub signatures: Vec<Signature>,
    /// The traced apply that made this version, when there was one on this replica: pushes of
    /// it are spans in that trace, or linked to it.
    pub trace: Option<SpanContext>,
    /// Pushes of it traced so far on this replica (at most [`PUSH_SPANS_PER_VERSION`]).
    pub traced_pushes: AtomicUsize,
}

/// Push spans per version and replica: enough to see how a push went to each of a few hundred
/// nodes, bounded so a fleet of thousands does not flood the trace backend. NACKs are logged and
/// counted whether traced or not.
pub const PUSH_SPANS_PER_VERSION: usize = 256;

/// Which version each data plane of a fleet should serve: the head, except while a rollout holds
/// part of the fleet back.
#[derive(Debug)]
pub struct Plan {
    pub head: Arc<Head>,
    pub hold: Option<Hold>,
}

/// A rollout's hold on a fleet: data planes it has not moved stay on `base`. Kept after a rollout
/// that rolled back, so those data planes are never pushed the rollback's (equal) content.
#[derive(Debug, Clone)]
pub struct Hold {
    pub rollout: u64,
    /// What the fleet served before; `None` if that version is gone.
    pub base: Option<Arc<Head>>,
    /// Data planes moved onto the head (or, after a rollback, onto the rollback version).
    pub moved: BTreeSet<String>,
    pub finished: bool,
}

/// Every fleet's plan, for the fleets some data plane listens to.
#[derive(Default)]
pub struct FleetHub {
    fleets: Mutex<HashMap<String, watch::Sender<Option<Arc<Plan>>>>>,
    /// Cache purges in motion.
    pub purges: Arc<crate::purge::Purges>,
}

/// Who is on the other end of a stream.
#[derive(Debug, Clone)]
pub struct Hello {
    pub node_id: String,
    pub fleet: String,
    pub labels: BTreeMap<String, String>,
    pub build: String,
    pub active_version: u64,
    pub active_sha256: String,
    /// Keys whose signatures its cached bundle carries; empty from data planes of earlier builds.
    pub signature_key_ids: Vec<String>,
}

/// What a data plane says after its hello: answers to pushes, and periodic reports (kept as the
/// node's latest).
#[derive(Debug, Clone)]
pub enum Inbound {
    Ack {
        nonce: String,
        version: u64,
    },
    Nack {
        nonce: String,
        version: u64,
        reason: String,
        details: Vec<(String, String)>,
    },
    Report(Box<pb::Report>),
    /// Its answer to a cache purge.
    CachePurged(pb::CachePurged),
}

/// What a session sends a data plane.
#[derive(Debug, Clone)]
pub enum Push {
    /// A bundle, with the nonce its ACK/NACK will carry and the statement that it is current.
    Bundle { nonce: String, head: Arc<Head>, freshness: Option<Arc<pb::SignedStatement>> },
    /// A renewed statement for the version pushed last.
    Freshness(Arc<pb::SignedStatement>),
    /// The newest root-signed trust set.
    Trust(Arc<pb::SignedStatement>),
    /// Remove stored answers from a route's cache.
    CachePurge(Arc<pb::CachePurge>),
}

/// Pushes queued for a stream before the session waits for the connection to take them.
const PUSH_QUEUE: usize = 4;

/// The session's side of its stream's push queue. futures' bounded channel rather than tokio's:
/// tokio's allocates a 32-slot block and cache-padded state up front, 1.8 KiB per stream, where
/// this one allocates per message and a stream is idle almost all its life.
pub type PushSender = futures_channel::mpsc::Sender<Push>;
/// The stream's side: polled by the connection as it has room to write.
pub type PushReceiver = futures_channel::mpsc::Receiver<Push>;

pub fn push_queue() -> (PushSender, PushReceiver) {
    // futures' capacity is the buffer plus one slot per sender; there is one sender.
    futures_channel::mpsc::channel(PUSH_QUEUE - 1)
}

/// Queues a push, waiting while the queue is full; `Err` once the stream has gone.
async fn send(outbound: &mut PushSender, push: Push) -> Result<(), ()> {
    std::future::poll_fn(|cx| outbound.poll_ready(cx)).await.map_err(drop)?;
    outbound.start_send(push).map_err(drop)
}

/// Pushes of large payloads wait for room in a byte budget and hold it until the data plane
/// answers (by then the bytes have left this process), so a fleet's worth of 10 MiB pushes never
/// sits in memory at once.
#[derive(Debug)]
pub struct Pacer {
    budget: Arc<Semaphore>,
    total_kib: u32,
}

/// Payloads up to this size are pushed without waiting for the budget.
const PACE_ABOVE: usize = 1 << 20;
/// How long a push holds its share of the budget without an answer.
const PACE_HOLD: Duration = Duration::from_secs(60);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Head ===

impl Head {
    /// `trace`: the apply that made the version, when it was traced here.
    pub fn from_row(row: &VersionRow, trace: Option<SpanContext>) -> Arc<Self> {
        Arc::new(Self {
            fleet: row.fleet.clone(),
            version: row.version,
            sha256: row.sha256.clone(),
            payload: row.payload.clone(),
            signatures: row.signatures.clone(),
            trace,
            traced_pushes: AtomicUsize::new(0),
        })
    }
}

// === impl Plan ===

impl Plan {
    /// Everyone gets `head`.
    pub fn all(head: Arc<Head>) -> Arc<Self> {
        Arc::new(Self { head, hold: None })
    }

    /// The version `node` should serve; `None`: leave it as it is.
    pub fn target(&self, node: &str) -> Option<&Arc<Head>> {
        match &self.hold {
            Some(hold) if !hold.moved.contains(node) => hold.base.as_ref(),
            _ => Some(&self.head),
        }
    }

    /// Plans of a fleet only move forward: a newer head, then within one head a rollout's hold
    /// that grows and finishes, then its release; signatures are only ever added. Announcements
    /// can arrive out of order; an older plan never replaces a newer one.
    fn revision(&self) -> (u64, u64, bool, usize, usize) {
        let signatures = self.head.signatures.len()
            + self.hold.as_ref().and_then(|h| h.base.as_ref()).map_or(0, |b| b.signatures.len());
        match &self.hold {
            Some(h) => (self.head.version, h.rollout, h.finished, h.moved.len(), signatures),
            None => (self.head.version, u64::MAX, true, usize::MAX, signatures),
        }
    }
}

// === impl Head ===

impl Head {
    /// The same version with the same signatures (what a session would push the same way).
    fn same_as(&self, other: &Head) -> bool {
        self.version == other.version && self.sha256 == other.sha256 && self.signatures == other.signatures
    }

    /// The ids of the keys that signed it.
    pub fn key_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.signatures.iter().map(|s| s.key_id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

// === impl Pacer ===

impl Pacer {
    pub fn new(budget_bytes: usize) -> Self {
        let total_kib = u32::try_from(budget_bytes >> 10).unwrap_or(u32::MAX).max(1);
        Self { budget: Arc::new(Semaphore::new(total_kib as usize)), total_kib }
    }

    /// Room for pushing `bytes`; at once for small payloads.
    async fn room(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        if bytes <= PACE_ABOVE {
            return None;
        }
        let kib = u32::try_from(bytes >> 10).unwrap_or(u32::MAX).clamp(1, self.total_kib);
        self.budget.clone().acquire_many_owned(kib).await.ok()
    }
}

// === impl FleetHub ===

impl FleetHub {
    /// Makes `plan` the fleet's plan, unless a newer one is already known. The apply that made
    /// the head may have traced it, and the database's announcement of the same head (read
    /// without the trace) can race its publication either way: the trace is kept.
    pub fn publish(&self, plan: Arc<Plan>) {
        let mut fleets = lock(&self.fleets);
        let tx = fleets.entry(plan.head.fleet.clone()).or_insert_with(|| watch::channel(None).0);
        tx.send_if_modified(|current| {
            let plan = match current.as_ref() {
                None => plan,
                // Older, but it brings the trace of the head the newer plan has.
                Some(c) if c.revision() > plan.revision() => {
                    if c.head.trace.is_some() || plan.head.trace.is_none() || !c.head.same_as(&plan.head) {
                        return false;
                    }
                    Arc::new(Plan { head: plan.head.clone(), hold: c.hold.clone() })
                }
                // The same plan again: news only if it brings the trace.
                Some(c) if c.revision() == plan.revision() => {
                    if c.head.trace.is_some() || plan.head.trace.is_none() {
                        return false;
                    }
                    plan
                }
                Some(c)
                    if plan.head.trace.is_none() && c.head.trace.is_some() && c.head.same_as(&plan.head) =>
                {
                    Arc::new(Plan { head: c.head.clone(), hold: plan.hold.clone() })
                }
                Some(_) => plan,
            };
            *current = Some(plan);
            true
        });
    }

    pub fn subscribe(&self, fleet: &str) -> watch::Receiver<Option<Arc<Plan>>> {
        lock(&self.fleets).entry(fleet.to_owned()).or_insert_with(|| watch::channel(None).0).subscribe()
    }

    /// The fleet's plan now.
    pub fn current(&self, fleet: &str) -> Option<Arc<Plan>> {
        lock(&self.fleets).get(fleet).and_then(|tx| tx.borrow().clone())
    }

    pub fn fleets(&self) -> Vec<String> {
        lock(&self.fleets).keys().cloned().collect()
    }

    /// Each fleet's newest known version, for the fleets that have one.
    pub fn versions(&self) -> Vec<(String, u64)> {
        lock(&self.fleets)
            .iter()
            .filter_map(|(fleet, tx)| Some((fleet.clone(), tx.borrow().as_ref()?.head.version)))
            .collect()
    }
}

/// Loads a fleet's plan from the database into the hub, keeping the head's trace.
pub async fn refresh(store: &Store, hub: &FleetHub, fleet: &str) -> crate::error::Result<()> {
    let known = hub.current(fleet).map(|p| p.head.clone());
    if let Some(plan) = plan(store, fleet, known).await? {
        hub.publish(plan);
    }
    Ok(())
}

/// The fleet's plan as stored: its head (`head` when that is still it, signatures and all, so
/// its trace is kept),
/// and its latest rollout's hold if it has one. Head and hold are read in one snapshot: a plan
/// never pairs a rollout's version with the rollout already ended.
pub async fn plan(
    store: &Store,
    fleet: &str,
    head: Option<Arc<Head>>,
) -> crate::error::Result<Option<Arc<Plan>>> {
    let Some(state) = store.plan_state(fleet).await? else { return Ok(None) };
    let head = match head {
        Some(h)
            if h.version == state.head.version
                && h.sha256 == state.head.sha256
                && h.signatures == state.head.signatures =>
        {
            h
        }
        _ => Head::from_row(&state.head, None),
    };
    let hold = state.hold.map(|(r, base, moved)| Hold {
        rollout: r.id,
        base: base.map(|b| Head::from_row(&b, None)),
        moved: moved.into_iter().collect(),
        finished: !r.unfinished(),
    });
    Ok(Some(Arc::new(Plan { head, hold })))
}

/// Hears versions stored by any control plane on the database and publishes them, and key
/// changes (the active set, signatures added to versions in use). Reconnects by itself; after a
/// gap it reloads the keys and every fleet's head, since announcements made meanwhile are lost.
pub async fn follow_announcements(
    store: Store,
    hub: Arc<FleetHub>,
    keyring: Arc<crate::keys::Keyring>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut listener = match store.listener().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot listen for version announcements");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        reload_all(&store, &hub, &keyring).await;
        loop {
            tokio::select! {
                n = listener.recv() => match n {
                    Ok(n) if n.channel() == crate::store::PURGES_CHANNEL => hub.purges.receive(n.payload()),
                    Ok(n) if n.payload() == crate::store::KEYS_CHANGED => reload_all(&store, &hub, &keyring).await,
                    Ok(n) => {
                        if let Err(e) = refresh(&store, &hub, n.payload()).await {
                            tracing::warn!(fleet = n.payload(), error = %e, "cannot load an announced version");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "lost the announcement connection");
                        break;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

async fn reload_all(store: &Store, hub: &FleetHub, keyring: &crate::keys::Keyring) {
    if let Err(e) = keyring.refresh(store).await {
        tracing::warn!(error = %e, "cannot reload the active signing keys");
    }
    for fleet in hub.fleets() {
        if let Err(e) = refresh(store, hub, &fleet).await {
            tracing::warn!(fleet, error = %e, "cannot reload the fleet's head");
        }
    }
}

/// One data plane's conversation: push the version the fleet's plan has for it whenever that
/// moves past what the data plane serves, and record its ACKs, NACKs and reports. Ends when `inbound` closes or on
/// shutdown.
pub async fn session(
    cp: Arc<ControlPlane>,
    hello: Hello,
    mut inbound: Pin<Box<dyn Stream<Item = Inbound> + Send>>,
    mut outbound: PushSender,
    mut shutdown: watch::Receiver<bool>,
) {
    let (fleet, node) = (hello.fleet.clone(), hello.node_id.clone());
    let counters = cp.metrics.fleet(&fleet);
    let _stream = counters.stream_opened();
    let facts = HelloFacts {
        labels: hello.labels.clone(),
        build: hello.build.clone(),
        active_version: hello.active_version,
    };
    cp.recorder.hello(&fleet, &node, facts);
    let mut heads = cp.hub.subscribe(&fleet);
    let mut purges = cp.hub.purges.subscribe(&fleet);
    // Boxed: a database call's future is large, and held inline it would make every session's
    // task that large for as long as the stream lives.
    let mut loaded = true;
    if heads.borrow().is_none()
        && let Err(e) = Box::pin(refresh(&cp.store, &cp.hub, &fleet)).await
    {
        tracing::warn!(fleet, error = %e, "cannot load the fleet's head");
        loaded = false;
    }
    tracing::info!(fleet, node, active = hello.active_version, "data plane connected");
    // No plan once loaded: the fleet has no version at all (head 0).
    let head = heads.borrow().as_ref().map_or(0, |p| p.head.version);
    if loaded && hello.active_version > head {
        // Nothing stored here reaches it until the head passes its version: say so, loudly.
        tracing::error!(
            fleet,
            node,
            active = hello.active_version,
            head,
            "data plane serves a version above the fleet's newest stored one (database restored from an older backup?): \
             `sluice dataplanes` shows it AHEAD; applies are refused until one passes --min-version {} (docs/failure-modes.md)",
            hello.active_version + 1
        );
    }
    // What this data plane has (or has been sent): nothing older is ever pushed, and the same
    // version again only with signatures it lacks.
    let mut sent = Sent {
        version: hello.active_version,
        sha256: hello.active_sha256.clone(),
        key_ids: hello.signature_key_ids.clone(),
        head: None,
    };
    let mut nonce = 0u64;
    // The push awaiting this data plane's answer, traced (ended by its ACK or NACK), with its
    // share of the push budget.
    let mut awaiting: Option<Awaiting> = None;
    let mut renew = tokio::time::interval(cp.keyring.renew_every());
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.tick().await;
    // The trust set first, so a bundle signed by a key only it names is not refused.
    let mut trust = cp.keyring.trust();
    let current = trust.borrow_and_update().clone();
    if let Some((_, t)) = current
        && send(&mut outbound, Push::Trust(t)).await.is_err()
    {
        return;
    }
    heads.mark_changed();
    loop {
        let pacing = awaiting.as_ref().and_then(|a| a.room.as_ref().map(|_| a.since + PACE_HOLD));
        tokio::select! {
            changed = heads.changed() => {
                if changed.is_err() {
                    break;
                }
                let plan = heads.borrow_and_update().clone();
                let Some(head) = plan.as_ref().and_then(|p| p.target(&node)).cloned() else { continue };
                let newer = head.version > sent.version && head.sha256 != sent.sha256;
                // Serving this very version: push it again only if it gained signatures (a key
                // rotation), and a data plane of an earlier build (no key ids) never.
                let resign = head.sha256 == sent.sha256
                    && !sent.key_ids.is_empty()
                    && head.key_ids().iter().any(|k| !sent.key_ids.contains(k));
                if head.sha256 == sent.sha256 && sent.head.is_none() {
                    // Already serving the version meant for it: say it is still current.
                    sent.head = Some(head.clone());
                    if !resign && let Some(f) = cp.keyring.freshness(&head)
                        && send(&mut outbound, Push::Freshness(f)).await.is_err()
                    {
                        break;
                    }
                }
                if !newer && !resign {
                    continue;
                }
                // More than this replica's message limit could carry: pushing it would break the
                // stream over and over. Stored by a replica with a larger --max-bundle-size.
                if head.payload.len() > sluice_bundle::sign::message_limit(cp.max_bundle_bytes) {
                    if sent.version != head.version {
                        tracing::error!(fleet, node, version = head.version, bytes = head.payload.len(), "version is larger than twice this control plane's --max-bundle-size and cannot be pushed from here; give every replica the same cap");
                    }
                    sent.version = head.version;
                    continue;
                }
                nonce += 1;
                if let Some(a) = awaiting.take() {
                    end_push(a.span, "superseded", None);
                }
                let room = cp.pacer.room(head.payload.len()).await;
                sent = Sent {
                    version: head.version,
                    sha256: head.sha256.clone(),
                    key_ids: head.key_ids(),
                    head: Some(head.clone()),
                };
                let span = push_span(plan.as_deref(), &head, &node);
                awaiting = Some(Awaiting { version: head.version, span, room, since: tokio::time::Instant::now() });
                let freshness = cp.keyring.freshness(&head);
                let push = Push::Bundle { nonce: format!("{node}-{nonce}"), head, freshness };
                if send(&mut outbound, push).await.is_err() {
                    break;
                }
                counters.pushed();
            }
            changed = trust.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = trust.borrow_and_update().clone();
                if let Some((_, t)) = current
                    && send(&mut outbound, Push::Trust(t)).await.is_err()
                {
                    break;
                }
            }
            order = purges.recv() => match order {
                Ok(order) => {
                    if send(&mut outbound, Push::CachePurge(order)).await.is_err() {
                        break;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(fleet, node, missed = n, "cache purges came faster than this data plane took them; some were not sent");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {}
            },
            _ = renew.tick() => {
                if let Some(head) = &sent.head
                    && let Some(f) = cp.keyring.freshness(head)
                    && send(&mut outbound, Push::Freshness(f)).await.is_err()
                {
                    break;
                }
            }
            () = sleep_until(pacing) => {
                // No answer in time: give the budget back, keep waiting for the answer.
                if let Some(a) = awaiting.as_mut() {
                    a.room = None;
                }
            }
            message = inbound.next() => match message {
                None => break,
                Some(m) => {
                    // Stored as BIGINT: a version past any real one is not recorded.
                    let claimed = match &m {
                        Inbound::Ack { version, .. } | Inbound::Nack { version, .. } => *version,
                        Inbound::Report(r) => r.active_version,
                        Inbound::CachePurged(_) => 0,
                    };
                    if claimed > crate::store::MAX_VERSION {
                        tracing::warn!(fleet, node, version = claimed, "message names a version above any version; ignored");
                        continue;
                    }
                    let answered = match &m {
                        Inbound::Ack { version, .. } => Some((*version, "ack", None)),
                        Inbound::Nack { version, reason, .. } => Some((*version, "nack", Some(reason.clone()))),
                        Inbound::Report(_) | Inbound::CachePurged(_) => None,
                    };
                    if let Some((version, "nack", _)) = answered
                        && version == sent.version
                    {
                        // Refused: no statements vouching for a version it does not serve, and
                        // no resend of it.
                        sent.head = None;
                        sent.sha256.clear();
                    }
                    if let Some((version, outcome, reason)) = answered
                        && awaiting.as_ref().is_some_and(|a| a.version == version)
                        && let Some(a) = awaiting.take()
                    {
                        end_push(a.span, outcome, reason);
                    }
                    record(&cp, &counters, &fleet, &node, m)
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    if let Some(a) = awaiting.take() {
        end_push(a.span, "disconnected", None);
    }
    tracing::info!(fleet, node, "data plane disconnected");
    cp.recorder.disconnected(&fleet, &node);
}

/// What a session last sent (or the data plane said it has).
struct Sent {
    version: u64,
    sha256: String,
    key_ids: Vec<String>,
    /// The version pushed or confirmed, whose freshness the session renews.
    head: Option<Arc<Head>>,
}

/// A push not answered yet.
struct Awaiting {
    version: u64,
    span: tracing::Span,
    room: Option<OwnedSemaphorePermit>,
    since: tokio::time::Instant,
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A span for pushing `head` to `node`, ended by the node's answer: a child of the apply that
/// made the version when the apply's own publication sends it, a trace of its own linked to the
/// apply when a rollout moves the node later (minutes, perhaps, after the apply ended). None when
/// the apply was not traced here or the version's push spans are used up.
fn push_span(plan: Option<&Plan>, head: &Head, node: &str) -> tracing::Span {
    let Some(apply) = head.trace.as_ref() else { return tracing::Span::none() };
    if head.traced_pushes.fetch_add(1, Ordering::Relaxed) >= PUSH_SPANS_PER_VERSION {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        parent: None,
        "push bundle",
        otel.kind = "producer",
        sluice.fleet = %head.fleet,
        sluice.node = node,
        sluice.version = head.version as i64,
        sluice.outcome = tracing::field::Empty,
    );
    if plan.is_some_and(|p| p.hold.is_some()) {
        span.add_link(apply.clone());
    } else {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(apply.clone()));
    }
    span
}

/// Ends a push span with what became of it: `ack`, `nack` (an error, with the reason),
/// `superseded` by a newer push, or `disconnected` before an answer.
fn end_push(span: tracing::Span, outcome: &'static str, reason: Option<String>) {
    span.record("sluice.outcome", outcome);
    match (outcome, reason) {
        ("ack", _) => {}
        (_, Some(reason)) => span.set_status(Status::error(reason)),
        (other, None) => span.set_status(Status::error(other)),
    }
}

/// Counts `m` and hands it to the recorder: the session goes on without waiting for the
/// database.
fn record(cp: &ControlPlane, counters: &FleetCounters, fleet: &str, node: &str, m: Inbound) {
    match m {
        Inbound::Ack { version, .. } => {
            counters.acked();
            tracing::info!(fleet, node, version, "ACK");
            cp.recorder.ack(fleet, node, version);
        }
        Inbound::Nack { version, reason, details, .. } => {
            counters.nacked();
            tracing::warn!(fleet, node, version, reason, "NACK");
            cp.recorder.nack(fleet, node, Nack { version, reason, details });
        }
        Inbound::CachePurged(answer) => {
            tracing::info!(
                fleet,
                node,
                purge = answer.purge_id,
                removed = answer.removed,
                error = answer.error,
                "cache purged"
            );
            let notice = crate::purge::Notice::Purged {
                id: answer.purge_id,
                node: node.to_owned(),
                removed: answer.removed,
                error: answer.error,
            };
            let store = cp.store.clone();
            // The answer may be for another replica's purge: it goes through the database.
            tokio::spawn(async move {
                let payload = serde_json::to_string(&notice).unwrap_or_default();
                if let Err(e) = store.notify_purges(&payload).await {
                    tracing::warn!(error = %e, "cannot pass on a data plane's answer to a cache purge");
                }
            });
        }
        Inbound::Report(report) => {
            let facts = ReportFacts {
                at: report.at,
                active_version: report.active_version,
                freshness_expires_at: report.freshness_expires_at,
                trust_version: report.trust_version,
                signature_key_ids: report.signature_key_ids.clone(),
            };
            cp.recorder.report(fleet, node, facts, report.encode_to_vec());
        }
    }
}

#[cfg(test)]
mod tests;
