//! Placement: spreads pending, allocated tasks over the nodes that take new tasks (ready, active)
//! and satisfy the service's constraints — fewest tasks of the same service first, then fewest
//! tasks overall.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use model::Task;
use model::task::TaskState;

use crate::ClusterState;
use crate::allocator::is_allocated;
use crate::constraint;
use crate::orchestrate::node_takes_new_tasks;

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Whether a task counts as load on its node: placed there, not stopped, not being stopped.
pub fn counts_as_load(t: &Task) -> Option<&str> {
    let n = t.node_id.as_deref()?;
    (t.desired_state <= TaskState::Running
        && !t.status.state.is_terminal()
        && t.status.state >= TaskState::Assigned)
        .then_some(n)
}

/// Places the pending, allocated tasks of `state`. `base_load` is the load of tasks that are not
/// in `state` (an incremental pass works on part of the cluster); `state`'s own tasks are counted
/// here.
pub fn run(state: &mut ClusterState, base_load: &HashMap<String, usize>, now: DateTime<Utc>) {
    // Running load: tasks placed on a node that have not stopped.
    let mut per_node: HashMap<String, usize> = base_load.clone();
    let mut per_service: BTreeMap<(String, String), usize> = BTreeMap::new();
    for t in state.tasks.values() {
        if let Some(n) = counts_as_load(t) {
            *per_node.entry(n.to_string()).or_default() += 1;
            *per_service
                .entry((t.service_id.clone(), n.to_string()))
                .or_default() += 1;
        }
    }
    let pending: Vec<String> = state
        .tasks
        .values()
        .filter(|t| {
            t.desired_state == TaskState::Running
                && t.status.state == TaskState::Pending
                && is_allocated(state, t)
        })
        .map(|t| t.meta.id.clone())
        .collect();
    for id in pending {
        let task = &state.tasks[&id];
        let Some(service) = state.services.get(&task.service_id) else {
            continue;
        };
        let constraints = constraint::parse_all(&service.spec.task.constraints).unwrap_or_default();
        // A task on an encrypted network only goes where the kernel can encrypt (never runs
        // unencrypted).
        let encrypted = task.networks.iter().any(|a| {
            state
                .networks
                .get(&a.network_id)
                .is_some_and(|n| n.spec.encrypted)
        });
        let (mut unavailable, mut unsatisfied, mut no_esp) = (0, 0, 0);
        let mut best: Option<(usize, usize, String, String)> = None;
        for node in state.nodes.values() {
            if task.node_id.as_ref().is_some_and(|n| n != &node.meta.id) {
                continue;
            }
            if !node_takes_new_tasks(node) {
                unavailable += 1;
                continue;
            }
            if !constraint::node_matches(&constraints, node) {
                unsatisfied += 1;
                continue;
            }
            if encrypted && node.description.ipsec == Some(false) {
                no_esp += 1;
                continue;
            }
            let key = (
                per_service
                    .get(&(task.service_id.clone(), node.meta.id.clone()))
                    .copied()
                    .unwrap_or(0),
                per_node.get(&node.meta.id).copied().unwrap_or(0),
                node.description.hostname.clone(),
                node.meta.id.clone(),
            );
            if best.as_ref().is_none_or(|b| key < *b) {
                best = Some(key);
            }
        }
        let task = state.tasks.get_mut(&id).expect("listed above");
        match best {
            Some((_, _, _, node)) => {
                *per_node.entry(node.clone()).or_default() += 1;
                *per_service
                    .entry((task.service_id.clone(), node.clone()))
                    .or_default() += 1;
                task.node_id = Some(node);
                task.status.state = TaskState::Assigned;
                task.status.message = "scheduler assigned task to node".into();
                task.status.err = None;
                task.status.timestamp = now;
            }
            None => {
                let mut reasons = Vec::new();
                if unsatisfied > 0 {
                    reasons.push(format!(
                        "scheduling constraints not satisfied on {}",
                        plural(unsatisfied, "node")
                    ));
                }
                if no_esp > 0 {
                    reasons.push(format!(
                        "{} on {}: it cannot carry encrypted networks",
                        model::node::NO_ESP,
                        plural(no_esp, "node")
                    ));
                }
                if unavailable > 0 {
                    reasons.push(format!(
                        "{} not available for new tasks",
                        plural(unavailable, "node")
                    ));
                }
                if reasons.is_empty() {
                    reasons.push("no nodes in the swarm".into());
                }
                let err = Some(format!("no suitable node ({})", reasons.join("; ")));
                if task.status.err != err {
                    task.status.err = err;
                    task.status.message = "pending task scheduling".into();
                    task.status.timestamp = now;
                }
            }
        }
    }
}
