//! The kernel's own VXLAN between the two lab nodes with nothing of netagent's: one VXLAN
//! device in each node's namespace with an address on it; no sandbox, bridge, veth, eBPF or
//! task namespace. What any VXLAN overlay costs on this machine, so the overlay's rows can be
//! read against it: the part of the overlay's cost netagent could still remove is the
//! difference between its overlay and this one.

use std::net::Ipv4Addr;

use lab::{Lab, ProcSpec};
use netns::NetNs;

/// The devices' name in both node namespaces (they go with the lab's namespaces).
const DEV: &str = "bare-vxlan";
/// A VNI and port of their own: netagent's devices in the same namespaces use 4789.
const VNI: &str = "4000000";
const PORT: &str = "4790";

pub fn addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 255, 0, i as u8)
}

fn ip(ns: &NetNs, args: &[&str]) {
    let out = ns.command("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Creates the bare overlay between nodes 1 and 2 and an iperf3 server on node 2's end; its
/// address is `addr(2)`, reached from node 1's namespace.
pub fn create(lab: &Lab) {
    for (i, peer) in [(1, 2), (2, 1)] {
        let ns = lab.node(i).ns();
        let (local, remote) = (lab.node(i).addr().to_string(), lab.node(peer).addr());
        ip(
            ns,
            &[
                "link",
                "add",
                DEV,
                "type",
                "vxlan",
                "id",
                VNI,
                "dstport",
                PORT,
                "local",
                &local,
                "remote",
                &remote.to_string(),
                "dev",
                lab::NODE_IFACE,
            ],
        );
        ip(ns, &["addr", "add", &format!("{}/24", addr(i)), "dev", DEV]);
        ip(ns, &["link", "set", DEV, "up"]);
    }
    lab.node(2)
        .spawn(ProcSpec::new("iperf3-bare", "iperf3").args(["-s", "-B", &addr(2).to_string()]))
        .unwrap();
}
