//! The eBPF socket load balancer: the programs of crate `ebpf` attached once to the node's task
//! cgroup, the service map they read written here in an order that never shows a half-written
//! service, and each VIP kept as a local /32 in its network's load-balancer namespace (a `local`
//! route on its interface, see `vip_addrs`) so that `ping VIP` answers.
//!
//! Maps and links are pinned under `Config.pin_dir`: a restarted agent reads the pinned service
//! map back as its view of the kernel, so the same desired state writes nothing.

mod attach;
mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use self::attach::{CntMap, SvcMap};
use self::plan::{Op, Target, VipState, from_be, rev_of};
use crate::vip_addrs::VipAddrs;
use crate::{
    Change, Config, Counters, Desired, Error, Kind, LoadBalancer, NetworkLb, Report, Result,
    ServiceKey,
};
use ebpf_common::Counter;

/// One network's load-balancer namespace interface and the VIP addresses it holds.
struct Net {
    lb: NetworkLb,
    addrs: VipAddrs,
    /// VIP routes (netagent's local /32 routes) on the interface.
    held: BTreeSet<Ipv4Addr>,
}

/// Address changes collected during one call, sent per network at its end.
#[derive(Default)]
struct AddrPlan {
    add: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    del: BTreeMap<String, BTreeSet<Ipv4Addr>>,
}

/// What the service map holds for one VIP (see [`EbpfLb::dump`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipEntry {
    /// Whether slot 0 exists (a VIP being removed or written may briefly lack it).
    pub head: bool,
    /// Backends connections pick from (slots 1..=count); 0: connections are refused.
    pub count: u16,
    /// The owning service's id.
    pub rev: u16,
    /// Backend addresses in slot order (slots 1..).
    pub slots: Vec<Ipv4Addr>,
}

/// Puts `vip` in, or takes it out of, the pending set of network `id`.
fn pending(sets: &mut BTreeMap<String, BTreeSet<Ipv4Addr>>, id: &str, vip: Ipv4Addr, member: bool) {
    if member {
        sets.entry(id.to_string()).or_default().insert(vip);
    } else if let Some(set) = sets.get_mut(id) {
        set.remove(&vip);
    }
}

pub struct EbpfLb {
    pin_dir: PathBuf,
    svc: SvcMap,
    /// The programs' per-CPU counters (pinned: they outlive an agent restart).
    cnt: CntMap,
    /// What the service map holds, per VIP (read back from the pinned map at open).
    view: BTreeMap<Ipv4Addr, VipState>,
    desired: Desired,
    /// Which services claim each VIP in `desired`.
    claims: BTreeMap<Ipv4Addr, BTreeSet<ServiceKey>>,
    nets: BTreeMap<String, Net>,
    removed: bool,
}

/// Whether this kernel can run the eBPF balancer for `config`.
pub fn supported(config: &Config) -> Result<()> {
    attach::check_cgroup(config.cgroup.as_deref())?;
    attach::probe()
}

impl EbpfLb {
    /// Loads the programs and attaches them to `config.cgroup` (adopting pinned maps and links
    /// under `config.pin_dir`), and reads the service map back.
    pub fn open(config: &Config) -> Result<EbpfLb> {
        let cgroup = attach::check_cgroup(config.cgroup.as_deref())?;
        attach::check_pin_dir(&config.pin_dir)?;
        let loaded = attach::load(&config.pin_dir, &cgroup)?;
        let mut lb = EbpfLb {
            pin_dir: config.pin_dir.clone(),
            svc: loaded.svc,
            cnt: loaded.cnt,
            view: BTreeMap::new(),
            desired: Desired::default(),
            claims: BTreeMap::new(),
            nets: BTreeMap::new(),
            removed: false,
        };
        lb.read_view()?;
        tracing::info!(
            cgroup = %cgroup.display(),
            pins = %config.pin_dir.display(),
            attached = loaded.attached,
            vips = lb.view.len(),
            "eBPF load balancer ready"
        );
        Ok(lb)
    }

    fn read_view(&mut self) -> Result<()> {
        self.view.clear();
        for kv in self.svc.iter() {
            let (k, v) = kv.map_err(|e| {
                Error::Other(format!("read the service map: {}", attach::chain(&e)))
            })?;
            let st = self.view.entry(from_be(k.vip)).or_default();
            if k.slot == 0 {
                st.head = Some((v.count, v.rev));
            } else {
                st.slots.insert(k.slot, from_be(v.addr));
            }
        }
        Ok(())
    }

