//! The routing mesh's kernel half on one node: published ports in the node namespace, the
//! `ingress-sbox` namespace that balances them over the service's tasks, and the return path in
//! a task namespace that keeps the client's own address.
//!
//! Layout (desired values in, idempotent changes out, like the rest of the crate):
//! - **node namespace**, nftables table [`TABLE`]: for a destination address of the node
//!   (`fib daddr type local`), `protocol . port` of a published port is DNATed to the
//!   ingress-sbox's address on docker_gwbridge (mode ingress), or straight to a local task's
//!   gateway address and target port (mode host). Only the destination is rewritten.
//! - **ingress-sbox** (`<prefix>ingress_sbox`): an endpoint on the ingress overlay (the node's
//!   ingress address, made by [`crate::Dataplane::ensure_endpoint`]) and one on docker_gwbridge
//!   ([`crate::Dataplane::ensure_gateway_endpoint`]), IP forwarding on, and its own table
//!   [`TABLE`]: per published port `dnat to numgen random mod N map { i : task . target }` over
//!   the running tasks' ingress addresses. Connections live in conntrack, so the namespace's
//!   conntrack timeouts (not IPVS' 900 s) decide when an idle one dies. No SNAT unless asked
//!   ([`Sbox::snat`], docker's behaviour).
//! - **task namespace** ([`TaskReturn`]): the client's address reaches the task, so its replies
//!   must go back through the ingress-sbox that sent the connection (the node that received
//!   it), not the task's default route. A new connection arriving on the ingress interface gets
//!   the sending sbox's address as conntrack mark, read from the frame's source MAC (02:42 + the
//!   sender's IPv4, bits 64..96 of the link-layer header); replies carry it as packet mark
//!   (output chain of type route, so the kernel routes them again) and a policy rule per sbox
//!   (`fwmark <sbox> lookup <sbox>`, priority [`RULE_PRIORITY`]) routes them via that sbox.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use netns::NetNs;

use crate::error::{Error, Result};

/// netagent's nftables table for the mesh, in the node, the ingress-sbox and task namespaces.
pub const TABLE: &str = "netagent_ingress";
/// The ingress-sbox namespace's name after the data plane's prefix.
pub const SBOX: &str = "ingress_sbox";
/// The sbox's interface on docker_gwbridge (every other one of its interfaces is on an ingress
/// overlay: one, or two while the agent moves tasks to a new ingress network).
pub const SBOX_GW_IF: &str = "eth1";
/// Priority of the policy rules in task namespaces that send replies back via their sbox.
pub const RULE_PRIORITY: u32 = 3210;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A port published through the mesh, balanced over `backends` (task ingress addresses).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MeshPort {
    pub proto: Proto,
    pub published: u16,
    pub target: u16,
    pub backends: Vec<Ipv4Addr>,
}

/// A port published in host mode: to a task on this node (its docker_gwbridge address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostPort {
    pub proto: Proto,
    pub published: u16,
    pub target: u16,
    pub task: Ipv4Addr,
}

/// The ingress-sbox of the node, when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sbox {
    /// The sbox's address on docker_gwbridge (where the node sends published ports).
    pub gw_addr: Ipv4Addr,
    pub ports: Vec<MeshPort>,
    /// Docker's behaviour: connections leave the sbox with its ingress address as source
    /// (the task sees the sbox, not the client; the address of the ingress network the task is
    /// on). Off by default.
    pub snat: bool,
}

/// What the node publishes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngressState {
    pub sbox: Option<Sbox>,
    pub host_ports: Vec<HostPort>,
}

/// The return path of one task's ingress interface: the ingress addresses of every sbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskReturn {
    pub netns: PathBuf,
    /// The task's interface on the ingress network.
    pub ifname: String,
    pub sboxes: Vec<Ipv4Addr>,
}

