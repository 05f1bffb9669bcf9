//! `cargo xtask bench ingress`: requests/s through the routing mesh to a task on another node
//! vs straight to that task over the same overlay, same run. A request is one line sent and one
//! line answered; measured twice: each request on a new TCP connection (every hop's conntrack
//! and NAT set up and torn down per request), and requests on kept-alive connections as wrk
//! sends them (the per-packet cost of the extra hops only). Lab: 3 nodes with an ingress
//! overlay and an ingress-sbox each, the task on node 1, a client namespace on the underlay
//! (node 4). Mesh: client -> node 3's address -> node 3's sbox -> VXLAN -> task, with node 3's eBPF
//! shortcut (the default: past node 3's stack into the sbox, `vxlan::meshpath`) and through node
//! 3's nftables DNAT and docker_gwbridge (the shortcut off), in turns. Direct: node 3's sbox
//! namespace -> VXLAN -> task. Host mode: the same client to a port node 1 publishes in host mode,
//! DNATed there straight to the task (the task reached from outside without the mesh). Last, the
//! direct path again with node 3's shortcut attached: what the shortcut costs node 3's other
//! traffic (here the task's VXLAN answers, each one a look into its port map).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lab::Lab;
use netns::NetNs;
use vxlan::ingress::{
    HostPort, Ingress, IngressState, MeshPort, Proto, SBOX_GW_IF, Sbox, TaskReturn,
};
use vxlan::{
    Config, Dataplane, DesiredState, Endpoint, GatewayEndpoint, GwBridge, Network, NetworkState,
    Peer,
};

/// The sbox's interface on the ingress overlay in this bench.
const SBOX_INGRESS_IF: &str = "eth0";

const NET: &str = "ingressbench000000000001";
const TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 21);
const SBOX_GW: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
const TASK_GW: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 3);
const SECONDS: u64 = 3;
/// Node 1's host-mode port for the task.
const HOST_PORT: u16 = 9090;
const THREADS: usize = 8;
const ROUNDS: usize = 3;

fn sbox_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, 10 + i as u8)
}

fn ep(path: &std::path::Path, ifname: &str, address: Ipv4Addr) -> Endpoint {
    Endpoint {
        network: NET.into(),
        netns: path.to_path_buf(),
        ifname: ifname.into(),
        address,
        mac: None,
    }
}

fn gw_ep(path: &std::path::Path, ifname: &str, address: Ipv4Addr) -> GatewayEndpoint {
    GatewayEndpoint {
        netns: path.to_path_buf(),
        ifname: ifname.into(),
        address,
        mac: None,
        default_route: true,
    }
}

/// How the client sends its requests.
#[derive(Clone, Copy)]
enum Mode {
    /// A new connection per request.
    Connect,
    /// One connection per client thread, kept for all its requests (as wrk does).
    KeepAlive,
}

/// One request on `c`: a line out, a line back. `last` asks the server to close after its answer,
/// so the server, not the client, holds the TIME_WAIT (a client closing 5,000 connections a
/// second runs out of ports).
fn request(c: &mut BufReader<TcpStream>, last: bool) -> std::io::Result<bool> {
    c.get_mut().write_all(if last { b"c\n" } else { b"k\n" })?;
    let mut line = String::new();
    c.read_line(&mut line)?;
    if last {
        // Wait for the server's close.
        let mut rest = String::new();
        c.read_line(&mut rest)?;
    }
    Ok(!line.is_empty())
}

/// A TCP connection to `to` from `source` (any of the namespace's addresses when `None`), given
/// up after 2 s.
fn connect_from(source: Option<Ipv4Addr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;
    let Some(source) = source else {
        return TcpStream::connect_timeout(&to, Duration::from_secs(2));
    };
    let SocketAddr::V4(to) = to else {
        return Err(std::io::ErrorKind::Unsupported.into());
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(source, 0)),
    )?;
    // A blocking connect gives up after the send timeout.
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(2, 0),
    )?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(fd))
}

