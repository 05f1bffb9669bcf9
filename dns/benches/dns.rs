//! `cargo xtask bench dns` (needs root): the embedded resolver against dnsmasq, side by side.
//!
//! Lab: node1 is the node (the resolver's upstream sockets are made there), node2 runs the
//! upstream (dnsmasq answering everything under fwd.test). 1,000 services, each with a VIP and
//! 3 tasks, are served
//!  - by this crate, on 127.0.0.11:53 inside a task namespace (listener made with `bind_in`);
//!  - by dnsmasq on 127.0.0.11:53 in node1's namespace, from an addn-hosts file holding the same
//!    names and addresses, forwarding the rest to the same upstream with its cache disabled
//!    (our resolver does not cache forwarded answers either).
//!
//! dnsperf runs inside each server's namespace, in alternating rounds: a throughput run (as
//! fast as it can, 100 queries outstanding) gives queries/s; a paced run (`-Q`) with `-v`
//! prints each query's latency, from which p50/p99 are computed here (dnsperf 2.10 only
//! reports an average). Local names: the services, `tasks.` names and task names; forwarded
//! names: distinct names under fwd.test. Goals: local qps >= 1.0x dnsmasq, p99 < 1 ms.
//!
//! Then memory: live heap bytes (a counting allocator) and RSS growth with 10,000 services x
//! 10 tasks known, and the time to apply them and to apply one change at that size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use dns::{Change, Config, Records, Resolver};
use lab::{Lab, ProcSpec};
use netns::NetNs;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged and only keeps a byte count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract, passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: ptr was allocated by System with this layout (alloc/realloc above).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as for alloc/dealloc; System owns ptr.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SERVICES: usize = 1_000;
const TASKS_PER_SERVICE: usize = 3;
const ROUNDS: usize = 3;
const THROUGHPUT_SECONDS: &str = "6";
const PACED_QPS: &str = "5000";
const PACED_SECONDS: &str = "4";
const UPSTREAM: &str = "198.18.0.2";

fn task_id(s: usize, t: usize) -> String {
    format!("{:0>25}", format!("t{s}x{t}"))
}

fn vip(s: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + (s as u32) * 16 + 2)
}

fn task_addr(s: usize, t: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + (s as u32) * 16 + 3 + t as u32)
}

fn changes(services: usize, tasks: usize) -> Vec<Change> {
    let mut c = vec![Change::PutNetwork {
        id: "benchnet0000000000000000".into(),
        name: "bench".into(),
    }];
    for s in 0..services {
        let name = format!("svc{s:05}");
        c.push(Change::PutService {
            network: "benchnet0000000000000000".into(),
            id: format!("{:0>25}", format!("s{s}")),
            name: name.clone(),
            vip: Some(IpAddr::V4(vip(s))),
            aliases: vec![],
        });
        for t in 0..tasks {
            let id = task_id(s, t);
            c.push(Change::PutTask {
                network: "benchnet0000000000000000".into(),
                id: id.clone(),
                service: format!("{:0>25}", format!("s{s}")),
                addr: IpAddr::V4(if tasks > 16 {
                    Ipv4Addr::from(0x0b00_0000 + (s * tasks + t) as u32)
                } else {
                    task_addr(s, t)
                }),
                name: dns::task_name(&name, &(t + 1).to_string(), &id),
                aliases: vec![],
            });
        }
    }
    c
}

/// The same names as `changes(SERVICES, TASKS_PER_SERVICE)`, as a hosts file for dnsmasq.
fn hosts_file() -> String {
    let mut out = String::new();
    for s in 0..SERVICES {
        let _ = writeln!(out, "{} svc{s:05}", vip(s));
        for t in 0..TASKS_PER_SERVICE {
            let a = task_addr(s, t);
            let _ = writeln!(out, "{a} tasks.svc{s:05}");
            let _ = writeln!(out, "{a} svc{s:05}.{}.{}", t + 1, task_id(s, t));
        }
    }
    out
}

fn local_queries() -> String {
    let mut out = String::new();
    for s in 0..SERVICES {
        let _ = writeln!(out, "svc{s:05} A");
        let _ = writeln!(out, "tasks.svc{s:05} A");
        let _ = writeln!(out, "svc{s:05}.1.{} A", task_id(s, 0));
    }
    out
}

fn forwarded_queries() -> String {
    (0..20_000).map(|i| format!("n{i}.fwd.test A\n")).collect()
}

fn dnsmasq(args: &[String]) -> ProcSpec {
    ProcSpec::new("dnsmasq", "dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
            "--log-facility=-",
            "--dns-forward-max=1024",
        ])
        .args(args.iter().cloned())
}

