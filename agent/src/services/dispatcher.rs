//! `netagent.Dispatcher`: the session every node keeps with the leader (any node certificate; the
//! node is who its certificate says). Heartbeats and task status up; the node's object, the
//! managers and the node's assignments (its tasks, their networks and services, the gossip
//! keys) down — assignments at the start of the session and whenever the store changes them.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::Stream;
use model::node::NodeState;
use model::task::TaskStatus;
use model::{Assignments, Kind, Network, Service, Task};
use store::{Batch, Change};
use tonic::{Request, Response, Status, Streaming};

use crate::member::Member;
use crate::rpc::generated::dispatcher_server::Dispatcher;
use crate::rpc::messages::{ClusterInfo, SessionDown, SessionUp};
use crate::rpc::transport::member_peer;

pub struct DispatcherService {
    pub member: Arc<Member>,
}

/// Metadata key carrying the leader's address when a follower turns a session away.
pub const LEADER_HINT: &str = "x-netagent-leader";

#[tonic::async_trait]
impl Dispatcher for DispatcherService {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionDown, Status>> + Send>>;

    async fn session(
        &self,
        req: Request<Streaming<SessionUp>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = member_peer(&req, &self.member.cluster_id())?;
        let peer_ip = req.remote_addr().map(|a| a.ip().to_string());
        let member = self.member.clone();
        let m = member.manager().map_err(|f| f.to_status())?;
        if !m.store.is_leader() {
            let mut status = Status::unavailable(
                "this manager is not the leader; the session goes to the leader",
            );
            if let Some(addr) = member.leader_addr()
                && let Ok(v) = addr.parse()
            {
                status.metadata_mut().insert(LEADER_HINT, v);
            }
            return Err(status);
        }
        let Some(node) = member.node(&peer.node_id).map_err(|f| f.to_status())? else {
            return Err(Status::not_found(format!(
                "node {} is not in the swarm (it was removed); leave and join again",
                peer.node_id
            )));
        };
        let period = member
            .cluster()
            .map(|c| c.settings.heartbeat_period_ms)
            .unwrap_or(5_000);
        let inbound = req.into_inner();
        let node_id = peer.node_id.clone();
        let stream = session_stream(member.clone(), node_id, node, peer_ip, period, inbound);
        Ok(Response::new(stream))
    }
}

