//! Quorum rules with 5 managers, and `--force-new-cluster` after losing 2 of 3.

mod common;

use common::*;
use serde_json::Value;

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
    // node2 reads its own replica, which may still be applying node4's join.
    s.wait("node2 knows node4", || {
        s.node_as_seen_by(2, "node4").is_some()
    });
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

/// The store's writer fails closed: a write of the leader's state machine made to fail
/// (`NETAGENT_FAULT_SM_WRITE` names an arming file) stops that manager from applying. It refuses
/// writes with the reason, says why in `info` and `node inspect`, the others count it unreachable
/// and elect another leader; restarted, it recovers from the Raft log with every committed entry
/// applied, the one whose write failed included.
#[test]
fn a_failed_store_write_fails_closed_and_a_restart_recovers() {
    if skip() {
        return;
    }
    let lab = lab::Lab::new(3).expect("lab");
    let arms: Vec<std::path::PathBuf> = (1..=3)
        .map(|i| lab.node(i).dir().join("fail-sm-write"))
        .collect();
    let arm = |i: usize| arms[i - 1].clone();
    let s = Swarm::agents_in(lab, 3, |lab, i| {
        agent_spec(lab, i).env("NETAGENT_FAULT_SM_WRITE", arm(i))
    });
    s.form(3, 0);
    let mut leader = None;
    s.wait("a leader", || {
        leader = s.leader(&[1, 2, 3]);
        leader.is_some()
    });
    let l = leader.unwrap();
    let other = if l == 1 { 2 } else { 1 };
    s.ctl(l, &["node", "update", "--label-add", "before=1", "node3"]);

    // Armed: the leader's next state-machine write fails (the leader writes on its own too, so
    // it may be ours or one of its own). The entries it held are committed (a quorum has them);
    // their rows are missing from the leader's file only.
    std::fs::write(arm(l), "").unwrap();
    let raced = s
        .netctl(l, &["node", "update", "--label-add", "lost=1", "node3"])
        .status
        .success();
    s.wait("the leader's store unhealthy", || {
        let out = s.netctl(l, &["info"]);
        String::from_utf8_lossy(&out.stdout).contains("store is unhealthy")
    });
    let info = s.ctl(l, &["info"]);
    assert!(info.contains("injected write failure"), "{info}");
    let err = s.ctl_err(l, &["node", "update", "--label-add", "refused=1", "node3"]);
    assert!(
        err.contains("refuses writes")
            && err.contains("injected write failure")
            && err.contains("Restart netagent"),
        "{err}"
    );
    let me: Value = serde_json::from_str(&s.ctl(l, &["node", "inspect", "self"])).unwrap();
    let message = me[0]["Status"]["Message"].as_str().unwrap_or_default();
    assert!(message.contains("store unhealthy"), "{me}");
    let pretty = s.ctl(l, &["node", "inspect", "--pretty", "self"]);
    assert!(pretty.contains("store unhealthy"), "{pretty}");

    // The others elect a leader among themselves and go on; the broken one is unreachable.
    let name = format!("node{l}");
    s.wait("the others lead and count it unreachable", || {
        s.nodes(other).is_some_and(|ns| {
            ns.iter()
                .any(|n| n["ManagerStatus"]["Leader"] == true && hostname_of(n) != name)
                && ns
                    .iter()
                    .any(|n| hostname_of(n) == name && reachability(n) == "unreachable")
        })
    });
    s.wait("writes through another manager", || {
        s.netctl(
            other,
            &["node", "update", "--label-add", "after=1", "node3"],
        )
        .status
        .success()
    });
    s.ctl(
        other,
        &["network", "create", "--subnet", "10.77.0.0/24", "later"],
    );

    // Restarted (the arming file was consumed): healthy, every committed entry applied.
    s.kill(l);
    s.restart(l);
    let specs = |i: usize| {
        s.nodes(i).map(|ns| {
            let mut v: Vec<(String, Value)> = ns
                .iter()
                .map(|n| (hostname_of(n), n["Spec"].clone()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        })
    };
    s.wait("the restarted manager caught up", || {
        s.node_as_seen_by(l, "node3").is_some_and(|n| {
            let labels = &n["Spec"]["Labels"];
            labels["before"] == "1" && (!raced || labels["lost"] == "1") && labels["after"] == "1"
        }) && s
            .netctl(l, &["network", "inspect", "later"])
            .status
            .success()
            && specs(l).is_some()
            && specs(l) == specs(other)
    });
    let info = s.ctl(l, &["info"]);
    assert!(!info.contains("unhealthy"), "{info}");
    s.wait("writes through the restarted manager", || {
        s.netctl(l, &["node", "update", "--label-add", "again=1", "node3"])
            .status
            .success()
    });
}
