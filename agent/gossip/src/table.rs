//! One network's endpoint table: every owner's entries (last writer wins per entry, tombstones
//! for deletes), the digests anti-entropy compares, and the visible view (one winner per IP)
//! with its events.
//!
//! Winner of an IP: the live entry with the highest `(owner alive, version, owner, id)`: an
//! alive owner's entry beats a dead owner's, then the later publish wins. Every node holding
//! the table decides the same, from the same entries and the same liveness.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::codec::{EpValue, OwnerDelta, OwnerDigest, WireItem, hash};
use crate::{Endpoint, Entry, Event, NetworkStats};

/// Capacity of a network's event channel; a subscriber further behind gets a fresh snapshot.
pub const EVENT_CAPACITY: usize = 1024;

/// One entry as stored: a value or a tombstone, and the owner's version of the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub version: u64,
    pub value: Option<Arc<EpValue>>,
}

impl Item {
    pub fn wire(&self, id: &str) -> WireItem {
        WireItem {
            id: id.to_string(),
            version: self.version,
            value: self.value.as_deref().cloned(),
        }
    }
}

/// An owner's entries in the network.
#[derive(Debug, Default)]
pub struct OwnerPart {
    pub items: BTreeMap<String, Item>,
    /// Every change of this owner up to `max` is known.
    pub max: u64,
    /// XOR of `hash(id, version)` over the live items.
    pub hash: u64,
    /// Deltas merged that did not continue `max` (`(since, max]` with `since` above it: the
    /// pieces of one answer can arrive out of order, by datagram and by stream). Their items
    /// are in; `max` passes over them once what lies between arrives.
    pub(crate) ahead: Vec<(u64, u64)>,
}

/// Most out-of-order deltas remembered per owner (the oldest are forgotten: anti-entropy
/// then brings their range again).
const MAX_AHEAD: usize = 64;

fn item_hash(id: &str, version: u64) -> u64 {
    hash(&[id.as_bytes(), &version.to_be_bytes()])
}

impl OwnerPart {
    /// Moves `max` over the out-of-order deltas it now reaches, and forgets those it passed.
    fn absorb_ahead(&mut self) {
        loop {
            let max = self.max;
            self.ahead.retain(|&(_, m)| m > max);
            match self.ahead.iter().position(|&(s, _)| s <= max) {
                Some(i) => {
                    let (_, m) = self.ahead.swap_remove(i);
                    self.max = m;
                }
                None => break,
            }
        }
    }

    fn digest(&self, owner: &str) -> u64 {
        hash(&[
            owner.as_bytes(),
            &self.max.to_be_bytes(),
            &self.hash.to_be_bytes(),
        ])
    }

    /// Every item changed after `since`, oldest first.
    pub fn since(&self, since: u64) -> Vec<WireItem> {
        let mut items: Vec<WireItem> = self
            .items
            .iter()
            .filter(|(_, i)| i.version > since)
            .map(|(id, i)| i.wire(id))
            .collect();
        items.sort_by_key(|i| i.version);
        items
    }
}

type Key = (Arc<str>, String);

/// Liveness of owners, as the table asks for it.
pub trait Liveness {
    fn alive(&self, owner: &str) -> bool;
}

impl<F: Fn(&str) -> bool> Liveness for F {
    fn alive(&self, owner: &str) -> bool {
        self(owner)
    }
}

/// A network's table.
pub struct Table {
    net: String,
    pub(crate) owners: BTreeMap<Arc<str>, OwnerPart>,
    /// Live entries by IP.
    by_ip: HashMap<IpAddr, BTreeSet<Key>>,
    /// The winner of each IP.
    winners: HashMap<IpAddr, Key>,
    visible: BTreeMap<Key, Entry>,
    tx: broadcast::Sender<Event>,
    /// Live [`crate::Subscription`]s of this table, and the epoch they belong to (an explicit
    /// unsubscribe starts a new one).
    pub(crate) subscribers: usize,
    pub(crate) epoch: u64,
    /// The table was fetched from peers (or there were none): events flow to subscribers.
    pub(crate) synced: bool,
    /// A holder said its whole table was sent (the `filled` mark on its last message); the
    /// table counts as fetched once what it sent has all arrived ([`crate::store::Store::fill`]).
    pub(crate) fill_arrived: bool,
    /// When this node began holding it (µs), for giving up waiting on a fetch.
    pub(crate) since_us: u64,
    pub(crate) items_received: u64,
    pub(crate) bytes_received: u64,
}

