//! The executor loop of one node: assignments and gossip in, processes, kernel state, gossip
//! entries and task status out. A reconciler: every pass computes what should be and changes only
//! what differs, so a restarted agent with unchanged assignments changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use gossip::Gossip;
use model::task::{TaskState, TaskStatus};
use model::{Assignments, Task};
use netns::NetNs;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use vxlan::{Dataplane, GwBridge, Ipv4Net};

use crate::plan::{self, LocalTask, RemoteEndpoint};
use crate::runner::{ProcState, Runner, RunnerConfig};

/// How the executor of a node runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    /// Executor state (tasks, the gateway bridge's subnet) lives here.
    pub state_dir: PathBuf,
    /// Prefix of the namespaces created on this node (tasks and sandboxes).
    pub netns_prefix: String,
    /// cgroup2 directory for task cgroups; None runs tasks without.
    pub cgroup: Option<PathBuf>,
    /// The shim command (program and leading arguments).
    pub shim: Vec<OsString>,
    /// The node's data-path (VTEP) address.
    pub vtep: Ipv4Addr,
    /// The node's network namespace (where the underlay is); None: the agent's own.
    pub node_netns: Option<PathBuf>,
    /// Name of the gateway bridge.
    pub gwbridge: String,
    /// SIGTERM-to-SIGKILL grace when stopping a task (docker: 10 s).
    pub stop_grace: Duration,
    /// Nameserver written into tasks' resolv.conf.
    pub nameserver: String,
    /// How often the executor looks at its processes without other news.
    pub tick: Duration,
    /// How long a fresh executor waits for gossip before it programs peers it may not know yet.
    pub gossip_settle: Duration,
}

/// A task status report for the dispatcher.
pub type StatusReport = (String, TaskStatus);

/// A running executor.
pub struct Handle {
    pub task: tokio::task::JoinHandle<()>,
    /// Mutating kernel requests made by the data plane so far (netlink, namespaces, nftables).
    pub writes: Arc<AtomicU64>,
    /// Each reconcile pass's duration and whether it succeeded (for metrics; passes are dropped
    /// when nobody reads).
    pub passes: mpsc::Receiver<(Duration, bool)>,
}

/// Starts the executor loop. It runs until `assignments` closes.
pub fn spawn(
    config: Config,
    gossip: Arc<Gossip>,
    assignments: watch::Receiver<Option<Assignments>>,
    status: mpsc::Sender<StatusReport>,
) -> Result<Handle, crate::runner::Error> {
    let runner = Runner::new(runner_config(&config))?;
    let (passes_tx, passes) = mpsc::channel(64);
    let mut exec = Executor {
        runner: Arc::new(runner),
        dataplane: Arc::new(Mutex::new(None)),
        gossip,
        status,
        reported: HashMap::new(),
        published: BTreeSet::new(),
        vtep_published: false,
        stopping: HashMap::new(),
        started: Instant::now(),
        writes: Arc::new(AtomicU64::new(0)),
        passes: passes_tx,
        config,
    };
    let writes = exec.writes.clone();
    let task = tokio::spawn(async move { exec.run(assignments).await });
    Ok(Handle {
        task,
        writes,
        passes,
    })
}

struct Executor {
    config: Config,
    runner: Arc<Runner>,
    dataplane: Arc<Mutex<Option<Dataplane>>>,
    gossip: Arc<Gossip>,
    status: mpsc::Sender<StatusReport>,
    /// Last state reported per task, so each change is sent once.
    reported: HashMap<String, TaskState>,
    /// (network, endpoint id) published on gossip.
    published: BTreeSet<(String, String)>,
    vtep_published: bool,
    /// Tasks being stopped in the background, with the exit code when done.
    stopping: HashMap<String, tokio::task::JoinHandle<Option<i32>>>,
    started: Instant,
    writes: Arc<AtomicU64>,
    passes: mpsc::Sender<(Duration, bool)>,
}

/// What the dispatcher wants of one task, reduced to what the executor acts on.
fn wants_running(t: &Task) -> bool {
    t.desired_state <= TaskState::Running
}

