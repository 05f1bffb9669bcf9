//! Service load balancing end to end (issue 11): a service's VIP answers on every node, also one
//! that runs no task of it, spreads TCP and UDP over the running tasks, follows scale-downs and
//! killed tasks, and keeps working through an agent restart. The clients run inside task
//! namespaces and cgroups (where the node's load balancer sees their sockets), the servers are
//! the tasks themselves (tests/lb/server.py). The agents' `--lb` is NETAGENT_LB (default auto:
//! eBPF on this host); `cargo xtask test-kernel netagent/lb` runs these tests under Debian's 6.1
//! kernel twice, with NETAGENT_LB=ipvs and with NETAGENT_LB=ebpf. Every test applies to both.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::tasks::TaskNs;
use common::{Swarm, metric, skip};
use serde_json::Value;

const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lb/server.py");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lb/client.py");
const PYTHON: &str = "/usr/bin/python3";

/// Runs the client in a task: one JSON result.
fn client(s: &Swarm, t: &TaskNs, args: &[&str]) -> Value {
    let mut argv = vec![PYTHON, CLIENT];
    argv.extend_from_slice(args);
    let out = s.in_task(t, &argv);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "client {args:?} in {}: {e}: {text} {}",
            t.ns,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn backends(v: &Value, field: &str) -> BTreeSet<String> {
    v[field]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// A long-running client (`client.py hold`) driven line by line.
struct Holder {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Holder {
    fn start(s: &Swarm, t: &TaskNs, vip: &str, k: usize) -> (Holder, Value) {
        let k = k.to_string();
        let mut cmd = s
            .task_command(t, &[PYTHON, CLIENT, "hold", vip, "7000", &k])
            .expect("client command");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the client");
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut h = Holder { child, out };
        let ready = h.read();
        (h, ready)
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("client output");
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("client said {line:?}: {e}"))
    }

    fn ask(&mut self, cmd: &str) -> Value {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        if cmd == "loop" {
            return Value::Null;
        }
        self.read()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The load-balancer gauges of a node: web's and empty's VIPs at least (every node holds every
/// VIP of its networks), web's three tasks, one mode label.
fn lb_gauges(m: &prometheus_parse::Scrape, node: usize) {
    let modes: BTreeSet<&str> = m
        .samples
        .iter()
        .filter(|x| x.metric.starts_with("netagent_lb_"))
        .filter_map(|x| x.labels.get("mode"))
        .collect();
    assert!(
        modes.len() == 1 && modes.is_subset(&BTreeSet::from(["ebpf", "ipvs"])),
        "node{node}: {modes:?}"
    );
    let services = metric(m, "netagent_lb_services", &[]);
    let backends = metric(m, "netagent_lb_backends", &[]);
    assert!(
        services >= 2.0 && backends >= 3.0,
        "node{node}: {services} {backends}"
    );
}

#[test]
fn vips_balance_tcp_and_udp_on_every_node() {
    if skip() {
        return;
    }
    let s = Swarm::start_with(1, 3, &common::kernel_lab_flags());
    let spare = s.lab.node(4).name().to_string();
    s.ctl(1, &["network", "create", "--driver", "overlay", "front"]);
    let not_spare = format!("node.hostname!={spare}");
    s.create_service(&[
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "front",
        "--constraint",
        &not_spare,
        "--",
        PYTHON,
        SERVER,
        "80",
        "8080",
    ]);
    s.create_service(&[
        "--name",
        "client",
        "--mode",
        "global",
        "--network",
        "front",
        "--",
        "sleep",
        "3600",
    ]);
    s.create_service(&[
        "--name",
        "empty",
        "--replicas",
        "0",
        "--network",
        "front",
        "--",
        "sleep",
        "3600",
    ]);
    let web = s.task_nss("web", 3);
    let clients = s.task_nss("client", 4);
    let web_ips = s.task_ips(&web, "eth0");
    let vip = s.vip("web");
    let empty_vip = s.vip("empty");
    assert!(
        !web.iter().any(|t| t.node == 4),
        "node4 runs no web task: {web:?}"
    );

    // Under TCG (the kernel lab) fewer: a multiple of 3 still shows round robin exactly.
    let requests = if common::in_kernel_lab() { "90" } else { "300" };
    for c in &clients {
        s.wait(&format!("the VIP answers on node{}", c.node), || {
            client(&s, c, &["http", &vip, "80", "10"])["ok"] == 10
        });
        let balanced = |n| metric(&s.metrics(n), "netagent_lb_balanced_total", &[]);
        let before = balanced(c.node);
        let r = client(&s, c, &["http", &vip, "80", requests]);
        println!("node{}: {requests} requests to http://{vip}/: {r}", c.node);
        assert_eq!(r["fail"], 0, "no request failed from node{}: {r}", c.node);
        // eBPF: each request is a connection this node's load balancer gave a task. IPVS counts
        // its connection entries (published every 2 s: waited for), and with Docker's
        // conn_reuse_mode=0 a new connection on a recently used source port reuses an entry
        // without counting (seen: 282 of 310 on one node): there the counter must move.
        let ok = r["ok"].as_f64().unwrap_or_default();
        let want = if common::lb_mode() == "ipvs" { 1.0 } else { ok };
        s.wait(
            &format!("node{}'s balanced_total counts the requests", c.node),
            || balanced(c.node) - before >= want,
        );
        println!(
            "node{}: netagent_lb_balanced_total {before} -> {}",
            c.node,
            balanced(c.node)
        );
        lb_gauges(&s.metrics(c.node), c.node);
        assert_eq!(
            backends(&r, "backends"),
            web_ips,
            "node{} reached every task",
            c.node
        );
        // A VIP forwards every port to the same port on a task.
        let r = client(&s, c, &["http", &vip, "8080", "30"]);
        assert_eq!(r["ok"], 30, "port 8080 through the VIP: {r}");
        // UDP both ways: the replies come from the VIP, as the client addressed it.
        let r = client(&s, c, &["udp", &vip, "9999", "50"]);
        assert_eq!(r["ok"], 50, "UDP through the VIP from node{}: {r}", c.node);
        assert_eq!(r["bad_source"], serde_json::json!([]), "{r}");
        assert!(backends(&r, "backends").is_subset(&web_ips), "{r}");
        // Operators check a VIP with ping; it answers as in Docker.
        assert!(
            s.task_pings(c, vip.parse().unwrap()),
            "ping {vip} from node{}",
            c.node
        );
        // A service without a running task refuses at once; nothing hangs.
        let refused = |n| metric(&s.metrics(n), "netagent_lb_refused_total", &[]);
        let before = refused(c.node);
        let r = client(&s, c, &["http", &empty_vip, "80", "1"]);
        assert_eq!(r["fail"], 1, "{r}");
        let after = refused(c.node);
        assert!(
            after > before,
            "node{} counted the refusal: {before} -> {after}",
            c.node
        );
        let errors = r["errors"].to_string().to_lowercase();
        assert!(
            !errors.contains("timed out"),
            "a VIP without tasks refuses, it does not hang: {r}"
        );
    }
    // A real client too.
    let c4 = clients.iter().find(|c| c.node == 4).unwrap();
    let url = format!("http://{vip}/");
    let out = s.in_task(c4, &["curl", "-sS", "--max-time", "5", &url]);
    let body = String::from_utf8_lossy(&out.stdout);
    let first = body.split_whitespace().next().unwrap_or("");
    assert!(
        web_ips.contains(first),
        "curl {url} from node4: {body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn scale_down_killed_task_and_agent_restart() {
    if skip() {
        return;
    }
    // The killed task's replacement comes after the loop: it would refuse connections until
    // its server listens (as in Docker without health checks), which is not what is measured.
    let mut flags = common::kernel_lab_flags();
    flags.push(("--restart-delay-ms", "60000"));
    let s = Swarm::start_with(1, 2, &flags);
    s.ctl(1, &["network", "create", "--driver", "overlay", "front"]);
    s.create_service(&[
        "--name",
        "web",
        "--replicas",
        "3",
        "--network",
        "front",
        "--",
        PYTHON,
        SERVER,
        "7000",
    ]);
    s.create_service(&[
        "--name",
        "client",
        "--mode",
        "global",
        "--network",
        "front",
        "--",
        "sleep",
        "3600",
    ]);
    s.task_nss("web", 3);
    let clients = s.task_nss("client", 3);
    let vip = s.vip("web");
    let c1 = clients.iter().find(|c| c.node == 1).unwrap().clone();
    s.wait("the VIP answers", || {
        client(&s, &c1, &["http", &vip, "7000", "5"])["ok"] == 5
    });

    let (mut h, ready) = Holder::start(&s, &c1, &vip, 3);
    // An agent restart during a request loop: no failed connection, nothing rewritten.
    let writes = |i: usize| -> u64 {
        common::metric(&s.metrics(i), "netagent_executor_kernel_writes_total", &[]) as u64
    };
    // The restart fits in the dispatcher's grace (3 heartbeats), as in production.
    // (3 s in the kernel lab, where an agent start under TCG takes seconds.)
    let heartbeat = if common::kernel_lab_flags().is_empty() {
        "1s"
    } else {
        "3s"
    };
    s.ctl(1, &["swarm", "update", "--dispatcher-heartbeat", heartbeat]);
    h.ask("loop");
    s.agents[0].stop(Duration::from_secs(10));
    s.restart(1);
    s.wait("node1's agent has its swarm back", || {
        s.nodes(1)
            .map(|n| n.iter().all(|n| common::state(n) == "ready"))
            .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_secs(3));
    let r = h.ask("stop");
    let events = r["loop"].as_array().unwrap();
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e[1].as_str().unwrap().starts_with("FAIL"))
        .collect();
    println!(
        "agent restart: {} connections through the VIP, {} failed",
        events.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "no connection failed: {failed:?}");
    assert_eq!(
        writes(1),
        0,
        "a restart with unchanged state writes nothing (load balancer included)"
    );

    // Scale 3 -> 1: the connection open to the remaining task survives, new ones go to it only.
    let held: BTreeSet<String> = ready["ready"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(held.len(), 3, "connections open to all 3 tasks: {ready}");
    s.ctl(1, &["service", "scale", "--detach", "web=1"]);
    let rest = s.task_nss("web", 1);
    let remaining = s.task_ip(&rest[0], "eth0").unwrap().to_string();
    s.wait("new connections go to the remaining task only", || {
        let r = h.ask("new 20");
        r["fail"] == 0 && backends(&r, "new") == BTreeSet::from([remaining.clone()])
    });
    let r = h.ask("new 100");
    assert_eq!(r["fail"], 0, "{r}");
    assert_eq!(backends(&r, "new"), BTreeSet::from([remaining.clone()]));
    let check = h.ask("check");
    assert_eq!(
        check["check"][&remaining], true,
        "the connection to the remaining task survived the scale-down: {check}"
    );

    // A killed task: measured how long new connections still failed.
    s.ctl(1, &["service", "scale", "--detach", "web=3"]);
    let web = s.task_nss("web", 3);
    let all = s.task_ips(&web, "eth0");
    s.wait("all 3 tasks are backends again", || {
        backends(&h.ask("new 30"), "new") == all
    });
    let victim = web.iter().find(|t| t.node == 2).unwrap_or(&web[0]).clone();
    let victim_ip = s.task_ip(&victim, "eth0").unwrap().to_string();
    h.ask("loop");
    std::thread::sleep(Duration::from_millis(500));
    // The task's process is killed (`kill -9`, an OOM kill); its shim lives on to record the exit.
    let pid = s.task_command_pid(&victim).expect("the killed task's pid");
    // When the kill happened on the loop's time line (the client reports its start as Unix time).
    let killed_at = unix_ms();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the task's process");
    std::thread::sleep(Duration::from_secs(5));
    let r = h.ask("stop");
    let events = r["loop"].as_array().unwrap().clone();
    let kill_ms = (killed_at - r["start_ms"].as_f64().unwrap()).round() as i64;
    // A new connection that did not reach a live task: refused by the killed one, or sent to it.
    let misses: Vec<i64> = events
        .iter()
        .filter(|e| {
            let b = e[1].as_str().unwrap();
            b.starts_with("FAIL") || b == victim_ip
        })
        .map(|e| e[0].as_i64().unwrap())
        .filter(|t| *t >= kill_ms)
        .collect();
    let last_miss = misses.iter().max().copied();
    let window = last_miss.map_or(0, |t| t - kill_ms);
    println!(
        "killed task: {} connections in the loop, {} after the kill missed, the last {window} ms \
         after the kill (lb {})",
        events.len(),
        misses.len(),
        common::lb_mode()
    );
    let end = events.last().map(|e| e[0].as_i64().unwrap()).unwrap_or(0);
    assert!(
        last_miss.is_none_or(|t| t < end - 2000),
        "connections failed until the end of the loop: {misses:?}"
    );
    // Its shim recorded the exit: the task is reported failed (and replaced after the delay).
    s.wait("the killed task is reported failed", || {
        s.service_ps(1, "web").iter().any(|t| {
            t["ID"] == victim.id.as_str()
                && t["CurrentState"]
                    .as_str()
                    .is_some_and(|st| st.starts_with("Failed"))
        })
    });
}

/// Now as Unix time in milliseconds.
fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}
