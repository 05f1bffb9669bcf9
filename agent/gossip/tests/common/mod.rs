//! One gossip instance per lab node, all in this process: each instance's socket is bound inside
//! its node's namespace, then driven by one shared tokio runtime.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use gossip::{Config, Endpoint, Entry, Gossip, Key, Keyring, Sockets, Subscription, Timings};
use lab::Lab;

pub const PORT: u16 = gossip::DEFAULT_PORT;
/// Generous: the machine may be loaded; timing is measured in the benchmarks, not here.
pub const LONG: Duration = Duration::from_secs(60);

pub fn key(id: u32, byte: u8) -> Key {
    Key::new(id, vec![byte; 32])
}

pub fn is_root() -> bool {
    nix_euid_is_root()
}

fn nix_euid_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub struct Cluster {
    pub lab: Lab,
    pub rt: tokio::runtime::Runtime,
    nodes: Vec<Option<Gossip>>,
    pub keys: Vec<Keyring>,
    pub seeds: Vec<SocketAddr>,
    pub timings: Timings,
}

pub fn addr_of(lab: &Lab, i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab.node(i).addr()), PORT)
}

impl Cluster {
    /// A lab of `n` nodes; nodes `1..=managers` are the seeds. Nothing is started yet.
    pub fn new(n: usize, managers: usize, timings: Timings) -> Cluster {
        let lab = Lab::new(n).expect("lab");
        let seeds = (1..=managers).map(|i| addr_of(&lab, i)).collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Cluster {
            lab,
            rt,
            nodes: (0..n).map(|_| None).collect(),
            keys: vec![Keyring::single(key(1, 0x11)); n],
            seeds,
            timings,
        }
    }

    /// Installs permanent neighbour entries between all nodes (inside the nodes' namespaces).
    /// The kernel's ARP table is shared by all namespaces and capped (gc_thresh3, 1024 by
    /// default): a 50-node lab needs 2,450 entries, and sends to peers whose entry cannot be
    /// created fail with ENOBUFS. Permanent entries are exempt from that cap; a real cluster,
    /// one kernel per node, never hits it.
    pub fn static_neighbours(&self) {
        let n = self.nodes.len();
        let macs: Vec<String> = (1..=n)
            .map(|i| {
                // Not /sys: it shows the host's devices (setns keeps the host's mounts).
                let out = self
                    .lab
                    .node(i)
                    .run_ok(&["ip", "-o", "link", "show", "eth0"])
                    .expect("read eth0 address");
                out.split_whitespace()
                    .skip_while(|w| *w != "link/ether")
                    .nth(1)
                    .expect("eth0 has a MAC")
                    .to_string()
            })
            .collect();
        for i in 1..=n {
            let mut batch = String::new();
            for j in (1..=n).filter(|&j| j != i) {
                batch.push_str(&format!(
                    "neigh replace {} lladdr {} dev eth0 nud permanent\n",
                    self.lab.node(j).addr(),
                    macs[j - 1]
                ));
            }
            let path = self.lab.node(i).dir().join("neigh.batch");
            std::fs::write(&path, batch).expect("write batch");
            self.lab
                .node(i)
                .run_ok(&["ip", "-batch", &path.to_string_lossy()])
                .expect("install neighbours");
        }
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        addr_of(&self.lab, i)
    }

    pub fn config(&self, i: usize) -> Config {
        let mut c = Config::new(
            format!("node{i}"),
            self.addr(i).ip(),
            self.keys[i - 1].clone(),
        );
        c.seeds = self.seeds.clone();
        c.timings = self.timings;
        c
    }

    /// Starts node `i` with [`Cluster::config`].
    pub fn start(&mut self, i: usize) {
        let config = self.config(i);
        self.start_with(i, config);
    }

    pub fn start_with(&mut self, i: usize, config: Config) {
        let sockets = sockets_in(&self.lab, i, config.bind);
        let g = self
            .rt
            .block_on(Gossip::start_with_sockets(config, sockets))
            .expect("gossip starts");
        self.nodes[i - 1] = Some(g);
    }

    pub fn start_all(&mut self) {
        for i in 1..=self.nodes.len() {
            self.start(i);
        }
    }

    pub fn g(&self, i: usize) -> &Gossip {
        self.nodes[i - 1].as_ref().expect("node is running")
    }

