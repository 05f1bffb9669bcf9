//! How a node's gossip is configured: [`Config`] and its timers, [`Timings`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::wire::Keyring;

/// Timers and bounds. [`Timings::default`] is for production; [`Timings::fast`] for tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timings {
    /// Anti-entropy round: each node compares digests with one random live peer, and with one
    /// peer of one of its networks (round robin), every interval.
    pub gossip_interval: Duration,
    /// Silence after which a node is declared dead. SWIM probes every `failure_timeout / 5`
    /// (at least one gossip interval); a member that answers neither a direct nor an indirect
    /// probe is suspected (its entries are flagged at once) and declared dead when it has not
    /// refuted the suspicion by the end of the timeout.
    pub failure_timeout: Duration,
    /// How long a dead identity is remembered by the failure detector (its stale messages are
    /// refused meanwhile). Entries of a dead node are **not** removed after it: they stay,
    /// flagged, until the node leaves, is forgotten, or is replaced.
    pub dead_node_gc: Duration,
    /// How long tombstones (withdrawn entries) are kept so every node learns the delete.
    pub tombstone_ttl: Duration,
    /// Peers a change is pushed to at once (and each peer that learns it from a push passes it
    /// on to as many).
    pub push_fanout: usize,
    /// Minimum time between two eager pushes of a node (changes in between are coalesced).
    pub push_cooldown: Duration,
    /// A seed that is not a live member is contacted at most this often; also how often a
    /// dead member is contacted to detect a healed partition.
    pub rejoin_interval: Duration,
    /// Datagrams stamped further than this from the local clock are refused as replays (so the
    /// nodes' clocks must agree within it).
    pub replay_max_age: Duration,
    /// A fragmented message not complete after this long is given up.
    pub reassembly_timeout: Duration,
    /// A restarted node keeps the entries of its previous generation that its agent has not
    /// re-published for at most this long, unless the agent releases them earlier
    /// ([`crate::Gossip::release_adopted`]).
    pub adopt_grace: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            gossip_interval: Duration::from_millis(250),
            failure_timeout: Duration::from_secs(5),
            dead_node_gc: Duration::from_secs(24 * 3600),
            tombstone_ttl: Duration::from_secs(24 * 3600),
            push_fanout: 6,
            push_cooldown: Duration::from_millis(20),
            rejoin_interval: Duration::from_secs(2),
            replay_max_age: Duration::from_secs(600),
            reassembly_timeout: Duration::from_secs(2),
            adopt_grace: Duration::from_secs(600),
        }
    }
}

impl Timings {
    /// Short timers for tests: 100 ms rounds, death after ~1.5 s of silence, tombstones for a
    /// minute, adopted entries released after a minute.
    pub fn fast() -> Timings {
        Timings {
            gossip_interval: Duration::from_millis(100),
            failure_timeout: Duration::from_millis(1500),
            dead_node_gc: Duration::from_secs(120),
            tombstone_ttl: Duration::from_secs(60),
            rejoin_interval: Duration::from_millis(500),
            adopt_grace: Duration::from_secs(60),
            ..Timings::default()
        }
    }

    /// SWIM's probe period: a fifth of the failure timeout, at least one gossip interval.
    pub(crate) fn probe_period(&self) -> Duration {
        (self.failure_timeout / 5).max(self.gossip_interval)
    }
}

/// How to start a node's gossip.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's id as the cluster knows it (opaque).
    pub node_id: String,
    /// Cluster id: nodes of another cluster are refused.
    pub cluster_id: String,
    /// Advertise address, also bound: peers reach this node here. Port 7946 by default.
    pub bind: SocketAddr,
    /// Known members to join through (the managers).
    pub seeds: Vec<SocketAddr>,
    /// The cluster's gossip keys.
    pub keys: Keyring,
    /// Underlay MTU: no datagram is larger than `mtu - 48`.
    pub mtu: u16,
    pub timings: Timings,
    /// The node's VTEP, known from the start (else published later with `publish_vtep`).
    pub vtep: Option<IpAddr>,
}

impl Config {
    /// A configuration with production timings, port 7946 and MTU 1500.
    pub fn new(node_id: impl Into<String>, advertise: IpAddr, keys: Keyring) -> Config {
        Config {
            node_id: node_id.into(),
            cluster_id: "netagent".into(),
            bind: SocketAddr::new(advertise, crate::DEFAULT_PORT),
            seeds: Vec::new(),
            keys,
            mtu: 1500,
            timings: Timings::default(),
            vtep: None,
        }
    }
}
