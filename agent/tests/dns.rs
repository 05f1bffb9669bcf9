//! Service discovery end to end (issue 10): every task has the node's resolver at 127.0.0.11:53
//! in its namespace, answering the names of its networks — checked with `dig` from inside task
//! namespaces on every node of a 3-node swarm.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::tasks::TaskNs;
use common::{Swarm, skip};

/// `dig` at the task's resolver, waiting as a libc resolver does (5 s, 2 attempts).
fn dig(s: &Swarm, t: &TaskNs, args: &[&str]) -> String {
    let mut argv = vec!["dig", "@127.0.0.11", "+time=5", "+tries=2"];
    argv.extend_from_slice(args);
    let out = s.in_task(t, &argv);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn short(s: &Swarm, t: &TaskNs, name: &str) -> BTreeSet<String> {
    answers(&dig(s, t, &["+short", name]))
}

/// The lines of a `dig +short` output.
fn answers(out: &str) -> BTreeSet<String> {
    out.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn names_vips_tasks_aliases_ptr_and_scope() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 2);
    s.ctl(1, &["network", "create", "--driver", "overlay", "red"]);
    s.ctl(1, &["network", "create", "--driver", "overlay", "blue"]);
    s.create_service(&[
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "name=red,alias=www",
        "--",
        "sleep",
        "3600",
    ]);
    s.create_service(&[
        "--name",
        "db",
        "--replicas",
        "3",
        "--endpoint-mode",
        "dnsrr",
        "--network",
        "red",
        "--",
        "sleep",
        "3600",
    ]);
    s.create_service(&[
        "--name",
        "other",
        "--network",
        "blue",
        "--",
        "sleep",
        "3600",
    ]);
    let web = s.task_nss("web", 3);
    let db = s.task_nss("db", 3);
    s.task_nss("other", 1);
    let web_vip = s.vip("web");
    let web_ips = s.task_ips(&web, "eth0");
    let db_ips = s.task_ips(&db, "eth0");
    let nodes: BTreeSet<usize> = web.iter().map(|t| t.node).collect();
    assert_eq!(nodes.len(), 3, "a web task on every node: {web:?}");

    for t in &web {
        // SERVICE -> its VIP; tasks.SERVICE -> exactly the running tasks; the alias the same.
        s.wait(
            &format!("node{} resolves web and tasks.web", t.node),
            || {
                short(&s, t, "web") == BTreeSet::from([web_vip.clone()])
                    && short(&s, t, "tasks.web") == web_ips
            },
        );
        assert_eq!(short(&s, t, "www"), BTreeSet::from([web_vip.clone()]));
        assert_eq!(short(&s, t, "tasks.www"), web_ips);
        assert_eq!(short(&s, t, "WEB."), BTreeSet::from([web_vip.clone()]));
        assert_eq!(short(&s, t, "web.red"), BTreeSet::from([web_vip.clone()]));
        // dnsrr: the task addresses, in an order that varies.
        s.wait(&format!("node{} resolves db", t.node), || {
            short(&s, t, "db") == db_ips
        });
        let mut orders = BTreeSet::new();
        for _ in 0..20 {
            orders.insert(dig(&s, t, &["+short", "db"]));
        }
        assert!(orders.len() > 1, "dnsrr answers are shuffled: {orders:?}");
        // A name of a network the task is not on is not answered locally (forwarded, and the
        // lab's nodes have no upstream).
        assert!(short(&s, t, "other").is_empty(), "blue's service from red");
        // NODATA: a known name asked for a type it has no record of.
        let aaaa = dig(&s, t, &["AAAA", "web"]);
        assert!(
            aaaa.contains("status: NOERROR") && aaaa.contains("ANSWER: 0"),
            "{aaaa}"
        );
        let mx = dig(&s, t, &["MX", "tasks.web"]);
        assert!(
            mx.contains("status: NOERROR") && mx.contains("ANSWER: 0"),
            "{mx}"
        );
    }
    // Task names (SERVICE.SLOT.ID and SERVICE.SLOT) and PTR of task addresses and the VIP.
    let running = s.running(1, "web");
    let t = &web[0];
    for other in &web {
        let ip = s.task_ip(other, "eth0").unwrap().to_string();
        let ps = s.service_ps(1, "web");
        let row = ps
            .iter()
            .find(|r| r["ID"].as_str() == Some(other.id.as_str()))
            .expect("the task in service ps");
        let name = row["Name"].as_str().unwrap().to_string(); // web.SLOT
        assert!(running.contains_key(&other.id));
        assert_eq!(short(&s, t, &name), BTreeSet::from([ip.clone()]), "{name}");
        assert_eq!(
            short(&s, t, &format!("{name}.{}", other.id)),
            BTreeSet::from([ip.clone()])
        );
        let ptr = dig(&s, t, &["+short", "-x", &ip]);
        assert!(
            ptr.starts_with(&format!("{name}.{}", other.id)),
            "PTR of {ip}: {ptr}"
        );
    }
    let ptr = dig(&s, t, &["+short", "-x", &web_vip]);
    assert!(ptr.starts_with("web."), "PTR of the VIP: {ptr}");
    // What a node serves, for whoever debugs it: docker's verbose inspect and the records.
    let v: serde_json::Value =
        serde_json::from_str(&s.ctl(2, &["network", "inspect", "--verbose", "red"])).unwrap();
    let svc = &v[0]["Services"]["web"];
    assert_eq!(svc["VIP"], web_vip.as_str(), "{v}");
    assert_eq!(svc["Tasks"].as_array().map(Vec::len), Some(3), "{v}");
    let records: Vec<String> = v[0]["DNSRecords"]
        .as_array()
        .expect("DNSRecords")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    assert!(
        records.contains(&format!("web 600 A {web_vip}")),
        "{records:?}"
    );
    assert!(
        !records.iter().any(|r| r.starts_with("other ")),
        "blue's names are not red's: {records:?}"
    );
}