    /// The service map as the kernel holds it, per VIP. Read from the kernel, not from this
    /// balancer's view.
    pub fn dump(&self) -> Result<BTreeMap<Ipv4Addr, VipEntry>> {
        let mut heads = BTreeMap::new();
        let mut slots: BTreeMap<Ipv4Addr, BTreeMap<u16, Ipv4Addr>> = BTreeMap::new();
        for kv in self.svc.iter() {
            let (k, v) = kv.map_err(|e| {
                Error::Other(format!("read the service map: {}", attach::chain(&e)))
            })?;
            if k.slot == 0 {
                heads.insert(from_be(k.vip), (v.count, v.rev));
            } else {
                slots
                    .entry(from_be(k.vip))
                    .or_default()
                    .insert(k.slot, from_be(v.addr));
            }
        }
        let mut out = BTreeMap::new();
        for (vip, (count, rev)) in heads {
            let s = slots.remove(&vip).unwrap_or_default();
            out.insert(
                vip,
                VipEntry {
                    head: true,
                    count,
                    rev,
                    slots: s.into_values().collect(),
                },
            );
        }
        for (vip, s) in slots {
            // Slots without a head: only while a write is under way.
            out.insert(
                vip,
                VipEntry {
                    head: false,
                    count: 0,
                    rev: 0,
                    slots: s.into_values().collect(),
                },
            );
        }
        Ok(out)
    }

    /// One of the programs' counters, summed over the CPUs.
    fn counter(&self, c: Counter) -> Result<u64> {
        let per_cpu = self.cnt.get(&c.index(), 0).map_err(|e| {
            Error::Other(format!(
                "read the load balancer's {c:?} counter: {}",
                attach::chain(&e)
            ))
        })?;
        Ok(per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
    }

    /// The pin directory (maps and links).
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pin_dir
    }

    fn check_usable(&self) -> Result<()> {
        if self.removed {
            return Err(Error::Other(
                "this eBPF load balancer was removed (remove_all); open a new one".into(),
            ));
        }
        Ok(())
    }

    fn write(&mut self, vip: Ipv4Addr, ops: &[Op], report: &mut Report) -> Result<()> {
        for op in ops {
            match op {
                Op::Put(k, v) => self.svc.insert(k, v, 0).map_err(|e| {
                    Error::Other(format!(
                        "write VIP {vip} slot {} to the service map: {}",
                        k.slot,
                        attach::chain(&e)
                    ))
                })?,
                Op::Del(k) => match self.svc.remove(k) {
                    Ok(()) => {}
                    // Already gone: the wanted state holds.
                    Err(aya::maps::MapError::SyscallError(e))
                        if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => {
                        return Err(Error::Other(format!(
                            "delete VIP {vip} slot {} from the service map: {}",
                            k.slot,
                            attach::chain(&e)
                        )));
                    }
                },
            }
            report.writes += 1;
            // Keep the view exactly what the kernel holds, also when a later write fails.
            let st = self.view.entry(vip).or_default();
            plan::apply_ops(st, std::slice::from_ref(op));
        }
        if self
            .view
            .get(&vip)
            .is_some_and(|s| s.head.is_none() && s.slots.is_empty())
        {
            self.view.remove(&vip);
        }
        Ok(())
    }

    /// Makes the kernel's service map and addresses match `self.desired` for one VIP.
    fn reconcile_vip(
        &mut self,
        vip: Ipv4Addr,
        report: &mut Report,
        addrs: &mut AddrPlan,
    ) -> Result<()> {
        let empty = BTreeSet::new();
        let claimants = self.claims.get(&vip).unwrap_or(&empty);
        let cur = self.view.get(&vip).cloned().unwrap_or_default();
        let held_rev = cur.head.map(|(_, rev)| rev);
        let (ops, home) = match plan::decide(&self.desired, vip, claimants, held_rev) {
            Target::Refused(reasons) => {
                for r in reasons {
                    tracing::warn!("load balancer: refused: {r}");
                    report.refused.push(r);
                }
                return Ok(());
            }
            Target::Absent => (plan::plan_remove(vip, &cur), None),
            Target::Accepted(s) => {
                for r in plan::collisions(&self.desired, vip, claimants, &s.key) {
                    tracing::warn!("load balancer: refused: {r}");
                    report.refused.push(r);
                }
                (
                    plan::plan(vip, &cur, rev_of(&s.key), &s.backends),
                    Some(s.key.network.clone()),
                )
            }
        };
        self.write(vip, &ops, report)?;
        // The VIP as an address: on its network's interface, nowhere else. A later decision
        // for the same VIP in this call replaces an earlier one still pending.
        for (id, net) in &self.nets {
            let here = home.as_deref() == Some(id.as_str());
            let held = net.held.contains(&vip);
            pending(&mut addrs.add, id, vip, here && !held);
            pending(&mut addrs.del, id, vip, !here && held);
        }
        Ok(())
    }

