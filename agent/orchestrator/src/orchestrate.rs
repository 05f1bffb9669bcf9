//! Replica orchestration: keeps one running task per slot of a replicated service (one per
//! eligible node of a global service), replaces tasks that failed, that run on a drained, down or
//! removed node, or whose spec is outdated (a rolling update, start-first: the service's update
//! parallelism at a time), and trims the history `service ps` shows.

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

/// Why a live task is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    /// At once: its node cannot keep it, it stopped and the restart delay has passed, its
    /// networks changed (one of them may be gone), or it does not run yet.
    Now,
    /// It runs with an outdated spec, or on an ingress network being retired: replaced as the
    /// service's update parallelism allows.
    Outdated,
}

fn replacement(
    t: &Task,
    service: &Service,
    state: &ClusterState,
    config: &Config,
    now: DateTime<Utc>,
) -> Option<Replace> {
    if let Some(node) = &t.node_id
        && !node_keeps_tasks(state.nodes.get(node))
    {
        return Some(Replace::Now);
    }
    if t.status.state.is_terminal() && now - t.status.timestamp >= config.restart_delay {
        return Some(Replace::Now);
    }
    let attached = crate::allocator::task_networks(state, service);
    let wanted: BTreeSet<&str> = attached.iter().map(|n| n.target.as_str()).collect();
    let has: BTreeSet<&str> = t.networks.iter().map(|a| a.network_id.as_str()).collect();
    let allocated = !matches!(t.status.state, TaskState::New | TaskState::Pending);
    if allocated && wanted != has {
        // Off an ingress network being retired onto the current one (`ingress recreate
        // --subnet`): rolled like an update, since the old network stays until they moved.
        let moving = has.difference(&wanted).all(|n| {
            state
                .networks
                .get(*n)
                .is_some_and(|n| n.spec.ingress && n.retiring)
        }) && wanted.difference(&has).all(|n| {
            state
                .networks
                .get(*n)
                .is_some_and(|n| n.is_current_ingress())
        });
        return Some(if moving && t.status.state == TaskState::Running {
            Replace::Outdated
        } else {
            Replace::Now
        });
    }
    if t.spec == service.spec.task {
        return None;
    }
    Some(if t.status.state == TaskState::Running {
        Replace::Outdated
    } else {
        Replace::Now
    })
}

/// Where a task runs for its service: its slot (replicated), or its node (global, slot 0).
type Place = (u64, String);

fn place_of(t: &Task) -> Place {
    if t.slot == 0 {
        (0, t.node_id.clone().unwrap_or_default())
    } else {
        (t.slot, String::new())
    }
}

/// What a pass does to a service's live tasks: shut some down, start replacements for others.
#[derive(Debug, Default)]
struct Rollout {
    shut: Vec<String>,
    /// Places whose outdated task keeps running while its replacement starts there.
    start: Vec<Place>,
}

/// Whether a running task has run long enough for every node to balance to it (a timestamp
/// further ahead than the settle time is a node's clock, not a start).
fn settled(t: &Task, config: &Config, now: DateTime<Utc>) -> bool {
    t.status.state == TaskState::Running
        && ((now - t.status.timestamp) >= config.replacement_settle
            || (t.status.timestamp - now) >= config.replacement_settle)
}

