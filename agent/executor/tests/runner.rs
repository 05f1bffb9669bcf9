//! Task processes: namespaces, cgroups, resolv.conf, exit codes, adoption after an agent restart.

use std::time::Duration;

use executor::runner::{ProcState, Runner, RunnerConfig};
use lab::Lab;

fn runner(lab: &Lab) -> Runner {
    let node = lab.node(1);
    Runner::new(RunnerConfig {
        dir: node.dir().join("tasks"),
        netns_prefix: format!("{}-", lab.prefix()),
        cgroup: Some(node.cgroup().unwrap().join("tasks")),
        shim: vec![env!("CARGO_BIN_EXE_netagent-shim").into()],
        resolv_conf: "nameserver 127.0.0.11\noptions ndots:0\n".into(),
    })
    .unwrap()
}

fn wait_state(r: &Runner, id: &str, want: impl Fn(ProcState) -> bool) -> ProcState {
    let mut last = ProcState::NotStarted;
    lab::wait_until("task state", Duration::from_secs(10), &mut || {
        last = r.state(id);
        want(last)
    })
    .unwrap_or_else(|e| panic!("{e}: last {last:?}, output {:?}", r.output_tail(id, 2000)));
    last
}

#[test]
fn a_task_runs_in_its_namespace_with_its_resolv_conf_and_reports_its_exit_code() {
    let lab = Lab::new(1).unwrap();
    let r = runner(&lab);
    let script = "readlink /proc/self/ns/net; cat /etc/resolv.conf; cat /proc/self/cgroup; echo $GREETING; exit 3";
    r.start(
        "t1",
        &["sh".into(), "-c".into(), script.into()],
        &["GREETING=hello".into()],
    )
    .unwrap();
    let st = wait_state(&r, "t1", |s| matches!(s, ProcState::Exited { .. }));
    assert_eq!(st, ProcState::Exited { code: 3 });
    let out = r.output_tail("t1", 4000);
    let ns = netns::NetNs::open(&r.netns_name("t1")).unwrap();
    assert!(
        out.contains(&format!("net:[{}]", ns.inode().unwrap())),
        "{out}"
    );
    assert!(out.contains("nameserver 127.0.0.11"), "{out}");
    assert!(out.contains("/tasks/t1"), "in its own cgroup: {out}");
    assert!(out.contains("hello"), "{out}");
    // The host's resolv.conf is untouched.
    assert!(
        !std::fs::read_to_string("/etc/resolv.conf")
            .unwrap_or_default()
            .contains("127.0.0.11")
    );
    r.remove("t1").unwrap();
    assert!(!netns::exists(&r.netns_name("t1")));
    assert!(!r.dir("t1").exists());
}

#[test]
fn a_restarted_agent_adopts_running_tasks_and_stops_them() {
    let lab = Lab::new(1).unwrap();
    let first = runner(&lab);
    first
        .start("t2", &["sleep".into(), "600".into()], &[])
        .unwrap();
    let ProcState::Running { pid } =
        wait_state(&first, "t2", |s| matches!(s, ProcState::Running { .. }))
    else {
        unreachable!()
    };
    drop(first);
    // A new runner over the same directories: the task is found running, start() is a no-op.
    let second = runner(&lab);
    assert_eq!(second.list(), ["t2"]);
    assert_eq!(second.state("t2"), ProcState::Running { pid });
    second
        .start("t2", &["sleep".into(), "600".into()], &[])
        .unwrap();
    assert_eq!(
        second.state("t2"),
        ProcState::Running { pid },
        "not started twice"
    );
    assert_eq!(
        second.stop("t2", Duration::from_secs(5)),
        Some(128 + 15),
        "SIGTERM ends sleep"
    );
    second.remove("t2").unwrap();
    assert!(second.list().is_empty());
}

#[test]
fn a_task_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let lab = Lab::new(1).unwrap();
    let r = runner(&lab);
    r.start(
        "t3",
        &[
            "sh".into(),
            "-c".into(),
            "trap '' TERM; echo ready; while :; do sleep 0.1; done".into(),
        ],
        &[],
    )
    .unwrap();
    wait_state(&r, "t3", |s| matches!(s, ProcState::Running { .. }));
    lab.wait_until("ready", Duration::from_secs(5), || {
        r.output_tail("t3", 100).contains("ready")
    })
    .unwrap();
    let code = r.stop("t3", Duration::from_millis(300)).unwrap();
    assert_eq!(code, 128 + 9, "killed by SIGKILL");
    r.remove("t3").unwrap();
}

