//! Allocation on the leader: subnets and VNIs of networks, VIPs of services, addresses of tasks and
//! of nodes (their load-balancer endpoint on each network they have tasks on).
//!
//! The [`Ipam`] is built once from the state ([`ipam_from_state`]) and then kept in step with it
//! object by object: [`holdings`] says what an object holds, and a change of an object holds what
//! it gained and releases what it lost ([`update_holdings`]). The allocation functions take the
//! IPAM and reserve what they hand out, so two allocations never hand out the same address even
//! before the store has recorded the first. Addresses of tasks that have stopped for good are free
//! again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipam::ipnet::IpNet;
use ipam::{Ipam, PoolConfig, SubnetRequest};
use model::network::{NetworkSpec, SubnetAllocation};
use model::service::{EndpointMode, NetworkAttachmentSpec, Service, VirtualIp};
use model::task::{NetworkAttachment, TaskState};
use model::{Node, Object};

use crate::ClusterState;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Ipam(#[from] ipam::Error),
    #[error(
        "network {0} not found: create it with `netctl network create --driver overlay {0}` or check `netctl network ls`"
    )]
    UnknownNetwork(String),
    #[error("network {0} has no allocated subnet yet")]
    Unallocated(String),
    #[error("no available IP addresses on network {network}: {source}")]
    NetworkFull {
        network: String,
        source: ipam::Error,
    },
}

/// The pools given at swarm init (docker's default 10.0.0.0/8 in /24s when there are none).
pub fn pool_config(state: &ClusterState) -> PoolConfig {
    let Some(cluster) = &state.cluster else {
        return PoolConfig::swarm_default();
    };
    if cluster.default_addr_pools.is_empty() {
        return PoolConfig::swarm_default();
    }
    let pools: Result<Vec<IpNet>, _> = cluster
        .default_addr_pools
        .iter()
        .map(|p| p.parse::<IpNet>())
        .collect();
    match pools.map(|p| PoolConfig::new(p, cluster.subnet_size)) {
        Ok(Ok(config)) => config,
        _ => {
            tracing::warn!(pools = ?cluster.default_addr_pools, "stored address pools are invalid; using 10.0.0.0/8");
            PoolConfig::swarm_default()
        }
    }
}

/// Whether a task still holds its addresses: until it has stopped for good.
pub fn holds_addresses(state: TaskState) -> bool {
    !state.is_terminal()
}

/// What one object holds in the IPAM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    pub subnets: Vec<SubnetAllocation>,
    pub addresses: BTreeSet<IpAddr>,
}

/// What `o` holds: a network its subnets and VNIs, a service its VIPs, a task its addresses
/// until it stops for good, a node its own attachments.
pub fn holdings(o: &Object) -> Holdings {
    let mut h = Holdings::default();
    match o {
        Object::Network(n) => h.subnets = n.allocation.clone().unwrap_or_default(),
        Object::Service(s) => h.addresses = s.virtual_ips.iter().map(|v| v.addr.addr()).collect(),
        Object::Task(t) if holds_addresses(t.status.state) => {
            h.addresses = addresses_of(&t.networks).collect()
        }
        Object::Node(n) => h.addresses = addresses_of(&n.attachments).collect(),
        _ => {}
    }
    h
}

fn addresses_of(a: &[NetworkAttachment]) -> impl Iterator<Item = IpAddr> + '_ {
    a.iter().flat_map(|a| a.addresses.iter().map(|n| n.addr()))
}

fn subnet_request(s: &SubnetAllocation) -> SubnetRequest {
    let mut r = SubnetRequest::new(s.subnet).with_gateway(s.gateway);
    if let Some(range) = s.ip_range {
        r = r.with_ip_range(range);
    }
    r
}

/// Marks `h` as used. Idempotent: what is already held stays held. Conflicts (which a correct
/// leader never writes) are logged, not fatal.
pub fn hold(ipam: &mut Ipam, h: &Holdings) {
    for s in &h.subnets {
        if ipam.subnets().get(s.subnet).is_none()
            && let Err(e) = ipam.subnets_mut().request(&subnet_request(s))
        {
            tracing::warn!(subnet = %s.subnet, error = %e, "stored subnet conflicts");
        }
        if !ipam.vnis().is_allocated(s.vni)
            && let Err(e) = ipam.vnis_mut().request(s.vni)
        {
            tracing::warn!(vni = s.vni, error = %e, "stored VNI conflicts");
        }
    }
    for addr in &h.addresses {
        let Some(subnet) = ipam.subnets().subnet_of(*addr) else {
            continue;
        };
        if !ipam.subnets().is_address_allocated(subnet, *addr)
            && let Err(e) = ipam.subnets_mut().request_address(subnet, *addr)
        {
            tracing::warn!(address = %addr, error = %e, "stored address conflicts");
        }
    }
}

