//! `cargo xtask bench task-start`: time from `Runner::start` until the task's command runs, on a
//! node with few named network namespaces and with 2,000 more (as the scale bench's 10 lab
//! nodes share one mount table: a real node has only its own). Shims copy a mount template
//! without `/run/netns` (`shim::mount_template`), so the second figure should match the
//! first; before the template, each start copied, made private and unmounted every named
//! namespace's bind mount.

use std::time::{Duration, Instant};

use executor::runner::{ProcState, Runner, RunnerConfig};
use lab::Lab;

const STARTS: usize = 60;
const NAMESPACES: usize = 2000;

/// Starts STARTS tasks (ids from `first`) one after the other; the median start in ms.
fn starts(r: &Runner, first: usize) -> f64 {
    let mut ms = Vec::with_capacity(STARTS);
    for i in first..first + STARTS {
        let id = format!("s{i}");
        let t = Instant::now();
        r.start(&id, &["sleep".into(), "600".into()], &[]).unwrap();
        while !matches!(r.state(&id), ProcState::Running { .. }) {
            assert!(t.elapsed() < Duration::from_secs(30), "task {id} never ran");
            std::thread::sleep(Duration::from_micros(200));
        }
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    ms[ms.len() / 2]
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lab = Lab::new(1).unwrap();
    let node = lab.node(1);
    let r = Runner::new(RunnerConfig {
        dir: node.dir().join("tasks"),
        netns_prefix: format!("{}-", lab.prefix()),
        cgroup: Some(node.cgroup().unwrap().join("tasks")),
        shim: vec![env!("CARGO_BIN_EXE_netagent-shim").into()],
        resolv_conf: "nameserver 127.0.0.11\n".into(),
    })
    .unwrap();
    let before = netns_mounts();
    let few = starts(&r, 0);
    // Named namespaces of other "nodes", removed with the lab.
    for i in 0..NAMESPACES {
        netns::NetNs::create(&format!("{}-x{i}", lab.prefix())).unwrap();
    }
    let many = starts(&r, STARTS);
    println!(
        "task start -> running, median of {STARTS}: {few:.1} ms with {before} named namespaces \
         on the machine, {many:.1} ms with {} ({:.2}x; the node runs {} tasks by then)",
        netns_mounts(),
        many / few,
        2 * STARTS
    );
    for i in 0..2 * STARTS {
        let id = format!("s{i}");
        let _ = r.stop(&id, Duration::from_millis(100));
        let _ = r.remove(&id);
    }
}

/// Named network namespaces mounted on the machine.
fn netns_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.matches(" /run/netns/").count())
        .unwrap_or(0)
}
