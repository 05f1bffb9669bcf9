//! What the crate's two sets of tc programs share (the overlay fast path, `fastpath`, and the
//! routing mesh's shortcut, `meshpath`): loading an object with its maps pinned, finding a
//! program in it, asking a device whether it runs a program on a given map, and attaching one as
//! a TCX link, pinned or held.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, MapError};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions};
use aya::{Ebpf, EbpfLoader};

/// An error with its sources, one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

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

/// Whether `dev` (in the calling thread's namespace) runs `prog` on the map `map_id` at its
/// TCX ingress.
pub(crate) fn runs(dev: &str, prog: &str, map_id: u32) -> std::result::Result<bool, String> {
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

/// The pin of the link on device `dev` in a pin directory.
pub(crate) fn link_pin(dir: &Path, dev: &str) -> PathBuf {
    dir.join(format!("link_{dev}"))
}

/// Removes the link pins in `dir` of devices not in `live` (their links detach); returns how
/// many went.
pub(crate) fn remove_stale_link_pins<'a>(
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
            let _ = std::fs::remove_file(e.path());
            n += 1;
        }
    }
    n
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

/// Attaches `p` to `dev`'s TCX ingress (in the calling thread's namespace), after whatever runs
/// there already; the link is pinned in `pin`, else returned for this process to hold.
pub(crate) fn attach(
    p: &mut SchedClassifier,
    dev: &str,
    pin: Option<&Path>,
) -> std::result::Result<Option<FdLink>, String> {
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
                    let _ = std::fs::remove_file(&path);
                }
            }
            fd.pin(&path)
                .map_err(|e| format!("pin the link at {}: {}", path.display(), chain(&e)))?;
            Ok(None)
        }
        None => Ok(Some(fd)),
    }
}
