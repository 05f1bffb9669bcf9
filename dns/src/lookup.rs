//! Lookups in the records, scoped by the querying listener's networks, with Docker's semantics:
//! `NAME` is looked up in each network of the scope in order and the first network that knows it
//! answers; then `A.B.C` is tried as `A.B` in network `C`, then `A` in network `B.C`
//! (libnetwork's sandbox ResolveName). Names are matched lowercase without their trailing dot.

use std::net::IpAddr;

use rand::seq::SliceRandom;

use crate::records::{Network, Records, TASK_TTL, Targets, VIP_TTL};

/// What a known name resolves to. `addrs` may be empty (a dnsrr service without running
/// tasks): the name exists, so the answer is NOERROR without records, never NXDOMAIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub addrs: Vec<IpAddr>,
    pub ttl: u32,
}

/// The name a PTR query for an address answers, fully qualified (`NAME.NETWORK.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub name: String,
    pub ttl: u32,
}

/// Kind of a listed record, for [`RecordEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKind {
    A,
    Aaaa,
    Ptr,
}

/// One record a node serves on a network (a zone-file-like line for `netctl`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordEntry {
    /// Lowercase owner name (`web`, `tasks.web`, `web.1.abc`) or, for PTR, the address.
    pub name: String,
    pub kind: RecordKind,
    /// The address, or for PTR the name it points at.
    pub value: String,
    pub ttl: u32,
}

impl std::fmt::Display for RecordEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            RecordKind::A => "A",
            RecordKind::Aaaa => "AAAA",
            RecordKind::Ptr => "PTR",
        };
        write!(f, "{} {} {} {}", self.name, self.ttl, kind, self.value)
    }
}

impl Network {
    /// The addresses `name` (lowercase, no trailing dot) resolves to in this network, unshuffled;
    /// None when the network does not know the name.
    fn resolve(&self, name: &str) -> Option<Resolved> {
        let direct = self.names.get(name);
        let tasks_of = name
            .strip_prefix("tasks.")
            .and_then(|n| self.names.get(n))
            .filter(|t| !t.services.is_empty());
        if direct.is_none() && tasks_of.is_none() {
            return None;
        }
        let mut addrs = Vec::new();
        let mut ttl = VIP_TTL;
        let task_addrs = |svc: usize, addrs: &mut Vec<IpAddr>, ttl: &mut u32| {
            if let Some(s) = self.services.get(svc) {
                *ttl = TASK_TTL;
                addrs.extend(
                    s.tasks
                        .iter()
                        .filter_map(|t| self.tasks.get(t))
                        .map(|t| t.addr),
                );
            }
        };
        if let Some(Targets { services, tasks }) = direct {
            for svc in services.iter() {
                match self.services.get(svc).and_then(|s| s.def.as_ref()) {
                    Some(def) => match def.vip {
                        Some(vip) => addrs.push(vip),
                        None => task_addrs(svc, &mut addrs, &mut ttl),
                    },
                    None => continue,
                }
            }
            if !tasks.is_empty() {
                ttl = TASK_TTL;
                addrs.extend(
                    tasks
                        .iter()
                        .filter_map(|t| self.tasks.get(t))
                        .map(|t| t.addr),
                );
            }
        }
        if let Some(t) = tasks_of {
            for svc in t.services.iter() {
                task_addrs(svc, &mut addrs, &mut ttl);
            }
        }
        if addrs.len() > 1 {
            addrs.sort_unstable();
            addrs.dedup();
        }
        Some(Resolved { addrs, ttl })
    }

