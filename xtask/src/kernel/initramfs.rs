//! The guest's initramfs: static busybox (shell and tools of `/init`), kmod with its shared
//! libraries (the kernel's `/sbin/modprobe`, for the modules it loads on demand), the virtio and 9p
//! modules that must load before the shares mount, and `/init`.
//!
//! The archive (cpio newc, uncompressed: no decompression under TCG) is written in memory and
//! cached under a hash of its bytes, i.e. keyed on all of its inputs.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::debian::Kernel;
use crate::util::output;

const BUSYBOX: &str = "/bin/busybox";

/// Modules needed to mount the 9p shares; loaded with busybox `insmod` in dependency order.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// The guest's `/init`. The host writes `/results/run.sh`, which sets `PRELOAD` and defines
/// `suites`, a list of `suite ID NAME COMMAND...` calls; each command runs chrooted into the
/// host's root.
const INIT: &str = r#"#!/bin/busybox sh
# netagent kernel lab: the guest's /init (see xtask/src/kernel.rs).
/bin/busybox --install -s /bin
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
uptime() { cut -d' ' -f1 /proc/uptime; }
say() { echo "kernel-lab: $*"; }
halt() { sync; poweroff -f; sleep 10; }
fail() { say "FAILED: $*"; echo "$*" >/results/failed 2>/dev/null; halt; }
say "init started at $(uptime)s"
for m in $(cat /boot-modules/order); do
    insmod "/boot-modules/$m" || fail "insmod $m"
done
opts=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$opts" results /results || fail "mount the results share"
mount -t 9p -o "$opts,ro,cache=loose" kmods /lib/modules || fail "mount the module tree"
mount -t 9p -o "$opts,ro,cache=loose" hostroot /host || fail "mount the host's root"
say "mounted at $(uptime)s"
suite() {
    id=$1; name=$2; shift 2
    say "suite $name: running"
    t0=$(uptime)
    chroot /host "$@" </dev/null >"/results/$id.out" 2>&1
    rc=$?
    echo "$t0 $(uptime)" >"/results/$id.time"
    # The lab keeps the logs of failed tests in $TMPDIR, which dies with the guest.
    if [ "$rc" != 0 ] && [ -n "$(ls /host/run/tmp/netagent-lab 2>/dev/null)" ]; then
        cp -r /host/run/tmp/netagent-lab "/results/$id.lab-logs"
    fi
    rm -rf /host/run/tmp/netagent-lab
    echo "$rc" >"/results/$id.rc"
    say "suite $name: exit $rc"
}
. /results/run.sh || fail "read run.sh"
ip link set lo up
# The first (slowest: crypto self-tests) loads in parallel with the others.
set -- $PRELOAD
if [ $# -gt 0 ]; then
    (modprobe "$1" || say "warning: modprobe $1 failed") &
    shift
    if [ $# -gt 0 ] && ! modprobe -a "$@"; then
        for m in "$@"; do modprobe "$m" || say "warning: modprobe $m failed"; done
    fi
    wait
fi
say "modules loaded at $(uptime)s"
mount -t proc proc /host/proc || fail "mount /proc in the chroot"
mount -t sysfs sysfs /host/sys || fail "mount /sys in the chroot"
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup || fail "mount cgroup2 in the chroot"
mount -t bpf bpf /host/sys/fs/bpf 2>/dev/null
mount -t devtmpfs devtmpfs /host/dev || fail "mount /dev in the chroot"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount -t tmpfs tmpfs /host/run || fail "mount /run in the chroot"
# Scratch space is TMPDIR=/run/tmp: the host's /tmp stays visible (read-only), so a checkout
# or target directory under /tmp works in the guest too.
mkdir -p /host/run/tmp && chmod 1777 /host/run/tmp || fail "make /run/tmp in the chroot"
uptime >/results/ready
say "ready at $(uptime)s"
suites
dmesg >/results/dmesg.txt
echo done >/results/done
say "done at $(uptime)s"
halt
"#;

/// Builds (or finds in the cache) the initramfs for `kernel`; returns its path.
pub fn build(kernel: &Kernel) -> Result<PathBuf> {
    let mut a = Cpio::default();
    for d in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "host",
        "results",
        "lib",
        "lib/modules",
        "boot-modules",
        "etc",
        "tmp",
        "run",
    ] {
        a.dir(d);
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    a.char_dev("dev/console", 0o600, 5, 1);
    a.file("init", 0o755, INIT.as_bytes());
    let busybox = read(Path::new(BUSYBOX))?;
    if elf_is_dynamic(&busybox) {
        bail!(
            "{BUSYBOX} is dynamically linked; the initramfs needs the static one: \
             apt-get install busybox-static"
        );
    }
    a.file("bin/busybox", 0o755, &busybox);

    // kmod, run as /sbin/modprobe by the kernel, with its shared libraries at the paths ldd
    // resolves them to.
    let kmod = Path::new("/bin/kmod");
    a.file("bin/kmod", 0o755, &read(kmod)?);
    a.symlink("sbin/modprobe", "/bin/kmod");
    for lib in shared_libraries(kmod)? {
        let rel = lib
            .strip_prefix("/")
            .with_context(|| format!("ldd printed a relative path {}", lib.display()))?;
        let mut parent = PathBuf::new();
        for c in rel.parent().into_iter().flat_map(|p| p.components()) {
            parent.push(c);
            a.dir(&parent.to_string_lossy());
        }
        a.file(&rel.to_string_lossy(), 0o755, &read(&lib)?);
    }

    let order = boot_module_order(kernel, BOOT_MODULES)?;
    for rel in &order {
        let name = file_name(rel);
        a.file(
            &format!("boot-modules/{name}"),
            0o644,
            &read(&kernel.modules().join(rel))?,
        );
    }
    let names: Vec<&str> = order.iter().map(|r| file_name(r)).collect();
    a.file(
        "boot-modules/order",
        0o644,
        format!("{}\n", names.join("\n")).as_bytes(),
    );
    let bytes = a.finish();

    let dir = kernel.root.join("initramfs");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("initramfs-{:016x}.cpio", fnv1a(&bytes)));
    if !path.is_file() {
        let tmp = dir.join(format!(".tmp-{}", std::process::id()));
        fs::write(&tmp, &bytes).with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("move {}", tmp.display()))?;
        eprintln!(
            "test-kernel: built {} ({} KiB)",
            path.display(),
            bytes.len() / 1024
        );
        prune(&dir, &path);
    }
    Ok(path)
}

