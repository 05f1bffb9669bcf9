//! What the dispatcher sends a node over its session: everything the node's executor needs to run
//! its tasks, and nothing about other nodes (those come by gossip).

use serde::{Deserialize, Serialize};

use crate::cluster::EncryptionKey;
use crate::{Network, Service, Task};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Assignments {
    /// Raft index the set was computed at; a node ignores a set older than the one it has.
    pub revision: u64,
    /// Every task placed on the node, whatever its desired state (the executor stops those
    /// whose desired state is past running and removes those no longer listed).
    pub tasks: Vec<Task>,
    /// The networks those tasks attach to, with their allocations.
    pub networks: Vec<Network>,
    /// The services of those tasks (names, endpoint mode, VIPs).
    pub services: Vec<Service>,
    /// The cluster's VXLAN port.
    pub data_path_port: u16,
    /// The cluster's gossip keys (subsystem "gossip").
    pub gossip_keys: Vec<EncryptionKey>,
}
