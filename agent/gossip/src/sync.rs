//! Anti-entropy and pushes: what a node answers to each message.
//!
//! ```text
//! A -> B  Syn     { records digest, digest of each network both hold }        every round
//! B -> A  SynAck  { record digests, owner digests of each network that differs } only if any
//! A -> B  Delta   { what B lacks, and Wants for what A lacks }
//! B -> A  Delta   { what A wanted }
//! ```
//! A network's digest is the XOR of its owners' `hash(owner, max, hash of live entries)`; an
//! owner whose `max` is behind gets the changes since its `max`; equal `max` with different
//! hashes (a divergence) exchanges that owner's whole part both ways, and last-writer-wins
//! settles it. A node that begins holding a network asks one or two holders for the whole
//! table (a [`Want`] without owner) and its subscribers get their first snapshot once it has
//! arrived.
//!
//! Pushes ([`Push`]) carry new changes to a few holders at once; a node passes on what was new
//! to it, once, to a few others. Messages are cut to stay well under the envelope's limit.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::codec::{
    Body, Delta, Message, NetDigest, OwnerDelta, Push, Record, RecordDigest, SynAck, TableDelta,
    Want,
};
use crate::membership::Id;
use crate::node::{Out, State};
use crate::store::{PushJob, Store};

/// Raw size a message is filled to before it is cut (compression makes it smaller still; the
/// envelope takes up to 64 KiB).
pub const MESSAGE_BUDGET: usize = 32 * 1024;

impl State {
    /// Digest of every record: XOR of `hash(node, generation, version)`.
    pub fn records_digest(&self) -> u64 {
        self.store.records.values().fold(0, |acc, r| {
            acc ^ crate::codec::hash(&[
                r.node.as_bytes(),
                &r.generation.to_be_bytes(),
                &r.version.to_be_bytes(),
            ])
        })
    }

    /// Handles one decoded message.
    pub fn handle(&mut self, msg: Message, refused: usize, out: &mut Out) {
        if self.closed {
            return;
        }
        self.counters.dropped_entries += refused as u64;
        if msg.cluster != self.cluster {
            self.counters.dropped_foreign_cluster += 1;
            return;
        }
        let from = msg.from;
        if self.store.refuses(&from.node, from.generation) {
            self.counters.dropped_forgotten += 1;
            return;
        }
        if from.node == self.me.node {
            // Another incarnation of this node (a stale process, or a reflection).
            return;
        }
        match msg.body {
            Body::Swim(packet) => {
                self.swim(out, |s, rt| s.handle_data(&packet, rt));
            }
            Body::Syn(syn) => {
                self.learn(&from, out);
                self.on_syn(&from, syn.records, syn.nets, out);
            }
            Body::SynAck(ack) => {
                self.learn(&from, out);
                self.on_synack(&from, ack, out);
            }
            Body::Delta(d) => {
                self.learn(&from, out);
                self.on_delta(&from, d, out);
            }
            Body::Push(p) => {
                self.learn(&from, out);
                self.on_push(&from, p, out);
            }
        }
    }

    fn on_syn(&mut self, from: &Id, records: u64, nets: Vec<crate::codec::NetHash>, out: &mut Out) {
        let mut ack = SynAck {
            records: None,
            nets: Vec::new(),
        };
        if records == self.records_digest() {
            self.records_settled = true;
        } else {
            ack.records = Some(
                self.store
                    .records
                    .values()
                    .map(|r| RecordDigest {
                        node: r.node.clone(),
                        generation: r.generation,
                        version: r.version,
                    })
                    .collect(),
            );
        }
        for nh in nets {
            if let Some(t) = self.store.tables.get(&nh.net)
                && t.digest() != nh.hash
            {
                ack.nets.push(NetDigest {
                    net: nh.net,
                    owners: t.owner_digests(),
                });
            }
        }
        if ack.records.is_some() || !ack.nets.is_empty() {
            out.sends.push((from.addr, self.message(Body::SynAck(ack))));
        }
    }

