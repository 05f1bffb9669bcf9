//! 3 managers + 2 workers: every manager agrees on `node ls`; availability, labels, promotion
//! and demotion show everywhere; `node inspect --pretty`; the refusals of `node rm` and `swarm
//! leave`; a worker cannot manage the swarm.

mod common;

use common::*;
use serde_json::Value;

/// id, hostname, status, availability, manager status + labels.
type Row = (String, String, String, String, String);

/// The rows of `node ls` as a manager sees them.
fn summary(s: &Swarm, i: usize) -> Option<Vec<Row>> {
    let mut rows: Vec<_> = s
        .nodes(i)?
        .iter()
        .map(|n: &Value| {
            let ms = if n["ManagerStatus"].is_null() {
                String::new()
            } else if n["ManagerStatus"]["Leader"] == true {
                "leader".into()
            } else {
                reachability(n)
            };
            (
                n["ID"].as_str().unwrap_or_default().to_string(),
                hostname_of(n),
                state(n),
                n["Spec"]["Availability"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                format!("{ms} {}", n["Spec"]["Labels"]),
            )
        })
        .collect();
    rows.sort();
    Some(rows)
}

fn all_agree(s: &Swarm, managers: &[usize]) -> bool {
    let first = summary(s, managers[0]);
    first.is_some() && managers.iter().all(|&i| summary(s, i) == first)
}

#[test]
fn three_managers_two_workers() {
    if skip() {
        return;
    }
    let s = Swarm::start(3, 2);
    let managers = [1, 2, 3];
    s.wait("every manager's node ls agrees", || {
        all_agree(&s, &managers)
    });
    // Workers get the cluster's settings over the dispatcher session.
    s.wait("the worker knows the data-path port", || {
        serde_json::from_str::<Value>(&s.ctl(4, &["info", "--format", "json"]))
            .is_ok_and(|i| i["Swarm"]["Cluster"]["DataPathPort"] == 4789)
    });

    // The table: docker's columns, `*` after the asking node's id, Leader / Reachable.
    let table = s.ctl(2, &["node", "ls"]);
    let header = table.lines().next().unwrap();
    for col in ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"] {
        assert!(header.contains(col), "{table}");
    }
    let me = s.ctl(2, &["node", "inspect", "self", "--format", "json"]);
    let me: Value = serde_json::from_str(&me).unwrap();
    let my_id = me[0]["ID"].as_str().unwrap();
    assert!(table.contains(&format!("{my_id} *")), "{table}");
    assert_eq!(table.matches("Leader").count(), 1, "{table}");
    assert_eq!(table.matches("Reachable").count(), 2, "{table}");
    assert_eq!(table.matches("Ready").count(), 5, "{table}");
    let q = s.ctl(3, &["node", "ls", "-q"]);
    assert_eq!(q.lines().count(), 5);

    // inspect --pretty shows docker's fields.
    let pretty = s.ctl(3, &["node", "inspect", "--pretty", "node1"]);
    for field in [
        "ID:",
        "Hostname:",
        "Joined at:",
        "Status:",
        " State:",
        "Ready",
        " Availability:",
        "Active",
        "Manager Status:",
        " Address:",
        " Raft Status:",
        "Reachable",
        " Leader:",
        "Platform:",
        " Operating System:",
        " Architecture:",
        "Resources:",
        " CPUs:",
        " Memory:",
        "Engine Version:",
        "Overlay Fast Path:",
    ] {
        assert!(pretty.contains(field), "missing {field:?} in\n{pretty}");
    }
    // "ebpf" where the kernel can run it (TCX, Linux >= 6.6), "ebpf (tc filters)" before (from
    // 5.10), else "off (why)".
    let fast = pretty
        .lines()
        .find(|l| l.starts_with("Overlay Fast Path:"))
        .expect("checked above");
    eprintln!("{fast}");
    // The agent runs with the fast path wanted (the default), in this kernel and environment.
    assert_eq!(
        fast.trim_start_matches("Overlay Fast Path:").trim(),
        vxlan::fast_path_status(true).to_string(),
        "{pretty}"
    );
    let worker_pretty = s.ctl(1, &["node", "inspect", "--pretty", "node4"]);
    assert!(
        !worker_pretty.contains("Manager Status:"),
        "{worker_pretty}"
    );

    // Updates through a follower reach every manager.
    s.ctl(
        2,
        &[
            "node",
            "update",
            "--availability",
            "drain",
            "--label-add",
            "zone=a",
            "--label-add",
            "ssd",
            "node4",
        ],
    );
    s.ctl(3, &["node", "update", "--availability", "pause", "node5"]);
    s.wait("availability and labels everywhere", || {
        managers.iter().all(|&i| {
            let n4 = s.node_as_seen_by(i, "node4");
            let n5 = s.node_as_seen_by(i, "node5");
            matches!((n4, n5), (Some(a), Some(b))
                if a["Spec"]["Availability"] == "drain" && a["Spec"]["Labels"]["zone"] == "a"
                    && a["Spec"]["Labels"]["ssd"] == "" && b["Spec"]["Availability"] == "pause")
        })
    });
    s.ctl(
        1,
        &[
            "node",
            "update",
            "--label-rm",
            "ssd",
            "--availability",
            "active",
            "node4",
        ],
    );
    let err = s.ctl_err(1, &["node", "update", "--label-rm", "nope", "node4"]);
    assert!(err.contains("doesn't exist"), "{err}");
    let table = s.ctl(1, &["node", "ls"]);
    assert!(
        table.contains("Drain") || table.contains("Pause"),
        "{table}"
    );

    // A worker cannot manage the swarm.
    let err = s.ctl_err(4, &["node", "ls"]);
    assert!(err.contains("This node is not a swarm manager"), "{err}");
    let err = s.ctl_err(5, &["node", "update", "--availability", "drain", "node5"]);
    assert!(err.contains("not a swarm manager"), "{err}");

    // Promote a worker: 4 managers is even, so a warning; it becomes a Reachable manager.
    let out = s.netctl(2, &["node", "promote", "node4"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("Node node4 promoted to a manager in the swarm.")
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WARNING"),
        "even number of managers"
    );
    s.wait("node4 is a reachable manager everywhere", || {
        [1, 2, 3, 4].iter().all(|&i| {
            s.node_as_seen_by(i, "node4")
                .is_some_and(|n| n["ManagerStatus"]["Reachability"] == "reachable")
        })
    });
    let again = s.ctl(1, &["node", "promote", "node4"]);
    assert!(again.contains("already a manager"), "{again}");
    s.wait("every manager's node ls agrees after promotion", || {
        all_agree(&s, &[1, 2, 3, 4])
    });

    // Demote it again.
    let out = s.ctl(1, &["node", "demote", "node4"]);
    assert!(out.contains("Manager node4 demoted in the swarm."), "{out}");
    s.wait("node4 is a worker everywhere", || {
        managers.iter().all(|&i| {
            s.node_as_seen_by(i, "node4")
                .is_some_and(|n| n["ManagerStatus"].is_null() && n["Spec"]["Role"] == "worker")
        })
    });
    s.wait("node4's own API says it is a worker", || {
        !s.netctl(4, &["node", "ls"]).status.success()
    });

    // node rm: an up node and a manager are refused; a down node goes.
    let err = s.ctl_err(1, &["node", "rm", "node5"]);
    assert!(err.contains("is not down"), "{err}");
    let err = s.ctl_err(1, &["node", "rm", "node2"]);
    assert!(err.contains("must be demoted"), "{err}");
    // A manager leaving is refused with a warning about quorum.
    let err = s.ctl_err(3, &["swarm", "leave"]);
    assert!(err.contains("participating as a manager"), "{err}");
    // A worker leaves; it goes Down and can then be removed.
    let out = s.ctl(5, &["swarm", "leave"]);
    assert!(out.contains("Node left the swarm."), "{out}");
    s.wait("node5 Down", || {
        s.node_as_seen_by(1, "node5")
            .is_some_and(|n| state(&n) == "down")
    });
    s.ctl(2, &["node", "rm", "node5"]);
    s.wait("node5 gone everywhere", || {
        managers
            .iter()
            .all(|&i| s.nodes(i).is_some_and(|n| n.len() == 4))
    });

    // SIGTERM: a clean shutdown, exit status 0.
    let status = s.agents[3].stop(std::time::Duration::from_secs(20));
    assert!(
        status.is_some_and(|st| st.success()),
        "{status:?}\n{}",
        s.logs()
    );
}

#[test]
fn demoting_the_leader_hands_over_leadership() {
    if skip() {
        return;
    }
    let s = Swarm::start(3, 0);
    let l = s.leader(&[1, 2, 3]).expect("a leader");
    let other = if l == 1 { 2 } else { 1 };
    let out = s.netctl(other, &["node", "demote", &format!("node{l}")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("Manager node{l} demoted in the swarm."))
    );
    // Two managers left: even, so a warning about fault tolerance.
    assert!(String::from_utf8_lossy(&out.stderr).contains("WARNING"));
    s.wait("the old leader is a worker", || {
        s.node_as_seen_by(other, &format!("node{l}"))
            .is_some_and(|n| n["ManagerStatus"].is_null() && n["Spec"]["Role"] == "worker")
    });
    s.wait("another leader", || {
        s.leader(&[other]).is_some_and(|x| x != l)
    });
    s.wait("writes work", || {
        s.netctl(other, &["node", "update", "--label-add", "x=1", "node1"])
            .status
            .success()
    });
    // Demoting one of the last two would leave one manager: allowed only while both answer; the
    // last one can never be demoted.
    let rest: Vec<usize> = [1, 2, 3].into_iter().filter(|&i| i != l).collect();
    s.ctl(rest[0], &["node", "demote", &format!("node{}", rest[1])]);
    s.wait("one manager left", || {
        s.nodes(rest[0])
            .is_some_and(|ns| ns.iter().filter(|n| !n["ManagerStatus"].is_null()).count() == 1)
    });
    let err = s.ctl_err(rest[0], &["node", "demote", &format!("node{}", rest[0])]);
    assert!(err.contains("last manager"), "{err}");
}

/// `swarm update --dispatcher-heartbeat` reaches nodes whose sessions are open: the worker beats
/// at the new period from its next beat on, without reconnecting.
#[test]
fn a_new_heartbeat_period_reaches_connected_nodes() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 1);
    let beats = |i: usize| {
        metric(
            &s.metrics(i),
            "netagent_dispatcher_heartbeats_sent_total",
            &[],
        )
    };
    let over = |secs: u64| {
        let before = beats(2);
        std::thread::sleep(std::time::Duration::from_secs(secs));
        beats(2) - before
    };
    // The lab's 200 ms: about 15 beats in 3 s.
    let fast = over(3);
    assert!(fast >= 5.0, "{fast} beats in 3 s at 200 ms");
    s.ctl(1, &["swarm", "update", "--dispatcher-heartbeat", "2s"]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    // 2 s: 2 or 3 beats in 5 s.
    let slow = over(5);
    assert!(slow <= 4.0, "{slow} beats in 5 s after the change to 2 s");
    // Back to 200 ms: the worker beats every 2 s until its next beat tells it, and the leader
    // allows for that (it marked every node down within 600 ms when it did not).
    s.ctl(1, &["swarm", "update", "--dispatcher-heartbeat", "200ms"]);
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(4) {
        let nodes = s.nodes(1).unwrap_or_default();
        assert!(
            nodes.iter().all(|n| state(n) != "down"),
            "a node went down while the period changed: {nodes:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let fast_again = over(2);
    assert!(
        fast_again >= 4.0,
        "{fast_again} beats in 2 s back at 200 ms"
    );
    let sessions = metric(
        &s.metrics(2),
        "netagent_dispatcher_assignments_received_total",
        &[("kind", "full")],
    );
    assert_eq!(
        sessions, 1.0,
        "one session: the period changed without a reconnect"
    );
}

/// A leader whose process does not run for a while (stopped here; a machine starved of CPU
/// does the same to it) reads no heartbeat meanwhile: the nodes kept beating, and once it runs
/// again it must not mark them down (it did: every worker went down for a moment, and a down
/// node's tasks are replaced). A node that really went silent still goes down.
#[test]
fn a_stalled_leader_marks_no_node_down() {
    if skip() {
        return;
    }
    use nix::sys::signal::Signal;
    use std::time::{Duration, Instant};
    let s = Swarm::start(1, 2);
    let no_node_down = |what: &str| {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            let nodes = s.nodes(1).unwrap_or_default();
            assert_eq!(nodes.len(), 3, "{nodes:?}");
            assert!(
                nodes.iter().all(|n| state(n) == "ready"),
                "{what}: a node is not ready: {:?}",
                nodes.iter().map(state).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    no_node_down("before");
    for round in 1..=3 {
        s.agents[0].signal(Signal::SIGSTOP);
        std::thread::sleep(Duration::from_secs(2));
        s.agents[0].signal(Signal::SIGCONT);
        no_node_down(&format!("after the leader's stop {round}"));
    }
    // A worker that stops beating is marked down (3 periods of 200 ms, then the loop's round).
    s.agents[2].signal(Signal::SIGSTOP);
    let t = Instant::now();
    let down = loop {
        let nodes = s.nodes(1).unwrap_or_default();
        if nodes.iter().any(|n| state(n) == "down") {
            break true;
        }
        if t.elapsed() > Duration::from_secs(10) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    s.agents[2].signal(Signal::SIGCONT);
    assert!(down, "a stopped worker was not marked down within 10 s");
}
