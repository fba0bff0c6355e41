//! Header rules every proxied request and response follows: hop-by-hop removal, forwarding
//! headers, request ids.

use bytes::Bytes;
use http::HeaderMap;
use http::header::{
    CONNECTION, COOKIE, Entry, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Marks a mirrored copy of a request, so the candidate (and its logs) can tell it from real traffic.
pub const X_SLUICE_SHADOW: HeaderName = HeaderName::from_static("x-sluice-shadow");
/// Names the pool whose circuit breaker refused the request.
pub const X_SLUICE_CIRCUIT_OPEN: HeaderName = HeaderName::from_static("x-sluice-circuit-open");
/// draft-ietf-httpapi-ratelimit-headers.
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The verified client certificate, in Envoy's format.
pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1, plus the legacy ones
/// every proxy strips).
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Whether an HTTP/1.1 request asks to switch to WebSocket (`Connection: upgrade`, `Upgrade:
/// websocket`). Other protocols are not passed through: an `Upgrade: h2c` forwarded to an
/// upstream that takes it would let a client speak HTTP/2 straight to it, past every route.
pub fn websocket_upgrade(version: http::Version, headers: &HeaderMap) -> bool {
    version == http::Version::HTTP_11 && connection_has(headers, b"upgrade") && {
        let mut values = headers.get_all(UPGRADE).iter();
        values.next().is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"))
            && values.next().is_none()
    }
}

/// Whether a `Connection` field lists `token` (any case).
pub fn connection_has(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token)))
}

/// Header maps kept for reuse on this thread. A map's two arrays (about 1.3 KiB for the 16 slots
/// a request with a few fields and the proxy's additions needs) are over glibc's per-thread cache
/// size, so allocating and freeing them per message took the allocator's slow path. Each worker
/// builds a request map when it parses a client's head and a response map when it parses an
/// upstream's, and lets one go after each (the response once written, the request once
/// answered): they circulate here instead. Bounded, so a burst leaves at most this many behind.
pub(crate) mod spare {
    use std::cell::RefCell;

    use http::HeaderMap;

    /// Maps kept per thread.
    const KEPT: usize = 64;
    /// Maps that grew past this many slots (a message with many fields) are not kept.
    const LARGEST: usize = 48;

    thread_local! {
        static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty map with room for at least `fields`, reused when one is spare.
    pub(crate) fn map(fields: usize) -> HeaderMap {
        let mut map = SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default();
        map.reserve(fields);
        map
    }

    /// Gives `map` back for reuse (its fields are dropped now). One that held many values is
    /// not kept: besides its slots, the room its repeated values took stays with it.
    pub(crate) fn give(mut map: HeaderMap) {
        if map.capacity() == 0 || map.capacity() > LARGEST || map.len() > LARGEST {
            return;
        }
        map.clear();
        SPARE.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < KEPT {
                s.push(map);
            }
        });
    }
}

/// A request id we accept from a client: short, printable, no spaces.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Where `name` is in [`HOP_BY_HOP`], in any case. Runs for every field of every message: the
/// length and first byte pick the one name it could be, and only that one is compared.
fn hop_by_hop(name: &[u8]) -> Option<usize> {
    let i = match (name.len(), name.first().map(u8::to_ascii_lowercase)) {
        (10, Some(b'c')) => 0,
        (10, Some(b'k')) => 1,
        (16, _) => 2,
        (18, _) => 3,
        (19, _) => 4,
        (2, _) => 5,
        (7, Some(b't')) => 6,
        (17, _) => 7,
        (7, Some(b'u')) => 8,
        _ => return None,
    };
    HOP_BY_HOP[i].as_str().as_bytes().eq_ignore_ascii_case(name).then_some(i)
}

