//! The kernel side of the routing mesh's shortcut (tc programs on the node's underlay interface
//! and the ingress-sbox's host-side veth). Built for bpfel-unknown-none through aya-build by
//! ebpf-objects; on the host it compiles to an empty binary, as `main.rs` does.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod mesh;
#[cfg(target_arch = "bpf")]
mod runtime;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
