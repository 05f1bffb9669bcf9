//! `cargo xtask fuzz [TARGET] [--seconds N]`: runs the cargo-fuzz targets of `fuzz/` (nightly,
//! AddressSanitizer) for N seconds each and prints, per target, execs/s and crashes.
//!
//! Each target starts from its checked-in seeds (`fuzz/corpus/<target>/`, never written to) and
//! a working corpus that persists between runs (`~/.cache/netagent/fuzz-corpus/<target>/`); the
//! build goes to `~/.cache/netagent/fuzz-target`, so later runs (and CI on the same machine)
//! reuse it. A crash leaves its input in `fuzz/artifacts/<target>/`; make it a regression input
//! (`fuzz/regressions/<target>/`, replayed by each crate's unit tests) once the parser is fixed.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util::{cache_dir, exec, have, root, show};

/// What one target's run gave.
#[derive(Debug, Default)]
pub struct Outcome {
    pub target: String,
    pub seconds: u64,
    pub execs: u64,
    pub execs_per_sec: u64,
    pub crash: Option<String>,
}

/// The targets of fuzz/Cargo.toml, in order.
pub fn targets() -> Result<Vec<String>> {
    let manifest = root().join("fuzz/Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let mut out = Vec::new();
    let mut in_bin = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(v) = line.strip_prefix("name") {
            let name = v
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            out.push(name.to_string());
        }
    }
    if out.is_empty() {
        bail!("no fuzz targets ([[bin]]) in {}", manifest.display());
    }
    Ok(out)
}

fn target_dir() -> PathBuf {
    cache_dir().join("fuzz-target")
}

/// `cargo +nightly fuzz ...` in the workspace root, with the persistent target dir.
fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg("+nightly").arg("fuzz").current_dir(root());
    // The outer `cargo xtask` (stable) must not leak its toolchain into the nightly build.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("CARGO_TARGET_DIR", target_dir());
    cmd
}

/// Installs cargo-fuzz if it is missing (also done by `cargo xtask setup`).
pub fn install_cargo_fuzz() -> Result<()> {
    let home_bin = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cargo/bin/cargo-fuzz"))
        .is_some_and(|p| p.is_file());
    if have("cargo-fuzz") || home_bin {
        return Ok(());
    }
    eprintln!("setup: installing cargo-fuzz (a minute or two)");
    exec(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
        .context("cargo install cargo-fuzz failed")
}

/// Builds every target (or the one named), then runs each for `seconds`.
pub fn run(target: Option<&str>, seconds: u64) -> Result<()> {
    install_cargo_fuzz()?;
    let all = targets()?;
    let chosen: Vec<String> = match target {
        Some(t) if all.iter().any(|a| a == t) => vec![t.to_string()],
        Some(t) => bail!("no fuzz target {t:?}; the targets are: {}", all.join(", ")),
        None => all,
    };
    let t0 = Instant::now();
    let mut build = cargo_fuzz();
    build.arg("build");
    if let [one] = chosen.as_slice() {
        build.arg(one);
    }
    exec(&mut build).context("building the fuzz targets failed (is the nightly toolchain installed? `cargo xtask setup`)")?;
    eprintln!("fuzz: build took {:.0} s", t0.elapsed().as_secs_f64());
    let mut outcomes = Vec::new();
    for t in &chosen {
        outcomes.push(run_one(t, seconds)?);
    }
    println!("\nfuzz results ({seconds} s per target):");
    println!(
        "{:<18} {:>8} {:>12} {:>10}  crashes",
        "target", "seconds", "execs", "execs/s"
    );
    for o in &outcomes {
        println!(
            "{:<18} {:>8} {:>12} {:>10}  {}",
            o.target,
            o.seconds,
            o.execs,
            o.execs_per_sec,
            o.crash.as_deref().unwrap_or("0")
        );
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crash.is_some())
        .map(|o| o.target.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz: {} crashed: fix the parser, then add the input under fuzz/regressions/<target>/",
            crashed.join(", ")
        );
    }
    Ok(())
}

