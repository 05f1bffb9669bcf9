//! The executor of one node: assignments and gossip in, processes, kernel state, gossip entries
//! and task status out.
//!
//! It is a reconciler driven by events, so its work follows what changed, not how much runs:
//! - at start, once it has its assignments and gossip had a chance to say who is where, one full
//!   pass: every task's process state read once, the whole desired data plane applied
//!   (`vxlan::Dataplane::apply`, which writes nothing when the kernel already matches — an
//!   agent restart changes nothing and drops no connection), every network subscribed;
//! - then it waits for events: new assignments (only the tasks, networks and services whose
//!   version changed are looked at), gossip events of a network it has endpoints on (that
//!   network's peers), a task's shim exiting (a pidfd per task; no polling of task files), a
//!   background stop finishing. Each is handled with targeted kernel operations;
//! - a failure schedules a full pass again after [`Config::retry`]; full passes that keep
//!   failing make the executor say so ([`Health`]), and the node reports itself not ready.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use chrono::Utc;
use gossip::Gossip;
use model::assignment::AssignmentsDelta;
use model::task::{TaskState, TaskStatus};
use model::{Assignments, Task};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::balancer::Balancer;
use crate::changes::Changes;
use crate::discovery::Discovery;
pub use crate::error::Error;
pub(crate) use crate::error::io;
use crate::feed::{FeedReceiver, Received};
use crate::networks::NetRt;
use crate::plane::Plane;
use crate::runner::{ProcState, Runner, RunnerConfig};
use crate::tasks::TaskRt;

/// How the executor of a node runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: String,
    /// Executor state (tasks, the gateway bridge's subnet) lives here.
    pub state_dir: PathBuf,
    /// Prefix of the namespaces created on this node (tasks, sandboxes, load balancers).
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
    /// Between a serving task leaving the load balancers and names (its endpoints published
    /// disabled) and its stop, so that every node has heard (docker: 2 s).
    pub drain: Duration,
    /// What tasks see as /etc/resolv.conf (`nameserver 127.0.0.11` and the node's search and
    /// options: `dns::task_resolv_conf`).
    pub resolv_conf: String,
    /// How long after a failed operation the executor tries again (with a full pass).
    pub retry: Duration,
    /// How long a fresh executor waits for gossip before it programs peers it may not know yet.
    pub gossip_settle: Duration,
    /// The eBPF overlay fast path (`--no-fast-path` turns it off; off anyway where the kernel
    /// cannot run it).
    pub fast_path: bool,
    /// A bpffs directory for the fast path's pins (so a restart adopts them); None: the
    /// process holds its attachments.
    pub bpf_dir: Option<PathBuf>,
    /// A bpffs directory for the routing mesh's eBPF shortcut (`vxlan::ingress::Ingress::
    /// with_shortcut`; on with the fast path, off otherwise, when one an earlier run left is
    /// removed). None: no shortcut, published ports take the node's nftables path only.
    pub mesh_bpf_dir: Option<PathBuf>,
    /// Docker's routing mesh: the ingress sbox SNATs connections to its ingress address (tasks
    /// see the node rather than the client). Off: only destinations are rewritten.
    pub ingress_snat: bool,
    /// How long a task started here keeps its endpoint on ingress disabled at most while its
    /// return path does not list every node's sbox (`Executor::return_path_pending`).
    pub return_hold: Duration,
    /// Fault injection (tests): while this file exists, every executor pass fails, or panics
    /// when the file says `panic` (the agent sets it from `NETAGENT_FAULT_EXECUTOR`).
    pub fault_file: Option<PathBuf>,
}

/// Environment variable naming the file whose presence makes the executor's passes fail.
pub const FAULT_ENV: &str = "NETAGENT_FAULT_EXECUTOR";

/// Full passes failing in a row before the executor reports itself failing (one failure that
/// the next pass repairs is no reason to take the node out of scheduling).
pub const FAILING_AFTER: u32 = 2;

