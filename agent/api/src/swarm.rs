//! `/swarm`, `/swarm/init|join|leave|update|unlockkey|unlock`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Invalid, Meta};

/// `GET /swarm`: the cluster and its join tokens (managers only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Swarm {
    #[serde(flatten)]
    pub cluster: ClusterInfo,
    #[serde(rename = "JoinTokens")]
    pub join_tokens: JoinTokens,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(flatten)]
    pub meta: Meta,
    #[serde(rename = "Spec", default)]
    pub spec: SwarmSpec,
    #[serde(rename = "TLSInfo", default)]
    pub tls_info: TlsInfo,
    #[serde(rename = "RootRotationInProgress", default)]
    pub root_rotation_in_progress: bool,
    /// netagent's own: during a CA rotation, the new root (`TrustRoot`) and its subject and key,
    /// which node certificates are issued from now. Docker clients drop it.
    #[serde(
        rename = "RootRotation",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub root_rotation: Option<TlsInfo>,
    #[serde(
        rename = "DefaultAddrPool",
        default,
        deserialize_with = "crate::null_default"
    )]
    pub default_addr_pool: Vec<String>,
    #[serde(rename = "SubnetSize", default)]
    pub subnet_size: u32,
    #[serde(rename = "DataPathPort", default)]
    pub data_path_port: u32,
}

/// docker's TLSInfo: the root of trust (the CA certificate, PEM) and the subject and public key
/// (DER, base64) of the root that issues certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    #[serde(
        rename = "TrustRoot",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub trust_root: String,
    #[serde(
        rename = "CertIssuerSubject",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cert_issuer_subject: String,
    #[serde(
        rename = "CertIssuerPublicKey",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cert_issuer_public_key: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokens {
    #[serde(rename = "Worker", default)]
    pub worker: String,
    #[serde(rename = "Manager", default)]
    pub manager: String,
}

/// docker's swarm `Spec`. What netagent applies: `Dispatcher.HeartbeatPeriod`. The CA settings
/// are carried for the certificate-rotation work; the rest is shown as docker would and refused
/// if changed (see the daemon's `/swarm/update`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmSpec {
    #[serde(rename = "Name", default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "Labels", default, with = "crate::null_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "Orchestration", default)]
    pub orchestration: Orchestration,
    #[serde(rename = "Raft", default)]
    pub raft: RaftConfig,
    #[serde(rename = "Dispatcher", default)]
    pub dispatcher: Dispatcher,
    #[serde(rename = "CAConfig", default)]
    pub ca_config: CaConfig,
    #[serde(rename = "TaskDefaults", default)]
    pub task_defaults: serde_json::Map<String, serde_json::Value>,
    #[serde(rename = "EncryptionConfig", default)]
    pub encryption_config: EncryptionConfig,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orchestration {
    #[serde(
        rename = "TaskHistoryRetentionLimit",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub task_history_retention_limit: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftConfig {
    #[serde(rename = "SnapshotInterval", default, skip_serializing_if = "is_zero")]
    pub snapshot_interval: u64,
    #[serde(
        rename = "KeepOldSnapshots",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub keep_old_snapshots: Option<u64>,
    #[serde(
        rename = "LogEntriesForSlowFollowers",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub log_entries_for_slow_followers: u64,
    #[serde(rename = "ElectionTick", default)]
    pub election_tick: u64,
    #[serde(rename = "HeartbeatTick", default)]
    pub heartbeat_tick: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatcher {
    /// Nanoseconds.
    #[serde(rename = "HeartbeatPeriod", default, skip_serializing_if = "is_zero")]
    pub heartbeat_period: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaConfig {
    /// Nanoseconds.
    #[serde(rename = "NodeCertExpiry", default, skip_serializing_if = "is_zero")]
    pub node_cert_expiry: u64,
    #[serde(
        rename = "ExternalCAs",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::null_default"
    )]
    pub external_cas: Vec<serde_json::Value>,
    #[serde(
        rename = "SigningCACert",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub signing_ca_cert: String,
    #[serde(
        rename = "SigningCAKey",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub signing_ca_key: String,
    #[serde(rename = "ForceRotate", default, skip_serializing_if = "is_zero")]
    pub force_rotate: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    #[serde(rename = "AutoLockManagers", default)]
    pub auto_lock_managers: bool,
    /// netagent's own: the period of data-path (IPsec) key rotation in nanoseconds (`netctl
    /// swarm init/update --data-key-rotation`); 0 leaves it as it is. Docker clients drop it.
    #[serde(rename = "DataKeyRotation", default, skip_serializing_if = "is_zero")]
    pub data_key_rotation: u64,
}

/// `POST /swarm/init`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRequest {
    /// docker's listen address; netagent listens on its `--cluster-port` on every address.
    #[serde(rename = "ListenAddr", default)]
    pub listen_addr: String,
    #[serde(rename = "AdvertiseAddr", default)]
    pub advertise_addr: String,
    #[serde(rename = "DataPathAddr", default)]
    pub data_path_addr: String,
    #[serde(rename = "DataPathPort", default)]
    pub data_path_port: u32,
    #[serde(rename = "ForceNewCluster", default)]
    pub force_new_cluster: bool,
    #[serde(rename = "Spec", default)]
    pub spec: SwarmSpec,
    #[serde(rename = "AutoLockManagers", default)]
    pub auto_lock_managers: bool,
    #[serde(
        rename = "Availability",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub availability: String,
    #[serde(
        rename = "DefaultAddrPool",
        default,
        deserialize_with = "crate::null_default"
    )]
    pub default_addr_pool: Vec<String>,
    #[serde(rename = "SubnetSize", default)]
    pub subnet_size: u32,
    /// netagent's own: the ingress network's subnet (default: the pools' first).
    #[serde(
        rename = "IngressSubnet",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub ingress_subnet: String,
    /// netagent's own: the ingress network's MTU (0: derived from the underlay).
    #[serde(rename = "IngressMTU", default, skip_serializing_if = "is_zero_u32")]
    pub ingress_mtu: u32,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// `POST /swarm/join`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "ListenAddr", default)]
    pub listen_addr: String,
    #[serde(rename = "AdvertiseAddr", default)]
    pub advertise_addr: String,
    #[serde(rename = "DataPathAddr", default)]
    pub data_path_addr: String,
    /// Managers' cluster-port addresses, `host[:port]`; the first reachable one is used.
    #[serde(
        rename = "RemoteAddrs",
        default,
        deserialize_with = "crate::null_default"
    )]
    pub remote_addrs: Vec<String>,
    #[serde(rename = "JoinToken", default)]
    pub join_token: String,
    #[serde(
        rename = "Availability",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub availability: String,
    /// netagent's own (`netctl swarm join --manager`): refuse unless the token makes this node
    /// a manager. Docker clients never send it.
    #[serde(
        rename = "RequireManager",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub require_manager: bool,
}

