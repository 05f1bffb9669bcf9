//! `cargo xtask test`: everything CI runs, stopping at the first failure.
//!
//! Once its test binaries are built, the kernel lab (a qemu TCG guest, ~15 min) runs alongside
//! everything else: clippy, the other builds, the unit and doc tests and the host's namespace
//! tests, which mostly wait on agents and leave the CPU idle. The whole run takes about the
//! longer of the two, not their sum. Its output goes to a file and is printed once it ends.

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
    // The kernel lab's test binaries first: it starts as soon as they are built (its own cargo
    // calls build nothing then), and everything else (clippy, the other test binaries, unit,
    // doc and namespace tests) runs alongside it. The host's cargo waits until the lab's are
    // done, so neither waits on the other for cargo's lock while building.
    let mut kernel_build = cargo();
    kernel_build.args(["test", "--workspace", "--no-run"]);
    for t in crate::kernel::default_targets() {
        kernel_build.args(["--test", t]);
    }
    exec(&mut kernel_build)?;
    let mut kernel = KernelLab::start()?;
    if let Err(e) = kernel.wait_until_booting().and_then(|()| host_tests()) {
        kernel.kill();
        return Err(e);
    }
    kernel.finish()?;
    eprintln!("test: all green");
    Ok(())
}

/// Clippy, unit and doc tests, then the namespace tests on this host's kernel.
fn host_tests() -> Result<()> {
    exec(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
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
    // passes both ways), then with its programs as tc filters (as kernels before 6.6 run them,
    // `NETAGENT_TC_FILTERS=1`) together with the fast path's own test; from the binaries the
    // workspace run built: `cargo test -p vxlan` would unify features differently and rebuild
    // ~100 crates (2.5 min in CI).
    let built = crate::kernel::build("vxlan", &["lab", "fastpath"].into())?;
    let exe = |target: &str| {
        built
            .iter()
            .find(|(_, name, _, _)| name == target)
            .map(|(_, _, exe, cwd)| (exe.clone(), cwd.clone()))
            .with_context(|| format!("cargo built no test binary for vxlan/{target}"))
    };
    let (lab, cwd) = exe("lab")?;
    exec(
        Command::new(&lab)
            .current_dir(&cwd)
            .env("NETAGENT_FAST_PATH", "1"),
    )?;
    for target in ["lab", "fastpath"] {
        let (bin, cwd) = exe(target)?;
        exec(
            Command::new(bin)
                .current_dir(cwd)
                .env("NETAGENT_FAST_PATH", "1")
                .env("NETAGENT_TC_FILTERS", "1"),
        )?;
    }
    Ok(())
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

    /// Waits until it is about to boot its guest (its builds and preparation are done), or has
    /// ended (`finish` then reports why).
    fn wait_until_booting(&mut self) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(crate::kernel::BOOTING) {
                return Ok(());
            }
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            if started.elapsed() > std::time::Duration::from_secs(15 * 60) {
                bail!(
                    "the kernel lab did not reach its guest's boot in 15 min (see {})",
                    self.log.display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
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
