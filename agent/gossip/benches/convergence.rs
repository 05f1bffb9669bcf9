//! `cargo bench -p gossip --bench convergence` (root: it builds a namespace lab).
//!
//! 1. Convergence: N = 5, 20, 50 gossip instances (one per lab node, all in this process, production
//!    timings); repeated publishes from rotating nodes; the time from the publish until the last
//!    node's subscription delivers the `Added` event. Prints p50/p90/p99/max.
//! 2. Steady state: 50 nodes holding 1,000 endpoints; bytes and CPU per node over a quiet window
//!    (CPU = getrusage of this process / 50).
//! 3. Per-network tables: in the same 50 nodes, a network "busy" held by 10 of them (1,000
//!    endpoints, then 10 changes/s); bytes per node inside vs outside it over the window, and
//!    the table items each received (outside: none).
//!
//! `GOSSIP_BENCH_QUICK=1` runs fewer rounds; `GOSSIP_BENCH_N=5,20` picks the sizes;
//! `GOSSIP_BENCH_INTERVAL_MS` overrides the gossip interval; `GOSSIP_BENCH_NO_STEADY=1` skips 2.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Cluster, endpoint, endpoint_n, is_root};
use gossip::{Event, Timings};
use tokio::sync::mpsc;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct we pass; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn timings() -> Timings {
    let mut t = Timings::default();
    if let Some(ms) = std::env::var("GOSSIP_BENCH_INTERVAL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        t.gossip_interval = Duration::from_millis(ms);
        t.failure_timeout = t.failure_timeout.max(t.gossip_interval * 20);
    }
    t
}

