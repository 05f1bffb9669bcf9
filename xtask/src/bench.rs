//! `cargo xtask bench [NAME...]`: the system benchmarks. Each lives as a bench target of the crate
//! it measures (criterion, or `harness = false` for lab-based ones) and prints its figures; this
//! only maps names to cargo invocations so xtask itself stays light.

use anyhow::{Result, bail};

use crate::util::{cargo, exec, require_root};

/// (name, cargo package, bench target, what it measures)
pub const BENCHES: &[(&str, &str, &str, &str)] = &[
    (
        "ipam",
        "ipam",
        "ipam",
        "carve a /8 into /24s, allocate a /16, state size",
    ),
    (
        "gossip",
        "gossip",
        "convergence",
        "p50/p99 publish-to-all at 5/20/50 nodes; 50-node load; bytes inside vs outside a network",
    ),
    (
        "overlay",
        "vxlan",
        "overlay",
        "iperf3 overlay (fast path on/off) vs underlay, 1 and 8 streams, cubic pinned and the machine's default; ping-pong p50; encrypted vs plain; reconcile 100 nets/1k peers",
    ),
    (
        "ingress",
        "vxlan",
        "ingress",
        "requests/s through the routing mesh to a task on another node vs straight to it",
    ),
    (
        "store",
        "netagent",
        "store",
        "1 KiB writes/s and p50/p99 through the API of 3 managers vs etcd 3.4",
    ),
    (
        "dns",
        "dns",
        "dns",
        "embedded DNS vs dnsmasq (dnsperf): q/s, p50/p99 local and forwarded; memory at 10k services",
    ),
    (
        "lb",
        "ipvs",
        "lb",
        "eBPF socket LB: req/s via VIP vs direct; connect latency 1 vs 10k services; program 10k x 10, one change",
    ),
    (
        "services",
        "netagent",
        "services",
        "service create -> reachable (10 replicas, 5 nodes) p50/p99; agent RSS",
    ),
    (
        "task-start",
        "executor",
        "task_start",
        "task start (overlay endpoint, process) with few vs 2,000 namespaces and endpoints on the machine",
    ),
    (
        "scale",
        "netagent",
        "scale",
        "10 vs 2,000 services: one scale's time and dispatcher bytes; idle CPU and RSS per agent",
    ),
];

pub fn run(names: &[String]) -> Result<()> {
    require_root("cargo xtask bench")?;
    let selected: Vec<_> = BENCHES
        .iter()
        .filter(|(name, ..)| names.is_empty() || names.iter().any(|n| n == name))
        .collect();
    if selected.is_empty() {
        let known: Vec<&str> = BENCHES.iter().map(|b| b.0).collect();
        bail!(
            "no benchmark named {}; known: {}",
            names.join(", "),
            known.join(", ")
        );
    }
    for (name, package, target, what) in selected {
        eprintln!("== bench {name}: {what}");
        exec(cargo().args(["bench", "-p", package, "--bench", target]))?;
    }
    Ok(())
}
