//! Leaving the swarm and changing role (promotion, demotion): the transitions that end or
//! replace this node's membership. Each holds the agent's operation lock.

use std::sync::Arc;
use std::time::{Duration, Instant};

use model::node::Role;
use pki::NodeKeys;

use super::{Agent, random_raft_id};
use crate::error::{Failure, Result};
use crate::member::Member;
use crate::rpc::generated::ca_client::CaClient;
use crate::rpc::generated::control_client::ControlClient;
use crate::rpc::messages::RenewRequest;
use crate::state::Saved;

impl Agent {
    /// `swarm leave [--force]`.
    pub async fn leave(self: &Arc<Self>, force: bool) -> Result<()> {
        let _g = self.ops.lock().await;
        let Some(member) = self.member() else {
            return Err(Failure::unavailable("This node is not part of a swarm"));
        };
        if member.role() == Role::Manager && !force {
            let q = member.quorum_fresh().await?;
            let n = q.managers;
            let msg = if n <= 1 {
                "You are attempting to leave the swarm on a node that is participating as a manager. \
                 Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message."
                    .to_string()
            } else if !q.survives_removal(true) {
                format!(
                    "You are attempting to leave the swarm on a node that is participating as a manager. \
                     Removing this node leaves {} managers out of {n}. Without a Raft quorum your swarm will be inaccessible. \
                     The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. \
                     Use `--force` to suppress this message.",
                    n - 1
                )
            } else {
                format!(
                    "You are attempting to leave the swarm on a node that is participating as a manager. \
                     Removing this node leaves {} managers out of {n}. Demote it first (`netctl node demote {}`) so the \
                     others stay a healthy quorum, or use `--force` to suppress this message.",
                    n - 1,
                    member.node_id()
                )
            };
            return Err(Failure::conflict(msg));
        }
        if member.role() == Role::Manager {
            self.leave_raft(&member).await;
        }
        let executor = crate::node_runtime::executor_config(&self.cfg, &member);
        member
            .leaving
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.stop_member().await;
        // Docker removes a node's swarm tasks when it leaves; so do we, with their networks.
        if let Ok(exec) = executor {
            match tokio::task::spawn_blocking(move || executor::node::teardown(&exec)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not remove every task of this node")
                }
                Err(e) => tracing::warn!(error = %e, "task removal panicked"),
            }
        }
        // And what its load balancer holds (programs, pinned maps, IPVS services).
        let lc = crate::node_runtime::lb_config(&self.cfg);
        match tokio::task::spawn_blocking(move || {
            ipvs::open(&lc).and_then(|mut lb| lb.remove_all())
        })
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not remove the load balancer's state"),
            Err(e) => tracing::warn!(error = %e, "load balancer removal panicked"),
        }
        Saved::wipe(&self.cfg)?;
        tracing::info!("left the swarm");
        Ok(())
    }

    /// Before a manager leaves (forced), asks the leader to demote it so Raft does not keep a
    /// member that will never come back; skipped when that would lose quorum (the swarm is
    /// then left to `--force-new-cluster`). Best effort, bounded.
    async fn leave_raft(&self, member: &Member) {
        let Ok(store) = member.store().cloned() else {
            return;
        };
        let Ok(q) = member.quorum_fresh().await else {
            return;
        };
        if q.managers <= 1 || !q.survives_removal(true) {
            return;
        }
        let path = format!("/nodes/{}", member.node_id());
        let node = match crate::api::call_local(self, "GET", &path, None).await {
            Ok((status, body)) if status.is_success() => {
                serde_json::from_slice::<::api::node::Node>(&body).ok()
            }
            _ => None,
        };
        let Some(node) = node else {
            tracing::warn!(
                "could not read this node before leaving Raft; demote and remove it from a manager"
            );
            return;
        };
        let mut spec = node.spec;
        spec.role = "worker".into();
        let update = format!("{path}/update?version={}", node.meta.version.index);
        let body = serde_json::to_value(&spec).ok();
        match crate::api::call_local(self, "POST", &update, body).await {
            Ok((status, _)) if status.is_success() => {}
            other => {
                tracing::warn!(status = ?other.map(|r| r.0), "could not leave Raft before leaving; demote and remove this node from a manager");
                return;
            }
        }
        // Done when the leader has recorded the demotion (it does so after the Raft change).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(addr) = member
                .leader_addr()
                .filter(|a| *a != member.cluster_port_addr)
                && let Ok(ch) = member.channel(&addr)
            {
                let req = crate::rpc::messages::ForwardRequest {
                    method: "GET".into(),
                    path: path.clone(),
                    body: String::new(),
                };
                match ControlClient::new(ch).forward(req).await {
                    Ok(r) => {
                        if let Ok(v) =
                            serde_json::from_str::<serde_json::Value>(&r.into_inner().body)
                            && v.get("ID").is_some()
                            && v["ManagerStatus"].is_null()
                        {
                            return;
                        }
                    }
                    // The leader no longer takes this node for a manager: the demotion is
                    // recorded, and the leader takes it out of Raft on its own.
                    Err(s) if s.code() == tonic::Code::PermissionDenied => return,
                    Err(_) => {}
                }
            } else if !store.members().1.contains(&store.id()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Switches this node to `target` after the managers changed its role (promote/demote):
    /// a new certificate, then the components of the new role.
    pub async fn change_role(self: &Arc<Self>, target: Role) -> Result<()> {
        let _g = self.ops.lock().await;
        let Some(member) = self.member() else {
            return Ok(());
        };
        if member.role() == target {
            return Ok(());
        }
        let (csr, key) = pki::new_csr().map_err(|e| Failure::internal(e.to_string()))?;
        let mut candidates = member.node_state().managers.clone();
        if let Some(l) = member.leader_addr() {
            candidates.insert(0, l);
        }
        let mut renewed = None;
        let mut last_err = None;
        for addr in candidates {
            let mut client = CaClient::new(member.channel(&addr)?);
            match client
                .renew(RenewRequest {
                    csr_pem: csr.clone(),
                })
                .await
            {
                Ok(r) => {
                    renewed = Some(r.into_inner());
                    break;
                }
                Err(s) => last_err = Some(s),
            }
        }
        let Some(renewed) = renewed else {
            return Err(Failure::unavailable(format!(
                "could not renew the node certificate: {}",
                last_err
                    .map(|s| s.message().to_string())
                    .unwrap_or_default()
            )));
        };
        if renewed.role != target {
            return Ok(()); // the managers have not seen the change yet; the next heartbeat retries
        }
        tracing::info!(from = ?member.role(), to = ?target, "changing role");
        self.stop_member().await;
        let mut node = member.node_state();
        node.role = target;
        if target == Role::Manager {
            node.raft_id = random_raft_id();
        }
        let _ = std::fs::remove_dir_all(self.cfg.raft_dir());
        let saved = Saved {
            node,
            ca_pem: member.trust.pem(),
            keys: NodeKeys {
                cert_pem: renewed.cert_pem,
                key_pem: key,
            },
        };
        saved.save(&self.cfg)?;
        // The old membership's sockets (gossip on 7946) go with its last reference.
        drop(member);
        self.start_member(saved, false).await?;
        Ok(())
    }
}
