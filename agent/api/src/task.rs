//! `/tasks`: list with docker's filters, including the undocumented `_up-to-date` the CLI's
//! progress display uses.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use model::task::TaskState;
use serde::{Deserialize, Serialize};

use crate::service::{PortConfig, TaskSpec, task_spec};
use crate::{Invalid, Meta};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(rename = "Labels", default, with = "crate::null_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "Spec")]
    pub spec: TaskSpec,
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    /// 0 for tasks of global services.
    #[serde(rename = "Slot", default, skip_serializing_if = "is_zero")]
    pub slot: u64,
    #[serde(rename = "NodeID", default, skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    #[serde(rename = "Status")]
    pub status: TaskStatus,
    /// docker's task state words: "running", "shutdown", ...
    #[serde(rename = "DesiredState")]
    pub desired_state: TaskState,
    #[serde(
        rename = "NetworksAttachments",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub networks_attachments: Vec<NetworkAttachment>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    #[serde(rename = "Timestamp")]
    pub timestamp: DateTime<Utc>,
    #[serde(rename = "State")]
    pub state: TaskState,
    #[serde(rename = "Message", default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(rename = "Err", default, skip_serializing_if = "String::is_empty")]
    pub err: String,
    #[serde(
        rename = "ContainerStatus",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub container_status: Option<ContainerStatus>,
    #[serde(rename = "PortStatus", default)]
    pub port_status: PortStatus,
}

/// The task's process: docker's container status (no container id: tasks are processes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    #[serde(rename = "ContainerID", default)]
    pub container_id: String,
    #[serde(rename = "PID", default)]
    pub pid: i64,
    #[serde(rename = "ExitCode", default)]
    pub exit_code: i32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    #[serde(
        rename = "Ports",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub ports: Vec<PortConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    #[serde(rename = "Network")]
    pub network: AttachedNetwork,
    #[serde(
        rename = "Addresses",
        default,
        deserialize_with = "crate::null_default"
    )]
    pub addresses: Vec<String>,
}

/// docker's swarm `Network` object, as much of it as a task's attachment shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedNetwork {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Spec", default)]
    pub spec: AttachedNetworkSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedNetworkSpec {
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "Labels", default, with = "crate::null_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "Scope", default)]
    pub scope: String,
}

/// docker's `/tasks` filters (`_up-to-date` is the CLI's own).
pub const LIST_FILTERS: &[&str] = &[
    "desired-state",
    "id",
    "label",
    "name",
    "node",
    "service",
    "_up-to-date",
];

/// The desired-state filter of `service ps` (docker: running, shutdown, accepted).
pub fn desired_state_matches(filter: &str, t: TaskState) -> Result<bool, Invalid> {
    match filter {
        "running" => Ok(t == TaskState::Running),
        "shutdown" => Ok(t >= TaskState::Shutdown),
        "accepted" => Ok(t <= TaskState::Accepted),
        other => Err(Invalid::new(format!(
            "invalid desired-state filter {other:?}: use running, shutdown or accepted"
        ))),
    }
}

/// A task's name as docker shows it: service.slot, or service.nodeid for global services.
pub fn name(service_name: &str, slot: u64, node_id: &str) -> String {
    if slot > 0 {
        format!("{service_name}.{slot}")
    } else {
        format!("{service_name}.{node_id}")
    }
}

/// Whether a task runs its service's current spec (docker's `_up-to-date`): the same task
/// template, and (once it has addresses) the service's networks — plus the ingress network's
/// attachment of a service that publishes through the routing mesh.
pub fn is_up_to_date(s: &model::Service, t: &model::Task) -> bool {
    if t.service_id != s.meta.id || t.spec != s.spec.task {
        return false;
    }
    let want: BTreeSet<&str> = s.spec.networks.iter().map(|n| n.target.as_str()).collect();
    let has: BTreeSet<&str> = t.networks.iter().map(|a| a.network_id.as_str()).collect();
    let extra = has.difference(&want).count();
    let mesh = usize::from(s.publishes_ingress());
    (want.is_subset(&has) && extra <= mesh)
        || matches!(t.status.state, TaskState::New | TaskState::Pending)
}

