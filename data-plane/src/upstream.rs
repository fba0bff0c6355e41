//! Upstream pools: endpoints, how one is chosen, and the connections to them.
//!
//! Architecture invariant: what must outlive a snapshot (balancer position, per-endpoint counts,
//! pooled connections) lives in [`PoolRegistry`], keyed by pool name and endpoint address. A
//! compiled [`Pool`] only points into it, so a reload keeps that state for every name it keeps.

mod balance;
mod pool;

pub use balance::Balance;
pub use pool::{Endpoint, EndpointState, InFlight, PickContext, Pool, PoolRegistry, UpstreamClient};