    pub fn running(&self) -> impl Iterator<Item = (usize, &Gossip)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(k, g)| g.as_ref().map(|g| (k + 1, g)))
    }

    /// Stops node `i` abruptly, as a crash would.
    pub fn kill(&mut self, i: usize) {
        let g = self.nodes[i - 1].take();
        drop(g);
    }

    pub fn take(&mut self, i: usize) -> Gossip {
        self.nodes[i - 1].take().expect("node is running")
    }

    pub fn wait(&self, what: &str, mut f: impl FnMut() -> bool) {
        self.lab
            .wait_until(what, LONG, &mut f)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.describe()));
    }

    /// Waits until every running node sees every running node alive.
    pub fn wait_converged(&self) {
        let want: Vec<String> = self.running().map(|(i, _)| format!("node{i}")).collect();
        self.wait("every running node sees every other alive", || {
            self.running().all(|(_, g)| {
                let alive: Vec<String> = g
                    .members()
                    .into_iter()
                    .filter(|m| m.alive)
                    .map(|m| m.node_id)
                    .collect();
                want.iter().all(|w| alive.contains(w))
            })
        });
    }

    pub fn publish(&self, i: usize, ep: Endpoint) {
        self.rt
            .block_on(self.g(i).publish_endpoint(ep))
            .expect("publish");
    }

    pub fn withdraw(&self, i: usize, network: &str, id: &str) -> bool {
        self.rt
            .block_on(self.g(i).withdraw_endpoint(network, id))
            .expect("withdraw")
    }

    /// Subscribes every running node to `network` (hold the subscriptions to keep the tables).
    pub fn subscribe_all(&self, network: &str) -> Vec<Subscription> {
        let _rt = self.rt.enter();
        self.running().map(|(_, g)| g.subscribe(network)).collect()
    }

    /// Node `i`'s visible entry `id` of `network`, if any.
    pub fn entry(&self, i: usize, network: &str, id: &str) -> Option<Entry> {
        self.g(i)
            .endpoints(network)
            .into_iter()
            .find(|e| e.endpoint.id == id)
    }

    /// Whether node `i` sees endpoint `id` of `network`, owned by `owner`.
    pub fn sees(&self, i: usize, network: &str, id: &str, owner: usize) -> bool {
        self.g(i)
            .endpoints(network)
            .iter()
            .any(|e| e.endpoint.id == id && e.owner == format!("node{owner}"))
    }

    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (i, g) in self.running() {
            let alive: Vec<String> = g
                .members()
                .into_iter()
                .map(|m| format!("{}{}", m.node_id, if m.alive { "" } else { "(dead)" }))
                .collect();
            s.push_str(&format!(
                "node{i}: members {alive:?} stats {:?}\n",
                g.stats()
            ));
        }
        s
    }
}

/// Binds the gossip socket inside node `i`'s namespace; retries while a previous instance's
/// socket is still being released.
pub fn bind_in(lab: &Lab, i: usize, addr: SocketAddr) -> std::net::UdpSocket {
    bind_with(lab, i, addr, std::net::UdpSocket::bind)
}

/// The gossip port's UDP and TCP sockets, bound inside node `i`.
pub fn sockets_in(lab: &Lab, i: usize, addr: SocketAddr) -> Sockets {
    bind_with(lab, i, addr, Sockets::bind)
}

/// Binds inside node `i`, retrying while a just-stopped instance still holds the port.
fn bind_with<T: Send>(
    lab: &Lab,
    i: usize,
    addr: SocketAddr,
    bind: fn(SocketAddr) -> std::io::Result<T>,
) -> T {
    let node = lab.node(i);
    let mut last = None;
    for _ in 0..100 {
        match node.in_ns(move || bind(addr)).expect("enter namespace") {
            Ok(s) => return s,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("bind {addr} in node{i}: {last:?}");
}

pub fn endpoint(network: &str, id: &str, last_octet: u8) -> Endpoint {
    Endpoint {
        id: id.into(),
        network: network.into(),
        ip: IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, last_octet)),
        mac: [0x02, 0x42, 10, 0, 0, last_octet],
        task: format!("task-{id}"),
        service: "web".into(),
        name: format!("web.{last_octet}"),
        aliases: vec!["web".into()],
        disabled: false,
    }
}

/// Endpoint number `k` of a large table: a distinct IP for each (10.0.0.0/16), since entries
/// with the same IP in one network are one endpoint.
pub fn endpoint_n(network: &str, id: &str, k: u32) -> Endpoint {
    let ip = std::net::Ipv4Addr::new(10, 0, (k / 250) as u8, (k % 250) as u8 + 1);
    let mut ep = endpoint(network, id, 0);
    ep.ip = IpAddr::V4(ip);
    ep.mac = [0x02, 0x42, 10, 0, (k / 250) as u8, (k % 250) as u8 + 1];
    ep
}