/// The executor's health, for the node runtime's supervisor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Whether a full pass has succeeded since this executor started.
    pub synced: bool,
    /// Why full passes keep failing ([`FAILING_AFTER`] in a row); None once one succeeds.
    pub failing: Option<String>,
}

/// A task status report for the dispatcher.
pub type StatusReport = (String, TaskStatus);

/// A running executor.
pub struct Handle {
    pub task: tokio::task::JoinHandle<()>,
    /// Mutating kernel requests of the data plane and the load balancer (netlink, namespaces,
    /// nftables, maps): the counter given to [`spawn`], which this executor adds to.
    pub writes: Arc<AtomicU64>,
    /// Executor passes: (full, incremental) so far.
    pub passes: Arc<(AtomicU64, AtomicU64)>,
    /// Each pass as it ends: full or incremental, its duration, whether it succeeded (for
    /// metrics; dropped when nobody reads).
    pub pass_times: mpsc::Receiver<PassTime>,
    /// Reads the load balancer's counters (None without one).
    pub lb: Option<crate::LbCounters>,
    /// Whether full passes succeed (see [`Health`]).
    pub health: watch::Receiver<Health>,
}

/// One executor pass: (full, duration, succeeded).
pub type PassTime = (bool, Duration, bool);

/// What wakes the executor besides new assignments.
#[derive(Debug)]
pub(crate) enum Ev {
    /// Look at a task again: its shim or command ended, or its start is still under way.
    Look(String),
    /// A background stop finished, with the exit code if the task had been running.
    Stopped(String, Option<i32>),
    /// A change in a network's endpoint table.
    Gossip(String, gossip::Event),
    /// An IPv4 address of the node was added or removed (`node_addrs`).
    NodeAddresses,
}

/// Starts the executor loop. It runs until `assignments` closes. With a `resolver`, every task
/// gets it at 127.0.0.11:53 in its namespace, serving the names of its networks; with a load
/// balancer `lb`, every service VIP on this node's networks is balanced over its running tasks.
/// Its kernel writes are added to `writes` (the node's counter, which outlives an executor).
pub fn spawn(
    config: Config,
    gossip: Arc<Gossip>,
    assignments: FeedReceiver,
    status: mpsc::Sender<StatusReport>,
    resolver: Option<Arc<dns::Resolver>>,
    lb: Option<Box<dyn ipvs::LoadBalancer>>,
    writes: Arc<AtomicU64>,
) -> Result<Handle, crate::runner::Error> {
    let runner = Runner::new(runner_config(&config))?;
    let passes = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let (pass_times_tx, pass_times) = mpsc::channel(64);
    let (tx, rx) = mpsc::unbounded_channel();
    let plane = Plane::new(
        config.node_netns.clone(),
        config.vtep,
        config.netns_prefix.clone(),
        writes.clone(),
    )
    .with_fast_path(config.fast_path, config.bpf_dir.clone());
    let balancer = Balancer::new(lb, writes.clone());
    let lb = balancer.counters();
    let (health_tx, health) = watch::channel(Health::default());
    if config.mesh_bpf_dir.is_some() && config.fast_path {
        crate::node_addrs::watch(config.node_netns.clone(), tx.clone());
    }
    let mut exec = Executor {
        runner: Arc::new(runner),
        plane,
        gossip,
        status,
        reported: HashMap::new(),
        a: Assignments::default(),
        tasks: BTreeMap::new(),
        nets: BTreeMap::new(),
        tx,
        vtep_published: false,
        vteps: BTreeMap::new(),
        gw: None,
        gw_used: None,
        disc: Discovery::new(resolver, balancer),
        listeners: HashMap::new(),
        started: Instant::now(),
        full_at: Some(Instant::now()),
        synced: false,
        writes: writes.clone(),
        ingress: Default::default(),
        passes: passes.clone(),
        pass_times: pass_times_tx,
        health: health_tx,
        failures: 0,
        config,
    };
    let task = tokio::spawn(async move { exec.run(assignments, rx).await });
    Ok(Handle {
        task,
        writes,
        passes,
        pass_times,
        lb,
        health,
    })
}

