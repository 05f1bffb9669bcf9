//! `cargo xtask build-ebpf`: the eBPF programs of crate `ebpf`, built the way ebpf/objects/build.rs
//! builds them through aya-build (nightly, build-std=core, bpf-linker), into target/bpf.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{exec, have, root};

pub fn build() -> Result<()> {
    if !have("bpf-linker") {
        bail!("bpf-linker is not on PATH: run `cargo xtask setup` first");
    }
    let target_dir = root().join("target").join("bpf");
    let arch = format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH);
    let flags = [arch.as_str(), "-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f");
    exec(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "build",
                "--package",
                "ebpf",
                "--bins",
            ])
            .args([
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .env("CARGO_ENCODED_RUSTFLAGS", flags)
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .current_dir(root()),
    )
    .context("building the eBPF programs failed (needs `cargo xtask setup`)")?;
    let obj = target_dir.join("bpfel-unknown-none/release/netagent-lb");
    if !obj.exists() {
        bail!("the build succeeded but {} is missing", obj.display());
    }
    println!("{}", obj.display());
    Ok(())
}
