//! /services and /tasks handlers: `service create / ls / inspect / update / scale / rm / ps`,
//! answered in the docker API's shape (`docker service inspect`, `docker inspect <task>`).
//!
//! Creation and updates are decided on the leader under
//! [`Manager::alloc`](crate::member::Manager::alloc): snapshot, check, resolve networks,
//! `orchestrator::allocator::allocate_vips`, write (updates with a version check). The leader
//! loop sees the new spec and creates or replaces the tasks; removal deletes the service object
//! and the leader loop stops and removes its tasks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use model::node::{Availability, NodeState};
use model::service::{
    EndpointMode, EndpointSpec, NetworkAttachmentSpec, Protocol, PublishMode, ServiceMode,
    ServiceSpec, TaskTemplate,
};
use model::task::TaskState;
use model::{Kind, Meta, Object, Service, Task};
use orchestrator::ClusterState;
use orchestrator::allocator::allocate_vips;
use orchestrator::constraint;
use orchestrator::orchestrate::node_takes_new_tasks;
use serde::{Deserialize, Serialize};

use super::ApiJson;
use super::networks::{find as find_network, member, resolve, validate_name};
use super::views::Version;
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
    resolve(
        state.services.values(),
        reference,
        |s| &s.meta.id,
        |s| &s.spec.name,
        "service",
        || service_not_found(reference),
    )
}

/// A network to attach, by name, id or id prefix, with DNS aliases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRef {
    pub target: String,
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// `POST /services/create`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub name: String,
    /// "replicated" (the default) or "global".
    #[serde(default)]
    pub mode: Option<String>,
    /// Replicated only; 1 when not given. Signed so that a negative number gets a clear error.
    #[serde(default)]
    pub replicas: Option<i64>,
    #[serde(default)]
    pub networks: Vec<NetworkRef>,
    /// "vip" (the default) or "dnsrr".
    #[serde(default)]
    pub endpoint_mode: Option<String>,
    #[serde(default)]
    pub constraints: Vec<String>,
    /// KEY=VALUE.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// argv of the process every task runs.
    #[serde(default)]
    pub command: Vec<String>,
}

/// Answer of `POST /services/create`, as docker's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Created {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Warnings", default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `POST /services/{ref}/update`: changes to the current spec.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// The version the caller read (docker's `?version=`); refused if the service moved on.
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default)]
    pub replicas: Option<i64>,
    #[serde(default)]
    pub network_add: Vec<NetworkRef>,
    #[serde(default)]
    pub network_rm: Vec<String>,
    #[serde(default)]
    pub constraint_add: Vec<String>,
    #[serde(default)]
    pub constraint_rm: Vec<String>,
    /// KEY=VALUE, replacing any value of KEY.
    #[serde(default)]
    pub env_add: Vec<String>,
    /// Keys.
    #[serde(default)]
    pub env_rm: Vec<String>,
    #[serde(default)]
    pub label_add: BTreeMap<String, String>,
    #[serde(default)]
    pub label_rm: Vec<String>,
    #[serde(default)]
    pub endpoint_mode: Option<String>,
    /// A new argv for the tasks.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Replace every task even if nothing else changes (`--force`).
    #[serde(default)]
    pub force: bool,
}

/// Answer of `POST /services/{ref}/update`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Updated {
    #[serde(rename = "Warnings", default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// False when the update changed nothing.
    #[serde(rename = "Changed")]
    pub changed: bool,
}

pub fn replicas_value(n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| {
        Failure::bad_request(format!(
            "invalid replicas value {n}: must be a non-negative integer"
        ))
    })
}

fn mode_of(mode: Option<&str>, replicas: Option<i64>) -> Result<ServiceMode> {
    match mode.unwrap_or("replicated") {
        "replicated" => Ok(ServiceMode::Replicated {
            replicas: replicas.map(replicas_value).transpose()?.unwrap_or(1),
        }),
        "global" => {
            if replicas.is_some() {
                return Err(Failure::bad_request(
                    "replicas can only be used with replicated mode: drop --replicas, or use --mode replicated",
                ));
            }
            Ok(ServiceMode::Global)
        }
        other => Err(Failure::bad_request(format!(
            "invalid mode {other:?}: use replicated or global"
        ))),
    }
}

