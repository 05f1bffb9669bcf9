//! What one load-balancer namespace holds ([`View`]), what it should hold ([`NetPlan`]), and the
//! ordered kernel operations from one to the other ([`diff`]). Pure: no I/O, so the order and
//! the "nothing to do" case are tested on any host.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::msg::{FWD_MASQ, IpvsMsg, Timeouts};
use super::nft::{self, Elems, NftView};
use super::plan::{Admitted, MARK_BASE, mark_for};
use crate::{NetworkLb, ServiceLb};

/// The scheduler of every service (Docker's).
pub(crate) const SCHED: &str = "rr";
/// Every destination's weight.
pub(crate) const WEIGHT: u32 = 1;

/// A destination as read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DestView {
    pub port: u16,
    pub fwd: u32,
    pub weight: u32,
}

/// A fwmark service as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SvcView {
    pub sched: String,
    pub dests: BTreeMap<Ipv4Addr, DestView>,
}

/// What netagent manages in one load-balancer namespace, as the kernel holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// Key (relative to /proc/sys) -> value, for the keys of [`super::kernel::sysctls`] present.
    pub sysctls: BTreeMap<String, String>,
    pub timeouts: Option<Timeouts>,
    pub nft: Option<NftView>,
    /// IPv4 fwmark services by mark.
    pub services: BTreeMap<u32, SvcView>,
    /// The VIP /32 addresses on the network's interface.
    pub addrs: BTreeSet<Ipv4Addr>,
}

/// What one network's load-balancer namespace should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetPlan {
    pub subnet: Ipv4Net,
    pub addr: Ipv4Addr,
    pub sysctls: Vec<(String, &'static str)>,
    pub timeouts: Timeouts,
    /// VIP -> (fwmark, backends).
    pub vips: BTreeMap<Ipv4Addr, (u32, BTreeSet<Ipv4Addr>)>,
}

impl NetPlan {
    /// The plan for every VIP on the network, or only for `only`.
    pub fn new(
        net: &NetworkLb,
        admitted: &Admitted,
        timeouts: Timeouts,
        only: Option<&BTreeSet<Ipv4Addr>>,
    ) -> NetPlan {
        let entry = |s: &ServiceLb| {
            let mark = mark_for(&net.subnet, s.vip)?;
            Some((s.vip, (mark, s.backends.clone())))
        };
        let vips = match only {
            None => admitted.services_on(&net.id).filter_map(entry).collect(),
            Some(only) => only
                .iter()
                .filter_map(|v| admitted.by_vip(&net.id, *v))
                .filter_map(entry)
                .collect(),
        };
        NetPlan {
            subnet: net.subnet,
            addr: net.addr,
            sysctls: super::kernel::sysctls(&net.iface),
            timeouts,
            vips,
        }
    }
}

impl View {
    /// The part of the view that concerns `vips` (their addresses, marks, refusals and IPVS
    /// services), with the namespace-wide settings: diffing it against a plan for the same VIPs
    /// touches nothing else.
    pub fn restrict(&self, subnet: &Ipv4Net, vips: &BTreeSet<Ipv4Addr>) -> View {
        let nft = self.nft.as_ref().map(|n| NftView {
            tag: n.tag.clone(),
            marks: vips
                .iter()
                .filter_map(|v| n.marks.get(v).map(|m| (*v, *m)))
                .collect(),
            refuse: n.refuse.intersection(vips).copied().collect(),
        });
        View {
            sysctls: self.sysctls.clone(),
            timeouts: self.timeouts,
            nft,
            services: vips
                .iter()
                .filter_map(|v| mark_for(subnet, *v))
                .filter_map(|m| self.services.get(&m).map(|s| (m, s.clone())))
                .collect(),
            addrs: self.addrs.intersection(vips).copied().collect(),
        }
    }

    /// Whether the nftables table is the one for this network (else only a whole-table
    /// replacement, from a plan of every VIP, can fix it).
    pub fn table_is_current(&self, subnet: &Ipv4Net, addr: Ipv4Addr) -> bool {
        self.nft
            .as_ref()
            .and_then(|n| n.tag.as_deref())
            .is_some_and(|t| t == nft::tag(subnet, addr))
    }
}

