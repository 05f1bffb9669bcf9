//! The ingress routing mesh end to end (issue 12): 3 agents (node1 manager, node2 and node3
//! workers) and a client namespace on the underlay (lab node 4, no agent). A service of 2 tasks
//! on node1 and node2 published 8080:80 answers through every node, also node3 which runs none
//! of its tasks; both tasks answer; each task sees (and logs) the client's own underlay address;
//! refusals are clear and change nothing; removing the service removes the nodes' tables; the
//! host namespace is untouched.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use common::{Swarm, agent_spec, skip};
use lab::{Lab, host_snapshot};

/// Every task serves `task=NAME peer=ADDR` at /cgi-bin/who (busybox httpd's CGI) and logs the
/// client's address on stderr.
const WEB: &str = r#"mkdir -p www/cgi-bin && printf '#!/bin/sh\necho "client $REMOTE_ADDR" >&2\nprintf "Content-Type: text/plain\\r\\n\\r\\ntask=%%s peer=%%s\\n" "$NETAGENT_TASK_NAME" "$REMOTE_ADDR"\n' > www/cgi-bin/who && chmod +x www/cgi-bin/who && exec busybox httpd -f -p 80 -h www"#;

/// A 3-agent swarm in a 4-node lab: node 4 is the client.
fn swarm_with_client() -> Swarm {
    let lab = Lab::new(4).expect("lab");
    let agents = (1..=3)
        .map(|i| {
            lab.node(i)
                .spawn(agent_spec(&lab, i))
                .expect("spawn netagent")
        })
        .collect();
    let s = Swarm { lab, agents };
    for i in 1..=3 {
        s.wait(&format!("agent {i} API"), || {
            s.netctl(i, &["info"]).status.success()
        });
    }
    s.form(1, 2);
    s
}

/// One HTTP GET of /cgi-bin/who from the client: the answer's `task=.. peer=..` line.
fn who(s: &Swarm, addr: Ipv4Addr, port: u16) -> Result<String, String> {
    s.lab
        .node(4)
        .in_ns(move || {
            let to = SocketAddr::from((addr, port));
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(3))
                .map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            c.write_all(b"GET /cgi-bin/who HTTP/1.0\r\nHost: x\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut body = String::new();
            c.read_to_string(&mut body).map_err(|e| e.to_string())?;
            body.lines()
                .find(|l| l.starts_with("task="))
                .map(str::to_string)
                .ok_or_else(|| format!("no answer line in {body:?}"))
        })
        .expect("client namespace")
}

/// The mesh's tables on every node and in every sbox, for failure messages.
fn diag(s: &Swarm) -> String {
    let mut out = String::new();
    for i in 1..=3 {
        let node = s.lab.node(i);
        out += &format!("== node{i}\n{}", node.sh("nft list table ip netagent_ingress; ls /run/netns | grep -- \"-n$(hostname)\" ; true").unwrap_or_default());
        for ns in netns::list().unwrap_or_default() {
            if ns.starts_with(&format!("{}-n{i}-lb-", s.lab.prefix()))
                || ns.starts_with(&format!("{}-n{i}-t-", s.lab.prefix()))
            {
                let o = std::process::Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &ns,
                        "sh",
                        "-c",
                        "ip -br a; ip rule; nft list ruleset; cat /proc/net/nf_conntrack | tail -5",
                    ])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                out += &format!("-- {ns}\n{o}");
            }
        }
    }
    out
}

/// `count` requests through `addr:port`: (tasks that answered, peers they saw, failures).
fn load(
    s: &Swarm,
    addr: Ipv4Addr,
    port: u16,
    count: usize,
) -> (BTreeSet<String>, BTreeSet<String>, Vec<String>) {
    let mut tasks = BTreeSet::new();
    let mut peers = BTreeSet::new();
    let mut failed = Vec::new();
    for _ in 0..count {
        match who(s, addr, port) {
            Ok(line) => {
                for f in line.split_whitespace() {
                    if let Some(t) = f.strip_prefix("task=") {
                        tasks.insert(t.split('.').take(2).collect::<Vec<_>>().join("."));
                    }
                    if let Some(p) = f.strip_prefix("peer=") {
                        peers.insert(p.to_string());
                    }
                }
            }
            Err(e) => failed.push(e),
        }
    }
    (tasks, peers, failed)
}

