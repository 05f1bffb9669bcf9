//! Boots the kernel-lab guest in qemu (TCG), streams its console and the suites' outputs, enforces
//! the timeout and collects the results.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Planned;
use super::debian::Kernel;

const PR_SET_PDEATHSIG: i32 = 1;
const SIGKILL: i32 = 9;

unsafe extern "C" {
    fn prctl(option: i32, ...) -> i32;
}

/// The guest must reach "ready" (modules loaded, shares mounted) within this.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

pub struct Spec<'a> {
    pub kernel: &'a Kernel,
    /// What `-kernel` boots (see [`Kernel::boot_image`]).
    pub boot_image: &'a Path,
    pub initrd: &'a Path,
    pub plan: &'a [Planned],
    pub run_dir: &'a Path,
    pub timeout: Duration,
    pub preload: &'a [&'a str],
}

pub struct SuiteResult {
    pub rc: Option<i32>,
    pub output: String,
    /// Guest-measured run time.
    pub secs: Option<f64>,
    /// Logs the lab kept for failed tests (copied out of the guest's TMPDIR).
    pub lab_logs: Option<PathBuf>,
}

pub struct Outcome {
    /// From starting qemu to the guest's "ready" (shares mounted, modules loaded).
    pub boot: Option<Duration>,
    pub suites: Vec<SuiteResult>,
    /// The guest ran every suite and wrote its "done" marker.
    pub finished: bool,
    pub timed_out: bool,
    pub qemu_status: String,
    pub console: PathBuf,
    pub qemu_log: PathBuf,
}

/// Kills and reaps qemu when dropped, whatever happened before.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Single-quotes a word for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `/results/run.sh`: what the guest's /init sources.
fn run_script(spec: &Spec) -> String {
    let mut s = String::from("# written by cargo xtask test-kernel\n");
    s.push_str(&format!("PRELOAD={}\n", quote(&spec.preload.join(" "))));
    s.push_str("suites() {\n");
    let mut env: Vec<String> = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "HOME=/root".into(),
        "TMPDIR=/run/tmp".into(),
        "LANG=C.UTF-8".into(),
        "NETAGENT_KERNEL_LAB=1".into(),
    ];
    // Pass the knobs a developer may set on the host.
    for (k, v) in std::env::vars_os() {
        let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
            continue;
        };
        if k.starts_with("NETAGENT_") && k != "NETAGENT_KERNEL_LAB_TIMEOUT"
            || k == "RUST_LOG"
            || k == "AGENT_LOG"
            || k == "RUST_BACKTRACE"
        {
            env.push(format!("{k}={v}"));
        }
    }
    if !env.iter().any(|e| e.starts_with("RUST_BACKTRACE=")) {
        env.push("RUST_BACKTRACE=1".into());
    }
    for (i, p) in spec.plan.iter().enumerate() {
        let mut words: Vec<String> = vec![
            "suite".into(),
            i.to_string(),
            quote(&p.name),
            "/usr/bin/env".into(),
            "-i".into(),
            "-C".into(),
            quote(&p.cwd.to_string_lossy()),
        ];
        // The suite's own environment wins over what the host passes.
        words.extend(
            env.iter()
                .filter(|e| !p.env.iter().any(|(k, _)| e.starts_with(&format!("{k}="))))
                .map(|e| quote(e)),
        );
        words.extend(p.env.iter().map(|(k, v)| quote(&format!("{k}={v}"))));
        words.push("RUSTC_BOOTSTRAP=1".into());
        words.push(quote(&format!(
            "CARGO_MANIFEST_DIR={}",
            p.cwd.to_string_lossy()
        )));
        words.push(quote(&p.exe.to_string_lossy()));
        words.push(format!("--test-threads={}", p.test_threads));
        // Each test's time in its result line (libtest's flag is unstable: RUSTC_BOOTSTRAP
        // above lets a stable-built binary take it).
        words.push("-Zunstable-options".into());
        words.push("--report-time".into());
        if p.show_output {
            words.push("--show-output".into());
        }
        if p.include_ignored {
            words.push("--include-ignored".into());
        }
        words.push("--exact".into());
        words.extend(p.tests.iter().map(|t| quote(t)));
        s.push_str("    ");
        s.push_str(&words.join(" "));
        s.push('\n');
    }
    s.push_str("    :\n}\n");
    s
}

/// qemu's -virtfs option value; commas in paths are doubled, as qemu wants.
fn virtfs(path: &Path, tag: &str, readonly: bool) -> String {
    format!(
        "local,path={},mount_tag={tag},security_model=none,multidevs=remap{}",
        path.to_string_lossy().replace(',', ",,"),
        if readonly { ",readonly=on" } else { "" }
    )
}

/// Follows a growing file.
struct Follow {
    path: PathBuf,
    pos: u64,
    partial: String,
}

impl Follow {
    fn new(path: PathBuf) -> Self {
        Follow {
            path,
            pos: 0,
            partial: String::new(),
        }
    }

    /// The complete lines added since the last call (and the incomplete last one with `flush`).
    fn lines(&mut self, flush: bool) -> Vec<String> {
        if let Ok(mut f) = File::open(&self.path)
            && f.seek(SeekFrom::Start(self.pos)).is_ok()
        {
            let mut new = Vec::new();
            if f.read_to_end(&mut new).is_ok() {
                self.pos += new.len() as u64;
                self.partial.push_str(&String::from_utf8_lossy(&new));
            }
        }
        let mut lines = Vec::new();
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            lines.push(line.trim_end_matches(['\r', '\n']).to_string());
        }
        if flush && !self.partial.is_empty() {
            lines.push(std::mem::take(&mut self.partial));
        }
        lines
    }
}

