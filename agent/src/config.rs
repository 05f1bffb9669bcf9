//! The daemon's configuration: command-line flags over an optional TOML file over defaults.
//!
//! ```toml
//! # /etc/netagent/netagent.toml (every key optional; flags win)
//! host = "/run/netagent/netagent.sock"
//! state_dir = "/var/lib/netagent"
//! hostname = "node1"
//! advertise_addr = "198.18.0.1"
//! data_path_addr = "198.18.0.1"
//! cluster_port = 2377
//! heartbeat_ms = 5000
//! election_timeout_ms = 1000
//! snapshot_every = 10000
//! log_format = "text"   # or "json"
//! log_level = "info"    # a tracing filter, e.g. "info,openraft=warn"
//! gossip_port = 7946
//! gossip_interval_ms = 250
//! gossip_failure_timeout_ms = 5000
//! netns_prefix = "netagent-"       # names of the namespaces netagent creates
//! cgroup_parent = "/sys/fs/cgroup/netagent"   # default: netagent/ under the cgroup2 mount
//! stop_grace_ms = 10000            # SIGTERM to SIGKILL when a task stops
//! drain_ms = 2000                  # a serving task leaves the load balancers this long before it stops
//! restart_delay_ms = 5000          # before a failed task is replaced (leader)
//! gwbridge = "docker_gwbridge"
//! resolv_conf = "/etc/resolv.conf"  # the node's resolvers: upstreams of the tasks' DNS
//! dns_upstream = ["192.0.2.53:53"]  # instead of those of resolv_conf
//! metrics_addr = "127.0.0.1:9323"  # also serve GET /metrics on TCP (always on the API socket)
//! lb = "auto"                      # service VIPs: "ebpf", "ipvs" or "auto" (eBPF if the kernel can)
//! bpf_dir = "/sys/fs/bpf/netagent" # where the eBPF load balancer pins its maps (a bpffs)
//! fast_path = true                 # the eBPF overlay fast path and mesh shortcut (false: --no-fast-path)
//! ingress_snat = false             # Docker's mesh: tasks see the node, not the client
//! ```

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use serde::Deserialize;

pub const DEFAULT_HOST: &str = "/run/netagent/netagent.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netagent";
pub const DEFAULT_CLUSTER_PORT: u16 = 2377;

/// `--dns-upstream` values: an address, with port 53 unless given.
fn parse_upstreams(values: Vec<String>) -> Result<Vec<std::net::SocketAddr>> {
    values
        .iter()
        .map(|v| {
            let v = v.trim();
            if let Ok(ip) = v.parse::<std::net::IpAddr>() {
                return Ok(std::net::SocketAddr::new(ip, 53));
            }
            v.parse::<std::net::SocketAddr>().with_context(|| {
                format!("invalid --dns-upstream {v:?}: give an IP address, optionally with :PORT (e.g. 192.0.2.53 or [2001:db8::53]:53)")
            })
        })
        .collect()
}

