//! What the crate's two sets of tc programs share (the overlay fast path, `fastpath`, and the
//! routing mesh's shortcut, `meshpath`): loading an object with its maps pinned, finding a
//! program in it, asking a device whether it runs a program on a given map, and attaching one as
//! a TCX link, pinned or held.
//!
//! Kernels before 6.6 have no TCX: there the programs attach as cls_bpf filters (direct action)
//! on a clsact qdisc ([`TcMode::Filter`]). A filter stays on its device until the device goes or
//! it is removed: it has no link to pin, so the programs are pinned and an empty directory per
//! device marks the filter (a bpffs holds no files); a restarted agent finds it by asking the
//! device for its filters (over netlink, as `tc filter show` does) and their programs' ids.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, MapError};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{NlOptions, TcAttachOptions, TcError};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{
    TcAttribute, TcFilterBpf, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
};
use netns::NetNs;
use nlsock::{NETLINK_ROUTE, Sock};

/// The crate's tc programs (a filter's marker names only its device).
const PROGRAMS: [&str; 4] = [
    ebpf_common::fastpath::PROG_VXLAN,
    ebpf_common::fastpath::PROG_VETH,
    ebpf_common::mesh::PROG_IN,
    ebpf_common::mesh::PROG_OUT,
];

/// The priority of this crate's filters: after those a user set up with lower numbers (tc's own
/// first choice is 49152), as a TCX link goes after the links already there.
const FILTER_PRIORITY: u16 = 0xff00;

/// How tc programs attach on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TcMode {
    /// TCX links (Linux >= 6.6), pinned or held by this process.
    Tcx,
    /// cls_bpf filters on a clsact qdisc (older kernels, or `NETAGENT_TC_FILTERS=1`, which the
    /// tests use to run this mode on a newer kernel).
    Filter,
}

/// The mode of this kernel (read once per process).
pub(crate) fn tc_mode() -> TcMode {
    static MODE: std::sync::OnceLock<TcMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        let forced = std::env::var_os("NETAGENT_TC_FILTERS").is_some_and(|v| v == "1");
        match KernelVersion::current() {
            Ok(v) if v >= KernelVersion::new(6, 6, 0) && !forced => TcMode::Tcx,
            _ => TcMode::Filter,
        }
    })
}

/// An error with its sources, one line.
pub(crate) use ebpf_objects::chain;

/// The tc program `name` of a loaded object.
pub(crate) fn program<'a>(
    bpf: &'a mut Ebpf,
    name: &str,
) -> std::result::Result<&'a mut SchedClassifier, String> {
    bpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{name}: {}", chain(&e)))
}

/// Loads `object`, its maps `maps` pinned in `pin` (reused when already there).
pub(crate) fn load(
    object: &[u8],
    pin: Option<&Path>,
    maps: &[&str],
) -> std::result::Result<Ebpf, String> {
    let mut loader = EbpfLoader::new();
    if let Some(d) = pin {
        std::fs::create_dir_all(d)
            .map_err(|e| format!("create pin directory {}: {e}", d.display()))?;
        for m in maps {
            loader.map_pin_path(m, d.join(m));
        }
    }
    loader.load(object).map_err(|e| chain(&e))
}

/// Loads the programs `names` of a loaded object unless they are.
pub(crate) fn load_programs(bpf: &mut Ebpf, names: &[&str]) -> std::result::Result<(), String> {
    for name in names {
        let p = program(bpf, name)?;
        if p.fd().is_err() {
            p.load()
                .map_err(|e| format!("load {name}: {}", chain(&e)))?;
        }
    }
    Ok(())
}

