//! What the dispatcher sends a node over its session: everything the node's executor needs to run
//! its tasks and serve its networks, and nothing about other nodes' tasks (those come by gossip).
//! A session starts with the whole set ([`Assignments`]) and then sends only what changed
//! ([`AssignmentsDelta`]), so the work of a change is that change, not the node's whole set.

use serde::{Deserialize, Serialize};

use crate::cluster::EncryptionKey;
use crate::task::NetworkAttachment;
use crate::{Network, Service, Task};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    /// Position in the session's sequence: the whole set is revision 1 of a session, each delta
    /// the next.
    pub revision: u64,
    /// Every task placed on the node, whatever its desired state (the executor stops those
    /// whose desired state is past running and removes those no longer listed).
    pub tasks: Vec<Task>,
    /// The networks those tasks attach to, with their allocations.
    pub networks: Vec<Network>,
    /// Every service attached to those networks (names, endpoint modes, VIPs, aliases: what the
    /// node's DNS and load balancer serve), and the services of the node's tasks.
    pub services: Vec<Service>,
    /// The cluster's VXLAN port.
    pub data_path_port: u16,
    /// The cluster's gossip keys (subsystem "gossip").
    pub gossip_keys: Vec<EncryptionKey>,
    /// The data-path (IPsec) keys, only while the node has a task on an encrypted network.
    #[serde(default)]
    pub ipsec_keys: Vec<EncryptionKey>,
    /// This node's own address (load-balancer endpoint) on each of those networks.
    #[serde(default)]
    pub attachments: Vec<NetworkAttachment>,
    /// Every node of the cluster: id and whether the leader has marked it down (its tasks are
    /// then rescheduled elsewhere). An endpoint whose owner is not listed belongs to a removed
    /// node.
    #[serde(default)]
    pub nodes: Vec<(String, bool)>,
}

/// What changed in a node's assignments since the previous revision: objects put (created or
/// changed, whole) and ids removed; `None` leaves a field as it was.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AssignmentsDelta {
    /// The revision this delta makes; it applies to `revision - 1`.
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<Task>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_tasks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_networks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_services: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_path_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip_keys: Option<Vec<EncryptionKey>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipsec_keys: Option<Vec<EncryptionKey>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<NetworkAttachment>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<(String, bool)>>,
}

impl AssignmentsDelta {
    pub fn is_empty(&self) -> bool {
        let AssignmentsDelta {
            revision: _,
            tasks,
            removed_tasks,
            networks,
            removed_networks,
            services,
            removed_services,
            data_path_port,
            gossip_keys,
            ipsec_keys,
            attachments,
            nodes,
        } = self;
        tasks.is_empty()
            && removed_tasks.is_empty()
            && networks.is_empty()
            && removed_networks.is_empty()
            && services.is_empty()
            && removed_services.is_empty()
            && data_path_port.is_none()
            && gossip_keys.is_none()
            && ipsec_keys.is_none()
            && attachments.is_none()
            && nodes.is_none()
    }
}

fn put<T: Clone>(list: &mut Vec<T>, items: &[T], id: impl Fn(&T) -> &str) {
    for item in items {
        match list.iter_mut().find(|x| id(x) == id(item)) {
            Some(slot) => *slot = item.clone(),
            None => list.push(item.clone()),
        }
    }
}

fn remove<T>(list: &mut Vec<T>, ids: &[String], id: impl Fn(&T) -> &str) {
    if !ids.is_empty() {
        list.retain(|x| !ids.iter().any(|r| r == id(x)));
    }
}

impl Assignments {
    /// Applies a delta. Refused (false, nothing changed) unless it follows this revision.
    pub fn apply(&mut self, d: &AssignmentsDelta) -> bool {
        if d.revision != self.revision + 1 {
            return false;
        }
        remove(&mut self.tasks, &d.removed_tasks, |t| &t.meta.id);
        put(&mut self.tasks, &d.tasks, |t| &t.meta.id);
        remove(&mut self.networks, &d.removed_networks, |n| &n.meta.id);
        put(&mut self.networks, &d.networks, |n| &n.meta.id);
        remove(&mut self.services, &d.removed_services, |s| &s.meta.id);
        put(&mut self.services, &d.services, |s| &s.meta.id);
        if let Some(p) = d.data_path_port {
            self.data_path_port = p;
        }
        if let Some(k) = &d.gossip_keys {
            self.gossip_keys = k.clone();
        }
        if let Some(k) = &d.ipsec_keys {
            self.ipsec_keys = k.clone();
        }
        if let Some(a) = &d.attachments {
            self.attachments = a.clone();
        }
        if let Some(n) = &d.nodes {
            self.nodes = n.clone();
        }
        self.revision = d.revision;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Meta;
    use crate::task::{TaskState, TaskStatus};

    fn task(id: &str, state: TaskState) -> Task {
        Task {
            meta: Meta::with_id(id.into()),
            service_id: "s".into(),
            slot: 1,
            node_id: Some("n".into()),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state,
                timestamp: chrono::Utc::now(),
                message: String::new(),
                err: None,
                exit_code: None,
            },
            spec: Default::default(),
            networks: vec![],
        }
    }

    #[test]
    fn deltas_apply_in_order_only() {
        let mut a = Assignments {
            revision: 1,
            tasks: vec![task("a", TaskState::Running), task("b", TaskState::Running)],
            ..Default::default()
        };
        let d = AssignmentsDelta {
            revision: 2,
            tasks: vec![task("b", TaskState::Failed), task("c", TaskState::New)],
            removed_tasks: vec!["a".into()],
            data_path_port: Some(5789),
            ..Default::default()
        };
        assert!(!d.is_empty());
        let mut skipped = d.clone();
        skipped.revision = 3;
        assert!(!a.apply(&skipped), "a gap is refused");
        assert_eq!(a.revision, 1);
        assert!(a.apply(&d));
        let ids: Vec<(&str, TaskState)> = a
            .tasks
            .iter()
            .map(|t| (t.meta.id.as_str(), t.status.state))
            .collect();
        assert_eq!(ids, [("b", TaskState::Failed), ("c", TaskState::New)]);
        assert_eq!((a.revision, a.data_path_port), (2, 5789));
        assert!(!a.apply(&d), "the same delta twice is refused");
    }
}
