//! Gossip on 7946: who is where (VTEPs, endpoints), spread between all nodes without the managers.
//!
//! # Design
//!
//! Two layers, one wire codec of our own ([`codec`]), all in one AES-GCM envelope ([`wire`]):
//!
//! * **Membership and failure detection: SWIM**, by the [foca](https://docs.rs/foca/2) crate
//!   ([`membership`]). Each node probes one random member per probe period (direct ping, then
//!   indirect pings through a few others), suspects it when neither answers and declares it down
//!   when the suspicion is not refuted in time; membership changes ride on the probes. The cost
//!   per node is constant in the cluster size, where the previous scuttlebutt layer (chitchat)
//!   sent every node's heartbeat in every round. Identities are ours (node id, generation,
//!   address, a rejoin counter) and foca's packets are encoded by its public postcard codec over
//!   them; foca's types are public API, so nothing here depends on a library's private format.
//!
//! * **State: per-network anti-entropy of owner-versioned entries** (`store.rs`, `table.rs`,
//!   `sync.rs`), after Docker's NetworkDB minus its known bugs. There are two kinds of state:
//!   - a global *record* per node (address, VTEP, the networks whose table it holds, whether it
//!     left, a "floor" below which all its older entries are void), replicated to everyone;
//!   - one *endpoint table per network*, replicated only among the nodes that hold that network
//!     (they subscribed to it, publish in it, or are adopting their previous generation's
//!     entries in it). A node outside a network never receives its entries.
//!
//!   Every entry is written by its owner only, with a version from the owner's hybrid logical
//!   clock (microseconds, strictly increasing across restarts). Merging is last-writer-wins per
//!   entry; a withdraw is a tombstone with a newer version, kept for [`Timings::tombstone_ttl`],
//!   so a late or replayed add never resurrects a delete. Anti-entropy compares one 64-bit
//!   digest per network (and one for the records) with a random peer each round; only when
//!   digests differ do the peers exchange per-owner digests `(owner, max version, hash of live
//!   entries)` and then the missing deltas. In steady state a round costs two small datagrams
//!   whatever the table sizes. Changes are pushed eagerly to a few peers of the network, which
//!   pass on what was new to them (once per change), so a change crosses 50 nodes in
//!   milliseconds; anti-entropy repairs whatever a push missed.
//!
//! Why not keep chitchat: its per-node key-value state is global (every node replicates every
//! key), so per-network tables would need one chitchat instance per network or a key space that
//! every node still receives; and a custom transport needs its private wire codec, which is what
//! the old `validate.rs` re-implemented behind an exact version pin.
//!
//! # Rules the tables follow
//!
//! * **Silent is not gone.** Entries of an owner that failure detection suspects or declares
//!   dead stay visible, with [`Entry::owner_alive`] false, and its VTEP stays in
//!   [`Gossip::vteps`]: its data plane may well be alive (a crashed agent leaves its tasks
//!   running). A liveness change emits [`Event::Updated`] for each of its entries.
//! * Entries go ([`Event::Removed`]) only when the owner withdraws them, the owner leaves
//!   gracefully ([`Gossip::shutdown`]), the agent forgets the node ([`Gossip::forget`]: removed
//!   from the cluster), or another entry with the same IP in the same network wins: an alive
//!   owner's entry beats a dead owner's, and between owners of the same liveness the later
//!   publish (higher version, then owner id) wins — the same decision on every node.
//! * **Restart without flapping.** A restarted node (new generation) *adopts* the entries of its
//!   previous generation: it fetches them and keeps them as its own, so other nodes see no
//!   change while its agent re-publishes what still runs (a re-publish of an unchanged endpoint
//!   emits nothing). What the agent does not re-publish goes when it calls
//!   [`Gossip::release_adopted`] (or after [`Timings::adopt_grace`]): the entries it adopted
//!   are withdrawn at once, and a linger time later (20 gossip rounds, at least 2 s, so that
//!   the re-published copies have reached every holder first) the node raises its record's
//!   floor to its generation, which voids every older entry of it on every node, in every
//!   network, whether that node holds the network or not.
//!
//! # What else it keeps
//!
//! * an encrypted envelope ([`wire`]): AES-GCM under the primary key, opened with any accepted
//!   key, a replay window per sender, datagrams under the underlay MTU; messages larger than a
//!   few datagrams go over TCP on the same port (`stream.rs`), falling back to UDP fragments;
//! * strict validation of everything received ([`codec::decode`]): bounded sizes, ids and
//!   values checked, every drop counted by reason in [`Stats`], never a panic;
//! * seeds changeable at run time ([`Gossip::set_seeds`]), contacted while they are not alive
//!   members, which repairs the view after every manager restarted;
//! * gossip sockets stay in the namespace they were bound in ([`Sockets::bind`]).

mod api;
pub mod codec;
mod config;
pub mod fuzz;
pub mod membership;
mod model;
mod node;
mod push;
mod store;
mod stream;
mod subscription;
mod sync;
mod table;
mod transport;
pub mod wire;

pub use api::{Gossip, Sockets};
pub use config::{Config, Timings};
pub use model::{Endpoint, Entry, Event, Member, NetworkStats, Stats};
pub use subscription::Subscription;
pub use wire::{Key, Keyring};

/// The gossip port (UDP and TCP).
pub const DEFAULT_PORT: u16 = 7946;
/// Longest endpoint value (encoded) accepted for publishing.
pub const MAX_VALUE_LEN: usize = 4096;
/// Longest network, endpoint or node id.
pub const MAX_ID_LEN: usize = 128;

/// Errors of the gossip layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid gossip keyring: {0}")]
    Keyring(String),
    #[error("invalid gossip configuration: {0}")]
    Config(String),
    #[error("could not bind the gossip socket to {addr}: {source} (is another agent running?)")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gossip socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{what} {value:?} is invalid: use 1-{MAX_ID_LEN} characters, no '/'")]
    InvalidId { what: &'static str, value: String },
    #[error("endpoint {0} is too large to gossip ({1} bytes; at most {MAX_VALUE_LEN})")]
    TooLarge(String, usize),
    #[error("message of {0} bytes is too large for the gossip envelope")]
    Oversize(usize),
    #[error("could not start gossip: {0}")]
    Start(String),
    #[error("gossip is shut down")]
    Shutdown,
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn valid_id(value: &str) -> bool {
    !value.is_empty() && value.len() <= MAX_ID_LEN && !value.contains('/')
}

pub(crate) fn validate_id(what: &'static str, value: &str) -> Result<()> {
    if !valid_id(value) {
        return Err(Error::InvalidId {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
}