/// Which of `devs` (device, program) in `ns` run their program on the map `map_id` at ingress:
/// a TCX link; in [`TcMode::Filter`] a filter running the program whose id `ids` holds for the
/// program's name (the caller's pinned or loaded one; none: it has none, so no filter runs it).
/// One answer per device; the whole fails only when the namespace or its netlink socket does.
pub(crate) fn running(
    ns: &NetNs,
    devs: &[(&str, &str)],
    map_id: u32,
    ids: &BTreeMap<&str, u32>,
) -> std::result::Result<Vec<std::result::Result<bool, String>>, String> {
    if tc_mode() == TcMode::Tcx {
        return ns
            .run(|| {
                devs.iter()
                    .map(|(dev, prog)| tcx_runs(dev, prog, map_id))
                    .collect()
            })
            .map_err(|e| e.to_string());
    }
    // Without a program of ours there is no filter of ours to find: no socket to open.
    if !devs.iter().any(|(_, prog)| ids.contains_key(prog)) {
        return Ok(vec![Ok(false); devs.len()]);
    }
    let names: Vec<&str> = devs.iter().map(|(dev, _)| *dev).collect();
    let indexes = ns.if_indexes(&names).map_err(|e| e.to_string())?;
    let mut sock = Sock::open(ns, NETLINK_ROUTE).map_err(|e| e.to_string())?;
    Ok(devs
        .iter()
        .zip(indexes)
        .map(|((dev, prog), index)| {
            let Some(id) = ids.get(prog) else {
                return Ok(false);
            };
            let index = index.ok_or_else(|| format!("no device {dev}"))?;
            Ok(filter_programs(&mut sock, index, prog)?.contains(id))
        })
        .collect())
}

/// Whether `dev` (in the calling thread's namespace) has a TCX link at ingress running `prog`
/// on the map `map_id`.
fn tcx_runs(dev: &str, prog: &str, map_id: u32) -> std::result::Result<bool, String> {
    let (_, progs) =
        SchedClassifier::query_tcx(dev, TcAttachType::Ingress).map_err(|e| chain(&e))?;
    for p in progs {
        if p.name_as_str() == Some(prog)
            && p.map_ids()
                .map_err(|e| chain(&e))?
                .is_some_and(|ids| ids.contains(&map_id))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The ids of the programs named `prog` that bpf filters on the ingress (clsact) of device
/// `index` run: a dump of its filters (RTM_GETTFILTER, what `tc filter show` asks).
fn filter_programs(
    sock: &mut Sock,
    index: u32,
    prog: &str,
) -> std::result::Result<Vec<u32>, String> {
    let mut req = TcMessage::default();
    req.header.index = index as i32;
    req.header.parent = TcHandle {
        major: u16::MAX,
        minor: TcHandle::MIN_INGRESS,
    };
    let filters = sock
        .dump::<_, RouteNetlinkMessage>(
            RouteNetlinkMessage::GetTrafficFilter(req),
            "list the tc filters",
        )
        .map_err(|e| e.to_string())?;
    // A filter the parser cannot read is no bpf filter of ours (we write none it cannot).
    Ok(filters
        .into_iter()
        .filter_map(|f| match f {
            Ok(RouteNetlinkMessage::NewTrafficFilter(f)) => bpf_program(&f, prog),
            _ => None,
        })
        .collect())
}

/// The program id of a bpf filter that runs a program named `prog`. The kernel names a filter's
/// program as the attaching process gave it; tc gives `<name>` or `<name>:[<id>]` by version.
fn bpf_program(f: &TcMessage, prog: &str) -> Option<u32> {
    if !f
        .attributes
        .iter()
        .any(|a| matches!(a, TcAttribute::Kind(k) if k == TcFilterBpf::KIND))
    {
        return None;
    }
    let opts = f.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(o) => Some(o),
        _ => None,
    })?;
    let (mut name, mut id) = (None, None);
    for o in opts {
        match o {
            TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.as_str()),
            TcOption::Bpf(TcFilterBpfOption::ProgId(i)) => id = Some(*i),
            _ => {}
        }
    }
    (name?.split(':').next() == Some(prog))
        .then_some(id)
        .flatten()
}

