//! `/networks`: list, inspect, create, delete. Swarm-scoped overlay networks only.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use model::network::{IpamConfig as ModelIpam, NetworkSpec, SubnetAllocation};
use serde::{Deserialize, Serialize};

use crate::Invalid;

/// The only network driver.
pub const DRIVER: &str = "overlay";
/// Driver option of the MTU, as docker names it.
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// Driver option listing the VNIs, as docker shows it in `network inspect`.
pub const VNI_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";
/// Driver option of encryption (`--opt encrypted`).
pub const ENCRYPTED_OPTION: &str = "encrypted";

/// docker's `NetworkResource` (`GET /networks/{id}`), plus netagent's `Endpoints`: every endpoint
/// on the network in the swarm, as the answering node's gossip knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkResource {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Created")]
    pub created: DateTime<Utc>,
    #[serde(rename = "Scope")]
    pub scope: String,
    #[serde(rename = "Driver")]
    pub driver: String,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    pub ipam: Ipam,
    #[serde(rename = "Internal")]
    pub internal: bool,
    #[serde(rename = "Attachable")]
    pub attachable: bool,
    #[serde(rename = "Ingress")]
    pub ingress: bool,
    #[serde(rename = "ConfigFrom")]
    pub config_from: ConfigReference,
    #[serde(rename = "ConfigOnly")]
    pub config_only: bool,
    /// This node's task endpoints on the network, by task id.
    #[serde(
        rename = "Containers",
        default,
        deserialize_with = "crate::null_default"
    )]
    pub containers: BTreeMap<String, EndpointResource>,
    #[serde(rename = "Options", default, deserialize_with = "crate::null_default")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "Labels", default, deserialize_with = "crate::null_default")]
    pub labels: BTreeMap<String, String>,
    /// Nodes with endpoints on the network (gossip).
    #[serde(rename = "Peers", default, deserialize_with = "crate::null_default")]
    pub peers: Vec<PeerInfo>,
    /// netagent's own: every endpoint on the network in the swarm (gossip).
    #[serde(
        rename = "Endpoints",
        default,
        deserialize_with = "crate::null_default"
    )]
    pub endpoints: Vec<SwarmEndpoint>,
    /// `?verbose=true` (docker's `network inspect --verbose`): the services on the network with
    /// their VIP and the running tasks this node load-balances to and resolves.
    #[serde(rename = "Services", default, skip_serializing_if = "Option::is_none")]
    pub services: Option<BTreeMap<String, ServiceInfo>>,
    /// `?verbose=true`, netagent's own: the DNS records this node's resolver serves for the
    /// network (`NAME TTL TYPE VALUE`), for debugging name resolution.
    #[serde(
        rename = "DNSRecords",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub dns_records: Option<Vec<String>>,
}

/// A service on the network as docker's verbose inspect shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    #[serde(rename = "VIP", default)]
    pub vip: String,
    #[serde(rename = "Ports", default, deserialize_with = "crate::null_default")]
    pub ports: Vec<String>,
    #[serde(rename = "LocalLBIndex", default)]
    pub local_lb_index: u64,
    #[serde(rename = "Tasks", default, deserialize_with = "crate::null_default")]
    pub tasks: Vec<TaskInfo>,
}

