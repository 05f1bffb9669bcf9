//! The eBPF objects of the `ebpf` package, built once by this crate's build script (aya-build,
//! nightly, bpf-linker) and embedded 8-byte aligned for aya's loader. The load balancer (`ipvs`)
//! and the overlay fast path (`vxlan`) each load their own program from here.

/// The socket load balancer: cgroup connect4/sendmsg4/recvmsg4/getpeername4 (+ v6 hooks).
pub static LB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netagent-lb"));

/// The overlay fast path: tc programs on vxlan0 and the tasks' veths.
pub static FASTPATH: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netagent-fastpath"));

/// The routing mesh's shortcut: tc programs on the node's underlay interface and the
/// ingress-sbox's host-side veth.
pub static MESH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netagent-mesh"));

/// An error with its sources on one line (`a: b: c`): the loaders' messages for aya's errors,
/// whose useful part (the verifier's or the kernel's answer) is usually a source.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}
