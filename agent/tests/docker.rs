//! The docker CLI on the machine drives netagent through its API socket (`docker -H
//! unix://...`): every swarm command an operator uses works, and shows what netctl shows for the
//! same object. Also: `/metrics` parses as Prometheus text and its counters move; bad requests
//! get docker's error shapes and change nothing.

mod common;

use std::collections::BTreeSet;
use std::process::Output;

use common::tasks::parse_json_lines;
use common::{Swarm, metric, skip, sock};
use serde_json::Value;

/// The docker CLI, inside node `i`, against its agent; its own config dir (no user settings).
fn docker(s: &Swarm, i: usize, args: &[&str]) -> Output {
    let host = format!("unix://{}", sock(&s.lab, i));
    let config = s.lab.dir().join("docker-config");
    std::fs::create_dir_all(&config).expect("docker config dir");
    s.lab
        .node(i)
        .command("timeout")
        .args(["300", "docker", "-H", &host])
        .args(args)
        .env("DOCKER_CONFIG", &config)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_CONTEXT")
        .output()
        .expect("run docker (is the docker CLI installed? `cargo xtask setup` installs it)")
}

/// docker that must succeed; returns stdout.
fn dk(s: &Swarm, i: usize, args: &[&str]) -> String {
    let out = docker(s, i, args);
    if !out.status.success() {
        panic!(
            "docker {} on node{i} failed ({}): {}{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            s.logs()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rows of a table, split on runs of two or more spaces (cells may hold single spaces).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        })
        .collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The line of `pretty` output that starts with `key`, its value trimmed.
fn field(text: &str, key: &str) -> String {
    text.lines()
        .find(|l| l.trim_start().starts_with(key))
        .map(|l| l.trim_start()[key.len()..].trim().to_string())
        .unwrap_or_else(|| panic!("no {key:?} in\n{text}"))
}

#[test]
fn docker_cli_drives_the_swarm() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 2);
    let me = json(&s.ctl(1, &["info", "--format", "json"]));
    let node1 = me["Swarm"]["NodeID"].as_str().unwrap().to_string();

    // version and info.
    let v = dk(&s, 1, &["version"]);
    assert!(v.contains("Server: netagent"), "{v}");
    assert!(v.contains("1.41"), "{v}");
    let info = dk(&s, 1, &["info"]);
    assert_eq!(field(&info, "Swarm:"), "active", "{info}");
    assert_eq!(field(&info, "NodeID:"), node1, "{info}");
    assert_eq!(field(&info, "Is Manager:"), "true", "{info}");
    assert_eq!(field(&info, "Managers:"), "1", "{info}");
    assert_eq!(field(&info, "Nodes:"), "3", "{info}");
    assert_eq!(
        field(&info, "ClusterID:"),
        me["Swarm"]["Cluster"]["ID"].as_str().unwrap()
    );

    // node ls: the same rows as netctl's (docker marks this node with '*' after the id).
    let norm = |t: &str| -> BTreeSet<Vec<String>> {
        rows(t)
            .into_iter()
            .skip(1)
            .map(|mut r| {
                r[0] = r[0].replace(" *", "");
                if r.get(1).is_some_and(|c| c == "*") {
                    r.remove(1);
                }
                r
            })
            .collect()
    };
    let docker_ls = dk(&s, 1, &["node", "ls"]);
    let netctl_ls = s.ctl(1, &["node", "ls"]);
    assert_eq!(
        norm(&docker_ls),
        norm(&netctl_ls),
        "{docker_ls}\n{netctl_ls}"
    );
    assert!(docker_ls.contains(&format!("{node1} *")), "{docker_ls}");
    assert!(docker_ls.contains("Leader"), "{docker_ls}");

    // node inspect --pretty.
    let pretty = dk(&s, 1, &["node", "inspect", "self", "--pretty"]);
    let ours = s.ctl(1, &["node", "inspect", "--pretty", "self"]);
    for key in ["ID:", "Hostname:", "State:", "Availability:"] {
        assert_eq!(
            field(&pretty, key),
            field(&ours, key),
            "{key}\n{pretty}\n{ours}"
        );
    }

    // node update --availability drain, promote, demote: netctl sees each.
    dk(
        &s,
        1,
        &["node", "update", "--availability", "drain", "node3"],
    );
    let n3 = s.node_as_seen_by(1, "node3").unwrap();
    assert_eq!(n3["Spec"]["Availability"], "drain");
    dk(
        &s,
        1,
        &["node", "update", "--availability", "active", "node3"],
    );
    let out = dk(&s, 1, &["node", "promote", "node2"]);
    assert!(out.contains("promoted to a manager"), "{out}");
    s.wait("node2 is a reachable manager", || {
        s.node_as_seen_by(1, "node2")
            .is_some_and(|n| n["ManagerStatus"]["Reachability"] == "reachable")
    });
    let out = dk(&s, 1, &["node", "demote", "node2"]);
    assert!(out.contains("demoted in the swarm"), "{out}");
    s.wait("node2 is a worker again", || {
        s.node_as_seen_by(1, "node2")
            .is_some_and(|n| n["ManagerStatus"].is_null() && n["Spec"]["Role"] == "worker")
    });

    // network create / ls / inspect.
    let before = s.metrics(1);
    let id = dk(
        &s,
        1,
        &[
            "network",
            "create",
            "-d",
            "overlay",
            "--subnet",
            "10.9.0.0/24",
            "X",
        ],
    );
    let id = id.trim().to_string();
    let after = s.metrics(1);
    let writes = |m: &prometheus_parse::Scrape| {
        metric(m, "netagent_store_writes_total", &[("result", "ok")])
    };
    assert!(
        writes(&after) > writes(&before),
        "creating a network is a store write: {} -> {}",
        writes(&before),
        writes(&after)
    );
    let ls = dk(&s, 1, &["network", "ls"]);
    let row = rows(&ls)
        .into_iter()
        .find(|r| r[1] == "X")
        .expect("X listed");
    assert_eq!(row, [&id[..12], "X", "overlay", "swarm"], "{ls}");
    assert!(s.ctl(1, &["network", "ls"]).contains(&id[..12]));
    let d = json(&dk(&s, 1, &["network", "inspect", "X"]));
    let n = json(&s.ctl(1, &["network", "inspect", "X"]));
    assert_eq!(d[0]["Id"], id.as_str());
    assert_eq!(d[0]["IPAM"]["Config"][0]["Subnet"], "10.9.0.0/24");
    assert_eq!(d[0]["Id"], n[0]["Id"]);
    assert_eq!(d[0]["IPAM"], n[0]["IPAM"]);

    // service create, following docker's progress display until converged.
    let reports = |i: usize| {
        metric(
            &s.metrics(i),
            "netagent_executor_task_reports_total",
            &[("state", "running")],
        )
    };
    let running_before: f64 = (1..=3).map(reports).sum();
    let out = dk(
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
            "X",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "80",
        ],
    );
    assert!(out.contains("verify: Service"), "{out}");
    assert!(out.contains("converged"), "{out}");
    let running_after: f64 = (1..=3).map(reports).sum();
    assert!(
        running_after >= running_before + 3.0,
        "three tasks reported running: {running_before} -> {running_after}"
    );
    let tasks = s.running(1, "web");
    assert_eq!(tasks.len(), 3, "{tasks:?}");
    // Each task is busybox's httpd, answering on port 80 of its address on X.
    let nss: Vec<_> = s
        .all_task_namespaces()
        .into_iter()
        .filter(|t| tasks.contains_key(&t.id))
        .collect();
    assert_eq!(nss.len(), 3);
    let ip = s.task_ip(&nss[1], "eth0").expect("task address on X");
    assert!(ip.to_string().starts_with("10.9.0."), "{ip}");
    s.wait("httpd of one task answers another", || {
        let out = s.in_task(
            &nss[0],
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "2",
                &format!("http://{ip}/"),
            ],
        );
        let code = String::from_utf8_lossy(&out.stdout).to_string();
        code.len() == 3 && code != "000"
    });

    // service ls / ps / inspect: the same objects as netctl's.
    let ls = dk(&s, 1, &["service", "ls"]);
    let row = rows(&ls)
        .into_iter()
        .find(|r| r[1] == "web")
        .expect("web listed");
    assert_eq!(row[2..5], ["replicated", "3/3", "busybox:latest"], "{ls}");
    let ours = rows(&s.ctl(1, &["service", "ls"]));
    let our_row = ours.iter().find(|r| r[1] == "web").unwrap();
    assert_eq!(row[0], our_row[0], "same service id");
    assert_eq!(our_row[3], "3/3");
    let ps_ids: BTreeSet<String> = dk(&s, 1, &["service", "ps", "-q", "web"])
        .lines()
        .map(|l| l.chars().take(12).collect())
        .collect();
    let our_ids: BTreeSet<String> = s
        .ctl(1, &["service", "ps", "-q", "web"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ps_ids, our_ids);
    let ps = dk(&s, 1, &["service", "ps", "web"]);
    assert_eq!(
        ps.matches("Running").count(),
        6,
        "desired and current: {ps}"
    );
    let d = json(&dk(&s, 1, &["service", "inspect", "web"]));
    let n = json(&s.ctl(1, &["service", "inspect", "web"]));
    assert_eq!(d[0]["ID"], n[0]["ID"]);
    assert_eq!(d[0]["Spec"], n[0]["Spec"]);
    let c = &d[0]["Spec"]["TaskTemplate"]["ContainerSpec"];
    assert_eq!(c["Image"], "busybox:latest", "returned as given: {c}");
    assert_eq!(c["Args"], serde_json::json!(["httpd", "-f", "-p", "80"]));
    assert_eq!(
        d[0]["Spec"]["TaskTemplate"]["Networks"][0]["Target"],
        id.as_str()
    );

    // scale, update, rm.
    let out = dk(&s, 1, &["service", "scale", "web=2"]);
    assert!(out.contains("converged"), "{out}");
    s.wait("two tasks of web run", || s.running(1, "web").len() == 2);
    let out = dk(
        &s,
        1,
        &["service", "update", "--env-add", "GREETING=hi", "web"],
    );
    assert!(out.contains("converged"), "{out}");
    let n = json(&s.ctl(1, &["service", "inspect", "web"]));
    assert_eq!(
        n[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"],
        serde_json::json!(["GREETING=hi"])
    );
    assert_eq!(n[0]["Spec"]["Mode"]["Replicated"]["Replicas"], 2);
    assert_eq!(
        n[0]["Spec"]["UpdateConfig"]["Parallelism"], 1,
        "docker's default"
    );
    // The CLI fills in its defaults for the other UpdateConfig fields: taken without a
    // warning, the parallelism kept.
    let out = docker(
        &s,
        1,
        &[
            "service",
            "update",
            "--detach",
            "--update-parallelism",
            "2",
            "web",
        ],
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && !said.contains("ignored"), "{said}");
    let n = json(&s.ctl(1, &["service", "inspect", "web"]));
    assert_eq!(n[0]["Spec"]["UpdateConfig"]["Parallelism"], 2);
    let rows_ps = parse_json_lines(&s.ctl(1, &["service", "ps", "--format", "json", "web"]));
    assert!(
        rows_ps
            .iter()
            .filter(|t| t["DesiredState"] == "Running")
            .count()
            == 2
    );

    // Bad requests: docker's error shape and code, and nothing changes.
    let services = s.ctl(1, &["service", "ls", "-q"]);
    let networks = s.ctl(1, &["network", "ls", "-q"]);
    for (method, path, body, code, says) in [
        ("GET", "/v1.99/nodes", "", 400, "too new"),
        ("GET", "/v1.12/nodes", "", 400, "too old"),
        (
            "POST",
            "/v1.41/services/create",
            r#"{"Name": 3}"#,
            400,
            "malformed request body",
        ),
        (
            "POST",
            "/v1.41/networks/create",
            r#"{"Name": "y", "Internal": "yes"}"#,
            400,
            "malformed request body",
        ),
        (
            "GET",
            "/v1.41/tasks?filters=%7B%22colour%22%3A%7B%22red%22%3Atrue%7D%7D",
            "",
            400,
            "invalid filter 'colour'",
        ),
        (
            "GET",
            "/v1.41/services?filters=%7B%22colour%22%3A%5B%22x%22%5D%7D",
            "",
            400,
            "invalid filter",
        ),
        (
            "POST",
            "/v1.41/services/web/update?version=1",
            r#"{"Name":"web","TaskTemplate":{"ContainerSpec":{"Image":"busybox"}}}"#,
            409,
            "out of sequence",
        ),
        ("GET", "/v1.41/no/such/route", "", 404, "page not found"),
    ] {
        let (status, text) = s.api(1, method, path, body);
        assert_eq!(status, code, "{method} {path}: {text}");
        let v = json(&text);
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(says)),
            "{method} {path}: {text}"
        );
    }
    assert_eq!(s.ctl(1, &["service", "ls", "-q"]), services);
    assert_eq!(s.ctl(1, &["network", "ls", "-q"]), networks);
    // `_ping` answers GET and HEAD with docker's headers, under every served version.
    for path in ["/_ping", "/v1.24/_ping", "/v1.41/_ping"] {
        let (status, text) = s.api(1, "GET", path, "");
        assert_eq!((status, text.as_str()), (200, "OK"), "{path}");
    }
    let head = s
        .lab
        .node(1)
        .run(&[
            "curl",
            "-sI",
            "--unix-socket",
            &sock(&s.lab, 1),
            "http://docker/_ping",
        ])
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(
        head.contains("api-version: 1.41") && head.contains("ostype: linux"),
        "{head}"
    );

    // Published ports are carried in docker's shapes.
    let out = docker(
        &s,
        1,
        &[
            "service", "create", "--detach", "--name", "pub", "-p", "8080:80", "busybox", "httpd",
            "-f", "-p", "80",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = json(&dk(&s, 1, &["service", "inspect", "pub"]));
    for ports in [
        &p[0]["Spec"]["EndpointSpec"]["Ports"],
        &p[0]["Endpoint"]["Ports"],
    ] {
        assert_eq!(ports[0]["PublishedPort"], 8080, "{p}");
        assert_eq!(ports[0]["TargetPort"], 80, "{p}");
        assert_eq!(ports[0]["Protocol"], "tcp", "{p}");
        assert_eq!(ports[0]["PublishMode"], "ingress", "{p}");
    }
    let ls = dk(&s, 1, &["service", "ls"]);
    assert!(ls.contains("*:8080->80/tcp"), "{ls}");
    dk(&s, 1, &["service", "rm", "pub"]);

    // service logs: the output of the tasks on the answering node, with docker's task prefix.
    dk(
        &s,
        1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "talker",
            "--constraint",
            "node.hostname==node1",
            "busybox",
            "sh",
            "-c",
            "echo hello from the task; sleep 3600",
        ],
    );
    s.wait("talker runs", || s.running(1, "talker").len() == 1);
    let mut logs = String::new();
    s.wait("docker service logs shows the task's output", || {
        logs = dk(&s, 1, &["service", "logs", "talker"]);
        logs.contains("hello from the task")
    });
    assert!(
        logs.contains("talker.1."),
        "prefixed with the task's name: {logs}"
    );
    let (code, text) = s.api(
        1,
        "GET",
        "/v1.41/services/talker/logs?stdout=1&follow=1",
        "",
    );
    assert_eq!(code, 400, "{text}");
    dk(&s, 1, &["service", "rm", "talker"]);

    let out = dk(&s, 1, &["service", "rm", "web"]);
    assert_eq!(out.trim(), "web");
    assert_eq!(s.ctl(1, &["service", "ls", "-q"]), "");
    s.wait("web's tasks are gone", || {
        s.all_task_namespaces().is_empty()
    });
    dk(&s, 1, &["network", "rm", "X"]);
    assert!(!s.ctl(1, &["network", "ls"]).contains(" X "));
}

