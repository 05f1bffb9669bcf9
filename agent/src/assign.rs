//! What each node is assigned, kept on the leader from the store's change feed so that a change
//! reaches only the nodes it concerns, as a delta (DESIGN.md, "Data flow"; moby#30820 is what
//! happens otherwise).
//!
//! A node's assignments are: its tasks (any state), the networks they attach to, every service on
//! those networks (what its DNS and load balancer serve) and the services of its tasks, its own
//! addresses (node attachments), the cluster's node list (id, down) and the data-path port and
//! gossip keys. The [`Assigner`] keeps, per node, which of those it has, and for each change of the
//! store marks what a node must be sent again (`Pending`); the node's dispatcher session
//! ([`Assigner::next`]) turns that into an [`AssignmentsDelta`] with the objects as the store has
//! them then. A session starts with the whole set ([`Assigner::full`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use model::assignment::AssignmentsDelta;
use model::node::NodeState;
use model::{Assignments, Kind, Network, Node, Object, Service, Task};
use orchestrator::ClusterState;
use tokio::sync::Notify;

/// What a node must be sent again.
#[derive(Debug, Default)]
struct Pending {
    tasks: BTreeSet<String>,
    networks: BTreeSet<String>,
    services: BTreeSet<String>,
    attachments: bool,
    nodes: bool,
    cluster: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.networks.is_empty()
            && self.services.is_empty()
            && !self.attachments
            && !self.nodes
            && !self.cluster
    }
}

#[derive(Debug, Default)]
struct NodeIdx {
    tasks: BTreeSet<String>,
    /// Networks of its tasks, with how many tasks use each.
    networks: HashMap<String, usize>,
    /// Services of its tasks, with how many tasks each.
    own_services: HashMap<String, usize>,
    pending: Pending,
    notify: Arc<Notify>,
    /// The data-path keys the node has: the cluster's while it has a task on an encrypted
    /// network, none otherwise.
    ipsec_keys: Vec<model::cluster::EncryptionKey>,
}

/// The networking face of a service: what nodes that only share a network with it care about.
fn net_face(s: &Service) -> impl PartialEq + '_ {
    (
        &s.spec.name,
        &s.spec.endpoint,
        &s.virtual_ips,
        &s.spec.networks,
    )
}

#[derive(Default)]
struct Index {
    nodes: HashMap<String, NodeIdx>,
    /// Node id -> down, for every node of the cluster.
    node_list: BTreeMap<String, bool>,
    /// Network -> services attached to it.
    services_by_net: HashMap<String, BTreeSet<String>>,
    /// Network -> nodes with tasks on it.
    nodes_by_net: HashMap<String, BTreeSet<String>>,
    /// The objects of the indexes as last seen (tasks: node, networks, service; services: the
    /// networks).
    tasks: HashMap<String, (Option<String>, Vec<String>, String)>,
    services: HashMap<String, Service>,
    /// The networks each service was indexed under (its own, its VIPs', ingress when it
    /// publishes through the routing mesh).
    service_nets: HashMap<String, BTreeSet<String>>,
    /// The ingress networks (the routing mesh's: the current one, and one being retired while
    /// its tasks move).
    ingress: BTreeSet<String>,
    /// The networks of each node's own attachments (its load-balancer and ingress-sbox
    /// endpoints): a node is on them like on its tasks' networks.
    attached: HashMap<String, BTreeSet<String>>,
    cluster: Option<ClusterFace>,
}

/// What nodes get of the cluster object: data-path port, gossip keys, data-path keys.
type ClusterFace = (
    u16,
    Vec<model::cluster::EncryptionKey>,
    Vec<model::cluster::EncryptionKey>,
);

/// The leader's per-node assignment index (see the module documentation).
#[derive(Default)]
pub struct Assigner {
    index: Mutex<Index>,
    /// Set when a newer index replaces this one (the change feed lagged): sessions then start
    /// over with a full set from the new one.
    closed: std::sync::atomic::AtomicBool,
}

fn gossip_keys(c: &model::Cluster) -> Vec<model::cluster::EncryptionKey> {
    c.network_keys
        .iter()
        .filter(|k| k.subsystem == "gossip")
        .cloned()
        .collect()
}