fn endpoint_mode_of(mode: &str) -> Result<EndpointMode> {
    match mode {
        "vip" => Ok(EndpointMode::Vip),
        "dnsrr" => Ok(EndpointMode::Dnsrr),
        other => Err(Failure::bad_request(format!(
            "invalid endpoint mode {other:?}: use vip or dnsrr"
        ))),
    }
}

fn check_constraints(c: &[String]) -> Result<()> {
    constraint::parse_all(c)
        .map(|_| ())
        .map_err(|e| Failure::bad_request(e.to_string()))
}

fn env_key(e: &str) -> &str {
    e.split_once('=').map(|(k, _)| k).unwrap_or(e)
}

fn check_env(env: &[String]) -> Result<()> {
    for e in env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() && !k.contains(char::is_whitespace) => {}
            _ => {
                return Err(Failure::bad_request(format!(
                    "invalid environment variable {e:?}: use KEY=VALUE"
                )));
            }
        }
    }
    Ok(())
}

fn check_labels<'a>(keys: impl IntoIterator<Item = &'a String>) -> Result<()> {
    if keys.into_iter().any(|k| k.is_empty()) {
        return Err(Failure::bad_request(
            "a label needs a key (--label key[=value])",
        ));
    }
    Ok(())
}

fn check_command(c: &[String]) -> Result<()> {
    if c.is_empty() || c[0].is_empty() {
        return Err(Failure::bad_request(
            "a service needs a command: give it after the options, e.g. `netctl service create --name web -- sleep infinity`",
        ));
    }
    Ok(())
}