/// Requests/s from `ns` (from `source` there, when given) to `to` with THREADS client threads in
/// a loop for SECONDS.
fn rate(ns: &NetNs, source: Option<Ipv4Addr>, to: SocketAddr, mode: Mode) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..THREADS {
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            sc.spawn(move || {
                ns.run(|| {
                    let connect = || {
                        let c = connect_from(source, to)?;
                        c.set_read_timeout(Some(Duration::from_secs(2)))?;
                        c.set_nodelay(true)?;
                        Ok::<_, std::io::Error>(BufReader::new(c))
                    };
                    let mut kept = None;
                    while !stop.load(Ordering::Relaxed) {
                        let ok = match mode {
                            Mode::Connect => connect().and_then(|mut c| request(&mut c, true)),
                            // A failed connection is dropped; the next request opens one.
                            Mode::KeepAlive => {
                                kept.take().map_or_else(connect, Ok).and_then(|mut c| {
                                    let ok = request(&mut c, false)?;
                                    kept = Some(c);
                                    Ok(ok)
                                })
                            }
                        }
                        .unwrap_or(false);
                        if ok {
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .unwrap();
            });
        }
        std::thread::sleep(Duration::from_secs(SECONDS));
        stop.store(true, Ordering::Relaxed);
    });
    let secs = start.elapsed().as_secs_f64();
    (
        done.load(Ordering::Relaxed) as f64 / secs,
        failed.load(Ordering::Relaxed),
    )
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let lab = Lab::new(4).unwrap();
    let prefix = |i: usize| format!("{}-n{i}-", lab.prefix());
    let task = NetNs::create(&format!("{}-t-bench", lab.prefix())).unwrap();
    let task_path = task.path().to_path_buf();
    let net = Network {
        id: NET.into(),
        vni: 4096,
        subnet: "10.0.0.0/24".parse().unwrap(),
        gateway: Ipv4Addr::new(10, 0, 0, 1),
        mtu: None,
        internal: false,
        encrypted: false,
    };
    let mut states = Vec::new();
    for i in 1..=3 {
        let node = NetNs::open(lab.node(i).ns().name()).unwrap();
        let mut m = Ingress::new(NetNs::open(lab.node(i).ns().name()).unwrap(), prefix(i));
        let sbox: PathBuf = m.ensure_sbox_ns().unwrap();
        let mut endpoints = vec![ep(&sbox, SBOX_INGRESS_IF, sbox_ip(i))];
        let mut gws = vec![gw_ep(&sbox, SBOX_GW_IF, SBOX_GW)];
        let mut peers: Vec<Peer> = (1..=3)
            .filter(|j| *j != i)
            .map(|j| Peer::new(sbox_ip(j), lab.node(j).addr()))
            .collect();
        if i == 1 {
            endpoints.push(ep(&task_path, "eth0", TASK));
            gws.push(gw_ep(&task_path, "eth1", TASK_GW));
        } else {
            peers.push(Peer::new(TASK, lab.node(1).addr()));
        }
        let mut cfg = Config::new(node, lab.node(i).addr());
        cfg.prefix = prefix(i);
        let mut dp = Dataplane::new(cfg).unwrap();
        dp.apply(&DesiredState {
            networks: vec![NetworkState {
                network: net.clone(),
                endpoints,
                peers,
            }],
            gwbridge: Some(GwBridge::new("172.18.0.0/16".parse().unwrap())),
            gateway_endpoints: gws,
        })
        .unwrap();
        let state = IngressState {
            sbox: Some(Sbox {
                gw_addr: SBOX_GW,
                ports: vec![MeshPort {
                    proto: Proto::Tcp,
                    published: 8080,
                    target: 80,
                    backends: vec![TASK],
                }],
                snat: false,
            }),
            // Node 1 also publishes the task's port 80 in host mode: the client straight to the
            // task, without the mesh.
            host_ports: match i {
                1 => vec![HostPort {
                    proto: Proto::Tcp,
                    published: HOST_PORT,
                    target: 80,
                    task: TASK_GW,
                }],
                _ => vec![],
            },
        };
        m.apply(&state).unwrap();
        states.push(state);
        if i == 1 {
            m.ensure_task_return(&TaskReturn {
                netns: task_path.clone(),
                ifname: "eth0".into(),
                sboxes: (1..=3).map(sbox_ip).collect(),
            })
            .unwrap();
        }
    }
    task.command("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    let listener = task
        .run(|| TcpListener::bind(("0.0.0.0", 80)).unwrap())
        .unwrap();
    let listener = Arc::new(listener);
    // Blocking workers, each serving one connection to its end: enough for every client thread
    // to hold a kept-alive connection. They are left blocked in accept when the bench ends.
    for _ in 0..2 * THREADS {
        let listener = listener.clone();
        std::thread::spawn(move || {
            while let Ok((c, peer)) = listener.accept() {
                let _ = c.set_nodelay(true);
                let mut w = match c.try_clone() {
                    Ok(w) => w,
                    Err(_) => continue,
                };
                let reply = format!("peer={}\n", peer.ip());
                for line in BufReader::new(c).lines() {
                    let Ok(line) = line else { break };
                    if w.write_all(reply.as_bytes()).is_err() || line == "c" {
                        break;
                    }
                }
            }
        });
    }
    let client = NetNs::open(lab.node(4).ns().name()).unwrap();
    let sbox3 = NetNs::open(&format!("{}ingress_sbox", prefix(3))).unwrap();
    let node3 = NetNs::open(lab.node(3).ns().name()).unwrap();
    let mesh3 = SocketAddr::from((lab.node(3).addr(), 8080));
    // Node 3's eBPF shortcut (client -> sbox past node 3's stack), switched on and off between
    // runs; where the kernel cannot run it, its path is measured without.
    let can_shortcut = vxlan::fast_path_status(true).is_active();
    if !can_shortcut {
        println!(
            "  (the kernel cannot run the mesh shortcut: its path runs through nftables here)"
        );
    }
    let shortcut = |on: bool| {
        let node = lab.node(3);
        Ingress::new(NetNs::open(node.ns().name()).unwrap(), prefix(3))
            .with_shortcut(node.bpffs().unwrap().join("mesh"), on && can_shortcut)
            .apply(&states[2])
            .unwrap();
    };
    // The client's second address, for its connections through node1: the task sees the
    // client's own address and port through every node, and the client's TCP timestamps differ
    // per destination address, so connections through node1 from the address the node3 paths
    // use would meet their TIME_WAIT sockets at the task with an older timestamp (PAWS) and be
    // refused until the client sends the SYN again, which then charged one path for another
    // path's run (docs/ingress.md). The bench measures each path on its own.
    let second = {
        let mut o = lab.node(4).addr().octets();
        o[3] = o[3].wrapping_add(100);
        Ipv4Addr::from(o)
    };
    lab.node(4)
        .run_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{second}/{}", lab::UNDERLAY_PREFIX_LEN),
            "dev",
            lab::NODE_IFACE,
        ])
        .unwrap();
    // Warm up ARP and conntrack.
    let _ = rate(&client, None, mesh3, Mode::Connect);
    // The paths, entered further and further out; measured in turns, ROUNDS times, and the
    // median of each kept, so a busy machine's swings hit every path alike.
    let paths: [Path; 8] = [
        Path {
            name: "direct: node3's sbox -> task (the overlay only)",
            from: &sbox3,
            source: None,
            to: SocketAddr::from((TASK, 80)),
            shortcut: false,
        },
        Path {
            name: "node3 -> sbox's gwbridge address (+ veth hop, sbox DNAT)",
            from: &node3,
            source: None,
            to: SocketAddr::from((SBOX_GW, 8080)),
            shortcut: false,
        },
        Path {
            name: "node3 -> its own address (+ node DNAT, output hook)",
            from: &node3,
            source: None,
            to: mesh3,
            shortcut: false,
        },
        Path {
            name: "mesh: client -> node3 (+ underlay hop, prerouting DNAT)",
            from: &client,
            source: None,
            to: mesh3,
            shortcut: false,
        },
        Path {
            name: "mesh: client -> node3, eBPF shortcut (the default)",
            from: &client,
            source: None,
            to: mesh3,
            shortcut: true,
        },
        Path {
            name: "host mode: client -> node1:9090 -> task (no mesh)",
            from: &client,
            source: None,
            to: SocketAddr::from((lab.node(1).addr(), HOST_PORT)),
            shortcut: false,
        },
        Path {
            name: "mesh: client -> node1 (the task's own node)",
            from: &client,
            source: Some(second),
            to: SocketAddr::from((lab.node(1).addr(), 8080)),
            shortcut: false,
        },
        // The first path again with node3's shortcut attached: na_mesh_in then looks at every
        // packet arriving on node3's underlay interface, here the task's VXLAN answers (a
        // port-map miss each), which is what the shortcut costs traffic other than the mesh's.
        Path {
            name: "direct again, node3's shortcut attached (its cost)",
            from: &sbox3,
            source: None,
            to: SocketAddr::from((TASK, 80)),
            shortcut: true,
        },
    ];
    for (mode, label) in [
        (Mode::Connect, "a new connection per request"),
        (Mode::KeepAlive, "kept-alive connections, as wrk"),
    ] {
        measure(&paths, mode, label, &shortcut, &task);
    }
}

