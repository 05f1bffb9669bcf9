//! Loading the programs, attaching them once to the node's task cgroup, and the pins that let a
//! restarted agent adopt maps and links instead of creating new ones.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::{Ebpf, EbpfLoader};
use ebpf_common::{CNT_MAP, PROGRAMS, REV_MAP, SVC_MAP, SvcKey, SvcValue};

use crate::{Error, Result};

/// The object built from crate `ebpf` by build.rs.
static OBJECT: &[u8] = ebpf_objects::LB;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

pub(crate) type SvcMap = HashMap<MapData, SvcKey, SvcValue>;
pub(crate) type CntMap = PerCpuArray<MapData, u64>;

/// Every map the programs use and its pin name (the map's name in the object).
const MAPS: [&str; 3] = [SVC_MAP, REV_MAP, CNT_MAP];

/// The service map, opened from its pin (created and pinned on first use; the reverse map too,
/// which only the programs use).
pub(crate) struct Loaded {
    pub svc: SvcMap,
    /// The programs' counters (see `ebpf_common::Counter`).
    pub cnt: CntMap,
    /// Programs newly attached by this call (false: every link was adopted from its pin).
    pub attached: usize,
}

/// An error with its sources, one line.
pub(crate) use ebpf_objects::chain;

fn other(what: impl Into<String>) -> impl FnOnce(String) -> Error {
    let what = what.into();
    move |e| Error::Other(format!("{what}: {e}"))
}

fn fs_magic(path: &Path) -> io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// The cgroup the programs attach to: a cgroup2 directory, never the root of a cgroup2 mount
/// (attaching there would balance every process of the machine, not only the node's tasks).
pub(crate) fn check_cgroup(cgroup: Option<&Path>) -> Result<PathBuf> {
    let Some(cg) = cgroup else {
        return Err(Error::Other(
            "the eBPF load balancer needs the node's task cgroup (Config.cgroup is not set)".into(),
        ));
    };
    let magic = fs_magic(cg).map_err(|e| Error::Io(format!("cgroup {}", cg.display()), e))?;
    if magic != CGROUP2_SUPER_MAGIC {
        return Err(Error::Other(format!(
            "{} is not a cgroup2 directory: the eBPF load balancer attaches to the node's task \
             cgroup on cgroup2",
            cg.display()
        )));
    }
    let canon = cg
        .canonicalize()
        .map_err(|e| Error::Io(format!("cgroup {}", cg.display()), e))?;
    let here = std::fs::metadata(&canon)
        .map_err(|e| Error::Io(format!("cgroup {}", canon.display()), e))?;
    let parent_dev = canon
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.dev());
    if parent_dev != Some(here.dev()) {
        return Err(Error::Other(format!(
            "refusing to attach to {}: it is the root of a cgroup2 mount, which holds every \
             process of the machine; give the node's task cgroup instead",
            canon.display()
        )));
    }
    Ok(canon)
}

/// The pin directory: on a bpffs, created if missing.
pub(crate) fn check_pin_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Io(format!("create pin directory {}", dir.display()), e))?;
    let magic =
        fs_magic(dir).map_err(|e| Error::Io(format!("pin directory {}", dir.display()), e))?;
    if magic != BPF_FS_MAGIC {
        return Err(Error::Other(format!(
            "pin directory {} is not on a bpf filesystem (mount -t bpf bpf DIR)",
            dir.display()
        )));
    }
    Ok(())
}

/// The hooks whose programs bump the counters map (the forward translation).
const COUNTING_HOOKS: [&str; 3] = ["connect4", "sendmsg4", "connect6"];

fn link_pin(dir: &Path, hook: &str) -> PathBuf {
    dir.join(format!("link_{hook}"))
}

/// The ids of the maps each loaded program uses, by program id (read once, only when there are
/// pinned links to check).
fn program_maps() -> BTreeMap<u32, Option<Vec<u32>>> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .map(|p| (p.id(), p.map_ids().ok().flatten()))
        .collect()
}

/// Whether the program behind a pinned link uses the counters map `cnt_id`: false for a
/// program of an older layout (pinned by an earlier netagent), which must be replaced. When the
/// kernel cannot say, the link is kept.
fn current_layout(
    link: &FdLink,
    cnt_id: u32,
    progs: &mut Option<BTreeMap<u32, Option<Vec<u32>>>>,
) -> bool {
    let Ok(info) = link.info() else {
        return true;
    };
    let progs = progs.get_or_insert_with(program_maps);
    match progs.get(&info.program_id()) {
        Some(Some(ids)) => ids.contains(&cnt_id),
        _ => true,
    }
}

