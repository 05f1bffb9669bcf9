//! The objects of the Raft-replicated store (DESIGN.md, "State"). Every object has a [`Meta`]: id,
//! version, created and updated times. [`Object`] is what the store keeps and replicates; the store
//! itself knows nothing of what is inside.
//!
//! Ownership: cluster.rs and node.rs belong to the cluster control plane; network.rs, service.rs
//! and task.rs to the orchestrator.

pub mod assignment;
pub mod cluster;
pub mod network;
pub mod node;
pub mod service;
pub mod task;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The address types of stored objects (re-exported so users name the same crate version).
pub use ipnet;

pub use assignment::Assignments;
pub use cluster::Cluster;
pub use network::Network;
pub use node::Node;
pub use service::Service;
pub use task::Task;

/// Identity and bookkeeping common to every object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// 25 characters of [0-9a-z], as swarmkit's ids.
    pub id: String,
    /// Raft index of the last change (0 before the object was first stored).
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Meta {
    /// Fresh metadata with a new random id.
    pub fn new() -> Meta {
        Meta::with_id(new_id())
    }

    pub fn with_id(id: String) -> Meta {
        let now = Utc::now();
        Meta {
            id,
            version: 0,
            created_at: now,
            updated_at: now,
        }
    }
}

impl Default for Meta {
    fn default() -> Self {
        Meta::new()
    }
}

/// A new random object id: 25 characters of [0-9a-z].
pub fn new_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..25)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The kinds of stored objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Cluster,
    Node,
    Network,
    Service,
    Task,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Cluster,
        Kind::Node,
        Kind::Network,
        Kind::Service,
        Kind::Task,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Cluster => "cluster",
            Kind::Node => "node",
            Kind::Network => "network",
            Kind::Service => "service",
            Kind::Task => "task",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Object {
    Cluster(Cluster),
    Node(Node),
    Network(Network),
    Service(Service),
    Task(Task),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Cluster(_) => Kind::Cluster,
            Object::Node(_) => Kind::Node,
            Object::Network(_) => Kind::Network,
            Object::Service(_) => Kind::Service,
            Object::Task(_) => Kind::Task,
        }
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Object::Cluster(o) => &o.meta,
            Object::Node(o) => &o.meta,
            Object::Network(o) => &o.meta,
            Object::Service(o) => &o.meta,
            Object::Task(o) => &o.meta,
        }
    }

    pub fn meta_mut(&mut self) -> &mut Meta {
        match self {
            Object::Cluster(o) => &mut o.meta,
            Object::Node(o) => &mut o.meta,
            Object::Network(o) => &mut o.meta,
            Object::Service(o) => &mut o.meta,
            Object::Task(o) => &mut o.meta,
        }
    }

    pub fn id(&self) -> &str {
        &self.meta().id
    }
}

macro_rules! object_conversions {
    ($($variant:ident),*) => {$(
        impl From<$variant> for Object {
            fn from(o: $variant) -> Object {
                Object::$variant(o)
            }
        }
        impl TryFrom<Object> for $variant {
            type Error = Object;
            fn try_from(o: Object) -> Result<$variant, Object> {
                match o {
                    Object::$variant(x) => Ok(x),
                    other => Err(other),
                }
            }
        }
    )*};
}
object_conversions!(Cluster, Node, Network, Service, Task);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_25_base36_chars_and_distinct() {
        let a = new_id();
        assert_eq!(a.len(), 25);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        );
        assert_ne!(a, new_id());
    }
}
