//! The kernel half of an overlay network: desired values in, idempotent netlink changes out.
//!
//! A [`Dataplane`] is a per-node handle. It knows the node's network namespace (in production
//! the agent's own, [`netns::NetNs::current`]), its data-path (VTEP) address, the data-path UDP
//! port and a prefix for the namespaces it creates. Its operations take desired values and make
//! the kernel match them, reading the kernel (netlink dumps) every time, so a restarted process
//! converges and a second pass over unchanged state writes nothing ([`Dataplane::writes`]).
//!
//! Kernel layout, as Docker's overlay driver does it:
//! - one sandbox namespace per network per node, `<prefix>1-<network id[..10]>`, created with
//!   the network's first local endpoint and removed with its last;
//! - in it, bridge `br0` with the network's gateway address and `vxlan0` (VNI, dstport = the
//!   data-path port, local VTEP, learning off, proxy ARP on) on `br0`. `vxlan0` is created from
//!   the node namespace straight into the sandbox, so its UDP socket lives in the node namespace
//!   where the underlay is;
//! - per task endpoint a veth `ve<hash>` on `br0` whose peer is the task's interface (address,
//!   MAC `02:42` + the four address bytes, the network's MTU);
//! - per remote endpoint a permanent neighbour entry (IP -> MAC) and a VXLAN FDB entry (MAC ->
//!   VTEP) on `vxlan0`: no flooding, no learning;
//! - MTU: the underlay interface's MTU - 50 unless the network overrides it (an encrypted
//!   network: - 50 - 26 for ESP, rounded down to a multiple of 4);
//! - an encrypted network's VXLAN traffic between nodes goes through ESP (transport mode,
//!   states and policies over NETLINK_XFRM, [`ipsec`]) behind a fail-closed nftables table
//!   installed before its VXLAN device ([`ipsec_nft`]);
//! - with [`Config::fast_path`], tc programs on `vxlan0` and every task veth of a sandbox send
//!   unicast frames between its tasks and remote endpoints past `br0` (one MAC map per sandbox,
//!   kept by the same reconcile; [`fastpath`]); ARP, broadcast and the gateway still take `br0`;
//! - the gateway bridge (`docker_gwbridge`) in the node namespace with masquerade of its subnet
//!   and no traffic between tasks (isolated bridge ports plus a drop rule), in nftables table
//!   [`nft::TABLE`]; per task a `gw<hash>` veth on it and the task's default route.
//!
//! Everything is blocking: from async code call it on a blocking thread
//! (`tokio::task::spawn_blocking`). The calling thread never changes namespace: netlink sockets
//! are opened inside the namespace they serve on a short-lived thread ([`netns::NetNs::run`]),
//! nft runs as a process that enters the node namespace before exec.

mod error;
pub mod fastpath;
mod gateway;
pub mod ingress;
pub mod ipsec;
pub mod ipsec_nft;
mod kernel;
mod links;
mod meshpath;
pub mod nft;
mod nl;
mod peers;
mod sandbox;
mod spec;
mod tcx;

mod xfrm;

use links::*;
use peers::apply_peers;
pub use sandbox::fast_path_status;
use sandbox::*;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use netns::NetNs;

pub use error::{BRIDGE_MAX_PORTS, Error, Result};
pub use fastpath::{FastPathStats, FastPathStatus};
pub use ipnet::Ipv4Net;
pub use ipsec::{IpsecKey, IpsecKeys};
pub use meshpath::MeshPathStats;
pub use spec::{
    DEFAULT_GWBRIDGE, DEFAULT_PORT, DesiredState, Endpoint, GatewayEndpoint, GwBridge, Keep, Mac,
    Network, NetworkState, Peer, PeerChanges, Removed, VNI_MAX, VXLAN_OVERHEAD,
};

use kernel::{Addr, Link, LinkChange};
use nl::{Counter, Nl, Req};
use spec::{check_host, check_id, check_ifname, veth_name};

/// Prefix of the namespaces netagent creates unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "netagent-";
/// The sandbox bridge.
pub const BRIDGE: &str = "br0";
/// The VXLAN device inside a sandbox.
pub const VXLAN: &str = "vxlan0";
const SANDBOX_TAG: &str = "1-";
const EP_TAG: &str = "ve";
pub(crate) const GW_TAG: &str = "gw";

