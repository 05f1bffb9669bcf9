//! The cluster object (one per swarm). Owned by the cluster control plane.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Meta;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cluster {
    pub meta: Meta,
    /// PEM of the cluster's root CA certificate.
    pub ca_cert_pem: String,
    /// PEM of the root CA key. Lives in the Raft store, which only managers hold.
    pub ca_key_pem: String,
    pub join_tokens: JoinTokens,
    /// Default address pools for overlay subnets (CIDRs), e.g. ["10.0.0.0/8"].
    pub default_addr_pools: Vec<String>,
    /// Mask length of the subnets carved from the pools, e.g. 24.
    pub subnet_size: u8,
    /// UDP port of the VXLAN data path (4789 unless chosen at `swarm init`).
    pub data_path_port: u16,
    /// Gossip (subsystem "gossip") and IPsec (subsystem "ipsec") keys, 3 each, Lamport-tagged.
    pub network_keys: Vec<EncryptionKey>,
    pub settings: ClusterSettings,
    /// When the leader last rotated the data-path (IPsec) keys; None: never (the cluster's
    /// creation counts).
    #[serde(default)]
    pub data_key_rotated_at: Option<DateTime<Utc>>,
    /// Ids of the nodes removed from the swarm (`node rm`): their certificates are revoked, the
    /// cluster port refuses them on every service, whatever their expiry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_nodes: Vec<String>,
    /// A CA rotation in progress (`swarm ca --rotate`; swarmkit's RootRotation): the CA issues
    /// from the new root while `ca_cert_pem` stays the old one until every node holds a
    /// certificate of the new root; then the new root replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_rotation: Option<RootRotation>,
    /// docker's `CAConfig.ForceRotate`: a rotation starts whenever `/swarm/update` brings a
    /// value other than this one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ca_force_rotate: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The new root of a CA rotation in progress.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRotation {
    /// PEM of the new root CA certificate.
    pub ca_cert_pem: String,
    /// PEM of its key (the store is only on managers, as the current CA key).
    pub ca_key_pem: String,
    /// PEM of the new root's key certified by the old root: appended to the certificates the CA
    /// issues during the rotation, so peers still trusting only the old root accept them.
    pub cross_signed_pem: String,
    pub started_at: DateTime<Utc>,
}

impl std::fmt::Debug for RootRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key: debug output ends up in logs.
        f.debug_struct("RootRotation")
            .field("started_at", &self.started_at)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// The roots every node trusts now (PEM): the root, and during a rotation the new one after
    /// it.
    pub fn trust_pem(&self) -> String {
        match &self.root_rotation {
            None => self.ca_cert_pem.clone(),
            Some(r) => {
                let mut s = self.ca_cert_pem.trim_end().to_string();
                s.push('\n');
                s.push_str(r.ca_cert_pem.trim_end());
                s.push('\n');
                s
            }
        }
    }

    /// The root the CA issues node certificates from now (PEM).
    pub fn issuer_pem(&self) -> &str {
        match &self.root_rotation {
            None => &self.ca_cert_pem,
            Some(r) => &r.ca_cert_pem,
        }
    }
}

/// Subsystem of the data-path (IPsec) keys.
pub const IPSEC: &str = "ipsec";
/// Subsystem of the gossip keys.
pub const GOSSIP: &str = "gossip";
/// Default period of data-path key rotation (swarmkit's: 12 h).
pub const DEFAULT_DATA_KEY_ROTATION_MS: u64 = 12 * 3600 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokens {
    pub worker: String,
    pub manager: String,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionKey {
    pub subsystem: String,
    pub algorithm: String,
    #[serde(with = "hex_bytes")]
    pub key: Vec<u8>,
    pub lamport_time: u64,
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself: debug output ends up in logs.
        f.debug_struct("EncryptionKey")
            .field("subsystem", &self.subsystem)
            .field("algorithm", &self.algorithm)
            .field("key", &format_args!("<{} bytes redacted>", self.key.len()))
            .field("lamport_time", &self.lamport_time)
            .finish()
    }
}

/// Tunables an operator may change (`swarm update` in docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// Dispatcher heartbeat period in milliseconds (docker: 5 s).
    pub heartbeat_period_ms: u64,
    /// Period of data-path (IPsec) key rotation in milliseconds (default 12 h; 0: never).
    #[serde(default = "default_data_key_rotation")]
    pub data_key_rotation_ms: u64,
    /// Lifetime of the node certificates the CA signs, in milliseconds (docker: 90 days). Nodes
    /// renew theirs well before it ends.
    #[serde(default = "default_node_cert_expiry")]
    pub node_cert_expiry_ms: u64,
}

fn default_data_key_rotation() -> u64 {
    DEFAULT_DATA_KEY_ROTATION_MS
}

fn default_node_cert_expiry() -> u64 {
    DEFAULT_NODE_CERT_EXPIRY_MS
}

/// Default lifetime of node certificates (docker's: 90 days).
pub const DEFAULT_NODE_CERT_EXPIRY_MS: u64 = 90 * 24 * 3600 * 1000;
/// The shortest node certificate lifetime accepted (docker: 1 h; shorter here for tests).
pub const MIN_NODE_CERT_EXPIRY_MS: u64 = 10_000;

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            heartbeat_period_ms: 5_000,
            data_key_rotation_ms: DEFAULT_DATA_KEY_ROTATION_MS,
            node_cert_expiry_ms: DEFAULT_NODE_CERT_EXPIRY_MS,
        }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&hex)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 {
            return Err(serde::de::Error::custom("hex string of odd length"));
        }
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(serde::de::Error::custom))
            .collect()
    }
}