/// Prints the guest's console (prefixed) and the suites' outputs as they grow, in order: a
/// suite's output is complete before the console line that reports its exit.
struct Streams {
    console: Follow,
    outputs: Vec<Follow>,
}

impl Streams {
    fn print(&mut self, flush: bool) {
        let mut err = std::io::stderr().lock();
        for line in self.console.lines(flush) {
            if line.contains("kernel-lab: suite ") && line.contains(": exit ") {
                for o in &mut self.outputs {
                    for l in o.lines(true) {
                        let _ = writeln!(err, "{l}");
                    }
                }
            }
            let _ = writeln!(err, "guest: {line}");
        }
        for o in &mut self.outputs {
            for l in o.lines(flush) {
                let _ = writeln!(err, "{l}");
            }
        }
    }
}

pub fn run(spec: &Spec) -> Result<Outcome> {
    let results = spec.run_dir.join("results");
    fs::create_dir_all(&results).with_context(|| format!("create {}", results.display()))?;
    let script = results.join("run.sh");
    fs::write(&script, run_script(spec)).with_context(|| format!("write {}", script.display()))?;
    let console = spec.run_dir.join("console.log");
    let qemu_log = spec.run_dir.join("qemu.log");

    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg,thread=multi", "-cpu", "max", "-m", "2048"])
        .args([
            "-smp",
            "2",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-nic", "none", "-monitor", "none"])
        .arg("-chardev")
        .arg(format!(
            "file,id=console,path={}",
            console.to_string_lossy().replace(',', ",,")
        ))
        .args(["-serial", "chardev:console"])
        .arg("-kernel")
        .arg(spec.boot_image)
        .arg("-initrd")
        .arg(spec.initrd)
        // Speculation mitigations halve the speed of every exec under TCG and change nothing
        // the lab tests. loglevel=5: a soft lockup or RCU stall prints its stack on the console.
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=5 mitigations=off",
        ])
        .arg("-virtfs")
        .arg(virtfs(Path::new("/"), "hostroot", true))
        .arg("-virtfs")
        .arg(virtfs(&spec.kernel.modules_base(), "kmods", true))
        .arg("-virtfs")
        .arg(virtfs(&results, "results", false))
        .stdin(Stdio::null());
    let log = File::create(&qemu_log).with_context(|| format!("create {}", qemu_log.display()))?;
    cmd.stdout(log.try_clone()?).stderr(log);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe; it makes the kernel kill qemu if
    // xtask dies without running its destructors (SIGKILL, crash).
    unsafe {
        cmd.pre_exec(|| {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    eprintln!("+ {}", crate::util::show(&cmd));
    let started = Instant::now();
    let mut qemu = Qemu(cmd.spawn().context(
        "could not start qemu-system-x86_64 (run `cargo xtask setup` to install qemu-system-x86)",
    )?);

    let mut streams = Streams {
        console: Follow::new(console.clone()),
        outputs: (0..spec.plan.len())
            .map(|i| Follow::new(results.join(format!("{i}.out"))))
            .collect(),
    };
    let mut boot = None;
    let mut timed_out = false;
    let status: Option<ExitStatus> = loop {
        if let Some(s) = qemu.0.try_wait().context("wait for qemu")? {
            break Some(s);
        }
        if boot.is_none() && results.join("ready").exists() {
            boot = Some(started.elapsed());
        }
        streams.print(false);
        let elapsed = started.elapsed();
        if elapsed > spec.timeout || (boot.is_none() && elapsed > BOOT_TIMEOUT) {
            timed_out = true;
            eprintln!(
                "test-kernel: {} after {:.0}s; killing qemu",
                if boot.is_none() {
                    "the guest did not boot"
                } else {
                    "timeout"
                },
                elapsed.as_secs_f64()
            );
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(qemu);
    streams.print(true);

    let read = |name: String| fs::read_to_string(results.join(name)).ok();
    let suites = (0..spec.plan.len())
        .map(|i| SuiteResult {
            rc: read(format!("{i}.rc")).and_then(|s| s.trim().parse().ok()),
            output: read(format!("{i}.out")).unwrap_or_default(),
            secs: read(format!("{i}.time")).and_then(|s| {
                let t: Vec<f64> = s
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect();
                (t.len() == 2).then(|| t[1] - t[0])
            }),
            lab_logs: Some(results.join(format!("{i}.lab-logs"))).filter(|p| p.is_dir()),
        })
        .collect();
    if boot.is_none() && results.join("ready").exists() {
        boot = Some(started.elapsed());
    }
    if let Ok(s) = fs::read_to_string(results.join("failed")) {
        eprintln!("test-kernel: the guest's /init failed: {}", s.trim());
    }
    Ok(Outcome {
        boot,
        suites,
        finished: results.join("done").exists(),
        timed_out,
        qemu_status: status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "killed".into()),
        console,
        qemu_log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn virtfs_doubles_commas() {
        let v = virtfs(Path::new("/a,b"), "t", true);
        assert!(v.starts_with("local,path=/a,,b,mount_tag=t,"), "{v}");
        assert!(v.ends_with(",readonly=on"));
    }
}
