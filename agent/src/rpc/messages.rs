//! The messages of the cluster port's gRPC services (JSON on the wire, see `codec`). Adding a
//! variant to [`SessionUp`] / [`SessionDown`] is how the dispatcher session grows (assignments
//! down, task status up) without a new stream.

use model::Node;
use model::node::{NodeDescription, Role};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteResponse,
};
use serde::{Deserialize, Serialize};
use store::{Batch, Conflict, TypeConfig};

// ---- Ca: join (no client certificate needed) and certificate renewal -------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    /// CSR (PEM) of a key the joining node keeps.
    pub csr_pem: String,
    /// Refuse unless the token is the manager token (`swarm join --manager`).
    pub want_manager: bool,
    pub hostname: String,
    pub advertise_addr: String,
    pub data_path_addr: String,
    pub description: NodeDescription,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    pub node_id: String,
    pub cluster_id: String,
    pub role: Role,
    pub cert_pem: String,
    pub ca_pem: String,
    /// Cluster-port addresses of the managers (host:port).
    pub managers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    pub cert_pem: String,
    pub role: Role,
}

// ---- Raft (manager certificates only) ----------------------------------------------------------

pub type AppendRequest = AppendEntriesRequest<TypeConfig>;
pub type AppendReply = Result<AppendEntriesResponse<u64>, RaftError<u64>>;
pub type VoteRequest = openraft::raft::VoteRequest<u64>;
pub type VoteReply = Result<VoteResponse<u64>, RaftError<u64>>;
pub type SnapshotRequest = InstallSnapshotRequest<TypeConfig>;
pub type SnapshotReply = Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;

// ---- Control (manager certificates only) -------------------------------------------------------

/// An API request a follower forwards to the leader, as it came over the unix socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub body: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Why a leader-side operation failed, across the wire.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    #[error("the manager asked is not the leader")]
    NotLeader { leader: Option<String> },
    #[error(transparent)]
    Conflict(Conflict),
    #[error("{0}")]
    Other(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProposeRequest {
    pub batch: Batch,
}

pub type ProposeReply = Result<Vec<Option<model::Object>>, WireError>;

/// A manager that has its certificate and a running Raft node asks to become a voter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRaftRequest {
    pub raft_id: u64,
    /// Its cluster-port address (host:port).
    pub addr: String,
}

pub type JoinRaftReply = Result<(), WireError>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PingRequest {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PingReply {
    pub node_id: String,
    pub raft_id: u64,
    pub leader: Option<u64>,
}

// ---- Dispatcher session (any node certificate; the node id is the certificate's) --------------

/// Node -> leader. (Short-lived, moved straight to the wire: the variants' sizes do not matter.)
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum SessionUp {
    /// First message: what the node is.
    Hello {
        description: NodeDescription,
        advertise_addr: String,
        data_path_addr: String,
        /// The node's TLS state (see `Tls`), recorded with the rest.
        #[serde(default)]
        tls: Option<Box<model::node::TlsInfo>>,
        /// Why the node is not ready (a broken runtime component); None: it is.
        #[serde(default)]
        problem: Option<String>,
    },
    /// The node is alive; `problem` says why it is not ready, if it is not.
    Heartbeat {
        #[serde(default)]
        problem: Option<String>,
    },
    /// What the node's executor observed of its tasks (latest per task). Sent again until the
    /// node's assignments show it recorded.
    TaskStatus {
        updates: Vec<(String, model::task::TaskStatus)>,
    },
    /// The node's TLS state (the roots it trusts, who issued its certificate). Sent again until
    /// the node's object shows it recorded: a CA rotation completes on these.
    Tls { info: model::node::TlsInfo },
}

/// The cluster's CA as every node needs it: what to trust and which root issues certificates
/// now (during a rotation the new one, which nodes renew from at once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaInfo {
    /// The roots to trust (PEM; during a rotation the old root, then the new one).
    pub trust_pem: String,
    /// The root node certificates are issued from now (PEM).
    pub issuer_pem: String,
}

/// The cluster settings every node needs (workers have no store): no secrets but the network
/// keys, which the data plane needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: String,
    pub data_path_port: u16,
    pub default_addr_pools: Vec<String>,
    pub subnet_size: u8,
    pub heartbeat_period_ms: u64,
    /// Gossip and IPsec keys, Lamport-tagged.
    pub network_keys: Vec<model::cluster::EncryptionKey>,
    /// The CA's roots (None from a leader of an older version).
    #[serde(default)]
    pub ca: Option<CaInfo>,
}

impl From<&model::Cluster> for ClusterInfo {
    fn from(c: &model::Cluster) -> ClusterInfo {
        ClusterInfo {
            id: c.meta.id.clone(),
            data_path_port: c.data_path_port,
            default_addr_pools: c.default_addr_pools.clone(),
            subnet_size: c.subnet_size,
            heartbeat_period_ms: c.settings.heartbeat_period_ms,
            // The data-path keys go only to nodes with tasks on encrypted networks (in their
            // assignments), never to every node.
            network_keys: c
                .network_keys
                .iter()
                .filter(|k| k.subsystem != model::cluster::IPSEC)
                .cloned()
                .collect(),
            ca: Some(CaInfo {
                trust_pem: c.trust_pem(),
                issuer_pem: c.issuer_pem().to_string(),
            }),
        }
    }
}

/// Leader -> node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionDown {
    /// Answer to Hello: the heartbeat period to keep, where the managers are, the cluster's
    /// settings.
    Welcome {
        heartbeat_ms: u64,
        managers: Vec<String>,
        cluster: Option<ClusterInfo>,
    },
    /// Answer to each heartbeat: the managers, and the node's object as stored (role and
    /// availability changes reach the node this way) and the cluster's settings (the heartbeat
    /// period among them), each only when it changed since the session last sent it.
    Heartbeat {
        node: Option<Box<Node>>,
        managers: Vec<String>,
        cluster: Option<ClusterInfo>,
    },
    /// Everything the node's executor needs, sent at the start of the session (revision 1).
    Assignments(Box<model::Assignments>),
    /// What changed in it since (the next revision).
    AssignmentsDelta(Box<model::assignment::AssignmentsDelta>),
}