/// How to build a [`Dataplane`].
#[derive(Debug)]
pub struct Config {
    /// The node's network namespace: the underlay is here, and so are the VXLAN sockets and
    /// the gateway bridge.
    pub netns: NetNs,
    /// The node's data-path address (VTEP): source of VXLAN packets.
    pub vtep: Ipv4Addr,
    /// The data-path UDP port (Docker: 4789, `--data-path-port`).
    pub port: u16,
    /// Names of namespaces netagent creates start with this.
    pub prefix: String,
    /// The eBPF overlay fast path ([`fastpath`]): used when this kernel can run it (else
    /// logged and off); `false` leaves every frame to the sandbox bridge (`--no-fast-path`).
    pub fast_path: bool,
    /// A directory on a bpffs where the fast path pins each sandbox's map and links, so a
    /// restarted process adopts them (no writes). Without it this process holds the links.
    pub bpf_dir: Option<PathBuf>,
}

impl Config {
    /// A configuration with the default port and prefix.
    pub fn new(netns: NetNs, vtep: Ipv4Addr) -> Config {
        Config {
            netns,
            vtep,
            port: DEFAULT_PORT,
            prefix: DEFAULT_PREFIX.to_string(),
            fast_path: false,
            bpf_dir: None,
        }
    }
}

struct Sbox {
    ns: NetNs,
    nl: Nl,
    /// The fast path's map and attachments, opened with the first sync.
    fp: Option<fastpath::Sandbox>,
    /// The peer entries this process left on `vxlan0` (None: read them from the kernel).
    peers: Option<peers::Programmed>,
}

impl Sbox {
    fn new(ns: NetNs, nl: Nl) -> Sbox {
        Sbox {
            ns,
            nl,
            fp: None,
            peers: None,
        }
    }
}

struct Net {
    spec: Network,
    /// `None` until the peer set is given: a new process does not touch the peers a sandbox
    /// already holds before it knows them.
    peers: Option<BTreeMap<Ipv4Addr, Peer>>,
    sbox: Option<Sbox>,
    /// This process's endpoints in the sandbox: host-side veth name -> the task's MAC.
    local: BTreeMap<String, Mac>,
}

/// A network `ensure_network` made known, or the error naming the operation `op` that needed it.
fn known_net<'a>(
    nets: &'a mut BTreeMap<String, Net>,
    id: &str,
    op: &'static str,
) -> Result<&'a mut Net> {
    nets.get_mut(id).ok_or_else(|| Error::UnknownNetwork {
        id: id.to_string(),
        op,
    })
}

/// What every operation needs besides the per-network state.
struct Ctx {
    node: NetNs,
    vtep: Ipv4Addr,
    port: u16,
    prefix: String,
    underlay: String,
    underlay_mtu: u32,
    counter: Arc<Counter>,
    fast: FastPathStatus,
    bpf_dir: Option<PathBuf>,
}