/// The pin of the link on device `dev` in a pin directory.
pub(crate) fn link_pin(dir: &Path, dev: &str) -> PathBuf {
    dir.join(format!("link_{dev}"))
}

/// Removes the link pins in `dir` of devices not in `live` (their links detach; in
/// [`TcMode::Filter`] the pins are markers, and our filters are removed from the device in `ns`
/// when it is still there); returns how many went.
pub(crate) fn remove_stale_link_pins<'a>(
    ns: &NetNs,
    dir: &Path,
    live: impl IntoIterator<Item = &'a str>,
) -> u64 {
    let live: BTreeSet<String> = live.into_iter().map(|d| format!("link_{d}")).collect();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("link_") && !live.contains(&name) {
            detach_marked(ns, &e.path());
            remove_link_pin(&e.path());
            n += 1;
        }
    }
    n
}

/// Removes every link pin in `dir` (the links detach; filters are removed, as above).
pub(crate) fn remove_link_pins(ns: &NetNs, dir: &Path) -> u64 {
    remove_stale_link_pins(ns, dir, [])
}

/// Removes a link pin: a pinned TCX link (which detaches), or a filter's marker.
pub(crate) fn remove_link_pin(path: &Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

/// In [`TcMode::Filter`], a link pin is a marker (an empty directory: a bpffs holds no files)
/// that this crate's filter is on the device named after `link_`: the filters running any of
/// `PROGRAMS` are removed from it. Nothing when the device is gone (its filters went with it) or
/// when the pin is a TCX link.
fn detach_marked(ns: &NetNs, pin: &Path) {
    if tc_mode() != TcMode::Filter || !pin.is_dir() {
        return;
    }
    let Some(dev) = pin
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("link_"))
    else {
        return;
    };
    let _ = ns.run(|| {
        for prog in PROGRAMS {
            match aya::programs::tc::qdisc_detach_program(dev, TcAttachType::Ingress, prog) {
                Ok(()) => {}
                Err(e) => {
                    tracing::trace!(dev, prog, error = %chain(&e), "no tc filter removed");
                }
            }
        }
    });
}

/// A program opened from its pin, by name.
pub(crate) type NamedProgram = (&'static str, SchedClassifier);

/// In [`TcMode::Filter`] with pins: the programs `names` pinned in `dir`, those not pinned yet
/// pinned there first from `bpf` (loaded once, only then; a filter runs a program, which a
/// restarted agent finds by the pinned program's id). Returns them in order and how many were
/// pinned now.
pub(crate) fn pinned_programs(
    dir: &Path,
    names: &[&'static str],
    bpf: impl FnOnce() -> std::result::Result<Ebpf, String>,
) -> std::result::Result<(Vec<NamedProgram>, u64), String> {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !dir.join(n).exists())
        .collect();
    if !missing.is_empty() {
        let mut b = bpf()?;
        load_programs(&mut b, &missing)?;
        for name in &missing {
            program(&mut b, name)?
                .pin(dir.join(name))
                .map_err(|e| format!("pin the program {name}: {}", chain(&e)))?;
        }
    }
    let mut out = Vec::new();
    for name in names {
        let p = SchedClassifier::from_pin(dir.join(name))
            .map_err(|e| format!("open the pinned program {name}: {}", chain(&e)))?;
        out.push((*name, p));
    }
    Ok((out, missing.len() as u64))
}

/// The id of the program pinned as `name` in `dir`, when there is one.
pub(crate) fn pinned_program_id(dir: &Path, name: &str) -> Option<u32> {
    let path = dir.join(name);
    if !path.exists() {
        return None;
    }
    SchedClassifier::from_pin(&path)
        .ok()?
        .info()
        .ok()
        .map(|i| i.id())
}

/// Removes `k` from a hash map; a key that is not there is fine.
pub(crate) fn remove_key<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    k: &K,
) -> std::result::Result<(), String> {
    match map.remove(k) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(chain(&e)),
    }
}

