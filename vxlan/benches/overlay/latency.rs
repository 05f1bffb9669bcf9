//! The `latency` part: a 1-byte TCP ping-pong's round trips on each path, with the two ends
//! left to the scheduler and pinned.

use std::net::Ipv4Addr;
use std::time::Instant;

use lab::Lab;
use netns::NetNs;

use super::{bare, overlay};

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Where the two ends of a ping-pong run: left to the scheduler, or pinned.
#[derive(Clone, Copy)]
enum Placement {
    Floating,
    /// Client on CPU 0, server on CPU 1 (as on two machines, every wakeup crosses CPUs).
    Apart,
    /// Both on CPU 0: no wakeup crosses CPUs, what is left is the stacks' work and the switch.
    OneCpu,
}

impl Placement {
    fn cpus(self) -> (Option<usize>, Option<usize>) {
        match self {
            Placement::Floating => (None, None),
            Placement::Apart => (Some(0), Some(1)),
            Placement::OneCpu => (Some(0), Some(0)),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Placement::Floating => "left to the scheduler (the goal's figure)",
            Placement::Apart => "client on CPU 0, server on CPU 1",
            Placement::OneCpu => "both on CPU 0 (no cross-CPU wakeups)",
        }
    }
}

/// Pins the calling thread to `cpu` (when given).
fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    }
}

/// TCP ping-pong of one byte, `n` round trips on one connection, each end on its own thread
/// placed as `at` says: round-trip times in µs.
fn ping_pong(client: &NetNs, server: &NetNs, addr: Ipv4Addr, n: usize, at: Placement) -> Vec<f64> {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    let at_addr = SocketAddr::from((addr, 5301));
    let (client_cpu, server_cpu) = at.cpus();
    let listener = server.run(|| TcpListener::bind(at_addr)).unwrap().unwrap();
    let c = client.run(|| TcpStream::connect(at_addr)).unwrap().unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            pin(server_cpu);
            let (mut c, _) = listener.accept().unwrap();
            c.set_nodelay(true).unwrap();
            let mut b = [0u8; 1];
            while c.read_exact(&mut b).is_ok() {
                if c.write_all(&b).is_err() {
                    break;
                }
            }
        });
        s.spawn(move || {
            pin(client_cpu);
            let mut c = c;
            c.set_nodelay(true).unwrap();
            let mut b = [0u8; 1];
            let mut out = Vec::with_capacity(n);
            for i in 0..n + 100 {
                let t = Instant::now();
                c.write_all(&b).unwrap();
                c.read_exact(&mut b).unwrap();
                // The first round trips warm up (ARP, caches).
                if i >= 100 {
                    out.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            out
        })
        .join()
        .unwrap()
    })
}

/// TCP ping-pong round trips on each path, interleaved in chunks (goal: the overlay's p50 with
/// the fast path within 15 % of the underlay's). The lab's veth underlay as it comes (GRO off).
pub fn latency() {
    let lab = Lab::new(2).unwrap();
    let fast = overlay(&lab, 0, true, "f");
    let plain = overlay(&lab, 1, false, "b");
    let under_ns = lab.node(1).ns();
    let under_to = lab.node(2).addr();
    const RTTS: usize = 20_000;
    let under_srv = NetNs::open(lab.node(2).ns().name()).unwrap();
    bare::create(&lab);
    println!("TCP ping-pong (1 byte, {RTTS} round trips per path and placement), p50 / p99:");
    for at in [Placement::Floating, Placement::Apart, Placement::OneCpu] {
        let (mut u, mut f, mut b, mut k) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Interleaved in chunks so load changes hit all paths alike.
        for _ in 0..4 {
            u.extend(ping_pong(under_ns, &under_srv, under_to, RTTS / 4, at));
            k.extend(ping_pong(under_ns, &under_srv, bare::addr(2), RTTS / 4, at));
            f.extend(ping_pong(
                &fast.client,
                &fast.server,
                fast.server_addr,
                RTTS / 4,
                at,
            ));
            b.extend(ping_pong(
                &plain.client,
                &plain.server,
                plain.server_addr,
                RTTS / 4,
                at,
            ));
        }
        let (u50, f50, b50, k50) = (
            percentile(&u, 0.5),
            percentile(&f, 0.5),
            percentile(&b, 0.5),
            percentile(&k, 0.5),
        );
        println!("  {}:", at.label());
        println!(
            "    underlay           : {u50:7.1} / {:7.1} µs",
            percentile(&u, 0.99)
        );
        println!(
            "    overlay fast on    : {f50:7.1} / {:7.1} µs",
            percentile(&f, 0.99)
        );
        println!(
            "    overlay fast off   : {b50:7.1} / {:7.1} µs",
            percentile(&b, 0.99)
        );
        println!(
            "    bare kernel VXLAN  : {k50:7.1} / {:7.1} µs",
            percentile(&k, 0.99)
        );
        println!(
            "    p50 overlay/underlay: on {:.3}, off {:.3}; overlay - underlay: on {:+.1} µs{}",
            f50 / u50,
            b50 / u50,
            f50 - u50,
            match at {
                Placement::Floating => "  (goal <= 1.15 on)",
                _ => "",
            }
        );
        println!(
            "    p50 bare VXLAN/underlay: {:.3}; overlay/bare VXLAN: on {:.3}, off {:.3}",
            k50 / u50,
            f50 / k50,
            b50 / k50
        );
    }
}