    /// Sends the pending route changes, network by network; a network that fails is reported in
    /// `errors` and does not stop the others.
    fn flush_addrs(&mut self, plan: AddrPlan, report: &mut Report, errors: &mut Vec<String>) {
        for (id, vips) in plan.del {
            if let Some(net) = self.nets.get_mut(&id) {
                let v: Vec<Ipv4Addr> = vips.into_iter().collect();
                match net.addrs.remove(&v) {
                    Ok(n) => {
                        report.writes += n;
                        for a in v {
                            net.held.remove(&a);
                        }
                    }
                    Err(e) => errors.push(format!("network {id}: {e}")),
                }
            }
        }
        for (id, vips) in plan.add {
            if let Some(net) = self.nets.get_mut(&id) {
                let v: Vec<Ipv4Addr> = vips.into_iter().collect();
                match net.addrs.add(&v) {
                    Ok(n) => {
                        report.writes += n;
                        net.held.extend(v);
                    }
                    Err(e) => {
                        // Some may have been added: read back what the interface holds.
                        if let Ok(held) = net.addrs.list() {
                            net.held = held.into_iter().filter(|a| *a != net.lb.addr).collect();
                        }
                        errors.push(format!("network {id}: {e}"));
                    }
                }
            }
        }
    }

    /// Fails with the networks whose VIP routes could not be kept, after everything else was
    /// done (the service maps are programmed; a later sync retries the routes).
    fn finish(report: Report, errors: Vec<String>) -> Result<Report> {
        if errors.is_empty() {
            return Ok(report);
        }
        Err(Error::Other(format!(
            "{} (the service maps are programmed; {} writes done; the VIP routes of these networks \
             are retried by the next sync)",
            errors.join("; "),
            report.writes
        )))
    }

    /// Opens (or re-opens, when its namespace or interface changed) a network and reads the VIP
    /// addresses its interface holds.
    fn put_network(&mut self, lb: &NetworkLb) -> Result<()> {
        if self.nets.get(&lb.id).is_some_and(|n| n.lb == *lb) {
            return Ok(());
        }
        let mut addrs = VipAddrs::open(&lb.netns, &lb.iface)?;
        let held = addrs
            .list()?
            .into_iter()
            .filter(|a| *a != lb.addr)
            .collect();
        self.nets.insert(
            lb.id.clone(),
            Net {
                lb: lb.clone(),
                addrs,
                held,
            },
        );
        Ok(())
    }

    /// Removes a network's VIP addresses (best effort: its namespace may be gone already).
    fn drop_network(&mut self, id: &str, report: &mut Report) {
        if let Some(mut net) = self.nets.remove(id) {
            let v: Vec<Ipv4Addr> = net.held.iter().copied().collect();
            match net.addrs.remove(&v) {
                Ok(n) => report.writes += n,
                Err(e) => tracing::debug!(network = id, "VIP addresses not removed: {e}"),
            }
        }
    }

    fn claim(&mut self, key: &ServiceKey, vip: Ipv4Addr) {
        self.claims.entry(vip).or_default().insert(key.clone());
    }

    fn unclaim(&mut self, key: &ServiceKey, vip: Ipv4Addr) {
        if let Some(c) = self.claims.get_mut(&vip) {
            c.remove(key);
            if c.is_empty() {
                self.claims.remove(&vip);
            }
        }
    }

