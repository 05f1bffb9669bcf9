//! IPVS over generic netlink, in Docker's layout. In each network's load-balancer namespace:
//!
//! - each VIP as a /32 address on the network's interface (`ping VIP` answers, ARP too);
//! - netagent's nftables table marking packets to a VIP with its service's fwmark, refusing
//!   VIPs without backends at once, and masquerading what IPVS forwards to the node's
//!   load-balancer address (see [`nft`]);
//! - one fwmark IPVS service per VIP, scheduler rr, its backends as masquerading destinations
//!   with port 0 (the client's destination port is kept: a VIP forwards every port);
//! - Docker's IPVS sysctls (conntrack, conn_reuse_mode=0, expire_nodest_conn, ...) and the
//!   IPVS idle timeouts from [`Config::ipvs_timeouts`] (not IPVS' 900 s, moby#31208).
//!
//! Counters (`LoadBalancer::counters`): balanced is the sum of the connections IPVS' services
//! scheduled (IPVS_SVC_ATTR_STATS64, else STATS); refused is what the nftables refusal rules
//! counted, since IPVS never sees a VIP without backends.
//!
//! A reconcile reads the namespace into a [`diff::View`] (once, then kept up to date by the
//! writes; `sync` reads again), diffs it against the admitted desired state and writes only the
//! difference. Nothing is shelled out but `nft`, as elsewhere in netagent.

mod diff;
mod kernel;
mod msg;
mod nft;
mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use netns::NetNs;

use crate::{
    Change, Config, Counters, Desired, Error, Kind, LoadBalancer, NetworkLb, Report, Result,
    ServiceKey, ServiceLb,
};
use diff::{NetPlan, Op, View};
use kernel::Kernel;
use msg::Timeouts;
use plan::{Admitted, Subject};

pub use nft::TABLE as NFT_TABLE;

/// IPVS accepts timeouts up to INT_MAX jiffies; this bound holds for any HZ up to 1000.
const MAX_TIMEOUT: u32 = i32::MAX as u32 / 1000;

/// The generic netlink family id of IPVS, or why this kernel cannot balance with IPVS.
pub fn detect() -> Result<u16> {
    let here = NetNs::current().map_err(|e| Error::Other(format!("open this namespace: {e}")))?;
    kernel::resolve_family(&here)?.ok_or_else(|| {
        Error::Unsupported(
            "IPVS: the generic netlink family \"IPVS\" is missing (load the ip_vs module)".into(),
        )
    })
}

/// One network's namespace as this balancer holds it.
struct NetState {
    net: NetworkLb,
    kernel: Kernel,
    view: View,
    /// The view may not match the kernel (a write failed): read it again before diffing.
    stale: bool,
}

/// The IPVS load balancer of one node.
pub struct IpvsLb {
    family: u16,
    timeouts: Timeouts,
    /// The desired state as given (refused entries included, so they are reconsidered).
    raw: Desired,
    admitted: Admitted,
    nets: BTreeMap<String, NetState>,
    /// Whether a full `sync` has run since `open`. Before it (an agent that just restarted and
    /// is still receiving its desired state), reconciles add and update what is admitted and
    /// remove nothing they do not know about: the first full sync prunes.
    synced: bool,
    /// Kernel counters as last read, so the reported totals never go down (see [`Totals`]).
    totals: Totals,
}

/// Running totals over kernel counters that restart: an IPVS service deleted (or recreated) and
/// a replaced nftables table start from 0. What a counter had reached when it was last read is
/// kept; counts made after the last read of a counter that then vanished are lost.
#[derive(Debug, Default)]
struct Totals {
    /// (network, fwmark) -> connections last read.
    conns: BTreeMap<(String, u32), u64>,
    /// network -> refused packets last read.
    refused: BTreeMap<String, u64>,
    /// Sum of what counters had reached before they restarted.
    retired_conns: u64,
    retired_refused: u64,
}

/// Replaces `last` with `now`, moving counters that vanished or went down into `retired`;
/// returns the total.
fn fold<K: Ord + Clone>(
    last: &mut BTreeMap<K, u64>,
    now: BTreeMap<K, u64>,
    retired: &mut u64,
) -> u64 {
    for (k, was) in last.iter() {
        if now.get(k).is_none_or(|n| n < was) {
            *retired = retired.saturating_add(*was);
        }
    }
    *last = now;
    last.values().fold(*retired, |a, v| a.saturating_add(*v))
}

