//! The leader's orchestrator, incremental: built once from the whole state when a manager becomes
//! leader (after a read barrier), then kept in step with the store's change feed object by object
//! ([`Leader::observe`]). Each change marks what it may affect — the service of a changed task, the
//! services with tasks on a changed node, global services when nodes change — and a pass
//! ([`Leader::pass`]) decides only for those: the same rules as the full [`reconcile`](crate::reconcile),
//! run over the part of the state they concern. Work follows the change, not the cluster's size.
//!
//! The IPAM lives here too and is the one allocation path: passes allocate task and node
//! addresses from it, and the API's network and VIP allocations go through [`Leader::ipam_mut`]
//! under the same lock. What a pass or the API decided is recorded at once
//! ([`Leader::record`]), before the store confirms it, so nothing is handed out twice; if the
//! write fails, [`Leader::refresh`] puts back what the store has.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use ipam::Ipam;
use model::node::Node;
use model::service::ServiceMode;
use model::{Kind, Object, Task};

use crate::allocator::{self, update_holdings};
use crate::ports::{PortError, PublishedPorts};
use crate::scheduler::counts_as_load;
use crate::{Changes, ClusterState, Config, orchestrate, scheduler};

/// One change of the store, as the leader observes it (short-lived: moved straight into the
/// leader, so the variants' sizes do not matter).
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Observed {
    Put(Object),
    Deleted(Kind, String),
}

/// The incremental orchestrator (see the module documentation).
pub struct Leader {
    config: Config,
    state: ClusterState,
    ipam: Ipam,
    /// Ingress-mode published ports and who holds them.
    ports: PublishedPorts,
    by_service: HashMap<String, BTreeSet<String>>,
    by_node: HashMap<String, BTreeSet<String>>,
    /// Tasks counted as load per node (the scheduler's spreading).
    load: HashMap<String, usize>,
    /// Services to decide for on the next pass.
    dirty: BTreeSet<String>,
    /// Nodes whose own addresses (attachments) may need to change.
    dirty_nodes: BTreeSet<String>,
    /// Tasks of running services waiting for addresses or a node.
    unplaced: BTreeSet<String>,
    /// Set when something that could unblock them happened (addresses freed, nodes changed).
    retry_unplaced: bool,
    /// (when, service): restart delays that end.
    timers: BTreeSet<(DateTime<Utc>, String)>,
}

/// Whether two versions of an object differ in more than their bookkeeping (version, times).
fn same_content(a: &Object, b: &Object) -> bool {
    let strip = |o: &Object| {
        let mut o = o.clone();
        let m = o.meta_mut();
        m.version = 0;
        m.updated_at = m.created_at;
        o
    };
    strip(a) == strip(b)
}

/// What of a task matters for its node's own addresses.
fn attachment_key(t: &Task) -> (Option<&str>, bool, Vec<&str>) {
    (
        t.node_id.as_deref(),
        allocator::holds_addresses(t.status.state),
        t.networks.iter().map(|a| a.network_id.as_str()).collect(),
    )
}

/// What of a node matters for orchestration and scheduling.
fn scheduling_key(n: &Node) -> impl PartialEq + '_ {
    (
        n.status.state,
        n.spec.availability,
        &n.spec.labels,
        n.spec.role,
        &n.description.hostname,
    )
}

impl Leader {
    /// The orchestrator for `state` (the whole store, read after a read barrier). Everything is
    /// to be decided on the first pass.
    pub fn new(state: ClusterState, config: Config) -> Leader {
        let ipam = allocator::ipam_from_state(&state);
        let ports = PublishedPorts::from_state(&state);
        let mut l = Leader {
            config,
            state: ClusterState {
                cluster: state.cluster.clone(),
                ..Default::default()
            },
            ipam,
            ports,
            by_service: HashMap::new(),
            by_node: HashMap::new(),
            load: HashMap::new(),
            dirty: BTreeSet::new(),
            dirty_nodes: BTreeSet::new(),
            unplaced: BTreeSet::new(),
            retry_unplaced: true,
            timers: BTreeSet::new(),
        };
        l.state.nodes = state.nodes;
        l.state.networks = state.networks;
        l.state.services = state.services;
        for t in state.tasks.into_values() {
            l.index_task(None, Some(&t));
            l.state.tasks.insert(t.meta.id.clone(), t);
        }
        l.dirty.extend(l.state.services.keys().cloned());
        l.dirty.extend(l.by_service.keys().cloned());
        l.dirty_nodes.extend(l.state.nodes.keys().cloned());
        l
    }

