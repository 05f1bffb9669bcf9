//! Leader-only loops. They start when this manager becomes leader and stop when it is not any
//! more (`Store::leader_watch`): node status (Ready / Down from dispatcher heartbeats), role
//! reconciliation (a demoted manager leaves Raft) and the orchestrator (replicas, task
//! allocation, scheduling: `orchestrator::reconcile`) after every change of the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use model::Kind;
use model::node::{NodeState, Role};
use store::{Batch, Change};

use crate::member::Member;

pub async fn run(member: Arc<Member>, config: orchestrator::Config) {
    let Some(m) = &member.manager else {
        return;
    };
    let mut leader = m.store.leader_watch();
    loop {
        // Wait to become leader.
        tokio::select! {
            _ = member.cancel.cancelled() => return,
            r = leader.wait_for(|l| *l) => if r.is_err() { return },
        }
        tracing::info!("became leader: starting leader-only loops");
        let since = Instant::now();
        let orchestrator = tokio::spawn(orchestrate(member.clone(), config.clone()));
        let _stop = AbortOnDrop(orchestrator);
        loop {
            let period = member
                .cluster()
                .map(|c| Duration::from_millis(c.settings.heartbeat_period_ms))
                .unwrap_or(Duration::from_secs(5));
            tokio::select! {
                _ = member.cancel.cancelled() => return,
                r = leader.wait_for(|l| !*l) => {
                    if r.is_err() { return }
                    tracing::info!("lost leadership: stopping leader-only loops");
                    break;
                }
                _ = tokio::time::sleep(period.min(Duration::from_secs(1))) => {}
            }
            node_status(&member, since, period).await;
            reconcile_roles(&member).await;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The orchestrator on the leader: a pass after every change of the store (what arrives during a
/// pass is coalesced into the next) and every second (restart delays, nodes going down). Its
/// decisions go through Raft as one batch per pass; a conflict (someone changed an object in the
/// meantime) just means another pass.
async fn orchestrate(member: Arc<Member>, config: orchestrator::Config) {
    let Ok(store) = member.store().cloned() else {
        return;
    };
    let mut events = store.subscribe();
    loop {
        orchestrate_pass(&member, &config).await;
        tokio::select! {
            _ = member.cancel.cancelled() => return,
            _ = events.recv() => {
                while !matches!(events.try_recv(), Err(tokio::sync::broadcast::error::TryRecvError::Empty | tokio::sync::broadcast::error::TryRecvError::Closed)) {}
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn orchestrate_pass(member: &Member, config: &orchestrator::Config) {
    let Some(m) = &member.manager else { return };
    let _alloc = m.alloc.lock().await;
    let state = match crate::orchestration::snapshot(member) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "orchestrator: cannot read the store");
            return;
        }
    };
    let changes = orchestrator::reconcile(&state, config, chrono::Utc::now());
    if changes.is_empty() {
        return;
    }
    tracing::debug!(
        put = changes.put.len(),
        delete = changes.delete.len(),
        "orchestrator pass"
    );
    if let Err(e) = member.write(crate::orchestration::batch(&changes)).await {
        tracing::debug!(error = %e, "orchestrator: the pass's writes did not apply; the next pass retries");
    }
}

fn patch(id: &str, patch: serde_json::Value) -> Batch {
    Batch::one(Change::Patch {
        kind: Kind::Node,
        id: id.to_string(),
        patch,
        version: None,
    })
}

/// Ready while heartbeats arrive, Down once they stop for three periods. Right after an election
/// nobody is marked down until the nodes had three periods to find the new leader.
async fn node_status(member: &Member, since: Instant, period: Duration) {
    let Some(m) = &member.manager else { return };
    let grace = (period * 3).max(Duration::from_millis(600));
    let Ok(nodes) = member.nodes() else { return };
    let seen: std::collections::HashMap<String, Instant> =
        m.sessions.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for node in nodes {
        let alive = seen
            .get(&node.meta.id)
            .is_some_and(|t| t.elapsed() <= grace);
        let change = match (alive, node.status.state) {
            (true, s) if s != NodeState::Ready => {
                Some(serde_json::json!({"status": {"state": "ready", "message": ""}}))
            }
            (false, NodeState::Ready | NodeState::Unknown) if since.elapsed() > grace => {
                Some(serde_json::json!({
                    "status": {"state": "down", "message": "heartbeat failure"}
                }))
            }
            _ => None,
        };
        if let Some(p) = change
            && let Err(e) = member.write(patch(&node.meta.id, p)).await
        {
            tracing::info!(node = %node.meta.id, error = %e, "could not update the node's status");
        }
    }
}

/// A manager whose spec says worker leaves Raft, then is recorded as a worker; the node itself
/// notices and switches (see `session`).
async fn reconcile_roles(member: &Member) {
    let Some(m) = &member.manager else { return };
    let Ok(nodes) = member.nodes() else { return };
    for node in nodes {
        if node.spec.role != Role::Worker || node.role != Role::Manager {
            continue;
        }
        let (_, voters) = m.store.members();
        if let Some(ms) = &node.manager_status
            && voters.contains(&ms.raft_id)
        {
            if ms.raft_id == m.store.id() && voters.len() > 1 {
                tracing::warn!(
                    "demoting the leader itself: it leaves Raft and another manager takes over"
                );
            }
            if let Err(e) = m.store.remove_voter(ms.raft_id).await {
                tracing::warn!(node = %node.meta.id, error = %e, "could not remove the demoted manager from Raft");
                continue;
            }
        }
        let p = serde_json::json!({"role": "worker", "manager_status": null});
        if let Err(e) = member.write(patch(&node.meta.id, p)).await {
            tracing::info!(node = %node.meta.id, error = %e, "could not record the demotion");
        }
    }
}