/// netagent: the swarm networking daemon (one per node, as root).
#[derive(Debug, Parser, Default)]
#[command(name = "netagent", version = crate::LONG_VERSION)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Unix socket of the API (mode 0660).
    #[arg(long, short = 'H', env = "NETAGENT_HOST")]
    pub host: Option<PathBuf>,
    /// Directory of the node's state (identity, certificates, Raft store).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Name of this node in the swarm (default: the system's hostname).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Default address advertised to the other nodes (overridden by `swarm init/join`).
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Default VXLAN source address (overridden by `swarm init/join`).
    #[arg(long)]
    pub data_path_addr: Option<String>,
    /// TCP port of the cluster (Raft, join, control, dispatcher).
    #[arg(long)]
    pub cluster_port: Option<u16>,
    /// Dispatcher heartbeat period in milliseconds, for a swarm this node initialises; managers
    /// also probe each other at this period.
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Raft election timeout in milliseconds (the minimum; the maximum is twice it).
    #[arg(long)]
    pub election_timeout_ms: Option<u64>,
    /// Snapshot the store (and compact the Raft log) every this many entries.
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    /// Log format: text or json.
    #[arg(long)]
    pub log_format: Option<String>,
    /// Log filter (tracing env-filter syntax), e.g. "info" or "debug,openraft=info".
    #[arg(long)]
    pub log_level: Option<String>,
    /// UDP port of gossip.
    #[arg(long)]
    pub gossip_port: Option<u16>,
    /// Gossip round period in milliseconds.
    #[arg(long)]
    pub gossip_interval_ms: Option<u64>,
    /// How long a silent node stays alive for gossip, in milliseconds.
    #[arg(long)]
    pub gossip_failure_timeout_ms: Option<u64>,
    /// Prefix of the names of the network namespaces netagent creates.
    #[arg(long)]
    pub netns_prefix: Option<String>,
    /// cgroup2 directory under which tasks get their cgroups.
    #[arg(long)]
    pub cgroup_parent: Option<PathBuf>,
    /// Grace between SIGTERM and SIGKILL when a task stops, in milliseconds.
    #[arg(long)]
    pub stop_grace_ms: Option<u64>,
    /// How long a serving task is out of the load balancers and names before it is stopped,
    /// in milliseconds (docker: 2000).
    #[arg(long)]
    pub drain_ms: Option<u64>,
    /// Delay before a failed or finished task is replaced, in milliseconds (leader).
    #[arg(long)]
    pub restart_delay_ms: Option<u64>,
    /// Name of the gateway bridge.
    #[arg(long)]
    pub gwbridge: Option<String>,
    /// The node's resolv.conf: its nameservers (at most 3) are the upstreams of the tasks'
    /// DNS, its search and options lines go into every task's resolv.conf.
    #[arg(long)]
    pub resolv_conf: Option<PathBuf>,
    /// An upstream resolver for the tasks' DNS (ADDR or ADDR:PORT; repeat for more, in order),
    /// instead of the nameservers of the resolv.conf.
    #[arg(long = "dns-upstream")]
    pub dns_upstream: Vec<String>,
    /// Also serve Prometheus metrics (GET /metrics) on this TCP address, e.g. 127.0.0.1:9323.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// How service VIPs are balanced: ebpf (socket LB), ipvs, or auto (eBPF when the kernel
    /// supports the hooks, else IPVS).
    #[arg(long)]
    pub lb: Option<String>,
    /// Directory on a bpffs where the eBPF load balancer pins its maps and links, so a
    /// restarted agent adopts them.
    #[arg(long)]
    pub bpf_dir: Option<PathBuf>,
    /// Leave every overlay frame to the sandbox bridges instead of the eBPF fast path, and
    /// published ports to the node's nftables path instead of the routing mesh's eBPF shortcut
    /// (both used by default where the kernel can run them: Linux >= 5.10; TCX links from 6.6,
    /// tc filters before).
    #[arg(long)]
    pub no_fast_path: bool,
    /// Docker's routing mesh on this node: connections through its published ports reach the
    /// task from this node's ingress address (SNAT), so replies come back through it whatever
    /// the routing, and the task no longer sees the client's address.
    #[arg(long)]
    pub ingress_snat: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    host: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    hostname: Option<String>,
    advertise_addr: Option<String>,
    data_path_addr: Option<String>,
    cluster_port: Option<u16>,
    heartbeat_ms: Option<u64>,
    election_timeout_ms: Option<u64>,
    snapshot_every: Option<u64>,
    log_format: Option<String>,
    log_level: Option<String>,
    gossip_port: Option<u16>,
    gossip_interval_ms: Option<u64>,
    gossip_failure_timeout_ms: Option<u64>,
    netns_prefix: Option<String>,
    cgroup_parent: Option<PathBuf>,
    stop_grace_ms: Option<u64>,
    drain_ms: Option<u64>,
    restart_delay_ms: Option<u64>,
    gwbridge: Option<String>,
    resolv_conf: Option<PathBuf>,
    dns_upstream: Option<Vec<String>>,
    metrics_addr: Option<std::net::SocketAddr>,
    lb: Option<String>,
    bpf_dir: Option<PathBuf>,
    fast_path: Option<bool>,
    ingress_snat: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: PathBuf,
    pub state_dir: PathBuf,
    pub hostname: String,
    pub advertise_addr: Option<String>,
    pub data_path_addr: Option<String>,
    pub cluster_port: u16,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    pub snapshot_every: u64,
    pub log_format: LogFormat,
    pub log_level: String,
    pub gossip_port: u16,
    pub gossip_interval_ms: u64,
    pub gossip_failure_timeout_ms: u64,
    pub netns_prefix: String,
    /// None when the host has no cgroup2 mount.
    pub cgroup_parent: Option<PathBuf>,
    pub stop_grace_ms: u64,
    pub drain_ms: u64,
    pub restart_delay_ms: u64,
    pub gwbridge: String,
    pub resolv_conf: PathBuf,
    /// Explicit upstreams of the tasks' DNS; empty: the resolv.conf's nameservers.
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// TCP address of the metrics endpoint, if any.
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub lb: ipvs::Choice,
    pub bpf_dir: PathBuf,
    /// Whether the eBPF overlay fast path is wanted (`--no-fast-path`: false).
    pub fast_path: bool,
    /// Whether the node's ingress sbox SNATs mesh connections (`--ingress-snat`).
    pub ingress_snat: bool,
}