/// The rolling update of `service` for this pass (docker's, with `--update-order
/// start-first`): every live task that must go at once is shut down; of those running an
/// outdated spec, as many as the update parallelism leaves room for get a replacement started
/// beside them, in slot order (node order for a global service), and each is shut down (and
/// drains) only once its replacement has run for `replacement_settle`. A replacement counts
/// against the parallelism until then, so one that keeps failing holds the update where it
/// is while the old task serves, as docker's default failure action pauses it. A service
/// publishing host-mode ports cannot run two tasks on one node's port: its old task is shut
/// down first (stop-first) and the replacement created in the same pass.
fn to_replace(
    state: &ClusterState,
    service: &Service,
    config: &Config,
    now: DateTime<Utc>,
) -> Rollout {
    let start_first = !service
        .ports
        .iter()
        .any(|p| p.mode == model::service::PublishMode::Host);
    let mut out = Rollout::default();
    let mut outdated = Vec::new();
    let mut in_flight = 0usize;
    // Places with a task of the current spec: whether one of them has settled.
    let mut current: BTreeMap<Place, bool> = BTreeMap::new();
    let mut emptied = BTreeSet::new();
    for t in state.tasks_of(&service.meta.id).filter(|t| is_live(t)) {
        match replacement(t, service, state, config, now) {
            Some(Replace::Now) => {
                out.shut.push(t.meta.id.clone());
                emptied.insert(place_of(t));
            }
            Some(Replace::Outdated) => outdated.push((place_of(t), t.meta.id.clone())),
            None => {
                let done = settled(t, config, now);
                if !done {
                    in_flight += 1;
                }
                *current.entry(place_of(t)).or_default() |= done;
            }
        }
    }
    // What goes at once from a place left empty is replaced by a task that does not run yet
    // either (one that goes beside an outdated task is not: that one keeps serving).
    for (place, _) in &outdated {
        emptied.remove(place);
    }
    emptied.retain(|p| !current.contains_key(p));
    let room = match service.spec.update.parallelism {
        0 => usize::MAX,
        p => usize::try_from(p).unwrap_or(usize::MAX),
    }
    .saturating_sub(in_flight + emptied.len());
    outdated.sort();
    let mut taken = 0;
    for (place, id) in outdated {
        match (start_first, current.get(&place)) {
            // Its replacement has settled: the old task goes.
            (true, Some(true)) => out.shut.push(id),
            // Its replacement is starting (counted in flight), or was just started for another
            // outdated task of the place.
            (true, Some(false)) => {}
            _ if taken < room => {
                taken += 1;
                if start_first {
                    current.insert(place.clone(), false);
                    out.start.push(place);
                } else {
                    out.shut.push(id);
                }
            }
            _ => {}
        }
    }
    out
}

pub fn run(state: &mut ClusterState, config: &Config, now: DateTime<Utc>) {
    let services: Vec<Service> = state.services.values().cloned().collect();
    for service in &services {
        let constraints = constraint::parse_all(&service.spec.task.constraints).unwrap_or_default();
        let rollout = to_replace(state, service, config, now);
        for id in rollout.shut {
            shut_down(state.tasks.get_mut(&id).expect("listed above"), now);
        }
        for (slot, node) in rollout.start {
            let t = new_task(service, slot, (!node.is_empty()).then_some(node), now);
            state.tasks.insert(t.meta.id.clone(), t);
        }
        match service.spec.mode {
            ServiceMode::Replicated { replicas } => {
                replicated(state, service, replicas, config, now)
            }
            ServiceMode::Global => global(state, service, &constraints, config, now),
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

/// The live tasks of a place beyond what it may run: one task, or during a rolling update an
/// outdated one and its replacement.
fn extra(
    state: &ClusterState,
    service: &Service,
    ids: &[String],
    config: &Config,
    now: DateTime<Utc>,
) -> Vec<String> {
    let (mut current, mut outdated) = (0, 0);
    let mut out = Vec::new();
    for id in ids {
        let t = &state.tasks[id];
        let kept = if replacement(t, service, state, config, now).is_some() {
            &mut outdated
        } else {
            &mut current
        };
        *kept += 1;
        if *kept > 1 {
            out.push(id.clone());
        }
    }
    out
}

fn replicated(
    state: &mut ClusterState,
    service: &Service,
    replicas: u64,
    config: &Config,
    now: DateTime<Utc>,
) {
    let mut live_slots: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for t in state.tasks_of(&service.meta.id).filter(|t| is_live(t)) {
        live_slots
            .entry(t.slot)
            .or_default()
            .push(t.meta.id.clone());
    }
    // Scale down: slots above the replica count stop; a slot runs one task (two while one
    // replaces the other).
    for (slot, ids) in &live_slots {
        let stop = if *slot <= replicas && *slot > 0 {
            extra(state, service, ids, config, now)
        } else {
            ids.clone()
        };
        for id in stop {
            shut_down(state.tasks.get_mut(&id).expect("listed above"), now);
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
    config: &Config,
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
        let stop = if still_ok {
            extra(state, service, ids, config, now)
        } else {
            ids.clone()
        };
        for id in stop {
            shut_down(state.tasks.get_mut(&id).expect("listed above"), now);
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
