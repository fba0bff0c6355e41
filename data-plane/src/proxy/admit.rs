//! Admit: whether the proxy serves this request at all. HTTP/1 framing verdicts, Host rules,
//! methods never forwarded, before any config is read; and the listener's overload limit, taken
//! only once the body's start has been read (`read_body`), so slow clients hold none of it.
//!
//! Decides from the connection and the request head only; it may not read the snapshot. Facts a
//! later feature learns about the connection (a TLS handshake's SNI and client certificate) are
//! checked here too.

use crate::body::ClientBody;
use http::header::HOST;
use http::{Method, Request, Version};

use super::context::Connection;
use crate::error::ProxyError;
use crate::headers;
use crate::listener::tls::TlsFacts;
use crate::resilience::limit::{OwnedPermit, Shed};
use sluice_compile::router::normalize_host;

/// A place under the listener's concurrency limit, waiting in its queue if need be.
pub(super) async fn permit(conn: &Connection) -> Result<OwnedPermit, ProxyError> {
    conn.listener.limiter.acquire().await.map_err(|shed| match shed {
        Shed::QueueFull => ProxyError::Overloaded("too many requests waiting"),
        Shed::QueueTimeout => ProxyError::Overloaded("no capacity within the queue timeout"),
    })
}

/// Refuses what is never forwarded: smuggling-shaped HTTP/1 framing, a missing or repeated Host,
/// `CONNECT`.
pub(super) fn request(conn: &Connection, req: &Request<ClientBody>) -> Result<(), ProxyError> {
    if req.version() < Version::HTTP_2 {
        conn.strict.admit().map_err(|why| ProxyError::BadRequest(why.message()))?;
        // RFC 9112 §3.2: exactly one Host in HTTP/1.1 (unless the target is absolute).
        let mut hosts = req.headers().get_all(HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(_), Some(_)) => return Err(ProxyError::BadRequest("more than one Host header")),
            (None, _) if req.version() == Version::HTTP_11 && req.uri().authority().is_none() => {
                return Err(ProxyError::BadRequest("missing Host header"));
            }
            _ => {}
        }
    }
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotSupported("CONNECT"));
    }
    if has_dot_segment(req.uri().path()) {
        return Err(ProxyError::BadRequest("a path with . or .. segments"));
    }
    if let Some(tls) = &conn.tls {
        misdirected(tls, req)?;
    }
    Ok(())
}

/// Whether `path` has a `.` or `..` segment, written plainly or percent-encoded (`%2e`). Routes
/// match the path as sent, while an upstream may resolve `/public/../admin` to `/admin`: such a
/// request could reach a path past the policies of the route that covers it. Clients resolve
/// dot segments before sending (RFC 3986 §5.2.4), so refusing them costs no real traffic.
fn has_dot_segment(path: &str) -> bool {
    // Most paths have no dot and no escape at all.
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return false;
    }
    path.split('/').any(|segment| {
        let mut rest = segment.as_bytes();
        let mut dots = 0;
        while !rest.is_empty() {
            if rest[0] == b'.' {
                rest = &rest[1..];
            } else if rest.len() >= 3
                && rest[0] == b'%'
                && rest[1] == b'2'
                && rest[2].eq_ignore_ascii_case(&b'e')
            {
                rest = &rest[3..];
            } else {
                return false;
            }
            dots += 1;
        }
        matches!(dots, 1 | 2)
    })
}

/// A connection made for one server name may carry requests for another (HTTP/2 coalescing,
/// or a client that lies in its SNI). That is fine while both names ask for client
/// certificates the same way; otherwise the request could skip the other name's client
/// authentication, so it gets 421 and the client retries on a connection of its own.
fn misdirected(tls: &TlsFacts, req: &Request<ClientBody>) -> Result<(), ProxyError> {
    let Some(host) = headers::request_host(req.uri(), req.headers()) else { return Ok(()) };
    // The host as the router reads it (case, port, trailing dot), so no spelling of a name
    // reaches its routes without its client authentication.
    let host = normalize_host(host);
    if tls.sni.as_deref().is_some_and(|sni| sni.eq_ignore_ascii_case(&host)) {
        return Ok(());
    }
    let entry = tls.edge.choose(Some(&host));
    if tls.edge.same_client_auth(tls.entry, entry) { Ok(()) } else { Err(ProxyError::Misdirected) }
}

#[cfg(test)]
mod tests {
    use super::has_dot_segment;

    #[test]
    fn dot_segments_are_found_however_written() {
        for bad in ["/a/../b", "/..", "/a/.", "/./a", "/a/%2e%2e/b", "/%2E./x", "/a/.%2e", "/%2e"] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for good in ["/", "/app.js", "/.well-known/x", "/a/.../b", "/a..b", "/%2e%2e%2e", "/a%2Fb", "/v1.2/x"]
        {
            assert!(!has_dot_segment(good), "{good}");
        }
    }
}
