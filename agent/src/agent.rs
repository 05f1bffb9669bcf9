//! The daemon's brain: whether this node is in a swarm and as what, and the transitions between
//! those states (`swarm init`, `swarm join`, `swarm leave`, `--force-new-cluster`, promotion
//! and demotion). Each transition holds one lock so they never interleave.
//!
//! Per-node components are started in `Agent::start_member`: that is the place to add gossip
//! and the executor (they get the `Arc<Member>`: identity, cluster settings via the store or the
//! dispatcher session, TLS to the cluster port) and to stop them with the member's cancel token.

use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use model::cluster::{ClusterSettings, EncryptionKey, JoinTokens};
use model::node::{Availability, ManagerStatus, NodeSpec, NodeState as Health, NodeStatus, Role};
use model::{Cluster, Meta, Node, Object};
use pki::{Ca, Identity, JoinToken, NodeKeys};
use rand::Rng;
use store::{Batch, Change, Store};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::error::{Failure, Result};
use crate::member::{Manager, Member};
use crate::rpc::generated::ca_client::CaClient;
use crate::rpc::generated::control_client::ControlClient;
use crate::rpc::messages::{JoinRaftRequest, JoinRequest, WireError};
use crate::state::{NodeState, Saved};

mod roles;

/// `swarm init` (also `--force-new-cluster`), as the API hands it over.
#[derive(Debug, Clone, Default)]
pub struct Init {
    pub advertise_addr: Option<String>,
    pub data_path_addr: Option<String>,
    pub data_path_port: Option<u16>,
    pub default_addr_pool: Vec<String>,
    pub default_addr_pool_mask_length: Option<u8>,
    pub force_new_cluster: bool,
    /// The dispatcher's heartbeat period; the agent's `--heartbeat-ms` when not given.
    pub heartbeat_ms: Option<u64>,
    /// Data-path key rotation period (`--data-key-rotation`); None: 12 h.
    pub data_key_rotation_ms: Option<u64>,
    /// Lifetime of node certificates (`--cert-expiry`); None: 90 days.
    pub cert_expiry_ms: Option<u64>,
    /// The ingress network's subnet and MTU (`--ingress-subnet`, `--ingress-mtu`).
    pub ingress: crate::ingress::IngressOptions,
}

#[derive(Debug, Clone)]
pub struct Initialised {
    pub node_id: String,
    pub worker_token: String,
    /// Cluster-port address to join through.
    pub addr: String,
}

/// `swarm join`, as the API hands it over.
#[derive(Debug, Clone, Default)]
pub struct Join {
    pub token: String,
    /// A manager's cluster-port address, `host[:port]`.
    pub remote_addr: String,
    pub advertise_addr: Option<String>,
    pub data_path_addr: Option<String>,
    /// Refuse unless the token makes this node a manager.
    pub manager: bool,
}

#[derive(Debug, Clone)]
pub struct Joined {
    pub node_id: String,
    pub role: Role,
}

pub struct Agent {
    pub cfg: Config,
    member: RwLock<Option<Arc<Member>>>,
    pub(crate) ops: tokio::sync::Mutex<()>,
    /// The API router, for requests forwarded from followers (set once the API is built).
    pub router: OnceLock<axum::Router>,
}

fn random_raft_id() -> u64 {
    rand::rng().random_range(1..u64::MAX / 2)
}

fn with_port(addr: &str, port: u16) -> String {
    if addr.parse::<std::net::SocketAddr>().is_ok() || (addr.contains(':') && !addr.contains("::"))
    {
        addr.to_string()
    } else {
        format!("{addr}:{port}")
    }
}

fn valid_ip(what: &str, a: &str) -> Result<()> {
    a.parse::<std::net::IpAddr>().map(|_| ()).map_err(|_| {
        Failure::bad_request(format!(
            "invalid {what} {a:?}: give an IP address of this node"
        ))
    })
}

fn network_keys() -> Vec<EncryptionKey> {
    let mut rng = rand::rng();
    let mut keys = Vec::new();
    for (subsystem, algorithm, len) in [
        ("gossip", "aes-256-gcm", 32),
        (
            model::cluster::IPSEC,
            orchestrator::keys::ALGORITHM,
            orchestrator::keys::KEY_LEN,
        ),
    ] {
        for lamport_time in 1..=3u64 {
            let key: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            keys.push(EncryptionKey {
                subsystem: subsystem.into(),
                algorithm: algorithm.into(),
                key,
                lamport_time,
            });
        }
    }
    keys
}

