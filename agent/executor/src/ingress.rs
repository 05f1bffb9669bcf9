//! The routing mesh on this node (`vxlan::ingress`, docs/ingress.md): the ingress-sbox is the
//! ingress network's load-balancer namespace (the node's ingress address, made like any
//! network's load-balancer endpoint, plus an endpoint on docker_gwbridge), published ports go
//! to it from the node's own table and it balances them over the running tasks of the service
//! that gossip lists on ingress. In each local task on ingress, the return path that keeps the
//! client's address. Mode=host ports go straight to a local task.
//!
//! Desired state is computed from the assignments and the ingress gossip table and applied only
//! when it differs from what was last applied; `vxlan::ingress` itself writes nothing when the
//! kernel already matches (an agent restart changes nothing).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use model::service::{Protocol, PublishMode};
use vxlan::ingress::{HostPort, Ingress, IngressState, MeshPort, Proto, Sbox, TaskReturn};

use crate::networks::sbox_netns_name;
use crate::node::{Error, Executor};
use crate::plan::{self, LocalTask};

/// The sbox's interface on docker_gwbridge (its overlay ones are the load-balancer endpoints).
const SBOX_GW_IF: &str = vxlan::ingress::SBOX_GW_IF;

/// What the mesh was last given on this node.
#[derive(Debug, Default)]
pub(crate) struct IngressRt {
    applied: Option<IngressState>,
    /// Return paths made, per task.
    returns: BTreeMap<String, TaskReturn>,
    /// The ingress networks' specs the local endpoints were last made for.
    specs: BTreeMap<String, vxlan::Network>,
}

fn proto(p: Protocol) -> Proto {
    match p {
        Protocol::Tcp => Proto::Tcp,
        Protocol::Udp => Proto::Udp,
    }
}

/// The sbox's address on docker_gwbridge: the subnet's last host (task addresses are handed
/// out from the bottom).
fn sbox_gw_addr(gw: &vxlan::GwBridge) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(gw.subnet.broadcast()).saturating_sub(1))
}

impl Executor {
    /// The ingress networks this node has its address on (its ingress-sbox's): the current
    /// one, and while `ingress recreate --subnet` moves tasks also the one being retired.
    pub(crate) fn ingress_nets(&self) -> Vec<String> {
        self.a
            .networks
            .iter()
            .filter(|n| n.spec.ingress)
            .filter(|n| self.a.attachments.iter().any(|a| a.network_id == n.meta.id))
            .map(|n| n.meta.id.clone())
            .collect()
    }

    /// The sbox's endpoint on docker_gwbridge (part of the desired plane of a full pass).
    pub(crate) fn sbox_gateway_endpoint(
        &self,
        gw: &vxlan::GwBridge,
    ) -> Option<vxlan::GatewayEndpoint> {
        let lb = self.ingress_nets().iter().find_map(|id| self.lb_want(id))?;
        Some(vxlan::GatewayEndpoint {
            netns: lb.netns,
            ifname: SBOX_GW_IF.into(),
            address: sbox_gw_addr(gw),
            mac: None,
            default_route: true,
        })
    }

    /// Adds the ingress-sbox to a full pass's desired plane: its endpoint on docker_gwbridge, and
    /// each ingress network without local tasks here with the sbox's endpoint and peers (the
    /// planner only lists networks of local tasks).
    pub(crate) fn sbox_in_plane(&self, desired: &mut vxlan::DesiredState, gw: &vxlan::GwBridge) {
        let Some(ep) = self.sbox_gateway_endpoint(gw) else {
            return;
        };
        desired.gateway_endpoints.push(ep);
        desired.gwbridge = Some(gw.clone());
        for id in self.ingress_nets() {
            if desired.networks.iter().any(|n| n.network.id == id) {
                continue;
            }
            let (Some(network), Some(lb), Some(n)) = (
                self.a
                    .networks
                    .iter()
                    .find(|n| n.meta.id == id)
                    .and_then(plan::network),
                self.lb_want(&id),
                self.nets.get(&id),
            ) else {
                continue;
            };
            let peers = crate::networks::peers_of(&self.config.node_id, n, &self.gossip.vteps());
            desired.networks.push(vxlan::NetworkState {
                network,
                endpoints: vec![vxlan::Endpoint {
                    network: id.clone(),
                    netns: lb.netns,
                    ifname: lb.ifname,
                    address: lb.addr,
                    mac: None,
                }],
                peers,
            });
        }
    }