/// Removes initramfs images of earlier inputs that have not been used for a day.
fn prune(dir: &Path, keep: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 24 * 3600);
        if p != keep && old {
            let _ = fs::remove_file(p);
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path)
        .with_context(|| format!("read {} (missing? run `cargo xtask setup`)", path.display()))
}

fn file_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

/// The shared libraries (and the dynamic loader) a dynamically linked program needs, per ldd.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = output(Command::new("ldd").arg(program))
        .with_context(|| format!("ldd {} failed", program.display()))?;
    let mut libs = BTreeSet::new();
    for line in out.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            libs.insert(PathBuf::from(path));
        }
    }
    if libs.is_empty() {
        bail!("ldd {} found no libraries: {out}", program.display());
    }
    Ok(libs.into_iter().collect())
}

/// `wanted` and their dependencies (per the kernel's modules.dep) as paths relative to the
/// modules directory, in load order. Built-in modules are skipped.
pub fn boot_module_order(kernel: &Kernel, wanted: &[&str]) -> Result<Vec<String>> {
    let dep_file = kernel.modules().join("modules.dep");
    let deps = fs::read_to_string(&dep_file)
        .with_context(|| format!("read {} (was depmod run?)", dep_file.display()))?;
    let builtin = fs::read_to_string(kernel.modules().join("modules.builtin")).unwrap_or_default();
    let mut order: Vec<String> = Vec::new();
    for want in wanted {
        if builtin.lines().any(|l| module_name(l) == normalize(want)) {
            continue;
        }
        let (path, needs) = deps
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(path, _)| module_name(path) == normalize(want))
            .with_context(|| {
                format!(
                    "module {want} is not in {} (not built for this kernel?)",
                    dep_file.display()
                )
            })?;
        // modules.dep lists the full closure, the modules to load first last.
        for m in needs.split_whitespace().rev().chain([path]) {
            if !order.iter().any(|o| o == m) {
                order.push(m.to_string());
            }
        }
    }
    Ok(order)
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/fs/9p/9p.ko` -> `9p`.
fn module_name(path: &str) -> String {
    let file = file_name(path.trim());
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

/// Whether an ELF64 executable asks for a dynamic loader (has a PT_INTERP program header).
fn elf_is_dynamic(elf: &[u8]) -> bool {
    let at = |o: usize, n: usize| elf.get(o..o + n);
    let u64_at = |o| at(o, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let u16_at = |o| at(o, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..usize::from(count))
        .any(|i| at(phoff as usize + i * usize::from(size), 4) == Some(&3u32.to_le_bytes()[..]))
}

/// FNV-1a, 64 bit: a stable content hash for cache keys.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A cpio archive in the "newc" format the kernel unpacks, built in memory. Owners are root,
/// times zero, so equal inputs give equal bytes.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        if self.dirs.insert(name.to_string()) {
            self.entry(name, 0o040755, (0, 0), &[]);
        }
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
    }

    fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) {
        self.entry(name, 0o020000 | perm, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut a = Cpio::default();
        a.dir("bin");
        a.file("bin/x", 0o755, b"hello");
        let bytes = a.finish();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // A directory, a file and the trailer.
        assert_eq!(text.matches("070701").count(), 3);
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        // This test binary is dynamically linked (glibc); a truncated header is not.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_is_dynamic(&me));
        assert!(!elf_is_dynamic(&me[..16]));
    }

    #[test]
    fn module_names_are_normalized() {
        assert_eq!(
            module_name("kernel/crypto/ghash-generic.ko"),
            "ghash_generic"
        );
        assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
    }
}