impl Index {
    fn node(&mut self, id: &str) -> &mut NodeIdx {
        self.nodes.entry(id.to_string()).or_default()
    }

    fn wake(&self, node: &str) {
        if let Some(n) = self.nodes.get(node)
            && !n.pending.is_empty()
        {
            n.notify.notify_one();
        }
    }

    fn task(&mut self, id: &str, new: Option<&Task>) {
        let old = self.tasks.remove(id);
        let new_key: Option<(Option<String>, Vec<String>, String)> = new.map(|t| {
            (
                t.node_id.clone(),
                t.networks.iter().map(|a| a.network_id.clone()).collect(),
                t.service_id.clone(),
            )
        });
        if let Some((Some(node), nets, svc)) = &old {
            let n = self.node(node);
            n.tasks.remove(id);
            n.pending.tasks.insert(id.to_string());
            let mut left: Vec<String> = Vec::new();
            for net in nets {
                if let Some(c) = n.networks.get_mut(net) {
                    *c -= 1;
                    if *c == 0 {
                        n.networks.remove(net);
                        n.pending.networks.insert(net.clone());
                        left.push(net.clone());
                    }
                }
            }
            for net in left {
                self.left_network(node, &net);
            }
            let n = self.node(node);
            if let Some(c) = n.own_services.get_mut(svc) {
                *c -= 1;
                if *c == 0 {
                    n.own_services.remove(svc);
                    n.pending.services.insert(svc.clone());
                }
            }
            self.wake(node);
            self.prune(node);
        }
        if let Some((Some(node), nets, svc)) = &new_key {
            let n = self.node(node);
            n.tasks.insert(id.to_string());
            n.pending.tasks.insert(id.to_string());
            let mut joined: Vec<String> = Vec::new();
            for net in nets {
                let c = n.networks.entry(net.clone()).or_default();
                *c += 1;
                if *c == 1 {
                    n.pending.networks.insert(net.clone());
                    joined.push(net.clone());
                }
            }
            let c = n.own_services.entry(svc.clone()).or_default();
            *c += 1;
            if *c == 1 {
                n.pending.services.insert(svc.clone());
            }
            for net in joined {
                self.joined_network(node, &net);
            }
            self.wake(node);
        }
        if let Some(k) = new_key {
            self.tasks.insert(id.to_string(), k);
        }
    }

    /// One more user (task or node attachment) of `net` on `node`.
    fn use_network(&mut self, node: &str, net: &str) {
        let n = self.node(node);
        let c = n.networks.entry(net.to_string()).or_default();
        *c += 1;
        if *c == 1 {
            n.pending.networks.insert(net.to_string());
            self.joined_network(node, net);
        }
    }

    /// One user fewer of `net` on `node`.
    fn unuse_network(&mut self, node: &str, net: &str) {
        let n = self.node(node);
        if let Some(c) = n.networks.get_mut(net) {
            *c -= 1;
            if *c == 0 {
                n.networks.remove(net);
                n.pending.networks.insert(net.to_string());
                self.left_network(node, net);
            }
        }
    }

    fn joined_network(&mut self, node: &str, net: &str) {
        self.nodes_by_net
            .entry(net.to_string())
            .or_default()
            .insert(node.to_string());
        let services: Vec<String> = self
            .services_by_net
            .get(net)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        self.node(node).pending.services.extend(services);
    }

    fn left_network(&mut self, node: &str, net: &str) {
        if let Some(s) = self.nodes_by_net.get_mut(net) {
            s.remove(node);
            if s.is_empty() {
                self.nodes_by_net.remove(net);
            }
        }
        let services: Vec<String> = self
            .services_by_net
            .get(net)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        self.node(node).pending.services.extend(services);
    }