impl Config {
    pub fn load(args: Args) -> Result<Config> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read the configuration file {}", path.display())
                })?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid configuration file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let log_format = match args
            .log_format
            .or(file.log_format)
            .as_deref()
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => anyhow::bail!("unknown log format {other:?}: use text or json"),
        };
        let hostname = match args.hostname.or(file.hostname) {
            Some(h) => h,
            None => nix::unistd::gethostname()
                .context("cannot read the system's hostname; pass --hostname")?
                .to_string_lossy()
                .into_owned(),
        };
        let heartbeat_ms = args.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(5_000);
        let election_timeout_ms = args
            .election_timeout_ms
            .or(file.election_timeout_ms)
            .unwrap_or(1_000);
        anyhow::ensure!(heartbeat_ms >= 10, "--heartbeat-ms must be at least 10");
        let gossip_interval_ms = args
            .gossip_interval_ms
            .or(file.gossip_interval_ms)
            .unwrap_or(250);
        let gossip_failure_timeout_ms = args
            .gossip_failure_timeout_ms
            .or(file.gossip_failure_timeout_ms)
            .unwrap_or(5_000);
        anyhow::ensure!(
            gossip_interval_ms >= 10 && gossip_failure_timeout_ms >= 2 * gossip_interval_ms,
            "--gossip-interval-ms must be at least 10 and --gossip-failure-timeout-ms at least twice it"
        );
        let netns_prefix = args
            .netns_prefix
            .or(file.netns_prefix)
            .unwrap_or_else(|| "netagent-".into());
        anyhow::ensure!(
            netns::validate_name(&format!("{netns_prefix}x")).is_ok() && netns_prefix.len() <= 100,
            "invalid --netns-prefix {netns_prefix:?}: use up to 100 characters of [A-Za-z0-9_.-]"
        );
        anyhow::ensure!(
            election_timeout_ms >= 50,
            "--election-timeout-ms must be at least 50"
        );
        Ok(Config {
            host: args
                .host
                .or(file.host)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_HOST)),
            state_dir: args
                .state_dir
                .or(file.state_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            hostname,
            advertise_addr: args.advertise_addr.or(file.advertise_addr),
            data_path_addr: args.data_path_addr.or(file.data_path_addr),
            cluster_port: args
                .cluster_port
                .or(file.cluster_port)
                .unwrap_or(DEFAULT_CLUSTER_PORT),
            heartbeat_ms,
            election_timeout_ms,
            snapshot_every: args
                .snapshot_every
                .or(file.snapshot_every)
                .unwrap_or(10_000)
                .max(10),
            log_format,
            log_level: args
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            gossip_port: args.gossip_port.or(file.gossip_port).unwrap_or(7946),
            gossip_interval_ms,
            gossip_failure_timeout_ms,
            netns_prefix,
            cgroup_parent: args
                .cgroup_parent
                .or(file.cgroup_parent)
                .or_else(|| netns::cgroup2_mount().map(|m| m.join("netagent"))),
            stop_grace_ms: args.stop_grace_ms.or(file.stop_grace_ms).unwrap_or(10_000),
            drain_ms: args.drain_ms.or(file.drain_ms).unwrap_or(2_000),
            restart_delay_ms: args
                .restart_delay_ms
                .or(file.restart_delay_ms)
                .unwrap_or(5_000),
            gwbridge: args
                .gwbridge
                .or(file.gwbridge)
                .unwrap_or_else(|| "docker_gwbridge".into()),
            resolv_conf: args
                .resolv_conf
                .or(file.resolv_conf)
                .unwrap_or_else(|| "/etc/resolv.conf".into()),
            dns_upstreams: parse_upstreams(if args.dns_upstream.is_empty() {
                file.dns_upstream.unwrap_or_default()
            } else {
                args.dns_upstream
            })?,
            metrics_addr: args.metrics_addr.or(file.metrics_addr),
            lb: match args.lb.or(file.lb) {
                Some(v) => v
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("invalid --lb: {e}"))?,
                None => ipvs::Choice::Auto,
            },
            bpf_dir: args
                .bpf_dir
                .or(file.bpf_dir)
                .unwrap_or_else(|| "/sys/fs/bpf/netagent".into()),
            fast_path: !args.no_fast_path && file.fast_path.unwrap_or(true),
            ingress_snat: args.ingress_snat || file.ingress_snat.unwrap_or(false),
        })
    }

    /// The node's resolv.conf as text (empty if it cannot be read: tasks then get only the
    /// embedded resolver, which answers SERVFAIL for outside names).
    pub fn node_resolv_conf(&self) -> String {
        match std::fs::read_to_string(&self.resolv_conf) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(path = %self.resolv_conf.display(), error = %e, "cannot read the node's resolv.conf; tasks' DNS has no upstream");
                String::new()
            }
        }
    }

    pub fn raft_dir(&self) -> PathBuf {
        self.state_dir.join("raft")
    }

    pub fn store_config(&self) -> store::StoreConfig {
        store::StoreConfig {
            heartbeat_ms: (self.election_timeout_ms / 5).max(10),
            election_min_ms: self.election_timeout_ms,
            election_max_ms: self.election_timeout_ms * 2,
            snapshot_every: self.snapshot_every,
            keep_behind_snapshot: (self.snapshot_every / 10).max(10),
        }
    }

    /// Where this node's cluster port is reached: advertise address and port.
    pub fn cluster_addr(&self, advertise: &str) -> String {
        if advertise.contains(':')
            && !advertise.starts_with('[')
            && advertise.parse::<std::net::Ipv6Addr>().is_err()
        {
            advertise.to_string()
        } else {
            format!("{advertise}:{}", self.cluster_port)
        }
    }

    pub fn state_path(&self, name: &str) -> PathBuf {
        self.state_dir.join(name)
    }
}

