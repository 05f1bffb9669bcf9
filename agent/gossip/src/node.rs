//! One node's gossip state machine: the store, SWIM, and the choice of whom to talk to. Pure
//! apart from the clock: everything it wants sent is returned in an [`Out`], which
//! [`crate::api`] seals and sends after releasing the lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foca::{Member, State as SwimState, Timer};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use tracing::debug;

use crate::codec::{Body, Message, Syn};
use crate::membership::{Id, Swim, SwimCodec, SwimOut, swim_config};
use crate::store::{Effects, Store};
use crate::{Member as PubMember, Timings};

/// What a step of the state machine asks for.
#[derive(Default)]
pub(crate) struct Out {
    pub sends: Vec<(SocketAddr, Message)>,
    pub timers: Vec<(Timer<Id>, Duration)>,
    pub eff: Effects,
}

impl Out {
    pub fn merge(&mut self, eff: Effects) {
        self.eff.pushes.extend(eff.pushes);
        self.eff.fetch.extend(eff.fetch);
        self.eff.changed |= eff.changed;
    }
}

/// Counters kept by the state machine.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct NodeCounters {
    pub dropped_foreign_cluster: u64,
    pub dropped_forgotten: u64,
    pub dropped_entries: u64,
    pub dropped_malformed: u64,
    pub syncs_started: u64,
    pub syncs_repaired: u64,
}

pub(crate) struct State {
    pub store: Store,
    swim: Swim,
    /// Our identity as SWIM knows it now (it changes when we rejoin after a partition).
    pub me: Id,
    pub cluster: u64,
    pub timings: Timings,
    /// The newest identity SWIM knows of each node, and its state.
    pub members: HashMap<Arc<str>, (Id, SwimState)>,
    pub rng: SmallRng,
    pub seeds: Vec<SocketAddr>,
    last_contact: HashMap<SocketAddr, Instant>,
    round: u64,
    net_cursor: usize,
    started: Instant,
    pub closed: bool,
    pub counters: NodeCounters,
    /// Peers asked for our previous generation's entries.
    pub asked: std::collections::HashSet<Arc<str>>,
    /// A peer's records digest matched ours once: the holders of each network are known, so a
    /// network nobody else holds can count as fetched.
    pub records_settled: bool,
}

impl State {
    pub fn new(
        me: Id,
        cluster: u64,
        timings: Timings,
        seeds: Vec<SocketAddr>,
        max_packet: usize,
        seed: u64,
    ) -> State {
        let config = swim_config(&timings, max_packet);
        let swim = Swim::new(me.clone(), config, SmallRng::seed_from_u64(seed), SwimCodec);
        let linger = (timings.gossip_interval * 20).max(Duration::from_secs(2));
        let store = Store::new(
            me.node.clone(),
            me.generation,
            me.addr,
            timings.tombstone_ttl.as_micros() as u64,
            linger.as_micros() as u64,
        );
        State {
            store,
            swim,
            me,
            cluster,
            timings,
            members: HashMap::new(),
            rng: SmallRng::seed_from_u64(seed.rotate_left(17) ^ 0x5bd1_e995),
            seeds,
            last_contact: HashMap::new(),
            round: 0,
            net_cursor: 0,
            started: Instant::now(),
            closed: false,
            counters: NodeCounters::default(),
            asked: Default::default(),
            records_settled: false,
        }
    }

    pub fn message(&self, body: Body) -> Message {
        Message {
            cluster: self.cluster,
            from: self.me.clone(),
            body,
        }
    }

    /// Runs `f` on SWIM and turns what it asked for into sends and timers.
    pub fn swim<R>(
        &mut self,
        out: &mut Out,
        f: impl FnOnce(&mut Swim, &mut SwimOut) -> Result<R, foca::Error>,
    ) -> Option<R> {
        let mut rt = SwimOut::default();
        let r = match f(&mut self.swim, &mut rt) {
            Ok(r) => Some(r),
            Err(e) => {
                match e {
                    foca::Error::Decode(_) | foca::Error::MalformedPacket => {
                        self.counters.dropped_malformed += 1
                    }
                    _ => {}
                }
                debug!(error = %e, "SWIM refused an input");
                None
            }
        };
        for (to, packet) in rt.sends {
            let msg = self.message(Body::Swim(packet));
            out.sends.push((to.addr, msg));
        }
        out.timers.extend(rt.timers);
        self.refresh_members(out);
        r
    }

