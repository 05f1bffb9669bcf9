//! `cargo xtask test-kernel [FILTER...]`: the kernel lab.
//!
//! This host's kernel lacks IPVS, ESP and GCM, so the namespace tests that need them run inside a
//! qemu guest (TCG) booting Debian bookworm's stock kernel, whose modules have them; a few suites
//! also run under bookworm's 6.12, which has ESP and TCX together (one guest boot per kernel):
//!
//! 1. [`debian`]: the newest `linux-image-6.1.0-*-amd64` (and `linux-image-6.12.*+deb12-amd64`
//!    when a suite wants it) is fetched with `apt-get download` and unpacked with
//!    `dpkg-deb -x` (never installed) into `~/.cache/netagent/kernel/`; its modules are
//!    decompressed if needed and indexed with `depmod -b`.
//! 2. The suites ([`suites`]) are built on the host (`cargo test --no-run`) and their tests listed, so
//!    that FILTER selects exact test names before anything boots.
//! 3. [`initramfs`]: a small initramfs (static busybox, kmod with its libraries as the kernel's
//!    module loader, the virtio/9p modules and an `/init` script), cached under a hash of its
//!    contents.
//! 4. [`guest`]: qemu boots it. The guest mounts the Debian module tree, the host's root file
//!    system (read-only) and a results directory over 9p, loads the modules the lab needs, then
//!    runs each suite's test binary chrooted into the host's root (fresh /proc, /sys, cgroup2,
//!    /dev, /run; TMPDIR is /run/tmp), so the binaries find the host's `ip`, `nft`, `ping`, ... and glibc, while
//!    the kernel and its modules are Debian's 6.1. Each suite's output and exit status land in the
//!    results directory; the host streams them, enforces a timeout and reports.

mod debian;
mod guest;
mod initramfs;
mod suites;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{cargo, have, output, require_root};
use debian::Series;
pub use suites::{SUITES, Suite, default_targets};

/// What `run` prints once the guest is about to boot: everything is built by then.
pub const BOOTING: &str = "test-kernel: booting";

/// Modules loaded when the guest boots (their dependencies come along). Anything else the tests
/// need is loaded on demand by the kernel through the guest's `modprobe`.
pub const PRELOAD_MODULES: &[&str] = &[
    // The first loads in parallel with the others: the slowest (~1 s of crypto self-tests).
    "aesni_intel",
    "ip_vs",
    "veth",
    "bridge",
    "vxlan",
    "tun",
    "dummy",
    "ip_vs_rr",
    "ip_vs_wrr",
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_ct",
    "esp4",
    "xfrm_user",
    "xfrm_algo",
    "gcm",
    "ghash_generic",
    "ctr",
    "seqiv",
    "echainiv",
    "authenc",
    "crypto_user",
];

/// Test threads per suite inside the guest (it has 2 vCPUs).
const TEST_THREADS: u32 = 2;
/// The whole guest run (boot, all suites) must finish within this; override with
/// NETAGENT_KERNEL_LAB_TIMEOUT (seconds).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// Old run directories (console log, outputs) kept under `<target>/kernel-lab/`.
const KEEP_RUNS: usize = 5;

/// A suite resolved to a binary and the exact tests to run.
pub struct Planned {
    /// [`Suite::name`].
    pub name: String,
    pub exe: PathBuf,
    /// Working directory (the package's root, as `cargo test` uses).
    pub cwd: PathBuf,
    pub include_ignored: bool,
    pub tests: Vec<String>,
    /// The suite's own environment ([`Suite::env`]).
    pub env: Vec<(String, String)>,
    pub test_threads: u32,
    pub show_output: bool,
    /// The kernel it runs under.
    pub series: Series,
}

