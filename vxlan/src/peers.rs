//! The peers of a sandbox: a neighbour entry (IP -> MAC) and an FDB entry (MAC -> VTEP) on
//! `vxlan0` per remote endpoint, given whole ([`Dataplane::set_peers`]) or by address
//! ([`Dataplane::update_peers`]).
//!
//! A full apply reads both tables back from the kernel and writes the difference (a new
//! process, a reconcile, a repair). What it leaves is remembered ([`Programmed`]), so that the
//! next change of the peer set is written by difference against that memory, without dumping
//! tables that hold every endpoint of the network: the cost of a change is the change, not the
//! network's size (issue 18). A failed write forgets the memory; the next apply reads again.

use super::*;

impl Dataplane {
    /// Sets the full set of remote endpoints of a network and programs only the difference
    /// (neighbour IP -> MAC and FDB MAC -> VTEP on `vxlan0`). Peers on this node's own VTEP
    /// are skipped. Without a sandbox on this node the set is kept for when one is made.
    pub fn set_peers(&mut self, network_id: &str, peers: &[Peer]) -> Result<PeerChanges> {
        let changes = self.set_peers_inner(network_id, peers)?;
        self.ipsec_after_peers(network_id)?;
        Ok(changes)
    }

    /// Changes the remote endpoints of some addresses: `Some(peer)` is the endpoint at that
    /// address now, `None` that there is none. Only those addresses and their MACs are written
    /// and looked at, so one gossip change costs the same in a network of 10 or 2,000
    /// endpoints. Before [`Dataplane::set_peers`] gave a whole set, the changes are that set.
    pub fn update_peers(
        &mut self,
        network_id: &str,
        changes: &[(Ipv4Addr, Option<Peer>)],
    ) -> Result<PeerChanges> {
        let changed = self.update_peers_inner(network_id, changes)?;
        self.ipsec_after_peers(network_id)?;
        Ok(changed)
    }

    /// An encrypted network's peers changed: its IPsec states and policies follow them.
    fn ipsec_after_peers(&mut self, network_id: &str) -> Result<()> {
        if self.nets.get(network_id).is_some_and(|n| n.spec.encrypted) {
            self.sync_ipsec(false)?;
        }
        Ok(())
    }

    fn update_peers_inner(
        &mut self,
        network_id: &str,
        changes: &[(Ipv4Addr, Option<Peer>)],
    ) -> Result<PeerChanges> {
        let vtep = self.ctx.vtep;
        let net = known_net(&mut self.nets, network_id, "update_peers")?;
        let Some(peers) = net.peers.as_mut() else {
            let whole: Vec<Peer> = changes.iter().filter_map(|(_, p)| *p).collect();
            return self.set_peers_inner(network_id, &whole);
        };
        let mut ips = BTreeSet::new();
        for (ip, p) in changes {
            // Peers on this node's own VTEP are local, as in a whole set.
            match p.filter(|p| p.vtep != vtep && p.ip == *ip) {
                Some(p) => peers.insert(*ip, p),
                None => peers.remove(ip),
            };
            ips.insert(*ip);
        }
        self.write_peers(network_id, Some(&ips))
    }

    fn set_peers_inner(&mut self, network_id: &str, peers: &[Peer]) -> Result<PeerChanges> {
        let net = known_net(&mut self.nets, network_id, "set_peers")?;
        net.peers = Some(peer_map(&self.ctx, peers));
        self.write_peers(network_id, None)
    }

    /// Programs the network's peers as now known: those at `at` (and their MACs), or all.
    fn write_peers(
        &mut self,
        network_id: &str,
        at: Option<&BTreeSet<Ipv4Addr>>,
    ) -> Result<PeerChanges> {
        let name = self.ctx.sandbox_name(network_id);
        let Some(net) = self.nets.get_mut(network_id) else {
            return Ok(PeerChanges::default());
        };
        let exists = netns::exists(&name);
        if net.sbox.is_none() && !exists {
            return Ok(PeerChanges::default());
        }
        if let Some(sbox) = net.sbox.as_mut()
            && exists
        {
            let vx = kernel::link_by_name(&mut sbox.nl, VXLAN)?;
            if let Some(vx) = vx.filter(|l| l.is("vxlan")) {
                let peers = net.peers.as_ref().expect("set by the caller");
                let changes = match at {
                    Some(ips) => {
                        let (changes, macs) = peers::apply_updates(sbox, vx.index, peers, ips)?;
                        sync_fast_path_peers(&self.ctx, net, vx.index, Some(&macs))?;
                        changes
                    }
                    None => {
                        let changes = apply_peers(sbox, vx.index, peers)?;
                        sync_fast_path_peers(&self.ctx, net, vx.index, None)?;
                        changes
                    }
                };
                return Ok(changes);
            }
        }
        // The sandbox is not open yet or lost its device: a full reconcile repairs it.
        Ok(self.open_sandbox(network_id, false, true)?.1)
    }
}

