//! A node's membership in a swarm while the daemon runs: its identity and credentials, and, on a
//! manager, the Raft store and the managers' view of each other. Every per-node component gets
//! an `Arc<Member>`: the node id, role and cluster id, TLS to the cluster port, the store (on a
//! manager), and the write path (`write`: propose on the leader, forward to it from a follower).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use model::node::Role;
use model::{Cluster, Kind, Node, Object};
use rustls::ClientConfig;
use store::{Batch, ProposeError, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::error::{Failure, Result};
use crate::quorum::Quorum;
use crate::rpc::generated::control_client::ControlClient;
use crate::rpc::messages::{ProposeRequest, WireError};
use crate::state::NodeState;

/// The manager-only parts.
pub struct Manager {
    pub store: Store,
    /// When each other manager (by raft id) last answered a ping.
    pub peers: Mutex<HashMap<u64, Instant>>,
    /// The dispatcher's sessions: when each node was last heard and what it said of its own
    /// health (meaningful on the leader).
    pub sessions: crate::sessions::Sessions,
    /// How long another manager may leave pings unanswered before it counts as unreachable.
    pub grace: Duration,
    /// The leader's orchestrator and IPAM while this manager leads, with the term it decides in
    /// (None otherwise, and until it is built after a read barrier): the one allocation path,
    /// held across decide-and-write (see `crate::orchestration`).
    pub leader: tokio::sync::Mutex<Option<crate::orchestration::Deciding>>,
    /// The per-node assignment index while this manager leads (built with the orchestrator from
    /// the same read of the store, fed by the same change feed); the dispatcher's sessions send
    /// from it.
    pub assigner: Mutex<Option<Arc<crate::assign::Assigner>>>,
}

/// A component the node's runtime starts, and may replace when it restarts it.
pub struct Slot<T>(std::sync::RwLock<Option<T>>);

impl<T> Default for Slot<T> {
    fn default() -> Slot<T> {
        Slot(std::sync::RwLock::new(None))
    }
}

impl<T: Clone> Slot<T> {
    pub fn get(&self) -> Option<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, v: Option<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = v;
    }
}

