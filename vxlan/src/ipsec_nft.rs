//! The fail-closed firewall of encrypted networks: netagent's nftables table [`TABLE`] in the
//! node namespace, on the data-path port whatever it is, for the VNIs of encrypted networks:
//!
//! - `output` (type route, priority mangle): their VXLAN packets get the mark [`MARK`], which
//!   the outbound xfrm policies select (and the route is looked up again through them);
//! - `postrouting`: such a packet that is not routed through IPsec (no policy, e.g. removed by
//!   hand) is dropped: no plaintext of an encrypted VNI leaves the node;
//! - `input` (priority raw): such a packet that did not arrive through ESP (no secpath) is
//!   dropped: nothing unencrypted gets in.
//!
//! The table is installed before an encrypted network's VXLAN device exists and removed after
//! the last one is gone. It is replaced whole (one nft transaction); a reconcile reads it back
//! (`nft -j`) and writes nothing when it holds exactly what is wanted.

use std::collections::BTreeSet;

use netns::NetNs;

use crate::error::{Error, Result};
use crate::nft::nft;
use crate::xfrm::MARK;

/// netagent's table for encrypted networks.
pub const TABLE: &str = "netagent_ipsec";

/// The rules of the table for `port` and `vnis` (non-empty), and the tag each rule carries.
pub(crate) fn script(port: u16, vnis: &BTreeSet<u32>) -> (String, String) {
    let tag = tag(port, vnis);
    let set = vnis
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let m = format!("udp dport {port} @th,96,24 {{ {set} }}");
    let script = format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \x20 chain output {{\n\
         \x20   type route hook output priority mangle; policy accept;\n\
         \x20   {m} meta mark set {MARK:#x} comment \"{tag}\"\n\
         \x20 }}\n\
         \x20 chain postrouting {{\n\
         \x20   type filter hook postrouting priority filter; policy accept;\n\
         \x20   {m} rt ipsec missing counter drop comment \"{tag}\"\n\
         \x20 }}\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority raw; policy accept;\n\
         \x20   {m} meta secpath missing counter drop comment \"{tag}\"\n\
         \x20 }}\n\
         }}\n"
    );
    (script, tag)
}

fn tag(port: u16, vnis: &BTreeSet<u32>) -> String {
    let body: Vec<u8> = vnis.iter().flat_map(|v| v.to_be_bytes()).collect();
    format!(
        "netagent-ipsec {port} {:016x}",
        crate::spec::fnv(&[&port.to_be_bytes(), &body])
    )
}

/// What the kernel's table holds, if it is exactly one of netagent's versions: (port, VNIs).
/// `None` when the table is absent; `Some((0, {}))` when it is there but not as netagent
/// writes it (it is then replaced).
pub(crate) fn installed(ns: &NetNs) -> Result<Option<(u16, BTreeSet<u32>)>> {
    let (ok, stdout, _) = nft(ns, &["-j", "list", "table", "ip", TABLE], None)?;
    if !ok {
        return Ok(None);
    }
    let foreign = Some((0, BTreeSet::new()));
    let v: serde_json::Value = match serde_json::from_str(&stdout) {
        Ok(v) => v,
        Err(_) => return Ok(foreign),
    };
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let chains = items.iter().filter(|i| i.get("chain").is_some()).count();
    let rules: Vec<&serde_json::Value> = items.iter().filter_map(|i| i.get("rule")).collect();
    if chains != 3 || rules.len() != 3 {
        return Ok(foreign);
    }
    let Some((port, vnis)) = parse_rule(rules[0]) else {
        return Ok(foreign);
    };
    let want = tag(port, &vnis);
    if vnis.is_empty() || !rules.iter().all(|r| r["comment"] == want.as_str()) {
        return Ok(foreign);
    }
    Ok(Some((port, vnis)))
}

/// The port and VNIs a rule matches (`udp dport P @th,96,24 {VNIs}`).
fn parse_rule(rule: &serde_json::Value) -> Option<(u16, BTreeSet<u32>)> {
    let mut port = None;
    let mut vnis = BTreeSet::new();
    for e in rule["expr"].as_array()? {
        let m = &e["match"];
        if m.is_null() {
            continue;
        }
        let left = &m["left"]["payload"];
        if left["protocol"] == "udp" && left["field"] == "dport" {
            port = m["right"].as_u64().and_then(|p| u16::try_from(p).ok());
        } else if left["base"] == "th" && left["offset"] == 96 && left["len"] == 24 {
            match &m["right"] {
                serde_json::Value::Number(n) => {
                    vnis.insert(u32::try_from(n.as_u64()?).ok()?);
                }
                r => {
                    for n in r["set"].as_array()? {
                        vnis.insert(u32::try_from(n.as_u64()?).ok()?);
                    }
                }
            }
        }
    }
    Some((port?, vnis))
}

/// Replaces the table with the rules for `vnis` (removes it when there are none).
pub(crate) fn write(ns: &NetNs, port: u16, vnis: &BTreeSet<u32>) -> Result<()> {
    let (args, input, what): (Vec<&str>, Option<String>, String) = if vnis.is_empty() {
        (
            vec!["delete", "table", "ip", TABLE],
            None,
            format!("delete table ip {TABLE}"),
        )
    } else {
        (
            vec!["-f", "-"],
            Some(script(port, vnis).0),
            format!(
                "install table ip {TABLE} (the fail-closed rules of encrypted networks, VNIs {vnis:?})"
            ),
        )
    };
    let (ok, _, stderr) = nft(ns, &args, input.as_deref())?;
    if ok || (vnis.is_empty() && installed(ns)?.is_none()) {
        Ok(())
    } else {
        Err(Error::Nft {
            what,
            ns: ns.name().to_string(),
            detail: stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_the_vnis_on_the_port_and_parse_back() {
        let vnis: BTreeSet<u32> = [4097, 4098].into();
        let (s, tag) = script(5789, &vnis);
        assert_eq!(s.matches(&tag).count(), 3, "every rule carries the tag");
        assert!(s.contains("udp dport 5789 @th,96,24 { 4097, 4098 }"));
        assert!(s.contains("rt ipsec missing counter drop"));
        assert!(s.contains("meta secpath missing counter drop"));
        assert!(s.contains("meta mark set 0xd0c4e3"));
        assert_ne!(tag, super::tag(4789, &vnis));
        let one: serde_json::Value = serde_json::json!({"expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 5789}},
            {"match": {"op": "==", "left": {"payload": {"base": "th", "offset": 96, "len": 24}}, "right": 4097}},
        ]});
        assert_eq!(parse_rule(&one), Some((5789, [4097].into())));
        let set: serde_json::Value = serde_json::json!({"expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 4789}},
            {"match": {"op": "==", "left": {"payload": {"base": "th", "offset": 96, "len": 24}}, "right": {"set": [4097, 4098]}}},
        ]});
        assert_eq!(parse_rule(&set), Some((4789, vnis)));
        assert_eq!(parse_rule(&serde_json::json!({"expr": "junk"})), None);
    }
}
