//! The binaries' own surface: `--version` names the commit they were built from, and netctl's
//! completion scripts load in their shells. No root or lab needed.

use std::process::Command;

const NETAGENT: &str = env!("CARGO_BIN_EXE_netagent");
const NETCTL: &str = env!("CARGO_BIN_EXE_netctl");

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn versions_name_the_commit() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    for (bin, name) in [(NETAGENT, "netagent"), (NETCTL, "netctl")] {
        let v = stdout(Command::new(bin).arg("--version"));
        let want = format!("{name} {} (", env!("CARGO_PKG_VERSION"));
        assert!(v.starts_with(&want), "{v}");
        // In a checkout, the commit; elsewhere "unknown" (or NETAGENT_GIT_COMMIT at build time).
        match &commit {
            Some(c) => assert!(v.contains(c.as_str()), "{v} does not name {c}"),
            None => assert!(v.trim_end().ends_with(')'), "{v}"),
        }
    }
}

#[test]
fn completion_scripts_load() {
    let bash = stdout(Command::new(NETCTL).args(["completion", "bash"]));
    assert!(bash.contains("_netctl()"), "{bash}");
    let out = Command::new("bash")
        .args(["-c", "source /dev/stdin && complete -p netctl"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(bash.as_bytes())?;
            c.wait_with_output()
        })
        .expect("bash");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("-F _netctl netctl"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let zsh = stdout(Command::new(NETCTL).args(["completion", "zsh"]));
    assert!(zsh.starts_with("#compdef netctl"), "{zsh}");
    let fish = stdout(Command::new(NETCTL).args(["completion", "fish"]));
    assert!(fish.contains("complete -c netctl"), "{fish}");
    // Subcommands are completed.
    assert!(bash.contains("service") && bash.contains("network"));
    let err = Command::new(NETCTL)
        .args(["completion", "nope"])
        .output()
        .unwrap();
    assert!(!err.status.success());
}
