//! /networks handlers: `network create / ls / inspect / rm`, in docker's shapes (the `api`
//! crate's `network` module).
//!
//! Creation is decided on the leader's orchestrator (`orchestration::leader`): lock, check the
//! name, `orchestrator::allocator::allocate_network`, record, write — so two concurrent
//! creations never get the same subnet or VNI, and nothing is written on error. Removal takes
//! the same lock, so a service cannot attach to a network being removed.

use std::collections::BTreeMap;
use std::sync::Arc;

use ::api::network::{
    CreateRequest, CreateResponse, EndpointResource, GossipView, NetworkResource, PeerInfo,
    SwarmEndpoint, mac, with_prefix,
};
use axum::Json;
use axum::extract::{Path, State};
use model::{Kind, Meta, Network, Object};
use orchestrator::ClusterState;
use orchestrator::allocator::{self, allocate_network};
use store::{Batch, Change};

use super::ApiJson;
use super::query::{ApiQuery, ListQuery};
use crate::agent::Agent;
use crate::error::{Code, Failure, Result};
use crate::member::{Member, not_in_swarm};
use crate::orchestration;

pub(crate) fn member(agent: &Agent) -> Result<Arc<Member>> {
    agent.member().ok_or_else(not_in_swarm)
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
) -> Result<(axum::http::StatusCode, Json<CreateResponse>)> {
    let m = member(&agent)?;
    let (spec, warning) = ::api::network::spec_of(&req)?;
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
        retiring: false,
    };
    let id = network.meta.id.clone();
    let changes = orchestrator::Changes {
        put: vec![Object::Network(network)],
        delete: vec![],
    };
    leader.record(&changes);
    orchestration::write_decided(&m, &mut leader, &changes).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(CreateResponse { id, warning }),
    ))
}

