//! `netagent.Dispatcher`: the session every node keeps with the leader (any node certificate; the
//! node is who its certificate says). Heartbeats up, the node's object and the managers down;
//! assignments and task status will be new variants of the same messages.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use model::Kind;
use model::node::NodeState;
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

fn managers(member: &Member) -> Vec<String> {
    member
        .manager
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
        loop {
            let msg = tokio::select! {
                _ = member.cancel.cancelled() => return,
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
                    let member2 = member.clone();
                    let id = node_id.clone();
                    if !unchanged {
                        tokio::spawn(async move {
                            let r = member2
                                .write(Batch::one(Change::Patch {
                                    kind: Kind::Node,
                                    id: id.clone(),
                                    patch,
                                    version: None,
                                }))
                                .await;
                            if let Err(e) = r {
                                tracing::info!(node = %id, error = %e, "could not record the node's session");
                            }
                        });
                    }
                    SessionDown::Welcome {
                        heartbeat_ms: period,
                        managers: managers(&member),
                        cluster: member.cluster().ok().as_ref().map(ClusterInfo::from),
                    }
                }
                SessionUp::Heartbeat => SessionDown::Heartbeat {
                    node: member.node(&node_id).ok().flatten().map(Box::new),
                    managers: managers(&member),
                    cluster: member.cluster().ok().as_ref().map(ClusterInfo::from),
                },
            };
            if tx.send(Ok(reply)).await.is_err() {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
