//! The cluster object (one per swarm). Owned by the cluster control plane.

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokens {
    pub worker: String,
    pub manager: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionKey {
    pub subsystem: String,
    pub algorithm: String,
    #[serde(with = "hex_bytes")]
    pub key: Vec<u8>,
    pub lamport_time: u64,
}

/// Tunables an operator may change (`swarm update` in docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// Dispatcher heartbeat period in milliseconds (docker: 5 s).
    pub heartbeat_period_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            heartbeat_period_ms: 5_000,
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
