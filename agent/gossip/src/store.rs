//! The replicated state of one node: every node's record (global) and the endpoint tables of
//! the networks this node holds, with the rules of ownership, liveness, adoption and forgetting.
//! Pure: no I/O and no timers; what must be sent is returned as [`Effects`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tracing::{debug, info};

use crate::codec::{EpValue, NetInterest, OwnerDelta, Record, WireItem};
use crate::table::{Item, Liveness, Table};
use crate::{Endpoint, Entry, NetworkStats, now_us};

/// A change to push to peers: records (to everyone) or one network's deltas (to its holders).
#[derive(Debug, Clone)]
pub struct PushJob {
    pub net: Option<String>,
    pub records: Vec<Record>,
    pub deltas: Vec<OwnerDelta>,
    /// Not sent back to these (the node it came from, and the first pusher).
    pub exclude: Vec<Arc<str>>,
    pub origin: Arc<str>,
}

/// What a change of the store asks of the node.
#[derive(Debug, Default)]
pub struct Effects {
    pub pushes: Vec<PushJob>,
    /// Networks this node began to hold: fetch their tables from peers.
    pub fetch: Vec<String>,
    /// Something visible changed (entries, VTEPs, members).
    pub changed: bool,
}

/// Liveness as the tables see it.
struct Live<'a> {
    me: &'a str,
    left: bool,
    alive: &'a HashMap<Arc<str>, bool>,
    records: &'a BTreeMap<Arc<str>, Record>,
}

impl Liveness for Live<'_> {
    fn alive(&self, owner: &str) -> bool {
        if owner == self.me {
            return !self.left;
        }
        self.alive.get(owner).copied().unwrap_or(false)
            && !self.records.get(owner).is_some_and(|r| r.left)
    }
}

macro_rules! live {
    ($s:ident) => {
        Live {
            me: &$s.me,
            left: $s.left,
            alive: &$s.alive,
            records: &$s.records,
        }
    };
}

/// See the module documentation.
pub struct Store {
    pub(crate) me: Arc<str>,
    pub(crate) generation: u64,
    addr: SocketAddr,
    /// Hybrid logical clock: the last version this node wrote or saw of its own.
    clock: u64,
    vtep: Option<IpAddr>,
    floor: u64,
    pub(crate) left: bool,
    pub(crate) records: BTreeMap<Arc<str>, Record>,
    /// Per owner: every entry at or below this version is void.
    floors: HashMap<Arc<str>, u64>,
    /// Node ids forgotten, with the newest generation known when they were.
    forgotten: HashMap<Arc<str>, u64>,
    pub(crate) tables: BTreeMap<String, Table>,
    /// Other nodes' liveness per failure detection.
    pub(crate) alive: HashMap<Arc<str>, bool>,
    /// While adopting the previous generation's entries: the networks they are in.
    adopting: Option<BTreeSet<String>>,
    /// Entries adopted and not yet re-published: (network, id).
    adopted: BTreeSet<(String, String)>,
    /// A floor rise decided by [`Store::release_adopted`], due at the given time (µs): the
    /// re-published entries get that long to reach every holder first.
    floor_due: Option<(u64, u64)>,
    /// Received counts of networks not held (should stay at zero).
    unwanted: HashMap<String, (u64, u64)>,
    pub(crate) items_unwanted: u64,
    tombstone_ttl_us: u64,
    linger_us: u64,
}

const MAX_UNWANTED_NETS: usize = 1024;

impl Store {
    pub fn new(
        me: Arc<str>,
        generation: u64,
        addr: SocketAddr,
        tombstone_ttl_us: u64,
        linger_us: u64,
    ) -> Store {
        let mut s = Store {
            me,
            generation,
            addr,
            clock: generation,
            vtep: None,
            floor: 0,
            left: false,
            records: BTreeMap::new(),
            floors: HashMap::new(),
            forgotten: HashMap::new(),
            tables: BTreeMap::new(),
            alive: HashMap::new(),
            adopting: Some(BTreeSet::new()),
            adopted: BTreeSet::new(),
            floor_due: None,
            unwanted: HashMap::new(),
            items_unwanted: 0,
            tombstone_ttl_us,
            linger_us,
        };
        let r = s.my_record(generation);
        s.records.insert(s.me.clone(), r);
        s
    }

