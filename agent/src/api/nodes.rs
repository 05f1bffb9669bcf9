//! `/nodes` handlers: list (filters), inspect, update (availability, labels, role = promote and
//! demote, with the quorum rules), remove.

use std::sync::Arc;

use ::api::node::{ManagerStatus, Node as WireNode, NodeSpec, REACHABLE, UNREACHABLE};
use axum::Json;
use axum::extract::{Path, State};
use model::node::{NodeState, Role};
use model::{Kind, Node};
use store::{Batch, Change};

use super::ApiJson;
use super::query::{ApiQuery, ForceQuery, ListQuery, UpdateQuery};
use crate::agent::Agent;
use crate::error::{Failure, Result};
use crate::member::{Member, not_in_swarm};
use crate::quorum::{Quorum, needed};

fn member(agent: &Agent) -> Result<Arc<Member>> {
    agent.member().ok_or_else(not_in_swarm)
}

/// Finds a node by id, hostname, unique id prefix, or "self".
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

/// Whether the leader this manager's Raft view names is one that exists now: this manager
/// reaches a quorum (a leader cut off from its quorum, or a follower's memory of a dead
/// leader, is no leader) and its store is healthy. Without it `node ls` shows no Leader.
pub fn leader_is_real(member: &Member) -> bool {
    let Some(m) = &member.manager else {
        return false;
    };
    m.store.unhealthy().is_none() && member.quorum().is_ok_and(|q| q.has_quorum())
}

/// A node as the manager answering sees it: manager status from its Raft view and probes.
/// `leader_real` is [`leader_is_real`], computed once per answer.
pub fn wire(member: &Member, n: &Node, leader_real: bool) -> WireNode {
    let manager_status = n
        .manager_status
        .as_ref()
        .filter(|_| n.role == Role::Manager)
        .map(|ms| {
            let (leader, in_raft) = match member.manager.as_ref().map(|m| &m.store) {
                Some(s) => {
                    let (_, voters) = s.members();
                    (
                        leader_real && s.leader() == Some(ms.raft_id),
                        voters.contains(&ms.raft_id),
                    )
                }
                None => (false, false),
            };
            let reachable = in_raft && (leader || member.peer_reachable(ms.raft_id));
            ManagerStatus {
                leader,
                reachability: if reachable { REACHABLE } else { UNREACHABLE }.into(),
                addr: ms.addr.clone(),
            }
        });
    let mut w = ::api::node::node(n, manager_status);
    // This manager's own store stopped applying: it says why, and is out of Raft.
    if n.meta.id == member.node_id()
        && let Some(why) = member.manager.as_ref().and_then(|m| m.store.unhealthy())
    {
        w.status.message = format!("store unhealthy, refusing writes until restarted: {why}");
        if let Some(ms) = &mut w.manager_status {
            ms.reachability = UNREACHABLE.into();
        }
    }
    w
}

const FILTERS: &[&str] = &["id", "label", "membership", "name", "node.label", "role"];

