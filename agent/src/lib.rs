//! netagent: the daemon of every node and its command line, netctl.
//!
//! Layout (one job per module):
//! - [`config`]: flags + TOML file; [`state`]: the node's identity and certificates on disk.
//! - [`agent`]: whether and how the node is in a swarm, and the transitions (init, join, leave,
//!   force-new-cluster, promote/demote); per-node components start in `Agent::start_member`.
//! - [`member`]: a running membership: identity, TLS, the store (managers), the write path.
//! - [`rpc`] + [`services`]: the cluster port 2377 (gRPC over mutual TLS); [`raft_net`]:
//!   openraft's network on it; [`peers`]: managers' liveness probes; [`session`]: the node side
//!   of the dispatcher session; [`leader`]: leader-only loops.
//! - [`api`]: the HTTP/JSON API on the unix socket; [`cli`]: netctl.
//! - [`quorum`], [`error`], [`sysinfo`]: small shared pieces.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod leader;
pub mod member;
pub mod peers;
pub mod quorum;
pub mod raft_net;
pub mod rpc;
pub mod services;
pub mod session;
pub mod state;
pub mod sysinfo;
