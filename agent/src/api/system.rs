//! `/_ping`, `/version`, `/info`, `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;

use ::api::system::{Component, Info, Peer, PlatformName, Plugins, SwarmInfo, Version};
use ::api::{API_VERSION, MIN_API_VERSION};
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use model::node::Role;

use crate::agent::Agent;
use crate::member::Member;

/// `GET|HEAD /_ping`: "OK" (docker's headers are added by the edge).
pub async fn ping() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
            (header::PRAGMA, "no-cache"),
        ],
        "OK",
    )
        .into_response()
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn operating_system() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

/// `GET /version`.
pub async fn version() -> Json<Version> {
    let details = BTreeMap::from([
        ("ApiVersion".to_string(), API_VERSION.to_string()),
        ("MinAPIVersion".to_string(), MIN_API_VERSION.to_string()),
        ("GitCommit".to_string(), crate::GIT_COMMIT.to_string()),
        ("Os".to_string(), std::env::consts::OS.to_string()),
        ("Arch".to_string(), arch().to_string()),
        ("KernelVersion".to_string(), kernel_version()),
    ]);
    Json(Version {
        platform: PlatformName {
            name: "netagent".into(),
        },
        components: vec![Component {
            name: "Engine".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            details,
        }],
        version: env!("CARGO_PKG_VERSION").into(),
        api_version: API_VERSION.into(),
        min_api_version: MIN_API_VERSION.into(),
        git_commit: crate::GIT_COMMIT.into(),
        go_version: String::new(),
        os: std::env::consts::OS.into(),
        arch: arch().into(),
        kernel_version: kernel_version(),
        experimental: false,
        build_time: String::new(),
    })
}

/// docker's (Go's) name of the architecture.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `GET /info`: this node, and its membership in docker's `Swarm` section.
pub async fn info(State(agent): State<Arc<Agent>>) -> Json<Info> {
    let d = crate::sysinfo::describe(&agent.cfg);
    Json(Info {
        id: agent.member().map(|m| m.node_id()).unwrap_or_default(),
        driver: "netagent".into(),
        plugins: Plugins {
            network: vec!["overlay".into()],
            ..Default::default()
        },
        ncpu: d.nano_cpus / 1_000_000_000,
        mem_total: d.memory_bytes,
        name: agent.cfg.hostname.clone(),
        server_version: env!("CARGO_PKG_VERSION").into(),
        kernel_version: kernel_version(),
        operating_system: operating_system(),
        os_type: "linux".into(),
        architecture: d.architecture,
        docker_root_dir: agent.cfg.state_dir.display().to_string(),
        swarm: swarm_info(&agent),
        warnings: vec![
            "netagent runs no containers or images: a service's tasks are processes (ContainerSpec.Image names the program)".into(),
        ],
        ..Default::default()
    })
}

fn swarm_info(agent: &Agent) -> SwarmInfo {
    let Some(member) = agent.member() else {
        return SwarmInfo {
            local_node_state: ::api::system::INACTIVE.into(),
            ..Default::default()
        };
    };
    let state = member.node_state();
    let manager = state.role == Role::Manager && member.manager.is_some();
    let mut info = SwarmInfo {
        node_id: state.node_id.clone(),
        node_addr: state.advertise_addr.clone(),
        local_node_state: ::api::system::ACTIVE.into(),
        control_available: manager,
        remote_managers: state
            .managers
            .iter()
            .map(|addr| Peer {
                node_id: String::new(),
                addr: addr.clone(),
            })
            .collect(),
        ..Default::default()
    };
    if manager {
        manager_view(agent, &member, &mut info);
    } else if let Some(c) = member.cluster_info.borrow().as_ref() {
        // A worker knows what its dispatcher session told it.
        info.cluster = Some(::api::swarm::ClusterInfo {
            id: c.id.clone(),
            meta: ::api::Meta {
                version: Default::default(),
                created_at: chrono::DateTime::UNIX_EPOCH,
                updated_at: chrono::DateTime::UNIX_EPOCH,
            },
            spec: Default::default(),
            tls_info: Default::default(),
            root_rotation_in_progress: false,
            root_rotation: None,
            default_addr_pool: c.default_addr_pools.clone(),
            subnet_size: u32::from(c.subnet_size),
            data_path_port: u32::from(c.data_path_port),
        });
    }
    info
}

/// A manager's `Swarm`: counts, the managers with their ids, and the cluster.
fn manager_view(agent: &Agent, member: &Member, info: &mut SwarmInfo) {
    if let Some(why) = member.manager.as_ref().and_then(|m| m.store.unhealthy()) {
        info.error = format!(
            "this manager's store is unhealthy and refuses writes until netagent is restarted: {why}"
        );
    }
    if let Ok(q) = member.quorum() {
        info.managers = q.managers as u64;
    }
    if let Ok(nodes) = member.nodes() {
        info.nodes = nodes.len() as u64;
        let mut peers: Vec<Peer> = nodes
            .iter()
            .filter(|n| n.role == Role::Manager || n.spec.role == Role::Manager)
            .filter_map(|n| {
                Some(Peer {
                    node_id: n.meta.id.clone(),
                    addr: n.manager_status.as_ref()?.addr.clone(),
                })
            })
            .collect();
        peers.sort_by(|a, b| a.addr.cmp(&b.addr));
        if !peers.is_empty() {
            info.remote_managers = peers;
        }
    }
    match member.cluster() {
        Ok(c) => {
            let (election, heartbeat) = raft_ticks(agent);
            info.cluster = Some(super::swarm::shown(&c, election, heartbeat));
        }
        Err(e) if info.error.is_empty() => info.error = e.message,
        Err(_) => {}
    }
}

/// Raft's election and heartbeat timeouts in heartbeat ticks, as docker shows them.
pub fn raft_ticks(agent: &Agent) -> (u64, u64) {
    let s = agent.cfg.store_config();
    (s.election_min_ms / s.heartbeat_ms.max(1), 1)
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics() -> Response {
    crate::metrics::response()
}
