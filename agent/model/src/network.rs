//! Overlay networks. Owned by the orchestrator: the spec comes from `network create`, the
//! allocation from the leader's allocator (and is what Raft carries).

use std::collections::BTreeMap;

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::Meta;

/// One `--subnet` / `--gateway` / `--ip-range` triple as the operator gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IpamConfig {
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    /// Always "overlay" for now.
    pub driver: String,
    pub ipam: Vec<IpamConfig>,
    /// Driver options as given (`--opt k=v`), e.g. com.docker.network.driver.mtu.
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub encrypted: bool,
    pub attachable: bool,
    pub internal: bool,
    /// The routing-mesh network (`ingress`).
    pub ingress: bool,
    /// MTU override (`--opt com.docker.network.driver.mtu=N`); None derives it from the underlay.
    pub mtu: Option<u32>,
}

/// What the allocator decided for one subnet of a network (typed; serialized as strings, e.g.
/// "10.0.1.0/24").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetAllocation {
    pub subnet: IpNet,
    pub gateway: IpAddr,
    pub ip_range: Option<IpNet>,
    pub vni: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub meta: Meta,
    pub spec: NetworkSpec,
    /// Set by the leader's allocator; None until allocated.
    pub allocation: Option<Vec<SubnetAllocation>>,
    /// An ingress network `ingress recreate --subnet` replaced: no new task attaches to it, the
    /// tasks on it move to the new one as a rolling update, and the leader removes it once none
    /// runs there. Until then every ingress-sbox is on both, so published ports keep answering.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retiring: bool,
}

impl Network {
    /// The ingress network new tasks attach to (not one being retired).
    pub fn is_current_ingress(&self) -> bool {
        self.spec.ingress && !self.retiring
    }
}
