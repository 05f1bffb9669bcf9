//! `cargo xtask bench services`, on a 5-node swarm (3 managers, 2 workers) in the lab:
//! 1. Time from `service create` (10 replicas) until every task is reachable from every node
//!    (a TCP connect from a probe task on each node to each replica), p50/p99 over repeated runs.
//! 2. Agent RSS: idle, and with 1,000 tasks' endpoints known (one service of 1,000 replicas).
//!
//! Needs root. Knobs: BENCH_RUNS (10), BENCH_ENDPOINTS (1000).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::Swarm;
use common::tasks::TaskNs;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn report_rss(s: &Swarm, what: &str) {
    let rss: Vec<u64> = s
        .agents
        .iter()
        .map(|a| a.pid().map(rss_kib).unwrap_or(0))
        .collect();
    let fmt: Vec<String> = rss
        .iter()
        .enumerate()
        .map(|(i, r)| format!("node{} {:.1} MB", i + 1, *r as f64 / 1024.0))
        .collect();
    println!("agent RSS, {what}: {}", fmt.join(", "));
    println!(
        "  managers max {:.1} MB, workers max {:.1} MB",
        rss[..3].iter().max().copied().unwrap_or(0) as f64 / 1024.0,
        rss[3..].iter().max().copied().unwrap_or(0) as f64 / 1024.0
    );
}

/// Full ids of a service's tasks that are meant to run.
fn task_ids(s: &Swarm, service: &str) -> BTreeSet<String> {
    s.service_ps(1, service)
        .into_iter()
        .filter(|t| t["DesiredState"] == "Running")
        .filter_map(|t| t["ID"].as_str().map(str::to_string))
        .collect()
}

/// Whether a TCP connection from inside `probe` to `addr:80` succeeds.
fn connects(probe: &TaskNs, addr: Ipv4Addr) -> bool {
    let Ok(ns) = netns::NetNs::open(&probe.ns) else {
        return false;
    };
    ns.run(move || {
        TcpStream::connect_timeout(&SocketAddr::from((addr, 80)), Duration::from_millis(200))
            .is_ok()
    })
    .unwrap_or(false)
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn main() {
    if !common::is_root() {
        eprintln!("bench services needs root (network namespaces)");
        std::process::exit(1);
    }
    let runs = env_usize("BENCH_RUNS", 10);
    let endpoints = env_usize("BENCH_ENDPOINTS", 1000);
    let s = Swarm::start(3, 2);
    std::thread::sleep(Duration::from_secs(5));
    report_rss(&s, "idle (5-node swarm, no service)");

    s.ctl(
        1,
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--subnet",
            "10.99.0.0/20",
            "bench",
        ],
    );
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--name",
            "probe",
            "--mode",
            "global",
            "--network",
            "bench",
            "--",
            "sleep",
            "36000",
        ],
    );
    let mut probes: Vec<TaskNs> = Vec::new();
    s.wait("a probe task on every node", || {
        let ids = task_ids(&s, "probe");
        probes = s
            .all_task_namespaces()
            .into_iter()
            .filter(|t| ids.contains(&t.id))
            .collect();
        probes.len() == 5
    });

    let mut times = Vec::new();
    for run in 0..runs {
        let name = format!("s{run}");
        let start = Instant::now();
        s.ctl(
            1,
            &[
                "service",
                "create",
                "--detach",
                "--name",
                &name,
                "--replicas",
                "10",
                "--network",
                "bench",
                "--",
                "busybox",
                "httpd",
                "-f",
                "-p",
                "80",
                "-h",
                "/",
            ],
        );
        let mut ips: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        let mut reached: BTreeSet<(usize, String)> = BTreeSet::new();
        loop {
            if ips.len() < 10 {
                let ids = task_ids(&s, &name);
                for t in s
                    .all_task_namespaces()
                    .into_iter()
                    .filter(|t| ids.contains(&t.id))
                {
                    if !ips.contains_key(&t.id)
                        && let Some(ip) = s.task_ip(&t, "eth0")
                    {
                        ips.insert(t.id.clone(), ip);
                    }
                }
            }
            for (p, probe) in probes.iter().enumerate() {
                for (id, ip) in &ips {
                    if !reached.contains(&(p, id.clone())) && connects(probe, *ip) {
                        reached.insert((p, id.clone()));
                    }
                }
            }
            if ips.len() == 10 && reached.len() == 10 * probes.len() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "run {run}: not reachable within 2 minutes\n{}",
                s.logs()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = start.elapsed();
        println!(
            "run {run}: 10 replicas reachable from all 5 nodes after {:.0} ms",
            t.as_secs_f64() * 1000.0
        );
        times.push(t);
        s.ctl(1, &["service", "rm", &name]);
        s.wait("the service's tasks are gone", || {
            let gone: BTreeSet<String> = ips.keys().cloned().collect();
            !s.all_task_namespaces().iter().any(|t| gone.contains(&t.id))
        });
    }
    times.sort();
    println!(
        "service create -> reachable everywhere (10 replicas, 5 nodes, {runs} runs): p50 {:.0} ms, p99 {:.0} ms (goal p50 < 500 ms)",
        percentile(&times, 0.5).as_secs_f64() * 1000.0,
        percentile(&times, 0.99).as_secs_f64() * 1000.0
    );

    // Memory with many endpoints known: one service of `endpoints` replicas on the network.
    let start = Instant::now();
    let n = endpoints.to_string();
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "many",
            "--replicas",
            &n,
            "--network",
            "bench",
            "--",
            "sleep",
            "36000",
        ],
    );
    let total = endpoints + 5;
    let mut known = 0;
    let deadline = Duration::from_secs(900);
    while start.elapsed() < deadline {
        let out = s.ctl(1, &["network", "inspect", "bench"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        known = v[0]["Endpoints"].as_array().map(|a| a.len()).unwrap_or(0);
        if known >= total {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    println!(
        "{known} endpoints known on node1 after {:.0} s",
        start.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(5));
    report_rss(&s, &format!("with {known} tasks' endpoints known"));
}