pub fn run(filters: &[String]) -> Result<()> {
    require_root("cargo xtask test-kernel")?;
    for tool in [
        "qemu-system-x86_64",
        "apt-get",
        "apt-cache",
        "dpkg-deb",
        "depmod",
        "ldd",
        "busybox",
    ] {
        if !have(tool) {
            bail!(
                "test-kernel needs `{tool}`, which is not on PATH: run `cargo xtask setup` first"
            );
        }
    }
    let started = Instant::now();

    let plan = plan(filters)?;
    if plan.is_empty() {
        let names: Vec<String> = SUITES.iter().map(Suite::name).collect();
        bail!(
            "no kernel-lab test matches {filters:?} (suites: {}); a filter selects tests whose \
             `package/target::test_name` or `suite::test_name` contains it",
            names.join(", ")
        );
    }
    // One guest per kernel, every kernel prepared before the first boots (what `BOOTING`
    // promises: nothing is built or fetched after it).
    let mut groups: std::collections::BTreeMap<Series, Vec<Planned>> = Default::default();
    for p in plan {
        groups.entry(p.series).or_default().push(p);
    }
    let mut guests = Vec::new();
    for (series, plan) in groups {
        let kernel = debian::kernel(series)
            .with_context(|| format!("could not prepare Debian's {} kernel", series.label()))?;
        let boot_image = kernel.boot_image();
        let initrd =
            initramfs::build(&kernel).context("could not build the kernel-lab initramfs")?;
        guests.push(Guest {
            kernel,
            boot_image,
            initrd,
            plan,
        });
    }
    let prepared = started.elapsed();
    eprintln!(
        "test-kernel: prepared (kernels, test build, initramfs) in {:.1}s",
        prepared.as_secs_f64()
    );
    let deadline = Instant::now() + timeout()?;
    let mut failed: Vec<String> = Vec::new();
    for g in &guests {
        match g.boot_and_report(deadline)? {
            Run::Done(f) => failed.extend(f),
            Run::Trapped(why) => {
                // Once: a second trap is reported as the failure it then is.
                eprintln!("test-kernel: {why}; booting that guest once more");
                match g.boot_and_report(deadline)? {
                    Run::Done(f) => failed.extend(f),
                    Run::Trapped(why) => bail!("{why}, twice in a row"),
                }
            }
        }
    }
    eprintln!("test-kernel: total {:.1}s", started.elapsed().as_secs_f64());
    if failed.is_empty() {
        eprintln!("test-kernel: all green");
        return Ok(());
    }
    bail!("kernel lab: {} failed: {}", failed.len(), failed.join(", "))
}

/// How a guest's run ended.
enum Run {
    /// The names of the failed tests (or suites); empty when all passed.
    Done(Vec<String>),
    /// The guest kernel died of a breakpoint trap in kernel code (why, and where the console
    /// is): under QEMU's TCG a vCPU can still run the int3 another one planted while patching a
    /// static key (text_poke_bp) after the patch is done, and the kernel then takes it for a
    /// bug. Seen twice on the 6.12 guest on 2026-12-04, in __netif_receive_skb_core; the run
    /// is repeated once.
    Trapped(String),
}

/// The mark of [`Run::Trapped`] in a guest's console.
const TCG_TRAP: &str = "Oops: int3";

/// Whether a guest's console shows the kernel dying of a breakpoint trap ([`Run::Trapped`]).
fn trapped(console: &str) -> bool {
    console.lines().any(|l| l.contains(TCG_TRAP)) && console.contains("Kernel panic - not syncing")
}

/// One kernel, prepared, and the suites that run under it.
struct Guest {
    kernel: debian::Kernel,
    boot_image: PathBuf,
    initrd: PathBuf,
    plan: Vec<Planned>,
}

