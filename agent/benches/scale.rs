//! `cargo xtask bench scale` (issue 18): does a change cost the same with 10 and with 2,000
//! services in the store? On a 10-node lab swarm (1 manager, 9 workers), one network:
//! 1. with 10 services, then with 2,000 (one `sleep` task each): the time from `service scale`
//!    of one service (+5 tasks) until every node's resolver answers `tasks.SERVICE` with the 6
//!    running tasks, and the dispatcher bytes that one change cost. Each node is watched from a
//!    task of a global `probe` service there with `dig` (an O(1) question per poll, so the
//!    watching costs the same at both sizes; listing every task or scraping /metrics would not);
//! 2. idle CPU per agent over BENCH_IDLE_SECS (60) and leader/worker RSS, at both sizes.
//!
//! Before each size is measured the bench waits for a quiet machine (load average below 1.5):
//! a task start is kernel work, and an earlier lab's namespaces being torn down slow it.
//! Between a scale-down and the next scale-up the bench waits 2 s, so that the nodes have removed
//! the 5 tasks: each measured scale is one change, not one overlapping the previous one's cleanup.
//!
//! The agents run with production gossip, Raft and heartbeat timings (gossip every 250 ms and a
//! dispatcher heartbeat every 5 s, where the lab's tests use 100 ms and 200 ms: 25 times as many
//! heartbeats, and a node silent for 0.6 s goes down, which a 2-core machine creating 2,000
//! services can cause). Each scale prints when the first, the median and the last node answered.
//!
//! Needs root. Knobs: BENCH_SERVICES (2000), BENCH_IDLE_SECS (60), BENCH_RUNS (3),
//! BENCH_LAB_TIMINGS (set: the lab tests' faster gossip, Raft and heartbeat timings instead).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::bulk::{create_range, running_tasks};
use common::tasks::TaskNs;
use common::{Swarm, metric};

const NODES: usize = 10;
/// Between a scale-down and the next measured scale-up.
const SETTLE: Duration = Duration::from_secs(2);

/// The agents' defaults the lab overrides for speed.
const PRODUCTION_TIMINGS: &[(&str, &str)] = &[
    ("--gossip-interval-ms", "250"),
    ("--gossip-failure-timeout-ms", "5000"),
    ("--election-timeout-ms", "1000"),
    ("--heartbeat-ms", "5000"),
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_field(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // After the command name: state is field 0, utime 11, stime 12.
    n(11) + n(12)
}

fn agent_pids(s: &Swarm) -> Vec<u32> {
    s.agents.iter().filter_map(|a| a.pid()).collect()
}

fn every_node_knows(s: &Swarm, want: usize) -> bool {
    (1..=NODES).all(|i| metric(&s.metrics(i), "netagent_dns_tasks", &[]) as usize == want)
}

fn sent_bytes(s: &Swarm) -> f64 {
    let m = s.metrics(1);
    m.samples
        .iter()
        .filter(|x| x.metric == "netagent_dispatcher_assignments_sent_bytes_total")
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// The 1-minute load average.
fn load() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits (up to 10 minutes) for the machine to be quiet before a measurement: a task start is
/// kernel work (namespaces, veths, mounts), and the kernel tearing down an earlier lab's
/// thousands of namespaces holds the locks it needs; a scale measured then times that teardown
/// (0.25 s and 0.46 s for the same 10-service scale, a few minutes apart).
fn wait_quiet() {
    let t0 = Instant::now();
    while load() > 1.5 && t0.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_secs(5));
    }
    eprintln!(
        "bench scale: load {:.2} after waiting {:.0} s for a quiet machine",
        load(),
        t0.elapsed().as_secs_f64()
    );
}

/// How many addresses `tasks.SERVICE` has for a task (0 when the query fails).
fn answers(s: &Swarm, t: &TaskNs, service: &str) -> usize {
    let name = format!("tasks.{service}");
    let out = s.in_task(
        t,
        &["dig", "@127.0.0.11", "+short", "+time=1", "+tries=1", &name],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.parse::<std::net::Ipv4Addr>().is_ok())
        .count()
}

