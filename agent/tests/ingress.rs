//! The ingress routing mesh end to end (issue 12): 3 agents (node1 manager, node2 and node3
//! workers) and a client namespace on the underlay (lab node 4, no agent). A service of 2 tasks
//! on node1 and node2 published 8080:80 answers through every node, also node3 which runs none
//! of its tasks; both tasks answer; each task sees (and logs) the client's own underlay address;
//! refusals are clear and change nothing; removing the service removes the nodes' tables; the
//! host namespace is untouched. `ingress_recreate.rs` changes the ingress network under load.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::mesh::{
    WEB, diag, dig_from_task, load, no_ingress_names, swarm_with_client, task_on_ingress, who,
};
use common::skip;
use lab::host_snapshot;

#[test]
fn published_port_answers_on_every_node_with_the_client_address() {
    if skip() {
        return;
    }
    let before = host_snapshot();
    let mut s = swarm_with_client();
    let client = s.lab.node(4).addr();

    // The ingress network swarm init made: first pool subnet, VNI 4096; a user's first 4097.
    let ing: serde_json::Value =
        serde_json::from_str(&s.ctl(1, &["network", "inspect", "ingress"])).unwrap();
    assert_eq!(ing[0]["Ingress"], true, "{ing}");
    assert_eq!(
        ing[0]["IPAM"]["Config"][0]["Subnet"], "10.0.0.0/24",
        "{ing}"
    );
    assert_eq!(
        ing[0]["Options"]["com.docker.network.driver.overlay.vxlanid_list"], "4096",
        "{ing}"
    );
    s.ctl(1, &["network", "create", "--driver", "overlay", "front"]);
    let front: serde_json::Value =
        serde_json::from_str(&s.ctl(1, &["network", "inspect", "front"])).unwrap();
    assert_eq!(
        front[0]["Options"]["com.docker.network.driver.overlay.vxlanid_list"], "4097",
        "{front}"
    );

    let node3 = s.hostname(3);
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "web",
            // One task on each of node1 and node2 (global, node3 excluded).
            "--mode",
            "global",
            "--network",
            "front",
            "--constraint",
            &format!("node.hostname!={node3}"),
            "-p",
            "8080:80",
            "--",
            "sh",
            "-c",
            WEB,
        ],
    );
    s.wait("2 running tasks of web", || s.running(1, "web").len() == 2);
    let ls = s.ctl(1, &["service", "ls"]);
    assert!(ls.contains("*:8080->80/tcp"), "{ls}");
    let inspect: serde_json::Value =
        serde_json::from_str(&s.ctl(1, &["service", "inspect", "web"])).unwrap();
    assert_eq!(
        inspect[0]["Endpoint"]["Ports"][0]["PublishedPort"], 8080,
        "{inspect}"
    );
    // Converged: every node's sbox knows both tasks.
    for i in 1..=3 {
        s.wait(&format!("both tasks answer through node{i}"), || {
            let (tasks, _, failed) = load(&s, s.lab.node(i).addr(), 8080, 10);
            failed.is_empty() && tasks.len() == 2
        });
    }

    let node_tracked = |i: usize| common::node_tracked(&s, i, client, 8080);
    // With the eBPF shortcut (on with the fast path, as TCX links or tc filters), connections
    // through a node go past its own stack straight into its sbox: its conntrack gains none.
    let shortcut = vxlan::fast_path_status(true).is_active();
    // 300 requests through each node: all answered, by both tasks, which see the client.
    for i in 1..=3 {
        let tracked = node_tracked(i);
        let (tasks, peers, failed) = load(&s, s.lab.node(i).addr(), 8080, 300);
        match shortcut {
            true => assert!(
                node_tracked(i) <= tracked,
                "node{i} tracked the connections"
            ),
            false => assert!(node_tracked(i) > tracked, "node{i} tracked none"),
        }
        assert!(
            failed.is_empty(),
            "through node{i}: {} failed: {:?}\n{}",
            failed.len(),
            &failed[..failed.len().min(5)],
            diag(&s)
        );
        assert_eq!(
            tasks.len(),
            2,
            "both tasks answer through node{i}: {tasks:?}"
        );
        assert_eq!(
            peers,
            BTreeSet::from([format!("[::ffff:{client}]")]),
            "the tasks see the client's own address through node{i}"
        );
    }
    // An address node3 gains after its mesh was applied is published too, and on the
    // shortcut's path as soon as the agent hears of it (the kernel's address notification),
    // not only at the mesh's next change. node3 runs no task: its sbox alone answers there.
    let extra = std::net::Ipv4Addr::new(198, 19, 255, 203);
    let node3_sh = |cmd: String| s.lab.node(3).sh(&cmd).unwrap();
    node3_sh(format!("ip addr add {extra}/15 dev eth0"));
    s.wait("both tasks answer through node3's new address", || {
        let (tasks, _, failed) = load(&s, extra, 8080, 10);
        failed.is_empty() && tasks.len() == 2
    });
    if shortcut {
        s.wait("node3's shortcut takes its new address", || {
            let tracked = node_tracked(3);
            let (_, _, failed) = load(&s, extra, 8080, 10);
            failed.is_empty() && node_tracked(3) <= tracked
        });
    }
    node3_sh(format!("ip addr del {extra}/15 dev eth0"));
    let (_, _, failed) = load(&s, s.lab.node(3).addr(), 8080, 10);
    assert!(
        failed.is_empty(),
        "through node3 after its extra address went: {failed:?}"
    );

    // The tasks log it: their output files on node1 and node2.
    for i in 1..=2 {
        let logs = s
            .lab
            .node(i)
            .sh(&format!(
                "find {} -name output.log | xargs cat",
                s.lab.node(i).dir().display()
            ))
            .unwrap_or_default();
        assert!(
            logs.contains(&format!("client [::ffff:{client}]")),
            "node{i}: {logs}"
        );
    }

    // DNS: the tasks' names and the service's answer on "front" only (Docker leaves ingress
    // out of service discovery).
    let (t, _) = task_on_ingress(&s, 1, "10.0.0.");
    let tasks_web = dig_from_task(&s, &t, &["tasks.web"]);
    assert_eq!(tasks_web.len(), 2, "tasks.web: {tasks_web:?}");
    no_ingress_names(&s, 1, &["tasks.web", "web"], "10.0.0.");

    // An agent restart, on node2 (a task and an sbox) then node3 (an sbox only), writes
    // nothing to the kernel (both adopt what they find), and the port keeps answering through every node with both tasks.
    let writes = |i: usize| -> u64 {
        common::metric(&s.metrics(i), "netagent_executor_kernel_writes_total", &[]) as u64
    };
    // The restart fits in the dispatcher's grace (3 heartbeats), as in production (5 s
    // heartbeats); with the lab's 200 ms the node is marked down and its task replaced.
    s.ctl(1, &["swarm", "update", "--dispatcher-heartbeat", "1s"]);
    for i in [2, 3] {
        s.wait(&format!("node{i} counted its writes"), || writes(i) > 0);
        // Settled: nothing left to apply from the previous restart (a restarted node's
        // re-published entries reach the others in the next seconds; stopping an agent in the
        // middle leaves its kernel behind what its successor must then write).
        let mut last = (writes(i), 0);
        s.wait(&format!("node{i} settled"), || {
            std::thread::sleep(Duration::from_millis(500));
            let w = writes(i);
            last = if w == last.0 { (w, last.1 + 1) } else { (w, 0) };
            last.1 >= 6
        });
        s.agents[i - 1].stop(Duration::from_secs(10));
        s.restart(i);
        s.wait("every node ready again", || {
            s.nodes(1)
                .map(|n| n.iter().all(|n| common::state(n) == "ready"))
                .unwrap_or(false)
        });
        std::thread::sleep(Duration::from_secs(3));
        let w = writes(i);
        eprintln!("node{i}: {w} kernel writes after its agent restarted");
        assert_eq!(
            w, 0,
            "node{i}: a restart with unchanged state writes nothing"
        );
    }
    for i in 1..=3 {
        let (tasks, _, failed) = load(&s, s.lab.node(i).addr(), 8080, 30);
        assert!(
            failed.is_empty() && tasks.len() == 2,
            "after the restarts, node{i}: {failed:?} {tasks:?}"
        );
    }

    // Docker's behaviour as an option: node3's agent started again with --ingress-snat. Through
    // node3 the tasks see node3's ingress address; through node1 still the client.
    s.agents[2].stop(Duration::from_secs(10));
    let spec = common::agent_spec(&s.lab, 3).arg("--ingress-snat");
    s.agents[2] = s.lab.node(3).spawn(spec).expect("spawn netagent");
    s.wait("agent 3 API with --ingress-snat", || {
        s.netctl(3, &["info"]).status.success()
    });
    let mut seen = BTreeSet::new();
    s.wait("node3 SNATs mesh connections", || {
        let (tasks, peers, failed) = load(&s, s.lab.node(3).addr(), 8080, 10);
        seen = peers.clone();
        failed.is_empty()
            && tasks.len() == 2
            && peers.len() == 1
            && peers.iter().all(|p| p.starts_with("[::ffff:10.0.0."))
    });
    assert!(
        !seen.contains(&format!("[::ffff:{client}]")),
        "through node3 the tasks no longer see the client: {seen:?}"
    );
    let (_, peers, failed) = load(&s, s.lab.node(1).addr(), 8080, 10);
    assert!(failed.is_empty(), "through node1: {failed:?}");
    assert_eq!(
        peers,
        BTreeSet::from([format!("[::ffff:{client}]")]),
        "node1 does not SNAT"
    );

    // A port published from 30000-32767 when omitted, answering too; removed again.
    s.ctl(
        1,
        &[
            "service",
            "update",
            "--detach",
            "--publish-add",
            "80",
            "web",
        ],
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&s.ctl(1, &["service", "inspect", "web"])).unwrap();
    let ports = inspect[0]["Endpoint"]["Ports"].as_array().unwrap().clone();
    let dynamic = ports
        .iter()
        .map(|p| p["PublishedPort"].as_u64().unwrap())
        .find(|p| *p != 8080)
        .expect("an allocated port");
    assert!((30000..=32767).contains(&dynamic), "{inspect}");
    s.wait("the allocated port answers through node3", || {
        who(&s, s.lab.node(3).addr(), dynamic as u16).is_ok()
    });
    s.ctl(
        1,
        &[
            "service",
            "update",
            "--detach",
            "--publish-rm",
            &dynamic.to_string(),
            "web",
        ],
    );

    // Refusals: clear errors, nothing changed.
    let services = s.ctl(1, &["service", "ls", "-q"]);
    let networks = s.ctl(1, &["network", "ls", "-q"]);
    let refusals: [(&[&str], &str); 4] = [
        (
            &[
                "service", "create", "--detach", "--name", "other", "-p", "8080:80", "--", "sleep",
                "1000",
            ],
            "already published by service web",
        ),
        (
            &[
                "service", "create", "--detach", "--name", "other", "-p", "70000:80", "--",
                "sleep", "1000",
            ],
            "invalid published port 70000",
        ),
        (
            &[
                "service",
                "create",
                "--detach",
                "--name",
                "other",
                "--endpoint-mode",
                "dnsrr",
                "-p",
                "8081:80",
                "--",
                "sleep",
                "1000",
            ],
            "can't be used with dnsrr mode",
        ),
        (
            &[
                "network",
                "create",
                "--driver",
                "overlay",
                "--ingress",
                "ingress2",
            ],
            "already exists",
        ),
    ];
    for (argv, says) in refusals {
        let err = s.ctl_err(1, argv);
        assert!(err.contains(says), "{argv:?}: {err}");
    }
    assert_eq!(s.ctl(1, &["service", "ls", "-q"]), services);
    assert_eq!(s.ctl(1, &["network", "ls", "-q"]), networks);
    let err = s.ctl_err(1, &["network", "rm", "ingress"]);
    assert!(err.contains("ingress recreate"), "{err}");

    // The last publishing service gone: every node's table goes, and its eBPF shortcut (the
    // programs detach with their pins).
    let mesh_pins = |i: usize| s.lab.node(i).dir().join("bpf").join("mesh");
    for i in 1..=3 {
        assert_eq!(mesh_pins(i).exists(), shortcut, "node{i}");
    }
    s.ctl(1, &["service", "rm", "web"]);
    for i in 1..=3 {
        s.wait(&format!("node{i} has no ingress table"), || {
            !s.lab
                .node(i)
                .run(&["nft", "list", "table", "ip", "netagent_ingress"])
                .unwrap()
                .status
                .success()
        });
        s.wait(&format!("node{i} has no mesh shortcut"), || {
            !mesh_pins(i).exists()
        });
    }
    drop(s);
    assert_eq!(
        host_snapshot(),
        before,
        "the test changed the host's namespace"
    );
}