    fn on_synack(&mut self, from: &Id, ack: SynAck, out: &mut Out) {
        let mut records = Vec::new();
        let mut want_records = Vec::new();
        if ack.records.is_none() {
            // The peer's records digest matched ours.
            self.records_settled = true;
        }
        if let Some(theirs) = ack.records {
            let theirs: HashMap<Arc<str>, (u64, u64)> = theirs
                .into_iter()
                .map(|d| (d.node, (d.generation, d.version)))
                .collect();
            for r in self.store.records.values() {
                if theirs
                    .get(&r.node)
                    .is_none_or(|&t| t < (r.generation, r.version))
                {
                    records.push(r.clone());
                }
            }
            for (node, (g, v)) in theirs {
                if self.store.refuses(&node, g) {
                    continue;
                }
                if self
                    .store
                    .records
                    .get(&node)
                    .is_none_or(|r| (r.generation, r.version) < (g, v))
                {
                    want_records.push(node);
                }
            }
        }
        let mut tables = Vec::new();
        let mut wants = Vec::new();
        for nd in ack.nets {
            let Some(t) = self.store.tables.get(&nd.net) else {
                continue;
            };
            // owner -> (mine, theirs), each (max, hash)
            type Side = Option<(u64, u64)>;
            let mut pairs: BTreeMap<Arc<str>, (Side, Side)> = BTreeMap::new();
            for d in t.owner_digests() {
                pairs.entry(d.owner).or_default().0 = Some((d.max, d.hash));
            }
            for d in nd.owners {
                pairs.entry(d.owner).or_default().1 = Some((d.max, d.hash));
            }
            let mut owners = Vec::new();
            for (owner, (mine, theirs)) in pairs {
                let (send_since, want_since) = match (mine, theirs) {
                    (Some(m), Some(o)) if m == o => continue,
                    (Some(m), Some(o)) if m.0 > o.0 => (Some(o.0), None),
                    (Some(m), Some(o)) if m.0 < o.0 => (None, Some(m.0)),
                    (Some(_), Some(_)) => (Some(0), Some(0)),
                    (Some(_), None) => (Some(0), None),
                    (None, Some(_)) => (None, Some(0)),
                    (None, None) => continue,
                };
                if let Some(since) = send_since
                    && let Some(d) = t.delta(&owner, since)
                {
                    owners.push(d);
                }
                if let Some(since) = want_since {
                    wants.push(Want {
                        net: nd.net.clone(),
                        owner: Some(owner),
                        since,
                    });
                }
            }
            if !owners.is_empty() {
                tables.push(TableDelta {
                    net: nd.net,
                    owners,
                });
            }
        }
        if records.is_empty() && want_records.is_empty() && tables.is_empty() && wants.is_empty() {
            return;
        }
        self.counters.syncs_repaired += 1;
        let base = Delta {
            records,
            want_records,
            tables: Vec::new(),
            wants,
            filled: Vec::new(),
            adopt: false,
        };
        for d in split_delta(base, tables, Vec::new()) {
            out.sends.push((from.addr, self.message(Body::Delta(d))));
        }
    }

