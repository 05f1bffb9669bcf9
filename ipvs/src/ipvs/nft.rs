//! netagent's nftables table in a load-balancer namespace, driven through the `nft` binary (one
//! transaction per change, as vxlan's gateway-bridge table is):
//!
//! - map `vipmark` (VIP -> fwmark) and one rule in prerouting (mangle) marking packets to a VIP
//!   with its service's fwmark, which selects the IPVS fwmark service: every port of the VIP;
//! - set `refuse`: VIPs whose service has no backend; TCP gets a reset and UDP a port
//!   unreachable in input, before IPVS sees them, so clients fail at once instead of hanging;
//!   both rules count what they refuse (IPVS never sees those packets, so it cannot count them:
//!   [`read_refused`] gives the load balancer's refused counter);
//! - SNAT to the node's load-balancer address of what IPVS forwards into the subnet (marked
//!   packets), so the backends' replies come back through IPVS (Docker's `configureFWMark`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netns::NetNs;

use crate::{Error, Result};

/// netagent's table in each load-balancer namespace.
pub const TABLE: &str = "netagent_lb";
const CHAINS: usize = 3;
const RULES: usize = 4;

/// The table as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NftView {
    /// The tag every rule carries when the chains and rules are exactly one version of
    /// [`table_script`]'s; `None` otherwise (the table must be replaced).
    pub tag: Option<String>,
    pub marks: BTreeMap<Ipv4Addr, u32>,
    pub refuse: BTreeSet<Ipv4Addr>,
}

/// The tag of the table's rules for a network: a change of subnet or address replaces the table.
pub(crate) fn tag(subnet: &Ipv4Net, addr: Ipv4Addr) -> String {
    format!("netagent-lb v2 {subnet} {addr}")
}

