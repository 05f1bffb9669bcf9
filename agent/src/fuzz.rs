//! Entry points for fuzz targets (`fuzz/` at the repository root): each runs the daemon's own
//! decoding path on arbitrary bytes, without a running member, and must never panic. Stable
//! names:
//!
//! * [`join_request`]: what the CA service on the cluster port (`Ca.Join`, open to anyone) does
//!   with a request: the message decoded ([`crate::rpc::codec::decode`]), the token and the
//!   request checked against the cluster ([`crate::services::ca::admit`]), the CSR parsed and
//!   signed; and `Ca.Renew`'s CSR;
//! * [`cluster_rpc`]: every other message of the cluster port (Raft, control, dispatcher, and the
//!   answers a node decodes), then what is decoded from them afterwards: the Raft entries'
//!   batches applied ([`store::apply_batch`]), an installed snapshot's objects
//!   ([`store::decode_snapshot`]);
//! * [`api_body`]: an API request body ([`crate::api::fuzz`]).
//!
//! They run against one fixed cluster ([`cluster`]): a CA checked in under `src/fuzz/` (a test
//! CA, used nowhere else) and fixed join tokens ([`join_token`]), so a corpus can hold requests
//! that pass the token check.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use model::cluster::{ClusterSettings, JoinTokens};
use model::node::Role;
use model::{Cluster, Kind, Meta, Object};
use pki::{Ca, Identity, JoinToken};
use serde::de::DeserializeOwned;

use crate::rpc::codec::decode;
use crate::rpc::messages::*;

pub use crate::api::fuzz::{ROUTES as API_ROUTES, body as api_body, input as api_input};

const CA_CERT: &str = include_str!("fuzz/ca.pem");
const CA_KEY: &str = include_str!("fuzz/ca-key.pem");
const WORKER_SECRET: &str = "fuzzworker0000000000000000";
const MANAGER_SECRET: &str = "fuzzmanager000000000000000";

fn fixed() -> &'static Option<(Cluster, Ca)> {
    static FIXED: OnceLock<Option<(Cluster, Ca)>> = OnceLock::new();
    FIXED.get_or_init(|| {
        let ca = Ca::from_pem(CA_CERT, CA_KEY).ok()?;
        let token = |secret: &str| {
            JoinToken {
                ca_digest: ca.digest(),
                secret: secret[..25].to_string(),
            }
            .to_string()
        };
        let cluster = Cluster {
            meta: Meta::with_id("fuzzcluster".into()),
            ca_cert_pem: CA_CERT.into(),
            ca_key_pem: CA_KEY.into(),
            join_tokens: JoinTokens {
                worker: token(WORKER_SECRET),
                manager: token(MANAGER_SECRET),
            },
            default_addr_pools: vec!["10.0.0.0/8".into()],
            subnet_size: 24,
            data_path_port: 4789,
            network_keys: Vec::new(),
            settings: ClusterSettings {
                heartbeat_period_ms: 5000,
                data_key_rotation_ms: model::cluster::DEFAULT_DATA_KEY_ROTATION_MS,
                node_cert_expiry_ms: 0,
            },
            data_key_rotated_at: None,
            removed_nodes: Vec::new(),
            root_rotation: None,
            ca_force_rotate: 0,
        };
        Some((cluster, ca))
    })
}

/// The cluster the entry points check against. Panics only if the checked-in test CA is broken
/// (a build problem, caught by this module's tests).
pub fn cluster() -> &'static Cluster {
    &fixed()
        .as_ref()
        .expect("the fuzz CA under src/fuzz/ loads")
        .0
}

/// The fixed cluster's join token for `role`, for building a corpus.
pub fn join_token(role: Role) -> String {
    let t = &cluster().join_tokens;
    match role {
        Role::Manager => t.manager.clone(),
        Role::Worker => t.worker.clone(),
    }
}

/// `Ca.Join` on a received message: decoded, admitted (token, role, hostname, addresses), its
/// CSR signed. Returns whether a certificate came out.
pub fn join_request(bytes: &[u8]) -> bool {
    let Some((cluster, ca)) = fixed() else {
        return false;
    };
    let Ok(req) = decode::<JoinRequest>(bytes) else {
        return false;
    };
    let Ok(role) = crate::services::ca::admit(&req, cluster) else {
        return false;
    };
    sign(cluster, ca, &req.csr_pem, role)
}

/// `Ca.Renew` on a received message: decoded, its CSR signed. Returns whether a certificate
/// came out.
pub fn renew_request(bytes: &[u8]) -> bool {
    let Some((cluster, ca)) = fixed() else {
        return false;
    };
    match decode::<RenewRequest>(bytes) {
        Ok(req) => sign(cluster, ca, &req.csr_pem, Role::Worker),
        Err(_) => false,
    }
}

