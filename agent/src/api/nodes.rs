//! /nodes handlers: `node ls / inspect / update / promote / demote / rm`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use model::node::{Availability, NodeState, Role};
use model::{Kind, Node};
use serde::{Deserialize, Serialize};
use store::{Batch, Change};

use super::ApiJson;
use super::swarm::ForceQuery;
use super::views::{Done, NodeView, node_view};
use crate::agent::Agent;
use crate::error::{Failure, Result};
use crate::member::{Member, not_in_swarm};
use crate::quorum::{Quorum, even_warning, needed};

fn member(agent: &Agent) -> Result<Arc<Member>> {
    agent.member().ok_or_else(not_in_swarm)
}

/// Finds a node by id, unique id prefix, hostname, or "self".
pub fn resolve(member: &Member, reference: &str) -> Result<Node> {
    let nodes = member.nodes()?;
    let want = if reference == "self" {
        member.node_id()
    } else {
        reference.to_string()
    };
    if let Some(n) = nodes.iter().find(|n| n.meta.id == want) {
        return Ok(n.clone());
    }
    let by_name: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.description.hostname == want)
        .collect();
    if by_name.len() == 1 {
        return Ok(by_name[0].clone());
    }
    if by_name.len() > 1 {
        return Err(Failure::bad_request(format!(
            "node name {want:?} is ambiguous ({} nodes have it): use the node id",
            by_name.len()
        )));
    }
    let by_prefix: Vec<&Node> = nodes
        .iter()
        .filter(|n| !want.is_empty() && n.meta.id.starts_with(&want))
        .collect();
    match by_prefix.len() {
        1 => Ok(by_prefix[0].clone()),
        0 => Err(Failure::not_found(format!("No such node: {reference}"))),
        n => Err(Failure::bad_request(format!(
            "node id prefix {want:?} is ambiguous ({n} nodes match): give more characters"
        ))),
    }
}

pub async fn list(State(agent): State<Arc<Agent>>) -> Result<Json<Vec<NodeView>>> {
    let m = member(&agent)?;
    m.probe_unseen().await;
    let mut nodes = m.nodes()?;
    nodes.sort_by(|a, b| {
        a.description
            .hostname
            .cmp(&b.description.hostname)
            .then(a.meta.id.cmp(&b.meta.id))
    });
    Ok(Json(nodes.iter().map(|n| node_view(&m, n)).collect()))
}

pub async fn inspect(
    State(agent): State<Arc<Agent>>,
    Path(node): Path<String>,
) -> Result<Json<NodeView>> {
    let m = member(&agent)?;
    m.probe_unseen().await;
    let n = resolve(&m, &node)?;
    Ok(Json(node_view(&m, &n)))
}

/// `POST /nodes/{ref}/update`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    pub availability: Option<Availability>,
    /// Labels to add or overwrite.
    #[serde(default)]
    pub label_add: BTreeMap<String, String>,
    /// Labels to remove (each must exist).
    #[serde(default)]
    pub label_rm: Vec<String>,
    pub role: Option<Role>,
}

fn node_patch(id: &str, patch: serde_json::Value) -> Batch {
    Batch::one(Change::Patch {
        kind: Kind::Node,
        id: id.to_string(),
        patch,
        version: None,
    })
}

