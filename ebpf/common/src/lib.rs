//! Map keys and values of the eBPF socket load balancer, shared by the kernel-side programs
//! (crate `ebpf`, built for bpfel-unknown-none) and the user-space loader (`ipvs::ebpf`).
//!
//! Addresses and ports are in network byte order, as the kernel hands them to the programs in
//! `bpf_sock_addr.user_ip4` / `user_port`: an `Ipv4Addr` becomes `u32::from_ne_bytes(octets)`.
//!
//! Maps:
//! - [`SVC_MAP`]: `SvcKey { vip, slot } -> SvcValue`. Slot 0 of a VIP is its head: `count`
//!   backends and the service's `rev` id. Slots `1..=count` hold one backend address each. A VIP
//!   forwards every port to the same port on the chosen backend (Docker's semantics).
//! - [`REV_MAP`] (LRU): `RevKey { socket cookie, backend addr, port } -> RevValue { vip, port,
//!   rev }`, written at connect/sendmsg so recvmsg4 and getpeername4 show the VIP, not the backend.
//! - [`CNT_MAP`] (per-CPU array of u64, indexed by [`Counter`]): what the programs did, counted
//!   per CPU without atomics (user space sums the CPUs). Its pin name carries a layout version:
//!   a map pinned by an older layout is never reused by mistake.
#![no_std]
pub mod fastpath;
pub mod mesh;

/// Name of the service map (and of its pin in the pin directory).
pub const SVC_MAP: &str = "NA_LB_SVC";
/// Name of the reverse map (and of its pin).
pub const REV_MAP: &str = "NA_LB_REV";
/// Name of the counters map (and of its pin). The suffix is the layout version: change it with
/// [`CNT_ENTRIES`] or with the meaning of an index.
pub const CNT_MAP: &str = "NA_LB_CNT_V1";
/// Entries of the counters map: room for counters added later without a new layout.
pub const CNT_ENTRIES: u32 = 8;

/// The counters the programs keep, as indices of [`CNT_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// Connections (connect4/6) and unconnected datagrams (sendmsg4) sent to a VIP and
    /// translated to one of its backends.
    Balanced = 0,
    /// Connections and datagrams to a VIP refused because it had no running backend.
    Refused = 1,
}

impl Counter {
    pub const ALL: [Counter; 2] = [Counter::Balanced, Counter::Refused];

    pub const fn index(self) -> u32 {
        self as u32
    }
}

/// Capacity of the service map: slot heads plus backend slots over all VIPs.
pub const SVC_MAX_ENTRIES: u32 = 1 << 20;
/// Capacity of the LRU reverse map (one entry per socket and backend).
pub const REV_MAX_ENTRIES: u32 = 1 << 17;
/// Most backends one VIP may have (slot numbers are u16).
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// The eBPF programs (function names in the object file) and their cgroup hooks. The *6 ones
/// serve dual-stack sockets reaching a VIP as ::ffff:VIP (their unconnected sends go through
/// sendmsg4).
pub const PROGRAMS: [(&str, &str); 7] = [
    ("na_lb_connect4", "connect4"),
    ("na_lb_sendmsg4", "sendmsg4"),
    ("na_lb_recvmsg4", "recvmsg4"),
    ("na_lb_getpeername4", "getpeername4"),
    ("na_lb_connect6", "connect6"),
    ("na_lb_recvmsg6", "recvmsg6"),
    ("na_lb_getpeername6", "getpeername6"),
];

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    /// The VIP, network byte order.
    pub vip: u32,
    /// 0: the head (count, rev); 1..=count: backends.
    pub slot: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SvcValue {
    /// Backend address (slots >= 1), network byte order; 0 in the head.
    pub addr: u32,
    /// Number of backend slots (head only). 0: connections are refused.
    pub count: u16,
    /// The service's id (head only), checked by reverse translation so a VIP reused by another
    /// service does not inherit stale entries.
    pub rev: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevKey {
    /// The socket's cookie (bpf_get_socket_cookie).
    pub cookie: u64,
    /// Backend address, network byte order.
    pub addr: u32,
    /// Port, network byte order in the low 16 bits as in `user_port`.
    pub port: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevValue {
    pub vip: u32,
    pub port: u16,
    pub rev: u16,
}

impl SvcKey {
    pub const fn new(vip: u32, slot: u16) -> SvcKey {
        SvcKey { vip, slot, pad: 0 }
    }
}

impl SvcValue {
    pub const fn head(count: u16, rev: u16) -> SvcValue {
        SvcValue {
            addr: 0,
            count,
            rev,
        }
    }

    pub const fn backend(addr: u32) -> SvcValue {
        SvcValue {
            addr,
            count: 0,
            rev: 0,
        }
    }
}

// SAFETY: plain #[repr(C)] integers with explicit padding fields: every bit pattern is valid and
// there are no implicit padding bytes.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SvcKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SvcValue {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for RevKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for RevValue {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<SvcKey>(), 8);
        assert_eq!(core::mem::size_of::<SvcValue>(), 8);
        assert_eq!(core::mem::size_of::<RevKey>(), 16);
        assert_eq!(core::mem::size_of::<RevValue>(), 8);
    }

    #[test]
    fn every_counter_fits_the_map() {
        for c in Counter::ALL {
            assert!(c.index() < CNT_ENTRIES, "{c:?}");
        }
        // The BPF object name limit (BPF_OBJ_NAME_LEN, NUL included).
        assert!(CNT_MAP.len() < 16);
    }
}