impl Table {
    pub fn new(net: &str, now_us: u64) -> Table {
        Table {
            net: net.to_string(),
            owners: BTreeMap::new(),
            by_ip: HashMap::new(),
            winners: HashMap::new(),
            visible: BTreeMap::new(),
            tx: broadcast::channel(EVENT_CAPACITY).0,
            subscribers: 0,
            epoch: 0,
            synced: false,
            fill_arrived: false,
            since_us: now_us,
            items_received: 0,
            bytes_received: 0,
        }
    }

    pub fn get(&self, owner: &str, id: &str) -> Option<&Item> {
        self.owners.get(owner)?.items.get(id)
    }

    pub fn part(&self, owner: &str) -> Option<&OwnerPart> {
        self.owners.get(owner)
    }

    /// Digest of the whole table: one 64-bit value anti-entropy compares first.
    pub fn digest(&self) -> u64 {
        self.owners
            .iter()
            .fold(0, |acc, (owner, p)| acc ^ p.digest(owner))
    }

    pub fn owner_digests(&self) -> Vec<OwnerDigest> {
        self.owners
            .iter()
            .map(|(owner, p)| OwnerDigest {
                owner: owner.clone(),
                max: p.max,
                hash: p.hash,
            })
            .collect()
    }

    /// The owner's changes after `since`, or `None` if the owner has no part here.
    pub fn delta(&self, owner: &Arc<str>, since: u64) -> Option<OwnerDelta> {
        let p = self.owners.get(owner)?;
        Some(OwnerDelta {
            owner: owner.clone(),
            since,
            max: p.max,
            items: p.since(since),
        })
    }

    /// Writes an item whatever the version (the owner's own writes), and raises the owner's
    /// max to it. Returns the previous item.
    pub fn set(
        &mut self,
        owner: &Arc<str>,
        id: &str,
        item: Item,
        live: &dyn Liveness,
    ) -> Option<Item> {
        let version = item.version;
        let prev = self.put(owner, id, item, live);
        let p = self.owners.entry(owner.clone()).or_default();
        p.max = p.max.max(version);
        prev
    }

    /// Merges an item by last-writer-wins; returns whether it was new.
    pub fn merge_item(
        &mut self,
        owner: &Arc<str>,
        id: &str,
        item: Item,
        live: &dyn Liveness,
    ) -> bool {
        if self
            .get(owner, id)
            .is_some_and(|cur| cur.version >= item.version)
        {
            return false;
        }
        self.put(owner, id, item, live);
        true
    }

    /// Merges a delta from a peer: items by last-writer-wins (those at or below `floor` are
    /// void), then the owner's max if the delta continues what is known. Returns whether
    /// anything was new.
    pub fn merge(&mut self, delta: &OwnerDelta, floor: u64, live: &dyn Liveness) -> bool {
        if delta.max <= floor {
            return false;
        }
        let mut new = false;
        for wi in &delta.items {
            if wi.version <= floor {
                continue;
            }
            let item = Item {
                version: wi.version,
                value: wi.value.clone().map(Arc::new),
            };
            new |= self.merge_item(&delta.owner, &wi.id, item, live);
        }
        let p = self.owners.entry(delta.owner.clone()).or_default();
        if delta.max > p.max {
            if delta.since <= p.max {
                p.max = delta.max;
                p.absorb_ahead();
                new = true;
            } else {
                if p.ahead.len() >= MAX_AHEAD {
                    p.ahead.remove(0);
                }
                p.ahead.push((delta.since, delta.max));
            }
        }
        new
    }

