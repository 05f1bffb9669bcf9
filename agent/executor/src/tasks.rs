//! A task's life on this node, handled one task at a time: namespace and addresses, endpoints,
//! start, the watch on its shim, stop, status reports, its gossip entries, and removal.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr};

use model::Task;
use model::task::TaskState;
use tracing::{debug, warn};
use vxlan::{GatewayEndpoint, GwBridge, Ipv4Net};

use crate::node::{Config, Error, Ev, Executor, io, task_name, wants_running};
use crate::plan::{self, LocalTask};
use crate::runner::ProcState;

/// What the executor knows of one task that has (or may have) a directory on this node.
#[derive(Debug, Clone)]
pub(crate) struct TaskRt {
    /// Its process, as last looked at.
    pub proc: ProcState,
    /// Namespace and addresses, once prepared.
    pub local: Option<LocalTask>,
    /// Whether its endpoints (overlay and gateway) are known to match the kernel.
    pub endpoints_ok: bool,
    /// Networks its gossip entries are published on, and whether enabled (running) there.
    pub published: BTreeMap<String, bool>,
    /// A stop is under way in the background.
    pub stopping: bool,
    /// A watch on its shim is under way.
    pub watching: bool,
    /// This executor started its process (not one adopted after a restart).
    pub started_here: bool,
    /// Since when its endpoint on an ingress network is held disabled while its return path
    /// does not list every node's sbox yet ([`Executor::return_path_pending`]).
    pub held_since: Option<std::time::Instant>,
}

impl Default for TaskRt {
    fn default() -> Self {
        TaskRt {
            proc: ProcState::NotStarted,
            local: None,
            endpoints_ok: false,
            published: BTreeMap::new(),
            stopping: false,
            watching: false,
            started_here: false,
            held_since: None,
        }
    }
}

/// The file in a task's directory that keeps its address on the gateway bridge.
const GATEWAY: &str = "gateway";

