//! The executor of a node: turns the node's assignments (tasks, the networks they need, the
//! services on them) and the gossip endpoint tables into running processes and kernel state, and
//! reports task status.
//!
//! - [`feed`]: the node's assignments from the dispatcher session: the whole set, then deltas.
//! - [`node`]: the loop: a full pass at start (and after a failure), then events (assignment
//!   changes, gossip, task exits, the node's addresses coming and going: `node_addrs`) handled
//!   one task or network at a time; `changes`: what changed in the assignments, by id.
//! - `tasks`: a task's life (namespace, endpoints, start, watch, stop, removal, its gossip
//!   entries); `networks`: a network's presence on the node (sandbox, subscription, peers,
//!   load-balancer endpoint); `plane`: the handle on the `vxlan` data plane; `discovery`: the
//!   records of the node's DNS resolver, by delta.
//! - [`plan`]: the desired overlay data plane from local tasks and gossip (pure).
//! - [`runner`]: a task's namespace, cgroup and process, started through the [`shim`] so it
//!   outlives an agent restart and its exit code is never lost.

mod balancer;
mod changes;
mod discovery;
mod error;
pub mod feed;
mod ingress;
mod ipsec;
mod networks;
pub mod node;
mod node_addrs;
pub mod plan;
mod plane;
pub mod runner;
pub mod shim;
pub mod tasklog;
mod tasks;

pub use balancer::LbCounters;
