//! The routing mesh's shortcut: tc programs (crate `ebpf`, binary `netagent-mesh`) on every
//! interface that holds a node address and on the ingress-sbox's host-side veth, with a port map
//! and a flow map per node (`ebpf_common::mesh`).
//!
//! - A client's packet for a published port of a node address gets the sbox's docker_gwbridge
//!   address as destination, exactly as the node's nftables DNAT would give it, and goes
//!   straight into the sbox (`bpf_redirect_peer`). The sbox's conntrack therefore sees the same
//!   connection whichever way a packet came: a client whose port the sbox saw through nftables
//!   a moment ago (before the shortcut was attached, or to the node's own address from the node)
//!   is not a second connection that clashes with the first (which would make the sbox remap
//!   the client's port, and the task's TIME_WAIT refuse the remapped SYNs).
//! - The flow map remembers the node address and interface of each client's connection; the
//!   sbox's answer gets that address back as source and leaves by that interface
//!   (`bpf_redirect_neigh`).
//!
//! So the node's own stack (its nftables DNAT, docker_gwbridge, a second conntrack entry) is not
//! on the path; the sbox's conntrack still holds the connection. Only ports with running tasks
//! are in the port map (a port without backends is refused by the sbox through the node's
//! path). The node's own connections (output hook), fragments and IP options take the nftables
//! path, which stays in place and gives the sbox the same tuples.
//!
//! Everything is pinned under one directory per node (a bpffs), so the maps and links outlive the
//! process that made them: the data plane's handles are short-lived, and a restarted agent adopts
//! them (flows included) and writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::{HashMap, MapData, PerCpuArray};
use ebpf_common::mesh::{
    FLOW_MAP, PORT_MAP, PROG_IN, PROG_OUT, PROTO_TCP, PROTO_UDP, PortKey, PortTarget, STATS_LEN,
    STATS_MAP,
};
use netns::NetNs;

use crate::ingress::{Proto, SBOX_GW_IF, Sbox};
use crate::tcx::{
    TcMode, attach, chain, load_programs, pinned_program_id, pinned_programs, program, remove_key,
    remove_link_pins, remove_stale_link_pins, running, tc_mode,
};
use crate::{Error, Result};

/// The object built from crate `ebpf` by ebpf-objects.
static OBJECT: &[u8] = ebpf_objects::MESH;

/// What the shortcut of a node should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Want {
    pub entries: BTreeMap<PortKey, PortTarget>,
    /// The interfaces holding the node's addresses (run [`PROG_IN`]).
    pub underlays: Vec<String>,
    /// The sbox's host-side veth (runs [`PROG_OUT`]).
    pub sbox_veth: String,
}

/// Packets the programs of a node sent past its stack, by direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeshPathStats {
    /// Clients' packets straight into the sbox.
    pub to_sbox: u64,
    /// The sbox's answers straight out of the node's interface.
    pub to_client: u64,
    /// Answers the kernel could not send by its neighbour table (dropped).
    pub neigh_failed: u64,
    /// Packets whose address rewrite failed (dropped).
    pub rewrite_failed: u64,
}

fn err<W: Into<String>>(what: W, ns: &NetNs) -> impl FnOnce(String) -> Error + use<W> {
    let (what, ns) = (what.into(), ns.name().to_string());
    move |detail| Error::MeshPath { what, ns, detail }
}

type PortMap = HashMap<MapData, PortKey, PortTarget>;

