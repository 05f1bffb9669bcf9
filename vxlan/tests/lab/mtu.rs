//! MTU from the underlay (underlay - 50), an override wins; a non-default data-path port.

use std::net::Ipv4Addr;

use crate::common::*;
use lab::capture::Capture;
use lab::{Lab, LabBuilder};
use netns::NetNs;
use vxlan::{DesiredState, Network, NetworkState};

const NET: &str = "mtutestnet00000000000001";

fn mtu_of(ns: &NetNs, dev: &str) -> u32 {
    let out = ip(ns, &["-o", "link", "show", dev]);
    let after = out.split(" mtu ").nth(1).unwrap_or_else(|| panic!("{out}"));
    after.split_whitespace().next().unwrap().parse().unwrap()
}

/// Two nodes, one network, a task on each; returns the tasks.
fn setup(
    lab: &Lab,
    net: &Network,
    port: u16,
) -> (Vec<vxlan::Dataplane>, Vec<(NetNs, std::path::PathBuf)>) {
    let tasks: Vec<_> = (1..=2).map(|i| task(lab, &format!("m{i}"))).collect();
    let addr = |i: usize| Ipv4Addr::new(10, 40, 0, 1 + i as u8);
    let mut dps = Vec::new();
    for i in 1..=2 {
        let mut dp = dataplane(lab, i, port);
        dp.apply(&DesiredState {
            networks: vec![NetworkState {
                network: net.clone(),
                endpoints: vec![endpoint(&net.id, &tasks[i - 1].1, "eth0", addr(i))],
                peers: (1..=2).map(|j| peer(addr(j), lab.node(j).addr())).collect(),
            }],
            ..Default::default()
        })
        .unwrap();
        dps.push(dp);
    }
    (dps, tasks)
}

/// The overlay devices of node 1 and the task's interface all have `want`.
fn assert_mtu(dp: &vxlan::Dataplane, task: &NetNs, want: u32) {
    let sbox = NetNs::open(&dp.sandbox_name(NET)).unwrap();
    for dev in ["br0", "vxlan0"] {
        assert_eq!(mtu_of(&sbox, dev), want, "{dev}");
    }
    assert_eq!(mtu_of(task, "eth0"), want, "task eth0");
}

#[test]
fn jumbo_underlay_gives_8950_and_full_size_packets_pass() {
    need_root!();
    let lab = LabBuilder::new(2).mtu(9000).build().unwrap();
    let net = network(NET, 4300, "10.40.0.0/24");
    let (dps, tasks) = setup(&lab, &net, 4789);
    assert_eq!(dps[0].underlay(), ("eth0", 9000));
    assert_eq!(dps[0].mtu(&net), 8950);
    assert_mtu(&dps[0], &tasks[0].0, 8950);
    // A packet of exactly the overlay MTU crosses without fragmentation.
    let out = tasks[0]
        .0
        .command("ping")
        .args(["-c", "2", "-W", "2", "-M", "do", "-s", "8922", "10.40.0.3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn default_underlay_gives_1450_and_an_override_wins() {
    need_root!();
    let lab = Lab::new(2).unwrap();
    let mut net = network(NET, 4301, "10.40.0.0/24");
    let (mut dps, tasks) = setup(&lab, &net, 4789);
    assert_eq!(dps[0].mtu(&net), 1450);
    assert_mtu(&dps[0], &tasks[0].0, 1450);

    // An override on the existing network: ensure_network and ensure_endpoint adjust in place.
    net.mtu = Some(1300);
    assert_eq!(dps[0].mtu(&net), 1300);
    dps[0].ensure_network(&net).unwrap();
    dps[0]
        .ensure_endpoint(&endpoint(
            NET,
            &tasks[0].1,
            "eth0",
            Ipv4Addr::new(10, 40, 0, 2),
        ))
        .unwrap();
    assert_mtu(&dps[0], &tasks[0].0, 1300);
    assert!(reaches(&tasks[0].0, Ipv4Addr::new(10, 40, 0, 3)));
}

#[test]
fn data_path_port_4790() {
    need_root!();
    let lab = Lab::new(2).unwrap();
    let net = network(NET, 4302, "10.40.0.0/24");
    let (_dps, tasks) = setup(&lab, &net, 4790);
    let udp = run_ok(lab.node(1).command("ss").args(["-uan"]));
    assert!(udp.contains(":4790") && !udp.contains(":4789"), "{udp}");
    let cap = Capture::start(&lab, "p1", "vxlan4790", "udp");
    assert!(reaches(&tasks[0].0, Ipv4Addr::new(10, 40, 0, 3)));
    let raw = cap.stop();
    let pkts: Vec<_> = raw.iter().filter_map(|p| decode_vxlan(p)).collect();
    assert!(
        !pkts.is_empty(),
        "no VXLAN packet among {} captured",
        raw.len()
    );
    for p in &pkts {
        assert_eq!((p.dport, p.vni), (4790, 4302), "{p:?}");
    }
    // The inner frame of a request to 10.40.0.3 goes to its MAC, 02:42 + the address.
    assert!(
        pkts.iter()
            .any(|p| p.src == lab.node(1).addr() && p.inner[0..6] == [2, 0x42, 10, 40, 0, 3]),
        "{pkts:?}"
    );
}