pub(crate) struct Executor {
    pub(crate) config: Config,
    pub(crate) runner: Arc<Runner>,
    pub(crate) plane: Plane,
    pub(crate) gossip: Arc<Gossip>,
    status: mpsc::Sender<StatusReport>,
    /// Last state reported per task, so each change is sent once.
    reported: HashMap<String, TaskState>,
    /// The assignments as last handled.
    pub(crate) a: Assignments,
    /// Tasks that have a directory on this node.
    pub(crate) tasks: BTreeMap<String, TaskRt>,
    /// Networks with endpoints on this node.
    pub(crate) nets: BTreeMap<String, NetRt>,
    pub(crate) tx: mpsc::UnboundedSender<Ev>,
    vtep_published: bool,
    /// The VTEPs peers were last computed with.
    pub(crate) vteps: BTreeMap<String, IpAddr>,
    pub(crate) gw: Option<vxlan::GwBridge>,
    /// The tasks' addresses on the gateway bridge, read from their directories once (at the
    /// first allocation) and kept in step with allocations and removals after that.
    pub(crate) gw_used: Option<BTreeSet<Ipv4Addr>>,
    /// What the node's DNS resolver has been given.
    pub(crate) disc: Discovery,
    /// Each task's DNS listener (127.0.0.11:53 in its namespace).
    pub(crate) listeners: HashMap<String, dns::Listener>,
    started: Instant,
    /// When to run a full pass (at start, and after a failure).
    full_at: Option<Instant>,
    /// Whether a full pass has succeeded since start (before that, events only mark work).
    synced: bool,
    pub(crate) writes: Arc<AtomicU64>,
    /// The routing mesh as last applied (`ingress`).
    pub(crate) ingress: crate::ingress::IngressRt,
    passes: Arc<(AtomicU64, AtomicU64)>,
    pass_times: mpsc::Sender<PassTime>,
    health: watch::Sender<Health>,
    /// Full passes failed in a row.
    failures: u32,
}

/// What the dispatcher wants of one task, reduced to what the executor acts on.
pub(crate) fn wants_running(t: &Task) -> bool {
    t.desired_state <= TaskState::Running
}

/// A task's name as docker shows it: `SERVICE.SLOT.ID` (`SERVICE.NODE.ID` for global services).
pub(crate) fn task_name(t: &Task, services: &[model::Service]) -> String {
    let svc = services
        .iter()
        .find(|s| s.meta.id == t.service_id)
        .map(|s| s.spec.name.as_str())
        .unwrap_or("task");
    if t.slot > 0 {
        format!("{svc}.{}.{}", t.slot, t.meta.id)
    } else {
        format!("{svc}.{}.{}", t.node_id.as_deref().unwrap_or(""), t.meta.id)
    }
}

/// What the executor receives: a whole set, or a delta of the set it has.
enum Update<'a> {
    Full(Assignments),
    Delta(&'a AssignmentsDelta),
}

impl Executor {
    async fn run(&mut self, mut feed: FeedReceiver, mut events: mpsc::UnboundedReceiver<Ev>) {
        let mut gossip_changes = self.gossip.changes();
        let mut have = false;
        loop {
            if have {
                self.work().await;
            }
            let sleep = self.next_wake();
            tokio::select! {
                got = feed.recv() => {
                    match got {
                        None => break,
                        Some(Received::Full(a)) => {
                            have = true;
                            self.on_assignments(Update::Full(a)).await;
                        }
                        Some(Received::Delta(d)) => self.on_assignments(Update::Delta(&d)).await,
                    }
                }
                Some(ev) = events.recv() => {
                    self.on_event(ev).await;
                    while let Ok(ev) = events.try_recv() {
                        self.on_event(ev).await;
                    }
                }
                r = gossip_changes.changed() => {
                    if r.is_ok() {
                        self.on_vteps().await;
                    }
                }
                _ = tokio::time::sleep(sleep) => {}
            }
        }
        info!("executor stopped");
    }

