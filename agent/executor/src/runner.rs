//! Tasks as processes: each task gets a network namespace, a cgroup, a directory, and a process
//! started through the [`shim`](crate::shim). Everything is found again from the directory and the
//! kernel after an agent restart, so running tasks are adopted, never restarted.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use netns::NetNs;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::shim::{self, EXIT, PID, RESOLV, SHIM_PID, SPEC, ShimSpec};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("task id {0:?} is invalid: use letters, digits, '-' and '_'")]
    InvalidId(String),
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error("{what} for task {task}: {source}")]
    Io {
        what: String,
        task: String,
        #[source]
        source: std::io::Error,
    },
    #[error("task {0} has no command to run")]
    NoCommand(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What a task's process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// Never started (or its start was lost before the shim ran).
    NotStarted,
    /// Started, not yet running the command (the shim is setting up).
    Starting,
    Running {
        pid: u32,
    },
    /// The command is gone and its shim is recording the exit code (a moment; then `Exited`).
    Exiting,
    /// Exited with this code (128+N when killed by signal N).
    Exited {
        code: i32,
    },
}

impl ProcState {
    /// Whether a shim or the command may still be running (something to stop).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            ProcState::Starting | ProcState::Running { .. } | ProcState::Exiting
        )
    }
}

/// How tasks run on this node.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Task directories live here (`<state dir>/tasks`).
    pub dir: PathBuf,
    /// Task namespaces are named `<prefix>t-<task id>`.
    pub netns_prefix: String,
    /// Task cgroups go under this cgroup2 directory; None runs tasks without cgroups.
    pub cgroup: Option<PathBuf>,
    /// The shim command: program and leading arguments; the task directory is appended.
    pub shim: Vec<OsString>,
    /// What tasks see as /etc/resolv.conf.
    pub resolv_conf: String,
}

/// Starts, watches, stops and removes task processes.
pub struct Runner {
    config: RunnerConfig,
    /// Shims this agent started, reaped when they exit (adopted shims are reaped by init).
    shims: Mutex<HashMap<String, Child>>,
    /// The mount namespace task shims copy ([`shim::mount_template`]), made at the first task
    /// start (once `/run/netns` exists); None when it could not be made.
    template: OnceLock<Option<OwnedFd>>,
}

fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidId(id.to_string()))
    }
}

impl Runner {
    pub fn new(config: RunnerConfig) -> Result<Runner> {
        fs::create_dir_all(&config.dir).map_err(|source| Error::Io {
            what: format!("create {}", config.dir.display()),
            task: "-".into(),
            source,
        })?;
        if let Some(cg) = &config.cgroup {
            fs::create_dir_all(cg).map_err(|source| Error::Io {
                what: format!("create cgroup {}", cg.display()),
                task: "-".into(),
                source,
            })?;
        }
        let mut config = config;
        // Shims leave the agent's working directory when they enter the mount template: the
        // task directory they get (and every path in their spec) is absolute.
        config.dir = std::path::absolute(&config.dir).map_err(|source| Error::Io {
            what: format!("resolve {}", config.dir.display()),
            task: "-".into(),
            source,
        })?;
        Ok(Runner {
            config,
            shims: Mutex::new(HashMap::new()),
            template: OnceLock::new(),
        })
    }

