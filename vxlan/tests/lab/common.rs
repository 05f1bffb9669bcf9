//! Helpers shared by the vxlan lab tests: task namespaces, data planes on lab nodes, pings,
//! captures on the underlay.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lab::Lab;
use netns::NetNs;
use vxlan::{Config, Dataplane, Endpoint, Network, Peer};

/// Skips a test that needs root (namespaces).
#[macro_export]
macro_rules! need_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}

/// The prefix node `i`'s data plane uses for its namespaces (removed with the lab).
pub fn node_prefix(lab: &Lab, i: usize) -> String {
    format!("{}-n{i}-", lab.prefix())
}

/// A data plane on lab node `i`. `NETAGENT_FAST_PATH=1` runs it with the eBPF fast path (pins
/// in the node's bpffs), so the whole suite can be run both ways.
pub fn dataplane(lab: &Lab, i: usize, port: u16) -> Dataplane {
    let fast = std::env::var_os("NETAGENT_FAST_PATH").is_some_and(|v| v == "1");
    dataplane_with(lab, i, port, fast)
}

/// A data plane on lab node `i`, with or without the fast path.
pub fn dataplane_with(lab: &Lab, i: usize, port: u16, fast_path: bool) -> Dataplane {
    let node = lab.node(i);
    let mut cfg = Config::new(NetNs::open(node.ns().name()).unwrap(), node.addr());
    cfg.port = port;
    cfg.prefix = node_prefix(lab, i);
    if fast_path {
        cfg.fast_path = true;
        cfg.bpf_dir = Some(node.bpffs().unwrap().join("fastpath"));
    }
    Dataplane::new(cfg).unwrap()
}

/// A task namespace (lo up) named after the lab, so the lab removes it.
pub fn task(lab: &Lab, name: &str) -> (NetNs, PathBuf) {
    let ns = NetNs::create(&format!("{}-t-{name}", lab.prefix())).unwrap();
    run_ok(ns.command("ip").args(["link", "set", "lo", "up"]));
    let path = ns.path().to_path_buf();
    (ns, path)
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS` inside `ns`, its stdout.
pub fn ip(ns: &NetNs, args: &[&str]) -> String {
    run_ok(ns.command("ip").args(args))
}

/// Whether one ping from `ns` to `addr` is answered within a second.
pub fn ping(ns: &NetNs, addr: Ipv4Addr) -> bool {
    ns.command("ping")
        .args(["-c", "1", "-W", "1", "-q", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Ping with a few retries (the first packets may wait for ARP).
pub fn reaches(ns: &NetNs, addr: Ipv4Addr) -> bool {
    (0..3).any(|_| ping(ns, addr))
}

/// Runs `checks` (namespace, address, expected reachability) concurrently; returns the ones
/// whose outcome differed.
pub fn check_reach(checks: &[(&NetNs, Ipv4Addr, bool, String)]) -> Vec<String> {
    std::thread::scope(|s| {
        let handles: Vec<_> = checks
            .iter()
            .map(|(ns, addr, want, label)| {
                s.spawn(move || {
                    let got = if *want {
                        reaches(ns, *addr)
                    } else {
                        ping(ns, *addr)
                    };
                    (got != *want).then(|| format!("{label}: expected reachable={want}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap())
            .collect()
    })
}

pub fn network(id: &str, vni: u32, subnet: &str) -> Network {
    let subnet: vxlan::Ipv4Net = subnet.parse().unwrap();
    Network {
        id: id.into(),
        vni,
        subnet,
        gateway: Ipv4Addr::from(u32::from(subnet.network()) + 1),
        mtu: None,
        internal: false,
        encrypted: false,
    }
}

pub fn endpoint(net: &str, path: &Path, ifname: &str, address: Ipv4Addr) -> Endpoint {
    Endpoint {
        network: net.into(),
        netns: path.to_path_buf(),
        ifname: ifname.into(),
        address,
        mac: None,
    }
}

pub fn peer(ip: Ipv4Addr, vtep: Ipv4Addr) -> Peer {
    Peer::new(ip, vtep)
}

/// Namespaces whose name starts with `prefix`.
pub fn namespaces(prefix: &str) -> Vec<String> {
    netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// A decoded VXLAN packet: outer addresses, UDP destination port, VNI, inner frame.
#[derive(Debug, Clone)]
pub struct VxlanPacket {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub vni: u32,
    pub inner: Vec<u8>,
}

/// Decodes Ethernet / IPv4 / UDP / VXLAN (flags with the I bit, 24-bit VNI).
pub fn decode_vxlan(frame: &[u8]) -> Option<VxlanPacket> {
    if frame.len() < 14 + 20 + 8 + 8 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ip[0] >> 4 != 4 || ip[9] != 17 || ip.len() < ihl + 16 {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = &ip[ihl..];
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let vx = &udp[8..];
    if vx[0] & 0x08 == 0 {
        return None;
    }
    let vni = u32::from_be_bytes([0, vx[4], vx[5], vx[6]]);
    Some(VxlanPacket {
        src,
        dst,
        dport,
        vni,
        inner: vx[8..].to_vec(),
    })
}
