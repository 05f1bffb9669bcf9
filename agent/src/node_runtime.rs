//! The per-node components every member runs, managers and workers alike: gossip on 7946 and
//! the executor. They start once the dispatcher session delivered the cluster's settings (gossip
//! keys, data-path port) and stop with the membership; tasks keep running across an agent
//! restart and are adopted by the next executor. Each is supervised: started again with
//! backoff when it fails, and reported (the node is then not ready) while it is broken.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use executor::node::StatusReport;
use gossip::{Gossip, Key, Keyring, Timings};
use model::cluster::EncryptionKey;
use tokio::sync::{mpsc, watch};

use crate::agent::Agent;
use crate::config::Config;
use crate::member::Member;
use crate::supervisor::{Backoff, EXECUTOR, GOSSIP, STABLE};

/// The gossip keyring from the cluster's keys: the newest key is accepted first and used for
/// sending only once it is no longer the newest (so every node knows a key before anyone sends
/// with it), as Docker rotates its three gossip keys.
pub fn keyring(keys: &[EncryptionKey]) -> Option<Keyring> {
    let mut gossip: Vec<&EncryptionKey> = keys.iter().filter(|k| k.subsystem == "gossip").collect();
    gossip.sort_by_key(|k| std::cmp::Reverse(k.lamport_time));
    let to_key = |k: &EncryptionKey| Key::new(k.lamport_time as u32, k.key.clone());
    let primary = gossip.get(1).or(gossip.first())?;
    let accepted = gossip
        .iter()
        .filter(|k| k.lamport_time != primary.lamport_time)
        .map(|k| to_key(k))
        .collect();
    Some(Keyring {
        primary: to_key(primary),
        accepted,
    })
}

/// Gossip seeds: the managers, at the gossip port.
fn seeds(member: &Member, cfg: &Config, me: IpAddr) -> Vec<SocketAddr> {
    member
        .node_state()
        .managers
        .iter()
        .filter_map(|m| {
            m.rsplit_once(':')
                .map(|(host, _)| host.trim_matches(['[', ']']))
        })
        .filter_map(|h| h.parse::<IpAddr>().ok())
        .filter(|ip| *ip != me)
        .map(|ip| SocketAddr::new(ip, cfg.gossip_port))
        .collect()
}

/// The executor's settings for this node.
pub fn executor_config(cfg: &Config, member: &Member) -> anyhow::Result<executor::node::Config> {
    let state = member.node_state();
    let vtep = state.data_path_addr.parse().map_err(|_| {
        anyhow::anyhow!(
            "the data-path address {:?} is not an IPv4 address",
            state.data_path_addr
        )
    })?;
    let exe = std::env::current_exe()?;
    // The fast path pins beside the load balancer's, on the same bpffs; without one the
    // executor holds its attachments (a restart then attaches again). With the fast path off
    // the directory stays named when an earlier run made it, so what that run pinned goes.
    let fast_bpf_dir = match cfg.fast_path {
        true => match ensure_bpffs(&cfg.bpf_dir) {
            Ok(()) => Some(cfg.bpf_dir.join("fastpath")),
            Err(e) => {
                tracing::warn!(error = %e, "no bpffs for the overlay fast path's pins; a restart attaches again");
                None
            }
        },
        false => Some(cfg.bpf_dir.join("fastpath")).filter(|d| d.exists()),
    };
    // The mesh's shortcut pins there too. With the fast path off it stays named, so a shortcut
    // an earlier run left is removed.
    let mesh_bpf_dir = match (cfg.fast_path, &fast_bpf_dir) {
        (true, None) => None,
        _ => Some(cfg.bpf_dir.join("mesh")),
    };
    Ok(executor::node::Config {
        node_id: state.node_id.clone(),
        state_dir: cfg.state_dir.join("executor"),
        netns_prefix: cfg.netns_prefix.clone(),
        cgroup: cfg.cgroup_parent.as_ref().map(|c| c.join("tasks")),
        shim: vec![exe.into_os_string(), "shim".into()],
        vtep,
        node_netns: None,
        gwbridge: cfg.gwbridge.clone(),
        stop_grace: Duration::from_millis(cfg.stop_grace_ms),
        drain: Duration::from_millis(cfg.drain_ms),
        resolv_conf: dns::task_resolv_conf(&cfg.node_resolv_conf()),
        retry: Duration::from_secs(1),
        gossip_settle: Duration::from_millis(cfg.gossip_failure_timeout_ms)
            .max(Duration::from_secs(1)),
        fast_path: cfg.fast_path,
        bpf_dir: fast_bpf_dir,
        mesh_bpf_dir,
        ingress_snat: cfg.ingress_snat,
        // The time gossip takes to spread an entry, as the drain's.
        return_hold: Duration::from_secs(2),
        fault_file: std::env::var_os(executor::node::FAULT_ENV).map(std::path::PathBuf::from),
    })
}