/// A running task of a service on the network (docker's verbose inspect).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "EndpointIP")]
    pub endpoint_ip: String,
    #[serde(rename = "Info", default, deserialize_with = "crate::null_default")]
    pub info: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipam {
    #[serde(rename = "Driver", default)]
    pub driver: String,
    #[serde(rename = "Options", default)]
    pub options: Option<BTreeMap<String, String>>,
    #[serde(rename = "Config", default, deserialize_with = "crate::null_default")]
    pub config: Vec<IpamConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfig {
    #[serde(rename = "Subnet", default, skip_serializing_if = "String::is_empty")]
    pub subnet: String,
    #[serde(rename = "IPRange", default, skip_serializing_if = "String::is_empty")]
    pub ip_range: String,
    #[serde(rename = "Gateway", default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(
        rename = "AuxiliaryAddresses",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub auxiliary_addresses: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReference {
    #[serde(rename = "Network", default)]
    pub network: String,
}

/// A task endpoint on this node (docker's "Containers" entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointResource {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Hostname (the node id when unknown).
    #[serde(rename = "Name")]
    pub name: String,
    /// Data-path (VTEP) address.
    #[serde(rename = "IP")]
    pub ip: String,
}

/// An endpoint anywhere in the swarm (netagent's `Endpoints`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmEndpoint {
    /// The task's name (service.slot).
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "MacAddress")]
    pub mac_address: String,
    /// CIDR, as docker shows it ("" for an IPv6 endpoint).
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(
        rename = "IPv6Address",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ipv6_address: String,
    /// Hostname of the node that owns it.
    #[serde(rename = "Node")]
    pub node: String,
    #[serde(rename = "Task")]
    pub task: String,
    /// The service's name (its id if the answering node does not know it).
    #[serde(rename = "Service")]
    pub service: String,
}

/// `POST /networks/create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Always on in netagent (names are unique in the swarm).
    #[serde(rename = "CheckDuplicate", default)]
    pub check_duplicate: bool,
    #[serde(rename = "Driver", default)]
    pub driver: String,
    #[serde(rename = "Scope", default)]
    pub scope: String,
    #[serde(
        rename = "EnableIPv6",
        default,
        deserialize_with = "crate::null_default"
    )]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM", default)]
    pub ipam: Option<Ipam>,
    #[serde(rename = "Internal", default)]
    pub internal: bool,
    #[serde(rename = "Attachable", default)]
    pub attachable: bool,
    #[serde(rename = "Ingress", default)]
    pub ingress: bool,
    #[serde(rename = "ConfigOnly", default)]
    pub config_only: bool,
    #[serde(rename = "ConfigFrom", default)]
    pub config_from: Option<ConfigReference>,
    #[serde(rename = "Options", default, deserialize_with = "crate::null_default")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "Labels", default, deserialize_with = "crate::null_default")]
    pub labels: BTreeMap<String, String>,
}

/// Answer of `POST /networks/create`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateResponse {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Warning", default)]
    pub warning: String,
}