pub struct Member {
    pub state: Mutex<NodeState>,
    /// The roots this node trusts on the cluster port (replaced in place by a CA rotation).
    pub trust: Arc<pki::tls::Trust>,
    /// Wakes the renewal loop at once (a CA rotation: renew from the new root now).
    pub renew_now: tokio::sync::Notify,
    /// The node certificate TLS presents (client and, on managers, server); renewed in place.
    pub cert: Arc<pki::tls::NodeCert>,
    pub client_tls: Arc<ClientConfig>,
    pub manager: Option<Manager>,
    pub cancel: CancellationToken,
    /// Set when the node leaves the swarm (its gossip then says so; otherwise it only stops,
    /// and peers keep its endpoints for the next run).
    pub leaving: std::sync::atomic::AtomicBool,
    pub tasks: Mutex<Vec<JoinHandle<()>>>,
    /// This node's own object, as the dispatcher last sent it.
    pub node_obj: watch::Sender<Option<Node>>,
    /// The period of the dispatcher session (from the leader's Welcome).
    pub heartbeat: watch::Sender<Duration>,
    /// Whether this node's dispatcher session is open (welcomed by the leader, which has
    /// recorded the node Ready by then).
    pub session_open: watch::Sender<bool>,
    /// The cluster's settings (data-path port, pools, network keys) as the dispatcher last sent
    /// them: what per-node components read on workers and managers alike.
    pub cluster_info: watch::Sender<Option<crate::rpc::messages::ClusterInfo>>,
    pub cluster_port_addr: String,
    /// This node's gossip (7946) while the node's runtime has one running.
    pub gossip: Slot<Arc<gossip::Gossip>>,
    /// This node's DNS resolver for its tasks, while the node's runtime has one.
    pub resolver: Slot<Arc<dns::Resolver>>,
    /// Reads this node's load-balancer counters, while the node's runtime has an executor.
    pub lb: Slot<executor::LbCounters>,
    /// Which of the node's runtime components are broken (the node reports itself not ready).
    pub health: crate::supervisor::RuntimeHealth,
    /// The node's assignments as the dispatcher sent them: the current set, and each change for
    /// the executor.
    pub assignments: executor::feed::AssignmentFeed,
    /// Task status the executor reported and the leader has not recorded yet.
    pub task_status: Mutex<std::collections::BTreeMap<String, model::task::TaskStatus>>,
    pub task_status_notify: tokio::sync::Notify,
    /// Mutating kernel requests of this node's data plane so far.
    pub dataplane_writes: Arc<std::sync::atomic::AtomicU64>,
    rpc_timeout: Duration,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Member {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: NodeState,
        trust: Arc<pki::tls::Trust>,
        cert: Arc<pki::tls::NodeCert>,
        client_tls: Arc<ClientConfig>,
        manager: Option<Manager>,
        cluster_port_addr: String,
        heartbeat: Duration,
        rpc_timeout: Duration,
    ) -> Member {
        Member {
            state: Mutex::new(state),
            trust,
            renew_now: tokio::sync::Notify::new(),
            cert,
            client_tls,
            manager,
            cancel: CancellationToken::new(),
            leaving: Default::default(),
            tasks: Mutex::new(Vec::new()),
            node_obj: watch::channel(None).0,
            heartbeat: watch::channel(heartbeat).0,
            session_open: watch::channel(false).0,
            cluster_info: watch::channel(None).0,
            cluster_port_addr,
            gossip: Slot::default(),
            resolver: Slot::default(),
            lb: Slot::default(),
            health: Default::default(),
            assignments: Default::default(),
            task_status: Mutex::new(Default::default()),
            task_status_notify: tokio::sync::Notify::new(),
            dataplane_writes: Default::default(),
            rpc_timeout,
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn node_state(&self) -> NodeState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn node_id(&self) -> String {
        self.node_state().node_id
    }

    pub fn cluster_id(&self) -> String {
        self.node_state().cluster_id
    }

    pub fn role(&self) -> Role {
        self.node_state().role
    }

    pub fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(fut);
        self.tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
    }

    /// A TLS channel to another node's cluster port (cached).
    pub fn channel(&self, addr: &str) -> Result<Channel> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = crate::rpc::transport::channel(addr, self.client_tls.clone(), self.rpc_timeout)
            .map_err(|s| Failure::from_status(&s))?;
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Forgets the cached channels: the next calls connect again, presenting the certificate
    /// held now (after a renewal; calls in flight finish on their connection).
    pub fn reset_channels(&self) {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The manager parts, or the error docker gives on a worker.
    /// The cluster addresses of the voting managers (empty on a worker), as joiners and
    /// sessions are told them.
    pub fn manager_addrs(&self) -> Vec<String> {
        self.manager
            .as_ref()
            .map(|m| {
                let (nodes, voters) = m.store.members();
                nodes
                    .into_iter()
                    .filter(|(id, _)| voters.contains(id))
                    .map(|(_, a)| a)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn manager(&self) -> Result<&Manager> {
        self.manager.as_ref().ok_or_else(not_a_manager)
    }

    pub fn store(&self) -> Result<&Store> {
        Ok(&self.manager()?.store)
    }

    /// The cluster object from the local replica.
    pub fn cluster(&self) -> Result<Cluster> {
        let id = self.cluster_id();
        match self.store()?.get(Kind::Cluster, &id)? {
            Some(Object::Cluster(c)) => Ok(c),
            _ => Err(Failure::unavailable(
                "the cluster object is not replicated to this manager yet; retry in a moment",
            )),
        }
    }

    /// Cluster-port address of the leader as this manager knows it.
    pub fn leader_addr(&self) -> Option<String> {
        let store = self.manager.as_ref()?.store.clone();
        let m = store.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// Managers (raft voters) and how many of them this manager reaches, itself included.
    pub fn quorum(&self) -> Result<Quorum> {
        let m = self.manager()?;
        let (_, voters) = m.store.members();
        let me = m.store.id();
        let reachable = voters
            .iter()
            .filter(|id| **id == me || self.peer_reachable(**id))
            .count();
        Ok(Quorum {
            managers: voters.len(),
            reachable,
        })
    }

    /// Whether the manager with raft id `id` answered a ping recently (true for this node).
    pub fn peer_reachable(&self, id: u64) -> bool {
        let Some(m) = &self.manager else {
            return false;
        };
        if id == m.store.id() {
            return true;
        }
        m.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .is_some_and(|t| t.elapsed() <= m.grace)
    }

    /// The quorum view, after probing the other managers again unless all of them answered
    /// recently (for decisions that depend on exactly who is reachable: demote, leave).
    pub async fn quorum_fresh(&self) -> Result<Quorum> {
        let q = self.quorum()?;
        if q.reachable == q.managers {
            return Ok(q);
        }
        crate::peers::probe(self, Duration::from_millis(500)).await;
        self.quorum()
    }

    /// Probes the managers this one has never heard from (a manager that has just joined) so that
    /// `node ls` shows it Reachable at once, not Unavailable until the next ping round. Managers
    /// heard from before keep their last answer: a down one costs nothing here.
    pub async fn probe_unseen(&self) {
        let Some(m) = &self.manager else { return };
        let (_, voters) = m.store.members();
        let me = m.store.id();
        let unseen = {
            let peers = m.peers.lock().unwrap_or_else(|e| e.into_inner());
            voters.iter().any(|id| *id != me && !peers.contains_key(id))
        };
        if unseen {
            crate::peers::probe(self, Duration::from_millis(500)).await;
        }
    }

    /// Fails quickly, with the counts and the way out, unless a quorum of managers is reachable.
    /// Probes again first if quorum looks lost (a manager just added or restarted may not have
    /// been pinged yet).
    pub async fn require_quorum(&self) -> Result<Quorum> {
        let mut q = self.quorum()?;
        if !q.has_quorum() {
            crate::peers::probe(self, Duration::from_millis(500)).await;
            q = self.quorum()?;
        }
        if q.has_quorum() {
            Ok(q)
        } else {
            Err(Failure::unavailable(q.lost_message()))
        }
    }

    /// Waits (bounded) for a leader to be known, as after a leader's death; fails with the
    /// quorum message if there is no quorum or no leader emerges.
    pub async fn wait_leader(&self) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let q = self.require_quorum().await?;
            if let Some(addr) = self.leader_addr() {
                return Ok(addr);
            }
            if Instant::now() > deadline {
                return Err(Failure::unavailable(format!(
                    "no leader was elected within 15s although {} of {} managers are reachable; retry, and check the managers' logs",
                    q.reachable, q.managers
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes a batch through Raft: proposed here on the leader, forwarded to the leader from a
    /// follower. Fails at once without quorum.
    pub async fn write(&self, batch: Batch) -> Result<Vec<Option<Object>>> {
        let started = Instant::now();
        let r = self.write_inner(batch).await;
        let result = match &r {
            Ok(_) => "ok",
            Err(f)
                if matches!(
                    f.code,
                    crate::error::Code::BadRequest
                        | crate::error::Code::Conflict
                        | crate::error::Code::NotFound
                ) =>
            {
                "refused"
            }
            Err(_) => "failed",
        };
        crate::metrics::store_write(started.elapsed(), result);
        r
    }

    async fn write_inner(&self, batch: Batch) -> Result<Vec<Option<Object>>> {
        let m = self.manager()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(e) = m.store.unhealthy() {
                return Err(store_unhealthy(&e));
            }
            self.require_quorum().await?;
            let attempt = if m.store.is_leader() {
                match tokio::time::timeout(Duration::from_secs(10), m.store.propose(batch.clone()))
                    .await
                {
                    Ok(r) => r.map_err(|e| match e {
                        ProposeError::Conflict(c) => Err(Failure::from(c)),
                        ProposeError::NotLeader { .. } => Ok(()),
                        ProposeError::Busy { .. } => Err(Failure::unavailable(e.to_string())),
                        ProposeError::Raft(msg) => {
                            Err(Failure::unavailable(format!("the write failed: {msg}")))
                        }
                    }),
                    Err(_) => Err(Err(Failure::unavailable(
                        "the write was not committed within 10s: too few managers acknowledge the leader; check that a quorum of managers is up",
                    ))),
                }
            } else {
                let addr = self.wait_leader().await?;
                let mut client = ControlClient::new(self.channel(&addr)?);
                match client
                    .propose(ProposeRequest {
                        batch: batch.clone(),
                    })
                    .await
                {
                    Ok(resp) => resp.into_inner().map_err(|e| match e {
                        WireError::Conflict(c) => Err(Failure::from(c)),
                        WireError::NotLeader { .. } => Ok(()),
                        WireError::Other(m) => Err(Failure::unavailable(m)),
                    }),
                    Err(s) if s.code() == tonic::Code::Unavailable => Err(Ok(())),
                    Err(s) => Err(Err(Failure::from_status(&s))),
                }
            };
            match attempt {
                Ok(objects) => return Ok(objects),
                Err(Err(f)) => return Err(f),
                Err(Ok(())) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(Ok(())) => {
                    return Err(Failure::unavailable(
                        "leadership kept changing and the write could not be placed within 20s; retry",
                    ));
                }
            }
        }
    }

    /// Every node object in the local replica.
    pub fn nodes(&self) -> Result<Vec<Node>> {
        Ok(self
            .store()?
            .list(Kind::Node)?
            .into_iter()
            .filter_map(|o| Node::try_from(o).ok())
            .collect())
    }

    pub fn node(&self, id: &str) -> Result<Option<Node>> {
        Ok(self
            .store()?
            .get(Kind::Node, id)?
            .and_then(|o| Node::try_from(o).ok()))
    }

    /// Stops every component of this membership; the store is shut down.
    pub async fn stop(&self) {
        self.cancel.cancel();
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if let Some(m) = &self.manager {
            m.store.shutdown().await;
        }
    }
}

pub fn not_a_manager() -> Failure {
    Failure::unavailable(
        "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. \
         Please run this command on a manager node or promote the current node to a manager.",
    )
}

/// Writes refused by a manager whose store stopped applying (see `store::Store::unhealthy`).
pub fn store_unhealthy(why: &str) -> Failure {
    Failure::unavailable(format!(
        "this manager refuses writes: its store is unhealthy ({why}). Restart netagent on this node: it recovers from the Raft log"
    ))
}

pub fn not_in_swarm() -> Failure {
    Failure::unavailable(
        "This node is not a swarm manager. Use \"netctl swarm init\" or \"netctl swarm join\" to connect this node to swarm and try again.",
    )
}
