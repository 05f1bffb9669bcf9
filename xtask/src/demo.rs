//! `cargo xtask demo`: the end-to-end demo. It is the lab test `agent/tests/demo.rs` run with its
//! narration shown, so the demo and its assertions are one thing.

use anyhow::Result;

use crate::util::{cargo, exec, require_root};

pub fn run() -> Result<()> {
    require_root("cargo xtask demo")?;
    crate::setup::run()?;
    lab::clean_leftovers(false)?;
    exec(cargo().args([
        "test",
        "--quiet",
        "-p",
        "netagent",
        "--test",
        "demo",
        "--",
        "--nocapture",
        "--test-threads=1",
    ]))
}
