//! Network namespace primitives shared by every crate of netagent.
//!
//! Named namespaces live where iproute2 keeps them (`/run/netns/NAME`, a bind mount of the
//! namespace file), so `ip -n NAME ...` and `ip netns list` see them. Code runs inside a namespace
//! on a dedicated thread that enters it with `setns(2)` and ends afterwards, so no thread of the
//! caller ever changes namespace; processes enter it between fork and exec. Nothing here shells out
//! and nothing here touches the caller's own namespace.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Where named network namespaces are bind-mounted (as iproute2 does).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// br_netfilter's switches (under /proc/sys) that send a namespace's bridged frames through its
/// IP, IPv6 and ARP hooks; absent while the module is not loaded. Namespaces that only bridge
/// (netagent's sandboxes, the lab's underlay) set them to 0.
pub const BRIDGE_NF_CALL: &[&str] = &[
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/bridge/bridge-nf-call-arptables",
];

/// Errors of namespace operations. Each names the namespace and the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network namespace name {0:?} is invalid: use 1-200 characters of [A-Za-z0-9_.-]")]
    InvalidName(String),
    #[error("network namespace {0:?} already exists")]
    Exists(String),
    #[error("network namespace {0:?} does not exist")]
    NotFound(String),
    #[error(
        "{0:?} is not a network namespace (a leftover mount point, or one still being created)"
    )]
    NotANamespace(String),
    #[error(
        "{op} for network namespace {name:?} failed: {source} (netagent needs root / CAP_SYS_ADMIN)"
    )]
    Sys {
        op: &'static str,
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("the thread running inside network namespace {0:?} panicked")]
    Panicked(String),
}

pub type Result<T> = std::result::Result<T, Error>;

fn sys(op: &'static str, name: &str) -> impl FnOnce(nix::errno::Errno) -> Error {
    let name = name.to_string();
    move |e| Error::Sys {
        op,
        name,
        source: io::Error::from(e),
    }
}

fn io_err(op: &'static str, name: &str) -> impl FnOnce(io::Error) -> Error {
    let name = name.to_string();
    move |source| Error::Sys { op, name, source }
}

/// Checks a namespace name: it becomes a file name under [`NETNS_RUN_DIR`].
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// An open handle on a network namespace. Holding it keeps the namespace alive even if its
/// name is deleted; dropping it does not delete anything.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    file: File,
}

/// Makes `/run/netns` a mount point of its own, shared, as `ip netns add` does (nothing changes
/// where iproute2 or an earlier call did it). A process that copies the mount tree (a task's
/// shim, for its own `/etc/resolv.conf`) then drops every namespace's bind mount from its copy
/// with one lazy unmount of the directory ([`detach_run_dir`]).
fn ensure_run_dir_mount() -> nix::Result<()> {
    static DONE: std::sync::OnceLock<nix::Result<()>> = std::sync::OnceLock::new();
    *DONE.get_or_init(|| {
        let mounted = fs::read_to_string("/proc/self/mountinfo")
            .map(|m| {
                m.lines()
                    .any(|l| l.split(' ').nth(4) == Some(NETNS_RUN_DIR))
            })
            .unwrap_or(false);
        if !mounted {
            mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            mount(
                None::<&str>,
                NETNS_RUN_DIR,
                None::<&str>,
                MsFlags::MS_SHARED | MsFlags::MS_REC,
                None::<&str>,
            )?;
        }
        Ok(())
    })
}

/// In a private copy of the mount tree (after `unshare(CLONE_NEWNS)` and making `/` private):
/// drops the copies of every named namespace's bind mount, so that this mount namespace keeps
/// none of them alive. One lazy unmount of `/run/netns` when it is a mount point (see
/// [`NetNs::create`]), else one per namespace. Best effort: a mount that will not go stays.
pub fn detach_run_dir() {
    if umount2(NETNS_RUN_DIR, MntFlags::MNT_DETACH).is_ok() {
        return;
    }
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let dir = format!("{NETNS_RUN_DIR}/");
    for line in info.lines() {
        // Field 5 is the mount point, with spaces and the like escaped as octal.
        let Some(point) = line.split(' ').nth(4) else {
            continue;
        };
        if point.starts_with(&dir) {
            let _ = umount2(unescape(point).as_str(), MntFlags::MNT_DETACH);
        }
    }
}

