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

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
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

/// What every task of the service runs. Tasks are processes: the fields follow docker's
/// ContainerSpec as given (`image`, `command`, `args`), and [`TaskTemplate::argv`] makes the
/// process's argv from them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TaskTemplate {
    /// docker's ContainerSpec.Image: names the program when `command` is empty ("busybox:latest"
    /// runs `busybox`, found on the node's PATH).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// docker's ContainerSpec.Command (the entrypoint): when given, the program and its first
    /// arguments. Objects stored before `image` existed keep their whole argv here.
    pub command: Vec<String>,
    /// docker's ContainerSpec.Args: arguments after the program (or after `command`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// docker's ContainerSpec.Labels (the service's own labels are `ServiceSpec::labels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// KEY=VALUE.
    pub env: Vec<String>,
    /// Placement constraints: `node.id|node.hostname|node.role|node.labels.K ==|!= value`.
    pub constraints: Vec<String>,
    /// Raised by `service update --force`: a new value replaces every task though nothing else
    /// changed (docker's TaskTemplate.ForceUpdate).
    #[serde(default)]
    pub force_update: u64,
}

impl TaskTemplate {
    /// The argv of the task's process: `command` then `args` when a command is given, else the
    /// program the image names then `args`. Empty when neither names a program.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = if self.command.is_empty() {
            match program_of_image(&self.image) {
                Some(p) => vec![p.to_string()],
                None => return Vec::new(),
            }
        } else {
            self.command.clone()
        };
        argv.extend(self.args.iter().cloned());
        argv
    }
}

/// The program an image reference names: a path as given ("/bin/sleep"), else the last path
/// component without tag or digest ("docker.io/library/busybox:1.36@sha256:…" -> "busybox").
pub fn program_of_image(image: &str) -> Option<&str> {
    let image = image.trim();
    if image.starts_with('/') || image.starts_with("./") || image.starts_with("../") {
        return Some(image);
    }
    let no_digest = image.split('@').next().unwrap_or_default();
    let last = no_digest.rsplit('/').next().unwrap_or_default();
    let name = last.split(':').next().unwrap_or_default();
    (!name.is_empty()).then_some(name)
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
    /// Absent in services stored before it existed: docker's default then.
    #[serde(default)]
    pub update: UpdateConfig,
}

/// How a change of the task template rolls out over the running tasks (docker's
/// `UpdateConfig`; of its fields netagent keeps the parallelism).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Running tasks replaced at a time; the next ones once the replacements run. 0: all at
    /// once.
    pub parallelism: u64,
}

impl Default for UpdateConfig {
    /// Docker's default: one task at a time.
    fn default() -> Self {
        UpdateConfig { parallelism: 1 }
    }
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
    /// The published ports as allocated (docker's Endpoint.Ports): the spec's ports with every
    /// omitted published port given one from 30000-32767 by the leader.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortConfig>,
}

impl Service {
    /// Whether the service publishes a port through the routing mesh (its tasks then need an
    /// address on the ingress network).
    pub fn publishes_ingress(&self) -> bool {
        self.spec
            .endpoint
            .ports
            .iter()
            .any(|p| p.mode == PublishMode::Ingress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_from_image_command_and_args() {
        let t = |image: &str, command: &[&str], args: &[&str]| TaskTemplate {
            image: image.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            t("busybox:latest", &[], &["httpd", "-f"]).argv(),
            ["busybox", "httpd", "-f"]
        );
        assert_eq!(t("x", &["sleep"], &["1"]).argv(), ["sleep", "1"]);
        assert_eq!(t("", &["sleep", "9"], &[]).argv(), ["sleep", "9"]);
        assert_eq!(t("/bin/sleep", &[], &["1"]).argv(), ["/bin/sleep", "1"]);
        assert_eq!(
            t("docker.io/library/busybox:1.36@sha256:00", &[], &[]).argv(),
            ["busybox"]
        );
        assert_eq!(t("registry:5000/tools/nc", &[], &[]).argv(), ["nc"]);
        assert!(t("", &[], &["x"]).argv().is_empty());
    }
}