/// Writes a file atomically (temporary file, fsync, rename) with the given mode.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("netagent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("netagent.toml");
        std::fs::write(
            &file,
            "hostname = \"from-file\"\nheartbeat_ms = 300\nlog_format = \"json\"\ncluster_port = 3000\n",
        )
        .unwrap();
        let cfg = Config::load(Args {
            config: Some(file.clone()),
            heartbeat_ms: Some(100),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.hostname, "from-file");
        assert_eq!(cfg.heartbeat_ms, 100, "the flag wins");
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.cluster_addr("10.0.0.1"), "10.0.0.1:3000");
        assert_eq!(cfg.host, PathBuf::from(DEFAULT_HOST));
        std::fs::write(&file, "bogus = 1\n").unwrap();
        let err = Config::load(Args {
            config: Some(file),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_fast_path_is_on_unless_switched_off() {
        let load = |no_fast_path| {
            Config::load(Args {
                hostname: Some("n".into()),
                no_fast_path,
                ..Default::default()
            })
            .unwrap()
        };
        assert!(load(false).fast_path);
        assert!(!load(true).fast_path, "--no-fast-path");
        let parsed = Args::try_parse_from(["netagent", "--no-fast-path"]).unwrap();
        assert!(parsed.no_fast_path);
    }

    #[test]
    fn the_example_configuration_loads() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../contrib/netagent.toml");
        let cfg = Config::load(Args {
            config: Some(PathBuf::from(example)),
            hostname: Some("n".into()),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("contrib/netagent.toml: {e:#}"));
        assert_eq!(cfg.cluster_port, 2377);
        assert_eq!(cfg.host, PathBuf::from(DEFAULT_HOST));
        assert_eq!(cfg.metrics_addr, None);
    }
}
