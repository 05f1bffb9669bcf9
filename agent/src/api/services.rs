//! /services handlers: `service create / ls / inspect / update / rm`, in docker's shapes (the
//! `api` crate's `service` module). An update is docker's: the whole new spec, checked against
//! the `?version=` it was read at.
//!
//! Creation and updates are decided on the leader's orchestrator (`orchestration::leader`):
//! lock, check, resolve networks, `orchestrator::allocator::allocate_vips`, record, write. The leader loop sees the new spec and
//! creates or replaces the tasks; removal deletes the service object and the leader loop stops
//! and removes its tasks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ::api::service::{
    CreateResponse, Service as WireService, ServiceSpec, ServiceStatus, UpdateResponse,
};
use axum::Json;
use axum::extract::{Path, State};
use model::node::{Availability, NodeState};
use model::service::{NetworkAttachmentSpec, ServiceMode};
use model::task::TaskState;
use model::{Kind, Meta, Object, Service, Task};
use orchestrator::ClusterState;
use orchestrator::allocator::allocate_vips;
use orchestrator::constraint;
use orchestrator::orchestrate::node_takes_new_tasks;

use super::ApiJson;
use super::networks::{find as find_network, member, resolve};
use super::query::{ApiQuery, ListQuery, UpdateQuery, bool_value};
use crate::agent::Agent;
use crate::error::{Code, Failure, Result};
use crate::orchestration;

pub fn service_not_found(reference: &str) -> Failure {
    Failure::not_found(format!(
        "no such service: {reference} (see `netctl service ls`)"
    ))
}

/// A service by id, name or unique id prefix.
pub fn find<'a>(state: &'a ClusterState, reference: &str) -> Result<&'a Service> {
    find_among(state.services.values(), reference)
}

/// The service `reference` names, read from the replica without copying the others: `service
/// scale` and `update` start here (and `service ps` filters by it), so with thousands of
/// services this costs a walk, not a copy of the store.
pub fn lookup(m: &crate::member::Member, reference: &str) -> Result<Service> {
    m.store()?.scan(Kind::Service, |objects| {
        let services = objects.filter_map(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        });
        find_among(services, reference).cloned()
    })?
}

/// The service `reference` names (id, name, or unique id prefix) among `services`.
fn find_among<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    reference: &str,
) -> Result<&'a Service> {
    resolve(
        services,
        reference,
        |s| &s.meta.id,
        |s| &s.spec.name,
        "service",
        || service_not_found(reference),
    )
}

fn check_constraints(c: &[String]) -> Result<()> {
    constraint::parse_all(c)
        .map(|_| ())
        .map_err(|e| Failure::bad_request(e.to_string()))
}

/// Resolves network targets (ids, names, prefixes) to attachments by id; refuses unknown,
/// repeated and ingress ones.
fn attachments(
    state: &ClusterState,
    refs: &[NetworkAttachmentSpec],
) -> Result<Vec<NetworkAttachmentSpec>> {
    let mut out: Vec<NetworkAttachmentSpec> = Vec::new();
    for r in refs {
        let n = find_network(state, &r.target)?;
        if n.spec.ingress {
            return Err(Failure::bad_request(format!(
                "a service cannot be explicitly attached to the ingress network {:?}",
                n.spec.name
            )));
        }
        if out.iter().any(|a| a.target == n.meta.id) {
            return Err(Failure::bad_request(format!(
                "network {} is given more than once",
                n.spec.name
            )));
        }
        out.push(NetworkAttachmentSpec {
            target: n.meta.id.clone(),
            aliases: r.aliases.clone(),
        });
    }
    Ok(out)
}

fn allocation_failure(e: orchestrator::allocator::Error) -> Failure {
    Failure::bad_request(e.to_string())
}

fn duplicate(state: &ClusterState, name: &str, except: Option<&str>) -> Result<()> {
    if state
        .services
        .values()
        .any(|s| s.spec.name == name && Some(s.meta.id.as_str()) != except)
    {
        return Err(Failure::conflict(format!(
            "service with name {name} already exists"
        )));
    }
    Ok(())
}

/// The spec as stored: converted, constraints checked, networks resolved.
pub(crate) fn model_spec(
    state: &ClusterState,
    spec: &ServiceSpec,
) -> Result<(model::service::ServiceSpec, Vec<String>)> {
    let (mut m, warnings) = ::api::service::spec_to_model(spec)?;
    check_constraints(&m.task.constraints)?;
    m.networks = attachments(state, &m.networks)?;
    Ok((m, warnings))
}