    /// Every node's ingress-sbox address on an ingress network, as its gossip table lists them.
    fn sbox_addrs(&self, ingress: &str) -> Vec<Ipv4Addr> {
        let mut out: BTreeSet<Ipv4Addr> = BTreeSet::new();
        if let Some(n) = self.nets.get(ingress) {
            for e in n.entries.values() {
                if let (true, IpAddr::V4(ip)) = (e.endpoint.task.is_empty(), e.endpoint.ip) {
                    out.insert(ip);
                }
            }
        }
        if let Some(lb) = self.lb_want(ingress) {
            out.insert(lb.addr);
        }
        out.into_iter().collect()
    }

    /// The desired mesh of this node. The sbox balances over the service's tasks on every
    /// ingress network it is on (both while tasks move off a retired one).
    fn ingress_desired(&self) -> IngressState {
        let mut state = IngressState::default();
        let sboxed: Vec<String> = self
            .ingress_nets()
            .into_iter()
            .filter(|id| self.nets.get(id).is_some_and(|n| n.lb.is_some()))
            .collect();
        if let (false, Some(gw)) = (sboxed.is_empty(), self.gw.as_ref()) {
            let mut ports = Vec::new();
            for s in &self.a.services {
                for p in s.ports.iter().filter(|p| p.mode == PublishMode::Ingress) {
                    let mut backends: Vec<Ipv4Addr> = sboxed
                        .iter()
                        .filter_map(|id| self.nets.get(id))
                        .flat_map(|n| n.entries.values())
                        .filter(|e| e.endpoint.service == s.meta.id && !e.endpoint.disabled)
                        .filter_map(|e| match e.endpoint.ip {
                            IpAddr::V4(ip) => Some(ip),
                            IpAddr::V6(_) => None,
                        })
                        .collect();
                    backends.sort();
                    ports.push(MeshPort {
                        proto: proto(p.protocol),
                        published: p.published,
                        target: p.target,
                        backends,
                    });
                }
            }
            if !ports.is_empty() {
                state.sbox = Some(Sbox {
                    gw_addr: sbox_gw_addr(gw),
                    ports,
                    snat: self.config.ingress_snat,
                });
            }
        }
        // Host mode: local running tasks, straight to their gateway address.
        for t in &self.a.tasks {
            if !crate::node::wants_running(t) {
                continue;
            }
            let Some(gateway) = self
                .tasks
                .get(&t.meta.id)
                .and_then(|r| r.local.as_ref())
                .and_then(|l| l.gateway)
            else {
                continue;
            };
            let Some(s) = self.a.services.iter().find(|s| s.meta.id == t.service_id) else {
                continue;
            };
            for p in s.ports.iter().filter(|p| p.mode == PublishMode::Host) {
                state.host_ports.push(HostPort {
                    proto: proto(p.protocol),
                    published: p.published,
                    target: p.target,
                    task: gateway,
                });
            }
        }
        state.host_ports.sort();
        state.host_ports.dedup_by_key(|p| (p.proto, p.published));
        state
    }

    /// Why a task cannot start here: a host-mode port another local task of this node already
    /// publishes (docker: the second task stays pending).
    pub(crate) fn host_port_conflict(&self, t: &model::Task) -> Option<String> {
        let s = self.a.services.iter().find(|s| s.meta.id == t.service_id)?;
        let mine: Vec<(Protocol, u16)> = s
            .ports
            .iter()
            .filter(|p| p.mode == PublishMode::Host)
            .map(|p| (p.protocol, p.published))
            .collect();
        if mine.is_empty() {
            return None;
        }
        for other in &self.a.tasks {
            if other.meta.id == t.meta.id
                || !crate::node::wants_running(other)
                || !self
                    .tasks
                    .get(&other.meta.id)
                    .is_some_and(|r| r.proc.is_live())
            {
                continue;
            }
            let Some(os) = self
                .a
                .services
                .iter()
                .find(|s| s.meta.id == other.service_id)
            else {
                continue;
            };
            for p in os.ports.iter().filter(|p| p.mode == PublishMode::Host) {
                if mine.contains(&(p.protocol, p.published)) {
                    let proto = match p.protocol {
                        Protocol::Tcp => "tcp",
                        Protocol::Udp => "udp",
                    };
                    return Some(format!(
                        "host-mode port {}/{proto} is already in use on this node by task {}: no suitable node (host-mode port already in use)",
                        p.published, other.meta.id
                    ));
                }
            }
        }
        None
    }