    /// Applies one change to `self.desired` and returns the VIPs it touches.
    fn change_desired(
        &mut self,
        change: &Change,
        report: &mut Report,
        errors: &mut Vec<String>,
    ) -> Vec<Ipv4Addr> {
        match change {
            Change::PutNetwork(n) => {
                let old = self.desired.networks.insert(n.id.clone(), n.clone());
                if old.as_ref() == Some(n) && self.nets.contains_key(&n.id) {
                    return Vec::new();
                }
                if let Some(old) = old
                    && (old.netns != n.netns || old.iface != n.iface)
                {
                    self.drop_network(&n.id, report);
                }
                if let Err(e) = self.put_network(n) {
                    errors.push(format!("network {}: {e}", n.id));
                }
                self.vips_on(&n.id)
            }
            Change::RemoveNetwork(id) => {
                self.desired.networks.remove(id);
                let keys: Vec<ServiceKey> = self
                    .desired
                    .services
                    .keys()
                    .filter(|k| k.network == *id)
                    .cloned()
                    .collect();
                let mut vips = Vec::new();
                for k in keys {
                    if let Some(s) = self.desired.services.remove(&k) {
                        self.unclaim(&k, s.vip);
                        vips.push(s.vip);
                    }
                }
                self.drop_network(id, report);
                vips
            }
            Change::PutService(s) => {
                let old = self.desired.services.insert(s.key.clone(), s.clone());
                let mut vips = vec![s.vip];
                if let Some(old) = old {
                    if old == *s {
                        return Vec::new();
                    }
                    if old.vip != s.vip {
                        self.unclaim(&s.key, old.vip);
                        vips.push(old.vip);
                    }
                }
                self.claim(&s.key, s.vip);
                vips
            }
            Change::RemoveService(k) => match self.desired.services.remove(k) {
                Some(old) => {
                    self.unclaim(k, old.vip);
                    vec![old.vip]
                }
                None => Vec::new(),
            },
        }
    }

    fn vips_on(&self, network: &str) -> Vec<Ipv4Addr> {
        self.desired
            .services
            .values()
            .filter(|s| s.key.network == network)
            .map(|s| s.vip)
            .collect()
    }
}

impl LoadBalancer for EbpfLb {
    fn kind(&self) -> Kind {
        Kind::Ebpf
    }

    fn sync(&mut self, desired: &Desired) -> Result<Report> {
        self.check_usable()?;
        let mut report = Report::default();
        let mut errors = Vec::new();
        // Networks first: their interfaces hold the VIP addresses.
        let gone: Vec<String> = self
            .nets
            .keys()
            .filter(|id| !desired.networks.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.drop_network(&id, &mut report);
        }
        for n in desired.networks.values() {
            if let Some(old) = self.nets.get(&n.id)
                && (old.lb.netns != n.netns || old.lb.iface != n.iface)
            {
                self.drop_network(&n.id, &mut report);
            }
            if let Err(e) = self.put_network(n) {
                errors.push(format!("network {}: {e}", n.id));
            }
        }
        self.desired = desired.clone();
        self.claims.clear();
        for s in desired.services.values() {
            self.claims.entry(s.vip).or_default().insert(s.key.clone());
        }
        let mut vips: BTreeSet<Ipv4Addr> = self.claims.keys().copied().collect();
        vips.extend(self.view.keys().copied());
        for net in self.nets.values() {
            vips.extend(net.held.iter().copied());
        }
        let mut addrs = AddrPlan::default();
        for vip in vips {
            self.reconcile_vip(vip, &mut report, &mut addrs)?;
        }
        self.flush_addrs(addrs, &mut report, &mut errors);
        Self::finish(report, errors)
    }

    fn apply(&mut self, changes: &[Change]) -> Result<Report> {
        self.check_usable()?;
        let mut report = Report::default();
        let mut errors = Vec::new();
        let mut addrs = AddrPlan::default();
        for change in changes {
            let vips = self.change_desired(change, &mut report, &mut errors);
            for vip in vips {
                self.reconcile_vip(vip, &mut report, &mut addrs)?;
            }
        }
        self.flush_addrs(addrs, &mut report, &mut errors);
        Self::finish(report, errors)
    }

    /// Services and backends from the view (what the service map holds, kept in step with every
    /// write); balanced and refused from the programs' counters: one map read per counter.
    fn counters(&mut self) -> Result<Counters> {
        self.check_usable()?;
        let (mut services, mut backends) = (0, 0);
        for st in self.view.values() {
            if let Some((count, _)) = st.head {
                services += 1;
                backends += u64::from(count);
            }
        }
        Ok(Counters {
            services,
            backends,
            balanced: self.counter(Counter::Balanced)?,
            refused: self.counter(Counter::Refused)?,
        })
    }

    fn remove_all(&mut self) -> Result<Report> {
        let mut report = Report::default();
        if self.removed {
            return Ok(report);
        }
        let ids: Vec<String> = self.nets.keys().cloned().collect();
        for id in ids {
            self.drop_network(&id, &mut report);
        }
        report.writes += attach::remove_pins(&self.pin_dir)?;
        // The maps die with the last reference (ours): nothing else to write.
        self.view.clear();
        self.desired = Desired::default();
        self.claims.clear();
        self.removed = true;
        let _ = std::fs::remove_dir(&self.pin_dir);
        Ok(report)
    }
}
