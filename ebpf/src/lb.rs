//! The programs. Every hook looks the destination up in the service map and proceeds untouched
//! when it is not a VIP, so the cost for other traffic is one hash lookup and the cost for a VIP is
//! two (head, slot) plus a reverse-map write, whatever the number of services.

use aya_ebpf::{
    EbpfContext,
    helpers::generated::{bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval},
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::SockAddrContext,
};
use ebpf_common::{
    CNT_ENTRIES, Counter, REV_MAX_ENTRIES, RevKey, RevValue, SVC_MAX_ENTRIES, SvcKey, SvcValue,
};

/// sock_addr programs: 1 lets the call go on, 0 rejects it (EPERM unless a retval was set).
const PROCEED: i32 = 1;
const REJECT: i32 = 0;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;
/// Entries are allocated on update and freed after an RCU grace period, so a program holding a
/// value while user space replaces it never reads a recycled element.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map(name = "NA_LB_SVC")]
static SVC: HashMap<SvcKey, SvcValue> =
    HashMap::with_max_entries(SVC_MAX_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "NA_LB_REV")]
static REV: LruHashMap<RevKey, RevValue> = LruHashMap::with_max_entries(REV_MAX_ENTRIES, 0);

/// Per-CPU counters (see `ebpf_common::Counter`): a program runs on one CPU without preemption,
/// so a plain add on this CPU's slot is exact without atomics (which the BPF target lacks).
#[map(name = "NA_LB_CNT_V1")]
static CNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(CNT_ENTRIES, 0);

/// One array lookup: O(1) whatever the number of services.
#[inline(always)]
fn bump(c: Counter) {
    crate::runtime::bump(&CNT, c.index());
}