/// `GET /swarm/unlockkey`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockKey {
    #[serde(rename = "UnlockKey", default)]
    pub unlock_key: String,
}

/// Nanoseconds in a millisecond.
const MS: u64 = 1_000_000;

/// The cluster as docker shows it, from the stored object. `trust_root` is the CA certificate;
/// the issuer's subject and key are the daemon's to fill (this crate parses no certificate).
pub fn cluster_info(c: &model::Cluster, election_tick: u64, heartbeat_tick: u64) -> ClusterInfo {
    ClusterInfo {
        id: c.meta.id.clone(),
        meta: Meta::from(&c.meta),
        spec: SwarmSpec {
            name: "default".into(),
            orchestration: Orchestration {
                task_history_retention_limit: Some(5),
            },
            raft: RaftConfig {
                snapshot_interval: 10_000,
                keep_old_snapshots: Some(0),
                log_entries_for_slow_followers: 500,
                election_tick,
                heartbeat_tick,
            },
            dispatcher: Dispatcher {
                heartbeat_period: c.settings.heartbeat_period_ms * MS,
            },
            ca_config: CaConfig {
                node_cert_expiry: c.settings.node_cert_expiry_ms * MS,
                force_rotate: c.ca_force_rotate,
                ..Default::default()
            },
            encryption_config: EncryptionConfig {
                auto_lock_managers: false,
                data_key_rotation: c.settings.data_key_rotation_ms * MS,
            },
            ..Default::default()
        },
        tls_info: TlsInfo {
            trust_root: c.ca_cert_pem.clone(),
            ..Default::default()
        },
        root_rotation_in_progress: c.root_rotation.is_some(),
        root_rotation: c.root_rotation.as_ref().map(|r| TlsInfo {
            trust_root: r.ca_cert_pem.clone(),
            ..Default::default()
        }),
        default_addr_pool: c.default_addr_pools.clone(),
        subnet_size: u32::from(c.subnet_size),
        data_path_port: u32::from(c.data_path_port),
    }
}