/// Node `i`'s first task namespace and its address on the ingress network (`ingress`: the
/// subnet's prefix, e.g. "10.0.0.").
fn task_on_ingress(s: &Swarm, i: usize, ingress: &str) -> (common::tasks::TaskNs, Ipv4Addr) {
    let t = s
        .task_namespaces(i)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("a task on node{i}"));
    let addr = (0..4)
        .filter_map(|k| s.task_ip(&t, &format!("eth{k}")))
        .find(|a| a.to_string().starts_with(ingress))
        .unwrap_or_else(|| panic!("the task on node{i} has no ingress address"));
    (t, addr)
}

/// What the resolver of a task answers for `dig +short ARGS`, one answer a line.
fn dig_from_task(s: &Swarm, t: &common::tasks::TaskNs, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["dig", "@127.0.0.11", "+time=5", "+tries=2", "+short"];
    argv.extend_from_slice(args);
    let out = s.in_task(t, &argv);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect()
}

/// Docker leaves the ingress network out of service discovery: a task's names answer its
/// addresses on its user networks only, and an ingress address has no name.
fn no_ingress_names(s: &Swarm, i: usize, names: &[&str], ingress: &str) {
    let (t, addr) = task_on_ingress(s, i, ingress);
    for name in names {
        let answer = dig_from_task(s, &t, &[name]);
        eprintln!("dig {name} from a task on node{i}: {answer:?}");
        assert!(
            answer.iter().all(|a| !a.starts_with(ingress)),
            "{name} resolves to an ingress address from node{i}: {answer:?}"
        );
    }
    let ptr = dig_from_task(s, &t, &["-x", &addr.to_string()]);
    assert!(
        ptr.is_empty(),
        "the ingress address {addr} has a name from node{i}: {ptr:?}"
    );
}

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

    let node3 = common::hostname_of(
        &s.nodes(1)
            .unwrap()
            .into_iter()
            .find(|n| n["Status"]["Addr"] == s.lab.node(3).addr().to_string())
            .expect("node3 listed"),
    );
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
    // With the eBPF shortcut (on where the kernel has TCX, as the fast path), connections
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

/// The MTU of every interface holding an address in `subnet_prefix` (e.g. "10.0.0.") in the
/// namespaces of lab node `i` (its sbox, its tasks, its ingress sandbox's bridge).
fn ingress_mtus(s: &Swarm, i: usize, subnet_prefix: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let prefix = format!("{}-n{i}-", s.lab.prefix());
    for ns in netns::list().unwrap_or_default() {
        if !ns.starts_with(&prefix) {
            continue;
        }
        let Ok(n) = netns::NetNs::open(&ns) else {
            continue;
        };
        let Ok(o) = n.command("ip").args(["-o", "-4", "addr", "show"]).output() else {
            continue;
        };
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 && f[3].starts_with(subnet_prefix) {
                let dev = f[1].to_string();
                let link = n
                    .command("ip")
                    .args(["-o", "link", "show", "dev", &dev])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                let from_link = link
                    .split_whitespace()
                    .skip_while(|w| *w != "mtu")
                    .nth(1)
                    .and_then(|m| m.parse().ok());
                out.push((format!("{ns}/{dev}"), from_link.unwrap_or(0)));
            }
        }
    }
    out
}

