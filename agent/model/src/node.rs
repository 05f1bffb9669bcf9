//! Node objects. Owned by the cluster control plane.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Meta;
use crate::task::NetworkAttachment;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Worker,
    Manager,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Pause,
    Drain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Unknown,
    Down,
    Ready,
    Disconnected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Desired role (`node promote/demote`, `node update --role`).
    pub role: Role,
    pub availability: Availability,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeDescription {
    pub hostname: String,
    pub os: String,
    pub architecture: String,
    pub nano_cpus: u64,
    pub memory_bytes: u64,
    pub engine_version: String,
    /// How the node balances service VIPs ("ebpf" or "ipvs").
    #[serde(default)]
    pub load_balancer: String,
    /// The overlay fast path: "ebpf" ("ebpf (tc filters)" before Linux 6.6), or "off (why)".
    #[serde(default)]
    pub fast_path: String,
    /// Whether the node's kernel can carry encrypted overlay networks (ESP with
    /// rfc4106(gcm(aes))); None: not probed (a node of an older version).
    #[serde(default)]
    pub ipsec: Option<bool>,
}

/// Why a node cannot carry encrypted overlay networks.
pub const NO_ESP: &str = "kernel lacks esp4 / rfc4106(gcm(aes))";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeStatus {
    pub state: NodeState,
    pub message: String,
    /// Address the node's dispatcher session comes from.
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerStatus {
    /// Raft member id.
    pub raft_id: u64,
    /// Advertise address of the manager's cluster port (host:2377).
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub meta: Meta,
    pub spec: NodeSpec,
    /// Observed role (what its certificate says).
    pub role: Role,
    pub description: NodeDescription,
    pub status: NodeStatus,
    pub manager_status: Option<ManagerStatus>,
    /// Control-plane address (`--advertise-addr`).
    pub advertise_addr: String,
    /// VXLAN source address (`--data-path-addr`, defaults to the advertise address).
    pub data_path_addr: String,
    /// The node's own addresses on overlay networks: its load-balancer endpoint on each network
    /// it has tasks on (swarmkit's Node.Attachments), allocated by the leader.
    #[serde(default)]
    pub attachments: Vec<NetworkAttachment>,
    /// When the node certificate the CA last signed for this node expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// What the node reports of its TLS state (docker's TLSInfo): the roots it trusts and who
    /// issued the certificate it presents. A CA rotation completes when every node's issuer is
    /// the new root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_info: Option<TlsInfo>,
}

/// A node's TLS state as it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TlsInfo {
    /// The root certificates the node trusts (PEM, as the cluster sent them).
    pub trust_root: String,
    /// The subject of the root that issued the node's certificate (DER, base64).
    pub cert_issuer_subject: String,
    /// That root's public key (DER SubjectPublicKeyInfo, base64).
    pub cert_issuer_public_key: String,
}
