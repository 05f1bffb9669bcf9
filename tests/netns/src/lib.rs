//! The namespace lab: a set of nodes, each a network namespace, joined by veths to a bridge in an
//! "underlay" namespace, with addresses from 198.18.0.0/15.
//!
//! Rules that keep the host safe (DESIGN.md, "The lab"): nothing here adds an address, route, link,
//! sysctl or nftables table in the caller's own namespace. veth pairs are created directly inside
//! the lab's namespaces (`ip -n UNDERLAY link add ... peer ... netns NODE`). Every namespace a lab
//! makes, and every namespace the code under test makes with [`Lab::prefix`], is removed when the
//! lab drops, also while a test panics; `cargo xtask lab clean` removes those of crashed runs.
//!
//! Processes start inside a node with `setns` (see [`netns::NetNs::command`]), never with
//! `ip netns exec`, so /sys and the cgroup2 mount stay the host's.

pub mod capture;
pub mod fuzzing;
mod proc;
mod snapshot;

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use netns::NetNs;
pub use proc::{Proc, ProcSpec};
pub use snapshot::host_snapshot;

/// Whether this runs in the kernel lab's guest (qemu TCG: everything is ~10x slower; tests
/// there send fewer requests where the count proves nothing more).
pub fn in_kernel_lab() -> bool {
    std::env::var_os("NETAGENT_KERNEL_LAB").is_some()
}

/// Whether the run requires the overlay fast path (and the mesh's shortcut) to be active
/// (`NETAGENT_EXPECT_FAST_PATH=1`, set by the kernel lab where the kernel must run them), so a
/// fallback fails a test instead of passing it without them.
pub fn expect_fast_path() -> bool {
    std::env::var_os("NETAGENT_EXPECT_FAST_PATH").is_some_and(|v| v == "1")
}

/// Every lab namespace name starts with this; the pid of the creating process follows.
pub const LAB_PREFIX: &str = "nalab-";
/// The underlay network: 198.18.0.0/15 (RFC 2544, reserved for benchmarking).
pub const UNDERLAY_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const UNDERLAY_PREFIX_LEN: u8 = 15;
/// Name of the node's underlay interface inside its namespace.
pub const NODE_IFACE: &str = "eth0";

static SEQ: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Netns(#[from] netns::Error),
    #[error("{cmd} failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("could not start {cmd}: {source} (is it installed? run `cargo xtask setup`)")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a lab needs at least one node and at most 4096")]
    NodeCount,
    #[error("no node {0} in this lab")]
    NoNode(usize),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

pub type Result<T> = std::result::Result<T, Error>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Builds a lab.
#[derive(Debug, Clone)]
pub struct LabBuilder {
    nodes: usize,
    mtu: u32,
}

impl LabBuilder {
    pub fn new(nodes: usize) -> Self {
        LabBuilder { nodes, mtu: 1500 }
    }

    /// MTU of the underlay (bridge, both veth ends). Default 1500.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    pub fn build(self) -> Result<Lab> {
        if self.nodes == 0 || self.nodes > 4096 {
            return Err(Error::NodeCount);
        }
        let prefix = format!(
            "{LAB_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        // A leftover with our pid belongs to a dead process that had the same pid.
        remove_namespaces(&prefix);
        let dir = std::env::temp_dir().join("netagent-lab").join(&prefix);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let mut lab = Lab {
            prefix: prefix.clone(),
            dir,
            mtu: self.mtu,
            underlay: NetNs::create(&format!("{prefix}-u"))?,
            nodes: Vec::new(),
            cuts: Mutex::new(Cuts::default()),
        };
        // If anything below fails, dropping `lab` removes what was made.
        let mut batch = format!(
            "link set lo up\nlink add br0 mtu {mtu} type bridge\nlink set br0 up\n",
            mtu = self.mtu
        );
        for i in 1..=self.nodes {
            let ns = NetNs::create(&format!("{prefix}-n{i}"))?;
            batch.push_str(&format!(
                "link add p{i} mtu {mtu} type veth peer name {NODE_IFACE} mtu {mtu} netns {ns}\n\
                 link set p{i} master br0\nlink set p{i} up\n",
                mtu = self.mtu,
                ns = ns.name(),
            ));
            let name = format!("node{i}");
            let node = Node {
                index: i,
                dir: lab.dir.join(&name),
                log: lab.dir.join(format!("{name}.log")),
                name,
                lab_prefix: prefix.clone(),
                addr: underlay_addr(i),
                ns,
                cgroup: Mutex::new(None),
                bpffs: Mutex::new(None),
                procs: Mutex::new(Vec::new()),
            };
            fs::create_dir_all(&node.dir).map_err(io(format!("create {}", node.dir.display())))?;
            lab.nodes.push(node);
        }
        ip_batch(&lab.underlay, &batch)?;
        lab.switch_off_bridge_netfilter()?;
        for node in &lab.nodes {
            ip_batch(
                &node.ns,
                &format!(
                    "link set lo up\naddr add {}/{UNDERLAY_PREFIX_LEN} dev {NODE_IFACE}\n\
                     link set {NODE_IFACE} up\n",
                    node.addr
                ),
            )?;
        }
        Ok(lab)
    }
}

/// Underlay address of node `i` (1-based): 198.18.0.0 + i.
pub fn underlay_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(UNDERLAY_NET) + i as u32)
}

