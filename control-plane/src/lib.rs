//! Sluice control plane: stores every config as a numbered, signed, immutable version in
//! PostgreSQL and streams the newest to every data plane of its fleet.
//!
//! Entry points: [`start`] runs a control plane (tests use it in-process); `main.rs` is the
//! binary's flags around it. Layout: `api` (gRPC adapters only), `service` (the domain),
//! `fleet` (fan-out and data-plane sessions), `recorder` (what data planes say, written to the
//! database in batches), `report` (data planes' traffic reports added up),
//! `store` (PostgreSQL, the only module with sqlx), `metrics` (Prometheus counters and their own
//! HTTP listener).

#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod error;
pub mod fleet;
pub mod keys;
pub mod metrics;
pub mod purge;
pub mod recorder;
pub mod report;
pub mod retention;
pub mod rollout;
pub mod service;
pub mod store;
pub mod transport;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::v1::config_service_server::ConfigServiceServer;
use sluice_proto::v1::data_plane_service_server::DataPlaneServiceServer;
use sluice_tls::{ServerFiles, Watched};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;

use crate::access::Access;
use crate::api::{ConfigApi, DataPlaneApi, authenticate};
use crate::fleet::FleetHub;
use crate::keys::Keyring;
use crate::service::ControlPlane;
use crate::store::Store;

/// How a control plane runs.
pub struct Options {
    pub database_url: String,
    pub listen: SocketAddr,
    /// The signing keys this replica holds and its freshness lifetime; which keys sign is the
    /// database's active set.
    pub keyring: Keyring,
    /// Largest bundle payload stored or pushed (told to data planes); gRPC messages may be twice it.
    pub max_bundle_bytes: usize,
    /// Longest any database call may take.
    pub db_timeout: Duration,
    pub security: Security,
    /// Forget data planes not heard from for this long (`None`: keep them).
    pub retention: Option<Duration>,
}

/// How the control plane's gRPC listener is secured.
pub struct Security {
    /// TLS (and client certificates, with a client CA); `None`: plaintext, loopback only.
    pub tls: Option<Arc<Watched<ServerFiles>>>,
    pub access: Access,
    /// Data-plane streams end after about this long, so clients re-handshake.
    pub max_stream_age: Option<Duration>,
}

impl Default for Security {
    /// Plaintext and anonymous: for tests and `--insecure-allow-anonymous` on loopback.
    fn default() -> Self {
        Self { tls: None, access: Access::anonymous(), max_stream_age: None }
    }
}

/// A running control plane.
pub struct Running {
    pub addr: SocketAddr,
    cp: Arc<ControlPlane>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Connects to the database (failing fast if it is not there), migrates it, binds `listen` and
/// serves in the background.
pub async fn start(options: Options) -> anyhow::Result<Running> {
    let store = Store::connect(&options.database_url, options.db_timeout).await?;
    store.migrate().await?;
    let listener = TcpListener::bind(options.listen).await?;
    let addr = listener.local_addr()?;
    let hub = Arc::new(FleetHub::default());
    let keyring = Arc::new(options.keyring);
    let holder = format!("{}@{addr}", std::process::id());
    keyring.bootstrap(&store, &format!("control-plane {holder}")).await?;
    let max_bundle = options.max_bundle_bytes.min(sluice_bundle::sign::MAX_PAYLOAD_CEILING);
    let cp = Arc::new(ControlPlane::new(store.clone(), hub.clone(), keyring.clone(), max_bundle));
    cp.metrics.watch(keyring.watched());
    keyring.watched().spawn(sluice_tls::watch::DEFAULT_INTERVAL);
    let (shutdown, stopping) = watch::channel(false);
    let writer = cp.clone();
    let stop_writer = stopping.clone();
    tokio::spawn(async move { writer.recorder.run(writer.store.clone(), stop_writer).await });
    tokio::spawn(fleet::follow_announcements(store, hub, keyring.clone(), stopping.clone()));
    // Every replica contends; the one holding the lock drives the rollouts.
    tokio::spawn(rollout::driver::run(cp.clone(), holder, stopping.clone()));
    if let Some(retention) = options.retention {
        tokio::spawn(retention::run(cp.clone(), retention, stopping.clone()));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ConfigServiceServer<ConfigApi>>().await;
    health.set_serving::<DataPlaneServiceServer<DataPlaneApi>>().await;
    let Security { tls, access, max_stream_age } = options.security;
    let access = Arc::new(access);
    cp.metrics.set_access(access.clone());
    tokio::spawn(access::audit_refusals(access.clone(), cp.store.clone(), stopping.clone()));
    if let Some(policy) = &access.policy {
        cp.metrics.watch(policy.clone());
        policy.spawn(sluice_tls::watch::DEFAULT_INTERVAL);
    }
    let (config_access, stream_access) = (access.clone(), access.clone());
    // Twice the bundle cap both ways, so an oversize bundle or document arrives whole and is
    // refused with a reason, not a broken stream.
    let limit = sluice_bundle::sign::message_limit(max_bundle);
    let config_api = InterceptedService::new(
        ConfigServiceServer::new(ConfigApi { cp: cp.clone(), access: access.clone() })
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit),
        move |req| authenticate(&config_access, "ConfigService", req),
    );
    let stream_api = InterceptedService::new(
        DataPlaneServiceServer::new(DataPlaneApi {
            cp: cp.clone(),
            access,
            shutdown: stopping.clone(),
            max_stream_age,
        })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit),
        move |req| authenticate(&stream_access, "DataPlaneService", req),
    );
    let mut stop = stopping.clone();
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(config_api)
        .add_service(stream_api);
    let shutdown_signal = async move {
        let _ = stop.changed().await;
    };
    let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> = match &tls {
        Some(tls) => {
            cp.metrics.watch(tls.clone());
            tls.spawn(sluice_tls::watch::DEFAULT_INTERVAL);
            let incoming = transport::tls_incoming(listener, tls.clone(), cp.clone(), stopping);
            Box::pin(router.serve_with_incoming_shutdown(incoming, shutdown_signal))
        }
        None => {
            Box::pin(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown_signal))
        }
    };
    tracing::info!(%addr, signing_keys = ?keyring.active(), tls = tls.is_some(), max_bundle, "control plane serving");
    Ok(Running { addr, cp, shutdown, task: tokio::spawn(server) })
}

// === impl Running ===

impl Running {
    /// Serves `/metrics` (Prometheus) and `/livez` over HTTP on `listener` until
    /// [`Running::stop`]; returns its address. Bind it before [`start`] to fail before serving.
    pub fn serve_metrics(&self, listener: TcpListener) -> std::io::Result<SocketAddr> {
        self.serve_metrics_guarded(listener, metrics::Guard::default())
    }

    /// The same, over TLS and with a token, as beyond loopback.
    pub fn serve_metrics_guarded(
        &self,
        listener: TcpListener,
        guard: metrics::Guard,
    ) -> std::io::Result<SocketAddr> {
        if let Some(tls) = &guard.tls {
            self.cp.metrics.watch(tls.clone());
            tls.spawn(sluice_tls::watch::DEFAULT_INTERVAL);
        }
        metrics::serve(self.cp.clone(), listener, guard, self.shutdown.subscribe())
    }

    /// Re-reads certificate, CRL, policy and signing-key files now (SIGHUP) instead of at the
    /// next poll.
    pub fn reload(&self) {
        self.cp.metrics.reload_watched();
    }

    /// Ends data-plane streams, stops accepting, waits for in-flight calls, and writes what
    /// data planes said last (each bounded).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.cp.recorder.flush(&self.cp.store)).await;
    }
}
