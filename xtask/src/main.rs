//! `cargo xtask` — the project's task runner. Every command a newcomer or CI needs is here.

mod bench;
mod demo;
mod ebpf;
mod fuzz;
mod kernel;
mod setup;
mod test;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "netagent's task runner")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (apt packages, rust-src, bpf-linker,
    /// cargo-fuzz). Idempotent.
    Setup,
    /// Build the eBPF load-balancer programs (crate `ebpf`) for bpfel-unknown-none, as
    /// ebpf/objects/build.rs does, and print where the object is.
    BuildEbpf,
    /// The end-to-end demo: a 3-node swarm in namespaces, an overlay, a web service, a drain, a
    /// leader failover.
    Demo,
    /// Everything CI runs: setup, fmt check, clippy, unit tests, namespace tests, kernel-lab tests.
    Test,
    /// The kernel lab alone: namespace tests under Debian's stock kernel in qemu (IPVS, ESP).
    TestKernel {
        /// Only run kernel-lab tests whose name contains one of these.
        filters: Vec<String>,
    },
    /// Fuzz the parsers of untrusted bytes (cargo-fuzz, nightly): each target of fuzz/ (or the
    /// one named) for N seconds; prints execs/s and crashes, fails on a crash.
    Fuzz {
        /// One target (gossip_datagram, gossip_stream, gossip_message, dns_query, dns_upstream,
        /// join_request, cluster_rpc, api_bodies); all when left out.
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// System benchmarks (all, or the named ones: see xtask/src/bench.rs).
    Bench { names: Vec<String> },
    /// The namespace lab.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Remove namespaces, processes and cgroups left by crashed lab runs.
    Clean {
        /// Also remove labs whose creating process is still alive.
        #[arg(long)]
        all: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Setup => setup::run(),
        Cmd::Test => test::run(),
        Cmd::Demo => demo::run(),
        Cmd::BuildEbpf => ebpf::build(),
        Cmd::TestKernel { filters } => kernel::run(&filters),
        Cmd::Bench { names } => bench::run(&names),
        Cmd::Fuzz { target, seconds } => fuzz::run(target.as_deref(), seconds),
        Cmd::Lab {
            cmd: LabCmd::Clean { all },
        } => {
            let removed = lab::clean_leftovers(all)?;
            println!("lab clean: removed {removed} leftover namespace(s)");
            Ok(())
        }
    }
}