impl Guest {
    /// Boots the guest, runs its suites and reports them: the names of failed tests (or suites),
    /// a breakpoint trap ([`Run::Trapped`]), or an error when the guest itself failed otherwise
    /// (timed out at `deadline`, stopped early).
    fn boot_and_report(&self, deadline: Instant) -> Result<Run> {
        let Guest {
            kernel,
            boot_image,
            initrd,
            plan,
        } = self;
        let run_dir = new_run_dir()?;
        eprintln!(
            "{BOOTING}: {} test(s) in {} suite(s) under Debian {} ({}), logs in {}",
            plan.iter().map(|p| p.tests.len()).sum::<usize>(),
            plan.len(),
            kernel.release,
            kernel.version,
            run_dir.display()
        );
        let timeout = deadline.saturating_duration_since(Instant::now());
        let booted = Instant::now();
        let outcome = guest::run(&guest::Spec {
            kernel,
            boot_image,
            initrd,
            plan,
            run_dir: &run_dir,
            timeout,
            preload: PRELOAD_MODULES,
        })?;

        eprintln!();
        eprintln!("test-kernel: summary (Debian {})", kernel.release);
        match outcome.boot {
            Some(b) => eprintln!("  guest boot to ready: {:.1}s", b.as_secs_f64()),
            None => eprintln!("  guest boot to ready: never"),
        }
        let mut failed: Vec<String> = Vec::new();
        for (p, r) in plan.iter().zip(&outcome.suites) {
            let time = r
                .secs
                .map(|s| format!("{s:.1}s"))
                .unwrap_or_else(|| "-".into());
            let status = match r.rc {
                Some(0) => "ok".to_string(),
                Some(rc) => format!("FAILED (exit {rc})"),
                None => "did not finish".to_string(),
            };
            let result_line = r
                .output
                .lines()
                .rev()
                .find(|l| l.starts_with("test result:"))
                .unwrap_or("");
            eprintln!("  {:<36} {:>7}  {status}  {result_line}", p.name, time);
            let mut times = test_times(&r.output);
            times.sort_by(|a, b| b.1.total_cmp(&a.1));
            if !times.is_empty() {
                let slowest: Vec<String> = times
                    .iter()
                    .take(3)
                    .map(|(t, s)| format!("{t} {s:.0}s"))
                    .collect();
                eprintln!("    slowest: {}", slowest.join(", "));
            }
            if r.rc != Some(0) {
                let names = failed_tests(&r.output);
                if names.is_empty() {
                    failed.push(format!("{} ({status})", p.name));
                } else {
                    failed.extend(names.into_iter().map(|t| format!("{}::{t}", p.name)));
                }
            }
            if let Some(logs) = &r.lab_logs {
                eprintln!("    lab logs of its failed tests: {}", logs.display());
            }
        }
        eprintln!("  guest total: {:.1}s", booted.elapsed().as_secs_f64());
        if outcome.finished && failed.is_empty() {
            return Ok(Run::Done(failed));
        }
        eprintln!(
            "\n--- guest console, last 30 lines of {} ---\n{}",
            outcome.console.display(),
            tail(&outcome.console, 30)
        );
        if !outcome.finished {
            let qemu_log = tail(&outcome.qemu_log, 10);
            if !qemu_log.is_empty() {
                eprintln!("--- {} ---\n{qemu_log}", outcome.qemu_log.display());
            }
        }
        let failures = if failed.is_empty() {
            String::new()
        } else {
            format!("; failed or unfinished: {}", failed.join(", "))
        };
        if outcome.timed_out {
            bail!(
                "the kernel-lab guest ({}) {} within {timeout:?} and was killed{failures} (logs \
                 in {}; NETAGENT_KERNEL_LAB_TIMEOUT=SECONDS changes the limit of the whole run)",
                kernel.release,
                if outcome.boot.is_none() {
                    "did not boot"
                } else {
                    "did not finish"
                },
                run_dir.display()
            );
        }
        if !outcome.finished && std::fs::read_to_string(&outcome.console).is_ok_and(|c| trapped(&c))
        {
            return Ok(Run::Trapped(format!(
                "the kernel-lab guest ({}) died of a breakpoint trap in kernel code (\"{TCG_TRAP}\", \
                 most likely QEMU TCG running a static key's patch site mid-patch, not a test's \
                 failure){failures} (console in {})",
                kernel.release,
                outcome.console.display()
            )));
        }
        if !outcome.finished {
            bail!(
                "the kernel-lab guest ({}) stopped before finishing (qemu: {}){failures} (logs \
                 in {})",
                kernel.release,
                outcome.qemu_status,
                run_dir.display()
            );
        }
        eprintln!(
            "  outputs of the failed suites: {}",
            run_dir.join("results").display()
        );
        Ok(Run::Done(failed))
    }
}

fn timeout() -> Result<Duration> {
    match std::env::var("NETAGENT_KERNEL_LAB_TIMEOUT") {
        Ok(s) => {
            let secs: u64 = s.trim().parse().with_context(|| {
                format!("NETAGENT_KERNEL_LAB_TIMEOUT={s:?} is not a number of seconds")
            })?;
            Ok(Duration::from_secs(secs.max(1)))
        }
        Err(_) => Ok(DEFAULT_TIMEOUT),
    }
}