fn sign(cluster: &Cluster, ca: &Ca, csr_pem: &str, role: Role) -> bool {
    let id = Identity {
        node_id: "fuzznode".into(),
        role: match role {
            Role::Manager => pki::Role::Manager,
            Role::Worker => pki::Role::Worker,
        },
        cluster_id: cluster.meta.id.clone(),
    };
    ca.sign_csr(csr_pem, &id, crate::services::ca::validity(cluster))
        .is_ok()
}

/// The messages [`cluster_rpc`] decodes; the first byte of a fuzz input picks one (modulo
/// their number), the rest is the message.
pub const RPC_MESSAGES: &[&str] = &[
    "Raft.AppendEntries",
    "Raft.Vote",
    "Raft.InstallSnapshot",
    "Control.Forward",
    "Control.Propose",
    "Control.JoinRaft",
    "Control.Ping",
    "Dispatcher.Session up",
    "Ca.Join",
    "Ca.Renew",
    "answer: Ca.Join",
    "answer: Ca.Renew",
    "answer: Raft.AppendEntries",
    "answer: Raft.Vote",
    "answer: Raft.InstallSnapshot",
    "answer: Control.Forward",
    "answer: Control.Propose",
    "answer: Control.JoinRaft",
    "answer: Control.Ping",
    "Dispatcher.Session down",
];

/// One input for [`cluster_rpc`]: the message's index, then its bytes.
pub fn rpc_input(message: &str, bytes: &[u8]) -> Option<Vec<u8>> {
    let i = RPC_MESSAGES.iter().position(|m| *m == message)?;
    let mut v = vec![u8::try_from(i).ok()?];
    v.extend_from_slice(bytes);
    Some(v)
}

/// Decodes `bytes` as message `RPC_MESSAGES[which]` of the cluster port, then what the receiver
/// decodes from it. Returns whether it decoded.
pub fn cluster_rpc(which: u8, bytes: &[u8]) -> bool {
    fn ok<T: DeserializeOwned>(bytes: &[u8]) -> bool {
        decode::<T>(bytes).is_ok()
    }
    match usize::from(which) % RPC_MESSAGES.len() {
        0 => match decode::<AppendRequest>(bytes) {
            Ok(req) => {
                let mut objects = Objects::default();
                for entry in &req.entries {
                    if let openraft::EntryPayload::Normal(p) = &entry.payload {
                        for batch in &p.batches {
                            objects.apply(batch, entry.log_id.index);
                        }
                    }
                }
                true
            }
            Err(_) => false,
        },
        1 => ok::<VoteRequest>(bytes),
        2 => match decode::<SnapshotRequest>(bytes) {
            Ok(req) => {
                let _ = store::decode_snapshot(&req.data);
                true
            }
            Err(_) => false,
        },
        3 => ok::<ForwardRequest>(bytes),
        4 => match decode::<ProposeRequest>(bytes) {
            Ok(req) => {
                Objects::default().apply(&req.batch, 1);
                true
            }
            Err(_) => false,
        },
        5 => ok::<JoinRaftRequest>(bytes),
        6 => ok::<PingRequest>(bytes),
        7 => ok::<SessionUp>(bytes),
        8 => join_request(bytes),
        9 => renew_request(bytes),
        10 => ok::<JoinResponse>(bytes),
        11 => ok::<RenewResponse>(bytes),
        12 => ok::<AppendReply>(bytes),
        13 => ok::<VoteReply>(bytes),
        14 => ok::<SnapshotReply>(bytes),
        15 => ok::<ForwardResponse>(bytes),
        16 => ok::<ProposeReply>(bytes),
        17 => ok::<JoinRaftReply>(bytes),
        18 => ok::<PingReply>(bytes),
        _ => ok::<SessionDown>(bytes),
    }
}

/// The objects a replica holds while applying entries, as the state machine keeps them: later
/// batches see what earlier ones wrote.
#[derive(Default)]
struct Objects(BTreeMap<(Kind, String), Object>);

impl store::View for Objects {
    fn get(&mut self, kind: Kind, id: &str) -> Option<Object> {
        self.0.get(&(kind, id.to_string())).cloned()
    }
}

impl Objects {
    fn apply(&mut self, batch: &store::Batch, index: u64) {
        if let Ok(staged) = store::apply_batch(self, batch, index) {
            for (kind, id, _, new) in staged {
                match new {
                    Some(obj) => self.0.insert((kind, id), obj),
                    None => self.0.remove(&(kind, id)),
                };
            }
        }
    }
}

#[cfg(test)]
#[path = "fuzz/tests.rs"]
mod tests;
