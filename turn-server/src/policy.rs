//! Which peers the relay may talk to: no open relay by default (RFC 8656 §21.1.2 discusses the
//! risk; coturn's `denied-peer-ip` is the model).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range: an address and a prefix length.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// A range; the prefix is clamped to the family's width.
    #[must_use]
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        Self {
            addr,
            prefix: prefix.min(max),
        }
    }

    /// Whether `ip` lies in the range. An IPv4-mapped IPv6 address is matched as IPv4.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A CIDR string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {0:?}: expected ADDRESS or ADDRESS/PREFIX")]
pub struct CidrError(pub String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?,
            None => max,
        };
        Ok(Self::new(addr, prefix))
    }
}

/// The ranges denied by default: loopback, "this network", RFC 1918 private, CGNAT
/// (RFC 6598), link-local, multicast, reserved and broadcast for IPv4; unspecified, loopback,
/// unique-local, link-local and multicast for IPv6.
#[must_use]
pub fn default_denied() -> Vec<Cidr> {
    let v4 = |a, b, c, d, p| Cidr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), p);
    let v6 = |s: u16, p| Cidr::new(IpAddr::V6(Ipv6Addr::new(s, 0, 0, 0, 0, 0, 0, 0)), p);
    vec![
        v4(0, 0, 0, 0, 8),
        v4(127, 0, 0, 0, 8),
        v4(10, 0, 0, 0, 8),
        v4(172, 16, 0, 0, 12),
        v4(192, 168, 0, 0, 16),
        v4(100, 64, 0, 0, 10),
        v4(169, 254, 0, 0, 16),
        v4(224, 0, 0, 0, 4),
        v4(240, 0, 0, 0, 4),
        Cidr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
        Cidr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
        v6(0xfc00, 7),
        v6(0xfe80, 10),
        v6(0xff00, 8),
    ]
}

/// The loopback ranges `--allow-loopback-peers` opens.
#[must_use]
pub fn loopback() -> Vec<Cidr> {
    vec![
        Cidr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        Cidr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    ]
}

/// The peer address policy: an address is allowed when an `allow` range contains it, else
/// denied when a `deny` range contains it, else allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    /// Ranges allowed even though a deny range covers them.
    pub allow: Vec<Cidr>,
    /// Ranges denied.
    pub deny: Vec<Cidr>,
}

impl Default for PeerPolicy {
    /// The safe default: [`default_denied`], nothing explicitly allowed.
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: default_denied(),
        }
    }
}

impl PeerPolicy {
    /// Whether the relay may send to (and accept from) `ip`.
    #[must_use]
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip)) || !self.deny.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_deny_private_ranges_and_allow_public_ones() {
        let p = PeerPolicy::default();
        for denied in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.255.255",
            "192.168.0.1",
            "100.64.0.1",
            "169.254.1.1",
            "224.0.0.251",
            "255.255.255.255",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!p.allows(ip(denied)), "{denied} should be denied");
        }
        for allowed in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "::ffff:1.1.1.1",
        ] {
            assert!(p.allows(ip(allowed)), "{allowed} should be allowed");
        }
    }

    #[test]
    fn allow_list_overrides_deny_list() {
        let mut p = PeerPolicy::default();
        p.allow.extend(loopback());
        p.allow.push("10.9.0.0/16".parse().unwrap());
        assert!(p.allows(ip("127.0.0.1")));
        assert!(p.allows(ip("::1")));
        assert!(p.allows(ip("10.9.1.1")));
        assert!(!p.allows(ip("10.8.1.1")));
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
    }
}