/// Where the node's load balancer lives: attached to the task cgroup root, maps pinned under
/// `--bpf-dir`; IPVS keeps idle TCP connections as long as conntrack does (not 900 s).
pub fn lb_config(cfg: &Config) -> ipvs::Config {
    let established =
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(432_000);
    ipvs::Config {
        choice: cfg.lb,
        cgroup: cfg.cgroup_parent.as_ref().map(|c| c.join("tasks")),
        pin_dir: cfg.bpf_dir.clone(),
        ipvs_timeouts: (established, 120, 300),
    }
}

/// Which load balancer this node runs (`--lb`), making the task cgroup root the eBPF programs
/// attach to; an error names what the kernel lacks.
/// Detected once per process (detection loads the eBPF programs).
pub fn detect_lb(cfg: &Config) -> anyhow::Result<ipvs::Kind> {
    static KIND: std::sync::OnceLock<ipvs::Kind> = std::sync::OnceLock::new();
    if let Some(k) = KIND.get() {
        return Ok(*k);
    }
    let lc = lb_config(cfg);
    if let Some(c) = &lc.cgroup {
        std::fs::create_dir_all(c)
            .map_err(|e| anyhow::anyhow!("task cgroup root {}: {e}", c.display()))?;
    }
    let kind = ipvs::detect(&lc)?;
    Ok(*KIND.get_or_init(|| kind))
}

/// Opens the node's load balancer, adopting what an earlier agent left (pinned maps, IPVS
/// services), so a restart neither writes nor drops a connection.
fn load_balancer(cfg: &Config) -> anyhow::Result<Box<dyn ipvs::LoadBalancer>> {
    let lc = lb_config(cfg);
    if detect_lb(cfg)? == ipvs::Kind::Ebpf {
        ensure_bpffs(&lc.pin_dir)?;
    }
    let lb = ipvs::open(&lc).map_err(|e| anyhow::anyhow!("load balancer: {e}"))?;
    tracing::info!(kind = %lb.kind(), "service load balancer");
    Ok(lb)
}

/// Makes `dir` a bpffs (mounting one there unless it already is one, as Cilium does), so pinned
/// maps outlive the agent.
fn ensure_bpffs(dir: &std::path::Path) -> anyhow::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let st = nix::sys::statfs::statfs(dir)
        .map_err(|e| anyhow::anyhow!("statfs {}: {e}", dir.display()))?;
    if st.filesystem_type().0 as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("mount a bpffs on {}: {e}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "mounted a bpffs for the load balancer's pinned maps");
    Ok(())
}

/// The node's DNS resolver for its tasks: upstreams from `--dns-upstream` or the node's
/// resolv.conf, dialled from the agent's own (the node's) network namespace.
fn resolver(cfg: &Config) -> anyhow::Result<Arc<dns::Resolver>> {
    let mut dc = dns::Config::from_resolv_conf(&cfg.node_resolv_conf());
    if !cfg.dns_upstreams.is_empty() {
        dc.upstreams = cfg.dns_upstreams.clone();
    }
    dc.upstream_netns = Some(netns::NetNs::current()?);
    tracing::info!(upstreams = ?dc.upstreams, "tasks' DNS resolver");
    Ok(dns::Resolver::new(dc)?)
}

