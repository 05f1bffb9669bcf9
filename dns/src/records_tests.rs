//! Unit tests of the records and their lookups (lookup.rs): every name kind, scope isolation,
//! NODATA, PTR, dnsrr shuffling, and deltas checked against a rebuild from scratch.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::*;
use crate::lookup::{Pointer, RecordKind, Resolved};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(id: &str, name: &str) -> Change {
    Change::PutNetwork {
        id: id.into(),
        name: name.into(),
    }
}

fn svc(network: &str, id: &str, name: &str, vip: Option<&str>, aliases: &[&str]) -> Change {
    Change::PutService {
        network: network.into(),
        id: id.into(),
        name: name.into(),
        vip: vip.map(ip),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
    }
}

fn task(
    network: &str,
    id: &str,
    service: &str,
    addr: &str,
    name: &str,
    aliases: &[&str],
) -> Change {
    Change::PutTask {
        network: network.into(),
        id: id.into(),
        service: service.into(),
        addr: ip(addr),
        name: name.into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
    }
}

fn rm_task(network: &str, id: &str) -> Change {
    Change::RemoveTask {
        network: network.into(),
        id: id.into(),
    }
}

/// Addresses a name resolves to, sorted (None when unknown).
fn addrs(r: &Records, scope: &[&str], name: &str) -> Option<Vec<String>> {
    r.resolve(scope, &normalize(name)).map(|res| {
        let mut v: Vec<String> = res.addrs.iter().map(|a| a.to_string()).collect();
        v.sort();
        v
    })
}

fn ttl(r: &Records, scope: &[&str], name: &str) -> u32 {
    r.resolve(scope, &normalize(name)).expect(name).ttl
}

fn strs(v: &[&str]) -> Option<Vec<String>> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    Some(v)
}

/// Network n1 "front": web (VIP 10.0.1.2, alias "www") with tasks t1, t2; db (dnsrr) with d1, d2.
fn sample() -> Records {
    let mut r = Records::new();
    r.apply([
        net("n1", "Front"),
        svc("n1", "s-web", "web", Some("10.0.1.2"), &["www"]),
        task("n1", "t1", "s-web", "10.0.1.10", "web.1.t1", &["web-a"]),
        task("n1", "t2", "s-web", "10.0.1.11", "web.2.t2", &[]),
        svc("n1", "s-db", "db", None, &["database"]),
        task("n1", "d1", "s-db", "10.0.1.20", "db.1.d1", &[]),
        task("n1", "d2", "s-db", "10.0.1.21", "db.2.d2", &[]),
    ]);
    r.check_invariants();
    r
}

#[test]
fn every_name_kind() {
    let r = sample();
    let s = &["n1"];
    // Service name -> VIP, TTL 600; its alias too.
    assert_eq!(addrs(&r, s, "web"), strs(&["10.0.1.2"]));
    assert_eq!(ttl(&r, s, "web"), VIP_TTL);
    assert_eq!(addrs(&r, s, "www"), strs(&["10.0.1.2"]));
    // tasks.SERVICE and tasks.ALIAS -> running task addresses, TTL 0.
    assert_eq!(addrs(&r, s, "tasks.web"), strs(&["10.0.1.10", "10.0.1.11"]));
    assert_eq!(ttl(&r, s, "tasks.web"), TASK_TTL);
    assert_eq!(addrs(&r, s, "tasks.www"), strs(&["10.0.1.10", "10.0.1.11"]));
    // dnsrr: the name and its alias give the task addresses, TTL 0.
    assert_eq!(addrs(&r, s, "db"), strs(&["10.0.1.20", "10.0.1.21"]));
    assert_eq!(ttl(&r, s, "db"), TASK_TTL);
    assert_eq!(addrs(&r, s, "database"), strs(&["10.0.1.20", "10.0.1.21"]));
    assert_eq!(addrs(&r, s, "tasks.db"), strs(&["10.0.1.20", "10.0.1.21"]));
    // Task names: SERVICE.SLOT.TASKID, SERVICE.SLOT, and task aliases; TTL 0.
    assert_eq!(addrs(&r, s, "web.1.t1"), strs(&["10.0.1.10"]));
    assert_eq!(addrs(&r, s, "web.1"), strs(&["10.0.1.10"]));
    assert_eq!(addrs(&r, s, "web.2"), strs(&["10.0.1.11"]));
    assert_eq!(addrs(&r, s, "web-a"), strs(&["10.0.1.10"]));
    assert_eq!(ttl(&r, s, "web.1.t1"), TASK_TTL);
    // NAME.NETWORK qualified names, network name case-insensitive.
    assert_eq!(addrs(&r, s, "web.front"), strs(&["10.0.1.2"]));
    assert_eq!(
        addrs(&r, s, "tasks.web.front"),
        strs(&["10.0.1.10", "10.0.1.11"])
    );
    assert_eq!(addrs(&r, s, "web.1.t1.front"), strs(&["10.0.1.10"]));
    assert_eq!(addrs(&r, s, "web.1.front"), strs(&["10.0.1.10"]));
    assert_eq!(addrs(&r, s, "web.other"), None);
    // Case and trailing dot do not matter.
    assert_eq!(addrs(&r, s, "WEB."), strs(&["10.0.1.2"]));
    assert_eq!(
        addrs(&r, s, "Tasks.Web.FRONT."),
        strs(&["10.0.1.10", "10.0.1.11"])
    );
    // Unknown names are not ours.
    for name in [
        "",
        "tasks.",
        "tasks",
        "nothing",
        "web.3",
        "tasks.web-a",
        "front",
        "example.com",
    ] {
        assert_eq!(addrs(&r, s, name), None, "{name}");
    }
}

