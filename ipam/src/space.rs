//! The addresses of one subnet: reserved addresses, gateway, ip-range and
//! serial allocation with wrap-around (as libnetwork's bitseq).

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::bitmap::Bitmap;
use crate::error::{Error, Result};
use crate::net::{Net, addr_value};
use crate::runs::RunSet;

/// Subnets with at most this many host bits keep a dense bitmap (8 KiB for a
/// /16); larger ones keep sparse runs.
const DENSE_MAX_HOST_BITS: u8 = 16;

/// Which offsets of a subnet are taken (reserved addresses included).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Slots {
    Dense(Bitmap),
    Sparse(RunSet),
}

impl Slots {
    fn for_net(net: &Net) -> Slots {
        if net.host_bits() <= DENSE_MAX_HOST_BITS {
            Slots::Dense(Bitmap::default())
        } else {
            Slots::Sparse(RunSet::default())
        }
    }

    // Dense offsets are below 2^16, so the u64 conversions below are exact.
    fn contains(&self, off: u128) -> bool {
        match self {
            Slots::Dense(b) => off <= u128::from(u64::MAX) && b.get(off as u64),
            Slots::Sparse(r) => r.contains(off),
        }
    }

    fn set(&mut self, off: u128) {
        match self {
            Slots::Dense(b) => b.set(off as u64),
            Slots::Sparse(r) => {
                r.insert(off);
            }
        }
    }

    fn clear(&mut self, off: u128) {
        match self {
            Slots::Dense(b) => b.clear(off as u64),
            Slots::Sparse(r) => {
                r.remove(off);
            }
        }
    }

    fn next_clear(&self, lo: u128, hi: u128) -> Option<u128> {
        match self {
            Slots::Dense(b) => b.next_clear(lo as u64, hi as u64).map(u128::from),
            Slots::Sparse(r) => r.next_clear(lo, hi),
        }
    }

    /// Add `lo..=hi`, all of which must be free; else the first taken offset.
    fn insert_range(&mut self, lo: u128, hi: u128) -> Result<(), u128> {
        match self {
            Slots::Dense(b) => {
                if let Some(taken) = b.first_set(lo as u64, hi as u64) {
                    return Err(u128::from(taken));
                }
                b.set_range(lo as u64, hi as u64);
                Ok(())
            }
            Slots::Sparse(r) => r.insert_range(lo, hi),
        }
    }

    fn runs(&self) -> Vec<(u128, u128)> {
        match self {
            Slots::Dense(b) => b
                .runs()
                .into_iter()
                .map(|(a, z)| (u128::from(a), u128::from(z)))
                .collect(),
            Slots::Sparse(r) => r.runs().collect(),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Slots::Dense(b) => b.heap_bytes(),
            Slots::Sparse(r) => r.heap_bytes(),
        }
    }
}

/// Address state of one allocated subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Space {
    net: Net,
    gateway: u128,
    range: Option<Net>,
    /// Where the next serial allocation starts looking; inside the
    /// allocation bounds.
    cursor: u128,
    slots: Slots,
}

/// Whether the network address of `net` is reserved: for IPv4 and IPv6
/// (the subnet-router anycast address) alike, except /31 and /32 (RFC 3021)
/// and /127 and /128 (RFC 6164).
pub(crate) fn reserves_network(net: &Net) -> bool {
    net.host_bits() >= 2
}

/// Whether the broadcast address of `net` is reserved: IPv4 only, and not
/// for /31 and /32.
pub(crate) fn reserves_broadcast(net: &Net) -> bool {
    !net.v6 && net.host_bits() >= 2
}

/// The gateway a subnet gets unless one is given: its first usable address.
pub(crate) fn default_gateway(net: &Net) -> u128 {
    net.start + u128::from(reserves_network(net))
}

/// Whether `value` is the reserved network or broadcast address of `net`.
fn fixed_reserved(net: &Net, value: u128) -> Option<&'static str> {
    if reserves_network(net) && value == net.start {
        Some("network address")
    } else if reserves_broadcast(net) && value == net.last() {
        Some("broadcast address")
    } else {
        None
    }
}

/// What reserved address `value` is in `net` with gateway `gateway`.
fn reserved_kind(net: &Net, gateway: u128, value: u128) -> Option<&'static str> {
    if value == gateway {
        Some("gateway")
    } else {
        fixed_reserved(net, value)
    }
}

