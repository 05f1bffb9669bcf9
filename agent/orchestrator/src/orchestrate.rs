//! Replica orchestration: keeps one running task per slot of a replicated service (one per
//! eligible node of a global service), replaces tasks that failed, that run on a drained, down or
//! removed node, or whose spec is outdated, and trims the history `service ps` shows.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use model::node::{Availability, NodeState};
use model::service::{Service, ServiceMode};
use model::task::{Task, TaskState, TaskStatus};
use model::{Meta, Node};

use crate::constraint::{self, Constraint};
use crate::{ClusterState, Config};

/// Whether a task placed on this node may keep running there.
fn node_keeps_tasks(node: Option<&Node>) -> bool {
    node.is_some_and(|n| {
        n.status.state != NodeState::Down && n.spec.availability != Availability::Drain
    })
}

/// Whether new tasks may be placed on this node (the scheduler's rule, minus constraints).
pub fn node_takes_new_tasks(node: &Node) -> bool {
    node.status.state == NodeState::Ready && node.spec.availability == Availability::Active
}

fn is_live(t: &Task) -> bool {
    t.desired_state <= TaskState::Running
}

fn new_task(service: &Service, slot: u64, node_id: Option<String>, now: DateTime<Utc>) -> Task {
    Task {
        meta: Meta::new(),
        service_id: service.meta.id.clone(),
        slot,
        node_id,
        desired_state: TaskState::Running,
        status: TaskStatus {
            state: TaskState::New,
            timestamp: now,
            message: "created".into(),
            err: None,
            exit_code: None,
        },
        spec: service.spec.task.clone(),
        networks: Vec::new(),
    }
}

/// Marks a task to be shut down. A task no node has picked up yet stops at once.
fn shut_down(task: &mut Task, now: DateTime<Utc>) {
    if task.desired_state < TaskState::Shutdown {
        task.desired_state = TaskState::Shutdown;
    }
    if task.node_id.is_none() && !task.status.state.is_terminal() {
        task.status.state = TaskState::Shutdown;
        task.status.message = "shutdown before it was scheduled".into();
        task.status.timestamp = now;
    }
}

/// Whether a live task must be replaced: its node cannot keep it, it stopped and the restart
/// delay has passed, or the service's spec moved on.
fn must_replace(
    t: &Task,
    service: &Service,
    state: &ClusterState,
    config: &Config,
    now: DateTime<Utc>,
) -> bool {
    if let Some(node) = &t.node_id
        && !node_keeps_tasks(state.nodes.get(node))
    {
        return true;
    }
    if t.status.state.is_terminal() && now - t.status.timestamp >= config.restart_delay {
        return true;
    }
    let attached = crate::allocator::task_networks(state, service);
    let wanted: BTreeSet<&str> = attached.iter().map(|n| n.target.as_str()).collect();
    let has: BTreeSet<&str> = t.networks.iter().map(|a| a.network_id.as_str()).collect();
    let allocated = !matches!(t.status.state, TaskState::New | TaskState::Pending);
    t.spec != service.spec.task || (allocated && wanted != has)
}