fn wait_answer(ns: &NetNs, name: &str, want: &str) {
    let start = Instant::now();
    loop {
        let out = ns
            .command("dig")
            .args(["@127.0.0.11", "+short", "+time=1", "+tries=1", name])
            .output()
            .unwrap();
        let got = String::from_utf8_lossy(&out.stdout);
        if got.lines().any(|l| l.trim() == want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name}: got {got:?}, want {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Run {
    qps: f64,
    avg_ms: f64,
    lost: u64,
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(|v| v.trim())
}

/// dnsperf at full speed: queries/s and average latency.
fn throughput(ns: &NetNs, file: &Path) -> Run {
    let out = ns
        .command("dnsperf")
        .args([
            "-s",
            "127.0.0.11",
            "-l",
            THROUGHPUT_SECONDS,
            "-q",
            "100",
            "-d",
        ])
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let num = |k: &str| -> f64 {
        field(&text, k)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("dnsperf output lacks {k}: {text}"))
    };
    Run {
        qps: num("Queries per second:"),
        avg_ms: num("Average Latency (s):") * 1e3,
        lost: num("Queries lost:") as u64,
    }
}

/// dnsperf paced at PACED_QPS with per-query latencies: (p50, p99, max) in ms and the rcodes.
fn paced(ns: &NetNs, file: &Path) -> (f64, f64, f64, String) {
    let out = ns
        .command("dnsperf")
        .args([
            "-s",
            "127.0.0.11",
            "-l",
            PACED_SECONDS,
            "-Q",
            PACED_QPS,
            "-v",
            "-d",
        ])
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lat: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e3)
        .collect();
    assert!(
        lat.len() > 1000,
        "too few latencies from dnsperf -v: {}",
        lat.len()
    );
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let codes = field(&text, "Response codes:").unwrap_or("?").to_string();
    (pct(0.50), pct(0.99), lat[lat.len() - 1], codes)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn side_by_side() {
    let lab = Lab::new(2).unwrap();
    let (n1, n2) = (lab.node(1), lab.node(2));
    n2.spawn(dnsmasq(&[
        format!("--listen-address={UPSTREAM}"),
        "--address=/fwd.test/198.51.100.1".into(),
        "--cache-size=0".into(),
    ]))
    .unwrap();
    // dnsmasq serving the same names in node1's namespace at 127.0.0.11 (on lo's 127/8).
    let hosts = lab.dir().join("bench.hosts");
    std::fs::write(&hosts, hosts_file()).unwrap();
    n1.spawn(dnsmasq(&[
        "--listen-address=127.0.0.11".into(),
        format!("--addn-hosts={}", hosts.display()),
        format!("--server={UPSTREAM}"),
        "--cache-size=0".into(),
    ]))
    .unwrap();
    // This crate in a task namespace.
    let task = NetNs::create(&format!("{}-t-bench", lab.prefix())).unwrap();
    assert!(
        task.command("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success()
    );
    let resolver = Resolver::new(Config {
        upstreams: vec![SocketAddr::from(([198, 18, 0, 2], 53))],
        upstream_netns: Some(NetNs::open(n1.ns().name()).unwrap()),
        ..Config::default()
    })
    .unwrap();
    resolver.apply(changes(SERVICES, TASKS_PER_SERVICE));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (udp, tcp) = dns::bind_in(&task).unwrap();
    let _listener = {
        let _g = rt.enter();
        resolver
            .serve(udp, tcp, vec!["benchnet0000000000000000".into()])
            .unwrap()
    };
    let servers: [(&str, &NetNs); 2] = [("netagent dns", &task), ("dnsmasq", n1.ns())];
    for (_, ns) in servers {
        wait_answer(ns, "svc00007", &vip(7).to_string());
        wait_answer(ns, "tasks.svc00007", &task_addr(7, 2).to_string());
        wait_answer(ns, "x.fwd.test", "198.51.100.1");
    }
    let local = lab.dir().join("local.queries");
    let fwd = lab.dir().join("forwarded.queries");
    std::fs::write(&local, local_queries()).unwrap();
    std::fs::write(&fwd, forwarded_queries()).unwrap();

    println!(
        "dns: {SERVICES} services x {TASKS_PER_SERVICE} tasks; {} cores; load before: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg()
    );
    for (kind, file) in [("local", &local), ("forwarded", &fwd)] {
        let mut qps = [Vec::new(), Vec::new()];
        let mut avg = [Vec::new(), Vec::new()];
        let mut lat = [Vec::new(), Vec::new()];
        let mut notes = [String::new(), String::new()];
        for _ in 0..ROUNDS {
            for (i, (_, ns)) in servers.iter().enumerate() {
                let r = throughput(ns, file);
                qps[i].push(r.qps);
                avg[i].push(r.avg_ms);
                if r.lost > 0 {
                    notes[i] = format!("{} lost", r.lost);
                }
                let (p50, p99, max, codes) = paced(ns, file);
                lat[i].push((p50, p99, max));
                notes[i] = format!("{} {codes}", notes[i]);
            }
        }
        println!("{kind} names ({ROUNDS} rounds, medians; latency paced at {PACED_QPS} q/s):");
        for (i, (name, _)) in servers.iter().enumerate() {
            let p50 = median(lat[i].iter().map(|l| l.0).collect());
            let p99 = median(lat[i].iter().map(|l| l.1).collect());
            let max = lat[i].iter().map(|l| l.2).fold(0.0, f64::max);
            println!(
                "  {name:<13} {:>9.0} q/s {:?} (avg {:.3} ms at full load)  paced: p50 {p50:.3} ms  p99 {p99:.3} ms  max {max:.2} ms  [{}]",
                median(qps[i].clone()),
                qps[i].iter().map(|q| q.round()).collect::<Vec<_>>(),
                median(avg[i].clone()),
                notes[i].trim()
            );
        }
        println!(
            "  ratio netagent/dnsmasq: {:.2}x{}",
            median(qps[0].clone()) / median(qps[1].clone()),
            if kind == "local" {
                "  (goal >= 1.0x, p99 < 1 ms)"
            } else {
                ""
            }
        );
    }
    let s = resolver.stats();
    println!(
        "resolver counters: local {} forwarded {} answered {} servfail {} refused_cap {} malformed {}",
        s.local, s.forwarded, s.forward_answered, s.servfail, s.refused_cap, s.malformed
    );
    println!("load after: {}", loadavg());
}

fn memory() {
    let (services, tasks) = (10_000, 10);
    let input = changes(services, tasks);
    let rss0 = rss_kib();
    let live0 = LIVE.load(Ordering::Relaxed);
    let mut records = Records::new();
    let start = Instant::now();
    records.apply(input);
    let took = start.elapsed();
    let live = LIVE.load(Ordering::Relaxed) - live0;
    let rss = rss_kib().saturating_sub(rss0);
    let (_, s, t) = records.counts();
    println!(
        "memory: {s} services x {} tasks = {t} tasks on one network",
        t / s.max(1)
    );
    println!(
        "  live heap {:.1} MiB ({:.0} bytes per task), RSS growth {:.1} MiB; initial apply {:.0} ms",
        live as f64 / (1 << 20) as f64,
        live as f64 / t as f64,
        rss as f64 / 1024.0,
        took.as_secs_f64() * 1e3
    );
    // One change at that size: a task replaced, a service's VIP changed.
    let start = Instant::now();
    let n = 1000;
    for i in 0..n {
        let id = task_id(i, 0);
        records.apply([
            Change::RemoveTask {
                network: "benchnet0000000000000000".into(),
                id: id.clone(),
            },
            Change::PutTask {
                network: "benchnet0000000000000000".into(),
                id: id.clone(),
                service: format!("{:0>25}", format!("s{i}")),
                addr: IpAddr::V4(Ipv4Addr::new(11, 200, (i / 250) as u8, (i % 250) as u8)),
                name: format!("svc{i:05}.1.{id}"),
                aliases: vec![],
            },
        ]);
    }
    println!(
        "  one task replaced (remove + put) at that size: {:.2} us",
        start.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let start = Instant::now();
    let mut found = 0;
    for i in 0..100_000 {
        let name = format!("tasks.svc{:05}", i % services);
        found += records
            .resolve(&["benchnet0000000000000000"], &name)
            .map_or(0, |r| r.addrs.len());
    }
    assert_eq!(found, 100_000 * tasks);
    println!(
        "  lookup tasks.SVC (10 addresses, shuffled): {:.2} us",
        start.elapsed().as_secs_f64() * 1e6 / 100_000.0
    );
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the dns benchmark needs root (network namespaces, port 53)");
        return;
    }
    // Looked up on PATH, never run here: outside a lab node, `dnsmasq -h` would start a
    // resolver in the machine's own namespace.
    for tool in ["dnsperf", "dnsmasq", "dig"] {
        if which(tool).is_none() {
            eprintln!("skipped: {tool} is not installed (run `cargo xtask setup`)");
            return;
        }
    }
    memory();
    side_by_side();
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}