/// Check an explicit gateway and ip-range against their subnet; returns the
/// gateway (the default one when none is given) and the parsed ip-range.
pub(crate) fn check_options(
    net: &Net,
    gateway: Option<IpAddr>,
    ip_range: Option<IpNet>,
) -> Result<(u128, Option<Net>)> {
    let subnet = net.to_ipnet();
    let gw = match gateway {
        None => default_gateway(net),
        Some(g) => {
            let (v6, value) = addr_value(g);
            if v6 != net.v6 || !net.contains_value(value) {
                return Err(Error::GatewayOutsideSubnet { gateway: g, subnet });
            }
            if let Some(what) = fixed_reserved(net, value) {
                return Err(Error::GatewayReserved {
                    gateway: g,
                    subnet,
                    what,
                });
            }
            value
        }
    };
    let range = match ip_range {
        None => None,
        Some(r) => {
            let parsed = Net::parse(r, "ip-range")?;
            if !net.covers(&parsed) {
                return Err(Error::IpRangeOutsideSubnet { range: r, subnet });
            }
            Some(parsed)
        }
    };
    Ok((gw, range))
}

impl Space {
    /// Address state for `net` with a checked gateway and ip-range (see
    /// [`check_options`]); reserved addresses are marked taken.
    pub fn new(net: Net, gateway: u128, range: Option<Net>) -> Space {
        let mut space = Space {
            net,
            gateway,
            range,
            cursor: range.map_or(net.start, |r| r.start),
            slots: Slots::for_net(&net),
        };
        if reserves_network(&net) {
            space.slots.set(0);
        }
        if reserves_broadcast(&net) {
            space.slots.set(net.last() - net.start);
        }
        space.slots.set(gateway - net.start);
        space
    }

    /// Address state with the default gateway and no ip-range.
    pub fn with_defaults(net: Net) -> Space {
        Space::new(net, default_gateway(&net), None)
    }

    /// The subnet.
    pub fn net(&self) -> Net {
        self.net
    }

    /// The gateway.
    pub fn gateway(&self) -> u128 {
        self.gateway
    }

    /// The ip-range, if any.
    pub fn range(&self) -> Option<Net> {
        self.range
    }

    /// Whether gateway and ip-range are the defaults.
    pub fn has_default_options(&self) -> bool {
        self.range.is_none() && self.gateway == default_gateway(&self.net)
    }

    /// Inclusive bounds of dynamic allocation: the ip-range or the subnet.
    fn bounds(&self) -> (u128, u128) {
        let r = self.range.unwrap_or(self.net);
        (r.start, r.last())
    }

    fn full(&self) -> Error {
        Error::SubnetFull {
            subnet: self.net.to_ipnet(),
            ip_range: self.range.map(Net::to_ipnet),
        }
    }

    fn check_inside(&self, address: IpAddr) -> Result<u128> {
        let (v6, value) = addr_value(address);
        if v6 != self.net.v6 || !self.net.contains_value(value) {
            return Err(Error::AddressOutsideSubnet {
                address,
                subnet: self.net.to_ipnet(),
            });
        }
        Ok(value)
    }

    fn check_not_reserved(&self, address: IpAddr, value: u128) -> Result<()> {
        match reserved_kind(&self.net, self.gateway, value) {
            Some(what) => Err(Error::AddressReserved {
                address,
                subnet: self.net.to_ipnet(),
                what,
            }),
            None => Ok(()),
        }
    }

    /// Whether `value` is inside the bounds of dynamic allocation.
    pub fn in_bounds(&self, value: u128) -> bool {
        let (lo, hi) = self.bounds();
        (lo..=hi).contains(&value)
    }

    /// Make the next serial allocation start after `value` (nothing changes
    /// if it is outside the bounds of dynamic allocation).
    pub fn resume_after(&mut self, value: u128) {
        let (lo, hi) = self.bounds();
        if value < lo || value > hi {
            return;
        }
        self.cursor = if value == hi { lo } else { value + 1 };
    }

    /// Hand out the next free address of the allocation bounds, starting
    /// after the last one handed out and wrapping around.
    pub fn allocate(&mut self) -> Result<IpAddr> {
        let (lo, hi) = self.bounds();
        let from = if (lo..=hi).contains(&self.cursor) {
            self.cursor
        } else {
            lo
        };
        let base = self.net.start;
        let found = self
            .slots
            .next_clear(from - base, hi - base)
            .or_else(|| {
                (from > lo)
                    .then(|| self.slots.next_clear(lo - base, from - 1 - base))
                    .flatten()
            })
            .ok_or_else(|| self.full())?;
        self.slots.set(found);
        let value = base + found;
        self.resume_after(value);
        Ok(self.net.ip(value))
    }

    /// Take a given address (anywhere in the subnet, ip-range or not).
    pub fn request(&mut self, address: IpAddr) -> Result<()> {
        let value = self.check_inside(address)?;
        self.check_not_reserved(address, value)?;
        let off = value - self.net.start;
        if self.slots.contains(off) {
            return Err(Error::AddressInUse {
                address,
                subnet: self.net.to_ipnet(),
            });
        }
        self.slots.set(off);
        Ok(())
    }