#[test]
fn scaling_reaches_every_nodes_answers_at_once() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 2);
    s.ctl(1, &["network", "create", "--driver", "overlay", "red"]);
    // A global client on every node, and the service that scales.
    s.create_service(&[
        "--name",
        "c",
        "--mode",
        "global",
        "--network",
        "red",
        "--",
        "sleep",
        "3600",
    ]);
    s.create_service(&[
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "red",
        "--",
        "sleep",
        "3600",
    ]);
    let clients = s.task_nss("c", 3);
    s.task_nss("web", 3);
    for want in [5usize, 1] {
        s.ctl(1, &["service", "scale", "--detach", &format!("web={want}")]);
        // From the moment the store has the new set running until every node answers it.
        let mut running: BTreeMap<String, String> = BTreeMap::new();
        s.wait(&format!("web has {want} running tasks"), || {
            running = s.running(1, "web");
            running.len() == want && s.task_nss("web", want).len() == want
        });
        let tasks = s.task_nss("web", want);
        let expected = s.task_ips(&tasks, "eth0");
        let start = Instant::now();
        let mut per_node = BTreeMap::new();
        s.wait(&format!("every node answers tasks.web with {want}"), || {
            for c in &clients {
                if !per_node.contains_key(&c.node) && short(&s, c, "tasks.web") == expected {
                    per_node.insert(c.node, start.elapsed());
                }
            }
            per_node.len() == clients.len()
        });
        let slowest = per_node.values().max().copied().unwrap_or_default();
        println!(
            "scale to {want}: every node's answers matched {slowest:?} after the store showed the tasks running ({per_node:?})"
        );
        assert!(
            slowest < Duration::from_secs(30),
            "answers converge (measured above)"
        );
    }
}

