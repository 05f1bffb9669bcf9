//! The node runtime is supervised: a node whose executor keeps failing (or panics) says so
//! (`node ls` STATUS Unknown, `node inspect` Status.Message with the reason), keeps its tasks,
//! gets no new ones, and recovers by itself once the cause is gone. The failure is injected with
//! `NETAGENT_FAULT_EXECUTOR`: while the file it names exists, every executor pass fails (panics
//! when the file says `panic`).

mod common;

use std::time::Instant;

use common::*;
use serde_json::Value;

/// Hostnames of the nodes running tasks of `service` (desired and observed running).
fn nodes_running(s: &Swarm, service: &str) -> Vec<String> {
    let mut v: Vec<String> = s.running(1, service).into_values().collect();
    v.sort();
    v
}

#[test]
fn a_failing_executor_takes_its_node_out_of_scheduling_until_it_recovers() {
    if skip() {
        return;
    }
    let lab = lab::Lab::new(3).expect("lab");
    let arm = lab.node(3).dir().join("fail-executor");
    let s = Swarm::agents_in(lab, 3, |lab, i| {
        let spec = agent_spec(lab, i);
        if i == 3 {
            spec.env(executor::node::FAULT_ENV, arm.clone())
        } else {
            spec
        }
    });
    s.form(1, 2);
    let all = ["node1", "node2", "node3"];
    s.create_service(&[
        "--name", "before", "--mode", "global", "--", "sleep", "3600",
    ]);
    s.wait("a task of `before` on every node", || {
        nodes_running(&s, "before") == all
    });

    // node3's executor fails from now on; a new task for it gives it work to fail at.
    std::fs::write(&arm, "").expect("arm the executor fault");
    let armed = Instant::now();
    s.create_service(&[
        "--name", "during", "--mode", "global", "--", "sleep", "3600",
    ]);
    let mut seen = Value::Null;
    s.wait("node3 not ready, saying why", || {
        seen = s.node_as_seen_by(1, "node3").unwrap_or_default();
        state(&seen) == "unknown"
    });
    eprintln!(
        "node3 reported not ready {:?} after the fault",
        armed.elapsed()
    );
    let message = seen["Status"]["Message"].as_str().unwrap_or_default();
    assert!(
        message.contains("executor") && message.contains("injected failure"),
        "{seen}"
    );
    let table = s.ctl(1, &["node", "ls"]);
    let row = table.lines().find(|l| l.contains("node3")).unwrap_or("");
    assert!(row.contains("Unknown"), "{table}");
    let pretty = s.ctl(1, &["node", "inspect", "--pretty", "node3"]);
    assert!(pretty.contains("injected failure"), "{pretty}");
    let m = s.metrics(3);
    assert!(
        metric(
            &m,
            "netagent_runtime_failures_total",
            &[("component", "executor")]
        ) >= 1.0
    );

    // No new task goes to node3; its task of `before` stays (desired running, not replaced).
    s.create_service(&["--name", "after", "--mode", "global", "--", "sleep", "3600"]);
    s.create_service(&["--name", "spread", "--replicas", "4", "--", "sleep", "3600"]);
    s.wait("`after` and `spread` run on node1 and node2", || {
        nodes_running(&s, "after") == ["node1", "node2"] && s.running(1, "spread").len() == 4
    });
    for svc in ["after", "spread"] {
        let on3: Vec<Value> = s
            .service_ps(1, svc)
            .into_iter()
            .filter(|t| t["Node"] == "node3")
            .collect();
        assert!(on3.is_empty(), "{svc} got a task on node3: {on3:?}");
    }
    let kept: Vec<Value> = s
        .service_ps(1, "before")
        .into_iter()
        .filter(|t| t["Node"] == "node3")
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["DesiredState"], "Running", "{kept:?}");
    assert_eq!(
        s.node_as_seen_by(1, "node3").map(|n| state(&n)).as_deref(),
        Some("unknown")
    );

    // The cause goes: node3 is Ready again by itself and gets its tasks.
    std::fs::remove_file(&arm).expect("disarm");
    let disarmed = Instant::now();
    s.wait("node3 ready again", || {
        s.node_as_seen_by(1, "node3")
            .is_some_and(|n| state(&n) == "ready" && n["Status"]["Message"].is_null())
    });
    eprintln!("node3 ready {:?} after the cause went", disarmed.elapsed());
    s.wait("node3 runs its tasks of every global service", || {
        ["before", "during", "after"]
            .iter()
            .all(|svc| nodes_running(&s, svc) == all)
    });

    // A panicking executor: the panic is caught, the node says so, and the executor is started
    // again (with backoff) until it runs; the node's tasks keep running throughout.
    let ids = s.running(1, "before");
    let kept = s
        .task_namespaces(3)
        .into_iter()
        .find(|t| ids.contains_key(&t.id))
        .expect("node3's task of `before`");
    let pids = s.task_pids(&kept);
    assert!(!pids.is_empty());
    std::fs::write(&arm, "panic").expect("arm the executor panic");
    s.create_service(&["--name", "late", "--mode", "global", "--", "sleep", "3600"]);
    s.wait("node3 not ready: its executor panicked", || {
        s.node_as_seen_by(1, "node3").is_some_and(|n| {
            state(&n) == "unknown"
                && n["Status"]["Message"]
                    .as_str()
                    .is_some_and(|m| m.contains("executor: panicked: injected panic"))
        })
    });
    std::fs::remove_file(&arm).expect("disarm");
    s.wait("node3 ready and running `late` after the panics", || {
        s.node_as_seen_by(1, "node3")
            .is_some_and(|n| state(&n) == "ready")
            && nodes_running(&s, "late") == all
    });
    assert_eq!(s.task_pids(&kept), pids, "node3's task kept running");
    assert!(
        metric(
            &s.metrics(3),
            "netagent_runtime_failures_total",
            &[("component", "executor")]
        ) >= 2.0
    );
}
