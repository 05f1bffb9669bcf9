//! A task's output is bounded on disk: a task printing 1 GiB keeps at most
//! `executor::tasklog::LOG_MAX_BYTES` (output.log + output.log.1), and `netctl service logs`
//! shows the tail, in order, ending with what it printed last.

mod common;

use common::*;

#[test]
fn a_task_printing_a_gibibyte_stays_under_the_log_cap() {
    if skip() {
        return;
    }
    let s = Swarm::start(1, 0);
    s.create_service(&[
        "--name",
        "chatty",
        "--",
        "sh",
        "-c",
        "yes netagent-log-line | head -c 1073741824; echo; echo the-last-line; exec sleep 3600",
    ]);
    s.wait_long("the task printed everything", || {
        let out = s.netctl(1, &["service", "logs", "--tail", "3", "chatty"]);
        String::from_utf8_lossy(&out.stdout).contains("the-last-line")
    });
    let tasks = s.lab.node(1).dir().join("state/executor/tasks");
    let mut dirs = std::fs::read_dir(&tasks)
        .expect("task directories")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir());
    let dir = dirs.next().expect("one task directory");
    assert!(dirs.next().is_none(), "one task");
    let size = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
    let kept = size("output.log") + size("output.log.1");
    assert!(
        kept <= executor::tasklog::LOG_MAX_BYTES,
        "{kept} bytes kept, over the cap of {}",
        executor::tasklog::LOG_MAX_BYTES
    );
    assert!(size("output.log.1") > 0, "rotated at least once");
    // The tail, in order, what it printed last at the end.
    let out = s.ctl(1, &["service", "logs", "--tail", "5", "chatty"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines[4].ends_with("the-last-line"), "{out}");
    assert!(lines[1].ends_with("netagent-log-line"), "{out}");
}
