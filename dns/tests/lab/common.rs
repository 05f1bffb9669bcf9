//! Helpers of the dns lab tests: a lab whose node1 is "the node" (upstream sockets are made in
//! its namespace) and node2 hosts the upstream resolvers (dnsmasq, serving a test zone only);
//! a task namespace with the embedded server bound at 127.0.0.11:53; dig run inside it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use dns::{Change, Config, Listener, Resolver};
use lab::{Lab, Node, ProcSpec};
use netns::NetNs;
use tokio::runtime::Runtime;

/// Skips a test that needs root (namespaces).
#[macro_export]
macro_rules! need_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (network namespaces, port 53)");
            return;
        }
    };
}

/// Upstream A: dnsmasq on node2's underlay address.
pub const UP_A: &str = "198.18.0.2:53";
/// Upstream B: dnsmasq on node2 at an address inside the task's "overlay" subnet 10.0.1.0/24,
/// reachable from node1 (by a route) but not from the task namespace.
pub const UP_SHADOWED: &str = "10.0.1.53:53";
/// Nothing listens here: the kernel answers port unreachable at once.
pub const UP_CLOSED: &str = "198.18.0.2:5301";
/// A socket that reads nothing and never answers.
pub const UP_SILENT: &str = "198.18.0.2:5302";

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Everything one test needs. Fields drop in order: listener, resolver, runtime, then the lab.
pub struct Env {
    pub listener: Listener,
    pub resolver: Arc<Resolver>,
    _rt: Runtime,
    pub task: NetNs,
    /// Keeps UP_SILENT bound.
    _silent: UdpSocket,
    _lab: Lab,
}

pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A task namespace (lo up) named after the lab, so the lab removes it.
pub fn task_ns(lab: &Lab, name: &str) -> NetNs {
    let ns = NetNs::create(&format!("{}-t-{name}", lab.prefix())).unwrap();
    ip(&ns, &["link", "set", "lo", "up"]);
    ns
}

pub fn ip(ns: &NetNs, args: &[&str]) {
    let out = ns.command("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts dnsmasq on `node` listening on `addr:53`, serving only `records` (host-records) and
/// answering nothing else from anywhere (no resolv.conf, no hosts file, no upstream).
pub fn dnsmasq(node: &Node, name: &str, addr: &str, records: &[&str]) {
    let mut spec = ProcSpec::new(name, "dnsmasq").args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
        "--pid-file=",
        "--log-facility=-",
        "--log-queries",
        // Names under lab.test without a record are NXDOMAIN, never sent anywhere.
        "--local=/lab.test/",
    ]);
    spec = spec.arg(format!("--listen-address={addr}"));
    for r in records {
        spec = spec.arg(format!("--host-record={r}"));
    }
    node.spawn(spec).unwrap();
    let probe = records[0].split(',').next().unwrap().to_string();
    let server = format!("@{addr}");
    lab::wait_until(
        &format!("dnsmasq {name} answering on {addr}"),
        Duration::from_secs(10),
        &mut || {
            node.run(&["dig", &server, "+short", "+time=1", "+tries=1", &probe])
                .map(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
                .unwrap_or(false)
        },
    )
    .unwrap();
}

/// The lab, both upstreams running, and a task namespace served by a resolver whose upstream
/// sockets are made in node1's namespace.
pub fn env(tweak: impl FnOnce(&mut Config)) -> Env {
    let lab = Lab::new(2).unwrap();
    let (n1, n2) = (lab.node(1), lab.node(2));
    // node2 holds the shadowed upstream's address; node1 routes the "overlay" subnet to it.
    n2.sh("ip addr add 10.0.1.53/32 dev lo").unwrap();
    n1.sh("ip route add 10.0.1.0/24 via 198.18.0.2").unwrap();
    dnsmasq(
        n2,
        "dnsmasq-a",
        "198.18.0.2",
        &[
            "www.lab.test,198.51.100.10",
            "api,198.51.100.66",
            "big.lab.test,198.51.100.11",
        ],
    );
    dnsmasq(
        n2,
        "dnsmasq-shadowed",
        "10.0.1.53",
        &["www.lab.test,198.51.100.20"],
    );
    let silent = n2.in_ns(|| UdpSocket::bind(UP_SILENT).unwrap()).unwrap();
    // The task namespace has the overlay subnet on an interface of its own (a veth whose peer
    // stays in the namespace and answers nothing), so 10.0.1.53 is "on link" there and
    // unreachable: only the node's namespace reaches it.
    let task = task_ns(&lab, "task1");
    ip(
        &task,
        &[
            "link", "add", "ovl0", "type", "veth", "peer", "name", "ovl0p",
        ],
    );
    ip(&task, &["addr", "add", "10.0.1.1/24", "dev", "ovl0"]);
    ip(&task, &["link", "set", "ovl0", "up"]);
    ip(&task, &["link", "set", "ovl0p", "up"]);

    let mut config = Config {
        upstreams: vec![sa(UP_A)],
        upstream_netns: Some(NetNs::open(n1.ns().name()).unwrap()),
        upstream_timeout: Duration::from_millis(700),
        ..Config::default()
    };
    tweak(&mut config);
    let resolver = Resolver::new(config).unwrap();
    resolver.apply(sample());
    let rt = runtime();
    let (udp, tcp) = dns::bind_in(&task).unwrap();
    let listener = {
        let _g = rt.enter();
        resolver.serve(udp, tcp, vec!["n1".into()]).unwrap()
    };
    Env {
        listener,
        resolver,
        _rt: rt,
        task,
        _silent: silent,
        _lab: lab,
    }
}

/// Networks n1 "front" (the task's) and n2 "back" (not the task's).
pub fn sample() -> Vec<Change> {
    let mut c = vec![
        Change::PutNetwork {
            id: "n1".into(),
            name: "front".into(),
        },
        Change::PutNetwork {
            id: "n2".into(),
            name: "back".into(),
        },
        svc("n1", "s-web", "web", Some("10.0.1.2"), &["www"]),
        svc("n1", "s-rr", "rr", None, &[]),
        svc("n2", "s-api", "api", Some("10.0.2.2"), &[]),
        task("n2", "a1", "s-api", "10.0.2.10", "api.1.a1"),
    ];
    for i in 1..=3 {
        c.push(task(
            "n1",
            &format!("w{i}"),
            "s-web",
            &format!("10.0.1.1{i}"),
            &format!("web.{i}.w{i}"),
        ));
    }
    for i in 1..=6 {
        c.push(task(
            "n1",
            &format!("r{i}"),
            "s-rr",
            &format!("10.0.1.2{i}"),
            &format!("rr.{i}.r{i}"),
        ));
    }
    c
}

pub fn svc(network: &str, id: &str, name: &str, vip: Option<&str>, aliases: &[&str]) -> Change {
    Change::PutService {
        network: network.into(),
        id: id.into(),
        name: name.into(),
        vip: vip.map(|v| v.parse().unwrap()),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
    }
}

pub fn task(network: &str, id: &str, service: &str, addr: &str, name: &str) -> Change {
    Change::PutTask {
        network: network.into(),
        id: id.into(),
        service: service.into(),
        addr: addr.parse().unwrap(),
        name: name.into(),
        aliases: vec![],
    }
}

/// One answer record as dig prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rr {
    pub name: String,
    pub ttl: u32,
    pub rtype: String,
    pub data: String,
}

