//! The task shim: a small process between the agent and a task's command. The agent starts it
//! in a process group of its own; it joins the task's cgroup and network namespace, gives the task its own
//! mount namespace with the task's /etc/resolv.conf, runs the command, waits for it and records the
//! exit code in the task directory. So tasks survive agent restarts and their exit codes are
//! never lost, and the agent needs no parent-child link to adopt them.
//!
//! Files in a task directory: `spec.json` (written by the agent), `pid` (the command's pid),
//! `shim.pid` (the shim's, so the agent can tell "exit being recorded" from "killed"),
//! `exit` (its exit code; 128+N when killed by signal N), `output.log` and `output.log.1` (its
//! stdout and stderr, through a pipe the shim copies, bounded by [`crate::tasklog`]),
//! `resolv.conf`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use serde::{Deserialize, Serialize};

/// What the shim runs, as the agent wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimSpec {
    pub argv: Vec<String>,
    /// KEY=VALUE, on top of a minimal PATH.
    pub env: Vec<String>,
    /// The task's network namespace file.
    pub netns: PathBuf,
    /// The task's cgroup2 directory, if the host has cgroup2.
    pub cgroup: Option<PathBuf>,
    /// The working directory of the command.
    pub workdir: PathBuf,
    /// How many descriptors the agent sends the shim (see [`send_fds`]) for it to keep open, from
    /// [`FIRST_PARKED_FD`] on, for the agent (the task's DNS sockets); never passed to the command.
    #[serde(default)]
    pub parked: usize,
    /// The agent sends a [`mount_template`] as the descriptor after the parked ones: the task's
    /// mount namespace is copied from it rather than from the node's.
    #[serde(default)]
    pub mount_template: bool,
}

/// The first descriptor number of those a shim keeps for the agent.
pub const FIRST_PARKED_FD: i32 = 3;

pub const SPEC: &str = "spec.json";
pub const PID: &str = "pid";
pub const SHIM_PID: &str = "shim.pid";
pub const EXIT: &str = "exit";
pub const OUTPUT: &str = "output.log";
pub const RESOLV: &str = "resolv.conf";

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Writes `contents` to `dir/name` atomically (write a temporary file, then rename).
pub fn write_atomic(dir: &Path, name: &str, contents: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))
}

/// The shim's main: runs the task described in `dir` and returns the shim's own exit status
/// (0 once the task's exit code is recorded). Call it from a single-threaded process.
pub fn run(dir: &Path) -> i32 {
    match run_inner(dir) {
        Ok(()) => 0,
        Err(e) => {
            let msg = format!("netagent shim: {e}\n");
            let _ = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(OUTPUT))
                .and_then(|mut f| f.write_all(msg.as_bytes()));
            // A task that could not start exits 127, as a shell reports "command not found".
            let _ = write_atomic(dir, EXIT, "127\n");
            1
        }
    }
}

fn run_inner(dir: &Path) -> Result<(), String> {
    let spec: ShimSpec = serde_json::from_slice(
        &fs::read(dir.join(SPEC)).map_err(|e| format!("read {}/{SPEC}: {e}", dir.display()))?,
    )
    .map_err(|e| format!("parse {}/{SPEC}: {e}", dir.display()))?;
    if spec.argv.is_empty() {
        return Err("the task has no command".into());
    }
    // The parked descriptors (and the template) stay with the shim: close-on-exec, so the
    // command does not inherit them.
    receive_fds(spec.parked + usize::from(spec.mount_template))?;
    if let Some(cg) = &spec.cgroup {
        fs::write(cg.join("cgroup.procs"), "0")
            .map_err(|e| format!("join cgroup {}: {e}", cg.display()))?;
    }
    let ns = File::open(&spec.netns).map_err(|e| format!("open {}: {e}", spec.netns.display()))?;
    setns(&ns, CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("enter the task's network namespace: {e}"))?;
    // Written once the shim is in the task's namespace, where the agent checks that it lives.
    write_atomic(dir, SHIM_PID, &format!("{}\n", std::process::id()))
        .map_err(|e| format!("write the shim's pid file: {e}"))?;
    if spec.mount_template {
        // SAFETY: `receive_fds` put the template at this number (see `Runner::start_with`);
        // nothing else in the shim owns it, and it is closed once entered.
        let template = unsafe { OwnedFd::from_raw_fd(FIRST_PARKED_FD + spec.parked as i32) };
        if let Err(e) = setns(&template, CloneFlags::CLONE_NEWNS) {
            // The node's own mount table still works, only slower to copy.
            eprintln!("netagent shim: enter the mount template: {e}");
        }
    }
    // The task's own view of /etc/resolv.conf, in a mount namespace of its own.
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("unshare the mount namespace: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    // The task's copy of the mount tree keeps no named network namespace alive (a copy kept
    // a removed task's namespace until every task started after it ended, and a node's mount
    // copies grew with the square of its tasks).
    netns::detach_run_dir();
    let resolv = dir.join(RESOLV);
    if resolv.exists() && Path::new("/etc/resolv.conf").exists() {
        mount(
            Some(&resolv),
            "/etc/resolv.conf",
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("bind {} on /etc/resolv.conf: {e}", resolv.display()))?;
    }
    let log = crate::tasklog::Writer::open(dir, crate::tasklog::LOG_MAX_BYTES)
        .map_err(|e| format!("open the output log: {e}"))?;
    let (reader, out) = std::io::pipe().map_err(|e| format!("make the output pipe: {e}"))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("dup the output pipe: {e}"))?;
    fs::create_dir_all(&spec.workdir)
        .map_err(|e| format!("create {}: {e}", spec.workdir.display()))?;
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    for kv in &spec.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        cmd.env(k, v);
    }
    // The command gets default signal dispositions and its own process group.
    cmd.process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("start {:?}: {e}", spec.argv[0]))?;
    // The command holds the pipe's write ends now; the shim's copies go.
    drop(cmd);
    write_atomic(dir, PID, &format!("{}\n", child.id()))
        .map_err(|e| format!("write the pid file: {e}"))?;
    copy_output(reader, log, &mut child);
    let status = child
        .wait()
        .map_err(|e| format!("wait for the task: {e}"))?;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    write_atomic(dir, EXIT, &format!("{code}\n"))
        .map_err(|e| format!("write the exit file: {e}"))?;
    Ok(())
}

