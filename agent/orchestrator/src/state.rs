//! The leader's view of the store and the difference between two views.

use std::collections::BTreeMap;

use model::{Cluster, Kind, Network, Node, Object, Service, Task};

/// Every stored object, by kind and id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    pub cluster: Option<Cluster>,
    pub nodes: BTreeMap<String, Node>,
    pub networks: BTreeMap<String, Network>,
    pub services: BTreeMap<String, Service>,
    pub tasks: BTreeMap<String, Task>,
}

/// What a pass decided: objects to write (create or update, with the version they were read
/// at) and objects to delete.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub put: Vec<Object>,
    pub delete: Vec<(Kind, String)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.delete.is_empty()
    }
}

impl ClusterState {
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> ClusterState {
        let mut s = ClusterState::default();
        for o in objects {
            s.insert(o);
        }
        s
    }

    /// Adds or replaces one object.
    pub fn insert(&mut self, o: Object) {
        match o {
            Object::Cluster(c) => self.cluster = Some(c),
            Object::Node(n) => {
                self.nodes.insert(n.meta.id.clone(), n);
            }
            Object::Network(n) => {
                self.networks.insert(n.meta.id.clone(), n);
            }
            Object::Service(s) => {
                self.services.insert(s.meta.id.clone(), s);
            }
            Object::Task(t) => {
                self.tasks.insert(t.meta.id.clone(), t);
            }
        }
    }

    /// Removes one object.
    pub fn remove(&mut self, kind: Kind, id: &str) {
        match kind {
            Kind::Cluster => {
                if self.cluster.as_ref().is_some_and(|c| c.meta.id == id) {
                    self.cluster = None;
                }
            }
            Kind::Node => {
                self.nodes.remove(id);
            }
            Kind::Network => {
                self.networks.remove(id);
            }
            Kind::Service => {
                self.services.remove(id);
            }
            Kind::Task => {
                self.tasks.remove(id);
            }
        }
    }

    /// Applies changes (as the store will once Raft commits them).
    pub fn apply(&mut self, changes: &Changes) {
        for o in &changes.put {
            self.insert(o.clone());
        }
        for (kind, id) in &changes.delete {
            self.remove(*kind, id);
        }
    }

    /// A network by id or by name (ids win, as docker resolves them).
    pub fn network(&self, id_or_name: &str) -> Option<&Network> {
        self.networks
            .get(id_or_name)
            .or_else(|| self.networks.values().find(|n| n.spec.name == id_or_name))
    }

    /// The objects that differ from `before` (created or changed) and those gone since.
    pub fn changes_since(&self, before: &ClusterState) -> Changes {
        let mut changes = Changes::default();
        fn diff<T: Clone + PartialEq + Into<Object>>(
            kind: Kind,
            now: &BTreeMap<String, T>,
            then: &BTreeMap<String, T>,
            out: &mut Changes,
        ) {
            for (id, o) in now {
                if then.get(id) != Some(o) {
                    out.put.push(o.clone().into());
                }
            }
            for id in then.keys() {
                if !now.contains_key(id) {
                    out.delete.push((kind, id.clone()));
                }
            }
        }
        diff(Kind::Node, &self.nodes, &before.nodes, &mut changes);
        diff(
            Kind::Network,
            &self.networks,
            &before.networks,
            &mut changes,
        );
        diff(
            Kind::Service,
            &self.services,
            &before.services,
            &mut changes,
        );
        diff(Kind::Task, &self.tasks, &before.tasks, &mut changes);
        if self.cluster != before.cluster
            && let Some(c) = &self.cluster
        {
            changes.put.push(c.clone().into());
        }
        changes
    }

    /// Tasks of a service.
    pub fn tasks_of<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.service_id == service_id)
    }
}
