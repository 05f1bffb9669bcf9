//! Typed errors that say what to do, and leftovers of crashes adopted or replaced instead of
//! failing with "already exists" (libnetwork #1765, #28559).

use std::net::Ipv4Addr;

use crate::common::*;
use lab::Lab;
use netns::NetNs;
use vxlan::{Config, Dataplane, Error, GatewayEndpoint, GwBridge, Keep};

const NET: &str = "orphannet000000000000001";

#[test]
fn errors_are_typed_and_say_what_to_do() {
    need_root!();
    let lab = Lab::new(1).unwrap();
    let node = lab.node(1);

    // No interface holds the VTEP.
    let mut cfg = Config::new(
        NetNs::open(node.ns().name()).unwrap(),
        "198.19.9.9".parse().unwrap(),
    );
    cfg.prefix = node_prefix(&lab, 1);
    let e = Dataplane::new(cfg).unwrap_err();
    assert!(matches!(e, Error::UnderlayNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("--data-path-addr"), "{e}");
    // A bad prefix is refused, not a panic.
    let mut cfg = Config::new(NetNs::open(node.ns().name()).unwrap(), node.addr());
    cfg.prefix = "bad/prefix".into();
    assert!(matches!(Dataplane::new(cfg), Err(Error::Invalid { .. })));

    let mut dp = dataplane(&lab, 1, 4789);
    let (_t, path) = task(&lab, "e1");
    let ep = endpoint(NET, &path, "eth0", Ipv4Addr::new(10, 50, 0, 2));

    // The network must be known first.
    let e = dp.ensure_endpoint(&ep).unwrap_err();
    assert!(matches!(e, Error::UnknownNetwork { .. }), "{e:?}");
    assert!(e.to_string().contains("ensure_network"), "{e}");
    let e = dp.set_peers(NET, &[]).unwrap_err();
    assert!(matches!(e, Error::UnknownNetwork { .. }), "{e:?}");

    dp.ensure_network(&network(NET, 4400, "10.50.0.0/24"))
        .unwrap();
    // Bad input: errors, never panics.
    let mut bad = network("bad id", 4400, "10.50.0.0/24");
    assert!(matches!(
        dp.ensure_network(&bad),
        Err(Error::Invalid { .. })
    ));
    bad.id = "other".into();
    let e = dp.ensure_network(&bad).unwrap_err();
    assert!(
        e.to_string().contains("has it already"),
        "duplicate VNI: {e}"
    );
    for mut wrong in [ep.clone(), ep.clone(), ep.clone(), ep.clone()] {
        wrong.ifname = "a-very-long-interface-name".into();
        assert!(matches!(
            dp.ensure_endpoint(&wrong),
            Err(Error::Invalid { .. })
        ));
    }
    let mut wrong = ep.clone();
    wrong.address = "10.99.0.2".parse().unwrap();
    assert!(matches!(
        dp.ensure_endpoint(&wrong),
        Err(Error::Invalid { .. })
    ));
    wrong.address = "10.50.0.1".parse().unwrap();
    assert!(matches!(
        dp.ensure_endpoint(&wrong),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        dp.remove_endpoint("../etc", &path, "eth0"),
        Err(Error::Invalid { .. })
    ));

    // The task's namespace is gone.
    let mut gone = ep.clone();
    gone.netns = lab.dir().join("no-such-netns");
    let e = dp.ensure_endpoint(&gone).unwrap_err();
    assert!(matches!(e, Error::TaskNamespaceMissing { .. }), "{e:?}");
    assert!(e.to_string().contains("start the task's sandbox"), "{e}");
    // Nothing was left half-made by the failures.
    assert_eq!(namespaces(&node_prefix(&lab, 1)), Vec::<String>::new());

    // A gateway endpoint before the gateway bridge.
    let gw_ep = GatewayEndpoint {
        netns: path.clone(),
        ifname: "eth1".into(),
        address: "172.18.0.2".parse().unwrap(),
        mac: None,
        default_route: true,
    };
    assert!(matches!(
        dp.ensure_gateway_endpoint(&gw_ep),
        Err(Error::NoGwBridge { .. })
    ));
    // The gateway bridge's name is taken by a device that is not a bridge.
    node.run_ok(&[
        "ip",
        "link",
        "add",
        "docker_gwbridge",
        "type",
        "veth",
        "peer",
        "name",
        "gwpeer",
    ])
    .unwrap();
    let e = dp
        .ensure_gwbridge(&GwBridge::new("172.18.0.0/16".parse().unwrap()))
        .unwrap_err();
    assert!(matches!(e, Error::NameTaken { .. }), "{e:?}");
    node.run_ok(&["ip", "link", "del", "docker_gwbridge"])
        .unwrap();

    // A VXLAN device netagent does not own holds the VNI on the data-path port.
    node.run_ok(&[
        "ip",
        "link",
        "add",
        "foreign0",
        "type",
        "vxlan",
        "id",
        "4400",
        "dstport",
        "4789",
        "local",
        "198.18.0.1",
    ])
    .unwrap();
    let e = dp.ensure_endpoint(&ep).unwrap_err();
    assert!(matches!(e, Error::VniInUse { vni: 4400, .. }), "{e:?}");
    assert!(e.to_string().contains("foreign0"), "{e}");
    node.run_ok(&["ip", "link", "del", "foreign0"]).unwrap();
    dp.ensure_endpoint(&ep).unwrap();
}

#[test]
fn leftovers_are_adopted_or_replaced() {
    need_root!();
    let lab = Lab::new(2).unwrap();
    let (t1, p1) = task(&lab, "o1");
    let (_t2, p2) = task(&lab, "o2");
    let net = network(NET, 4500, "10.60.0.0/24");
    let addr1 = Ipv4Addr::new(10, 60, 0, 2);
    let addr2 = Ipv4Addr::new(10, 60, 0, 3);
    let peers = [
        peer(addr1, lab.node(1).addr()),
        peer(addr2, lab.node(2).addr()),
    ];
    let mut dp2 = dataplane(&lab, 2, 4789);
    dp2.ensure_network(&net).unwrap();
    dp2.set_peers(NET, &peers).unwrap();
    dp2.ensure_endpoint(&endpoint(NET, &p2, "eth0", addr2))
        .unwrap();

    // 1. A crashed process left a sandbox of an old network (another id) holding the VNI the
    //    new network gets, and a dangling mount point where the new sandbox goes.
    {
        let mut old = dataplane(&lab, 1, 4789);
        old.ensure_network(&network("oldnet000000000000000000", 4500, "10.70.0.0/24"))
            .unwrap();
        let (_t, p) = task(&lab, "old");
        old.ensure_endpoint(&endpoint(
            "oldnet000000000000000000",
            &p,
            "eth0",
            "10.70.0.2".parse().unwrap(),
        ))
        .unwrap();
        // Dropped without cleanup, as by a crash.
    }
    let mut dp1 = dataplane(&lab, 1, 4789);
    let sbox = dp1.sandbox_name(NET);
    std::fs::write(format!("/run/netns/{sbox}"), b"").unwrap();
    // 2. A stale interface named like the endpoint sits in the task.
    ip(
        &t1,
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "stale1",
        ],
    );

    dp1.ensure_network(&net).unwrap();
    dp1.set_peers(NET, &peers).unwrap();
    dp1.ensure_endpoint(&endpoint(NET, &p1, "eth0", addr1))
        .unwrap();
    assert!(
        reaches(&t1, addr2),
        "the adopted/replaced setup does not work"
    );
    let links = ip(&t1, &["-o", "link", "show"]);
    assert!(!links.contains("stale1"), "{links}");

    // The old sandbox is stale: remove_stale removes it, keeping the live one.
    let keep = Keep {
        networks: [NET.to_string()].into(),
        endpoints: [(NET.to_string(), p1.clone(), "eth0".to_string())].into(),
        ..Default::default()
    };
    let removed = dp1.remove_stale(&keep).unwrap();
    assert_eq!(removed.sandboxes, 1, "{removed:?}");
    assert_eq!(namespaces(&node_prefix(&lab, 1)), vec![sbox.clone()]);

    // 3. A restarted process adopts the existing sandbox and endpoint without writing.
    drop(dp1);
    let mut dp1 = dataplane(&lab, 1, 4789);
    dp1.ensure_network(&net).unwrap();
    dp1.set_peers(NET, &peers).unwrap();
    dp1.ensure_endpoint(&endpoint(NET, &p1, "eth0", addr1))
        .unwrap();
    assert_eq!(dp1.writes(), 0, "adopting an intact sandbox wrote");

    // 4. Drift is repaired: a deleted vxlan0, a changed neighbour, a downed task interface.
    let sb = NetNs::open(&sbox).unwrap();
    ip(&sb, &["link", "del", "vxlan0"]);
    ip(&t1, &["link", "set", "eth0", "down"]);
    dp1.ensure_network(&net).unwrap();
    dp1.ensure_endpoint(&endpoint(NET, &p1, "eth0", addr1))
        .unwrap();
    assert!(reaches(&t1, addr2), "drift not repaired");
    ip(
        &sb,
        &[
            "neigh",
            "replace",
            "10.60.0.3",
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "vxlan0",
            "nud",
            "permanent",
        ],
    );
    // set_peers writes changes of the peer set only (by difference with what this process
    // programmed, without reading the tables back); a reconcile reads them and repairs.
    let before = dp1.writes();
    let ch = dp1.set_peers(NET, &peers).unwrap();
    assert_eq!(ch, vxlan::PeerChanges::default());
    assert_eq!(dp1.writes(), before, "an unchanged peer set wrote");
    dp1.ensure_network(&net).unwrap();
    assert_eq!(dp1.writes(), before + 1, "the changed neighbour rewritten");
    assert!(reaches(&t1, addr2));
}