#[cgroup_sock_addr(connect4)]
pub fn na_lb_connect4(ctx: SockAddrContext) -> i32 {
    forward::<false>(&ctx, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn na_lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward::<false>(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn na_lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse::<false>(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn na_lb_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse::<false>(&ctx);
    PROCEED
}

// Dual-stack sockets (AF_INET6 reaching IPv4 as ::ffff:a.b.c.d, Java's default) go through the
// *6 hooks for connect, recvmsg and getpeername; their unconnected sends reach sendmsg4. Only
// v4-mapped destinations are looked at.

#[cgroup_sock_addr(connect6)]
pub fn na_lb_connect6(ctx: SockAddrContext) -> i32 {
    forward::<true>(&ctx, false)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn na_lb_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse::<true>(&ctx);
    PROCEED
}

#[cgroup_sock_addr(getpeername6)]
pub fn na_lb_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse::<true>(&ctx);
    PROCEED
}

/// ::ffff:0:0/96 as the third 32-bit word of an address in network byte order.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The IPv4 address the hook sees: `user_ip4`, or for the *6 hooks the IPv4 address inside a
/// v4-mapped `user_ip6` (None for any other IPv6 address). `V6` is a constant per program, so
/// each program touches only the fields its attach type may access.
#[inline(always)]
fn dest<const V6: bool>(sa: *mut aya_ebpf::bindings::bpf_sock_addr) -> Option<u32> {
    // SAFETY: the kernel passes a valid bpf_sock_addr; the verifier checks each field access
    // (4-byte loads of user_ip6 words are allowed in the *6 hooks).
    unsafe {
        if V6 {
            let w = |i: usize| core::ptr::read_volatile(&(*sa).user_ip6[i]);
            (w(0) == 0 && w(1) == 0 && w(2) == V4_MAPPED).then(|| w(3))
        } else {
            Some((*sa).user_ip4)
        }
    }
}

#[inline(always)]
fn set_dest<const V6: bool>(sa: *mut aya_ebpf::bindings::bpf_sock_addr, addr: u32) {
    // SAFETY: user_ip4 / user_ip6 are writable in these hooks (4-byte stores).
    unsafe {
        if V6 {
            core::ptr::write_volatile(&mut (*sa).user_ip6[3], addr);
        } else {
            (*sa).user_ip4 = addr;
        }
    }
}

#[inline(always)]
fn head(vip: u32) -> Option<SvcValue> {
    // SAFETY: the value is copied out at once; the map is NO_PREALLOC (see above).
    unsafe { SVC.get(SvcKey::new(vip, 0)).copied() }
}

#[inline(always)]
fn backend(vip: u32, pick: u32, count: u16) -> Option<u32> {
    let slot = (pick % count as u32) as u16 + 1;
    // SAFETY: as in `head`.
    unsafe { SVC.get(SvcKey::new(vip, slot)).map(|v| v.addr) }
}

/// connect4 (TCP and connected UDP) and sendmsg4 (unconnected UDP): VIP -> a backend, same port.
#[inline(always)]
fn forward<const V6: bool>(ctx: &SockAddrContext, udp_only: bool) -> i32 {
    let sa = ctx.sock_addr;
    let Some(vip) = dest::<V6>(sa) else {
        return PROCEED;
    };
    // SAFETY: as in `dest`.
    let (port, proto) = unsafe { ((*sa).user_port, (*sa).protocol) };
    let tcp = proto == IPPROTO_TCP;
    if !(proto == IPPROTO_UDP || (tcp && !udp_only)) {
        return PROCEED;
    }
    let Some(h) = head(vip) else {
        return PROCEED;
    };
    if h.count == 0 {
        // No running task: refuse at once rather than let the client wait for a timeout.
        bump(Counter::Refused);
        // SAFETY: helper call with a plain integer.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    }
    // SAFETY: helper calls on this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // TCP picks at random; a UDP socket sticks to one backend (by its cookie) so replies and
    // reverse translation stay consistent for its lifetime.
    let pick = if tcp {
        // SAFETY: helper without arguments.
        unsafe { bpf_get_prandom_u32() }
    } else {
        (cookie ^ (cookie >> 32)) as u32
    };
    let addr = match backend(vip, pick, h.count) {
        Some(a) => a,
        // User space shrank the service between our two lookups: read the head again.
        None => match head(vip).and_then(|h| (h.count > 0).then_some(h.count)) {
            Some(count) => match backend(vip, pick, count) {
                Some(a) => a,
                None => return unreachable_now(),
            },
            None => return unreachable_now(),
        },
    };
    let key = RevKey {
        cookie,
        addr,
        port: port as u16,
        pad: 0,
    };
    let val = RevValue {
        vip,
        port: port as u16,
        rev: h.rev,
    };
    // SAFETY: the value is compared at once.
    let same = unsafe { REV.get(key) }.is_some_and(|v| *v == val);
    if !same {
        // Best effort: a full LRU evicts, and without the entry only the peer address a UDP
        // reply or getpeername shows is the backend's.
        let _ = REV.insert(key, val, 0);
    }
    set_dest::<V6>(sa, addr);
    bump(Counter::Balanced);
    PROCEED
}

/// The service lost its last backend between our lookups: refused like a VIP without backends.
#[inline(always)]
fn unreachable_now() -> i32 {
    bump(Counter::Refused);
    // SAFETY: helper call with a plain integer.
    unsafe { bpf_set_retval(-EHOSTUNREACH) };
    REJECT
}

/// recvmsg4 and getpeername4: a backend address this socket reached through a VIP shows as the
/// VIP again, unless the VIP has gone or now belongs to another service.
#[inline(always)]
fn reverse<const V6: bool>(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    let Some(addr) = dest::<V6>(sa) else {
        return;
    };
    // SAFETY: as in `dest`.
    let port = unsafe { (*sa).user_port };
    // SAFETY: helper call on this program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = RevKey {
        cookie,
        addr,
        port: port as u16,
        pad: 0,
    };
    // SAFETY: copied out at once.
    let Some(v) = (unsafe { REV.get(key).copied() }) else {
        return;
    };
    match head(v.vip) {
        Some(h) if h.rev == v.rev => set_dest::<V6>(sa, v.vip),
        _ => {
            let _ = REV.remove(key);
        }
    }
}
