//! The executor of two nodes, each with its own gossip, driven by hand-made assignments: tasks run,
//! reach each other over the overlay, report their status, stop and disappear; an unchanged
//! assignment changes nothing in the kernel; a restarted executor adopts what runs; a task on
//! ingress serves once it knows every sbox.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use executor::feed::AssignmentFeed;
use executor::node::{self, Config, StatusReport};
use gossip::{Gossip, Key, Keyring, Timings};
use lab::Lab;
use model::network::{Network, NetworkSpec, SubnetAllocation};
use model::service::{EndpointSpec, Service, ServiceMode, ServiceSpec, TaskTemplate};
use model::task::{NetworkAttachment, Task, TaskState, TaskStatus};
use model::{Assignments, Meta};
use tokio::sync::mpsc;

const LONG: Duration = Duration::from_secs(30);

fn network() -> Network {
    Network {
        meta: Meta::with_id("netaaaaaaaaaaaaaaaaaaaaaa".into()),
        spec: NetworkSpec {
            name: "web".into(),
            driver: "overlay".into(),
            ipam: vec![],
            options: BTreeMap::new(),
            labels: BTreeMap::new(),
            encrypted: false,
            attachable: false,
            internal: false,
            ingress: false,
            mtu: None,
        },
        allocation: Some(vec![SubnetAllocation {
            subnet: "10.0.1.0/24".parse().unwrap(),
            gateway: "10.0.1.1".parse().unwrap(),
            ip_range: None,
            vni: 4096,
        }]),
        retiring: false,
    }
}

fn service() -> Service {
    Service {
        meta: Meta::with_id("svcaaaaaaaaaaaaaaaaaaaaaa".into()),
        spec: ServiceSpec {
            name: "web".into(),
            labels: BTreeMap::new(),
            mode: ServiceMode::Replicated { replicas: 2 },
            task: TaskTemplate {
                command: vec!["sleep".into(), "600".into()],
                ..Default::default()
            },
            networks: vec![],
            endpoint: EndpointSpec::default(),
            update: Default::default(),
        },
        virtual_ips: vec![],
        ports: vec![],
    }
}

fn task(id: &str, slot: u64, node: &str, addr: &str) -> Task {
    Task {
        meta: Meta::with_id(id.into()),
        service_id: service().meta.id,
        slot,
        node_id: Some(node.into()),
        desired_state: TaskState::Running,
        status: TaskStatus {
            state: TaskState::Assigned,
            timestamp: Utc::now(),
            message: String::new(),
            err: None,
            exit_code: None,
        },
        spec: service().spec.task,
        networks: vec![NetworkAttachment {
            network_id: network().meta.id,
            addresses: vec![format!("{addr}/24").parse().unwrap()],
            aliases: vec![],
        }],
    }
}

fn assignments(revision: u64, tasks: Vec<Task>) -> Assignments {
    Assignments {
        revision,
        tasks,
        networks: vec![network()],
        services: vec![service()],
        data_path_port: 4789,
        gossip_keys: vec![],
        ..Default::default()
    }
}

struct NodeRun {
    gossip: Arc<Gossip>,
    tx: AssignmentFeed,
    status: mpsc::Receiver<StatusReport>,
    handle: node::Handle,
}

fn config(lab: &Lab, i: usize) -> Config {
    let n = lab.node(i);
    Config {
        node_id: format!("n{i}"),
        state_dir: n.dir().join("state"),
        netns_prefix: format!("{}-n{i}-", lab.prefix()),
        cgroup: Some(n.cgroup().unwrap().join("tasks")),
        shim: vec![env!("CARGO_BIN_EXE_netagent-shim").into()],
        vtep: n.addr(),
        node_netns: Some(n.ns().path().to_path_buf()),
        gwbridge: "docker_gwbridge".into(),
        stop_grace: Duration::from_secs(2),
        drain: Duration::from_secs(1),
        resolv_conf: "nameserver 127.0.0.11\noptions ndots:0\n".into(),
        retry: Duration::from_millis(200),
        gossip_settle: Duration::from_secs(1),
        fast_path: true,
        bpf_dir: Some(n.bpffs().unwrap().join("fastpath")),
        mesh_bpf_dir: Some(n.bpffs().unwrap().join("mesh")),
        ingress_snat: false,
        return_hold: Duration::from_secs(2),
        fault_file: None,
    }
}

async fn start(lab: &Lab, i: usize) -> NodeRun {
    start_with(lab, i, config(lab, i)).await
}

