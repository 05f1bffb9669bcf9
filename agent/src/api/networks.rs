//! /networks handlers: `network create / ls / inspect / rm`, answered in the docker API's shape
//! (`docker network inspect`).
//!
//! Creation is decided on the leader under [`Manager::alloc`](crate::member::Manager::alloc):
//! snapshot, check the name, `orchestrator::allocator::allocate_network`, write — so two
//! concurrent creations never get the same subnet or VNI, and nothing is written on error.
//! Removal takes the same lock, so a service cannot attach to a network being removed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use model::network::{IpamConfig, NetworkSpec, SubnetAllocation};
use model::{Kind, Meta, Network, Object};
use orchestrator::ClusterState;
use orchestrator::allocator::{self, allocate_network};
use serde::{Deserialize, Serialize};
use store::{Batch, Change};

use super::ApiJson;
use crate::agent::Agent;
use crate::error::{Code, Failure, Result};
use crate::member::{Member, not_in_swarm};
use crate::orchestration;

/// The only network driver.
pub const DRIVER: &str = "overlay";
/// Driver option of the MTU, as docker names it.
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// Driver option listing the VNIs, as docker shows it in `network inspect`.
pub const VNI_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";
/// Driver option of encryption (`--opt encrypted`).
pub const ENCRYPTED_OPTION: &str = "encrypted";

pub(crate) fn member(agent: &Agent) -> Result<Arc<Member>> {
    agent.member().ok_or_else(not_in_swarm)
}

/// Docker's rule for service and network names: a DNS label.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        let how = if what == "service" {
            " (--name NAME)"
        } else {
            ""
        };
        return Err(Failure::bad_request(format!("a {what} needs a name{how}")));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok {
        return Err(Failure::bad_request(format!(
            "invalid {what} name {name:?}: a name starts with a letter or digit and has only letters, digits, '_', '.' and '-'"
        )));
    }
    if name.len() > 63 {
        return Err(Failure::bad_request(format!(
            "invalid {what} name {name:?}: a name has at most 63 characters (it has {})",
            name.len()
        )));
    }
    Ok(())
}

/// Finds one of `items` as docker does: full id, then name, then unique id prefix.
pub(crate) fn resolve<'a, T>(
    items: impl IntoIterator<Item = &'a T>,
    reference: &str,
    id: impl Fn(&T) -> &str,
    name: impl Fn(&T) -> &str,
    what: &str,
    not_found: impl FnOnce() -> Failure,
) -> Result<&'a T> {
    let items: Vec<&T> = items.into_iter().collect();
    if let Some(x) = items.iter().find(|x| id(x) == reference) {
        return Ok(x);
    }
    let named: Vec<&&T> = items.iter().filter(|x| name(x) == reference).collect();
    if named.len() == 1 {
        return Ok(named[0]);
    }
    if named.len() > 1 {
        return Err(Failure::bad_request(format!(
            "{what} name {reference:?} is ambiguous ({} {what}s have it): use the id",
            named.len()
        )));
    }
    let prefixed: Vec<&&T> = items
        .iter()
        .filter(|x| !reference.is_empty() && id(x).starts_with(reference))
        .collect();
    match prefixed.len() {
        1 => Ok(prefixed[0]),
        0 => Err(not_found()),
        n => Err(Failure::bad_request(format!(
            "{what} id prefix {reference:?} is ambiguous ({n} {what}s match): give more characters"
        ))),
    }
}

pub fn network_not_found(reference: &str) -> Failure {
    Failure::not_found(format!(
        "network {reference} not found: check `netctl network ls`"
    ))
}

/// A network by id, name or unique id prefix.
pub fn find<'a>(state: &'a ClusterState, reference: &str) -> Result<&'a Network> {
    resolve(
        state.networks.values(),
        reference,
        |n| &n.meta.id,
        |n| &n.spec.name,
        "network",
        || network_not_found(reference),
    )
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

