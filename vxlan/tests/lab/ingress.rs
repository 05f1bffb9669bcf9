//! The routing mesh on hand-built nodes: 3 nodes with an ingress overlay, an ingress-sbox each,
//! tasks on node 1 and node 2, and a client namespace on the underlay (lab node 4). Published
//! ports answer through every node, the task sees the client's own underlay address, UDP works
//! both ways, conntrack's timeout governs an established connection, Docker's SNAT stays an
//! option, mode=host opens a port only where its task runs, a second pass writes nothing, and
//! removing the last published port removes the node's table.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::*;
use lab::{Lab, host_snapshot};
use netns::NetNs;
use vxlan::ingress::{
    HostPort, Ingress, IngressState, MeshPort, Proto, SBOX_GW_IF, Sbox, TaskReturn,
};
use vxlan::{DesiredState, GatewayEndpoint, GwBridge, NetworkState};

/// The sbox's interface on the ingress overlay in this test (the agent names it by VNI).
const SBOX_INGRESS_IF: &str = "eth0";

const ING: &str = "ingresstest0000000000001";

fn sbox_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 10 + node as u8)
}

/// Task `t` (1 = A on node 1, 2 = B on node 2).
fn task_ip(t: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 20 + t as u8)
}

const SBOX_GW: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
const TASK_GW: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);