/// A task in docker's shape; `network` looks up the networks of its attachments by id.
pub fn task<'a>(t: &model::Task, network: impl Fn(&str) -> Option<&'a model::Network>) -> Task {
    let attachments: Vec<model::service::NetworkAttachmentSpec> = t
        .networks
        .iter()
        .map(|a| model::service::NetworkAttachmentSpec {
            target: a.network_id.clone(),
            aliases: a.aliases.clone(),
        })
        .collect();
    Task {
        id: t.meta.id.clone(),
        meta: Meta::from(&t.meta),
        labels: BTreeMap::new(),
        spec: task_spec(&t.spec, &attachments),
        service_id: t.service_id.clone(),
        slot: t.slot,
        node_id: t.node_id.clone().unwrap_or_default(),
        status: TaskStatus {
            timestamp: t.status.timestamp,
            state: t.status.state,
            message: t.status.message.clone(),
            err: t.status.err.clone().unwrap_or_default(),
            container_status: t.status.exit_code.map(|exit_code| ContainerStatus {
                exit_code,
                ..Default::default()
            }),
            port_status: PortStatus::default(),
        },
        desired_state: t.desired_state,
        networks_attachments: t
            .networks
            .iter()
            .map(|a| {
                let n = network(&a.network_id);
                NetworkAttachment {
                    network: AttachedNetwork {
                        id: a.network_id.clone(),
                        spec: AttachedNetworkSpec {
                            name: n.map(|n| n.spec.name.clone()).unwrap_or_default(),
                            labels: n.map(|n| n.spec.labels.clone()).unwrap_or_default(),
                            scope: "swarm".into(),
                        },
                    },
                    addresses: a.addresses.iter().map(|a| a.to_string()).collect(),
                }
            })
            .collect(),
    }
}

/// `service ps` order: by service name, slot (global: node name), newest first within a slot.
/// `names` gives (service name, node hostname) of a task.
pub fn sort(tasks: &mut [Task], names: impl Fn(&Task) -> (String, String)) {
    tasks.sort_by(|a, b| {
        let (sa, na) = names(a);
        let (sb, nb) = names(b);
        // A global service's "slot" is its node; a replicated task's node is not part of it.
        let node = |t: &Task, n: String| {
            if t.slot == 0 {
                (n, t.node_id.clone())
            } else {
                Default::default()
            }
        };
        sa.cmp(&sb)
            .then(a.service_id.cmp(&b.service_id))
            .then(a.slot.cmp(&b.slot))
            .then(node(a, na).cmp(&node(b, nb)))
            .then(b.meta.created_at.cmp(&a.meta.created_at))
            .then(a.id.cmp(&b.id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::task::{NetworkAttachment as ModelAttachment, TaskStatus as ModelStatus};

    fn svc() -> model::Service {
        model::Service {
            meta: model::Meta::with_id("s".into()),
            spec: model::service::ServiceSpec {
                name: "web".into(),
                labels: BTreeMap::new(),
                mode: model::service::ServiceMode::Replicated { replicas: 1 },
                task: model::service::TaskTemplate {
                    image: "busybox".into(),
                    args: vec!["true".into()],
                    ..Default::default()
                },
                networks: vec![model::service::NetworkAttachmentSpec {
                    target: "n".into(),
                    aliases: vec![],
                }],
                endpoint: Default::default(),
                update: Default::default(),
            },
            virtual_ips: vec![],
            ports: vec![],
        }
    }

    fn task(s: &model::Service, slot: u64, age_s: i64) -> model::Task {
        let mut t = model::Task {
            meta: model::Meta::new(),
            service_id: s.meta.id.clone(),
            slot,
            node_id: Some("node".into()),
            desired_state: TaskState::Running,
            status: ModelStatus {
                state: TaskState::Running,
                timestamp: Utc::now(),
                message: String::new(),
                err: None,
                exit_code: None,
            },
            spec: s.spec.task.clone(),
            networks: vec![ModelAttachment {
                network_id: "n".into(),
                addresses: vec!["10.0.0.3/24".parse().unwrap()],
                aliases: vec!["www".into()],
            }],
        };
        t.meta.created_at = Utc::now() - chrono::Duration::seconds(age_s);
        t
    }

    #[test]
    fn up_to_date_follows_spec_and_networks() {
        let s = svc();
        let t = task(&s, 1, 0);
        assert!(is_up_to_date(&s, &t));
        let mut forced = s.clone();
        forced.spec.task.force_update = 1;
        assert!(!is_up_to_date(&forced, &t));
        let mut moved = s.clone();
        moved.spec.networks[0].target = "m".into();
        assert!(!is_up_to_date(&moved, &t));
        let wire = super::task(&t, |_| None);
        assert_eq!(wire.spec.networks[0].aliases, ["www"]);
        assert!(wire.spec.container_spec.is_some());
        let text = serde_json::to_string(&wire).unwrap();
        assert!(text.contains(r#""DesiredState":"running""#), "{text}");
    }

    #[test]
    fn ps_order_by_slot_then_newest_first() {
        let s = svc();
        let mut tasks: Vec<Task> = [(2, 10), (10, 1), (1, 30), (1, 5)]
            .iter()
            .map(|(slot, age)| super::task(&task(&s, *slot, *age), |_| None))
            .collect();
        sort(&mut tasks, |_| ("web".into(), "n1".into()));
        let order: Vec<u64> = tasks.iter().map(|t| t.slot).collect();
        assert_eq!(order, [1, 1, 2, 10]);
        assert!(tasks[0].meta.created_at > tasks[1].meta.created_at);
    }
}
