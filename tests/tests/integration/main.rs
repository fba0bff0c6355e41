//! The fleet tests, one binary (one link): PostgreSQL, control planes, data planes, upstreams
//! and the CLI (the harness is `sluice-tests`' library). nextest names each test `module::test`.
//!
//! Run with: `cargo nextest run -p sluice-tests` (one module: `… rollouts::`).

mod access;
mod cache;
mod fleet;
mod observability;
mod reports;
mod rollouts;
mod shadow;
mod tracing;
