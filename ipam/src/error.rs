//! The typed errors of the crate.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::vni::{VNI_MAX, VNI_MIN};

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in address management.
///
/// Each message says what failed and what to do about it; the fields carry the
/// values involved so that callers can match on them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A network (subnet, pool or ip-range) was written with host bits set.
    #[error("{what} {given} has host bits set; write it as {canonical}")]
    NotCanonical {
        /// What the network was given as: "subnet", "address pool" or "ip-range".
        what: &'static str,
        /// The network as given.
        given: IpNet,
        /// The same network with the host bits cleared.
        canonical: IpNet,
    },

    /// The pool configuration holds no pool.
    #[error("no address pool given; give at least one IPv4 pool, such as 10.0.0.0/8")]
    NoPools,

    /// An address pool is IPv6; pools are IPv4 only.
    #[error(
        "address pool {pool} is IPv6, but address pools must be IPv4; give IPv6 subnets explicitly on each network instead"
    )]
    Ipv6Pool {
        /// The offending pool.
        pool: IpNet,
    },

    /// Two address pools overlap.
    #[error("address pools {a} and {b} overlap; give pools that do not overlap")]
    PoolsOverlap {
        /// The first pool.
        a: IpNet,
        /// The pool that overlaps it.
        b: IpNet,
    },

    /// The subnet mask length for carving pools is longer than /29.
    #[error(
        "subnet mask length /{mask} is too long: subnets carved from the pools must have at least 8 addresses; use a mask length of /29 or shorter"
    )]
    MaskTooLong {
        /// The mask length given.
        mask: u8,
    },

    /// The subnet mask length is shorter than the prefix of a pool, so no
    /// subnet of that size fits in the pool.
    #[error(
        "subnet mask length /{mask} is shorter than the prefix of address pool {pool}; use a mask length between /{} and /29",
        .pool.prefix_len()
    )]
    MaskShorterThanPool {
        /// The mask length given.
        mask: u8,
        /// The pool it does not fit.
        pool: IpNet,
    },

    /// Every subnet of every pool is allocated (or overlaps an allocated one).
    #[error(
        "no free subnet left in the address pools ({pools}); remove unused networks, give the subnet explicitly, or configure more address pools"
    )]
    PoolsExhausted {
        /// The pools, as "base in /mask subnets", comma separated.
        pools: String,
    },

    /// A requested subnet overlaps a subnet that is already allocated.
    #[error(
        "subnet {requested} overlaps subnet {existing}, which is already allocated; choose a subnet that overlaps no existing network"
    )]
    SubnetOverlap {
        /// The subnet asked for.
        requested: IpNet,
        /// The allocated subnet it overlaps.
        existing: IpNet,
    },

    /// The very same subnet is already allocated.
    #[error(
        "subnet {subnet} is already allocated; choose another subnet or remove the network that uses it"
    )]
    SubnetInUse {
        /// The subnet.
        subnet: IpNet,
    },

    /// An operation named a subnet that is not allocated.
    #[error("subnet {subnet} is not allocated; allocate or request it first")]
    SubnetNotAllocated {
        /// The subnet.
        subnet: IpNet,
    },

    /// An explicit gateway is not inside its subnet.
    #[error("gateway {gateway} is outside subnet {subnet}; give a gateway inside the subnet")]
    GatewayOutsideSubnet {
        /// The gateway given.
        gateway: IpAddr,
        /// Its subnet.
        subnet: IpNet,
    },

    /// An explicit gateway is the network or broadcast address of its subnet.
    #[error("gateway {gateway} is the {what} of subnet {subnet}; give a usable address as gateway")]
    GatewayReserved {
        /// The gateway given.
        gateway: IpAddr,
        /// Its subnet.
        subnet: IpNet,
        /// "network address" or "broadcast address".
        what: &'static str,
    },

    /// An ip-range is not inside its subnet.
    #[error("ip-range {range} is not inside subnet {subnet}; give an ip-range within the subnet")]
    IpRangeOutsideSubnet {
        /// The ip-range given.
        range: IpNet,
        /// Its subnet.
        subnet: IpNet,
    },

    /// An address is not inside the subnet it was asked from.
    #[error("address {address} is outside subnet {subnet}; give an address inside the subnet")]
    AddressOutsideSubnet {
        /// The address.
        address: IpAddr,
        /// The subnet.
        subnet: IpNet,
    },

    /// An address is reserved (network, broadcast or gateway address) and can
    /// neither be allocated nor released.
    #[error(
        "address {address} is the {what} of subnet {subnet}, which is reserved; use another address"
    )]
    AddressReserved {
        /// The address.
        address: IpAddr,
        /// The subnet.
        subnet: IpNet,
        /// "network address", "broadcast address" or "gateway".
        what: &'static str,
    },

    /// An explicitly requested address is already allocated.
    #[error(
        "address {address} in subnet {subnet} is already allocated; request another address or release this one first"
    )]
    AddressInUse {
        /// The address.
        address: IpAddr,
        /// The subnet.
        subnet: IpNet,
    },

    /// A released address was not allocated.
    #[error(
        "address {address} in subnet {subnet} is not allocated, so there is nothing to release"
    )]
    AddressNotAllocated {
        /// The address.
        address: IpAddr,
        /// The subnet.
        subnet: IpNet,
    },

    /// Every address of a subnet (or of its ip-range) is allocated.
    #[error(
        "no free address left in subnet {subnet}{}; release unused addresses, or use a larger subnet or ip-range",
        range_note(.ip_range)
    )]
    SubnetFull {
        /// The subnet.
        subnet: IpNet,
        /// Its ip-range, when addresses are drawn from one.
        ip_range: Option<IpNet>,
    },

    /// An address of the stored allocations lies in no allocated subnet.
    #[error("address {address} is not inside any allocated subnet; list its network's subnet too")]
    AddressWithoutSubnet {
        /// The address.
        address: IpAddr,
    },

    /// A VNI outside 4096..=16777215.
    #[error(
        "VNI {vni} is out of range; VXLAN ids of overlay networks must be within {VNI_MIN}..={VNI_MAX}"
    )]
    VniOutOfRange {
        /// The VNI given.
        vni: u32,
    },

    /// An explicitly requested VNI is already allocated.
    #[error("VNI {vni} is already allocated to another network; choose another VNI")]
    VniInUse {
        /// The VNI.
        vni: u32,
    },

    /// A released VNI was not allocated.
    #[error("VNI {vni} is not allocated, so there is nothing to release")]
    VniNotAllocated {
        /// The VNI.
        vni: u32,
    },

    /// Every VNI is allocated.
    #[error("no free VNI left in {VNI_MIN}..={VNI_MAX}; remove unused overlay networks")]
    VnisExhausted,

    /// The stored allocations given to [`crate::Ipam::rebuild`] conflict.
    #[error(
        "the stored allocations conflict: {0} (correct or remove the object in the store that holds it)"
    )]
    Conflict(Box<Error>),

    /// Serialized state that is not consistent (for example a subnet listed
    /// twice, or addresses of a subnet that is not allocated).
    #[error("invalid IPAM state: {0}; restore it from a good copy or rebuild it from the store")]
    InvalidState(String),
}

fn range_note(range: &Option<IpNet>) -> String {
    match range {
        Some(r) => format!(" (ip-range {r})"),
        None => String::new(),
    }
}
