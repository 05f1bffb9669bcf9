//! Map keys and values of the overlay fast path (tc programs in `ebpf/src/fastpath.rs`, loaded
//! per sandbox by `vxlan::fastpath`).
//!
//! One [`MAC_MAP`] per sandbox (so per network and node): destination MAC -> where a frame for it
//! goes. Only the MACs of that network's endpoints are in it, so a frame a task on network A sends
//! to a MAC of network B finds nothing and takes A's bridge, which has no port for it.

/// Name of the MAC map (and of its pin).
pub const MAC_MAP: &str = "NA_FP_MAC";
/// Name of the per-CPU counters (and of its pin): [`Stat`] indexes it.
pub const STATS_MAP: &str = "NA_FP_STATS";
/// Capacity of one sandbox's MAC map: the network's endpoints on every node.
pub const MAC_MAX_ENTRIES: u32 = 1 << 16;
/// The program on a sandbox's `vxlan0` ingress (frames from remote nodes).
pub const PROG_VXLAN: &str = "na_fp_vxlan_in";
/// The program on the ingress of a task's host-side veth (frames a task sends).
pub const PROG_VETH: &str = "na_fp_veth_in";

/// The destination is a task on this node: `ifindex` is its host-side veth in the sandbox;
/// the frame goes to the veth's peer (the task's interface) with `bpf_redirect_peer`.
pub const KIND_LOCAL: u32 = 1;
/// The destination is a remote endpoint: `ifindex` is the sandbox's `vxlan0`; a frame from a task
/// goes out of it with `bpf_redirect` (the VXLAN FDB picks the VTEP).
pub const KIND_REMOTE: u32 = 2;

/// Counters, one slot each in [`STATS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// vxlan0 ingress -> a local task.
    VxlanToLocal = 0,
    /// task -> another local task.
    VethToLocal = 1,
    /// task -> vxlan0.
    VethToRemote = 2,
    /// Left to the bridge (ARP, broadcast, multicast, gateway, unknown MAC).
    Passed = 3,
}

/// Number of slots in [`STATS_MAP`].
pub const STATS_LEN: u32 = 4;

/// A MAC address as a map key, padded to 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacKey {
    pub mac: [u8; 6],
    pub pad: [u8; 2],
}

/// Where frames for a MAC go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Interface index in the sandbox namespace.
    pub ifindex: u32,
    /// [`KIND_LOCAL`] or [`KIND_REMOTE`].
    pub kind: u32,
}

impl MacKey {
    pub const fn new(mac: [u8; 6]) -> MacKey {
        MacKey { mac, pad: [0; 2] }
    }
}

// SAFETY: plain #[repr(C)] integers and byte arrays with explicit padding: every bit pattern is
// valid and there are no implicit padding bytes.
#[cfg(feature = "user")]
unsafe impl aya::Pod for MacKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Target {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<MacKey>(), 8);
        assert_eq!(core::mem::size_of::<Target>(), 8);
        assert!(MAC_MAP.len() < 16 && STATS_MAP.len() < 16);
        assert!(PROG_VXLAN.len() < 16 && PROG_VETH.len() < 16);
    }
}
