//! The vxlan crate's namespace-lab tests (one test binary, also run in the kernel lab).
//! Every test builds its own lab; nothing touches the host's namespace.

#[macro_use]
mod common;

mod crash;
mod gwbridge;
mod ingress;
mod limits;
mod mtu;
mod orphans;
mod overlay;
