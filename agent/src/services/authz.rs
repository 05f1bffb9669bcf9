//! Who may use which service of the cluster port. The certificate says who the peer is (node id,
//! role, cluster); the store says what that node may do now: a certificate stays valid after
//! its node was demoted or removed, so the store decides.
//!
//! - A node in the cluster's revocation list (`Cluster::removed_nodes`, filled by `node rm`) is
//!   refused on every service.
//! - Control (forwarding, proposals, admission, pings): the node must be in the store with the
//!   manager role as its spec says: a demotion takes effect at once.
//! - Raft: the node must not be recorded as a worker (desired and observed). A demoted manager
//!   keeps Raft until the leader has taken it out of the Raft configuration (which needs its
//!   peers' answers only), then loses it. A node this replica does not know yet is allowed, and
//!   so is anyone while the replica holds no cluster object: a new or lagging replica must
//!   accept the leader that brings it up to date.
//! - Dispatcher and certificate renewal: any node the store holds.
//!
//! Refusals are logged with the node id and counted (`netagent_cluster_port_refused_total`).

use model::node::Role;
use pki::Identity;
use tonic::{Request, Status};

use crate::member::Member;
use crate::rpc::transport::{manager_peer, member_peer};

/// What a service needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// A current manager (Control).
    Manager,
    /// A manager that has not left Raft yet (Raft).
    RaftPeer,
    /// Any node of the swarm (Dispatcher, certificate renewal).
    Member,
}

impl Needs {
    fn service(self) -> &'static str {
        match self {
            Needs::Manager => "control",
            Needs::RaftPeer => "raft",
            Needs::Member => "member",
        }
    }
}

/// The peer of `req`, if the certificate and the store both allow it what `needs` says.
pub fn authorize<T>(member: &Member, req: &Request<T>, needs: Needs) -> Result<Identity, Status> {
    let result = check(member, req, needs);
    if let Err(status) = &result {
        let who = crate::rpc::transport::peer(req)
            .map(|id| id.node_id)
            .unwrap_or_else(|_| "(no certificate)".into());
        let from = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(
            node = %who,
            %from,
            service = needs.service(),
            reason = status.message(),
            "cluster port: refused"
        );
        crate::metrics::cluster_port_refused(needs.service(), status.code());
    }
    result
}

fn check<T>(member: &Member, req: &Request<T>, needs: Needs) -> Result<Identity, Status> {
    let cluster_id = member.cluster_id();
    let id = match needs {
        Needs::Manager | Needs::RaftPeer => manager_peer(req, &cluster_id)?,
        Needs::Member => member_peer(req, &cluster_id)?,
    };
    let cluster = match member.cluster() {
        Ok(c) => c,
        // A new manager's replica is empty until the leader fills it: Raft must come in.
        Err(_) if needs == Needs::RaftPeer => return Ok(id),
        Err(f) => return Err(f.to_status()),
    };
    if cluster.removed_nodes.contains(&id.node_id) {
        return Err(Status::permission_denied(format!(
            "node {} was removed from the swarm: its certificate is revoked",
            id.node_id
        )));
    }
    let node = member.node(&id.node_id).map_err(|f| f.to_status())?;
    match (needs, node) {
        (Needs::RaftPeer, None) => Ok(id),
        (_, None) => Err(Status::unavailable(format!(
            "node {} is not known to this manager (not joined yet, or its store is behind); retry",
            id.node_id
        ))),
        (Needs::Manager, Some(n)) if n.spec.role != Role::Manager => {
            Err(Status::permission_denied(format!(
                "node {} was demoted: its manager certificate no longer grants manager services",
                id.node_id
            )))
        }
        (Needs::RaftPeer, Some(n)) if n.spec.role != Role::Manager && n.role != Role::Manager => {
            Err(Status::permission_denied(format!(
                "node {} is no longer a manager: it left Raft",
                id.node_id
            )))
        }
        _ => Ok(id),
    }
}