    /// Whether every owner's known changes are contiguous (no delta waits for what lies
    /// before it).
    pub fn contiguous(&self) -> bool {
        self.owners.values().all(|p| p.ahead.is_empty())
    }

    fn put(&mut self, owner: &Arc<str>, id: &str, item: Item, live: &dyn Liveness) -> Option<Item> {
        let p = self.owners.entry(owner.clone()).or_default();
        let new_ip = item.value.as_ref().map(|v| v.ip);
        if item.value.is_some() {
            p.hash ^= item_hash(id, item.version);
        }
        let prev = p.items.insert(id.to_string(), item);
        if let Some(old) = &prev
            && old.value.is_some()
        {
            p.hash ^= item_hash(id, old.version);
        }
        let old_ip = prev.as_ref().and_then(|i| i.value.as_ref()).map(|v| v.ip);
        let key: Key = (owner.clone(), id.to_string());
        if let Some(ip) = old_ip
            && let Some(set) = self.by_ip.get_mut(&ip)
        {
            set.remove(&key);
            if set.is_empty() {
                self.by_ip.remove(&ip);
            }
        }
        if let Some(ip) = new_ip {
            self.by_ip.entry(ip).or_default().insert(key);
        }
        self.refresh(old_ip.into_iter().chain(new_ip), live);
        prev
    }

