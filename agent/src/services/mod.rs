//! The gRPC services a manager serves on the cluster port (see `crate::rpc` for the table of
//! services and who may call them).

mod authz;
pub(crate) mod ca;
mod control;
mod dispatcher;
mod raft;
mod told;

pub use control::FORWARDED;
pub use dispatcher::LEADER_HINT;

use std::sync::Arc;

use rustls::ServerConfig;
use tokio::net::TcpListener;

use crate::agent::Agent;
use crate::member::Member;
use crate::rpc::generated::ca_server::CaServer;
use crate::rpc::generated::control_server::ControlServer;
use crate::rpc::generated::dispatcher_server::DispatcherServer;
use crate::rpc::generated::raft_server::RaftServer;

/// Snapshots and batches can be large.
const MAX_MESSAGE: usize = 256 << 20;
/// The CA service takes a token and a CSR (joining) or a CSR (renewing): a few KiB. It is the one
/// service open to clients without a certificate, so a larger message is refused unread.
const MAX_CA_MESSAGE: usize = 64 << 10;

/// Serves the cluster port until the member is stopped.
pub async fn serve(
    agent: Arc<Agent>,
    member: Arc<Member>,
    listener: TcpListener,
    tls: Arc<ServerConfig>,
) {
    let addr = listener.local_addr().ok();
    let incoming = crate::rpc::transport::incoming(listener, tls, member.trust.clone());
    let cancel = member.cancel.clone();
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
        .add_service(
            CaServer::new(ca::CaService {
                member: member.clone(),
                join_limit: crate::rpc::limit::joins(),
            })
            .max_decoding_message_size(MAX_CA_MESSAGE),
        )
        .add_service(
            RaftServer::new(raft::RaftService {
                member: member.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ControlServer::new(control::ControlService {
                agent,
                member: member.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(DispatcherServer::new(dispatcher::DispatcherService {
            member: member.clone(),
        }))
        .serve_with_incoming_shutdown(incoming, cancel.cancelled())
        .await;
    match result {
        Ok(()) => tracing::info!(?addr, "cluster port closed"),
        Err(e) => tracing::error!(?addr, error = %e, "cluster port failed"),
    }
}