/// Requests through every node in a loop while `f` runs: (failed, total). Prints, per node,
/// when requests failed (seconds after `f` began: the first and last failure), so a report of
/// lost requests says how long the port was down and where.
fn under_load(s: &Swarm, port: u16, f: impl FnOnce()) -> (usize, usize) {
    /// Stops the loop also when `f` panics (else the scope would wait for it forever).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let t0 = std::time::Instant::now();
    std::thread::scope(|sc| {
        let looper = sc.spawn(|| {
            let (mut failed, mut total) = (0, 0);
            let mut spans: [Option<(f64, f64, usize)>; 3] = [None; 3];
            let mut slowest = (0f64, 0, 0f64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for i in 1..=3 {
                    total += 1;
                    let asked = std::time::Instant::now();
                    let answer = who(s, s.lab.node(i).addr(), port);
                    let took = asked.elapsed().as_secs_f64();
                    if took > slowest.0 {
                        slowest = (took, i, t0.elapsed().as_secs_f64() - took);
                    }
                    if answer.is_err() {
                        failed += 1;
                        let at = t0.elapsed().as_secs_f64();
                        let span = spans[i - 1].get_or_insert((at, at, 0));
                        span.1 = at;
                        span.2 += 1;
                    }
                }
            }
            for (i, span) in spans.iter().enumerate() {
                if let Some((first, last, n)) = span {
                    eprintln!(
                        "  through node{}: {n} failed, from {first:.2} s to {last:.2} s",
                        i + 1
                    );
                }
            }
            eprintln!(
                "  the slowest request took {:.2} s (through node{}, sent {:.2} s in)",
                slowest.0, slowest.1, slowest.2
            );
            (failed, total)
        });
        {
            let _stop = Stop(&stop);
            f();
            eprintln!(
                "  the change and its convergence took {:.2} s",
                t0.elapsed().as_secs_f64()
            );
        }
        looper.join().unwrap()
    })
}

