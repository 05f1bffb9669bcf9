//! The kernel side of the overlay fast path (tc programs on a sandbox's `vxlan0` and task veths).
//! Built for bpfel-unknown-none through aya-build by the crates that load it; on the host it
//! compiles to an empty binary, as `main.rs` does.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod fastpath;
#[cfg(target_arch = "bpf")]
mod runtime;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