/// Opens (or creates and pins) the maps, and attaches each program unless its pinned link is
/// already there and runs a program of this layout. Links of an older layout (programs without
/// the counters map) are replaced: the new program is attached before the old link goes, so no
/// connection sees the hook empty (while both run, the second sees a backend, not a VIP).
pub(crate) fn load(pin_dir: &Path, cgroup: &Path) -> Result<Loaded> {
    let mut loader = EbpfLoader::new();
    let pins: Vec<(&str, PathBuf)> = MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
    for (name, pin) in &pins {
        loader.map_pin_path(name, pin.as_path());
    }
    let mut bpf = loader.load(OBJECT).map_err(|e| {
        Error::Other(format!(
            "load the eBPF object (maps pinned in {}): {}",
            pin_dir.display(),
            chain(&e)
        ))
    })?;
    let cnt = bpf
        .take_map(CNT_MAP)
        .ok_or_else(|| Error::Other(format!("map {CNT_MAP} missing from the object")))?;
    let cnt_id = match &cnt {
        aya::maps::Map::PerCpuArray(m) => m
            .info()
            .map_err(|e| Error::Other(format!("{CNT_MAP}: {}", chain(&e))))?
            .id(),
        _ => {
            return Err(Error::Other(format!(
                "map {CNT_MAP} in the object is not a per-CPU array"
            )));
        }
    };
    let mut progs = None;
    let mut attached = 0;
    let mut cgroup_file = None;
    for (prog, hook) in PROGRAMS {
        let pin = link_pin(pin_dir, hook);
        let mut old: Option<FdLink> = None;
        if pin.exists() {
            match PinnedLink::from_pin(&pin) {
                Ok(link) => {
                    // The pin keeps the link (and the program attached); this is one more fd.
                    let link = FdLink::from(link);
                    // Only the hooks that count use the counters map: the others (reverse
                    // translation) have nothing to show their layout by, and are adopted.
                    if !COUNTING_HOOKS.contains(&hook) || current_layout(&link, cnt_id, &mut progs)
                    {
                        // Adopted: nothing to do.
                        continue;
                    }
                    tracing::info!(hook, "replacing a program of an older layout");
                    old = Some(link);
                }
                Err(e) => {
                    tracing::warn!(pin = %pin.display(), "stale link pin, attaching again: {e}");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        if cgroup_file.is_none() {
            cgroup_file = Some(
                File::open(cgroup)
                    .map_err(|e| Error::Io(format!("open cgroup {}", cgroup.display()), e))?,
            );
        }
        let cg = cgroup_file.as_ref().expect("opened above");
        let link = attach_one(&mut bpf, prog, cg)
            .map_err(other(format!("{hook} on {}", cgroup.display())))?;
        if let Some(old) = old {
            // The new program runs now; the old link goes with its pin and our fd.
            std::fs::remove_file(&pin)
                .map_err(|e| Error::Io(format!("remove the old link pin {}", pin.display()), e))?;
            drop(old);
        }
        link.pin(&pin).map_err(|e| {
            Error::Other(format!(
                "pin the {hook} link at {}: {}",
                pin.display(),
                chain(&e)
            ))
        })?;
        attached += 1;
    }
    let svc = bpf
        .take_map(SVC_MAP)
        .ok_or_else(|| Error::Other(format!("map {SVC_MAP} missing from the object")))?;
    Ok(Loaded {
        svc: HashMap::try_from(svc).map_err(|e| Error::Other(format!("{SVC_MAP}: {e}")))?,
        cnt: PerCpuArray::try_from(cnt).map_err(|e| Error::Other(format!("{CNT_MAP}: {e}")))?,
        attached,
    })
}

/// Loads and attaches one program; the caller pins the link.
fn attach_one(bpf: &mut Ebpf, prog: &str, cgroup: &File) -> std::result::Result<FdLink, String> {
    let p: &mut CgroupSockAddr = bpf
        .program_mut(prog)
        .ok_or_else(|| format!("program {prog} missing from the object"))?
        .try_into()
        .map_err(|e| format!("{prog}: {}", chain(&e)))?;
    p.load()
        .map_err(|e| format!("load {prog}: {}", chain(&e)))?;
    // A bpf_link (Linux >= 5.7) is always a multi attachment: other programs in the node's
    // cgroups keep running. (BPF_F_ALLOW_MULTI itself is invalid for links.)
    let id = p
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(|e| format!("attach {prog}: {}", chain(&e)))?;
    let link = p
        .take_link(id)
        .map_err(|e| format!("{prog}: {}", chain(&e)))?;
    link.try_into().map_err(|e| {
        format!(
            "{prog}: the kernel attached without a bpf_link: {}",
            chain(&e)
        )
    })
}

/// Detaches the programs and removes every pin (maps included). What is already gone is fine.
pub(crate) fn remove_pins(pin_dir: &Path) -> Result<u64> {
    let mut writes = 0;
    for (_, hook) in PROGRAMS {
        let pin = link_pin(pin_dir, hook);
        if !pin.exists() {
            continue;
        }
        match PinnedLink::from_pin(&pin) {
            Ok(link) => {
                // Unpinned and closed: the last reference goes and the program detaches.
                let fd = link
                    .unpin()
                    .map_err(|e| Error::Io(format!("unpin {}", pin.display()), e))?;
                drop(fd);
            }
            Err(_) => std::fs::remove_file(&pin)
                .map_err(|e| Error::Io(format!("remove {}", pin.display()), e))?,
        }
        writes += 1;
    }
    for map in MAPS {
        let pin = pin_dir.join(map);
        match std::fs::remove_file(&pin) {
            Ok(()) => writes += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Io(format!("remove {}", pin.display()), e)),
        }
    }
    Ok(writes)
}

/// Whether this kernel can run the programs: loads them (not attached, maps not pinned) and
/// unloads them again. The error names what is missing.
pub(crate) fn probe() -> Result<()> {
    let mut bpf = Ebpf::load(OBJECT).map_err(|e| {
        Error::Unsupported(format!(
            "eBPF maps for the socket load balancer ({}; needs root or CAP_BPF, and a kernel \
             with CONFIG_BPF_SYSCALL)",
            chain(&e)
        ))
    })?;
    for (prog, hook) in PROGRAMS {
        let p: &mut CgroupSockAddr = bpf
            .program_mut(prog)
            .ok_or_else(|| Error::Other(format!("program {prog} missing from the object")))?
            .try_into()
            .map_err(|e| Error::Other(format!("{prog}: {e}")))?;
        p.load().map_err(|e| {
            Error::Unsupported(format!(
                "cgroup/{hook} eBPF programs ({}; needs CONFIG_CGROUP_BPF and Linux >= 5.18 for \
                 bpf_set_retval)",
                chain(&e)
            ))
        })?;
    }
    Ok(())
}
