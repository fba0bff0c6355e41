//! Endpoint selection. Everything here is computed once per snapshot; a pick is a few atomic
//! operations and, for hashing, one binary search.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;
use http::header::HeaderName;

use crate::headers::cookie;
use sluice_bundle::{Balancer, HashOn};

/// Longest weighted schedule kept; larger weight sums are scaled down to fit.
const MAX_SCHEDULE: u64 = 1 << 16;
/// Ring points per endpoint at average weight. 160 keeps each endpoint's share within a few
/// percent of its weight (the figure ketama uses).
const RING_POINTS_PER_ENDPOINT: u64 = 160;

/// A pool's compiled balancing policy.
#[derive(Debug)]
pub enum Balance {
    RoundRobin,
    /// Smooth weighted round robin, precomputed: the i-th pick is `schedule[i % len]`.
    Weighted {
        schedule: Box<[u32]>,
    },
    LeastRequest,
    ConsistentHash {
        ring: Box<[(u64, u32)]>,
        key: HashKey,
    },
}

/// What consistent hashing reads from a request.
#[derive(Debug)]
pub enum HashKey {
    Header(HeaderName),
    Cookie(Box<str>),
    SourceIp,
}

/// What a pick may look at.
pub struct Inputs<'a> {
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
}

// === impl Balance ===

impl Balance {
    /// Compiles a policy for endpoints with these addresses and weights.
    pub fn new(kind: Balancer, hash_on: Option<&HashOn>, endpoints: &[(&str, u32)]) -> Self {
        match kind {
            Balancer::RoundRobin => Self::RoundRobin,
            Balancer::Weighted => Self::Weighted { schedule: smooth_schedule(endpoints) },
            Balancer::LeastRequest => Self::LeastRequest,
            Balancer::ConsistentHash => Self::ConsistentHash {
                ring: ring(endpoints),
                key: hash_on.map_or(HashKey::SourceIp, HashKey::new),
            },
        }
    }

    /// Index of the endpoint to use, of `n > 0`. `next` is the pool's rotating position, which
    /// outlives snapshots; `in_flight(i)` is endpoint i's count of requests in progress.
    pub fn pick(
        &self,
        n: usize,
        next: &AtomicUsize,
        in_flight: impl Fn(usize) -> usize,
        input: &Inputs<'_>,
    ) -> usize {
        if n <= 1 {
            return 0;
        }
        match self {
            Self::RoundRobin => next.fetch_add(1, Ordering::Relaxed) % n,
            Self::Weighted { schedule } => {
                schedule[next.fetch_add(1, Ordering::Relaxed) % schedule.len()] as usize % n
            }
            Self::LeastRequest => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                if in_flight(b) < in_flight(a) { b } else { a }
            }
            Self::ConsistentHash { ring, key } => match key.hash(input) {
                Some(h) => {
                    let i = ring.partition_point(|(point, _)| *point < h);
                    ring[if i == ring.len() { 0 } else { i }].1 as usize % n
                }
                None => fastrand::usize(..n),
            },
        }
    }
}

// === impl HashKey ===

impl HashKey {
    pub fn new(on: &HashOn) -> Self {
        match on {
            HashOn::Header(h) => {
                HeaderName::from_bytes(h.as_bytes()).map(HashKey::Header).unwrap_or(HashKey::SourceIp)
            }
            HashOn::Cookie(c) => HashKey::Cookie(c.as_str().into()),
            HashOn::SourceIp => HashKey::SourceIp,
        }
    }

    /// The request's key, hashed; `None` when the request lacks the header or cookie.
    pub fn hash(&self, input: &Inputs<'_>) -> Option<u64> {
        match self {
            Self::Header(name) => input.headers.get(name).map(|v| stable_hash(v.as_bytes())),
            Self::Cookie(name) => cookie(input.headers, name).map(stable_hash),
            Self::SourceIp => Some(match input.client_ip {
                IpAddr::V4(ip) => stable_hash(&ip.octets()),
                IpAddr::V6(ip) => stable_hash(&ip.octets()),
            }),
        }
    }
}

/// FNV-1a with a murmur3 finaliser: stable across processes, versions and machines (unlike
/// std's randomly keyed hasher), so every proxy maps a key to the same endpoint.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Weights reduced by their common divisor and, if their sum is still above `cap`, scaled down
/// (each stays at least 1).
fn reduced_weights(endpoints: &[(&str, u32)], cap: u64) -> Vec<u64> {
    let weights: Vec<u64> = endpoints.iter().map(|(_, w)| u64::from((*w).max(1))).collect();
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut weights: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let sum: u64 = weights.iter().sum();
    if sum > cap {
        for w in &mut weights {
            *w = (*w * cap / sum).max(1);
        }
    }
    weights
}

/// nginx's smooth weighted round robin, run for one full cycle: weights 5,1,1 give
/// `a a b a c a a`, not `a a a a a b c`.
fn smooth_schedule(endpoints: &[(&str, u32)]) -> Box<[u32]> {
    let weights = reduced_weights(endpoints, MAX_SCHEDULE);
    let total: i64 = weights.iter().map(|w| *w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule.into_boxed_slice()
}

/// A hash ring with points per endpoint in proportion to its weight, placed by hashing the
/// endpoint's address: the same endpoints give the same ring everywhere.
fn ring(endpoints: &[(&str, u32)]) -> Box<[(u64, u32)]> {
    let weights = reduced_weights(endpoints, u64::MAX);
    let sum: u64 = weights.iter().sum::<u64>().max(1);
    let n = endpoints.len() as u64;
    let mut ring = Vec::new();
    for (i, ((address, _), w)) in endpoints.iter().zip(&weights).enumerate() {
        let points = (RING_POINTS_PER_ENDPOINT * n * w / sum).max(1);
        for p in 0..points {
            ring.push((stable_hash(format!("{address}#{p}").as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

#[cfg(test)]
mod tests;
