//! Typed errors: each says what failed and what to do about it.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// The most ports a Linux bridge takes (BR_MAX_PORTS less port 0, which is never used).
pub const BRIDGE_MAX_PORTS: usize = 1023;

/// Errors of the overlay data plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A desired value is malformed (name, subnet, address, MTU, ...).
    #[error("invalid {what}: {why}")]
    Invalid { what: String, why: String },

    /// No interface of the node namespace holds the data-path (VTEP) address.
    #[error(
        "underlay interface not found: no interface in network namespace {ns:?} has the \
         data-path address {vtep}; give the node's own underlay address (--data-path-addr) or \
         assign it to the underlay interface first"
    )]
    UnderlayNotFound { ns: String, vtep: Ipv4Addr },

    /// The task's network namespace is gone (or was never created).
    #[error(
        "task network namespace {path:?} does not exist: start the task's sandbox before \
         attaching it to a network, or remove the endpoint from the desired state"
    )]
    TaskNamespaceMissing { path: PathBuf },

    /// An endpoint or peer set names a network that was not ensured first.
    #[error("network {id:?} is not known on this node: call ensure_network before {op}")]
    UnknownNetwork { id: String, op: &'static str },

    /// Another device, one netagent does not own, uses the VNI on the data-path port.
    #[error(
        "VNI {vni} on UDP port {port} is held by {holder}, which netagent does not own: delete \
         that device (`ip -d link show type vxlan` finds it) or give the network another VNI"
    )]
    VniInUse { vni: u32, port: u16, holder: String },

    /// A device with a name netagent wants exists but is of another kind.
    #[error(
        "device {name:?} in network namespace {ns:?} is a {found} device, not a {want}: netagent \
         does not replace devices it does not own; delete or rename it, or configure another name"
    )]
    NameTaken {
        name: String,
        ns: String,
        found: String,
        want: &'static str,
    },

    /// A gateway endpoint was asked for before the gateway bridge.
    #[error(
        "the gateway bridge is not set up on this node: call ensure_gwbridge before attaching \
         task {path:?} to it"
    )]
    NoGwBridge { path: PathBuf },

    /// The network's bridge on this node has as many ports as a Linux bridge takes.
    #[error(
        "the bridge of network {network} on this node has as many ports as a Linux bridge \
         takes ({BRIDGE_MAX_PORTS}, one of them the VXLAN device's): attach the task on another \
         node, or to another network"
    )]
    BridgeFull { network: String },

    /// The kernel refused a netlink request.
    #[error("{op} in network namespace {ns:?} failed: {detail}")]
    Netlink {
        op: String,
        ns: String,
        detail: String,
        /// The errno the kernel answered (0 if the socket itself failed).
        errno: i32,
    },

    /// Creating, opening or entering a namespace failed.
    #[error(transparent)]
    Netns(#[from] netns::Error),

    /// nft failed.
    #[error(
        "nftables: {what} in network namespace {ns:?} failed: {detail} (netagent needs the nft \
         tool and nf_tables in the kernel: `apt-get install nftables`)"
    )]
    Nft {
        what: String,
        ns: String,
        detail: String,
    },

    /// Reading or writing a sysctl failed.
    #[error("sysctl {key} in network namespace {ns:?}: {source} (netagent needs root)")]
    Sysctl {
        key: String,
        ns: String,
        #[source]
        source: std::io::Error,
    },

    /// The eBPF overlay fast path could not be loaded, attached or updated.
    #[error(
        "overlay fast path: {what} in network namespace {ns:?}: {detail} (run the agent with \
         --no-fast-path to use the sandbox bridge only)"
    )]
    FastPath {
        what: String,
        ns: String,
        detail: String,
    },

    /// The routing mesh's eBPF shortcut could not be loaded, attached or updated (the mesh
    /// keeps working through the node's nftables path).
    #[error(
        "routing mesh shortcut: {what} in network namespace {ns:?}: {detail} (run the agent \
         with --no-fast-path to use the node's nftables path only)"
    )]
    MeshPath {
        what: String,
        ns: String,
        detail: String,
    },
}

impl Error {
    pub(crate) fn invalid(what: impl Into<String>, why: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            why: why.into(),
        }
    }

    /// The errno of a refused netlink request, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Netlink { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
