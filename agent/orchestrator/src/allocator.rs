//! Allocation on the leader: subnets and VNIs of networks, VIPs of services, addresses of tasks.
//!
//! The [`Ipam`] is rebuilt from the state each time ([`ipam_from_state`]): what the store records
//! is the truth, so a new leader, a failed proposal or a deleted object needs no bookkeeping.
//! Addresses of tasks that have stopped for good are free again.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use ipam::ipnet::IpNet;
use ipam::{Ipam, PoolConfig, SubnetRequest};
use model::network::{NetworkSpec, SubnetAllocation};
use model::service::{EndpointMode, Service, VirtualIp};
use model::task::{NetworkAttachment, TaskState};

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

/// The IPAM as the state records it. Conflicting records (which a correct leader never writes)
/// are logged and skipped rather than stopping allocation.
pub fn ipam_from_state(state: &ClusterState) -> Ipam {
    let mut ipam = Ipam::new(pool_config(state));
    for net in state.networks.values() {
        for s in net.allocation.iter().flatten() {
            let request = match subnet_request(&s.subnet, Some(&s.gateway), s.ip_range.as_deref()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(network = %net.spec.name, error = %e, "skipping a stored subnet");
                    continue;
                }
            };
            if let Err(e) = ipam.subnets_mut().request(&request) {
                tracing::warn!(network = %net.spec.name, error = %e, "stored subnet conflicts");
            }
            if let Err(e) = ipam.vnis_mut().request(s.vni) {
                tracing::warn!(network = %net.spec.name, error = %e, "stored VNI conflicts");
            }
        }
    }
    let vips = state
        .services
        .values()
        .flat_map(|s| s.virtual_ips.iter().map(|v| &v.addr));
    let task_addrs = state
        .tasks
        .values()
        .filter(|t| holds_addresses(t.status.state))
        .flat_map(|t| t.networks.iter().flat_map(|a| a.addresses.iter()));
    for cidr in vips.chain(task_addrs) {
        let Some(addr) = cidr_addr(cidr) else {
            tracing::warn!(address = %cidr, "skipping a malformed stored address");
            continue;
        };
        let Some(subnet) = ipam.subnets().subnet_of(addr) else {
            continue;
        };
        if let Err(e) = ipam.subnets_mut().request_address(subnet, addr) {
            tracing::warn!(address = %cidr, error = %e, "stored address conflicts");
        }
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

fn subnet_request(
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

/// The address of a CIDR string ("10.0.1.5/24" -> 10.0.1.5); a bare address is accepted too.
pub fn cidr_addr(cidr: &str) -> Option<IpAddr> {
    cidr.split('/').next()?.parse().ok()
}

/// Checks a network spec and allocates its subnets (as given, or the lowest free one of the pools)
/// and a VNI per subnet.
pub fn allocate_network(
    state: &ClusterState,
    spec: &NetworkSpec,
) -> Result<Vec<SubnetAllocation>, Error> {
    let mut ipam = ipam_from_state(state);
    let mut out = Vec::new();
    let configs: Vec<_> = if spec.ipam.is_empty() {
        vec![Default::default()]
    } else {
        spec.ipam.clone()
    };
    for c in &configs {
        let info = match &c.subnet {
            Some(subnet) => {
                let r = subnet_request(subnet, c.gateway.as_deref(), c.ip_range.as_deref())?;
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
        let vni = ipam.vnis_mut().allocate()?;
        out.push(SubnetAllocation {
            subnet: info.subnet.to_string(),
            gateway: info.gateway.to_string(),
            ip_range: info.ip_range.map(|r| r.to_string()),
            vni,
        });
    }
    Ok(out)
}

/// The first subnet of a network, where its VIPs and task addresses come from.
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
    Ok((
        parse::<IpNet>("subnet", &first.subnet)?,
        net.spec.name.clone(),
    ))
}

fn allocate_in(ipam: &mut Ipam, state: &ClusterState, network_id: &str) -> Result<String, Error> {
    let (subnet, name) = network_subnet(state, network_id)?;
    let addr = ipam
        .subnets_mut()
        .allocate_address(subnet)
        .map_err(|source| Error::NetworkFull {
            network: name,
            source,
        })?;
    Ok(format!("{addr}/{}", subnet.prefix_len()))
}

/// Gives a vip-mode service one virtual IP per attached network (keeping those it has), drops the
/// VIPs of networks it left; a dnsrr service has none.
pub fn allocate_vips(state: &ClusterState, service: &mut Service) -> Result<(), Error> {
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
    let mut ipam = ipam_from_state(state);
    for net in wanted {
        if service.virtual_ips.iter().any(|v| v.network_id == net) {
            continue;
        }
        let addr = allocate_in(&mut ipam, state, net)?;
        service.virtual_ips.push(VirtualIp {
            network_id: net.to_string(),
            addr,
        });
    }
    Ok(())
}

/// Gives every new task of a running service an address on each of the service's networks and
/// moves it to pending. A network without free addresses leaves the task pending, with the reason
/// in its status (shown by `service ps`), to be retried on the next pass.
pub fn allocate_tasks(state: &mut ClusterState, now: DateTime<Utc>) {
    let mut ipam = ipam_from_state(state);
    // Lower slots first, so which replicas wait for addresses is predictable.
    let mut waiting: Vec<(&str, u64, DateTime<Utc>, String)> = state
        .tasks
        .values()
        .filter(|t| {
            t.desired_state == TaskState::Running
                && matches!(t.status.state, TaskState::New | TaskState::Pending)
        })
        .map(|t| {
            (
                t.service_id.as_str(),
                t.slot,
                t.meta.created_at,
                t.meta.id.clone(),
            )
        })
        .collect();
    waiting.sort();
    let ids: Vec<String> = waiting.into_iter().map(|w| w.3).collect();
    for id in ids {
        let task = &state.tasks[&id];
        let Some(service) = state.services.get(&task.service_id) else {
            continue;
        };
        let mut networks = task.networks.clone();
        let mut failure = None;
        for attach in &service.spec.networks {
            if networks.iter().any(|a| a.network_id == attach.target) {
                continue;
            }
            match allocate_in(&mut ipam, state, &attach.target) {
                Ok(addr) => networks.push(NetworkAttachment {
                    network_id: attach.target.clone(),
                    addresses: vec![addr],
                    aliases: attach.aliases.clone(),
                }),
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        let task = state.tasks.get_mut(&id).expect("task listed above");
        if failure.is_some() {
            // Give back what this pass took for the task; it retries as a whole.
            for a in networks.iter().filter(|a| !task.networks.contains(a)) {
                for cidr in &a.addresses {
                    if let Some(addr) = cidr_addr(cidr)
                        && let Some(subnet) = ipam.subnets().subnet_of(addr)
                    {
                        let _ = ipam.subnets_mut().release_address(subnet, addr);
                    }
                }
            }
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
        s.spec
            .networks
            .iter()
            .all(|n| task.networks.iter().any(|a| a.network_id == n.target))
    })
}
