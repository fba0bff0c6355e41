//! The data plane's integration tests, one binary (one link): the real `sluice-proxy` binary
//! against upstreams on `127.0.0.1:0`. nextest names each test `module::test`.
//!
//! Run with: `cargo nextest run -p sluice-data-plane --test integration` (one module:
//! `… --test integration resilience::`).

mod support;

mod auth;
mod cache;
mod edge_tls;
mod ext_authz;
mod observability;
mod policies;
mod proxy;
mod resilience;
mod shadow;
mod slow_clients;
mod split;
mod swaps;
mod tracing;
mod upstream_tls;
mod websocket;
