//! The overlay fast path: tc programs (crate `ebpf`, binary `netagent-fastpath`) on a sandbox's
//! `vxlan0` ingress and on the ingress of every task veth in it, with one MAC map per sandbox.
//!
//! - vxlan0 ingress: a frame for a local task goes into the task's namespace
//!   (`bpf_redirect_peer` to the task's host-side veth).
//! - task veth ingress: a frame for a remote endpoint goes out of vxlan0 (`bpf_redirect`), one
//!   for another local task into that task's namespace (`bpf_redirect_peer`).
//! - everything else (ARP, broadcast, multicast, the gateway, unknown MACs) takes `br0` as
//!   before. The map holds only the sandbox's own network's MACs, so a frame for another
//!   network's MAC is never redirected.
//!
//! Attachments are TCX links (Linux >= 6.6), or tc filters before (`crate::tcx`). With a pin
//! directory (a bpffs) the maps and links (with filters: the programs and a marker per device)
//! are pinned under `<dir>/<sandbox name>/`, so a restarted agent adopts them and writes nothing;
//! without one, this process holds the links and a restart attaches again.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aya::Ebpf;
use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::links::FdLink;
use aya::util::KernelVersion;
use ebpf_common::fastpath::{
    KIND_LOCAL, KIND_REMOTE, MAC_MAP, MacKey, PROG_VETH, PROG_VXLAN, STATS_LEN, STATS_MAP, Target,
};
use netns::NetNs;

use crate::kernel::Link;
use crate::nl::Counter;
use crate::spec::Mac;
use crate::tcx::{
    TcMode, attach, chain, link_pin, load_programs, pinned_program_id, pinned_programs, program,
    remove_key, remove_link_pin, remove_stale_link_pins, running, tc_mode,
};
use crate::{Error, Result};

/// The object built from crate `ebpf` by build.rs.
static OBJECT: &[u8] = ebpf_objects::FASTPATH;

/// Whether the fast path is used on a node, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FastPathStatus {
    /// The tc programs redirect task-to-task frames past the sandbox bridge (shown "ebpf", or
    /// "ebpf (tc filters)" on a kernel without TCX).
    Ebpf,
    /// Switched off by configuration (`--no-fast-path`).
    Disabled,
    /// Wanted but this kernel cannot run it; the reason.
    Unsupported(String),
}

impl FastPathStatus {
    pub fn is_active(&self) -> bool {
        *self == FastPathStatus::Ebpf
    }
}

impl std::fmt::Display for FastPathStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FastPathStatus::Ebpf => match tc_mode() {
                TcMode::Tcx => f.write_str("ebpf"),
                TcMode::Filter => f.write_str("ebpf (tc filters)"),
            },
            FastPathStatus::Disabled => f.write_str("off (--no-fast-path)"),
            FastPathStatus::Unsupported(why) => write!(f, "off ({why})"),
        }
    }
}

/// Frames the programs of one sandbox handled, by path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastPathStats {
    /// From vxlan0 straight into a local task.
    pub vxlan_to_local: u64,
    /// From a task straight into another local task.
    pub veth_to_local: u64,
    /// From a task straight out of vxlan0.
    pub veth_to_remote: u64,
    /// Left to the bridge.
    pub passed: u64,
}

fn fp_err<W: Into<String>>(what: W, ns: &str) -> impl FnOnce(String) -> Error + use<W> {
    let (what, ns) = (what.into(), ns.to_string());
    move |detail| Error::FastPath { what, ns, detail }
}

/// Whether this kernel can run the fast path: `bpf_redirect_peer` (Linux >= 5.10; TCX from 6.6,
/// cls_bpf filters before) and the programs load.
pub(crate) fn probe() -> std::result::Result<(), String> {
    let v = KernelVersion::current().map_err(|e| format!("kernel version unknown: {e}"))?;
    if v < KernelVersion::new(5, 10, 0) {
        return Err(format!(
            "needs bpf_redirect_peer, Linux >= 5.10; this is {v:?}"
        ));
    }
    let mut bpf = Ebpf::load(OBJECT).map_err(|e| format!("eBPF maps: {}", chain(&e)))?;
    for name in [PROG_VXLAN, PROG_VETH] {
        program(&mut bpf, name)?
            .load()
            .map_err(|e| format!("tc program {name}: {}", chain(&e)))?;
    }
    Ok(())
}

