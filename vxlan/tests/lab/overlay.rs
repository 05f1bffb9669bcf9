//! Three nodes, two overlay networks with different VNIs, a task per network on every node.

use std::net::Ipv4Addr;

use crate::common::*;
use lab::capture::Capture;
use lab::{Lab, host_snapshot};
use netns::NetNs;
use vxlan::{DesiredState, NetworkState};

const NET_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaa1";
const NET_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbb2";
const VNI_A: u32 = 4097;
const VNI_B: u32 = 4098;

/// Both networks share one subnet, so only the VNIs keep them apart.
fn addr_a(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, 10 + node as u8)
}
fn addr_b(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, 20 + node as u8)
}

struct Tasks {
    a: Vec<(NetNs, std::path::PathBuf)>,
    b: Vec<(NetNs, std::path::PathBuf)>,
}

fn desired(lab: &Lab, tasks: &Tasks, node: usize, nodes: &[usize]) -> DesiredState {
    let mut state = DesiredState::default();
    for (id, vni, addr, list) in [
        (NET_A, VNI_A, addr_a as fn(usize) -> Ipv4Addr, &tasks.a),
        (NET_B, VNI_B, addr_b as fn(usize) -> Ipv4Addr, &tasks.b),
    ] {
        let endpoints = if nodes.contains(&node) {
            vec![endpoint(id, &list[node - 1].1, "eth0", addr(node))]
        } else {
            vec![]
        };
        state.networks.push(NetworkState {
            network: network(id, vni, "10.10.0.0/24"),
            endpoints,
            // Every endpoint of the network, this node's own included (it is skipped).
            peers: nodes
                .iter()
                .map(|&j| peer(addr(j), lab.node(j).addr()))
                .collect(),
        });
    }
    state
}

