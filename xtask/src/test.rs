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
    exec(cargo().args(["test", "--workspace", "--test", "*"]))?;
    crate::kernel::run(&[])?;
    eprintln!("test: all green");
    Ok(())
}
