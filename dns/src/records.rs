//! The records a node serves: networks, the services attached to them and their running tasks,
//! kept up to date by deltas ([`Change`]) at a cost proportional to the change, with indexes by
//! name and by address. Pure data: no I/O, no clock. Lookups are in `lookup.rs`.

use std::collections::HashMap;
use std::net::IpAddr;

use slab::Slab;

use crate::ids::Ids;

/// One change to the records. The first batch (or a resync) gives everything; later batches
/// only what changed. Identifiers are the swarm's (network, service and task ids). Names are
/// matched case-insensitively; their original spelling is kept for PTR answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A network the node's tasks are attached to (added, or renamed).
    PutNetwork {
        id: String,
        name: String,
    },
    /// A network and everything in it.
    RemoveNetwork {
        id: String,
    },
    /// A service attached to `network` (added or changed). `vip: None` = endpoint mode dnsrr.
    /// `aliases`: the service's aliases on that network (`--network name=NET,alias=A`).
    PutService {
        network: String,
        id: String,
        name: String,
        vip: Option<IpAddr>,
        aliases: Vec<String>,
    },
    RemoveService {
        network: String,
        id: String,
    },
    /// A running (or enabled) task's endpoint on `network` (added or changed). `name` is the
    /// task's name as swarmkit forms it: `SERVICE.SLOT.TASKID` for replicated services,
    /// `SERVICE.NODEID.TASKID` for global ones (see [`task_name`]); the name without its
    /// trailing `.TASKID` (`SERVICE.SLOT`) resolves too. `aliases`: names of this task alone.
    /// Only tasks that should be answered are put; a stopped task is removed.
    PutTask {
        network: String,
        id: String,
        service: String,
        addr: IpAddr,
        name: String,
        aliases: Vec<String>,
    },
    RemoveTask {
        network: String,
        id: String,
    },
}

/// The task name swarmkit gives a task: `SERVICE.SLOT.TASKID` (replicated: `instance` is the
/// slot number) or `SERVICE.NODEID.TASKID` (global: `instance` is the node id).
pub fn task_name(service: &str, instance: &str, task_id: &str) -> String {
    format!("{service}.{instance}.{task_id}")
}

/// TTL of answers that carry a service VIP (they do not change while the service exists).
pub const VIP_TTL: u32 = 600;
/// TTL of answers that carry task addresses (tasks come and go).
pub const TASK_TTL: u32 = 0;

/// Every record of the node, per network.
#[derive(Debug, Default)]
pub struct Records {
    pub(crate) networks: HashMap<Box<str>, Network>,
}

#[derive(Debug)]
pub(crate) struct Network {
    /// The network's name as given (for PTR answers and listings).
    pub(crate) name: Box<str>,
    /// The lowercase name, compared with the last labels of a qualified query.
    pub(crate) key: Box<str>,
    pub(crate) services: Slab<Service>,
    service_ids: HashMap<Box<str>, usize>,
    pub(crate) tasks: Slab<Task>,
    task_ids: HashMap<Box<str>, usize>,
    /// Lowercase name -> what it resolves to.
    pub(crate) names: HashMap<Box<str>, Targets>,
    /// Address -> what its PTR names.
    pub(crate) ptrs: HashMap<IpAddr, Targets>,
}

/// The records one name (or one address) points at.
#[derive(Debug, Default, Clone)]
pub(crate) struct Targets {
    pub(crate) services: Ids,
    pub(crate) tasks: Ids,
}

impl Targets {
    fn is_empty(&self) -> bool {
        self.services.is_empty() && self.tasks.is_empty()
    }
}

/// A service as seen on one network. It exists while its definition or any of its tasks is
/// known (tasks may arrive before their service).
#[derive(Debug)]
pub(crate) struct Service {
    id: Box<str>,
    pub(crate) def: Option<ServiceDef>,
    /// The service's running tasks on this network.
    pub(crate) tasks: Ids,
}

#[derive(Debug)]
pub(crate) struct ServiceDef {
    pub(crate) name: Box<str>,
    pub(crate) vip: Option<IpAddr>,
    pub(crate) aliases: Box<[Box<str>]>,
}

#[derive(Debug)]
pub(crate) struct Task {
    id: Box<str>,
    service: usize,
    pub(crate) addr: IpAddr,
    pub(crate) name: Box<str>,
    pub(crate) aliases: Box<[Box<str>]>,
}

/// Lowercases a name and drops one trailing dot: the form names are indexed and looked up in.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

fn boxed(list: Vec<String>) -> Box<[Box<str>]> {
    list.into_iter()
        .filter(|a| !normalize(a).is_empty())
        .map(String::into_boxed_str)
        .collect()
}