/// One path of the bench: from a namespace to an address, with node 3's shortcut on or off.
struct Path<'a> {
    name: &'static str,
    from: &'a NetNs,
    /// The client's address for this path, when not the namespace's own.
    source: Option<Ipv4Addr>,
    to: SocketAddr,
    shortcut: bool,
}

/// SYNs the task's TIME_WAIT sockets refused for an older timestamp (`TcpExt PAWSTimewait` in
/// `ns`): the client then sends its SYN again a second later.
fn paws_rejects(ns: &NetNs) -> u64 {
    let text = ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/netstat"))
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("TcpExt:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    match rows.as_slice() {
        [names, values, ..] => names
            .iter()
            .position(|n| *n == "PAWSTimewait")
            .and_then(|i| values.get(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// Every path measured in turns, ROUNDS times; prints each path's median and its ratio to the
/// first (direct) path.
fn measure(paths: &[Path], mode: Mode, label: &str, shortcut: &dyn Fn(bool), task: &NetNs) {
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    let mut failed = vec![0u64; paths.len()];
    let mut ct = vec![0u64; paths.len()];
    for round in 0..ROUNDS {
        // Each round starts one path further: a drift over the run (connections per request fill
        // every namespace's conntrack with TIME_WAIT entries) does not always hit the same path.
        for k in 0..paths.len() {
            let i = (k + round) % paths.len();
            let p = &paths[i];
            shortcut(p.shortcut);
            let before = paws_rejects(task);
            let (r, f) = rate(p.from, p.source, p.to, mode);
            ct[i] += paws_rejects(task) - before;
            runs[i].push(r);
            failed[i] += f;
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let direct = median(&runs[0]).max(1.0);
    println!(
        "ingress bench, {label} ({THREADS} client threads, {SECONDS} s per run, {ROUNDS} rounds \
         in turns, median):"
    );
    for (i, p) in paths.iter().enumerate() {
        let (name, m) = (p.name, median(&runs[i]));
        let all: Vec<String> = runs[i].iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "  {name:<58} {m:>7.0} req/s  {:.2}x  (runs {}; {} failed; {} SYNs refused by the \
             task's TIME_WAIT for an older timestamp)",
            m / direct,
            all.join(", "),
            failed[i],
            ct[i]
        );
    }
    println!(
        "  mesh / direct ({label}): {:.2}x with the eBPF shortcut, {:.2}x through nftables",
        median(&runs[4]) / direct,
        median(&runs[3]) / direct
    );
    println!(
        "  mesh / host mode, same client ({label}): {:.2}x with the eBPF shortcut, {:.2}x through \
         nftables",
        median(&runs[4]) / median(&runs[5]).max(1.0),
        median(&runs[3]) / median(&runs[5]).max(1.0)
    );
    println!(
        "  the shortcut's cost on node3's other traffic ({label}): the overlay path with it \
         attached {:.2}x the same without",
        median(&runs[7]) / direct
    );
}