#[test]
fn metrics_on_the_socket_and_on_tcp() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 1);
    s.wait("the executor made a pass", || {
        metric(
            &s.metrics(1),
            "netagent_executor_reconcile_passes_total",
            &[],
        ) > 0.0
    });
    let m = s.metrics(1);
    for name in [
        "netagent_raft_term",
        "netagent_raft_commit_index",
        "netagent_raft_apply_lag",
        "netagent_gossip_members",
        "netagent_store_write_seconds",
        "netagent_executor_reconcile_passes_total",
    ] {
        assert!(
            m.samples.iter().any(|x| x.metric == name),
            "{name} missing from the scrape"
        );
    }
    assert_eq!(metric(&m, "netagent_raft_leader", &[]), 1.0);
    assert_eq!(metric(&m, "netagent_raft_apply_lag", &[]), 0.0);
    s.wait("gossip sees both nodes", || {
        metric(&s.metrics(1), "netagent_gossip_members", &[]) == 2.0
    });
    // A worker has no Raft, but gossip and its executor.
    let w = s.metrics(2);
    assert_eq!(metric(&w, "netagent_raft_member", &[]), 0.0);
    assert!(metric(&w, "netagent_gossip_messages_sent_total", &[]) > 0.0);
    // The same text on TCP (--metrics-addr), from inside the node.
    let url = format!(
        "http://{}:{}/metrics",
        s.lab.node(2).addr(),
        common::METRICS_PORT
    );
    let out = s
        .lab
        .node(2)
        .run(&["curl", "-sf", "-m", "5", &url])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tcp = common::parse_metrics(&String::from_utf8_lossy(&out.stdout));
    assert!(
        tcp.samples
            .iter()
            .any(|x| x.metric == "netagent_gossip_members")
    );
    // Tasks by state move when a service runs.
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--name",
            "m",
            "--replicas",
            "2",
            "--",
            "sleep",
            "3600",
        ],
    );
    s.wait("two running tasks counted", || {
        metric(&s.metrics(1), "netagent_tasks", &[("state", "running")]) == 2.0
    });
}