/// What a device of a sandbox runs: vxlan0 or a task veth.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Hook {
    Vxlan,
    Veth,
}

impl Hook {
    fn program(self) -> &'static str {
        match self {
            Hook::Vxlan => PROG_VXLAN,
            Hook::Veth => PROG_VETH,
        }
    }
}

type MacMap = HashMap<MapData, MacKey, Target>;

/// The fast path of one sandbox: its map (a cache of what the kernel holds, since only this
/// process writes it), and the devices known to run the programs.
pub(crate) struct Sandbox {
    ns_name: String,
    pin: Option<PathBuf>,
    map: MacMap,
    stats: PerCpuArray<MapData, u64>,
    map_id: u32,
    have: BTreeMap<MacKey, Target>,
    /// Loaded when a device needs attaching (not at all on an adopting restart).
    bpf: Option<Ebpf>,
    /// Devices verified or attached in this process: name -> (ifindex, the link when this
    /// process holds it, i.e. without pins).
    attached: BTreeMap<String, (u32, Option<FdLink>)>,
    counter: Arc<Counter>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("ns", &self.ns_name)
            .field("entries", &self.have.len())
            .finish()
    }
}

/// The directory of a sandbox's pins.
pub(crate) fn pin_dir(bpf_dir: &Path, sandbox: &str) -> PathBuf {
    bpf_dir.join(sandbox)
}

/// Removes a sandbox's pins (detaching what they held); an absent directory is fine.
pub(crate) fn remove_pins(dir: &Path) -> Result<u64> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(1),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::FastPath {
            what: format!("remove the pins in {}", dir.display()),
            ns: String::new(),
            detail: e.to_string(),
        }),
    }
}

/// Removes the pin directories under `bpf_dir` of sandboxes (names starting with `prefix`) that
/// no longer exist.
pub(crate) fn remove_stale_pins(bpf_dir: &Path, prefix: &str) -> Result<u64> {
    let Ok(rd) = std::fs::read_dir(bpf_dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && !netns::exists(&name) {
            n += remove_pins(&e.path())?;
        }
    }
    Ok(n)
}

impl Sandbox {
    /// Opens a sandbox's fast path: the pinned maps when there are (adoption), else a fresh
    /// load (pinned when `pin` is given).
    pub(crate) fn open(ns: &NetNs, pin: Option<PathBuf>, counter: Arc<Counter>) -> Result<Sandbox> {
        let ns_name = ns.name().to_string();
        let err = |what: &str| fp_err(what.to_string(), &ns_name);
        let pinned = pin
            .as_ref()
            .map(|d| (d.join(MAC_MAP), d.join(STATS_MAP)))
            .filter(|(m, s)| m.exists() && s.exists());
        let (mac, stats, bpf) = match pinned {
            Some((m, s)) => {
                let m =
                    MapData::from_pin(&m).map_err(|e| err("open the pinned MAC map")(chain(&e)))?;
                let s = MapData::from_pin(&s)
                    .map_err(|e| err("open the pinned counters")(chain(&e)))?;
                (
                    aya::maps::Map::HashMap(m),
                    aya::maps::Map::PerCpuArray(s),
                    None,
                )
            }
            None => {
                let mut bpf = load(pin.as_deref()).map_err(err("load the programs"))?;
                counter.add(1);
                let m = bpf
                    .take_map(MAC_MAP)
                    .ok_or_else(|| err("the object")(format!("no map {MAC_MAP}")))?;
                let s = bpf
                    .take_map(STATS_MAP)
                    .ok_or_else(|| err("the object")(format!("no map {STATS_MAP}")))?;
                (m, s, Some(bpf))
            }
        };
        let map_id = match &mac {
            aya::maps::Map::HashMap(d) => d
                .info()
                .map_err(|e| err("the MAC map's id")(chain(&e)))?
                .id(),
            _ => return Err(err("the MAC map")("not a hash map".into())),
        };
        let map: MacMap = HashMap::try_from(mac).map_err(|e| err("the MAC map")(chain(&e)))?;
        let stats = PerCpuArray::try_from(stats).map_err(|e| err("the counters")(chain(&e)))?;
        let mut have = BTreeMap::new();
        for kv in map.iter() {
            let (k, v) = kv.map_err(|e| err("read the MAC map")(chain(&e)))?;
            have.insert(k, v);
        }
        Ok(Sandbox {
            ns_name,
            pin,
            map,
            stats,
            map_id,
            have,
            bpf,
            attached: BTreeMap::new(),
            counter,
        })
    }

