//! Long-lived processes inside lab nodes: start, kill, stop, restart.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns::NetNs;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{Error, Result, io};

/// What to run: kept so a killed process can be restarted exactly as it was started.
#[derive(Debug, Clone)]
pub struct ProcSpec {
    name: String,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    cgroup: Option<PathBuf>,
}

impl ProcSpec {
    /// `name` labels the process in the node's log.
    pub fn new(name: impl Into<String>, program: impl Into<OsString>) -> Self {
        ProcSpec {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            cgroup: None,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Start the process inside this cgroup2 directory (it moves itself before exec).
    pub fn cgroup(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cgroup = Some(dir.into());
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

struct Inner {
    spec: ProcSpec,
    ns_path: PathBuf,
    node: String,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

/// A process running inside a lab node. Clones share the process.
#[derive(Clone)]
pub struct Proc(Arc<Inner>);

impl Proc {
    pub(crate) fn start(
        spec: ProcSpec,
        ns_path: PathBuf,
        node: String,
        log: PathBuf,
    ) -> Result<Proc> {
        let p = Proc(Arc::new(Inner {
            spec,
            ns_path,
            node,
            log,
            child: Mutex::new(None),
        }));
        p.spawn_child()?;
        Ok(p)
    }

    fn spawn_child(&self) -> Result<()> {
        let inner = &self.0;
        let spec = &inner.spec;
        let ns = NetNs::open_path(&inner.node, &inner.ns_path)?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&inner.log)
            .map_err(io(format!("open {}", inner.log.display())))?;
        let shown = format!("{} {:?}", spec.program.to_string_lossy(), spec.args);
        let _ = writeln!(log, "== [{}] start {}: {shown}", inner.node, spec.name);
        let mut cmd = ns.command(&spec.program);
        cmd.args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("dup log"))?)
            .stderr(log);
        if let Some(dir) = &spec.cwd {
            cmd.current_dir(dir);
        }
        if let Some(cg) = &spec.cgroup {
            let procs: File = OpenOptions::new()
                .write(true)
                .open(cg.join("cgroup.procs"))
                .map_err(io(format!("open {}/cgroup.procs", cg.display())))?;
            // SAFETY: between fork and exec this only calls write(2) on an fd opened before the
            // fork; writing "0" to cgroup.procs moves the writing process.
            unsafe {
                cmd.pre_exec(move || {
                    let n = nix::libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                    if n == 1 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd
            .spawn()
            .map_err(|source| Error::Spawn { cmd: shown, source })?;
        *inner.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    pub fn spec(&self) -> &ProcSpec {
        &self.0.spec
    }

    /// Pid of the running process, if it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut slot = self.0.child.lock().unwrap_or_else(|e| e.into_inner());
        let child = slot.as_mut()?;
        match child.try_wait() {
            Ok(None) => Some(child.id()),
            _ => None,
        }
    }

    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Sends a signal to the running process (no-op if it has exited).
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// SIGKILL and reap. No-op if it has exited.
    pub fn kill(&self) {
        let mut slot = self.0.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = slot.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Returns its exit status.
    pub fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        match self.wait_exit(grace) {
            Some(s) => Some(s),
            None => {
                self.kill();
                self.wait_exit(Duration::from_secs(5))
            }
        }
    }

    /// Waits up to `timeout` for the process to exit; returns its status if it did.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            {
                let mut slot = self.0.child.lock().unwrap_or_else(|e| e.into_inner());
                let child = slot.as_mut()?;
                if let Ok(Some(status)) = child.try_wait() {
                    return Some(status);
                }
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process if it still runs and starts it again from the same spec.
    pub fn restart(&self) -> Result<()> {
        self.kill();
        self.spawn_child()
    }
}
