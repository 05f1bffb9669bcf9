//! Quorum rules with 5 managers, and `--force-new-cluster` after losing 2 of 3.

mod common;

use common::*;

/// No quorum: `node ls` on each of the two managers left shows no Leader (not even the one
/// whose Raft still believes it leads), warns that the view may be stale, and its JSON says so.
fn assert_stale_view_without_leader(s: &Swarm, i: usize) {
    let out = s.netctl(i, &["node", "ls"]);
    assert!(out.status.success(), "reads still answer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WARNING") && stderr.contains("stale"),
        "node{i}: {stderr}"
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.lines().count(), 6, "{table}");
    assert!(
        !table.contains("Leader"),
        "node{i} shows a leader:\n{table}"
    );
    let nodes = s.nodes(i).expect("node ls --format json");
    assert_eq!(nodes.len(), 5);
    for n in &nodes {
        assert_ne!(n["ManagerStatus"]["Leader"], true, "node{i}: {n}");
        assert_eq!(n["Stale"], true, "node{i}: {n}");
        assert!(
            n["StaleReason"]
                .as_str()
                .is_some_and(|r| r.contains("no quorum")),
            "node{i}: {n}"
        );
    }
}

#[test]
fn five_managers_three_killed() {
    if skip() {
        return;
    }
    let s = Swarm::start(5, 0);
    // Healthy: one leader, nothing stale (once node1 has pinged the managers that just joined).
    s.wait("a leader, not stale", || {
        s.nodes(1).is_some_and(|ns| {
            ns.iter().all(|n| n["Stale"] == false)
                && ns
                    .iter()
                    .filter(|n| n["ManagerStatus"]["Leader"] == true)
                    .count()
                    == 1
        })
    });
    // Two down: 3 of 5 reachable, writes still work.
    s.kill(4);
    s.kill(5);
    s.wait("node4 and node5 unavailable", || {
        s.nodes(1).is_some_and(|ns| {
            ns.iter()
                .filter(|n| reachability(n) == "unreachable")
                .count()
                == 2
        })
    });
    s.wait("a write with 3 of 5", || {
        s.netctl(1, &["node", "update", "--label-add", "a=1", "node1"])
            .status
            .success()
    });
    // Demoting a reachable manager now would leave 2 reachable of 4: refused.
    let err = s.ctl_err(2, &["node", "demote", "node3"]);
    assert!(err.contains("loss of quorum"), "{err}");

    // Three down: no quorum. The leader stays up (its Raft may go on believing it leads), with
    // one other manager. Writes fail at once with the counts; reads answer, marked stale.
    let mut leader = None;
    s.wait("a leader among node1..node3", || {
        leader = s.leader(&[1, 2, 3]).filter(|l| (1..=3).contains(l));
        leader.is_some()
    });
    let leader = leader.unwrap();
    let victim = if leader == 3 { 2 } else { 3 };
    let other = (1..=3).find(|&i| i != leader && i != victim).unwrap();
    s.kill(victim);
    s.wait("quorum lost", || {
        let out = s.netctl(leader, &["node", "update", "--label-add", "b=1", "node1"]);
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr)
                .contains("2 of 5 managers are reachable and 3 are needed")
    });
    let err = s.ctl_err(
        other,
        &[
            "node",
            "update",
            "--availability",
            "drain",
            &format!("node{other}"),
        ],
    );
    assert!(err.contains("--force-new-cluster"), "{err}");
    for i in [leader, other] {
        assert_stale_view_without_leader(&s, i);
    }
    let err = s.ctl_err(leader, &["node", "demote", &format!("node{other}")]);
    assert!(err.contains("managers are reachable"), "{err}");

    // One back: quorum again, a leader shown again, nothing stale.
    s.restart(victim);
    s.wait("writes again with 3 of 5", || {
        s.netctl(other, &["node", "update", "--label-add", "b=2", "node1"])
            .status
            .success()
    });
    s.wait("the label everywhere", || {
        [1, 2, 3].iter().all(|&i| {
            s.node_as_seen_by(i, "node1")
                .is_some_and(|n| n["Spec"]["Labels"]["b"] == "2")
        })
    });
    s.wait("a leader, not stale", || {
        s.nodes(other).is_some_and(|ns| {
            ns.iter().all(|n| n["Stale"] == false)
                && ns
                    .iter()
                    .filter(|n| n["ManagerStatus"]["Leader"] == true)
                    .count()
                    == 1
        })
    });
}

