//! The JSON the API answers with, shaped like the docker API's (`docker node inspect`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use model::Node;
use model::node::{Availability, NodeState, Role};
use serde::{Deserialize, Serialize};

use crate::member::Member;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    #[serde(rename = "Index")]
    pub index: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSpecView {
    #[serde(rename = "Labels")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "Role")]
    pub role: Role,
    #[serde(rename = "Availability")]
    pub availability: Availability,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Platform {
    #[serde(rename = "Architecture")]
    pub architecture: String,
    #[serde(rename = "OS")]
    pub os: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resources {
    #[serde(rename = "NanoCPUs")]
    pub nano_cpus: u64,
    #[serde(rename = "MemoryBytes")]
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Engine {
    #[serde(rename = "EngineVersion")]
    pub engine_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Description {
    #[serde(rename = "Hostname")]
    pub hostname: String,
    #[serde(rename = "Platform")]
    pub platform: Platform,
    #[serde(rename = "Resources")]
    pub resources: Resources,
    #[serde(rename = "Engine")]
    pub engine: Engine,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    #[serde(rename = "State")]
    pub state: NodeState,
    #[serde(rename = "Message", default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(rename = "Addr")]
    pub addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManagerStatusView {
    #[serde(rename = "Leader", default, skip_serializing_if = "std::ops::Not::not")]
    pub leader: bool,
    /// "reachable" or "unreachable".
    #[serde(rename = "Reachability")]
    pub reachability: String,
    #[serde(rename = "Addr")]
    pub addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Version")]
    pub version: Version,
    #[serde(rename = "CreatedAt")]
    pub created_at: DateTime<Utc>,
    #[serde(rename = "UpdatedAt")]
    pub updated_at: DateTime<Utc>,
    #[serde(rename = "Spec")]
    pub spec: NodeSpecView,
    #[serde(rename = "Description")]
    pub description: Description,
    #[serde(rename = "Status")]
    pub status: StatusView,
    #[serde(
        rename = "ManagerStatus",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub manager_status: Option<ManagerStatusView>,
}

/// A node as the manager answering sees it: manager status from its Raft metrics and probes.
pub fn node_view(member: &Member, n: &Node) -> NodeView {
    let manager_status = n
        .manager_status
        .as_ref()
        .filter(|_| n.role == Role::Manager)
        .map(|ms| {
            let store = member.manager.as_ref().map(|m| m.store.clone());
            let (leader, member_of_raft) = match &store {
                Some(s) => {
                    let (_, voters) = s.members();
                    (s.leader() == Some(ms.raft_id), voters.contains(&ms.raft_id))
                }
                None => (false, false),
            };
            let reachable = member_of_raft && (leader || member.peer_reachable(ms.raft_id));
            ManagerStatusView {
                leader,
                reachability: if reachable {
                    "reachable"
                } else {
                    "unreachable"
                }
                .into(),
                addr: ms.addr.clone(),
            }
        });
    NodeView {
        id: n.meta.id.clone(),
        version: Version {
            index: n.meta.version,
        },
        created_at: n.meta.created_at,
        updated_at: n.meta.updated_at,
        spec: NodeSpecView {
            labels: n.spec.labels.clone(),
            role: n.spec.role,
            availability: n.spec.availability,
        },
        description: Description {
            hostname: n.description.hostname.clone(),
            platform: Platform {
                architecture: n.description.architecture.clone(),
                os: n.description.os.clone(),
            },
            resources: Resources {
                nano_cpus: n.description.nano_cpus,
                memory_bytes: n.description.memory_bytes,
            },
            engine: Engine {
                engine_version: n.description.engine_version.clone(),
            },
        },
        status: StatusView {
            state: n.status.state,
            message: n.status.message.clone(),
            addr: n.status.addr.clone(),
        },
        manager_status,
    }
}

/// `GET /info`: this node's view of its swarm membership (docker info's "Swarm" section).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Info {
    #[serde(rename = "NodeID")]
    pub node_id: String,
    #[serde(rename = "NodeAddr")]
    pub node_addr: String,
    /// "inactive" or "active".
    #[serde(rename = "LocalNodeState")]
    pub local_node_state: String,
    #[serde(rename = "ControlAvailable")]
    pub control_available: bool,
    #[serde(rename = "ClusterID")]
    pub cluster_id: String,
    #[serde(rename = "IsLeader")]
    pub is_leader: bool,
    #[serde(rename = "Managers")]
    pub managers: usize,
    #[serde(rename = "ReachableManagers")]
    pub reachable_managers: usize,
    #[serde(rename = "RemoteManagers")]
    pub remote_managers: Vec<String>,
    #[serde(rename = "Hostname")]
    pub hostname: String,
    /// From the dispatcher session (0 until it delivered the cluster's settings).
    #[serde(rename = "DataPathPort")]
    pub data_path_port: u16,
    /// Mutating kernel requests this node's overlay data plane made since the agent started.
    #[serde(rename = "DataplaneWrites")]
    pub dataplane_writes: u64,
}

/// Answer of the node-changing routes: what the CLI prints, and warnings for stderr.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Done {
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Set when nothing had to change ("Node x is already a manager.").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `GET /swarm`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmView {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Version")]
    pub version: Version,
    #[serde(rename = "CreatedAt")]
    pub created_at: DateTime<Utc>,
    #[serde(rename = "UpdatedAt")]
    pub updated_at: DateTime<Utc>,
    #[serde(rename = "DefaultAddrPool")]
    pub default_addr_pool: Vec<String>,
    #[serde(rename = "SubnetSize")]
    pub subnet_size: u8,
    #[serde(rename = "DataPathPort")]
    pub data_path_port: u16,
    #[serde(rename = "HeartbeatPeriodMs")]
    pub heartbeat_period_ms: u64,
    #[serde(rename = "CACertDigest")]
    pub ca_digest: String,
}