fn validate_pools(pools: &[String], mask: u8) -> Result<()> {
    if !(1..=30).contains(&mask) {
        return Err(Failure::bad_request(format!(
            "invalid --default-addr-pool-mask-length {mask}: use 1-30"
        )));
    }
    for p in pools {
        let (ip, len) = p.split_once('/').ok_or_else(|| {
            Failure::bad_request(format!(
                "invalid --default-addr-pool {p:?}: give a CIDR such as 10.0.0.0/8"
            ))
        })?;
        let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| {
            Failure::bad_request(format!(
                "invalid --default-addr-pool {p:?}: {ip:?} is not an IPv4 address"
            ))
        })?;
        let len: u8 = len.parse().ok().filter(|l| *l <= 32).ok_or_else(|| {
            Failure::bad_request(format!(
                "invalid --default-addr-pool {p:?}: bad prefix length"
            ))
        })?;
        if len > mask {
            return Err(Failure::bad_request(format!(
                "invalid --default-addr-pool {p:?}: its prefix /{len} is longer than the subnet mask length {mask}"
            )));
        }
        let host_bits = u32::from(ip) & (u32::MAX.checked_shr(len as u32).unwrap_or(0));
        if len < 32 && host_bits != 0 {
            return Err(Failure::bad_request(format!(
                "invalid --default-addr-pool {p:?}: host bits are set; did you mean {}/{len}?",
                std::net::Ipv4Addr::from(u32::from(ip) & !(u32::MAX >> len))
            )));
        }
    }
    Ok(())
}

impl Agent {
    pub fn new(cfg: Config) -> Arc<Agent> {
        Arc::new(Agent {
            cfg,
            member: RwLock::new(None),
            ops: tokio::sync::Mutex::new(()),
            router: OnceLock::new(),
        })
    }