    fn io<'a>(
        &self,
        what: impl Into<String>,
        task: &'a str,
    ) -> impl FnOnce(std::io::Error) -> Error + 'a {
        let what = what.into();
        move |source| Error::Io {
            what,
            task: task.to_string(),
            source,
        }
    }

    /// The task's directory.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.config.dir.join(id)
    }

    /// The name of the task's network namespace.
    pub fn netns_name(&self, id: &str) -> String {
        format!("{}t-{id}", self.config.netns_prefix)
    }

    fn cgroup(&self, id: &str) -> Option<PathBuf> {
        self.config.cgroup.as_ref().map(|c| c.join(id))
    }

    /// Tasks that have a directory here (running, exited, or being set up).
    pub fn list(&self) -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(&self.config.dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        ids.retain(|id| check_id(id).is_ok());
        ids.sort();
        ids
    }

    /// The task's network namespace, created (or adopted) on first use.
    pub fn namespace(&self, id: &str) -> Result<NetNs> {
        check_id(id)?;
        let dir = self.dir(id);
        fs::create_dir_all(&dir).map_err(self.io(format!("create {}", dir.display()), id))?;
        Ok(NetNs::ensure(&self.netns_name(id))?)
    }

    /// Starts the task's command through the shim unless it was already started (a restarted
    /// agent adopts what runs). `env` is KEY=VALUE.
    pub fn start(&self, id: &str, argv: &[String], env: &[String]) -> Result<()> {
        self.start_with(id, argv, env, &[])
    }

    /// [`Runner::start`], and the shim keeps `parked` open as its descriptors 3, 4, ... for as
    /// long as it lives (the task's command does not get them): sockets the agent serves in the
    /// task's namespace survive an agent restart there, and [`Runner::parked`] gives them back.
    pub fn start_with(
        &self,
        id: &str,
        argv: &[String],
        env: &[String],
        parked: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<()> {
        check_id(id)?;
        if argv.is_empty() {
            return Err(Error::NoCommand(id.to_string()));
        }
        if self.state(id) != ProcState::NotStarted {
            return Ok(());
        }
        let ns = self.namespace(id)?;
        let dir = self.dir(id);
        let cgroup = self.cgroup(id);
        if let Some(cg) = &cgroup {
            fs::create_dir_all(cg)
                .map_err(self.io(format!("create cgroup {}", cg.display()), id))?;
        }
        shim::write_atomic(&dir, RESOLV, &self.config.resolv_conf)
            .map_err(self.io("write resolv.conf", id))?;
        let template = self
            .template
            .get_or_init(|| {
                shim::mount_template()
                    .inspect_err(|e| {
                        tracing::warn!(error = %e, "no mount template: task starts copy the node's mount table")
                    })
                    .ok()
            })
            .as_ref();
        let mut fds = parked.to_vec();
        fds.extend(template.map(|t| t.as_fd()));
        let spec = ShimSpec {
            argv: argv.to_vec(),
            env: env.to_vec(),
            netns: ns.path().to_path_buf(),
            cgroup,
            workdir: dir.join("work"),
            parked: parked.len(),
            mount_template: template.is_some(),
        };
        let json = serde_json::to_string_pretty(&spec).expect("a spec serializes");
        shim::write_atomic(&dir, SPEC, &json).map_err(self.io("write the task spec", id))?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("shim.log"))
            .map_err(self.io("open shim.log", id))?;
        let (program, args) = self
            .config
            .shim
            .split_first()
            .expect("a shim command is configured");
        // The shim's descriptors go over a socket on its standard input, and it gets a process
        // group of its own (signals to the agent's group do not reach it): nothing runs
        // between fork and exec, so std spawns it with posix_spawn (a vfork), without a copy of
        // the agent's address space.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(self.io("make the shim's descriptor socket", id))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .arg(&dir)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(log.try_clone().map_err(self.io("dup", id))?)
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(self.io(format!("start the shim {}", program.to_string_lossy()), id))?;
        drop(cmd);
        self.shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), child);
        // A shim that does not get them ends with an error (exit 127) once this end closes.
        shim::send_fds(&ours, &fds).map_err(self.io("send the shim its descriptors", id))?;
        Ok(())
    }

    fn reap(&self, id: &str) {
        let mut shims = self.shims.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = shims.get_mut(id)
            && matches!(child.try_wait(), Ok(Some(_)))
        {
            shims.remove(id);
        }
    }

    /// What the task's process is doing, from its directory and the kernel.
    pub fn state(&self, id: &str) -> ProcState {
        self.reap(id);
        let dir = self.dir(id);
        if let Some(code) = read_exit(&dir) {
            return ProcState::Exited { code };
        }
        if let Some(pid) = read_pid(&dir, PID) {
            if self.pid_in_task(id, pid) {
                return ProcState::Running { pid };
            }
            // The command is gone. Its shim (which lives in the task's namespace too) writes the
            // exit code after reaping it; until then the exit is pending.
            if read_pid(&dir, SHIM_PID).is_some_and(|shim| self.pid_in_task(id, shim)) {
                return ProcState::Exiting;
            }
            // The shim may have written the code and exited since the first look.
            if let Some(code) = read_exit(&dir) {
                return ProcState::Exited { code };
            }
            // Both gone without an exit file: the shim was killed with its task.
            return ProcState::Exited { code: 137 };
        }
        if !dir.join(SPEC).exists() {
            return ProcState::NotStarted;
        }
        let shim_alive = self
            .shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some();
        if shim_alive {
            ProcState::Starting
        } else {
            ProcState::NotStarted
        }
    }

    /// After [`Runner::start`]: waits (briefly) until the command runs or has already ended, so
    /// the caller can report it at once.
    pub fn wait_started(&self, id: &str) -> ProcState {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let st = self.state(id);
            if !matches!(st, ProcState::Starting | ProcState::NotStarted)
                || Instant::now() >= deadline
            {
                return st;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Duplicates of the descriptors the task's shim keeps for the agent (see
    /// [`Runner::start_with`]), taken from the live shim with pidfd_getfd(2). None if the shim
    /// is gone or keeps none.
    pub fn parked(&self, id: &str) -> Option<Vec<std::os::fd::OwnedFd>> {
        let spec: ShimSpec =
            serde_json::from_slice(&fs::read(self.dir(id).join(SPEC)).ok()?).ok()?;
        if spec.parked == 0 {
            return None;
        }
        let pidfd = self.pidfd(id)?;
        (0..spec.parked)
            .map(|i| pidfd_getfd(&pidfd, shim::FIRST_PARKED_FD + i as i32))
            .collect()
    }

    /// A pidfd of the task's shim, readable once the shim exits (after it recorded the task's
    /// exit code). None if no shim of the task is alive.
    pub fn pidfd(&self, id: &str) -> Option<std::os::fd::OwnedFd> {
        let pid = {
            let shims = self.shims.lock().unwrap_or_else(|e| e.into_inner());
            shims.get(id).map(|c| c.id())
        }
        .or_else(|| read_pid(&self.dir(id), SHIM_PID))?;
        let fd = pidfd_open(pid)?;
        // The pidfd pins the process: if it is the task's shim now, it is the one we watch.
        let ours = self
            .shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|c| c.id() == pid)
            || self.pid_in_task(id, pid);
        ours.then_some(fd)
    }

    /// A pidfd of the task's command, readable as soon as it exits (before its shim has
    /// recorded the exit code, which takes an fsync). None if the command is not running.
    pub fn command_pidfd(&self, id: &str) -> Option<std::os::fd::OwnedFd> {
        let pid = read_pid(&self.dir(id), PID)?;
        let fd = pidfd_open(pid)?;
        // The pidfd pins the process: if it is in the task now, it is the task's command.
        self.pid_in_task(id, pid).then_some(fd)
    }

    /// Whether `pid` is a live process inside the task's namespace (guards against pid reuse).
    fn pid_in_task(&self, id: &str, pid: u32) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(ns) = NetNs::open(&self.netns_name(id)) else {
            return false;
        };
        let Ok(want) = ns.inode() else { return false };
        fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| m.ino() == want)
            .unwrap_or(false)
    }

    /// Stops the task: SIGTERM, then after `grace` SIGKILL to everything in its cgroup (or its
    /// process). Returns the exit code if the process had been running.
    pub fn stop(&self, id: &str, grace: Duration) -> Option<i32> {
        let pid = match self.state(id) {
            ProcState::Running { pid } => Some(pid),
            ProcState::Exiting => None,
            ProcState::Exited { code } => return Some(code),
            _ => {
                let _ = self.kill_all(id);
                return None;
            }
        };
        if let Some(pid) = pid {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < grace {
            if let ProcState::Exited { code } = self.state(id) {
                return Some(code);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.kill_all(id);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let ProcState::Exited { code } = self.state(id) {
                return Some(code);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(137)
    }

    /// SIGKILL to every process of the task: its cgroup (`cgroup.kill`, one write however many
    /// processes the node runs); without one (or a kernel older than 5.14), every process in
    /// its namespace, found by scanning /proc. Returns whether the cgroup took it.
    fn kill_all(&self, id: &str) -> bool {
        if let Some(cg) = self.cgroup(id)
            && fs::write(cg.join("cgroup.kill"), "1").is_ok()
        {
            return true;
        }
        if let Ok(ns) = NetNs::open(&self.netns_name(id)) {
            for pid in netns::pids_in(&ns).unwrap_or_default() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        false
    }

    /// Whether processes of the task remain: in its cgroup when it was killed through it, else
    /// in its namespace.
    fn any_left(&self, id: &str, by_cgroup: bool) -> bool {
        if by_cgroup && let Some(cg) = self.cgroup(id) {
            return fs::read_to_string(cg.join("cgroup.procs"))
                .is_ok_and(|procs| !procs.trim().is_empty());
        }
        NetNs::open(&self.netns_name(id))
            .is_ok_and(|ns| !netns::pids_in(&ns).unwrap_or_default().is_empty())
    }

    /// Removes everything of the task: processes, namespace, cgroup, directory.
    pub fn remove(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let by_cgroup = self.kill_all(id);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.any_left(id, by_cgroup) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.reap(id);
        self.shims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        netns::delete(&self.netns_name(id))?;
        if let Some(cg) = self.cgroup(id) {
            while cg.exists() && fs::remove_dir(&cg).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(format!("remove {}", dir.display()), id)(e)),
        }
    }

    /// The last `max` bytes of the task's output.
    pub fn output_tail(&self, id: &str, max: usize) -> String {
        let text = crate::tasklog::read(&self.dir(id));
        String::from_utf8_lossy(&text[text.len().saturating_sub(max)..]).into_owned()
    }
}

/// pidfd_open(2): a file descriptor for process `pid`, readable when it exits.
fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new file descriptor or -1; the
    // descriptor is owned by nothing else.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor returned by the kernel above.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// pidfd_getfd(2): a duplicate of descriptor `fd` of the process behind `pidfd`.
fn pidfd_getfd(pidfd: &std::os::fd::OwnedFd, fd: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: pidfd_getfd takes a pidfd, a descriptor number in that process and flags, and
    // returns a new descriptor of ours or -1.
    let new = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if new < 0 {
        return None;
    }
    // SAFETY: `new` is a fresh descriptor returned by the kernel above.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(new as i32) })
}

fn read_pid(dir: &Path, name: &str) -> Option<u32> {
    fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()
}

fn read_exit(dir: &Path) -> Option<i32> {
    let code = fs::read_to_string(dir.join(EXIT)).ok()?;
    Some(code.trim().parse().unwrap_or(-1))
}
