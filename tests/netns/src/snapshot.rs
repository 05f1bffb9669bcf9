//! A read-only picture of the caller's own namespace, to prove a test left it unchanged.

use std::process::Command;

/// Addresses, routes (all tables), rules, links and the nftables ruleset of the calling process's
/// namespace, as text. Only reads; link counters are not included, so two snapshots of an unchanged
/// namespace are equal.
pub fn host_snapshot() -> String {
    let probes: [&[&str]; 6] = [
        &["ip", "-o", "addr", "show"],
        &["ip", "-o", "link", "show"],
        &["ip", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
        &["ip", "rule", "show"],
        &["nft", "list", "ruleset"],
    ];
    let mut out = String::new();
    for argv in probes {
        out.push_str(&format!("## {}\n", argv.join(" ")));
        match Command::new(argv[0]).args(&argv[1..]).output() {
            Ok(o) => {
                out.push_str(&String::from_utf8_lossy(&o.stdout));
                out.push_str(&String::from_utf8_lossy(&o.stderr));
            }
            Err(e) => out.push_str(&format!("cannot run: {e}\n")),
        }
    }
    out
}