    fn service(&mut self, id: &str, new: Option<&Service>) {
        let old = self.services.remove(id);
        let ingress = self.ingress.clone();
        let nets = |s: &Service| -> BTreeSet<String> {
            s.spec
                .networks
                .iter()
                .map(|a| a.target.clone())
                .chain(s.virtual_ips.iter().map(|v| v.network_id.clone()))
                .chain(ingress.iter().filter(|_| s.publishes_ingress()).cloned())
                .collect()
        };
        let old_nets = self.service_nets.remove(id).unwrap_or_default();
        let new_nets = new.map(nets).unwrap_or_default();
        if new.is_some() {
            self.service_nets.insert(id.to_string(), new_nets.clone());
        }
        for net in old_nets.difference(&new_nets) {
            if let Some(s) = self.services_by_net.get_mut(net) {
                s.remove(id);
                if s.is_empty() {
                    self.services_by_net.remove(net);
                }
            }
        }
        for net in &new_nets {
            self.services_by_net
                .entry(net.clone())
                .or_default()
                .insert(id.to_string());
        }
        let face_changed = old_nets != new_nets
            || match (&old, new) {
                (Some(a), Some(b)) => net_face(a) != net_face(b) || a.ports != b.ports,
                _ => true,
            };
        let mut nodes: BTreeSet<String> = BTreeSet::new();
        if face_changed {
            for net in old_nets.union(&new_nets) {
                nodes.extend(self.nodes_by_net.get(net).into_iter().flatten().cloned());
            }
        }
        // Nodes running its tasks get every change of it.
        for (node, idx) in &self.nodes {
            if idx.own_services.contains_key(id) {
                nodes.insert(node.clone());
            }
        }
        for node in nodes {
            self.node(&node).pending.services.insert(id.to_string());
            self.wake(&node);
        }
        if let Some(s) = new {
            self.services.insert(id.to_string(), s.clone());
        }
    }

    fn network(&mut self, id: &str) {
        let nodes: Vec<String> = self
            .nodes_by_net
            .get(id)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for node in nodes {
            self.node(&node).pending.networks.insert(id.to_string());
            self.wake(&node);
        }
    }

    fn node_obj(&mut self, id: &str, new: Option<&Node>) {
        let down = new.map(|n| n.status.state == NodeState::Down);
        let before = self.node_list.get(id).copied();
        match down {
            Some(d) => {
                self.node_list.insert(id.to_string(), d);
            }
            None => {
                self.node_list.remove(id);
            }
        }
        if before != down {
            let all: Vec<String> = self.nodes.keys().cloned().collect();
            for n in all {
                self.node(&n).pending.nodes = true;
                self.wake(&n);
            }
        }
        let now: BTreeSet<String> = new
            .map(|n| n.attachments.iter().map(|a| a.network_id.clone()).collect())
            .unwrap_or_default();
        let was = self.attached.remove(id).unwrap_or_default();
        for net in now.difference(&was) {
            self.use_network(id, net);
        }
        for net in was.difference(&now) {
            self.unuse_network(id, net);
        }
        if !now.is_empty() {
            self.attached.insert(id.to_string(), now);
        }
        if new.is_none() {
            self.prune(id);
            return;
        }
        let n = self.node(id);
        n.pending.attachments = true;
        self.wake(id);
    }

    /// Forgets a node that left the cluster once nothing of it is indexed any more (its tasks
    /// are deleted after it); its session, if one is still open, is woken and finds nothing.
    fn prune(&mut self, node: &str) {
        if self.node_list.contains_key(node) {
            return;
        }
        let idle = self
            .nodes
            .get(node)
            .is_some_and(|n| n.tasks.is_empty() && n.networks.is_empty());
        if idle && let Some(n) = self.nodes.remove(node) {
            n.notify.notify_one();
        }
    }

    /// A network changed: the ingress networks' ids are followed, and the publishing services
    /// are indexed under them.
    fn network_obj(&mut self, id: &str, new: Option<&Network>) {
        let mut ingress = self.ingress.clone();
        match new {
            Some(n) if n.spec.ingress => ingress.insert(id.to_string()),
            _ => ingress.remove(id),
        };
        if ingress != self.ingress {
            self.ingress = ingress;
            let publishing: Vec<Service> = self
                .services
                .values()
                .filter(|s| s.publishes_ingress())
                .cloned()
                .collect();
            for s in publishing {
                self.service(&s.meta.id.clone(), Some(&s));
            }
        }
        self.network(id);
    }