#[test]
fn docker_cli_makes_and_changes_the_swarm() {
    if skip() {
        return;
    }
    let s = Swarm::agents(2);
    let addr1 = s.lab.node(1).addr().to_string();
    let out = dk(&s, 1, &["swarm", "init", "--advertise-addr", &addr1]);
    assert!(out.contains("Swarm initialized"), "{out}");
    let token = dk(&s, 1, &["swarm", "join-token", "-q", "worker"]);
    assert_eq!(token, s.ctl(1, &["swarm", "join-token", "-q", "worker"]));
    let out = dk(
        &s,
        2,
        &[
            "swarm",
            "join",
            "--token",
            token.trim(),
            &format!("{addr1}:2377"),
        ],
    );
    assert!(
        out.contains("This node joined a swarm as a worker"),
        "{out}"
    );
    s.wait("both nodes ready", || {
        s.nodes(1)
            .is_some_and(|n| n.len() == 2 && n.iter().all(|n| common::state(n) == "ready"))
    });

    // Rotation and settings through /swarm/update; netctl sees them.
    dk(&s, 1, &["swarm", "join-token", "--rotate", "worker"]);
    let rotated = s.ctl(1, &["swarm", "join-token", "-q", "worker"]);
    assert_ne!(rotated, token, "a new worker token");
    dk(
        &s,
        1,
        &["swarm", "update", "--dispatcher-heartbeat", "500ms"],
    );
    let cluster = json(&s.ctl(1, &["swarm", "inspect"]));
    assert_eq!(
        cluster[0]["Spec"]["Dispatcher"]["HeartbeatPeriod"],
        500_000_000u64
    );
    // What netagent cannot do is refused, not dropped.
    let out = docker(&s, 1, &["swarm", "update", "--autolock"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not supported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = docker(&s, 1, &["swarm", "unlock-key"]);
    assert!(!out.status.success(), "autolock is off: no key");

    // `docker swarm ca --rotate` (ForceRotate through /swarm/update) moves both nodes to a new
    // root; docker and netctl show the same root after.
    let root = dk(&s, 1, &["swarm", "ca"]);
    assert_eq!(root.trim(), s.ctl(1, &["swarm", "ca"]).trim());
    dk(&s, 1, &["swarm", "ca", "--rotate"]);
    s.wait("the rotation completes", || {
        let now = s.ctl(1, &["swarm", "ca"]);
        now != root
            && !s
                .ctl(1, &["swarm", "inspect"])
                .contains(r#""RootRotationInProgress": true"#)
    });
    let rotated_root = dk(&s, 1, &["swarm", "ca"]);
    assert_ne!(rotated_root, root);
    assert_eq!(rotated_root.trim(), s.ctl(1, &["swarm", "ca"]).trim());

    // A worker refuses manager commands as docker does; leave.
    let out = docker(&s, 2, &["node", "ls"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("This node is not a swarm manager"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = dk(&s, 2, &["swarm", "leave"]);
    assert!(out.contains("Node left the swarm"), "{out}");
    let info = dk(&s, 2, &["info"]);
    assert_eq!(field(&info, "Swarm:"), "inactive", "{info}");
}
