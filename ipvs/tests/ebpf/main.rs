//! The eBPF socket load balancer against the host kernel, in lab namespaces (see rig.rs).
//! Needs root (namespaces, cgroups, bpffs, BPF).

mod rig;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipvs::{Change, EbpfLb, LoadBalancer};
use rig::{Rig, json, names};

#[test]
fn tcp_to_any_port_of_a_vip_reaches_every_backend_and_udp_answers_from_the_vip() {
    let rig = Rig::new();
    let vip = Rig::vip(10);
    let mut lb = EbpfLb::open(&rig.config()).expect("open");
    let d = rig.desired([Rig::service("web", vip, rig.backend_addrs())]);
    let r = lb.sync(&d).expect("sync");
    assert!(r.refused.is_empty(), "{r:?}");
    // 3 backends: 3 slots, the head, the VIP route.
    assert_eq!(r.writes, 5, "{r:?}");
    assert_eq!(lb.sync(&d).expect("sync again").writes, 0);
    assert_eq!(rig.lb_addrs(), BTreeSet::from([vip]));
    let before = lb.counters().expect("counters");
    assert_eq!((before.services, before.backends), (1, 3), "{before:?}");
    assert_eq!(
        (before.balanced, before.refused),
        (0, 0),
        "a new node: {before:?}"
    );

    for port in ["80", "8080"] {
        let v = json(&rig.client(&["tcp", &vip.to_string(), port, "150"]));
        let n = names(&v);
        assert!(
            v["errors"].as_array().unwrap().is_empty(),
            "port {port}: {v}"
        );
        assert_eq!(n.values().sum::<u64>(), 150, "{v}");
        assert_eq!(n.len(), 3, "port {port}: all three backends answer: {v}");
        // getpeername shows the VIP, not the backend.
        assert_eq!(v["peers"], serde_json::json!([vip.to_string()]), "{v}");
    }

    // UDP: each socket gets its answer, and the source it sees is the VIP.
    let v = json(&rig.client(&["udp", &vip.to_string(), "5300", "60"]));
    assert!(v["errors"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(names(&v).values().sum::<u64>(), 60, "{v}");
    assert!(
        names(&v).len() >= 2,
        "UDP sockets spread over backends: {v}"
    );
    assert_eq!(
        v["peers"],
        serde_json::json!([format!("{vip}:5300")]),
        "{v}"
    );

    // Dual-stack sockets (AF_INET6 to ::ffff:VIP) are balanced too, and see the VIP as peer.
    let v = json(&rig.client(&["tcp6", &vip.to_string(), "80", "60"]));
    assert!(v["errors"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(names(&v).len(), 3, "{v}");
    assert_eq!(
        v["peers"],
        serde_json::json!([format!("::ffff:{vip}")]),
        "{v}"
    );
    let v = json(&rig.client(&["udp6", &vip.to_string(), "5300", "20"]));
    assert!(v["errors"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(names(&v).values().sum::<u64>(), 20, "{v}");
    assert_eq!(
        v["peers"],
        serde_json::json!([format!("::ffff:{vip}:5300")]),
        "{v}"
    );

    // Every connection and datagram above was balanced once: 2 x 150 + 60 TCP connects, 60 + 20
    // UDP datagrams (each from its own unconnected socket, through sendmsg4).
    let c = lb.counters().expect("counters");
    assert_eq!(c.balanced, 440, "{c:?}");
    assert_eq!(c.refused, 0, "{c:?}");

    // The VIP answers ping (an address of the load-balancer namespace on the bridge).
    assert!(rig.lab.node(1).ping(vip), "ping {vip}");
    // ... after an ARP answer from the load-balancer namespace's interface.
    let mac = rig
        .lab
        .node(5)
        .run_ok(&["ip", "-br", "link", "show", lab::NODE_IFACE])
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string();
    let neigh = rig
        .lab
        .node(1)
        .run_ok(&["ip", "neigh", "show", &vip.to_string()])
        .unwrap();
    assert!(
        !mac.trim().is_empty() && neigh.contains(mac.trim()),
        "{neigh} has {mac}"
    );
    // A process outside the task cgroup is not balanced: its connect goes to the VIP itself,
    // where nothing listens.
    let v = json(&rig.client_unbalanced(&["refused", &vip.to_string(), "80"]));
    assert_eq!(v["error"], "ECONNREFUSED", "{v}");
    // A non-VIP destination proceeds untouched.
    let (a, name) = &rig.backends[0];
    let v = json(&rig.client(&["tcp", &a.to_string(), "80", "3"]));
    assert_eq!(names(&v).get(name.as_str()), Some(&3), "{v}");
    // Neither is counted.
    assert_eq!(lb.counters().expect("counters"), c);

    let r = lb.remove_all().expect("remove_all");
    assert!(r.writes > 0);
    assert!(rig.lb_addrs().is_empty());
    assert!(!rig.config().pin_dir.exists(), "pins removed");
    // Detached and the address gone: nothing answers on the VIP any more.
    let v = json(&rig.client(&["tcp", &vip.to_string(), "80", "1"]));
    assert!(
        names(&v).is_empty() && !v["errors"].as_array().unwrap().is_empty(),
        "{v}"
    );
}

#[test]
fn a_service_without_backends_refuses_at_once() {
    let rig = Rig::new();
    let vip = Rig::vip(20);
    let mut lb = EbpfLb::open(&rig.config()).expect("open");
    let r = lb
        .sync(&rig.desired([Rig::service("idle", vip, BTreeSet::new())]))
        .expect("sync");
    assert_eq!(r.writes, 2, "head and address: {r:?}");
    for port in ["80", "12345"] {
        let v = json(&rig.client(&["refused", &vip.to_string(), port]));
        // Not a timeout: refused by the connect hook itself.
        assert_eq!(v["error"], "ECONNREFUSED", "{v}");
    }
    let v = json(&rig.client(&["udp", &vip.to_string(), "5300", "1"]));
    assert_eq!(v["errors"], serde_json::json!(["ECONNREFUSED"]), "{v}");
    // Two connects and one datagram refused, none balanced.
    let c = lb.counters().expect("counters");
    assert_eq!((c.services, c.backends), (1, 0), "{c:?}");
    assert_eq!((c.balanced, c.refused), (0, 3), "{c:?}");
    lb.remove_all().expect("remove_all");
}

#[test]
fn shrinking_keeps_open_connections_and_sends_new_ones_to_the_rest() {
    let rig = Rig::new();
    let vip = Rig::vip(30);
    let mut lb = EbpfLb::open(&rig.config()).expect("open");
    let all = rig.backend_addrs();
    lb.sync(&rig.desired([Rig::service("web", vip, all.clone())]))
        .expect("sync");
    // Open connections until one lands on each backend; keep them.
    let dir = rig.lab.dir().to_path_buf();
    let go = dir.join("go");
    let mut held = Vec::new();
    let mut seen = BTreeSet::new();
    for i in 0..60 {
        if seen.len() == 3 {
            break;
        }
        let out = dir.join(format!("hold{i}"));
        let p = rig.spawn_client(
            &format!("hold{i}"),
            &[
                "hold",
                &vip.to_string(),
                "80",
                &out.display().to_string(),
                &go.display().to_string(),
            ],
        );
        lab::wait_until(
            "the hold client connected",
            Duration::from_secs(10),
            &mut || std::fs::read_to_string(&out).is_ok_and(|s| s.ends_with('\n')),
        )
        .unwrap();
        let name = std::fs::read_to_string(&out).unwrap().trim().to_string();
        if seen.insert(name.clone()) {
            held.push((name, out, p));
        } else {
            p.kill();
        }
    }
    assert_eq!(seen.len(), 3, "connections to every backend: {seen:?}");

    // 3 -> 1: keep the last backend.
    let (keep_addr, keep_name) = rig.backends[2].clone();
    let r = lb
        .apply(&[Change::PutService(Rig::service(
            "web",
            vip,
            BTreeSet::from([keep_addr]),
        ))])
        .expect("apply");
    // The head, a copy of the kept backend into slot 1 unless it is there, two deletions.
    assert!((3..=4).contains(&r.writes), "{r:?}");
    let dump = lb.dump().unwrap();
    assert_eq!((dump[&vip].count, &dump[&vip].slots), (1, &vec![keep_addr]));

    let v = json(&rig.client(&["tcp", &vip.to_string(), "80", "50"]));
    assert_eq!(
        names(&v).get(&keep_name),
        Some(&50),
        "only the remaining backend: {v}"
    );

    // The connection to the remaining backend still works (the others too: socket LB does not
    // cut them; the executor decides when a stopped task's connections end).
    std::fs::write(&go, "").unwrap();
    for (name, out, p) in &held {
        p.wait_exit(Duration::from_secs(10));
        let text = std::fs::read_to_string(out).unwrap();
        if *name == keep_name {
            assert!(text.contains("alive ping"), "{name}: {text}");
        }
    }
    lb.remove_all().expect("remove_all");
}

#[test]
fn a_reopened_balancer_adopts_pinned_state_and_writes_nothing() {
    let rig = Rig::new();
    let vips: Vec<Ipv4Addr> = (40..45).map(Rig::vip).collect();
    let d = rig.desired(
        vips.iter()
            .enumerate()
            .map(|(i, v)| Rig::service(&format!("s{i}"), *v, rig.backend_addrs())),
    );
    {
        let mut lb = EbpfLb::open(&rig.config()).expect("open");
        let r = lb.sync(&d).expect("sync");
        assert_eq!(r.writes, 5 * 5, "{r:?}");
        let v = json(&rig.client(&["tcp", &vips[0].to_string(), "80", "7"]));
        assert_eq!(names(&v).values().sum::<u64>(), 7, "{v}");
        assert_eq!(lb.counters().expect("counters").balanced, 7);
        // Dropped without remove_all: an agent that stops.
    }
    let mut lb = EbpfLb::open(&rig.config()).expect("reopen");
    let r = lb.sync(&d).expect("sync after reopen");
    assert_eq!(r.writes, 0, "adopted: {r:?}");
    // The pinned counters outlived the balancer that read them.
    let c = lb.counters().expect("counters");
    assert_eq!((c.services, c.backends, c.balanced), (5, 15, 7), "{c:?}");
    let v = json(&rig.client(&["tcp", &vips[4].to_string(), "80", "30"]));
    assert_eq!(names(&v).values().sum::<u64>(), 30, "{v}");
    assert_eq!(lb.counters().expect("counters").balanced, 37);
    // Through the trait, as the executor will hold it.
    let mut boxed = ipvs::open(&rig.config()).expect("ipvs::open");
    assert_eq!(boxed.kind(), ipvs::Kind::Ebpf);
    assert_eq!(boxed.sync(&d).expect("sync").writes, 0);
    // One backend leaves one service: one or two writes only.
    let mut fewer = rig.backend_addrs();
    fewer.remove(&rig.backends[0].0);
    let r = boxed
        .apply(&[Change::PutService(Rig::service("s0", vips[0], fewer))])
        .expect("apply");
    assert!(r.writes <= 3, "{r:?}");
    boxed.remove_all().expect("remove_all");
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let rig = Rig::new();
    let mut lb = EbpfLb::open(&rig.config()).expect("open");
    let outside = Ipv4Addr::new(10, 99, 0, 1);
    let good = Rig::service("good", Rig::vip(50), rig.backend_addrs());
    let d = rig.desired([
        good.clone(),
        Rig::service("vip-outside", outside, rig.backend_addrs()),
        Rig::service(
            "backend-outside",
            Rig::vip(51),
            BTreeSet::from([Ipv4Addr::new(10, 99, 0, 2)]),
        ),
        Rig::service("dup-a", Rig::vip(52), rig.backend_addrs()),
        Rig::service("dup-b", Rig::vip(52), rig.backend_addrs()),
    ]);
    let r = lb.sync(&d).expect("sync");
    assert_eq!(r.refused.len(), 3, "{r:?}");
    assert!(
        r.refused
            .iter()
            .any(|x| x.contains("VIP 10.99.0.1 is outside")),
        "{r:?}"
    );
    assert!(
        r.refused
            .iter()
            .any(|x| x.contains("backend 10.99.0.2 is outside")),
        "{r:?}"
    );
    assert!(
        r.refused.iter().any(|x| x.contains("claimed by several")),
        "{r:?}"
    );
    let dump = lb.dump().unwrap();
    assert_eq!(dump.keys().copied().collect::<Vec<_>>(), vec![good.vip]);
    assert_eq!(rig.lb_addrs(), BTreeSet::from([good.vip]));
    // A network whose load-balancer namespace is missing: the maps are still programmed, the
    // call fails naming it, and a later sync adds the VIP route once the namespace is right.
    let mut broken = rig.net.clone();
    broken.netns = rig.lab.dir().join("no-such-netns");
    let mut d2 = rig.desired([good.clone()]);
    d2.networks.insert(rig::NET.into(), broken);
    lb.remove_all().expect("remove_all");
    let mut lb = EbpfLb::open(&rig.config()).expect("open");
    let err = lb.sync(&d2).expect_err("missing namespace");
    assert!(err.to_string().contains("network net1"), "{err}");
    assert!(lb.dump().unwrap().contains_key(&good.vip));
    let v = json(&rig.client(&["tcp", &good.vip.to_string(), "80", "5"]));
    assert_eq!(names(&v).values().sum::<u64>(), 5, "{v}");
    assert!(rig.lb_addrs().is_empty());
    let r = lb.sync(&rig.desired([good.clone()])).expect("sync");
    assert_eq!(r.writes, 1, "the route only: {r:?}");
    assert_eq!(rig.lb_addrs(), BTreeSet::from([good.vip]));

    // The root of the cgroup2 mount is refused.
    let mut cfg = rig.config();
    cfg.cgroup = netns::cgroup2_mount();
    let err = EbpfLb::open(&cfg).err().expect("root cgroup refused");
    assert!(err.to_string().contains("root of a cgroup2 mount"), "{err}");
    lb.remove_all().expect("remove_all");
}

#[test]
fn ten_thousand_services_of_ten_backends() {
    let rig = Rig::new();
    let n = 10_000u32;
    let real = rig.backend_addrs();
    let services: Vec<_> = (0..n)
        .map(|i| {
            let backends: BTreeSet<Ipv4Addr> = if i == 0 || i == n - 1 {
                real.clone()
            } else {
                (0..10)
                    .map(|k| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + i * 10 + k))
                    .collect()
            };
            Rig::service(&format!("svc{i}"), Rig::vip(100 + i), backends)
        })
        .collect();
    let d = rig.desired(services.clone());
    let mut lb = EbpfLb::open(&rig.config()).expect("open");
    let r = lb.sync(&d).expect("sync");
    assert!(
        r.refused.is_empty(),
        "{:?}",
        &r.refused[..r.refused.len().min(3)]
    );
    let dump = lb.dump().unwrap();
    assert_eq!(dump.len(), n as usize);
    for s in &services {
        let e = &dump[&s.vip];
        assert_eq!(e.count as usize, s.backends.len());
        assert_eq!(e.slots.len(), s.backends.len(), "no slot past the count");
        assert_eq!(e.slots.iter().copied().collect::<BTreeSet<_>>(), s.backends);
    }
    assert_eq!(rig.lb_addrs().len(), n as usize);
    for s in [&services[0], &services[n as usize - 1]] {
        let v = json(&rig.client(&["tcp", &s.vip.to_string(), "80", "30"]));
        assert_eq!(names(&v).values().sum::<u64>(), 30, "{}: {v}", s.vip);
        assert!(rig.lab.node(1).ping(s.vip));
    }
    assert_eq!(lb.sync(&d).expect("sync again").writes, 0);
    lb.remove_all().expect("remove_all");
    assert!(rig.lb_addrs().is_empty());
}

#[test]
fn changes_apply_one_by_one_and_a_removed_network_takes_its_vips() {
    let rig = Rig::new();
    let mut cfg = rig.config();
    cfg.choice = ipvs::Choice::Auto;
    assert_eq!(ipvs::detect(&cfg).expect("detect"), ipvs::Kind::Ebpf);
    let mut lb = ipvs::open(&cfg).expect("open");
    let (a, b) = (
        Rig::service("a", Rig::vip(60), rig.backend_addrs()),
        Rig::service("b", Rig::vip(61), rig.backend_addrs()),
    );
    let changes = [
        Change::PutNetwork(rig.net.clone()),
        Change::PutService(a.clone()),
        Change::PutService(b.clone()),
    ];
    let r = lb.apply(&changes).expect("apply");
    assert_eq!(r.writes, 2 * 5, "{r:?}");
    assert_eq!(lb.apply(&changes).expect("apply again").writes, 0);
    let v = json(&rig.client(&["tcp", &b.vip.to_string(), "8080", "20"]));
    assert_eq!(names(&v).values().sum::<u64>(), 20, "{v}");

    // Removed and put back in one call: the map entries are rewritten, the VIP route stays.
    let r = lb
        .apply(&[
            Change::RemoveService(b.key.clone()),
            Change::PutService(b.clone()),
        ])
        .expect("remove and put back b");
    assert_eq!(r.writes, 8, "{r:?}");
    assert_eq!(rig.lb_addrs(), BTreeSet::from([a.vip, b.vip]));

    let r = lb
        .apply(&[Change::RemoveService(a.key.clone())])
        .expect("remove a");
    assert_eq!(r.writes, 5, "head, 3 slots, the VIP route: {r:?}");
    assert_eq!(rig.lb_addrs(), BTreeSet::from([b.vip]));
    // Not a VIP any more: connections to it are not balanced (nothing there answers).
    let v = json(&rig.client(&["tcp", &a.vip.to_string(), "80", "1"]));
    assert!(names(&v).is_empty(), "{v}");

    let r = lb
        .apply(&[Change::RemoveNetwork(rig.net.id.clone())])
        .expect("remove the network");
    assert_eq!(r.writes, 5, "{r:?}");
    assert!(rig.lb_addrs().is_empty());
    assert_eq!(lb.sync(&ipvs::Desired::default()).expect("sync").writes, 0);
    lb.remove_all().expect("remove_all");
}

#[test]
fn programs_pinned_without_this_counters_map_are_replaced() {
    let rig = Rig::new();
    let vip = Rig::vip(50);
    let d = rig.desired([Rig::service("web", vip, rig.backend_addrs())]);
    {
        let mut lb = EbpfLb::open(&rig.config()).expect("open");
        lb.sync(&d).expect("sync");
    }
    // What an older layout leaves: attached programs and pinned maps, but no pin of this
    // layout's counters map (the programs hold a map this agent cannot find).
    let pin = rig.config().pin_dir.join(ebpf_common::CNT_MAP);
    std::fs::remove_file(&pin).expect("remove the counters pin");
    let mut lb = EbpfLb::open(&rig.config()).expect("reopen");
    assert!(pin.exists(), "a new counters map is pinned");
    // The service map was adopted: nothing to write.
    assert_eq!(lb.sync(&d).expect("sync").writes, 0);
    let v = json(&rig.client(&["tcp", &vip.to_string(), "80", "20"]));
    assert!(v["errors"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(names(&v).len(), 3, "{v}");
    // Counted by the new programs: the old ones are detached (had they still run first, they
    // would have translated the VIP and the new ones would have seen a backend, not counting).
    assert_eq!(lb.counters().expect("counters").balanced, 20);
    lb.remove_all().expect("remove_all");
}
