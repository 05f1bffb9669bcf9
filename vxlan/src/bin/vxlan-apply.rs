//! `vxlan-apply FILE`: makes the network namespace it runs in match the desired state in FILE
//! (JSON: `{"vtep": "...", "port": 4789, "prefix": "...", "state": {...}}`) and prints
//! `writes=N`, the number of mutating kernel requests it made.
//!
//! A test helper and a debugging tool. With `NETAGENT_VXLAN_DIE_AFTER=N` it kills itself with
//! SIGKILL right after its N-th write, to show that a restarted process converges from whatever
//! a crash left behind.

use std::net::Ipv4Addr;
use std::process::ExitCode;

use serde::Deserialize;

#[derive(Deserialize)]
struct Input {
    vtep: Ipv4Addr,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default = "default_prefix")]
    prefix: String,
    state: vxlan::DesiredState,
}

fn default_port() -> u16 {
    vxlan::DEFAULT_PORT
}

fn default_prefix() -> String {
    vxlan::DEFAULT_PREFIX.to_string()
}

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: vxlan-apply FILE (desired state as JSON)");
        return ExitCode::from(2);
    };
    let input: Input = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(&s).map_err(|e| e.to_string()))
    {
        Ok(i) => i,
        Err(e) => {
            eprintln!("vxlan-apply: cannot read {path}: {e}");
            return ExitCode::from(2);
        }
    };
    let die_after: Option<u64> = std::env::var("NETAGENT_VXLAN_DIE_AFTER")
        .ok()
        .and_then(|v| v.parse().ok());
    let run = || -> vxlan::Result<u64> {
        let mut cfg = vxlan::Config::new(netns::NetNs::current()?, input.vtep);
        cfg.port = input.port;
        cfg.prefix = input.prefix.clone();
        let mut dp = vxlan::Dataplane::new(cfg)?;
        if let Some(n) = die_after {
            dp.on_write(move |w| {
                if w >= n {
                    // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
                    unsafe {
                        libc::kill(libc::getpid(), libc::SIGKILL);
                    }
                }
            });
        }
        dp.apply(&input.state)?;
        Ok(dp.writes())
    };
    match run() {
        Ok(w) => {
            println!("writes={w}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vxlan-apply: {e}");
            ExitCode::FAILURE
        }
    }
}