#[test]
fn scope_isolation_and_order() {
    let mut r = sample();
    r.apply([
        net("n2", "back"),
        svc("n2", "s-api", "api", Some("10.0.2.2"), &[]),
        task("n2", "a1", "s-api", "10.0.2.10", "api.1.a1", &[]),
        // The same service attached to both networks has a VIP on each.
        svc("n2", "s-web", "web", Some("10.0.2.3"), &[]),
    ]);
    r.check_invariants();
    // A task only on n1 does not see n2's names, qualified or not.
    assert_eq!(addrs(&r, &["n1"], "api"), None);
    assert_eq!(addrs(&r, &["n1"], "api.back"), None);
    assert_eq!(addrs(&r, &["n1"], "tasks.api"), None);
    assert_eq!(r.pointer(&["n1"], ip("10.0.2.10")), None);
    // And vice versa.
    assert_eq!(addrs(&r, &["n2"], "db"), None);
    assert_eq!(addrs(&r, &["n2"], "api"), strs(&["10.0.2.2"]));
    // A name in several networks: the first network of the scope answers.
    assert_eq!(addrs(&r, &["n1", "n2"], "web"), strs(&["10.0.1.2"]));
    assert_eq!(addrs(&r, &["n2", "n1"], "web"), strs(&["10.0.2.3"]));
    // Qualified names pick the network.
    assert_eq!(addrs(&r, &["n1", "n2"], "web.back"), strs(&["10.0.2.3"]));
    assert_eq!(addrs(&r, &["n2", "n1"], "web.front"), strs(&["10.0.1.2"]));
    // Unknown networks in a scope are skipped; an empty scope sees nothing.
    assert_eq!(addrs(&r, &["gone", "n2"], "api"), strs(&["10.0.2.2"]));
    assert_eq!(addrs(&r, &[], "web"), None);
}

#[test]
fn known_name_without_addresses_is_nodata_not_unknown() {
    let mut r = sample();
    r.apply([svc("n1", "s-empty", "empty", None, &[])]);
    assert_eq!(
        r.resolve(&["n1"], "empty"),
        Some(Resolved {
            addrs: vec![],
            ttl: TASK_TTL
        })
    );
    assert_eq!(addrs(&r, &["n1"], "tasks.empty"), Some(vec![]));
    // A vip service with no running task still answers its VIP; tasks.NAME is known but empty.
    r.apply([rm_task("n1", "t1"), rm_task("n1", "t2")]);
    assert_eq!(addrs(&r, &["n1"], "web"), strs(&["10.0.1.2"]));
    assert_eq!(addrs(&r, &["n1"], "tasks.web"), Some(vec![]));
    r.check_invariants();
}

#[test]
fn pointers_for_tasks_and_vips() {
    let r = sample();
    let p = |a: &str| r.pointer(&["n1"], ip(a));
    assert_eq!(
        p("10.0.1.10"),
        Some(Pointer {
            name: "web.1.t1.Front.".into(),
            ttl: TASK_TTL
        })
    );
    assert_eq!(
        p("10.0.1.2"),
        Some(Pointer {
            name: "web.Front.".into(),
            ttl: VIP_TTL
        })
    );
    assert_eq!(
        p("10.0.1.21").map(|p| p.name),
        Some("db.2.d2.Front.".into())
    );
    assert_eq!(p("10.0.1.99"), None);
}