    /// The state as this leader knows it (the store's, plus what it decided and is writing).
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The IPAM, for allocations outside passes (network create, service VIPs). Record what
    /// you allocated with [`Leader::record`] or give it back if you do not write it.
    pub fn ipam_mut(&mut self) -> (&mut Ipam, &ClusterState) {
        (&mut self.ipam, &self.state)
    }

    /// Sets a service's allocated ports from its spec (see [`PublishedPorts::allocate`]);
    /// recorded with the service.
    pub fn allocate_ports(&self, service: &mut model::Service) -> Result<(), PortError> {
        self.ports.allocate(&self.state, service)
    }

    /// The ingress-mode published ports (who holds which).
    pub fn published_ports(&self) -> &PublishedPorts {
        &self.ports
    }

    /// The earliest time a pass has something to do without any further change.
    pub fn next_timer(&self) -> Option<DateTime<Utc>> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Whether a pass has anything to decide now.
    pub fn is_idle(&self, now: DateTime<Utc>) -> bool {
        self.dirty.is_empty()
            && self.dirty_nodes.is_empty()
            && !self.retry_unplaced
            && self.next_timer().is_none_or(|t| t > now)
    }

    fn get(&self, kind: Kind, id: &str) -> Option<Object> {
        match kind {
            Kind::Cluster => self
                .state
                .cluster
                .clone()
                .filter(|c| c.meta.id == id)
                .map(Object::Cluster),
            Kind::Node => self.state.nodes.get(id).cloned().map(Object::Node),
            Kind::Network => self.state.networks.get(id).cloned().map(Object::Network),
            Kind::Service => self.state.services.get(id).cloned().map(Object::Service),
            Kind::Task => self.state.tasks.get(id).cloned().map(Object::Task),
        }
    }

    /// A change the store applied (from its change feed, in order).
    pub fn observe(&mut self, o: Observed) {
        self.change(o, true);
    }

    /// Records what was decided outside a pass (the API's creates, updates and deletes) before
    /// the store has applied it, so the next decisions build on it; what it affects is decided
    /// on the next pass.
    pub fn record(&mut self, changes: &Changes) {
        self.record_as(changes, true);
    }

    /// Records changes; `mark`: whether what they affect is to be decided again (not for a
    /// pass's own decisions, which already are the outcome).
    fn record_as(&mut self, changes: &Changes, mark: bool) {
        for o in &changes.put {
            self.change(Observed::Put(o.clone()), mark);
        }
        for (kind, id) in &changes.delete {
            self.change(Observed::Deleted(*kind, id.clone()), mark);
        }
    }

    /// After a failed write: the object as the store has it now (None = absent) replaces what
    /// was recorded, and what it affects is decided again.
    pub fn refresh(&mut self, kind: Kind, id: &str, current: Option<Object>) {
        let o = match current {
            Some(o) => Observed::Put(o),
            None => Observed::Deleted(kind, id.to_string()),
        };
        self.change(o, true);
    }

