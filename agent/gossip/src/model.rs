//! What callers see: endpoints, table entries and events, members, counters.

use std::net::{IpAddr, SocketAddr};

/// An endpoint of a task on an overlay network, as published by the node running the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub network: String,
    pub ip: IpAddr,
    pub mac: [u8; 6],
    pub task: String,
    pub service: String,
    pub name: String,
    pub aliases: Vec<String>,
    /// Published but not to be load-balanced to (a task shutting down).
    pub disabled: bool,
}

/// An endpoint and the node that owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub owner: String,
    pub endpoint: Endpoint,
    /// Whether failure detection holds the owner alive. False while it is suspected or declared
    /// dead: its agent is silent, but its data plane (and this endpoint) may well be alive, so
    /// the entry stays; whether it remains a DNS/LB backend is the caller's decision.
    pub owner_alive: bool,
}

/// A change in a network's endpoint table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Added(Entry),
    /// The entry changed, or its owner's liveness did ([`Entry::owner_alive`]).
    Updated(Entry),
    /// Withdrawn by its owner, its owner left or was forgotten, or another entry with the same
    /// IP won.
    Removed(Entry),
    /// The whole table: the first event of every subscription (once the node holds the
    /// network's table: a network it did not hold yet is fetched from its peers first), and
    /// what a subscriber that fell more than 1024 events behind gets instead of the events it
    /// missed.
    Resync(Vec<Entry>),
}

/// A cluster member (the newest generation known of each node id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: String,
    pub addr: SocketAddr,
    /// Start time of this incarnation (µs since the epoch): a restart makes a new generation.
    pub generation: u64,
    /// Alive per failure detection (not suspected, not dead) and not left.
    pub alive: bool,
    pub vtep: Option<IpAddr>,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub messages_sent: u64,
    pub messages_received: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Sealed under a key id not in the keyring.
    pub dropped_unknown_key: u64,
    /// Known key id but the tag does not verify (wrong key bytes, tampering).
    pub dropped_bad_auth: u64,
    /// Already seen, below the window, or stamped too far from our clock.
    pub dropped_replay: u64,
    /// Not an envelope, bad framing, a message that does not decode or breaks a bound.
    pub dropped_malformed: u64,
    /// Fragmented messages given up (a fragment lost, or no room).
    pub dropped_incomplete: u64,
    /// Authentic messages of another cluster id.
    pub dropped_foreign_cluster: u64,
    /// Messages from a node this one was told to forget.
    pub dropped_forgotten: u64,
    /// Entries or records received that were refused one by one (a bad id, a value that
    /// breaks a bound).
    pub dropped_entries: u64,
    /// Endpoint-table items received for a network this node does not hold (a peer that had
    /// not yet learned this node left the network); dropped.
    pub items_unwanted: u64,
    pub send_errors: u64,
    pub eager_pushes: u64,
    /// Messages larger than a few datagrams sent over TCP, and received that way.
    pub streams_sent: u64,
    pub streams_received: u64,
    /// Large messages sent as UDP fragments because a stream could not be opened (or too many
    /// were in flight).
    pub stream_fallbacks: u64,
    /// Anti-entropy rounds started, and those that found a difference to repair.
    pub syncs_started: u64,
    pub syncs_repaired: u64,
}

/// What this node holds and has received of one network's endpoint table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Whether this node holds (replicates) the network's table now.
    pub held: bool,
    /// Live entries stored (all owners, winners or not).
    pub stored: usize,
    /// Entries visible (the winner of each IP).
    pub visible: usize,
    /// Tombstones stored.
    pub tombstones: usize,
    /// Table items received from peers (pushes and deltas), and their encoded bytes.
    pub items_received: u64,
    pub bytes_received: u64,
}