/// Resolves network references to attachments by id; refuses unknown, repeated and ingress ones.
fn attachments(state: &ClusterState, refs: &[NetworkRef]) -> Result<Vec<NetworkAttachmentSpec>> {
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
        if r.aliases.iter().any(|a| a.is_empty()) {
            return Err(Failure::bad_request(format!(
                "an alias on network {} is empty",
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

pub async fn create(
    State(agent): State<Arc<Agent>>,
    ApiJson(req): ApiJson<CreateRequest>,
) -> Result<Json<Created>> {
    let m = member(&agent)?;
    validate_name("service", &req.name)?;
    let mode = mode_of(req.mode.as_deref(), req.replicas)?;
    let endpoint_mode = endpoint_mode_of(req.endpoint_mode.as_deref().unwrap_or("vip"))?;
    check_constraints(&req.constraints)?;
    check_env(&req.env)?;
    check_labels(req.labels.keys())?;
    check_command(&req.command)?;
    let mut leader = orchestration::leader(&m).await?;
    let state = leader.state();
    duplicate(state, &req.name, None)?;
    let networks = attachments(state, &req.networks)?;
    let mut service = Service {
        meta: Meta::new(),
        spec: ServiceSpec {
            name: req.name.clone(),
            labels: req.labels.clone(),
            mode,
            task: TaskTemplate {
                command: req.command.clone(),
                env: req.env.clone(),
                constraints: req.constraints.clone(),
                force_update: 0,
            },
            networks,
            endpoint: EndpointSpec {
                mode: endpoint_mode,
                ports: Vec::new(),
            },
        },
        virtual_ips: Vec::new(),
    };
    let (ipam, state) = leader.ipam_mut();
    allocate_vips(ipam, state, &mut service).map_err(allocation_failure)?;
    let id = service.meta.id.clone();
    let changes = orchestrator::Changes {
        put: vec![Object::Service(service)],
        delete: vec![],
    };
    leader.record(&changes);
    orchestration::write_decided(&m, &mut leader, &changes).await?;
    Ok(Json(Created {
        id,
        warnings: Vec::new(),
    }))
}

/// Applies an update request to a spec (the caller compares before and after).
fn apply_update(state: &ClusterState, spec: &mut ServiceSpec, req: &UpdateRequest) -> Result<()> {
    if let Some(r) = req.replicas {
        let r = replicas_value(r)?;
        match &mut spec.mode {
            ServiceMode::Replicated { replicas } => *replicas = r,
            ServiceMode::Global => {
                return Err(Failure::bad_request(format!(
                    "service {} is global: replicas (and scale) can only be used with replicated mode",
                    spec.name
                )));
            }
        }
    }
    if let Some(mode) = &req.endpoint_mode {
        spec.endpoint.mode = endpoint_mode_of(mode)?;
    }
    if let Some(c) = &req.command {
        check_command(c)?;
        spec.task.command = c.clone();
    }
    if req.force {
        spec.task.force_update += 1;
    }
    // Networks: removals (by name, id or prefix) first, then additions.
    for r in &req.network_rm {
        let n = find_network(state, r)?;
        spec.networks.retain(|a| a.target != n.meta.id);
    }
    let added = attachments(state, &req.network_add)?;
    for a in added {
        if spec.networks.iter().any(|x| x.target == a.target) {
            let name = state
                .networks
                .get(&a.target)
                .map(|n| n.spec.name.clone())
                .unwrap_or(a.target.clone());
            return Err(Failure::bad_request(format!(
                "service {} is already attached to network {name}",
                spec.name
            )));
        }
        spec.networks.push(a);
    }
    // Constraints: compared without spaces, as docker does.
    let squash = |c: &str| c.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let rm: BTreeSet<String> = req.constraint_rm.iter().map(|c| squash(c)).collect();
    spec.task.constraints.retain(|c| !rm.contains(&squash(c)));
    check_constraints(&req.constraint_add)?;
    for c in &req.constraint_add {
        if !spec.task.constraints.iter().any(|x| squash(x) == squash(c)) {
            spec.task.constraints.push(c.clone());
        }
    }
    // Environment: by key.
    check_env(&req.env_add)?;
    spec.task
        .env
        .retain(|e| !req.env_rm.iter().any(|k| env_key(e) == k));
    for e in &req.env_add {
        let key = env_key(e);
        spec.task.env.retain(|x| env_key(x) != key);
        spec.task.env.push(e.clone());
    }
    // Labels.
    check_labels(req.label_add.keys())?;
    for k in &req.label_rm {
        spec.labels.remove(k);
    }
    for (k, v) in &req.label_add {
        spec.labels.insert(k.clone(), v.clone());
    }
    Ok(())
}

fn is_version_conflict(f: &Failure) -> bool {
    f.code == Code::Conflict && f.message.contains("changed concurrently")
}

pub async fn update(
    State(agent): State<Arc<Agent>>,
    Path(reference): Path<String>,
    ApiJson(req): ApiJson<UpdateRequest>,
) -> Result<Json<Updated>> {
    let m = member(&agent)?;
    let mut leader = orchestration::leader(&m).await?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let state = leader.state();
        let current = find(state, &reference)?;
        if let Some(v) = req.version
            && v != current.meta.version
        {
            return Err(Failure::conflict(format!(
                "update out of sequence: service {} is at version {}, not {v}; read it again and retry",
                current.spec.name, current.meta.version
            )));
        }
        let mut service = current.clone();
        apply_update(state, &mut service.spec, &req)?;
        if service.spec == current.spec {
            return Ok(Json(Updated {
                warnings: Vec::new(),
                changed: false,
            }));
        }
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
        match orchestration::write_decided(&m, &mut leader, &changes).await {
            Ok(_) => {
                return Ok(Json(Updated {
                    warnings: Vec::new(),
                    changed: true,
                }));
            }
            Err(f) if is_version_conflict(&f) && attempts < 5 => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(f) => return Err(f),
        }
    }
}

pub async fn remove(
    State(agent): State<Arc<Agent>>,
    Path(reference): Path<String>,
) -> Result<Json<super::views::Done>> {
    let m = member(&agent)?;
    let mut leader = orchestration::leader(&m).await?;
    let s = find(leader.state(), &reference)?;
    let changes = orchestrator::Changes {
        put: vec![],
        delete: vec![(Kind::Service, s.meta.id.clone())],
    };
    leader.record(&changes);
    orchestration::write_decided(&m, &mut leader, &changes).await?;
    Ok(Json(Default::default()))
}

// ---- views ----

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpecView {
    /// argv (docker splits it into Command and Args; there is no image here).
    #[serde(rename = "Command", default)]
    pub command: Vec<String>,
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementView {
    #[serde(rename = "Constraints", default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachmentView {
    /// Network id.
    #[serde(rename = "Target")]
    pub target: String,
    #[serde(rename = "Aliases", default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTemplateView {
    #[serde(rename = "ContainerSpec")]
    pub container_spec: ContainerSpecView,
    #[serde(rename = "Placement")]
    pub placement: PlacementView,
    #[serde(rename = "Networks", default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachmentView>,
    #[serde(rename = "ForceUpdate", default)]
    pub force_update: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicatedView {
    #[serde(rename = "Replicas")]
    pub replicas: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalView {}

/// `{"Replicated": {"Replicas": 3}}` or `{"Global": {}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeView {
    #[serde(
        rename = "Replicated",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub replicated: Option<ReplicatedView>,
    #[serde(rename = "Global", default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortView {
    #[serde(rename = "Protocol")]
    pub protocol: String,
    #[serde(rename = "TargetPort")]
    pub target_port: u16,
    #[serde(rename = "PublishedPort")]
    pub published_port: u16,
    #[serde(rename = "PublishMode")]
    pub publish_mode: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpecView {
    /// "vip" or "dnsrr".
    #[serde(rename = "Mode")]
    pub mode: String,
    #[serde(rename = "Ports", default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtualIpView {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Addr")]
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpointView {
    #[serde(rename = "Spec")]
    pub spec: EndpointSpecView,
    #[serde(rename = "Ports", default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortView>,
    #[serde(rename = "VirtualIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub virtual_ips: Vec<VirtualIpView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpecView {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Labels")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "TaskTemplate")]
    pub task_template: TaskTemplateView,
    #[serde(rename = "Mode")]
    pub mode: ModeView,
    #[serde(rename = "EndpointSpec")]
    pub endpoint_spec: EndpointSpecView,
}

/// Docker's `ServiceStatus` (`GET /services?status=true`): what `service ls` shows as REPLICAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatusView {
    /// Slots (global: nodes) with a running task that should run.
    #[serde(rename = "RunningTasks")]
    pub running_tasks: u64,
    /// Replicas, or eligible nodes of a global service.
    #[serde(rename = "DesiredTasks")]
    pub desired_tasks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Version")]
    pub version: Version,
    #[serde(rename = "CreatedAt")]
    pub created_at: DateTime<Utc>,
    #[serde(rename = "UpdatedAt")]
    pub updated_at: DateTime<Utc>,
    #[serde(rename = "Spec")]
    pub spec: ServiceSpecView,
    #[serde(rename = "Endpoint")]
    pub endpoint: ServiceEndpointView,
    #[serde(rename = "ServiceStatus")]
    pub service_status: ServiceStatusView,
}

fn template_view(t: &TaskTemplate, networks: &[NetworkAttachmentSpec]) -> TaskTemplateView {
    TaskTemplateView {
        container_spec: ContainerSpecView {
            command: t.command.clone(),
            env: t.env.clone(),
        },
        placement: PlacementView {
            constraints: t.constraints.clone(),
        },
        networks: networks
            .iter()
            .map(|n| NetworkAttachmentView {
                target: n.target.clone(),
                aliases: n.aliases.clone(),
            })
            .collect(),
        force_update: t.force_update,
    }
}

fn endpoint_mode_name(m: EndpointMode) -> &'static str {
    match m {
        EndpointMode::Vip => "vip",
        EndpointMode::Dnsrr => "dnsrr",
    }
}

/// A live task: one that should run (not being shut down).
fn is_live(t: &Task) -> bool {
    t.desired_state <= TaskState::Running
}

/// Running and desired task counts, as docker's `service ls` REPLICAS.
pub fn service_status(state: &ClusterState, s: &Service) -> ServiceStatusView {
    let live: Vec<&Task> = state.tasks_of(&s.meta.id).filter(|t| is_live(t)).collect();
    let running = |t: &&&Task| t.status.state == TaskState::Running;
    match s.spec.mode {
        ServiceMode::Replicated { replicas } => {
            let slots: BTreeSet<u64> = live
                .iter()
                .filter(running)
                .filter(|t| t.slot >= 1 && t.slot <= replicas)
                .map(|t| t.slot)
                .collect();
            ServiceStatusView {
                running_tasks: slots.len() as u64,
                desired_tasks: replicas,
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
            ServiceStatusView {
                running_tasks: nodes.len() as u64,
                desired_tasks: eligible.len() as u64,
            }
        }
    }
}

pub fn service_view(state: &ClusterState, s: &Service) -> ServiceView {
    let endpoint_spec = EndpointSpecView {
        mode: endpoint_mode_name(s.spec.endpoint.mode).into(),
        ports: s
            .spec
            .endpoint
            .ports
            .iter()
            .map(|p| PortView {
                protocol: match p.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                }
                .into(),
                target_port: p.target,
                published_port: p.published,
                publish_mode: match p.mode {
                    PublishMode::Ingress => "ingress",
                    PublishMode::Host => "host",
                }
                .into(),
            })
            .collect(),
    };
    ServiceView {
        id: s.meta.id.clone(),
        version: Version {
            index: s.meta.version,
        },
        created_at: s.meta.created_at,
        updated_at: s.meta.updated_at,
        spec: ServiceSpecView {
            name: s.spec.name.clone(),
            labels: s.spec.labels.clone(),
            task_template: template_view(&s.spec.task, &s.spec.networks),
            mode: match s.spec.mode {
                ServiceMode::Replicated { replicas } => ModeView {
                    replicated: Some(ReplicatedView { replicas }),
                    global: None,
                },
                ServiceMode::Global => ModeView {
                    replicated: None,
                    global: Some(GlobalView {}),
                },
            },
            endpoint_spec: endpoint_spec.clone(),
        },
        endpoint: ServiceEndpointView {
            ports: endpoint_spec.ports.clone(),
            spec: endpoint_spec,
            virtual_ips: s
                .virtual_ips
                .iter()
                .map(|v| VirtualIpView {
                    network_id: v.network_id.clone(),
                    addr: v.addr.to_string(),
                })
                .collect(),
        },
        service_status: service_status(state, s),
    }
}

/// `GET /services`: sorted by name, as docker lists them.
pub async fn list(State(agent): State<Arc<Agent>>) -> Result<Json<Vec<ServiceView>>> {
    let m = member(&agent)?;
    let state = orchestration::snapshot(&m)?;
    let mut services: Vec<&Service> = state.services.values().collect();
    services.sort_by(|a, b| {
        a.spec
            .name
            .cmp(&b.spec.name)
            .then(a.meta.id.cmp(&b.meta.id))
    });
    Ok(Json(
        services
            .into_iter()
            .map(|s| service_view(&state, s))
            .collect(),
    ))
}

/// `GET /services/{ref}`
pub async fn inspect(
    State(agent): State<Arc<Agent>>,
    Path(reference): Path<String>,
) -> Result<Json<ServiceView>> {
    let m = member(&agent)?;
    let state = orchestration::snapshot(&m)?;
    let s = find(&state, &reference)?;
    Ok(Json(service_view(&state, s)))
}

// ---- tasks ----

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatusView {
    #[serde(rename = "ExitCode")]
    pub exit_code: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatusView {
    #[serde(rename = "Timestamp")]
    pub timestamp: DateTime<Utc>,
    #[serde(rename = "State")]
    pub state: TaskState,
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "Err", default, skip_serializing_if = "String::is_empty")]
    pub err: String,
    #[serde(
        rename = "ContainerStatus",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub container_status: Option<ContainerStatusView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedNetworkSpec {
    #[serde(rename = "Name")]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedNetwork {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Spec")]
    pub spec: AttachedNetworkSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachmentTaskView {
    #[serde(rename = "Network")]
    pub network: AttachedNetwork,
    #[serde(rename = "Addresses")]
    pub addresses: Vec<String>,
    #[serde(rename = "Aliases", default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// A task in the docker API's shape, plus the names `service ps` shows (resolved here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Version")]
    pub version: Version,
    #[serde(rename = "CreatedAt")]
    pub created_at: DateTime<Utc>,
    #[serde(rename = "UpdatedAt")]
    pub updated_at: DateTime<Utc>,
    /// service.slot, or service.nodeid for global services.
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Spec")]
    pub spec: TaskTemplateView,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    #[serde(rename = "ServiceName")]
    pub service_name: String,
    /// 0 for tasks of global services.
    #[serde(rename = "Slot", default)]
    pub slot: u64,
    #[serde(rename = "NodeID", default, skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    /// The node's hostname.
    #[serde(rename = "NodeName", default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(rename = "Status")]
    pub status: TaskStatusView,
    #[serde(rename = "DesiredState")]
    pub desired_state: TaskState,
    #[serde(rename = "NetworksAttachments", default)]
    pub networks_attachments: Vec<NetworkAttachmentTaskView>,
}

pub fn task_view(state: &ClusterState, t: &Task) -> TaskView {
    let service_name = state
        .services
        .get(&t.service_id)
        .map(|s| s.spec.name.clone())
        .unwrap_or_else(|| t.service_id.clone());
    let node_id = t.node_id.clone().unwrap_or_default();
    let name = if t.slot > 0 {
        format!("{service_name}.{}", t.slot)
    } else {
        format!("{service_name}.{node_id}")
    };
    TaskView {
        id: t.meta.id.clone(),
        version: Version {
            index: t.meta.version,
        },
        created_at: t.meta.created_at,
        updated_at: t.meta.updated_at,
        name,
        spec: template_view(&t.spec, &[]),
        service_id: t.service_id.clone(),
        service_name,
        slot: t.slot,
        node_name: state
            .nodes
            .get(&node_id)
            .map(|n| n.description.hostname.clone())
            .unwrap_or_default(),
        node_id,
        status: TaskStatusView {
            timestamp: t.status.timestamp,
            state: t.status.state,
            message: t.status.message.clone(),
            err: t.status.err.clone().unwrap_or_default(),
            container_status: t
                .status
                .exit_code
                .map(|exit_code| ContainerStatusView { exit_code }),
        },
        desired_state: t.desired_state,
        networks_attachments: t
            .networks
            .iter()
            .map(|a| NetworkAttachmentTaskView {
                network: AttachedNetwork {
                    id: a.network_id.clone(),
                    spec: AttachedNetworkSpec {
                        name: state
                            .networks
                            .get(&a.network_id)
                            .map(|n| n.spec.name.clone())
                            .unwrap_or_default(),
                    },
                },
                addresses: a.addresses.iter().map(|a| a.to_string()).collect(),
                aliases: a.aliases.clone(),
            })
            .collect(),
    }
}

/// `service ps` order: by service name, slot (global: node name), newest first within a slot.
pub fn sort_tasks(tasks: &mut [TaskView]) {
    // A global service's "slot" is its node; a replicated task's node is not part of its slot.
    let node = |t: &TaskView| {
        if t.slot == 0 {
            (t.node_name.clone(), t.node_id.clone())
        } else {
            Default::default()
        }
    };
    tasks.sort_by(|a, b| {
        a.service_name
            .cmp(&b.service_name)
            .then(a.service_id.cmp(&b.service_id))
            .then(a.slot.cmp(&b.slot))
            .then(node(a).cmp(&node(b)))
            .then(b.created_at.cmp(&a.created_at))
            .then(a.id.cmp(&b.id))
    });
}

/// The desired-state filter of `service ps` (docker: running, shutdown, accepted).
pub fn desired_state_matches(filter: &str, t: TaskState) -> Result<bool> {
    match filter {
        "running" => Ok(t == TaskState::Running),
        "shutdown" => Ok(t >= TaskState::Shutdown),
        "accepted" => Ok(t <= TaskState::Accepted),
        other => Err(Failure::bad_request(format!(
            "invalid desired-state filter {other:?}: use running, shutdown or accepted"
        ))),
    }
}

/// `GET /tasks?service=REF&node=REF&desired-state=running|shutdown|accepted`
pub async fn tasks(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Vec<TaskView>>> {
    let m = member(&agent)?;
    for k in q.keys() {
        if !matches!(k.as_str(), "service" | "node" | "desired-state") {
            return Err(Failure::bad_request(format!(
                "invalid filter {k:?}: use service, node or desired-state"
            )));
        }
    }
    let state = orchestration::snapshot(&m)?;
    let service = q
        .get("service")
        .map(|r| find(&state, r).map(|s| s.meta.id.clone()))
        .transpose()?;
    let node = q
        .get("node")
        .map(|r| super::nodes::resolve(&m, r).map(|n| n.meta.id))
        .transpose()?;
    let desired = q.get("desired-state");
    if let Some(d) = desired {
        desired_state_matches(d, TaskState::Running)?;
    }
    let mut out = Vec::new();
    for t in state.tasks.values() {
        if service.as_ref().is_some_and(|s| &t.service_id != s)
            || node.as_ref().is_some_and(|n| t.node_id.as_ref() != Some(n))
        {
            continue;
        }
        if let Some(d) = desired
            && !desired_state_matches(d, t.desired_state)?
        {
            continue;
        }
        out.push(task_view(&state, t));
    }
    sort_tasks(&mut out);
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::task::TaskStatus;

    fn task(service: &str, slot: u64, node: &str, age_s: i64) -> TaskView {
        let state = ClusterState::default();
        let mut t = Task {
            meta: Meta::new(),
            service_id: service.into(),
            slot,
            node_id: (!node.is_empty()).then(|| node.to_string()),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Running,
                timestamp: Utc::now(),
                message: String::new(),
                err: None,
                exit_code: None,
            },
            spec: TaskTemplate::default(),
            networks: Vec::new(),
        };
        t.meta.created_at = Utc::now() - chrono::Duration::seconds(age_s);
        let mut v = task_view(&state, &t);
        v.node_name = node.into();
        v
    }

    #[test]
    fn ps_order_by_slot_then_newest_first() {
        let mut tasks = vec![
            task("web", 2, "n1", 10),
            task("web", 10, "n1", 1),
            task("web", 1, "n1", 30),
            task("web", 1, "n2", 5),
            task("api", 0, "n2", 1),
            task("api", 0, "n1", 1),
            task("api", 0, "n1", 9),
        ];
        sort_tasks(&mut tasks);
        assert!(tasks[0].created_at > tasks[1].created_at, "newest first");
        let names: Vec<(String, String)> = tasks
            .iter()
            .map(|t| (t.name.clone(), t.node_name.clone()))
            .collect();
        assert_eq!(
            names,
            [
                ("api.n1", "n1"),
                ("api.n1", "n1"),
                ("api.n2", "n2"),
                ("web.1", "n2"),
                ("web.1", "n1"),
                ("web.2", "n1"),
                ("web.10", "n1"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    #[test]
    fn modes_and_replicas() {
        assert_eq!(
            mode_of(None, None).unwrap(),
            ServiceMode::Replicated { replicas: 1 }
        );
        assert_eq!(
            mode_of(Some("replicated"), Some(0)).unwrap(),
            ServiceMode::Replicated { replicas: 0 }
        );
        let e = mode_of(None, Some(-1)).unwrap_err();
        assert_eq!(
            e.message,
            "invalid replicas value -1: must be a non-negative integer"
        );
        assert!(mode_of(Some("global"), Some(2)).is_err());
        assert_eq!(mode_of(Some("global"), None).unwrap(), ServiceMode::Global);
        assert!(mode_of(Some("replicated-job"), None).is_err());
    }

    #[test]
    fn updates_apply_by_key() {
        let state = ClusterState::default();
        let mut spec = ServiceSpec {
            name: "web".into(),
            labels: BTreeMap::new(),
            mode: ServiceMode::Replicated { replicas: 1 },
            task: TaskTemplate {
                command: vec!["sleep".into()],
                env: vec!["A=1".into(), "B=2".into()],
                constraints: vec!["node.role == worker".into()],
                force_update: 0,
            },
            networks: Vec::new(),
            endpoint: EndpointSpec::default(),
        };
        let req = UpdateRequest {
            replicas: Some(3),
            env_add: vec!["A=9".into()],
            env_rm: vec!["B".into()],
            constraint_rm: vec!["node.role==worker".into()],
            constraint_add: vec!["node.labels.x==1".into()],
            ..Default::default()
        };
        apply_update(&state, &mut spec, &req).unwrap();
        assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 3 });
        assert_eq!(spec.task.env, ["A=9"]);
        assert_eq!(spec.task.constraints, ["node.labels.x==1"]);
        let force = UpdateRequest {
            force: true,
            ..Default::default()
        };
        apply_update(&state, &mut spec, &force).unwrap();
        apply_update(&state, &mut spec, &force).unwrap();
        assert_eq!(spec.task.force_update, 2, "each --force is a new value");
        let bad = UpdateRequest {
            constraint_add: vec!["node.nope==1".into()],
            ..Default::default()
        };
        assert!(apply_update(&state, &mut spec, &bad).is_err());
        spec.mode = ServiceMode::Global;
        let scale = UpdateRequest {
            replicas: Some(2),
            ..Default::default()
        };
        assert!(apply_update(&state, &mut spec, &scale).is_err());
    }
}