/// `POST /networks/create`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: String,
    /// "overlay" (the default).
    #[serde(default)]
    pub driver: Option<String>,
    /// Subnet, gateway and ip-range triples, already paired (netctl pairs them as docker does).
    #[serde(default)]
    pub ipam: Vec<IpamConfig>,
    /// Driver options (`--opt k=v`).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub attachable: bool,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub ingress: bool,
    /// `--ipv6`: needs an explicit IPv6 subnet (the address pools are IPv4).
    #[serde(default)]
    pub ipv6: bool,
}

/// Answer of `POST /networks/create`, as docker's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Created {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Warning", default, skip_serializing_if = "String::is_empty")]
    pub warning: String,
}

/// Checks a create request and turns it into a spec (everything but what needs the state).
pub fn spec_of(req: &CreateRequest) -> Result<NetworkSpec> {
    validate_name("network", &req.name)?;
    let driver = req.driver.as_deref().unwrap_or(DRIVER);
    if driver != DRIVER {
        return Err(Failure::bad_request(format!(
            "network driver {driver:?} is not supported: swarm networks use the \"overlay\" driver (--driver overlay)"
        )));
    }
    let mut mtu = None;
    for (k, v) in &req.options {
        match k.as_str() {
            "" => {
                return Err(Failure::bad_request(
                    "a driver option needs a key (--opt key=value)",
                ));
            }
            ENCRYPTED_OPTION => {
                return Err(Failure::bad_request(
                    "encrypted overlay networks (--opt encrypted) are not supported yet: netagent would not encrypt the traffic, so it refuses rather than pretend; create the network without --opt encrypted",
                ));
            }
            VNI_OPTION => {
                return Err(Failure::bad_request(format!(
                    "option {VNI_OPTION} is not supported: the swarm allocates VNIs itself; drop the option"
                )));
            }
            MTU_OPTION => {
                let n: u32 = v.trim().parse().map_err(|_| {
                    Failure::bad_request(format!(
                        "invalid MTU {v:?} ({MTU_OPTION}): give a number between 68 and 65535"
                    ))
                })?;
                if !(68..=65535).contains(&n) {
                    return Err(Failure::bad_request(format!(
                        "invalid MTU {n} ({MTU_OPTION}): the MTU must be between 68 and 65535"
                    )));
                }
                mtu = Some(n);
            }
            _ => {}
        }
    }
    for k in req.labels.keys() {
        if k.is_empty() {
            return Err(Failure::bad_request(
                "a label needs a key (--label key[=value])",
            ));
        }
    }
    if req.ingress && req.attachable {
        return Err(Failure::bad_request(
            "an ingress network cannot be attachable: drop --attachable",
        ));
    }
    let v6_subnet = req.ipam.iter().any(|c| {
        c.subnet
            .as_deref()
            .and_then(parse_cidr)
            .is_some_and(|(a, _)| a.is_ipv6())
    });
    if req.ipv6 && !v6_subnet {
        return Err(Failure::bad_request(
            "--ipv6 needs an explicit IPv6 subnet (--subnet fd00:1::/64): the address pools are IPv4 only",
        ));
    }
    Ok(NetworkSpec {
        name: req.name.clone(),
        driver: DRIVER.into(),
        ipam: req.ipam.clone(),
        options: req.options.clone(),
        labels: req.labels.clone(),
        encrypted: false,
        attachable: req.attachable,
        internal: req.internal,
        ingress: req.ingress,
        mtu,
    })
}

/// The allocator's error as the operator should see it: an overlap also names the network that
/// holds the other subnet.
fn allocation_failure(state: &ClusterState, e: allocator::Error) -> Failure {
    use orchestrator::ipam::Error as Ipam;
    let held = match &e {
        allocator::Error::Ipam(Ipam::SubnetOverlap { existing, .. }) => Some(existing.to_string()),
        allocator::Error::Ipam(Ipam::SubnetInUse { subnet }) => Some(subnet.to_string()),
        _ => None,
    };
    if let Some(existing) = held
        && let Some(n) = state.networks.values().find(|n| {
            n.allocation
                .iter()
                .flatten()
                .any(|s| s.subnet.to_string() == existing)
        })
    {
        return Failure::bad_request(format!("{e} (network {})", n.spec.name));
    }
    Failure::bad_request(e.to_string())
}