impl IpvsLb {
    /// Checks that the kernel has IPVS; nothing is written until the first `sync` or `apply`,
    /// which adopts what the namespaces already hold.
    pub fn open(config: &Config) -> Result<IpvsLb> {
        let (tcp, fin, udp) = config.ipvs_timeouts;
        for (name, t) in [("tcp", tcp), ("tcpfin", fin), ("udp", udp)] {
            if t == 0 || t > MAX_TIMEOUT {
                return Err(Error::Other(format!(
                    "IPVS {name} timeout {t} s: expected 1 to {MAX_TIMEOUT} seconds"
                )));
            }
        }
        Ok(IpvsLb {
            family: detect()?,
            timeouts: config.ipvs_timeouts,
            raw: Desired::default(),
            admitted: Admitted::default(),
            nets: BTreeMap::new(),
            synced: false,
            totals: Totals::default(),
        })
    }

    /// Makes the kernel hold what is admitted on the target networks: every VIP of a network
    /// mapped to `None`, only the given VIPs otherwise. With `reread`, the namespaces are read
    /// again first.
    fn reconcile(
        &mut self,
        targets: BTreeMap<String, Option<BTreeSet<Ipv4Addr>>>,
        reread: bool,
    ) -> Result<u64> {
        let mut writes = 0;
        let mut errors = Vec::new();
        for (id, only) in &targets {
            let want = self.admitted.networks.get(id).cloned();
            // A network gone, or moved to another namespace or interface: clear the old one.
            let moved = self.nets.get(id).is_some_and(|st| {
                want.as_ref()
                    .is_none_or(|w| w.netns != st.net.netns || w.iface != st.net.iface)
            });
            if moved && let Some(mut st) = self.nets.remove(id) {
                match clear(&mut st, reread) {
                    Ok(n) => writes += n,
                    Err(e) => errors.push(e),
                }
            }
            let Some(net) = want else { continue };
            match self.reconcile_net(&net, only.as_ref(), reread) {
                Ok(n) => writes += n,
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => Ok(writes),
            1 => Err(errors.remove(0)),
            n => Err(Error::Other(format!(
                "{n} networks failed; the first: {}",
                errors.remove(0)
            ))),
        }
    }

    fn reconcile_net(
        &mut self,
        net: &NetworkLb,
        only: Option<&BTreeSet<Ipv4Addr>>,
        reread: bool,
    ) -> Result<u64> {
        let st = match self.nets.entry(net.id.clone()) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                let kernel = Kernel::open(&net.netns, &net.iface, self.family)?;
                v.insert(NetState {
                    net: net.clone(),
                    kernel,
                    view: View::default(),
                    stale: true,
                })
            }
        };
        let mut only = only;
        if reread || st.stale || st.net.subnet != net.subnet || st.net.addr != net.addr {
            st.view = st.kernel.read(&net.subnet, net.addr)?;
            st.stale = false;
            only = None;
        }
        if !st.view.table_is_current(&net.subnet, net.addr) {
            only = None;
        }
        let known: BTreeSet<Ipv4Addr>;
        if only.is_none() && !self.synced {
            known = self
                .admitted
                .vips
                .get(&net.id)
                .map(|v| v.keys().copied().collect())
                .unwrap_or_default();
            only = Some(&known);
        }
        st.net = net.clone();
        let plan = NetPlan::new(net, &self.admitted, self.timeouts, only);
        let ops = match only {
            None => diff::diff(&st.view, &plan),
            Some(vips) => diff::diff(&st.view.restrict(&net.subnet, vips), &plan),
        };
        if !ops.is_empty() {
            tracing::debug!(ns = %st.kernel.name(), ops = ?ops, "ipvs: writes");
        }
        let done = execute(st, ops);
        if done.is_err() {
            st.stale = true;
        }
        done
    }
}

/// Removes everything this balancer made in a namespace.
fn clear(st: &mut NetState, reread: bool) -> Result<u64> {
    if reread || st.stale {
        st.view = st.kernel.read(&st.net.subnet, st.net.addr)?;
        st.stale = false;
    }
    let ops = diff::removal(&st.view);
    let done = execute(st, ops);
    if done.is_err() {
        st.stale = true;
    }
    done
}