/// Builds every suite's test binary and picks the tests to run.
fn plan(filters: &[String]) -> Result<Vec<Planned>> {
    // One cargo invocation per package builds all its suites' targets.
    let packages: BTreeSet<&str> = SUITES.iter().map(|s| s.package).collect();
    let mut built: Vec<(String, String, PathBuf, PathBuf)> = Vec::new();
    for pkg in packages {
        let targets: BTreeSet<&str> = SUITES
            .iter()
            .filter(|s| s.package == pkg)
            .map(|s| s.target)
            .collect();
        built.extend(build(pkg, &targets)?);
    }
    let mut plan = Vec::new();
    for s in SUITES {
        let (exe, cwd) = built
            .iter()
            .find(|(p, t, _, _)| p == s.package && t == s.target)
            .map(|(_, _, exe, cwd)| (exe.clone(), cwd.clone()))
            .with_context(|| {
                format!(
                    "cargo built no test binary for {}/{} (is `{}` a [[test]] target of {}?)",
                    s.package, s.target, s.target, s.package
                )
            })?;
        let name = s.name();
        let tests: Vec<String> = list_tests(&exe, s.include_ignored)?
            .into_iter()
            .filter(|t| s.selects(t, filters))
            .collect();
        if tests.is_empty() {
            continue;
        }
        // The guest mounts fresh file systems over these: what lives there is invisible.
        for path in [&exe, &cwd] {
            if let Some(dir) = ["/run", "/dev", "/proc", "/sys"]
                .into_iter()
                .find(|d| path.starts_with(d))
            {
                bail!(
                    "{} is under {dir}, which the kernel-lab guest replaces with its own: \
                     build elsewhere (e.g. unset CARGO_TARGET_DIR or point it outside {dir})",
                    path.display()
                );
            }
        }
        plan.push(Planned {
            name,
            exe,
            cwd,
            include_ignored: s.include_ignored,
            tests,
            env: s
                .env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            test_threads: s.threads.unwrap_or(TEST_THREADS),
            show_output: s.show_output,
            series: s.series,
        });
    }
    Ok(plan)
}

/// `cargo test --no-run -p PKG --test T...`; returns (package, target, executable, package dir).
pub fn build(
    pkg: &str,
    targets: &BTreeSet<&str>,
) -> Result<Vec<(String, String, PathBuf, PathBuf)>> {
    let mut cmd = cargo();
    // The whole workspace selected, as `cargo xtask test` builds it: with `-p PKG` alone cargo
    // unifies dependency features differently and rebuilds ~100 crates a second time.
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
        "--workspace",
    ]);
    for t in targets {
        cmd.args(["--test", t]);
    }
    cmd.stderr(Stdio::inherit());
    let out = output(&mut cmd).with_context(|| format!("could not build the tests of {pkg}"))?;
    let mut found = Vec::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let (Some(name), Some(exe), Some(manifest)) = (
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
            msg["manifest_path"].as_str(),
        ) else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        let of_pkg = msg["package_id"]
            .as_str()
            .is_some_and(|id| package_name(id) == pkg);
        if !is_test || !of_pkg || !targets.contains(name) {
            continue;
        }
        let cwd = Path::new(manifest)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(crate::util::root);
        found.push((pkg.to_string(), name.to_string(), PathBuf::from(exe), cwd));
    }
    Ok(found)
}

/// The package name in a cargo package id: `path+file:///w/vxlan#0.1.0` (the directory is the
/// name), `path+file:///w/agent#netagent@0.1.0`, or the old `name 0.1.0 (path+file://...)`.
fn package_name(id: &str) -> &str {
    if let Some((_, frag)) = id.split_once('#') {
        match frag.split_once('@') {
            Some((name, _)) => name,
            None => id
                .split_once('#')
                .map(|(url, _)| url.rsplit('/').next().unwrap_or(url))
                .unwrap_or(id),
        }
    } else {
        id.split(' ').next().unwrap_or(id)
    }
}

/// The tests in a libtest binary (run on the host with `--list`; nothing executes).
fn list_tests(exe: &Path, include_ignored: bool) -> Result<Vec<String>> {
    let parse = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_string)
            .collect()
    };
    let all = parse(
        &output(Command::new(exe).arg("--list"))
            .with_context(|| format!("could not list the tests of {}", exe.display()))?,
    );
    if include_ignored {
        return Ok(all);
    }
    let ignored: BTreeSet<String> = parse(
        &output(Command::new(exe).args(["--list", "--ignored"]))
            .with_context(|| format!("could not list the ignored tests of {}", exe.display()))?,
    )
    .into_iter()
    .collect();
    Ok(all.into_iter().filter(|t| !ignored.contains(t)).collect())
}

