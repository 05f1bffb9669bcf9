//! `netagent.Dispatcher`: the session every node keeps with the leader (any node certificate; the
//! node is who its certificate says). Heartbeats and task status up; the node's object, the
//! managers and the node's assignments (see [`crate::assign`]) down — the whole set at the start
//! of the session, then only what changed for this node.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::Stream;
use model::node::NodeState;
use model::task::TaskStatus;
use model::{Kind, Task};
use store::{Batch, Change};
use tonic::{Request, Response, Status, Streaming};

use crate::member::Member;
use crate::rpc::generated::dispatcher_server::Dispatcher;
use crate::rpc::messages::{ClusterInfo, SessionDown, SessionUp};
use crate::rpc::transport::member_peer;
use crate::services::authz::{Needs, authorize};

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
        // The leader's store is current: a node it does not hold was removed.
        let Some(node) = member.node(&peer.node_id).map_err(|f| f.to_status())? else {
            return Err(Status::permission_denied(format!(
                "node {} is not in the swarm (it was removed); leave and join again",
                peer.node_id
            )));
        };
        authorize(&member, &req, Needs::Member)?;
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
        let _ended = SessionEnded {
            member: member.clone(),
            node: node_id.clone(),
        };
        let touch = |member: &Member, problem: Option<String>, grace: Duration| {
            if let Some(m) = &member.manager {
                m.sessions.heard(&node_id, problem, grace);
            }
        };
        let mut told = super::told::Told::welcomed(None, period);
        let Ok(store) = member.store().cloned() else {
            return;
        };
        // The leader's assignment index: this session sends the node a full set once welcomed,
        // then a delta whenever the index says something of the node's changed.
        let mut assigner: Option<Arc<crate::assign::Assigner>> = None;
        let mut notify: Option<Arc<tokio::sync::Notify>> = None;
        let mut revision = 0u64;
        let recording = Arc::new(AtomicBool::new(false));
        let recording_tls = Arc::new(AtomicBool::new(false));
        let mut welcomed = false;
        loop {
            let wake = async {
                match &notify {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            let msg = tokio::select! {
                _ = member.cancel.cancelled() => return,
                _ = wake => {
                    if welcomed
                        && send_assignments(&member, &store, &node_id, &mut assigner, &mut notify, &mut revision, &tx)
                            .await
                            .is_err()
                    {
                        return;
                    }
                    continue;
                }
                m = tokio::time::timeout(told.silence(), inbound.message()) => m,
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
            match &msg {
                SessionUp::Hello { problem, .. } | SessionUp::Heartbeat { problem } => {
                    touch(&member, problem.clone(), told.silence())
                }
                SessionUp::TaskStatus { .. } | SessionUp::Tls { .. } => {}
            }
            let reply = match msg {
                SessionUp::Hello {
                    description,
                    advertise_addr,
                    data_path_addr,
                    tls,
                    problem,
                } => {
                    // Record what the node says it is, and that it is up (ready, or not
                    // ready and why).
                    let mut patch = serde_json::json!({
                        "description": description,
                        "advertise_addr": advertise_addr,
                        "data_path_addr": data_path_addr,
                    });
                    let (state, message) = match problem {
                        None => (NodeState::Ready, String::new()),
                        Some(why) => (NodeState::Unknown, why),
                    };
                    let status_same = node.status.state == state && node.status.message == message;
                    if !status_same {
                        patch = merge(patch, crate::sessions::status_patch(state, &message));
                    }
                    if let Some(ip) = &peer_ip {
                        patch["status"]["addr"] = serde_json::json!(ip);
                    }
                    let tls = tls.map(|t| *t);
                    let tls_known = tls.is_none() || node.tls_info == tls;
                    if let Some(t) = tls.filter(|_| !tls_known) {
                        patch["tls_info"] = serde_json::json!(t);
                    }
                    let unchanged = node.description == description
                        && node.advertise_addr == advertise_addr
                        && node.data_path_addr == data_path_addr
                        && status_same
                        && peer_ip.as_ref().is_none_or(|ip| *ip == node.status.addr)
                        && tls_known;
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
                    let cluster = member.cluster().ok().as_ref().map(ClusterInfo::from);
                    told = super::told::Told::welcomed(cluster.clone(), period);
                    SessionDown::Welcome {
                        heartbeat_ms: period,
                        managers: member.manager_addrs(),
                        cluster,
                    }
                }
                SessionUp::Heartbeat { .. } => {
                    let node = member.node(&node_id).ok().flatten();
                    let revoked = member
                        .cluster()
                        .is_ok_and(|c| c.removed_nodes.contains(&node_id));
                    if node.is_none() || revoked {
                        // Removed while connected: the session ends with the node.
                        let _ = tx
                            .send(Err(Status::permission_denied(format!(
                                "node {node_id} was removed from the swarm: its certificate is revoked"
                            ))))
                            .await;
                        return;
                    }
                    told.beat();
                    let (node, cluster) =
                        told.reply(node, member.cluster().ok().as_ref().map(ClusterInfo::from));
                    SessionDown::Heartbeat {
                        node: node.map(Box::new),
                        managers: member.manager_addrs(),
                        cluster,
                    }
                }
                SessionUp::Tls { info } => {
                    if !recording_tls.swap(true, Ordering::SeqCst) {
                        let (member, node_id, recording) =
                            (member.clone(), node_id.clone(), recording_tls.clone());
                        tokio::spawn(async move {
                            record_tls(&member, &node_id, info).await;
                            recording.store(false, Ordering::SeqCst);
                        });
                    }
                    continue;
                }
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
                && send_assignments(
                    &member,
                    &store,
                    &node_id,
                    &mut assigner,
                    &mut notify,
                    &mut revision,
                    &tx,
                )
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// When a session ends, the assignment index forgets its node if the node left the cluster.
struct SessionEnded {
    member: Arc<Member>,
    node: String,
}

impl Drop for SessionEnded {
    fn drop(&mut self) {
        let assigner = self
            .member
            .manager
            .as_ref()
            .and_then(|m| m.assigner.lock().unwrap_or_else(|e| e.into_inner()).clone());
        if let Some(a) = assigner {
            a.session_ended(&self.node);
        }
    }
}

/// Sends the node what it must know: the whole set at the start of the session (or when the
/// leader's index was rebuilt), otherwise the delta the index has for it, if any.
async fn send_assignments(
    member: &Member,
    store: &store::Store,
    node_id: &str,
    assigner: &mut Option<Arc<crate::assign::Assigner>>,
    notify: &mut Option<Arc<tokio::sync::Notify>>,
    revision: &mut u64,
    tx: &tokio::sync::mpsc::Sender<Result<SessionDown, Status>>,
) -> Result<(), ()> {
    let stale = assigner.as_ref().is_none_or(|a| a.is_closed());
    if stale {
        // The index is built right after the manager became leader; wait for it a little.
        let mut current = None;
        for _ in 0..250 {
            current = member
                .manager
                .as_ref()
                .and_then(|m| m.assigner.lock().unwrap_or_else(|e| e.into_inner()).clone());
            if current.is_some() || member.cancel.is_cancelled() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Some(a) = current else {
            let _ = tx
                .send(Err(Status::unavailable(
                    "the leader is still reading the store; reconnect in a moment",
                )))
                .await;
            return Err(());
        };
        *notify = Some(a.notifier(node_id));
        let Some(full) = a.full(store, node_id) else {
            *assigner = Some(a);
            return Ok(());
        };
        *assigner = Some(a);
        *revision = full.revision;
        let msg = SessionDown::Assignments(Box::new(full));
        crate::metrics::assignments_sent(node_id, true, encoded_len(&msg));
        return tx.send(Ok(msg)).await.map_err(|_| ());
    }
    let a = assigner.as_ref().expect("checked above");
    let Some(delta) = a.next(store, node_id, *revision + 1) else {
        return Ok(());
    };
    *revision = delta.revision;
    tracing::debug!(
        node = node_id,
        revision = delta.revision,
        tasks = delta.tasks.len(),
        removed_tasks = delta.removed_tasks.len(),
        services = delta.services.len(),
        "assignments delta"
    );
    let msg = SessionDown::AssignmentsDelta(Box::new(delta));
    crate::metrics::assignments_sent(node_id, false, encoded_len(&msg));
    tx.send(Ok(msg)).await.map_err(|_| ())
}

/// `a` with `b`'s top-level fields added.
fn merge(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// The size of a message on the wire (the session's codec is JSON).
fn encoded_len(msg: &SessionDown) -> usize {
    serde_json::to_vec(msg).map(|v| v.len()).unwrap_or(0)
}

/// Records the TLS state a node reports (the node sends it again until its object shows it).
async fn record_tls(member: &Member, node_id: &str, info: model::node::TlsInfo) {
    let Ok(Some(node)) = member.node(node_id) else {
        return;
    };
    if node.tls_info.as_ref() == Some(&info) {
        return;
    }
    let Ok(value) = serde_json::to_value(&info) else {
        return;
    };
    let change = Change::Patch {
        kind: Kind::Node,
        id: node_id.to_string(),
        patch: serde_json::json!({ "tls_info": value }),
        version: None,
    };
    if let Err(e) = member.write(Batch::one(change)).await {
        tracing::info!(node = %node_id, error = %e, "could not record the node's TLS state; the node sends it again");
    }
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