/// `GET /nodes?filters=`: sorted by hostname.
pub async fn list(
    State(agent): State<Arc<Agent>>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<WireNode>>> {
    let f = q.filters(FILTERS)?;
    let m = member(&agent)?;
    m.probe_unseen().await;
    let mut nodes = m.nodes()?;
    nodes.sort_by(|a, b| {
        a.description
            .hostname
            .cmp(&b.description.hostname)
            .then(a.meta.id.cmp(&b.meta.id))
    });
    for r in f.get("role") {
        ::api::node::parse_role(r)?;
    }
    for ms in f.get("membership") {
        if !matches!(ms, "accepted" | "pending") {
            return Err(Failure::bad_request(format!(
                "invalid membership filter {ms:?}: use accepted or pending"
            )));
        }
    }
    let leader_real = leader_is_real(&m);
    Ok(Json(
        nodes
            .iter()
            .filter(|n| {
                f.matches("id", |v| n.meta.id.starts_with(v))
                    && f.matches("name", |v| n.description.hostname.starts_with(v))
                    && f.matches("role", |v| ::api::node::word(&n.spec.role) == v)
                    && f.matches("membership", |v| v == "accepted")
                    && f.match_labels(&n.spec.labels)
            })
            .map(|n| wire(&m, n, leader_real))
            .collect(),
    ))
}

/// `GET /nodes/{ref}`.
pub async fn inspect(
    State(agent): State<Arc<Agent>>,
    Path(node): Path<String>,
) -> Result<Json<WireNode>> {
    let m = member(&agent)?;
    m.probe_unseen().await;
    let n = resolve(&m, &node)?;
    Ok(Json(wire(&m, &n, leader_is_real(&m))))
}

/// `POST /nodes/{ref}/update?version=`: the whole spec, as docker's clients send it.
pub async fn update(
    State(agent): State<Arc<Agent>>,
    Path(node): Path<String>,
    ApiQuery(q): ApiQuery<UpdateQuery>,
    ApiJson(spec): ApiJson<NodeSpec>,
) -> Result<()> {
    let m = member(&agent)?;
    let n = resolve(&m, &node)?;
    if let Some(v) = q.version()?
        && v != n.meta.version
    {
        return Err(Failure::conflict(format!(
            "update out of sequence: node {} is at version {}, not {v}; read it again and retry",
            n.description.hostname, n.meta.version
        )));
    }
    let new = ::api::node::spec_to_model(&spec, &n.spec)?;
    if new.role != n.spec.role {
        check_role_change(&m, &n, new.role).await?;
    }
    if new == n.spec {
        return Ok(());
    }
    // A merge patch (the node's status moves on concurrently): removed labels are nulls.
    let mut labels = serde_json::Map::new();
    for k in n
        .spec
        .labels
        .keys()
        .filter(|k| !new.labels.contains_key(*k))
    {
        labels.insert(k.clone(), serde_json::Value::Null);
    }
    for (k, v) in &new.labels {
        labels.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    let patch = serde_json::json!({"spec": {
        "role": new.role,
        "availability": new.availability,
        "labels": labels,
    }});
    m.write(Batch::one(Change::Patch {
        kind: Kind::Node,
        id: n.meta.id.clone(),
        patch,
        version: None,
    }))
    .await?;
    Ok(())
}

/// The quorum rules of a role change: a demotion must leave a working quorum.
async fn check_role_change(m: &Member, n: &Node, to: Role) -> Result<()> {
    if to == Role::Manager {
        return Ok(());
    }
    let q: Quorum = m.quorum_fresh().await?;
    let store = m.store()?;
    let (_, voters) = store.members();
    let raft_id = n.manager_status.as_ref().map(|s| s.raft_id);
    let in_raft = raft_id.is_some_and(|id| voters.contains(&id));
    if !in_raft {
        return Ok(());
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
    Ok(())
}

/// `DELETE /nodes/{ref}?force=`.
pub async fn remove(
    State(agent): State<Arc<Agent>>,
    Path(node): Path<String>,
    ApiQuery(q): ApiQuery<ForceQuery>,
) -> Result<()> {
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
    if !q.force() && n.status.state == NodeState::Ready {
        return Err(Failure::conflict(format!(
            "node {} is not down and can't be removed: stop or leave it first, or use --force",
            n.meta.id
        )));
    }
    // The node goes, and its certificate joins the revocation list in the same batch: from
    // then on the cluster port refuses it on every service (see `services::authz`).
    let mut attempts = 0;
    loop {
        let cluster = m.cluster()?;
        let mut revoked = cluster.removed_nodes.clone();
        if !revoked.contains(&n.meta.id) {
            revoked.push(n.meta.id.clone());
        }
        let batch = Batch::new(vec![
            Change::Delete {
                kind: Kind::Node,
                id: n.meta.id.clone(),
                version: None,
            },
            Change::Patch {
                kind: Kind::Cluster,
                id: cluster.meta.id.clone(),
                patch: serde_json::json!({ "removed_nodes": revoked }),
                version: Some(cluster.meta.version),
            },
        ]);
        match m.write(batch).await {
            Ok(_) => return Ok(()),
            // The cluster object changed meanwhile (a key rotation, a heartbeat setting): again.
            Err(f) if f.code == crate::error::Code::Conflict && attempts < 5 => attempts += 1,
            Err(f) => return Err(f),
        }
    }
}
