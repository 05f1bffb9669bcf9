//! docker_gwbridge: egress through masquerade with the node's address, no traffic between tasks,
//! the default route only for tasks not confined to internal networks.

use std::net::Ipv4Addr;

use crate::common::*;
use lab::capture::Capture;
use lab::{Lab, host_snapshot};
use vxlan::{DesiredState, GatewayEndpoint, GwBridge, NetworkState};

const NET: &str = "gwtestnet0000000000000001";
const INTERNAL: &str = "gwinternal00000000000002";

fn gw_ep(path: &std::path::Path, last: u8) -> GatewayEndpoint {
    GatewayEndpoint {
        netns: path.to_path_buf(),
        ifname: "eth1".into(),
        address: Ipv4Addr::new(172, 18, 0, last),
        mac: None,
        default_route: true,
    }
}

/// Source addresses of the IPv4 packets in a capture.
fn ipv4_sources(frames: &[Vec<u8>]) -> Vec<Ipv4Addr> {
    frames
        .iter()
        .filter(|f| f.len() >= 34 && f[12..14] == [0x08, 0x00])
        .map(|f| Ipv4Addr::new(f[26], f[27], f[28], f[29]))
        .collect()
}

#[test]
fn gwbridge_masquerades_and_isolates_tasks() {
    need_root!();
    let before = host_snapshot();
    let host_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    // Node 1 runs the tasks; node 2 is a host "outside" on the underlay.
    let lab = Lab::new(2).unwrap();
    let outside = lab.node(2).addr();
    let (t1, p1) = task(&lab, "g1");
    let (t2, p2) = task(&lab, "g2");
    let (t3, p3) = task(&lab, "g3");
    let mut internal = network(INTERNAL, 4200, "10.30.0.0/24");
    internal.internal = true;
    let desired = DesiredState {
        networks: vec![
            NetworkState {
                network: network(NET, 4100, "10.20.0.0/24"),
                endpoints: vec![
                    endpoint(NET, &p1, "eth0", Ipv4Addr::new(10, 20, 0, 2)),
                    endpoint(NET, &p2, "eth0", Ipv4Addr::new(10, 20, 0, 3)),
                ],
                peers: vec![],
            },
            NetworkState {
                network: internal,
                endpoints: vec![endpoint(INTERNAL, &p3, "eth0", Ipv4Addr::new(10, 30, 0, 2))],
                peers: vec![],
            },
        ],
        gwbridge: Some(GwBridge::new("172.18.0.0/16".parse().unwrap())),
        gateway_endpoints: vec![gw_ep(&p1, 2), gw_ep(&p2, 3), gw_ep(&p3, 4)],
    };
    let mut dp = dataplane(&lab, 1, 4789);
    dp.apply(&desired).unwrap();

    let node = lab.node(1);
    let br = node
        .run_ok(&["ip", "-d", "link", "show", "docker_gwbridge"])
        .unwrap();
    assert!(br.contains("bridge") && br.contains("mtu 1500"), "{br}");
    let addr = node
        .run_ok(&["ip", "-4", "addr", "show", "docker_gwbridge"])
        .unwrap();
    assert!(addr.contains("172.18.0.1/16"), "{addr}");
    assert_eq!(
        node.run_ok(&["sysctl", "-n", "net.ipv4.ip_forward"])
            .unwrap()
            .trim(),
        "1"
    );
    let ports = node.run_ok(&["bridge", "-d", "link", "show"]).unwrap();
    assert_eq!(ports.matches("isolated on").count(), 3, "{ports}");
    let rules = node
        .run_ok(&["nft", "list", "table", "ip", vxlan::nft::TABLE])
        .unwrap();
    assert!(
        rules.contains("ip saddr 172.18.0.0/16 masquerade"),
        "{rules}"
    );
    assert!(
        rules.contains("iifname \"docker_gwbridge\" oifname \"docker_gwbridge\" drop"),
        "{rules}"
    );

    let r1 = ip(&t1, &["route", "show", "default"]);
    assert!(r1.contains("default via 172.18.0.1 dev eth1"), "{r1}");
    let r3 = ip(&t3, &["route", "show", "default"]);
    assert!(
        r3.trim().is_empty(),
        "a task on internal networks only got a default route: {r3}"
    );

    // A task reaches the outside host, which sees the node's address as the source.
    let cap = Capture::start(&lab, "p2", "gw-masq", "icmp");
    assert!(
        reaches(&t1, outside),
        "task 1 cannot reach the outside host"
    );
    assert!(
        reaches(&t2, outside),
        "task 2 cannot reach the outside host"
    );
    let srcs = ipv4_sources(&cap.stop());
    assert!(srcs.contains(&node.addr()), "{srcs:?}");
    assert!(
        srcs.iter().all(|s| *s == node.addr() || *s == outside),
        "a task address leaked past the masquerade: {srcs:?}"
    );
    // The internal-only task has no way out.
    assert!(!ping(&t3, outside));

    // Two tasks on the node cannot reach each other over the gateway bridge, while their
    // overlay network still connects them.
    let wrong = check_reach(&[
        (
            &t1,
            Ipv4Addr::new(172, 18, 0, 3),
            false,
            "t1 -> t2 over gwbridge".into(),
        ),
        (
            &t2,
            Ipv4Addr::new(172, 18, 0, 2),
            false,
            "t2 -> t1 over gwbridge".into(),
        ),
        (
            &t1,
            Ipv4Addr::new(10, 20, 0, 3),
            true,
            "t1 -> t2 over the overlay".into(),
        ),
    ]);
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Unchanged desired state: no writes at all (nftables and sysctl included).
    let w = dp.writes();
    dp.apply(&desired).unwrap();
    assert_eq!(dp.writes(), w);

    // Control: with both defences gone (the ports' isolation, and the drop rule that also
    // applies to bridged traffic where br_netfilter is active) the tasks do reach each other;
    // the next reconcile notices and restores both.
    let ports = node
        .run_ok(&["ip", "-o", "link", "show", "master", "docker_gwbridge"])
        .unwrap();
    for l in ports.lines() {
        let name = l.split(": ").nth(1).unwrap().split('@').next().unwrap();
        node.run_ok(&["bridge", "link", "set", "dev", name, "isolated", "off"])
            .unwrap();
    }
    node.run_ok(&["nft", "delete", "table", "ip", vxlan::nft::TABLE])
        .unwrap();
    assert!(
        reaches(&t1, Ipv4Addr::new(172, 18, 0, 3)),
        "control: no isolation, still no reach"
    );
    dp.apply(&desired).unwrap();
    assert!(dp.writes() > w, "the reconcile did not notice the drift");
    assert!(!ping(&t1, Ipv4Addr::new(172, 18, 0, 3)));

    // Removing everything removes the bridge, the veths, the table.
    dp.apply(&DesiredState::default()).unwrap();
    let links = node.run_ok(&["ip", "-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 2, "{links}");
    let rules = node.run_ok(&["nft", "list", "ruleset"]).unwrap();
    assert!(rules.trim().is_empty(), "{rules}");
    for t in [&t1, &t2, &t3] {
        assert_eq!(ip(t, &["-o", "link", "show"]).lines().count(), 1);
    }
    drop(lab);
    assert_eq!(
        host_snapshot(),
        before,
        "the test changed the host's namespace"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_forward,
        "the host's ip_forward changed"
    );
}