#[test]
fn a_missing_command_fails_with_127_and_bad_ids_are_refused() {
    let lab = Lab::new(1).unwrap();
    let r = runner(&lab);
    r.start("t4", &["/nonexistent/program".into()], &[])
        .unwrap();
    assert_eq!(
        wait_state(&r, "t4", |s| matches!(s, ProcState::Exited { .. })),
        ProcState::Exited { code: 127 }
    );
    assert!(r.output_tail("t4", 1000).contains("/nonexistent/program"));
    assert!(r.start("../etc", &["true".into()], &[]).is_err());
    assert!(r.start("t5", &[], &[]).is_err());
    r.remove("t4").unwrap();
}

#[test]
fn an_exit_being_recorded_is_never_reported_as_a_kill() {
    // Between the command's exit and the shim's `exit` file there is a window; watching the
    // state closely (every 0.2 ms) through it must never show the 137 of a killed shim.
    let lab = Lab::new(1).unwrap();
    let r = runner(&lab);
    for i in 0..10 {
        let id = format!("x{i}");
        r.start(&id, &["sh".into(), "-c".into(), "exit 3".into()], &[])
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = vec![ProcState::NotStarted];
        while !matches!(seen.last(), Some(ProcState::Exited { .. })) {
            assert!(
                std::time::Instant::now() < deadline,
                "states seen: {seen:?}"
            );
            let s = r.state(&id);
            if seen.last() != Some(&s) {
                seen.push(s);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        assert_eq!(
            seen.last(),
            Some(&ProcState::Exited { code: 3 }),
            "states seen: {seen:?}"
        );
        r.remove(&id).unwrap();
    }
}

/// Unmounts what a test mounted on the machine's mount table, also when the test fails.
struct Unmount(Vec<std::path::PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn a_task_copies_the_mount_template_without_named_namespaces_and_sees_later_mounts() {
    use nix::mount::{MsFlags, mount};
    let lab = Lab::new(1).unwrap();
    // A shared mount point, as on a systemd host (this machine's / is private): a mount made
    // under it after the template exists must still reach tasks started later.
    let shared = lab.node(1).dir().join("shared");
    std::fs::create_dir_all(shared.join("late")).unwrap();
    let mut unmount = Unmount(Vec::new());
    mount(
        Some(&shared),
        &shared,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    unmount.0.push(shared.clone());
    mount(
        None::<&str>,
        &shared,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    let r = runner(&lab);
    let named = |from: usize| {
        (from..from + 20)
            .map(|i| netns::NetNs::create(&format!("{}-x{i}", lab.prefix())).unwrap())
            .collect::<Vec<_>>()
    };
    let _before = named(0);
    // The first start makes the template.
    r.start("t0", &["true".into()], &[]).unwrap();
    wait_state(&r, "t0", |s| matches!(s, ProcState::Exited { .. }));
    let late = shared.join("late");
    mount(
        Some("tmpfs"),
        &late,
        Some("tmpfs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    unmount.0.push(late.clone());
    std::fs::write(late.join("file"), "mounted after the template\n").unwrap();
    let _after = named(20);
    let script = format!(
        "echo netns-mounts=$(grep -c ' /run/netns' /proc/self/mountinfo); cat {}/file; \
         cat /etc/resolv.conf",
        late.display()
    );
    r.start("t1", &["sh".into(), "-c".into(), script], &[])
        .unwrap();
    assert_eq!(
        wait_state(&r, "t1", |s| matches!(s, ProcState::Exited { .. })),
        ProcState::Exited { code: 0 }
    );
    let out = r.output_tail("t1", 4000);
    assert!(out.contains("netns-mounts=0"), "{out}");
    assert!(out.contains("mounted after the template"), "{out}");
    assert!(out.contains("nameserver 127.0.0.11"), "{out}");
    let spec = std::fs::read_to_string(r.dir("t1").join("spec.json")).unwrap();
    assert!(spec.contains("\"mount_template\": true"), "{spec}");
    let shim_log = std::fs::read_to_string(r.dir("t1").join("shim.log")).unwrap_or_default();
    assert!(!shim_log.contains("mount template"), "{shim_log}");
    // The node's table is untouched: its named namespaces are all still mounted.
    let node = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = format!("/run/netns/{}-x", lab.prefix());
    assert_eq!(node.matches(&prefix).count(), 40, "{node}");
    for id in ["t0", "t1"] {
        r.remove(id).unwrap();
    }
}