fn convergence(n: usize, rounds: usize) {
    let timings = timings();
    let mut c = Cluster::new(n, 3.min(n), timings);
    c.static_neighbours();
    c.start_all();
    c.wait_converged();
    // Every node reports the arrival of each endpoint on its subscription.
    let (tx, mut rx) = mpsc::channel::<(usize, String, Instant)>(4 * n * rounds.max(1));
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for (i, g) in c.running() {
        let mut sub = g.subscribe("bench");
        let (tx, ready) = (tx.clone(), ready.clone());
        c.rt.spawn(async move {
            while let Some(ev) = sub.recv().await {
                // The first event is the table's snapshot (the network is fetched from its
                // holders first); anything in it has arrived too.
                let arrived = match ev {
                    Event::Added(e) => vec![e],
                    Event::Resync(all) => {
                        ready.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        all
                    }
                    _ => continue,
                };
                for e in arrived {
                    if tx.send((i, e.endpoint.id, Instant::now())).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    // Settle: every node has its snapshot, and has heard who holds the network.
    c.wait("every subscription has its snapshot", || {
        ready.load(std::sync::atomic::Ordering::Relaxed) >= n
    });
    std::thread::sleep(timings.gossip_interval * 4);
    let mut samples = Vec::with_capacity(rounds);
    let mut missed = 0;
    for k in 0..rounds {
        let publisher = 1 + k % n;
        let id = format!("b{k}");
        let t0 = Instant::now();
        c.publish(publisher, endpoint("bench", &id, (k % 250) as u8 + 1));
        let mut seen = std::collections::HashSet::new();
        let mut last = t0;
        let deadline = t0 + Duration::from_secs(15);
        while seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match c
                .rt
                .block_on(async { tokio::time::timeout(left, rx.recv()).await })
            {
                Ok(Some((node, got, at))) if got == id => {
                    if seen.insert(node) {
                        last = last.max(at);
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        if seen.len() < n {
            missed += 1;
            for (i, g) in c.running() {
                if !seen.contains(&i) {
                    let has = g.endpoints("bench").iter().any(|e| e.endpoint.id == id);
                    let alive = g.members().iter().filter(|m| m.alive).count();
                    eprintln!(
                        "DIAG missed {id} on node{i}: visible now {has}, alive members {alive}, stats {:?}",
                        g.network_stats("bench")
                    );
                }
            }
        } else {
            samples.push(last - t0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    samples.sort();
    let stats: Vec<_> = c.running().map(|(_, g)| g.stats()).collect();
    let pushes: u64 = stats.iter().map(|s| s.eager_pushes).sum();
    let dropped: u64 = stats
        .iter()
        .map(|s| s.dropped_incomplete + s.dropped_malformed + s.dropped_replay)
        .sum();
    if samples.is_empty() {
        println!("convergence N={n:>2}: no publish converged ({missed} missed)");
        return;
    }
    println!(
        "convergence N={n:>2}: {} publishes  p50 {}  p90 {}  p99 {}  max {}  (not converged in 15 s: {missed}; eager pushes {pushes}; dropped datagrams {dropped})",
        samples.len(),
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().expect("non-empty")),
    );
}

fn per_node(
    s0: &[gossip::Stats],
    s1: &[gossip::Stats],
    secs: f64,
    f: fn(&gossip::Stats) -> u64,
) -> f64 {
    let n = s0.len().max(1) as f64;
    s1.iter()
        .zip(s0)
        .map(|(b, a)| (f(b) - f(a)) as f64)
        .sum::<f64>()
        / n
        / secs
}

fn steady_state(n: usize, endpoints: usize, window: Duration) {
    let timings = timings();
    let mut c = Cluster::new(n, 3, timings);
    c.static_neighbours();
    c.start_all();
    c.wait_converged();
    for k in 0..endpoints {
        let owner = 1 + k % n;
        let mut ep = endpoint_n("steady", &format!("s{k:05}"), k as u32);
        ep.task = format!("task-{k:025}");
        ep.name = format!("service-{}.{}.{k:025}", k % 37, k % 5);
        c.publish(owner, ep);
    }
    c.wait("every node holds every endpoint", || {
        c.running()
            .all(|(_, g)| g.endpoints("steady").len() == endpoints)
    });
    // Let the publishing burst settle, then measure a quiet window.
    std::thread::sleep(timings.gossip_interval * 20);
    let s0: Vec<_> = c.running().map(|(_, g)| g.stats()).collect();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    std::thread::sleep(window);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    let s1: Vec<_> = c.running().map(|(_, g)| g.stats()).collect();
    let alive_everywhere = c
        .running()
        .all(|(_, g)| g.members().iter().filter(|m| m.alive).count() == n);
    println!(
        "steady state N={n} with {endpoints} endpoints over {secs:.0} s, per node: sent {:.2} KB/s ({:.1} datagrams/s, {:.1} messages/s), received {:.2} KB/s; CPU {:.2}% of a core (process {:.1}% / {n}); all alive throughout: {alive_everywhere}",
        per_node(&s0, &s1, secs, |s| s.bytes_sent) / 1000.0,
        per_node(&s0, &s1, secs, |s| s.datagrams_sent),
        per_node(&s0, &s1, secs, |s| s.messages_sent),
        per_node(&s0, &s1, secs, |s| s.bytes_received) / 1000.0,
        cpu / secs / n as f64 * 100.0,
        cpu / secs * 100.0,
    );
    per_network(&c, n, 10, endpoints, window);
}

/// A busy network held by `inside` of the `n` nodes: bytes per node inside vs outside it.
fn per_network(c: &Cluster, n: usize, inside: usize, endpoints: usize, window: Duration) {
    let subs: Vec<_> = (1..=inside).map(|i| c.g(i).subscribe("busy")).collect();
    let t0 = Instant::now();
    for k in 0..endpoints {
        let owner = 1 + k % inside;
        c.publish(owner, endpoint_n("busy", &format!("b{k:05}"), k as u32));
    }
    c.wait("the busy network's holders see all of it", || {
        (1..=inside).all(|i| c.g(i).endpoints("busy").len() == endpoints)
    });
    let fill = t0.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let s0: Vec<_> = c.running().map(|(_, g)| g.stats()).collect();
    let t0 = Instant::now();
    let mut k = 0u32;
    while t0.elapsed() < window {
        // 10 changes/s: re-publish one endpoint with a new name.
        let owner = 1 + (k as usize) % inside;
        let idx = (k as usize * inside + owner - 1) % endpoints;
        let mut ep = endpoint_n("busy", &format!("b{idx:05}"), idx as u32);
        ep.name = format!("churn-{k}");
        c.publish(owner, ep);
        k += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = t0.elapsed().as_secs_f64();
    let s1: Vec<_> = c.running().map(|(_, g)| g.stats()).collect();
    let (s0_in, s0_out) = s0.split_at(inside);
    let (s1_in, s1_out) = s1.split_at(inside);
    let items_out: u64 = (inside + 1..=n)
        .map(|i| c.g(i).network_stats("busy").items_received)
        .sum();
    let items_in: u64 = (1..=inside)
        .map(|i| c.g(i).network_stats("busy").items_received)
        .sum::<u64>()
        / inside as u64;
    println!(
        "per-network tables N={n}, \"busy\" held by {inside} ({endpoints} endpoints, filled in {:.0} ms, then {k} changes over {secs:.0} s): per node inside sent {:.2} KB/s received {:.2} KB/s ({items_in} table items received each); outside sent {:.2} KB/s received {:.2} KB/s ({items_out} table items received in all)",
        fill.as_secs_f64() * 1000.0,
        per_node(s0_in, s1_in, secs, |s| s.bytes_sent) / 1000.0,
        per_node(s0_in, s1_in, secs, |s| s.bytes_received) / 1000.0,
        per_node(s0_out, s1_out, secs, |s| s.bytes_sent) / 1000.0,
        per_node(s0_out, s1_out, secs, |s| s.bytes_received) / 1000.0,
    );
    drop(subs);
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run only
    // when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        println!("gossip convergence bench: run with `cargo bench -p gossip --bench convergence`");
        return;
    }
    if !is_root() {
        eprintln!("skipped: the gossip benchmarks build a namespace lab and need root");
        return;
    }
    let quick = std::env::var_os("GOSSIP_BENCH_QUICK").is_some();
    let rounds = if quick { 20 } else { 200 };
    let t = timings();
    println!(
        "gossip: production timings (interval {:?}, failure timeout {:?}, push fanout {}, cooldown {:?}), MTU 1500",
        t.gossip_interval, t.failure_timeout, t.push_fanout, t.push_cooldown
    );
    let sizes: Vec<usize> = std::env::var("GOSSIP_BENCH_N")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![5, 20, 50]);
    for &n in &sizes {
        convergence(n, rounds);
    }
    if std::env::var_os("GOSSIP_BENCH_NO_STEADY").is_some() {
        return;
    }
    steady_state(50, 1000, Duration::from_secs(if quick { 10 } else { 30 }));
}
