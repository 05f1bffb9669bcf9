//! Internal numeric view of networks and addresses: every address is a
//! `u128` plus a family flag, so IPv4 and IPv6 share one code path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::error::{Error, Result};

/// Map key of an allocated subnet: family, then first address. Allocated
/// subnets never overlap, so no two share a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    pub v6: bool,
    pub start: u128,
}

/// A network in numeric form. Always canonical (no host bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Net {
    pub v6: bool,
    pub start: u128,
    pub prefix: u8,
}

/// All ones in the lowest `bits` bits.
pub(crate) fn low_mask(bits: u8) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// Numeric value and family (true = IPv6) of an address.
pub(crate) fn addr_value(a: IpAddr) -> (bool, u128) {
    match a {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

/// The address of a value. For IPv4 the value must fit in 32 bits (it is
/// truncated otherwise, which callers never do).
pub(crate) fn to_ip(v6: bool, value: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(value))
    } else {
        IpAddr::V4(Ipv4Addr::from(value as u32))
    }
}

impl Key {
    /// The key of an IPv4 network starting at `start`.
    pub fn v4(start: u128) -> Key {
        Key { v6: false, start }
    }
}

impl Net {
    /// The network of a map key and a prefix length.
    pub fn from_key(key: &Key, prefix: u8) -> Net {
        Net {
            v6: key.v6,
            start: key.start,
            prefix,
        }
    }

    /// The numeric form of a network, refusing host bits.
    pub fn parse(net: IpNet, what: &'static str) -> Result<Net> {
        let canonical = net.trunc();
        if canonical != net {
            return Err(Error::NotCanonical {
                what,
                given: net,
                canonical,
            });
        }
        let (v6, start) = addr_value(net.network());
        Ok(Net {
            v6,
            start,
            prefix: net.prefix_len(),
        })
    }

    /// Width of an address of this family in bits.
    pub fn bits(&self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }

    /// Number of host bits.
    pub fn host_bits(&self) -> u8 {
        self.bits().saturating_sub(self.prefix)
    }

    /// Last address of the network.
    pub fn last(&self) -> u128 {
        self.start | low_mask(self.host_bits())
    }

    /// Map key.
    pub fn key(&self) -> Key {
        Key {
            v6: self.v6,
            start: self.start,
        }
    }

    /// Whether the address (of either family) is inside.
    pub fn contains(&self, a: IpAddr) -> bool {
        let (v6, value) = addr_value(a);
        v6 == self.v6 && self.contains_value(value)
    }

    /// Whether the value is inside (same family assumed).
    pub fn contains_value(&self, value: u128) -> bool {
        self.start <= value && value <= self.last()
    }

    /// Whether `other` (same family) lies completely inside.
    pub fn covers(&self, other: &Net) -> bool {
        self.v6 == other.v6 && self.start <= other.start && other.last() <= self.last()
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Net) -> bool {
        self.v6 == other.v6 && self.start <= other.last() && other.start <= self.last()
    }

    /// The address of a value in this family.
    pub fn ip(&self, value: u128) -> IpAddr {
        to_ip(self.v6, value)
    }

    /// Back to the public type.
    pub fn to_ipnet(self) -> IpNet {
        if self.v6 {
            IpNet::V6(
                Ipv6Net::new(Ipv6Addr::from(self.start), self.prefix)
                    .unwrap_or_else(|_| Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 128)),
            )
        } else {
            IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from(self.start as u32), self.prefix)
                    .unwrap_or_else(|_| Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 32)),
            )
        }
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_ipnet().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Net {
        Net::parse(s.parse().unwrap(), "subnet").unwrap()
    }

    #[test]
    fn parse_refuses_host_bits() {
        let err = Net::parse("10.0.0.1/24".parse().unwrap(), "subnet").unwrap_err();
        assert_eq!(
            err.to_string(),
            "subnet 10.0.0.1/24 has host bits set; write it as 10.0.0.0/24"
        );
    }

    #[test]
    fn bounds_and_roundtrip() {
        let a = n("10.0.0.0/24");
        assert_eq!(
            a.last(),
            u128::from(u32::from(Ipv4Addr::new(10, 0, 0, 255)))
        );
        assert_eq!(a.to_ipnet().to_string(), "10.0.0.0/24");
        let all6 = n("::/0");
        assert_eq!(all6.last(), u128::MAX);
        assert_eq!(all6.host_bits(), 128);
        let all4 = n("0.0.0.0/0");
        assert_eq!(all4.last(), u128::from(u32::MAX));
        assert_eq!(n("fd00::/64").to_ipnet().to_string(), "fd00::/64");
    }

    #[test]
    fn overlap_and_cover() {
        assert!(n("10.0.0.0/16").overlaps(&n("10.0.5.0/24")));
        assert!(n("10.0.0.0/16").covers(&n("10.0.5.0/24")));
        assert!(!n("10.0.5.0/24").covers(&n("10.0.0.0/16")));
        assert!(!n("10.0.0.0/24").overlaps(&n("10.0.1.0/24")));
        assert!(!n("0.0.0.0/0").overlaps(&n("::/0")));
    }
}