    /// How long until something is due (a full pass, or gossip having settled).
    fn next_wake(&self) -> Duration {
        let settle =
            (self.started + self.config.gossip_settle).saturating_duration_since(Instant::now());
        match self.full_at {
            Some(t) => t
                .saturating_duration_since(Instant::now())
                .max(if self.gossip_ready() {
                    Duration::ZERO
                } else {
                    settle
                })
                .max(Duration::from_millis(1)),
            None => Duration::from_secs(3600),
        }
    }

    /// Whether gossip had a chance to tell us the peers (so programming them removes nothing
    /// that is still right).
    pub(crate) fn gossip_ready(&self) -> bool {
        self.started.elapsed() >= self.config.gossip_settle
            || self
                .gossip
                .members()
                .iter()
                .any(|m| m.alive && m.node_id != self.config.node_id)
    }

    /// Schedules a full pass after the retry delay (after a failure).
    /// The delay grows with the full passes failed in a row: `retry`, twice, four times.
    pub(crate) fn retry_later(&mut self, what: &str, e: &dyn std::fmt::Display) {
        let delay = self.config.retry * (1 << self.failures.saturating_sub(1).min(2));
        warn!(error = %e, "{what} failed; a full pass follows in {delay:?}");
        let at = Instant::now() + delay;
        self.full_at = Some(self.full_at.map_or(at, |t| t.min(at)));
    }

    /// Runs the full pass when it is due.
    async fn work(&mut self) {
        let due = self.full_at.is_some_and(|t| t <= Instant::now());
        if !due || !self.gossip_ready() {
            return;
        }
        self.full_at = None;
        self.passes
            .0
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let r = self.full_pass().await;
        let _ = self
            .pass_times
            .try_send((true, started.elapsed(), r.is_ok()));
        match r {
            Ok(()) => {
                if !self.synced {
                    // Everything this node still runs is published again: what an earlier
                    // agent published and this one did not is withdrawn now.
                    self.gossip.release_adopted().await;
                }
                self.synced = true;
                self.failures = 0;
                self.health.send_if_modified(|h| {
                    let was = h.clone();
                    *h = Health {
                        synced: true,
                        failing: None,
                    };
                    was != *h
                });
            }
            Err(e) => {
                self.failures += 1;
                if self.failures >= FAILING_AFTER {
                    let why = Some(format!("full passes failing: {e}"));
                    self.health.send_if_modified(|h| {
                        let news = h.failing != why;
                        h.failing = why;
                        news
                    });
                }
                self.retry_later("a full executor pass", &e)
            }
        }
    }

    /// The injected fault, while its file exists (a file saying `panic` makes the executor
    /// panic instead, as a bug would).
    fn injected_fault(&self) -> Result<(), Error> {
        let Some(f) = &self.config.fault_file else {
            return Ok(());
        };
        match std::fs::read_to_string(f) {
            Ok(what) if what.trim() == "panic" => {
                panic!("injected panic ({} says so)", f.display())
            }
            Ok(_) => Err(Error::Injected(f.clone())),
            Err(_) => Ok(()),
        }
    }

    async fn on_assignments(&mut self, u: Update<'_>) {
        // Before the first full pass, or while a fault is injected, the set is only kept: a
        // full pass acts on it.
        let fault = if self.synced {
            self.injected_fault().err()
        } else {
            None
        };
        if !self.synced || fault.is_some() {
            match u {
                Update::Full(a) => self.a = a,
                Update::Delta(d) => {
                    self.a.apply(d);
                }
            }
            match fault {
                Some(e) => self.retry_later("an executor pass", &e),
                None => {
                    self.full_at.get_or_insert(Instant::now());
                }
            }
            return;
        }
        self.passes
            .1
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let changes = match u {
            Update::Full(a) => {
                let c = Changes::between(&self.a, &a);
                self.a = a;
                c
            }
            Update::Delta(d) => {
                let c = Changes::of(&self.a, d);
                self.a.apply(d);
                c
            }
        };
        self.incremental_pass(changes).await;
        let _ = self.pass_times.try_send((false, started.elapsed(), true));
    }