fn ip_batch(ns: &NetNs, batch: &str) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns.name(), "-batch", "-"]);
    run_with_input(cmd, batch).map(|_| ())
}

fn run_with_input(mut cmd: Command, input: &str) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            cmd: shown.clone(),
            source,
        })?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .map_err(io(format!("write to {shown}")))?;
    let out = child
        .wait_with_output()
        .map_err(io(format!("wait for {shown}")))?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: format!("{shown} <<< {input:?}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

#[derive(Default)]
struct Cuts {
    pairs: BTreeSet<(usize, usize)>,
    isolated: BTreeSet<usize>,
}

/// A running lab. Dropping it removes everything it made.
pub struct Lab {
    prefix: String,
    dir: PathBuf,
    mtu: u32,
    underlay: NetNs,
    nodes: Vec<Node>,
    cuts: Mutex<Cuts>,
}

impl Lab {
    /// A lab of `n` nodes with the default underlay MTU (1500).
    pub fn new(n: usize) -> Result<Lab> {
        LabBuilder::new(n).build()
    }

    /// The lab's unique prefix. Namespaces the code under test creates must start with it so the
    /// lab removes them (e.g. `format!("{}-sbox-", lab.prefix())`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The directory with the lab's logs and the nodes' state directories.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    pub fn underlay(&self) -> &NetNs {
        &self.underlay
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`, 1-based as in the node names.
    pub fn node(&self, i: usize) -> &Node {
        self.try_node(i).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_node(&self, i: usize) -> Result<&Node> {
        i.checked_sub(1)
            .and_then(|k| self.nodes.get(k))
            .ok_or(Error::NoNode(i))
    }

    /// Cuts the underlay between nodes `a` and `b` in both directions.
    pub fn cut(&self, a: usize, b: usize) -> Result<()> {
        self.edit_cuts(|c| {
            c.pairs.insert((a.min(b), a.max(b)));
        })
    }

    /// Restores the underlay between nodes `a` and `b`.
    pub fn heal(&self, a: usize, b: usize) -> Result<()> {
        self.edit_cuts(|c| {
            c.pairs.remove(&(a.min(b), a.max(b)));
        })
    }

    /// Cuts node `a` from every other node (a partition of one).
    pub fn isolate(&self, a: usize) -> Result<()> {
        self.edit_cuts(|c| {
            c.isolated.insert(a);
        })
    }

    /// Splits the lab into two sides that cannot reach each other.
    pub fn partition(&self, side: &[usize]) -> Result<()> {
        let other: Vec<usize> = (1..=self.nodes.len())
            .filter(|i| !side.contains(i))
            .collect();
        self.edit_cuts(|c| {
            for &a in side {
                for &b in &other {
                    c.pairs.insert((a.min(b), a.max(b)));
                }
            }
        })
    }

    /// The underlay bridge stands for a switch: where br_netfilter is loaded, its frames would
    /// also pass the underlay namespace's IP hooks and conntrack (a cost per frame no real
    /// switch adds, charged twice as often to paths with more underlay crossings). Cuts use a
    /// bridge-family table, which does not need them.
    fn switch_off_bridge_netfilter(&self) -> Result<()> {
        for key in netns::BRIDGE_NF_CALL {
            let path = format!("/proc/sys/{key}");
            self.underlay
                .run(|| match fs::write(&path, "0") {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    r => r,
                })?
                .map_err(io(format!("write {path} in {}", self.underlay.name())))?;
        }
        Ok(())
    }

    /// Removes every cut and isolation.
    pub fn heal_all(&self) -> Result<()> {
        self.edit_cuts(|c| *c = Cuts::default())
    }

    /// Renders the cuts as one nftables bridge table in the underlay namespace, replaced
    /// atomically, so the lab's "network" drops frames between cut ports.
    fn edit_cuts(&self, f: impl FnOnce(&mut Cuts)) -> Result<()> {
        let mut cuts = self.cuts.lock().unwrap_or_else(|e| e.into_inner());
        for &i in cuts
            .isolated
            .iter()
            .chain(cuts.pairs.iter().flat_map(|(a, b)| [a, b]))
        {
            self.try_node(i)?;
        }
        f(&mut cuts);
        for &i in cuts
            .isolated
            .iter()
            .chain(cuts.pairs.iter().flat_map(|(a, b)| [a, b]))
        {
            self.try_node(i)?;
        }
        let mut rules = String::new();
        for (a, b) in &cuts.pairs {
            rules.push_str(&format!(
                "    iifname \"p{a}\" oifname \"p{b}\" drop\n    iifname \"p{b}\" oifname \"p{a}\" drop\n"
            ));
        }
        for a in &cuts.isolated {
            rules.push_str(&format!(
                "    iifname \"p{a}\" drop\n    oifname \"p{a}\" drop\n"
            ));
        }
        let script = format!(
            "table bridge nalab\ndelete table bridge nalab\n\
             table bridge nalab {{\n  chain cut {{\n    type filter hook forward priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        let mut cmd = self.underlay.command("nft");
        cmd.args(["-f", "-"]);
        run_with_input(cmd, &script).map(|_| ())
    }

    /// Polls `f` every 50 ms until it returns true or `timeout` passes.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> bool,
    ) -> Result<()> {
        wait_until(what, timeout, &mut f)
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, f: &mut dyn FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(Error::Timeout(timeout, what.to_string()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for node in &self.nodes {
            for p in node
                .procs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
            {
                p.kill();
            }
        }
        remove_namespaces(&self.prefix);
        // Unpinning (by unmounting) releases links pinned there before their cgroups go.
        unmount_under(&self.dir);
        remove_cgroups(&self.prefix);
        if std::thread::panicking() || std::env::var_os("NETAGENT_KEEP_LAB_LOGS").is_some() {
            eprintln!("lab {}: logs kept in {}", self.prefix, self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// One node of a lab: a network namespace with `eth0` on the underlay.
pub struct Node {
    index: usize,
    name: String,
    lab_prefix: String,
    addr: Ipv4Addr,
    ns: NetNs,
    dir: PathBuf,
    log: PathBuf,
    cgroup: Mutex<Option<PathBuf>>,
    bpffs: Mutex<Option<PathBuf>>,
    procs: Mutex<Vec<Proc>>,
}

impl Node {
    /// 1-based index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// "node1", "node2", ...
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Underlay address (on eth0).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    /// A directory of this node's own (state dirs, sockets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's log: every command run and every process spawned here writes to it.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The tail of the node's log, for assertion messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn append_log(&self, text: &str) {
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = f.write_all(text.as_bytes());
        }
    }

    /// A `Command` that runs inside this node.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.ns.command(program)
    }

    /// Runs a command inside the node and returns its output whatever its exit status. The
    /// command line and its output go to the node's log.
    pub fn run(&self, argv: &[&str]) -> Result<Output> {
        let (program, args) = argv.split_first().expect("argv has a program");
        let mut cmd = self.command(program);
        cmd.args(args).stdin(Stdio::null());
        let out = cmd.output().map_err(|source| Error::Spawn {
            cmd: argv.join(" "),
            source,
        })?;
        self.append_log(&format!(
            "$ {} -> {}\n{}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        Ok(out)
    }

    /// Runs a command inside the node; fails unless it exits 0. Returns stdout.
    pub fn run_ok(&self, argv: &[&str]) -> Result<String> {
        let out = self.run(argv)?;
        if !out.status.success() {
            return Err(Error::Command {
                cmd: format!("{} (in {})", argv.join(" "), self.name),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a shell script (`sh -c`) inside the node; fails unless it exits 0. Returns stdout.
    pub fn sh(&self, script: &str) -> Result<String> {
        self.run_ok(&["sh", "-c", script])
    }

    /// Runs a closure on a thread inside the node's namespace (for netlink sockets and the like).
    pub fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        Ok(self.ns.run(f)?)
    }

    /// Whether this node gets an answer to one ping to `addr` within a second.
    pub fn ping(&self, addr: impl std::fmt::Display) -> bool {
        let a = addr.to_string();
        self.run(&["ping", "-c", "1", "-W", "1", "-q", &a])
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Starts a long-lived process inside the node, its stdout and stderr appended to the node's
    /// log. The lab kills it when it drops.
    pub fn spawn(&self, spec: ProcSpec) -> Result<Proc> {
        let p = Proc::start(
            spec,
            self.ns.path().to_path_buf(),
            self.name.clone(),
            self.log.clone(),
        )?;
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p.clone());
        Ok(p)
    }

    /// This node's own cgroup (cgroup2), created on first use and removed with the lab.
    pub fn cgroup(&self) -> Result<PathBuf> {
        let mut slot = self.cgroup.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &*slot {
            return Ok(p.clone());
        }
        let root = netns::cgroup2_mount().ok_or_else(|| Error::Io {
            what: "find the cgroup2 mount in /proc/self/mounts".into(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        let path = root
            .join("netagent-lab")
            .join(&self.lab_prefix)
            .join(&self.name);
        fs::create_dir_all(&path).map_err(io(format!("create {}", path.display())))?;
        *slot = Some(path.clone());
        Ok(path)
    }

    /// This node's own bpf filesystem (for pinned eBPF maps and links), mounted on first use in
    /// the node's directory and unmounted with the lab (which unpins what is there).
    pub fn bpffs(&self) -> Result<PathBuf> {
        let mut slot = self.bpffs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &*slot {
            return Ok(p.clone());
        }
        let path = self.dir.join("bpffs");
        fs::create_dir_all(&path).map_err(io(format!("create {}", path.display())))?;
        nix::mount::mount(
            Some("bpf"),
            &path,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| Error::Io {
            what: format!("mount -t bpf bpf {}", path.display()),
            source: e.into(),
        })?;
        *slot = Some(path.clone());
        Ok(path)
    }
}

/// Unmounts every mount below `dir` (the nodes' bpffs, their own or one an agent mounted),
/// deepest first; lazily, so a mount still in use goes when its last user does.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut targets: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(PathBuf::from)
        .filter(|t| t.starts_with(dir) && t != dir)
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.components().count()));
    for t in targets {
        if let Err(e) = nix::mount::umount2(&t, nix::mount::MntFlags::MNT_DETACH) {
            eprintln!("lab: could not unmount {}: {e}", t.display());
        }
    }
}

/// Kills the processes inside, then deletes, every namespace whose name starts with `prefix`.
fn remove_namespaces(prefix: &str) -> usize {
    let names: Vec<String> = netns::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n == prefix || n.starts_with(&format!("{prefix}-")))
        .collect();
    for name in &names {
        if let Ok(ns) = NetNs::open(name) {
            kill_all_in(&ns);
        }
    }
    for name in &names {
        if let Err(e) = netns::delete(name) {
            eprintln!("lab: could not delete namespace {name}: {e}");
        }
    }
    names.len()
}

fn kill_all_in(ns: &NetNs) {
    let me = std::process::id() as i32;
    for _ in 0..50 {
        let pids: Vec<i32> = netns::pids_in(ns)
            .unwrap_or_default()
            .into_iter()
            .filter(|&p| p != me)
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remove_cgroups(prefix: &str) {
    let Some(root) = netns::cgroup2_mount() else {
        return;
    };
    let dir = root.join("netagent-lab").join(prefix);
    if dir.exists() {
        remove_cgroup_tree(&dir);
    }
}

/// Removes a cgroup directory bottom-up, killing what is still inside (cgroup.kill, 5.14+).
fn remove_cgroup_tree(dir: &Path) {
    let _ = fs::write(dir.join("cgroup.kill"), "1");
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pid_alive(pid: i32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Removes what crashed labs left: namespaces named `nalab-<pid>-...` whose pid is gone (all of
/// them with `all`), the processes inside them, their cgroups and their log directories.
/// Returns the number of namespaces removed.
pub fn clean_leftovers(all: bool) -> Result<usize> {
    let dead = |name: &str| -> Option<String> {
        let rest = name.strip_prefix(LAB_PREFIX)?;
        let mut parts = rest.splitn(3, '-');
        let pid: i32 = parts.next()?.parse().ok()?;
        let seq = parts.next()?;
        let seq = seq.split_once('-').map(|(s, _)| s).unwrap_or(seq);
        (all || !pid_alive(pid)).then(|| format!("{LAB_PREFIX}{pid}-{seq}"))
    };
    let mut labs: BTreeSet<String> = netns::list()?.iter().filter_map(|n| dead(n)).collect();
    if let Some(root) = netns::cgroup2_mount()
        && let Ok(entries) = fs::read_dir(root.join("netagent-lab"))
    {
        labs.extend(
            entries
                .flatten()
                .filter_map(|e| dead(&e.file_name().to_string_lossy())),
        );
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir().join("netagent-lab")) {
        labs.extend(
            entries
                .flatten()
                .filter_map(|e| dead(&e.file_name().to_string_lossy())),
        );
    }
    let mut removed = 0;
    for prefix in &labs {
        removed += remove_namespaces(prefix);
        unmount_under(&std::env::temp_dir().join("netagent-lab").join(prefix));
        remove_cgroups(prefix);
        let _ = fs::remove_dir_all(std::env::temp_dir().join("netagent-lab").join(prefix));
    }
    Ok(removed)
}
