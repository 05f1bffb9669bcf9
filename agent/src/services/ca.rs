//! `netagent.Ca`: joining with a token (no client certificate needed) and renewing a node's
//! certificate after its role changed (its current certificate needed).

use std::sync::Arc;

use model::node::{Availability, ManagerStatus, NodeSpec, NodeState, NodeStatus, Role};
use model::{Kind, Meta, Node, Object};
use pki::{Ca, Identity, JoinToken};
use store::{Batch, Change};
use tonic::{Request, Response, Status};

use crate::member::Member;
use crate::rpc::generated::ca_server::Ca as CaRpc;
use crate::rpc::messages::*;
use crate::services::authz::{Needs, authorize};

pub struct CaService {
    pub member: Arc<Member>,
    /// Join attempts per source address.
    pub join_limit: crate::rpc::limit::SourceLimit,
}

fn pki_role(r: Role) -> pki::Role {
    match r {
        Role::Manager => pki::Role::Manager,
        Role::Worker => pki::Role::Worker,
    }
}

impl CaService {
    /// The cluster and the CA that signs now: during a CA rotation the new root, whose
    /// certificates carry the cross-signed new root so peers trusting the old root accept them.
    fn ca(&self) -> Result<(model::Cluster, Ca), Status> {
        let cluster = self.member.cluster().map_err(|f| f.to_status())?;
        let ca = crate::ca_rotation::signer(&cluster)
            .map_err(|e| Status::internal(format!("the cluster CA is unusable: {e}")))?;
        Ok((cluster, ca))
    }
}

#[tonic::async_trait]
impl CaRpc for CaService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let peer = req.remote_addr().map(|a| a.ip());
        if let Some(ip) = peer
            && !self.join_limit.admit(ip)
        {
            tracing::info!(%ip, "join refused: too many attempts from this address");
            crate::metrics::cluster_port_refused("ca", tonic::Code::ResourceExhausted);
            return Err(Status::resource_exhausted(
                "too many join attempts from this address; wait a few seconds and try again",
            ));
        }
        let peer_ip = peer.map(|ip| ip.to_string());
        let req = req.into_inner();
        let (cluster, ca) = self.ca()?;
        let role = admit(&req, &cluster)?;
        let node_id = model::new_id();
        let cert_pem = ca
            .sign_csr(
                &req.csr_pem,
                &Identity {
                    node_id: node_id.clone(),
                    role: pki_role(role),
                    cluster_id: cluster.meta.id.clone(),
                },
                validity(&cluster),
            )
            .map_err(|e| {
                Status::invalid_argument(format!("cannot sign the certificate request: {e}"))
            })?;
        let node = Node {
            meta: Meta::with_id(node_id.clone()),
            spec: NodeSpec {
                role,
                availability: Availability::Active,
                labels: Default::default(),
            },
            role,
            description: req.description.clone(),
            status: NodeStatus {
                state: NodeState::Unknown,
                message: String::new(),
                addr: peer_ip.unwrap_or_else(|| req.advertise_addr.clone()),
            },
            manager_status: None::<ManagerStatus>,
            advertise_addr: req.advertise_addr.clone(),
            data_path_addr: req.data_path_addr.clone(),
            attachments: Vec::new(),
            cert_expires_at: crate::certs::expires_at(&cert_pem),
            // What the node will report: it trusts what it is sent, its certificate is the
            // signer's (recorded now so that its first session changes nothing).
            tls_info: Some(crate::ca_rotation::tls_info_of(
                &cluster.trust_pem(),
                cluster.issuer_pem(),
            )),
        };
        self.member
            .write(Batch::one(Change::Create(Object::Node(node))))
            .await
            .map_err(|f| f.to_status())?;
        tracing::info!(node = %node_id, hostname = %req.hostname, ?role, "node joined");
        Ok(Response::new(JoinResponse {
            node_id,
            ca_pem: cluster.trust_pem(),
            cluster_id: cluster.meta.id,
            role,
            cert_pem,
            managers: self.member.manager_addrs(),
        }))
    }

    async fn renew(&self, req: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let peer = authorize(&self.member, &req, Needs::Member)?;
        let (cluster, ca) = self.ca()?;
        let node = self
            .member
            .node(&peer.node_id)
            .map_err(|f| f.to_status())?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "node {} is not in the swarm (removed?)",
                    peer.node_id
                ))
            })?;
        let role = node.spec.role;
        let cert_pem = ca
            .sign_csr(
                &req.into_inner().csr_pem,
                &Identity {
                    node_id: peer.node_id.clone(),
                    role: pki_role(role),
                    cluster_id: cluster.meta.id.clone(),
                },
                validity(&cluster),
            )
            .map_err(|e| {
                Status::invalid_argument(format!("cannot sign the certificate request: {e}"))
            })?;
        // Recorded for `node inspect`, in the background: the certificate is valid whether or
        // not this lands, and the answer must not wait for a quorum.
        if let Some(at) = crate::certs::expires_at(&cert_pem) {
            let patch = serde_json::json!({ "cert_expires_at": at });
            let (member, node_id) = (self.member.clone(), peer.node_id.clone());
            tokio::spawn(async move {
                let change = Change::Patch {
                    kind: Kind::Node,
                    id: node_id.clone(),
                    patch,
                    version: None,
                };
                if let Err(e) = member.write(Batch::one(change)).await {
                    tracing::info!(node = %node_id, error = %e, "could not record the certificate's expiry");
                }
            });
        }
        tracing::info!(node = %peer.node_id, ?role, "node certificate renewed");
        Ok(Response::new(RenewResponse { cert_pem, role }))
    }
}