pub async fn create(
    State(agent): State<Arc<Agent>>,
    ApiJson(req): ApiJson<CreateRequest>,
) -> Result<Json<Created>> {
    let m = member(&agent)?;
    let spec = spec_of(&req)?;
    let mut leader = orchestration::leader(&m).await?;
    let state = leader.state();
    if state.networks.values().any(|n| n.spec.name == spec.name) {
        return Err(Failure::conflict(format!(
            "network with name {} already exists",
            spec.name
        )));
    }
    if spec.ingress
        && let Some(other) = state.networks.values().find(|n| n.spec.ingress)
    {
        return Err(Failure::conflict(format!(
            "an ingress network ({}) already exists in the swarm: only one is allowed; remove it first",
            other.spec.name
        )));
    }
    let (ipam, state) = leader.ipam_mut();
    let allocation = allocate_network(ipam, &spec).map_err(|e| allocation_failure(state, e))?;
    let network = Network {
        meta: Meta::new(),
        spec,
        allocation: Some(allocation),
    };
    let id = network.meta.id.clone();
    let changes = orchestrator::Changes {
        put: vec![Object::Network(network)],
        delete: vec![],
    };
    leader.record(&changes);
    orchestration::write_decided(&m, &mut leader, &changes).await?;
    Ok(Json(Created {
        id,
        warning: String::new(),
    }))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfigView {
    #[serde(rename = "Subnet")]
    pub subnet: String,
    #[serde(rename = "IPRange", default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    #[serde(rename = "Gateway", default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamView {
    #[serde(rename = "Driver")]
    pub driver: String,
    #[serde(rename = "Options")]
    pub options: Option<BTreeMap<String, String>>,
    #[serde(rename = "Config")]
    pub config: Vec<IpamConfigView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFrom {
    #[serde(rename = "Network")]
    pub network: String,
}

/// A task endpoint on this node (docker's "Containers").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerView {
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

/// A node that has endpoints on the network, as this node's gossip knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// Hostname (the node id when the store does not know the node).
    #[serde(rename = "Name")]
    pub name: String,
    /// Data-path (VTEP) address.
    #[serde(rename = "IP")]
    pub ip: String,
}

/// An endpoint on the network anywhere in the swarm, as this node's gossip knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointView {
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
    /// The service's name (its id if this manager does not know it).
    #[serde(rename = "Service")]
    pub service: String,
}

/// `docker network inspect`'s shape, plus "Endpoints".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
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
    pub ipam: IpamView,
    #[serde(rename = "Internal")]
    pub internal: bool,
    #[serde(rename = "Attachable")]
    pub attachable: bool,
    #[serde(rename = "Ingress")]
    pub ingress: bool,
    #[serde(rename = "ConfigFrom")]
    pub config_from: ConfigFrom,
    #[serde(rename = "ConfigOnly")]
    pub config_only: bool,
    /// This node's task endpoints on the network, by task id.
    #[serde(rename = "Containers")]
    pub containers: BTreeMap<String, ContainerView>,
    #[serde(rename = "Options")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "Labels")]
    pub labels: BTreeMap<String, String>,
    /// Nodes with endpoints on the network (this node's gossip view).
    #[serde(rename = "Peers")]
    pub peers: Vec<PeerView>,
    /// Every endpoint on the network (this node's gossip view).
    #[serde(rename = "Endpoints")]
    pub endpoints: Vec<EndpointView>,
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The address with the prefix length of the network's subnet that holds it.
fn with_prefix(ip: IpAddr, allocation: &[SubnetAllocation]) -> String {
    allocation
        .iter()
        .find(|s| s.subnet.contains(&ip))
        .map(|s| format!("{ip}/{}", s.subnet.prefix_len()))
        .unwrap_or_else(|| ip.to_string())
}