    fn on_delta(&mut self, from: &Id, d: Delta, out: &mut Out) {
        for r in d.records {
            let eff = &mut out.eff;
            self.store.merge_record(r, eff);
        }
        for td in &d.tables {
            for od in &td.owners {
                self.store.merge_delta(&td.net, od, &mut out.eff);
            }
            self.store.settle_fill(&td.net);
        }
        for net in &d.filled {
            self.store.fill(net);
        }
        // Answer what was asked.
        let records: Vec<Record> = d
            .want_records
            .iter()
            .filter_map(|n| self.store.records.get(n).cloned())
            .collect();
        let mut tables: Vec<TableDelta> = if d.adopt {
            self.store.parts_of(&from.node)
        } else {
            Vec::new()
        };
        let mut filled = Vec::new();
        for w in d.wants {
            if !self.store.tables.contains_key(&w.net) {
                continue;
            }
            let owners: Vec<OwnerDelta> = match &w.owner {
                Some(o) => self
                    .store
                    .delta_for(&w.net, o, w.since)
                    .into_iter()
                    .collect(),
                None => {
                    filled.push(w.net.clone());
                    let t = &self.store.tables[&w.net];
                    t.owners.keys().filter_map(|o| t.delta(o, 0)).collect()
                }
            };
            if owners.is_empty() {
                continue;
            }
            match tables.iter_mut().find(|t| t.net == w.net) {
                Some(t) => t.owners.extend(owners),
                None => tables.push(TableDelta { net: w.net, owners }),
            }
        }
        if records.is_empty() && tables.is_empty() && filled.is_empty() {
            return;
        }
        let base = Delta {
            records,
            ..Delta::default()
        };
        for d in split_delta(base, tables, filled) {
            out.sends.push((from.addr, self.message(Body::Delta(d))));
        }
    }

    fn on_push(&mut self, from: &Id, p: Push, out: &mut Out) {
        let exclude = vec![from.node.clone(), p.origin.clone()];
        let mut new_records = Vec::new();
        for r in p.records {
            if self.store.merge_record(r.clone(), &mut out.eff) {
                new_records.push(r);
            }
        }
        if !new_records.is_empty() {
            out.eff.pushes.push(PushJob {
                net: None,
                records: new_records,
                deltas: vec![],
                exclude: exclude.clone(),
                origin: p.origin.clone(),
            });
        }
        for td in p.tables {
            let mut new = Vec::new();
            for od in td.owners {
                if self.store.merge_delta(&td.net, &od, &mut out.eff) {
                    new.push(od);
                }
            }
            self.store.settle_fill(&td.net);
            if !new.is_empty() {
                out.eff.pushes.push(PushJob {
                    net: Some(td.net),
                    records: vec![],
                    deltas: new,
                    exclude: exclude.clone(),
                    origin: p.origin.clone(),
                });
            }
        }
    }

    /// While adopting, asks every live peer not asked yet for the entries it holds of ours.
    pub fn ask_for_adoption(&mut self, out: &mut Out) {
        if !self.store.adopting() {
            self.asked.clear();
            return;
        }
        for p in self.reachable_peers() {
            if self.asked.insert(p.clone())
                && let Some(addr) = self.peer_addr(&p)
            {
                let d = Delta {
                    adopt: true,
                    ..Delta::default()
                };
                out.sends.push((addr, self.message(Body::Delta(d))));
            }
        }
    }

    /// Asks live holders of newly held networks for their whole tables. With no live holder
    /// known, the (empty) table counts as fetched once this node knows every node's record (a
    /// peer's records digest matched ours) and has heard of every holder from SWIM (see
    /// [`State::awaits_holders`]), or has no peer at all; until then it waits, and
    /// [`State::tick`] asks again.
    /// Whether `net` has holders whose record this node has but SWIM has not listed yet, and
    /// the table has been held for less than a failure timeout. A restarted node learns the
    /// records from one peer's digest, often before SWIM's join has listed the other nodes;
    /// counting the table as fetched then would hand the executor a table without the holders'
    /// endpoints, and it would remove their peers from the data plane (connections to them
    /// drop) until gossip filled them in. A live holder is listed within a probe round; one
    /// SWIM never lists (down since long before this node started) is waited for one failure
    /// timeout.
    pub(crate) fn awaits_holders(&self, net: &str) -> bool {
        let grace = self.timings.failure_timeout.as_micros() as u64;
        let young = self
            .store
            .tables
            .get(net)
            .is_some_and(|t| crate::now_us().saturating_sub(t.since_us) < grace);
        young
            && self
                .store
                .holders(net)
                .iter()
                .any(|n| !self.members.contains_key(n))
    }

