//! `cargo xtask bench task-start`: the kernel's share of a task start on a node with few named
//! network namespaces and overlay endpoints on the machine, and with 2,000 more (as the scale
//! bench's 10 lab nodes share one kernel: a real node has only its own). Two steps, timed
//! apart, each the median of STARTS tasks started one after the other:
//! - the overlay endpoint: the task's namespace made and its veth on the network's sandbox
//!   bridge with address and MAC (`vxlan::Dataplane::ensure_endpoint`, the executor's
//!   "endpoints" step);
//! - the process: `Runner::start` until the command runs. Shims copy a mount template without
//!   `/run/netns` (`shim::mount_template`); before it, each start copied, made private and
//!   unmounted every named namespace's bind mount (25 against 8 ms).
//!
//! The 2,000 are what the other 9 lab nodes of the scale bench hold: a namespace per task with
//! its endpoint on its node's sandbox (about 222 per node; a bridge takes at most 1,024 ports).
//! Neither agent nor store is involved, so what grows here is the kernel's work.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use executor::runner::{ProcState, Runner, RunnerConfig};
use lab::Lab;
use netns::NetNs;
use vxlan::{Config, Dataplane, Endpoint, Network};

const STARTS: usize = 60;
/// Resident memory the bench holds, and keeps writing to, as an agent does (~100 MiB RSS in
/// the scale bench): what starting a shim costs depends on the starting process's size.
const BALLAST_MIB: usize = 100;
const OTHERS: usize = 2000;
/// The lab's nodes: the measured one and 9 others, as in the scale bench.
const NODES: usize = 10;

fn network() -> Network {
    Network {
        id: "benchstartxxxxxxxxxxxxxxx".into(),
        vni: 9000,
        subnet: "10.200.0.0/16".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 200, 0, 1),
        mtu: None,
        internal: true,
        encrypted: false,
    }
}

fn dataplane(lab: &Lab, i: usize) -> Dataplane {
    let node = lab.node(i);
    let mut cfg = Config::new(NetNs::open(node.ns().name()).unwrap(), node.addr());
    cfg.prefix = format!("{}-n{i}-", lab.prefix());
    let mut dp = Dataplane::new(cfg).unwrap();
    dp.ensure_network(&network()).unwrap();
    dp
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Starts STARTS tasks (ids and addresses from `first`) one after the other, each with its
/// overlay endpoint; the median endpoint and process steps in ms.
fn starts(r: &Runner, dp: &mut Dataplane, first: usize) -> (f64, f64) {
    let (mut ep, mut proc) = (Vec::new(), Vec::new());
    for i in first..first + STARTS {
        let id = format!("s{i}");
        let t = Instant::now();
        let ns = r.namespace(&id).unwrap();
        dp.ensure_endpoint(&Endpoint {
            network: network().id,
            netns: ns.path().to_path_buf(),
            ifname: "eth0".into(),
            address: Ipv4Addr::new(10, 200, 0, 10 + i as u8),
            mac: None,
        })
        .unwrap();
        ep.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        r.start(&id, &["sleep".into(), "600".into()], &[]).unwrap();
        while !matches!(r.state(&id), ProcState::Running { .. }) {
            assert!(t.elapsed() < Duration::from_secs(30), "task {id} never ran");
            std::thread::sleep(Duration::from_micros(200));
        }
        proc.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (median(ep), median(proc))
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let ballast = ballast();
    let lab = Lab::new(NODES).unwrap();
    let node = lab.node(1);
    let r = Runner::new(RunnerConfig {
        dir: node.dir().join("tasks"),
        netns_prefix: format!("{}-", lab.prefix()),
        cgroup: Some(node.cgroup().unwrap().join("tasks")),
        shim: vec![env!("CARGO_BIN_EXE_netagent-shim").into()],
        resolv_conf: "nameserver 127.0.0.11\n".into(),
    })
    .unwrap();
    let mut dp = dataplane(&lab, 1);
    let before = netns_mounts();
    let (ep_few, proc_few) = starts(&r, &mut dp, 0);
    // The other nodes' tasks: a namespace each, its endpoint on its node's sandbox; removed
    // with the lab.
    let mut others: Vec<Dataplane> = (2..=NODES).map(|i| dataplane(&lab, i)).collect();
    for i in 0..OTHERS {
        let ns = NetNs::create(&format!("{}-x{i}", lab.prefix())).unwrap();
        others[i % (NODES - 1)]
            .ensure_endpoint(&Endpoint {
                network: network().id,
                netns: ns.path().to_path_buf(),
                ifname: "eth0".into(),
                address: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 10, 0)) + i as u32),
                mac: None,
            })
            .unwrap();
    }
    let (ep_many, proc_many) = starts(&r, &mut dp, STARTS);
    let after = netns_mounts();
    println!(
        "task start, median of {STARTS}, with {before} then {after} named namespaces on the machine \
         (the node runs {STARTS}, then {} tasks; the starting process holds {BALLAST_MIB} MiB):",
        2 * STARTS
    );
    println!(
        "  overlay endpoint: {ep_few:.1} ms, then {ep_many:.1} ms ({:.2}x)",
        ep_many / ep_few
    );
    println!(
        "  process start -> running: {proc_few:.1} ms, then {proc_many:.1} ms ({:.2}x)",
        proc_many / proc_few
    );
    for i in 0..2 * STARTS {
        let id = format!("s{i}");
        let _ = r.stop(&id, Duration::from_millis(100));
        let _ = r.remove(&id);
    }
    ballast.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// BALLAST_MIB of memory written to, a byte per page in turn, by a thread until the flag goes.
fn ballast() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let on = std::sync::Arc::new(AtomicBool::new(true));
    let keep = on.clone();
    std::thread::spawn(move || {
        let mut mem = vec![1u8; BALLAST_MIB << 20];
        let mut i = 0usize;
        while keep.load(Ordering::Relaxed) {
            for page in mem.chunks_mut(4096) {
                page[0] = page[0].wrapping_add(1);
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        std::hint::black_box((mem, i));
    });
    on
}

/// Named network namespaces mounted on the machine.
fn netns_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.matches(" /run/netns/").count())
        .unwrap_or(0)
}