#[test]
fn dnsrr_order_varies() {
    let mut r = Records::new();
    r.apply([net("n1", "n")]);
    r.apply([svc("n1", "s", "rr", None, &[])]);
    for i in 0..6 {
        r.apply([task(
            "n1",
            &format!("t{i}"),
            "s",
            &format!("10.9.0.{i}"),
            &format!("rr.{i}.t{i}"),
            &[],
        )]);
    }
    let mut orders = BTreeSet::new();
    for _ in 0..50 {
        let res = r.resolve(&["n1"], "rr").unwrap();
        assert_eq!(res.addrs.len(), 6);
        orders.insert(res.addrs.clone());
    }
    assert!(
        orders.len() > 10,
        "only {} distinct orders in 50 answers",
        orders.len()
    );
    let mut tasks_orders = BTreeSet::new();
    for _ in 0..50 {
        tasks_orders.insert(r.resolve(&["n1"], "tasks.rr").unwrap().addrs);
    }
    assert!(tasks_orders.len() > 10);
}

#[test]
fn deltas_leave_exactly_the_right_answers() {
    let mut r = sample();
    let s = &["n1"];
    // Scale web 2 -> 5 -> 1.
    for i in 3..=5 {
        r.apply([task(
            "n1",
            &format!("t{i}"),
            "s-web",
            &format!("10.0.1.1{i}"),
            &format!("web.{i}.t{i}"),
            &[],
        )]);
    }
    r.check_invariants();
    assert_eq!(
        addrs(&r, s, "tasks.web"),
        strs(&[
            "10.0.1.10",
            "10.0.1.11",
            "10.0.1.13",
            "10.0.1.14",
            "10.0.1.15"
        ])
    );
    r.apply((2..=5).map(|i| rm_task("n1", &format!("t{i}"))));
    r.check_invariants();
    assert_eq!(addrs(&r, s, "tasks.web"), strs(&["10.0.1.10"]));
    assert_eq!(addrs(&r, s, "web.2.t2"), None);
    assert_eq!(addrs(&r, s, "web.2"), None);
    assert_eq!(r.pointer(s, ip("10.0.1.11")), None);

    // A task changes address: the old PTR goes, the name follows.
    r.apply([task("n1", "t1", "s-web", "10.0.1.50", "web.1.t1", &[])]);
    r.check_invariants();
    assert_eq!(addrs(&r, s, "web.1.t1"), strs(&["10.0.1.50"]));
    assert_eq!(
        addrs(&r, s, "web-a"),
        None,
        "the alias was dropped by the update"
    );
    assert_eq!(r.pointer(s, ip("10.0.1.10")), None);
    assert!(r.pointer(s, ip("10.0.1.50")).is_some());

    // The service changes VIP and aliases.
    r.apply([svc("n1", "s-web", "web", Some("10.0.1.3"), &["site"])]);
    r.check_invariants();
    assert_eq!(addrs(&r, s, "web"), strs(&["10.0.1.3"]));
    assert_eq!(addrs(&r, s, "site"), strs(&["10.0.1.3"]));
    assert_eq!(addrs(&r, s, "www"), None);
    assert_eq!(addrs(&r, s, "tasks.www"), None);
    assert_eq!(addrs(&r, s, "tasks.site"), strs(&["10.0.1.50"]));
    assert_eq!(r.pointer(s, ip("10.0.1.2")), None);
    assert_eq!(
        r.pointer(s, ip("10.0.1.3")).map(|p| p.name),
        Some("web.Front.".into())
    );

    // vip -> dnsrr.
    r.apply([svc("n1", "s-web", "web", None, &[])]);
    assert_eq!(addrs(&r, s, "web"), strs(&["10.0.1.50"]));
    assert_eq!(ttl(&r, s, "web"), TASK_TTL);
    assert_eq!(r.pointer(s, ip("10.0.1.3")), None);

    // Removing the service: its names go; its tasks' own names stay until they are removed.
    r.apply([Change::RemoveService {
        network: "n1".into(),
        id: "s-web".into(),
    }]);
    r.check_invariants();
    assert_eq!(addrs(&r, s, "web"), None);
    assert_eq!(addrs(&r, s, "tasks.web"), None);
    assert_eq!(addrs(&r, s, "web.1.t1"), strs(&["10.0.1.50"]));
    r.apply([rm_task("n1", "t1")]);
    r.check_invariants();
    assert_eq!(addrs(&r, s, "web.1.t1"), None);

    // Removing unknown things is harmless.
    r.apply([
        rm_task("n1", "nope"),
        rm_task("nonet", "t1"),
        Change::RemoveService {
            network: "n1".into(),
            id: "nope".into(),
        },
        Change::RemoveNetwork { id: "nonet".into() },
    ]);
    r.check_invariants();

    // Renaming the network changes qualified names and PTR targets.
    r.apply([net("n1", "edge")]);
    assert_eq!(addrs(&r, s, "db.edge"), strs(&["10.0.1.20", "10.0.1.21"]));
    assert_eq!(addrs(&r, s, "db.front"), None);
    assert_eq!(
        r.pointer(s, ip("10.0.1.20")).map(|p| p.name),
        Some("db.1.d1.edge.".into())
    );

    // Removing the network removes everything in it.
    r.apply([Change::RemoveNetwork { id: "n1".into() }]);
    assert_eq!(addrs(&r, s, "db"), None);
    assert_eq!(r.counts(), (0, 0, 0));
}