pub fn run(state: &mut ClusterState, config: &Config, now: DateTime<Utc>) {
    let services: Vec<Service> = state.services.values().cloned().collect();
    for service in &services {
        let constraints = constraint::parse_all(&service.spec.task.constraints).unwrap_or_default();
        // Replace what must be replaced: the slot (or node) then has no live task.
        let replace: Vec<String> = state
            .tasks_of(&service.meta.id)
            .filter(|t| is_live(t) && must_replace(t, service, state, config, now))
            .map(|t| t.meta.id.clone())
            .collect();
        for id in replace {
            shut_down(state.tasks.get_mut(&id).expect("listed above"), now);
        }
        match service.spec.mode {
            ServiceMode::Replicated { replicas } => replicated(state, service, replicas, now),
            ServiceMode::Global => global(state, service, &constraints, now),
        }
    }
    // Tasks of removed services stop; once stopped (or their node is gone or down) they go.
    let orphans: Vec<String> = state
        .tasks
        .values()
        .filter(|t| !state.services.contains_key(&t.service_id))
        .map(|t| t.meta.id.clone())
        .collect();
    for id in orphans {
        let t = state.tasks.get_mut(&id).expect("listed above");
        shut_down(t, now);
        let node_up = t.node_id.as_ref().is_some_and(|n| {
            state
                .nodes
                .get(n)
                .is_some_and(|n| n.status.state != NodeState::Down)
        });
        if t.status.state.is_terminal() || !node_up {
            state.tasks.remove(&id);
        }
    }
    // Tasks on removed nodes are gone with them.
    let lost: Vec<String> = state
        .tasks
        .values()
        .filter(|t| {
            !is_live(t)
                && t.node_id
                    .as_ref()
                    .is_some_and(|n| !state.nodes.contains_key(n))
        })
        .map(|t| t.meta.id.clone())
        .collect();
    for id in lost {
        state.tasks.remove(&id);
    }
    trim_history(state, config.task_history);
}

fn replicated(state: &mut ClusterState, service: &Service, replicas: u64, now: DateTime<Utc>) {
    let mut live_slots: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for t in state.tasks_of(&service.meta.id).filter(|t| is_live(t)) {
        live_slots
            .entry(t.slot)
            .or_default()
            .push(t.meta.id.clone());
    }
    // Scale down: slots above the replica count stop; a slot never runs two tasks.
    for (slot, ids) in &live_slots {
        let keep = if *slot <= replicas && *slot > 0 { 1 } else { 0 };
        for id in ids.iter().skip(keep) {
            shut_down(state.tasks.get_mut(id).expect("listed above"), now);
        }
    }
    for slot in 1..=replicas {
        if !live_slots.contains_key(&slot) {
            let t = new_task(service, slot, None, now);
            state.tasks.insert(t.meta.id.clone(), t);
        }
    }
}

fn global(
    state: &mut ClusterState,
    service: &Service,
    constraints: &[Constraint],
    now: DateTime<Utc>,
) {
    let mut live_nodes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in state.tasks_of(&service.meta.id).filter(|t| is_live(t)) {
        live_nodes
            .entry(t.node_id.clone().unwrap_or_default())
            .or_default()
            .push(t.meta.id.clone());
    }
    let eligible: Vec<String> = state
        .nodes
        .values()
        .filter(|n| node_takes_new_tasks(n) && constraint::node_matches(constraints, n))
        .map(|n| n.meta.id.clone())
        .collect();
    for (node, ids) in &live_nodes {
        let still_ok = state
            .nodes
            .get(node)
            .is_some_and(|n| constraint::node_matches(constraints, n));
        let keep = usize::from(still_ok);
        for id in ids.iter().skip(keep) {
            shut_down(state.tasks.get_mut(id).expect("listed above"), now);
        }
    }
    for node in eligible {
        if !live_nodes.contains_key(&node) {
            let t = new_task(service, 0, Some(node), now);
            state.tasks.insert(t.meta.id.clone(), t);
        }
    }
}

/// A slot's place: service, slot, and the node for global services.
type SlotKey = (String, u64, String);

/// Keeps at most `limit` stopped tasks per slot (per node for global services), the newest.
fn trim_history(state: &mut ClusterState, limit: usize) {
    let mut history: BTreeMap<SlotKey, Vec<(DateTime<Utc>, String)>> = BTreeMap::new();
    for t in state
        .tasks
        .values()
        .filter(|t| !is_live(t) && t.status.state.is_terminal())
    {
        let node = if t.slot == 0 {
            t.node_id.clone().unwrap_or_default()
        } else {
            String::new()
        };
        history
            .entry((t.service_id.clone(), t.slot, node))
            .or_default()
            .push((t.status.timestamp, t.meta.id.clone()));
    }
    for mut old in history.into_values() {
        if old.len() > limit {
            old.sort();
            for (_, id) in &old[..old.len() - limit] {
                state.tasks.remove(id);
            }
        }
    }
}