    /// Makes the devices run their program: `vxlan0` and every task veth in `devs`. A device
    /// already running this sandbox's program (an earlier process attached it) is left alone.
    /// Pins of devices no longer there go.
    pub(crate) fn ensure_attached(&mut self, ns: &NetNs, devs: &[(&Link, Hook)]) -> Result<()> {
        if let Some(dir) = &self.pin {
            let gone = remove_stale_link_pins(ns, dir, devs.iter().map(|(l, _)| l.name.as_str()));
            self.counter.add(gone);
        }
        let live: BTreeSet<&str> = devs.iter().map(|(l, _)| l.name.as_str()).collect();
        self.attached.retain(|name, _| live.contains(name.as_str()));
        self.attach(ns, devs)
    }

    /// Whether the sandbox's `vxlan0` runs the program (a full sync attached it).
    pub(crate) fn serves(&self, vxlan: &str) -> bool {
        self.attached.contains_key(vxlan)
    }

    /// One local endpoint more: its veth runs the program and its MAC points at it. Nothing
    /// else is read or written, so adding a task costs the same with 2 or 2,000 endpoints.
    pub(crate) fn add_local(&mut self, ns: &NetNs, veth: &Link, mac: Mac) -> Result<()> {
        self.attach(ns, &[(veth, Hook::Veth)])?;
        self.put(
            MacKey::new(mac.0),
            Target {
                ifindex: veth.index,
                kind: KIND_LOCAL,
            },
        )
    }

    /// One local endpoint fewer (its veth `veth` deleted): its map entry, its link and the
    /// link's pin go. Nothing is dumped, so removing a task costs the same with 2 or 2,000
    /// endpoints in the sandbox.
    pub(crate) fn remove_local(&mut self, veth: &str, mac: Mac) -> Result<()> {
        self.attached.remove(veth);
        if let Some(dir) = &self.pin {
            let pin = link_pin(dir, veth);
            if pin.exists() {
                remove_link_pin(&pin);
                self.counter.add(1);
            }
        }
        let k = MacKey::new(mac.0);
        match self.have.get(&k) {
            Some(t) if t.kind == KIND_LOCAL => self.delete(k),
            _ => Ok(()),
        }
    }

