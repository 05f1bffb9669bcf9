//! The eBPF overlay fast path on the lab: forwarding between tasks on one node and on two nodes
//! past the sandbox bridge, what still takes the bridge (ARP, the gateway), isolation between
//! networks, the map following endpoints, and an adopting restart.

#[path = "lab/common.rs"]
#[macro_use]
#[allow(dead_code)]
mod common;

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use lab::Lab;
use netns::NetNs;
use vxlan::{Dataplane, DesiredState, FastPathStatus, Mac, NetworkState};

const NET_A: &str = "fpaaaaaaaaaaaaaaaaaaaaaa1";
const NET_B: &str = "fpbbbbbbbbbbbbbbbbbbbbbb2";
const SUBNET: &str = "10.30.0.0/24";

/// Both networks share one subnet (only the VNI keeps them apart), so a task of A can aim at a
/// task of B by address and MAC.
fn a(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 30, 0, 10 + k)
}
fn b(k: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 30, 0, 20 + k)
}

/// Network A: a1, a2 on node 1, a3 on node 2. Network B: b1 on node 1, b3 on node 2.
fn desired(
    lab: &Lab,
    node: usize,
    tasks: &[(&str, &std::path::Path, Ipv4Addr, usize)],
) -> DesiredState {
    let mut state = DesiredState::default();
    for (id, vni) in [(NET_A, 5001), (NET_B, 5002)] {
        let mine = |t: &&(&str, &std::path::Path, Ipv4Addr, usize)| t.0 == id;
        state.networks.push(NetworkState {
            network: network(id, vni, SUBNET),
            endpoints: tasks
                .iter()
                .filter(mine)
                .filter(|t| t.3 == node)
                .map(|t| endpoint(id, t.1, "eth0", t.2))
                .collect(),
            peers: tasks
                .iter()
                .filter(mine)
                .map(|t| peer(t.2, lab.node(t.3).addr()))
                .collect(),
        });
    }
    state
}

/// Whether `dev` in `ns` runs a fast-path program: a TCX link or a tc filter.
fn programs_on(ns: &NetNs, dev: &str) -> bool {
    use aya::programs::{SchedClassifier, TcAttachType};
    let tcx = ns
        .run(|| SchedClassifier::query_tcx(dev, TcAttachType::Ingress))
        .unwrap()
        .map(|(_, progs)| {
            progs
                .iter()
                .any(|p| p.name_as_str().is_some_and(|n| n.starts_with("na_fp_")))
        })
        .unwrap_or(false);
    let filters = ns
        .command("tc")
        .args(["filter", "show", "dev", dev, "ingress"])
        .output()
        .unwrap();
    tcx || String::from_utf8_lossy(&filters.stdout).contains("na_fp_")
}

fn fast(lab: &Lab, i: usize) -> Option<Dataplane> {
    let dp = dataplane_with(lab, i, 4789, true);
    match dp.fast_path() {
        FastPathStatus::Ebpf => Some(dp),
        other => {
            eprintln!("skipped: the fast path is not available here: {other}");
            None
        }
    }
}

/// Starts `tcpdump -c N` on `dev` in `ns`; `wait` says whether it saw N packets.
struct Dump(std::process::Child);

impl Dump {
    fn start(ns: &NetNs, dev: &str, count: usize, filter: &str) -> Dump {
        let child = ns
            .command("timeout")
            .args([
                "10",
                "tcpdump",
                "-Z",
                "root",
                "--immediate-mode",
                "-n",
                "-i",
                dev,
                "-c",
            ])
            .arg(count.to_string())
            .args(filter.split(' '))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        Dump(child)
    }