    pub fn fetch(&mut self, nets: Vec<String>, out: &mut Out) {
        for net in nets {
            if !self.store.tables.contains_key(&net) {
                continue;
            }
            let mut holders = self.reachable_holders(&net);
            if holders.is_empty() {
                if !self.has_peers() || (self.records_settled && !self.awaits_holders(&net)) {
                    self.store.mark_synced(&net);
                }
                continue;
            }
            use rand::seq::SliceRandom;
            holders.shuffle(&mut self.rng);
            for h in holders.into_iter().take(2) {
                if let Some(addr) = self.peer_addr(&h) {
                    let d = Delta {
                        wants: vec![Want {
                            net: net.clone(),
                            owner: None,
                            since: 0,
                        }],
                        ..Delta::default()
                    };
                    out.sends.push((addr, self.message(Body::Delta(d))));
                }
            }
        }
    }
}

/// Cuts an owner's delta into pieces of about `budget` bytes, each a contiguous version range
/// (so each piece is valid on its own).
pub fn split_owner(d: OwnerDelta, budget: usize) -> Vec<OwnerDelta> {
    let size = Store::wire_items(&d.items);
    if size <= budget {
        return vec![d];
    }
    let mut pieces = Vec::new();
    let mut since = d.since;
    let mut cur = Vec::new();
    let mut cur_size = 0;
    let n = d.items.len();
    for (k, item) in d.items.into_iter().enumerate() {
        let s = Store::wire_items(std::slice::from_ref(&item));
        let version = item.version;
        cur.push(item);
        cur_size += s;
        if cur_size >= budget && k + 1 < n {
            pieces.push(OwnerDelta {
                owner: d.owner.clone(),
                since,
                max: version,
                items: std::mem::take(&mut cur),
            });
            since = version;
            cur_size = 0;
        }
    }
    pieces.push(OwnerDelta {
        owner: d.owner,
        since,
        max: d.max,
        items: cur,
    });
    pieces
}

/// Packs table deltas into as many messages as needed (the first also carries `base`);
/// `filled` networks are named in the message that carries their last piece.
pub fn split_delta(base: Delta, tables: Vec<TableDelta>, filled: Vec<String>) -> Vec<Delta> {
    let mut msgs = vec![base];
    let mut size = 0;
    let mut last_of: HashMap<String, usize> = HashMap::new();
    for td in tables {
        for od in td.owners {
            for piece in split_owner(od, MESSAGE_BUDGET) {
                let s = Store::wire_items(&piece.items) + 64;
                if size + s > MESSAGE_BUDGET && size > 0 {
                    msgs.push(Delta::default());
                    size = 0;
                }
                size += s;
                let cur = msgs.last_mut().expect("one message");
                match cur.tables.iter_mut().find(|t| t.net == td.net) {
                    Some(t) => t.owners.push(piece),
                    None => cur.tables.push(TableDelta {
                        net: td.net.clone(),
                        owners: vec![piece],
                    }),
                }
                last_of.insert(td.net.clone(), msgs.len() - 1);
            }
        }
    }
    for net in filled {
        let i = last_of.get(&net).copied().unwrap_or(msgs.len() - 1);
        msgs[i].filled.push(net);
    }
    msgs
}

