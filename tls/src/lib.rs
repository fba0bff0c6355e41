//! Sluice TLS: every rustls config the system builds, and the certificate files behind them.
//!
//! One crate so that every TLS endpoint (the control plane's gRPC listener, the data plane's
//! stream client, the CLI, later the proxy's listeners and upstream pools) agrees on the crypto
//! provider (ring only: a second provider makes rustls panic at run time), the protocol versions,
//! how PEM files are read and what a bad file is called, and how files are watched.
//!
//! - [`files`]: PEM certificates, keys and CRLs read from disk, with errors that name the file.
//! - [`cert`]: the few facts read out of a certificate (expiry, SANs).
//! - [`identity`]: who a certificate speaks for (SPIFFE-style URI SANs).
//! - [`config`]: server and client `rustls` configs from those files.
//! - `connect` (feature `connect`): a TLS connector for gRPC clients.
//! - `pki` (feature `pki`): a development PKI (`sluice certs init`, and tests).
//! - [`edge`]: TLS termination for the proxy's listeners: a config per certificate chosen by SNI,
//!   handshake failures by reason, what a handshake established.
//! - [`server`]: accepting a connection that is TLS when files are given (the small HTTP
//!   listeners).
//! - [`upstream`]: the client config of a pool's connections to its endpoints (CA file or system
//!   roots, mTLS, ALPN, verification off on request) and handshake failures in words.
//! - [`watch`]: [`Watched`], a value built from files and rebuilt when their content changes
//!   (Kubernetes swaps Secret files through symlinks; content hashes see through that), keeping
//!   the last good value when a new file is broken and counting the failures.
//!
//! No tonic, no hyper: the control plane does not need the proxy crate for TLS, and the proxy
//! does not need gRPC for its listeners.

#![forbid(unsafe_code)]

pub mod cert;
pub mod config;
#[cfg(feature = "connect")]
pub mod connect;
pub mod edge;
pub mod files;
pub mod identity;
#[cfg(feature = "pki")]
pub mod pki;
pub mod server;
pub mod upstream;
pub mod watch;

use std::path::PathBuf;

pub use cert::CertInfo;
pub use config::{ClientAuth, ClientFiles, ServerFiles, client_config, server_config};
pub use identity::Identity;
pub use upstream::UpstreamFiles;
pub use watch::{Build, Contents, Reload, Watched, WatchedStatus};

pub use rustls;
pub use tokio_rustls;

/// Why TLS material could not be used. Every variant names the file it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("{path}: not valid PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path}: not a certificate sluice can read: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("{key}: does not match the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// The one crypto provider: ring, as the product chose (small, fast to build). rustls 0.23.48
/// deprecates ring's default provider because it has no post-quantum key exchange; that needs
/// aws-lc-rs, a second provider this workspace does not take on.
#[allow(deprecated)]
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}