/// Attaches `p` to `dev`'s ingress (in the calling thread's namespace), after whatever runs
/// there already: a TCX link, pinned in `pin`, else returned for this process to hold; or in
/// [`TcMode::Filter`] a filter, which stays on the device without either.
pub(crate) fn attach(
    p: &mut SchedClassifier,
    dev: &str,
    pin: Option<&Path>,
) -> std::result::Result<Option<FdLink>, String> {
    if tc_mode() == TcMode::Filter {
        // clsact may be there already (an earlier filter, another tool's).
        match aya::programs::tc::qdisc_add_clsact(dev) {
            Ok(()) => {}
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(format!("add the clsact qdisc: {}", chain(&e))),
        }
        // One filter of ours per device: one an earlier process left (without pins nothing
        // finds it again) goes first.
        if let Some(name) = p
            .info()
            .ok()
            .and_then(|i| i.name_as_str().map(str::to_string))
        {
            let _ = aya::programs::tc::qdisc_detach_program(dev, TcAttachType::Ingress, &name);
        }
        let id = p
            .attach_with_options(
                dev,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions {
                    priority: FILTER_PRIORITY,
                    ..NlOptions::default()
                }),
            )
            .map_err(|e| chain(&e))?;
        let link = p.take_link(id).map_err(|e| chain(&e))?;
        // Dropping the link would remove the filter: it is to outlive this process.
        std::mem::forget(link);
        if let Some(dir) = pin {
            let marker = link_pin(dir, dev);
            if !marker.is_dir() {
                remove_link_pin(&marker);
                std::fs::create_dir(&marker)
                    .map_err(|e| format!("mark {}: {e}", marker.display()))?;
            }
        }
        return Ok(None);
    }
    let id = p
        .attach_with_options(
            dev,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| chain(&e))?;
    let link = p.take_link(id).map_err(|e| chain(&e))?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e| format!("not a TCX link: {}", chain(&e)))?;
    match pin {
        Some(dir) => {
            let path = link_pin(dir, dev);
            // A pin of an earlier device of the same name holds a defunct link.
            if path.exists() {
                if let Ok(old) = PinnedLink::from_pin(&path) {
                    let _ = old.unpin();
                } else {
                    remove_link_pin(&path);
                }
            }
            fd.pin(&path)
                .map_err(|e| format!("pin the link at {}: {}", path.display(), chain(&e)))?;
            Ok(None)
        }
        None => Ok(Some(fd)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(kind: &str, name: Option<&str>, id: Option<u32>) -> TcMessage {
        let mut f = TcMessage::default();
        let mut opts = Vec::new();
        if let Some(n) = name {
            opts.push(TcOption::Bpf(TcFilterBpfOption::ProgName(n.into())));
        }
        if let Some(i) = id {
            opts.push(TcOption::Bpf(TcFilterBpfOption::ProgId(i)));
        }
        f.attributes = vec![TcAttribute::Kind(kind.into()), TcAttribute::Options(opts)];
        f
    }

    #[test]
    fn filters_are_found_by_program_name_in_either_spelling() {
        let prog = "na_fp_veth_in";
        assert_eq!(
            bpf_program(&filter("bpf", Some(prog), Some(42)), prog),
            Some(42)
        );
        let tc_named = filter("bpf", Some("na_fp_veth_in:[43]"), Some(43));
        assert_eq!(bpf_program(&tc_named, prog), Some(43));
        // Another program, another kind, a filter without options or without an id.
        assert_eq!(
            bpf_program(&filter("bpf", Some("other"), Some(44)), prog),
            None
        );
        assert_eq!(
            bpf_program(&filter("u32", Some(prog), Some(45)), prog),
            None
        );
        assert_eq!(bpf_program(&filter("bpf", None, Some(46)), prog), None);
        assert_eq!(bpf_program(&filter("bpf", Some(prog), None), prog), None);
        assert_eq!(bpf_program(&TcMessage::default(), prog), None);
    }
}