    /// Whether a task started here is to keep its endpoint on ingress disabled a while longer:
    /// its return path does not list every node's sbox yet. The sboxes and the tasks appear
    /// together after `ingress recreate --subnet` (or a first published port); an sbox that
    /// balances a connection to the task before the task has a way back to it loses the
    /// client's SYN (answered through the wrong node), and the client waits a second to send
    /// it again. Held until the table lists an sbox for every node not down, for at most
    /// `Config::return_hold`, and never again once enabled.
    pub(crate) fn return_path_pending(&mut self, l: &LocalTask) -> bool {
        let Some(net) = l
            .attachments
            .iter()
            .map(|(n, _)| n.clone())
            .find(|n| self.is_ingress(n))
        else {
            return false;
        };
        let Some(rt) = self.tasks.get(&l.id) else {
            return false;
        };
        if !rt.started_here || rt.published.get(&net) == Some(&true) {
            return false;
        }
        let owners: BTreeSet<&str> = self
            .nets
            .get(&net)
            .map(|n| {
                n.entries
                    .values()
                    .filter(|e| e.endpoint.task.is_empty())
                    .map(|e| e.owner.as_str())
                    .collect()
            })
            .unwrap_or_default();
        let every = self
            .a
            .nodes
            .iter()
            .filter(|(_, down)| !down)
            .all(|(id, _)| *id == self.config.node_id || owners.contains(id.as_str()));
        let made =
            self.ingress.returns.get(&l.id).map(|r| &r.sboxes) == Some(&self.sbox_addrs(&net));
        let since = rt.held_since;
        let Some(rt) = self.tasks.get_mut(&l.id) else {
            return false;
        };
        if every && made {
            rt.held_since = None;
            return false;
        }
        match since {
            None => {
                rt.held_since = Some(std::time::Instant::now());
                tracing::debug!(task = %l.id, "endpoint on ingress held until its return path lists every sbox");
                self.look_again(&l.id, self.config.return_hold);
                true
            }
            Some(t) => t.elapsed() < self.config.return_hold,
        }
    }

    /// Tasks whose endpoint on ingress is held: looked at again (published, reported running)
    /// once their return path is complete (after the sboxes changed).
    fn release_held(&mut self) {
        let held: Vec<LocalTask> = self
            .tasks
            .values()
            .filter(|r| r.held_since.is_some() && r.proc.is_live() && !r.stopping)
            .filter_map(|r| r.local.clone())
            .collect();
        for l in held {
            if !self.return_path_pending(&l) {
                self.look_again(&l.id, std::time::Duration::ZERO);
            }
        }
    }

