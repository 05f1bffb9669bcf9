//! `cargo xtask setup`: installs what the build and the tests need. Idempotent: it checks first and
//! installs only what is missing, so a second run does nothing.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{exec, have, output, require_root};

/// Debian packages the tests and benchmarks use.
pub const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "nftables",
    "util-linux",
    "procps",
    "tcpdump",
    "tshark",
    "iperf3",
    "qemu-system-x86",
    "busybox-static",
    "ipvsadm",
    "kmod",
    "cpio",
    "xz-utils",
    "zstd",
    "bind9-dnsutils",
    // dnsmasq's binary without the `dnsmasq` package's system service, which would start a
    // resolver on port 53 in the machine's own namespace; the dns tests run it in lab nodes.
    "dnsmasq-base",
    "dnsperf",
    "etcd-server",
    "etcd-client",
    "curl",
];

pub fn run() -> Result<()> {
    require_root("cargo xtask setup")?;
    apt()?;
    rust_components()?;
    eprintln!("setup: everything is installed");
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    exec(Command::new("apt-get").arg("update").arg("-q").envs(env)).context(
        "apt-get update failed: the machine must reach Debian's package mirrors (are we offline?)",
    )?;
    // tshark asks whether non-root users may capture; answer before it asks.
    let _ = Command::new("sh")
        .arg("-c")
        .arg("echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections")
        .status();
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .envs(env),
    )
    .with_context(|| format!("apt-get install {} failed", missing.join(" ")))?;
    Ok(())
}

fn rust_components() -> Result<()> {
    if !have("rustup") {
        bail!("rustup is not on PATH: install Rust with rustup (https://rustup.rs) first");
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !comps.lines().any(|l| l.starts_with("rust-src")) {
        exec(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}