/// A resolver on node3's namespace answering `lab.test`, at `addr` (an address node3 holds).
fn upstream(s: &Swarm, addr: &str) -> lab::Proc {
    let n3 = s.lab.node(3);
    n3.spawn(lab::ProcSpec::new("dnsmasq", "dnsmasq").args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--port=53",
        &format!("--listen-address={addr}"),
        "--address=/ext.lab.test/192.0.2.7",
        "--log-facility=-",
        "--pid-file=",
    ]))
    .expect("start dnsmasq in node3")
}

#[test]
fn forwarding_failover_servfail_and_an_upstream_inside_an_overlay_subnet() {
    if skip() {
        return;
    }
    let s = Swarm::agents(3);
    // node1's resolvers: a dead one first, then node3's dnsmasq; node2 has only a dead one.
    std::fs::write(
        s.lab.node(1).dir().join("resolv.conf"),
        "nameserver 198.18.0.250\nnameserver 198.18.0.3\nsearch lab.test\n",
    )
    .unwrap();
    std::fs::write(
        s.lab.node(2).dir().join("resolv.conf"),
        "nameserver 198.18.0.250\n",
    )
    .unwrap();
    let _dnsmasq = upstream(&s, &s.lab.node(3).addr().to_string());
    s.form(1, 2);
    s.ctl(
        1,
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--subnet",
            "10.9.0.0/24",
            "red",
        ],
    );
    s.create_service(&[
        "--name",
        "c",
        "--mode",
        "global",
        "--constraint",
        "node.hostname!=node3",
        "--network",
        "red",
        "--",
        "sleep",
        "3600",
    ]);
    let clients = s.task_nss("c", 2);
    let on = |i: usize| clients.iter().find(|t| t.node == i).unwrap();
    // Forwarded from node1 (the first upstream dead, the second answers).
    let a = short(&s, on(1), "ext.lab.test");
    assert_eq!(a, BTreeSet::from(["192.0.2.7".to_string()]));
    // The task's resolv.conf keeps the node's search line, with ndots:0.
    let rc = std::fs::read_to_string(
        s.lab
            .node(1)
            .dir()
            .join("state/executor/tasks")
            .join(&on(1).id)
            .join("resolv.conf"),
    )
    .unwrap();
    assert!(
        rc.contains("nameserver 127.0.0.11")
            && rc.contains("search lab.test")
            && rc.contains("ndots:0"),
        "{rc}"
    );
    // The task's mount namespace (its own resolv.conf) keeps no copy of the node's named
    // network namespaces: a copy would keep a removed task's namespace alive.
    for t in &clients {
        let pid = s.task_command_pid(t).expect("the task's pid");
        let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let held: Vec<&str> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with("/run/netns/"))
            .collect();
        assert!(held.is_empty(), "task on node{} holds {held:?}", t.node);
        assert!(
            info.lines()
                .any(|l| l.split(' ').nth(4) == Some("/etc/resolv.conf")),
            "the task's resolv.conf is not its own: {info}"
        );
    }
    // node2: no upstream answers -> SERVFAIL.
    let out = dig(&s, on(2), &["ext.lab.test"]);
    assert!(out.contains("status: SERVFAIL"), "{out}");
    // Names of the swarm still answer there.
    assert_eq!(short(&s, on(2), "tasks.c").len(), 2);
}

