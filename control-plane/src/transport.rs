//! The gRPC listener's connections: TLS, or plaintext on loopback.
//!
//! Each TLS handshake runs on its own task, bounded in time and in number, so a client that
//! stalls mid-handshake, or sends plaintext or garbage to the TLS port, holds nothing but its own
//! task until it is dropped (logged at debug, counted in
//! `sluice_cp_tls_handshake_failures_total`). The config is read per connection, so a reloaded
//! certificate, client CA or CRL applies to the next handshake while open streams go on.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use sluice_tls::server::HANDSHAKE_TIMEOUT;
use sluice_tls::tokio_rustls::TlsAcceptor;
use sluice_tls::tokio_rustls::server::TlsStream;
use sluice_tls::{ServerFiles, Watched};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::service::ControlPlane;

/// Most handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 1024;

/// TLS connections accepted on `listener` until `stop`.
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<Watched<ServerFiles>>,
    cp: Arc<ControlPlane>,
    mut stop: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, say: wait a moment rather than spin.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.current());
            let (tx, cp) = (tx.clone(), cp.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        cp.metrics.tls_handshake_failed();
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        cp.metrics.tls_handshake_failed();
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