#[test]
fn two_networks_on_three_nodes() {
    need_root!();
    let before = host_snapshot();
    let brnf = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    let host_brnf = std::fs::read_to_string(brnf).ok();
    let lab = Lab::new(3).unwrap();
    let tasks = Tasks {
        a: (1..=3).map(|i| task(&lab, &format!("a{i}"))).collect(),
        b: (1..=3).map(|i| task(&lab, &format!("b{i}"))).collect(),
    };
    let all = [1, 2, 3];
    let mut dps: Vec<_> = (1..=3).map(|i| dataplane(&lab, i, 4789)).collect();
    for (k, dp) in dps.iter_mut().enumerate() {
        dp.apply(&desired(&lab, &tasks, k + 1, &all)).unwrap();
    }

    // Kernel layout on node 1: sandbox per network with br0 and vxlan0 as specified.
    let sbox_a = NetNs::open(&dps[0].sandbox_name(NET_A)).unwrap();
    let details = ip(&sbox_a, &["-d", "link", "show", "vxlan0"]);
    for want in [
        "vxlan id 4097",
        "local 198.18.0.1",
        "dstport 4789",
        "nolearning",
        "proxy",
        "master br0",
        "mtu 1450",
    ] {
        assert!(details.contains(want), "{want:?} missing in {details}");
    }
    let br = ip(&sbox_a, &["-4", "addr", "show", "br0"]);
    assert!(br.contains("10.10.0.1/24"), "{br}");
    let eth0 = ip(&tasks.a[0].0, &["addr", "show", "eth0"]);
    assert!(
        eth0.contains("10.10.0.11/24") && eth0.contains("02:42:0a:0a:00:0b"),
        "{eth0}"
    );
    assert!(eth0.contains("mtu 1450"), "{eth0}");
    let neigh = ip(&sbox_a, &["neigh", "show", "dev", "vxlan0"]);
    assert!(
        neigh.contains("10.10.0.12 lladdr 02:42:0a:0a:00:0c PERMANENT"),
        "{neigh}"
    );
    assert!(
        !neigh.contains("10.10.0.11"),
        "own endpoint must not be a peer: {neigh}"
    );
    let fdb = run_ok(
        sbox_a
            .command("bridge")
            .args(["fdb", "show", "dev", "vxlan0"]),
    );
    assert!(
        fdb.lines()
            .any(|l| l.starts_with("02:42:0a:0a:00:0c dst 198.18.0.2 ")
                && l.contains("self permanent")),
        "{fdb}"
    );
    assert!(
        !fdb.contains("00:00:00:00:00:00"),
        "no flooding entry: {fdb}"
    );
    // The VXLAN socket is in the node namespace, not in the sandbox.
    let node_udp = run_ok(lab.node(1).command("ss").args(["-uan"]));
    assert!(node_udp.contains(":4789"), "{node_udp}");
    let sbox_udp = run_ok(sbox_a.command("ss").args(["-uan"]));
    assert!(!sbox_udp.contains(":4789"), "{sbox_udp}");
    drop(sbox_a);

    // Every endpoint reaches every other endpoint of its network; none the other network.
    let mut checks = Vec::new();
    for i in 1..=3 {
        for j in 1..=3 {
            if i == j {
                continue;
            }
            checks.push((&tasks.a[i - 1].0, addr_a(j), true, format!("a{i} -> a{j}")));
            checks.push((&tasks.b[i - 1].0, addr_b(j), true, format!("b{i} -> b{j}")));
            checks.push((&tasks.a[i - 1].0, addr_b(j), false, format!("a{i} -> b{j}")));
            checks.push((&tasks.b[i - 1].0, addr_a(j), false, format!("b{i} -> a{j}")));
        }
    }
    let wrong = check_reach(&checks);
    assert!(wrong.is_empty(), "{wrong:#?}");

    // The underlay carries VXLAN on UDP 4789 with each network's VNI.
    let cap = Capture::start(&lab, "p1", "vxlan4789", "udp");
    assert!(reaches(&tasks.a[0].0, addr_a(2)));
    assert!(reaches(&tasks.b[0].0, addr_b(3)));
    let raw = cap.stop();
    let pkts: Vec<_> = raw.iter().filter_map(|p| decode_vxlan(p)).collect();
    assert!(
        !pkts.is_empty(),
        "no VXLAN packet among {} captured",
        raw.len()
    );
    assert!(pkts.iter().all(|p| p.dport == 4789), "{pkts:?}");
    assert!(
        pkts.iter()
            .any(|p| p.vni == VNI_A && p.src == lab.node(1).addr() && p.dst == lab.node(2).addr()),
        "no VNI {VNI_A} packet 1 -> 2: {pkts:?}"
    );
    assert!(
        pkts.iter()
            .any(|p| p.vni == VNI_B && p.src == lab.node(1).addr() && p.dst == lab.node(3).addr()),
        "no VNI {VNI_B} packet 1 -> 3: {pkts:?}"
    );

    // A /32 next to an endpoint's address is someone else's (IPVS puts a network's VIPs on its
    // load-balancer endpoint): a reconcile leaves it where it is.
    ip(
        &tasks.a[0].0,
        &["addr", "add", "192.0.2.77/32", "dev", "eth0"],
    );

    // A second reconcile of unchanged desired state writes nothing.
    for (k, dp) in dps.iter_mut().enumerate() {
        let w = dp.writes();
        dp.apply(&desired(&lab, &tasks, k + 1, &all)).unwrap();
        assert_eq!(dp.writes(), w, "node {}: second apply wrote", k + 1);
        let same: Vec<_> = all
            .iter()
            .map(|&j| peer(addr_a(j), lab.node(j).addr()))
            .collect();
        let ch = dp.set_peers(NET_A, &same).unwrap();
        assert_eq!(ch, vxlan::PeerChanges::default());
        assert_eq!(dp.writes(), w, "node {}: unchanged peer set wrote", k + 1);
    }

    let eth0 = ip(&tasks.a[0].0, &["addr", "show", "eth0"]);
    assert!(eth0.contains("192.0.2.77/32"), "{eth0}");

    // A peer that moves to another VTEP: its FDB entry is rewritten in place (one write);
    // pointed at the wrong node it is unreachable, pointed back it is reachable again.
    let (n2, n3) = (lab.node(2).addr(), lab.node(3).addr());
    for (vtep, reachable) in [(n2, false), (n3, true)] {
        let w = dps[0].writes();
        let ch = dps[0]
            .set_peers(NET_A, &[peer(addr_a(2), n2), peer(addr_a(3), vtep)])
            .unwrap();
        assert_eq!((ch.added, ch.updated, ch.removed), (0, 1, 0));
        assert_eq!(dps[0].writes() - w, 1, "one FDB entry rewritten");
        let fdb = run_ok(
            NetNs::open(&dps[0].sandbox_name(NET_A))
                .unwrap()
                .command("bridge")
                .args(["fdb", "show", "dev", "vxlan0"]),
        );
        assert!(
            fdb.contains(&format!("02:42:0a:0a:00:0d dst {vtep} ")),
            "{fdb}"
        );
        let label = format!("a1 -> a3 with its peer at {vtep}");
        let wrong = check_reach(&[(&tasks.a[0].0, addr_a(3), reachable, label)]);
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    // Removing a peer stops traffic to it (and only to it).
    let w = dps[0].writes();
    let ch = dps[0]
        .set_peers(NET_A, &[peer(addr_a(2), lab.node(2).addr())])
        .unwrap();
    assert_eq!((ch.added, ch.updated, ch.removed), (0, 0, 1));
    // With the fast path, its map entry for the peer's MAC goes too.
    let fast = u64::from(dps[0].fast_path().is_active());
    assert_eq!(
        dps[0].writes() - w,
        2 + fast,
        "one neighbour and one FDB entry removed (and the fast path's map entry)"
    );
    let wrong = check_reach(&[
        (
            &tasks.a[0].0,
            addr_a(3),
            false,
            "a1 -> a3 after removing the peer".into(),
        ),
        (&tasks.a[0].0, addr_a(2), true, "a1 -> a2 still".into()),
    ]);
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Removing an endpoint removes its veth; the last one removes the sandbox.
    let sbox_a2 = dps[1].sandbox_name(NET_A);
    dps[1]
        .remove_endpoint(NET_A, &tasks.a[1].1, "eth0")
        .unwrap();
    let links = ip(&tasks.a[1].0, &["-o", "link", "show"]);
    assert!(!links.contains("eth0"), "{links}");
    assert!(
        !netns::exists(&sbox_a2),
        "the last endpoint's sandbox is still there"
    );
    // Node 2's other network is untouched.
    assert!(netns::exists(&dps[1].sandbox_name(NET_B)));
    assert!(reaches(&tasks.b[1].0, addr_b(1)));

    // Removing everything leaves no device, namespace or rule of netagent behind.
    for (k, dp) in dps.iter_mut().enumerate() {
        dp.apply(&DesiredState::default()).unwrap();
        let node = lab.node(k + 1);
        assert_eq!(namespaces(&node_prefix(&lab, k + 1)), Vec::<String>::new());
        let links = node.run_ok(&["ip", "-o", "link", "show"]).unwrap();
        assert_eq!(links.lines().count(), 2, "only lo and eth0 remain: {links}");
        let rules = node.run_ok(&["nft", "list", "ruleset"]).unwrap();
        assert!(rules.trim().is_empty(), "{rules}");
    }
    for t in tasks.a.iter().chain(&tasks.b) {
        let links = ip(&t.0, &["-o", "link", "show"]);
        assert_eq!(
            links.lines().count(),
            1,
            "only lo remains in the task: {links}"
        );
    }
    assert_eq!(
        host_snapshot(),
        before,
        "the test changed the host's namespace"
    );
    assert_eq!(
        std::fs::read_to_string(brnf).ok(),
        host_brnf,
        "a host sysctl changed"
    );
}