/// docker's rule for service and network names: a DNS label.
pub fn validate_name(what: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() {
        let how = if what == "service" {
            " (--name NAME)"
        } else {
            ""
        };
        return Err(Invalid::new(format!("a {what} needs a name{how}")));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok {
        return Err(Invalid::new(format!(
            "invalid {what} name {name:?}: a name starts with a letter or digit and has only letters, digits, '_', '.' and '-'"
        )));
    }
    if name.len() > 63 {
        return Err(Invalid::new(format!(
            "invalid {what} name {name:?}: a name has at most 63 characters (it has {})",
            name.len()
        )));
    }
    Ok(())
}

/// "10.0.1.0/24" -> (10.0.1.0, 24); None unless a valid CIDR.
pub fn parse_cidr(cidr: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = cidr.trim().split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

fn bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

/// Whether `addr` lies inside `cidr`.
pub fn cidr_contains(cidr: &str, addr: IpAddr) -> bool {
    let Some((net, len)) = parse_cidr(cidr) else {
        return false;
    };
    if net.is_ipv4() != addr.is_ipv4() {
        return false;
    }
    let (n, width) = bits(net);
    let (a, _) = bits(addr);
    let shift = u32::from(width - len);
    if shift >= 128 {
        return true;
    }
    (n >> shift) == (a >> shift)
}

fn non_empty(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.to_string())
}

/// Checks a create request and turns it into a spec (all but what needs the swarm's state);
/// the warning is for the answer's `Warning`.
pub fn spec_of(req: &CreateRequest) -> Result<(NetworkSpec, String), Invalid> {
    validate_name("network", &req.name)?;
    let driver = if req.driver.is_empty() {
        DRIVER
    } else {
        req.driver.as_str()
    };
    if driver != DRIVER {
        return Err(Invalid::new(format!(
            "network driver {driver:?} is not supported: swarm networks use the \"overlay\" driver (--driver overlay)"
        )));
    }
    if !req.scope.is_empty() && req.scope != "swarm" {
        return Err(Invalid::new(format!(
            "invalid scope {:?}: netagent networks are swarm-scoped (--scope swarm)",
            req.scope
        )));
    }
    if req.config_only
        || req
            .config_from
            .as_ref()
            .is_some_and(|c| !c.network.is_empty())
    {
        return Err(Invalid::new(
            "config-only networks (--config-only, --config-from) are not supported: create the network with its settings",
        ));
    }
    let mut warnings = Vec::new();
    let mut ipam = Vec::new();
    if let Some(i) = &req.ipam {
        if !i.driver.is_empty() && i.driver != "default" {
            return Err(Invalid::new(format!(
                "IPAM driver {:?} is not supported: use the default IPAM driver",
                i.driver
            )));
        }
        if i.options.as_ref().is_some_and(|o| !o.is_empty()) {
            warnings
                .push("IPAM options are ignored: the default IPAM driver takes none".to_string());
        }
        for c in &i.config {
            if !c.auxiliary_addresses.is_empty() {
                return Err(Invalid::new(
                    "auxiliary addresses (--aux-address) are not supported: leave them out",
                ));
            }
            ipam.push(ModelIpam {
                subnet: non_empty(&c.subnet),
                gateway: non_empty(&c.gateway),
                ip_range: non_empty(&c.ip_range),
            });
        }
    }
    let mut mtu = None;
    let mut encrypted = false;
    for (k, v) in &req.options {
        match k.as_str() {
            "" => {
                return Err(Invalid::new(
                    "a driver option needs a key (--opt key=value)",
                ));
            }
            // As Docker: the key's presence encrypts, whatever its value.
            ENCRYPTED_OPTION => encrypted = true,
            VNI_OPTION => {
                return Err(Invalid::new(format!(
                    "option {VNI_OPTION} is not supported: the swarm allocates VNIs itself; drop the option"
                )));
            }
            MTU_OPTION => {
                let n: u32 = v.trim().parse().map_err(|_| {
                    Invalid::new(format!(
                        "invalid MTU {v:?} ({MTU_OPTION}): give a number between 68 and 65535"
                    ))
                })?;
                if !(68..=65535).contains(&n) {
                    return Err(Invalid::new(format!(
                        "invalid MTU {n} ({MTU_OPTION}): the MTU must be between 68 and 65535"
                    )));
                }
                mtu = Some(n);
            }
            _ => {}
        }
    }
    if req.labels.keys().any(String::is_empty) {
        return Err(Invalid::new("a label needs a key (--label key[=value])"));
    }
    if req.ingress && req.attachable {
        return Err(Invalid::new(
            "an ingress network cannot be attachable: drop --attachable",
        ));
    }
    let v6_subnet = ipam.iter().any(|c| {
        c.subnet
            .as_deref()
            .and_then(parse_cidr)
            .is_some_and(|(a, _)| a.is_ipv6())
    });
    // Not carried end to end yet (a task gets an interface in the first subnet only, the
    // overlay is IPv4): refused rather than accepted and broken.
    if req.enable_ipv6 || v6_subnet {
        return Err(Invalid::new(
            "IPv6 networks are not supported yet (--ipv6, or an IPv6 --subnet): the overlay carries IPv4 only; create the network with an IPv4 subnet",
        ));
    }
    if ipam.len() > 1 {
        return Err(Invalid::new(format!(
            "networks with more than one subnet are not supported yet ({} IPAM configs given): tasks would get no interface in the extra subnets; give one --subnet, or create one network per subnet",
            ipam.len()
        )));
    }
    let spec = NetworkSpec {
        name: req.name.clone(),
        driver: DRIVER.into(),
        ipam,
        options: req.options.clone(),
        labels: req.labels.clone(),
        encrypted,
        attachable: req.attachable,
        internal: req.internal,
        ingress: req.ingress,
        mtu,
    };
    Ok((spec, warnings.join("\n")))
}

/// What the answering node's gossip knows of a network, for [`resource`].
#[derive(Debug, Clone, Default)]
pub struct GossipView {
    pub containers: BTreeMap<String, EndpointResource>,
    pub peers: Vec<PeerInfo>,
    pub endpoints: Vec<SwarmEndpoint>,
}

/// The network in docker's shape: stored spec and allocation, and the gossip view.
pub fn resource(n: &model::Network, gossip: GossipView) -> NetworkResource {
    let allocation = n.allocation.clone().unwrap_or_default();
    let config: Vec<IpamConfig> = if allocation.is_empty() {
        n.spec
            .ipam
            .iter()
            .filter_map(|c| {
                Some(IpamConfig {
                    subnet: c.subnet.clone()?,
                    ip_range: c.ip_range.clone().unwrap_or_default(),
                    gateway: c.gateway.clone().unwrap_or_default(),
                    ..Default::default()
                })
            })
            .collect()
    } else {
        allocation
            .iter()
            .map(|s| IpamConfig {
                subnet: s.subnet.to_string(),
                ip_range: s.ip_range.map(|r| r.to_string()).unwrap_or_default(),
                gateway: s.gateway.to_string(),
                ..Default::default()
            })
            .collect()
    };
    let enable_ipv6 = config
        .iter()
        .any(|c| parse_cidr(&c.subnet).is_some_and(|(a, _)| a.is_ipv6()));
    let mut options = n.spec.options.clone();
    if !allocation.is_empty() {
        options.insert(
            VNI_OPTION.into(),
            allocation
                .iter()
                .map(|s| s.vni.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    NetworkResource {
        name: n.spec.name.clone(),
        id: n.meta.id.clone(),
        created: n.meta.created_at,
        scope: "swarm".into(),
        driver: n.spec.driver.clone(),
        enable_ipv6,
        ipam: Ipam {
            driver: "default".into(),
            options: None,
            config,
        },
        internal: n.spec.internal,
        attachable: n.spec.attachable,
        ingress: n.spec.ingress,
        config_from: ConfigReference::default(),
        config_only: false,
        containers: gossip.containers,
        options,
        labels: n.spec.labels.clone(),
        peers: gossip.peers,
        endpoints: gossip.endpoints,
        services: None,
        dns_records: None,
    }
}

/// A MAC address as docker prints it.
pub fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An endpoint address with the prefix length of the network's subnet that holds it.
pub fn with_prefix(ip: IpAddr, allocation: &[SubnetAllocation]) -> String {
    allocation
        .iter()
        .find(|s| s.subnet.contains(&ip))
        .map(|s| format!("{ip}/{}", s.subnet.prefix_len()))
        .unwrap_or_else(|| ip.to_string())
}

/// docker's `network ls` filters, applied to a network.
pub const LIST_FILTERS: &[&str] = &["driver", "id", "label", "name", "scope", "type", "dangling"];

pub fn matches(f: &crate::Filters, n: &NetworkResource) -> bool {
    f.matches("name", |v| n.name.contains(v))
        && f.matches("id", |v| n.id.starts_with(v))
        && f.matches("driver", |v| n.driver == v)
        && f.matches("scope", |v| n.scope == v)
        && f.matches("type", |v| v == "custom")
        && f.match_labels(&n.labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("service", "web").is_ok());
        assert!(validate_name("service", "a.b_c-1").is_ok());
        assert!(validate_name("service", "").is_err());
        assert!(validate_name("service", "-x").is_err());
        assert!(validate_name("service", "a b").is_err());
        assert!(validate_name("service", &"a".repeat(63)).is_ok());
        let e = validate_name("service", &"a".repeat(64)).unwrap_err();
        assert!(e.0.contains("63"), "{e}");
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.0.1.0/24"),
            Some(("10.0.1.0".parse().unwrap(), 24))
        );
        assert_eq!(parse_cidr("10.0.1.0/33"), None);
        assert_eq!(parse_cidr("10.0.1.0"), None);
        assert!(cidr_contains("10.0.1.0/24", "10.0.1.7".parse().unwrap()));
        assert!(!cidr_contains("10.0.1.0/24", "10.0.2.7".parse().unwrap()));
        assert!(cidr_contains("0.0.0.0/0", "1.2.3.4".parse().unwrap()));
        assert!(cidr_contains("fd00:1::/64", "fd00:1::5".parse().unwrap()));
        assert!(!cidr_contains("fd00:1::/64", "10.0.0.1".parse().unwrap()));
        assert!(cidr_contains("::/0", "fd00::1".parse().unwrap()));
    }

    #[test]
    fn options_and_docker_cli_body() {
        let req = |k: &str, v: &str| CreateRequest {
            name: "n".into(),
            options: [(k.to_string(), v.to_string())].into(),
            ..Default::default()
        };
        assert_eq!(spec_of(&req(MTU_OPTION, "1400")).unwrap().0.mtu, Some(1400));
        assert!(spec_of(&req(MTU_OPTION, "67")).is_err());
        assert!(spec_of(&req(MTU_OPTION, "x")).is_err());
        let (enc, _) = spec_of(&req("encrypted", "")).unwrap();
        assert!(enc.encrypted);
        assert_eq!(enc.options.get("encrypted").map(String::as_str), Some(""));
        assert!(!spec_of(&req("foo", "")).unwrap().0.encrypted);
        let s = spec_of(&req("foo", "bar")).unwrap().0;
        assert_eq!(s.options.get("foo").map(String::as_str), Some("bar"));
        let bridge = CreateRequest {
            name: "n".into(),
            driver: "bridge".into(),
            ..Default::default()
        };
        assert!(spec_of(&bridge).unwrap_err().0.contains("\"overlay\""));
        // What `docker network create -d overlay --subnet 10.9.0.0/24 X` sends (CLI 28.2).
        let body = r#"{"Driver":"overlay","Scope":"","IPAM":{"Driver":"default","Options":{},"Config":[{"Subnet":"10.9.0.0/24"}]},"Internal":false,"Attachable":false,"Ingress":false,"ConfigOnly":false,"ConfigFrom":null,"Options":{},"Labels":{},"Name":"X","CheckDuplicate":true}"#;
        let req: CreateRequest = serde_json::from_str(body).unwrap();
        let (spec, warning) = spec_of(&req).unwrap();
        assert_eq!(spec.ipam[0].subnet.as_deref(), Some("10.9.0.0/24"));
        assert_eq!(warning, "");
    }

    #[test]
    fn several_subnets_and_ipv6_are_refused() {
        // `docker network create --subnet 10.60.0.0/24 --subnet 10.61.0.0/24 multi`.
        let body = r#"{"Driver":"overlay","IPAM":{"Driver":"default","Config":[{"Subnet":"10.60.0.0/24"},{"Subnet":"10.61.0.0/24"}]},"Name":"multi"}"#;
        let req: CreateRequest = serde_json::from_str(body).unwrap();
        let e = spec_of(&req).unwrap_err().0;
        assert!(
            e.contains("more than one subnet") && e.contains("2 IPAM"),
            "{e}"
        );
        let body = r#"{"Driver":"overlay","EnableIPv6":true,"IPAM":{"Config":[{"Subnet":"fd00:50::/64"}]},"Name":"six"}"#;
        let req: CreateRequest = serde_json::from_str(body).unwrap();
        assert!(spec_of(&req).unwrap_err().0.contains("IPv6"));
        // An IPv6 subnet without the flag, and the flag without a subnet.
        let body = r#"{"IPAM":{"Config":[{"Subnet":"fd00:50::/64"}]},"Name":"six"}"#;
        let req: CreateRequest = serde_json::from_str(body).unwrap();
        assert!(spec_of(&req).unwrap_err().0.contains("IPv6"));
        let req = CreateRequest {
            name: "six".into(),
            enable_ipv6: true,
            ..Default::default()
        };
        assert!(spec_of(&req).unwrap_err().0.contains("IPv6"));
    }
}