pub async fn update(
    State(agent): State<Arc<Agent>>,
    Path(node): Path<String>,
    ApiJson(req): ApiJson<UpdateRequest>,
) -> Result<Json<Done>> {
    let m = member(&agent)?;
    let n = resolve(&m, &node)?;
    let mut warnings = Vec::new();
    if let Some(role) = req.role
        && role != n.spec.role
    {
        warnings.extend(check_role_change(&m, &n, role).await?);
    }
    let mut spec = serde_json::Map::new();
    if let Some(a) = req.availability {
        spec.insert(
            "availability".into(),
            serde_json::to_value(a).unwrap_or_default(),
        );
    }
    if let Some(r) = req.role {
        spec.insert("role".into(), serde_json::to_value(r).unwrap_or_default());
    }
    let mut labels = serde_json::Map::new();
    for k in &req.label_rm {
        if !n.spec.labels.contains_key(k) && !req.label_add.contains_key(k) {
            return Err(Failure::bad_request(format!(
                "key {k} doesn't exist in node's labels"
            )));
        }
        labels.insert(k.clone(), serde_json::Value::Null);
    }
    for (k, v) in &req.label_add {
        if k.is_empty() {
            return Err(Failure::bad_request(
                "a label needs a key (--label-add key[=value])",
            ));
        }
        labels.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    if !labels.is_empty() {
        spec.insert("labels".into(), serde_json::Value::Object(labels));
    }
    if spec.is_empty() {
        return Ok(Json(Done {
            warnings,
            note: None,
        }));
    }
    m.write(node_patch(&n.meta.id, serde_json::json!({"spec": spec})))
        .await?;
    Ok(Json(Done {
        warnings,
        note: None,
    }))
}

/// The quorum rules of a role change; returns warnings for an even number of managers.
async fn check_role_change(m: &Member, n: &Node, to: Role) -> Result<Vec<String>> {
    let q: Quorum = m.quorum_fresh().await?;
    match to {
        Role::Manager => Ok(even_warning(q.managers + 1).into_iter().collect()),
        Role::Worker => {
            let store = m.store()?;
            let (_, voters) = store.members();
            let raft_id = n.manager_status.as_ref().map(|s| s.raft_id);
            let in_raft = raft_id.is_some_and(|id| voters.contains(&id));
            if !in_raft {
                return Ok(Vec::new());
            }
            if voters.len() <= 1 {
                return Err(Failure::conflict(format!(
                    "attempting to demote the last manager of the swarm ({}): promote another node first, or use `netctl swarm leave --force` to dissolve the swarm",
                    n.description.hostname
                )));
            }
            let reachable = raft_id.is_some_and(|id| m.peer_reachable(id));
            if !q.survives_removal(reachable) {
                let left = q.managers - 1;
                return Err(Failure::conflict(format!(
                    "can't demote {}: the remaining {left} managers would have {} reachable, fewer than the {} needed for a quorum; \
                     this would result in a loss of quorum. Bring the unavailable managers back first",
                    n.description.hostname,
                    q.reachable - usize::from(reachable),
                    needed(left)
                )));
            }
            Ok(even_warning(q.managers - 1).into_iter().collect())
        }
    }
}

async fn set_role(agent: Arc<Agent>, node: String, role: Role) -> Result<Json<Done>> {
    let m = member(&agent)?;
    let n = resolve(&m, &node)?;
    if n.spec.role == role {
        let what = match role {
            Role::Manager => "a manager",
            Role::Worker => "a worker",
        };
        return Ok(Json(Done {
            warnings: Vec::new(),
            note: Some(format!("Node {node} is already {what}.")),
        }));
    }
    let warnings = check_role_change(&m, &n, role).await?;
    let r = serde_json::to_value(role).unwrap_or_default();
    m.write(node_patch(
        &n.meta.id,
        serde_json::json!({"spec": {"role": r}}),
    ))
    .await?;
    Ok(Json(Done {
        warnings,
        note: None,
    }))
}

pub async fn promote(
    State(agent): State<Arc<Agent>>,
    Path(node): Path<String>,
) -> Result<Json<Done>> {
    set_role(agent, node, Role::Manager).await
}

pub async fn demote(
    State(agent): State<Arc<Agent>>,
    Path(node): Path<String>,
) -> Result<Json<Done>> {
    set_role(agent, node, Role::Worker).await
}

pub async fn remove(
    State(agent): State<Arc<Agent>>,
    Path(node): Path<String>,
    Query(q): Query<ForceQuery>,
) -> Result<Json<Done>> {
    let m = member(&agent)?;
    let n = resolve(&m, &node)?;
    let (_, voters) = m.store()?.members();
    if n.manager_status
        .as_ref()
        .is_some_and(|s| voters.contains(&s.raft_id))
    {
        return Err(Failure::conflict(format!(
            "node {} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal",
            n.meta.id
        )));
    }
    if !q.force && n.status.state == NodeState::Ready {
        return Err(Failure::conflict(format!(
            "node {} is not down and can't be removed: stop or leave it first, or use --force",
            n.meta.id
        )));
    }
    m.write(Batch::one(Change::Delete {
        kind: Kind::Node,
        id: n.meta.id.clone(),
        version: None,
    }))
    .await?;
    Ok(Json(Done::default()))
}