/// A mountinfo path with its octal escapes (`\040` for a space) decoded.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| &b[i + 1..=i + 3])
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                u8::try_from(v).ok()
            });
        if let Some(c) = code {
            out.push(c);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl NetNs {
    /// Creates the named namespace `/run/netns/NAME` (like `ip netns add`). Fails with
    /// [`Error::Exists`] if the name is taken.
    pub fn create(name: &str) -> Result<NetNs> {
        validate_name(name)?;
        fs::create_dir_all(NETNS_RUN_DIR).map_err(io_err("create /run/netns", name))?;
        ensure_run_dir_mount().map_err(sys("mount /run/netns on itself", name))?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::Exists(name.to_string()));
            }
            Err(e) => return Err(io_err("create mount point", name)(e)),
        }
        let target = path.clone();
        let owned = name.to_string();
        let made = std::thread::spawn(move || -> Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(sys("unshare", &owned))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys("bind mount", &owned))
        })
        .join()
        .map_err(|_| Error::Panicked(name.to_string()))
        .and_then(|r| r);
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Self::open(name)
    }

    /// Opens the existing named namespace `/run/netns/NAME`.
    pub fn open(name: &str) -> Result<NetNs> {
        validate_name(name)?;
        Self::open_path(name, Path::new(NETNS_RUN_DIR).join(name))
    }

    /// Opens the named namespace, creating it if it does not exist (adopts a leftover; replaces
    /// a mount point left without its namespace by a crash).
    pub fn ensure(name: &str) -> Result<NetNs> {
        match Self::create(name) {
            Err(Error::Exists(_)) => match Self::open(name) {
                Err(Error::NotANamespace(_)) => {
                    delete(name)?;
                    Self::create(name)
                }
                other => other,
            },
            other => other,
        }
    }

    /// Opens a namespace by path, e.g. `/proc/<pid>/ns/net`; `name` is only used in messages.
    pub fn open_path(name: &str, path: impl Into<PathBuf>) -> Result<NetNs> {
        let path = path.into();
        let file = File::open(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::NotFound(name.to_string())
            } else {
                io_err("open", name)(e)
            }
        })?;
        // An empty file under /run/netns (created, not yet or no longer bind-mounted) is not a
        // namespace: setns(2) on it would fail later with a puzzling EINVAL.
        let fs = nix::sys::statfs::fstatfs(&file).map_err(sys("statfs", name))?;
        if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(Error::NotANamespace(name.to_string()));
        }
        Ok(NetNs {
            name: name.to_string(),
            path,
            file,
        })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<NetNs> {
        Self::open_path("self", "/proc/thread-self/ns/net")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace file, for `setns` or for APIs that take a namespace fd.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The namespace's inode number: equal for two handles on the same namespace.
    pub fn inode(&self) -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self
            .file
            .metadata()
            .map_err(io_err("stat", &self.name))?
            .ino())
    }

    /// Runs `f` on a fresh thread that has entered this namespace; the thread ends afterwards.
    /// Sockets created inside `f` (netlink included) stay bound to this namespace.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                        .map_err(sys("setns", &self.name))?;
                    Ok(f())
                })
                .join()
                .map_err(|_| Error::Panicked(self.name.clone()))?
        })
    }

    /// The index of each interface `names` names in this namespace (`None`: there is none),
    /// looked up from one thread inside it.
    pub fn if_indexes(&self, names: &[&str]) -> Result<Vec<Option<u32>>> {
        self.run(|| {
            names
                .iter()
                .map(|n| nix::net::if_::if_nametoindex(*n).ok().filter(|i| *i != 0))
                .collect()
        })
    }

    /// The index of interface `name` in this namespace (`None`: there is none).
    pub fn if_index(&self, name: &str) -> Result<Option<u32>> {
        Ok(self.if_indexes(&[name])?.pop().flatten())
    }

    /// A `Command` whose process enters this namespace before `exec` (not `ip netns exec`:
    /// the mount namespace, /sys and the cgroup2 mount stay those of the caller).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.prepare(&mut cmd);
        cmd
    }

    /// Runs `program args` inside the namespace to its end, `input` on its stdin (none: an
    /// empty stdin). A program that exits before reading all of its input is no error here:
    /// its status and stderr say why.
    pub fn run_program(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&str>,
    ) -> io::Result<Ran> {
        use std::io::Write;
        use std::process::Stdio;
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            let _ = stdin.write_all(text.as_bytes());
        }
        let out = child.wait_with_output()?;
        Ok(Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// Makes an existing `Command` enter this namespace before `exec`.
    pub fn prepare(&self, cmd: &mut Command) {
        let fd = self.file.try_clone().expect("dup of a namespace fd");
        // SAFETY: the closure runs between fork and exec and only calls setns(2), which is
        // async-signal-safe; the fd it uses was opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
    }

    /// Deletes the named namespace (like `ip netns del`). Processes still inside keep it alive
    /// until they exit. Deleting a namespace that is already gone is not an error.
    pub fn delete(self) -> Result<()> {
        delete(&self.name)
    }
}

/// How a program run by [`NetNs::run_program`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// It exited with status 0.
    pub ok: bool,
    pub stdout: String,
    /// Its standard error, trimmed.
    pub stderr: String,
}

/// Deletes the named namespace `/run/netns/NAME`; a missing one is not an error.
pub fn delete(name: &str) -> Result<()> {
    validate_name(name)?;
    let path = Path::new(NETNS_RUN_DIR).join(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(sys("unmount", name)(e)),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", name)(e)),
    }
}

