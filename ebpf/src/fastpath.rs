//! The overlay fast path. Per frame: one look at the destination MAC, at most one hash lookup,
//! whatever the number of endpoints. What the map does not know (ARP, broadcast, multicast, the
//! gateway, another network's MAC) takes the sandbox bridge as before.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::generated::{bpf_redirect, bpf_redirect_peer},
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray},
    programs::TcContext,
};
use ebpf_common::fastpath::{
    KIND_LOCAL, KIND_REMOTE, MAC_MAX_ENTRIES, MacKey, STATS_LEN, Stat, Target,
};

#[map(name = "NA_FP_MAC")]
static MACS: HashMap<MacKey, Target> = HashMap::with_max_entries(MAC_MAX_ENTRIES, 0);

#[map(name = "NA_FP_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_LEN, 0);

/// On a sandbox's `vxlan0` ingress: a frame for a local task goes straight into the task's
/// namespace.
#[classifier]
pub fn na_fp_vxlan_in(ctx: TcContext) -> i32 {
    match lookup(&ctx) {
        Some(t) if t.kind == KIND_LOCAL => redirect(t.ifindex, true, Stat::VxlanToLocal),
        _ => pass(),
    }
}

/// On the ingress of a task's host-side veth: a frame for a remote endpoint goes out of vxlan0, a
/// frame for another local task straight into that task's namespace.
#[classifier]
pub fn na_fp_veth_in(ctx: TcContext) -> i32 {
    match lookup(&ctx) {
        Some(t) if t.kind == KIND_LOCAL => redirect(t.ifindex, true, Stat::VethToLocal),
        Some(t) if t.kind == KIND_REMOTE => redirect(t.ifindex, false, Stat::VethToRemote),
        _ => pass(),
    }
}

/// The map entry for the frame's destination MAC; `None` for group addresses (broadcast,
/// multicast) and short frames.
#[inline(always)]
fn lookup(ctx: &TcContext) -> Option<Target> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 6 > end {
        return None;
    }
    let p = data as *const u8;
    let mut mac = [0u8; 6];
    for (i, b) in mac.iter_mut().enumerate() {
        // SAFETY: data..data + 6 is inside the packet (checked above, so the verifier knows).
        *b = unsafe { *p.add(i) };
    }
    if mac[0] & 1 != 0 {
        return None;
    }
    // SAFETY: the value is copied out at once.
    unsafe { MACS.get(&MacKey::new(mac)).copied() }
}

#[inline(always)]
fn count(s: Stat) {
    crate::runtime::bump(&STATS, s as u32);
}

#[inline(always)]
fn pass() -> i32 {
    count(Stat::Passed);
    TC_ACT_OK as i32
}

#[inline(always)]
fn redirect(ifindex: u32, peer: bool, s: Stat) -> i32 {
    // SAFETY: helper calls; they only record the target and return TC_ACT_REDIRECT or TC_ACT_SHOT.
    let r = unsafe {
        match peer {
            true => bpf_redirect_peer(ifindex, 0),
            false => bpf_redirect(ifindex, 0),
        }
    };
    if r == TC_ACT_SHOT as i64 {
        // Only for flags the kernel does not know: leave the frame to the bridge.
        return pass();
    }
    count(s);
    r as i32
}