#[test]
fn tasks_may_arrive_before_their_service_and_network() {
    let mut r = Records::new();
    r.apply([task("n1", "t1", "s", "10.0.0.5", "api.1.t1", &[])]);
    r.check_invariants();
    assert_eq!(addrs(&r, &["n1"], "api.1"), strs(&["10.0.0.5"]));
    assert_eq!(addrs(&r, &["n1"], "tasks.api"), None);
    r.apply([
        svc("n1", "s", "api", Some("10.0.0.2"), &[]),
        net("n1", "mesh"),
    ]);
    r.check_invariants();
    assert_eq!(addrs(&r, &["n1"], "tasks.api"), strs(&["10.0.0.5"]));
    assert_eq!(addrs(&r, &["n1"], "api.mesh"), strs(&["10.0.0.2"]));
}

#[test]
fn global_service_task_names() {
    let mut r = Records::new();
    let name = task_name("agent", "nodeabc", "tk1");
    assert_eq!(name, "agent.nodeabc.tk1");
    r.apply([
        svc("n1", "s", "agent", None, &[]),
        task("n1", "tk1", "s", "10.0.0.7", &name, &[]),
    ]);
    assert_eq!(addrs(&r, &["n1"], "agent.nodeabc.tk1"), strs(&["10.0.0.7"]));
    assert_eq!(addrs(&r, &["n1"], "agent.nodeabc"), strs(&["10.0.0.7"]));
}

#[test]
fn names_shared_by_many_records() {
    // An alias on every task and two services sharing an alias stay consistent as they go.
    let mut r = Records::new();
    r.apply([svc("n1", "a", "alpha", Some("10.1.0.1"), &["shared"])]);
    r.apply([svc("n1", "b", "beta", Some("10.1.0.2"), &["shared"])]);
    for i in 0..40 {
        r.apply([task(
            "n1",
            &format!("t{i}"),
            "a",
            &format!("10.1.1.{i}"),
            &format!("alpha.{i}.t{i}"),
            &["member"],
        )]);
    }
    r.check_invariants();
    assert_eq!(
        addrs(&r, &["n1"], "shared"),
        strs(&["10.1.0.1", "10.1.0.2"])
    );
    assert_eq!(addrs(&r, &["n1"], "member").unwrap().len(), 40);
    assert_eq!(ttl(&r, &["n1"], "member"), TASK_TTL);
    r.apply((0..39).map(|i| rm_task("n1", &format!("t{i}"))));
    r.check_invariants();
    assert_eq!(addrs(&r, &["n1"], "member"), strs(&["10.1.1.39"]));
    r.apply([Change::RemoveService {
        network: "n1".into(),
        id: "b".into(),
    }]);
    assert_eq!(addrs(&r, &["n1"], "shared"), strs(&["10.1.0.1"]));
    r.check_invariants();
}