/// Runs `ops` in order (consecutive IPVS or address requests pipelined), keeps the view in step
/// with what succeeded, and returns the number of writes. On a failure the remaining operations
/// still run (they do not depend on each other beyond their order) and the first error is
/// returned; the view is then marked stale.
fn execute(st: &mut NetState, ops: Vec<Op>) -> Result<u64> {
    let mut writes = 0u64;
    let mut first_err: Option<Error> = None;
    let mut ops = ops.into_iter().peekable();
    while let Some(op) = ops.next() {
        match op {
            Op::Ipvs(first) => {
                let mut group = vec![first];
                while let Some(Op::Ipvs(_)) = ops.peek() {
                    if let Some(Op::Ipvs(o)) = ops.next() {
                        group.push(o);
                    }
                }
                let results = st.kernel.ipvs(group.iter().map(|o| o.msg()).collect())?;
                writes += group.len() as u64;
                for (o, r) in group.into_iter().zip(results) {
                    match r {
                        Err(e) if !o.done_already(e.errno) => {
                            first_err.get_or_insert(kernel::refused(
                                e,
                                &o.describe(),
                                st.kernel.name(),
                            ));
                        }
                        _ => Op::Ipvs(o).apply_to(&mut st.view),
                    }
                }
            }
            Op::Addr(add, vip) => {
                let mut group = vec![(add, vip)];
                while let Some(Op::Addr(..)) = ops.peek() {
                    if let Some(Op::Addr(a, v)) = ops.next() {
                        group.push((a, v));
                    }
                }
                let results = st.kernel.addrs(&group)?;
                writes += group.len() as u64;
                for ((add, vip), r) in group.into_iter().zip(results) {
                    match r {
                        Err(e) if add || e.errno != libc::EADDRNOTAVAIL => {
                            let what = format!(
                                "{} VIP {vip}/32 on {}",
                                if add { "add" } else { "remove" },
                                st.net.iface
                            );
                            first_err.get_or_insert(kernel::refused(e, &what, st.kernel.name()));
                        }
                        _ => Op::Addr(add, vip).apply_to(&mut st.view),
                    }
                }
            }
            other => {
                writes += 1;
                let done = match &other {
                    Op::Sysctl(k, v) => st.kernel.set_sysctl(k, v),
                    Op::Timeouts(t) => {
                        let r = st.kernel.ipvs(vec![msg::IpvsMsg::set_config(*t)])?;
                        match r.into_iter().next() {
                            Some(Err(e)) => Err(kernel::refused(
                                e,
                                &format!("set the IPVS timeouts to {t:?}"),
                                st.kernel.name(),
                            )),
                            _ => Ok(()),
                        }
                    }
                    Op::NftTable { script, .. } => {
                        nft::run(st.kernel.ns(), script, "replace the table")
                    }
                    Op::NftElems(e) => nft::run(st.kernel.ns(), &e.script(), "update the VIPs"),
                    Op::NftDelete => nft::delete(st.kernel.ns()).map(|_| ()),
                    Op::Ipvs(_) | Op::Addr(..) => unreachable!("grouped above"),
                };
                match done {
                    Ok(()) => other.apply_to(&mut st.view),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
    }
    match first_err {
        None => Ok(writes),
        Some(e) => {
            st.stale = true;
            tracing::warn!(ns = %st.kernel.name(), error = %e, "IPVS reconcile incomplete");
            Err(e)
        }
    }
}

fn lines(refused: Vec<(Subject, String)>) -> Vec<String> {
    for (_, l) in &refused {
        tracing::warn!(refused = %l, "load balancer input refused");
    }
    refused.into_iter().map(|(_, l)| l).collect()
}

impl LoadBalancer for IpvsLb {
    fn kind(&self) -> Kind {
        Kind::Ipvs
    }

    fn sync(&mut self, desired: &Desired) -> Result<Report> {
        let (admitted, refused) = plan::admit(desired, &self.admitted);
        self.raw = desired.clone();
        self.admitted = admitted;
        self.synced = true;
        let targets = self
            .nets
            .keys()
            .chain(self.admitted.networks.keys())
            .map(|id| (id.clone(), None))
            .collect();
        let writes = self.reconcile(targets, true)?;
        Ok(Report {
            writes,
            refused: lines(refused),
        })
    }

    fn apply(&mut self, changes: &[Change]) -> Result<Report> {
        // Networks to admit and reconcile whole; services updated in place (same VIP).
        let mut whole: BTreeSet<String> = BTreeSet::new();
        let mut updates: Vec<&ServiceLb> = Vec::new();
        let mut asked = BTreeSet::new();
        for c in changes {
            match c {
                Change::PutNetwork(n) => {
                    self.raw.networks.insert(n.id.clone(), n.clone());
                    whole.insert(n.id.clone());
                    asked.insert(Subject::Network(n.id.clone()));
                }
                Change::RemoveNetwork(id) => {
                    self.raw.networks.remove(id);
                    let keys: Vec<ServiceKey> = plan::on_network(&self.raw.services, id)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in keys {
                        self.raw.services.remove(&k);
                    }
                    whole.insert(id.clone());
                }
                Change::PutService(s) => {
                    self.raw.services.insert(s.key.clone(), s.clone());
                    asked.insert(Subject::Service(s.key.clone()));
                    let same_vip = self
                        .admitted
                        .services
                        .get(&s.key)
                        .is_some_and(|c| c.vip == s.vip);
                    if same_vip {
                        updates.push(s);
                    } else {
                        whole.insert(s.key.network.clone());
                    }
                }
                Change::RemoveService(k) => {
                    self.raw.services.remove(k);
                    whole.insert(k.network.clone());
                }
            }
        }
        let mut refused = Vec::new();
        let networks =
            plan::admit_networks(&self.raw.networks, &self.admitted.networks, &mut refused);
        for id in self.admitted.networks.keys().chain(networks.keys()) {
            if self.admitted.networks.get(id) != networks.get(id) {
                whole.insert(id.clone());
            }
        }
        self.admitted.networks = networks;
        let mut targets: BTreeMap<String, Option<BTreeSet<Ipv4Addr>>> = BTreeMap::new();
        for s in updates {
            if whole.contains(&s.key.network) {
                continue;
            }
            // The latest version given for this key (a batch may carry several).
            let Some(latest) = self.raw.services.get(&s.key) else {
                continue;
            };
            if plan::admit_update(latest, &mut self.admitted, &mut refused) {
                targets
                    .entry(s.key.network.clone())
                    .or_insert_with(|| Some(BTreeSet::new()))
                    .get_or_insert_with(BTreeSet::new)
                    .insert(s.vip);
            }
        }
        for id in &whole {
            plan::readmit(id, &self.raw, &mut self.admitted, &mut refused);
            targets.insert(id.clone(), None);
        }
        // Only what these changes carried is reported (standing refusals were reported when
        // they came).
        refused.retain(|(s, _)| asked.contains(s));
        refused.dedup();
        let writes = self.reconcile(targets, false)?;
        Ok(Report {
            writes,
            refused: lines(refused),
        })
    }

    /// Services and backends from the views (kept in step with every write); balanced from the
    /// IPVS services' connection counters and refused from the nftables refusal rules' counters,
    /// read from each network's namespace (one netlink dump and one `nft` run per network).
    fn counters(&mut self) -> Result<Counters> {
        let (mut services, mut backends) = (0, 0);
        let mut conns = BTreeMap::new();
        let mut refused = BTreeMap::new();
        for (id, st) in &mut self.nets {
            services += st.view.nft.as_ref().map_or(0, |n| n.marks.len() as u64);
            let ours = |m: &u32| *m >= plan::MARK_BASE;
            backends += st
                .view
                .services
                .iter()
                .filter(|(m, _)| ours(m))
                .map(|(_, s)| s.dests.len() as u64)
                .sum::<u64>();
            let known: BTreeSet<u32> = st.view.services.keys().copied().collect();
            for (mark, n) in st.kernel.conns(&known)? {
                if ours(&mark) {
                    conns.insert((id.clone(), mark), n);
                }
            }
            if let Some(n) = nft::read_refused(st.kernel.ns())? {
                refused.insert(id.clone(), n);
            }
        }
        let t = &mut self.totals;
        Ok(Counters {
            services,
            backends,
            balanced: fold(&mut t.conns, conns, &mut t.retired_conns),
            refused: fold(&mut t.refused, refused, &mut t.retired_refused),
        })
    }

    fn remove_all(&mut self) -> Result<Report> {
        let mut writes = 0;
        let mut first_err = None;
        for (_, mut st) in std::mem::take(&mut self.nets) {
            match clear(&mut st, true) {
                Ok(n) => writes += n,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        self.raw = Desired::default();
        self.admitted = Admitted::default();
        match first_err {
            None => Ok(Report {
                writes,
                refused: Vec::new(),
            }),
            Some(e) => Err(e),
        }
    }
}