/// Frees `h`.
pub fn release(ipam: &mut Ipam, h: &Holdings) {
    for addr in &h.addresses {
        if let Some(subnet) = ipam.subnets().subnet_of(*addr)
            && ipam.subnets().is_address_allocated(subnet, *addr)
        {
            let _ = ipam.subnets_mut().release_address(subnet, *addr);
        }
    }
    for s in &h.subnets {
        if ipam.subnets().get(s.subnet).is_some() {
            let _ = ipam.subnets_mut().release(s.subnet);
        }
        if ipam.vnis().is_allocated(s.vni) {
            let _ = ipam.vnis_mut().release(s.vni);
        }
    }
}

/// Keeps the IPAM in step with one object's change (`None` = absent): releases what the object
/// no longer holds, holds what it newly holds. Returns whether anything was released.
pub fn update_holdings(ipam: &mut Ipam, old: Option<&Object>, new: Option<&Object>) -> bool {
    let before = old.map(holdings).unwrap_or_default();
    let after = new.map(holdings).unwrap_or_default();
    if before == after {
        return false;
    }
    let lost = Holdings {
        subnets: before
            .subnets
            .iter()
            .filter(|s| !after.subnets.contains(s))
            .cloned()
            .collect(),
        addresses: before
            .addresses
            .difference(&after.addresses)
            .copied()
            .collect(),
    };
    // Addresses before subnets: a network is removed only once nothing in it is held.
    release(ipam, &lost);
    hold(ipam, &after);
    !lost.addresses.is_empty() || !lost.subnets.is_empty()
}

/// The IPAM as the state records it: networks first (their subnets), then everything holding
/// addresses in them.
pub fn ipam_from_state(state: &ClusterState) -> Ipam {
    let mut ipam = Ipam::new(pool_config(state));
    for n in state.networks.values() {
        hold(&mut ipam, &holdings(&Object::Network(n.clone())));
    }
    for s in state.services.values() {
        hold(&mut ipam, &holdings(&Object::Service(s.clone())));
    }
    for t in state.tasks.values() {
        hold(&mut ipam, &holdings(&Object::Task(t.clone())));
    }
    for n in state.nodes.values() {
        hold(&mut ipam, &holdings(&Object::Node(n.clone())));
    }
    ipam
}

fn parse<T: std::str::FromStr>(what: &'static str, value: &str) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    value.trim().parse::<T>().map_err(|e| Error::Invalid {
        what,
        value: value.to_string(),
        reason: e.to_string(),
    })
}

fn user_request(
    subnet: &str,
    gateway: Option<&str>,
    ip_range: Option<&str>,
) -> Result<SubnetRequest, Error> {
    let mut r = SubnetRequest::new(parse::<IpNet>("subnet", subnet)?);
    if let Some(g) = gateway {
        r = r.with_gateway(parse::<IpAddr>("gateway", g)?);
    }
    if let Some(range) = ip_range {
        r = r.with_ip_range(parse::<IpNet>("ip-range", range)?);
    }
    Ok(r)
}

/// Checks a network spec and allocates its subnets (as given, or the lowest free one of the pools)
/// and a VNI per subnet, reserving them in `ipam`. On an error nothing stays reserved.
pub fn allocate_network(
    ipam: &mut Ipam,
    spec: &NetworkSpec,
) -> Result<Vec<SubnetAllocation>, Error> {
    let mut out = Vec::new();
    let r = allocate_network_into(ipam, spec, &mut out);
    if r.is_err() {
        release(
            ipam,
            &Holdings {
                subnets: out.clone(),
                ..Default::default()
            },
        );
    }
    r.map(|()| out)
}

