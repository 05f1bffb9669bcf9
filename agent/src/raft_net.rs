//! openraft's network over the cluster port: `netagent.Raft` calls on TLS channels carrying the
//! manager's certificate, one cached channel per peer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rustls::ClientConfig;
use store::TypeConfig;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::rpc::generated::raft_client::RaftClient;

#[derive(Clone)]
pub struct RaftNet {
    tls: Arc<ClientConfig>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl RaftNet {
    pub fn new(tls: Arc<ClientConfig>) -> RaftNet {
        RaftNet {
            tls,
            channels: Default::default(),
        }
    }
}

pub struct RaftPeer {
    target: u64,
    channel: Result<Channel, Status>,
}

impl RaftNetworkFactory<TypeConfig> for RaftNet {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> RaftPeer {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match map.get(&node.addr) {
            Some(c) => Ok(c.clone()),
            None => {
                let c = crate::rpc::transport::channel(
                    &node.addr,
                    self.tls.clone(),
                    Duration::from_secs(30),
                );
                if let Ok(c) = &c {
                    map.insert(node.addr.clone(), c.clone());
                }
                c
            }
        };
        RaftPeer { target, channel }
    }
}

fn transport_err<E: std::error::Error>(s: Status) -> RPCError<u64, BasicNode, E> {
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            RPCError::Unreachable(Unreachable::new(&s))
        }
        _ => RPCError::Network(NetworkError::new(&s)),
    }
}

// openraft fixes RPCError (large) as the error type of its network trait.
#[allow(clippy::result_large_err)]
impl RaftPeer {
    fn client<E: std::error::Error>(
        &self,
    ) -> Result<RaftClient<Channel>, RPCError<u64, BasicNode, E>> {
        let ch = self.channel.clone().map_err(transport_err)?;
        Ok(RaftClient::new(ch)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20))
    }
}

fn request<T>(msg: T, option: &RPCOption) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(option.hard_ttl());
    r
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let reply = self
            .client()?
            .append_entries(request(rpc, &option))
            .await
            .map_err(transport_err)?;
        reply
            .into_inner()
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let reply = self
            .client()?
            .install_snapshot(request(rpc, &option))
            .await
            .map_err(transport_err)?;
        reply
            .into_inner()
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let reply = self
            .client()?
            .vote(request(rpc, &option))
            .await
            .map_err(transport_err)?;
        reply
            .into_inner()
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}