/// Whether the named namespace exists.
pub fn exists(name: &str) -> bool {
    validate_name(name).is_ok() && Path::new(NETNS_RUN_DIR).join(name).exists()
}

/// Names of all named namespaces, sorted.
pub fn list() -> Result<Vec<String>> {
    let mut names = Vec::new();
    let entries = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(io_err("list", NETNS_RUN_DIR)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err("list", NETNS_RUN_DIR))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Pids of the processes whose network namespace is `ns` (found through /proc/PID/ns/net).
pub fn pids_in(ns: &NetNs) -> Result<Vec<i32>> {
    use std::os::unix::fs::MetadataExt;
    let want = ns.inode()?;
    let dev = ns.file.metadata().map_err(io_err("stat", &ns.name))?.dev();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")
        .map_err(io_err("list /proc", &ns.name))?
        .flatten()
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(meta) = fs::metadata(entry.path().join("ns/net"))
            && meta.ino() == want
            && meta.dev() == dev
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// The cgroup2 mount point, read from /proc/self/mounts (hybrid hosts mount it at
/// /sys/fs/cgroup/unified, pure v2 hosts at /sys/fs/cgroup).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_src, target, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(target))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/run/netns/a"), "/run/netns/a");
        assert_eq!(unescape("/run/netns/a\\040b"), "/run/netns/a b");
        assert_eq!(unescape("/x\\134y"), "/x\\y");
        // Not an escape (too short, not octal, over a byte): kept as written.
        assert_eq!(unescape("/x\\04"), "/x\\04");
        assert_eq!(unescape("/x\\09a"), "/x\\09a");
        assert_eq!(unescape("/x\\777"), "/x\\777");
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("nalab-1-node1").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(201)] {
            assert!(
                matches!(validate_name(bad), Err(Error::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn programs_run_inside_with_input_and_their_ending() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        /// Deletes the namespace when the test ends, failed or not.
        struct Gone(String);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = delete(&self.0);
            }
        }
        let name = format!("nstest-{}-prog", std::process::id());
        let ns = NetNs::create(&name).unwrap();
        let _gone = Gone(name);
        let inside = ns.inode().unwrap();
        assert_eq!(
            ns.if_indexes(&["lo", "no-such-if", "bad\0name"]).unwrap(),
            vec![Some(1), None, None]
        );
        assert_eq!(ns.if_index("lo").unwrap(), Some(1));
        let r = ns
            .run_program("readlink", &["/proc/self/ns/net"], None)
            .unwrap();
        assert!(r.ok && r.stdout.contains(&inside.to_string()), "{r:?}");
        let r = ns.run_program("cat", &[], Some("a line\n")).unwrap();
        assert_eq!((r.ok, r.stdout.as_str()), (true, "a line\n"));
        let r = ns
            .run_program("sh", &["-c", "echo why >&2; exit 3"], None)
            .unwrap();
        assert_eq!((r.ok, r.stderr.as_str()), (false, "why"));
        // A program that exits without reading a large input: its own ending, no error.
        let big = "x".repeat(4 << 20);
        let r = ns.run_program("sh", &["-c", "exit 4"], Some(&big)).unwrap();
        assert!(!r.ok);
        assert!(ns.run_program("no-such-program-here", &[], None).is_err());
    }

    #[test]
    fn create_run_delete() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let name = format!("nstest-{}-crd", std::process::id());
        let ns = NetNs::create(&name).unwrap();
        assert!(exists(&name));
        assert!(list().unwrap().contains(&name));
        assert!(matches!(NetNs::create(&name), Err(Error::Exists(_))));
        let here = NetNs::current().unwrap().inode().unwrap();
        let inside = ns
            .run(|| NetNs::current().unwrap().inode().unwrap())
            .unwrap();
        assert_eq!(inside, ns.inode().unwrap());
        assert_ne!(inside, here, "run() must execute in the other namespace");
        assert_eq!(
            NetNs::current().unwrap().inode().unwrap(),
            here,
            "caller thread unchanged"
        );
        // A process started with command() is in the namespace too.
        let out = ns
            .command("readlink")
            .arg("/proc/self/ns/net")
            .output()
            .unwrap();
        let link = String::from_utf8_lossy(&out.stdout);
        assert!(link.contains(&inside.to_string()), "{link}");
        let again = NetNs::ensure(&name).unwrap();
        assert_eq!(again.inode().unwrap(), inside);
        ns.delete().unwrap();
        assert!(!exists(&name));
        delete(&name).unwrap();
        // A bare file where a namespace should be (a crash between create and mount).
        std::fs::write(Path::new(NETNS_RUN_DIR).join(&name), b"").unwrap();
        assert!(matches!(NetNs::open(&name), Err(Error::NotANamespace(_))));
        let fresh = NetNs::ensure(&name).unwrap();
        assert!(
            fresh.run(|| ()).is_ok(),
            "ensure replaced it with a real namespace"
        );
        fresh.delete().unwrap();
    }
}
