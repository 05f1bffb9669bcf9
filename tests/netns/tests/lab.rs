//! The lab itself: reachability over the underlay, host isolation, cleanup, partitions, processes.

use std::time::Duration;

use lab::{Lab, LabBuilder, ProcSpec, host_snapshot};

fn lab_namespaces(prefix: &str) -> Vec<String> {
    netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect()
}

#[test]
fn three_nodes_reach_each_other_and_the_host_is_untouched() {
    let before = host_snapshot();
    let prefix;
    {
        let lab = Lab::new(3).unwrap();
        prefix = lab.prefix().to_string();
        assert_eq!(lab_namespaces(&prefix).len(), 4, "3 nodes + underlay");
        for a in lab.nodes() {
            for b in lab.nodes() {
                if a.index() != b.index() {
                    assert!(
                        a.ping(b.addr()),
                        "{} cannot reach {} ({})",
                        a.name(),
                        b.name(),
                        b.addr()
                    );
                }
            }
            // Each node sees only lo and its underlay interface.
            let links = a.run_ok(&["ip", "-o", "link", "show"]).unwrap();
            assert_eq!(links.lines().count(), 2, "{links}");
            assert!(links.contains("eth0"));
        }
        assert_eq!(
            host_snapshot(),
            before,
            "the lab changed the host's namespace"
        );
    }
    assert!(
        lab_namespaces(&prefix).is_empty(),
        "namespaces left after drop"
    );
    assert_eq!(
        host_snapshot(),
        before,
        "dropping the lab changed the host's namespace"
    );
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let lab = Lab::new(2).unwrap();
        let p = lab
            .node(1)
            .spawn(ProcSpec::new("sleeper", "sleep").arg("600"))
            .unwrap();
        tx.send((
            lab.prefix().to_string(),
            p.pid().unwrap(),
            lab.dir().to_path_buf(),
        ))
        .unwrap();
        panic!("deliberate panic mid-test");
    })
    .join();
    assert!(result.is_err(), "the thread should have panicked");
    let (prefix, pid, dir) = rx.recv().unwrap();
    // A panicking test's lab keeps its logs for the reader; this panic was on purpose.
    assert!(dir.is_dir(), "the logs of a failed test are kept");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        lab_namespaces(&prefix).is_empty(),
        "namespaces left after a panic"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process left after a panic"
    );
}

#[test]
fn partition_cuts_and_heals() {
    let lab = Lab::new(3).unwrap();
    let (n1, n2, n3) = (lab.node(1), lab.node(2), lab.node(3));
    assert!(n1.ping(n2.addr()));
    lab.cut(1, 2).unwrap();
    assert!(!n1.ping(n2.addr()), "1 -> 2 must be cut");
    assert!(!n2.ping(n1.addr()), "2 -> 1 must be cut");
    assert!(
        n1.ping(n3.addr()) && n2.ping(n3.addr()),
        "the others still reach each other"
    );
    lab.heal(2, 1).unwrap();
    assert!(n1.ping(n2.addr()), "healed");

    lab.isolate(3).unwrap();
    assert!(!n1.ping(n3.addr()) && !n3.ping(n2.addr()));
    assert!(n1.ping(n2.addr()));
    lab.heal_all().unwrap();
    assert!(n1.ping(n3.addr()) && n3.ping(n2.addr()));

    lab.partition(&[1]).unwrap();
    assert!(!n1.ping(n2.addr()) && !n1.ping(n3.addr()) && n2.ping(n3.addr()));
    lab.heal_all().unwrap();
    assert!(n1.ping(n2.addr()));
    assert!(lab.cut(1, 9).is_err(), "unknown node is an error");
}

#[test]
fn processes_log_kill_and_restart() {
    let lab = Lab::new(1).unwrap();
    let node = lab.node(1);
    let script = "echo started in $(readlink /proc/self/ns/net); exec sleep 600";
    let p = node
        .spawn(ProcSpec::new("worker", "sh").args(["-c", script]))
        .unwrap();
    let inode = node.ns().inode().unwrap().to_string();
    lab.wait_until("the process logs", Duration::from_secs(5), || {
        node.log_tail(20)
            .contains(&format!("started in net:[{inode}]"))
    })
    .unwrap();
    let first = p.pid().unwrap();
    p.kill();
    assert!(!p.is_running());
    p.restart().unwrap();
    let second = p.pid().unwrap();
    assert_ne!(first, second);
    let status = p.stop(Duration::from_secs(5)).unwrap();
    assert!(!status.success(), "sleep was terminated by a signal");
    // run() output is in the node log too.
    node.run_ok(&["echo", "hello-from-node"]).unwrap();
    assert!(node.log_tail(5).contains("hello-from-node"));
}

#[test]
fn underlay_mtu_is_configurable() {
    let lab = LabBuilder::new(2).mtu(9000).build().unwrap();
    let link = lab
        .node(1)
        .run_ok(&["ip", "-o", "link", "show", "eth0"])
        .unwrap();
    assert!(link.contains("mtu 9000"), "{link}");
    // A jumbo frame crosses the underlay unfragmented.
    let n2 = lab.node(2).addr().to_string();
    lab.node(1)
        .run_ok(&["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "8972", &n2])
        .unwrap();
}

#[test]
fn clean_removes_labs_of_dead_processes_only() {
    let live = Lab::new(1).unwrap();
    // A pid that has exited: a lab "crashed" under it.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let crashed = format!("{}{dead_pid}-0", lab::LAB_PREFIX);
    let a = netns::NetNs::create(&format!("{crashed}-n1")).unwrap();
    let b = netns::NetNs::create(&format!("{crashed}-sbox-x")).unwrap();
    drop((a, b));
    lab::clean_leftovers(false).unwrap();
    assert!(
        lab_namespaces(&crashed).is_empty(),
        "the crashed lab's namespaces are gone"
    );
    assert_eq!(
        lab_namespaces(live.prefix()).len(),
        2,
        "a live lab is left alone"
    );
}

#[test]
fn a_node_bpffs_is_mounted_once_and_unmounted_with_the_lab() {
    let mounted = |p: &std::path::Path| {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&p.to_str().unwrap()) && f.get(2) == Some(&"bpf")
            })
    };
    let lab = Lab::new(1).unwrap();
    let dir = lab.node(1).bpffs().unwrap();
    assert_eq!(lab.node(1).bpffs().unwrap(), dir);
    assert!(mounted(&dir), "{} is a bpffs", dir.display());
    std::fs::create_dir(dir.join("pins")).unwrap();
    drop(lab);
    assert!(!mounted(&dir));
    assert!(!dir.exists());
}
