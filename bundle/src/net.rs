//! Address ranges in configs: `10.0.0.0/8`, `2001:db8::/32`, or one address.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Serialize, Serializer};

/// An IP network: an address and how many of its leading bits are fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

// === impl Cidr ===

impl Cidr {
    /// `a.b.c.d/n`, `x::y/n`, or an address alone (the whole prefix). Host bits must be zero, so
    /// `10.1.2.3/8` (meaning what?) is refused.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("invalid network {s:?}: expected an address or address/prefix, like 10.0.0.0/8 or 2001:db8::/32")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("invalid network {s:?}: the prefix length must be 0 to {max}")),
            },
        };
        let net = Self { addr, prefix };
        if net.network() != addr {
            return Err(format!(
                "invalid network {s:?}: it has host bits set; did you mean {}/{prefix}?",
                net.network()
            ));
        }
        Ok(net)
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask32(u32::from(ip), self.prefix) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask128(u128::from(ip), self.prefix) == u128::from(net),
            _ => false,
        }
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(mask32(u32::from(a), self.prefix).into()),
            IpAddr::V6(a) => IpAddr::V6(mask128(u128::from(a), self.prefix).into()),
        }
    }
}

fn mask32(v: u32, prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { v & (u32::MAX << (32 - u32::from(prefix))) }
}

fn mask128(v: u128, prefix: u8) -> u128 {
    if prefix == 0 { 0 } else { v & (u128::MAX << (128 - u32::from(prefix))) }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl JsonSchema for Cidr {
    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An IP network, 10.0.0.0/8 or 2001:db8::/32, or one address.",
            "type": "string",
            "examples": ["10.0.0.0/8", "192.168.1.7"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses_only() {
        let n = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.255.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.2.3".parse().unwrap()), "IPv4-mapped");
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::1".parse().unwrap()));
        let one = Cidr::parse("192.168.1.7").unwrap();
        assert_eq!(one.to_string(), "192.168.1.7/32");
        assert!(one.contains("192.168.1.7".parse().unwrap()));
        assert!(!one.contains("192.168.1.8".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn refuses_what_is_not_a_network() {
        for (bad, why) in [
            ("10.1.2.3/8", "host bits set; did you mean 10.0.0.0/8"),
            ("10.0.0.0/33", "prefix length must be 0 to 32"),
            ("10.0.0.0/x", "prefix length"),
            ("example.com", "expected an address"),
            ("2001:db8::1/32", "did you mean 2001:db8::/32"),
        ] {
            let e = Cidr::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