/// Each finished test's time, from libtest's `--report-time` lines
/// (`test a::b ... ok <12.345s>`).
fn test_times(output: &str) -> Vec<(String, f64)> {
    output
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("test ")?.split_once(" ... ")?;
            let secs = rest.split_once('<')?.1.strip_suffix("s>")?.parse().ok()?;
            Some((name.to_string(), secs))
        })
        .collect()
}

/// Names of failed tests in libtest output (the "failures:" list at the end).
fn failed_tests(output: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_list = false;
    for line in output.lines() {
        if line == "failures:" {
            in_list = true;
            names.clear();
            continue;
        }
        if in_list {
            match line.strip_prefix("    ") {
                Some(name) if !name.trim().is_empty() => names.push(name.trim().to_string()),
                _ if line.trim().is_empty() && names.is_empty() => {}
                _ => in_list = false,
            }
        }
    }
    names
}

/// `<target>/kernel-lab/<unique>`: the results share and the console log of one run. The newest
/// runs are kept for inspection; older ones of finished processes are removed.
fn new_run_dir() -> Result<PathBuf> {
    let meta = output(cargo().args(["metadata", "--no-deps", "--format-version", "1"]))
        .context("cargo metadata failed")?;
    let meta: serde_json::Value =
        serde_json::from_str(&meta).context("cargo metadata printed something that is not JSON")?;
    let target = meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")?;
    let base = target.join("kernel-lab");
    std::fs::create_dir_all(&base).with_context(|| format!("create {}", base.display()))?;
    prune_runs(&base);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let dir = base.join(format!("run-{}-{}", stamp.as_millis(), std::process::id()));
    std::fs::create_dir_all(dir.join("results"))
        .with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

fn prune_runs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let mut runs: Vec<(String, PathBuf, Option<u32>)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("run-")?;
            let (millis, pid) = rest.split_once('-')?;
            let _: u128 = millis.parse().ok()?;
            Some((format!("{millis:0>20}"), e.path(), pid.parse().ok()))
        })
        .collect();
    runs.sort();
    let excess = runs.len().saturating_sub(KEEP_RUNS.saturating_sub(1));
    for (_, path, pid) in runs.into_iter().take(excess) {
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// The last `n` lines of a text file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_times_are_read_from_report_time_lines() {
        let out = "running 2 tests\ntest a ... ok <1.500s>\ntest b::c ... FAILED <20.250s>\n\
                   test d has been running for over 60 seconds\ntest e ... ok\n";
        assert_eq!(
            test_times(out),
            [("a".to_string(), 1.5), ("b::c".to_string(), 20.25)]
        );
    }

    #[test]
    fn failed_tests_are_read_from_libtest_output() {
        let out = "running 2 tests\ntest a ... ok\ntest b::c ... FAILED\n\nfailures:\n\n\
                   ---- b::c stdout ----\nboom\n\nfailures:\n    b::c\n    d\n\n\
                   test result: FAILED. 1 passed; 2 failed";
        assert_eq!(failed_tests(out), ["b::c", "d"]);
        assert!(failed_tests("test result: ok. 3 passed").is_empty());
    }

    #[test]
    fn a_breakpoint_trap_is_told_from_other_deaths() {
        // What the 6.12 guest printed (2026-12-04), shortened.
        let trap = "[   24.680420] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
                    [   24.680817] RIP: 0010:__netif_receive_skb_core.constprop.0+0x3f/0x1070\n\
                    [   24.682895] Kernel panic - not syncing: Fatal exception in interrupt\n";
        assert!(trapped(trap));
        let bug = "[    9.1] BUG: kernel NULL pointer dereference, address: 0000000000000008\n\
                   [    9.2] Oops: 0000 [#1] PREEMPT SMP NOPTI\n\
                   [    9.3] Kernel panic - not syncing: Fatal exception in interrupt\n";
        assert!(!trapped(bug));
        assert!(!trapped("kernel-lab: suite x: exit 101\n"));
    }

    #[test]
    fn package_names_from_ids() {
        assert_eq!(package_name("path+file:///work/main/vxlan#0.1.0"), "vxlan");
        assert_eq!(
            package_name("path+file:///work/main/agent#netagent@0.1.0"),
            "netagent"
        );
        assert_eq!(
            package_name("lab 0.1.0 (path+file:///work/main/tests/netns)"),
            "lab"
        );
    }
}