    async fn incremental_pass(&mut self, c: Changes) {
        let Changes {
            tasks,
            nets,
            port_changed,
            attachments_changed,
            services,
            nodes_before,
            keys_changed,
        } = c;
        if keys_changed && let Err(e) = self.sync_ipsec_keys().await {
            self.retry_later("data-path keys", &e);
        }
        for id in &services {
            self.service_changed(id);
        }
        if let Some(before) = nodes_before {
            self.owners_changed(&before).await;
        }
        if port_changed {
            self.full_at = Some(Instant::now());
            return;
        }
        for id in &tasks {
            self.reconcile_task(id).await;
        }
        let mut dirty: BTreeSet<String> = nets;
        if attachments_changed {
            dirty.extend(self.nets.keys().cloned());
            dirty.extend(self.ingress_nets());
        }
        for id in dirty {
            self.reconcile_network(&id).await;
        }
        self.sync_ingress_or_retry().await;
        self.publish_vtep().await;
    }

    async fn on_event(&mut self, ev: Ev) {
        if !self.synced {
            return;
        }
        match ev {
            Ev::Look(id) => {
                if self.tasks.contains_key(&id) {
                    let idc = id.clone();
                    let st = self.blocking(move |r| r.state(&idc)).await;
                    if let Some(rt) = self.tasks.get_mut(&id) {
                        rt.watching = false;
                        rt.proc = st;
                    }
                }
                self.reconcile_task(&id).await;
            }
            Ev::Stopped(id, code) => {
                debug!(task = %id, ?code, "task stopped");
                if self.tasks.contains_key(&id) {
                    let idc = id.clone();
                    let st = self.blocking(move |r| r.state(&idc)).await;
                    if let Some(rt) = self.tasks.get_mut(&id) {
                        rt.stopping = false;
                        rt.proc = st;
                    }
                }
                self.reconcile_task(&id).await;
            }
            Ev::Gossip(net, ev) => self.on_gossip(&net, ev).await,
            Ev::NodeAddresses => self.on_node_addresses().await,
        }
    }

    /// A full pass: every task's process state read once, the whole desired data plane applied
    /// (what is right is left alone), every network's subscription and peers, every task's
    /// lifecycle and gossip entries. What the incremental handlers keep up afterwards.
    async fn full_pass(&mut self) -> Result<(), Error> {
        self.injected_fault()?;
        self.publish_vtep().await;
        let gw = self.gwbridge()?;
        self.gw = Some(gw.clone());
        // 1. Processes as they are.
        let ids: BTreeSet<String> = self
            .blocking(|r| r.list())
            .await
            .into_iter()
            .chain(self.a.tasks.iter().map(|t| t.meta.id.clone()))
            .collect();
        for id in &ids {
            let idc = id.clone();
            let st = self.blocking(move |r| r.state(&idc)).await;
            self.tasks.entry(id.clone()).or_default().proc = st;
        }
        // 2. The tasks to run: namespaces and addresses.
        let mut local = Vec::new();
        let running: Vec<Task> = self
            .a
            .tasks
            .iter()
            .filter(|t| wants_running(t) && !t.spec.argv().is_empty())
            .cloned()
            .collect();
        for t in &running {
            if matches!(
                self.tasks.get(&t.meta.id).map(|r| r.proc),
                Some(ProcState::Exited { .. })
            ) || self.encryption_blocker(t).is_some()
            {
                continue;
            }
            local.push(self.prepare(t).await?);
        }
        // 3. Networks: subscriptions and the entries they know now; what is not used goes.
        let used: BTreeSet<String> = local
            .iter()
            .flat_map(|l| l.attachments.iter().map(|(n, _)| n.clone()))
            .chain(self.ingress_nets())
            .collect();
        for net in &used {
            self.subscribe(net).await;
        }
        let stale: Vec<String> = self
            .nets
            .keys()
            .filter(|n| !used.contains(*n))
            .cloned()
            .collect();
        for net in stale {
            self.forget_network(&net).await?;
        }
        // 4. The whole data plane, load-balancer namespaces first (their endpoints are in it).
        self.lb_namespaces().await?;
        self.sync_ipsec_keys().await?;
        let mut desired = self.desired_plane(&local, &gw);
        self.sbox_in_plane(&mut desired, &gw);
        let port = self.a.data_path_port;
        self.plane.call(port, move |dp| dp.apply(&desired)).await?;
        self.remove_stale_lb_namespaces(&used).await?;
        self.plane_applied();
        self.publish_lbs().await;
        // Every network's table is known now: the load balancer holds exactly what they say.
        self.balance_networks();
        self.disc.lb.sync();
        for l in &local {
            if let Some(rt) = self.tasks.get_mut(&l.id) {
                rt.endpoints_ok = true;
            }
        }
        self.sync_ingress().await?;
        // 5. Every task's lifecycle, then what is no longer assigned.
        let all: Vec<String> = self.tasks.keys().cloned().collect();
        for id in all {
            self.reconcile_task(&id).await;
        }
        Ok(())
    }

