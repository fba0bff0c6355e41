//! sluice: how often peers ran into this process's HTTP/2 abuse limits, for metrics. Counted
//! process-wide (h2 has no per-connection hook); in the Sluice proxy nearly every HTTP/2
//! connection is a client's, on a listener.

use std::sync::atomic::{AtomicU64, Ordering};

/// The limits, in the order [`hits`] reports them.
pub const LIMITS: [&str; 8] = [
    // A stream opened over SETTINGS_MAX_CONCURRENT_STREAMS (refused).
    "concurrent_streams",
    // A header list over SETTINGS_MAX_HEADER_LIST_SIZE (431 for the stream).
    "header_list_size",
    // A header list so far over it that decoding stopped (GOAWAY).
    "header_list_way_too_large",
    // A header block in more CONTINUATION frames than allowed (GOAWAY).
    "continuation_frames",
    // Streams reset by the peer before they were accepted: the rapid-reset attack (GOAWAY).
    "pending_accept_resets",
    // Streams this side had to reset for the peer's errors (GOAWAY).
    "local_error_resets",
    // DATA frames past the connection's budget (GOAWAY).
    "data_frames",
    // PINGs faster than the ping rate limit (GOAWAY).
    "pings",
];

static HITS: [AtomicU64; LIMITS.len()] = [const { AtomicU64::new(0) }; LIMITS.len()];

/// `(limit, times a peer ran into it)` for every limit.
pub fn hits() -> [(&'static str, u64); LIMITS.len()] {
    std::array::from_fn(|i| (LIMITS[i], HITS[i].load(Ordering::Relaxed)))
}

pub(crate) fn hit(limit: &str) {
    if let Some(i) = LIMITS.iter().position(|l| *l == limit) {
        HITS[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The limit a library GOAWAY's debug data names, if it is one of ours.
pub(crate) fn hit_go_away(debug_data: &[u8]) {
    let limit = match debug_data {
        b"header_list_way_too_large" => "header_list_way_too_large",
        b"too_many_continuations" => "continuation_frames",
        b"too_many_resets" => "pending_accept_resets",
        b"too_many_internal_resets" => "local_error_resets",
        b"too_many_data_frames" => "data_frames",
        b"too_many_pings" => "pings",
        _ => return,
    };
    hit(limit);
}
