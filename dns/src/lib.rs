//! netagent's embedded DNS resolver: the server at 127.0.0.11:53 in every task namespace.
//!
//! It knows nothing of the agent. Records come in as deltas ([`Change`]) describing networks,
//! services and running tasks; the agent binds sockets inside each task namespace
//! ([`bind_in`]) and hands them to [`Resolver::serve`] with the task's networks as the listener's
//! scope. A task sees only the names of its own networks; everything else is forwarded to the
//! node's upstream nameservers from the node's namespace.
//!
//! Built on hickory-proto's message types with its own UDP/TCP loops rather than
//! hickory-server's `Server`: in 0.26 that server drops short messages and responses and answers
//! FORMERR itself before any `RequestHandler` runs (so that bad input cannot be counted), spawns
//! a task per datagram and per connection without bound, and logs two `info!` lines per query.

mod forward;
pub mod fuzz;
mod handler;
mod ids;
mod lookup;
mod records;
mod resolv_conf;
mod server;
mod sockets;
mod stats;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use lookup::{Pointer, RecordEntry, RecordKind, Resolved};
pub use records::{Change, Records, TASK_TTL, VIP_TTL, normalize, task_name};
pub use resolv_conf::{EMBEDDED_ADDR, MAX_UPSTREAMS, parse_upstreams, task_resolv_conf};
pub use server::{Listener, bind_in};
pub use stats::Stats;

/// Errors of the resolver's setup (serving itself never fails a query: it answers SERVFAIL).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot make upstream sockets in network namespace {name:?}: {source} (netagent needs root / CAP_SYS_ADMIN)"
    )]
    Namespace {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// How the resolver forwards and how its listeners behave.
#[derive(Debug)]
pub struct Config {
    /// Upstream nameservers, tried in order (at most [`MAX_UPSTREAMS`] are used).
    pub upstreams: Vec<SocketAddr>,
    /// The namespace upstream sockets are made in (the node's). None: the namespace of the
    /// thread calling [`Resolver::new`].
    pub upstream_netns: Option<netns::NetNs>,
    /// How long one upstream may take before the next is tried.
    pub upstream_timeout: Duration,
    /// Forwards in flight at most, over all listeners; beyond it queries get REFUSED.
    pub max_forwards: usize,
    /// A TCP connection idle (or stuck in a message) this long is closed.
    pub tcp_idle_timeout: Duration,
    /// TCP connections per listener at most; more are closed at once.
    pub max_tcp_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstreams: Vec::new(),
            upstream_netns: None,
            upstream_timeout: Duration::from_secs(2),
            max_forwards: 1024,
            tcp_idle_timeout: Duration::from_secs(3),
            max_tcp_connections: 32,
        }
    }
}

impl Config {
    /// The defaults with the nameservers of a resolv.conf as upstreams.
    pub fn from_resolv_conf(text: &str) -> Config {
        Config {
            upstreams: parse_upstreams(text),
            ..Config::default()
        }
    }
}

/// The node's resolver: the records, the counters and the forwarder, shared by every listener.
pub struct Resolver {
    records: RwLock<Records>,
    counters: stats::Counters,
    forwarder: forward::Forwarder,
    config: Config,
}

impl Resolver {
    /// A resolver with no records yet. Starts the thread that makes upstream sockets in
    /// `config.upstream_netns`.
    pub fn new(mut config: Config) -> Result<Arc<Resolver>, Error> {
        let sockets = sockets::SocketFactory::new(config.upstream_netns.as_ref())?;
        let mut upstreams = std::mem::take(&mut config.upstreams);
        upstreams.truncate(MAX_UPSTREAMS);
        let forwarder = forward::Forwarder::new(
            upstreams,
            config.upstream_timeout,
            config.max_forwards.max(1),
            sockets,
        );
        config.max_tcp_connections = config.max_tcp_connections.max(1);
        tracing::info!(
            upstreams = ?forwarder.upstreams(),
            netns = config.upstream_netns.as_ref().map(|n| n.name()),
            timeout_ms = config.upstream_timeout.as_millis() as u64,
            max_forwards = config.max_forwards,
            "dns: resolver ready"
        );
        Ok(Arc::new(Resolver {
            records: RwLock::new(Records::new()),
            counters: stats::Counters::default(),
            forwarder,
            config,
        }))
    }

    /// Applies record changes in order; cost proportional to the changes. Queries see either
    /// none or all of one call's changes.
    pub fn apply(&self, changes: impl IntoIterator<Item = Change>) {
        let changes: Vec<Change> = changes.into_iter().collect();
        if changes.is_empty() {
            return;
        }
        self.records
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(changes);
    }

    /// The counters since the resolver started.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Every record the node serves on `network` (id, or name), sorted, for `netctl`.
    pub fn records(&self, network: &str) -> Vec<RecordEntry> {
        self.records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .list(network)
    }

    /// What `name` resolves to for clients that see `scope` (for debugging and tests).
    pub fn resolve(&self, scope: &[String], name: &str) -> Option<Resolved> {
        self.records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .resolve(scope, &normalize(name))
    }

    /// Number of (networks, services, tasks) known.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .counts()
    }

    /// The upstreams forwarded to, in order.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.forwarder.upstreams().to_vec()
    }

    /// Replaces the upstreams (e.g. after the node's resolv.conf changed).
    pub fn set_upstreams(&self, mut upstreams: Vec<SocketAddr>) {
        upstreams.truncate(MAX_UPSTREAMS);
        self.forwarder.set_upstreams(upstreams);
    }
}
