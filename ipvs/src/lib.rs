//! Service load balancing on one node: the desired VIPs and their backends in, the kernel's state
//! out, behind one [`LoadBalancer`] trait with two implementations:
//!
//! - eBPF socket LB ([`Kind::Ebpf`]): cgroup connect4/sendmsg4/recvmsg4/getpeername4 programs
//!   (crate `ebpf`) attached once to the node's task cgroup root; maps keyed by VIP (a VIP forwards
//!   every port to the same port on a backend), backend slots, a reverse map for UDP replies.
//! - IPVS ([`Kind::Ipvs`]) over generic netlink, in Docker's layout: in each network's
//!   load-balancer namespace the VIPs, fwmark services (rr), masquerade to the node's LB address.
//!
//! Both keep each VIP local to the network's load-balancer namespace, so `ping VIP` answers as in
//! Docker (eBPF: a `local` /32 route per VIP on the namespace's interface, see `vip_addrs`). Both
//! adopt what an earlier run of the agent left in the kernel (pinned maps, IPVS services), so a
//! restart with the same desired state writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

pub mod ebpf;
mod ipvs;
mod vip_addrs;

pub use ebpf::{EbpfLb, VipEntry};
pub use ipvs::{IpvsLb, NFT_TABLE as IPVS_NFT_TABLE};

/// Which implementation balances this node's VIPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Ebpf,
    Ipvs,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Ebpf => "ebpf",
            Kind::Ipvs => "ipvs",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the operator asked for (`netagent --lb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Choice {
    Ebpf,
    Ipvs,
    /// eBPF when the kernel supports the hooks, else IPVS, else an error naming what is missing.
    #[default]
    Auto,
}

impl std::str::FromStr for Choice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Choice, String> {
        match s {
            "ebpf" => Ok(Choice::Ebpf),
            "ipvs" => Ok(Choice::Ipvs),
            "auto" => Ok(Choice::Auto),
            other => Err(format!(
                "unknown load balancer {other:?}: expected ebpf, ipvs or auto"
            )),
        }
    }
}

/// Where a node's load balancer lives.
#[derive(Debug, Clone)]
pub struct Config {
    pub choice: Choice,
    /// cgroup2 directory that parents every task cgroup of this node (eBPF programs attach here,
    /// never to the root cgroup).
    pub cgroup: Option<PathBuf>,
    /// Directory on a bpffs where the eBPF maps and links are pinned so a restarted agent adopts
    /// them (the lab gives each node its own bpffs mount).
    pub pin_dir: PathBuf,
    /// IPVS idle timeouts (tcp, tcpfin, udp) in seconds, set so idle TCP connections are not cut
    /// at IPVS' default 900 s (moby#31208).
    pub ipvs_timeouts: (u32, u32, u32),
}

/// A network this node balances VIPs on: its load-balancer namespace and the node's address there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkLb {
    pub id: String,
    /// The network's load-balancer namespace on this node (`/run/netns/<prefix>lb-<net>`).
    pub netns: PathBuf,
    /// The interface in that namespace attached to the network's bridge.
    pub iface: String,
    /// The node's load-balancer address on the network (IPVS masquerades to it).
    pub addr: Ipv4Addr,
    pub subnet: Ipv4Net,
}

/// Identifies one service's VIP on one network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub network: String,
    pub service: String,
}

/// One service's VIP on one network and its running tasks' addresses on that network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLb {
    pub key: ServiceKey,
    pub vip: Ipv4Addr,
    /// Running tasks' addresses; empty: connections to the VIP are refused at once.
    pub backends: BTreeSet<Ipv4Addr>,
}

/// Everything the node's load balancer should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub networks: BTreeMap<String, NetworkLb>,
    pub services: BTreeMap<ServiceKey, ServiceLb>,
}

/// One change to the desired state. A service's network is put before the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    PutNetwork(NetworkLb),
    /// Removes the network and every service on it.
    RemoveNetwork(String),
    PutService(ServiceLb),
    RemoveService(ServiceKey),
}

/// What a call changed in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Kernel writes (map updates/deletes, netlink requests that changed something).
    pub writes: u64,
    /// Input refused (a backend outside its network, a VIP that collides with another service's),
    /// one line each; refused input changes nothing in the kernel.
    pub refused: Vec<String>,
}

/// What a node's load balancer holds and has done (`netagent_lb_*` metrics). Read from the
/// kernel when asked; nothing is counted per connection in user space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// VIPs programmed (each service's VIP on each network).
    pub services: u64,
    /// Backends over all of them (a task counts once per service VIP it serves).
    pub backends: u64,
    /// Connections (and, with eBPF, unconnected UDP datagrams) sent to a VIP and given to a
    /// backend since the balancer's kernel state was created. eBPF: the programs' counters
    /// (pinned, so they survive an agent restart). IPVS: the connections its services counted.
    pub balanced: u64,
    /// Connections and datagrams to a VIP refused because it had no running backend. eBPF: the
    /// programs' counter. IPVS: IPVS never sees these (netagent's nftables table refuses them
    /// before it), so the packets its two refusal rules counted (a refused TCP connect is one
    /// SYN, a refused UDP datagram one packet).
    pub refused: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the kernel cannot do {0}")]
    Unsupported(String),
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A node's load balancer.
pub trait LoadBalancer: Send {
    fn kind(&self) -> Kind;
    /// Makes the kernel hold exactly `desired` (what else this balancer holds is removed).
    /// Idempotent: a second call with the same input writes nothing.
    fn sync(&mut self, desired: &Desired) -> Result<Report>;
    /// Applies changes in order, each idempotent against what the kernel holds.
    fn apply(&mut self, changes: &[Change]) -> Result<Report>;
    /// Removes everything this balancer put in the kernel (programs detached, pins removed,
    /// IPVS services deleted). Used when a node leaves the swarm.
    fn remove_all(&mut self) -> Result<Report>;
    /// What the kernel holds and counted (reads only; never writes).
    fn counters(&mut self) -> Result<Counters>;
}

/// Opens the node's load balancer, adopting what an earlier run left in the kernel.
pub fn open(config: &Config) -> Result<Box<dyn LoadBalancer>> {
    match detect(config)? {
        Kind::Ebpf => Ok(Box::new(EbpfLb::open(config)?)),
        Kind::Ipvs => Ok(Box::new(IpvsLb::open(config)?)),
    }
}

/// Which implementation `config.choice` resolves to on this kernel, or why none can run.
pub fn detect(config: &Config) -> Result<Kind> {
    match config.choice {
        Choice::Ebpf => {
            ebpf::supported(config)?;
            Ok(Kind::Ebpf)
        }
        Choice::Ipvs => ipvs::detect().map(|_| Kind::Ipvs),
        Choice::Auto => match ebpf::supported(config) {
            Ok(()) => Ok(Kind::Ebpf),
            Err(e) => ipvs::detect().map(|_| Kind::Ipvs).map_err(|ipvs_err| {
                Error::Unsupported(format!(
                    "any service load balancer: eBPF socket LB: {e}; IPVS: {ipvs_err}"
                ))
            }),
        },
    }
}
