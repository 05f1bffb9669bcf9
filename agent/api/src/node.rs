//! `/nodes`: list, inspect, update (`?version=`), delete (`?force=`).

use std::collections::BTreeMap;

use model::node::{Availability, Role};
use serde::{Deserialize, Serialize};

use crate::{Invalid, Meta};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(rename = "Spec")]
    pub spec: NodeSpec,
    #[serde(rename = "Description", default)]
    pub description: Description,
    #[serde(rename = "Status", default)]
    pub status: Status,
    #[serde(
        rename = "ManagerStatus",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub manager_status: Option<ManagerStatus>,
}

/// What `POST /nodes/{id}/update` takes: the whole spec (docker's clients read, change, send).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    #[serde(rename = "Name", default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "Labels", default, with = "crate::null_map")]
    pub labels: BTreeMap<String, String>,
    /// "worker" or "manager".
    #[serde(rename = "Role", default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    /// "active", "pause" or "drain".
    #[serde(
        rename = "Availability",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub availability: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    #[serde(rename = "Hostname", default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(rename = "Platform", default)]
    pub platform: Platform,
    #[serde(rename = "Resources", default)]
    pub resources: Resources,
    #[serde(rename = "Engine", default)]
    pub engine: Engine,
    /// netagent's own: whether the node can carry encrypted overlay networks ("supported", or
    /// "unsupported: " and why); empty when the node did not say.
    #[serde(
        rename = "EncryptedNetworks",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub encrypted_networks: String,
    /// netagent's own: when the node's certificate expires (RFC 3339; renewed before).
    #[serde(
        rename = "CertificateExpiry",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub certificate_expiry: String,
    /// docker's TLSInfo: the roots the node trusts and the issuer of its certificate.
    #[serde(rename = "TLSInfo", default)]
    pub tls_info: crate::swarm::TlsInfo,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(
        rename = "Architecture",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub architecture: String,
    #[serde(rename = "OS", default, skip_serializing_if = "String::is_empty")]
    pub os: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(rename = "NanoCPUs", default)]
    pub nano_cpus: u64,
    #[serde(rename = "MemoryBytes", default)]
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engine {
    #[serde(
        rename = "EngineVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub engine_version: String,
    /// docker lists the engine's plugins here; netagent adds its load balancer as
    /// `{"Type": "LoadBalancer", "Name": "ebpf"}` (or "ipvs") and its overlay fast path as
    /// `{"Type": "OverlayFastPath", "Name": "ebpf"}` (or "ebpf (tc filters)", "off (why)").
    #[serde(rename = "Plugins", default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<Plugin>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plugin {
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(rename = "Name", default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// "unknown", "down", "ready" or "disconnected".
    #[serde(rename = "State", default)]
    pub state: String,
    #[serde(rename = "Message", default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(rename = "Addr", default)]
    pub addr: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerStatus {
    #[serde(rename = "Leader", default, skip_serializing_if = "std::ops::Not::not")]
    pub leader: bool,
    /// "reachable", "unreachable" or "unknown".
    #[serde(rename = "Reachability", default)]
    pub reachability: String,
    #[serde(rename = "Addr", default)]
    pub addr: String,
}

pub const REACHABLE: &str = "reachable";
pub const UNREACHABLE: &str = "unreachable";

/// The lowercase word docker uses for a model enum ("manager", "drain", "ready").
pub fn word<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn parse_role(s: &str) -> Result<Role, Invalid> {
    match s {
        "worker" => Ok(Role::Worker),
        "manager" => Ok(Role::Manager),
        other => Err(Invalid::new(format!(
            "invalid role {other:?}: use worker or manager"
        ))),
    }
}

pub fn parse_availability(s: &str) -> Result<Availability, Invalid> {
    match s {
        "active" => Ok(Availability::Active),
        "pause" => Ok(Availability::Pause),
        "drain" => Ok(Availability::Drain),
        other => Err(Invalid::new(format!(
            "invalid availability {other:?}: use active, pause or drain"
        ))),
    }
}

/// A node in docker's shape. `manager_status` is what the answering manager knows of the node's
/// Raft membership (leader, reachability); None for workers.
pub fn node(n: &model::Node, manager_status: Option<ManagerStatus>) -> Node {
    Node {
        id: n.meta.id.clone(),
        meta: Meta::from(&n.meta),
        spec: NodeSpec {
            name: String::new(),
            labels: n.spec.labels.clone(),
            role: word(&n.spec.role),
            availability: word(&n.spec.availability),
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
                plugins: [
                    ("LoadBalancer", &n.description.load_balancer),
                    ("OverlayFastPath", &n.description.fast_path),
                ]
                .into_iter()
                .filter(|(_, name)| !name.is_empty())
                .map(|(kind, name)| Plugin {
                    kind: kind.into(),
                    name: name.clone(),
                })
                .collect(),
            },
            encrypted_networks: match n.description.ipsec {
                Some(true) => "supported".into(),
                Some(false) => format!("unsupported: {}", model::node::NO_ESP),
                None => String::new(),
            },
            certificate_expiry: n
                .cert_expires_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
            tls_info: n
                .tls_info
                .as_ref()
                .map(|t| crate::swarm::TlsInfo {
                    trust_root: t.trust_root.clone(),
                    cert_issuer_subject: t.cert_issuer_subject.clone(),
                    cert_issuer_public_key: t.cert_issuer_public_key.clone(),
                })
                .unwrap_or_default(),
        },
        status: Status {
            state: word(&n.status.state),
            message: n.status.message.clone(),
            addr: n.status.addr.clone(),
        },
        manager_status,
    }
}

/// What an update asks of the stored node: the new spec (role, availability, labels).
pub fn spec_to_model(
    spec: &NodeSpec,
    current: &model::node::NodeSpec,
) -> Result<model::node::NodeSpec, Invalid> {
    for k in spec.labels.keys() {
        if k.is_empty() {
            return Err(Invalid::new(
                "a label needs a key (--label-add key[=value])",
            ));
        }
    }
    if !spec.name.is_empty() {
        return Err(Invalid::new(
            "nodes are named by their hostname: Spec.Name cannot be set",
        ));
    }
    Ok(model::node::NodeSpec {
        role: if spec.role.is_empty() {
            current.role
        } else {
            parse_role(&spec.role)?
        },
        availability: if spec.availability.is_empty() {
            current.availability
        } else {
            parse_availability(&spec.availability)?
        },
        labels: spec.labels.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let current = model::node::NodeSpec {
            role: Role::Worker,
            availability: Availability::Active,
            labels: BTreeMap::new(),
        };
        let s = spec_to_model(
            &NodeSpec {
                availability: "drain".into(),
                ..Default::default()
            },
            &current,
        )
        .unwrap();
        assert_eq!(s.availability, Availability::Drain);
        assert_eq!(s.role, Role::Worker);
        let e = spec_to_model(
            &NodeSpec {
                availability: "sideways".into(),
                ..Default::default()
            },
            &current,
        )
        .unwrap_err();
        assert!(e.0.contains("active, pause or drain"), "{e}");
        assert_eq!(word(&Role::Manager), "manager");
    }
}
