//! `cargo xtask test`: everything CI runs, in order, stopping at the first failure.

use anyhow::Result;

use crate::util::{cargo, exec, require_root};

pub fn run() -> Result<()> {
    require_root("cargo xtask test")?;
    crate::setup::run()?;
    let removed = lab::clean_leftovers(false)?;
    if removed > 0 {
        eprintln!("test: removed {removed} namespace(s) left by crashed lab runs");
    }
    exec(cargo().args(["fmt", "--all", "--", "--check"]))?;
    exec(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Unit tests, then the namespace tests (integration tests run against the host kernel).
    exec(cargo().args(["test", "--workspace", "--lib", "--bins"]))?;
    exec(cargo().args(["test", "--workspace", "--doc"]))?;
    // The scale test's 2,000 services take tens of minutes of kernel work on a 2-core machine
    // (a namespace, veth and cgroup per task); CI runs it with fewer so the suite stays within
    // its time budget. `cargo xtask bench scale` and a plain `cargo test -p netagent --test
    // scale` run the full size.
    let mut lab_tests = cargo();
    lab_tests.args(["test", "--workspace", "--test", "*"]);
    if std::env::var_os("SCALE_SERVICES").is_none() {
        lab_tests.env("SCALE_SERVICES", "300");
    }
    exec(&mut lab_tests)?;
    // The overlay suite once more with the eBPF fast path on (issue 17: every overlay test
    // passes both ways).
    exec(
        cargo()
            .args(["test", "-p", "vxlan", "--test", "lab"])
            .env("NETAGENT_FAST_PATH", "1"),
    )?;
    crate::kernel::run(&[])?;
    eprintln!("test: all green");
    Ok(())
}