/// One IPVS request and what it does to the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IpvsOp {
    NewService(u32),
    SetService(u32),
    DelService(u32),
    NewDest(u32, Ipv4Addr),
    SetDest(u32, Ipv4Addr),
    /// Mark, address, the port it has.
    DelDest(u32, Ipv4Addr, u16),
}

impl IpvsOp {
    pub fn msg(&self) -> IpvsMsg {
        match *self {
            IpvsOp::NewService(m) => IpvsMsg::new_service(m, SCHED),
            IpvsOp::SetService(m) => IpvsMsg::set_service(m, SCHED),
            IpvsOp::DelService(m) => IpvsMsg::del_service(m),
            IpvsOp::NewDest(m, a) => IpvsMsg::new_dest(m, a, 0, WEIGHT),
            IpvsOp::SetDest(m, a) => IpvsMsg::set_dest(m, a, 0, WEIGHT),
            IpvsOp::DelDest(m, a, p) => IpvsMsg::del_dest(m, a, p),
        }
    }

    /// Errors that mean the kernel already holds what the request wanted.
    pub fn done_already(&self, errno: i32) -> bool {
        match self {
            IpvsOp::NewService(_) | IpvsOp::NewDest(..) => errno == libc::EEXIST,
            IpvsOp::DelService(_) | IpvsOp::DelDest(..) => {
                errno == libc::ESRCH || errno == libc::ENOENT
            }
            IpvsOp::SetService(_) | IpvsOp::SetDest(..) => false,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            IpvsOp::NewService(m) => format!("add IPVS service fwmark {m}"),
            IpvsOp::SetService(m) => format!("set IPVS service fwmark {m}"),
            IpvsOp::DelService(m) => format!("delete IPVS service fwmark {m}"),
            IpvsOp::NewDest(m, a) => format!("add destination {a} to IPVS service fwmark {m}"),
            IpvsOp::SetDest(m, a) => format!("set destination {a} of IPVS service fwmark {m}"),
            IpvsOp::DelDest(m, a, _) => {
                format!("delete destination {a} of IPVS service fwmark {m}")
            }
        }
    }

    fn apply_to(&self, v: &mut View) {
        let dest = DestView {
            port: 0,
            fwd: FWD_MASQ,
            weight: WEIGHT,
        };
        match *self {
            IpvsOp::NewService(m) | IpvsOp::SetService(m) => {
                v.services.entry(m).or_default().sched = SCHED.to_string();
            }
            IpvsOp::DelService(m) => {
                v.services.remove(&m);
            }
            IpvsOp::NewDest(m, a) | IpvsOp::SetDest(m, a) => {
                v.services.entry(m).or_default().dests.insert(a, dest);
            }
            IpvsOp::DelDest(m, a, _) => {
                if let Some(s) = v.services.get_mut(&m) {
                    s.dests.remove(&a);
                }
            }
        }
    }
}

/// One kernel write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Sysctl(String, &'static str),
    Timeouts(Timeouts),
    /// Replaces the nftables table (rules and elements) in one transaction.
    NftTable {
        tag: String,
        script: String,
        marks: BTreeMap<Ipv4Addr, u32>,
        refuse: BTreeSet<Ipv4Addr>,
    },
    NftElems(Elems),
    NftDelete,
    Ipvs(IpvsOp),
    /// Adds (`true`) or removes a VIP /32 address.
    Addr(bool, Ipv4Addr),
}