/// `POST /services/create`.
pub async fn create(
    State(agent): State<Arc<Agent>>,
    ApiJson(req): ApiJson<ServiceSpec>,
) -> Result<(axum::http::StatusCode, Json<CreateResponse>)> {
    let m = member(&agent)?;
    let mut leader = orchestration::leader(&m).await?;
    let state = leader.state();
    let (spec, warnings) = model_spec(state, &req)?;
    duplicate(state, &spec.name, None)?;
    let mut service = Service {
        meta: Meta::new(),
        spec,
        virtual_ips: Vec::new(),
        ports: vec![],
    };
    publish(&leader, &mut service)?;
    let (ipam, state) = leader.ipam_mut();
    allocate_vips(ipam, state, &mut service).map_err(allocation_failure)?;
    let id = service.meta.id.clone();
    let changes = orchestrator::Changes {
        put: vec![Object::Service(service)],
        delete: vec![],
    };
    leader.record(&changes);
    orchestration::write_decided(&m, &mut leader, &changes).await?;
    Ok((
        axum::http::StatusCode::CREATED,
        Json(CreateResponse { id, warnings }),
    ))
}

/// The service's published ports, allocated on the leader: a port another service publishes is
/// refused naming it; a port through the routing mesh needs the ingress network.
fn publish(leader: &orchestrator::Leader, service: &mut Service) -> Result<()> {
    if service.publishes_ingress()
        && orchestrator::allocator::ingress_network(leader.state()).is_none()
    {
        return Err(Failure::bad_request(
            "there is no ingress network for the routing mesh: create it (`netctl ingress recreate`), or publish with mode=host",
        ));
    }
    leader
        .allocate_ports(service)
        .map_err(|e| Failure::bad_request(e.to_string()))
}

fn is_version_conflict(f: &Failure) -> bool {
    f.code == Code::Conflict && f.message.contains("changed concurrently")
}

/// `POST /services/{ref}/update?version=`: the whole new spec.
pub async fn update(
    State(agent): State<Arc<Agent>>,
    Path(reference): Path<String>,
    ApiQuery(q): ApiQuery<UpdateQuery>,
    ApiJson(req): ApiJson<ServiceSpec>,
) -> Result<Json<UpdateResponse>> {
    let m = member(&agent)?;
    if q.rollback.as_deref().is_some_and(|r| r == "previous") {
        return Err(Failure::bad_request(
            "rollback is not supported: netagent keeps no previous spec; update the service to the spec you want",
        ));
    }
    let version = q.version()?;
    let mut leader = orchestration::leader(&m).await?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let state = leader.state();
        let current = find(state, &reference)?;
        if let Some(v) = version
            && v != current.meta.version
        {
            return Err(Failure::conflict(format!(
                "update out of sequence: service {} is at version {}, not {v}; read it again and retry",
                current.spec.name, current.meta.version
            )));
        }
        let (spec, warnings) = model_spec(state, &req)?;
        if spec.name != current.spec.name {
            return Err(Failure::bad_request(format!(
                "renaming services is not supported: service {} keeps its name (remove it and create {})",
                current.spec.name, spec.name
            )));
        }
        let global = |m: &ServiceMode| matches!(m, ServiceMode::Global);
        if global(&spec.mode) != global(&current.spec.mode) {
            return Err(Failure::bad_request(format!(
                "service mode change is not allowed: service {} stays {}",
                current.spec.name,
                if global(&current.spec.mode) {
                    "global"
                } else {
                    "replicated"
                }
            )));
        }
        if spec == current.spec {
            return Ok(Json(UpdateResponse { warnings }));
        }
        let name = current.spec.name.clone();
        let mut service = current.clone();
        service.spec = spec;
        publish(&leader, &mut service)?;
        if service.spec.networks != current.spec.networks
            || service.spec.endpoint.mode != current.spec.endpoint.mode
        {
            let (ipam, state) = leader.ipam_mut();
            allocate_vips(ipam, state, &mut service).map_err(allocation_failure)?;
        }
        let changes = orchestrator::Changes {
            put: vec![Object::Service(service)],
            delete: vec![],
        };
        leader.record(&changes);
        let written = orchestration::write_decided(&m, &mut leader, &changes).await;
        tracing::debug!(service = %name, ok = written.is_ok(), "service updated");
        match written {
            Ok(_) => return Ok(Json(UpdateResponse { warnings })),
            Err(f) if is_version_conflict(&f) && attempts < 5 && version.is_none() => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(f) => return Err(f),
        }
    }
}

