//! netagent: the daemon of every node and its command line, netctl.
//!
//! Layout (one job per module):
//! - [`config`]: flags + TOML file; [`state`]: the node's identity and certificates on disk.
//! - [`agent`]: whether and how the node is in a swarm, and the transitions (init, join, leave,
//!   force-new-cluster, promote/demote); per-node components start in `Agent::start_member`.
//! - [`member`]: a running membership: identity, TLS, the store (managers), the write path.
//! - [`rpc`] + [`services`]: the cluster port 2377 (gRPC over mutual TLS); [`raft_net`]:
//!   openraft's network on it; [`peers`]: managers' liveness probes; [`session`]: the node side
//!   of the dispatcher session; [`leader`]: leader-only loops; [`assign`]: the leader's
//!   per-node assignment index (what each node is sent, as deltas).
//! - [`api`]: the Docker Engine API (swarm subset) on the unix socket, over the `api` crate's
//!   wire types; [`cli`]: netctl, its client; [`metrics`]: Prometheus metrics.
//! - [`ingress`]: the routing mesh's ingress network (created at init, recreated on demand).
//! - [`quorum`], [`error`], [`sysinfo`]: small shared pieces.
//!
//! Extending it (the networks/services/tasks issue):
//! - **An API route**: a handler in `api/` over the `api` crate's types (reads use
//!   `Member::store()` and `Store::get/list`; writes build a `store::Batch` and `Member::write`
//!   it — version-checked `Change::Update`, or `Change::Patch` for field updates), one line in
//!   `api::routes`. The `api::gate` middleware already runs non-GET routes on the leader
//!   (forwarding from followers, refusing on workers, failing fast without quorum) and GETs on
//!   any manager.
//! - **A dispatcher message**: a variant of `rpc::messages::SessionDown` (assignments: a full set
//!   at the start of a session, then deltas from `assign::Assigner`, which the leader feeds from
//!   the change feed and which decides which nodes a change concerns) or
//!   `SessionUp` (task status: handled there, written with `Member::write`); the node side is
//!   `session.rs`.
//! - **A leader-only loop** (allocator, scheduler): start it next to `node_status` in
//!   `leader::run`, which waits for `Store::leader_watch` to say leader and stops on loss of
//!   leadership; feed it from `Store::subscribe` (resync with `Store::list` on lag or
//!   `Event::Reset`) and write its results with `Member::write`.
//! - **A per-node component** (gossip, executor): start it in `Agent::start_member_now` with
//!   `member.spawn(...)`, stop it with `member.cancel`; it gets the `Arc<Member>` (node id, role,
//!   addresses, TLS to the cluster port, the node's own object in `Member::node_obj` and the
//!   cluster's settings — data-path port, pools, network keys — in `Member::cluster_info`, both
//!   from the dispatcher session, and on managers the store).

pub mod agent;
pub mod api;
pub mod assign;
pub mod ca_rotation;
pub mod certs;
pub mod cli;
pub mod config;
pub mod error;
pub mod fuzz;
pub mod ingress;
pub mod leader;
pub mod member;
pub mod metrics;
pub mod node_runtime;
pub mod orchestration;
pub mod peers;
pub mod quorum;
pub mod raft_net;
pub mod rpc;
pub mod services;
pub mod session;
pub mod sessions;
pub mod state;
pub mod supervisor;
pub mod sysinfo;

/// The git commit the binaries were built from ("unknown" outside a git checkout); see build.rs.
pub const GIT_COMMIT: &str = env!("NETAGENT_GIT_COMMIT");

/// `--version` of netagent and netctl: the crate's version and the commit.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("NETAGENT_GIT_COMMIT"),
    ")"
);