/// The network as this node sees it: stored (or assigned) spec and allocation, plus its gossip view.
pub fn network_view(m: &Member, state: &ClusterState, n: &Network) -> NetworkResource {
    let allocation = n.allocation.clone().unwrap_or_default();
    let hostname = |id: &str| {
        state
            .nodes
            .get(id)
            .map(|n| n.description.hostname.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let me = m.node_id();
    let mut view = GossipView::default();
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
            view.peers.push(PeerInfo {
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
                let (key, name) = if lb && n.spec.ingress {
                    // docker's name of a node's endpoint on ingress.
                    ("ingress-sbox".to_string(), "ingress-endpoint".to_string())
                } else if lb {
                    (
                        format!("lb-{}", n.spec.name),
                        format!("{}-endpoint", n.spec.name),
                    )
                } else {
                    (ep.task.clone(), ep.name.clone())
                };
                view.containers.insert(
                    key,
                    EndpointResource {
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
            view.endpoints.push(SwarmEndpoint {
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
        view.endpoints
            .sort_by(|a, b| a.name.cmp(&b.name).then(a.endpoint_id.cmp(&b.endpoint_id)));
        view.peers
            .sort_by(|a, b| a.name.cmp(&b.name).then(a.ip.cmp(&b.ip)));
    }
    ::api::network::resource(n, view)
}

/// What a network's view shows besides the networks: node names and service names (never the
/// tasks, which outnumber everything else in a large swarm).
const SHOWN: &[Kind] = &[Kind::Network, Kind::Node, Kind::Service];

/// `GET /networks?filters=`: sorted by name, as docker lists them (on a worker, its tasks'
/// networks).
pub async fn list(
    State(agent): State<Arc<Agent>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<NetworkResource>>> {
    let f = q.filters(::api::network::LIST_FILTERS)?;
    let m = member(&agent)?;
    let state = orchestration::visible(&m, SHOWN)?;
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
            .filter(|n| ::api::network::matches(&f, n))
            .collect(),
    ))
}

/// `GET /networks/{ref}[?verbose=true]`: with `verbose`, docker's `Services` (each service on
/// the network, its VIP and the running tasks this node knows) and netagent's `DNSRecords` (the
/// names this node's resolver serves for the network).
pub async fn inspect(
    State(agent): State<Arc<Agent>>,
    Path(reference): Path<String>,
    ApiQuery(q): ApiQuery<::api::query::InspectQuery>,
) -> Result<Json<NetworkResource>> {
    let m = member(&agent)?;
    let state = orchestration::visible(&m, SHOWN)?;
    let n = find(&state, &reference).map_err(|e| match e.code {
        Code::NotFound if m.manager.is_none() => Failure::not_found(format!(
            "network {reference} not found on this worker: a worker knows only the networks its tasks use; ask a manager for the others"
        )),
        _ => e,
    })?;
    let mut view = network_view(&m, &state, n);
    if q.verbose() {
        view.services = Some(services_view(&m, &state, n));
        view.dns_records = Some(
            m.resolver
                .get()
                .map(|r| {
                    r.records(&n.meta.id)
                        .iter()
                        .map(|r| r.to_string())
                        .collect()
                })
                .unwrap_or_default(),
        );
    }
    Ok(Json(view))
}

/// docker's verbose `Services` of a network: every service attached to it with its VIP and
/// published ports, and the running tasks (as this node's gossip knows them) with their node.
fn services_view(
    m: &Member,
    state: &ClusterState,
    n: &Network,
) -> BTreeMap<String, ::api::network::ServiceInfo> {
    let entries = m
        .gossip
        .get()
        .map(|g| g.endpoints(&n.meta.id))
        .unwrap_or_default();
    let vteps = m.gossip.get().map(|g| g.vteps()).unwrap_or_default();
    let mut out = BTreeMap::new();
    for s in state.services.values().filter(|s| {
        s.spec.networks.iter().any(|a| a.target == n.meta.id)
            || (n.spec.ingress && s.publishes_ingress())
    }) {
        let vip = s
            .virtual_ips
            .iter()
            .find(|v| v.network_id == n.meta.id)
            .map(|v| v.addr.addr().to_string())
            .unwrap_or_default();
        let ports = s
            .ports
            .iter()
            .map(|p| format!("Target: {}, Publish: {}", p.target, p.published))
            .collect();
        let mut tasks: Vec<::api::network::TaskInfo> = entries
            .iter()
            .filter(|e| e.endpoint.service == s.meta.id && !e.endpoint.disabled)
            .map(|e| ::api::network::TaskInfo {
                name: e.endpoint.name.clone(),
                endpoint_id: e.endpoint.id.clone(),
                endpoint_ip: e.endpoint.ip.to_string(),
                info: [(
                    "Host IP".to_string(),
                    vteps
                        .get(&e.owner)
                        .map(|ip| ip.to_string())
                        .unwrap_or_default(),
                )]
                .into(),
            })
            .collect();
        tasks.sort_by(|a, b| a.name.cmp(&b.name));
        out.insert(
            s.spec.name.clone(),
            ::api::network::ServiceInfo {
                vip,
                ports,
                local_lb_index: 0,
                tasks,
            },
        );
    }
    out
}

/// `DELETE /networks/{ref}`: refused while a service uses the network or a task still holds an
/// address on it.
pub async fn remove(State(agent): State<Arc<Agent>>, Path(reference): Path<String>) -> Result<()> {
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
    let mut publishing: Vec<&str> = state
        .services
        .values()
        .filter(|s| n.spec.ingress && s.publishes_ingress())
        .map(|s| s.spec.name.as_str())
        .collect();
    publishing.sort();
    if n.retiring {
        return Err(Failure::conflict(format!(
            "the ingress network {} is being replaced by `netctl ingress recreate`: the leader removes it once no task runs there",
            n.spec.name
        )));
    }
    if !publishing.is_empty() {
        return Err(Failure::conflict(format!(
            "the ingress network {} carries the published ports of service {}: change it in place with `netctl ingress recreate`, or remove their published ports first",
            n.spec.name,
            publishing.join(", ")
        )));
    }
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
    // Of this leader's term: no service may have been attached meanwhile by another leader.
    let batch = Batch::one(Change::Delete {
        kind: Kind::Network,
        id: n.meta.id.clone(),
        version: Some(n.meta.version),
    })
    .decided_in(leader.term());
    let changes = orchestrator::Changes {
        put: vec![],
        delete: vec![(Kind::Network, n.meta.id.clone())],
    };
    leader.record(&changes);
    if let Err(f) = m.write(batch).await {
        orchestration::refresh(&m, &mut leader, &changes);
        return Err(f);
    }
    Ok(())
}
