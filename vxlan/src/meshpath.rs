//! The routing mesh's shortcut: tc programs (crate `ebpf`, binary `netagent-mesh`) on the
//! interface that holds the node's address and on the ingress-sbox's host-side veth, with one
//! port map per node (`ebpf_common::mesh`).
//!
//! - A client's packet for a published port of that address goes straight into the sbox
//!   (`bpf_redirect_peer`), unchanged: the sbox's table balances it by port whatever the
//!   destination address, as it does the node's DNATed packets.
//! - The sbox's answer, whose source is then the node's address and the published port, leaves
//!   straight by that interface (`bpf_redirect_neigh`).
//!
//! So the node's own stack (its nftables DNAT, docker_gwbridge, a second conntrack entry) is not
//! on the path; the sbox's conntrack still holds the connection. Only ports with running tasks
//! are in the map (a port without backends is refused by the sbox through the node's path).
//! Other addresses of the node, the node's own connections (output hook), fragments and IP
//! options take the nftables path, which stays in place.
//!
//! Everything is pinned under one directory per node (a bpffs), so the maps and links outlive the
//! process that made them: the data plane's handles are short-lived, and a restarted agent adopts
//! them and writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use aya::maps::{HashMap, MapData, PerCpuArray};
use ebpf_common::mesh::{
    PORT_MAP, PROG_IN, PROG_OUT, PROTO_TCP, PROTO_UDP, PortKey, PortTarget, STATS_LEN, STATS_MAP,
};
use netns::NetNs;

use crate::ingress::{Proto, SBOX_GW_IF, Sbox};
use crate::tcx::{attach, chain, load_programs, program, runs};
use crate::{Error, Result};

/// The object built from crate `ebpf` by ebpf-objects.
static OBJECT: &[u8] = ebpf_objects::MESH;

/// What the shortcut of a node should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Want {
    pub entries: BTreeMap<PortKey, PortTarget>,
    /// The interface holding the node's address (runs [`PROG_IN`]).
    pub underlay: String,
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
    /// Answers the kernel could not send by its neighbour table (left to the node's stack).
    pub neigh_failed: u64,
}

fn err<W: Into<String>>(what: W, ns: &NetNs) -> impl FnOnce(String) -> Error + use<W> {
    let (what, ns) = (what.into(), ns.name().to_string());
    move |detail| Error::MeshPath { what, ns, detail }
}

type PortMap = HashMap<MapData, PortKey, PortTarget>;

/// What the shortcut of the node namespace `node` should hold for the sbox `sbox` in namespace
/// `sbox_ns`: every published port with running tasks on the node's address `addr`. `None` when
/// there is nothing to shortcut: no such port, no interface holding `addr`, or no sbox veth yet.
pub(crate) fn want_of(
    node: &NetNs,
    sbox_ns: &str,
    addr: Ipv4Addr,
    sbox: &Sbox,
) -> Result<Option<Want>> {
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
    let out = crate::ingress::run_ok(node, "ip", &["-j", "addr", "show"])?;
    let links: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let links = links.as_array().cloned().unwrap_or_default();
    let index = |l: &serde_json::Value| l["ifindex"].as_u64().and_then(|i| u32::try_from(i).ok());
    let underlay = links.iter().find(|l| {
        l["addr_info"].as_array().is_some_and(|a| {
            a.iter()
                .any(|i| i["family"] == "inet" && i["local"] == addr.to_string().as_str())
        })
    });
    let sbox_link = links.iter().find(|l| l["ifname"] == veth.as_str());
    let (Some(u), Some(v)) = (underlay, sbox_link) else {
        return Ok(None);
    };
    let (Some(u_index), Some(v_index), Some(u_name)) = (index(u), index(v), u["ifname"].as_str())
    else {
        return Ok(None);
    };
    let target = PortTarget {
        sbox: v_index,
        out: u_index,
    };
    let entries = ports
        .into_iter()
        .map(|(proto, port)| {
            let proto = match proto {
                Proto::Tcp => PROTO_TCP,
                Proto::Udp => PROTO_UDP,
            };
            (PortKey::new(addr.octets(), port, proto), target)
        })
        .collect();
    Ok(Some(Want {
        entries,
        underlay: u_name.to_string(),
        sbox_veth: veth,
    }))
}

/// The pinned port map and its id, when there is one.
fn pinned_map(dir: &Path, ns: &NetNs) -> Result<Option<(PortMap, u32)>> {
    let path = dir.join(PORT_MAP);
    if !path.exists() {
        return Ok(None);
    }
    let m = MapData::from_pin(&path).map_err(|e| err("open the pinned port map", ns)(chain(&e)))?;
    let id = m
        .info()
        .map_err(|e| err("the port map's id", ns)(chain(&e)))?
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
            let mut b = crate::tcx::load(OBJECT, Some(dir), &[PORT_MAP, STATS_MAP])
                .map_err(err("load the programs", ns))?;
            writes += 1;
            bpf_ready(&mut b, ns)?;
            bpf = Some(b);
            pinned_map(dir, ns)?
                .ok_or_else(|| err("the port map", ns)("not pinned after loading".into()))?
        }
    };
    // Both programs run before the map points anything into the sbox: an answer that took the
    // node's stack would carry one of the node's own addresses in from docker_gwbridge.
    let devs = [
        (want.underlay.as_str(), PROG_IN),
        (want.sbox_veth.as_str(), PROG_OUT),
    ];
    let live: BTreeSet<String> = devs
        .iter()
        .map(|(d, _)| crate::tcx::link_pin(dir, d))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("link_") && !live.contains(&e.path().to_string_lossy().into_owned())
            {
                let _ = std::fs::remove_file(e.path());
                writes += 1;
            }
        }
    }
    let running = ns
        .run(|| {
            devs.iter()
                .map(|(d, p)| runs(d, p, map_id))
                .collect::<Vec<_>>()
        })
        .map_err(|e| err("query tc programs", ns)(e.to_string()))?;
    for ((dev, prog), ok) in devs.iter().zip(running) {
        if ok.map_err(err(format!("query the tc programs of {dev}"), ns))? {
            continue;
        }
        if bpf.is_none() {
            let mut b = crate::tcx::load(OBJECT, Some(dir), &[PORT_MAP, STATS_MAP])
                .map_err(err("load the programs", ns))?;
            bpf_ready(&mut b, ns)?;
            bpf = Some(b);
        }
        let b = bpf.as_mut().expect("loaded above");
        ns.run(|| {
            let p = program(b, prog)?;
            attach(p, dev, Some(dir))
        })
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

fn bpf_ready(b: &mut aya::Ebpf, ns: &NetNs) -> Result<()> {
    load_programs(b, &[PROG_IN, PROG_OUT]).map_err(err("load the programs", ns))
}

fn delete(map: &mut PortMap, k: &PortKey, ns: &NetNs) -> Result<()> {
    match map.remove(k) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(err("delete from the port map", ns)(chain(&e))),
    }
}

/// Removes the shortcut: its entries first (so nothing is sent into the sbox whose answers would
/// no longer be taken out), then the pins, which detach the programs.
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
    }))
}
