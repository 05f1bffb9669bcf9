//! Debian bookworm's kernels (its own 6.1 and its 6.12, see [`Series`]): found with apt-cache,
//! fetched with `apt-get download`, unpacked
//! with `dpkg-deb -x` (never installed) into `~/.cache/netagent/kernel/`, modules indexed with
//! `depmod -b`. A second run finds everything in the cache and downloads nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{cache_dir, exec, output};

/// A kernel series of Debian bookworm the lab boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Series {
    /// bookworm's own kernel (`linux-image-6.1.0-N-amd64`): IPVS, ESP and GCM, no TCX, so the
    /// overlay fast path and the mesh's shortcut stay off and their fallbacks are tested.
    V6_1,
    /// bookworm's 6.12 (`linux-image-6.12.N+deb12-amd64`, the series Debian 13 ships): ESP with
    /// TCX, so the fast path and the shortcut run together with encryption.
    V6_12,
}

impl Series {
    /// What reports and suite names show.
    pub fn label(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Series::V6_1 => "linux-image-6.1.0-",
            Series::V6_12 => "linux-image-6.12.",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Series::V6_1 => "-amd64",
            Series::V6_12 => "+deb12-amd64",
        }
    }

    /// apt-cache's pattern for the series' packages (the generic flavour only: no cloud, no rt).
    fn pattern(self) -> &'static str {
        match self {
            Series::V6_1 => r"^linux-image-6\.1\.0-[0-9]+-amd64$",
            Series::V6_12 => r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
        }
    }

    /// The number that orders the series' packages (the ABI of 6.1.0-N, the patch level of
    /// 6.12.N), if `package` is one of them.
    fn number(self, package: &str) -> Option<u32> {
        package
            .strip_prefix(self.prefix())?
            .strip_suffix(self.suffix())?
            .parse()
            .ok()
    }
}

/// An unpacked Debian kernel package.
pub struct Kernel {
    /// The package, e.g. `linux-image-6.1.0-56-amd64`.
    pub package: String,
    /// The package version, e.g. `6.1.192-2`.
    pub version: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The unpacked package (boot/, lib/modules/).
    pub root: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    /// The uncompressed kernel (`vmlinux`, an ELF with a PVH entry point) qemu can boot directly,
    /// which under TCG is ~3 s faster than booting the compressed bzImage.
    pub fn vmlinux(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinux-{}", self.release))
    }

    /// What qemu's `-kernel` gets: `vmlinux` if it could be extracted, else `vmlinuz`.
    pub fn boot_image(&self) -> PathBuf {
        let vmlinux = self.vmlinux();
        if vmlinux.is_file() {
            return vmlinux;
        }
        match extract_vmlinux(&self.vmlinuz(), &vmlinux) {
            Ok(()) => vmlinux,
            Err(e) => {
                eprintln!("test-kernel: booting the compressed kernel ({e:#})");
                self.vmlinuz()
            }
        }
    }

    /// `lib/modules` of the unpacked package (it holds one directory, `<release>`).
    pub fn modules_base(&self) -> PathBuf {
        self.root.join("lib/modules")
    }

    pub fn modules(&self) -> PathBuf {
        self.modules_base().join(&self.release)
    }
}

/// Marks a completely unpacked and indexed tree.
const COMPLETE: &str = ".netagent-complete";

fn kernel_cache() -> PathBuf {
    cache_dir().join("kernel")
}

/// The newest bookworm kernel of `series`, unpacked in the cache (fetched first if it is not
/// there). If it cannot be fetched (offline), the newest one of the series unpacked before is
/// used.
pub fn kernel(series: Series) -> Result<Kernel> {
    let cache = kernel_cache();
    fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
    let fetched = newest_available(series).and_then(|(package, version)| {
        let release = package
            .strip_prefix("linux-image-")
            .context("unexpected kernel package name")?
            .to_string();
        let root = cache.join(format!("{package}_{}", version.replace(':', "%3a")));
        let kernel = Kernel {
            package,
            version,
            release,
            root,
        };
        if !kernel.root.join(COMPLETE).exists() {
            let deb = download(&cache, &kernel)?;
            unpack(&deb, &kernel)?;
            remove_others(&cache, &kernel, series);
        }
        Ok(kernel)
    });
    match fetched {
        Ok(k) => Ok(k),
        Err(e) => match newest_cached(&cache, series) {
            Some(k) => {
                eprintln!(
                    "test-kernel: {e:#}; using the cached {} {}",
                    k.package, k.version
                );
                Ok(k)
            }
            None => Err(e),
        },
    }
}

