//! Networks, services and tasks end to end, in the lab: the leader allocates and schedules, each
//! node's executor runs the tasks in namespaces and wires them to the overlays, gossip tells every
//! node where the endpoints are.

mod common;

use std::time::Duration;

use common::tasks::TaskNs;
use common::{Swarm, skip};

#[test]
fn tasks_reach_their_network_across_nodes_and_nothing_else() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 2);
    s.ctl(1, &["network", "create", "--driver", "overlay", "red"]);
    s.ctl(1, &["network", "create", "--driver", "overlay", "blue"]);
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--name",
            "r",
            "--replicas",
            "3",
            "--network",
            "red",
            "--",
            "sleep",
            "3600",
        ],
    );
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--name",
            "b",
            "--replicas",
            "2",
            "--network",
            "blue",
            "--",
            "sleep",
            "3600",
        ],
    );
    let red = s.task_nss("r", 3);
    let blue = s.task_nss("b", 2);
    let mut nodes: Vec<usize> = red.iter().map(|t| t.node).collect();
    nodes.sort();
    assert_eq!(nodes, [1, 2, 3], "replicas spread over the nodes");
    let ip = |t: &TaskNs| {
        s.task_ip(t, "eth0")
            .unwrap_or_else(|| panic!("task {} has no eth0 address", t.id))
    };
    for a in &red {
        for b in &red {
            if a.id != b.id {
                s.wait(
                    &format!(
                        "red task on node{} reaches red task on node{}",
                        a.node, b.node
                    ),
                    || s.task_pings(a, ip(b)),
                );
            }
        }
        for b in &blue {
            assert!(
                !s.task_pings(a, ip(b)),
                "a red task must not reach a blue one"
            );
        }
    }
    // A worker shows the networks its tasks use, with this node's gossip view of them, and
    // nothing else.
    let on2 = red
        .iter()
        .find(|t| t.node == 2)
        .expect("a red task on node2");
    let ls = s.ctl(2, &["network", "ls", "--format", "json"]);
    assert!(ls.contains("\"red\""), "{ls}");
    let worker_blue = blue.iter().any(|t| t.node == 2);
    assert_eq!(ls.contains("\"blue\""), worker_blue, "{ls}");
    s.ctl(1, &["network", "create", "--driver", "overlay", "green"]);
    let err = s.ctl_err(2, &["network", "inspect", "green"]);
    assert!(err.contains("not found on this worker"), "{err}");
    s.wait(
        "node2's view of red has its task and all three peers",
        || {
            let v: serde_json::Value =
                serde_json::from_str(&s.ctl(2, &["network", "inspect", "red"])).unwrap();
            let v = &v[0];
            v["Containers"].get(&on2.id).is_some()
                && v["Peers"].as_array().map(Vec::len) == Some(3)
                && v["Endpoints"].as_array().map(Vec::len) == Some(3)
        },
    );

    // Every task also has its way out: the gateway bridge, with the default route.
    let routes = s.in_task(&red[0], &["ip", "route", "show", "default"]);
    assert!(
        String::from_utf8_lossy(&routes.stdout).contains("eth1"),
        "default route via the gateway bridge"
    );
}

#[test]
fn drain_pause_and_a_full_network() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 2);
    // A /29 holds 5 usable addresses; the VIP takes one, so 4 tasks fit.
    s.ctl(
        1,
        &[
            "network",
            "create",
            "--driver",
            "overlay",
            "--subnet",
            "10.9.9.0/29",
            "tiny",
        ],
    );
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "t",
            "--replicas",
            "6",
            "--network",
            "tiny",
            "--",
            "sleep",
            "3600",
        ],
    );
    s.wait("two tasks wait for addresses, saying why", || {
        let ps = s.service_ps(1, "t");
        ps.iter()
            .filter(|t| {
                t["Error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("no available IP addresses on network tiny")
            })
            .count()
            == 2
            && s.running(1, "t").len() == 4
    });
    let err = s.ctl_err(1, &["network", "rm", "tiny"]);
    assert!(err.contains("in use"), "{err}");
    let err = s.ctl_err(1, &["node", "update", "--availability", "drain", "nosuch"]);
    assert!(err.contains("No such node: nosuch"), "{err}");

    // Drain node3: its tasks move; pause node2: it keeps its tasks but takes no new ones.
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--name",
            "d",
            "--replicas",
            "3",
            "--",
            "sleep",
            "3600",
        ],
    );
    s.wait("d runs on all three nodes", || {
        let mut n: Vec<String> = s.running(1, "d").into_values().collect();
        n.sort();
        n == ["node1", "node2", "node3"]
    });
    s.ctl(1, &["node", "update", "--availability", "drain", "node3"]);
    s.wait("node3's task of d moved", || {
        let r = s.running(1, "d");
        r.len() == 3 && r.values().all(|n| n != "node3")
    });
    s.wait("nothing runs on the drained node", || {
        s.task_namespaces(3).is_empty()
    });
    // `node ps`: the drained node's tasks are all shut down, its old task of d among them; with
    // no node it lists the tasks of the node you ask.
    let rows = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut argv = vec!["node", "ps", "--format", "json"];
        argv.extend_from_slice(args);
        s.ctl(1, &argv)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let on3 = rows(&["node3"]);
    assert!(
        on3.iter()
            .any(|t| t["Name"].as_str().is_some_and(|n| n.starts_with("d."))),
        "{on3:?}"
    );
    assert!(
        on3.iter()
            .all(|t| t["Node"] == "node3" && t["DesiredState"] == "Shutdown"),
        "{on3:?}"
    );
    let running3 = s.ctl(
        1,
        &["node", "ps", "-q", "-f", "desired-state=running", "node3"],
    );
    assert_eq!(running3.trim(), "");
    let mine = rows(&[]);
    assert!(
        !mine.is_empty() && mine.iter().all(|t| t["Node"] == "node1"),
        "{mine:?}"
    );
    let err = s.ctl_err(1, &["node", "ps", "nosuch"]);
    assert!(err.contains("No such node: nosuch"), "{err}");
    s.ctl(1, &["node", "update", "--availability", "pause", "node2"]);
    s.ctl(1, &["node", "update", "--availability", "active", "node3"]);
    let on_node2 = s.running(1, "d").values().filter(|n| *n == "node2").count();
    s.ctl(1, &["service", "scale", "--detach", "d=5"]);
    s.wait("d scaled to 5 without node2", || {
        s.running(1, "d").len() == 5
    });
    assert_eq!(
        s.running(1, "d").values().filter(|n| *n == "node2").count(),
        on_node2,
        "a paused node takes no new task"
    );

    // `service update --force` replaces every task though nothing changed, and waits for the
    // new ones.
    let before = s.running(1, "d");
    let out = s.ctl(1, &["service", "update", "--force", "d"]);
    assert!(out.contains("verify: Service converged"), "{out}");
    let after = s.running(1, "d");
    assert_eq!(after.len(), 5, "{after:?}");
    assert!(
        after.keys().all(|id| !before.contains_key(id)),
        "every task is new: {before:?} -> {after:?}"
    );
    assert!(
        after.values().all(|n| n != "node2"),
        "the paused node takes none of the new tasks: {after:?}"
    );
}