/// The handle on a node's mesh (see the module documentation). Blocking, like the crate.
#[derive(Debug)]
pub struct Ingress {
    node: NetNs,
    sbox: String,
    writes: u64,
    /// Where the eBPF shortcut is pinned, and whether it is on (off: one an earlier run left
    /// goes).
    shortcut: Option<(PathBuf, bool)>,
}

/// Logs one kernel write of the mesh (what an agent restart that should write nothing did).
fn wrote(ns: &NetNs, op: &str) {
    tracing::debug!(ns = %ns.name(), op, "ingress write");
}

fn tag_of(body: &str) -> String {
    format!("netagent {:016x}", crate::spec::fnv(&[body.as_bytes()]))
}

fn nft_err(what: &str, ns: &NetNs, detail: String) -> Error {
    Error::Nft {
        what: what.to_string(),
        ns: ns.name().to_string(),
        detail,
    }
}

fn run(
    ns: &NetNs,
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<(bool, String, String)> {
    let r = ns
        .run_program(program, args, input)
        .map_err(|e| nft_err(&format!("{program} {}", args.join(" ")), ns, e.to_string()))?;
    Ok((r.ok, r.stdout, r.stderr))
}

pub(crate) fn run_ok(ns: &NetNs, program: &str, args: &[&str]) -> Result<String> {
    let (ok, out, err) = run(ns, program, args, None)?;
    if !ok {
        return Err(nft_err(&format!("{program} {}", args.join(" ")), ns, err));
    }
    Ok(out)
}

/// Whether table [`TABLE`] holds exactly `rules` rules, all tagged `tag`.
fn table_is(ns: &NetNs, tag: &str, rules: usize) -> Result<bool> {
    let (ok, stdout, _) = run(ns, "nft", &["-j", "list", "table", "ip", TABLE], None)?;
    if !ok {
        return Ok(false);
    }
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_default();
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let found: Vec<&serde_json::Value> = items.iter().filter_map(|i| i.get("rule")).collect();
    Ok(found.len() == rules && found.iter().all(|r| r["comment"] == tag))
}

/// Makes table [`TABLE`] in `ns` the one `chains` describe (`None`: no table). Returns the
/// number of writes (0 when the kernel already holds it).
fn ensure_table(ns: &NetNs, body: Option<(String, usize)>) -> Result<u64> {
    let Some((body, rules)) = body else {
        let (exists, _, _) = run(ns, "nft", &["list", "table", "ip", TABLE], None)?;
        if !exists {
            return Ok(0);
        }
        let (ok, _, err) = run(ns, "nft", &["delete", "table", "ip", TABLE], None)?;
        if !ok {
            return Err(nft_err(&format!("delete table ip {TABLE}"), ns, err));
        }
        wrote(ns, "delete table");
        return Ok(1);
    };
    let tag = tag_of(&body);
    if table_is(ns, &tag, rules)? {
        return Ok(0);
    }
    let script = format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n{}}}\n",
        body.replace("TAG", &tag)
    );
    let (ok, _, err) = run(ns, "nft", &["-f", "-"], Some(&script))?;
    if !ok {
        return Err(nft_err(
            &format!("replace table ip {TABLE}"),
            ns,
            format!("{err}\n{script}"),
        ));
    }
    wrote(ns, &format!("replace table ({tag}, {rules} rules)"));
    Ok(1)
}