    fn change(&mut self, o: Observed, mark: bool) {
        let (kind, id, new) = match o {
            Observed::Put(o) => (o.kind(), o.id().to_string(), Some(o)),
            Observed::Deleted(k, id) => (k, id, None),
        };
        let old = self.get(kind, &id);
        let mark = mark
            && match (&old, &new) {
                (Some(a), Some(b)) => !same_content(a, b),
                (None, None) => false,
                _ => true,
            };
        if update_holdings(&mut self.ipam, old.as_ref(), new.as_ref()) {
            self.retry_unplaced = true;
        }
        match kind {
            Kind::Task => {
                let (o, n) = (
                    old.and_then(|o| Task::try_from(o).ok()),
                    new.and_then(|o| Task::try_from(o).ok()),
                );
                self.index_task(o.as_ref(), n.as_ref());
                if mark {
                    for t in o.iter().chain(n.iter()) {
                        self.dirty.insert(t.service_id.clone());
                    }
                }
                match n {
                    Some(t) => {
                        self.state.tasks.insert(id, t);
                    }
                    None => {
                        self.state.tasks.remove(&id);
                    }
                }
            }
            Kind::Service => {
                if mark {
                    self.dirty.insert(id.clone());
                }
                let (o, n) = (
                    old.and_then(|o| model::Service::try_from(o).ok()),
                    new.and_then(|o| model::Service::try_from(o).ok()),
                );
                let publishing = self.ports.any();
                self.ports.update(o.as_ref(), n.as_ref());
                if publishing != self.ports.any() {
                    // Every node gains (or loses) its ingress endpoint.
                    self.dirty_nodes.extend(self.state.nodes.keys().cloned());
                }
                match n {
                    Some(s) => {
                        self.state.services.insert(id, s);
                    }
                    None => {
                        self.state.services.remove(&id);
                    }
                }
            }
            Kind::Node => {
                let (o, n) = (
                    old.and_then(|o| Node::try_from(o).ok()),
                    new.and_then(|o| Node::try_from(o).ok()),
                );
                let relevant = match (&o, &n) {
                    (Some(a), Some(b)) => scheduling_key(a) != scheduling_key(b),
                    _ => true,
                };
                if mark && relevant {
                    self.node_changed(&id);
                }
                match n {
                    Some(n) => {
                        // New, or its attachments are not what this leader decided (its write
                        // lost to a concurrent patch, e.g. the node's session recording it
                        // ready, and the store's version was put back): decide them again.
                        let lost =
                            mark && o.as_ref().is_some_and(|o| o.attachments != n.attachments);
                        if o.is_none() || lost {
                            self.dirty_nodes.insert(id.clone());
                        }
                        self.state.nodes.insert(id, n);
                    }
                    None => {
                        self.dirty_nodes.remove(&id);
                        self.state.nodes.remove(&id);
                    }
                }
            }
            Kind::Network => {
                if mark {
                    self.retry_unplaced = true;
                }
                let n = new.and_then(|o| model::Network::try_from(o).ok());
                let was_ingress = self.state.networks.get(&id).is_some_and(|n| n.spec.ingress);
                if was_ingress || n.as_ref().is_some_and(|n| n.spec.ingress) {
                    // Every node's ingress endpoint moves with the ingress network, and the
                    // tasks of publishing services with it.
                    self.dirty_nodes.extend(self.state.nodes.keys().cloned());
                    if mark {
                        let publishing: Vec<String> = self
                            .state
                            .services
                            .values()
                            .filter(|s| s.publishes_ingress())
                            .map(|s| s.meta.id.clone())
                            .collect();
                        self.dirty.extend(publishing);
                    }
                }
                match n {
                    Some(n) => {
                        self.state.networks.insert(id, n);
                    }
                    None => {
                        self.state.networks.remove(&id);
                    }
                }
            }
            Kind::Cluster => {
                self.state.cluster = new.and_then(|o| model::Cluster::try_from(o).ok());
            }
        }
    }

    /// A node changed in a way that matters for placement: the services with tasks there, every
    /// global service and every waiting task are decided again.
    fn node_changed(&mut self, node: &str) {
        if let Some(ids) = self.by_node.get(node) {
            for id in ids {
                if let Some(t) = self.state.tasks.get(id) {
                    self.dirty.insert(t.service_id.clone());
                }
            }
        }
        for s in self.state.services.values() {
            if s.spec.mode == ServiceMode::Global {
                self.dirty.insert(s.meta.id.clone());
            }
        }
        self.retry_unplaced = true;
    }

    fn index_task(&mut self, old: Option<&Task>, new: Option<&Task>) {
        if let Some(t) = old {
            let id = &t.meta.id;
            if let Some(s) = self.by_service.get_mut(&t.service_id) {
                s.remove(id);
                if s.is_empty() {
                    self.by_service.remove(&t.service_id);
                }
            }
            if let Some(n) = &t.node_id
                && let Some(s) = self.by_node.get_mut(n)
            {
                s.remove(id);
                if s.is_empty() {
                    self.by_node.remove(n);
                }
            }
            if let Some(n) = counts_as_load(t)
                && let Some(c) = self.load.get_mut(n)
            {
                *c = c.saturating_sub(1);
            }
            self.unplaced.remove(id);
        }
        if let Some(t) = new {
            let id = t.meta.id.clone();
            self.by_service
                .entry(t.service_id.clone())
                .or_default()
                .insert(id.clone());
            if let Some(n) = &t.node_id {
                self.by_node
                    .entry(n.clone())
                    .or_default()
                    .insert(id.clone());
            }
            if let Some(n) = counts_as_load(t) {
                *self.load.entry(n.to_string()).or_default() += 1;
            }
            if t.desired_state == model::task::TaskState::Running {
                if matches!(
                    t.status.state,
                    model::task::TaskState::New | model::task::TaskState::Pending
                ) {
                    self.unplaced.insert(id);
                } else if t.status.state.is_terminal() {
                    let when = t.status.timestamp + self.config.restart_delay;
                    self.timers.insert((when, t.service_id.clone()));
                } else if t.status.state == model::task::TaskState::Running
                    && self.config.replacement_settle > chrono::Duration::zero()
                {
                    // A rolling update goes on once it has settled.
                    let when = t.status.timestamp + self.config.replacement_settle;
                    self.timers.insert((when, t.service_id.clone()));
                }
            }
        }
        let (ko, kn) = (old.map(attachment_key), new.map(attachment_key));
        if ko != kn {
            for k in ko.iter().chain(kn.iter()) {
                if let Some(n) = k.0 {
                    self.dirty_nodes.insert(n.to_string());
                }
            }
        }
    }