/// Copies the task's output into its bounded log until the task exits (then what is left in the
/// pipe) or closes its output. A background process the task left behind may keep the pipe
/// open: the shim does not wait for it. Write errors (a full disk) drop output, never block the
/// task.
fn copy_output(
    mut reader: std::io::PipeReader,
    mut log: crate::tasklog::Writer,
    child: &mut std::process::Child,
) {
    let pidfd = pidfd_open(child.id());
    let mut buf = vec![0u8; 64 << 10];
    let mut warned = false;
    let mut write = |log: &mut crate::tasklog::Writer, chunk: &[u8]| {
        if let Err(e) = log.write(chunk)
            && !warned
        {
            eprintln!("netagent shim: task output dropped: {e}");
            warned = true;
        }
    };
    loop {
        let mut fds = [
            libc::pollfd {
                fd: reader.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pidfd.as_ref().map_or(-1, |f| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Without a pidfd (old kernels), look at the task once a second.
        let timeout = if pidfd.is_some() { -1 } else { 1000 };
        // SAFETY: poll(2) on two pollfd structs that live across the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        // The task's exit first: a process it left behind may keep writing.
        let exited =
            fds[1].revents != 0 || (pidfd.is_none() && matches!(child.try_wait(), Ok(Some(_))));
        if exited {
            break;
        }
        if fds[0].revents != 0 {
            match reader.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => write(&mut log, &buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }
    // The task exited: what it wrote is in the pipe (a pipe's capacity at most); take it
    // without waiting for writers it left behind, and no more than the cap.
    // SAFETY: fcntl(2) sets a flag of a descriptor this function owns.
    unsafe {
        let fd = reader.as_raw_fd();
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        );
    }
    let mut drained = 0u64;
    while drained < crate::tasklog::LOG_MAX_BYTES {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                write(&mut log, &buf[..n]);
                drained += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// pidfd_open(2): a descriptor readable when process `pid` exits (None where unsupported).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor returned by the kernel, owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A mount namespace for shims to copy instead of the node's: a slave of the node's mount
/// tree (mounts and unmounts made on the node later reach it, as they reached a copy of the
/// node's) without `/run/netns`, where the node has one bind mount per named network
/// namespace. A task's mount namespace is a copy of the one its shim is in, and the copy costs
/// in proportion to the mounts copied (and is made under a lock global to the kernel): from
/// the node's table, every task start copied, made private and unmounted again every other
/// task's namespace mount (24 ms at 2,000 of them against 6 ms at 20, measured with
/// `unshare -m`). The returned descriptor keeps the namespace alive; no process stays in it.
pub fn mount_template() -> std::io::Result<OwnedFd> {
    // Close-on-exec: a shim another thread starts meanwhile must not hold the write end.
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: between fork and its death the child calls only async-signal-safe system calls
    // (prctl, stat, unshare, mount, umount2, open, setns, write, pause) on memory it does not
    // allocate or free.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut root: libc::stat = std::mem::zeroed();
            let mut ns_root: libc::stat = std::mem::zeroed();
            let made = libc::stat(c"/".as_ptr(), &mut root) == 0
                && libc::unshare(libc::CLONE_NEWNS) == 0
                && libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) == 0;
            if made {
                // Not a mount point (no named namespace yet): shims detach what they copy.
                libc::umount2(c"/run/netns".as_ptr(), libc::MNT_DETACH);
            }
            // Entering a mount namespace moves to its root: a shim that entered the template
            // from a chroot would leave the chroot. Enter it here once and compare roots.
            let ns = libc::open(
                c"/proc/self/ns/mnt".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            );
            let same_root = made
                && ns >= 0
                && libc::setns(ns, libc::CLONE_NEWNS) == 0
                && libc::stat(c"/".as_ptr(), &mut ns_root) == 0
                && (ns_root.st_dev, ns_root.st_ino) == (root.st_dev, root.st_ino);
            let byte: u8 = match (made, same_root) {
                (false, _) => 0,
                (true, false) => 2,
                (true, true) => 1,
            };
            libc::write(ready_w.as_raw_fd(), (&raw const byte).cast(), 1);
            loop {
                libc::pause();
            }
        },
        nix::unistd::ForkResult::Parent { child } => {
            drop(ready_w);
            let mut byte = [0u8; 1];
            let ready = File::from(ready_r).read(&mut byte);
            let template = match ready {
                Ok(1) if byte[0] == 1 => {
                    File::open(format!("/proc/{child}/ns/mnt")).map(OwnedFd::from)
                }
                Ok(1) if byte[0] == 2 => Err(std::io::Error::other(
                    "the agent's root is not its mount namespace's root (a chroot): a shim \
                     entering a template would leave it",
                )),
                Ok(_) => Err(std::io::Error::other(
                    "could not make a private mount namespace (unshare or mount failed)",
                )),
                Err(e) => Err(e),
            };
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
            template
        }
    }
}

/// Sends `fds` to a shim just started with `socket`'s peer as its standard input, in one
/// message (SCM_RIGHTS). Passing them over a socket instead of arranging descriptor numbers
/// between fork and exec lets the agent start a shim without copying its own address space
/// (`posix_spawn`, a vfork), which with a fork cost the agent a copy of its page tables and a
/// write fault on each of its pages after every task start.
pub fn send_fds(
    socket: &std::os::unix::net::UnixStream,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    if fds.is_empty() {
        return Ok(());
    }
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let byte = [0u8];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[std::io::IoSlice::new(&byte)],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// In the shim: takes the `n` descriptors the agent sends on standard input ([`send_fds`]) and
/// puts them at [`FIRST_PARKED_FD`], ... (close-on-exec); standard input becomes /dev/null.
fn receive_fds(n: usize) -> Result<(), String> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    if n > 0 {
        let mut byte = [0u8; 1];
        let mut iov = [std::io::IoSliceMut::new(&mut byte)];
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<i32>()) as u32) };
        let mut cmsgs = vec![0u8; space as usize];
        let msg = recvmsg::<()>(0, &mut iov, Some(&mut cmsgs), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| format!("receive the agent's descriptors: {e}"))?;
        let mut got: Vec<OwnedFd> = Vec::new();
        for c in msg
            .cmsgs()
            .map_err(|e| format!("read the agent's descriptors: {e}"))?
        {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the kernel just installed these descriptors in this process.
                got.extend(
                    fds.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if got.len() != n {
            return Err(format!(
                "the agent sent {} descriptors where the spec says {n}",
                got.len()
            ));
        }
        // A received number may be one of the targets: all go above the range first.
        let high: Vec<OwnedFd> = got
            .into_iter()
            .map(|fd| {
                // SAFETY: fcntl duplicates a descriptor this process owns.
                let h = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 64) };
                if h < 0 {
                    return Err(format!(
                        "move a descriptor: {}",
                        std::io::Error::last_os_error()
                    ));
                }
                // SAFETY: h was just made by fcntl and nothing else owns it.
                Ok(unsafe { OwnedFd::from_raw_fd(h) })
            })
            .collect::<Result<_, String>>()?;
        for (i, h) in high.iter().enumerate() {
            // SAFETY: dup3 onto a number this process keeps for exactly this descriptor.
            if unsafe { libc::dup3(h.as_raw_fd(), FIRST_PARKED_FD + i as i32, libc::O_CLOEXEC) } < 0
            {
                return Err(format!(
                    "place a descriptor: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    let null = File::open("/dev/null").map_err(|e| format!("open /dev/null: {e}"))?;
    // SAFETY: dup2 onto standard input, which this process owns.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(format!(
            "make /dev/null the standard input: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}
