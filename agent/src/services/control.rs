//! `netagent.Control`: what managers ask of each other (manager certificates only): forwarding an
//! API request or a batch to the leader, admitting a new manager into Raft, and liveness pings.

use std::sync::Arc;
use std::time::Duration;

use model::Kind;
use model::node::Role;
use store::{Batch, Change, ProposeError};
use tonic::{Request, Response, Status};
use tower::ServiceExt;

use crate::agent::Agent;
use crate::member::Member;
use crate::rpc::generated::control_server::Control;
use crate::rpc::messages::*;
use crate::services::authz::{Needs, authorize};

pub struct ControlService {
    pub agent: Arc<Agent>,
    pub member: Arc<Member>,
}

/// Header marking an API request forwarded by a follower: the leader runs it, never forwards it.
pub const FORWARDED: &str = "x-netagent-forwarded";

impl ControlService {
    fn store(&self) -> Result<&store::Store, Status> {
        self.member.store().map_err(|f| f.to_status())
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn forward(
        &self,
        req: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        authorize(&self.member, &req, Needs::Manager)?;
        let req = req.into_inner();
        let router = self
            .agent
            .router
            .get()
            .cloned()
            .ok_or_else(|| Status::unavailable("the API is not up yet"))?;
        let http_req = axum::http::Request::builder()
            .method(req.method.as_str())
            .uri(req.path.as_str())
            .header(FORWARDED, "1")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(req.body))
            .map_err(|e| Status::invalid_argument(format!("bad forwarded request: {e}")))?;
        let resp = router
            .oneshot(http_req)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-netagent"))
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ForwardResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }))
    }

    async fn propose(
        &self,
        req: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        authorize(&self.member, &req, Needs::Manager)?;
        let store = self.store()?;
        let reply = match store.propose(req.into_inner().batch).await {
            Ok(objects) => Ok(objects),
            Err(ProposeError::NotLeader { leader }) => Err(WireError::NotLeader {
                leader: leader.map(|(_, a)| a),
            }),
            Err(ProposeError::Conflict(c)) => Err(WireError::Conflict(c)),
            Err(ProposeError::Raft(m)) => Err(WireError::Other(m)),
            Err(e @ ProposeError::Busy { .. }) => Err(WireError::Other(e.to_string())),
        };
        Ok(Response::new(reply))
    }

    async fn join_raft(
        &self,
        req: Request<JoinRaftRequest>,
    ) -> Result<Response<JoinRaftReply>, Status> {
        let peer = authorize(&self.member, &req, Needs::Manager)?;
        let req = req.into_inner();
        let store = self.store()?.clone();
        if !store.is_leader() {
            // The new manager must ask the leader itself: the leader records the caller's
            // certificate identity, so this request cannot be relayed.
            let leader = self.member.wait_leader().await.ok();
            return Ok(Response::new(Err(WireError::NotLeader { leader })));
        }
        let node = self
            .member
            .node(&peer.node_id)
            .map_err(|f| f.to_status())?
            .ok_or_else(|| {
                Status::not_found(format!("node {} is not in the swarm", peer.node_id))
            })?;
        if node.spec.role != Role::Manager {
            return Ok(Response::new(Err(WireError::Other(format!(
                "node {} is not to be a manager (its role is worker)",
                peer.node_id
            )))));
        }
        self.member
            .require_quorum()
            .await
            .map_err(|f| f.to_status())?;
        let (_, voters) = store.members();
        if !voters.contains(&req.raft_id) {
            match tokio::time::timeout(
                Duration::from_secs(60),
                store.add_voter(req.raft_id, &req.addr),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(ProposeError::NotLeader { leader })) => {
                    return Ok(Response::new(Err(WireError::NotLeader {
                        leader: leader.map(|(_, a)| a),
                    })));
                }
                Ok(Err(e)) => return Ok(Response::new(Err(WireError::Other(e.to_string())))),
                Err(_) => {
                    return Ok(Response::new(Err(WireError::Other(
                        "the new manager did not catch up within 60s".into(),
                    ))));
                }
            }
        }
        let patch = serde_json::json!({
            "role": "manager",
            "manager_status": {"raft_id": req.raft_id, "addr": req.addr},
        });
        let result = self
            .member
            .write(Batch::one(Change::Patch {
                kind: Kind::Node,
                id: peer.node_id.clone(),
                patch,
                version: None,
            }))
            .await;
        tracing::info!(node = %peer.node_id, raft_id = req.raft_id, "manager admitted into Raft");
        Ok(Response::new(
            result.map(|_| ()).map_err(|f| WireError::Other(f.message)),
        ))
    }

    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        authorize(&self.member, &req, Needs::Manager)?;
        let store = self.store()?;
        // A manager whose store stopped applying is out of Raft: the others count it unreachable.
        if let Some(why) = store.unhealthy() {
            return Err(Status::unavailable(format!(
                "the store is unhealthy: {why}"
            )));
        }
        Ok(Response::new(PingReply {
            node_id: self.member.node_id(),
            raft_id: store.id(),
            leader: store.leader(),
        }))
    }
}