    /// Decides for what changed since the last pass: replicas, restarts, allocation, placement and
    /// the nodes' own addresses. Returns what to write (already recorded here).
    pub fn pass(&mut self, now: DateTime<Utc>) -> Changes {
        while let Some((when, _)) = self.timers.first() {
            if *when > now {
                break;
            }
            let (_, svc) = self.timers.pop_first().expect("first exists");
            self.dirty.insert(svc);
        }
        if std::mem::take(&mut self.retry_unplaced) {
            for id in &self.unplaced {
                if let Some(t) = self.state.tasks.get(id) {
                    self.dirty.insert(t.service_id.clone());
                }
            }
        }
        let services = std::mem::take(&mut self.dirty);
        let mut changes = Changes::default();
        if !services.is_empty() {
            changes = self.decide(&services, now);
            self.record_as(&changes, false);
        }
        let nodes = std::mem::take(&mut self.dirty_nodes);
        let mut node_changes = Changes::default();
        for id in nodes {
            let Some(node) = self.state.nodes.get(&id) else {
                continue;
            };
            let mut node = node.clone();
            let mut wanted = allocator::node_networks(
                self.by_node
                    .get(&id)
                    .into_iter()
                    .flatten()
                    .filter_map(|t| self.state.tasks.get(t)),
            );
            // With published ports, every node has an endpoint on ingress (its ingress-sbox),
            // and keeps the one it has on an ingress network being retired: its sbox balances
            // over the tasks still there until they moved.
            if self.ports.any() {
                if let Some(ingress) = allocator::ingress_network(&self.state) {
                    wanted.insert(ingress.meta.id.clone());
                }
                for a in &node.attachments {
                    if self
                        .state
                        .networks
                        .get(&a.network_id)
                        .is_some_and(|n| n.spec.ingress && n.retiring)
                    {
                        wanted.insert(a.network_id.clone());
                    }
                }
            }
            if allocator::allocate_node_attachments(&mut self.ipam, &self.state, &mut node, &wanted)
            {
                node_changes.put.push(Object::Node(node));
            }
        }
        self.record_as(&node_changes, false);
        changes.put.extend(node_changes.put);
        let retired = self.retired_networks();
        self.record_as(&retired, false);
        changes.delete.extend(retired.delete);
        changes
    }

    /// Ingress networks being retired (`ingress recreate --subnet`) that no task needs any
    /// more: none attached to them may still run (a task on a down node counts as gone).
    fn retired_networks(&self) -> Changes {
        let mut out = Changes::default();
        for n in self.state.networks.values().filter(|n| n.retiring) {
            let used = self.state.tasks.values().any(|t| {
                t.networks.iter().any(|a| a.network_id == n.meta.id)
                    && !t.status.state.is_terminal()
                    && t.node_id.as_ref().is_some_and(|id| {
                        self.state
                            .nodes
                            .get(id)
                            .is_some_and(|n| n.status.state != model::node::NodeState::Down)
                    })
            });
            if !used {
                out.delete.push((Kind::Network, n.meta.id.clone()));
            }
        }
        out
    }

    /// The full rules over the part of the state `services` concern: those services with all
    /// their tasks (also those of deleted services), every node and network.
    fn decide(&mut self, services: &BTreeSet<String>, now: DateTime<Utc>) -> Changes {
        let mut sub = ClusterState {
            cluster: self.state.cluster.clone(),
            nodes: self.state.nodes.clone(),
            networks: self.state.networks.clone(),
            ..Default::default()
        };
        for s in services {
            if let Some(svc) = self.state.services.get(s) {
                sub.services.insert(s.clone(), svc.clone());
            }
            for t in self.by_service.get(s).into_iter().flatten() {
                if let Some(task) = self.state.tasks.get(t) {
                    sub.tasks.insert(t.clone(), task.clone());
                }
            }
        }
        let before = sub.clone();
        orchestrate::run(&mut sub, &self.config, now);
        let candidates: Vec<String> = sub.tasks.keys().cloned().collect();
        allocator::allocate_tasks(&mut sub, &mut self.ipam, candidates, now);
        let mut base = self.load.clone();
        for t in before.tasks.values() {
            if let Some(n) = counts_as_load(t)
                && let Some(c) = base.get_mut(n)
            {
                *c = c.saturating_sub(1);
            }
        }
        scheduler::run(&mut sub, &base, now);
        sub.changes_since(&before)
    }
}