    /// Brings liveness in the store in line with SWIM.
    fn refresh_members(&mut self, out: &mut Out) {
        self.me = self.swim.identity().clone();
        let now: HashMap<Arc<str>, (Id, SwimState)> = self
            .swim
            .iter_membership_state()
            .map(|m| (m.id().node.clone(), (m.id().clone(), m.state())))
            .collect();
        if now == self.members {
            return;
        }
        for (node, (_, st)) in &now {
            if self.store.set_alive(node, *st == SwimState::Alive) {
                out.eff.changed = true;
            }
        }
        for node in self.members.keys() {
            if !now.contains_key(node) && self.store.set_alive(node, false) {
                out.eff.changed = true;
            }
        }
        self.members = now;
        out.eff.changed = true;
    }

    /// A message from `from` arrived: make sure SWIM knows that identity.
    pub fn learn(&mut self, from: &Id, out: &mut Out) {
        let known = self.members.get(&from.node).map(|(id, _)| id.clone());
        match known {
            Some(k) if !from.newer_than(&k) => {}
            other => {
                let id = from.clone();
                self.swim(out, |s, rt| {
                    s.apply_many(std::iter::once(Member::alive(id.clone())), true, &mut *rt)?;
                    if other.is_none() {
                        // Ask for its view of the members.
                        s.announce(id, &mut *rt)?;
                    }
                    Ok(())
                });
            }
        }
    }

    pub fn on_timer(&mut self, t: Timer<Id>, out: &mut Out) {
        if self.closed {
            return;
        }
        self.swim(out, |s, rt| s.handle_timer(t, rt));
    }

    fn addr_of(&self, node: &str) -> Option<SocketAddr> {
        self.members
            .get(node)
            .map(|(id, _)| id.addr)
            .or_else(|| self.store.records.get(node).map(|r| r.addr))
    }

    /// Whether `node` is worth talking to: SWIM holds it alive or merely suspects it (a
    /// suspected node may well answer; its entries are flagged all the same), and it has not
    /// left.
    fn reachable(&self, node: &str) -> bool {
        node != &*self.me.node
            && self
                .members
                .get(node)
                .is_some_and(|(_, st)| *st != SwimState::Down)
            && !self.store.records.get(node).is_some_and(|r| r.left)
    }

    /// Peers alive or suspected (see [`State::reachable`]).
    pub fn reachable_peers(&self) -> Vec<Arc<str>> {
        self.members
            .keys()
            .filter(|n| self.reachable(n))
            .cloned()
            .collect()
    }

    /// Whether this node has or expects peers: a live member, another node's record, or a seed
    /// other than itself.
    pub fn has_peers(&self) -> bool {
        !self.reachable_peers().is_empty()
            || self.store.records.len() > 1
            || self.seeds.iter().any(|a| *a != self.me.addr)
    }

    /// Reachable peers holding `net`.
    pub fn reachable_holders(&self, net: &str) -> Vec<Arc<str>> {
        self.store
            .holders(net)
            .into_iter()
            .filter(|n| self.reachable(n))
            .collect()
    }

    pub fn peer_addr(&self, node: &str) -> Option<SocketAddr> {
        self.addr_of(node)
    }

    fn syn(&self, nets: &[String]) -> Message {
        self.message(Body::Syn(Syn {
            records: self.records_digest(),
            nets: nets
                .iter()
                .filter_map(|n| {
                    self.store.tables.get(n).map(|t| crate::codec::NetHash {
                        net: n.clone(),
                        hash: t.digest(),
                    })
                })
                .collect(),
        }))
    }