/// The node's runtime: gossip and the executor, each started again with backoff when it fails
/// (gossip: it cannot start, or one of its loops ended; executor: it cannot start, its task
/// ended or panicked). While one is broken, or the executor's full passes keep failing, the
/// member's [`RuntimeHealth`](crate::supervisor::RuntimeHealth) says why and the node reports
/// itself not ready. Runs under [`crate::supervisor::supervise`] (an error or a panic here
/// starts the whole runtime again).
pub async fn run(agent: Arc<Agent>, member: Arc<Member>) -> anyhow::Result<()> {
    // The cluster's settings arrive with the dispatcher's Welcome.
    let mut info_rx = member.cluster_info.subscribe();
    loop {
        if info_rx.borrow_and_update().is_some() {
            break;
        }
        tokio::select! {
            _ = member.cancel.cancelled() => return Ok(()),
            r = info_rx.changed() => if r.is_err() { return Ok(()) },
        }
    }
    let state = member.node_state();
    let advertise: IpAddr = state.advertise_addr.parse().map_err(|_| {
        anyhow::anyhow!(
            "the advertise address {:?} is not an IP address",
            state.advertise_addr
        )
    })?;
    // What an earlier run of the runtime (one that failed) left is let go: its gossip socket
    // is released once nothing holds it.
    member.gossip.set(None);
    member.resolver.set(None);
    member.lb.set(None);
    let now = Instant::now();
    let mut rt = Runtime {
        agent,
        member,
        advertise,
        gossip: None,
        keys: None,
        exec: None,
        gossip_backoff: Backoff::default(),
        exec_backoff: Backoff::default(),
        gossip_at: now,
        gossip_started: now,
        exec_at: now,
    };
    rt.run().await;
    Ok(())
}

/// A running executor, as the runtime watches it. Dropped (the runtime itself failed), it
/// aborts the executor: a restarted runtime never runs two.
struct Exec {
    task: tokio::task::JoinHandle<()>,
    health: watch::Receiver<executor::node::Health>,
    passes: mpsc::Receiver<executor::node::PassTime>,
    started: Instant,
}