fn allocate_network_into(
    ipam: &mut Ipam,
    spec: &NetworkSpec,
    out: &mut Vec<SubnetAllocation>,
) -> Result<(), Error> {
    let configs: Vec<_> = if spec.ipam.is_empty() {
        vec![Default::default()]
    } else {
        spec.ipam.clone()
    };
    // The API refuses these at create; a spec that still has them (stored before) is not
    // allocated: its tasks would get no interface in the extra subnets, or no IPv6 overlay.
    if configs.len() > 1 {
        return Err(Error::Invalid {
            what: "IPAM config",
            value: format!("{} subnets", configs.len()),
            reason: "networks with more than one subnet are not supported yet".into(),
        });
    }
    for c in &configs {
        let info = match &c.subnet {
            Some(subnet) => {
                let r = user_request(subnet, c.gateway.as_deref(), c.ip_range.as_deref())?;
                if r.subnet.addr().is_ipv6() {
                    return Err(Error::Invalid {
                        what: "subnet",
                        value: subnet.clone(),
                        reason: "IPv6 networks are not supported yet".into(),
                    });
                }
                ipam.subnets_mut().request(&r)?
            }
            None => {
                if let Some(g) = &c.gateway {
                    return Err(Error::Invalid {
                        what: "gateway",
                        value: g.clone(),
                        reason: "a gateway needs its subnet: add --subnet".into(),
                    });
                }
                if let Some(r) = &c.ip_range {
                    return Err(Error::Invalid {
                        what: "ip-range",
                        value: r.clone(),
                        reason: "an ip-range needs its subnet: add --subnet".into(),
                    });
                }
                ipam.subnets_mut().allocate()?
            }
        };
        let vni = match ipam.vnis_mut().allocate() {
            Ok(v) => v,
            Err(e) => {
                let _ = ipam.subnets_mut().release(info.subnet);
                return Err(e.into());
            }
        };
        out.push(SubnetAllocation {
            subnet: info.subnet,
            gateway: info.gateway,
            ip_range: info.ip_range,
            vni,
        });
    }
    Ok(())
}

/// The first subnet of a network, where its VIPs and addresses come from, and its name.
fn network_subnet(state: &ClusterState, network_id: &str) -> Result<(IpNet, String), Error> {
    let net = state
        .networks
        .get(network_id)
        .ok_or_else(|| Error::UnknownNetwork(network_id.to_string()))?;
    let first = net
        .allocation
        .as_ref()
        .and_then(|a| a.first())
        .ok_or_else(|| Error::Unallocated(net.spec.name.clone()))?;
    Ok((first.subnet, net.spec.name.clone()))
}

/// A fresh address on a network, reserved; shown with the subnet's prefix length.
fn allocate_in(ipam: &mut Ipam, state: &ClusterState, network_id: &str) -> Result<IpNet, Error> {
    let (subnet, name) = network_subnet(state, network_id)?;
    let addr = ipam
        .subnets_mut()
        .allocate_address(subnet)
        .map_err(|source| Error::NetworkFull {
            network: name,
            source,
        })?;
    Ok(IpNet::new(addr, subnet.prefix_len()).expect("a subnet's prefix fits its address"))
}

fn give_back(ipam: &mut Ipam, addrs: impl IntoIterator<Item = IpNet>) {
    release(
        ipam,
        &Holdings {
            addresses: addrs.into_iter().map(|a| a.addr()).collect(),
            ..Default::default()
        },
    );
}