    /// Attaches the program to those of `devs` not verified or attached by this process yet.
    fn attach(&mut self, ns: &NetNs, devs: &[(&Link, Hook)]) -> Result<()> {
        let todo: Vec<(String, u32, Hook)> = devs
            .iter()
            .filter(|(l, _)| {
                self.attached
                    .get(&l.name)
                    .is_none_or(|(i, _)| *i != l.index)
            })
            .map(|(l, h)| (l.name.clone(), l.index, *h))
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let map_id = self.map_id;
        // Filters: a device runs this sandbox's program when a filter there runs the program
        // this sandbox pinned (or loaded, without pins).
        let ids = match tc_mode() {
            TcMode::Tcx => BTreeMap::new(),
            TcMode::Filter => self.program_ids(),
        };
        let devs: Vec<(&str, &str)> = todo
            .iter()
            .map(|(dev, _, hook)| (dev.as_str(), hook.program()))
            .collect();
        let running =
            running(ns, &devs, map_id, &ids).map_err(fp_err("query tc programs", &self.ns_name))?;
        let mut need = Vec::new();
        for ((dev, index, hook), ok) in todo.into_iter().zip(running) {
            match ok {
                Ok(true) => {
                    self.attached.insert(dev, (index, None));
                }
                Ok(false) => need.push((dev, index, hook)),
                Err(e) => {
                    return Err(fp_err(
                        format!("query the tc programs of {dev}"),
                        &self.ns_name,
                    )(e));
                }
            }
        }
        if need.is_empty() {
            return Ok(());
        }
        let pin = self.pin.clone();
        // With filters and pins, filters run the sandbox's pinned programs, which a later
        // agent finds by their ids.
        let mut from_pins = Vec::new();
        if let (TcMode::Filter, Some(dir)) = (tc_mode(), pin.as_deref()) {
            let (progs, pinned) =
                pinned_programs(dir, &[PROG_VXLAN, PROG_VETH], || load(Some(dir)))
                    .map_err(fp_err("pin the programs", &self.ns_name))?;
            self.counter.add(pinned);
            from_pins = progs;
        } else {
            if self.bpf.is_none() {
                let bpf = load(self.pin.as_deref())
                    .map_err(fp_err("load the programs", &self.ns_name))?;
                self.bpf = Some(bpf);
            }
            let bpf = self.bpf.as_mut().expect("loaded above");
            load_programs(bpf, &[PROG_VXLAN, PROG_VETH])
                .map_err(fp_err("load the programs", &self.ns_name))?;
        }
        let bpf = &mut self.bpf;
        let results = ns
            .run(|| {
                need.iter()
                    .map(|(dev, _, hook)| {
                        let p = match from_pins.iter_mut().find(|(n, _)| *n == hook.program()) {
                            Some((_, p)) => p,
                            None => program(bpf.as_mut().expect("loaded above"), hook.program())?,
                        };
                        attach(p, dev, pin.as_deref())
                    })
                    .collect::<Vec<_>>()
            })
            .map_err(|e| fp_err("attach tc programs", &self.ns_name)(e.to_string()))?;
        for ((dev, index, _), r) in need.into_iter().zip(results) {
            let link = r.map_err(|e| fp_err(format!("attach to {dev}"), &self.ns_name)(e))?;
            self.counter.add(1);
            self.attached.insert(dev, (index, link));
        }
        Ok(())
    }

