//! The kernel side of the eBPF socket load balancer. Built for bpfel-unknown-none by
//! `ipvs/build.rs` (aya-build); on the host it compiles to an empty binary so that workspace-wide
//! `cargo clippy`/`cargo test` need no BPF toolchain for this crate.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod lb;
#[cfg(target_arch = "bpf")]
mod runtime;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