impl Op {
    /// What the view holds once this operation succeeded.
    pub fn apply_to(&self, v: &mut View) {
        match self {
            Op::Sysctl(k, val) => {
                v.sysctls.insert(k.clone(), val.to_string());
            }
            Op::Timeouts(t) => v.timeouts = Some(*t),
            Op::NftTable {
                tag, marks, refuse, ..
            } => {
                v.nft = Some(NftView {
                    tag: Some(tag.clone()),
                    marks: marks.clone(),
                    refuse: refuse.clone(),
                })
            }
            Op::NftElems(e) => {
                if let Some(n) = v.nft.as_mut() {
                    e.apply_to(n);
                }
            }
            Op::NftDelete => v.nft = None,
            Op::Ipvs(op) => op.apply_to(v),
            Op::Addr(true, a) => {
                v.addrs.insert(*a);
            }
            Op::Addr(false, a) => {
                v.addrs.remove(a);
            }
        }
    }
}

/// The operations that make the namespace hold `plan`, in an order that never exposes a VIP
/// half-made: a VIP's address goes first on removal and last on creation; destinations are added
/// before the mark and refusal changes that expose them, and removed after.
pub(crate) fn diff(v: &View, plan: &NetPlan) -> Vec<Op> {
    let mut ops = Vec::new();
    for (k, want) in &plan.sysctls {
        if v.sysctls.get(k).map(String::as_str) != Some(*want) {
            ops.push(Op::Sysctl(k.clone(), want));
        }
    }
    if v.timeouts != Some(plan.timeouts) {
        ops.push(Op::Timeouts(plan.timeouts));
    }
    for a in &v.addrs {
        if !plan.vips.contains_key(a) {
            ops.push(Op::Addr(false, *a));
        }
    }
    // Services and new destinations.
    let mut stale_dests = Vec::new();
    for (mark, backends) in plan.vips.values() {
        let mark = *mark;
        let have = v.services.get(&mark);
        match have {
            None => ops.push(Op::Ipvs(IpvsOp::NewService(mark))),
            Some(s) if s.sched != SCHED => ops.push(Op::Ipvs(IpvsOp::SetService(mark))),
            Some(_) => {}
        }
        let dests = have.map(|s| &s.dests);
        for b in backends {
            match dests.and_then(|d| d.get(b)) {
                None => ops.push(Op::Ipvs(IpvsOp::NewDest(mark, *b))),
                Some(d) if d.port != 0 => {
                    // A destination with a fixed port would rewrite it: recreate it.
                    ops.push(Op::Ipvs(IpvsOp::DelDest(mark, *b, d.port)));
                    ops.push(Op::Ipvs(IpvsOp::NewDest(mark, *b)));
                }
                Some(d) if d.fwd != FWD_MASQ || d.weight != WEIGHT => {
                    ops.push(Op::Ipvs(IpvsOp::SetDest(mark, *b)))
                }
                Some(_) => {}
            }
        }
        for (a, d) in dests.into_iter().flatten() {
            if !backends.contains(a) {
                stale_dests.push(Op::Ipvs(IpvsOp::DelDest(mark, *a, d.port)));
            }
        }
    }
    // nftables: marks for every VIP, refusal for the VIPs without backends.
    let marks: BTreeMap<Ipv4Addr, u32> = plan.vips.iter().map(|(a, (m, _))| (*a, *m)).collect();
    let refuse: BTreeSet<Ipv4Addr> = plan
        .vips
        .iter()
        .filter(|(_, (_, b))| b.is_empty())
        .map(|(a, _)| *a)
        .collect();
    let tag = nft::tag(&plan.subnet, plan.addr);
    match &v.nft {
        Some(n) if n.tag.as_deref() == Some(tag.as_str()) => {
            let e = Elems {
                del_marks: n
                    .marks
                    .iter()
                    .filter(|(a, m)| marks.get(a) != Some(m))
                    .map(|(a, _)| *a)
                    .collect(),
                add_marks: marks
                    .iter()
                    .filter(|(a, m)| n.marks.get(a) != Some(m))
                    .map(|(a, m)| (*a, *m))
                    .collect(),
                del_refuse: n.refuse.difference(&refuse).copied().collect(),
                add_refuse: refuse.difference(&n.refuse).copied().collect(),
            };
            if !e.is_empty() {
                ops.push(Op::NftElems(e));
            }
        }
        _ => ops.push(Op::NftTable {
            script: nft::table_script(&plan.subnet, plan.addr, &marks, &refuse),
            tag,
            marks,
            refuse,
        }),
    }
    ops.extend(stale_dests);
    let wanted: BTreeSet<u32> = plan.vips.values().map(|(m, _)| *m).collect();
    for mark in v.services.keys() {
        if *mark >= MARK_BASE && !wanted.contains(mark) {
            ops.push(Op::Ipvs(IpvsOp::DelService(*mark)));
        }
    }
    for a in plan.vips.keys() {
        if !v.addrs.contains(a) {
            ops.push(Op::Addr(true, *a));
        }
    }
    ops
}