fn run_one(target: &str, seconds: u64) -> Result<Outcome> {
    let work = cache_dir().join("fuzz-corpus").join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
    let seeds = root().join("fuzz/corpus").join(target);
    let log_path = cache_dir().join(format!("fuzz-{target}.log"));
    let mut cmd = cargo_fuzz();
    cmd.args(["run", target])
        .arg(&work)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-print_final_stats=1")
        // A unit this slow is a bug (a parser looping): reported as a crash.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!("+ {}", show(&cmd));
    let started = Instant::now();
    let mut child = cmd.spawn().context("could not start cargo fuzz")?;
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut o = Outcome {
        target: target.to_string(),
        ..Default::default()
    };
    let mut crash_lines = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
            let _ = writeln!(log, "{line}");
            parse_line(&line, &mut o, &mut crash_lines);
        }
    }
    let status = child.wait()?;
    o.seconds = started.elapsed().as_secs();
    if o.execs_per_sec == 0 && o.seconds > 0 {
        o.execs_per_sec = o.execs / o.seconds;
    }
    if !status.success() && o.crash.is_none() {
        o.crash = Some(format!("exited with {status} (see {})", log_path.display()));
    }
    if o.crash.is_some() {
        for l in &crash_lines {
            eprintln!("  {l}");
        }
    }
    eprintln!(
        "fuzz {target}: {} s, {} execs, {} execs/s, crashes: {} (log: {})",
        o.seconds,
        o.execs,
        o.execs_per_sec,
        o.crash.as_deref().unwrap_or("0"),
        log_path.display()
    );
    Ok(o)
}

/// Picks libFuzzer's statistics and crash reports out of its stderr.
fn parse_line(line: &str, o: &mut Outcome, crash_lines: &mut Vec<String>) {
    let stat = |name: &str| {
        line.strip_prefix(name)
            .and_then(|v| v.trim_start_matches(':').trim().parse::<u64>().ok())
    };
    if let Some(n) = stat("stat::number_of_executed_units") {
        o.execs = n;
    } else if let Some(n) = stat("stat::average_exec_per_sec") {
        o.execs_per_sec = n;
    } else if line.contains(" DONE ") || line.starts_with("Done ") {
        eprintln!("  {line}");
    } else if let Some(path) = line
        .split_once("Test unit written to ")
        .map(|(_, p)| p.trim().to_string())
    {
        o.crash = Some(absolute(&path));
    } else if line.contains("==ERROR")
        || line.contains("panicked at")
        || line.starts_with("SUMMARY")
        || line.contains("deadly signal")
    {
        crash_lines.push(line.to_string());
    }
}

fn absolute(path: &str) -> String {
    let p = Path::new(path);
    if p.is_absolute() {
        path.to_string()
    } else {
        root().join(p).display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_targets_and_libfuzzer_stats() {
        let t = targets().unwrap();
        assert!(t.contains(&"gossip_datagram".to_string()), "{t:?}");
        let mut o = Outcome::default();
        let mut c = Vec::new();
        for l in [
            "#123456\tDONE   cov: 900 ft: 2000 corp: 50/3Kb lim: 4096 exec/s: 4115 rss: 80Mb",
            "stat::number_of_executed_units: 123456",
            "stat::average_exec_per_sec:     4115",
            "==1234== ERROR: libFuzzer: deadly signal",
            "artifact_prefix='/r/fuzz/artifacts/x/'; Test unit written to /r/fuzz/artifacts/x/crash-ab",
        ] {
            parse_line(l, &mut o, &mut c);
        }
        assert_eq!((o.execs, o.execs_per_sec), (123456, 4115));
        assert_eq!(o.crash.as_deref(), Some("/r/fuzz/artifacts/x/crash-ab"));
        assert_eq!(c.len(), 1);
    }
}