    fn next_version(&mut self) -> u64 {
        self.clock = now_us().max(self.clock + 1);
        self.clock
    }

    fn observe(&mut self, version: u64) {
        self.clock = self.clock.max(version);
    }

    fn my_record(&self, version: u64) -> Record {
        Record {
            node: self.me.clone(),
            generation: self.generation,
            version,
            addr: self.addr,
            vtep: self.vtep,
            networks: self
                .tables
                .iter()
                .map(|(net, t)| NetInterest {
                    net: net.clone(),
                    publishes: t.owns(&self.me, u64::MAX).0,
                })
                .collect(),
            left: self.left,
            floor: self.floor,
        }
    }

    pub fn record(&self) -> &Record {
        self.records.get(&self.me).expect("own record")
    }

    /// Re-issues this node's record if what it says changed (or `force`), and pushes it.
    fn update_record(&mut self, force: bool, eff: &mut Effects) {
        let cur = self.record().clone();
        let probe = self.my_record(cur.version);
        if probe == cur && !force {
            return;
        }
        let version = self.next_version();
        let r = self.my_record(version);
        self.records.insert(self.me.clone(), r.clone());
        eff.pushes.push(PushJob {
            net: None,
            records: vec![r],
            deltas: vec![],
            exclude: vec![],
            origin: self.me.clone(),
        });
        eff.changed = true;
    }

    pub fn is_alive(&self, node: &str) -> bool {
        live!(self).alive(node)
    }

    /// Starts holding `net` if not yet; returns whether it is new.
    fn hold(&mut self, net: &str, eff: &mut Effects) -> bool {
        if self.tables.contains_key(net) {
            return false;
        }
        self.tables
            .insert(net.to_string(), Table::new(net, now_us()));
        eff.fetch.push(net.to_string());
        self.update_record(false, eff);
        debug!(%net, "holding the network's table");
        true
    }

    /// Stops holding `net` if nothing keeps it: no subscriber, no entry of ours (live, adopted,
    /// or withdrawn recently enough that the tombstone may still have to spread).
    pub fn maybe_release(&mut self, net: &str, eff: &mut Effects) {
        let Some(t) = self.tables.get(net) else {
            return;
        };
        let since = now_us().saturating_sub(self.linger_us);
        let (live, recent) = t.owns(&self.me, since);
        let adopting = self.adopting.as_ref().is_some_and(|a| a.contains(net));
        if t.subscribers > 0 || live || recent || adopting {
            return;
        }
        self.tables.remove(net);
        self.update_record(false, eff);
        debug!(%net, "no longer holding the network's table");
    }

    // ----- local writes -----

    pub fn publish_vtep(&mut self, addr: IpAddr) -> Effects {
        let mut eff = Effects::default();
        if self.vtep != Some(addr) {
            self.vtep = Some(addr);
            self.update_record(false, &mut eff);
        }
        eff
    }

    pub fn publish(&mut self, ep: &Endpoint) -> Effects {
        let mut eff = Effects::default();
        self.hold(&ep.network, &mut eff);
        let value = EpValue {
            ip: ep.ip,
            mac: ep.mac,
            task: ep.task.clone(),
            service: ep.service.clone(),
            name: ep.name.clone(),
            aliases: ep.aliases.clone(),
            disabled: ep.disabled,
        };
        let key = (ep.network.clone(), ep.id.clone());
        let t = &self.tables[&ep.network];
        let unchanged = t
            .get(&self.me, &ep.id)
            .and_then(|i| i.value.as_deref())
            .is_some_and(|v| *v == value);
        if unchanged && !self.adopted.contains(&key) {
            return eff;
        }
        self.adopted.remove(&key);
        self.write(&ep.network, &ep.id, Some(Arc::new(value)), &mut eff);
        eff
    }

    /// Returns whether the endpoint was published.
    pub fn withdraw(&mut self, net: &str, id: &str) -> (bool, Effects) {
        let mut eff = Effects::default();
        let live = self
            .tables
            .get(net)
            .and_then(|t| t.get(&self.me, id))
            .is_some_and(|i| i.value.is_some());
        if !live {
            return (false, eff);
        }
        self.adopted.remove(&(net.to_string(), id.to_string()));
        self.write(net, id, None, &mut eff);
        (true, eff)
    }

