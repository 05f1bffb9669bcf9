//! Pure decisions of the eBPF balancer: which services are accepted (the rest are refused, with
//! a reason), and the ordered map writes that take one VIP from what the kernel holds to what is
//! wanted without ever exposing a half-written service.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ebpf_common::{MAX_BACKENDS, SvcKey, SvcValue};

use crate::{Desired, ServiceKey, ServiceLb};

/// What the service map holds for one VIP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VipState {
    /// Slot 0: (count, rev).
    pub head: Option<(u16, u16)>,
    /// Slots 1.. present in the map (normally exactly 1..=count).
    pub slots: BTreeMap<u16, Ipv4Addr>,
}

/// One write to the service map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Put(SvcKey, SvcValue),
    Del(SvcKey),
}

/// The network byte order form the programs compare with `user_ip4`.
pub(crate) fn be(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

pub(crate) fn from_be(v: u32) -> Ipv4Addr {
    Ipv4Addr::from(v.to_ne_bytes())
}

/// A service's id in the map heads: derived from its key (FNV-1a folded to 16 bits), so a
/// restarted agent computes the same value and finds nothing to change.
pub(crate) fn rev_of(key: &ServiceKey) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key
        .network
        .bytes()
        .chain(std::iter::once(0))
        .chain(key.service.bytes())
    {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h >> 16) ^ (h & 0xffff)) as u16
}

/// What one VIP should be, decided from the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target<'a> {
    /// No service claims it: remove it.
    Absent,
    /// Bad input: leave the kernel as it is for this VIP.
    Refused(Vec<String>),
    Accepted(&'a ServiceLb),
}

/// Decides a VIP from the services claiming it. `held_rev` is the rev the kernel's head has for
/// it: when two services claim one VIP, the one already programmed keeps it, the other is refused.
pub(crate) fn decide<'a>(
    desired: &'a Desired,
    vip: Ipv4Addr,
    claimants: &BTreeSet<ServiceKey>,
    held_rev: Option<u16>,
) -> Target<'a> {
    let svcs: Vec<&ServiceLb> = claimants
        .iter()
        .filter_map(|k| desired.services.get(k))
        .filter(|s| s.vip == vip)
        .collect();
    if svcs.is_empty() {
        return Target::Absent;
    }
    let chosen = if svcs.len() == 1 {
        svcs[0]
    } else {
        match svcs.iter().find(|s| Some(rev_of(&s.key)) == held_rev) {
            Some(owner) => owner,
            None => {
                let names: Vec<String> = svcs
                    .iter()
                    .map(|s| format!("{}/{}", s.key.network, s.key.service))
                    .collect();
                return Target::Refused(vec![format!(
                    "VIP {vip} is claimed by several services ({}): none is programmed",
                    names.join(", ")
                )]);
            }
        }
    };
    match validate(desired, chosen) {
        Ok(()) => Target::Accepted(chosen),
        Err(e) => Target::Refused(vec![e]),
    }
}

/// Refusals of the VIP's other claimants when one of them keeps it (reported, not fatal).
pub(crate) fn collisions(
    desired: &Desired,
    vip: Ipv4Addr,
    claimants: &BTreeSet<ServiceKey>,
    owner: &ServiceKey,
) -> Vec<String> {
    claimants
        .iter()
        .filter(|k| *k != owner && desired.services.get(*k).is_some_and(|s| s.vip == vip))
        .map(|k| {
            format!(
                "service {}/{}: VIP {vip} is already used by {}/{}",
                k.network, k.service, owner.network, owner.service
            )
        })
        .collect()
}

/// Checks one service against its network: known network, VIP and backends inside its subnet.
pub(crate) fn validate(desired: &Desired, s: &ServiceLb) -> Result<(), String> {
    let name = format!("service {}/{}", s.key.network, s.key.service);
    let Some(net) = desired.networks.get(&s.key.network) else {
        return Err(format!(
            "{name}: network {} is not known here",
            s.key.network
        ));
    };
    if !net.subnet.contains(&s.vip) {
        return Err(format!(
            "{name}: VIP {} is outside network {} ({})",
            s.vip, net.id, net.subnet
        ));
    }
    if s.vip == net.addr || s.vip == net.subnet.network() || s.vip == net.subnet.broadcast() {
        return Err(format!(
            "{name}: VIP {} is the network's own or load-balancer address",
            s.vip
        ));
    }
    if let Some(b) = s.backends.iter().find(|b| !net.subnet.contains(*b)) {
        return Err(format!(
            "{name}: backend {b} is outside network {} ({})",
            net.id, net.subnet
        ));
    }
    if s.backends.contains(&s.vip) {
        return Err(format!("{name}: the VIP {} is also a backend", s.vip));
    }
    if s.backends.len() > MAX_BACKENDS {
        return Err(format!(
            "{name}: {} backends, at most {MAX_BACKENDS}",
            s.backends.len()
        ));
    }
    Ok(())
}