    /// The ids of this sandbox's programs by name ([`TcMode::Filter`]): the pinned ones, else
    /// those this process loaded; none when neither is there.
    fn program_ids(&mut self) -> BTreeMap<&'static str, u32> {
        let mut ids = BTreeMap::new();
        for name in [PROG_VXLAN, PROG_VETH] {
            let pinned = self.pin.as_deref().and_then(|d| pinned_program_id(d, name));
            let loaded = || {
                let bpf = self.bpf.as_mut()?;
                program(bpf, name).ok()?.info().ok().map(|i| i.id())
            };
            if let Some(id) = pinned.or_else(loaded) {
                ids.insert(name, id);
            }
        }
        ids
    }

    /// Makes the map exactly `want`, writing only the difference.
    pub(crate) fn sync(&mut self, want: &BTreeMap<MacKey, Target>) -> Result<()> {
        let stale: Vec<MacKey> = self
            .have
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            self.delete(k)?;
        }
        for (k, v) in want {
            self.put(*k, *v)?;
        }
        Ok(())
    }

    /// A remote MAC reached through `vx` (None: no longer a peer). A local entry stays (a MAC
    /// that is both stays local, as in [`wanted`]).
    pub(crate) fn set_remote(&mut self, mac: Mac, vx: Option<u32>) -> Result<()> {
        let k = MacKey::new(mac.0);
        match self.have.get(&k) {
            Some(t) if t.kind == KIND_LOCAL => Ok(()),
            Some(_) if vx.is_none() => self.delete(k),
            _ => match vx {
                Some(ifindex) => self.put(
                    k,
                    Target {
                        ifindex,
                        kind: KIND_REMOTE,
                    },
                ),
                None => Ok(()),
            },
        }
    }

    /// Removes one entry of the map.
    fn delete(&mut self, k: MacKey) -> Result<()> {
        remove_key(&mut self.map, &k).map_err(fp_err(
            format!("delete {} from the MAC map", Mac(k.mac)),
            &self.ns_name,
        ))?;
        self.counter.add(1);
        self.have.remove(&k);
        Ok(())
    }

    /// Makes one entry of the map `v`, if it is not already.
    fn put(&mut self, k: MacKey, v: Target) -> Result<()> {
        if self.have.get(&k) == Some(&v) {
            return Ok(());
        }
        self.map.insert(k, v, 0).map_err(|e| {
            fp_err(
                format!("write {} to the MAC map", Mac(k.mac)),
                &self.ns_name,
            )(chain(&e))
        })?;
        self.counter.add(1);
        self.have.insert(k, v);
        Ok(())
    }

    /// What the map holds now.
    pub(crate) fn entries(&self) -> &BTreeMap<MacKey, Target> {
        &self.have
    }

    /// The map as the kernel holds it: MAC -> whether it is a local task.
    pub(crate) fn read_kernel(&self) -> Result<BTreeMap<Mac, bool>> {
        let mut out = BTreeMap::new();
        for kv in self.map.iter() {
            let (k, v) = kv.map_err(|e| fp_err("read the MAC map", &self.ns_name)(chain(&e)))?;
            out.insert(Mac(k.mac), v.kind == KIND_LOCAL);
        }
        Ok(out)
    }

    /// The programs' counters summed over CPUs.
    pub(crate) fn stats(&self) -> Result<FastPathStats> {
        let mut v = [0u64; STATS_LEN as usize];
        for (i, slot) in v.iter_mut().enumerate() {
            let per_cpu = self
                .stats
                .get(&(i as u32), 0)
                .map_err(|e| fp_err("read the counters", &self.ns_name)(chain(&e)))?;
            *slot = per_cpu.iter().sum();
        }
        Ok(FastPathStats {
            vxlan_to_local: v[0],
            veth_to_local: v[1],
            veth_to_remote: v[2],
            passed: v[3],
        })
    }
}

/// The map `have` with its remote entries replaced by `peers` (via `vx`); local entries stay
/// (a MAC that is both stays local, as in [`wanted`]).
pub(crate) fn with_peers(
    have: &BTreeMap<MacKey, Target>,
    vx: u32,
    peers: impl IntoIterator<Item = Mac>,
) -> BTreeMap<MacKey, Target> {
    let remote = Target {
        ifindex: vx,
        kind: KIND_REMOTE,
    };
    let mut want: BTreeMap<MacKey, Target> = peers
        .into_iter()
        .map(|m| (MacKey::new(m.0), remote))
        .collect();
    for (k, v) in have {
        if v.kind == KIND_LOCAL {
            want.insert(*k, *v);
        }
    }
    want
}

