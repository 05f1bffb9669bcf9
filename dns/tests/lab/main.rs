//! The dns crate's namespace-lab tests (need root; each builds its own lab, nothing touches
//! the host's namespace, every upstream is a dnsmasq inside the lab).

#[macro_use]
mod common;

mod forward;
mod junk;
mod local;