    /// Makes a local task's return path through the sboxes (before it serves: called when its
    /// endpoints are made, and when the sboxes change).
    pub(crate) async fn ensure_task_return(&mut self, l: &LocalTask) -> Result<(), Error> {
        let Some((i, ingress)) = l
            .attachments
            .iter()
            .enumerate()
            .find(|(_, (n, _))| self.is_ingress(n))
            .map(|(i, (n, _))| (i, n.clone()))
        else {
            return Ok(());
        };
        let want = TaskReturn {
            netns: l.netns.clone(),
            ifname: plan::ifname(i),
            sboxes: self.sbox_addrs(&ingress),
        };
        if self.ingress.returns.get(&l.id) == Some(&want) {
            return Ok(());
        }
        let node = self.config.node_netns.clone();
        let w = want.clone();
        let writes = tokio::task::spawn_blocking(move || -> Result<u64, Error> {
            let ns = crate::plane::node_netns(node.as_ref())
                .map_err(|e| Error::Dataplane(e.to_string()))?;
            let mut m = Ingress::new(ns, "");
            m.ensure_task_return(&w)
                .map_err(|e| Error::Dataplane(format!("ingress return path: {e}")))?;
            Ok(m.writes())
        })
        .await
        .map_err(|e| Error::Dataplane(e.to_string()))??;
        self.writes
            .fetch_add(writes, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(task = %l.id, writes, sboxes = ?want.sboxes, "ingress return path");
        self.ingress.returns.insert(l.id.clone(), want);
        Ok(())
    }

    /// An ingress network changed in place (`ingress recreate --mtu`): its local endpoints (the
    /// sbox's, the tasks') get the new values on their live interfaces; nothing restarts.
    async fn refresh_ingress_endpoints(&mut self) -> Result<(), Error> {
        let nets = self.ingress_nets();
        self.ingress.specs.retain(|id, _| nets.contains(id));
        for id in nets {
            let Some(spec) = self.network_spec(&id) else {
                continue;
            };
            let Some(before) = self.ingress.specs.insert(id.clone(), spec.clone()) else {
                continue;
            };
            if before == spec {
                continue;
            }
            let mut eps = Vec::new();
            if let Some(lb) = self.nets.get(&id).and_then(|n| n.lb.clone()) {
                eps.push(vxlan::Endpoint {
                    network: id.clone(),
                    netns: lb.netns,
                    ifname: lb.ifname,
                    address: lb.addr,
                    mac: None,
                });
            }
            for l in self.tasks.values().filter(|r| r.endpoints_ok) {
                let Some(l) = &l.local else { continue };
                if let Some(i) = l.attachments.iter().position(|(n, _)| *n == id) {
                    eps.push(vxlan::Endpoint {
                        network: id.clone(),
                        netns: l.netns.clone(),
                        ifname: plan::ifname(i),
                        address: l.attachments[i].1,
                        mac: None,
                    });
                }
            }
            let port = self.a.data_path_port;
            self.plane
                .call(port, move |dp| {
                    for ep in &eps {
                        dp.ensure_endpoint(ep)?;
                    }
                    Ok(())
                })
                .await?;
        }
        Ok(())
    }

    /// Brings the mesh of this node to the desired state (when it changed).
    pub(crate) async fn sync_ingress(&mut self) -> Result<(), Error> {
        self.refresh_ingress_endpoints().await?;
        self.ingress
            .returns
            .retain(|id, _| self.tasks.contains_key(id));
        let desired = self.ingress_desired();
        // Return paths exist only on the ingress network: without it (most changes of a
        // swarm that publishes nothing) this walks no task.
        if self.a.networks.iter().any(|n| n.spec.ingress) {
            let locals: Vec<LocalTask> = self
                .tasks
                .values()
                .filter(|r| r.endpoints_ok)
                .filter_map(|r| r.local.clone())
                .collect();
            for l in &locals {
                self.ensure_task_return(l).await?;
            }
            self.release_held();
        }
        if self.ingress.applied.as_ref() == Some(&desired) {
            return Ok(());
        }
        if desired.sbox.is_some()
            && let (Some(gw), Some(ep)) = (
                self.gw.clone(),
                self.gw.as_ref().and_then(|g| self.sbox_gateway_endpoint(g)),
            )
        {
            // A node without tasks has no gateway bridge yet: the sbox needs it.
            let port = self.a.data_path_port;
            self.plane
                .call(port, move |dp| {
                    dp.ensure_gwbridge(&gw)?;
                    dp.ensure_gateway_endpoint(&ep)
                })
                .await?;
        }
        let node = self.config.node_netns.clone();
        let sbox = sbox_netns_name(&self.config.netns_prefix);
        let d = desired.clone();
        let shortcut = self.config.mesh_bpf_dir.clone().map(|dir| {
            let on = self.config.fast_path && vxlan::fast_path_status(true).is_active();
            (dir, on)
        });
        let writes = tokio::task::spawn_blocking(move || -> Result<u64, Error> {
            let ns = crate::plane::node_netns(node.as_ref())
                .map_err(|e| Error::Dataplane(e.to_string()))?;
            let mut m = Ingress::with_sbox(ns, sbox);
            if let Some((dir, on)) = shortcut {
                m = m.with_shortcut(dir, on);
            }
            if d.sbox.is_some() {
                m.ensure_sbox_ns()
                    .map_err(|e| Error::Dataplane(format!("ingress-sbox: {e}")))?;
            }
            m.apply(&d)
                .map_err(|e| Error::Dataplane(format!("ingress: {e}")))?;
            Ok(m.writes())
        })
        .await
        .map_err(|e| Error::Dataplane(e.to_string()))??;
        self.writes
            .fetch_add(writes, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            ports = desired.sbox.as_ref().map_or(0, |s| s.ports.len()),
            backends = desired.sbox.as_ref().map_or(0, |s| s
                .ports
                .iter()
                .map(|p| p.backends.len())
                .sum::<usize>()),
            host_ports = desired.host_ports.len(),
            writes,
            "ingress routing mesh applied"
        );
        self.ingress.applied = Some(desired);
        Ok(())
    }

    /// An address of the node came or went (`node_addrs`): the mesh is applied again even
    /// though its desired state is unchanged, when it has an sbox and so maybe a shortcut,
    /// whose port map is keyed by the node's addresses.
    pub(crate) async fn on_node_addresses(&mut self) {
        if self
            .ingress
            .applied
            .as_ref()
            .is_none_or(|a| a.sbox.is_none())
        {
            return;
        }
        tracing::debug!("node addresses changed: the routing mesh is applied again");
        self.ingress.applied = None;
        self.sync_ingress_or_retry().await;
    }

    /// [`Executor::sync_ingress`], a failure retried by a full pass.
    pub(crate) async fn sync_ingress_or_retry(&mut self) {
        if let Err(e) = self.sync_ingress().await {
            self.retry_later("the ingress routing mesh", &e);
        }
    }
}
