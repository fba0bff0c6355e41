//! The PROXY protocol, versions 1 and 2 (HAProxy's `proxy-protocol.txt`): the header a load
//! balancer sends first on each connection, naming the client it came from. Read before
//! anything else (TLS included), without reading past it: the header is peeked at until it is
//! whole, then exactly its bytes are consumed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// The connection was proxied for this client.
    Proxied(SocketAddr),
    /// The balancer's own connection (v2 `LOCAL`, health checks), or a family without an
    /// address (`UNKNOWN`, UNIX sockets): the peer is who it is.
    Local,
}

const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line, CRLF included.
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The largest v2 header taken (its fixed part, addresses and TLVs): balancers send far less.
const V2_MAX: usize = 16 + 1024;

/// Reads the header at the start of `tcp` within `within`.
pub(crate) async fn read(tcp: &mut TcpStream, within: Duration) -> Result<Header, &'static str> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; V2_MAX];
    let mut seen = 0;
    loop {
        let n = tokio::time::timeout_at(deadline, tcp.peek(&mut buf))
            .await
            .map_err(|_| "no PROXY protocol header in time")?
            .map_err(|_| "connection failed before its PROXY protocol header")?;
        if n == 0 {
            return Err("connection closed before its PROXY protocol header");
        }
        if let Some((header, len)) = parse(&buf[..n])? {
            tcp.read_exact(&mut buf[..len])
                .await
                .map_err(|_| "connection failed in its PROXY protocol header")?;
            return Ok(header);
        }
        // Peeking again at once would return the same bytes; a header split over segments is
        // rare (balancers send it in one), so wait a little for the rest.
        if n == seen {
            tokio::time::sleep_until(deadline.min(Instant::now() + Duration::from_millis(10))).await;
        }
        seen = n;
    }
}

/// The header at the start of `buf` and its length; `None` if more bytes are needed.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, &'static str> {
    let is_prefix = |of: &[u8]| buf.len() < of.len() && of.starts_with(buf);
    if buf.starts_with(V1_PREFIX) {
        v1(buf)
    } else if buf.starts_with(V2_SIGNATURE) {
        v2(buf)
    } else if is_prefix(V1_PREFIX) || is_prefix(V2_SIGNATURE) {
        Ok(None)
    } else {
        Err("the connection did not start with a PROXY protocol header")
    }
}

fn v1(buf: &[u8]) -> Result<Option<(Header, usize)>, &'static str> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX { Err("PROXY protocol v1 line too long") } else { Ok(None) };
    };
    let bad = "malformed PROXY protocol v1 line";
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| bad)?;
    let mut fields = line.split(' ');
    let header = match fields.next() {
        Some("UNKNOWN") => Header::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let (Some(src), Some(_dst), Some(sport), Some(_dport), None) =
                (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(bad);
            };
            let ip: IpAddr = src.parse().map_err(|_| bad)?;
            if ip.is_ipv4() != (family == "TCP4") {
                return Err(bad);
            }
            // Ports are decimal without leading zeros (or 0 alone).
            if sport.len() > 1 && sport.starts_with('0') {
                return Err(bad);
            }
            Header::Proxied(SocketAddr::new(ip, sport.parse().map_err(|_| bad)?))
        }
        _ => return Err(bad),
    };
    Ok(Some((header, end + 2)))
}

fn v2(buf: &[u8]) -> Result<Option<(Header, usize)>, &'static str> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err("unsupported PROXY protocol version");
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX {
        return Err("PROXY protocol v2 header too long");
    }
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[16..len];
    let header = match (command, buf[13]) {
        (0, _) => Header::Local,
        (1, 0x11) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Header::Proxied(SocketAddr::new(ip.into(), u16::from_be_bytes([body[8], body[9]])))
        }
        (1, 0x21) if body.len() >= 36 => {
            let octets: [u8; 16] = body[..16].try_into().map_err(|_| "malformed PROXY protocol v2 header")?;
            Header::Proxied(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        (1, 0x11 | 0x21) => return Err("PROXY protocol v2 addresses cut short"),
        // UNSPEC, UDP and UNIX families carry no TCP client address.
        (1, _) => Header::Local,
        _ => return Err("unsupported PROXY protocol v2 command"),
    };
    Ok(Some((header, len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_tcp4(src: [u8; 4], sport: u16, extra: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11]);
        h.extend_from_slice(&(12 + extra.len() as u16).to_be_bytes());
        h.extend_from_slice(&src);
        h.extend_from_slice(&[10, 0, 0, 1]);
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&443u16.to_be_bytes());
        h.extend_from_slice(extra);
        h
    }

    #[test]
    fn v1_lines_give_the_client() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\nGET / HTTP/1.1\r\n";
        let (h, len) = parse(line).unwrap().unwrap();
        assert_eq!(h, Header::Proxied("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(&line[len..len + 3], b"GET");
        let (h, _) = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n").unwrap().unwrap();
        assert_eq!(h, Header::Proxied("[2001:db8::7]:1".parse().unwrap()));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap(), (Header::Local, 15));
        // Incomplete: wait for more.
        for part in [&b"PRO"[..], b"PROXY TCP4 203.0.113.7 10.0"] {
            assert_eq!(parse(part).unwrap(), None, "{part:?}");
        }
    }

    #[test]
    fn v2_headers_give_the_client_and_skip_tlvs() {
        let mut h = v2_tcp4([198, 51, 100, 9], 4000, &[0x04, 0x00, 0x01, 0xaa]);
        let total = h.len();
        h.extend_from_slice(b"\x16\x03\x01");
        let (header, len) = parse(&h).unwrap().unwrap();
        assert_eq!(header, Header::Proxied("198.51.100.9:4000".parse().unwrap()));
        assert_eq!(len, total, "TLVs are consumed, what follows is not");
        assert_eq!(parse(&h[..20]).unwrap(), None);
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).unwrap().unwrap(), (Header::Local, 16));
    }

    #[test]
    fn refuses_what_is_not_a_header() {
        for (bad, why) in [
            (&b"GET / HTTP/1.1\r\n"[..], "did not start"),
            (b"PROXY TCP4 203.0.113.7 10.0.0.1 51234\r\n", "malformed"),
            (b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n", "malformed"),
            (b"PROXY TCP4 203.0.113.7 10.0.0.1 051234 80\r\n", "malformed"),
            (b"PROXY TCP9 a b 1 2\r\n", "malformed"),
            (&[b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat(), "too long"),
        ] {
            assert!(parse(bad).unwrap_err().contains(why), "{bad:?}");
        }
        let mut v3 = v2_tcp4([1, 2, 3, 4], 1, &[]);
        v3[12] = 0x31;
        assert!(parse(&v3).unwrap_err().contains("version"));
        let mut short = v2_tcp4([1, 2, 3, 4], 1, &[]);
        short[15] = 4;
        assert!(parse(&short[..20]).unwrap_err().contains("cut short"));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&huge).unwrap_err().contains("too long"));
    }
}