impl Task {
    /// The names this task answers to, lowercase: its name, its name without `.TASKID`, its
    /// aliases.
    fn keys(&self) -> impl Iterator<Item = String> + '_ {
        let short = self
            .name
            .strip_suffix(&*self.id)
            .and_then(|s| s.strip_suffix('.'))
            .filter(|s| !s.is_empty());
        std::iter::once(&*self.name)
            .chain(short)
            .chain(self.aliases.iter().map(|a| &**a))
            .map(normalize)
            .filter(|k| !k.is_empty())
    }
}

impl ServiceDef {
    fn keys(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(&*self.name)
            .chain(self.aliases.iter().map(|a| &**a))
            .map(normalize)
            .filter(|k| !k.is_empty())
    }
}

impl Network {
    fn new(name: &str) -> Network {
        Network {
            name: name.into(),
            key: normalize(name).into(),
            services: Slab::new(),
            service_ids: HashMap::new(),
            tasks: Slab::new(),
            task_ids: HashMap::new(),
            names: HashMap::new(),
            ptrs: HashMap::new(),
        }
    }

    fn link_name(&mut self, key: String, f: impl FnOnce(&mut Targets)) {
        f(self.names.entry(key.into_boxed_str()).or_default());
    }

    fn unlink_name(&mut self, key: &str, f: impl FnOnce(&mut Targets)) {
        if let Some(t) = self.names.get_mut(key) {
            f(t);
            if t.is_empty() {
                self.names.remove(key);
            }
        }
    }

    fn unlink_ptr(&mut self, addr: IpAddr, f: impl FnOnce(&mut Targets)) {
        if let Some(t) = self.ptrs.get_mut(&addr) {
            f(t);
            if t.is_empty() {
                self.ptrs.remove(&addr);
            }
        }
    }

    /// The service slot for `id`, created (without definition) if unknown.
    fn service_slot(&mut self, id: &str) -> usize {
        if let Some(&k) = self.service_ids.get(id) {
            return k;
        }
        let k = self.services.insert(Service {
            id: id.into(),
            def: None,
            tasks: Ids::default(),
        });
        self.service_ids.insert(id.into(), k);
        k
    }

    /// Drops a service slot that has neither a definition nor tasks.
    fn gc_service(&mut self, k: usize) {
        let Some(s) = self.services.get(k) else {
            return;
        };
        if s.def.is_none() && s.tasks.is_empty() {
            let s = self.services.remove(k);
            self.service_ids.remove(&s.id);
        }
    }

    fn put_service(&mut self, id: &str, def: ServiceDef) {
        let k = self.service_slot(id);
        self.unset_service_def(k);
        for key in def.keys() {
            self.link_name(key, |t| t.services.insert(k));
        }
        if let Some(vip) = def.vip {
            self.ptrs.entry(vip).or_default().services.insert(k);
        }
        if let Some(s) = self.services.get_mut(k) {
            s.def = Some(def);
        }
    }

    /// Removes a service's definition and the names and PTR it brought.
    fn unset_service_def(&mut self, k: usize) {
        let Some(def) = self.services.get_mut(k).and_then(|s| s.def.take()) else {
            return;
        };
        for key in def.keys() {
            self.unlink_name(&key, |t| t.services.remove(k));
        }
        if let Some(vip) = def.vip {
            self.unlink_ptr(vip, |t| t.services.remove(k));
        }
    }

    fn remove_service(&mut self, id: &str) {
        if let Some(&k) = self.service_ids.get(id) {
            self.unset_service_def(k);
            self.gc_service(k);
        }
    }

    fn put_task(
        &mut self,
        id: &str,
        service: &str,
        addr: IpAddr,
        name: String,
        aliases: Vec<String>,
    ) {
        self.remove_task(id);
        let s = self.service_slot(service);
        let task = Task {
            id: id.into(),
            service: s,
            addr,
            name: name.into_boxed_str(),
            aliases: boxed(aliases),
        };
        let keys: Vec<String> = task.keys().collect();
        let k = self.tasks.insert(task);
        self.task_ids.insert(id.into(), k);
        for key in keys {
            self.link_name(key, |t| t.tasks.insert(k));
        }
        self.ptrs.entry(addr).or_default().tasks.insert(k);
        if let Some(svc) = self.services.get_mut(s) {
            svc.tasks.insert(k);
        }
    }

    fn remove_task(&mut self, id: &str) {
        let Some(k) = self.task_ids.remove(id) else {
            return;
        };
        if !self.tasks.contains(k) {
            return;
        }
        let task = self.tasks.remove(k);
        for key in task.keys() {
            self.unlink_name(&key, |t| t.tasks.remove(k));
        }
        self.unlink_ptr(task.addr, |t| t.tasks.remove(k));
        if let Some(svc) = self.services.get_mut(task.service) {
            svc.tasks.remove(k);
        }
        self.gc_service(task.service);
    }
}