/// What the shortcut of the node namespace `node` should hold for the sbox `sbox` in namespace
/// `sbox_ns`: every published port with running tasks on every address of the node's Ethernet
/// interfaces (not bridges such as docker_gwbridge). `None` when there is nothing to
/// shortcut: no such port or address, or no sbox veth yet.
pub(crate) fn want_of(node: &NetNs, sbox_ns: &str, sbox: &Sbox) -> Result<Option<Want>> {
    let ports: BTreeSet<(Proto, u16)> = sbox
        .ports
        .iter()
        .filter(|p| !p.backends.is_empty())
        .map(|p| (p.proto, p.published))
        .collect();
    if ports.is_empty() {
        return Ok(None);
    }
    let veth = crate::spec::veth_name(
        crate::GW_TAG,
        &Path::new(netns::NETNS_RUN_DIR).join(sbox_ns),
        SBOX_GW_IF,
    );
    let out = crate::ingress::run_ok(node, "ip", &["-j", "-d", "addr", "show"])?;
    let links: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let links = links.as_array().cloned().unwrap_or_default();
    let Some(sbox_index) = links
        .iter()
        .find(|l| l["ifname"] == veth.as_str())
        .and_then(|l| l["ifindex"].as_u64())
        .and_then(|i| u32::try_from(i).ok())
    else {
        return Ok(None);
    };
    let target = PortTarget {
        sbox: sbox_index,
        sbox_addr: u32::from_ne_bytes(sbox.gw_addr.octets()),
    };
    let mut entries = BTreeMap::new();
    let mut underlays = Vec::new();
    for l in &links {
        let (Some(name), kind) = (l["ifname"].as_str(), l["linkinfo"]["info_kind"].as_str()) else {
            continue;
        };
        // The programs read an Ethernet header: no loopback, no L3 devices (WireGuard, tun).
        if name == "lo" || kind == Some("bridge") || l["link_type"] != "ether" {
            continue;
        }
        let addrs: Vec<Ipv4Addr> = l["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["family"] == "inet" && i["scope"] == "global")
            .filter_map(|i| i["local"].as_str()?.parse().ok())
            .collect();
        if addrs.is_empty() {
            continue;
        }
        underlays.push(name.to_string());
        for a in addrs {
            for (proto, port) in &ports {
                let proto = match proto {
                    Proto::Tcp => PROTO_TCP,
                    Proto::Udp => PROTO_UDP,
                };
                entries.insert(PortKey::new(a.octets(), *port, proto), target);
            }
        }
    }
    if entries.is_empty() {
        return Ok(None);
    }
    Ok(Some(Want {
        entries,
        underlays,
        sbox_veth: veth,
    }))
}

/// The pinned port map and the id of the pinned flow map (which both programs use), when
/// there are.
fn pinned_map(dir: &Path, ns: &NetNs) -> Result<Option<(PortMap, u32)>> {
    let (path, flows) = (dir.join(PORT_MAP), dir.join(FLOW_MAP));
    if !path.exists() || !flows.exists() {
        return Ok(None);
    }
    let m = MapData::from_pin(&path).map_err(|e| err("open the pinned port map", ns)(chain(&e)))?;
    let id = MapData::from_pin(&flows)
        .map_err(|e| err("open the pinned flow map", ns)(chain(&e)))?
        .info()
        .map_err(|e| err("the flow map's id", ns)(chain(&e)))?
        .id();
    let map = HashMap::try_from(aya::maps::Map::HashMap(m))
        .map_err(|e| err("the port map", ns)(chain(&e)))?;
    Ok(Some((map, id)))
}

/// Makes the shortcut of the node namespace `ns` (pins in `dir`) hold `want`; `None` removes
/// it. Returns the number of writes (0 when the kernel already holds it).
pub(crate) fn sync(ns: &NetNs, dir: &Path, want: Option<&Want>) -> Result<u64> {
    let Some(want) = want else {
        return remove(ns, dir);
    };
    let mut writes = 0;
    let mut bpf = None;
    let (mut map, map_id) = match pinned_map(dir, ns)? {
        Some(m) => m,
        None => {
            bpf = Some(load(dir, ns)?);
            writes += 1;
            pinned_map(dir, ns)?
                .ok_or_else(|| err("the port map", ns)("not pinned after loading".into()))?
        }
    };
    // Both programs run before the map points anything into the sbox: an answer that took the
    // node's stack would carry one of the node's own addresses in from docker_gwbridge.
    let mut devs: Vec<(&str, &str)> = want
        .underlays
        .iter()
        .map(|u| (u.as_str(), PROG_IN))
        .collect();
    devs.push((want.sbox_veth.as_str(), PROG_OUT));
    writes += remove_stale_link_pins(ns, dir, devs.iter().map(|(d, _)| *d));
    let filters = tc_mode() == TcMode::Filter;
    let ids: BTreeMap<&str, u32> = [PROG_IN, PROG_OUT]
        .into_iter()
        .filter_map(|p| Some((p, pinned_program_id(dir, p)?)))
        .collect();
    let running = running(ns, &devs, map_id, &ids).map_err(err("query tc programs", ns))?;
    let mut from_pins = Vec::new();
    for ((dev, prog), ok) in devs.iter().zip(running) {
        if ok.map_err(err(format!("query the tc programs of {dev}"), ns))? {
            continue;
        }
        let p = if filters {
            // Filters run the pinned programs, which a restarted agent finds by their ids.
            if from_pins.is_empty() {
                let (progs, pinned) = pinned_programs(dir, &[PROG_IN, PROG_OUT], || object(dir))
                    .map_err(err("pin the programs", ns))?;
                writes += pinned;
                from_pins = progs;
            }
            from_pins
                .iter_mut()
                .find(|(n, _)| n == prog)
                .map(|(_, p)| p)
                .expect("both programs opened above")
        } else {
            if bpf.is_none() {
                bpf = Some(load(dir, ns)?);
            }
            program(bpf.as_mut().expect("loaded above"), prog)
                .map_err(err(format!("attach {prog} to {dev}"), ns))?
        };
        ns.run(|| attach(p, dev, Some(dir)))
            .map_err(|e| err("attach tc programs", ns)(e.to_string()))?
            .map_err(err(format!("attach {prog} to {dev}"), ns))?;
        writes += 1;
    }
    let mut have = BTreeMap::new();
    for kv in map.iter() {
        let (k, v) = kv.map_err(|e| err("read the port map", ns)(chain(&e)))?;
        have.insert(k, v);
    }
    for k in have.keys().filter(|k| !want.entries.contains_key(k)) {
        delete(&mut map, k, ns)?;
        writes += 1;
    }
    for (k, v) in &want.entries {
        if have.get(k) != Some(v) {
            map.insert(k, v, 0)
                .map_err(|e| err("write the port map", ns)(chain(&e)))?;
            writes += 1;
        }
    }
    Ok(writes)
}

/// Loads the object, its maps pinned in `dir` (reused when there).
fn object(dir: &Path) -> std::result::Result<aya::Ebpf, String> {
    crate::tcx::load(OBJECT, Some(dir), &[PORT_MAP, FLOW_MAP, STATS_MAP])
}

/// Loads the object (its maps pinned in `dir`, reused when there) and both programs.
fn load(dir: &Path, ns: &NetNs) -> Result<aya::Ebpf> {
    let mut b = object(dir).map_err(err("load the programs", ns))?;
    load_programs(&mut b, &[PROG_IN, PROG_OUT]).map_err(err("load the programs", ns))?;
    Ok(b)
}

fn delete(map: &mut PortMap, k: &PortKey, ns: &NetNs) -> Result<()> {
    remove_key(map, k).map_err(err("delete from the port map", ns))
}

/// Removes the shortcut: its entries first (so nothing is sent into the sbox whose answers would
/// no longer be taken out), then the pins, which detach the programs (filters are removed).
fn remove(ns: &NetNs, dir: &Path) -> Result<u64> {
    if !dir.exists() {
        return Ok(0);
    }
    if let Some((mut map, _)) = pinned_map(dir, ns)? {
        let keys: Vec<PortKey> = map.keys().filter_map(|k| k.ok()).collect();
        for k in &keys {
            delete(&mut map, k, ns)?;
        }
    }
    // Filters have no links to unpin: they are removed from their devices first.
    remove_link_pins(ns, dir);
    std::fs::remove_dir_all(dir)
        .map_err(|e| err(format!("remove the pins in {}", dir.display()), ns)(e.to_string()))?;
    Ok(1)
}

/// The counters of the shortcut pinned in `dir`, summed over CPUs (`None`: no shortcut).
pub(crate) fn stats(ns: &NetNs, dir: &Path) -> Result<Option<MeshPathStats>> {
    let path = dir.join(STATS_MAP);
    if !path.exists() {
        return Ok(None);
    }
    let m = MapData::from_pin(&path).map_err(|e| err("open the pinned counters", ns)(chain(&e)))?;
    let a: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(m))
        .map_err(|e| err("the counters", ns)(chain(&e)))?;
    let mut v = [0u64; STATS_LEN as usize];
    for (i, slot) in v.iter_mut().enumerate() {
        *slot = a
            .get(&(i as u32), 0)
            .map_err(|e| err("read the counters", ns)(chain(&e)))?
            .iter()
            .sum();
    }
    Ok(Some(MeshPathStats {
        to_sbox: v[0],
        to_client: v[1],
        neigh_failed: v[2],
        rewrite_failed: v[3],
    }))
}