/// The per-node handle on the overlay data plane. See the crate documentation.
pub struct Dataplane {
    ctx: Ctx,
    nl: Nl,
    nets: BTreeMap<String, Net>,
    gw: Option<GwBridge>,
    ipsec: ipsec::IpsecRt,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("netns", &self.ctx.node.name())
            .field("vtep", &self.ctx.vtep)
            .field("port", &self.ctx.port)
            .field("prefix", &self.ctx.prefix)
            .field("fast_path", &self.ctx.fast)
            .field("networks", &self.nets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Ctx {
    fn mtu(&self, n: &Network) -> u32 {
        n.mtu.unwrap_or_else(|| match n.encrypted {
            true => ipsec::encrypted_mtu(self.underlay_mtu),
            false => self.underlay_mtu.saturating_sub(VXLAN_OVERHEAD).max(68),
        })
    }

    fn sandbox_name(&self, id: &str) -> String {
        // Ids are validated ASCII, so byte slicing is safe.
        format!("{}{SANDBOX_TAG}{}", self.prefix, &id[..id.len().min(10)])
    }

    fn sandbox_prefix(&self) -> String {
        format!("{}{SANDBOX_TAG}", self.prefix)
    }
}

impl Dataplane {
    /// Opens the data plane of the node namespace `cfg.netns`. Fails with
    /// [`Error::UnderlayNotFound`] unless an interface there holds `cfg.vtep`.
    pub fn new(cfg: Config) -> Result<Dataplane> {
        let prefix_ok = cfg.prefix.len() <= 150
            && cfg
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !prefix_ok {
            return Err(Error::invalid(
                format!("namespace prefix {:?}", cfg.prefix),
                "use at most 150 characters of [A-Za-z0-9_.-]",
            ));
        }
        if cfg.port == 0 {
            return Err(Error::invalid(
                "data-path port 0",
                "use 1024-49151 (default 4789)",
            ));
        }
        if cfg.vtep.is_unspecified() || cfg.vtep.is_multicast() || cfg.vtep.is_broadcast() {
            return Err(Error::invalid(
                format!("data-path address {}", cfg.vtep),
                "use the node's unicast underlay address",
            ));
        }
        let counter = Arc::new(Counter::default());
        let mut nl = Nl::open(&cfg.netns, counter.clone())?;
        let addr = kernel::addrs(&mut nl)?
            .into_iter()
            .find(|a| a.addr == cfg.vtep)
            .ok_or_else(|| Error::UnderlayNotFound {
                ns: cfg.netns.name().to_string(),
                vtep: cfg.vtep,
            })?;
        let link = kernel::links(&mut nl)?
            .into_iter()
            .find(|l| l.index == addr.index)
            .ok_or_else(|| Error::UnderlayNotFound {
                ns: cfg.netns.name().to_string(),
                vtep: cfg.vtep,
            })?;
        tracing::debug!(underlay = %link.name, mtu = link.mtu, vtep = %cfg.vtep, "vxlan data plane opened");
        let fast = fast_path_status(cfg.fast_path);
        Ok(Dataplane {
            ctx: Ctx {
                node: cfg.netns,
                vtep: cfg.vtep,
                port: cfg.port,
                prefix: cfg.prefix,
                underlay: link.name,
                underlay_mtu: link.mtu,
                counter,
                fast,
                bpf_dir: cfg.bpf_dir,
            },
            nl,
            nets: BTreeMap::new(),
            ipsec: Default::default(),
            gw: None,
        })
    }

    /// The underlay interface (the one holding the VTEP address) and its MTU.
    pub fn underlay(&self) -> (&str, u32) {
        (&self.ctx.underlay, self.ctx.underlay_mtu)
    }

    /// The MTU a network gets on this node: its override, else the underlay MTU - 50.
    pub fn mtu(&self, network: &Network) -> u32 {
        self.ctx.mtu(network)
    }

    /// Whether the eBPF fast path is in use on this node, and if not why.
    pub fn fast_path(&self) -> &FastPathStatus {
        &self.ctx.fast
    }

    /// The fast path's counters in a network's sandbox (`None`: no fast path there).
    pub fn fast_path_stats(&self, network_id: &str) -> Result<Option<FastPathStats>> {
        match self.fast_path_sandbox(network_id) {
            Some(fp) => fp.stats().map(Some),
            None => Ok(None),
        }
    }

    /// The MACs in a network's fast-path map as the kernel holds it, each with whether it is a
    /// local task (else a remote endpoint). Empty without a fast path there.
    pub fn fast_path_macs(&self, network_id: &str) -> Result<BTreeMap<Mac, bool>> {
        match self.fast_path_sandbox(network_id) {
            Some(fp) => fp.read_kernel(),
            None => Ok(BTreeMap::new()),
        }
    }

    fn fast_path_sandbox(&self, network_id: &str) -> Option<&fastpath::Sandbox> {
        self.nets
            .get(network_id)
            .and_then(|n| n.sbox.as_ref())
            .and_then(|s| s.fp.as_ref())
    }

    /// The name of a network's sandbox namespace on this node.
    pub fn sandbox_name(&self, network_id: &str) -> String {
        self.ctx.sandbox_name(network_id)
    }

    /// Mutating kernel requests made so far: netlink writes, namespace creations and deletions,
    /// sysctl writes and nftables transactions. Reads are not counted.
    pub fn writes(&self) -> u64 {
        self.ctx.counter.get()
    }

    /// Calls `hook` with the running count after every mutating kernel request (for metrics,
    /// tracing or fault injection).
    pub fn on_write(&mut self, hook: impl FnMut(u64) + Send + 'static) {
        self.ctx.counter.set_hook(Some(Box::new(hook)));
    }

    /// Records a network and, if its sandbox exists on this node (also one left by an earlier
    /// process), makes the sandbox match it: bridge, VXLAN device, gateway address, and the
    /// peers once [`Dataplane::set_peers`] has given them (before that, peers a sandbox holds
    /// are left alone, so a restarted process does not cut traffic while it learns them).
    pub fn ensure_network(&mut self, network: &Network) -> Result<()> {
        self.ensure_network_inner(network, None)
    }

    fn ensure_network_inner(&mut self, network: &Network, peers: Option<&[Peer]>) -> Result<()> {
        network.validate()?;
        for (id, other) in &self.nets {
            if *id == network.id {
                continue;
            }
            if other.spec.vni == network.vni {
                return Err(Error::invalid(
                    format!("VNI {} of network {}", network.vni, network.id),
                    format!("network {id} on this node has it already"),
                ));
            }
            if self.ctx.sandbox_name(id) == self.ctx.sandbox_name(&network.id) {
                return Err(Error::invalid(
                    format!("network id {}", network.id),
                    format!("network {id} shares its first 10 characters"),
                ));
            }
        }
        // Fail closed: an encrypted network's firewall comes before its VXLAN device.
        self.before_vxlan(network)?;
        let net = self.nets.entry(network.id.clone()).or_insert_with(|| Net {
            spec: network.clone(),
            peers: None,
            sbox: None,
            local: BTreeMap::new(),
        });
        net.spec = network.clone();
        if let Some(p) = peers {
            net.peers = Some(peer_map(&self.ctx, p));
        }
        self.open_sandbox(&network.id, false, true)?;
        if network.encrypted {
            self.sync_ipsec(false)?;
        }
        Ok(())
    }

    /// Removes a network's sandbox (and with it every endpoint of the network on this node)
    /// and forgets the network. Removing an unknown or absent network is not an error.
    pub fn remove_network(&mut self, network_id: &str) -> Result<()> {
        check_id(network_id)?;
        let sbox = self.nets.remove(network_id).and_then(|n| n.sbox);
        let name = self.ctx.sandbox_name(network_id);
        remove_sandbox(&self.ctx, &name, sbox)?;
        self.after_removal()
    }

    /// Ensures the sandbox of a known network exists (creating it when `create`) and, when it
    /// was opened now or `verify`, that it matches the network. Returns whether it exists and
    /// what changed in its peers.
    fn open_sandbox(
        &mut self,
        id: &str,
        create: bool,
        verify: bool,
    ) -> Result<(bool, PeerChanges)> {
        let name = self.ctx.sandbox_name(id);
        let ctx = &self.ctx;
        let net = known_net(&mut self.nets, id, "using its sandbox")?;
        let exists = netns::exists(&name);
        if net.sbox.is_some() && exists {
            let changes = if verify {
                let c = reconcile_sandbox(ctx, &mut self.nl, net)?;
                sync_fast_path(ctx, net)?;
                c
            } else {
                PeerChanges::default()
            };
            return Ok((true, changes));
        }
        net.sbox = None;
        let ns = if exists {
            // A leftover of an earlier process: adopt it, unless it is a dangling mount point.
            match NetNs::open(&name).and_then(|ns| ns.run(|| ()).map(|()| ns)) {
                Ok(ns) => Some(ns),
                Err(_) => {
                    tracing::warn!(sandbox = %name, "replacing a broken sandbox namespace");
                    netns::delete(&name)?;
                    ctx.counter.add(1);
                    None
                }
            }
        } else {
            None
        };
        let ns = match ns {
            Some(ns) => ns,
            None if create => {
                let ns = NetNs::create(&name)?;
                ctx.counter.add(1);
                ns
            }
            None => return Ok((false, PeerChanges::default())),
        };
        // The sandbox only bridges overlay traffic: where br_netfilter is loaded, keep its
        // frames out of the IP hooks (a few percent of throughput, nothing to filter there).
        let wrote = nft::ensure_sysctls_if_present(&ns, netns::BRIDGE_NF_CALL, "0")?;
        ctx.counter.add(wrote);
        let nl = Nl::open(&ns, ctx.counter.clone())?;
        net.sbox = Some(Sbox::new(ns, nl));
        let changes = reconcile_sandbox(ctx, &mut self.nl, net)?;
        sync_fast_path(ctx, net)?;
        Ok((true, changes))
    }

    /// Ensures a task's endpoint on a network: the network's sandbox (created with its first
    /// endpoint), a veth from `br0` into the task namespace named `ifname`, with the address,
    /// MAC and MTU. A stale interface of that name in the task is replaced.
    pub fn ensure_endpoint(&mut self, ep: &Endpoint) -> Result<()> {
        check_id(&ep.network)?;
        check_ifname(&ep.ifname)?;
        let spec = known_net(&mut self.nets, &ep.network, "ensure_endpoint")?
            .spec
            .clone();
        let what = format!("endpoint {} of network {}", ep.ifname, spec.id);
        check_host(&what, &spec.subnet, ep.address)?;
        if ep.address == spec.gateway {
            return Err(Error::invalid(
                format!("address {} of {what}", ep.address),
                "it is the network's gateway address",
            ));
        }
        let task = open_task(&ep.netns)?;
        self.open_sandbox(&spec.id, true, false)?;
        let ctx = &self.ctx;
        let net = self.nets.get_mut(&spec.id).expect("known above");
        let sbox = net.sbox.as_mut().expect("sandbox opened above");
        let br = kernel::link_by_name(&mut sbox.nl, BRIDGE)?.ok_or_else(|| Error::Netlink {
            op: format!("find {BRIDGE}"),
            ns: sbox.ns.name().to_string(),
            detail: "the sandbox has no bridge; call ensure_network to repair it".into(),
            errno: libc::ENODEV,
        })?;
        let host_name = veth_name(EP_TAG, &ep.netns, &ep.ifname);
        // A bridge full of ports answers EXFULL ("Exchange full"): say which limit it is.
        let full = |e: Error| match e {
            Error::Netlink {
                errno: libc::EXFULL,
                ..
            } => Error::BridgeFull {
                network: spec.id.clone(),
            },
            e => e,
        };
        ensure_veth(
            &mut sbox.nl,
            &ctx.counter,
            &VethWant {
                host_name: host_name.clone(),
                master: br.index,
                isolated: false,
                mtu: ctx.mtu(&spec),
                task: &task,
                ifname: &ep.ifname,
                mac: ep.mac(),
                addr: ep.address,
                prefix: spec.subnet.prefix_len(),
                route: RouteWant::Leave,
            },
        )
        .map_err(full)?;
        // The fast path learns this endpoint alone (no dump of the sandbox's links).
        let link = kernel::link_by_name(&mut sbox.nl, &host_name)?;
        net.local.insert(host_name, ep.mac());
        match link {
            Some(l) => sync_fast_path_local(ctx, net, &l, ep.mac()),
            None => sync_fast_path(ctx, net),
        }
    }

    /// Removes a task's endpoint (both ends of its veth); removing the network's last endpoint
    /// on this node removes the sandbox. Removing an absent endpoint is not an error.
    pub fn remove_endpoint(&mut self, network_id: &str, netns: &Path, ifname: &str) -> Result<()> {
        check_id(network_id)?;
        check_ifname(ifname)?;
        let name = self.ctx.sandbox_name(network_id);
        if !netns::exists(&name) {
            if let Some(n) = self.nets.get_mut(network_id) {
                n.sbox = None;
            }
            return Ok(());
        }
        let cached = self.nets.get_mut(network_id).and_then(|n| n.sbox.take());
        let mut sbox = match cached {
            Some(s) => s,
            None => {
                let ns = NetNs::open(&name)?;
                let nl = Nl::open(&ns, self.ctx.counter.clone())?;
                Sbox::new(ns, nl)
            }
        };
        let veth = veth_name(EP_TAG, netns, ifname);
        // The delta: this process made the endpoint and knows others stay in the sandbox (its
        // own record of them), so one lookup and one deletion, whatever the sandbox holds.
        // Otherwise (a new process, or the last endpoint it knows) the sandbox is read whole.
        let known = self.nets.get(network_id).and_then(|n| {
            let mac = *n.local.get(&veth)?;
            n.local.keys().any(|v| *v != veth).then_some(mac)
        });
        if let Some(mac) = known {
            if let Some(l) = kernel::link_by_name(&mut sbox.nl, &veth)? {
                delete_link(&mut sbox.nl, &l)?;
            }
            let n = self.nets.get_mut(network_id).expect("known above");
            n.local.remove(&veth);
            n.sbox = Some(sbox);
            return sync_fast_path_removed(&self.ctx, n, &veth, mac);
        }
        let links = kernel::links(&mut sbox.nl)?;
        if let Some(l) = links.iter().find(|l| l.name == veth) {
            delete_link(&mut sbox.nl, l)?;
        }
        let left = links
            .iter()
            .filter(|l| l.name != veth && l.name.starts_with(EP_TAG) && l.is("veth"))
            .count();
        if left == 0 {
            remove_sandbox(&self.ctx, &name, Some(sbox))
        } else {
            if let Some(n) = self.nets.get_mut(network_id) {
                n.local.remove(&veth);
                n.sbox = Some(sbox);
                sync_fast_path(&self.ctx, n)?;
            }
            Ok(())
        }
    }

    /// Removes every object netagent made on this node that `keep` does not name: sandboxes
    /// (also of crashed processes), endpoints, gateway endpoints, the gateway bridge. Networks
    /// not kept are forgotten.
    pub fn remove_stale(&mut self, keep: &Keep) -> Result<Removed> {
        let removed = self.remove_stale_inner(keep)?;
        self.after_removal()?;
        Ok(removed)
    }

    fn remove_stale_inner(&mut self, keep: &Keep) -> Result<Removed> {
        let mut removed = Removed::default();
        let kept: BTreeMap<String, &String> = keep
            .networks
            .iter()
            .map(|id| (self.ctx.sandbox_name(id), id))
            .collect();
        // Sandboxes to remove, removed in parallel below: each link deletion waits for an RCU
        // grace period in the kernel, and concurrent deletions share them.
        let mut doomed: Vec<(String, Option<Sbox>)> = Vec::new();
        let forget: Vec<String> = self
            .nets
            .keys()
            .filter(|id| !keep.networks.contains(*id))
            .cloned()
            .collect();
        for id in forget {
            let sbox = self.nets.remove(&id).and_then(|n| n.sbox);
            let name = self.ctx.sandbox_name(&id);
            if !kept.contains_key(&name) && netns::exists(&name) {
                doomed.push((name, sbox));
            }
        }
        let sb_prefix = self.ctx.sandbox_prefix();
        for name in netns::list()? {
            if !name.starts_with(&sb_prefix) || doomed.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let Some(id) = kept.get(&name) else {
                doomed.push((name, None));
                continue;
            };
            let want: BTreeSet<String> = keep
                .endpoints
                .iter()
                .filter(|(n, _, _)| n == *id)
                .map(|(_, path, ifname)| veth_name(EP_TAG, path, ifname))
                .collect();
            let cached = self.nets.get_mut(*id).and_then(|n| n.sbox.take());
            let mut sbox = match cached {
                Some(s) => s,
                None => match NetNs::open(&name).map_err(Error::from).and_then(|ns| {
                    Nl::open(&ns, self.ctx.counter.clone()).map(|nl| Sbox::new(ns, nl))
                }) {
                    Ok(s) => s,
                    Err(_) => {
                        doomed.push((name, None));
                        continue;
                    }
                },
            };
            let links = kernel::links(&mut sbox.nl)?;
            let (keep_eps, stale): (Vec<&Link>, Vec<&Link>) = links
                .iter()
                .filter(|l| l.name.starts_with(EP_TAG) && l.is("veth"))
                .partition(|l| want.contains(&l.name));
            if keep_eps.is_empty() {
                removed.endpoints += stale.len();
                doomed.push((name, Some(sbox)));
                continue;
            }
            let reqs: Vec<Req> = stale
                .iter()
                .map(|l| kernel::del_link(l.index, &l.name))
                .collect();
            removed.endpoints += reqs.len();
            if !reqs.is_empty() {
                batch_ignoring(&mut sbox.nl, reqs, &[libc::ENODEV])?;
            }
            if let Some(n) = self.nets.get_mut(*id) {
                n.local.retain(|veth, _| want.contains(veth));
                n.sbox = Some(sbox);
                sync_fast_path(&self.ctx, n)?;
            }
        }
        removed.sandboxes = doomed.len();
        let ctx = &self.ctx;
        in_parallel(doomed, |(name, sbox)| remove_sandbox(ctx, &name, sbox))?;
        if let Some(dir) = &self.ctx.bpf_dir {
            let n = fastpath::remove_stale_pins(dir, &self.ctx.sandbox_prefix())?;
            self.ctx.counter.add(n);
        }

        let want_gw: BTreeSet<String> = keep
            .gateway_endpoints
            .iter()
            .map(|(path, ifname)| veth_name(GW_TAG, path, ifname))
            .collect();
        let stale_gw: Vec<Link> = kernel::links(&mut self.nl)?
            .into_iter()
            .filter(|l| is_gw_veth(l) && !want_gw.contains(&l.name))
            .collect();
        removed.gateway_endpoints = stale_gw.len();
        delete_links_in_parallel(&self.ctx, &self.ctx.node, stale_gw)?;
        if !keep.gwbridge {
            let name = self
                .gw
                .as_ref()
                .map(|g| g.name.clone())
                .unwrap_or_else(|| DEFAULT_GWBRIDGE.to_string());
            let present =
                kernel::link_by_name(&mut self.nl, &name)?.is_some_and(|l| l.is("bridge"));
            if present || nft::exists(&self.ctx.node)? {
                self.remove_gwbridge()?;
                removed.gwbridge = true;
            }
            self.gw = None;
        }
        Ok(removed)
    }

    /// Makes this node's overlay data plane exactly `desired`: removes what is stale, then
    /// ensures every network (with its peers), the gateway bridge, every endpoint and every
    /// gateway endpoint. A gateway endpoint of a task whose overlay endpoints are all on
    /// internal networks gets no default route.
    pub fn apply(&mut self, desired: &DesiredState) -> Result<()> {
        let encrypted = desired.networks.iter().filter(|n| n.network.encrypted);
        self.ensure_ipsec_rules(encrypted.map(|n| n.network.vni).collect(), false)?;
        self.remove_stale_inner(&desired.keep())?;
        for n in &desired.networks {
            self.ensure_network_inner(&n.network, Some(&n.peers))?;
        }
        if let Some(gw) = &desired.gwbridge {
            self.ensure_gwbridge(gw)?;
        }
        let mut internal_only: BTreeMap<&PathBuf, bool> = BTreeMap::new();
        for n in &desired.networks {
            for ep in &n.endpoints {
                if ep.network != n.network.id {
                    return Err(Error::invalid(
                        format!("endpoint {} in {:?}", ep.ifname, ep.netns),
                        format!(
                            "it names network {} but is listed under network {}",
                            ep.network, n.network.id
                        ),
                    ));
                }
                self.ensure_endpoint(ep)?;
                *internal_only.entry(&ep.netns).or_insert(true) &= n.network.internal;
            }
        }
        for g in &desired.gateway_endpoints {
            let mut g = g.clone();
            if internal_only.get(&g.netns).copied().unwrap_or(false) {
                g.default_route = false;
            }
            self.ensure_gateway_endpoint(&g)?;
        }
        self.after_removal()
    }
}

/// Worker threads for removals (see [`Dataplane::remove_stale`]).
const REMOVERS: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_move_to_a_blocking_thread() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Dataplane>();
        send_sync::<Error>();
    }

    #[test]
    fn nft_script_is_tagged_by_its_content() {
        let a = nft::script("docker_gwbridge", &"172.18.0.0/16".parse().unwrap());
        let b = nft::script("docker_gwbridge", &"172.19.0.0/16".parse().unwrap());
        assert_ne!(a.1, b.1);
        assert_eq!(a.0.matches(&a.1).count(), 2, "both rules carry the tag");
        assert!(a.0.contains("ip saddr 172.18.0.0/16 masquerade"));
        assert!(a.0.contains("delete table ip netagent_gwbridge"));
    }
}
