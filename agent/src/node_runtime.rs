//! The per-node components every member runs, managers and workers alike: gossip on 7946 and
//! the executor. They start once the dispatcher session delivered the cluster's settings (gossip
//! keys, data-path port) and stop with the membership; tasks keep running across an agent
//! restart and are adopted by the next executor.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gossip::{Gossip, Key, Keyring, Timings};
use model::cluster::EncryptionKey;
use tokio::sync::mpsc;

use crate::agent::Agent;
use crate::config::Config;
use crate::member::Member;

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
    // executor holds its attachments (a restart then attaches again).
    let fast_bpf_dir = match cfg.fast_path {
        true => match ensure_bpffs(&cfg.bpf_dir) {
            Ok(()) => Some(cfg.bpf_dir.join("fastpath")),
            Err(e) => {
                tracing::warn!(error = %e, "no bpffs for the overlay fast path's pins; a restart attaches again");
                None
            }
        },
        false => None,
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
        resolv_conf: dns::task_resolv_conf(&cfg.node_resolv_conf()),
        retry: Duration::from_secs(1),
        gossip_settle: Duration::from_millis(cfg.gossip_failure_timeout_ms)
            .max(Duration::from_secs(1)),
        fast_path: cfg.fast_path,
        bpf_dir: fast_bpf_dir,
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

pub async fn run(agent: Arc<Agent>, member: Arc<Member>) {
    if let Err(e) = run_inner(&agent, &member).await {
        tracing::error!(error = %e, "the node's gossip and executor could not start; tasks will not run on this node");
    }
}

async fn run_inner(agent: &Arc<Agent>, member: &Arc<Member>) -> anyhow::Result<()> {
    let cfg = &agent.cfg;
    // The cluster's settings arrive with the dispatcher's Welcome.
    let mut info_rx = member.cluster_info.subscribe();
    let info = loop {
        if let Some(i) = info_rx.borrow_and_update().clone() {
            break i;
        }
        tokio::select! {
            _ = member.cancel.cancelled() => return Ok(()),
            r = info_rx.changed() => if r.is_err() { return Ok(()) },
        }
    };
    let state = member.node_state();
    let advertise: IpAddr = state.advertise_addr.parse().map_err(|_| {
        anyhow::anyhow!(
            "the advertise address {:?} is not an IP address",
            state.advertise_addr
        )
    })?;
    let keys = keyring(&info.network_keys)
        .ok_or_else(|| anyhow::anyhow!("the cluster has no gossip keys"))?;
    let mut current_keys = keys.clone();
    let mut gcfg = gossip::Config::new(state.node_id.clone(), advertise, keys);
    gcfg.cluster_id = info.id.clone();
    gcfg.bind = SocketAddr::new(advertise, cfg.gossip_port);
    gcfg.seeds = seeds(member, cfg, advertise);
    gcfg.vtep = state.data_path_addr.parse().ok();
    let interval = Duration::from_millis(cfg.gossip_interval_ms);
    gcfg.timings = Timings {
        gossip_interval: interval,
        failure_timeout: Duration::from_millis(cfg.gossip_failure_timeout_ms),
        rejoin_interval: (interval * 8).max(Duration::from_millis(500)),
        ..Timings::default()
    };
    // A role change restarts the membership: the previous one's gossip socket may be released
    // a moment after this one starts.
    let mut tries = 0;
    let gossip = loop {
        match Gossip::start(gcfg.clone()).await {
            Ok(g) => break Arc::new(g),
            Err(gossip::Error::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && tries < 50 =>
            {
                tries += 1;
                tokio::select! {
                    _ = member.cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    let _ = member.gossip.set(gossip.clone());
    tracing::info!(addr = %gossip.addr(), "gossip started");

    let resolver = resolver(cfg)?;
    let _ = member.resolver.set(resolver.clone());
    let lb = load_balancer(cfg)?;
    let (status_tx, mut status_rx) = mpsc::channel(256);
    let exec = executor::node::spawn(
        executor_config(cfg, member)?,
        gossip.clone(),
        member.assignments.subscribe(),
        status_tx,
        Some(resolver),
        Some(lb),
    )?;
    let writes = exec.writes.clone();
    if let Some(lb) = exec.lb.clone() {
        let _ = member.lb.set(lb);
    }
    let mut passes = exec.pass_times;
    let mut sync = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = member.cancel.cancelled() => break,
            Some((task, status)) = status_rx.recv() => {
                crate::metrics::task_report(status.state);
                member.task_status.lock().unwrap_or_else(|e| e.into_inner()).insert(task, status);
                member.task_status_notify.notify_one();
            }
            Some((full, took, ok)) = passes.recv() => crate::metrics::executor_pass(full, took, ok),
            _ = sync.tick() => {
                member.dataplane_writes.store(writes.load(std::sync::atomic::Ordering::Relaxed), std::sync::atomic::Ordering::Relaxed);
                gossip.set_seeds(seeds(member, cfg, advertise));
                let keys = member.cluster_info.borrow().as_ref().and_then(|i| keyring(&i.network_keys));
                if let Some(k) = keys
                    && k != current_keys
                {
                    match gossip.set_keyring(k.clone()) {
                        Ok(()) => current_keys = k,
                        Err(e) => tracing::warn!(error = %e, "could not update the gossip keys"),
                    }
                }
            }
        }
    }
    exec.task.abort();
    let _ = exec.task.await;
    if let Ok(g) = Arc::try_unwrap(gossip) {
        if member.leaving.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = g.shutdown().await;
        } else {
            g.stop().await;
        }
    }
    Ok(())
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