fn elems_marks(m: &BTreeMap<Ipv4Addr, u32>) -> String {
    m.iter()
        .map(|(v, k)| format!("{v} : {k:#x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn elems(s: &BTreeSet<Ipv4Addr>) -> String {
    s.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Replaces the table with its rules and the given elements (one atomic transaction).
pub(crate) fn table_script(
    subnet: &Ipv4Net,
    addr: Ipv4Addr,
    marks: &BTreeMap<Ipv4Addr, u32>,
    refuse: &BTreeSet<Ipv4Addr>,
) -> String {
    let tag = tag(subnet, addr);
    let subnet = subnet.trunc();
    let mut s = format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \x20 map vipmark {{ type ipv4_addr : mark; }}\n\
         \x20 set refuse {{ type ipv4_addr; }}\n\
         \x20 chain prerouting {{\n\
         \x20   type filter hook prerouting priority mangle; policy accept;\n\
         \x20   meta mark set ip daddr map @vipmark comment \"{tag}\"\n\
         \x20 }}\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority filter; policy accept;\n\
         \x20   ip daddr @refuse meta l4proto tcp counter reject with tcp reset comment \"{tag}\"\n\
         \x20   ip daddr @refuse meta l4proto udp counter reject comment \"{tag}\"\n\
         \x20 }}\n\
         \x20 chain postrouting {{\n\
         \x20   type nat hook postrouting priority srcnat; policy accept;\n\
         \x20   ip daddr {subnet} meta mark != 0 snat ip to {addr} comment \"{tag}\"\n\
         \x20 }}\n\
         }}\n"
    );
    if !marks.is_empty() {
        s.push_str(&format!(
            "add element ip {TABLE} vipmark {{ {} }}\n",
            elems_marks(marks)
        ));
    }
    if !refuse.is_empty() {
        s.push_str(&format!(
            "add element ip {TABLE} refuse {{ {} }}\n",
            elems(refuse)
        ));
    }
    s
}

/// Element changes, one transaction: removals first (a changed mark is removed, then added).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Elems {
    pub del_marks: BTreeSet<Ipv4Addr>,
    pub add_marks: BTreeMap<Ipv4Addr, u32>,
    pub del_refuse: BTreeSet<Ipv4Addr>,
    pub add_refuse: BTreeSet<Ipv4Addr>,
}

impl Elems {
    pub fn is_empty(&self) -> bool {
        self.del_marks.is_empty()
            && self.add_marks.is_empty()
            && self.del_refuse.is_empty()
            && self.add_refuse.is_empty()
    }

    pub fn script(&self) -> String {
        let mut s = String::new();
        // Refusals are added first and lifted last, so no packet finds a VIP half-changed.
        if !self.add_refuse.is_empty() {
            s.push_str(&format!(
                "add element ip {TABLE} refuse {{ {} }}\n",
                elems(&self.add_refuse)
            ));
        }
        if !self.del_marks.is_empty() {
            s.push_str(&format!(
                "delete element ip {TABLE} vipmark {{ {} }}\n",
                elems(&self.del_marks)
            ));
        }
        if !self.add_marks.is_empty() {
            s.push_str(&format!(
                "add element ip {TABLE} vipmark {{ {} }}\n",
                elems_marks(&self.add_marks)
            ));
        }
        if !self.del_refuse.is_empty() {
            s.push_str(&format!(
                "delete element ip {TABLE} refuse {{ {} }}\n",
                elems(&self.del_refuse)
            ));
        }
        s
    }

    /// What the table holds after these changes.
    pub fn apply_to(&self, v: &mut NftView) {
        for vip in &self.del_marks {
            v.marks.remove(vip);
        }
        v.marks.extend(self.add_marks.iter().map(|(a, m)| (*a, *m)));
        for vip in &self.del_refuse {
            v.refuse.remove(vip);
        }
        v.refuse.extend(self.add_refuse.iter().copied());
    }
}

fn nft(ns: &NetNs, args: &[&str], input: Option<&str>) -> Result<(bool, String, String)> {
    let r = ns.run_program("nft", args, input).map_err(|e| {
        let what = format!("nft {} in namespace {}", args.join(" "), ns.name());
        Error::Io(format!("{what} (is nftables installed?)"), e)
    })?;
    Ok((r.ok, r.stdout, r.stderr))
}

/// Runs one nft transaction.
pub(crate) fn run(ns: &NetNs, script: &str, what: &str) -> Result<()> {
    let (ok, _, stderr) = nft(ns, &["-f", "-"], Some(script))?;
    if ok {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "nftables: {what} in namespace {}: {stderr}",
            ns.name()
        )))
    }
}

/// Deletes the table; returns whether there was one.
pub(crate) fn delete(ns: &NetNs) -> Result<bool> {
    if !nft(ns, &["list", "table", "ip", TABLE], None)?.0 {
        return Ok(false);
    }
    run(
        ns,
        &format!("delete table ip {TABLE}\n"),
        "delete the table",
    )?;
    Ok(true)
}

/// Reads the table; `None` when there is none.
pub(crate) fn read(ns: &NetNs) -> Result<Option<NftView>> {
    let (ok, stdout, _) = nft(ns, &["-j", "list", "table", "ip", TABLE], None)?;
    if !ok {
        return Ok(None);
    }
    parse(&stdout).map(Some).map_err(|e| {
        Error::Other(format!(
            "nftables: cannot read table ip {TABLE} in namespace {}: {e}",
            ns.name()
        ))
    })
}

/// Packets the input chain's refusal rules counted (TCP connects and UDP datagrams to a VIP
/// without backends); `None` when there is no table. One `nft` run: called per scrape, never
/// per connection.
pub(crate) fn read_refused(ns: &NetNs) -> Result<Option<u64>> {
    let (ok, stdout, _) = nft(ns, &["-j", "list", "chain", "ip", TABLE, "input"], None)?;
    if !ok {
        return Ok(None);
    }
    refused_packets(&stdout).map(Some).map_err(|e| {
        Error::Other(format!(
            "nftables: cannot read the refusal counters of table ip {TABLE} in namespace {}: {e}",
            ns.name()
        ))
    })
}

