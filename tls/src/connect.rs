//! A TLS connector for gRPC clients (tonic's `Endpoint::connect_with_connector`): the data
//! plane's stream to the control plane and the CLI.
//!
//! Each connection takes the client config in use at that moment, so a rotated client
//! certificate is presented at the next reconnect without a restart.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::{ClientFiles, Watched};

/// Connects over TLS to the host and port of each URI it is asked for.
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<Watched<ClientFiles>>,
}

// === impl TlsConnector ===

impl TlsConnector {
    pub fn new(config: Arc<Watched<ClientFiles>>) -> Self {
        Self { config }
    }
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.current();
        Box::pin(async move {
            let invalid = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
            if uri.scheme_str() != Some("https") {
                return Err(invalid(format!("{uri}: TLS needs an https:// URL")));
            }
            let host = uri.host().ok_or_else(|| invalid(format!("{uri}: no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|e| invalid(format!("{host}: {e}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
