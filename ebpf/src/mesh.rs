//! The routing mesh's shortcut (see `ebpf_common::mesh`). Per packet: a few header bytes and at
//! most one hash lookup. Anything it does not know (other protocols, IP options, fragments,
//! other addresses or ports) takes the node's stack and its nftables DNAT as before.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect_neigh, bpf_redirect_peer},
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use ebpf_common::mesh::{
    PORT_MAX_ENTRIES, PROTO_TCP, PROTO_UDP, PortKey, PortTarget, STATS_LEN, Stat,
};

#[map(name = "NA_MESH_PORT")]
static PORTS: HashMap<PortKey, PortTarget> = HashMap::with_max_entries(PORT_MAX_ENTRIES, 0);

#[map(name = "NA_MESH_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;

/// On the interface holding the node's address: a client's packet for a published port goes
/// into the ingress-sbox as it is.
#[classifier]
pub fn na_mesh_in(ctx: TcContext) -> i32 {
    let Some((saddr_daddr, ports, proto)) = headers(&ctx) else {
        return TC_ACT_OK as i32;
    };
    let key = PortKey {
        addr: saddr_daddr.1,
        port: ports.1,
        proto,
        pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let Some(t) = (unsafe { PORTS.get(&key).copied() }) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: a helper call; it records the target and returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    let r = unsafe { bpf_redirect_peer(t.sbox, 0) };
    if r == TC_ACT_SHOT as i64 {
        return TC_ACT_OK as i32;
    }
    count(Stat::ToSbox);
    r as i32
}

/// On the ingress-sbox's host-side veth: the sbox's answer from a published port of the node's
/// address leaves by that address's interface, its link-layer header from the neighbour table.
#[classifier]
pub fn na_mesh_out(ctx: TcContext) -> i32 {
    let Some((saddr_daddr, ports, proto)) = headers(&ctx) else {
        return TC_ACT_OK as i32;
    };
    let key = PortKey {
        addr: saddr_daddr.0,
        port: ports.0,
        proto,
        pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let Some(t) = (unsafe { PORTS.get(&key).copied() }) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: a helper call without parameters (the kernel looks the next hop up itself).
    let r = unsafe { bpf_redirect_neigh(t.out, core::ptr::null_mut(), 0, 0) };
    if r == TC_ACT_SHOT as i64 {
        count(Stat::NeighFailed);
        return TC_ACT_OK as i32;
    }
    count(Stat::ToClient);
    r as i32
}

/// `((saddr, daddr), (sport, dport), protocol)` of an unfragmented IPv4 TCP or UDP packet
/// without options, all in network byte order; `None` for anything else.
#[inline(always)]
fn headers(ctx: &TcContext) -> Option<((u32, u32), (u16, u16), u8)> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_LEN + IP_LEN + 4 > end {
        return None;
    }
    let p = data as *const u8;
    // SAFETY: every read below is inside data..data + 38, checked above (so the verifier
    // knows); unaligned reads, as packet data has no alignment.
    unsafe {
        if *p.add(12) != 0x08 || *p.add(13) != 0x00 {
            return None;
        }
        let ip = p.add(ETH_LEN);
        // Version 4 without options; neither a fragment nor more to come.
        if *ip != 0x45 || (*ip.add(6) & 0x3f) != 0 || *ip.add(7) != 0 {
            return None;
        }
        let proto = *ip.add(9);
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return None;
        }
        let saddr = (ip.add(12) as *const u32).read_unaligned();
        let daddr = (ip.add(16) as *const u32).read_unaligned();
        let l4 = ip.add(IP_LEN);
        let sport = (l4 as *const u16).read_unaligned();
        let dport = (l4.add(2) as *const u16).read_unaligned();
        Some(((saddr, daddr), (sport, dport), proto))
    }
}

#[inline(always)]
fn count(s: Stat) {
    if let Some(c) = STATS.get_ptr_mut(s as u32) {
        // SAFETY: a per-CPU slot, only this CPU writes it while this program runs.
        unsafe { *c += 1 };
    }
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