    /// The PTR for `addr`: a task's name, else a VIP's service name. When several records share
    /// the address (a transient conflict), the smallest name wins, so the answer does not depend
    /// on the order the changes came in.
    fn pointer(&self, addr: IpAddr) -> Option<Pointer> {
        let t = self.ptrs.get(&addr)?;
        let task = t
            .tasks
            .iter()
            .filter_map(|k| self.tasks.get(k))
            .map(|t| &t.name)
            .min();
        if let Some(name) = task {
            return Some(Pointer {
                name: format!("{}.{}.", name, self.name),
                ttl: TASK_TTL,
            });
        }
        let svc = t
            .services
            .iter()
            .filter_map(|k| self.services.get(k))
            .filter_map(|s| s.def.as_ref())
            .map(|d| &d.name)
            .min()?;
        Some(Pointer {
            name: format!("{}.{}.", svc, self.name),
            ttl: VIP_TTL,
        })
    }
}

/// The (name, network-name) pairs to try for `name`: the whole name in any network, then each
/// split at a dot from the right (`a.b.c` -> `a.b` in `c`, `a` in `b.c`).
fn candidates(name: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    let splits = name
        .char_indices()
        .rev()
        .filter(|&(_, c)| c == '.')
        .map(move |(i, _)| (&name[..i], Some(&name[i + 1..])))
        .filter(|(n, net)| !n.is_empty() && net.is_some_and(|s| !s.is_empty()));
    std::iter::once((name, None)).chain(splits)
}

impl Records {
    /// Resolves `name` (lowercase, without trailing dot) for a listener whose networks are
    /// `scope` (network ids, in attachment order). The addresses come shuffled when there are
    /// several. None: no network of the scope knows the name (forward it).
    pub fn resolve<S: AsRef<str>>(&self, scope: &[S], name: &str) -> Option<Resolved> {
        if name.is_empty() {
            return None;
        }
        for (n, netname) in candidates(name) {
            for id in scope {
                let Some(net) = self.networks.get(id.as_ref()) else {
                    continue;
                };
                if netname.is_some_and(|want| *want != *net.key) {
                    continue;
                }
                if let Some(mut r) = net.resolve(n) {
                    if r.addrs.len() > 1 {
                        r.addrs.shuffle(&mut rand::rng());
                    }
                    return Some(r);
                }
            }
        }
        None
    }

    /// The PTR answer for `addr` in the first network of `scope` that knows the address: a task's
    /// `TASKNAME.NETWORK.` (TTL 0) or a VIP's `SERVICE.NETWORK.` (TTL 600).
    pub fn pointer<S: AsRef<str>>(&self, scope: &[S], addr: IpAddr) -> Option<Pointer> {
        scope
            .iter()
            .filter_map(|id| self.networks.get(id.as_ref()))
            .find_map(|net| net.pointer(addr))
    }

    /// Every record served on `network` (its id, or its name if no id matches), sorted: the
    /// names with their addresses, the `tasks.` names, and the PTRs. Empty if unknown.
    pub fn list(&self, network: &str) -> Vec<RecordEntry> {
        let net = self.networks.get(network).or_else(|| {
            let key = crate::records::normalize(network);
            self.networks.values().find(|n| *n.key == *key)
        });
        let Some(net) = net else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut push = |name: &str, r: Resolved| {
            for a in r.addrs {
                let kind = if a.is_ipv4() {
                    RecordKind::A
                } else {
                    RecordKind::Aaaa
                };
                out.push(RecordEntry {
                    name: name.to_string(),
                    kind,
                    value: a.to_string(),
                    ttl: r.ttl,
                });
            }
        };
        for name in net.names.keys() {
            if let Some(r) = net.resolve(name) {
                push(name, r);
            }
            if net.names.get(name).is_some_and(|t| !t.services.is_empty()) {
                let tasks = format!("tasks.{name}");
                if let Some(r) = net.resolve(&tasks) {
                    push(&tasks, r);
                }
            }
        }
        for &addr in net.ptrs.keys() {
            if let Some(p) = net.pointer(addr) {
                out.push(RecordEntry {
                    name: addr.to_string(),
                    kind: RecordKind::Ptr,
                    value: p.name,
                    ttl: p.ttl,
                });
            }
        }
        out.sort();
        out.dedup();
        out
    }
}