#[test]
fn ingress_recreate_keeps_published_ports_answering() {
    if skip() {
        return;
    }
    let before = host_snapshot();
    let s = swarm_with_client();
    let node3 = common::hostname_of(
        &s.nodes(1)
            .unwrap()
            .into_iter()
            .find(|n| n["Status"]["Addr"] == s.lab.node(3).addr().to_string())
            .expect("node3 listed"),
    );
    s.ctl(
        1,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "web",
            "--mode",
            "global",
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
    let converged = |what: &str| {
        for i in 1..=3 {
            s.wait(
                &format!("{what}: both tasks answer through node{i}"),
                || {
                    let (tasks, _, failed) = load(&s, s.lab.node(i).addr(), 8080, 10);
                    failed.is_empty() && tasks.len() == 2
                },
            );
        }
    };
    converged("published");
    // The service is on ingress only: its names answer nothing there.
    no_ingress_names(&s, 1, &["tasks.web", "web"], "10.0.0.");

    // In place: the MTU changes on every live ingress interface, nothing restarts.
    let (failed, total) = under_load(&s, 8080, || {
        let out = s.ctl(1, &["ingress", "recreate", "--mtu", "1200"]);
        assert!(out.contains("changed in place"), "{out}");
        for i in 1..=3 {
            s.wait(&format!("MTU 1200 on node{i}'s ingress interfaces"), || {
                let m = ingress_mtus(&s, i, "10.0.0.");
                !m.is_empty() && m.iter().all(|(_, mtu)| *mtu == 1200)
            });
        }
        std::thread::sleep(Duration::from_secs(1));
    });
    eprintln!("ingress recreate --mtu 1200: {failed} of {total} requests failed");
    let ing: serde_json::Value =
        serde_json::from_str(&s.ctl(1, &["network", "inspect", "ingress"])).unwrap();
    assert_eq!(
        ing[0]["Options"]["com.docker.network.driver.mtu"], "1200",
        "{ing}"
    );
    for i in 1..=3 {
        let m = ingress_mtus(&s, i, "10.0.0.");
        assert!(m.iter().all(|(_, mtu)| *mtu == 1200), "node{i}: {m:?}");
    }
    converged("after the MTU change");

    // A new subnet: a new network, the tasks moved to it.
    let (failed, total) = under_load(&s, 8080, || {
        let out = s.ctl(
            1,
            &[
                "ingress",
                "recreate",
                "--mtu",
                "1200",
                "--subnet",
                "10.99.0.0/24",
            ],
        );
        assert!(out.contains("created"), "{out}");
        assert!(out.contains("old ingress network"), "{out}");
        converged("moved to 10.99.0.0/24");
    });
    eprintln!("ingress recreate --subnet 10.99.0.0/24: {failed} of {total} requests failed");
    // The old network is gone, and with it every node's and task's interface on it; one
    // ingress network is left.
    let (code, body) = s.api(1, "GET", "/networks", "");
    assert_eq!(code, 200, "{body}");
    let nets: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let ingress: Vec<&serde_json::Value> = nets.iter().filter(|n| n["Ingress"] == true).collect();
    assert_eq!(ingress.len(), 1, "{nets:?}");
    for i in 1..=3 {
        s.wait(
            &format!("node{i} has no interface on the old subnet"),
            || ingress_mtus(&s, i, "10.0.0.").is_empty(),
        );
    }
    let ing: serde_json::Value =
        serde_json::from_str(&s.ctl(1, &["network", "inspect", "ingress"])).unwrap();
    assert_eq!(
        ing[0]["IPAM"]["Config"][0]["Subnet"], "10.99.0.0/24",
        "{ing}"
    );
    for i in 1..=3 {
        let m = ingress_mtus(&s, i, "10.99.0.");
        assert!(
            !m.is_empty() && m.iter().all(|(_, mtu)| *mtu == 1200),
            "node{i}: {m:?}"
        );
    }

    // A rolling update (docker's default parallelism, 1): one node's task at a time, the port
    // answered by the other meanwhile.
    let (failed, total) = under_load(&s, 8080, || {
        s.ctl(1, &["service", "update", "--env-add", "ROLLED=1", "web"]);
        converged("updated");
    });
    eprintln!("service update (rolling, parallelism 1): {failed} of {total} requests failed");
    let (code, body) = s.api(1, "GET", "/tasks", "");
    assert_eq!(code, 200, "{body}");
    let tasks: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let at = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{v}: {e}"))
    };
    let mut rolled: Vec<_> = tasks
        .iter()
        .filter(|t| {
            t["DesiredState"] == "running"
                && t["Spec"]["ContainerSpec"]["Env"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e == "ROLLED=1"))
        })
        .map(|t| {
            (
                at(&t["CreatedAt"]),
                at(&t["Status"]["Timestamp"]),
                t["Status"]["State"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    rolled.sort();
    assert_eq!(rolled.len(), 2, "{rolled:?}");
    assert!(rolled.iter().all(|r| r.2 == "running"), "{rolled:?}");
    assert!(
        rolled[1].0 >= rolled[0].1,
        "the second task was replaced only once the first replacement ran: {rolled:?}"
    );

    // One replica: start-first, the old task serves until its replacement runs.
    s.ctl(
        1,
        &[
            "service", "create", "--detach", "--name", "solo", "-p", "8081:80", "--", "sh", "-c",
            WEB,
        ],
    );
    for i in 1..=3 {
        s.wait(&format!("solo answers through node{i}"), || {
            who(&s, s.lab.node(i).addr(), 8081).is_ok()
        });
    }
    let inspect: serde_json::Value =
        serde_json::from_str(&s.ctl(1, &["service", "inspect", "solo"])).unwrap();
    let id = inspect[0]["ID"].clone();
    let solo_tasks = || -> Vec<serde_json::Value> {
        let (code, body) = s.api(1, "GET", "/tasks", "");
        assert_eq!(code, 200, "{body}");
        let tasks: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        tasks.into_iter().filter(|t| t["ServiceID"] == id).collect()
    };
    // The status report travels through Raft, the endpoint through gossip: the task may
    // answer before the store says it runs (a task not running yet is replaced at once).
    s.wait("the store has solo's task running", || {
        solo_tasks()
            .iter()
            .any(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
    });
    // At some moment the old task and its replacement both run and are both wanted running
    // (stop-first, the old one is wanted shut down before the new one exists).
    let mut both = false;
    let (failed, total) = under_load(&s, 8081, || {
        s.ctl(
            1,
            &[
                "service",
                "update",
                "--detach",
                "--env-add",
                "ROLLED=1",
                "solo",
            ],
        );
        s.wait("solo's old task has stopped", || {
            let tasks = solo_tasks();
            let running = |t: &&serde_json::Value| {
                t["DesiredState"] == "running" && t["Status"]["State"] == "running"
            };
            both |= tasks.iter().filter(running).count() == 2;
            tasks
                .iter()
                .any(|t| t["DesiredState"] != "running" && t["Status"]["State"] == "shutdown")
        });
    });
    eprintln!("service update of one replica: {failed} of {total} requests failed");
    assert!(both, "the old task served until its replacement ran");
    drop(s);
    assert_eq!(
        host_snapshot(),
        before,
        "the test changed the host's namespace"
    );
}
