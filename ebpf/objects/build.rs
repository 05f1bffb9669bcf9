//! Builds the eBPF programs (crate `ebpf`, for bpfel-unknown-none) with aya-build and leaves the
//! objects in OUT_DIR, where `src/lib.rs` embeds them. Needs the nightly toolchain with rust-src and
//! bpf-linker: `cargo xtask setup` installs both.

use std::path::{Path, PathBuf};

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The objects `src/lib.rs` embeds.
const OBJECTS: [&str; 3] = ["netagent-lb", "netagent-fastpath", "netagent-mesh"];

/// Whether cargo runs clippy (it sets RUSTC_WORKSPACE_WRAPPER to clippy-driver for build
/// scripts too).
fn under_clippy() -> bool {
    std::env::var_os("RUSTC_WORKSPACE_WRAPPER").is_some_and(|w| {
        Path::new(&w)
            .file_stem()
            .is_some_and(|s| s == "clippy-driver")
    })
}

fn main() {
    println!("cargo:rerun-if-env-changed=RUSTC_WORKSPACE_WRAPPER");
    // Lints read the Rust code, never these bytes: under clippy, empty placeholders instead of
    // building core and the programs for BPF a second time (1.5 min of a CI run).
    if under_clippy() {
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
        for name in OBJECTS {
            std::fs::write(out.join(name), b"").expect("writing to OUT_DIR");
        }
        return;
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    // This crate lives in ebpf/objects: the programs' package is its parent.
    let root = manifest.parent().unwrap_or(Path::new(".."));
    let root = root.to_str().expect("the workspace path is UTF-8");
    let skip = std::env::var_os("AYA_BUILD_SKIP").is_some();
    if !skip && !on_path("bpf-linker") {
        panic!(
            "bpf-linker is not on PATH: the eBPF programs (load balancer, overlay fast path) cannot be built. Run `cargo xtask \
             setup` (it installs bpf-linker 0.10.4 and rust-src for the nightly toolchain)."
        );
    }
    let package = aya_build::Package {
        name: "ebpf",
        root_dir: root,
        ..Default::default()
    };
    if let Err(e) = aya_build::build_ebpf([package], aya_build::Toolchain::Nightly) {
        panic!(
            "building the eBPF programs in {root} failed: {e:#}\n(needs the nightly toolchain with \
             rust-src and bpf-linker: `cargo xtask setup`)"
        );
    }
}
