//! Service updates: a changed task spec replaces every task once, rolling out the service's
//! update parallelism at a time, start-first (an old task goes once its replacement runs), and
//! holding while a replacement fails; the same roll moves publishing tasks off an ingress
//! network being retired. Host-mode ports roll stop-first.

use super::*;

fn a_forced_update_replaces_every_task_once(mode: Mode) {
    let mut w = World::new(2, mode);
    w.add_network("a", None);
    w.add_service("s", replicas(2), &["a"]);
    w.settle();
    w.run_assigned();
    let before: Vec<String> = w.live("s").iter().map(|t| t.meta.id.clone()).collect();
    w.task_spec("s").force_update += 1;
    // One at a time (the default parallelism): two rounds of replace-and-run, and the last
    // old task goes once its replacement runs.
    for _ in 0..2 {
        w.settle();
        w.run_assigned();
    }
    w.settle();
    let after: Vec<String> = w.live("s").iter().map(|t| t.meta.id.clone()).collect();
    assert_eq!(after.len(), 2);
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "every task is new: {before:?} -> {after:?}"
    );
    assert_eq!(w.settle(), 0, "and then nothing more changes");
}

impl World {
    /// The service's live tasks: (running the current spec, running an outdated one, not
    /// running yet).
    fn rollout(&self, service: &str) -> (usize, usize, usize) {
        let spec = &self.state.services[&format!("svc-{service}")].spec.task;
        let live = self.live(service);
        let running = |t: &&&Task| t.status.state == TaskState::Running;
        (
            live.iter()
                .filter(|t| running(t) && t.spec == *spec)
                .count(),
            live.iter()
                .filter(|t| running(t) && t.spec != *spec)
                .count(),
            live.iter().filter(|t| !running(t)).count(),
        )
    }

    /// A new task spec (its environment), to roll out `parallelism` tasks at a time.
    fn update(&mut self, service: &str, env: &str, parallelism: u64) {
        let svc = self
            .state
            .services
            .get_mut(&format!("svc-{service}"))
            .unwrap();
        svc.spec.task.env = vec![env.into()];
        svc.spec.update.parallelism = parallelism;
    }
}

fn an_update_rolls_out_parallelism_tasks_at_a_time(mode: Mode) {
    let mut w = World::new(3, mode);
    w.add_network("a", None);
    w.add_service("s", replicas(5), &["a"]);
    w.settle();
    w.run_assigned();
    assert_eq!(w.rollout("s"), (5, 0, 0));
    w.update("s", "V=2", 1);
    // Parallelism 1: each round starts one replacement beside its old task, which goes (with
    // the next replacement started) only once the replacement runs.
    let mut seen = vec![];
    for _ in 0..5 {
        w.settle();
        let r = w.rollout("s");
        seen.push(r);
        assert_eq!(r.2, 1, "one replacement at a time: {seen:?}");
        assert_eq!(r.0 + r.1, 5, "every slot serves meanwhile: {seen:?}");
        assert_eq!(w.settle(), 0, "nothing more before it runs: {seen:?}");
        w.run_assigned();
    }
    w.settle();
    assert_eq!(w.rollout("s"), (5, 0, 0), "{seen:?}");
    assert_eq!(
        seen.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![5, 4, 3, 2, 1]
    );
    // Parallelism 2, then 0 (all at once).
    w.update("s", "V=3", 2);
    w.settle();
    assert_eq!(w.rollout("s"), (0, 5, 2));
    w.run_assigned();
    w.update("s", "V=4", 0);
    w.settle();
    assert_eq!(
        w.rollout("s"),
        (0, 5, 5),
        "all at once: one replacement per slot, beside one old task (a second old one goes)"
    );
    w.run_assigned();
    w.settle();
    w.run_assigned();
    assert_eq!(w.settle(), 0);
    assert_eq!(w.rollout("s"), (5, 0, 0));
}

fn a_failing_replacement_holds_the_update(mode: Mode) {
    let mut w = World::new(2, mode);
    w.add_service("s", replicas(3), &[]);
    w.settle();
    w.run_assigned();
    w.update("s", "BROKEN=1", 1);
    w.settle();
    assert_eq!(w.rollout("s"), (0, 3, 1));
    // The replacement fails (and keeps failing after each restart delay): the three tasks
    // running the old spec keep running.
    for _ in 0..3 {
        for t in w.state.tasks.values_mut() {
            if t.status.state == TaskState::Assigned {
                t.status.state = TaskState::Failed;
                t.status.timestamp = w.now;
            }
        }
        w.settle();
        w.now += w.config.restart_delay + Duration::seconds(1);
        w.settle();
        assert_eq!(w.rollout("s").1, 3, "the update holds");
    }
    // Fixed: the update goes on.
    w.update("s", "FIXED=1", 1);
    for _ in 0..5 {
        w.settle();
        w.run_assigned();
    }
    assert_eq!(w.rollout("s"), (3, 0, 0));
}