impl Records {
    pub fn new() -> Records {
        Records::default()
    }

    /// Applies changes in order. Each costs time proportional to its own size (its names), not
    /// to the number of records; removing a network costs what the network holds.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            self.apply_one(change);
        }
    }

    /// The network `id`, created if unknown (a service or task may arrive before its network;
    /// it is named after its id until its `PutNetwork`).
    fn network(&mut self, id: String) -> &mut Network {
        self.networks
            .entry(id.into_boxed_str())
            .or_insert_with_key(|id| Network::new(id))
    }

    fn apply_one(&mut self, change: Change) {
        match change {
            Change::PutNetwork { id, name } => {
                let net = self.network(id);
                net.key = normalize(&name).into();
                net.name = name.into();
            }
            Change::RemoveNetwork { id } => {
                self.networks.remove(id.as_str());
            }
            Change::PutService {
                network,
                id,
                name,
                vip,
                aliases,
            } => {
                let def = ServiceDef {
                    name: name.into(),
                    vip,
                    aliases: boxed(aliases),
                };
                self.network(network).put_service(&id, def);
            }
            Change::RemoveService { network, id } => {
                if let Some(net) = self.networks.get_mut(network.as_str()) {
                    net.remove_service(&id);
                }
            }
            Change::PutTask {
                network,
                id,
                service,
                addr,
                name,
                aliases,
            } => self
                .network(network)
                .put_task(&id, &service, addr, name, aliases),
            Change::RemoveTask { network, id } => {
                if let Some(net) = self.networks.get_mut(network.as_str()) {
                    net.remove_task(&id);
                }
            }
        }
    }

    /// Number of (networks, services, tasks) held, for logs and memory accounting.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.networks.values().fold((0, 0, 0), |(n, s, t), net| {
            (n + 1, s + net.services.len(), t + net.tasks.len())
        })
    }

    /// Checks every index against the records (tests): each name and PTR points only at live
    /// records that carry that name or address, and every record is indexed.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        for (nid, net) in &self.networks {
            let mut want: HashMap<String, (Vec<usize>, Vec<usize>)> = HashMap::new();
            let mut want_ptr: HashMap<IpAddr, (Vec<usize>, Vec<usize>)> = HashMap::new();
            for (k, s) in &net.services {
                assert_eq!(
                    net.service_ids.get(&s.id),
                    Some(&k),
                    "{nid}: service id index"
                );
                assert!(
                    s.def.is_some() || !s.tasks.is_empty(),
                    "{nid}: empty service kept"
                );
                if let Some(def) = &s.def {
                    for key in def.keys() {
                        want.entry(key).or_default().0.push(k);
                    }
                    if let Some(vip) = def.vip {
                        want_ptr.entry(vip).or_default().0.push(k);
                    }
                }
                for t in s.tasks.iter() {
                    assert_eq!(net.tasks[t].service, k, "{nid}: task under wrong service");
                }
            }
            for (k, t) in &net.tasks {
                assert_eq!(net.task_ids.get(&t.id), Some(&k), "{nid}: task id index");
                assert!(net.services[t.service].tasks.iter().any(|x| x == k));
                for key in t.keys() {
                    want.entry(key).or_default().1.push(k);
                }
                want_ptr.entry(t.addr).or_default().1.push(k);
            }
            assert_eq!(net.service_ids.len(), net.services.len());
            assert_eq!(net.task_ids.len(), net.tasks.len());
            let norm = |ids: &Ids| {
                let mut v: Vec<usize> = ids.iter().collect();
                v.sort();
                v
            };
            let sorted = |mut v: Vec<usize>| {
                v.sort();
                v.dedup();
                v
            };
            assert_eq!(net.names.len(), want.len(), "{nid}: name index size");
            for (key, (s, t)) in want {
                let got = net.names.get(key.as_str()).expect("name indexed");
                assert_eq!(norm(&got.services), sorted(s), "{nid}: {key} services");
                assert_eq!(norm(&got.tasks), sorted(t), "{nid}: {key} tasks");
            }
            assert_eq!(net.ptrs.len(), want_ptr.len(), "{nid}: ptr index size");
            for (addr, (s, t)) in want_ptr {
                let got = net.ptrs.get(&addr).expect("ptr indexed");
                assert_eq!(norm(&got.services), sorted(s), "{nid}: {addr} services");
                assert_eq!(norm(&got.tasks), sorted(t), "{nid}: {addr} tasks");
            }
        }
    }
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