/// Sums the `counter` packets of the rules in `nft -j list ...` output.
pub(crate) fn refused_packets(json: &str) -> std::result::Result<u64, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let items = v["nftables"]
        .as_array()
        .ok_or("no \"nftables\" array in nft's answer")?;
    let mut n = 0u64;
    for r in items.iter().filter_map(|i| i.get("rule")) {
        for e in as_list(&r["expr"]) {
            if let Some(c) = e.get("counter") {
                let p = c["packets"]
                    .as_u64()
                    .ok_or_else(|| format!("counter {c} has no packet count"))?;
                n = n.saturating_add(p);
            }
        }
    }
    Ok(n)
}

fn as_list(v: &serde_json::Value) -> Vec<serde_json::Value> {
    match v {
        serde_json::Value::Array(a) => a.clone(),
        serde_json::Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

/// Parses `nft -j list table ip netagent_lb`.
pub(crate) fn parse(json: &str) -> std::result::Result<NftView, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let items = v["nftables"]
        .as_array()
        .ok_or("no \"nftables\" array in nft's answer")?;
    let mut view = NftView::default();
    let mut chains = 0;
    let mut tags = Vec::new();
    let mut have_map = false;
    let mut have_set = false;
    for item in items {
        if item.get("chain").is_some() {
            chains += 1;
        } else if let Some(r) = item.get("rule") {
            tags.push(r["comment"].as_str().unwrap_or("").to_string());
        } else if let Some(m) = item.get("map") {
            if m["name"] != "vipmark" {
                continue;
            }
            have_map = m["type"] == "ipv4_addr" && m["map"] == "mark";
            for e in as_list(&m["elem"]) {
                let pair = e.as_array().ok_or("a vipmark element is not a pair")?;
                let (Some(k), Some(val)) = (pair.first(), pair.get(1)) else {
                    return Err("a vipmark element is not a pair".into());
                };
                let vip: Ipv4Addr = k
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("vipmark key {k} is not an address"))?;
                let mark = val
                    .as_u64()
                    .and_then(|m| u32::try_from(m).ok())
                    .ok_or_else(|| format!("vipmark value {val} is not a mark"))?;
                view.marks.insert(vip, mark);
            }
        } else if let Some(s) = item.get("set") {
            if s["name"] != "refuse" {
                continue;
            }
            have_set = s["type"] == "ipv4_addr";
            for e in as_list(&s["elem"]) {
                let vip: Ipv4Addr = e
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("refuse element {e} is not an address"))?;
                view.refuse.insert(vip);
            }
        }
    }
    let same = tags.first().filter(|t| tags.iter().all(|x| x == *t));
    if chains == CHAINS && tags.len() == RULES && have_map && have_set {
        view.tag = same.cloned();
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What nft 1.0.6 prints for the table of [`table_script`] with two VIPs, one refused.
    const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "netagent_lb", "handle": 1}}, {"map": {"family": "ip", "name": "vipmark", "table": "netagent_lb", "type": "ipv4_addr", "handle": 4, "map": "mark", "elem": [["10.0.0.5", 261], ["10.0.0.6", 262]]}}, {"set": {"family": "ip", "name": "refuse", "table": "netagent_lb", "type": "ipv4_addr", "handle": 5, "elem": ["10.0.0.6"]}}, {"chain": {"family": "ip", "table": "netagent_lb", "name": "prerouting", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}}, {"chain": {"family": "ip", "table": "netagent_lb", "name": "input", "handle": 2, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}}, {"chain": {"family": "ip", "table": "netagent_lb", "name": "postrouting", "handle": 3, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}, {"rule": {"family": "ip", "table": "netagent_lb", "chain": "prerouting", "handle": 6, "comment": "t1", "expr": []}}, {"rule": {"family": "ip", "table": "netagent_lb", "chain": "input", "handle": 7, "comment": "t1", "expr": []}}, {"rule": {"family": "ip", "table": "netagent_lb", "chain": "input", "handle": 8, "comment": "t1", "expr": []}}, {"rule": {"family": "ip", "table": "netagent_lb", "chain": "postrouting", "handle": 9, "comment": "t1", "expr": []}}]}"#;

    #[test]
    fn a_listed_table_parses_into_marks_refusals_and_its_tag() {
        let v = parse(LISTED).unwrap();
        assert_eq!(v.tag.as_deref(), Some("t1"));
        assert_eq!(
            v.marks,
            BTreeMap::from([
                (Ipv4Addr::new(10, 0, 0, 5), 261),
                (Ipv4Addr::new(10, 0, 0, 6), 262)
            ])
        );
        assert_eq!(v.refuse, BTreeSet::from([Ipv4Addr::new(10, 0, 0, 6)]));
        // A rule with another tag (an older version, a hand edit): the table must be replaced.
        let edited = LISTED.replacen("\"comment\": \"t1\"", "\"comment\": \"x\"", 1);
        assert_eq!(parse(&edited).unwrap().tag, None);
        // An extra rule without a comment, too.
        let extra = format!(
            "{}{}",
            &LISTED[..LISTED.len() - 2],
            r#", {"rule": {"family": "ip", "table": "netagent_lb", "chain": "input", "handle": 10, "expr": []}}]}"#,
        );
        assert_eq!(parse(&extra).unwrap().tag, None);
        assert!(parse("not json").is_err());
        assert!(
            parse(r#"{"nftables": [{"map": {"name": "vipmark", "elem": [[1, 2]]}}]}"#).is_err()
        );
    }

    #[test]
    fn refusal_counters_are_summed() {
        let listed = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"chain": {"family": "ip", "table": "netagent_lb", "name": "input"}}, {"rule": {"chain": "input", "comment": "t", "expr": [{"match": {}}, {"counter": {"packets": 3, "bytes": 180}}, {"reject": {"type": "tcp reset"}}]}}, {"rule": {"chain": "input", "comment": "t", "expr": [{"counter": {"packets": 4, "bytes": 300}}, {"reject": null}]}}]}"#;
        assert_eq!(refused_packets(listed), Ok(7));
        assert_eq!(refused_packets(LISTED), Ok(0));
        assert!(refused_packets("[]").is_err());
        assert!(
            refused_packets(r#"{"nftables": [{"rule": {"expr": [{"counter": {}}]}}]}"#).is_err()
        );
    }

    #[test]
    fn scripts_carry_the_tag_and_the_elements() {
        let net: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let marks = BTreeMap::from([(Ipv4Addr::new(10, 0, 0, 5), 261)]);
        let refuse = BTreeSet::from([Ipv4Addr::new(10, 0, 0, 5)]);
        let s = table_script(&net, Ipv4Addr::new(10, 0, 0, 2), &marks, &refuse);
        assert_eq!(
            s.matches("comment \"netagent-lb v2 10.0.0.0/24 10.0.0.2\"")
                .count(),
            RULES
        );
        assert!(s.contains("snat ip to 10.0.0.2"), "{s}");
        assert_eq!(s.matches("counter reject").count(), 2, "{s}");
        assert!(
            s.contains("add element ip netagent_lb vipmark { 10.0.0.5 : 0x105 }"),
            "{s}"
        );
        assert!(
            s.contains("add element ip netagent_lb refuse { 10.0.0.5 }"),
            "{s}"
        );
        let e = Elems {
            del_marks: BTreeSet::from([Ipv4Addr::new(10, 0, 0, 9)]),
            add_marks: marks.clone(),
            del_refuse: BTreeSet::new(),
            add_refuse: refuse.clone(),
        };
        let script = e.script();
        let lines: Vec<&str> = script.lines().collect();
        assert_eq!(
            lines,
            [
                "add element ip netagent_lb refuse { 10.0.0.5 }",
                "delete element ip netagent_lb vipmark { 10.0.0.9 }",
                "add element ip netagent_lb vipmark { 10.0.0.5 : 0x105 }",
            ]
        );
        let mut v = NftView {
            marks: BTreeMap::from([(Ipv4Addr::new(10, 0, 0, 9), 1)]),
            ..Default::default()
        };
        e.apply_to(&mut v);
        assert_eq!(v.marks, marks);
        assert_eq!(v.refuse, refuse);
        assert!(Elems::default().is_empty() && Elems::default().script().is_empty());
    }
}
