//! Map keys and values of the routing mesh's shortcut (tc programs in `ebpf/src/mesh.rs`, loaded
//! per node by `vxlan::meshpath`).
//!
//! [`PORT_MAP`]: `(node address, published port, protocol)` -> the ingress-sbox (its host-side
//! veth on docker_gwbridge and its address there). A client's packet for that address and port,
//! arriving on an interface that holds a node address, gets the sbox's address as destination
//! (as the node's nftables DNAT would give it, so the sbox's conntrack sees the same connection
//! either way) and goes straight into the sbox (`bpf_redirect_peer`). [`FLOW_MAP`] (LRU)
//! remembers, per client address, client port, published port and protocol, which node address
//! the client used and on which interface it arrived; the sbox's answer gets that address back
//! as source and leaves by that interface (`bpf_redirect_neigh`). The node's own stack (its
//! nftables DNAT, docker_gwbridge, its conntrack) sees neither direction.
//!
//! Addresses and ports are in network byte order, as they are in the packet.

/// Name of the port map (and of its pin).
pub const PORT_MAP: &str = "NA_MESH_PORT";
/// Name of the flow map (and of its pin).
pub const FLOW_MAP: &str = "NA_MESH_FLOW";
/// Name of the per-CPU counters (and of its pin): [`Stat`] indexes it.
pub const STATS_MAP: &str = "NA_MESH_STATS";
/// Capacity of the port map: node addresses times published ports.
pub const PORT_MAX_ENTRIES: u32 = 1 << 14;
/// Capacity of the flow map: clients' connections through the node (least recently used go).
pub const FLOW_MAX_ENTRIES: u32 = 1 << 18;
/// The program on the ingress of the interfaces holding the node's addresses.
pub const PROG_IN: &str = "na_mesh_in";
/// The program on the ingress of the sbox's host-side veth (what the sbox sends).
pub const PROG_OUT: &str = "na_mesh_out";

/// IP protocol numbers, as the key holds them.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Counters, one slot each in [`STATS_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// A client's packet into the sbox.
    ToSbox = 0,
    /// The sbox's answer out of the node's interface.
    ToClient = 1,
    /// An answer the neighbour table could not send (dropped by the kernel).
    NeighFailed = 2,
    /// A packet whose rewrite failed (left to the node's stack).
    RewriteFailed = 3,
}

/// Number of slots in [`STATS_MAP`].
pub const STATS_LEN: u32 = 4;

/// A published port on one of the node's addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// The node's address, network byte order (`u32::from_ne_bytes(octets)`).
    pub addr: u32,
    /// The published port, network byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    pub pad: u8,
}

/// Where a published port's packets go.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortTarget {
    /// The sbox's host-side veth on docker_gwbridge (its peer is the sbox's interface).
    pub sbox: u32,
    /// The sbox's address on docker_gwbridge, network byte order: the new destination.
    pub sbox_addr: u32,
}

/// A client's connection through the shortcut, as the sbox's answers show it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The client's address and port, network byte order.
    pub client: u32,
    pub client_port: u16,
    /// The published port, network byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub proto: u8,
    pub pad: [u8; 3],
}

/// What the answers of a flow need to leave as the client expects them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowTarget {
    /// The node address the client connected to (the answers' source), network byte order.
    pub node_addr: u32,
    /// The interface the client's packets arrived on (where the answers leave).
    pub ifindex: u32,
    /// The sbox's address the destination was rewritten to (the answers' source before).
    pub sbox_addr: u32,
}

impl PortKey {
    pub const fn new(addr: [u8; 4], port: u16, proto: u8) -> PortKey {
        PortKey {
            addr: u32::from_ne_bytes(addr),
            port: port.to_be(),
            proto,
            pad: 0,
        }
    }
}

impl FlowKey {
    /// The flow of `client`:`client_port` through published `port`, all as the packet carries
    /// them (network byte order).
    pub const fn new(client: u32, client_port: u16, port: u16, proto: u8) -> FlowKey {
        FlowKey {
            client,
            client_port,
            port,
            proto,
            pad: [0; 3],
        }
    }
}

// SAFETY: plain #[repr(C)] integers with explicit padding: every bit pattern is valid and there
// are no implicit padding bytes.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PortKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PortTarget {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FlowTarget {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<PortKey>(), 8);
        assert_eq!(core::mem::size_of::<PortTarget>(), 8);
        assert_eq!(core::mem::size_of::<FlowKey>(), 12);
        assert_eq!(core::mem::size_of::<FlowTarget>(), 12);
        assert!(PORT_MAP.len() < 16 && STATS_MAP.len() < 16 && FLOW_MAP.len() < 16);
        assert!(PROG_IN.len() < 16 && PROG_OUT.len() < 16);
    }

    #[test]
    fn keys_hold_network_byte_order() {
        let k = PortKey::new([10, 0, 0, 1], 8080, PROTO_TCP);
        assert_eq!(k.addr.to_ne_bytes(), [10, 0, 0, 1]);
        assert_eq!(k.port.to_ne_bytes(), 8080u16.to_be_bytes());
    }
}