#[test]
fn an_upstream_inside_an_overlay_subnet_is_reached_from_the_node() {
    if skip() {
        return;
    }
    let s = Swarm::agents(3);
    // node3 holds 10.9.0.53 (inside red's subnet, which tasks on node1 are attached to) on its
    // underlay interface; node1 routes to it via node3. From a task on node1 that address is on
    // its overlay (nobody answers there): only a forward from the node's namespace reaches it.
    let n3 = s.lab.node(3);
    n3.run_ok(&["sh", "-c", "ip addr add 10.9.0.53/32 dev $(ip -o -4 addr show | awk '$4 ~ /^198.18/ {print $2; exit}')"])
        .unwrap();
    s.lab
        .node(1)
        .run_ok(&[
            "ip",
            "route",
            "add",
            "10.9.0.53/32",
            "via",
            &n3.addr().to_string(),
        ])
        .unwrap();
    std::fs::write(
        s.lab.node(1).dir().join("resolv.conf"),
        "nameserver 10.9.0.53\n",
    )
    .unwrap();
    let _dnsmasq = upstream(&s, "10.9.0.53");
    s.form(1, 2);
    s.ctl(
        1,
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--subnet",
            "10.9.0.0/24",
            "red",
        ],
    );
    s.create_service(&[
        "--name",
        "c",
        "--constraint",
        "node.hostname==node1",
        "--network",
        "red",
        "--",
        "sleep",
        "3600",
    ]);
    let c = s.task_nss("c", 1);
    assert_eq!(c[0].node, 1);
    assert_eq!(
        short(&s, &c[0], "ext.lab.test"),
        BTreeSet::from(["192.0.2.7".to_string()])
    );
}

#[test]
fn answers_continue_through_an_agent_restart_and_junk() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 1);
    s.ctl(1, &["network", "create", "--driver", "overlay", "red"]);
    s.create_service(&[
        "--name",
        "web",
        "--replicas",
        "2",
        "--network",
        "red",
        "--",
        "sleep",
        "3600",
    ]);
    let tasks = s.task_nss("web", 2);
    let expected = s.task_ips(&tasks, "eth0");
    let on2 = tasks.iter().find(|t| t.node == 2).expect("a task on node2");
    s.wait("node2 answers", || short(&s, on2, "tasks.web") == expected);
    // Junk first: UDP garbage and TCP junk, then a good query still answers.
    for junk in [
        "printf 'garbage' > /dev/udp/127.0.0.11/53",
        "printf '\\000\\003abc' > /dev/tcp/127.0.0.11/53",
        "head -c 3000 /dev/urandom > /dev/udp/127.0.0.11/53",
    ] {
        s.in_task(on2, &["bash", "-c", junk]);
    }
    assert_eq!(short(&s, on2, "tasks.web"), expected);
    // A query loop while node2's agent is killed and restarted: none fails. The restart fits in
    // the dispatcher's grace (3 heartbeats), as in production (5 s heartbeats); the lab's 200 ms
    // would have the leader reschedule node2's task while the agent is still starting (2 s: a
    // loaded CI machine has taken over 3 s to bring an agent back).
    s.ctl(1, &["swarm", "update", "--dispatcher-heartbeat", "2s"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t0 = Instant::now();
    let (failures, total) = std::thread::scope(|sc| {
        let looped = sc.spawn(|| {
            let (mut bad, mut n, mut slowest) = (Vec::new(), 0, Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let sent = t0.elapsed();
                let out = dig(&s, on2, &["+short", "tasks.web"]);
                if answers(&out) != expected {
                    bad.push(format!("sent at {sent:?}: {out:?}"));
                }
                slowest = slowest.max(t0.elapsed() - sent);
            }
            println!("slowest answer during the restart: {slowest:?}");
            (bad, n)
        });
        std::thread::sleep(Duration::from_millis(500));
        println!("kill at {:?}", t0.elapsed());
        s.kill(2);
        std::thread::sleep(Duration::from_millis(300));
        s.restart(2);
        println!("agent 2 answers its API at {:?}", t0.elapsed());
        std::thread::sleep(Duration::from_secs(4));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        looped.join().unwrap()
    });
    println!(
        "{total} queries through the restart, {} failed: {failures:#?}",
        failures.len()
    );
    assert!(total > 5, "the loop ran");
    // The same tasks still run (none was rescheduled while node2's agent was away).
    assert_eq!(
        s.task_ips(&s.task_nss("web", 2), "eth0"),
        expected,
        "web's tasks were not replaced"
    );
    assert!(
        failures.is_empty(),
        "no query failed during the agent restart"
    );
    // Every task still has its listener (the one on node1 too).
    for t in &tasks {
        assert_eq!(short(&s, t, "tasks.web"), expected);
    }
}