#[derive(Debug)]
pub struct Dig {
    /// NOERROR, NXDOMAIN, SERVFAIL, REFUSED... or TIMEOUT when nothing came back.
    pub status: String,
    pub flags: Vec<String>,
    pub answers: Vec<Rr>,
    pub raw: String,
}

impl Dig {
    pub fn data(&self) -> Vec<String> {
        self.answers.iter().map(|a| a.data.clone()).collect()
    }

    pub fn sorted(&self) -> Vec<String> {
        let mut d = self.data();
        d.sort();
        d
    }
}

/// `dig @127.0.0.11 ARGS` inside `ns` (one try, 3 s), parsed.
pub fn dig(ns: &NetNs, args: &[&str]) -> Dig {
    dig_at(ns, "@127.0.0.11", args)
}

pub fn dig_at(ns: &NetNs, server: &str, args: &[&str]) -> Dig {
    let out = ns
        .command("dig")
        .args([
            server,
            "+time=3",
            "+tries=1",
            "+noall",
            "+comments",
            "+answer",
        ])
        .args(args)
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut status = "TIMEOUT".to_string();
    let mut flags = Vec::new();
    let mut answers = Vec::new();
    for line in raw.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            status = rest.split(',').next().unwrap_or("").to_string();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            flags = rest
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect();
        } else if !line.starts_with(';') && !line.trim().is_empty() {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() >= 5 {
                answers.push(Rr {
                    name: w[0].to_string(),
                    ttl: w[1].parse().unwrap_or(u32::MAX),
                    rtype: w[3].to_string(),
                    data: w[4..].join(" "),
                });
            }
        }
    }
    Dig {
        status,
        flags,
        answers,
        raw,
    }
}

/// A UDP socket made inside `ns` (it stays there), connected to 127.0.0.11:53.
pub fn client_udp(ns: &NetNs) -> UdpSocket {
    ns.run(|| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect("127.0.0.11:53").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    })
    .unwrap()
}

/// A TCP connection made inside `ns` to 127.0.0.11:53.
pub fn client_tcp(ns: &NetNs) -> std::net::TcpStream {
    ns.run(|| {
        let s = std::net::TcpStream::connect("127.0.0.11:53").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    })
    .unwrap()
}

/// A standard query for `name` A, encoded, with id `id`.
pub fn query_bytes(id: u16, name: &str) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

pub fn parse(bytes: &[u8]) -> hickory_proto::op::Message {
    hickory_proto::op::Message::from_vec(bytes).unwrap()
}