/// Removes the packages and trees of older kernels of the series once a newer one is unpacked.
fn remove_others(cache: &Path, keep: &Kernel, series: Series) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    let of_series = |name: &str| {
        name.split_once('_')
            .is_some_and(|(package, _)| series.number(package).is_some())
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if of_series(&name) && e.path() != keep.root {
            eprintln!("test-kernel: removing the older {name}");
            let _ = fs::remove_dir_all(e.path());
        }
    }
    if let Ok(debs) = fs::read_dir(cache.join("debs")) {
        let current = format!("{}_{}", keep.package, keep.version.replace(':', "%3a"));
        for e in debs.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if of_series(&name) && !name.starts_with(&current) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// The series' package with the highest number that apt knows, and its candidate version. Runs
/// `apt-get update` only if apt's lists know none.
fn newest_available(series: Series) -> Result<(String, String)> {
    if let Some(found) = newest_in_lists(series)? {
        return Ok(found);
    }
    eprintln!(
        "test-kernel: apt knows no {} package; running apt-get update",
        series.pattern()
    );
    exec(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context(
        "apt-get update failed: the machine must reach Debian's mirrors to fetch the kernel",
    )?;
    newest_in_lists(series)?.with_context(|| {
        format!(
            "apt knows no {} package even after apt-get update: is bookworm (or \
             bookworm-security) in /etc/apt/sources.list?",
            series.pattern()
        )
    })
}

fn newest_in_lists(series: Series) -> Result<Option<(String, String)>> {
    let found =
        output(Command::new("apt-cache").args(["search", "--names-only", series.pattern()]))
            .context("apt-cache search failed")?;
    let newest = found
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| Some((series.number(name)?, name.to_string())))
        .max();
    let Some((_, package)) = newest else {
        return Ok(None);
    };
    let shown = output(Command::new("apt-cache").args(["show", "--no-all-versions", &package]))
        .with_context(|| format!("apt-cache show {package} failed"))?;
    let version = shown
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("apt-cache show {package} printed no Version"))?;
    Ok(Some((package, version)))
}

/// The most recently unpacked complete tree of the series in the cache.
fn newest_cached(cache: &Path, series: Series) -> Option<Kernel> {
    let mut trees: Vec<(std::time::SystemTime, Kernel)> = fs::read_dir(cache)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (package, version) = name.split_once('_')?;
            series.number(package)?;
            let release = package.strip_prefix("linux-image-")?.to_string();
            let done = fs::metadata(e.path().join(COMPLETE)).ok()?;
            Some((
                done.modified().ok()?,
                Kernel {
                    package: package.to_string(),
                    version: version.replace("%3a", ":"),
                    release,
                    root: e.path(),
                },
            ))
        })
        .collect();
    trees.sort_by_key(|(t, _)| *t);
    trees.pop().map(|(_, k)| k)
}

/// The package file in `<cache>/debs/`, downloaded unless it is there.
fn download(cache: &Path, k: &Kernel) -> Result<PathBuf> {
    let debs = cache.join("debs");
    let file = format!("{}_{}_amd64.deb", k.package, k.version.replace(':', "%3a"));
    let deb = debs.join(&file);
    if deb.is_file() {
        return Ok(deb);
    }
    let tmp = cache.join(format!("download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let guard = RemoveOnDrop(tmp.clone());
    eprintln!("test-kernel: downloading {} {}", k.package, k.version);
    exec(
        Command::new("apt-get")
            // apt's sandbox user cannot write to root's cache; the download runs as root.
            .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
            .arg(format!("{}={}", k.package, k.version))
            .current_dir(&tmp),
    )
    .with_context(|| {
        format!(
            "apt-get download {}={} failed (offline? run `apt-get update` and retry)",
            k.package, k.version
        )
    })?;
    let got = fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", tmp.display()))?;
    fs::create_dir_all(&debs).with_context(|| format!("create {}", debs.display()))?;
    fs::rename(&got, &deb)
        .with_context(|| format!("move {} to {}", got.display(), deb.display()))?;
    drop(guard);
    Ok(deb)
}

/// `dpkg-deb -x`, decompress modules, `depmod -b`; into a temporary directory renamed into place
/// when complete, so an interrupted or concurrent run never sees half a tree.
fn unpack(deb: &Path, k: &Kernel) -> Result<()> {
    let parent = k.root.parent().context("kernel tree has no parent")?;
    let tmp = parent.join(format!(".unpack-{}-{}", k.release, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let guard = RemoveOnDrop(tmp.clone());
    eprintln!("test-kernel: unpacking {}", deb.display());
    exec(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tmp))
        .with_context(|| format!("dpkg-deb -x {} failed", deb.display()))?;
    let staged = Kernel {
        package: k.package.clone(),
        version: k.version.clone(),
        release: k.release.clone(),
        root: tmp.clone(),
    };
    if !staged.vmlinuz().is_file() {
        bail!(
            "{} holds no {}: not a kernel image package?",
            deb.display(),
            staged.vmlinuz().display()
        );
    }
    let n = decompress_modules(&staged.modules())?;
    if n > 0 {
        eprintln!("test-kernel: decompressed {n} modules");
    }
    exec(Command::new("depmod").arg("-b").arg(&tmp).arg(&k.release))
        .context("depmod failed on the unpacked kernel")?;
    fs::write(tmp.join(COMPLETE), format!("{} {}\n", k.package, k.version))?;
    match fs::rename(&tmp, &k.root) {
        Ok(()) => {}
        // Another run finished first: use its tree.
        Err(_) if k.root.join(COMPLETE).exists() => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("move {} to {}", tmp.display(), k.root.display()));
        }
    }
    drop(guard);
    Ok(())
}

/// Decompresses `.ko.xz`, `.ko.zst` and `.ko.gz` in place (kmod and busybox in the guest then
/// need no decompressor). Returns how many there were.
fn decompress_modules(dir: &Path) -> Result<usize> {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let path = e?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.to_string_lossy();
            let tool: &[&str] = if name.ends_with(".ko.xz") {
                &["xz", "-d", "-q"]
            } else if name.ends_with(".ko.zst") {
                &["zstd", "-d", "-q", "--rm"]
            } else if name.ends_with(".ko.gz") {
                &["gzip", "-d", "-q"]
            } else {
                continue;
            };
            let status = Command::new(tool[0])
                .args(&tool[1..])
                .arg(&path)
                .status()
                .with_context(|| format!("could not run {} (run `cargo xtask setup`)", tool[0]))?;
            if !status.success() {
                bail!("{} {} failed: {status}", tool.join(" "), path.display());
            }
            count += 1;
        }
    }
    Ok(count)
}