    /// Runs a runner call on a blocking thread.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Runner) -> T + Send + 'static,
    ) -> T {
        let runner = self.runner.clone();
        tokio::task::spawn_blocking(move || f(&runner))
            .await
            .expect("runner call panicked")
    }

    pub(crate) async fn report(
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

    pub(crate) fn forget_reported(&mut self, id: &str) {
        self.reported.remove(id);
    }

    async fn publish_vtep(&mut self) {
        if self.vtep_published {
            return;
        }
        match self.gossip.publish_vtep(IpAddr::V4(self.config.vtep)).await {
            Ok(()) => self.vtep_published = true,
            Err(e) => warn!(error = %e, "could not publish this node's VTEP"),
        }
    }

    /// The gateway bridge: its subnet is chosen once (from the local pools, 172.17.0.0/16 left
    /// to docker0) and kept in the state directory.
    fn gwbridge(&self) -> Result<vxlan::GwBridge, Error> {
        crate::tasks::gwbridge(&self.config)
    }
}

pub(crate) fn runner_config(config: &Config) -> RunnerConfig {
    RunnerConfig {
        dir: config.state_dir.join("tasks"),
        netns_prefix: config.netns_prefix.clone(),
        cgroup: config.cgroup.clone(),
        shim: config.shim.clone(),
        resolv_conf: config.resolv_conf.clone(),
    }
}

/// Removes everything the executor of this node made — every task (processes, namespaces,
/// cgroups, directories), the sandboxes, the load-balancer namespaces and the gateway bridge —
/// as `swarm leave` does. Blocking.
pub fn teardown(config: &Config) -> Result<(), Error> {
    let runner = Runner::new(runner_config(config))?;
    for id in runner.list() {
        runner.remove(&id)?;
    }
    let node = crate::plane::node_netns(config.node_netns.as_ref())
        .map_err(|e| Error::Dataplane(e.to_string()))?;
    let mut dp = vxlan::Dataplane::new(vxlan::Config {
        netns: node,
        vtep: config.vtep,
        port: vxlan::DEFAULT_PORT,
        prefix: config.netns_prefix.clone(),
        fast_path: config.fast_path,
        bpf_dir: config.bpf_dir.clone(),
    })
    .map_err(|e| Error::Dataplane(e.to_string()))?;
    dp.apply(&vxlan::DesiredState::default())
        .map_err(|e| Error::Dataplane(e.to_string()))?;
    if let Some(dir) = &config.mesh_bpf_dir {
        // The mesh's node table and shortcut (the sbox goes with the load-balancer namespaces).
        let node = crate::plane::node_netns(config.node_netns.as_ref())
            .map_err(|e| Error::Dataplane(e.to_string()))?;
        vxlan::ingress::Ingress::new(node, config.netns_prefix.clone())
            .with_shortcut(dir.clone(), false)
            .apply(&vxlan::ingress::IngressState::default())
            .map_err(|e| Error::Dataplane(e.to_string()))?;
    }
    crate::networks::remove_lb_namespaces(config).map_err(|e| Error::Dataplane(e.to_string()))?;
    let _ = std::fs::remove_file(config.state_dir.join("gwbridge.json"));
    Ok(())
}
