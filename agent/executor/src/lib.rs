//! The executor of a node: turns the node's assignments (tasks, the networks they need) and the
//! gossip endpoint tables into running processes and kernel state, and reports task status.
//!
//! - [`node`]: the loop: assignments + gossip -> processes, kernel, gossip entries, status.
//! - [`plan`]: the desired overlay data plane from local tasks and gossip (pure).
//! - [`runner`]: a task's namespace, cgroup and process, started through the [`shim`] so it
//!   outlives an agent restart and its exit code is never lost.

pub mod node;
pub mod plan;
pub mod runner;
pub mod shim;