/// A TCP and a UDP server in a task namespace answering `task=NAME peer=IP`; stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &NetNs, name: &str, tcp: u16, udp: u16) -> Server {
        let (listener, sock) = ns
            .run(|| {
                (
                    TcpListener::bind(("0.0.0.0", tcp)).unwrap(),
                    UdpSocket::bind(("0.0.0.0", udp)).unwrap(),
                )
            })
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s1, s2) = (stop.clone(), stop.clone());
        let (n1, n2) = (name.to_string(), name.to_string());
        let t1 = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, peer)) => {
                        c.set_nonblocking(false).unwrap();
                        let _ = writeln!(c, "task={n1} peer={}", peer.ip());
                        // Hold the connection until the client closes it.
                        let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
                        std::thread::spawn(move || {
                            let mut b = [0u8; 64];
                            let _ = c.read(&mut b);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let t2 = std::thread::spawn(move || {
            let mut b = [0u8; 512];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = sock.recv_from(&mut b) {
                    let _ = sock.send_to(format!("task={n2} peer={}", peer.ip()).as_bytes(), peer);
                }
            }
        });
        Server {
            stop,
            threads: vec![t1, t2],
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `count` TCP requests from `client` to `addr:port`: the answers (`task=.. peer=..`), or the
/// errors.
fn requests(
    client: &NetNs,
    addr: Ipv4Addr,
    port: u16,
    count: usize,
) -> Vec<Result<String, String>> {
    let one = || -> Result<String, String> {
        let to = SocketAddr::from((addr, port));
        let c =
            TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(c)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(line.trim().to_string())
    };
    client
        .run(|| {
            let mut out = Vec::new();
            // A broken path fails fast: at most 3 failures.
            while out.len() < count && out.iter().filter(|r: &&Result<_, _>| r.is_err()).count() < 3
            {
                out.push(one());
            }
            out
        })
        .unwrap()
}

fn udp_request(client: &NetNs, addr: Ipv4Addr, port: u16) -> Option<String> {
    client
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            for _ in 0..5 {
                s.send_to(b"hi", (addr, port)).unwrap();
                let mut b = [0u8; 512];
                if let Ok((n, _)) = s.recv_from(&mut b) {
                    return Some(String::from_utf8_lossy(&b[..n]).into_owned());
                }
            }
            None
        })
        .unwrap()
}

struct Node {
    desired: DesiredState,
    ingress: IngressState,
    returns: Vec<TaskReturn>,
}

/// The desired data plane and mesh of swarm node `i` (1..=3) with the tasks' namespaces.
fn node_state(
    lab: &Lab,
    i: usize,
    sbox: &std::path::Path,
    tasks: &[(usize, PathBuf)],
    snat: bool,
) -> Node {
    let mut endpoints = vec![endpoint(ING, sbox, SBOX_INGRESS_IF, sbox_ip(i))];
    let mut gateway_endpoints = vec![GatewayEndpoint {
        netns: sbox.to_path_buf(),
        ifname: SBOX_GW_IF.into(),
        address: SBOX_GW,
        mac: None,
        default_route: true,
    }];
    let mut returns = Vec::new();
    let mut peers = Vec::new();
    for j in 1..=3 {
        if j != i {
            peers.push(peer(sbox_ip(j), lab.node(j).addr()));
        }
    }
    for (t, path) in tasks {
        // Task t runs on node t.
        if *t == i {
            endpoints.push(endpoint(ING, path, "eth0", task_ip(*t)));
            gateway_endpoints.push(GatewayEndpoint {
                netns: path.clone(),
                ifname: "eth1".into(),
                address: TASK_GW,
                mac: None,
                default_route: true,
            });
            returns.push(TaskReturn {
                netns: path.clone(),
                ifname: "eth0".into(),
                sboxes: (1..=3).map(sbox_ip).collect(),
            });
        } else {
            peers.push(peer(task_ip(*t), lab.node(*t).addr()));
        }
    }
    let backends = vec![task_ip(1), task_ip(2)];
    Node {
        desired: DesiredState {
            networks: vec![NetworkState {
                network: network(ING, 4096, "10.0.0.0/24"),
                endpoints,
                peers,
            }],
            gwbridge: Some(GwBridge::new("172.18.0.0/16".parse().unwrap())),
            gateway_endpoints,
        },
        ingress: IngressState {
            sbox: Some(Sbox {
                gw_addr: SBOX_GW,
                ports: vec![
                    MeshPort {
                        proto: Proto::Tcp,
                        published: 8080,
                        target: 80,
                        backends: backends.clone(),
                    },
                    MeshPort {
                        proto: Proto::Udp,
                        published: 8053,
                        target: 53,
                        backends,
                    },
                ],
                snat,
            }),
            host_ports: if i == 1 {
                vec![HostPort {
                    proto: Proto::Tcp,
                    published: 9090,
                    target: 80,
                    task: TASK_GW,
                }]
            } else {
                vec![]
            },
        },
        returns,
    }
}

/// Whether the mesh runs with its eBPF shortcut: with the fast path (`NETAGENT_FAST_PATH=1`),
/// where the kernel has TCX.
fn shortcut() -> bool {
    let active = vxlan::fast_path_status(true).is_active();
    // The kernel lab requires it where the kernel can run it (TCX links or tc filters).
    assert!(
        active || !lab::expect_fast_path(),
        "{}",
        vxlan::fast_path_status(true)
    );
    std::env::var_os("NETAGENT_FAST_PATH").is_some_and(|v| v == "1") && active
}

fn mesh(lab: &Lab, i: usize) -> Ingress {
    let node = lab.node(i);
    let m = Ingress::new(NetNs::open(node.ns().name()).unwrap(), node_prefix(lab, i));
    match shortcut() {
        true => m.with_shortcut(node.bpffs().unwrap().join("mesh"), true),
        false => m,
    }
}

/// Brings node `i` to `n`; returns the writes of the data plane and the mesh.
fn converge(lab: &Lab, i: usize, n: &Node) -> (u64, u64) {
    let mut m = mesh(lab, i);
    m.ensure_sbox_ns().unwrap();
    let mut dp = dataplane(lab, i, 4789);
    dp.apply(&n.desired).unwrap();
    m.apply(&n.ingress).unwrap();
    for r in &n.returns {
        m.ensure_task_return(r).unwrap();
    }
    (dp.writes(), m.writes())
}

fn peers_and_tasks(
    answers: &[Result<String, String>],
) -> (BTreeSet<String>, BTreeSet<String>, Vec<String>) {
    let mut peers = BTreeSet::new();
    let mut tasks = BTreeSet::new();
    let mut errors = Vec::new();
    for a in answers {
        match a {
            Ok(line) => {
                for f in line.split_whitespace() {
                    if let Some(t) = f.strip_prefix("task=") {
                        tasks.insert(t.to_string());
                    }
                    if let Some(p) = f.strip_prefix("peer=") {
                        peers.insert(p.to_string());
                    }
                }
            }
            Err(e) => errors.push(e.clone()),
        }
    }
    (peers, tasks, errors)
}

/// The conntrack entries of a namespace (one line each).
fn conntrack(ns: &NetNs) -> Vec<String> {
    ns.run(|| std::fs::read_to_string("/proc/thread-self/net/nf_conntrack").unwrap_or_default())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn routing_mesh_keeps_the_client_address() {
    need_root!();
    let before = host_snapshot();
    let lab = Lab::new(4).unwrap();
    let client_ns = NetNs::open(lab.node(4).ns().name()).unwrap();
    let client = lab.node(4).addr();
    let (ta, pa) = task(&lab, "a");
    let (tb, pb) = task(&lab, "b");
    let tasks = vec![(1usize, pa.clone()), (2usize, pb.clone())];
    let _sa = Server::start(&ta, "A", 80, 53);
    let _sb = Server::start(&tb, "B", 80, 53);
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let sbox = PathBuf::from(format!("/run/netns/{}ingress_sbox", node_prefix(&lab, i)));
        let n = node_state(&lab, i, &sbox, &tasks, false);
        converge(&lab, i, &n);
        nodes.push(n);
    }

    // TCP through every node, also node 3 which runs no task: all succeed, both tasks answer,
    // and the tasks see the client's own underlay address.
    // 300 requests per node; 60 under TCG, where each takes ~0.1 s (still 2^-59 odds that one
    // task gets them all if the choice were random; round robin shows at once).
    let count = if lab::in_kernel_lab() { 60 } else { 300 };
    for i in 1..=3 {
        let answers = requests(&client_ns, lab.node(i).addr(), 8080, count);
        let (peers, served, errors) = peers_and_tasks(&answers);
        assert!(
            errors.is_empty(),
            "through node {i}: {} failed: {errors:?}",
            errors.len()
        );
        assert_eq!(
            served,
            BTreeSet::from(["A".into(), "B".into()]),
            "through node {i}"
        );
        assert_eq!(
            peers,
            BTreeSet::from([client.to_string()]),
            "through node {i}"
        );
    }

    // UDP both ways through every node, the client's address seen.
    for i in 1..=3 {
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            let a = udp_request(&client_ns, lab.node(i).addr(), 8053)
                .unwrap_or_else(|| panic!("no UDP answer through node {i}"));
            assert!(a.ends_with(&format!("peer={client}")), "{a}");
            seen.insert(a);
        }
        assert_eq!(
            seen.len(),
            2,
            "both tasks answer UDP through node {i}: {seen:?}"
        );
    }

    // With the shortcut, the requests above went past every node's stack both ways.
    for i in 1..=3 {
        let stats = mesh(&lab, i).shortcut_stats().unwrap();
        match shortcut() {
            true => {
                let s = stats.unwrap_or_else(|| panic!("node {i} has no shortcut"));
                assert!(s.to_sbox >= count as u64, "node {i}: {s:?}");
                assert!(s.to_client >= count as u64, "node {i}: {s:?}");
                assert_eq!(s.neigh_failed, 0, "node {i}: {s:?}");
            }
            false => assert_eq!(stats, None, "node {i}"),
        }
    }

    // An established connection through node 3 lives by conntrack: the entry's timeout is the
    // namespace's established timeout (set to 7200 s in node 3's sbox to tell it from any
    // default), not IPVS' 900 s.
    let sbox3 = NetNs::open(&format!("{}ingress_sbox", node_prefix(&lab, 3))).unwrap();
    let key = "net/netfilter/nf_conntrack_tcp_timeout_established";
    sbox3
        .run(|| std::fs::write(format!("/proc/sys/{key}"), "7200"))
        .unwrap()
        .unwrap();
    let held = client_ns
        .run(|| {
            let c = TcpStream::connect((lab.node(3).addr(), 8080)).unwrap();
            let mut line = String::new();
            BufReader::new(c.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            c
        })
        .unwrap();
    let local = held.local_addr().unwrap().port();
    let entries = conntrack(&sbox3);
    // The sbox sees the connection as the node's DNAT gives it (to the sbox's docker_gwbridge
    // address), with or without the shortcut: one client port is one connection either way.
    let sbox_view = entries
        .iter()
        .find(|l| l.contains(&format!("sport={local} ")))
        .unwrap_or_else(|| panic!("no sbox entry for port {local}: {entries:?}"));
    assert!(
        sbox_view.contains(&format!("src={client} dst={SBOX_GW} ")),
        "{sbox_view}"
    );
    let entry = entries
        .iter()
        .find(|l| l.contains(&format!("sport={local} ")) && l.contains("ESTABLISHED"))
        .unwrap_or_else(|| panic!("no conntrack entry for port {local}: {entries:?}"));
    let timeout: u64 = entry.split_whitespace().nth(4).unwrap().parse().unwrap();
    eprintln!("sbox conntrack entry: {entry}");
    assert!((7190..=7200).contains(&timeout), "{entry}");
    let node_entries = conntrack(&NetNs::open(lab.node(3).ns().name()).unwrap());
    let node_entry = node_entries
        .iter()
        .find(|l| l.contains(&format!("sport={local} ")) && l.contains("ESTABLISHED"));
    if shortcut() {
        // The shortcut sends the connection past node 3's stack: only the sbox tracks it.
        assert!(node_entry.is_none(), "{node_entry:?}");
    } else {
        let node_est: u64 = lab
            .node(3)
            .run_ok(&["sysctl", "-n", &key.replace('/', ".")])
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let node_entry =
            node_entry.unwrap_or_else(|| panic!("no node conntrack entry: {node_entries:?}"));
        let t: u64 = node_entry
            .split_whitespace()
            .nth(4)
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            t + 10 >= node_est && t <= node_est,
            "{node_entry} vs {node_est}"
        );
    }
    drop(held);

    // mode=host: node 1 publishes 9090 straight to its task; node 2 does not open it.
    let answers = requests(&client_ns, lab.node(1).addr(), 9090, 20);
    let (peers, served, errors) = peers_and_tasks(&answers);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(served, BTreeSet::from(["A".into()]));
    assert_eq!(peers, BTreeSet::from([client.to_string()]));
    assert!(requests(&client_ns, lab.node(2).addr(), 9090, 1)[0].is_err());

    // A second pass with fresh handles (an agent restart) writes nothing.
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(converge(&lab, i + 1, n), (0, 0), "node {}", i + 1);
    }

    // A connection made through node 3's nftables path continues once the shortcut is attached
    // (the sbox sees the same tuple): the client's byte reaches the task, whose close comes back
    // as an orderly end of stream, not a reset or silence.
    if shortcut() {
        let node = lab.node(3);
        let plain = || {
            Ingress::new(NetNs::open(node.ns().name()).unwrap(), node_prefix(&lab, 3))
                .with_shortcut(node.bpffs().unwrap().join("mesh"), false)
        };
        plain().apply(&nodes[2].ingress).unwrap();
        assert_eq!(plain().shortcut_stats().unwrap(), None);
        let mut c = client_ns
            .run(|| TcpStream::connect((node.addr(), 8080)).unwrap())
            .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = String::new();
        BufReader::new(c.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("task="), "{line}");
        mesh(&lab, 3).apply(&nodes[2].ingress).unwrap();
        let before = mesh(&lab, 3).shortcut_stats().unwrap().unwrap();
        c.write_all(b"x").unwrap();
        let mut rest = [0u8; 64];
        let n = c
            .read(&mut rest)
            .expect("the task's close, through the shortcut");
        assert_eq!(n, 0, "{:?}", &rest[..n]);
        let after = mesh(&lab, 3).shortcut_stats().unwrap().unwrap();
        assert!(after.to_sbox > before.to_sbox && after.to_client > before.to_client);
    }

    // Docker's SNAT as an option: through node 3 the tasks then see its sbox.
    let snat = node_state(
        &lab,
        3,
        &PathBuf::from(format!("/run/netns/{}ingress_sbox", node_prefix(&lab, 3))),
        &tasks,
        true,
    );
    converge(&lab, 3, &snat);
    let (peers, _, errors) = peers_and_tasks(&requests(&client_ns, lab.node(3).addr(), 8080, 20));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(peers, BTreeSet::from([sbox_ip(3).to_string()]));
    converge(&lab, 3, &nodes[2]);

    // A port without running tasks is refused at once, not left hanging.
    let mut none = nodes[2].ingress.clone();
    none.sbox.as_mut().unwrap().ports[0].backends.clear();
    mesh(&lab, 3).apply(&none).unwrap();
    let r = requests(&client_ns, lab.node(3).addr(), 8080, 1);
    assert!(r[0].as_ref().is_err_and(|e| e.contains("refused")), "{r:?}");

    // The last published port gone: the node's table and the sbox go.
    for i in 1..=3 {
        let mut m = mesh(&lab, i);
        m.apply(&IngressState::default()).unwrap();
        m.remove_sbox().unwrap();
        let listed = lab
            .node(i)
            .run(&["nft", "list", "table", "ip", "netagent_ingress"])
            .unwrap();
        assert!(!listed.status.success(), "node {i} keeps its table");
        assert!(!netns::exists(&format!(
            "{}ingress_sbox",
            node_prefix(&lab, i)
        )));
        assert_eq!(
            m.shortcut_stats().unwrap(),
            None,
            "node {i} keeps its shortcut"
        );
        // As tc filters (kernels before 6.6, NETAGENT_TC_FILTERS=1) the programs leave the
        // node's interface too (TCX links are not listed there at all).
        let filters = lab
            .node(i)
            .run_ok(&["tc", "filter", "show", "dev", lab::NODE_IFACE, "ingress"])
            .unwrap();
        assert!(!filters.contains("na_mesh"), "node {i}: {filters}");
    }
    for (t, path) in &tasks {
        let mut m = mesh(&lab, *t);
        m.remove_task_return(path).unwrap();
        let rules = ip(if *t == 1 { &ta } else { &tb }, &["rule", "show"]);
        assert!(!rules.contains("3210"), "{rules}");
    }
    drop(lab);
    assert_eq!(
        host_snapshot(),
        before,
        "the test changed the host's namespace"
    );
}