/// The network as this node sees it: stored (or assigned) spec and allocation, plus its gossip view.
pub fn network_view(m: &Member, state: &ClusterState, n: &Network) -> NetworkView {
    let allocation = n.allocation.clone().unwrap_or_default();
    let config: Vec<IpamConfigView> = if allocation.is_empty() {
        n.spec
            .ipam
            .iter()
            .filter_map(|c| {
                Some(IpamConfigView {
                    subnet: c.subnet.clone()?,
                    ip_range: c.ip_range.clone(),
                    gateway: c.gateway.clone(),
                })
            })
            .collect()
    } else {
        allocation
            .iter()
            .map(|s| IpamConfigView {
                subnet: s.subnet.to_string(),
                ip_range: s.ip_range.map(|r| r.to_string()),
                gateway: Some(s.gateway.to_string()),
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
    let hostname = |id: &str| {
        state
            .nodes
            .get(id)
            .map(|n| n.description.hostname.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let me = m.node_id();
    let mut containers = BTreeMap::new();
    let mut peers = Vec::new();
    let mut endpoints = Vec::new();
    if let Some(gossip) = m.gossip.get() {
        let entries = gossip.endpoints(&n.meta.id);
        let vteps = gossip.vteps();
        let mut owners: Vec<&str> = entries.iter().map(|e| e.owner.as_str()).collect();
        owners.sort();
        owners.dedup();
        for owner in owners {
            let ip = vteps
                .get(owner)
                .map(|ip| ip.to_string())
                .or_else(|| state.nodes.get(owner).map(|n| n.data_path_addr.clone()))
                .unwrap_or_default();
            peers.push(PeerView {
                name: hostname(owner),
                ip,
            });
        }
        for e in &entries {
            let ep = &e.endpoint;
            let addr = with_prefix(ep.ip, &allocation);
            let (v4, v6) = if ep.ip.is_ipv4() {
                (addr, String::new())
            } else {
                (String::new(), addr)
            };
            // A task-less entry is a node's load-balancer endpoint: docker lists this node's
            // as container "lb-NETWORK" named "NETWORK-endpoint", and it is no task endpoint.
            let lb = ep.task.is_empty();
            if e.owner == me {
                let (key, name) = if lb {
                    (
                        format!("lb-{}", n.spec.name),
                        format!("{}-endpoint", n.spec.name),
                    )
                } else {
                    (ep.task.clone(), ep.name.clone())
                };
                containers.insert(
                    key,
                    ContainerView {
                        name,
                        endpoint_id: ep.id.clone(),
                        mac_address: mac(&ep.mac),
                        ipv4_address: v4.clone(),
                        ipv6_address: v6.clone(),
                    },
                );
            }
            if lb {
                continue;
            }
            let service = state
                .services
                .get(&ep.service)
                .map(|s| s.spec.name.clone())
                .unwrap_or_else(|| ep.service.clone());
            endpoints.push(EndpointView {
                name: ep.name.clone(),
                endpoint_id: ep.id.clone(),
                mac_address: mac(&ep.mac),
                ipv4_address: v4,
                ipv6_address: v6,
                node: hostname(&e.owner),
                task: ep.task.clone(),
                service,
            });
        }
        endpoints.sort_by(|a, b| a.name.cmp(&b.name).then(a.endpoint_id.cmp(&b.endpoint_id)));
        peers.sort_by(|a, b| a.name.cmp(&b.name).then(a.ip.cmp(&b.ip)));
    }
    NetworkView {
        name: n.spec.name.clone(),
        id: n.meta.id.clone(),
        created: n.meta.created_at,
        scope: "swarm".into(),
        driver: n.spec.driver.clone(),
        enable_ipv6,
        ipam: IpamView {
            driver: "default".into(),
            options: None,
            config,
        },
        internal: n.spec.internal,
        attachable: n.spec.attachable,
        ingress: n.spec.ingress,
        config_from: ConfigFrom {
            network: String::new(),
        },
        config_only: false,
        containers,
        options,
        labels: n.spec.labels.clone(),
        peers,
        endpoints,
    }
}

/// `GET /networks`: sorted by name, as docker lists them (on a worker, its tasks' networks).
pub async fn list(State(agent): State<Arc<Agent>>) -> Result<Json<Vec<NetworkView>>> {
    let m = member(&agent)?;
    let state = orchestration::visible(&m)?;
    let mut nets: Vec<&Network> = state.networks.values().collect();
    nets.sort_by(|a, b| {
        a.spec
            .name
            .cmp(&b.spec.name)
            .then(a.meta.id.cmp(&b.meta.id))
    });
    Ok(Json(
        nets.into_iter()
            .map(|n| network_view(&m, &state, n))
            .collect(),
    ))
}

/// `GET /networks/{ref}`
pub async fn inspect(
    State(agent): State<Arc<Agent>>,
    Path(reference): Path<String>,
) -> Result<Json<NetworkView>> {
    let m = member(&agent)?;
    let state = orchestration::visible(&m)?;
    let n = find(&state, &reference).map_err(|e| match e.code {
        Code::NotFound if m.manager.is_none() => Failure::not_found(format!(
            "network {reference} not found on this worker: a worker knows only the networks its tasks use; ask a manager for the others"
        )),
        _ => e,
    })?;
    Ok(Json(network_view(&m, &state, n)))
}

/// `DELETE /networks/{ref}`: refused while a service uses the network or a task still holds an
/// address on it.
pub async fn remove(
    State(agent): State<Arc<Agent>>,
    Path(reference): Path<String>,
) -> Result<Json<super::views::Done>> {
    let m = member(&agent)?;
    let mut leader = orchestration::leader(&m).await?;
    let state = leader.state();
    let n = find(state, &reference)?;
    let mut users: Vec<&str> = state
        .services
        .values()
        .filter(|s| s.spec.networks.iter().any(|a| a.target == n.meta.id))
        .map(|s| s.spec.name.as_str())
        .collect();
    users.sort();
    if !users.is_empty() {
        return Err(Failure::conflict(format!(
            "network {} is in use by service {}: remove the service (`netctl service rm`) or detach it (`netctl service update --network-rm {}`) first",
            n.spec.name,
            users.join(", "),
            n.spec.name
        )));
    }
    let attached: Vec<&str> = state
        .tasks
        .values()
        .filter(|t| {
            allocator::holds_addresses(t.status.state)
                && t.networks.iter().any(|a| a.network_id == n.meta.id)
        })
        .map(|t| t.meta.id.as_str())
        .collect();
    if !attached.is_empty() {
        return Err(Failure::conflict(format!(
            "network {} is in use by task {}: wait for the task to stop, then retry",
            n.spec.name,
            attached.join(", ")
        )));
    }
    let batch = Batch::one(Change::Delete {
        kind: Kind::Network,
        id: n.meta.id.clone(),
        version: Some(n.meta.version),
    });
    let changes = orchestrator::Changes {
        put: vec![],
        delete: vec![(Kind::Network, n.meta.id.clone())],
    };
    leader.record(&changes);
    if let Err(f) = m.write(batch).await {
        orchestration::refresh(&m, &mut leader, &changes);
        return Err(f);
    }
    Ok(Json(Default::default()))
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
        assert!(e.message.contains("63"), "{e}");
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
    fn options() {
        let req = |k: &str, v: &str| CreateRequest {
            name: "n".into(),
            options: [(k.to_string(), v.to_string())].into(),
            ..Default::default()
        };
        assert_eq!(spec_of(&req(MTU_OPTION, "1400")).unwrap().mtu, Some(1400));
        assert!(spec_of(&req(MTU_OPTION, "67")).is_err());
        assert!(spec_of(&req(MTU_OPTION, "x")).is_err());
        let e = spec_of(&req("encrypted", "")).unwrap_err();
        assert!(e.message.contains("not supported yet"), "{e}");
        assert!(spec_of(&req("encrypted", "true")).is_err());
        let s = spec_of(&req("foo", "bar")).unwrap();
        assert_eq!(s.options.get("foo").map(String::as_str), Some("bar"));
        let bridge = CreateRequest {
            name: "n".into(),
            driver: Some("bridge".into()),
            ..Default::default()
        };
        let e = spec_of(&bridge).unwrap_err();
        assert!(e.message.contains("\"overlay\""), "{e}");
    }
}
