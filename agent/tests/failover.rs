//! Leader failure and crash recovery: a client writes continuously through the API while the
//! leader and then a follower are killed with SIGKILL and restarted; a new leader takes over, the
//! old leader comes back as a follower, and every acknowledged write is on every manager at the
//! end.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

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
