//! The routing mesh's shortcut (see `ebpf_common::mesh`). Per packet: a few header reads, one or
//! two hash lookups and, for the mesh's own packets, one address rewrite with its checksums.
//! Anything it does not know (other protocols, IP options, fragments, other addresses or ports)
//! takes the node's stack and its nftables DNAT as before.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect_neigh, bpf_redirect_peer},
    macros::{classifier, map},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use ebpf_common::mesh::{
    FLOW_MAX_ENTRIES, FlowKey, FlowTarget, PORT_MAX_ENTRIES, PROTO_TCP, PROTO_UDP, PortKey,
    PortTarget, STATS_LEN, Stat,
};

#[map(name = "NA_MESH_PORT")]
static PORTS: HashMap<PortKey, PortTarget> = HashMap::with_max_entries(PORT_MAX_ENTRIES, 0);

#[map(name = "NA_MESH_FLOW")]
static FLOWS: LruHashMap<FlowKey, FlowTarget> = LruHashMap::with_max_entries(FLOW_MAX_ENTRIES, 0);

#[map(name = "NA_MESH_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const SADDR: usize = ETH_LEN + 12;
const DADDR: usize = ETH_LEN + 16;
const IP_CSUM: usize = ETH_LEN + 10;
const L4: usize = ETH_LEN + IP_LEN;

/// The IPv4 header fields the programs use, network byte order.
struct Headers {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
}

/// On an interface holding a node address: a client's packet for a published port gets the
/// sbox's address as destination and goes into the ingress-sbox.
#[classifier]
pub fn na_mesh_in(ctx: TcContext) -> i32 {
    let Some(h) = headers(&ctx) else {
        return TC_ACT_OK as i32;
    };
    let key = PortKey {
        addr: h.daddr,
        port: h.dport,
        proto: h.proto,
        pad: 0,
    };
    // SAFETY: the value is copied out at once.
    let Some(t) = (unsafe { PORTS.get(&key).copied() }) else {
        return TC_ACT_OK as i32;
    };
    let flow = FlowKey::new(h.saddr, h.sport, h.dport, h.proto);
    let back = FlowTarget {
        node_addr: h.daddr,
        // SAFETY: the context the kernel passed, valid while the program runs.
        ifindex: unsafe { (*ctx.skb.skb).ifindex },
        sbox_addr: t.sbox_addr,
    };
    // SAFETY: the value is compared at once; written only when it differs.
    let known = unsafe { FLOWS.get(&flow).copied() };
    if known != Some(back) && FLOWS.insert(&flow, &back, 0).is_err() {
        return rewrite_failed();
    }
    if rewrite(&ctx, DADDR, h.daddr, t.sbox_addr, h.proto).is_err() {
        return rewrite_failed();
    }
    // SAFETY: a helper call; it records the target and returns TC_ACT_REDIRECT or TC_ACT_SHOT.
    let r = unsafe { bpf_redirect_peer(t.sbox, 0) };
    count(Stat::ToSbox);
    r as i32
}

/// On the ingress-sbox's host-side veth: the answer of a flow the shortcut brought in gets the
/// node address the client used as source again and leaves by the interface it came in on,
/// its link-layer header from the neighbour table.
#[classifier]
pub fn na_mesh_out(ctx: TcContext) -> i32 {
    let Some(h) = headers(&ctx) else {
        return TC_ACT_OK as i32;
    };
    // The answer's destination is the client, its source the published port.
    let flow = FlowKey::new(h.daddr, h.dport, h.sport, h.proto);
    // SAFETY: the value is copied out at once.
    let Some(t) = (unsafe { FLOWS.get(&flow).copied() }) else {
        return TC_ACT_OK as i32;
    };
    if t.sbox_addr != h.saddr {
        return TC_ACT_OK as i32;
    }
    if rewrite(&ctx, SADDR, h.saddr, t.node_addr, h.proto).is_err() {
        return rewrite_failed();
    }
    // SAFETY: a helper call without parameters (the kernel looks the next hop up itself).
    let r = unsafe { bpf_redirect_neigh(t.ifindex, core::ptr::null_mut(), 0, 0) };
    if r == TC_ACT_SHOT as i64 {
        count(Stat::NeighFailed);
        return TC_ACT_SHOT as i32;
    }
    count(Stat::ToClient);
    r as i32
}

/// Replaces the address at `at` (`from` -> `to`), fixing the IPv4 and the TCP or UDP checksum
/// (the address is in the latter's pseudo-header; a UDP checksum of 0 stays 0).
#[inline(always)]
fn rewrite(ctx: &TcContext, at: usize, from: u32, to: u32, proto: u8) -> Result<(), i64> {
    let (csum, flags) = match proto {
        PROTO_TCP => (L4 + 16, BPF_F_PSEUDO_HDR as u64 | 4),
        _ => (L4 + 6, (BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0) as u64 | 4),
    };
    ctx.l4_csum_replace(csum, from as u64, to as u64, flags)?;
    ctx.l3_csum_replace(IP_CSUM, from as u64, to as u64, 4)?;
    ctx.store(at, &to, 0)?;
    Ok(())
}

/// A rewrite failed half way: the packet is dropped rather than sent with a wrong checksum.
#[inline(always)]
fn rewrite_failed() -> i32 {
    count(Stat::RewriteFailed);
    TC_ACT_SHOT as i32
}

/// The header fields of an unfragmented IPv4 TCP or UDP packet without options; `None` for
/// anything else.
#[inline(always)]
fn headers(ctx: &TcContext) -> Option<Headers> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + L4 + 4 > end {
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
        let l4 = p.add(L4);
        Some(Headers {
            saddr: (ip.add(12) as *const u32).read_unaligned(),
            daddr: (ip.add(16) as *const u32).read_unaligned(),
            sport: (l4 as *const u16).read_unaligned(),
            dport: (l4.add(2) as *const u16).read_unaligned(),
            proto,
        })
    }
}

#[inline(always)]
fn count(s: Stat) {
    crate::runtime::bump(&STATS, s as u32);
}