    /// Give an address back.
    pub fn release(&mut self, address: IpAddr) -> Result<()> {
        let value = self.check_inside(address)?;
        self.check_not_reserved(address, value)?;
        let off = value - self.net.start;
        if !self.slots.contains(off) {
            return Err(Error::AddressNotAllocated {
                address,
                subnet: self.net.to_ipnet(),
            });
        }
        self.slots.clear(off);
        Ok(())
    }

    /// Whether `address` is allocated (reserved addresses are not).
    pub fn is_allocated(&self, address: IpAddr) -> bool {
        let (v6, value) = addr_value(address);
        v6 == self.net.v6
            && self.net.contains_value(value)
            && reserved_kind(&self.net, self.gateway, value).is_none()
            && self.slots.contains(value - self.net.start)
    }

    /// The reserved addresses, ascending.
    fn reserved(&self) -> Vec<u128> {
        let mut r = vec![self.gateway];
        if reserves_network(&self.net) {
            r.push(self.net.start);
        }
        if reserves_broadcast(&self.net) {
            r.push(self.net.last());
        }
        r.sort_unstable();
        r.dedup();
        r
    }

    /// Allocated addresses (reserved ones left out) as inclusive runs.
    pub fn allocated_runs(&self) -> Vec<(u128, u128)> {
        let reserved = self.reserved();
        let base = self.net.start;
        let mut out = Vec::new();
        for (a, z) in self.slots.runs() {
            let (mut a, z) = (a + base, z + base);
            let inside: Vec<u128> = reserved
                .iter()
                .copied()
                .filter(|&r| a <= r && r <= z)
                .collect();
            let mut rest = true;
            for r in inside {
                if a < r {
                    out.push((a, r - 1));
                }
                match r.checked_add(1) {
                    Some(next) => a = next,
                    None => rest = false,
                }
            }
            if rest && a <= z {
                out.push((a, z));
            }
        }
        out
    }

    /// Number of allocated addresses (reserved ones left out), saturating.
    pub fn allocated_count(&self) -> u128 {
        self.allocated_runs().iter().fold(0u128, |n, (a, z)| {
            n.saturating_add((z - a).saturating_add(1))
        })
    }

    /// Estimated heap bytes.
    pub fn heap_bytes(&self) -> usize {
        self.slots.heap_bytes()
    }

    /// Serializable form.
    pub fn to_repr(&self) -> SpaceRepr {
        SpaceRepr {
            subnet: self.net.to_ipnet(),
            gateway: self.net.ip(self.gateway),
            ip_range: self.range.map(Net::to_ipnet),
            next: self.net.ip(self.cursor),
            allocated: self
                .allocated_runs()
                .into_iter()
                .map(|(a, z)| (self.net.ip(a), self.net.ip(z)))
                .collect(),
        }
    }

    /// Rebuild from the serializable form, checking it.
    pub fn from_repr(repr: &SpaceRepr) -> Result<Space> {
        let net = Net::parse(repr.subnet, "subnet")?;
        let (gateway, range) = check_options(&net, Some(repr.gateway), repr.ip_range)?;
        let mut space = Space::new(net, gateway, range);
        let next = space.check_inside(repr.next)?;
        let (lo, hi) = space.bounds();
        if !(lo..=hi).contains(&next) {
            return Err(Error::InvalidState(format!(
                "next address {} of subnet {} is outside its allocation range",
                repr.next, repr.subnet
            )));
        }
        space.cursor = next;
        for &(first, last) in &repr.allocated {
            let a = space.check_inside(first)?;
            let z = space.check_inside(last)?;
            if a > z {
                return Err(Error::InvalidState(format!(
                    "address run {first}..{last} of subnet {} is reversed",
                    repr.subnet
                )));
            }
            for r in space.reserved() {
                if a <= r && r <= z {
                    space.check_not_reserved(net.ip(r), r)?;
                }
            }
            space
                .slots
                .insert_range(a - net.start, z - net.start)
                .map_err(|off| Error::AddressInUse {
                    address: net.ip(net.start + off),
                    subnet: repr.subnet,
                })?;
        }
        Ok(space)
    }
}