/// Packs a push job into push messages.
pub fn split_push(origin: Arc<str>, records: Vec<Record>, tables: Vec<TableDelta>) -> Vec<Push> {
    let base = Delta {
        records,
        ..Delta::default()
    };
    split_delta(base, tables, Vec::new())
        .into_iter()
        .map(|d| Push {
            origin: origin.clone(),
            records: d.records,
            tables: d.tables,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{EpValue, WireItem};
    use foca::State as SwimState;

    fn item(v: u64) -> WireItem {
        WireItem {
            id: format!("{v:08}"),
            version: v,
            value: Some(EpValue {
                ip: "10.0.0.1".parse().unwrap(),
                mac: [0; 6],
                task: "t".repeat(100),
                service: String::new(),
                name: String::new(),
                aliases: vec![],
                disabled: false,
            }),
        }
    }

    #[test]
    fn pieces_are_contiguous_and_complete() {
        let d = OwnerDelta {
            owner: "a".into(),
            since: 3,
            max: 5000,
            items: (4..=2000).map(item).collect(),
        };
        let pieces = split_owner(d, 10_000);
        assert!(pieces.len() > 10);
        assert_eq!(pieces[0].since, 3);
        assert_eq!(pieces.last().unwrap().max, 5000);
        for w in pieces.windows(2) {
            assert_eq!(w[0].max, w[1].since);
        }
        assert_eq!(pieces.iter().map(|p| p.items.len()).sum::<usize>(), 1997);
        let msgs = split_delta(
            Delta::default(),
            vec![TableDelta {
                net: "n".into(),
                owners: pieces,
            }],
            vec!["n".into()],
        );
        assert!(msgs.len() > 2);
        assert!(msgs.last().unwrap().filled == ["n"]);
        assert!(msgs[..msgs.len() - 1].iter().all(|m| m.filled.is_empty()));
    }

    fn id(node: &str, last: u8) -> Id {
        Id {
            node: node.into(),
            generation: 1,
            bump: 0,
            addr: format!("198.18.0.{last}:7946").parse().unwrap(),
        }
    }

    /// A restarted node1 whose records have settled, holding net1, which node2's record says
    /// node2 holds too.
    fn restarted() -> State {
        let mut st = State::new(
            id("node1", 1),
            1,
            crate::Timings::fast(),
            vec![id("node3", 3).addr],
            1400,
            9,
        );
        let two = id("node2", 2);
        st.store.records.insert(
            two.node.clone(),
            crate::codec::Record {
                node: two.node.clone(),
                generation: 1,
                version: 1,
                addr: two.addr,
                vtep: None,
                networks: vec![crate::codec::NetInterest {
                    net: "net1".into(),
                    publishes: true,
                }],
                left: false,
                floor: 0,
            },
        );
        st.records_settled = true;
        let _ = st.store.subscribe("net1");
        st
    }

    fn wants_sent_to(out: &Out, to: &Id) -> bool {
        out.sends.iter().any(|(a, m)| {
            *a == to.addr
                && matches!(&m.body, Body::Delta(d) if d.wants.iter().any(|w| w.net == "net1"))
        })
    }

    #[test]
    fn a_holder_swim_has_not_listed_yet_is_waited_for() {
        let mut st = restarted();
        let two = id("node2", 2);
        let mut out = Out::default();
        st.fetch(vec!["net1".into()], &mut out);
        assert!(
            !st.store.tables["net1"].synced,
            "no table before node2 answers"
        );
        assert!(out.sends.is_empty());
        // SWIM lists node2: the next round asks it for the table.
        st.members
            .insert(two.node.clone(), (two.clone(), SwimState::Alive));
        let mut out = Out::default();
        st.fetch(st.store.unsynced(), &mut out);
        assert!(wants_sent_to(&out, &two));
        assert!(!st.store.tables["net1"].synced);
    }

    #[test]
    fn a_holder_known_down_or_never_listed_is_not_waited_for() {
        // SWIM says node2 is down: it cannot answer, the table counts as fetched.
        let mut st = restarted();
        let two = id("node2", 2);
        st.members
            .insert(two.node.clone(), (two.clone(), SwimState::Down));
        st.fetch(vec!["net1".into()], &mut Out::default());
        assert!(st.store.tables["net1"].synced);
        // Never listed: waited for one failure timeout only.
        let mut st = restarted();
        let grace = crate::Timings::fast().failure_timeout.as_micros() as u64;
        st.store.tables.get_mut("net1").unwrap().since_us -= grace + 1;
        st.fetch(vec!["net1".into()], &mut Out::default());
        assert!(st.store.tables["net1"].synced);
    }
}