/// The neighbour and FDB entries this process left on a sandbox's `vxlan0` (index `vx`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Programmed {
    vx: u32,
    neigh: BTreeMap<Ipv4Addr, Mac>,
    fdb: BTreeMap<Mac, Ipv4Addr>,
}

impl Programmed {
    /// What the kernel holds once `peers` are applied on `vx`: one FDB entry per MAC (should
    /// two peers claim a MAC, the one with the lower IP wins).
    fn of(vx: u32, peers: &BTreeMap<Ipv4Addr, Peer>) -> Programmed {
        let mut fdb = BTreeMap::new();
        for p in peers.values() {
            fdb.entry(p.mac).or_insert(p.vtep);
        }
        Programmed {
            vx,
            neigh: peers.values().map(|p| (p.ip, p.mac)).collect(),
            fdb,
        }
    }
}

/// Makes the neighbour and FDB entries on `vxlan0` exactly the peers: by difference with what
/// this process last programmed there when it knows it, else from the kernel's tables.
pub(crate) fn apply_peers(
    sbox: &mut Sbox,
    vx: u32,
    peers: &BTreeMap<Ipv4Addr, Peer>,
) -> Result<PeerChanges> {
    let known = sbox.peers.take().filter(|p| p.vx == vx);
    let want = Programmed::of(vx, peers);
    let result = match known {
        Some(have) => apply_delta(sbox, &have, &want, peers),
        None => apply_full(sbox, &want, peers),
    };
    if result.is_ok() {
        sbox.peers = Some(want);
    }
    result
}

/// Writes the difference between `have` (what this process programmed) and `want` (`peers`).
fn apply_delta(
    sbox: &mut Sbox,
    have: &Programmed,
    want: &Programmed,
    peers: &BTreeMap<Ipv4Addr, Peer>,
) -> Result<PeerChanges> {
    let vx = want.vx;
    let mut changes = PeerChanges::default();
    let mut reqs = Vec::new();
    let mut dels = Vec::new();
    for p in peers.values() {
        let neigh_ok = have.neigh.get(&p.ip) == Some(&p.mac);
        let vtep = want.fdb[&p.mac];
        let fdb_ok = have.fdb.get(&p.mac) == Some(&vtep);
        if !neigh_ok {
            reqs.push(kernel::set_neigh(vx, p.ip, p.mac));
        }
        if !neigh_ok && !have.neigh.contains_key(&p.ip) && !have.fdb.contains_key(&p.mac) {
            changes.added += 1;
        } else if !neigh_ok || !fdb_ok {
            changes.updated += 1;
        }
    }
    for (mac, vtep) in &want.fdb {
        if have.fdb.get(mac) != Some(vtep) {
            // NLM_F_REPLACE rewrites the entry's destination in place.
            reqs.push(kernel::set_fdb(vx, *mac, *vtep));
        }
    }
    for (ip, mac) in &have.neigh {
        if !want.neigh.contains_key(ip) {
            changes.removed += 1;
            dels.push(kernel::del_neigh(vx, *ip, *mac));
        }
    }
    for (mac, vtep) in &have.fdb {
        if !want.fdb.contains_key(mac) {
            dels.push(kernel::del_fdb(vx, *mac, *vtep));
        }
    }
    dels.extend(reqs);
    if !dels.is_empty() {
        batch_ignoring(&mut sbox.nl, dels, &[libc::ENOENT, libc::ESRCH])?;
    }
    Ok(changes)
}