/// The node table's chains: published ports to the sbox or a local task. Ingress ports win
/// over a host port with the same number (the executor keeps such a task pending).
pub(crate) fn node_body(s: &IngressState) -> Option<(String, usize)> {
    let mut elements: Vec<String> = Vec::new();
    let mut seen: BTreeSet<(Proto, u16)> = BTreeSet::new();
    if let Some(sbox) = &s.sbox {
        let mut ports: Vec<&MeshPort> = sbox.ports.iter().collect();
        ports.sort();
        for p in ports {
            if seen.insert((p.proto, p.published)) {
                elements.push(format!(
                    "{} . {} : {} . {}",
                    p.proto.name(),
                    p.published,
                    sbox.gw_addr,
                    p.published
                ));
            }
        }
    }
    let mut host = s.host_ports.clone();
    host.sort();
    for p in host {
        if seen.insert((p.proto, p.published)) {
            elements.push(format!(
                "{} . {} : {} . {}",
                p.proto.name(),
                p.published,
                p.task,
                p.target
            ));
        }
    }
    if elements.is_empty() {
        return None;
    }
    let body = format!(
        "  map published {{\n    type inet_proto . inet_service : ipv4_addr . inet_service\n    elements = {{ {} }}\n  }}\n\
         \x20 chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    fib daddr type local dnat ip to meta l4proto . th dport map @published comment \"TAG\"\n  }}\n\
         \x20 chain output {{\n    type nat hook output priority -100; policy accept;\n    fib daddr type local dnat ip to meta l4proto . th dport map @published comment \"TAG\"\n  }}\n",
        elements.join(", ")
    );
    Some((body, 2))
}

