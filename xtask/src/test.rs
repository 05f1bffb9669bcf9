//! `cargo xtask test`: everything CI runs, stopping at the first failure.
//!
//! Once every test binary is built and the unit and doc tests passed, the kernel lab (a qemu
//! TCG guest, ~15 min) runs alongside the host's namespace tests, which mostly wait on agents
//! and leave the CPU idle: the whole run takes the longer of the two, not their sum. Its
//! output goes to a file and is printed once it ends.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::util::{cargo, exec, require_root, root};

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
    // Every test binary built first (the kernel lab's suites are among them): the kernel lab's
    // own cargo calls then build nothing and never wait on the host tests' cargo for its lock.
    exec(cargo().args(["test", "--workspace", "--no-run"]))?;
    // Unit and doc tests on a quiet machine (a minute): some race real threads against each
    // other, and the guest takes both cores.
    exec(cargo().args(["test", "--workspace", "--lib", "--bins"]))?;
    exec(cargo().args(["test", "--workspace", "--doc"]))?;
    // Then the kernel lab, and alongside it the namespace tests (integration tests against the
    // host kernel).
    let kernel = KernelLab::start()?;
    if let Err(e) = host_namespace_tests() {
        kernel.kill();
        return Err(e);
    }
    kernel.finish()?;
    eprintln!("test: all green");
    Ok(())
}

/// The namespace tests on this host's kernel.
fn host_namespace_tests() -> Result<()> {
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
    // passes both ways), from the binary the workspace run built: `cargo test -p vxlan` would
    // unify features differently and rebuild ~100 crates (2.5 min in CI).
    let built = crate::kernel::build("vxlan", &["lab"].into())?;
    let Some((_, _, exe, cwd)) = built.first() else {
        bail!("cargo built no test binary for vxlan/lab");
    };
    exec(
        Command::new(exe)
            .current_dir(cwd)
            .env("NETAGENT_FAST_PATH", "1"),
    )
}

/// `cargo xtask test-kernel` in the background, in its own process group (qemu with it).
struct KernelLab {
    child: Child,
    log: PathBuf,
}

impl KernelLab {
    fn start() -> Result<KernelLab> {
        let dir = root().join("target").join("kernel-lab");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = dir.join("alongside-host-tests.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let exe = std::env::current_exe().context("the path of this xtask")?;
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new(exe)
                .arg("test-kernel")
                .current_dir(root())
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err),
            0,
        )
        .spawn()
        .context("could not start the kernel lab")?;
        eprintln!(
            "test: the kernel lab runs alongside the host tests; its output: {}",
            log.display()
        );
        Ok(KernelLab { child, log })
    }

    /// Stops it and its guest (the host tests failed: CI stops at the first failure).
    fn kill(mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
        eprintln!(
            "test: kernel lab stopped (partial output: {})",
            self.log.display()
        );
    }

    /// Waits for it, prints its output, fails if it failed.
    fn finish(mut self) -> Result<()> {
        eprintln!("test: host tests done; waiting for the kernel lab");
        let status = self.child.wait().context("waiting for the kernel lab")?;
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        eprintln!("---- kernel lab ({}) ----\n{text}", self.log.display());
        if !status.success() {
            bail!("the kernel lab failed: {status}");
        }
        Ok(())
    }
}