/// Removes hop-by-hop headers, including any the `Connection` header names (RFC 9110 §7.6.1).
/// One pass over the names (not the values) finds which are there; `Connection`'s values are read
/// only when it is, so the common case (none, or `Connection: keep-alive`) costs a scan of the
/// names and at most one removal.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop(name.as_str().as_bytes()) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Fields a `Connection` option names; a name is only made (allocated) for one that is there.
    let mut named: Vec<HeaderName> = Vec::new();
    if present & 1 != 0 {
        for value in headers.get_all(CONNECTION) {
            for token in value.as_bytes().split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.is_empty() || hop_by_hop(token).is_some() {
                    continue;
                }
                if let Some(k) = headers.keys().find(|k| k.as_str().as_bytes().eq_ignore_ascii_case(token))
                    && !named.contains(k)
                {
                    named.push(k.clone());
                }
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The host a request names: an absolute-form target's (or HTTP/2's `:authority`), without
/// userinfo, else its `Host` (RFC 9112 §3.2.2). As sent: port and case untouched.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    match uri.authority() {
        Some(a) => Some(a.as_str().rsplit_once('@').map_or(a.as_str(), |(_userinfo, host)| host)),
        None => headers.get(http::header::HOST).and_then(|h| h.to_str().ok()),
    }
}

/// Who a request from a trusted proxy is for, and whether it came over HTTPS (`None`: no
/// `X-Forwarded-Proto` saying). The client is the last `X-Forwarded-For` address that is not a
/// trusted proxy itself (as nginx's `real_ip_recursive`); the walk stops at anything that is not
/// an address, and a list of trusted addresses only names its first. The scheme is the last
/// `X-Forwarded-Proto` value: the one the nearest proxy set.
pub fn forwarded_by_trusted(
    headers: &HeaderMap,
    peer: std::net::IpAddr,
    trusted: &[sluice_bundle::Cidr],
) -> (std::net::IpAddr, Option<bool>) {
    let mut client = peer;
    'walk: for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(list) = value.to_str() else { break };
        for hop in list.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<std::net::IpAddr>() else { break 'walk };
            client = ip;
            if !trusted.iter().any(|net| net.contains(ip)) {
                break 'walk;
            }
        }
    }
    let https = headers
        .get_all(X_FORWARDED_PROTO)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok()?.rsplit(',').next())
        .map(|p| p.trim().eq_ignore_ascii_case("https"));
    (client, https)
}

/// Sets `X-Forwarded-For` (appending the client to any list it brought), `X-Forwarded-Proto` and
/// `X-Forwarded-Host`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    proto: HeaderValue,
    host: Option<HeaderValue>,
) {
    // One lookup (the name is hashed once) whether or not the client sent a list.
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(client_ip.clone());
        }
        Entry::Occupied(mut e) => {
            let mut list = Vec::with_capacity(64);
            for v in e.iter() {
                list.extend_from_slice(v.as_bytes());
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(client_ip.as_bytes());
            // Replaces every field of the name with the one list.
            e.insert(HeaderValue::from_bytes(&list).unwrap_or_else(|_| client_ip.clone()));
        }
    }
    headers.insert(X_FORWARDED_PROTO, proto);
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST, h),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

/// The client's `X-Request-Id` if it is usable, otherwise a new random (UUID v4) id; and
/// whether the id is a new one (hex digits and dashes: the access log copies it without a scan).
pub fn request_id(headers: &HeaderMap) -> (HeaderValue, bool) {
    match headers.get(X_REQUEST_ID) {
        Some(v) if is_usable_id(v.as_bytes()) => (v.clone(), false),
        _ => (new_request_id(), true),
    }
}

fn is_usable_id(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(u8::is_ascii_graphic)
}