/// The writes that take `cur` to `want` backends with head `rev`, in a safe order:
/// 1. slots 1..=m that must change (holes left by departed backends, new slots past the current
///    count) — new slots are invisible until the head says so, replaced ones flip atomically;
/// 2. the head with the new count;
/// 3. deletion of slots past the new count, which no reader can pick any more.
///
/// Kept backends stay in their slots (a departed backend's slot is refilled, from the top on a
/// shrink), so a change of one backend costs one or two writes and moves no other connection.
pub(crate) fn plan(vip: Ipv4Addr, cur: &VipState, rev: u16, want: &BTreeSet<Ipv4Addr>) -> Vec<Op> {
    let v = be(vip);
    let m = want.len() as u16;
    // Backends already in a slot that will stay visible (first occurrence only).
    let mut placed: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut layout: Vec<Option<Ipv4Addr>> = (1..=m)
        .map(|p| {
            cur.slots
                .get(&p)
                .copied()
                .filter(|a| want.contains(a) && placed.insert(*a))
        })
        .collect();
    let mut to_place = want.iter().filter(|a| !placed.contains(*a));
    let mut ops = Vec::new();
    for (i, slot) in layout.iter_mut().enumerate() {
        if slot.is_none() {
            let a = *to_place.next().expect("as many backends as holes");
            *slot = Some(a);
            ops.push(Op::Put(
                SvcKey::new(v, i as u16 + 1),
                SvcValue::backend(be(a)),
            ));
        }
    }
    if cur.head != Some((m, rev)) {
        ops.push(Op::Put(SvcKey::new(v, 0), SvcValue::head(m, rev)));
    }
    for &p in cur.slots.keys().filter(|&&p| p > m) {
        ops.push(Op::Del(SvcKey::new(v, p)));
    }
    ops
}

/// The writes that remove a VIP: the head first (new connections stop being balanced at once),
/// then its slots.
pub(crate) fn plan_remove(vip: Ipv4Addr, cur: &VipState) -> Vec<Op> {
    let v = be(vip);
    let mut ops = Vec::new();
    if cur.head.is_some() {
        ops.push(Op::Del(SvcKey::new(v, 0)));
    }
    ops.extend(cur.slots.keys().map(|&p| Op::Del(SvcKey::new(v, p))));
    ops
}