#[test]
fn listing_for_netctl() {
    let r = sample();
    let list = r.list("n1");
    assert_eq!(list, r.list("front"), "by id or by name");
    let lines: Vec<String> = list.iter().map(|e| e.to_string()).collect();
    for want in [
        "web 600 A 10.0.1.2",
        "www 600 A 10.0.1.2",
        "tasks.web 0 A 10.0.1.10",
        "tasks.www 0 A 10.0.1.11",
        "db 0 A 10.0.1.21",
        "web.1.t1 0 A 10.0.1.10",
        "web.1 0 A 10.0.1.10",
        "web-a 0 A 10.0.1.10",
        "10.0.1.2 600 PTR web.Front.",
        "10.0.1.11 0 PTR web.2.t2.Front.",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "{want} missing from {lines:#?}"
        );
    }
    assert_eq!(list.iter().filter(|e| e.kind == RecordKind::Ptr).count(), 5);
    assert!(r.list("nope").is_empty());
}

/// A tiny deterministic generator for the delta test.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn random_deltas_match_a_rebuild_from_scratch() {
    // The desired state, as the agent would hold it; after every batch the incrementally
    // updated records must list exactly what records built from that state in one go list.
    let mut rng = Lcg(7);
    let mut r = Records::new();
    let mut nets: BTreeMap<String, String> = BTreeMap::new();
    let mut svcs: BTreeMap<(String, String), Change> = BTreeMap::new();
    let mut tasks: BTreeMap<(String, String), Change> = BTreeMap::new();
    let names = ["web", "db", "api", "cache"];
    for round in 0..400 {
        let mut batch = Vec::new();
        for _ in 0..1 + rng.next(4) {
            let n = format!("n{}", rng.next(3));
            match rng.next(10) {
                0 => {
                    let c = net(&n, &format!("net{}", rng.next(4)));
                    nets.insert(n.clone(), String::new());
                    batch.push(c);
                }
                1 if round % 50 == 49 => {
                    nets.remove(&n);
                    svcs.retain(|(net, _), _| *net != n);
                    tasks.retain(|(net, _), _| *net != n);
                    batch.push(Change::RemoveNetwork { id: n });
                }
                2 | 3 => {
                    let s = format!("s{}", rng.next(4));
                    let vip = (rng.next(2) == 0).then(|| format!("10.0.0.{}", rng.next(8)));
                    let aliases: Vec<String> = (0..rng.next(3))
                        .map(|i| format!("al{}", rng.next(5) + i))
                        .collect();
                    let a: Vec<&str> = aliases.iter().map(String::as_str).collect();
                    let c = svc(&n, &s, names[rng.next(4) as usize], vip.as_deref(), &a);
                    nets.entry(n.clone()).or_default();
                    svcs.insert((n, s), c.clone());
                    batch.push(c);
                }
                4 => {
                    let s = format!("s{}", rng.next(4));
                    svcs.remove(&(n.clone(), s.clone()));
                    batch.push(Change::RemoveService { network: n, id: s });
                }
                5..=7 => {
                    let t = format!("t{}", rng.next(12));
                    let s = format!("s{}", rng.next(4));
                    let addr = format!("10.0.1.{}", rng.next(16));
                    let alias = format!("al{}", rng.next(5));
                    let aliases: Vec<&str> = if rng.next(3) == 0 {
                        vec![&alias]
                    } else {
                        vec![]
                    };
                    let name = format!("{}.{}.{t}", names[rng.next(4) as usize], rng.next(3));
                    let c = task(&n, &t, &s, &addr, &name, &aliases);
                    nets.entry(n.clone()).or_default();
                    tasks.insert((n, t), c.clone());
                    batch.push(c);
                }
                _ => {
                    let t = format!("t{}", rng.next(12));
                    tasks.remove(&(n.clone(), t.clone()));
                    batch.push(rm_task(&n, &t));
                }
            }
        }
        // Network names: replay PutNetwork in the model by keeping the latest.
        for c in &batch {
            if let Change::PutNetwork { id, name } = c {
                nets.insert(id.clone(), name.clone());
            }
        }
        r.apply(batch);
        r.check_invariants();
        let mut fresh = Records::new();
        fresh.apply(
            nets.iter()
                .filter(|(_, name)| !name.is_empty())
                .map(|(id, name)| net(id, name)),
        );
        fresh.apply(svcs.values().cloned());
        fresh.apply(tasks.values().cloned());
        for id in nets.keys() {
            assert_eq!(r.list(id), fresh.list(id), "round {round}, network {id}");
        }
        let (n_got, _, t_got) = r.counts();
        let (_, _, t_want) = fresh.counts();
        assert_eq!(t_got, t_want, "round {round}");
        assert!(n_got >= fresh.counts().0);
    }
}
