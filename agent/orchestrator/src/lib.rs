//! The leader's decisions, as pure functions: a [`ClusterState`] (every stored object) goes in,
//! [`Changes`] to propose through Raft come out. Nothing here does I/O, so followers never run it
//! and the Raft log carries only its results (DESIGN.md, "State").
//!
//! - [`allocator`]: subnets and VNIs of networks, VIPs of services, addresses of tasks and of
//!   nodes, over an [`ipam::Ipam`] built from the state and kept in step with it.
//! - [`constraint`]: placement constraints (`node.hostname==x`, `node.labels.k!=v`, ...).
//! - [`orchestrate`]: one task per replica slot (or per eligible node for global services),
//!   restarts, drain and down-node replacement, history cleanup.
//! - [`ports`]: published ports of the routing mesh, omitted ones allocated from 30000-32767.
//! - [`scheduler`]: spreads pending tasks over eligible nodes.
//!
//! - [`leader`]: the leader's incremental orchestrator: kept in step with the store's change feed,
//!   it runs the rules above only over what changed.
//!
//! [`reconcile`] runs them in that order over the whole state (a fresh [`Leader`] with everything
//! to decide); it is what a long-lived [`Leader`] must agree with.

pub mod allocator;
pub mod constraint;
pub mod keys;
pub mod leader;
pub mod orchestrate;
pub mod ports;
pub mod scheduler;
mod state;

/// The address manager the allocator works with (its errors are part of [`allocator::Error`]).
pub use ipam;
pub use leader::{Leader, Observed};
pub use state::{Changes, ClusterState};

use chrono::{DateTime, Utc};

/// Knobs of the leader's loop.
#[derive(Debug, Clone)]
pub struct Config {
    /// Terminal tasks kept per slot for `service ps` history (docker: 5).
    pub task_history: usize,
    /// Delay before a failed or completed task of a running service is replaced (docker: 5 s).
    pub restart_delay: chrono::Duration,
    /// How long a rolling update lets a replacement run before it counts as serving and the
    /// next outdated task is shut down: the time every node needs to hear of the new endpoint
    /// (gossip) and balance to it. Shut down sooner, the old task leaves the balancers of a node
    /// that has not heard of its replacement yet, which then has no backend.
    pub replacement_settle: chrono::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            task_history: 5,
            restart_delay: chrono::Duration::seconds(5),
            replacement_settle: chrono::Duration::seconds(1),
        }
    }
}

/// One pass over the whole state: orchestrate replicas, allocate task addresses, schedule, give
/// nodes their own addresses. Returns the changed and deleted objects; applying them to `state`
/// and calling again yields no changes (unless time moved on).
pub fn reconcile(state: &ClusterState, config: &Config, now: DateTime<Utc>) -> Changes {
    Leader::new(state.clone(), config.clone()).pass(now)
}

#[cfg(test)]
mod tests;
