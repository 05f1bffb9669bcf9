//! `/_ping`, `/version` and `/info`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::swarm::ClusterInfo;

/// Headers of every answer (docker's client reads them from `/_ping` to pick its version).
pub const HEADER_API_VERSION: &str = "API-Version";
pub const HEADER_OS_TYPE: &str = "OSType";
pub const HEADER_EXPERIMENTAL: &str = "Docker-Experimental";
/// Non-docker header on reads a manager answered from a replica that may be behind: why.
pub const HEADER_STALE: &str = "X-Netagent-Stale";

/// `GET /version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    #[serde(rename = "Platform", default)]
    pub platform: PlatformName,
    #[serde(rename = "Components", default)]
    pub components: Vec<Component>,
    #[serde(rename = "Version")]
    pub version: String,
    #[serde(rename = "ApiVersion")]
    pub api_version: String,
    #[serde(rename = "MinAPIVersion", default)]
    pub min_api_version: String,
    #[serde(rename = "GitCommit", default)]
    pub git_commit: String,
    #[serde(rename = "GoVersion", default)]
    pub go_version: String,
    #[serde(rename = "Os")]
    pub os: String,
    #[serde(rename = "Arch")]
    pub arch: String,
    #[serde(rename = "KernelVersion", default)]
    pub kernel_version: String,
    #[serde(rename = "Experimental", default)]
    pub experimental: bool,
    #[serde(rename = "BuildTime", default)]
    pub build_time: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformName {
    #[serde(rename = "Name")]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Version")]
    pub version: String,
    #[serde(rename = "Details", default)]
    pub details: BTreeMap<String, String>,
}

/// `GET /info`: docker's system info, with only what a netagent node has (no containers, no
/// images), and the `Swarm` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "Containers", default)]
    pub containers: u64,
    #[serde(rename = "ContainersRunning", default)]
    pub containers_running: u64,
    #[serde(rename = "ContainersPaused", default)]
    pub containers_paused: u64,
    #[serde(rename = "ContainersStopped", default)]
    pub containers_stopped: u64,
    #[serde(rename = "Images", default)]
    pub images: u64,
    #[serde(rename = "Driver", default)]
    pub driver: String,
    #[serde(rename = "Plugins", default)]
    pub plugins: Plugins,
    #[serde(rename = "NCPU", default)]
    pub ncpu: u64,
    #[serde(rename = "MemTotal", default)]
    pub mem_total: u64,
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "Labels", default)]
    pub labels: Vec<String>,
    #[serde(rename = "ServerVersion", default)]
    pub server_version: String,
    #[serde(rename = "KernelVersion", default)]
    pub kernel_version: String,
    #[serde(rename = "OperatingSystem", default)]
    pub operating_system: String,
    #[serde(rename = "OSType", default)]
    pub os_type: String,
    #[serde(rename = "Architecture", default)]
    pub architecture: String,
    #[serde(rename = "DockerRootDir", default)]
    pub docker_root_dir: String,
    #[serde(rename = "ExperimentalBuild", default)]
    pub experimental_build: bool,
    #[serde(rename = "LiveRestoreEnabled", default)]
    pub live_restore_enabled: bool,
    #[serde(rename = "Swarm", default)]
    pub swarm: SwarmInfo,
    #[serde(rename = "Warnings", default, deserialize_with = "crate::null_default")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plugins {
    #[serde(rename = "Volume", default, deserialize_with = "crate::null_default")]
    pub volume: Vec<String>,
    #[serde(rename = "Network", default, deserialize_with = "crate::null_default")]
    pub network: Vec<String>,
    #[serde(
        rename = "Authorization",
        default,
        deserialize_with = "crate::null_default"
    )]
    pub authorization: Vec<String>,
    #[serde(rename = "Log", default, deserialize_with = "crate::null_default")]
    pub log: Vec<String>,
}

/// docker's `LocalNodeState`.
pub const INACTIVE: &str = "inactive";
pub const ACTIVE: &str = "active";

/// The `Swarm` section of `/info`: this node's membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmInfo {
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    #[serde(rename = "NodeAddr", default)]
    pub node_addr: String,
    /// "inactive" or "active".
    #[serde(rename = "LocalNodeState", default)]
    pub local_node_state: String,
    #[serde(rename = "ControlAvailable", default)]
    pub control_available: bool,
    #[serde(rename = "Error", default)]
    pub error: String,
    /// The managers this node knows, with their cluster-port addresses.
    #[serde(
        rename = "RemoteManagers",
        default,
        deserialize_with = "crate::null_default"
    )]
    pub remote_managers: Vec<Peer>,
    #[serde(rename = "Nodes", default, skip_serializing_if = "is_zero")]
    pub nodes: u64,
    #[serde(rename = "Managers", default, skip_serializing_if = "is_zero")]
    pub managers: u64,
    /// On managers the whole cluster; on workers what the dispatcher session told them (id,
    /// data-path port, address pools).
    #[serde(rename = "Cluster", default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
    #[serde(
        rename = "Warnings",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub warnings: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    #[serde(rename = "Addr", default)]
    pub addr: String,
}
