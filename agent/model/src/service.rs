//! Services. Owned by the orchestrator: the spec comes from `service create/update`, the endpoint
//! (virtual IPs) from the leader's allocator.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Meta;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    Replicated { replicas: u64 },
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    #[default]
    Vip,
    Dnsrr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    #[default]
    Ingress,
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    pub published: u16,
    pub target: u16,
    pub protocol: Protocol,
    pub mode: PublishMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EndpointSpec {
    pub mode: EndpointMode,
    pub ports: Vec<PortConfig>,
}

/// What every task of the service runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TaskTemplate {
    /// argv of the process run inside the task's namespace.
    pub command: Vec<String>,
    /// KEY=VALUE.
    pub env: Vec<String>,
    /// Placement constraints: `node.id|node.hostname|node.role|node.labels.K ==|!= value`.
    pub constraints: Vec<String>,
    /// Raised by `service update --force`: a new value replaces every task though nothing else
    /// changed (docker's TaskTemplate.ForceUpdate).
    #[serde(default)]
    pub force_update: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachmentSpec {
    /// Network id.
    pub target: String,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub mode: ServiceMode,
    pub task: TaskTemplate,
    pub networks: Vec<NetworkAttachmentSpec>,
    pub endpoint: EndpointSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualIp {
    pub network_id: String,
    /// The address with its network's prefix length, e.g. 10.0.1.2/24 (docker shows that form).
    pub addr: IpNet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub meta: Meta,
    pub spec: ServiceSpec,
    /// One per attached network in vip mode; set by the leader's allocator.
    pub virtual_ips: Vec<VirtualIp>,
}