/// Serialized address state of one subnet: human-readable and checked on
/// load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpaceRepr {
    pub subnet: IpNet,
    pub gateway: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNet>,
    pub next: IpAddr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocated: Vec<(IpAddr, IpAddr)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Net {
        Net::parse(s.parse().unwrap(), "subnet").unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn space(s: &str) -> Space {
        Space::with_defaults(net(s))
    }

    #[test]
    fn reserved_addresses_of_a_slash_24() {
        let mut sp = space("10.0.0.0/24");
        assert_eq!(sp.net.ip(sp.gateway()), ip("10.0.0.1"));
        for (a, what) in [
            ("10.0.0.0", "network address"),
            ("10.0.0.255", "broadcast address"),
            ("10.0.0.1", "gateway"),
        ] {
            let err = sp.request(ip(a)).unwrap_err();
            assert_eq!(
                err,
                Error::AddressReserved {
                    address: ip(a),
                    subnet: "10.0.0.0/24".parse().unwrap(),
                    what
                }
            );
            assert!(err.to_string().contains(what), "{err}");
            assert!(matches!(
                sp.release(ip(a)),
                Err(Error::AddressReserved { .. })
            ));
            assert!(!sp.is_allocated(ip(a)));
        }
        assert_eq!(sp.allocate().unwrap(), ip("10.0.0.2"));
        assert_eq!(sp.allocated_runs().len(), 1);
    }

    #[test]
    fn gateway_checks() {
        let n = net("10.0.0.0/24");
        assert_eq!(check_options(&n, None, None).unwrap().0, n.start + 1);
        assert_eq!(
            check_options(&n, Some(ip("10.0.0.254")), None).unwrap().0,
            n.start + 254
        );
        assert!(matches!(
            check_options(&n, Some(ip("10.0.1.1")), None),
            Err(Error::GatewayOutsideSubnet { .. })
        ));
        assert!(matches!(
            check_options(&n, Some(ip("fd00::1")), None),
            Err(Error::GatewayOutsideSubnet { .. })
        ));
        for (g, what) in [
            ("10.0.0.0", "network address"),
            ("10.0.0.255", "broadcast address"),
        ] {
            assert_eq!(
                check_options(&n, Some(ip(g)), None).unwrap_err(),
                Error::GatewayReserved {
                    gateway: ip(g),
                    subnet: n.to_ipnet(),
                    what
                }
            );
        }
        // /31: both addresses usable, so either can be the gateway.
        let p2p = net("10.0.0.0/31");
        assert!(check_options(&p2p, Some(ip("10.0.0.0")), None).is_ok());
        assert!(check_options(&p2p, Some(ip("10.0.0.1")), None).is_ok());
    }

    #[test]
    fn allocated_runs_skip_reserved() {
        let mut sp = space("10.0.0.0/29");
        for _ in 0..5 {
            sp.allocate().unwrap();
        }
        assert!(sp.allocate().is_err());
        let runs = sp.allocated_runs();
        assert_eq!(
            runs,
            vec![(net("10.0.0.0/29").start + 2, net("10.0.0.0/29").start + 6)]
        );
        assert_eq!(sp.allocated_count(), 5);
        // Gateway in the middle.
        let n = net("10.0.0.0/29");
        let mut sp = Space::new(n, n.start + 4, None);
        for _ in 0..5 {
            sp.allocate().unwrap();
        }
        assert_eq!(
            sp.allocated_runs(),
            vec![(n.start + 1, n.start + 3), (n.start + 5, n.start + 6)]
        );
    }

    #[test]
    fn repr_roundtrip() {
        let n = net("fd00::/64");
        let (gw, range) = check_options(&n, None, Some("fd00::100/120".parse().unwrap())).unwrap();
        let mut sp = Space::new(n, gw, range);
        for _ in 0..10 {
            sp.allocate().unwrap();
        }
        sp.request(ip("fd00::1:5")).unwrap();
        let back = Space::from_repr(&sp.to_repr()).unwrap();
        assert_eq!(back, sp);
    }

    #[test]
    fn repr_is_checked() {
        let mut sp = space("10.0.0.0/24");
        sp.allocate().unwrap();
        let good = sp.to_repr();
        let mut bad = good.clone();
        bad.allocated = vec![(ip("10.0.0.0"), ip("10.0.0.3"))];
        assert!(matches!(
            Space::from_repr(&bad),
            Err(Error::AddressReserved { .. })
        ));
        let mut bad = good.clone();
        bad.allocated = vec![(ip("10.0.0.5"), ip("10.0.0.3"))];
        assert!(matches!(
            Space::from_repr(&bad),
            Err(Error::InvalidState(_))
        ));
        let mut bad = good.clone();
        bad.allocated = vec![
            (ip("10.0.0.5"), ip("10.0.0.9")),
            (ip("10.0.0.9"), ip("10.0.0.9")),
        ];
        assert!(matches!(
            Space::from_repr(&bad),
            Err(Error::AddressInUse { .. })
        ));
        let mut bad = good.clone();
        bad.next = ip("10.0.1.0");
        assert!(matches!(
            Space::from_repr(&bad),
            Err(Error::AddressOutsideSubnet { .. })
        ));
        let mut bad = good;
        bad.allocated = vec![(ip("10.0.0.5"), ip("10.0.1.9"))];
        assert!(matches!(
            Space::from_repr(&bad),
            Err(Error::AddressOutsideSubnet { .. })
        ));
    }
}