/// A task's saved gateway-bridge address, if it has one.
fn read_gateway(dir: &std::path::Path) -> Option<Ipv4Addr> {
    fs::read_to_string(dir.join(GATEWAY))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn ipv4_of(addr: &model::ipnet::IpNet) -> Option<Ipv4Addr> {
    match addr.addr() {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// The gateway bridge: its subnet is chosen once (from the local pools, 172.17.0.0/16 left to
/// docker0) and kept in the state directory.
pub(crate) fn gwbridge(config: &Config) -> Result<GwBridge, Error> {
    let path = config.state_dir.join("gwbridge.json");
    if let Ok(text) = fs::read_to_string(&path)
        && let Ok(gw) = serde_json::from_str::<GwBridge>(&text)
    {
        return Ok(gw);
    }
    let mut pools = ipam::Subnets::local();
    let avoid = ["172.17.0.0/16".parse().expect("a CIDR")];
    let info = pools.allocate_avoiding(&avoid)?;
    let subnet: Ipv4Net = match info.subnet {
        ipam::ipnet::IpNet::V4(n) => n,
        ipam::ipnet::IpNet::V6(_) => unreachable!("the local pools are IPv4"),
    };
    let mut gw = GwBridge::new(subnet);
    gw.name = config.gwbridge.clone();
    fs::create_dir_all(&config.state_dir).map_err(io("create the state directory"))?;
    crate::shim::write_atomic(
        &config.state_dir,
        "gwbridge.json",
        &serde_json::to_string(&gw).expect("serializes"),
    )
    .map_err(io("save the gateway bridge's subnet"))?;
    Ok(gw)
}

/// The environment of a task: what it needs to know about itself, as docker's templates give.
fn task_env(t: &Task, services: &[model::Service], node: &str) -> Vec<String> {
    let mut env = t.spec.env.clone();
    let svc = services
        .iter()
        .find(|s| s.meta.id == t.service_id)
        .map(|s| s.spec.name.clone())
        .unwrap_or_default();
    env.push(format!("NETAGENT_TASK_ID={}", t.meta.id));
    env.push(format!("NETAGENT_TASK_NAME={}", task_name(t, services)));
    env.push(format!("NETAGENT_TASK_SLOT={}", t.slot));
    env.push(format!("NETAGENT_SERVICE_NAME={svc}"));
    env.push(format!("NETAGENT_NODE_ID={node}"));
    env
}

impl Executor {
    /// The task's namespace (created or adopted), its gateway address and its overlay
    /// addresses on the networks this node knows.
    pub(crate) async fn prepare(&mut self, t: &Task) -> Result<LocalTask, Error> {
        if let Some(l) = self.tasks.get(&t.meta.id).and_then(|r| r.local.clone()) {
            return Ok(l);
        }
        let id = t.meta.id.clone();
        let ns = self
            .blocking(move |r| r.namespace(&id).map(|ns| ns.path().to_path_buf()))
            .await?;
        let known: BTreeMap<&str, &model::Network> = self
            .a
            .networks
            .iter()
            .map(|n| (n.meta.id.as_str(), n))
            .collect();
        let attachments: Vec<(String, Ipv4Addr)> = t
            .networks
            .iter()
            .filter(|n| {
                known
                    .get(n.network_id.as_str())
                    .is_some_and(|k| plan::network(k).is_some())
            })
            .filter_map(|n| Some((n.network_id.clone(), ipv4_of(n.addresses.first()?)?)))
            .collect();
        let all_internal = !t.networks.is_empty()
            && t.networks.iter().all(|n| {
                known
                    .get(n.network_id.as_str())
                    .is_some_and(|k| k.spec.internal)
            });
        let gateway = if all_internal {
            None
        } else {
            let gw = match &self.gw {
                Some(g) => g.clone(),
                None => crate::tasks::gwbridge(&self.config)?,
            };
            Some(self.gateway_addr(&t.meta.id, &gw).await?)
        };
        let l = LocalTask {
            id: t.meta.id.clone(),
            netns: ns,
            attachments,
            gateway,
        };
        self.tasks.entry(t.meta.id.clone()).or_default().local = Some(l.clone());
        Ok(l)
    }

    /// Looks at one task and moves it along: what the dispatcher wants of it against what its
    /// process does. Failures schedule a full pass.
    pub(crate) async fn reconcile_task(&mut self, id: &str) {
        if let Err(e) = self.reconcile_task_inner(id).await {
            self.retry_later(&format!("task {id}"), &e);
        }
    }

    async fn reconcile_task_inner(&mut self, id: &str) -> Result<(), Error> {
        let want = self.a.tasks.iter().find(|t| t.meta.id == id).cloned();
        let Some(t) = want else {
            return self.retire(id).await;
        };
        if !wants_running(&t) {
            let Some(rt) = self.tasks.get(id).cloned() else {
                // Nothing of it here (removed already, or never started).
                if !t.status.state.is_terminal() {
                    self.report(&t, TaskState::Shutdown, "shutdown", None, None)
                        .await;
                }
                return Ok(());
            };
            // A task that served (a backend, a name) leaves the load balancers and names
            // first, and is stopped only once the other nodes have heard (docker waits 2 s
            // too): connections balanced to it meanwhile are still answered.
            let served = rt.published.values().any(|&on| on);
            self.publish_task(&t, false).await;
            if rt.proc.is_live() {
                let drain = if served {
                    self.config.drain
                } else {
                    std::time::Duration::ZERO
                };
                self.stop(id, drain);
            } else if rt.stopping {
            } else if !t.status.state.is_terminal() {
                self.report(&t, TaskState::Shutdown, "shutdown", None, None)
                    .await;
            } else {
                // Stopped for good and recorded: it stays in the store as history, its
                // namespace and everything else go.
                return self.retire(id).await;
            }
            return Ok(());
        }
        let rt = self.tasks.entry(id.to_string()).or_default().clone();
        match rt.proc {
            ProcState::Exited { code } => {
                self.publish_task(&t, false).await;
                if code == 0 {
                    self.report(&t, TaskState::Complete, "finished", None, Some(0))
                        .await;
                } else {
                    let err = format!("task: non-zero exit ({code})");
                    self.report(&t, TaskState::Failed, "failed", Some(err), Some(code))
                        .await;
                }
                return Ok(());
            }
            ProcState::NotStarted if t.spec.argv().is_empty() => {
                let err = Some("the task has no command".to_string());
                self.report(&t, TaskState::Rejected, "rejected", err, None)
                    .await;
                return Ok(());
            }
            _ => {}
        }
        if let Some(why) = self.encryption_blocker(&t) {
            self.report(&t, TaskState::Rejected, "rejected", Some(why), None)
                .await;
            return Ok(());
        }
        if rt.proc == ProcState::NotStarted
            && let Some(why) = self.host_port_conflict(&t)
        {
            self.report(&t, TaskState::Pending, "pending", Some(why), None)
                .await;
            return Ok(());
        }
        let step = std::time::Instant::now();
        let local = self.prepare(&t).await?;
        let prepared = step.elapsed().as_micros();
        if !rt.endpoints_ok {
            if let Err(e) = self.ensure_endpoints(&local).await {
                if let Error::NetworkFull(why) = e {
                    // Trying again changes nothing: the task is refused, and the
                    // orchestrator places its replacement.
                    self.report(&t, TaskState::Rejected, "rejected", Some(why), None)
                        .await;
                    return Ok(());
                }
                self.encrypted_setup_failed(&t, &e).await;
                return Err(e);
            }
            if let Some(r) = self.tasks.get_mut(id) {
                r.endpoints_ok = true;
            }
        }
        let endpoints = step.elapsed().as_micros();
        self.ensure_task_return(&local).await?;
        let return_path = step.elapsed().as_micros();
        let mut proc = rt.proc;
        let parked = self.ensure_listener(id, &local, proc).await?;
        let listener = step.elapsed().as_micros();
        if proc == ProcState::NotStarted {
            self.report(&t, TaskState::Preparing, "preparing", None, None)
                .await;
            let env = task_env(&t, &self.a.services, &self.config.node_id);
            let argv = t.spec.argv();
            let idc = id.to_string();
            match self
                .blocking(move |r| {
                    use std::os::fd::AsFd;
                    let fds: Vec<std::os::fd::BorrowedFd<'_>> =
                        parked.iter().map(|f| f.as_fd()).collect();
                    r.start_with(&idc, &argv, &env, &fds)
                        .map(|()| r.wait_started(&idc))
                })
                .await
            {
                Ok(st) => {
                    proc = st;
                    self.report(&t, TaskState::Starting, "starting", None, None)
                        .await;
                }
                Err(e) => {
                    let err = Some(e.to_string());
                    self.report(&t, TaskState::Rejected, "rejected", err, None)
                        .await;
                    return Ok(());
                }
            }
            if let Some(r) = self.tasks.get_mut(id) {
                r.proc = proc;
                r.started_here = true;
            }
            // Where a task start's time goes (µs since the start of `prepare`, cumulative).
            let started = step.elapsed().as_micros();
            debug!(task = %id, prepared, endpoints, return_path, listener, started, "task start steps");
        }
        self.watch(id);
        match proc {
            ProcState::Running { .. } => {
                self.publish_task(&t, true).await;
                // Held off the routing mesh a moment (see `return_path_pending`): not running
                // for the orchestrator yet either, so a rolling update waits for it.
                if self.tasks.get(id).is_some_and(|r| r.held_since.is_some()) {
                    return Ok(());
                }
                self.report(&t, TaskState::Running, "started", None, None)
                    .await;
            }
            ProcState::Exiting => {
                // The command is gone, its shim is recording the exit: no longer a backend or
                // a name, at once (the shim's exit brings the final state).
                self.publish_task(&t, false).await;
                self.report(&t, TaskState::Running, "started", None, None)
                    .await;
            }
            ProcState::Exited { .. } => {
                // It ended while starting: the watch's event reports it.
                let _ = self.tx.send(Ev::Look(id.to_string()));
            }
            _ => {
                self.report(&t, TaskState::Preparing, "preparing", None, None)
                    .await;
                self.publish_task(&t, false).await;
            }
        }
        Ok(())
    }

    /// The task's DNS listener at 127.0.0.11:53 in its namespace, scoped to its networks: taken
    /// back from the task's shim after an agent restart (the sockets never closed, queries sent
    /// meanwhile are waiting in them), or bound now. Returns duplicates of freshly bound
    /// sockets for the shim to keep, if the task is yet to start.
    async fn ensure_listener(
        &mut self,
        id: &str,
        local: &LocalTask,
        proc: ProcState,
    ) -> Result<Vec<std::os::fd::OwnedFd>, Error> {
        let scope: Vec<String> = local.attachments.iter().map(|(n, _)| n.clone()).collect();
        if let Some(l) = self.listeners.get(id) {
            if l.scope() != scope {
                l.set_scope(scope);
            }
            return Ok(Vec::new());
        }
        let Some(resolver) = self.disc.resolver().cloned() else {
            return Ok(Vec::new());
        };
        let idc = id.to_string();
        let adopted = if proc.is_live() {
            self.blocking(move |r| r.parked(&idc)).await
        } else {
            None
        };
        let (udp, tcp, fresh) = match adopted {
            Some(mut fds) if fds.len() == 2 => {
                let tcp = std::net::TcpListener::from(fds.pop().expect("two"));
                let udp = std::net::UdpSocket::from(fds.pop().expect("two"));
                (udp, tcp, false)
            }
            _ => {
                let path = local.netns.clone();
                let (udp, tcp) = tokio::task::spawn_blocking(move || {
                    let ns = netns::NetNs::open_path("task", &path)
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    dns::bind_in(&ns)
                })
                .await
                .map_err(|e| Error::Dataplane(e.to_string()))?
                .map_err(io("bind the task's DNS listener"))?;
                (udp, tcp, true)
            }
        };
        let mut parked = Vec::new();
        if fresh && proc == ProcState::NotStarted {
            parked.push(
                udp.try_clone()
                    .map_err(io("duplicate the DNS socket"))?
                    .into(),
            );
            parked.push(
                tcp.try_clone()
                    .map_err(io("duplicate the DNS socket"))?
                    .into(),
            );
        }
        let listener = resolver
            .serve(udp, tcp, scope)
            .map_err(io("serve the task's DNS listener"))?;
        debug!(task = %id, adopted = !fresh, "DNS listener");
        self.listeners.insert(id.to_string(), listener);
        Ok(parked)
    }

    /// The task's overlay endpoints and gateway endpoint, with the networks they need.
    async fn ensure_endpoints(&mut self, l: &LocalTask) -> Result<(), Error> {
        for (net, _) in &l.attachments {
            self.ensure_network(net).await?;
        }
        let port = self.a.data_path_port;
        let eps: Vec<vxlan::Endpoint> = l
            .attachments
            .iter()
            .enumerate()
            .map(|(i, (net, addr))| vxlan::Endpoint {
                network: net.clone(),
                netns: l.netns.clone(),
                ifname: plan::ifname(i),
                address: *addr,
                mac: None,
            })
            .collect();
        let gw_ep = match (l.gateway, &self.gw) {
            (Some(addr), Some(gw)) => {
                let internal_only = !l.attachments.is_empty()
                    && l.attachments
                        .iter()
                        .all(|(n, _)| self.nets.get(n).is_some_and(|r| r.spec.internal));
                Some((
                    gw.clone(),
                    GatewayEndpoint {
                        netns: l.netns.clone(),
                        ifname: plan::ifname(l.attachments.len()),
                        address: addr,
                        mac: None,
                        default_route: !internal_only,
                    },
                ))
            }
            _ => None,
        };
        self.plane
            .call(port, move |dp| {
                for ep in &eps {
                    dp.ensure_endpoint(ep)?;
                }
                if let Some((gw, ep)) = &gw_ep {
                    dp.ensure_gwbridge(gw)?;
                    dp.ensure_gateway_endpoint(ep)?;
                }
                Ok(())
            })
            .await
    }

    /// A task no longer assigned: stopped if it runs, then everything of it removed.
    async fn retire(&mut self, id: &str) -> Result<(), Error> {
        let Some(rt) = self.tasks.get(id).cloned() else {
            return Ok(());
        };
        if rt.stopping {
            return Ok(());
        }
        if rt.proc.is_live() {
            self.stop(id, std::time::Duration::ZERO);
            return Ok(());
        }
        for net in rt.published.keys() {
            if let Err(e) = self.gossip.withdraw_endpoint(net, id).await {
                warn!(task = %id, error = %e, "could not withdraw an endpoint");
            }
        }
        if let Some(l) = &rt.local {
            let port = self.a.data_path_port;
            let l2 = l.clone();
            self.plane
                .call(port, move |dp| {
                    for (i, (net, _)) in l2.attachments.iter().enumerate() {
                        dp.remove_endpoint(net, &l2.netns, &plan::ifname(i))?;
                    }
                    if l2.gateway.is_some() {
                        dp.remove_gateway_endpoint(&l2.netns, &plan::ifname(l2.attachments.len()))?;
                    }
                    Ok(())
                })
                .await?;
        }
        self.listeners.remove(id);
        let idc = id.to_string();
        self.blocking(move |r| r.remove(&idc)).await?;
        if let (Some(used), Some(addr)) =
            (&mut self.gw_used, rt.local.as_ref().and_then(|l| l.gateway))
        {
            used.remove(&addr);
        }
        self.tasks.remove(id);
        self.forget_reported(id);
        debug!(task = %id, "task removed");
        if let Some(l) = rt.local {
            for (net, _) in l.attachments {
                self.reconcile_network(&net).await;
            }
        }
        Ok(())
    }

    /// Stops a task in the background after `drain`; an [`Ev::Stopped`] follows.
    fn stop(&mut self, id: &str, drain: std::time::Duration) {
        let Some(rt) = self.tasks.get_mut(id) else {
            return;
        };
        if rt.stopping {
            return;
        }
        rt.stopping = true;
        let runner = self.runner.clone();
        let tx = self.tx.clone();
        let (idc, grace) = (id.to_string(), self.config.stop_grace);
        tokio::spawn(async move {
            tokio::time::sleep(drain).await;
            let joined = tokio::task::spawn_blocking(move || {
                let code = runner.stop(&idc, grace);
                let _ = tx.send(Ev::Stopped(idc, code));
            })
            .await;
            if let Err(e) = joined {
                warn!(error = %e, "stopping a task failed");
            }
        });
    }

    /// Watches the task's command and its shim: the first to exit sends an [`Ev::Look`]. The
    /// command's exit is seen at once, so its endpoints leave the load balancers and names
    /// before the shim has recorded the exit code; the next watch then waits for the shim.
    fn watch(&mut self, id: &str) {
        let Some(rt) = self.tasks.get_mut(id) else {
            return;
        };
        if rt.watching || !rt.proc.is_live() {
            return;
        }
        if rt.proc == ProcState::Starting {
            // The shim has not started the command yet (a slow machine: the start outlasted
            // `wait_started`). Its exit alone would leave the task "starting" for good: look
            // again in a moment, until the command runs or the start has failed.
            self.look_again(id, std::time::Duration::from_millis(200));
            return;
        }
        let Some(fd) = self.runner.pidfd(id) else {
            // No shim to watch (it ended between the look and now, or is still being set up):
            // look again in a moment.
            self.look_again(id, std::time::Duration::from_millis(100));
            return;
        };
        let command = match rt.proc {
            ProcState::Running { .. } => self.runner.command_pidfd(id),
            _ => None,
        };
        rt.watching = true;
        debug!(task = %id, command = command.is_some(), "watching the task");
        let tx = self.tx.clone();
        let idc = id.to_string();
        tokio::spawn(async move {
            let shim = exited(fd);
            let what = match command {
                Some(cmd) => tokio::select! {
                    r = shim => r.map(|()| "shim"),
                    r = exited(cmd) => r.map(|()| "command"),
                },
                None => shim.await.map(|()| "shim"),
            };
            match what {
                Ok(what) => debug!(task = %idc, what, "exited"),
                Err(e) => {
                    let e = e.to_string();
                    warn!(task = %idc, error = %e, "cannot watch the task's shim; looking again in a second");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
            let _ = tx.send(Ev::Look(idc));
        });
    }

    /// Has the task's process state read and the task reconciled again after `after`.
    pub(crate) fn look_again(&self, id: &str, after: std::time::Duration) {
        let tx = self.tx.clone();
        let idc = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(Ev::Look(idc));
        });
    }

    /// Publishes the task's endpoints on its networks (enabled while it runs: a disabled entry
    /// is still a peer, but no name or backend).
    pub(crate) async fn publish_task(&mut self, t: &Task, enabled: bool) {
        let Some(rt) = self.tasks.get(&t.meta.id) else {
            return;
        };
        let Some(l) = rt.local.clone() else { return };
        let published = rt.published.clone();
        let held = enabled && self.return_path_pending(&l);
        let service = self.a.services.iter().find(|s| s.meta.id == t.service_id);
        let name = task_name(t, &self.a.services);
        for (net, ip) in &l.attachments {
            let enabled = enabled && !(held && self.is_ingress(net));
            if published.get(net) == Some(&enabled) {
                continue;
            }
            let aliases: Vec<String> = service
                .map(|s| s.spec.name.clone())
                .into_iter()
                .chain(
                    t.networks
                        .iter()
                        .filter(|n| &n.network_id == net)
                        .flat_map(|n| n.aliases.clone()),
                )
                .collect();
            let ep = gossip::Endpoint {
                id: l.id.clone(),
                network: net.clone(),
                ip: IpAddr::V4(*ip),
                mac: vxlan::Mac::for_ip(*ip).0,
                task: l.id.clone(),
                service: t.service_id.clone(),
                name: name.clone(),
                aliases,
                disabled: !enabled,
            };
            match self.gossip.publish_endpoint(ep).await {
                Ok(()) => {
                    debug!(task = %l.id, network = %net, enabled, "endpoint published");
                    if let Some(r) = self.tasks.get_mut(&t.meta.id) {
                        r.published.insert(net.clone(), enabled);
                    }
                }
                Err(e) => warn!(task = %l.id, error = %e, "could not publish an endpoint"),
            }
        }
        if enabled
            && !held
            && let Some(r) = self.tasks.get_mut(&t.meta.id)
        {
            r.held_since = None;
        }
    }

    /// A task's address on the gateway bridge, kept in its directory so it never changes. The
    /// addresses in use are read from the task directories once; after that an allocation
    /// costs the same however many tasks the node runs (it read every task's file each time).
    async fn gateway_addr(&mut self, task: &str, gw: &GwBridge) -> Result<Ipv4Addr, Error> {
        let id = task.to_string();
        let load = self.gw_used.is_none();
        let (own, all) = self
            .blocking(move |r| {
                let all = load.then(|| {
                    r.list()
                        .iter()
                        .filter_map(|t| read_gateway(&r.dir(t)))
                        .collect::<BTreeSet<Ipv4Addr>>()
                });
                (read_gateway(&r.dir(&id)), all)
            })
            .await;
        let used = match all {
            Some(all) => self.gw_used.insert(all),
            None => self.gw_used.get_or_insert_default(),
        };
        if let Some(a) = own {
            used.insert(a);
            return Ok(a);
        }
        let subnet = ipam::ipnet::IpNet::V4(gw.subnet);
        let request = ipam::SubnetRequest::new(subnet).with_gateway(IpAddr::V4(gw.gateway()));
        let taken: Vec<IpAddr> = used.iter().copied().map(IpAddr::V4).collect();
        let mut space =
            ipam::Subnets::rebuild(ipam::PoolConfig::local_default(), &[request], &taken)?;
        let IpAddr::V4(addr) = space.allocate_address(subnet)? else {
            unreachable!("an IPv4 subnet hands out IPv4 addresses")
        };
        let dir = self.runner.dir(task);
        self.blocking(move |_| crate::shim::write_atomic(&dir, GATEWAY, &format!("{addr}\n")))
            .await
            .map_err(io("save the task's gateway address"))?;
        if let Some(used) = &mut self.gw_used {
            used.insert(addr);
        }
        Ok(addr)
    }

    /// The whole desired data plane of the prepared tasks (for a full pass).
    pub(crate) fn desired_plane(&self, local: &[LocalTask], gw: &GwBridge) -> vxlan::DesiredState {
        let networks: BTreeMap<String, vxlan::Network> = self
            .a
            .networks
            .iter()
            .filter_map(|n| plan::network(n).map(|v| (n.meta.id.clone(), v)))
            .collect();
        let remote: BTreeMap<String, Vec<plan::RemoteEndpoint>> = self
            .nets
            .iter()
            .map(|(id, n)| (id.clone(), n.remote()))
            .collect();
        let vteps = self.gossip.vteps();
        let lbs: BTreeMap<String, plan::LbPlace> = self
            .nets
            .keys()
            .filter_map(|id| Some((id.clone(), self.lb_want(id)?)))
            .collect();
        plan::desired(
            &self.config.node_id,
            local,
            &networks,
            &remote,
            &vteps,
            Some(gw),
            &lbs,
        )
    }
}

/// Waits until a pidfd is readable: its process has exited.
async fn exited(fd: std::os::fd::OwnedFd) -> std::io::Result<()> {
    // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, which owns it until it is dropped: it
    // stays open and the same descriptor all that time.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }?;
    let _ = afd.readable().await?;
    Ok(())
}
