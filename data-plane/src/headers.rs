//! Header rules every proxied request and response follows: hop-by-hop removal, forwarding
//! headers, request ids.

use http::HeaderMap;
use http::header::{
    CONNECTION, HeaderName, HeaderValue, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1, plus the legacy ones
/// every proxy strips).
const HOP_BY_HOP: [HeaderName; 9] = [
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

/// A request id we accept from a client: short, printable, no spaces.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Sets `X-Forwarded-For` (appending the client to any list it brought), `X-Forwarded-Proto` and
/// `X-Forwarded-Host`.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    proto: HeaderValue,
    host: Option<HeaderValue>,
) {
    let forwarded_for = match headers.get_all(X_FORWARDED_FOR).iter().next() {
        None => client_ip.clone(),
        Some(_) => {
            let mut list = Vec::with_capacity(64);
            for v in headers.get_all(X_FORWARDED_FOR) {
                list.extend_from_slice(v.as_bytes());
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&list).unwrap_or_else(|_| client_ip.clone())
        }
    };
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    headers.insert(X_FORWARDED_PROTO, proto);
    match host {
        Some(h) => headers.insert(X_FORWARDED_HOST, h),
        None => headers.remove(X_FORWARDED_HOST),
    };
}

/// The client's `X-Request-Id` if it is usable, otherwise a new random (UUID v4) id.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(X_REQUEST_ID) {
        Some(v) if is_usable_id(v.as_bytes()) => v.clone(),
        _ => new_request_id(),
    }
}

fn is_usable_id(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= MAX_REQUEST_ID_LEN && b.iter().all(u8::is_ascii_graphic)
}

/// A random UUID v4 in its usual 36-character form.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits = fastrand::u128(..);
    bits = (bits & !(0xf << 76)) | (0x4 << 76); // version 4
    bits = (bits & !(0x3 << 62)) | (0x2 << 62); // RFC 4122 variant
    let mut out = [0u8; 36];
    let mut nibble = 32;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *slot = b'-';
        } else {
            nibble -= 1;
            *slot = HEX[((bits >> (nibble * 4)) & 0xf) as usize];
        }
    }
    // Hex digits and dashes are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!h.contains_key(X_FORWARDED_HOST));
    }

    #[test]
    fn request_ids_are_kept_when_usable_and_generated_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        let id = new_request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4", "{s}");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
        assert_ne!(new_request_id(), new_request_id());
    }
}