fn task_name(t: &Task, services: &BTreeMap<&str, &model::Service>) -> String {
    let svc = services
        .get(t.service_id.as_str())
        .map(|s| s.spec.name.as_str())
        .unwrap_or("task");
    if t.slot > 0 {
        format!("{svc}.{}.{}", t.slot, t.meta.id)
    } else {
        format!("{svc}.{}.{}", t.node_id.as_deref().unwrap_or(""), t.meta.id)
    }
}

fn ipv4_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

impl Executor {
    async fn run(&mut self, mut assignments: watch::Receiver<Option<Assignments>>) {
        let mut gossip_changes = self.gossip.changes();
        loop {
            let current = assignments.borrow_and_update().clone();
            if let Some(a) = current {
                let started = Instant::now();
                let r = self.reconcile(&a).await;
                let _ = self.passes.try_send((started.elapsed(), r.is_ok()));
                if let Err(e) = r {
                    warn!(error = %e, "executor pass failed; retrying");
                }
            }
            tokio::select! {
                r = assignments.changed() => if r.is_err() { break },
                _ = gossip_changes.changed() => {},
                _ = tokio::time::sleep(self.config.tick) => {},
            }
        }
        info!("executor stopped");
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Runner) -> T + Send + 'static,
    ) -> T {
        let runner = self.runner.clone();
        tokio::task::spawn_blocking(move || f(&runner))
            .await
            .expect("runner call panicked")
    }

    async fn report(
        &mut self,
        t: &Task,
        state: TaskState,
        message: &str,
        err: Option<String>,
        exit_code: Option<i32>,
    ) {
        // States only move forward (a task that failed does not become "shutdown").
        if self.reported.get(&t.meta.id).is_some_and(|r| *r >= state) || t.status.state > state {
            return;
        }
        // Nothing to say if the store already has it (e.g. after an agent restart).
        if t.status.state == state && t.status.exit_code == exit_code {
            self.reported.insert(t.meta.id.clone(), state);
            return;
        }
        let status = TaskStatus {
            state,
            timestamp: Utc::now(),
            message: message.into(),
            err,
            exit_code,
        };
        if self.status.send((t.meta.id.clone(), status)).await.is_ok() {
            self.reported.insert(t.meta.id.clone(), state);
        }
    }

    async fn reconcile(&mut self, a: &Assignments) -> Result<(), Error> {
        let services: BTreeMap<&str, &model::Service> =
            a.services.iter().map(|s| (s.meta.id.as_str(), s)).collect();
        let networks: BTreeMap<String, vxlan::Network> = a
            .networks
            .iter()
            .filter_map(|n| plan::network(n).map(|v| (n.meta.id.clone(), v)))
            .collect();
        let internal: BTreeMap<&str, bool> = a
            .networks
            .iter()
            .map(|n| (n.meta.id.as_str(), n.spec.internal))
            .collect();
        let assigned: BTreeMap<&str, &Task> =
            a.tasks.iter().map(|t| (t.meta.id.as_str(), t)).collect();

        // 1. Processes: what each task's process is doing; stops finished in the background.
        let ids: Vec<String> = self.blocking(|r| r.list()).await;
        let mut proc_state: BTreeMap<String, ProcState> = BTreeMap::new();
        for id in ids
            .iter()
            .cloned()
            .chain(a.tasks.iter().map(|t| t.meta.id.clone()))
        {
            let idc = id.clone();
            let st = self.blocking(move |r| r.state(&idc)).await;
            proc_state.insert(id, st);
        }
        let done: Vec<String> = self
            .stopping
            .iter()
            .filter(|(_, h)| h.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            let code = self
                .stopping
                .remove(&id)
                .expect("listed")
                .await
                .ok()
                .flatten();
            debug!(task = %id, ?code, "task stopped");
        }

        // 2. Tasks to run: their namespaces and gateway addresses.
        let gw = self.gwbridge()?;
        let mut local = Vec::new();
        for t in a.tasks.iter().filter(|t| wants_running(t)) {
            let exited = matches!(proc_state.get(&t.meta.id), Some(ProcState::Exited { .. }));
            if exited || t.spec.argv().is_empty() {
                continue;
            }
            let id = t.meta.id.clone();
            let ns = self
                .blocking(move |r| r.namespace(&id).map(|ns| ns.path().to_path_buf()))
                .await?;
            let attachments: Vec<(String, Ipv4Addr)> = t
                .networks
                .iter()
                .filter(|n| networks.contains_key(&n.network_id))
                .filter_map(|n| Some((n.network_id.clone(), ipv4_of(n.addresses.first()?)?)))
                .collect();
            let all_internal = !t.networks.is_empty()
                && t.networks.iter().all(|n| {
                    internal
                        .get(n.network_id.as_str())
                        .copied()
                        .unwrap_or(false)
                });
            let gateway = if all_internal {
                None
            } else {
                Some(self.gateway_addr(&t.meta.id, &gw)?)
            };
            local.push(LocalTask {
                id: t.meta.id.clone(),
                netns: ns,
                attachments,
                gateway,
            });
        }

        // 3. The data plane, once gossip had a chance to tell us the peers.
        let gossip_ready = self.started.elapsed() >= self.config.gossip_settle
            || self
                .gossip
                .members()
                .iter()
                .any(|m| m.alive && m.node_id != self.config.node_id);
        let mut remote: BTreeMap<String, Vec<RemoteEndpoint>> = BTreeMap::new();
        for net in networks.keys() {
            let entries = self.gossip.endpoints(net);
            remote.insert(
                net.clone(),
                entries
                    .into_iter()
                    .filter(|e| !e.endpoint.disabled)
                    .map(|e| RemoteEndpoint {
                        owner: e.owner,
                        ip: e.endpoint.ip,
                        mac: e.endpoint.mac,
                    })
                    .collect(),
            );
        }
        let vteps = self.gossip.vteps();
        let desired = plan::desired(
            &self.config.node_id,
            &local,
            &networks,
            &remote,
            &vteps,
            Some(&gw),
        );
        let mut plane_ok = false;
        if gossip_ready || local.is_empty() {
            plane_ok = self.apply(a.data_path_port, desired).await;
        }

        // 4. Start what should run (after its interfaces exist); stop what should not.
        for t in a.tasks.iter() {
            let id = t.meta.id.clone();
            let st = proc_state
                .get(&id)
                .copied()
                .unwrap_or(ProcState::NotStarted);
            if wants_running(t) {
                match st {
                    ProcState::NotStarted if plane_ok && local.iter().any(|l| l.id == id) => {
                        let env = task_env(t, &services, &self.config.node_id);
                        let argv = t.spec.argv();
                        let idc = id.clone();
                        match self.blocking(move |r| r.start(&idc, &argv, &env)).await {
                            Ok(()) => {
                                self.report(t, TaskState::Starting, "starting", None, None)
                                    .await
                            }
                            Err(e) => {
                                self.report(
                                    t,
                                    TaskState::Rejected,
                                    "rejected",
                                    Some(e.to_string()),
                                    None,
                                )
                                .await
                            }
                        }
                    }
                    ProcState::NotStarted if t.spec.argv().is_empty() => {
                        self.report(
                            t,
                            TaskState::Rejected,
                            "rejected",
                            Some("the task has no command".into()),
                            None,
                        )
                        .await
                    }
                    ProcState::NotStarted | ProcState::Starting => {
                        self.report(t, TaskState::Preparing, "preparing", None, None)
                            .await
                    }
                    ProcState::Running { .. } | ProcState::Exiting => {
                        self.report(t, TaskState::Running, "started", None, None)
                            .await
                    }
                    ProcState::Exited { code: 0 } => {
                        self.report(t, TaskState::Complete, "finished", None, Some(0))
                            .await
                    }
                    ProcState::Exited { code } => {
                        let err = format!("task: non-zero exit ({code})");
                        self.report(t, TaskState::Failed, "failed", Some(err), Some(code))
                            .await
                    }
                }
            } else {
                match st {
                    st if st.is_live() => self.stop(&id),
                    _ if !self.stopping.contains_key(&id) && !t.status.state.is_terminal() => {
                        self.report(t, TaskState::Shutdown, "shutdown", None, None)
                            .await
                    }
                    _ => {}
                }
            }
        }

        // 5. Gossip: publish this node's VTEP and endpoints, withdraw the rest.
        self.publish(a, &local, &services).await;

        // 6. Remove what is no longer assigned (or assigned but done and desired down).
        for id in ids {
            let keep = assigned.get(id.as_str()).is_some_and(|t| {
                wants_running(t) || !t.status.state.is_terminal() || self.stopping.contains_key(&id)
            });
            if keep || self.stopping.contains_key(&id) {
                continue;
            }
            if proc_state.get(&id).is_some_and(|s| s.is_live()) {
                self.stop(&id);
                continue;
            }
            let idc = id.clone();
            if let Err(e) = self.blocking(move |r| r.remove(&idc)).await {
                warn!(task = %id, error = %e, "could not remove a task");
            }
            self.reported.remove(&id);
        }
        Ok(())
    }

    fn stop(&mut self, id: &str) {
        if self.stopping.contains_key(id) {
            return;
        }
        let runner = self.runner.clone();
        let (idc, grace) = (id.to_string(), self.config.stop_grace);
        let h = tokio::task::spawn_blocking(move || runner.stop(&idc, grace));
        self.stopping.insert(id.to_string(), h);
    }

    /// Makes the kernel match `desired`; true when it does.
    async fn apply(&mut self, port: u16, desired: vxlan::DesiredState) -> bool {
        let plane = self.dataplane.clone();
        let config = self.config.clone();
        let writes = self.writes.clone();
        let r = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let mut guard = plane.lock().unwrap_or_else(|e| e.into_inner());
            if guard.as_ref().is_none() {
                let node = node_netns(&config).map_err(|e| e.to_string())?;
                let mut dp = Dataplane::new(vxlan::Config {
                    netns: node,
                    vtep: config.vtep,
                    port,
                    prefix: config.netns_prefix.clone(),
                })
                .map_err(|e| e.to_string())?;
                dp.on_write(move |n| writes.store(n, Ordering::Relaxed));
                *guard = Some(dp);
            }
            guard
                .as_mut()
                .expect("set above")
                .apply(&desired)
                .map_err(|e| e.to_string())
        })
        .await
        .expect("data plane call panicked");
        match r {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "could not program the overlay data plane");
                false
            }
        }
    }

    async fn publish(
        &mut self,
        a: &Assignments,
        local: &[LocalTask],
        services: &BTreeMap<&str, &model::Service>,
    ) {
        if !self.vtep_published {
            match self.gossip.publish_vtep(IpAddr::V4(self.config.vtep)).await {
                Ok(()) => self.vtep_published = true,
                Err(e) => warn!(error = %e, "could not publish this node's VTEP"),
            }
        }
        let tasks: BTreeMap<&str, &Task> =
            a.tasks.iter().map(|t| (t.meta.id.as_str(), t)).collect();
        let mut want: BTreeSet<(String, String)> = BTreeSet::new();
        for l in local {
            let Some(t) = tasks.get(l.id.as_str()) else {
                continue;
            };
            let service = services.get(t.service_id.as_str());
            for (net, ip) in &l.attachments {
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
                    name: task_name(t, services),
                    aliases,
                    disabled: false,
                };
                let key = (net.clone(), l.id.clone());
                if !self.published.contains(&key) {
                    match self.gossip.publish_endpoint(ep).await {
                        Ok(()) => {
                            self.published.insert(key.clone());
                        }
                        Err(e) => warn!(task = %l.id, error = %e, "could not publish an endpoint"),
                    }
                }
                want.insert(key);
            }
        }
        let gone: Vec<(String, String)> = self.published.difference(&want).cloned().collect();
        for (net, id) in gone {
            if self.gossip.withdraw_endpoint(&net, &id).await.is_ok() {
                self.published.remove(&(net, id));
            }
        }
    }

    /// The gateway bridge: its subnet is chosen once (from the local pools, 172.17.0.0/16 left
    /// to docker0) and kept in the state directory.
    fn gwbridge(&self) -> Result<GwBridge, Error> {
        let path = self.config.state_dir.join("gwbridge.json");
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
        gw.name = self.config.gwbridge.clone();
        fs::create_dir_all(&self.config.state_dir).map_err(io("create the state directory"))?;
        crate::shim::write_atomic(
            &self.config.state_dir,
            "gwbridge.json",
            &serde_json::to_string(&gw).expect("serializes"),
        )
        .map_err(io("save the gateway bridge's subnet"))?;
        Ok(gw)
    }

    /// A task's address on the gateway bridge, kept in its directory so it never changes.
    fn gateway_addr(&self, task: &str, gw: &GwBridge) -> Result<Ipv4Addr, Error> {
        let dir = self.runner.dir(task);
        if let Some(a) = fs::read_to_string(dir.join("gateway"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return Ok(a);
        }
        let subnet = ipam::ipnet::IpNet::V4(gw.subnet);
        let mut used: Vec<IpAddr> = Vec::new();
        for id in self.runner.list() {
            if let Some(a) = fs::read_to_string(self.runner.dir(&id).join("gateway"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                used.push(a);
            }
        }
        let request = ipam::SubnetRequest::new(subnet).with_gateway(IpAddr::V4(gw.gateway()));
        let mut space =
            ipam::Subnets::rebuild(ipam::PoolConfig::local_default(), &[request], &used)?;
        let IpAddr::V4(addr) = space.allocate_address(subnet)? else {
            unreachable!("an IPv4 subnet hands out IPv4 addresses")
        };
        crate::shim::write_atomic(&dir, "gateway", &format!("{addr}\n"))
            .map_err(io("save the task's gateway address"))?;
        Ok(addr)
    }
}

fn runner_config(config: &Config) -> RunnerConfig {
    RunnerConfig {
        dir: config.state_dir.join("tasks"),
        netns_prefix: config.netns_prefix.clone(),
        cgroup: config.cgroup.clone(),
        shim: config.shim.clone(),
        nameserver: config.nameserver.clone(),
    }
}

/// The node's network namespace: the configured one, or the agent's own.
fn node_netns(config: &Config) -> netns::Result<NetNs> {
    match &config.node_netns {
        Some(p) => NetNs::open_path("node", p),
        None => NetNs::current(),
    }
}

/// Removes everything the executor of this node made — every task (processes, namespaces,
/// cgroups, directories), the sandboxes and the gateway bridge — as `swarm leave` does. Blocking.
pub fn teardown(config: &Config) -> Result<(), Error> {
    let runner = Runner::new(runner_config(config))?;
    for id in runner.list() {
        runner.remove(&id)?;
    }
    let node = node_netns(config).map_err(|e| Error::Dataplane(e.to_string()))?;
    let mut dp = Dataplane::new(vxlan::Config {
        netns: node,
        vtep: config.vtep,
        port: vxlan::DEFAULT_PORT,
        prefix: config.netns_prefix.clone(),
    })
    .map_err(|e| Error::Dataplane(e.to_string()))?;
    dp.apply(&vxlan::DesiredState::default())
        .map_err(|e| Error::Dataplane(e.to_string()))?;
    let _ = fs::remove_file(config.state_dir.join("gwbridge.json"));
    Ok(())
}

/// The environment of a task: what it needs to know about itself, as docker's templates give.
fn task_env(t: &Task, services: &BTreeMap<&str, &model::Service>, node: &str) -> Vec<String> {
    let mut env = t.spec.env.clone();
    let svc = services
        .get(t.service_id.as_str())
        .map(|s| s.spec.name.clone())
        .unwrap_or_default();
    env.push(format!("NETAGENT_TASK_ID={}", t.meta.id));
    env.push(format!("NETAGENT_TASK_NAME={}", task_name(t, services)));
    env.push(format!("NETAGENT_TASK_SLOT={}", t.slot));
    env.push(format!("NETAGENT_SERVICE_NAME={svc}"));
    env.push(format!("NETAGENT_NODE_ID={node}"));
    env
}

/// Why an executor pass failed (it is retried on the next one).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runner(#[from] crate::runner::Error),
    #[error("gateway bridge addressing: {0}")]
    Ipam(#[from] ipam::Error),
    #[error("overlay data plane: {0}")]
    Dataplane(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}