/// Extracts the ELF kernel from a bzImage (as the kernel's scripts/extract-vmlinux does) if it
/// has a PVH entry point; written to a temporary file renamed into place.
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let image = fs::read(bzimage).with_context(|| format!("read {}", bzimage.display()))?;
    let formats: [(&[u8], &[&str]); 3] = [
        (b"\xfd7zXZ\x00", &["xz", "-dc", "--single-stream"]),
        (b"\x28\xb5\x2f\xfd", &["zstd", "-dcq"]),
        (b"\x1f\x8b\x08\x00", &["gzip", "-dcq"]),
    ];
    let (offset, tool) = formats
        .iter()
        .find_map(|(magic, tool)| {
            image
                .windows(magic.len())
                .position(|w| w == *magic)
                .map(|i| (i, *tool))
        })
        .context("no xz, zstd or gzip payload found in the bzImage")?;
    let payload = out.with_extension(format!("payload-{}", std::process::id()));
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        fs::write(&payload, &image[offset..])?;
        // Trailing data after the stream makes some decompressors complain; what counts is
        // whether an ELF came out.
        let _ = Command::new(tool[0])
            .args(&tool[1..])
            .arg(&payload)
            .stdout(fs::File::create(&tmp)?)
            .stderr(std::process::Stdio::null())
            .status()
            .with_context(|| format!("could not run {}", tool[0]))?;
        let elf = fs::read(&tmp)?;
        if !has_pvh_entry(&elf) {
            bail!("the kernel ELF has no PVH entry point");
        }
        fs::rename(&tmp, out)?;
        Ok(())
    })();
    let _ = fs::remove_file(&payload);
    let _ = fs::remove_file(&tmp);
    result
}

/// Whether an ELF64 (little endian) has the Xen PHYS32_ENTRY note qemu boots through (PVH).
fn has_pvh_entry(elf: &[u8]) -> bool {
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    for i in 0..usize::from(phnum) {
        let ph = phoff as usize + i * usize::from(phentsize);
        if u32_at(ph) != Some(4) {
            continue; // not PT_NOTE
        }
        let (Some(off), Some(size)) = (u64_at(ph + 8), u64_at(ph + 32)) else {
            continue;
        };
        let (mut at, end) = (off as usize, (off + size) as usize);
        while at + 12 <= end {
            let (Some(namesz), Some(descsz), Some(kind)) =
                (u32_at(at), u32_at(at + 4), u32_at(at + 8))
            else {
                break;
            };
            let name = elf.get(at + 12..at + 12 + namesz as usize).unwrap_or(&[]);
            if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
                return true;
            }
            at += 12 + (namesz as usize).div_ceil(4) * 4 + (descsz as usize).div_ceil(4) * 4;
        }
    }
    false
}

/// Removes a directory when dropped (also on error paths).
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Series;

    #[test]
    fn packages_are_told_apart_by_series() {
        assert_eq!(Series::V6_1.number("linux-image-6.1.0-57-amd64"), Some(57));
        assert_eq!(
            Series::V6_12.number("linux-image-6.12.100+deb12-amd64"),
            Some(100)
        );
        for (series, other) in [
            (Series::V6_1, "linux-image-6.12.100+deb12-amd64"),
            (Series::V6_1, "linux-image-6.1.0-57-cloud-amd64"),
            (Series::V6_12, "linux-image-6.1.0-57-amd64"),
            (Series::V6_12, "linux-image-6.12.118+deb12-rt-amd64"),
            (Series::V6_12, "linux-image-6.12-amd64"),
        ] {
            assert_eq!(series.number(other), None, "{series:?} {other}");
        }
    }
}