impl Drop for Exec {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Wake {
    Stop,
    ExecEnded(Result<(), tokio::task::JoinError>),
    ExecHealth(executor::node::Health),
    ExecPass(executor::node::PassTime),
    Status(executor::node::StatusReport),
    Tick,
    Due,
}

/// The next thing a running executor says (never, without one).
async fn exec_event(exec: &mut Option<Exec>) -> Wake {
    let Some(e) = exec else {
        return std::future::pending().await;
    };
    tokio::select! {
        r = &mut e.task => Wake::ExecEnded(r),
        Ok(()) = e.health.changed() => Wake::ExecHealth(e.health.borrow_and_update().clone()),
        Some(p) = e.passes.recv() => Wake::ExecPass(p),
    }
}

struct Runtime {
    agent: Arc<Agent>,
    member: Arc<Member>,
    advertise: IpAddr,
    gossip: Option<Arc<Gossip>>,
    /// The gossip keys the running gossip has.
    keys: Option<Keyring>,
    exec: Option<Exec>,
    gossip_backoff: Backoff,
    exec_backoff: Backoff,
    /// When to (re)start gossip / the executor if it is not running.
    gossip_at: Instant,
    gossip_started: Instant,
    exec_at: Instant,
}

impl Runtime {
    async fn run(&mut self) {
        let (status_tx, mut status_rx) = mpsc::channel(256);
        let mut sync = tokio::time::interval(Duration::from_secs(1));
        loop {
            if self.gossip.is_none() && Instant::now() >= self.gossip_at {
                self.start_gossip().await;
            }
            if self.exec.is_none()
                && Instant::now() >= self.exec_at
                && let Some(g) = self.gossip.clone()
            {
                self.start_executor(g, &status_tx);
            }
            let due = [
                self.gossip.is_none().then_some(self.gossip_at),
                self.exec.is_none().then_some(self.exec_at),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let wake = tokio::select! {
                _ = self.member.cancel.cancelled() => Wake::Stop,
                w = exec_event(&mut self.exec) => w,
                Some(s) = status_rx.recv() => Wake::Status(s),
                _ = sync.tick() => Wake::Tick,
                _ = tokio::time::sleep_until(due.into()) => Wake::Due,
            };
            match wake {
                Wake::Stop => break,
                Wake::ExecEnded(r) => self.executor_ended(r),
                Wake::ExecHealth(h) => self.executor_health(h),
                Wake::ExecPass((full, took, ok)) => crate::metrics::executor_pass(full, took, ok),
                Wake::Status((task, status)) => {
                    crate::metrics::task_report(status.state);
                    self.member
                        .task_status
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(task, status);
                    self.member.task_status_notify.notify_one();
                }
                Wake::Tick => self.tick().await,
                Wake::Due => {}
            }
        }
        self.stop().await;
    }

    /// Starts gossip (a role change restarts the membership: the previous one's socket may be
    /// released a moment after this one starts, hence the retries on "address in use").
    async fn start_gossip(&mut self) {
        let member = &self.member;
        let cfg = &self.agent.cfg;
        let state = member.node_state();
        let info = member.cluster_info.borrow().clone();
        let Some(keys) = info.as_ref().and_then(|i| keyring(&i.network_keys)) else {
            self.gossip_failed("the cluster has no gossip keys".into());
            return;
        };
        let mut gcfg = gossip::Config::new(state.node_id.clone(), self.advertise, keys.clone());
        gcfg.cluster_id = info.map(|i| i.id).unwrap_or_default();
        gcfg.bind = SocketAddr::new(self.advertise, cfg.gossip_port);
        gcfg.seeds = seeds(member, cfg, self.advertise);
        gcfg.vtep = state.data_path_addr.parse().ok();
        let interval = Duration::from_millis(cfg.gossip_interval_ms);
        gcfg.timings = Timings {
            gossip_interval: interval,
            failure_timeout: Duration::from_millis(cfg.gossip_failure_timeout_ms),
            rejoin_interval: (interval * 8).max(Duration::from_millis(500)),
            ..Timings::default()
        };
        let mut tries = 0;
        let started = loop {
            match Gossip::start(gcfg.clone()).await {
                Err(gossip::Error::Bind { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse && tries < 50 =>
                {
                    tries += 1;
                    tokio::select! {
                        _ = member.cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                r => break r,
            }
        };
        match started {
            Ok(g) => {
                let g = Arc::new(g);
                tracing::info!(addr = %g.addr(), "gossip started");
                member.gossip.set(Some(g.clone()));
                member.health.clear(GOSSIP);
                self.gossip = Some(g);
                self.keys = Some(keys);
                self.gossip_started = Instant::now();
            }
            Err(e) => self.gossip_failed(format!("cannot start: {e}")),
        }
    }

    fn gossip_failed(&mut self, why: String) {
        self.member.health.set(GOSSIP, why);
        self.gossip_at = Instant::now() + self.gossip_backoff.next_delay();
    }

    /// Starts the executor (with a fresh resolver and load-balancer handle, as an agent
    /// restart would: it adopts what the previous one left and writes nothing that is right).
    fn start_executor(&mut self, gossip: Arc<Gossip>, status: &mpsc::Sender<StatusReport>) {
        let member = &self.member;
        let cfg = &self.agent.cfg;
        let started = (|| {
            let resolver = resolver(cfg)?;
            let lb = load_balancer(cfg)?;
            let h = executor::node::spawn(
                executor_config(cfg, member)?,
                gossip,
                member.assignments.subscribe(),
                status.clone(),
                Some(resolver.clone()),
                Some(lb),
                // One counter for the node: it goes on across an executor restart.
                member.dataplane_writes.clone(),
            )?;
            anyhow::Ok((h, resolver))
        })();
        match started {
            Ok((h, resolver)) => {
                member.resolver.set(Some(resolver));
                member.lb.set(h.lb.clone());
                self.exec = Some(Exec {
                    task: h.task,
                    health: h.health,
                    passes: h.pass_times,
                    started: Instant::now(),
                });
            }
            Err(e) => {
                member
                    .health
                    .set(EXECUTOR, format!("cannot start: {e:#} (restarting)"));
                self.exec_at = Instant::now() + self.exec_backoff.next_delay();
            }
        }
    }

    fn executor_ended(&mut self, r: Result<(), tokio::task::JoinError>) {
        let Some(exec) = self.exec.take() else { return };
        if exec.started.elapsed() >= STABLE {
            self.exec_backoff.reset();
        }
        let why = match r {
            Ok(()) => "it stopped unexpectedly".to_string(),
            Err(e) => crate::supervisor::panic_message(e),
        };
        self.member
            .health
            .set(EXECUTOR, format!("{why} (restarting)"));
        self.exec_at = Instant::now() + self.exec_backoff.next_delay();
    }

    /// The executor's passes: failing (not ready, why), or succeeding again (ready).
    fn executor_health(&mut self, h: executor::node::Health) {
        match h.failing {
            Some(why) => self.member.health.set(EXECUTOR, why),
            None if h.synced => self.member.health.clear(EXECUTOR),
            None => {}
        }
    }

    /// Once a second: gossip's seeds and keys follow the cluster, and gossip that stopped
    /// working is started again (with the executor, which holds it).
    async fn tick(&mut self) {
        let member = &self.member;
        let Some(g) = self.gossip.clone() else { return };
        if let Some(why) = g.stalled() {
            if self.gossip_started.elapsed() >= STABLE {
                self.gossip_backoff.reset();
            }
            drop(g);
            self.stop_executor().await;
            self.member.gossip.set(None);
            self.gossip = None;
            self.gossip_failed(format!("{why} (restarting)"));
            return;
        }
        g.set_seeds(seeds(member, &self.agent.cfg, self.advertise));
        let keys = member
            .cluster_info
            .borrow()
            .as_ref()
            .and_then(|i| keyring(&i.network_keys));
        if let Some(k) = keys
            && Some(&k) != self.keys.as_ref()
        {
            match g.set_keyring(k.clone()) {
                Ok(()) => self.keys = Some(k),
                Err(e) => tracing::warn!(error = %e, "could not update the gossip keys"),
            }
        }
    }

    async fn stop_executor(&mut self) {
        if let Some(mut e) = self.exec.take() {
            e.task.abort();
            let _ = (&mut e.task).await;
        }
        self.exec_at = Instant::now();
    }

    /// The membership stops: the executor first (tasks keep running), then gossip — leaving
    /// gracefully when the node leaves the swarm, else silently (peers keep its endpoints for
    /// the next run).
    async fn stop(&mut self) {
        self.stop_executor().await;
        self.member.gossip.set(None);
        if let Some(g) = self.gossip.take()
            && let Ok(g) = Arc::try_unwrap(g)
        {
            if self
                .member
                .leaving
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                let _ = g.shutdown().await;
            } else {
                g.stop().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: u64) -> EncryptionKey {
        EncryptionKey {
            subsystem: "gossip".into(),
            algorithm: "aes-256-gcm".into(),
            key: vec![t as u8; 32],
            lamport_time: t,
        }
    }

    #[test]
    fn the_second_newest_key_sends_and_all_are_accepted() {
        let mut ipsec = key(9);
        ipsec.subsystem = "ipsec".into();
        let k = keyring(&[key(1), key(2), key(3), ipsec]).unwrap();
        assert_eq!(k.primary.id, 2);
        let mut acc: Vec<u32> = k.accepted.iter().map(|k| k.id).collect();
        acc.sort();
        assert_eq!(acc, [1, 3]);
        assert_eq!(keyring(&[key(5)]).unwrap().primary.id, 5);
        assert!(keyring(&[]).is_none());
    }
}