#[test]
fn force_new_cluster_after_losing_two_of_three() {
    if skip() {
        return;
    }
    let s = Swarm::start(3, 1);
    s.ctl(2, &["node", "update", "--label-add", "kept=yes", "node4"]);
    // Destroy node2 and node3: processes and state.
    for i in [2, 3] {
        s.kill(i);
        std::fs::remove_dir_all(s.lab.node(i).dir().join("state")).unwrap();
    }
    s.wait("quorum lost", || {
        let out = s.netctl(1, &["node", "update", "--label-add", "x=1", "node1"]);
        String::from_utf8_lossy(&out.stderr).contains("1 of 3 managers are reachable")
    });
    let out = s.ctl(1, &["swarm", "init", "--force-new-cluster"]);
    assert!(out.contains("Swarm initialized"), "{out}");
    // All state kept; writes work; the lost managers are down, the worker is still a member.
    s.ctl(1, &["node", "update", "--label-add", "after=1", "node1"]);
    s.wait("lost managers down, worker ready", || {
        s.nodes(1).is_some_and(|ns| {
            ns.len() == 4
                && ns.iter().all(|n| match hostname_of(n).as_str() {
                    "node2" | "node3" => state(n) == "down" && reachability(n) == "unreachable",
                    "node4" => state(n) == "ready" && n["Spec"]["Labels"]["kept"] == "yes",
                    _ => n["ManagerStatus"]["Leader"] == true,
                })
        })
    });
    let table = s.ctl(1, &["node", "ls"]);
    assert_eq!(table.matches("Unavailable").count(), 2, "{table}");
    // They can be removed (no longer Raft members).
    s.ctl(1, &["node", "rm", "node2", "node3"]);
    // New managers join the recovered cluster.
    let token = s
        .ctl(1, &["swarm", "join-token", "-q", "manager"])
        .trim()
        .to_string();
    let addr = format!("{}:2377", s.lab.node(1).addr());
    for i in [2, 3] {
        s.restart(i);
        let out = s.ctl(i, &["swarm", "join", "--token", &token, &addr]);
        assert!(out.contains("as a manager"), "{out}");
    }
    s.wait("three reachable managers again", || {
        s.nodes(3).is_some_and(|ns| {
            ns.len() == 4
                && ns.iter().filter(|n| reachability(n) == "reachable").count() == 3
                && ns.iter().all(|n| state(n) == "ready")
        })
    });
    s.ctl(3, &["node", "update", "--label-add", "new=1", "node4"]);

    // A manager that leaves with --force first leaves Raft: the other two keep a quorum of 2.
    let err = s.ctl_err(3, &["swarm", "leave"]);
    assert!(
        err.contains("participating as a manager") && err.contains("--force"),
        "{err}"
    );
    let out = s.ctl(3, &["swarm", "leave", "--force"]);
    assert!(out.contains("Node left the swarm."), "{out}");
    s.wait("two managers left in Raft", || {
        s.netctl(1, &["info", "--format", "json"]).status.success()
            && serde_json::from_str::<serde_json::Value>(&s.ctl(1, &["info", "--format", "json"]))
                .is_ok_and(|i| i["Swarm"]["Managers"] == 2)
    });
    s.ctl(
        2,
        &["node", "update", "--label-add", "after-leave=1", "node4"],
    );
}
