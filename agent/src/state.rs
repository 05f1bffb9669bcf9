//! What a node keeps about its membership between restarts: its identity (node.json) and its
//! certificates (certs/). The Raft store of a manager is in raft/.

use std::path::Path;

use anyhow::{Context, Result};
use model::node::Role;
use pki::NodeKeys;
use serde::{Deserialize, Serialize};

use crate::config::{Config, write_atomic};

/// node.json
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub node_id: String,
    pub cluster_id: String,
    /// The role of the node's current certificate.
    pub role: Role,
    /// Raft member id (managers; kept across restarts).
    pub raft_id: u64,
    pub advertise_addr: String,
    pub data_path_addr: String,
    /// Cluster-port addresses of the managers, last known (for the dispatcher session).
    pub managers: Vec<String>,
}

/// A node's membership on disk.
#[derive(Debug, Clone)]
pub struct Saved {
    pub node: NodeState,
    pub ca_pem: String,
    pub keys: NodeKeys,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

impl Saved {
    /// The saved membership, if the node is in a swarm.
    pub fn load(cfg: &Config) -> Result<Option<Saved>> {
        let path = cfg.state_path("node.json");
        if !path.exists() {
            return Ok(None);
        }
        let node: NodeState = serde_json::from_str(&read(&path)?).with_context(|| {
            format!(
                "{} is corrupt; remove the state directory to start afresh",
                path.display()
            )
        })?;
        Ok(Some(Saved {
            node,
            ca_pem: read(&cfg.state_path("certs/ca.pem"))?,
            keys: NodeKeys {
                cert_pem: read(&cfg.state_path("certs/node.pem"))?,
                key_pem: read(&cfg.state_path("certs/node.key"))?,
            },
        }))
    }

    pub fn save(&self, cfg: &Config) -> Result<()> {
        let w = |name: &str, data: &[u8], mode: u32| {
            write_atomic(&cfg.state_path(name), data, mode)
                .with_context(|| format!("cannot write {}", cfg.state_path(name).display()))
        };
        w("certs/ca.pem", self.ca_pem.as_bytes(), 0o644)?;
        w("certs/node.pem", self.keys.cert_pem.as_bytes(), 0o644)?;
        w("certs/node.key", self.keys.key_pem.as_bytes(), 0o600)?;
        w("node.json", &serde_json::to_vec_pretty(&self.node)?, 0o644)?;
        Ok(())
    }

    /// Forgets the membership: identity, certificates and the Raft store.
    pub fn wipe(cfg: &Config) -> Result<()> {
        for name in ["node.json", "certs", "raft"] {
            let p = cfg.state_path(name);
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            match r {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
            }
        }
        Ok(())
    }
}