/// Gives a vip-mode service one virtual IP per attached network (keeping those it has), drops the
/// VIPs of networks it left; a dnsrr service has none. New VIPs are reserved in `ipam`; dropped
/// ones are released when the changed service is recorded.
pub fn allocate_vips(
    ipam: &mut Ipam,
    state: &ClusterState,
    service: &mut Service,
) -> Result<(), Error> {
    if service.spec.endpoint.mode == EndpointMode::Dnsrr {
        service.virtual_ips.clear();
        return Ok(());
    }
    let wanted: Vec<&str> = service
        .spec
        .networks
        .iter()
        .map(|n| n.target.as_str())
        .collect();
    service
        .virtual_ips
        .retain(|v| wanted.contains(&v.network_id.as_str()));
    let mut fresh = Vec::new();
    for net in wanted {
        if service.virtual_ips.iter().any(|v| v.network_id == net) {
            continue;
        }
        match allocate_in(ipam, state, net) {
            Ok(addr) => {
                fresh.push(addr);
                service.virtual_ips.push(VirtualIp {
                    network_id: net.to_string(),
                    addr,
                });
            }
            Err(e) => {
                give_back(ipam, fresh);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The ingress network (the routing mesh's) new tasks attach to, if there is one.
pub fn ingress_network(state: &ClusterState) -> Option<&model::Network> {
    state.networks.values().find(|n| n.is_current_ingress())
}

/// The networks a service's tasks are attached to: the service's own, then the ingress network
/// when it publishes a port through the routing mesh (as docker attaches them).
pub fn task_networks(state: &ClusterState, service: &Service) -> Vec<NetworkAttachmentSpec> {
    let mut out = service.spec.networks.clone();
    if service.publishes_ingress()
        && let Some(n) = ingress_network(state)
        && !out.iter().any(|a| a.target == n.meta.id)
    {
        out.push(NetworkAttachmentSpec {
            target: n.meta.id.clone(),
            aliases: vec![],
        });
    }
    out
}

/// Gives the listed new tasks of running services an address on each of their service's networks
/// and moves them to pending. A network without free addresses leaves the task pending, with the
/// reason in its status (shown by `service ps`), to be retried later.
pub fn allocate_tasks(
    state: &mut ClusterState,
    ipam: &mut Ipam,
    candidates: impl IntoIterator<Item = String>,
    now: DateTime<Utc>,
) {
    // Lower slots first, so which replicas wait for addresses is predictable.
    let mut waiting: Vec<(String, u64, DateTime<Utc>, String)> = candidates
        .into_iter()
        .filter_map(|id| state.tasks.get(&id))
        .filter(|t| {
            t.desired_state == TaskState::Running
                && matches!(t.status.state, TaskState::New | TaskState::Pending)
        })
        .map(|t| {
            (
                t.service_id.clone(),
                t.slot,
                t.meta.created_at,
                t.meta.id.clone(),
            )
        })
        .collect();
    waiting.sort();
    for (_, _, _, id) in waiting {
        let task = &state.tasks[&id];
        let Some(service) = state.services.get(&task.service_id) else {
            continue;
        };
        let mut networks = task.networks.clone();
        let mut fresh = Vec::new();
        let mut failure = None;
        if service.publishes_ingress() && ingress_network(state).is_none() {
            failure = Some(
                "the service publishes ports through the routing mesh and there is no ingress network: create it (`netctl ingress recreate`)".to_string(),
            );
        }
        for attach in task_networks(state, service)
            .iter()
            .filter(|_| failure.is_none())
        {
            if networks.iter().any(|a| a.network_id == attach.target) {
                continue;
            }
            match allocate_in(ipam, state, &attach.target) {
                Ok(addr) => {
                    fresh.push(addr);
                    networks.push(NetworkAttachment {
                        network_id: attach.target.clone(),
                        addresses: vec![addr],
                        aliases: attach.aliases.clone(),
                    })
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        let task = state.tasks.get_mut(&id).expect("task listed above");
        if failure.is_some() {
            // Give back what this pass took for the task; it retries as a whole.
            give_back(ipam, fresh);
            if task.status.state != TaskState::Pending || task.status.err != failure {
                task.status.state = TaskState::Pending;
                task.status.err = failure;
                task.status.message = "pending task allocation".into();
                task.status.timestamp = now;
            }
            continue;
        }
        if task.networks != networks || task.status.state == TaskState::New {
            task.networks = networks;
            task.status.state = TaskState::Pending;
            task.status.err = None;
            task.status.message = "allocated".into();
            task.status.timestamp = now;
        }
    }
}

/// Whether every network of the task's service has an address for the task.
pub fn is_allocated(state: &ClusterState, task: &model::Task) -> bool {
    state.services.get(&task.service_id).is_some_and(|s| {
        task_networks(state, s)
            .iter()
            .all(|n| task.networks.iter().any(|a| a.network_id == n.target))
    })
}

/// The networks a node needs its own address on: those of its tasks that hold addresses.
pub fn node_networks<'a>(tasks: impl IntoIterator<Item = &'a model::Task>) -> BTreeSet<String> {
    tasks
        .into_iter()
        .filter(|t| holds_addresses(t.status.state))
        .flat_map(|t| t.networks.iter().map(|a| a.network_id.clone()))
        .collect()
}

/// Makes a node's attachments match `wanted` networks: keeps those it has, allocates the missing
/// (reserved in `ipam`), drops the others (released when the node is recorded). Networks that
/// cannot give an address are skipped (logged) and retried on a later pass. Returns whether the
/// node changed.
pub fn allocate_node_attachments(
    ipam: &mut Ipam,
    state: &ClusterState,
    node: &mut Node,
    wanted: &BTreeSet<String>,
) -> bool {
    let before = node.attachments.clone();
    node.attachments.retain(|a| wanted.contains(&a.network_id));
    let have: BTreeMap<String, ()> = node
        .attachments
        .iter()
        .map(|a| (a.network_id.clone(), ()))
        .collect();
    for net in wanted.iter().filter(|n| !have.contains_key(*n)) {
        match allocate_in(ipam, state, net) {
            Ok(addr) => node.attachments.push(NetworkAttachment {
                network_id: net.clone(),
                addresses: vec![addr],
                aliases: vec![],
            }),
            Err(e) => {
                tracing::info!(node = %node.meta.id, network = %net, error = %e, "no load-balancer address for the node yet");
            }
        }
    }
    node.attachments
        .sort_by(|a, b| a.network_id.cmp(&b.network_id));
    node.attachments != before
}