async fn start_with(lab: &Lab, i: usize, config: Config) -> NodeRun {
    let n = lab.node(i);
    let addr = SocketAddr::new(IpAddr::V4(n.addr()), gossip::DEFAULT_PORT);
    // A gossip instance shut down a moment ago may still hold the port while its tasks wind down.
    let mut socket = None;
    for _ in 0..100 {
        match n.in_ns(move || gossip::Sockets::bind(addr)).unwrap() {
            Ok(s) => {
                socket = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let socket = socket.expect("bind the gossip port");
    let mut cfg = gossip::Config::new(
        format!("n{i}"),
        addr.ip(),
        Keyring::single(Key::new(1, vec![7; 32])),
    );
    cfg.seeds = vec![SocketAddr::new(
        IpAddr::V4(lab.node(1).addr()),
        gossip::DEFAULT_PORT,
    )];
    cfg.timings = Timings::fast();
    let gossip = Arc::new(Gossip::start_with_sockets(cfg, socket).await.unwrap());
    let tx = AssignmentFeed::default();
    let (stx, status) = mpsc::channel(64);
    let handle = node::spawn(
        config,
        gossip.clone(),
        tx.subscribe(),
        stx,
        None,
        None,
        Default::default(),
    )
    .unwrap();
    NodeRun {
        gossip,
        tx,
        status,
        handle,
    }
}

async fn wait_status(run: &mut NodeRun, task: &str, state: TaskState) {
    tokio::time::timeout(LONG, async {
        while let Some((id, st)) = run.status.recv().await {
            if id == task && st.state == state {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("task {task} never reported {state:?}"));
}

fn task_ns(lab: &Lab, i: usize, id: &str) -> netns::NetNs {
    netns::NetNs::open(&format!("{}-n{i}-t-{id}", lab.prefix())).unwrap()
}

fn pings(ns: &netns::NetNs, addr: &str) -> bool {
    ns.command("ping")
        .args(["-c", "1", "-W", "1", "-q", addr])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_reach_each_other_stop_and_vanish() {
    let lab = Lab::new(2).unwrap();
    let mut n1 = start(&lab, 1).await;
    let mut n2 = start(&lab, 2).await;
    let t1 = task("t1aaaaaaaaaaaaaaaaaaaaaaa", 1, "n1", "10.0.1.3");
    let t2 = task("t2aaaaaaaaaaaaaaaaaaaaaaa", 2, "n2", "10.0.1.4");
    n1.tx.replace(assignments(1, vec![t1.clone()]));
    n2.tx.replace(assignments(1, vec![t2.clone()]));
    wait_status(&mut n1, &t1.meta.id, TaskState::Running).await;
    wait_status(&mut n2, &t2.meta.id, TaskState::Running).await;

    // Across the overlay, in both directions, once gossip told each node where the other is.
    let ns1 = task_ns(&lab, 1, &t1.meta.id);
    let ns2 = task_ns(&lab, 2, &t2.meta.id);
    lab.wait_until("t1 reaches t2 over the overlay", LONG, || {
        pings(&ns1, "10.0.1.4")
    })
    .unwrap();
    assert!(pings(&ns2, "10.0.1.3"));
    assert_eq!(
        n1.gossip.endpoints(&network().meta.id).len(),
        2,
        "both endpoints are gossiped"
    );

    // Nothing changed: a new revision of the same assignments writes nothing.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = n1.handle.writes.load(Ordering::Relaxed);
    n1.tx.replace(assignments(2, vec![t1.clone()]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        n1.handle.writes.load(Ordering::Relaxed),
        before,
        "an unchanged pass writes nothing"
    );

    // Shut t2 down: it leaves the load balancers and names first (its entry disabled on the
    // other node while its process still runs: the drain), then stops, reports it, and once
    // unassigned everything of it goes.
    let pid: i32 = std::fs::read_to_string(
        lab.node(2)
            .dir()
            .join("state/tasks")
            .join(&t2.meta.id)
            .join("pid"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let runs = || std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(runs());
    let mut down = t2.clone();
    down.desired_state = TaskState::Shutdown;
    n2.tx.replace(assignments(3, vec![down.clone()]));
    let net = network().meta.id;
    lab.wait_until("n1 sees t2's endpoint disabled", LONG, || {
        n1.gossip
            .endpoints(&net)
            .iter()
            .any(|e| e.endpoint.id == t2.meta.id && e.endpoint.disabled)
    })
    .unwrap();
    assert!(
        runs(),
        "t2 still runs when the other node hears it is out of the load balancers"
    );
    wait_status(&mut n2, &t2.meta.id, TaskState::Shutdown).await;
    down.status.state = TaskState::Shutdown;
    n2.tx.replace(assignments(4, vec![]));
    let name2 = format!("{}-n2-t-{}", lab.prefix(), t2.meta.id);
    lab.wait_until("t2's namespace is removed", LONG, || !netns::exists(&name2))
        .unwrap();
    lab.wait_until("n2's sandbox is removed", LONG, || {
        !netns::list()
            .unwrap()
            .iter()
            .any(|n| n.starts_with(&format!("{}-n2-1-", lab.prefix())))
    })
    .unwrap();
    lab.wait_until("t1 no longer sees t2's endpoint", LONG, || {
        n1.gossip.endpoints(&network().meta.id).len() == 1
    })
    .unwrap();
    assert!(!pings(&ns1, "10.0.1.4"));
    drop(n2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_executor_adopts_its_tasks_and_changes_nothing() {
    let lab = Lab::new(1).unwrap();
    let t1 = task("t3aaaaaaaaaaaaaaaaaaaaaaa", 1, "n1", "10.0.1.5");
    let first = {
        let mut n1 = start(&lab, 1).await;
        n1.tx.replace(assignments(1, vec![t1.clone()]));
        wait_status(&mut n1, &t1.meta.id, TaskState::Running).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop(n1).await;
        std::fs::read_to_string(
            lab.node(1)
                .dir()
                .join("state/tasks")
                .join(&t1.meta.id)
                .join("pid"),
        )
        .unwrap()
    };
    // A new executor (as after an agent restart) with the same assignments.
    let mut again = t1.clone();
    again.status.state = TaskState::Running;
    let n1 = start(&lab, 1).await;
    n1.tx.replace(assignments(2, vec![again]));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        n1.handle.writes.load(Ordering::Relaxed),
        0,
        "the kernel already matched"
    );
    let pid = std::fs::read_to_string(
        lab.node(1)
            .dir()
            .join("state/tasks")
            .join(&t1.meta.id)
            .join("pid"),
    )
    .unwrap();
    assert_eq!(pid, first, "the task kept running, not restarted");
}

/// A shim slower to start the command than the executor waits for at the start (5 s; a loaded
/// machine took longer): the task is reported starting, then running once the command runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_slow_to_start_is_reported_running_once_it_runs() {
    let lab = Lab::new(1).unwrap();
    let mut cfg = config(&lab, 1);
    let shim = cfg.shim.remove(0);
    cfg.shim = vec![
        "sh".into(),
        "-c".into(),
        "sleep 7; exec \"$0\" \"$@\"".into(),
        shim,
    ];
    let mut n1 = start_with(&lab, 1, cfg).await;
    let t = task("t4aaaaaaaaaaaaaaaaaaaaaaa", 1, "n1", "10.0.1.6");
    n1.tx.replace(assignments(1, vec![t.clone()]));
    wait_status(&mut n1, &t.meta.id, TaskState::Starting).await;
    wait_status(&mut n1, &t.meta.id, TaskState::Running).await;
    assert!(
        pings(&task_ns(&lab, 1, &t.meta.id), "10.0.1.6"),
        "the task's namespace has its address"
    );
}

/// A task's saved address on docker_gwbridge, and whether its namespace has it.
fn gateway_of(lab: &Lab, id: &str) -> String {
    let file = lab
        .node(1)
        .dir()
        .join("state/tasks")
        .join(id)
        .join("gateway");
    let addr = std::fs::read_to_string(file).unwrap().trim().to_string();
    let out = task_ns(lab, 1, id)
        .command("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains(&format!(" {addr}/")),
        "task {id} has its gateway address {addr}: {shown}"
    );
    addr
}

/// Stops a node's executor and gossip (as an agent restart does; its tasks go on).
async fn stop(run: NodeRun) {
    run.handle.task.abort();
    let _ = run.handle.task.await;
    Arc::try_unwrap(run.gossip)
        .ok()
        .expect("only the test holds gossip now")
        .shutdown()
        .await
        .unwrap();
}

/// Addresses on docker_gwbridge: each task on a node has its own; a removed task's is handed
/// out again; an executor started anew (as after an agent restart) never hands out one that a
/// running task holds (it reads them from the task directories once, then keeps them itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_addresses_are_unique_freed_and_known_after_a_restart() {
    let lab = Lab::new(1).unwrap();
    let ta = task("t5aaaaaaaaaaaaaaaaaaaaaaa", 1, "n1", "10.0.1.7");
    let tb = task("t6aaaaaaaaaaaaaaaaaaaaaaa", 2, "n1", "10.0.1.8");
    let tc = task("t7aaaaaaaaaaaaaaaaaaaaaaa", 3, "n1", "10.0.1.9");
    let td = task("t8aaaaaaaaaaaaaaaaaaaaaaa", 4, "n1", "10.0.1.10");
    let mut n1 = start(&lab, 1).await;
    n1.tx.replace(assignments(1, vec![ta.clone(), tb.clone()]));
    wait_status(&mut n1, &ta.meta.id, TaskState::Running).await;
    wait_status(&mut n1, &tb.meta.id, TaskState::Running).await;
    let (a, b) = (gateway_of(&lab, &ta.meta.id), gateway_of(&lab, &tb.meta.id));
    assert_ne!(a, b, "two tasks, two addresses");

    // tb goes: its address is free for the next task.
    let mut down = tb.clone();
    down.desired_state = TaskState::Shutdown;
    n1.tx.replace(assignments(2, vec![ta.clone(), down]));
    wait_status(&mut n1, &tb.meta.id, TaskState::Shutdown).await;
    n1.tx.replace(assignments(3, vec![ta.clone()]));
    let dir_b = lab.node(1).dir().join("state/tasks").join(&tb.meta.id);
    lab.wait_until("tb's directory is removed", LONG, || !dir_b.exists())
        .unwrap();
    n1.tx.replace(assignments(4, vec![ta.clone(), tc.clone()]));
    wait_status(&mut n1, &tc.meta.id, TaskState::Running).await;
    let c = gateway_of(&lab, &tc.meta.id);
    assert_eq!(c, b, "the lowest free address is tb's, free again");
    stop(n1).await;

    // A new executor: ta and tc keep theirs, td gets a third.
    let mut n1 = start(&lab, 1).await;
    let running = |t: &Task| {
        let mut t = t.clone();
        t.status.state = TaskState::Running;
        t
    };
    n1.tx
        .replace(assignments(5, vec![running(&ta), running(&tc), td.clone()]));
    wait_status(&mut n1, &td.meta.id, TaskState::Running).await;
    let d = gateway_of(&lab, &td.meta.id);
    assert_eq!(gateway_of(&lab, &ta.meta.id), a, "ta kept its address");
    assert_eq!(gateway_of(&lab, &tc.meta.id), c, "tc kept its address");
    assert!(d != a && d != c, "td got an address nobody holds: {d}");
}

/// A task started on the ingress network is published there (and reported running) only once
/// its return path lists every node's sbox: an sbox that balanced a connection to it before
/// would lose the client's SYN. Here the hold has no time limit that matters (60 s): only n2's
/// sbox appearing releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_on_ingress_serves_once_it_knows_every_sbox() {
    use model::service::{PortConfig, Protocol, PublishMode};
    let lab = Lab::new(2).unwrap();
    let mut cfg = config(&lab, 1);
    cfg.return_hold = Duration::from_secs(60);
    let mut n1 = start_with(&lab, 1, cfg).await;
    let n2 = start(&lab, 2).await;
    let mut ingress = network();
    ingress.meta = Meta::with_id("ingaaaaaaaaaaaaaaaaaaaaaa".into());
    ingress.spec.name = "ingress".into();
    ingress.spec.ingress = true;
    let mut svc = service();
    svc.ports = vec![PortConfig {
        published: 8080,
        target: 80,
        protocol: Protocol::Tcp,
        mode: PublishMode::Ingress,
    }];
    let mut t = task("t9aaaaaaaaaaaaaaaaaaaaaaa", 1, "n1", "10.0.1.3");
    t.networks[0].network_id = ingress.meta.id.clone();
    let on_ingress = |revision: u64, tasks: Vec<Task>, sbox: &str| Assignments {
        revision,
        tasks,
        networks: vec![ingress.clone()],
        services: vec![svc.clone()],
        data_path_port: 4789,
        attachments: vec![NetworkAttachment {
            network_id: ingress.meta.id.clone(),
            addresses: vec![format!("{sbox}/24").parse().unwrap()],
            aliases: vec![],
        }],
        nodes: vec![("n1".into(), false), ("n2".into(), false)],
        ..Default::default()
    };
    n1.tx.replace(on_ingress(1, vec![t.clone()], "10.0.1.250"));
    let net = ingress.meta.id.clone();
    lab.wait_until("t9 is published disabled (held)", LONG, || {
        n1.gossip
            .endpoints(&net)
            .iter()
            .any(|e| e.endpoint.id == t.meta.id && e.endpoint.disabled)
    })
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut seen = vec![];
    while let Ok((id, st)) = n1.status.try_recv() {
        if id == t.meta.id {
            seen.push(st.state);
        }
    }
    assert!(
        !seen.contains(&TaskState::Running),
        "not running while n2's sbox is unknown: {seen:?}"
    );
    // n2 gets its sbox on ingress (an address there, the publishing service): t9 is released.
    n2.tx.replace(on_ingress(1, vec![], "10.0.1.251"));
    wait_status(&mut n1, &t.meta.id, TaskState::Running).await;
    lab.wait_until("n2 sees t9 enabled", LONG, || {
        n2.gossip
            .endpoints(&net)
            .iter()
            .any(|e| e.endpoint.id == t.meta.id && !e.endpoint.disabled)
    })
    .unwrap();
}