/// Peer changes written by difference (no read-back) leave the kernel exactly as a full
/// reconcile wants it: after a series of additions, moves to another VTEP, MAC changes, a MAC
/// two peers share and removals, a fresh process reading the tables finds nothing to write.
#[test]
fn peer_changes_by_difference_match_a_full_read() {
    need_root!();
    changes_by_difference(false);
}

/// The same changes given one address at a time ([`vxlan::Dataplane::update_peers`], as gossip
/// brings them) leave the same kernel state.
#[test]
fn peer_updates_by_address_match_a_full_read() {
    need_root!();
    changes_by_difference(true);
}

fn changes_by_difference(by_address: bool) {
    let lab = Lab::new(1).unwrap();
    let net = network(NET, 4600, "10.61.0.0/24");
    let vtep = |i: u8| Ipv4Addr::new(198, 18, 9, i);
    let addr = |i: u8| Ipv4Addr::new(10, 61, 0, i);
    let (_t, path) = task(&lab, "p1");
    let local = endpoint(NET, &path, "eth0", addr(200));
    let mut dp = dataplane(&lab, 1, 4789);
    dp.ensure_network(&net).unwrap();
    dp.ensure_endpoint(&local).unwrap();
    let mut peers: Vec<vxlan::Peer> = (2..60).map(|i| peer(addr(i), vtep(i % 5 + 1))).collect();
    let ch = dp.set_peers(NET, &peers).unwrap();
    assert_eq!(ch.added, 58, "{ch:?}");
    let shared = peers[6].mac;
    // One change at a time, as gossip brings them: each writes only itself.
    type Step<'a> = Box<dyn Fn(&mut Vec<vxlan::Peer>) + 'a>;
    let steps: Vec<Step> = vec![
        Box::new(|p| p.push(peer(addr(100), vtep(2)))),
        Box::new(|p| p[3].vtep = vtep(9)),
        Box::new(|p| p[4].mac = vxlan::Mac([2, 0, 0, 0, 0, 0x44])),
        Box::new(|p| {
            p.remove(5);
        }),
        Box::new(|p| p.retain(|x| x.ip != addr(100))),
        // A second peer with peer 6's MAC on another VTEP: the FDB entry stays with the lower
        // address until that one goes.
        Box::new(move |p| {
            p.push(vxlan::Peer {
                ip: addr(101),
                mac: shared,
                vtep: vtep(8),
            })
        }),
        Box::new(move |p| p.retain(|x| !(x.mac == shared && x.ip != addr(101)))),
    ];
    // A MAC change is at most a neighbour, an FDB deletion and an FDB entry; with the fast path
    // also the MAC map's old key deleted and the new one written.
    let most = if dp.fast_path().is_active() { 5 } else { 3 };
    for (i, step) in steps.iter().enumerate() {
        let before_set = peers.clone();
        step(&mut peers);
        let before = dp.writes();
        let ch = if by_address {
            let old: std::collections::BTreeMap<_, _> =
                before_set.iter().map(|p| (p.ip, *p)).collect();
            let new: std::collections::BTreeMap<_, _> = peers.iter().map(|p| (p.ip, *p)).collect();
            let changes: Vec<_> = old
                .keys()
                .chain(new.keys())
                .filter(|ip| old.get(ip) != new.get(ip))
                .map(|ip| (*ip, new.get(ip).copied()))
                .collect();
            dp.update_peers(NET, &changes).unwrap()
        } else {
            dp.set_peers(NET, &peers).unwrap()
        };
        let wrote = dp.writes() - before;
        assert!(
            (1..=most).contains(&wrote),
            "step {i}: {wrote} writes for one change ({ch:?})"
        );
        // After each step, a fresh process reading the tables finds nothing to write.
        let mut fresh = dataplane(&lab, 1, 4789);
        fresh.ensure_network(&net).unwrap();
        fresh.set_peers(NET, &peers).unwrap();
        fresh.ensure_endpoint(&local).unwrap();
        assert_eq!(
            fresh.writes(),
            0,
            "step {i}: the kernel differs from what the deltas meant"
        );
    }
}