/// The change a `/swarm/update` spec asks for, given the spec `cluster_info` shows now. Fields
/// netagent does not apply must come back unchanged: a change is refused, never dropped.
pub fn settings_update(
    current: &SwarmSpec,
    wanted: &SwarmSpec,
) -> Result<model::cluster::ClusterSettings, Invalid> {
    let refuse = |what: &str| {
        Err(Invalid::new(format!(
            "changing {what} is not supported by netagent: leave it as `GET /swarm` shows it"
        )))
    };
    if wanted.dispatcher.heartbeat_period != 0 && wanted.dispatcher.heartbeat_period < 10 * MS {
        return Err(Invalid::new(format!(
            "invalid Dispatcher.HeartbeatPeriod {}ns: the heartbeat period must be at least 10ms",
            wanted.dispatcher.heartbeat_period
        )));
    }
    if wanted.name != current.name && !wanted.name.is_empty() {
        return refuse("the swarm's name");
    }
    if wanted.labels != current.labels {
        return refuse("the swarm's labels");
    }
    if wanted.orchestration != current.orchestration
        && wanted.orchestration != Orchestration::default()
    {
        return refuse("Orchestration.TaskHistoryRetentionLimit");
    }
    if wanted.raft != current.raft && wanted.raft != RaftConfig::default() {
        return refuse("the Raft settings (they are netagent's flags)");
    }
    // ForceRotate starts a CA rotation (the daemon's `/swarm/update`), not a setting.
    let ca_rest = |c: &CaConfig| CaConfig {
        node_cert_expiry: 0,
        force_rotate: 0,
        ..c.clone()
    };
    if ca_rest(&wanted.ca_config) != ca_rest(&current.ca_config)
        && ca_rest(&wanted.ca_config) != CaConfig::default()
    {
        return refuse("CAConfig's external CAs and signing CA (netagent runs its own CA)");
    }
    let expiry = match wanted.ca_config.node_cert_expiry {
        0 => current.ca_config.node_cert_expiry,
        e if e < model::cluster::MIN_NODE_CERT_EXPIRY_MS * MS => {
            return Err(Invalid::new(format!(
                "invalid CAConfig.NodeCertExpiry {e}ns: node certificates must live at least {}s (default 90 days)",
                model::cluster::MIN_NODE_CERT_EXPIRY_MS / 1000
            )));
        }
        e => e,
    };
    if wanted.encryption_config.auto_lock_managers {
        return refuse("EncryptionConfig.AutoLockManagers (autolock is not supported)");
    }
    if !wanted.task_defaults.values().all(crate::is_empty_value) {
        return refuse("TaskDefaults (tasks are processes and have no log driver)");
    }
    let period = if wanted.dispatcher.heartbeat_period == 0 {
        current.dispatcher.heartbeat_period
    } else {
        wanted.dispatcher.heartbeat_period
    };
    let rotation = match wanted.encryption_config.data_key_rotation {
        0 => current.encryption_config.data_key_rotation,
        r if r < 1_000 * MS => {
            return Err(Invalid::new(format!(
                "invalid data key rotation period {r}ns: use at least 1s (default 12h)"
            )));
        }
        r => r,
    };
    Ok(model::cluster::ClusterSettings {
        heartbeat_period_ms: period / MS,
        data_key_rotation_ms: rotation / MS,
        node_cert_expiry_ms: expiry / MS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> model::Cluster {
        model::Cluster {
            meta: model::Meta::new(),
            ca_cert_pem: "PEM".into(),
            ca_key_pem: "KEY".into(),
            join_tokens: model::cluster::JoinTokens {
                worker: "w".into(),
                manager: "m".into(),
            },
            default_addr_pools: vec!["10.0.0.0/8".into()],
            subnet_size: 24,
            data_path_port: 4789,
            network_keys: Vec::new(),
            settings: Default::default(),
            data_key_rotated_at: None,
            removed_nodes: Vec::new(),
            root_rotation: None,
            ca_force_rotate: 0,
        }
    }

    #[test]
    fn update_applies_the_heartbeat_and_refuses_other_changes() {
        let info = cluster_info(&cluster(), 10, 1);
        let text = serde_json::to_string(&info).unwrap();
        assert!(!text.contains("KEY"), "no CA key on the wire");
        assert!(text.contains(r#""HeartbeatPeriod":5000000000"#), "{text}");
        let mut want = info.spec.clone();
        want.dispatcher.heartbeat_period = 2_000_000_000;
        assert_eq!(
            settings_update(&info.spec, &want)
                .unwrap()
                .heartbeat_period_ms,
            2000
        );
        let mut bad = info.spec.clone();
        bad.ca_config.node_cert_expiry = 1;
        assert!(settings_update(&info.spec, &bad).is_err());
        let mut want = info.spec.clone();
        want.ca_config.node_cert_expiry = 3600 * 1000 * MS;
        assert_eq!(
            settings_update(&info.spec, &want)
                .unwrap()
                .node_cert_expiry_ms,
            3_600_000
        );
        let mut bad = info.spec.clone();
        bad.ca_config.signing_ca_cert = "PEM".into();
        assert!(settings_update(&info.spec, &bad).is_err());
        let mut bad = info.spec.clone();
        bad.encryption_config.auto_lock_managers = true;
        assert!(settings_update(&info.spec, &bad).is_err());
        // A client that sends an empty spec changes nothing.
        assert_eq!(
            settings_update(&info.spec, &SwarmSpec::default())
                .unwrap()
                .heartbeat_period_ms,
            5000
        );
    }
}
