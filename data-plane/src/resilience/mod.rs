//! What keeps failures contained: circuit breakers, outlier detection, retry and hedge budgets,
//! admission limits. Pure state machines over atomics and `tokio::time::Instant` (so tests run on
//! paused time); the request path in `proxy` and the pool registry wire them in.
//!
//! Architecture invariant: all of this state is kept in registries keyed by listener, pool,
//! endpoint and route names, so it survives snapshot swaps and is dropped with the name.

pub mod breaker;
pub mod latency;
pub mod limit;
pub mod outlier;
pub mod retry;
pub mod window;
