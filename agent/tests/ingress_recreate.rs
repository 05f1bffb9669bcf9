//! `netctl ingress recreate` and rolling updates under a request loop through every node (3
//! agents and a client namespace, as in `ingress.rs`): `--mtu` in place, `--subnet` moving the
//! tasks to a new network and removing the old one, a rolling update of two tasks and one of a
//! single replica (start-first); failed requests are reported.

mod common;

use std::time::Duration;

use common::mesh::{WEB, load, no_ingress_names, swarm_with_client, who};
use common::{Swarm, skip};
use lab::host_snapshot;

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
    let node3 = s.hostname(3);
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