fn session_stream(
    member: Arc<Member>,
    node_id: String,
    node: model::Node,
    peer_ip: Option<String>,
    period: u64,
    mut inbound: Streaming<SessionUp>,
) -> Pin<Box<dyn Stream<Item = Result<SessionDown, Status>> + Send>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SessionDown, Status>>(16);
    tokio::spawn(async move {
        let touch = |member: &Member| {
            if let Some(m) = &member.manager {
                m.sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(node_id.clone(), Instant::now());
            }
        };
        let silence = Duration::from_millis(period * 3).max(Duration::from_millis(600));
        let Ok(store) = member.store().cloned() else {
            return;
        };
        let mut changes = store.subscribe();
        // The assignments last sent (revision zeroed), to send only what changed.
        let mut sent: Option<Assignments> = None;
        let recording = Arc::new(AtomicBool::new(false));
        let mut welcomed = false;
        loop {
            let msg = tokio::select! {
                _ = member.cancel.cancelled() => return,
                ev = changes.recv() => {
                    let relevant = match &ev {
                        Ok(ev) => concerns_assignments(ev),
                        Err(_) => true, // lagged: look again
                    };
                    if relevant && welcomed
                        && send_assignments(&member, &node_id, &mut sent, &tx).await.is_err()
                    {
                        return;
                    }
                    continue;
                }
                m = tokio::time::timeout(silence, inbound.message()) => m,
            };
            let msg = match msg {
                Err(_) | Ok(Ok(None)) | Ok(Err(_)) => return, // silent, closed or broken
                Ok(Ok(Some(m))) => m,
            };
            let is_leader = member.manager.as_ref().is_some_and(|m| m.store.is_leader());
            if !is_leader {
                let _ = tx
                    .send(Err(Status::unavailable(
                        "leadership moved; reconnect to the new leader",
                    )))
                    .await;
                return;
            }
            touch(&member);
            let reply = match msg {
                SessionUp::Hello {
                    description,
                    advertise_addr,
                    data_path_addr,
                } => {
                    // Record what the node says it is, and that it is up.
                    let mut patch = serde_json::json!({
                        "description": description,
                        "advertise_addr": advertise_addr,
                        "data_path_addr": data_path_addr,
                    });
                    if node.status.state != NodeState::Ready {
                        patch["status"] = serde_json::json!({"state": "ready", "message": ""});
                    }
                    if let Some(ip) = &peer_ip {
                        patch["status"]["addr"] = serde_json::json!(ip);
                    }
                    let unchanged = node.description == description
                        && node.advertise_addr == advertise_addr
                        && node.data_path_addr == data_path_addr
                        && node.status.state == NodeState::Ready
                        && peer_ip.as_ref().is_none_or(|ip| *ip == node.status.addr);
                    // Recorded before the Welcome, so a node that sees its session open (a
                    // `swarm join` waiting for it) is Ready in `node ls` too.
                    if !unchanged {
                        let r = member
                            .write(Batch::one(Change::Patch {
                                kind: Kind::Node,
                                id: node_id.clone(),
                                patch,
                                version: None,
                            }))
                            .await;
                        if let Err(e) = r {
                            tracing::info!(node = %node_id, error = %e, "could not record the node's session");
                        }
                    }
                    welcomed = true;
                    SessionDown::Welcome {
                        heartbeat_ms: period,
                        managers: member.manager_addrs(),
                        cluster: member.cluster().ok().as_ref().map(ClusterInfo::from),
                    }
                }
                SessionUp::Heartbeat => SessionDown::Heartbeat {
                    node: member.node(&node_id).ok().flatten().map(Box::new),
                    managers: member.manager_addrs(),
                    cluster: member.cluster().ok().as_ref().map(ClusterInfo::from),
                },
                SessionUp::TaskStatus { updates } => {
                    if !recording.swap(true, Ordering::SeqCst) {
                        let (member, node_id, recording) =
                            (member.clone(), node_id.clone(), recording.clone());
                        tokio::spawn(async move {
                            record_status(&member, &node_id, updates).await;
                            recording.store(false, Ordering::SeqCst);
                        });
                    }
                    continue;
                }
            };
            let welcome = matches!(reply, SessionDown::Welcome { .. });
            if tx.send(Ok(reply)).await.is_err() {
                return;
            }
            if welcome
                && send_assignments(&member, &node_id, &mut sent, &tx)
                    .await
                    .is_err()
            {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Whether a change of the store may change some node's assignments.
fn concerns_assignments(ev: &store::Event) -> bool {
    match ev {
        store::Event::Reset { .. } => true,
        store::Event::Changes { changes, .. } => changes.iter().any(|c| {
            let o = match c {
                store::Applied::Put(o) | store::Applied::Deleted(o) => o,
            };
            matches!(
                o.kind(),
                Kind::Task | Kind::Network | Kind::Service | Kind::Cluster
            )
        }),
    }
}

/// What node `node_id` must run, from this manager's replica: its tasks, their networks and
/// services, the data-path port and the gossip keys.
pub fn assignments_for(member: &Member, node_id: &str) -> Option<Assignments> {
    let store = member.store().ok()?;
    let revision = store.applied_index();
    let tasks: Vec<Task> = store
        .list(Kind::Task)
        .ok()?
        .into_iter()
        .filter_map(|o| Task::try_from(o).ok())
        .filter(|t| t.node_id.as_deref() == Some(node_id))
        .collect();
    let net_ids: BTreeSet<&str> = tasks
        .iter()
        .flat_map(|t| t.networks.iter().map(|n| n.network_id.as_str()))
        .collect();
    let svc_ids: BTreeSet<&str> = tasks.iter().map(|t| t.service_id.as_str()).collect();
    let networks = net_ids
        .into_iter()
        .filter_map(|id| store.get(Kind::Network, id).ok().flatten())
        .filter_map(|o| Network::try_from(o).ok())
        .collect();
    let services = svc_ids
        .into_iter()
        .filter_map(|id| store.get(Kind::Service, id).ok().flatten())
        .filter_map(|o| Service::try_from(o).ok())
        .collect();
    let cluster = member.cluster().ok()?;
    Some(Assignments {
        revision,
        tasks,
        networks,
        services,
        data_path_port: cluster.data_path_port,
        gossip_keys: cluster
            .network_keys
            .into_iter()
            .filter(|k| k.subsystem == "gossip")
            .collect(),
    })
}

/// Sends the node its assignments if they differ from what it has.
async fn send_assignments(
    member: &Member,
    node_id: &str,
    sent: &mut Option<Assignments>,
    tx: &tokio::sync::mpsc::Sender<Result<SessionDown, Status>>,
) -> Result<(), ()> {
    let Some(a) = assignments_for(member, node_id) else {
        return Ok(());
    };
    let mut key = a.clone();
    key.revision = 0;
    if sent.as_ref() == Some(&key) {
        return Ok(());
    }
    *sent = Some(key);
    tx.send(Ok(SessionDown::Assignments(Box::new(a))))
        .await
        .map_err(|_| ())
}

/// Records what a node reports of its tasks. A node speaks only for its own tasks, and a task's
/// state only moves forward.
async fn record_status(member: &Member, node_id: &str, updates: Vec<(String, TaskStatus)>) {
    let Ok(store) = member.store() else { return };
    let mut changes = Vec::new();
    for (id, status) in updates {
        let Some(task) = store
            .get(Kind::Task, &id)
            .ok()
            .flatten()
            .and_then(|o| Task::try_from(o).ok())
        else {
            continue;
        };
        if task.node_id.as_deref() != Some(node_id) {
            tracing::warn!(node = %node_id, task = %id, "a node reported a task that is not its own; ignored");
            continue;
        }
        if status.state < task.status.state
            || (status.state == task.status.state
                && status.exit_code == task.status.exit_code
                && status.err == task.status.err)
        {
            continue;
        }
        let Ok(value) = serde_json::to_value(&status) else {
            continue;
        };
        changes.push(Change::Patch {
            kind: Kind::Task,
            id,
            patch: serde_json::json!({ "status": value }),
            version: None,
        });
    }
    if changes.is_empty() {
        return;
    }
    if let Err(e) = member.write(Batch::new(changes)).await {
        tracing::info!(node = %node_id, error = %e, "could not record task status; the node sends it again");
    }
}