#[test]
fn a_partitioned_worker_loses_its_tasks_and_stops_them_when_healed() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 2);
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--name",
            "p",
            "--replicas",
            "2",
            "--constraint",
            "node.role==worker",
            "--",
            "sleep",
            "3600",
        ],
    );
    s.wait("p runs on both workers", || {
        let mut n: Vec<String> = s.running(1, "p").into_values().collect();
        n.sort();
        n == ["node2", "node3"]
    });
    let old: Vec<TaskNs> = s.task_namespaces(3);
    assert_eq!(old.len(), 1);
    s.lab.isolate(3).unwrap();
    s.wait("node3 is down and its task runs on node2", || {
        let r = s.running(1, "p");
        r.len() == 2 && r.values().all(|n| n == "node2")
    });
    // Cut off, node3 keeps its task running (it cannot know better).
    assert!(!s.task_pids(&old[0]).is_empty());
    s.lab.heal_all().unwrap();
    s.wait("healed, node3 stops its old task", || {
        s.task_namespaces(3).is_empty()
    });
    let mut nodes: Vec<String> = s.running(1, "p").into_values().collect();
    nodes.sort();
    assert_eq!(nodes, ["node2", "node2"], "no duplicate left running");
}

#[test]
fn an_agent_restart_changes_nothing() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 1);
    s.ctl(1, &["network", "create", "--driver", "overlay", "web"]);
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--name",
            "w",
            "--replicas",
            "2",
            "--network",
            "web",
            "--",
            "sleep",
            "3600",
        ],
    );
    let tasks = s.task_nss("w", 2);
    let (a, b) = (&tasks[0], &tasks[1]);
    assert_ne!(a.node, b.node);
    let b_ip = s.task_ip(b, "eth0").unwrap();
    s.wait("the tasks reach each other", || s.task_pings(a, b_ip));
    let pids: Vec<Vec<i32>> = tasks.iter().map(|t| s.task_pids(t)).collect();
    let writes = |i: usize| -> u64 {
        common::metric(&s.metrics(i), "netagent_executor_kernel_writes_total", &[]) as u64
    };
    s.wait(
        "the worker counted the writes that built its data plane",
        || writes(2) > 0,
    );
    // Restart the worker's agent (SIGTERM, then start again with the same state). The restart
    // must fit in the dispatcher's grace (3 heartbeats), as in production (5 s heartbeats): with
    // the lab's 200 ms, a loaded CI machine took 0.6 s to bring the agent back, the leader marked
    // node2 down and moved its task, and the restart then had a real change to make.
    s.ctl(1, &["swarm", "update", "--dispatcher-heartbeat", "2s"]);
    let worker = 2;
    s.agents[worker - 1].stop(Duration::from_secs(10));
    s.restart(worker);
    s.wait("the worker is back and has its assignments", || {
        s.nodes(1)
            .map(|n| n.iter().all(|n| common::state(n) == "ready"))
            .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        writes(worker),
        0,
        "a restart with unchanged state writes nothing to the kernel"
    );
    let after: Vec<Vec<i32>> = tasks.iter().map(|t| s.task_pids(t)).collect();
    assert_eq!(pids, after, "the tasks kept running");
    assert!(s.task_pings(a, b_ip), "peers intact");
}