/// `DELETE /services/{ref}`.
pub async fn remove(State(agent): State<Arc<Agent>>, Path(reference): Path<String>) -> Result<()> {
    let m = member(&agent)?;
    let mut leader = orchestration::leader(&m).await?;
    let s = find(leader.state(), &reference)?;
    let changes = orchestrator::Changes {
        put: vec![],
        delete: vec![(Kind::Service, s.meta.id.clone())],
    };
    leader.record(&changes);
    orchestration::write_decided(&m, &mut leader, &changes).await?;
    Ok(())
}

/// A live task: one that should run (not being shut down).
fn is_live(t: &Task) -> bool {
    t.desired_state <= TaskState::Running
}

/// Running and desired task counts, as docker's `service ls` REPLICAS.
pub fn service_status(state: &ClusterState, tasks: &[&Task], s: &Service) -> ServiceStatus {
    let live: Vec<&Task> = tasks.iter().copied().filter(|t| is_live(t)).collect();
    let running = |t: &&&Task| t.status.state == TaskState::Running;
    let completed = tasks
        .iter()
        .filter(|t| t.status.state == TaskState::Complete)
        .count() as u64;
    match s.spec.mode {
        ServiceMode::Replicated { replicas } => {
            let slots: BTreeSet<u64> = live
                .iter()
                .filter(running)
                .filter(|t| t.slot >= 1 && t.slot <= replicas)
                .map(|t| t.slot)
                .collect();
            ServiceStatus {
                running_tasks: slots.len() as u64,
                desired_tasks: replicas,
                completed_tasks: completed,
            }
        }
        ServiceMode::Global => {
            let constraints = constraint::parse_all(&s.spec.task.constraints).unwrap_or_default();
            let with_task: BTreeSet<&str> =
                live.iter().filter_map(|t| t.node_id.as_deref()).collect();
            let eligible: BTreeSet<&str> = state
                .nodes
                .values()
                .filter(|n| {
                    constraint::node_matches(&constraints, n)
                        && n.spec.availability != Availability::Drain
                        && n.status.state != NodeState::Down
                        && (node_takes_new_tasks(n) || with_task.contains(n.meta.id.as_str()))
                })
                .map(|n| n.meta.id.as_str())
                .collect();
            let nodes: BTreeSet<&str> = live
                .iter()
                .filter(running)
                .filter_map(|t| t.node_id.as_deref())
                .filter(|n| eligible.contains(n))
                .collect();
            ServiceStatus {
                running_tasks: nodes.len() as u64,
                desired_tasks: eligible.len() as u64,
                completed_tasks: completed,
            }
        }
    }
}

/// `GET /services?filters=&status=`: sorted by name, as docker lists them.
pub async fn list(
    State(agent): State<Arc<Agent>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<WireService>>> {
    let f = q.filters(::api::service::LIST_FILTERS)?;
    for mode in f.get("mode") {
        if !matches!(mode, "replicated" | "global") {
            return Err(Failure::bad_request(format!(
                "invalid mode filter {mode:?}: use replicated or global"
            )));
        }
    }
    let status = bool_value(q.status.as_deref());
    let m = member(&agent)?;
    // Tasks and nodes only for the status (the tasks outnumber everything else).
    let kinds: &[Kind] = if status {
        &[Kind::Service, Kind::Task, Kind::Node]
    } else {
        &[Kind::Service]
    };
    let state = orchestration::snapshot_of(&m, kinds)?;
    let mut by_service: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in state.tasks.values() {
        by_service.entry(t.service_id.as_str()).or_default().push(t);
    }
    let mut services: Vec<&Service> = state
        .services
        .values()
        .filter(|s| ::api::service::matches(&f, s))
        .collect();
    services.sort_by(|a, b| {
        a.spec
            .name
            .cmp(&b.spec.name)
            .then(a.meta.id.cmp(&b.meta.id))
    });
    Ok(Json(
        services
            .into_iter()
            .map(|s| {
                let tasks = by_service.get(s.meta.id.as_str()).map_or(&[][..], |t| t);
                ::api::service::service(s, status.then(|| service_status(&state, tasks, s)))
            })
            .collect(),
    ))
}

/// `GET /services/{ref}` (`?insertDefaults=` is accepted: the spec is shown as stored).
pub async fn inspect(
    State(agent): State<Arc<Agent>>,
    Path(reference): Path<String>,
) -> Result<Json<WireService>> {
    let m = member(&agent)?;
    let s = lookup(&m, &reference)?;
    Ok(Json(::api::service::service(&s, None)))
}
