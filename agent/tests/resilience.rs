//! The data plane survives its agent (issue 16): 3 managers and a worker run a global service on
//! an overlay; a ping loop runs between tasks on different nodes while agents are killed with
//! SIGKILL (their kernels and tasks stay). Two of the three managers' agents down for 60 s
//! (quorum lost): node1's loop to node3's task loses nothing, and once they are back no node's
//! kernel state changed (0 kernel writes). Then the worker's agent killed while the cluster is
//! healthy (down for twice gossip's failure timeout, so gossip declares it dead, and back before
//! the leader's heartbeat grace would mark it down and replace its task): the loop from
//! node1 to the worker's task loses nothing, and its return changes nothing either. One swarm for
//! both (about 100 s of CI).

mod common;

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::tasks::TaskNs;
use common::*;

fn writes(s: &Swarm, i: usize) -> u64 {
    metric(&s.metrics(i), "netagent_executor_kernel_writes_total", &[]) as u64
}

/// Every node's kernel-write counter once none of them moves over 2 s.
fn steady_writes(s: &Swarm, nodes: &[usize]) -> Vec<u64> {
    let mut last: Vec<u64> = Vec::new();
    s.wait("every node's kernel writes steady", || {
        let now: Vec<u64> = nodes.iter().map(|&i| writes(s, i)).collect();
        let same = now == last;
        last = now;
        if !same {
            std::thread::sleep(Duration::from_secs(2));
        }
        same
    });
    last
}

/// `ping` from a task to an address, 5 per second for `secs` seconds (a count, not a deadline:
/// ping waits for the last replies instead of exiting at the deadline with one in flight).
struct PingLoop(Child);

impl PingLoop {
    fn start(s: &Swarm, from: &TaskNs, to: Ipv4Addr, secs: u64) -> PingLoop {
        let count = (secs * 5).to_string();
        let child = s
            .task_command(
                from,
                &[
                    "ping",
                    "-n",
                    "-i",
                    "0.2",
                    "-W",
                    "2",
                    "-c",
                    &count,
                    &to.to_string(),
                ],
            )
            .expect("ping command")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ping");
        PingLoop(child)
    }

    /// Waits for the end of the loop: (sent, received, ping's summary).
    fn finish(self) -> (u64, u64, String) {
        let out = self.0.wait_with_output().expect("ping output");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let summary = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_default()
            .to_string();
        let num = |what: &str| -> u64 {
            summary
                .split(", ")
                .find(|p| p.contains(what))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        (num("transmitted"), num("received"), text)
    }
}

#[test]
fn killed_agents_cut_no_traffic_and_change_nothing_when_back() {
    if skip() {
        return;
    }
    // Heartbeats of 3 s (down after 9 s of silence): a worker's agent restarted within a few
    // seconds is not marked down (its tasks would be replaced otherwise, as docker does).
    let s = Swarm::start_with(3, 1, &[("--heartbeat-ms", "3000")]);
    s.ctl(1, &["network", "create", "--driver", "overlay", "web"]);
    s.create_service(&[
        "--name",
        "w",
        "--mode",
        "global",
        "--network",
        "web",
        "--",
        "sleep",
        "3600",
    ]);
    let tasks = s.task_nss("w", 4);
    let on = |n: usize| tasks.iter().find(|t| t.node == n).expect("a task per node");
    let (t1, t3, t4) = (on(1), on(3), on(4));
    let ip3 = s.task_ip(t3, "eth0").expect("node3's task address");
    let ip4 = s.task_ip(t4, "eth0").expect("node4's task address");
    s.wait("node1's task reaches node3's and node4's", || {
        s.task_pings(t1, ip3) && s.task_pings(t1, ip4)
    });
    let all = [1, 2, 3, 4];
    let before = steady_writes(&s, &all);
    let all_ready = |s: &Swarm| {
        s.nodes(1)
            .is_some_and(|n| n.len() == 4 && n.iter().all(|n| state(n) == "ready"))
    };

    // 1. Two of three managers' agents killed for 60 s: quorum lost, tasks intact.
    let ping = PingLoop::start(&s, t1, ip3, 70);
    s.kill(2);
    s.kill(3);
    std::thread::sleep(Duration::from_secs(60));
    s.restart(2);
    s.restart(3);
    s.wait("a leader and every node ready again", || all_ready(&s));
    let (sent, received, out) = ping.finish();
    eprintln!("managers down 60 s: {sent} pings sent, {received} answered");
    assert!(sent >= 300, "the loop ran: {out}");
    assert_eq!(received, sent, "the loop lost nothing: {out}");
    let after = steady_writes(&s, &all);
    assert_eq!(
        after,
        [before[0], 0, 0, before[3]],
        "no kernel write on any node (restarted agents count from 0)"
    );

    // 2. The worker's agent killed while the cluster is healthy, down past gossip's failure
    // timeout (its peers see it dead), then back.
    let before = after;
    let ping = PingLoop::start(&s, t1, ip4, 12);
    s.kill(4);
    std::thread::sleep(Duration::from_secs(3));
    s.restart(4);
    s.wait("the worker ready again", || all_ready(&s));
    let (sent, received, out) = ping.finish();
    eprintln!("worker down: {sent} pings sent, {received} answered");
    assert!(sent >= 50, "the loop ran: {out}");
    assert_eq!(received, sent, "the loop lost nothing: {out}");
    let after = steady_writes(&s, &all);
    assert_eq!(
        after,
        [before[0], before[1], before[2], 0],
        "no kernel write on any node (the restarted agent counts from 0)"
    );
    assert_eq!(s.running(1, "w").len(), 4, "no task was replaced");
}
