//! What a node tells the managers about itself (`node inspect`: platform, resources, version).

use model::node::NodeDescription;

pub fn describe(cfg: &crate::config::Config) -> NodeDescription {
    let hostname = &cfg.hostname;
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    NodeDescription {
        hostname: hostname.to_string(),
        os: std::env::consts::OS.to_string(),
        architecture: std::env::consts::ARCH.to_string(),
        nano_cpus: cpus * 1_000_000_000,
        memory_bytes: mem_total().unwrap_or(0),
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
        load_balancer: load_balancer(cfg),
        fast_path: vxlan::fast_path_status(cfg.fast_path).to_string(),
        ipsec: Some(ipsec()),
    }
}

/// The node's load balancer (detected once per process, at start).
fn load_balancer(cfg: &crate::config::Config) -> String {
    crate::node_runtime::detect_lb(cfg)
        .map(|k| k.to_string())
        .unwrap_or_default()
}

/// Whether this kernel can encrypt overlays, probed once.
fn ipsec() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| vxlan::ipsec::probe().is_ok())
}

fn mem_total() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The only non-loopback IPv4 address of this node's interfaces, for a default advertise address.
pub fn default_addr() -> Result<String, String> {
    let addrs: Vec<String> = nix::ifaddrs::getifaddrs()
        .map_err(|e| format!("cannot list this node's addresses: {e}"))?
        .filter_map(|ifa| {
            let sin = ifa.address?.as_sockaddr_in().map(|s| s.ip())?;
            (!sin.is_loopback()).then(|| sin.to_string())
        })
        .collect();
    match addrs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(
            "could not find an IP address to advertise; specify one with --advertise-addr".into(),
        ),
        _ => Err(format!(
            "could not choose an IP address to advertise since this system has multiple addresses ({}); specify one with --advertise-addr",
            addrs.join(", ")
        )),
    }
}
