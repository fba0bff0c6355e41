//! A route's response cache (`routes[].cache`): HTTP caching as RFC 9111 describes it for a shared
//! cache, opted into per route. What the node may spend is its own flag (`--cache-memory`); a
//! route takes a share of it, so one bundle fits every pod of a fleet.

use schemars::JsonSchema;
use serde::Serialize;

use crate::Duration;
use crate::resilience::ByteSize;

/// Responses of this route are stored and answered from memory while they are fresh, as the
/// upstream's `Cache-Control`, `Expires` and `Vary` allow (RFC 9111, shared cache).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// Percent of the node's cache memory (`sluice-proxy --cache-memory`) this route may use,
    /// above 0 and at most 100. The routes of one config share at most 100.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub memory_percent: f64,
    /// Largest response body stored; larger ones are passed through, not stored. Default 1MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_object: Option<ByteSize>,
    /// Request fields a stored response may vary on (`Vary`, any case). A response varying on
    /// another field, or on `*`, is passed through, not stored. Default `accept`,
    /// `accept-encoding`, `accept-language`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vary: Option<Vec<String>>,
    /// `true`: responses to authorized requests (an `Authorization` field, or a route with `jwt`,
    /// `ext_authz` or `client_certificate`) are stored when the response explicitly allows it
    /// (`public`, `s-maxage` or `must-revalidate`), and served only to authorized requests.
    /// Default false: never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorized: Option<bool>,
    /// Responses without explicit freshness but with `Last-Modified` stay fresh for this percent
    /// of their age at the time (RFC 9111 §4.2.2, at most a day). Absent: no heuristic freshness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub heuristic_percent: Option<f64>,
    /// How long requests for an object already being fetched wait for it before going upstream
    /// themselves. Default 5s; `0s`: requests never wait for each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce_timeout: Option<Duration>,
}

/// Default of `cache.max_object`.
pub const DEFAULT_CACHE_MAX_OBJECT: u64 = 1 << 20;
/// Default of `cache.vary`.
pub const DEFAULT_CACHE_VARY: [&str; 3] = ["accept", "accept-encoding", "accept-language"];
/// Default of `cache.coalesce_timeout`.
pub const DEFAULT_COALESCE_TIMEOUT: Duration = Duration::from_secs(5);
/// The most fields `cache.vary` may name.
pub const MAX_CACHE_VARY: usize = 16;

impl Cache {
    pub fn max_object_or_default(&self) -> u64 {
        self.max_object.map_or(DEFAULT_CACHE_MAX_OBJECT, |b| b.0)
    }

    pub fn coalesce_timeout_or_default(&self) -> Duration {
        self.coalesce_timeout.unwrap_or(DEFAULT_COALESCE_TIMEOUT)
    }

    /// `vary`, lower-cased, defaults applied.
    pub fn vary_or_default(&self) -> Vec<String> {
        match &self.vary {
            Some(v) => v.iter().map(|h| h.to_ascii_lowercase()).collect(),
            None => DEFAULT_CACHE_VARY.iter().map(|h| (*h).to_owned()).collect(),
        }
    }
}
