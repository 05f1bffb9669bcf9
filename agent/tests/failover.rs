//! Leader failure and crash recovery: a client writes continuously through the API while the
//! leader and then a follower are killed with SIGKILL and restarted; a new leader takes over, the
//! old leader comes back as a follower, and every acknowledged write is on every manager at the
//! end.

mod common;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::allocations::Allocations;
use common::*;

#[test]
fn leader_killed_and_no_acknowledged_write_lost() {
    if skip() {
        return;
    }
    let s = Swarm::start(3, 0);
    let managers = [1usize, 2, 3];
    let alive: Vec<AtomicBool> = (0..3).map(|_| AtomicBool::new(true)).collect();
    let acked = Mutex::new(Vec::<usize>::new());
    let attempts = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);

    std::thread::scope(|scope| {
        // The writer: label w<i> on node2's object, through whichever manager is up.
        scope.spawn(|| {
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) && i < 5_000 {
                i += 1;
                attempts.fetch_add(1, Ordering::SeqCst);
                let m = managers[i % 3];
                if !alive[m - 1].load(Ordering::SeqCst) {
                    continue;
                }
                let label = format!("w{i}=x");
                let out = s.netctl(m, &["node", "update", "--label-add", &label, "node2"]);
                if out.status.success() {
                    acked.lock().unwrap().push(i);
                }
            }
        });
        let count = || acked.lock().unwrap().len();
        s.wait("writes flowing", || count() >= 20);

        // Kill the leader.
        let old = s.leader(&managers).expect("a leader");
        alive[old - 1].store(false, Ordering::SeqCst);
        s.kill(old);
        let others: Vec<usize> = managers.iter().copied().filter(|&m| m != old).collect();
        s.wait("a new leader", || {
            s.leader(&others).is_some_and(|l| l != old)
        });
        let before = count();
        s.wait("writes succeed again", || count() >= before + 20);

        // The old leader comes back as a follower, with its state.
        s.restart(old);
        alive[old - 1].store(true, Ordering::SeqCst);
        s.wait("the old leader rejoins as a follower", || {
            s.nodes(old).is_some_and(|nodes| {
                nodes.iter().any(|n| {
                    n["ManagerStatus"]["Leader"] == true && hostname_of(n) != format!("node{old}")
                }) && nodes.iter().all(|n| reachability(n) == "reachable")
            })
        });

        // kill -9 of a follower, restarted at once.
        let leader = s.leader(&managers).expect("a leader");
        let follower = *managers.iter().find(|&&m| m != leader).unwrap();
        alive[follower - 1].store(false, Ordering::SeqCst);
        s.kill(follower);
        let before = count();
        s.wait("writes continue without the follower", || {
            count() >= before + 10
        });
        s.restart(follower);
        alive[follower - 1].store(true, Ordering::SeqCst);
        s.wait("the follower is back", || {
            s.nodes(follower)
                .is_some_and(|nodes| nodes.iter().all(|n| reachability(n) == "reachable"))
        });
        let before = count();
        s.wait("more writes", || count() >= before + 20);
        stop.store(true, Ordering::SeqCst);
    });

    let acked = acked.into_inner().unwrap();
    eprintln!(
        "{} writes attempted, {} acknowledged",
        attempts.load(Ordering::SeqCst),
        acked.len()
    );
    // Every acknowledged write is on every manager.
    s.wait("every manager holds every acknowledged write", || {
        managers.iter().all(|&m| {
            s.node_as_seen_by(m, "node2").is_some_and(|n| {
                acked
                    .iter()
                    .all(|i| n["Spec"]["Labels"].get(format!("w{i}")).is_some())
            })
        })
    });
    std::thread::sleep(Duration::from_millis(10));
}

/// One of the 200 creates of [`leader_killed_during_concurrent_creates`].
#[derive(Debug, Clone, Copy)]
enum Op {
    Network(usize),
    Service(usize),
}

impl Op {
    fn name(self) -> String {
        match self {
            Op::Network(i) => format!("net{i:03}"),
            Op::Service(i) => format!("svc{i:03}"),
        }
    }
}

/// How a create ended, as its client saw it.
#[derive(Debug, Default)]
struct Outcomes {
    /// Answered with success (by attempt number, 1-based).
    acked: Vec<(String, usize)>,
    /// Answered "already exists": an earlier try landed although its client saw it fail, ours
    /// (`true`: after a failed attempt) or the forwarding manager's own retry towards a new
    /// leader (`false`: on a first attempt). The answer holds only if the object is there:
    /// counted as acknowledged, so it must be present, once.
    landed: Vec<(String, bool)>,
    /// Never acknowledged (every attempt failed): may or may not exist, never twice.
    lost: Vec<String>,
}