/// The sbox table's chains: each port balanced over its backends; a port without backends
/// refuses (TCP reset, ICMP port unreachable) rather than leaving the client waiting.
pub(crate) fn sbox_body(s: &Sbox) -> (String, usize) {
    let mut rules = Vec::new();
    let mut ports = s.ports.clone();
    ports.sort();
    ports.dedup_by_key(|p| (p.proto, p.published));
    for p in &ports {
        let matcher = format!("meta l4proto {} th dport {}", p.proto.name(), p.published);
        let mut backends = p.backends.clone();
        backends.sort();
        backends.dedup();
        let action = match backends.len() {
            0 => match p.proto {
                Proto::Tcp => "reject with tcp reset".to_string(),
                Proto::Udp => "reject".to_string(),
            },
            1 => format!("dnat ip to {}:{}", backends[0], p.target),
            n => format!(
                "dnat ip to numgen random mod {n} map {{ {} }}",
                backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("{i} : {b} . {}", p.target))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        rules.push(format!("    {matcher} {action} comment \"TAG\"\n"));
    }
    let n = rules.len();
    let reject: Vec<&String> = rules.iter().filter(|r| r.contains("reject")).collect();
    let dnat: Vec<&String> = rules.iter().filter(|r| !r.contains("reject")).collect();
    let mut body = format!(
        "  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{}  }}\n",
        dnat.iter().map(|s| s.as_str()).collect::<String>()
    );
    // Not DNATed, a port without tasks is for the sbox itself: refused on input.
    body.push_str(&format!(
        "  chain refuse {{\n    type filter hook input priority filter; policy accept;\n{}  }}\n",
        reject.iter().map(|s| s.as_str()).collect::<String>()
    ));
    let mut total = n;
    if s.snat {
        body.push_str(&format!(
            "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname != \"{SBOX_GW_IF}\" ct status dnat masquerade comment \"TAG\"\n  }}\n"
        ));
        total += 1;
    }
    (body, total)
}

/// The task table: mark new connections from an sbox with its address, replies with the mark.
pub(crate) fn task_body(ifname: &str) -> (String, usize) {
    (
        format!(
            "  chain prerouting {{\n    type filter hook prerouting priority mangle; policy accept;\n    iifname \"{ifname}\" ct state new ct mark set @ll,64,32 comment \"TAG\"\n  }}\n\
             \x20 chain output {{\n    type route hook output priority mangle; policy accept;\n    ct mark != 0 meta mark set ct mark comment \"TAG\"\n  }}\n"
        ),
        2,
    )
}

/// The conntrack mark (and routing table) of an sbox: its address's four bytes as the kernel
/// stores them when the rule copies them from the frame into the mark (`ct mark set
/// @ll,64,32` copies bytes, so on a little-endian host 10.0.0.11 is 0x0b00000a).
pub fn mark_of(sbox: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(sbox.octets())
}

fn sysctl(ns: &NetNs, key: &str, value: &str) -> Result<u64> {
    let w = crate::nft::ensure_sysctl(ns, key, value)?;
    if w {
        wrote(ns, &format!("sysctl {key}={value}"));
    }
    Ok(u64::from(w))
}

/// Removes the policy rule `fwmark <mark> lookup <table>` at [`RULE_PRIORITY`] and empties the
/// table; returns the writes (2).
fn remove_rule_and_table(ns: &NetNs, mark: u32, table: u32) -> Result<u64> {
    run_ok(
        ns,
        "ip",
        &[
            "rule",
            "del",
            "priority",
            &RULE_PRIORITY.to_string(),
            "fwmark",
            &format!("{mark:#x}"),
            "lookup",
            &table.to_string(),
        ],
    )?;
    let _ = run(
        ns,
        "ip",
        &["route", "flush", "table", &table.to_string()],
        None,
    )?;
    wrote(ns, &format!("remove rule and table {table}"));
    Ok(2)
}

/// The rules (fwmark, table) at [`RULE_PRIORITY`] in a namespace.
fn our_rules(ns: &NetNs) -> Result<Vec<(u32, u32)>> {
    let out = run_ok(ns, "ip", &["-j", "-4", "rule", "show"])?;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut rules = Vec::new();
    for r in v.as_array().cloned().unwrap_or_default() {
        if r["priority"].as_u64() != Some(u64::from(RULE_PRIORITY)) {
            continue;
        }
        let mark = r["fwmark"]
            .as_str()
            .and_then(|m| u32::from_str_radix(m.trim_start_matches("0x"), 16).ok());
        let table = match &r["table"] {
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            _ => None,
        };
        if let (Some(m), Some(t)) = (mark, table) {
            rules.push((m, t));
        }
    }
    Ok(rules)
}

impl Ingress {
    /// The mesh of the node namespace `node`; namespaces it creates start with `prefix` (the
    /// data plane's).
    pub fn new(node: NetNs, prefix: impl Into<String>) -> Ingress {
        Ingress {
            node,
            sbox: format!("{}{SBOX}", prefix.into()),
            writes: 0,
            shortcut: None,
        }
    }

    /// The mesh with the ingress-sbox in namespace `sbox` (the agent uses the ingress
    /// network's load-balancer namespace, as Docker does).
    pub fn with_sbox(node: NetNs, sbox: impl Into<String>) -> Ingress {
        Ingress {
            node,
            sbox: sbox.into(),
            writes: 0,
            shortcut: None,
        }
    }

    /// Uses the eBPF shortcut (`crate::meshpath`) for clients' connections to the node's
    /// addresses (`on` false: none, and one an earlier run left goes), pinned in `pin_dir` (a
    /// bpffs directory of its own). Needs TCX, as the overlay fast path does.
    pub fn with_shortcut(mut self, pin_dir: PathBuf, on: bool) -> Ingress {
        self.shortcut = Some((pin_dir, on));
        self
    }

    /// What the shortcut sent past the node's stack (`None`: it is not in place).
    pub fn shortcut_stats(&self) -> Result<Option<crate::MeshPathStats>> {
        match &self.shortcut {
            Some((dir, _)) => crate::meshpath::stats(&self.node, dir),
            None => Ok(None),
        }
    }

    /// Makes the shortcut match `sbox` (after the tables, so a port it sends into the sbox is
    /// balanced there already). A failure is logged, not returned: the shortcut goes, and the
    /// published ports keep answering through the node's nftables path.
    fn sync_shortcut(&mut self, sbox: Option<&Sbox>) {
        let Some((dir, on)) = self.shortcut.clone() else {
            return;
        };
        let want = match (sbox, on) {
            (Some(s), true) => crate::meshpath::want_of(&self.node, &self.sbox, s),
            _ => Ok(None),
        };
        match want.and_then(|w| crate::meshpath::sync(&self.node, &dir, w.as_ref())) {
            Ok(n) => {
                if n > 0 {
                    wrote(&self.node, &format!("mesh shortcut ({n} writes)"));
                }
                self.writes += n;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the routing mesh's shortcut is off on this node: published ports take the node's nftables path");
                if let Ok(n) = crate::meshpath::sync(&self.node, &dir, None) {
                    self.writes += n;
                }
            }
        }
    }

    /// Kernel writes made so far (nft transactions, sysctls, rules, routes, namespaces).
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// The ingress-sbox namespace's name.
    pub fn sbox_name(&self) -> String {
        self.sbox.clone()
    }

    /// Creates the ingress-sbox namespace (loopback up, forwarding on) unless it exists;
    /// returns its path, for the endpoints the data plane puts in it.
    pub fn ensure_sbox_ns(&mut self) -> Result<PathBuf> {
        let name = self.sbox_name();
        let ns = if netns::exists(&name) {
            NetNs::open(&name)?
        } else {
            self.writes += 1;
            let ns = NetNs::create(&name)?;
            wrote(&ns, "create the sbox namespace");
            ns
        };
        let lo = run_ok(&ns, "ip", &["-j", "link", "show", "lo"])?;
        if !lo.contains("\"UP\"") {
            run_ok(&ns, "ip", &["link", "set", "lo", "up"])?;
            wrote(&ns, "lo up");
            self.writes += 1;
        }
        self.writes += sysctl(&ns, "net/ipv4/ip_forward", "1")?;
        Ok(ns.path().to_path_buf())
    }

    /// Makes the node's mesh match `desired`: the node table, and the sbox's table when it has
    /// one (create the sbox namespace and its endpoints first). A node that publishes nothing
    /// has no table; its sbox namespace is left to [`Ingress::remove_sbox`].
    pub fn apply(&mut self, desired: &IngressState) -> Result<()> {
        if let Some(sbox) = &desired.sbox {
            let ns = NetNs::open(&self.sbox_name())?;
            self.writes += ensure_table(&ns, Some(sbox_body(sbox)))?;
        }
        if desired.sbox.is_some() || !desired.host_ports.is_empty() {
            // A host process connecting to its own address on a published port: its replies
            // come back through the node, so only the destination changes here too.
            self.writes += sysctl(&self.node, "net/ipv4/ip_forward", "1")?;
        }
        self.writes += ensure_table(&self.node, node_body(desired))?;
        self.sync_shortcut(desired.sbox.as_ref());
        Ok(())
    }

    /// Removes the ingress-sbox namespace (its endpoints go with it).
    pub fn remove_sbox(&mut self) -> Result<()> {
        self.sync_shortcut(None);
        let name = self.sbox_name();
        if netns::exists(&name) {
            netns::delete(&name)?;
            self.writes += 1;
        }
        Ok(())
    }

    /// Makes a task's return path match `r` (see the module documentation).
    pub fn ensure_task_return(&mut self, r: &TaskReturn) -> Result<()> {
        let ns = NetNs::open_path(&r.netns.to_string_lossy(), &r.netns)?;
        // Loose reverse-path filtering: the client's address is routed via the default route.
        if std::fs::metadata("/proc/sys/net/ipv4/conf/all/rp_filter").is_ok() {
            let all =
                ns.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/rp_filter"))?;
            if all.map(|v| v.trim() == "1").unwrap_or(false) {
                self.writes += sysctl(&ns, "net/ipv4/conf/all/rp_filter", "2")?;
            }
        }
        self.writes += sysctl(&ns, &format!("net/ipv4/conf/{}/rp_filter", r.ifname), "2")?;
        self.writes += ensure_table(&ns, Some(task_body(&r.ifname)))?;
        let want: BTreeSet<u32> = r.sboxes.iter().map(|a| mark_of(*a)).collect();
        let have = our_rules(&ns)?;
        for (mark, table) in &have {
            if !want.contains(mark) || mark != table {
                self.writes += remove_rule_and_table(&ns, *mark, *table)?;
            }
        }
        for sbox in &r.sboxes {
            let id = mark_of(*sbox);
            let table = id.to_string();
            // A table that does not exist yet is an error to `ip`: no route either way.
            let (_, route, _) = run(&ns, "ip", &["-j", "route", "show", "table", &table], None)?;
            let v: serde_json::Value = serde_json::from_str(&route).unwrap_or_default();
            let ok = v.as_array().is_some_and(|rs| {
                rs.len() == 1
                    && rs[0]["dst"] == "default"
                    && rs[0]["gateway"] == sbox.to_string()
                    && rs[0]["dev"] == r.ifname.as_str()
            });
            if !ok {
                run_ok(
                    &ns,
                    "ip",
                    &[
                        "route",
                        "replace",
                        "default",
                        "via",
                        &sbox.to_string(),
                        "dev",
                        &r.ifname,
                        "table",
                        &table,
                    ],
                )?;
                wrote(&ns, &format!("route via {sbox} in table {table}"));
                self.writes += 1;
            }
            if !have.contains(&(id, id)) {
                run_ok(
                    &ns,
                    "ip",
                    &[
                        "rule",
                        "add",
                        "priority",
                        &RULE_PRIORITY.to_string(),
                        "fwmark",
                        &format!("{id:#x}"),
                        "lookup",
                        &table,
                    ],
                )?;
                wrote(&ns, &format!("rule fwmark {id:#x}"));
                self.writes += 1;
            }
        }
        Ok(())
    }

    /// Removes a task's return path (its table and rules); the namespace may be gone already.
    pub fn remove_task_return(&mut self, netns: &std::path::Path) -> Result<()> {
        let Ok(ns) = NetNs::open_path(&netns.to_string_lossy(), netns) else {
            return Ok(());
        };
        self.writes += ensure_table(&ns, None)?;
        for (mark, table) in our_rules(&ns)? {
            self.writes += remove_rule_and_table(&ns, mark, table)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn rule_bodies() {
        let sbox = Sbox {
            gw_addr: a("172.18.0.2"),
            ports: vec![
                MeshPort {
                    proto: Proto::Tcp,
                    published: 8080,
                    target: 80,
                    backends: vec![a("10.0.0.6"), a("10.0.0.5")],
                },
                MeshPort {
                    proto: Proto::Udp,
                    published: 53,
                    target: 5353,
                    backends: vec![],
                },
            ],
            snat: false,
        };
        let (body, n) = sbox_body(&sbox);
        assert_eq!(n, 2);
        assert!(
            body.contains("meta l4proto tcp th dport 8080 dnat ip to numgen random mod 2 map { 0 : 10.0.0.5 . 80, 1 : 10.0.0.6 . 80 }"),
            "{body}"
        );
        assert!(
            body.contains("meta l4proto udp th dport 53 reject"),
            "{body}"
        );
        assert!(!body.contains("snat"), "{body}");
        let (body, n) = sbox_body(&Sbox {
            snat: true,
            ..sbox.clone()
        });
        assert_eq!(n, 3);
        assert!(
            body.contains("oifname != \"eth1\" ct status dnat masquerade"),
            "{body}"
        );
        let state = IngressState {
            sbox: Some(sbox),
            host_ports: vec![
                HostPort {
                    proto: Proto::Tcp,
                    published: 9090,
                    target: 90,
                    task: a("172.18.0.7"),
                },
                HostPort {
                    proto: Proto::Tcp,
                    published: 8080,
                    target: 1,
                    task: a("172.18.0.8"),
                },
            ],
        };
        let (body, _) = node_body(&state).unwrap();
        assert!(body.contains("tcp . 8080 : 172.18.0.2 . 8080"), "{body}");
        assert!(body.contains("tcp . 9090 : 172.18.0.7 . 90"), "{body}");
        assert!(!body.contains("172.18.0.8"), "ingress wins: {body}");
        assert!(node_body(&IngressState::default()).is_none());
    }
}