/// The operations that remove everything netagent made in the namespace (its sysctls and
/// timeouts stay: they belong to the namespace, which goes with its network).
pub(crate) fn removal(v: &View) -> Vec<Op> {
    let mut ops: Vec<Op> = v.addrs.iter().map(|a| Op::Addr(false, *a)).collect();
    if v.nft.is_some() {
        ops.push(Op::NftDelete);
    }
    ops.extend(
        v.services
            .keys()
            .filter(|m| **m >= MARK_BASE)
            .map(|m| Op::Ipvs(IpvsOp::DelService(*m))),
    );
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(d: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, d)
    }

    fn plan(vips: &[(u8, &[u8])]) -> NetPlan {
        let subnet: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        NetPlan {
            subnet,
            addr: ip(2),
            sysctls: vec![("net/ipv4/vs/conntrack".into(), "1")],
            timeouts: (86400, 120, 300),
            vips: vips
                .iter()
                .map(|(v, bs)| {
                    (
                        ip(*v),
                        (
                            mark_for(&subnet, ip(*v)).unwrap(),
                            bs.iter().map(|b| ip(*b)).collect(),
                        ),
                    )
                })
                .collect(),
        }
    }

    /// The view after applying `ops` to `v`.
    fn after(mut v: View, ops: &[Op]) -> View {
        for op in ops {
            op.apply_to(&mut v);
        }
        v
    }

    #[test]
    fn from_empty_then_nothing_more_to_do() {
        let p = plan(&[(10, &[11, 12, 13]), (20, &[])]);
        let ops = diff(&View::default(), &p);
        // The VIP addresses come last, the new destinations before the nftables table.
        let first_addr = ops
            .iter()
            .position(|o| matches!(o, Op::Addr(true, _)))
            .unwrap();
        let table = ops
            .iter()
            .position(|o| matches!(o, Op::NftTable { .. }))
            .unwrap();
        let last_dest = ops
            .iter()
            .rposition(|o| matches!(o, Op::Ipvs(IpvsOp::NewDest(..))))
            .unwrap();
        assert!(last_dest < table && table < first_addr, "{ops:#?}");
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, Op::Addr(true, _)))
                .count(),
            2
        );
        let Some(Op::NftTable { refuse, marks, .. }) = ops.get(table) else {
            unreachable!()
        };
        assert_eq!(refuse, &BTreeSet::from([ip(20)]));
        assert_eq!(marks[&ip(10)], 256 + 10);
        let v = after(View::default(), &ops);
        assert_eq!(
            diff(&v, &p),
            Vec::<Op>::new(),
            "a second pass writes nothing"
        );
    }

    #[test]
    fn shrinking_to_zero_refuses_before_removing_destinations() {
        let before = plan(&[(10, &[11, 12])]);
        let v = after(View::default(), &diff(&View::default(), &before));
        let ops = diff(&v, &plan(&[(10, &[])]));
        assert_eq!(ops.len(), 3, "{ops:#?}");
        let Op::NftElems(e) = &ops[0] else {
            panic!("{ops:#?}")
        };
        assert_eq!(e.add_refuse, BTreeSet::from([ip(10)]));
        assert!(matches!(ops[1], Op::Ipvs(IpvsOp::DelDest(266, _, 0))));
        // Growing again: destinations first, then the refusal is lifted.
        let v = after(v, &ops);
        let ops = diff(&v, &plan(&[(10, &[13])]));
        assert!(
            matches!(ops[0], Op::Ipvs(IpvsOp::NewDest(266, _))),
            "{ops:#?}"
        );
        assert!(matches!(&ops[1], Op::NftElems(e) if e.del_refuse.contains(&ip(10))));
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn a_removed_vip_loses_its_address_first_and_its_service_last() {
        let p = plan(&[(10, &[11]), (20, &[12])]);
        let v = after(View::default(), &diff(&View::default(), &p));
        let ops = diff(&v, &plan(&[(10, &[11])]));
        assert_eq!(ops.first(), Some(&Op::Addr(false, ip(20))));
        assert!(matches!(&ops[1], Op::NftElems(e) if e.del_marks.contains(&ip(20))));
        assert_eq!(ops.last(), Some(&Op::Ipvs(IpvsOp::DelService(276))));
        assert_eq!(ops.len(), 3);
    }

    #[test]
    fn a_restricted_diff_touches_only_its_vips() {
        let p = plan(&[(10, &[11]), (20, &[12]), (30, &[])]);
        let v = after(View::default(), &diff(&View::default(), &p));
        // VIP 20 loses its backend, VIP 40 is new; 10 and 30 are not looked at.
        let only = BTreeSet::from([ip(20), ip(40)]);
        let mut next = plan(&[(10, &[]), (20, &[]), (30, &[13]), (40, &[14])]);
        next.vips.retain(|a, _| only.contains(a));
        let part = v.restrict(&p.subnet, &only);
        assert_eq!(part.addrs, BTreeSet::from([ip(20)]));
        assert_eq!(part.services.keys().collect::<Vec<_>>(), [&276]);
        let ops = diff(&part, &next);
        assert!(
            ops.iter().all(|o| match o {
                Op::Ipvs(IpvsOp::NewService(m)) => *m == 296,
                Op::Ipvs(IpvsOp::NewDest(m, _) | IpvsOp::DelDest(m, _, _)) =>
                    *m == 276 || *m == 296,
                Op::Addr(true, a) => *a == ip(40),
                Op::NftElems(e) =>
                    e.add_refuse == BTreeSet::from([ip(20)]) && e.del_marks.is_empty(),
                _ => false,
            }),
            "{ops:#?}"
        );
        let v = after(v, &ops);
        assert_eq!(v.services[&266].dests.len(), 1, "VIP 10 untouched");
        assert!(
            v.nft.as_ref().unwrap().refuse.contains(&ip(30)),
            "VIP 30 untouched"
        );
        assert!(v.table_is_current(&p.subnet, p.addr));
    }

    #[test]
    fn foreign_or_drifted_state_is_repaired() {
        let p = plan(&[(10, &[11])]);
        let mut v = after(View::default(), &diff(&View::default(), &p));
        // A destination with a port, a service with another scheduler, a mark below ours.
        let svc = v.services.get_mut(&266).unwrap();
        svc.sched = "wrr".into();
        svc.dests.get_mut(&ip(11)).unwrap().port = 80;
        v.services.insert(7, SvcView::default());
        v.nft.as_mut().unwrap().tag = Some("old".into());
        let ops = diff(&v, &p);
        assert_eq!(ops[0], Op::Ipvs(IpvsOp::SetService(266)));
        assert_eq!(ops[1], Op::Ipvs(IpvsOp::DelDest(266, ip(11), 80)));
        assert_eq!(ops[2], Op::Ipvs(IpvsOp::NewDest(266, ip(11))));
        assert!(matches!(ops[3], Op::NftTable { .. }));
        assert_eq!(ops.len(), 4, "mark 7 is not netagent's: {ops:#?}");
        let v = after(v, &ops);
        assert!(diff(&v, &p).is_empty());
        let gone = removal(&v);
        assert_eq!(gone.len(), 3, "{gone:#?}");
        let empty = after(v, &gone);
        assert!(empty.addrs.is_empty() && empty.nft.is_none());
        assert_eq!(empty.services.keys().collect::<Vec<_>>(), [&7]);
    }
}