    /// The current membership, if the node is in a swarm.
    pub fn member(&self) -> Option<Arc<Member>> {
        self.member
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_member(&self, m: Option<Arc<Member>>) {
        *self.member.write().unwrap_or_else(|e| e.into_inner()) = m;
    }

    fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.cfg.heartbeat_ms)
    }

    /// Rejoins the swarm the node was in before the daemon stopped.
    pub async fn resume(self: &Arc<Self>) -> anyhow::Result<()> {
        let _g = self.ops.lock().await;
        if let Some(saved) = Saved::load(&self.cfg)? {
            tracing::info!(node = %saved.node.node_id, role = ?saved.node.role, "resuming swarm membership");
            self.start_member(saved, false)
                .await
                .map_err(|f| anyhow::anyhow!(f.message))
                .context("cannot resume the swarm membership")?;
        }
        Ok(())
    }

    /// Starts every component of a membership: on a manager the store, the cluster port, the
    /// peer probes and the leader-only loops; on every node the dispatcher session, gossip and
    /// the executor (`node_runtime`).
    fn start_member(
        self: &Arc<Self>,
        saved: Saved,
        bootstrap: bool,
    ) -> futures::future::BoxFuture<'static, Result<Arc<Member>>> {
        // Boxed: the session it starts may call back into a role change that starts a member.
        let agent = self.clone();
        Box::pin(async move { agent.start_member_now(saved, bootstrap).await })
    }

    async fn start_member_now(
        self: &Arc<Self>,
        saved: Saved,
        bootstrap: bool,
    ) -> Result<Arc<Member>> {
        let cfg = &self.cfg;
        let unusable =
            |e: pki::Error| Failure::internal(format!("the node's certificates are unusable: {e}"));
        let cert = pki::tls::NodeCert::new(&saved.ca_pem, &saved.keys).map_err(unusable)?;
        let trust = pki::tls::Trust::new(&saved.ca_pem).map_err(unusable)?;
        let client_tls = pki::tls::client_config_with(&trust, cert.clone()).map_err(unusable)?;
        let addr = cfg.cluster_addr(&saved.node.advertise_addr);
        // Managers probe each other at least every second (quorum decisions must not trail a
        // dead manager by three dispatcher periods of 5 s).
        let probe = self.heartbeat().min(Duration::from_secs(1));
        let grace = crate::sessions::grace(probe);
        let rpc_timeout = Duration::from_secs(10);
        let manager = if saved.node.role == Role::Manager {
            std::fs::create_dir_all(cfg.raft_dir())
                .with_context(|| format!("cannot create {}", cfg.raft_dir().display()))?;
            let net = crate::raft_net::RaftNet::new(client_tls.clone());
            let store = Store::open(
                &cfg.raft_dir(),
                saved.node.raft_id,
                &cfg.store_config(),
                net,
            )
            .await
            .map_err(|e| Failure::internal(e.to_string()))?;
            if bootstrap {
                store
                    .bootstrap(&addr)
                    .await
                    .map_err(|e| Failure::internal(e.to_string()))?;
            }
            Some(Manager {
                store,
                peers: Default::default(),
                sessions: Default::default(),
                grace,
                leader: Default::default(),
                assigner: Default::default(),
            })
        } else {
            None
        };
        let member = Arc::new(Member::new(
            saved.node.clone(),
            trust.clone(),
            cert.clone(),
            client_tls,
            manager,
            addr.clone(),
            self.heartbeat(),
            rpc_timeout,
        ));
        if member.manager.is_some() {
            let listener = match TcpListener::bind(("0.0.0.0", cfg.cluster_port)).await {
                Ok(l) => l,
                Err(e) => {
                    member.stop().await;
                    return Err(Failure::unavailable(format!(
                        "cannot listen on the cluster port {}: {e}; is another agent running?",
                        cfg.cluster_port
                    )));
                }
            };
            let server_tls =
                pki::tls::server_config_with(&trust, cert.clone()).map_err(unusable)?;
            member.spawn(crate::services::serve(
                self.clone(),
                member.clone(),
                listener,
                server_tls,
            ));
            member.spawn(crate::peers::run(member.clone(), probe));
            member.spawn(crate::leader::run(
                member.clone(),
                orchestrator::Config {
                    restart_delay: chrono::Duration::milliseconds(cfg.restart_delay_ms as i64),
                    ..Default::default()
                },
            ));
            let store = member.store()?.clone();
            if !bootstrap && !store.is_initialized().await {
                // A new manager (joined or promoted): ask the leader for a seat.
                member.spawn(ensure_voter(member.clone()));
            }
        }
        // The session, gossip and the executor restart when they fail or panic, and the node
        // reports itself not ready meanwhile (`supervisor`).
        let (agent, m) = (self.clone(), member.clone());
        member.spawn(crate::supervisor::supervise(
            member.clone(),
            crate::supervisor::SESSION,
            move || crate::session::run(agent.clone(), m.clone()),
        ));
        member.spawn(crate::certs::renew_loop(self.clone(), member.clone()));
        let (agent, m) = (self.clone(), member.clone());
        member.spawn(crate::supervisor::supervise(
            member.clone(),
            crate::supervisor::RUNTIME,
            move || crate::node_runtime::run(agent.clone(), m.clone()),
        ));
        self.set_member(Some(member.clone()));
        Ok(member)
    }

    async fn stop_member(&self) -> Option<Arc<Member>> {
        let m = self.member();
        if let Some(m) = &m {
            self.set_member(None);
            m.stop().await;
        }
        m
    }

    /// The advertise and data-path addresses of `swarm init` / `swarm join`: as asked, else as
    /// configured, else the address of the default route (data path: the advertise address).
    fn addresses(
        &self,
        advertise: Option<String>,
        data_path: Option<String>,
    ) -> Result<(String, String)> {
        let advertise = match advertise.or(self.cfg.advertise_addr.clone()) {
            Some(a) => a,
            None => crate::sysinfo::default_addr().map_err(Failure::bad_request)?,
        };
        valid_ip("--advertise-addr", &advertise)?;
        let data_path = data_path
            .or(self.cfg.data_path_addr.clone())
            .unwrap_or_else(|| advertise.clone());
        valid_ip("--data-path-addr", &data_path)?;
        Ok((advertise, data_path))
    }

    /// `swarm init` (and `--force-new-cluster`).
    pub async fn init(self: &Arc<Self>, req: Init) -> Result<Initialised> {
        let _g = self.ops.lock().await;
        if req.force_new_cluster {
            return self.force_new_cluster().await;
        }
        if self.member().is_some() {
            return Err(Failure::conflict(
                "This node is already part of a swarm. Use \"netctl swarm leave\" to leave this swarm and join another one.",
            ));
        }
        let (advertise, data_path) =
            self.addresses(req.advertise_addr.clone(), req.data_path_addr.clone())?;
        let port = req.data_path_port.unwrap_or(4789);
        if !(1024..=49151).contains(&port) {
            return Err(Failure::bad_request(format!(
                "invalid --data-path-port {port}: use a UDP port in 1024-49151 (default 4789)"
            )));
        }
        let pools = if req.default_addr_pool.is_empty() {
            vec!["10.0.0.0/8".to_string()]
        } else {
            req.default_addr_pool.clone()
        };
        let mask = req.default_addr_pool_mask_length.unwrap_or(24);
        validate_pools(&pools, mask)?;
        let ingress = crate::ingress::initial(&pools, mask, &req.ingress)?;

        let cluster_id = model::new_id();
        let node_id = model::new_id();
        let raft_id = random_raft_id();
        let ca = Ca::generate(&cluster_id).map_err(|e| Failure::internal(e.to_string()))?;
        let cert_expiry_ms = req
            .cert_expiry_ms
            .unwrap_or(model::cluster::DEFAULT_NODE_CERT_EXPIRY_MS);
        let keys = ca
            .issue(
                &Identity {
                    node_id: node_id.clone(),
                    role: pki::Role::Manager,
                    cluster_id: cluster_id.clone(),
                },
                Duration::from_millis(cert_expiry_ms),
            )
            .map_err(|e| Failure::internal(e.to_string()))?;
        let cert_expires_at = crate::certs::expires_at(&keys.cert_pem);
        let addr = self.cfg.cluster_addr(&advertise);
        let tokens = JoinTokens {
            worker: JoinToken::generate(&ca.digest()).to_string(),
            manager: JoinToken::generate(&ca.digest()).to_string(),
        };
        let saved = Saved {
            node: NodeState {
                node_id: node_id.clone(),
                cluster_id: cluster_id.clone(),
                role: Role::Manager,
                raft_id,
                advertise_addr: advertise.clone(),
                data_path_addr: data_path.clone(),
                managers: vec![addr.clone()],
            },
            ca_pem: ca.cert_pem().to_string(),
            keys,
        };
        Saved::wipe(&self.cfg)?;
        saved.save(&self.cfg)?;
        let result = async {
            let member = self.start_member(saved, true).await?;
            let store = member.store()?.clone();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !store.is_leader() {
                if Instant::now() > deadline {
                    return Err(Failure::internal(
                        "the new single-manager cluster elected no leader within 20s",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let cluster = Cluster {
                meta: Meta::with_id(cluster_id.clone()),
                ca_cert_pem: ca.cert_pem().to_string(),
                ca_key_pem: ca.key_pem().to_string(),
                join_tokens: tokens.clone(),
                default_addr_pools: pools,
                subnet_size: mask,
                data_path_port: port,
                network_keys: network_keys(),
                settings: ClusterSettings {
                    heartbeat_period_ms: req.heartbeat_ms.unwrap_or(self.cfg.heartbeat_ms),
                    data_key_rotation_ms: req
                        .data_key_rotation_ms
                        .unwrap_or(model::cluster::DEFAULT_DATA_KEY_ROTATION_MS),
                    node_cert_expiry_ms: cert_expiry_ms,
                },
                data_key_rotated_at: None,
                removed_nodes: Vec::new(),
                root_rotation: None,
                ca_force_rotate: 0,
            };
            let node = Node {
                meta: Meta::with_id(node_id.clone()),
                spec: NodeSpec {
                    role: Role::Manager,
                    availability: Availability::Active,
                    labels: Default::default(),
                },
                role: Role::Manager,
                description: crate::sysinfo::describe(&self.cfg),
                status: NodeStatus {
                    state: Health::Ready,
                    message: String::new(),
                    addr: advertise.clone(),
                },
                manager_status: Some(ManagerStatus {
                    raft_id,
                    addr: addr.clone(),
                }),
                advertise_addr: advertise.clone(),
                data_path_addr: data_path.clone(),
                attachments: Vec::new(),
                cert_expires_at,
                tls_info: Some(crate::ca_rotation::tls_info_of(
                    ca.cert_pem(),
                    ca.cert_pem(),
                )),
            };
            store
                .propose(Batch::new(vec![
                    Change::Create(Object::Cluster(cluster)),
                    Change::Create(Object::Node(node)),
                    Change::Create(Object::Network(ingress)),
                ]))
                .await
                .map_err(|e| Failure::internal(e.to_string()))?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            self.stop_member().await;
            let _ = Saved::wipe(&self.cfg);
            return Err(e);
        }
        tracing::info!(node = %node_id, cluster = %cluster_id, "swarm initialised");
        Ok(Initialised {
            node_id,
            worker_token: tokens.worker,
            addr,
        })
    }

    /// `swarm init --force-new-cluster`: this manager restarts as the only manager of the same
    /// cluster with all state kept.
    async fn force_new_cluster(self: &Arc<Self>) -> Result<Initialised> {
        let Some(saved) = Saved::load(&self.cfg)? else {
            return Err(Failure::bad_request(
                "--force-new-cluster recovers a swarm from a manager that was part of it, and this node is in no swarm; use `netctl swarm init`",
            ));
        };
        if saved.node.role != Role::Manager || !self.cfg.raft_dir().join("log.redb").exists() {
            return Err(Failure::bad_request(
                "--force-new-cluster must run on a manager (this node is a worker): run it on a surviving manager",
            ));
        }
        self.stop_member().await;
        let addr = self.cfg.cluster_addr(&saved.node.advertise_addr);
        let db = self.cfg.raft_dir();
        let raft_id = saved.node.raft_id;
        let addr2 = addr.clone();
        tokio::task::spawn_blocking(move || store::force_new_cluster(&db, raft_id, &addr2))
            .await
            .map_err(|e| Failure::internal(e.to_string()))?
            .map_err(|e| Failure::internal(e.to_string()))?;
        let mut saved = saved;
        saved.node.managers = vec![addr.clone()];
        saved.save(&self.cfg)?;
        let member = self.start_member(saved.clone(), false).await?;
        let store = member.store()?.clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !store.is_leader() {
            if Instant::now() > deadline {
                return Err(Failure::internal(
                    "the recovered manager did not become leader within 20s; see the agent's log",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cluster = member.cluster()?;
        tracing::warn!(node = %saved.node.node_id, "forced a new cluster: this manager is the only one now");
        Ok(Initialised {
            node_id: saved.node.node_id,
            worker_token: cluster.join_tokens.worker,
            addr,
        })
    }

    /// `swarm join`.
    pub async fn join(self: &Arc<Self>, req: Join) -> Result<Joined> {
        let _g = self.ops.lock().await;
        if self.member().is_some() {
            return Err(Failure::conflict(
                "This node is already part of a swarm. Use \"netctl swarm leave\" to leave this swarm and join another one.",
            ));
        }
        let token =
            JoinToken::parse(&req.token).map_err(|e| Failure::bad_request(e.to_string()))?;
        let remote = with_port(&req.remote_addr, self.cfg.cluster_port);
        let (advertise, data_path) =
            self.addresses(req.advertise_addr.clone(), req.data_path_addr.clone())?;
        let (csr, key) = pki::new_csr().map_err(|e| Failure::internal(e.to_string()))?;
        let tls = pki::tls::pinned_client_config(&token.ca_digest)
            .map_err(|e| Failure::internal(e.to_string()))?;
        let channel = crate::rpc::transport::channel(&remote, tls, Duration::from_secs(20))
            .map_err(|s| Failure::from_status(&s))?;
        let resp = CaClient::new(channel)
            .join(JoinRequest {
                token: req.token.trim().to_string(),
                csr_pem: csr,
                want_manager: req.manager,
                hostname: self.cfg.hostname.clone(),
                advertise_addr: advertise.clone(),
                data_path_addr: data_path.clone(),
                description: crate::sysinfo::describe(&self.cfg),
            })
            .await
            .map_err(|s| {
                let mut f = Failure::from_status(&s);
                f.message = format!(
                    "could not join the swarm through {remote}: {}",
                    explain_transport(&s)
                );
                f
            })?
            .into_inner();
        // The CA we keep must be the one the token pins.
        // (During a CA rotation the answer holds both roots, the one the token pins first.)
        let roots = pki::tls::certs_der_from_pem(&resp.ca_pem)
            .map_err(|e| Failure::internal(e.to_string()))?;
        if !roots.iter().any(|r| pki::ca_digest(r) == token.ca_digest) {
            return Err(Failure::forbidden(
                "the manager sent a CA certificate that does not match the digest in the join token; refusing to join",
            ));
        }
        let keys = NodeKeys {
            cert_pem: resp.cert_pem,
            key_pem: key,
        };
        let id =
            Identity::from_pem(&keys.cert_pem).map_err(|e| Failure::internal(e.to_string()))?;
        let mut managers = resp.managers.clone();
        if !managers.contains(&remote) {
            managers.push(remote.clone());
        }
        let saved = Saved {
            node: NodeState {
                node_id: resp.node_id.clone(),
                cluster_id: resp.cluster_id,
                role: resp.role,
                raft_id: random_raft_id(),
                advertise_addr: advertise,
                data_path_addr: data_path,
                managers,
            },
            ca_pem: resp.ca_pem,
            keys,
        };
        if (id.role == pki::Role::Manager) != (resp.role == Role::Manager) {
            return Err(Failure::internal(
                "the certificate's role does not match the answer; refusing",
            ));
        }
        Saved::wipe(&self.cfg)?;
        saved.save(&self.cfg)?;
        let member = match self.start_member(saved, false).await {
            Ok(m) => m,
            Err(e) => {
                let _ = Saved::wipe(&self.cfg);
                return Err(e);
            }
        };
        if resp.role == Role::Manager {
            // Wait until the leader has made us a voter and we hold the replicated state.
            let store = member.store()?.clone();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (_, voters) = store.members();
                let recorded = member.node(&resp.node_id).ok().flatten().is_some_and(|n| {
                    n.manager_status
                        .as_ref()
                        .is_some_and(|ms| ms.raft_id == store.id())
                });
                if voters.contains(&store.id()) && recorded {
                    break;
                }
                if Instant::now() > deadline {
                    self.stop_member().await;
                    let _ = Saved::wipe(&self.cfg);
                    return Err(Failure::unavailable(
                        "joined, but the leader did not admit this manager into Raft within 60s (is a quorum of managers up?); the node left again",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // As docker does, answer once the node's dispatcher session is up (it is Ready then).
        let mut open = member.session_open.subscribe();
        let up = tokio::time::timeout(Duration::from_secs(20), open.wait_for(|o| *o)).await;
        if !matches!(up, Ok(Ok(_))) {
            return Err(Failure::unavailable(
                "Timeout was reached before node joined. The attempt to join the swarm will continue in the background. Use the \"netctl info\" command to see the current swarm status of your node.",
            ));
        }
        tracing::info!(node = %resp.node_id, role = ?resp.role, "joined the swarm");
        Ok(Joined {
            node_id: resp.node_id,
            role: resp.role,
        })
    }

    /// Clean shutdown (SIGTERM): stops the components; the membership stays on disk.
    pub async fn shutdown(&self) {
        let _g = self.ops.lock().await;
        if let Some(m) = self.member() {
            m.stop().await;
        }
    }
}

/// A new manager asks the leader (through any manager) to become a Raft voter, until it is one.
async fn ensure_voter(member: Arc<Member>) {
    let Ok(store) = member.store().cloned() else {
        return;
    };
    let state = member.node_state();
    let req = JoinRaftRequest {
        raft_id: state.raft_id,
        addr: member.cluster_port_addr.clone(),
    };
    let mut attempt = 0usize;
    let mut hint: Option<String> = None;
    loop {
        if member.cancel.is_cancelled() {
            return;
        }
        let (_, voters) = store.members();
        if voters.contains(&store.id()) {
            return;
        }
        let managers: Vec<String> = member
            .node_state()
            .managers
            .into_iter()
            .filter(|a| *a != member.cluster_port_addr)
            .collect();
        let target = hint
            .take()
            .or_else(|| managers.get(attempt % managers.len().max(1)).cloned());
        attempt += 1;
        if let Some(addr) = target {
            match member.channel(&addr) {
                Ok(ch) => match ControlClient::new(ch).join_raft(req.clone()).await {
                    Ok(r) => match r.into_inner() {
                        Ok(()) => tracing::info!(via = %addr, "admitted into Raft"),
                        Err(WireError::NotLeader { leader }) => {
                            // Ask the leader itself, at once.
                            hint = leader.filter(|l| *l != member.cluster_port_addr && *l != addr);
                            if hint.is_some() {
                                continue;
                            }
                        }
                        Err(e) => tracing::warn!(via = %addr, error = %e, "joining Raft failed"),
                    },
                    Err(s) => {
                        tracing::info!(via = %addr, error = %s.message(), "joining Raft failed")
                    }
                },
                Err(e) => tracing::warn!(error = %e, "no channel"),
            }
        }
        tokio::select! {
            _ = member.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }
}

/// Turns a transport failure into what the operator should know.
pub fn explain_transport(s: &tonic::Status) -> String {
    let text = format!("{} {:?}", s.message(), std::error::Error::source(s));
    if text.contains("does not match the CA digest") {
        "the manager's root CA does not match the CA digest in the join token (wrong swarm, or a tampered token)".into()
    } else if s.code() == tonic::Code::Unavailable && s.message().contains("transport") {
        format!("cannot reach the manager ({})", s.message())
    } else {
        s.message().to_string()
    }
}