/// Applies writes to a state as the kernel will hold them afterwards.
pub(crate) fn apply_ops(state: &mut VipState, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Put(k, v) if k.slot == 0 => state.head = Some((v.count, v.rev)),
            Op::Put(k, v) => {
                state.slots.insert(k.slot, from_be(v.addr));
            }
            Op::Del(k) if k.slot == 0 => state.head = None,
            Op::Del(k) => {
                state.slots.remove(&k.slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetworkLb;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn set(v: &[&str]) -> BTreeSet<Ipv4Addr> {
        v.iter().map(|s| ip(s)).collect()
    }

    fn run(cur: &VipState, want: &[&str]) -> (VipState, Vec<Op>) {
        let ops = plan(ip("10.0.0.2"), cur, 7, &set(want));
        let mut next = cur.clone();
        apply_ops(&mut next, &ops);
        (next, ops)
    }

    fn backends(s: &VipState) -> BTreeSet<Ipv4Addr> {
        let (count, _) = s.head.unwrap();
        (1..=count).map(|p| s.slots[&p]).collect()
    }

    #[test]
    fn grow_writes_slots_then_head() {
        let (s, ops) = run(&VipState::default(), &["10.0.0.5", "10.0.0.6"]);
        assert_eq!(ops.len(), 3);
        assert!(matches!(ops[2], Op::Put(k, v) if k.slot == 0 && v.count == 2 && v.rev == 7));
        assert_eq!(backends(&s), set(&["10.0.0.5", "10.0.0.6"]));
        // Unchanged: nothing to write.
        assert!(run(&s, &["10.0.0.5", "10.0.0.6"]).1.is_empty());
        // One more backend: one slot, one head.
        let (s2, ops) = run(&s, &["10.0.0.5", "10.0.0.6", "10.0.0.7"]);
        assert_eq!(ops.len(), 2);
        assert_eq!(s2.slots[&1], s.slots[&1]);
        assert_eq!(s2.slots[&2], s.slots[&2]);
    }

    #[test]
    fn shrink_fills_holes_then_head_then_deletes() {
        let (s, _) = run(&VipState::default(), &["10.0.0.5", "10.0.0.6", "10.0.0.7"]);
        let (s2, ops) = run(&s, &["10.0.0.7"]);
        // 10.0.0.7 was in slot 3: copied to slot 1, head count 1, slots 2 and 3 deleted.
        assert_eq!(
            ops.iter()
                .map(|o| matches!(o, Op::Del(_)))
                .collect::<Vec<_>>(),
            [false, false, true, true]
        );
        assert!(matches!(ops[1], Op::Put(k, v) if k.slot == 0 && v.count == 1));
        assert_eq!(backends(&s2), set(&["10.0.0.7"]));
        assert_eq!(s2.slots.len(), 1);
        // To zero: head count 0 then deletion.
        let (s3, ops) = run(&s2, &[]);
        assert_eq!(s3.head, Some((0, 7)));
        assert!(s3.slots.is_empty());
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn replace_one_backend_is_one_write() {
        let (s, _) = run(&VipState::default(), &["10.0.0.5", "10.0.0.6", "10.0.0.7"]);
        let (s2, ops) = run(&s, &["10.0.0.5", "10.0.0.8", "10.0.0.7"]);
        assert_eq!(ops.len(), 1);
        assert_eq!(backends(&s2), set(&["10.0.0.5", "10.0.0.7", "10.0.0.8"]));
    }

    #[test]
    fn leftovers_of_a_crash_are_repaired() {
        // A crash mid-update left a slot past the count and a duplicate.
        let mut cur = VipState {
            head: Some((2, 7)),
            ..Default::default()
        };
        cur.slots.insert(1, ip("10.0.0.5"));
        cur.slots.insert(2, ip("10.0.0.5"));
        cur.slots.insert(3, ip("10.0.0.6"));
        let (s, _) = run(&cur, &["10.0.0.5", "10.0.0.6"]);
        assert_eq!(backends(&s), set(&["10.0.0.5", "10.0.0.6"]));
        assert_eq!(s.slots.len(), 2);
    }

    #[test]
    fn remove_deletes_head_first() {
        let (s, _) = run(&VipState::default(), &["10.0.0.5"]);
        let ops = plan_remove(ip("10.0.0.2"), &s);
        assert!(matches!(ops[0], Op::Del(k) if k.slot == 0));
        assert_eq!(ops.len(), 2);
    }

    fn desired() -> Desired {
        let mut d = Desired::default();
        d.networks.insert(
            "n".into(),
            NetworkLb {
                id: "n".into(),
                netns: "/run/netns/x".into(),
                iface: "eth0".into(),
                addr: ip("10.0.0.254"),
                subnet: "10.0.0.0/24".parse().unwrap(),
            },
        );
        d
    }

    fn svc(name: &str, vip: &str, b: &[&str]) -> ServiceLb {
        ServiceLb {
            key: ServiceKey {
                network: "n".into(),
                service: name.into(),
            },
            vip: ip(vip),
            backends: set(b),
        }
    }

    #[test]
    fn bad_input_is_refused() {
        let d = desired();
        assert!(validate(&d, &svc("a", "10.0.0.2", &["10.0.0.5"])).is_ok());
        for bad in [
            svc("a", "10.0.1.2", &["10.0.0.5"]),
            svc("a", "10.0.0.2", &["10.9.0.5"]),
            svc("a", "10.0.0.254", &["10.0.0.5"]),
            svc("a", "10.0.0.2", &["10.0.0.2"]),
        ] {
            assert!(validate(&d, &bad).is_err(), "{bad:?}");
        }
        let mut other = svc("a", "10.0.0.2", &[]);
        other.key.network = "m".into();
        assert!(validate(&d, &other).unwrap_err().contains("not known"));
    }

    #[test]
    fn a_shared_vip_stays_with_its_owner() {
        let mut d = desired();
        let a = svc("a", "10.0.0.2", &["10.0.0.5"]);
        let b = svc("b", "10.0.0.2", &["10.0.0.6"]);
        let claim: BTreeSet<ServiceKey> = [a.key.clone(), b.key.clone()].into();
        d.services.insert(a.key.clone(), a.clone());
        d.services.insert(b.key.clone(), b.clone());
        assert!(matches!(decide(&d, a.vip, &claim, None), Target::Refused(r) if r.len() == 1));
        assert_eq!(
            decide(&d, a.vip, &claim, Some(rev_of(&a.key))),
            Target::Accepted(&a)
        );
        assert_eq!(collisions(&d, a.vip, &claim, &a.key).len(), 1);
    }
}
