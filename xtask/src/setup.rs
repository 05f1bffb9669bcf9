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
    // bench overlay: offload settings (GRO, TSO/GSO) measured on and off.
    "ethtool",
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
    // The load-balancing tests' servers and clients (agent/tests/lb/*.py).
    "python3",
];

pub fn run() -> Result<()> {
    require_root("cargo xtask setup")?;
    apt()?;
    docker_cli()?;
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

/// The docker CLI the API tests drive (`agent/tests/docker.rs`): the machine's `docker` if there
/// is one, else Debian's `docker.io` package — installed with services forbidden to start
/// (policy-rc.d), because a dockerd must never run here; only its client is used.
fn docker_cli() -> Result<()> {
    if have("docker") {
        return Ok(());
    }
    eprintln!("setup: installing the docker CLI (docker.io, no daemon started)");
    let policy = std::path::Path::new("/usr/sbin/policy-rc.d");
    let had_policy = policy.exists();
    if !had_policy {
        std::fs::write(
            policy,
            "#!/bin/sh\n# netagent setup: start no service\nexit 101\n",
        )
        .context("cannot write /usr/sbin/policy-rc.d")?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(policy, std::fs::Permissions::from_mode(0o755))?;
    }
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    let r = exec(Command::new("apt-get").args(["update", "-q"]).envs(env)).and_then(|_| {
        exec(
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "docker.io",
                ])
                .envs(env),
        )
    });
    if !had_policy {
        let _ = std::fs::remove_file(policy);
    }
    r.context("apt-get install docker.io failed")?;
    // Whatever the package enabled, no daemon runs.
    let _ = Command::new("systemctl")
        .args([
            "disable",
            "--now",
            "docker.service",
            "docker.socket",
            "containerd.service",
        ])
        .status();
    if !have("docker") {
        bail!("docker.io was installed but `docker` is not on PATH");
    }
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
    bpf_linker()?;
    crate::fuzz::install_cargo_fuzz()
}

/// The version of bpf-linker the eBPF programs (crate `ebpf`) are built with.
pub const BPF_LINKER: &str = "0.10.4";

/// bpf-linker links the eBPF programs ebpf/objects/build.rs builds for bpfel-unknown-none. It loads the
/// nightly toolchain's LLVM, so it is built with nightly too.
fn bpf_linker() -> Result<()> {
    let have_it = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER))
        .unwrap_or(false);
    if have_it {
        return Ok(());
    }
    eprintln!("setup: installing bpf-linker {BPF_LINKER} (a few minutes)");
    exec(Command::new("cargo").args([
        "+nightly",
        "install",
        &format!("bpf-linker@{BPF_LINKER}"),
        "--locked",
    ]))
    .context("cargo +nightly install bpf-linker failed")?;
    if !have("bpf-linker") {
        bail!(
            "bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH (rustup's \
             installer does this for new shells)"
        );
    }
    Ok(())
}