/// The wanted map of a sandbox: remote endpoints (`peers`: MAC; `None` while they are not known
/// yet, when the remote entries the map holds stay) via `vx`, local endpoints (`local`: veth name
/// -> the task's MAC) on their veths. Entries an earlier process made for veths that still exist
/// stay until this process learns those endpoints.
pub(crate) fn wanted(
    have: &BTreeMap<MacKey, Target>,
    vx: u32,
    peers: Option<Vec<Mac>>,
    local: &BTreeMap<String, Mac>,
    veths: &[&Link],
) -> BTreeMap<MacKey, Target> {
    let mut want = BTreeMap::new();
    let remote = Target {
        ifindex: vx,
        kind: KIND_REMOTE,
    };
    match peers {
        Some(p) => {
            for m in p {
                want.insert(MacKey::new(m.0), remote);
            }
        }
        None => {
            for (k, v) in have {
                if *v == remote {
                    want.insert(*k, *v);
                }
            }
        }
    }
    let live: BTreeMap<&str, u32> = veths.iter().map(|l| (l.name.as_str(), l.index)).collect();
    let known: BTreeSet<u32> = local
        .keys()
        .filter_map(|n| live.get(n.as_str()).copied())
        .collect();
    let live_idx: BTreeSet<u32> = live.values().copied().collect();
    for (k, v) in have {
        if v.kind == KIND_LOCAL && live_idx.contains(&v.ifindex) && !known.contains(&v.ifindex) {
            want.insert(*k, *v);
        }
    }
    for (veth, mac) in local {
        if let Some(i) = live.get(veth.as_str()) {
            want.insert(
                MacKey::new(mac.0),
                Target {
                    ifindex: *i,
                    kind: KIND_LOCAL,
                },
            );
        }
    }
    want
}

/// Loads the object, its maps pinned in `pin` (reused when already there).
fn load(pin: Option<&Path>) -> std::result::Result<Ebpf, String> {
    crate::tcx::load(OBJECT, pin, &[MAC_MAP, STATS_MAP])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, index: u32) -> Link {
        Link {
            name: name.into(),
            index,
            ..Default::default()
        }
    }

    #[test]
    fn wanted_keeps_live_adopted_entries_and_drops_dead_ones() {
        let (a, b, c) = (
            Mac([2, 0x42, 10, 0, 0, 2]),
            Mac([2, 0x42, 10, 0, 0, 3]),
            Mac([2, 0x42, 10, 0, 0, 9]),
        );
        let local = |i| Target {
            ifindex: i,
            kind: KIND_LOCAL,
        };
        let mut have = BTreeMap::new();
        have.insert(MacKey::new(a.0), local(7)); // adopted, veth 7 alive
        have.insert(MacKey::new(b.0), local(8)); // veth 8 gone
        let (v7, v9) = (link("ve1", 7), link("ve2", 9));
        let mut known = BTreeMap::new();
        known.insert("ve2".to_string(), c);
        let want = wanted(&have, 3, Some(vec![b]), &known, &[&v7, &v9]);
        assert_eq!(want[&MacKey::new(a.0)], local(7));
        assert_eq!(want[&MacKey::new(c.0)], local(9));
        assert_eq!(
            want[&MacKey::new(b.0)],
            Target {
                ifindex: 3,
                kind: KIND_REMOTE
            }
        );
        assert_eq!(want.len(), 3);
    }

    #[test]
    fn with_peers_replaces_remote_entries_and_keeps_local_ones() {
        let (a, b, c, d) = (
            Mac([2, 0x42, 10, 0, 0, 2]),
            Mac([2, 0x42, 10, 0, 0, 3]),
            Mac([2, 0x42, 10, 0, 0, 4]),
            Mac([2, 0x42, 10, 0, 0, 5]),
        );
        let local = Target {
            ifindex: 7,
            kind: KIND_LOCAL,
        };
        let remote = |i| Target {
            ifindex: i,
            kind: KIND_REMOTE,
        };
        let have = BTreeMap::from([
            (MacKey::new(a.0), local),
            (MacKey::new(b.0), remote(3)),
            (MacKey::new(c.0), remote(3)),
        ]);
        // c goes, d comes, a stays local even if a peer claims its MAC; a new vxlan0 index.
        let want = with_peers(&have, 4, [b, d, a]);
        assert_eq!(
            want,
            BTreeMap::from([
                (MacKey::new(a.0), local),
                (MacKey::new(b.0), remote(4)),
                (MacKey::new(d.0), remote(4)),
            ])
        );
    }
}