    fn cluster(&mut self, c: Option<&model::Cluster>) {
        let now = c.map(|c| {
            let ipsec = orchestrator::keys::ipsec_keys(&c.network_keys);
            (c.data_path_port, gossip_keys(c), ipsec)
        });
        if now == self.cluster {
            return;
        }
        self.cluster = now;
        let all: Vec<String> = self.nodes.keys().cloned().collect();
        for n in all {
            self.node(&n).pending.cluster = true;
            self.wake(&n);
        }
    }

    fn observe(&mut self, o: &Object, deleted: bool) {
        let id = o.id().to_string();
        match o {
            Object::Task(t) => self.task(&id, (!deleted).then_some(t)),
            Object::Service(s) => self.service(&id, (!deleted).then_some(s)),
            Object::Network(n) => self.network_obj(&id, (!deleted).then_some(n)),
            Object::Node(n) => self.node_obj(&id, (!deleted).then_some(n)),
            Object::Cluster(c) => self.cluster((!deleted).then_some(c)),
        }
    }

    /// The services a node serves: those on its networks and those of its tasks.
    fn services_of(&self, node: &NodeIdx) -> BTreeSet<String> {
        node.networks
            .keys()
            .flat_map(|n| self.services_by_net.get(n).into_iter().flatten())
            .chain(node.own_services.keys())
            .cloned()
            .collect()
    }

    /// Whether `node` is served `service` ([`Index::services_of`] holds it), asked without
    /// listing the node's services: a change of one service costs the same with 2,000 others
    /// on the node's networks.
    fn serves(&self, node: &NodeIdx, service: &str) -> bool {
        node.own_services.contains_key(service)
            || self
                .service_nets
                .get(service)
                .is_some_and(|nets| nets.iter().any(|n| node.networks.contains_key(n)))
    }
}

/// Reads objects of one kind from the store.
fn get<T: TryFrom<Object>>(store: &store::Store, kind: Kind, id: &str) -> Option<T> {
    store
        .get(kind, id)
        .ok()
        .flatten()
        .and_then(|o| T::try_from(o).ok())
}

impl Assigner {
    /// The index of `state` (the whole store, read after a read barrier).
    pub fn new(state: &ClusterState) -> Assigner {
        let mut idx = Index::default();
        idx.cluster(state.cluster.as_ref());
        idx.ingress = state
            .networks
            .values()
            .filter(|n| n.spec.ingress)
            .map(|n| n.meta.id.clone())
            .collect();
        for n in state.nodes.values() {
            idx.node_obj(&n.meta.id, Some(n));
        }
        for s in state.services.values() {
            idx.service(&s.meta.id, Some(s));
        }
        for t in state.tasks.values() {
            idx.task(&t.meta.id, Some(t));
        }
        // Nothing is owed yet: sessions start with a full set.
        for n in idx.nodes.values_mut() {
            n.pending = Pending::default();
        }
        Assigner {
            index: Mutex::new(idx),
            closed: Default::default(),
        }
    }

    /// Marks this index replaced and wakes every session using it.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        for n in self.lock().nodes.values() {
            n.notify.notify_one();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A change the store applied (from its change feed, in order).
    pub fn observe(&self, applied: &store::Applied) {
        let mut idx = self.lock();
        match applied {
            store::Applied::Put(o) => idx.observe(o, false),
            store::Applied::Deleted(o) => idx.observe(o, true),
        }
    }

    /// Woken when node `node` has something to be sent.
    pub fn notifier(&self, node: &str) -> Arc<Notify> {
        self.lock().node(node).notify.clone()
    }

    /// A node's session ended: a node that left the cluster is forgotten.
    pub fn session_ended(&self, node: &str) {
        self.lock().prune(node);
    }

    /// How many nodes the index holds (the cluster's, and departed ones until their tasks
    /// are gone).
    pub fn tracked_nodes(&self) -> usize {
        self.lock().nodes.len()
    }

