//! `netagent.Raft`: openraft's RPCs between managers (manager certificates only).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::member::Member;
use crate::rpc::generated::raft_server::Raft;
use crate::rpc::messages::*;
use crate::services::authz::{Needs, authorize};

pub struct RaftService {
    pub member: Arc<Member>,
}

impl RaftService {
    fn raft<T>(&self, req: &Request<T>) -> Result<store::Raft, Status> {
        authorize(&self.member, req, Needs::RaftPeer)?;
        let m = self
            .member
            .manager
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("not a manager"))?;
        Ok(m.store.raft().clone())
    }
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn append_entries(
        &self,
        req: Request<AppendRequest>,
    ) -> Result<Response<AppendReply>, Status> {
        let raft = self.raft(&req)?;
        Ok(Response::new(raft.append_entries(req.into_inner()).await))
    }

    async fn vote(&self, req: Request<VoteRequest>) -> Result<Response<VoteReply>, Status> {
        let raft = self.raft(&req)?;
        Ok(Response::new(raft.vote(req.into_inner()).await))
    }

    async fn install_snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotReply>, Status> {
        let raft = self.raft(&req)?;
        Ok(Response::new(raft.install_snapshot(req.into_inner()).await))
    }
}
