//! /info and /swarm/... handlers.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use model::Kind;
use model::node::Role;
use pki::JoinToken;
use serde::{Deserialize, Serialize};
use store::{Batch, Change};

use super::ApiJson;
use super::views::{Info, SwarmView, Version};
use crate::agent::{Agent, InitRequest, InitResponse, JoinApiRequest, JoinApiResponse};
use crate::error::{Failure, Result};
use crate::member::not_in_swarm;

pub async fn info(State(agent): State<Arc<Agent>>) -> Json<Info> {
    let Some(member) = agent.member() else {
        return Json(Info {
            local_node_state: "inactive".into(),
            hostname: agent.cfg.hostname.clone(),
            ..Default::default()
        });
    };
    let state = member.node_state();
    let q = member.quorum().ok();
    Json(Info {
        node_id: state.node_id,
        node_addr: state.advertise_addr,
        local_node_state: "active".into(),
        control_available: state.role == Role::Manager,
        cluster_id: state.cluster_id,
        is_leader: member.manager.as_ref().is_some_and(|m| m.store.is_leader()),
        managers: q.map(|q| q.managers).unwrap_or(0),
        reachable_managers: q.map(|q| q.reachable).unwrap_or(0),
        remote_managers: state.managers,
        hostname: agent.cfg.hostname.clone(),
        data_path_port: member
            .cluster_info
            .borrow()
            .as_ref()
            .map(|c| c.data_path_port)
            .unwrap_or(0),
        dataplane_writes: member
            .dataplane_writes
            .load(std::sync::atomic::Ordering::Relaxed),
    })
}

pub async fn inspect(State(agent): State<Arc<Agent>>) -> Result<Json<SwarmView>> {
    let member = agent.member().ok_or_else(not_in_swarm)?;
    let c = member.cluster()?;
    let digest = pki::tls::cert_der_from_pem(&c.ca_cert_pem)
        .map(|d| pki::ca_digest(&d))
        .unwrap_or_default();
    Ok(Json(SwarmView {
        id: c.meta.id,
        version: Version {
            index: c.meta.version,
        },
        created_at: c.meta.created_at,
        updated_at: c.meta.updated_at,
        default_addr_pool: c.default_addr_pools,
        subnet_size: c.subnet_size,
        data_path_port: c.data_path_port,
        heartbeat_period_ms: c.settings.heartbeat_period_ms,
        ca_digest: digest,
    }))
}

pub async fn init(
    State(agent): State<Arc<Agent>>,
    ApiJson(req): ApiJson<InitRequest>,
) -> Result<Json<InitResponse>> {
    agent.init(req).await.map(Json)
}

pub async fn join(
    State(agent): State<Arc<Agent>>,
    ApiJson(req): ApiJson<JoinApiRequest>,
) -> Result<Json<JoinApiResponse>> {
    if req.token.trim().is_empty() {
        return Err(Failure::bad_request("a join token is required (--token)"));
    }
    if req.remote_addr.trim().is_empty() {
        return Err(Failure::bad_request(
            "the address of a manager is required (HOST:PORT)",
        ));
    }
    agent.join(req).await.map(Json)
}

#[derive(Debug, Deserialize)]
pub struct ForceQuery {
    #[serde(default)]
    pub force: bool,
}

pub async fn leave(
    State(agent): State<Arc<Agent>>,
    Query(q): Query<ForceQuery>,
) -> Result<Json<serde_json::Value>> {
    agent.leave(q.force).await?;
    Ok(Json(serde_json::json!({})))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TokenView {
    pub role: Role,
    pub token: String,
    /// The cluster-port address of the manager answering, to join through.
    pub addr: String,
}

fn parse_role(role: &str) -> Result<Role> {
    match role {
        "worker" => Ok(Role::Worker),
        "manager" => Ok(Role::Manager),
        other => Err(Failure::bad_request(format!(
            "unknown role {other:?}: use worker or manager"
        ))),
    }
}

pub async fn join_token(
    State(agent): State<Arc<Agent>>,
    Path(role): Path<String>,
) -> Result<Json<TokenView>> {
    let role = parse_role(&role)?;
    let member = agent.member().ok_or_else(not_in_swarm)?;
    let c = member.cluster()?;
    let token = match role {
        Role::Worker => c.join_tokens.worker,
        Role::Manager => c.join_tokens.manager,
    };
    Ok(Json(TokenView {
        role,
        token,
        addr: member.cluster_port_addr.clone(),
    }))
}

pub async fn rotate(
    State(agent): State<Arc<Agent>>,
    Path(role): Path<String>,
) -> Result<Json<TokenView>> {
    let role = parse_role(&role)?;
    let member = agent.member().ok_or_else(not_in_swarm)?;
    let c = member.cluster()?;
    let digest = pki::tls::cert_der_from_pem(&c.ca_cert_pem)
        .map(|d| pki::ca_digest(&d))
        .map_err(|e| Failure::internal(e.to_string()))?;
    let token = JoinToken::generate(&digest).to_string();
    let key = match role {
        Role::Worker => "worker",
        Role::Manager => "manager",
    };
    member
        .write(Batch::one(Change::Patch {
            kind: Kind::Cluster,
            id: c.meta.id.clone(),
            patch: serde_json::json!({"join_tokens": {key: token}}),
            version: None,
        }))
        .await?;
    Ok(Json(TokenView {
        role,
        token,
        addr: member.cluster_port_addr.clone(),
    }))
}