    /// Writes one of this node's entries with a new version and queues the push.
    fn write(&mut self, net: &str, id: &str, value: Option<Arc<EpValue>>, eff: &mut Effects) {
        let version = self.next_version();
        let live = live!(self);
        let t = self.tables.get_mut(net).expect("held");
        let since = t.part(&self.me).map(|p| p.max).unwrap_or(0);
        let item = Item { version, value };
        let wire = item.wire(id);
        t.set(&self.me, id, item, &live);
        eff.pushes.push(PushJob {
            net: Some(net.to_string()),
            records: vec![],
            deltas: vec![OwnerDelta {
                owner: self.me.clone(),
                since,
                max: version,
                items: vec![wire],
            }],
            exclude: vec![],
            origin: self.me.clone(),
        });
        eff.changed = true;
        self.update_record(false, eff);
    }

    /// The agent has re-published what it runs: the previous generation's entries it did not
    /// re-publish go, everywhere. Those this node knows of are withdrawn at once (tombstones,
    /// pushed like any withdrawal); the record's floor rises to this generation only after the
    /// linger time, as a catch-all for entries of the previous generation it never fetched. The
    /// delay matters: a peer that learnt the floor before the re-published (re-stamped) copy of
    /// an entry still running would remove it and add it back a moment later.
    pub fn release_adopted(&mut self) -> Effects {
        let mut eff = Effects::default();
        let Some(nets) = self.adopting.take() else {
            return eff;
        };
        let leftovers: Vec<(String, String)> =
            std::mem::take(&mut self.adopted).into_iter().collect();
        for (net, id) in &leftovers {
            if self.tables.contains_key(net) {
                self.write(net, id, None, &mut eff);
            }
        }
        self.floor_due = Some((self.generation, now_us() + self.linger_us));
        for net in nets {
            self.maybe_release(&net, &mut eff);
        }
        info!(
            withdrawn = leftovers.len(),
            "released the previous generation's entries"
        );
        eff
    }

    /// Raises the record's floor to `floor`: every older entry of ours is void on every node.
    fn raise_floor(&mut self, floor: u64, eff: &mut Effects) {
        self.floor = self.floor.max(floor);
        let floor = self.floor;
        let live = live!(self);
        for t in self.tables.values_mut() {
            eff.changed |= t.void_below(&self.me, floor, &live);
        }
        self.update_record(true, eff);
        debug!(floor, "raised the floor of our entries");
    }

    pub fn adopting(&self) -> bool {
        self.adopting.is_some()
    }

    /// Every part of ours this node holds, per network (what a restarted incarnation of us
    /// asks for).
    pub fn parts_of(&self, owner: &Arc<str>) -> Vec<crate::codec::TableDelta> {
        self.tables
            .iter()
            .filter_map(|(net, t)| {
                let d = t.delta(owner, 0)?;
                Some(crate::codec::TableDelta {
                    net: net.clone(),
                    owners: vec![d],
                })
            })
            .collect()
    }

    /// Leaves gracefully: the record says so, and every node drops this node's entries.
    pub fn leave(&mut self) -> Effects {
        let mut eff = Effects::default();
        self.left = true;
        self.floor_due = None;
        self.floor = self.next_version();
        self.update_record(true, &mut eff);
        eff
    }

    // ----- subscriptions -----

    /// Registers a subscriber of `net` (holding its table from now on).
    pub fn subscribe(&mut self, net: &str) -> (u64, Effects) {
        let mut eff = Effects::default();
        self.hold(net, &mut eff);
        let t = self.tables.get_mut(net).expect("held");
        t.subscribers += 1;
        (t.epoch, eff)
    }

    pub fn unsubscribed(&mut self, net: &str, epoch: u64) -> Effects {
        let mut eff = Effects::default();
        if let Some(t) = self.tables.get_mut(net)
            && t.epoch == epoch
        {
            t.subscribers = t.subscribers.saturating_sub(1);
            self.maybe_release(net, &mut eff);
        }
        eff
    }

