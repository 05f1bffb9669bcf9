//! The demo (`cargo xtask demo` runs this test with its narration shown): a 3-node swarm in
//! network namespaces, an overlay network, a web service of 3 replicas published on port 8080,
//! a page fetched from each task across the overlay, the service's name resolved and its VIP
//! balanced, the published port answering on every node and through `ingress recreate
//! --subnet`, a drained node, a killed leader.
//! Every step is also an assertion.

mod common;

use std::time::Duration;

use common::tasks::TaskNs;
use common::{Swarm, skip};

fn say(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

/// Runs netctl on a node, shows the command and what it printed.
fn show(s: &Swarm, i: usize, args: &[&str]) -> String {
    println!("\x1b[36mnode{i}$ netctl {}\x1b[0m", args.join(" "));
    let out = s.ctl(i, args);
    print!("{out}");
    out
}

const WEB: &str = "mkdir -p www && echo \"hello from $NETAGENT_TASK_NAME\" > www/index.html && exec busybox httpd -f -p 80 -h www";

#[test]
fn demo() {
    if skip() {
        return;
    }
    say(
        "Three nodes, each a network namespace on a shared underlay (198.18.0.0/15), each running netagent",
    );
    let s = Swarm::agents(3);
    for n in s.lab.nodes() {
        println!("{}: {}", n.name(), n.addr());
    }

    say(
        "node1 creates the swarm; node2 and node3 join as managers (Raft needs 3 to survive a loss)",
    );
    let node1 = s.lab.node(1).addr().to_string();
    show(&s, 1, &["swarm", "init", "--advertise-addr", &node1]);
    let token = show(&s, 1, &["swarm", "join-token", "-q", "manager"])
        .trim()
        .to_string();
    for i in 2..=3 {
        let out = show(
            &s,
            i,
            &["swarm", "join", "--token", &token, &format!("{node1}:2377")],
        );
        assert!(out.contains("joined a swarm as a manager"), "{out}");
        // A manager that has just joined is reachable at once, as in docker (not "Unavailable"
        // until the next ping round).
        let nodes = s.nodes(1).expect("node ls on node1");
        let joined = nodes
            .iter()
            .find(|n| common::hostname_of(n) == format!("node{i}"))
            .expect("the new node is listed");
        assert_eq!(common::reachability(joined), "reachable", "{joined}");
        // And Ready: `swarm join` answers once the node's session is up, as docker's does.
        assert_eq!(common::state(joined), "ready", "{joined}");
    }
    let ls = show(&s, 1, &["node", "ls"]);
    assert_eq!(ls.lines().filter(|l| l.contains("Ready")).count(), 3);
    assert!(ls.contains("Leader"));
    assert_eq!(ls.matches("Reachable").count(), 2, "{ls}");

    say(
        "An overlay network (VXLAN, a /24 from the default pool 10.0.0.0/8) and a web service of 3 replicas on it, published on port 8080",
    );
    show(&s, 1, &["network", "create", "--driver", "overlay", "web"]);
    show(
        &s,
        1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "3",
            "--network",
            "web",
            "--publish",
            "8080:80",
            "--",
            "sh",
            "-c",
            WEB,
        ],
    );
    let ps = show(&s, 1, &["service", "ps", "web"]);
    assert_eq!(
        ps.lines().filter(|l| l.contains("Running")).count(),
        3,
        "{ps}"
    );

    say("Each task's page, fetched over the overlay by a task on another node");
    let tasks: Vec<TaskNs> = s.all_task_namespaces();
    assert_eq!(tasks.len(), 3);
    for server in &tasks {
        let ip = s.task_ip(server, "eth0").expect("task address");
        let client = tasks
            .iter()
            .find(|t| t.node != server.node)
            .expect("a task on another node");
        let url = format!("http://{ip}/");
        let mut page = String::new();
        s.wait(&format!("{url} answers"), || {
            let out = s.in_task(client, &["curl", "-s", "-m", "2", &url]);
            page = String::from_utf8_lossy(&out.stdout).trim().to_string();
            out.status.success()
        });
        println!(
            "task on node{} -> {url} (node{}): {page}",
            client.node, server.node
        );
        assert!(page.starts_with("hello from web."), "{page}");
    }

    say("Service discovery: every task resolves `web` at 127.0.0.11 to the service's VIP");
    let vip = s.vip("web");
    let client = &tasks[0];
    let mut answer = String::new();
    s.wait("web resolves to its VIP", || {
        let out = s.in_task(client, &["dig", "+short", "+time=2", "@127.0.0.11", "web"]);
        answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        answer == vip
    });
    println!("task on node{}: dig web -> {answer}", client.node);

    say("Load balancing: 30 requests to the VIP from one task reach all 3 tasks (eBPF socket LB)");
    let loop30 = format!("for i in $(seq 30); do curl -s -m 2 http://{vip}/; done");
    let mut pages = std::collections::BTreeMap::<String, usize>::new();
    s.wait("the VIP spreads over the 3 tasks", || {
        let out = s.in_task(client, &["sh", "-c", &loop30]);
        pages.clear();
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            *pages.entry(l.to_string()).or_default() += 1;
        }
        pages.len() == 3 && pages.values().sum::<usize>() == 30
    });
    for (page, n) in &pages {
        println!("{n:>3} x {page}");
    }

    say(
        "The routing mesh: port 8080 answers on every node's own address, from outside the swarm's tasks",
    );
    for i in 1..=3 {
        let url = format!("http://{}:8080/", s.lab.node(i).addr());
        let mut page = String::new();
        s.wait(&format!("{url} answers"), || {
            let out = s.lab.node(3).run(&["curl", "-s", "-m", "2", &url]);
            page = out
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            page.starts_with("hello from web.")
        });
        println!("node3$ curl {url} -> {page}");
    }

    say(
        "ingress recreate --subnet: the routing mesh moves to a new network, its tasks one at a time, while node3 keeps asking node1",
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    let url = format!("http://{}:8080/", s.lab.node(1).addr());
    let (failed, total) = std::thread::scope(|sc| {
        let looper = sc.spawn(|| {
            let (mut failed, mut total) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                total += 1;
                let ok = s
                    .lab
                    .node(3)
                    .run(&["curl", "-s", "-m", "5", &url])
                    .is_ok_and(|o| {
                        String::from_utf8_lossy(&o.stdout).starts_with("hello from web.")
                    });
                if !ok {
                    failed += 1;
                }
            }
            (failed, total)
        });
        show(&s, 1, &["ingress", "recreate", "--subnet", "10.99.0.0/24"]);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        looper.join().unwrap()
    });
    println!("node3$ curl {url} during the change: {total} requests, {failed} failed");
    let ing: serde_json::Value =
        serde_json::from_str(&s.ctl(1, &["network", "inspect", "ingress"])).unwrap();
    let subnet = ing[0]["IPAM"]["Config"][0]["Subnet"].clone();
    println!("node1$ netctl network inspect ingress -> subnet {subnet}");
    assert_eq!(subnet, "10.99.0.0/24", "{ing}");

    say("Drain node3: its task is shut down and started elsewhere");
    show(
        &s,
        1,
        &["node", "update", "--availability", "drain", "node3"],
    );
    s.wait("no web task on node3", || {
        s.task_namespaces(3).is_empty() && s.all_task_namespaces().len() == 3
    });
    let ps = show(&s, 1, &["service", "ps", "web"]);
    assert!(
        ps.lines()
            .any(|l| l.contains("node3") && l.contains("Shutdown")),
        "{ps}"
    );
    assert_eq!(
        ps.lines()
            .filter(|l| l.contains("Running") && !l.contains("node3"))
            .count(),
        3,
        "{ps}"
    );

    say("Kill the leader (node1's agent, SIGKILL): the other managers elect a new one");
    s.kill(1);
    let mut new_leader = None;
    s.wait("a new leader", || {
        new_leader = s.leader(&[2, 3]).filter(|l| *l != 1);
        new_leader.is_some()
    });
    let ls = show(&s, new_leader.unwrap(), &["node", "ls"]);
    let node1_line = ls.lines().find(|l| l.contains("node1")).unwrap_or_default();
    assert!(
        ["Unreachable", "Unavailable", "Down"]
            .iter()
            .any(|w| node1_line.contains(w)),
        "node1 shows as lost: {ls}"
    );
    let leader = new_leader.unwrap();

    say(
        "node1 stopped heartbeating: it goes Down and its tasks are placed on the nodes left (node3 is drained)",
    );
    s.wait("every running web task on node2", || {
        let running = s.running(leader, "web");
        running.len() == 3 && running.values().all(|n| n == "node2")
    });
    show(&s, leader, &["service", "ps", "web"]);

    say("Done: the lab (namespaces, tasks, agents) is removed");
    std::thread::sleep(Duration::from_millis(10));
}