    /// One anti-entropy round, plus the periodic upkeep.
    pub fn tick(&mut self, out: &mut Out) {
        if self.closed {
            return;
        }
        self.round += 1;
        let alive = self.reachable_peers();
        // 1. A random live peer: records and every network both hold.
        let first = alive.choose(&mut self.rng).cloned();
        if let Some(p) = &first
            && let Some(addr) = self.addr_of(p)
        {
            let nets = self.store.shared_nets(p);
            let msg = self.syn(&nets);
            out.sends.push((addr, msg));
            self.counters.syncs_started += 1;
        }
        // 2. One of our networks in turn, with a random live peer holding it.
        let nets: Vec<String> = self.store.tables.keys().cloned().collect();
        if !nets.is_empty() {
            self.net_cursor = (self.net_cursor + 1) % nets.len();
            let net = &nets[self.net_cursor];
            let holders = self.reachable_holders(net);
            if let Some(p) = holders.choose(&mut self.rng).cloned()
                && Some(&p) != first.as_ref()
                && let Some(addr) = self.addr_of(&p)
            {
                let msg = self.syn(std::slice::from_ref(net));
                out.sends.push((addr, msg));
                self.counters.syncs_started += 1;
            }
        }
        // 3. Now and then a member not alive (a healed partition is noticed from both sides).
        let every = (self.timings.rejoin_interval.as_millis()
            / self.timings.gossip_interval.as_millis().max(1))
        .max(1) as u64;
        if self.round.is_multiple_of(every) {
            let dead: Vec<Arc<str>> = self
                .store
                .records
                .values()
                .filter(|r| r.node != self.me.node && !r.left && !self.reachable(&r.node))
                .map(|r| r.node.clone())
                .collect();
            if let Some(p) = dead.choose(&mut self.rng).cloned()
                && let Some(addr) = self.addr_of(&p)
            {
                let msg = self.syn(&[]);
                out.sends.push((addr, msg));
            }
        }
        // 4. Seeds that are not live members.
        self.contact_seeds(out);
        // 5. While adopting: every live peer, once, for our previous generation's entries.
        self.ask_for_adoption(out);
        // 6. Every probe period: tables still waiting for their first fetch ask again (holders
        // learnt since, or a holder that did not answer).
        let every = (self.timings.probe_period().as_millis()
            / self.timings.gossip_interval.as_millis().max(1))
        .max(1) as u64;
        if self.round.is_multiple_of(every) {
            let waiting = self.store.unsynced();
            if !waiting.is_empty() {
                self.fetch(waiting, out);
            }
        }
        // Upkeep. A fetch nobody answered is given up after a few failure timeouts (a slow
        // peer must not make a restarted node start from a partial table).
        let adopt_due = self.started.elapsed() >= self.timings.adopt_grace;
        let fetch_timeout = (self.timings.failure_timeout * 4).as_micros() as u64;
        let eff = self.store.upkeep(adopt_due, fetch_timeout);
        out.merge(eff);
    }

    fn contact_seeds(&mut self, out: &mut Out) {
        let live: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|(n, _)| self.store.is_alive(n))
            .map(|(_, (id, _))| id.addr)
            .collect();
        let now = Instant::now();
        let seeds = self.seeds.clone();
        self.last_contact.retain(|a, _| seeds.contains(a));
        for seed in seeds {
            if seed == self.me.addr || live.contains(&seed) {
                continue;
            }
            if self
                .last_contact
                .get(&seed)
                .is_some_and(|t| now.duration_since(*t) < self.timings.rejoin_interval)
            {
                continue;
            }
            self.last_contact.insert(seed, now);
            debug!(%seed, "contacting seed");
            let msg = self.syn(&[]);
            out.sends.push((seed, msg));
        }
    }

    /// Every known node (newest generation each), alive or not, this one included.
    pub fn members(&self) -> Vec<PubMember> {
        let mut out: std::collections::BTreeMap<String, PubMember> = Default::default();
        for r in self.store.records.values() {
            out.insert(
                r.node.to_string(),
                PubMember {
                    node_id: r.node.to_string(),
                    addr: r.addr,
                    generation: r.generation,
                    alive: self.store.is_alive(&r.node),
                    vtep: if r.left { None } else { r.vtep },
                },
            );
        }
        for (node, (id, _)) in &self.members {
            if self.store.refuses(node, id.generation) {
                continue;
            }
            let m = out.entry(node.to_string()).or_insert_with(|| PubMember {
                node_id: node.to_string(),
                addr: id.addr,
                generation: id.generation,
                alive: false,
                vtep: None,
            });
            if id.generation >= m.generation {
                m.generation = id.generation;
                m.addr = id.addr;
            }
            m.alive = self.store.is_alive(node);
        }
        out.into_values().collect()
    }

    /// Forgets a node: the store drops it, SWIM stops probing it.
    pub fn forget(&mut self, node: &str, out: &mut Out) {
        let id = self.members.get(node).map(|(id, _)| id.clone());
        let generation = id.as_ref().map(|i| i.generation).unwrap_or(0);
        let eff = self.store.forget(node, generation);
        out.merge(eff);
        if let Some(id) = id {
            self.swim(out, |s, rt| {
                s.apply_many(std::iter::once(Member::down(id)), false, rt)
            });
        }
    }

    /// Leaves: the record says so (pushed by the caller), then SWIM says goodbye.
    pub fn leave(&mut self, out: &mut Out) {
        let eff = self.store.leave();
        out.merge(eff);
        self.swim(out, |s, rt| s.leave_cluster(rt));
        self.closed = true;
    }
}
