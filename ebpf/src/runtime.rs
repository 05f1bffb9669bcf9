//! What every eBPF object of this crate needs once (each binary includes this module): a panic
//! handler (the verifier accepts no path that could reach it, so it never runs), the license the
//! kernel checks for GPL-only helpers, and the per-CPU counter increment the programs share.

use aya_ebpf::maps::PerCpuArray;

/// Adds one to slot `i` of a per-CPU counter array (this CPU's copy: no atomics, which the BPF
/// target cannot compile; user space sums the CPUs).
#[inline(always)]
pub fn bump(counters: &PerCpuArray<u64>, i: u32) {
    if let Some(c) = counters.get_ptr_mut(i) {
        // SAFETY: this CPU's slot of an array value, valid for the program's run; only this CPU
        // writes it while the program runs.
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