    /// Removes every item of `owner` at or below `floor` (all of them for `u64::MAX`), and the
    /// owner's part once nothing of it is left above the floor. Returns whether anything went.
    pub fn void_below(&mut self, owner: &str, floor: u64, live: &dyn Liveness) -> bool {
        let Some(p) = self.owners.get_mut(owner) else {
            return false;
        };
        let ids: Vec<String> = p
            .items
            .iter()
            .filter(|(_, i)| i.version <= floor)
            .map(|(id, _)| id.clone())
            .collect();
        let mut ips = Vec::new();
        for id in &ids {
            if let Some(item) = p.items.remove(id)
                && let Some(v) = item.value
            {
                p.hash ^= item_hash(id, item.version);
                ips.push(v.ip);
                let key: Key = (Arc::from(owner), id.clone());
                if let Some(set) = self.by_ip.get_mut(&v.ip) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.by_ip.remove(&v.ip);
                    }
                }
            }
        }
        let drop_part = p.items.is_empty() && p.max <= floor;
        if drop_part {
            self.owners.remove(owner);
        }
        self.refresh(ips, live);
        !ids.is_empty() || drop_part
    }

    /// The owner's liveness changed: its entries' flags, and maybe the winners of their IPs.
    pub fn liveness_changed(&mut self, owner: &str, live: &dyn Liveness) {
        let Some(p) = self.owners.get(owner) else {
            return;
        };
        let ips: Vec<IpAddr> = p
            .items
            .values()
            .filter_map(|i| i.value.as_ref().map(|v| v.ip))
            .collect();
        self.refresh(ips, live);
    }

    /// Forgets tombstones older than `ttl_us` (by the owner's clock); returns how many.
    pub fn gc_tombstones(&mut self, now_us: u64, ttl_us: u64) -> usize {
        let mut n = 0;
        for p in self.owners.values_mut() {
            let before = p.items.len();
            p.items
                .retain(|_, i| i.value.is_some() || now_us.saturating_sub(i.version) <= ttl_us);
            n += before - p.items.len();
        }
        n
    }

    /// Whether `owner` has entries here: live ones, or tombstones newer than `since_us`.
    pub fn owns(&self, owner: &str, since_us: u64) -> (bool, bool) {
        let Some(p) = self.owners.get(owner) else {
            return (false, false);
        };
        let live = p.items.values().any(|i| i.value.is_some());
        let recent = p
            .items
            .values()
            .any(|i| i.value.is_none() && i.version > since_us);
        (live, recent)
    }

    /// Recomputes the winners of `ips` and emits what changed.
    fn refresh(&mut self, ips: impl IntoIterator<Item = IpAddr>, live: &dyn Liveness) {
        let mut before: BTreeSet<Key> = BTreeSet::new();
        let mut after: BTreeSet<Key> = BTreeSet::new();
        let mut seen = Vec::new();
        for ip in ips {
            if seen.contains(&ip) {
                continue;
            }
            seen.push(ip);
            if let Some(k) = self.winners.remove(&ip) {
                before.insert(k);
            }
            let best = self.by_ip.get(&ip).and_then(|keys| {
                keys.iter()
                    .max_by_key(|k| {
                        let version = self.get(&k.0, &k.1).map(|i| i.version).unwrap_or(0);
                        (live.alive(&k.0), version, k.0.clone(), k.1.clone())
                    })
                    .cloned()
            });
            if let Some(k) = best {
                self.winners.insert(ip, k.clone());
                after.insert(k);
            }
        }
        let mut events = Vec::new();
        for k in before.difference(&after) {
            if let Some(e) = self.visible.remove(k) {
                events.push(Event::Removed(e));
            }
        }
        for k in &after {
            let Some(entry) = self.entry(k, live) else {
                continue;
            };
            match self.visible.insert(k.clone(), entry.clone()) {
                None => events.push(Event::Added(entry)),
                Some(prev) if prev != entry => events.push(Event::Updated(entry)),
                Some(_) => {}
            }
        }
        if self.synced {
            for e in events {
                // No receiver is fine.
                let _ = self.tx.send(e);
            }
        }
    }

    fn entry(&self, k: &Key, live: &dyn Liveness) -> Option<Entry> {
        let v = self.get(&k.0, &k.1)?.value.as_ref()?;
        Some(Entry {
            owner: k.0.to_string(),
            owner_alive: live.alive(&k.0),
            endpoint: Endpoint {
                id: k.1.clone(),
                network: self.net.clone(),
                ip: v.ip,
                mac: v.mac,
                task: v.task.clone(),
                service: v.service.clone(),
                name: v.name.clone(),
                aliases: v.aliases.clone(),
                disabled: v.disabled,
            },
        })
    }

    /// The visible entries, by owner then id.
    pub fn entries(&self) -> Vec<Entry> {
        self.visible.values().cloned().collect()
    }

    /// A receiver of the table's events and the visible entries as of now.
    pub fn subscribe(&self) -> (broadcast::Receiver<Event>, Vec<Entry>) {
        (self.tx.subscribe(), self.entries())
    }

    /// The table was fetched: subscribers waiting for their first snapshot get it now.
    pub fn mark_synced(&mut self) {
        if !self.synced {
            self.synced = true;
            let _ = self.tx.send(Event::Resync(self.entries()));
        }
    }

    /// Closes the event channel (subscribers get `None`) and starts a new epoch.
    pub fn close_subscriptions(&mut self) {
        self.tx = broadcast::channel(EVENT_CAPACITY).0;
        self.subscribers = 0;
        self.epoch += 1;
    }

    pub fn stats(&self) -> NetworkStats {
        let (mut stored, mut tombstones) = (0, 0);
        for p in self.owners.values() {
            for i in p.items.values() {
                if i.value.is_some() {
                    stored += 1;
                } else {
                    tombstones += 1;
                }
            }
        }
        NetworkStats {
            held: true,
            stored,
            visible: self.visible.len(),
            tombstones,
            items_received: self.items_received,
            bytes_received: self.bytes_received,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(last: u8) -> Option<Arc<EpValue>> {
        Some(Arc::new(EpValue {
            ip: IpAddr::from([10, 0, 0, last]),
            mac: [2, 0x42, 10, 0, 0, last],
            task: String::new(),
            service: String::new(),
            name: String::new(),
            aliases: vec![],
            disabled: false,
        }))
    }

    fn drain(rx: &mut broadcast::Receiver<Event>) -> Vec<Event> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(e);
        }
        out
    }

    #[test]
    fn last_writer_wins_and_tombstones_stick() {
        let all = |_: &str| true;
        let mut t = Table::new("n", 0);
        t.mark_synced();
        let a: Arc<str> = "a".into();
        assert!(t.merge_item(
            &a,
            "e",
            Item {
                version: 5,
                value: v(1)
            },
            &all
        ));
        assert!(!t.merge_item(
            &a,
            "e",
            Item {
                version: 4,
                value: v(2)
            },
            &all
        ));
        assert!(t.merge_item(
            &a,
            "e",
            Item {
                version: 6,
                value: None
            },
            &all
        ));
        assert!(
            !t.merge_item(
                &a,
                "e",
                Item {
                    version: 5,
                    value: v(1)
                },
                &all
            ),
            "no resurrection"
        );
        assert!(t.entries().is_empty());
        assert_eq!(t.stats().tombstones, 1);
        assert_eq!(t.gc_tombstones(100, 50), 1);
    }

    #[test]
    fn alive_beats_dead_then_later_wins() {
        let mut t = Table::new("n", 0);
        t.mark_synced();
        let (mut rx, _) = t.subscribe();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let dead_b = |o: &str| o != "b";
        t.merge_item(
            &b,
            "eb",
            Item {
                version: 10,
                value: v(7),
            },
            &dead_b,
        );
        t.merge_item(
            &a,
            "ea",
            Item {
                version: 5,
                value: v(7),
            },
            &dead_b,
        );
        let winners: Vec<String> = t.entries().iter().map(|e| e.owner.clone()).collect();
        assert_eq!(
            winners,
            ["a"],
            "an alive owner's entry beats a dead owner's"
        );
        let ev = drain(&mut rx);
        assert!(
            matches!(&ev[..], [Event::Added(x), Event::Removed(y), Event::Added(z)]
            if x.owner == "b" && !x.owner_alive && y.owner == "b" && z.owner == "a"),
            "{ev:?}"
        );
        // b comes back: both alive, the later publish (b's) wins.
        let all = |_: &str| true;
        t.liveness_changed("b", &all);
        let ev = drain(&mut rx);
        assert!(
            matches!(&ev[..], [Event::Removed(x), Event::Added(y)] if x.owner == "a" && y.owner == "b" && y.owner_alive),
            "{ev:?}"
        );
        // b withdraws: a's entry is visible again.
        t.set(
            &b,
            "eb",
            Item {
                version: 11,
                value: None,
            },
            &all,
        );
        assert_eq!(t.entries()[0].owner, "a");
    }

    #[test]
    fn digests_match_iff_contents_do_and_deltas_converge() {
        let all = |_: &str| true;
        let a: Arc<str> = "a".into();
        let mut x = Table::new("n", 0);
        let mut y = Table::new("n", 0);
        for k in 1..=5u64 {
            x.set(
                &a,
                &format!("e{k}"),
                Item {
                    version: k,
                    value: v(k as u8),
                },
                &all,
            );
        }
        x.set(
            &a,
            "e2",
            Item {
                version: 6,
                value: None,
            },
            &all,
        );
        assert_ne!(x.digest(), y.digest());
        let d = x.delta(&a, 0).unwrap();
        assert!(y.merge(&d, 0, &all));
        assert_eq!(x.digest(), y.digest());
        assert!(!y.merge(&d, 0, &all), "nothing new the second time");
        // A gap (since above what y knows) applies items but does not raise max.
        x.set(
            &a,
            "e7",
            Item {
                version: 7,
                value: v(9),
            },
            &all,
        );
        x.set(
            &a,
            "e8",
            Item {
                version: 8,
                value: v(10),
            },
            &all,
        );
        let gap = OwnerDelta {
            owner: a.clone(),
            since: 7,
            max: 8,
            items: x.part("a").unwrap().since(7),
        };
        y.merge(&gap, 0, &all);
        assert_eq!(y.part("a").unwrap().max, 6);
        y.merge(&x.delta(&a, 6).unwrap(), 0, &all);
        assert_eq!(x.digest(), y.digest());
        // A floor voids everything of the owner at or below it.
        assert!(y.void_below("a", 7, &all));
        assert_eq!(y.entries().len(), 1);
        assert!(y.void_below("a", u64::MAX, &all));
        assert!(y.part("a").is_none());
    }
}
