//! The gateway bridge's nftables table (masquerade, no traffic between tasks) and sysctls, both
//! applied inside the node namespace.

use ipnet::Ipv4Net;
use netns::NetNs;

use crate::error::{Error, Result};

/// netagent's own table for the gateway bridge.
pub const TABLE: &str = "netagent_gwbridge";

/// The table's definition, and the tag every rule carries so a reconcile can tell whether the
/// kernel holds exactly this version.
pub(crate) fn script(bridge: &str, subnet: &Ipv4Net) -> (String, String) {
    let body = format!("{bridge} {subnet}");
    let tag = format!("netagent {:016x}", crate::spec::fnv(&[body.as_bytes()]));
    let script = format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   oifname != \"{bridge}\" ip saddr {subnet} masquerade comment \"{tag}\"\n\
         \x20 }}\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority filter; policy accept;\n\
         \x20   iifname \"{bridge}\" oifname \"{bridge}\" drop comment \"{tag}\"\n\
         \x20 }}\n\
         }}\n"
    );
    (script, tag)
}

pub(crate) fn nft(
    ns: &NetNs,
    args: &[&str],
    input: Option<&str>,
) -> Result<(bool, String, String)> {
    let r = ns.run_program("nft", args, input).map_err(|e| Error::Nft {
        what: format!("nft {}", args.join(" ")),
        ns: ns.name().to_string(),
        detail: e.to_string(),
    })?;
    Ok((r.ok, r.stdout, r.stderr))
}

/// Whether the table exists and holds exactly the rules tagged `tag` (two chains, two rules).
pub(crate) fn is_current(ns: &NetNs, tag: &str) -> Result<bool> {
    let (ok, stdout, _) = nft(ns, &["-j", "list", "table", "ip", TABLE], None)?;
    if !ok {
        return Ok(false);
    }
    let v: serde_json::Value = match serde_json::from_str(&stdout) {
        Ok(v) => v,
        Err(_) => return Ok(false),
    };
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let chains = items.iter().filter(|i| i.get("chain").is_some()).count();
    let rules: Vec<&serde_json::Value> = items.iter().filter_map(|i| i.get("rule")).collect();
    Ok(chains == 2 && rules.len() == 2 && rules.iter().all(|r| r["comment"] == tag))
}

/// Whether the table exists.
pub(crate) fn exists(ns: &NetNs) -> Result<bool> {
    Ok(nft(ns, &["list", "table", "ip", TABLE], None)?.0)
}

/// Replaces the table atomically (one nft transaction).
pub(crate) fn apply(ns: &NetNs, script: &str) -> Result<()> {
    let (ok, _, stderr) = nft(ns, &["-f", "-"], Some(script))?;
    if ok {
        Ok(())
    } else {
        Err(Error::Nft {
            what: format!("replace table ip {TABLE}"),
            ns: ns.name().to_string(),
            detail: stderr,
        })
    }
}

/// Deletes the table.
pub(crate) fn delete(ns: &NetNs) -> Result<()> {
    let (ok, _, stderr) = nft(ns, &["delete", "table", "ip", TABLE], None)?;
    if ok || !exists(ns)? {
        Ok(())
    } else {
        Err(Error::Nft {
            what: format!("delete table ip {TABLE}"),
            ns: ns.name().to_string(),
            detail: stderr,
        })
    }
}

/// Sets each present `/proc/sys/<key>` to `value` inside `ns` (keys the kernel lacks, e.g.
/// without br_netfilter, are skipped); returns how many it wrote.
pub(crate) fn ensure_sysctls_if_present(ns: &NetNs, keys: &[&str], value: &str) -> Result<u64> {
    let mut wrote = 0;
    for key in keys {
        if ns.run(|| std::path::Path::new(&format!("/proc/sys/{key}")).exists())? {
            wrote += u64::from(ensure_sysctl(ns, key, value)?);
        }
    }
    Ok(wrote)
}

/// Sets `/proc/sys/<key>` to `value` inside `ns` unless it already has it; returns whether it
/// wrote. /proc/sys/net follows the opening thread's namespace, hence the thread inside `ns`.
pub(crate) fn ensure_sysctl(ns: &NetNs, key: &str, value: &str) -> Result<bool> {
    let path = format!("/proc/sys/{key}");
    ns.run(|| -> std::io::Result<bool> {
        let now = std::fs::read_to_string(&path)?;
        if now.trim() == value {
            return Ok(false);
        }
        std::fs::write(&path, value)?;
        Ok(true)
    })?
    .map_err(|source| Error::Sysctl {
        key: key.replace('/', "."),
        ns: ns.name().to_string(),
        source,
    })
}