    pub fn unsubscribe_all(&mut self, net: &str) -> Effects {
        let mut eff = Effects::default();
        if let Some(t) = self.tables.get_mut(net) {
            t.close_subscriptions();
            self.maybe_release(net, &mut eff);
        }
        eff
    }

    // ----- remote state -----

    fn is_forgotten(&self, node: &str, generation: Option<u64>) -> bool {
        match (self.forgotten.get(node), generation) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(g), Some(gen_)) => gen_ <= *g,
        }
    }

    /// Whether messages from this identity are to be ignored.
    pub fn refuses(&self, node: &str, generation: u64) -> bool {
        self.is_forgotten(node, Some(generation))
    }

    /// Merges a record; returns whether it was new (to be passed on).
    pub fn merge_record(&mut self, r: Record, eff: &mut Effects) -> bool {
        if self.is_forgotten(&r.node, Some(r.generation)) {
            return false;
        }
        if self.forgotten.remove(&r.node).is_some() {
            info!(node = %r.node, "a forgotten node came back with a new generation");
        }
        if r.node == self.me {
            self.merge_own_record(r, eff);
            return false;
        }
        if let Some(cur) = self.records.get(&r.node)
            && (cur.generation, cur.version) >= (r.generation, r.version)
        {
            return false;
        }
        let floor = if r.left {
            r.version.max(r.floor)
        } else {
            r.floor
        };
        let node = r.node.clone();
        let was_alive = self.is_alive(&node);
        self.records.insert(node.clone(), r);
        let old_floor = self.floors.get(&node).copied().unwrap_or(0);
        if floor > old_floor {
            self.floors.insert(node.clone(), floor);
            let live = live!(self);
            for t in self.tables.values_mut() {
                eff.changed |= t.void_below(&node, floor, &live);
            }
        }
        if was_alive != self.is_alive(&node) {
            self.liveness_changed(&node);
        }
        eff.changed = true;
        true
    }

    fn merge_own_record(&mut self, r: Record, eff: &mut Effects) {
        self.observe(r.version);
        if r.generation < self.generation {
            // The previous incarnation: what it left void stays void; what it published is
            // adopted (fetched and kept as ours) unless it left.
            let floor = if r.left {
                r.version.max(r.floor)
            } else {
                r.floor
            };
            if floor > self.floor {
                self.floor = floor;
                self.update_record(false, eff);
            }
            if !r.left && self.adopting.is_some() {
                for n in r.networks.iter().filter(|n| n.publishes) {
                    if self
                        .adopting
                        .as_mut()
                        .is_some_and(|a| a.insert(n.net.clone()))
                    {
                        info!(net = %n.net, "adopting the previous generation's entries");
                        self.hold(&n.net, eff);
                    }
                }
            }
        } else if (r.generation, r.version) > (self.generation, self.record().version) {
            // A newer version of our own record that we never wrote: supersede it.
            self.update_record(true, eff);
        }
    }

    /// Merges one owner's delta for `net`; returns whether anything was new.
    pub fn merge_delta(&mut self, net: &str, d: &OwnerDelta, eff: &mut Effects) -> bool {
        if d.owner == self.me
            && !self.tables.contains_key(net)
            && d.items.iter().any(|i| i.value.is_some())
            && let Some(a) = self.adopting.as_mut()
        {
            // Our previous generation's entries in a network we do not hold yet: adopt them.
            a.insert(net.to_string());
            info!(%net, "adopting the previous generation's entries");
            self.hold(net, eff);
        }
        if !self.tables.contains_key(net) {
            self.items_unwanted += d.items.len() as u64;
            if self.unwanted.len() < MAX_UNWANTED_NETS || self.unwanted.contains_key(net) {
                let e = self.unwanted.entry(net.to_string()).or_default();
                e.0 += d.items.len() as u64;
                e.1 += d.items.iter().map(|i| i.id.len() + 16).sum::<usize>() as u64;
            }
            return false;
        }
        if self.is_forgotten(&d.owner, None) {
            return false;
        }
        if let Some(t) = self.tables.get_mut(net) {
            t.items_received += d.items.len() as u64;
            t.bytes_received += d
                .items
                .iter()
                .map(|i| i.id.len() + 16 + i.value.as_ref().map(EpValue::wire_len).unwrap_or(0))
                .sum::<usize>() as u64;
        }
        if d.owner == self.me {
            return self.merge_own(net, d, eff);
        }
        let floor = self.floors.get(&d.owner).copied().unwrap_or(0);
        let live = live!(self);
        let t = self.tables.get_mut(net).expect("held");
        let new = t.merge(d, floor, &live);
        eff.changed |= new;
        new
    }

    /// Our own entries as peers have them: adopted while adopting (the previous generation's),
    /// otherwise anything newer than ours is superseded by a new write of what we hold.
    fn merge_own(&mut self, net: &str, d: &OwnerDelta, eff: &mut Effects) -> bool {
        let mut new = false;
        for wi in &d.items {
            let cur = self.tables[net].get(&self.me, &wi.id).cloned();
            if cur.as_ref().is_some_and(|c| c.version >= wi.version) || wi.version <= self.floor {
                continue;
            }
            self.observe(wi.version);
            if self.adopting.is_some() && wi.version < self.generation {
                let live = live!(self);
                let t = self.tables.get_mut(net).expect("held");
                let item = Item {
                    version: wi.version,
                    value: wi.value.clone().map(Arc::new),
                };
                let is_live = item.value.is_some();
                t.set(&self.me, &wi.id, item, &live);
                let key = (net.to_string(), wi.id.clone());
                if is_live {
                    self.adopted.insert(key);
                } else {
                    self.adopted.remove(&key);
                }
                eff.changed = true;
                new = true;
            } else {
                debug!(%net, id = %wi.id, "a peer holds a version of our entry we did not write; superseding it");
                let value = cur.and_then(|c| c.value);
                self.write(net, &wi.id, value, eff);
            }
        }
        if self.adopting.is_some() && d.max < self.generation {
            self.observe(d.max);
            if let Some(p) = self
                .tables
                .get_mut(net)
                .and_then(|t| t.owners.get_mut(&self.me))
            {
                p.max = p.max.max(d.max);
            }
        }
        if new {
            self.update_record(false, eff);
        }
        new
    }

    /// A network's whole table arrived (or nobody had it): subscribers get their snapshot.
    /// Held networks whose table has not been fetched yet.
    pub fn unsynced(&self) -> Vec<String> {
        self.tables
            .iter()
            .filter(|(_, t)| !t.synced)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn mark_synced(&mut self, net: &str) {
        if let Some(t) = self.tables.get_mut(net) {
            t.mark_synced();
        }
    }

    /// A holder's whole table has been sent (its last message says so): the table counts as
    /// fetched once all of it is here ([`Store::settle_fill`]).
    pub fn fill(&mut self, net: &str) {
        if let Some(t) = self.tables.get_mut(net) {
            t.fill_arrived = true;
        }
        self.settle_fill(net);
    }

    /// Counts a filled table as fetched when what the holder sent has all arrived: every
    /// owner's changes contiguous (no piece waits for an earlier one), and a part for every
    /// node whose record says it has entries there. The pieces of one answer travel as
    /// separate datagrams and streams, and the last (with the mark) can come first; a table
    /// handed over without the rest made the executor remove the missing owners' peers and
    /// backends. What never arrives is given up with the fetch ([`Store::upkeep`]).
    pub fn settle_fill(&mut self, net: &str) {
        let Some(t) = self.tables.get(net) else {
            return;
        };
        if t.synced || !t.fill_arrived || !t.contiguous() {
            return;
        }
        let missing = self.records.values().any(|r| {
            r.node != self.me
                && !r.left
                && r.networks.iter().any(|n| n.net == net && n.publishes)
                && !t.owners.contains_key(&r.node)
        });
        if !missing {
            self.mark_synced(net);
        }
    }

    /// Failure detection changed its mind about `node`.
    pub fn set_alive(&mut self, node: &Arc<str>, alive: bool) -> bool {
        let before = self.is_alive(node);
        self.alive.insert(node.clone(), alive);
        if before != self.is_alive(node) {
            self.liveness_changed(node);
            return true;
        }
        false
    }

    fn liveness_changed(&mut self, node: &str) {
        let live = live!(self);
        for t in self.tables.values_mut() {
            t.liveness_changed(node, &live);
        }
    }

    /// Drops everything of `node` (removed from the cluster) and refuses it from now on,
    /// unless it comes back with a newer generation than `newest_generation`.
    pub fn forget(&mut self, node: &str, newest_generation: u64) -> Effects {
        let mut eff = Effects::default();
        if node == &*self.me {
            return eff;
        }
        let node: Arc<str> = node.into();
        let generation = self
            .records
            .get(&node)
            .map(|r| r.generation)
            .unwrap_or(0)
            .max(newest_generation);
        self.forgotten.insert(node.clone(), generation);
        self.records.remove(&node);
        self.floors.remove(&node);
        self.alive.remove(&node);
        let live = live!(self);
        for t in self.tables.values_mut() {
            t.void_below(&node, u64::MAX, &live);
        }
        eff.changed = true;
        info!(%node, "forgot a node");
        eff
    }

    /// Periodic upkeep: tombstones past their TTL, tables nothing keeps, the adoption grace,
    /// fetches nobody answered.
    pub fn upkeep(&mut self, adopt_deadline_passed: bool, fetch_timeout_us: u64) -> Effects {
        let mut eff = Effects::default();
        let now = now_us();
        for t in self.tables.values_mut() {
            t.gc_tombstones(now, self.tombstone_ttl_us);
            if !t.synced && now.saturating_sub(t.since_us) > fetch_timeout_us {
                t.mark_synced();
            }
        }
        if adopt_deadline_passed && self.adopting.is_some() {
            let e = self.release_adopted();
            eff.pushes.extend(e.pushes);
            eff.changed |= e.changed;
        }
        if let Some((floor, at)) = self.floor_due
            && now >= at
        {
            self.floor_due = None;
            self.raise_floor(floor, &mut eff);
        }
        let nets: Vec<String> = self.tables.keys().cloned().collect();
        for net in nets {
            self.maybe_release(&net, &mut eff);
        }
        eff
    }

    // ----- reads -----

    pub fn endpoints(&self, net: &str) -> Vec<Entry> {
        self.tables.get(net).map(Table::entries).unwrap_or_default()
    }

    pub fn network_stats(&self, net: &str) -> NetworkStats {
        match self.tables.get(net) {
            Some(t) => t.stats(),
            None => {
                let (items, bytes) = self.unwanted.get(net).copied().unwrap_or_default();
                NetworkStats {
                    items_received: items,
                    bytes_received: bytes,
                    ..NetworkStats::default()
                }
            }
        }
    }

    /// Records of nodes that are neither forgotten nor left, by node id.
    pub fn vteps(&self) -> BTreeMap<String, IpAddr> {
        self.records
            .values()
            .filter(|r| !r.left)
            .filter_map(|r| r.vtep.map(|ip| (r.node.to_string(), ip)))
            .collect()
    }

    /// Which peers hold `net` (per their records).
    pub fn holders(&self, net: &str) -> Vec<Arc<str>> {
        self.records
            .values()
            .filter(|r| r.node != self.me && !r.left)
            .filter(|r| r.networks.iter().any(|n| n.net == net))
            .map(|r| r.node.clone())
            .collect()
    }

    /// The networks `peer` holds as well as this node.
    pub fn shared_nets(&self, peer: &str) -> Vec<String> {
        let Some(r) = self.records.get(peer) else {
            return Vec::new();
        };
        r.networks
            .iter()
            .filter(|n| self.tables.contains_key(&n.net))
            .map(|n| n.net.clone())
            .collect()
    }

    /// The owner's whole part of a table (for a fill), or changes since a version.
    pub fn delta_for(&self, net: &str, owner: &Arc<str>, since: u64) -> Option<OwnerDelta> {
        self.tables.get(net)?.delta(owner, since)
    }

    pub fn wire_items(items: &[WireItem]) -> usize {
        items
            .iter()
            .map(|i| i.id.len() + 16 + i.value.as_ref().map(EpValue::wire_len).unwrap_or(0))
            .sum()
    }
}

#[cfg(test)]
mod tests;