/// `ingress recreate --subnet`: the old ingress network stays (retiring) while the publishing
/// tasks roll over to the new one, one at a time; every node keeps its address on both
/// meanwhile (its sbox balances over both); the old network goes once no task runs there.
fn tasks_move_off_a_retiring_ingress_network_one_at_a_time(mode: Mode) {
    let mut w = World::new(3, mode);
    w.add_publishing("pub", replicas(3));
    w.settle();
    w.run_assigned();
    w.settle();
    let on = |w: &World, net: &str| {
        w.live("pub")
            .iter()
            .filter(|t| {
                t.status.state == TaskState::Running
                    && t.networks.iter().any(|a| a.network_id == net)
            })
            .count()
    };
    assert_eq!(on(&w, "net-ingress"), 3);
    // What the recreate writes: the new network, the old one marked retiring.
    let mut new = network(&w.state, "ingress2", Some("10.99.0.0/24"));
    new.spec.ingress = true;
    w.state.networks.insert(new.meta.id.clone(), new);
    w.state.networks.get_mut("net-ingress").unwrap().retiring = true;
    let both = |w: &World| {
        w.state.nodes.values().all(|n| {
            ["net-ingress", "net-ingress2"]
                .iter()
                .all(|id| n.attachments.iter().any(|a| a.network_id == *id))
        })
    };
    let mut seen = vec![];
    for round in 0..3 {
        w.settle();
        seen.push((on(&w, "net-ingress"), on(&w, "net-ingress2")));
        assert_eq!(w.rollout("pub").2, 1, "one replacement at a time: {seen:?}");
        assert_eq!(
            seen[round],
            (3 - round, round),
            "the old task of the slot being moved serves until its replacement runs: {seen:?}"
        );
        assert!(w.state.networks.contains_key("net-ingress"));
        assert!(both(&w), "every node on both: {:?}", w.state.nodes);
        w.run_assigned();
    }
    // The last old task goes once its replacement runs; the network once that one stopped.
    w.settle();
    assert!(w.state.networks.contains_key("net-ingress"));
    w.run_assigned();
    w.settle();
    assert_eq!(on(&w, "net-ingress2"), 3);
    assert!(
        !w.state.networks.contains_key("net-ingress"),
        "no task runs on the old network: it goes"
    );
    for n in w.state.nodes.values() {
        let nets: Vec<&str> = n
            .attachments
            .iter()
            .map(|a| a.network_id.as_str())
            .collect();
        assert_eq!(nets, ["net-ingress2"], "{n:?}");
    }
    assert_eq!(w.settle(), 0);
}

/// A replacement counts as serving only once it has run for the settle time (every node has
/// heard of it): until then the next outdated task keeps running.
fn a_replacement_settles_before_the_next_goes(mode: Mode) {
    let mut w = World::new(2, mode);
    w.config.replacement_settle = Duration::seconds(1);
    w.add_service("s", replicas(2), &[]);
    w.settle();
    w.run_assigned();
    w.now += Duration::seconds(2);
    w.settle();
    w.update("s", "V=2", 1);
    w.settle();
    assert_eq!(w.rollout("s"), (0, 2, 1));
    w.run_assigned();
    w.settle();
    assert_eq!(
        w.rollout("s"),
        (1, 2, 0),
        "the replacement runs, not settled yet: its old task too"
    );
    w.now += Duration::milliseconds(500);
    w.settle();
    assert_eq!(w.rollout("s"), (1, 2, 0), "half the settle time");
    w.now += Duration::milliseconds(600);
    w.settle();
    assert_eq!(
        w.rollout("s"),
        (1, 1, 1),
        "settled: its old task goes, the next replacement starts"
    );
}

/// Two tasks cannot hold one node's host-mode port: such a service rolls stop-first, the old
/// task shut down as its replacement is created.
fn host_mode_ports_roll_stop_first(mode: Mode) {
    use model::service::{PortConfig, Protocol, PublishMode};
    let mut w = World::new(2, mode);
    w.add_service("h", ServiceMode::Global, &[]);
    w.state.services.get_mut("svc-h").unwrap().ports = vec![PortConfig {
        published: 8080,
        target: 80,
        protocol: Protocol::Tcp,
        mode: PublishMode::Host,
    }];
    w.settle();
    w.run_assigned();
    assert_eq!(w.rollout("h"), (2, 0, 0));
    w.update("h", "V=2", 1);
    w.settle();
    assert_eq!(
        w.rollout("h"),
        (0, 1, 1),
        "one node's task replaced, not beside it"
    );
    for _ in 0..2 {
        w.run_assigned();
        w.settle();
    }
    assert_eq!(w.rollout("h"), (2, 0, 0));
}

scenario!(a_forced_update_replaces_every_task_once);
scenario!(a_replacement_settles_before_the_next_goes);
scenario!(tasks_move_off_a_retiring_ingress_network_one_at_a_time);
scenario!(an_update_rolls_out_parallelism_tasks_at_a_time);
scenario!(a_failing_replacement_holds_the_update);
scenario!(host_mode_ports_roll_stop_first);