    fn wait(self) -> (bool, String) {
        let out = self.0.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

#[test]
fn fast_path_forwards_isolates_and_follows_endpoints() {
    need_root!();
    let lab = Lab::new(2).unwrap();
    let Some(mut dp1) = fast(&lab, 1) else { return };
    let Some(mut dp2) = fast(&lab, 2) else { return };
    let (a1, p_a1) = task(&lab, "a1");
    let (a2, p_a2) = task(&lab, "a2");
    let (a3, p_a3) = task(&lab, "a3");
    let (b1, p_b1) = task(&lab, "b1");
    let (b3, p_b3) = task(&lab, "b3");
    let tasks = vec![
        (NET_A, p_a1.as_path(), a(1), 1),
        (NET_A, p_a2.as_path(), a(2), 1),
        (NET_A, p_a3.as_path(), a(3), 2),
        (NET_B, p_b1.as_path(), b(1), 1),
        (NET_B, p_b3.as_path(), b(3), 2),
    ];
    dp1.apply(&desired(&lab, 1, &tasks)).unwrap();
    dp2.apply(&desired(&lab, 2, &tasks)).unwrap();

    // The map holds the network's own MACs only: local tasks and remote endpoints.
    let macs = dp1.fast_path_macs(NET_A).unwrap();
    let want: Vec<(Mac, bool)> = vec![
        (Mac::for_ip(a(1)), true),
        (Mac::for_ip(a(2)), true),
        (Mac::for_ip(a(3)), false),
    ];
    assert_eq!(macs.into_iter().collect::<Vec<_>>(), want);

    // Two nodes and one node, both ways; the first pings resolve ARP through the bridge (and
    // vxlan0's proxy ARP), so ARP works too. The gateway is reached through the bridge.
    let sbox_a = NetNs::open(&dp1.sandbox_name(NET_A)).unwrap();
    let dump = Dump::start(&sbox_a, "vxlan0", 4, "icmp");
    let checks = [
        (&a1, a(3), true, "a1 -> a3 (other node)".to_string()),
        (&a3, a(1), true, "a3 -> a1 (other node)".to_string()),
        (&a1, a(2), true, "a1 -> a2 (same node)".to_string()),
        (&a2, a(1), true, "a2 -> a1 (same node)".to_string()),
        (
            &a1,
            Ipv4Addr::new(10, 30, 0, 1),
            true,
            "a1 -> gateway".to_string(),
        ),
    ];
    let wrong = check_reach(&checks);
    assert!(wrong.is_empty(), "{wrong:#?}");
    // tcpdump on vxlan0 in the sandbox still sees the traffic that bypasses the bridge.
    let (seen, out) = dump.wait();
    assert!(seen, "tcpdump -i vxlan0 saw too little: {out}");
    // Before Linux 6.6 (or with NETAGENT_TC_FILTERS=1) the programs are cls_bpf filters, which
    // `tc filter show` lists; TCX links it does not.
    let filters = sbox_a
        .command("tc")
        .args(["filter", "show", "dev", "vxlan0", "ingress"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&filters.stdout).contains("na_fp_vxlan_in");
    let want_filters = std::env::var_os("NETAGENT_TC_FILTERS").is_some_and(|v| v == "1")
        || aya::util::KernelVersion::current().unwrap() < aya::util::KernelVersion::new(6, 6, 0);
    assert_eq!(listed, want_filters, "tc filter show: {filters:?}");
    let s = dp1.fast_path_stats(NET_A).unwrap().expect("fast path on");
    assert!(
        s.veth_to_remote > 0,
        "nothing went task -> vxlan0 directly: {s:?}"
    );
    assert!(
        s.vxlan_to_local > 0,
        "nothing went vxlan0 -> task directly: {s:?}"
    );
    assert!(
        s.veth_to_local > 0,
        "nothing went task -> task directly: {s:?}"
    );
    assert!(s.passed > 0, "ARP and the gateway take the bridge: {s:?}");
    let neigh = ip(&a1, &["neigh", "show", &a(3).to_string()]);
    assert!(
        neigh.contains(&Mac::for_ip(a(3)).to_string()),
        "ARP: {neigh}"
    );

    // Isolation: a1 (network A) aims frames at b1 (same node) and b3 (other node) of network B
    // by their MACs; neither gets them.
    // (Its ping gets no answer either way; what counts is that the target sees nothing.)
    for (target, addr, what) in [
        (&b1, b(1), "b1 on the same node"),
        (&b3, b(3), "b3 on the other node"),
    ] {
        ip(
            &a1,
            &[
                "neigh",
                "replace",
                &addr.to_string(),
                "lladdr",
                &Mac::for_ip(addr).to_string(),
                "nud",
                "permanent",
                "dev",
                "eth0",
            ],
        );
        let dump = Dump::start(target, "eth0", 1, "icmp");
        assert!(
            !ping(&a1, addr),
            "a1 on network A reached {what} of network B"
        );
        let (got, out) = dump.wait();
        assert!(
            !got,
            "{what} received a crafted frame from network A: {out}"
        );
    }
    assert!(reaches(&b1, b(3)), "network B itself still works");

    // Endpoint removal takes the map entry with it; a new task with the same address and MAC
    // gets the traffic.
    dp1.remove_endpoint(NET_A, &p_a2, "eth0").unwrap();
    let macs = dp1.fast_path_macs(NET_A).unwrap();
    assert!(!macs.contains_key(&Mac::for_ip(a(2))), "{macs:?}");
    let (a2b, p_a2b) = task(&lab, "a2b");
    dp1.ensure_endpoint(&endpoint(NET_A, &p_a2b, "eth0", a(2)))
        .unwrap();
    let macs = dp1.fast_path_macs(NET_A).unwrap();
    assert_eq!(macs.get(&Mac::for_ip(a(2))), Some(&true), "{macs:?}");
    assert!(reaches(&a1, a(2)), "a1 -> the new a2");
    assert!(reaches(&a2b, a(3)), "the new a2 -> a3 (other node)");
    assert!(reaches(&a3, a(2)), "a3 -> the new a2");

    // A remote endpoint that goes leaves the map too.
    let mut tasks2 = tasks.clone();
    tasks2[1].1 = p_a2b.as_path();
    tasks2.retain(|t| t.2 != a(3));
    dp1.apply(&desired(&lab, 1, &tasks2)).unwrap();
    let macs = dp1.fast_path_macs(NET_A).unwrap();
    assert!(!macs.contains_key(&Mac::for_ip(a(3))), "{macs:?}");

    // A restarted process adopts the pinned maps and links: nothing is written.
    drop(dp1);
    let mut again = fast(&lab, 1).expect("probed above");
    again.apply(&desired(&lab, 1, &tasks2)).unwrap();
    assert_eq!(again.writes(), 0, "an adopting restart wrote");
    assert!(reaches(&a1, a(2)), "a1 -> a2 after the restart");
    let s = again.fast_path_stats(NET_A).unwrap().expect("fast path on");
    assert!(s.veth_to_local > 0, "{s:?}");

    // Switched off (--no-fast-path, the pin directory still named) where it ran: the programs
    // leave vxlan0 and the task veths, and frames take the bridge; switched on again, back.
    assert!(programs_on(&sbox_a, "vxlan0"));
    drop(again);
    let node = lab.node(1);
    let mut cfg = vxlan::Config::new(NetNs::open(node.ns().name()).unwrap(), node.addr());
    cfg.prefix = node_prefix(&lab, 1);
    cfg.fast_path = false;
    cfg.bpf_dir = Some(node.bpffs().unwrap().join("fastpath"));
    let mut off = Dataplane::new(cfg).unwrap();
    off.apply(&desired(&lab, 1, &tasks2)).unwrap();
    assert!(off.writes() > 0, "switching off removed nothing");
    assert!(
        !programs_on(&sbox_a, "vxlan0"),
        "vxlan0 still runs the fast path"
    );
    assert!(reaches(&a1, a(2)), "a1 -> a2 through the bridge");
    let pins = lab.node(1).bpffs().unwrap().join("fastpath");
    let left: Vec<_> = std::fs::read_dir(&pins)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "pins left when off: {left:?}");
    drop(off);
    let mut again = fast(&lab, 1).expect("probed above");
    again.apply(&desired(&lab, 1, &tasks2)).unwrap();
    assert!(programs_on(&sbox_a, "vxlan0"));
    assert!(reaches(&a1, a(2)), "a1 -> a2 with the fast path again");

    // Removing the networks removes their pins.
    again.apply(&DesiredState::default()).unwrap();
    dp2.apply(&DesiredState::default()).unwrap();
    let pins = lab.node(1).bpffs().unwrap().join("fastpath");
    let left: Vec<_> = std::fs::read_dir(&pins)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "pins left: {left:?}");
}