    /// The whole set for `node`, as revision 1 of a new session (and nothing pending after it).
    pub fn full(&self, store: &store::Store, node: &str) -> Option<Assignments> {
        let cluster: model::Cluster = store
            .list(Kind::Cluster)
            .ok()?
            .into_iter()
            .find_map(|o| model::Cluster::try_from(o).ok())?;
        let mut idx = self.lock();
        let services = {
            let n = idx.node(node);
            n.pending = Pending::default();
            let n = &idx.nodes[node];
            idx.services_of(n)
        };
        let n = &idx.nodes[node];
        let tasks: Vec<Task> = n
            .tasks
            .iter()
            .filter_map(|id| get(store, Kind::Task, id))
            .collect();
        let networks: Vec<Network> = n
            .networks
            .keys()
            .filter_map(|id| get(store, Kind::Network, id))
            .collect();
        let services: Vec<Service> = services
            .iter()
            .filter_map(|id| get(store, Kind::Service, id))
            .collect();
        let attachments = get::<Node>(store, Kind::Node, node)
            .map(|n| n.attachments)
            .unwrap_or_default();
        let nodes = idx.node_list.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let ipsec_keys = if networks.iter().any(|n| n.spec.encrypted) {
            orchestrator::keys::ipsec_keys(&cluster.network_keys)
        } else {
            Vec::new()
        };
        idx.node(node).ipsec_keys = ipsec_keys.clone();
        drop(idx);
        Some(Assignments {
            revision: 1,
            tasks,
            networks,
            services,
            data_path_port: cluster.data_path_port,
            gossip_keys: gossip_keys(&cluster),
            ipsec_keys,
            attachments,
            nodes,
        })
    }

    /// What `node` must be sent now (None if nothing), as the delta making `revision`.
    pub fn next(
        &self,
        store: &store::Store,
        node: &str,
        revision: u64,
    ) -> Option<AssignmentsDelta> {
        let mut idx = self.lock();
        // A node that left has nothing to be sent (and is not indexed again).
        let pending = std::mem::take(&mut idx.nodes.get_mut(node)?.pending);
        if pending.is_empty() {
            return None;
        }
        let n = &idx.nodes[node];
        let mut d = AssignmentsDelta {
            revision,
            ..Default::default()
        };
        for id in &pending.tasks {
            match n
                .tasks
                .contains(id)
                .then(|| get(store, Kind::Task, id))
                .flatten()
            {
                Some(t) => d.tasks.push(t),
                None => d.removed_tasks.push(id.clone()),
            }
        }
        for id in &pending.networks {
            match n
                .networks
                .contains_key(id)
                .then(|| get(store, Kind::Network, id))
                .flatten()
            {
                Some(x) => d.networks.push(x),
                None => d.removed_networks.push(id.clone()),
            }
        }
        if !pending.services.is_empty() {
            for id in &pending.services {
                match idx
                    .serves(n, id)
                    .then(|| get(store, Kind::Service, id))
                    .flatten()
                {
                    Some(x) => d.services.push(x),
                    None => d.removed_services.push(id.clone()),
                }
            }
        }
        if pending.attachments {
            d.attachments = Some(
                get::<Node>(store, Kind::Node, node)
                    .map(|n| n.attachments)
                    .unwrap_or_default(),
            );
        }
        if pending.nodes {
            d.nodes = Some(idx.node_list.iter().map(|(k, v)| (k.clone(), *v)).collect());
        }
        if pending.cluster
            && let Some((port, keys, _)) = &idx.cluster
        {
            d.data_path_port = Some(*port);
            d.gossip_keys = Some(keys.clone());
        }
        if pending.cluster || !pending.networks.is_empty() {
            // Data-path keys only while the node has a task on an encrypted network.
            let encrypted = n
                .networks
                .keys()
                .filter_map(|id| get::<Network>(store, Kind::Network, id))
                .any(|net| net.spec.encrypted);
            let want = match (&idx.cluster, encrypted) {
                (Some((_, _, keys)), true) => keys.clone(),
                _ => Vec::new(),
            };
            if want != n.ipsec_keys {
                d.ipsec_keys = Some(want.clone());
                idx.node(node).ipsec_keys = want;
            }
        }
        drop(idx);
        (!d.is_empty()).then_some(d)
    }
}

#[cfg(test)]
mod tests;