/// Checks a join request against the cluster's CA and join tokens: the role its token gives, or
/// why it is refused. No store, no I/O: `crate::fuzz` drives it with arbitrary requests.
pub(crate) fn admit(req: &JoinRequest, cluster: &model::Cluster) -> Result<Role, Status> {
    let given =
        JoinToken::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
    // The token pins the swarm's root (during a rotation still the old one).
    if given.ca_digest != crate::ca_rotation::root_digest(cluster) {
        return Err(Status::permission_denied(
            "the join token is for a different swarm (its CA digest does not match this swarm's CA)",
        ));
    }
    let worker = JoinToken::parse(&cluster.join_tokens.worker)
        .map_err(|e| Status::internal(e.to_string()))?;
    let manager = JoinToken::parse(&cluster.join_tokens.manager)
        .map_err(|e| Status::internal(e.to_string()))?;
    let role = if given.same_secret(&manager) {
        Role::Manager
    } else if given.same_secret(&worker) {
        Role::Worker
    } else {
        return Err(Status::permission_denied(
            "invalid join token: it is neither the current worker nor the current manager token of this swarm (was it rotated?); get one with `netctl swarm join-token worker|manager` on a manager",
        ));
    };
    if req.want_manager && role != Role::Manager {
        return Err(Status::permission_denied(
            "the token is a worker token, which never makes a node a manager; to join as a manager use the manager token (`netctl swarm join-token manager`)",
        ));
    }
    if req.hostname.is_empty() || req.hostname.len() > 253 {
        return Err(Status::invalid_argument("invalid hostname"));
    }
    for a in [&req.advertise_addr, &req.data_path_addr] {
        if a.parse::<std::net::IpAddr>().is_err() {
            return Err(Status::invalid_argument(format!("invalid address {a:?}")));
        }
    }
    Ok(role)
}

/// How long the node certificates the CA signs now live (the cluster's setting).
pub(crate) fn validity(cluster: &model::Cluster) -> std::time::Duration {
    let ms = match cluster.settings.node_cert_expiry_ms {
        0 => model::cluster::DEFAULT_NODE_CERT_EXPIRY_MS,
        ms => ms,
    };
    std::time::Duration::from_millis(ms)
}