/// Reads `vxlan0`'s neighbour and FDB tables and writes what differs from `peers`.
fn apply_full(
    sbox: &mut Sbox,
    want: &Programmed,
    peers: &BTreeMap<Ipv4Addr, Peer>,
) -> Result<PeerChanges> {
    let vx = want.vx;
    let neigh: BTreeMap<Ipv4Addr, (Option<Mac>, bool)> = kernel::neighbours(&mut sbox.nl, false)?
        .into_iter()
        .filter(|n| n.ifindex == vx)
        .filter_map(|n| n.dst.map(|ip| (ip, (n.mac, n.permanent))))
        .collect();
    let mut fdb: BTreeMap<Mac, Vec<Option<Ipv4Addr>>> = BTreeMap::new();
    for n in kernel::neighbours(&mut sbox.nl, true)? {
        if n.ifindex == vx
            && n.own
            && let Some(mac) = n.mac
        {
            fdb.entry(mac).or_default().push(n.dst);
        }
    }
    let want_fdb = &want.fdb;
    let mut changes = PeerChanges::default();
    let mut reqs = Vec::new();
    let mut dels = Vec::new();
    let mut fdb_done = BTreeSet::new();
    for p in peers.values() {
        let n = neigh.get(&p.ip);
        let neigh_ok = matches!(n, Some((Some(m), true)) if *m == p.mac);
        let vtep = want_fdb[&p.mac];
        let have = fdb.get(&p.mac).map(Vec::as_slice).unwrap_or(&[]);
        let fdb_ok = have == [Some(vtep)];
        if !neigh_ok {
            reqs.push(kernel::set_neigh(vx, p.ip, p.mac));
        }
        if !fdb_ok && fdb_done.insert(p.mac) {
            // NLM_F_REPLACE rewrites an entry's (first) destination in place; extra
            // destinations (appended by someone else) go.
            let extra = have.len().saturating_sub(1);
            for d in have.iter().flatten().filter(|d| **d != vtep).take(extra) {
                dels.push(kernel::del_fdb(vx, p.mac, *d));
            }
            reqs.push(kernel::set_fdb(vx, p.mac, vtep));
        }
        if n.is_none() && have.is_empty() {
            changes.added += 1;
        } else if !neigh_ok || !fdb_ok {
            changes.updated += 1;
        }
    }
    for (ip, (mac, _)) in &neigh {
        if !peers.contains_key(ip) {
            changes.removed += 1;
            dels.push(kernel::del_neigh(vx, *ip, mac.unwrap_or(Mac([0; 6]))));
        }
    }
    for (mac, dsts) in &fdb {
        if !want_fdb.contains_key(mac) {
            for d in dsts.iter().flatten() {
                dels.push(kernel::del_fdb(vx, *mac, *d));
            }
        }
    }
    dels.extend(reqs);
    if !dels.is_empty() {
        batch_ignoring(&mut sbox.nl, dels, &[libc::ENOENT, libc::ESRCH])?;
    }
    Ok(changes)
}

/// After the peers of some addresses (`ips`) changed in `peers`: writes what those addresses
/// and their MACs need, by difference with what this process programmed. Only the changed
/// entries are looked at (a MAC's FDB entry looks for the other peers with that MAC, without
/// allocating). Without that memory (a new process, a failed write), a full apply.
pub(crate) fn apply_updates(
    sbox: &mut Sbox,
    vx: u32,
    peers: &BTreeMap<Ipv4Addr, Peer>,
    ips: &BTreeSet<Ipv4Addr>,
) -> Result<(PeerChanges, BTreeSet<Mac>)> {
    let Some(mut have) = sbox.peers.take().filter(|p| p.vx == vx) else {
        let want = Programmed::of(vx, peers);
        let changes = apply_full(sbox, &want, peers)?;
        let macs = want.fdb.keys().copied().collect();
        sbox.peers = Some(want);
        return Ok((changes, macs));
    };
    let mut changes = PeerChanges::default();
    let mut reqs = Vec::new();
    let mut dels = Vec::new();
    let mut macs = BTreeSet::new();
    for ip in ips {
        let old = have.neigh.get(ip).copied();
        let new = peers.get(ip).map(|p| p.mac);
        macs.extend(old);
        macs.extend(new);
        match (old, new) {
            (Some(o), None) => {
                changes.removed += 1;
                dels.push(kernel::del_neigh(vx, *ip, o));
                have.neigh.remove(ip);
            }
            (old, Some(n)) => {
                let vtep_moved = peers
                    .get(ip)
                    .is_some_and(|p| have.fdb.get(&p.mac) != Some(&p.vtep));
                if old.is_none() && !have.fdb.contains_key(&n) {
                    changes.added += 1;
                } else if old != Some(n) || vtep_moved {
                    changes.updated += 1;
                }
                if old != Some(n) {
                    reqs.push(kernel::set_neigh(vx, *ip, n));
                    have.neigh.insert(*ip, n);
                }
            }
            (None, None) => {}
        }
    }
    for mac in &macs {
        // One FDB entry per MAC: the peer with the lowest address that has it.
        let want = peers.values().find(|p| p.mac == *mac).map(|p| p.vtep);
        let old = have.fdb.get(mac).copied();
        match (old, want) {
            (Some(o), None) => {
                dels.push(kernel::del_fdb(vx, *mac, o));
                have.fdb.remove(mac);
            }
            (o, Some(w)) if o != Some(w) => {
                reqs.push(kernel::set_fdb(vx, *mac, w));
                have.fdb.insert(*mac, w);
            }
            _ => {}
        }
    }
    dels.extend(reqs);
    if !dels.is_empty() {
        // On failure the memory stays taken: the next apply reads the kernel.
        batch_ignoring(&mut sbox.nl, dels, &[libc::ENOENT, libc::ESRCH])?;
    }
    sbox.peers = Some(have);
    Ok((changes, macs))
}