/// A random UUID v4 in its usual 36-character form.
pub fn new_request_id() -> HeaderValue {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    // 8-4-4-4-12 digits, a byte's two at a time.
    let mut out = [b'-'; 36];
    crate::telemetry::hex_into(&mut out[..8], &bytes[..4]);
    crate::telemetry::hex_into(&mut out[9..13], &bytes[4..6]);
    crate::telemetry::hex_into(&mut out[14..18], &bytes[6..8]);
    crate::telemetry::hex_into(&mut out[19..23], &bytes[8..10]);
    crate::telemetry::hex_into(&mut out[24..], &bytes[10..]);
    // Hex digits and dashes are always a valid header value. Owned by its `Bytes`: one
    // allocation, and clones (the upstream's copy, the response's) only count references.
    HeaderValue::from_maybe_shared(Bytes::from_owner(out))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get_all(COOKIE).iter().find_map(|v| {
        v.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii_start();
            let rest = pair.strip_prefix(name.as_bytes())?;
            rest.strip_prefix(b"=")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_name_the_client_and_scheme() {
        let trusted = [sluice_bundle::Cidr::parse("10.0.0.0/8").unwrap()];
        let peer: std::net::IpAddr = "10.0.0.5".parse().unwrap();
        let with = |xff: &[&str], xfp: &[&str]| {
            let mut h = HeaderMap::new();
            for v in xff {
                h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
            }
            for v in xfp {
                h.append(X_FORWARDED_PROTO, HeaderValue::from_str(v).unwrap());
            }
            let (ip, https) = forwarded_by_trusted(&h, peer, &trusted);
            (ip.to_string(), https)
        };
        // The client's own claims left of the first untrusted address do not count.
        assert_eq!(with(&["1.1.1.1, 203.0.113.9, 10.1.1.1"], &["https"]), ("203.0.113.9".into(), Some(true)));
        assert_eq!(with(&["1.1.1.1", "203.0.113.9", "10.1.1.1"], &[]), ("203.0.113.9".into(), None));
        assert_eq!(with(&["10.2.2.2, 10.1.1.1"], &["http"]), ("10.2.2.2".into(), Some(false)));
        assert_eq!(with(&[], &["https, http"]), ("10.0.0.5".into(), Some(false)), "the nearest proxy's word");
        assert_eq!(with(&["garbage, 10.1.1.1"], &["HTTPS"]), ("10.1.1.1".into(), Some(true)));
        assert_eq!(with(&["2001:db8::7"], &[]), ("2001:db8::7".into(), None));
    }

    #[test]
    fn a_spare_map_carries_nothing_of_the_message_it_served() {
        let mut used = spare::map(4);
        used.insert(COOKIE, HeaderValue::from_static("session=secret"));
        used.append("x-one", HeaderValue::from_static("1"));
        used.append("x-one", HeaderValue::from_static("2"));
        let room = used.capacity();
        spare::give(used);
        let again = spare::map(2);
        assert!(again.is_empty() && again.keys_len() == 0, "a reused map must start empty");
        assert_eq!(again.capacity(), room, "the map given back is the one reused");
        // A map that grew large for one message is not kept for the next, nor one whose values
        // were many (their room is kept apart from the slots).
        let mut big = HeaderMap::with_capacity(200);
        big.insert(COOKIE, HeaderValue::from_static("a=b"));
        spare::give(big);
        assert!(spare::map(1).capacity() < 200);
        let mut repeated = HeaderMap::with_capacity(4);
        for _ in 0..100 {
            repeated.append(COOKIE, HeaderValue::from_static("a=b"));
        }
        let slots = repeated.capacity();
        spare::give(repeated);
        assert_ne!(spare::map(1).capacity(), slots, "a map that held 100 values is not reused");
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);

        // Names are case-insensitive, lists may repeat, and an option that names a header there
        // removes it even when it is also a connection option (`close`).
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("Keep-Alive , X-Secret"));
        h.append(CONNECTION, HeaderValue::from_static("close,,x-missing"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("close", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-keep"]);
    }

    #[test]
    fn hop_by_hop_names_agree() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop(name.as_str().as_bytes()), Some(i));
            assert_eq!(hop_by_hop(name.as_str().to_uppercase().as_bytes()), Some(i));
        }
        for other in ["user-agent", "tk", "trailers", "content-length", "upgrades", ""] {
            assert_eq!(hop_by_hop(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn appends_to_forwarded_for() {
        let ip = HeaderValue::from_static("10.0.0.9");
        let mut h = HeaderMap::new();
        set_forwarded(
            &mut h,
            &ip,
            HeaderValue::from_static("http"),
            Some(HeaderValue::from_static("a.example")),
        );
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.9");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "a.example");

        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2, 3.3.3.3"));
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("spoofed"));
        set_forwarded(&mut h, &ip, HeaderValue::from_static("http"), None);
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9");
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1, "one list replaces the fields");
        assert!(!h.contains_key(X_FORWARDED_HOST));
    }

    #[test]
    fn request_ids_are_kept_when_usable_and_generated_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), (HeaderValue::from_static("abc-123"), false));
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        let (id, new) = request_id(&h);
        assert!(id != "has space" && new && id.len() == 36, "{id:?}");
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4", "{s}");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        let groups: Vec<&str> = s.split('-').collect();
        assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{s}");
        assert!(
            groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))),
            "{s}"
        );
        assert_ne!(new_request_id(), new_request_id());
    }
}