/// From `t0`, the time until each probe (one per node, watched in parallel) sees `want`
/// addresses for `tasks.SERVICE`, sorted (the last is when every node answers).
fn every_node_answers(
    s: &Swarm,
    probes: &[TaskNs],
    service: &str,
    want: usize,
    t0: Instant,
) -> Vec<f64> {
    std::thread::scope(|sc| {
        let watchers: Vec<_> = probes
            .iter()
            .map(|p| {
                sc.spawn(move || {
                    loop {
                        if answers(s, p, service) == want {
                            return t0.elapsed().as_secs_f64();
                        }
                        // Seconds are the norm; a probe task that was replaced (its node
                        // went down) is asked in a namespace that is gone, and answers nothing.
                        assert!(
                            t0.elapsed() < Duration::from_secs(120),
                            "node{} did not answer {want} tasks of {service} in 120 s (was its \
                             probe task replaced?)",
                            p.node
                        );
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        let mut times: Vec<f64> = watchers
            .into_iter()
            .map(|w| w.join().expect("watcher"))
            .collect();
        times.sort_by(f64::total_cmp);
        times
    })
}

/// Scales `target` 1 -> 6 and back, `runs` times: (median seconds until every node answers the
/// 6 tasks, median dispatcher bytes of the scale-up). Prints each run's first and last node.
fn scale_time(s: &Swarm, probes: &[TaskNs], target: &str, runs: usize) -> (f64, f64) {
    let mut times = Vec::new();
    let mut bytes = Vec::new();
    // One cycle first, not measured: the first scale after the services were created is the
    // slowest at either size.
    s.ctl(1, &["service", "scale", "--detach", &format!("{target}=6")]);
    every_node_answers(s, probes, target, 6, Instant::now());
    s.ctl(1, &["service", "scale", "--detach", &format!("{target}=1")]);
    every_node_answers(s, probes, target, 1, Instant::now());
    std::thread::sleep(SETTLE);
    for _ in 0..runs {
        let b0 = sent_bytes(s);
        let t0 = Instant::now();
        s.ctl(1, &["service", "scale", "--detach", &format!("{target}=6")]);
        let nodes = every_node_answers(s, probes, target, 6, t0);
        eprintln!(
            "bench scale:   first node answered after {:.2} s, the median {:.2} s, the last {:.2} s",
            nodes[0],
            nodes[nodes.len() / 2],
            nodes[nodes.len() - 1]
        );
        times.push(nodes[nodes.len() - 1]);
        bytes.push(sent_bytes(s) - b0);
        s.ctl(1, &["service", "scale", "--detach", &format!("{target}=1")]);
        every_node_answers(s, probes, target, 1, Instant::now());
        // The names go before the tasks do: let the nodes finish removing the 5 tasks, so the
        // next measured scale is one change, not that one overlapping the previous one's
        // cleanup on the same nodes.
        std::thread::sleep(SETTLE);
    }
    times.sort_by(f64::total_cmp);
    bytes.sort_by(f64::total_cmp);
    (times[runs / 2], bytes[runs / 2])
}

/// Idle CPU per agent over `secs` (percent of one core): max and mean; leader and worker RSS.
fn idle(s: &Swarm, secs: u64) -> (f64, f64, u64, u64) {
    let pids = agent_pids(s);
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    std::thread::sleep(Duration::from_secs(secs));
    let hz = 100.0; // USER_HZ on Linux
    let pct: Vec<f64> = pids
        .iter()
        .zip(before)
        .map(|(p, b)| (cpu_ticks(*p) - b) as f64 / hz / secs as f64 * 100.0)
        .collect();
    let max = pct.iter().copied().fold(0.0, f64::max);
    let mean = pct.iter().sum::<f64>() / pct.len().max(1) as f64;
    let leader = proc_field(pids[0], "VmRSS:");
    let worker = proc_field(*pids.last().unwrap(), "VmRSS:");
    (max, mean, leader, worker)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !common::is_root() {
        eprintln!("bench scale: needs root (namespaces); skipped");
        return;
    }
    let big = env_usize("BENCH_SERVICES", 2000);
    let secs = env_usize("BENCH_IDLE_SECS", 60) as u64;
    let runs = env_usize("BENCH_RUNS", 3).max(1);
    // Production timings (the lab's defaults gossip 2.5 times as often, for quick tests): idle
    // CPU is a production figure.
    let lab_timings = std::env::var_os("BENCH_LAB_TIMINGS").is_some();
    let s = Swarm::start_with(
        1,
        NODES - 1,
        if lab_timings { &[] } else { PRODUCTION_TIMINGS },
    );
    s.ctl(
        1,
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--internal",
            "--subnet",
            "10.20.0.0/19",
            "big",
        ],
    );
    // One probe task per node, to ask each node's resolver.
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "probe",
            "--mode",
            "global",
            "--network",
            "big",
            "--",
            "sleep",
            "86400",
        ],
    );
    let probes = s.task_nss("probe", NODES);
    let mut rows = Vec::new();
    let mut have = 0;
    for n in [10, big] {
        create_range(&s, have..n, "big");
        have = n;
        s.wait_long(&format!("{n} tasks running"), || {
            running_tasks(&s) == n + NODES
        });
        s.wait_long("every node serves every endpoint", || {
            every_node_knows(&s, n + NODES)
        });
        wait_quiet();
        eprintln!("bench scale: measuring one scale with {n} services");
        let (t, bytes) = scale_time(&s, &probes, "s0003", runs);
        let (cpu_max, cpu_mean, rss_leader, rss_worker) = idle(&s, secs);
        println!(
            "{n:>5} services: scale +5 in {t:.2} s (median of {runs}), {bytes:.0} dispatcher bytes for it; \
             idle CPU per agent over {secs} s: max {cpu_max:.2} %, mean {cpu_mean:.2} % of a core; \
             RSS leader {} MiB, worker {} MiB",
            rss_leader / 1024,
            rss_worker / 1024
        );
        rows.push((n, t, bytes));
    }
    let (_, t_small, _) = rows[0];
    let (_, t_big, _) = rows[1];
    println!(
        "scale time with {big} services / with 10: {:.2}x (goal within 1.20x); Docker (moby#30820): \
         ~30 s per 100 services at 11k services",
        t_big / t_small
    );
}
