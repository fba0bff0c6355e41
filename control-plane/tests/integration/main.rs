//! The control plane's integration tests, one binary (one link): the real binary or its library
//! against PostgreSQL (`#[sqlx::test]`, a database per test). nextest names each test
//! `module::test`.
//!
//! Run with: `cargo nextest run -p sluice-control-plane --test integration` (PostgreSQL from
//! `DATABASE_URL`, see `.cargo/config.toml`).

mod metrics;
mod reports;