const NETWORKS: usize = 120;
const SERVICES: usize = 80;
/// Services go on the first networks acknowledged (several services per network, so task
/// addresses are allocated side by side), not on 80 networks: fewer networks on each node.
const SERVICE_NETWORKS: usize = 12;
const CLIENTS: usize = 8;
const ATTEMPTS: usize = 8;

/// Issue 16: 3 managers; 8 clients issue 200 creates (120 `network create` on the default pool,
/// 80 `service create` with a VIP and one task, on networks already acknowledged) to every
/// manager in turn. Amid them the leader is first frozen (SIGSTOP: deposed while alive, its
/// decided writes still in flight) and thawed once another leads, then the next leader is
/// SIGKILLed and restarted later; a failed call is retried on the next manager ("already
/// exists" then means an earlier try landed). Then on every manager: every acknowledged create
/// is there once, names unique, subnets disjoint, VNIs unique, VIPs and task addresses unique
/// inside their subnets; and the three replicas agree object for object.
#[test]
fn leader_killed_during_concurrent_creates() {
    if skip() {
        return;
    }
    let started = std::time::Instant::now();
    let s = Swarm::start(3, 0);
    let formed = started.elapsed();
    let managers = [1usize, 2, 3];
    let alive: Vec<AtomicBool> = (0..3).map(|_| AtomicBool::new(true)).collect();

    // The first networks, then networks and services mixed (2 of 5 a service).
    let mut ops: Vec<Op> = (0..SERVICE_NETWORKS).map(Op::Network).collect();
    let (mut n, mut v) = (SERVICE_NETWORKS, 0);
    while n < NETWORKS || v < SERVICES {
        if v < SERVICES && (n >= NETWORKS || (n + v) % 5 < 2) {
            ops.push(Op::Service(v));
            v += 1;
        } else {
            ops.push(Op::Network(n));
            n += 1;
        }
    }
    assert_eq!(ops.len(), 200);
    let next = AtomicUsize::new(0);
    let acked_networks = Mutex::new(Vec::<String>::new());
    let outcomes = Mutex::new(Outcomes::default());
    let acked = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);

    let create = |client: usize, op: Op| {
        let name = op.name();
        let mut failed_before = false;
        for attempt in 1..=ATTEMPTS {
            let m = managers[(client + attempt) % 3];
            if !alive[m - 1].load(Ordering::SeqCst) {
                continue;
            }
            let out = match op {
                Op::Network(_) => s.netctl(m, &["network", "create", "--driver", "overlay", &name]),
                Op::Service(i) => {
                    let net = {
                        let nets = acked_networks.lock().unwrap();
                        nets[i % nets.len().min(SERVICE_NETWORKS)].clone()
                    };
                    s.netctl(
                        m,
                        &[
                            "service",
                            "create",
                            "--detach",
                            "--name",
                            &name,
                            "--replicas",
                            "1",
                            "--network",
                            &net,
                            "--",
                            "sleep",
                            "3600",
                        ],
                    )
                }
            };
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            let mut o = outcomes.lock().unwrap();
            if out.status.success() {
                o.acked.push((name.clone(), attempt));
                acked.fetch_add(1, Ordering::SeqCst);
                if let Op::Network(_) = op {
                    acked_networks.lock().unwrap().push(name);
                }
                return;
            }
            if err.contains("already exists") {
                eprintln!("{name} attempt {attempt} on node{m}: {}", err.trim());
                o.landed.push((name.clone(), failed_before));
                acked.fetch_add(1, Ordering::SeqCst);
                if let Op::Network(_) = op {
                    acked_networks.lock().unwrap().push(name);
                }
                return;
            }
            drop(o);
            eprintln!("{name} attempt {attempt} on node{m}: {}", err.trim());
            failed_before = true;
            std::thread::sleep(Duration::from_millis(200));
        }
        outcomes.lock().unwrap().lost.push(name);
    };

    let mut stalled_at = None;
    let mut killed_at = None;
    let mut new_leader_at = None;
    std::thread::scope(|scope| {
        for client in 0..CLIENTS {
            let (ops, next, done, create, acked_networks) =
                (&ops, &next, &done, &create, &acked_networks);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&op) = ops.get(i) else { break };
                    // A service needs its networks acknowledged first.
                    while matches!(op, Op::Service(_))
                        && acked_networks.lock().unwrap().len() < SERVICE_NETWORKS
                    {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    create(client, op);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let acks = || acked.load(Ordering::SeqCst);
        let all_done = || done.load(Ordering::SeqCst) == ops.len();
        s.wait("30 creates acknowledged", || acks() >= 30);

        // A stalled leader: frozen (SIGSTOP) amid its decisions and writes, deposed while it
        // sleeps, thawed: what it decided as leader must not be written under the next one.
        let stalled = s.leader(&managers).expect("a leader");
        alive[stalled - 1].store(false, Ordering::SeqCst);
        s.pause(stalled);
        stalled_at = Some((started.elapsed(), acks()));
        eprintln!(
            "froze the leader node{stalled} after {} acknowledged creates",
            acks()
        );
        let others: Vec<usize> = managers.iter().copied().filter(|&m| m != stalled).collect();
        s.wait("a leader other than the frozen one", || {
            s.leader(&others).is_some_and(|l| l != stalled)
        });
        // The next leader allocates subnets (the frozen one's pending decisions took some from
        // its own view), then the frozen one wakes up and its writes go on.
        let nets = || acked_networks.lock().unwrap().len();
        let before = nets();
        s.wait("networks created by the next leader", || {
            nets() >= before + 3 || all_done()
        });
        s.resume(stalled);
        alive[stalled - 1].store(true, Ordering::SeqCst);
        let before = acks();
        s.wait("the managers agree on a leader", || {
            agreed_leader(&s, &managers).is_some()
        });
        s.wait("creates acknowledged with the thawed manager back", || {
            acks() >= before + 5 || all_done()
        });

        // The leader killed (SIGKILL).
        let old = agreed_leader(&s, &managers).expect("a leader");
        alive[old - 1].store(false, Ordering::SeqCst);
        s.kill(old);
        killed_at = Some((started.elapsed(), acks()));
        eprintln!(
            "killed the leader node{old} after {} acknowledged creates",
            acks()
        );
        let others: Vec<usize> = managers.iter().copied().filter(|&m| m != old).collect();
        s.wait("a new leader", || {
            s.leader(&others).is_some_and(|l| l != old)
        });
        new_leader_at = Some(started.elapsed());
        let before = acks();
        s.wait("creates acknowledged by the new leader", || {
            acks() >= before + 20 || all_done()
        });
        s.restart(old);
        alive[old - 1].store(true, Ordering::SeqCst);
    });
    let creates_done = started.elapsed();
    let o = outcomes.into_inner().unwrap();
    eprintln!(
        "{} acknowledged ({} after a retry), {} answered \"already exists\" ({} on a first attempt), {} never acknowledged: {:?}",
        o.acked.len(),
        o.acked.iter().filter(|(_, a)| *a > 1).count(),
        o.landed.len(),
        o.landed.iter().filter(|(_, retried)| !retried).count(),
        o.lost.len(),
        o.lost
    );
    let present: Vec<&String> = (o.acked.iter().map(|(n, _)| n))
        .chain(o.landed.iter().map(|(n, _)| n))
        .collect();
    assert!(
        present.len() >= 150,
        "too few creates acknowledged: {}",
        present.len()
    );

    // Every manager: every acknowledged create there, every task running; then the invariants.
    let mut seen = Vec::new();
    for &m in &managers {
        let mut last = Allocations::default();
        s.wait(
            &format!("node{m} holds every acknowledged create, each running"),
            || {
                let Ok(a) = Allocations::read(&s, m) else {
                    return false;
                };
                let ok = present.iter().all(|n| {
                    if n.starts_with("net") {
                        a.network(n).is_some()
                    } else {
                        a.service(n).is_some()
                    }
                }) && a.every_service_runs();
                last = a;
                ok
            },
        );
        let bad = last.violations();
        assert!(
            bad.is_empty(),
            "node{m}: {} violations:\n{}",
            bad.len(),
            bad.join("\n")
        );
        seen.push((m, last));
    }
    // The replicas agree: same objects, same allocations.
    let key = |a: &Allocations| {
        let nets: BTreeSet<String> = a
            .networks
            .iter()
            .map(|n| format!("{} {} {:?} {:?}", n.id, n.name, n.subnets, n.vnis))
            .collect();
        let svcs: BTreeSet<String> = a
            .services
            .iter()
            .map(|v| format!("{} {} {:?}", v.id, v.name, v.vips))
            .collect();
        (nets, svcs)
    };
    let (m0, a0) = &seen[0];
    for (m, a) in &seen[1..] {
        assert!(key(a0) == key(a), "node{m0} and node{m} differ");
    }
    let a = &a0;
    let task_addrs: usize = a
        .tasks
        .iter()
        .filter(|t| t.desired == "running")
        .map(|t| t.addresses.len())
        .sum();
    eprintln!(
        "timings: swarm formed {formed:?}, leader frozen at {:?}, leader killed at {:?}, new leader at {:?}, creates done {creates_done:?}, checked {:?}; {} networks, {} services, {} task addresses",
        stalled_at,
        killed_at,
        new_leader_at,
        started.elapsed(),
        a.networks.len(),
        a.services.len(),
        task_addrs
    );
}

/// The leader every manager of `managers` names, if they all answer and agree.
fn agreed_leader(s: &Swarm, managers: &[usize]) -> Option<usize> {
    let named: Vec<Option<usize>> = managers.iter().map(|&m| s.leader(&[m])).collect();
    let first = named[0]?;
    named.iter().all(|l| *l == Some(first)).then_some(first)
}
