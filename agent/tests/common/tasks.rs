//! Looking at a swarm's tasks from the outside: their namespaces on each node (named
//! `<lab prefix>-n<i>-t-<task id>` by the agents' `--netns-prefix`), their addresses, and
//! commands run inside them.

use std::net::Ipv4Addr;
use std::process::Output;

use super::Swarm;

/// A task as seen in the kernel of the node it runs on.
#[derive(Debug, Clone)]
pub struct TaskNs {
    pub node: usize,
    pub id: String,
    pub ns: String,
}

impl Swarm {
    /// The task namespaces on node `i`.
    pub fn task_namespaces(&self, i: usize) -> Vec<TaskNs> {
        let prefix = format!("{}-n{i}-t-", self.lab.prefix());
        netns::list()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|n| {
                let id = n.strip_prefix(&prefix)?.to_string();
                Some(TaskNs { node: i, id, ns: n })
            })
            .collect()
    }

    /// Every task namespace in the swarm.
    pub fn all_task_namespaces(&self) -> Vec<TaskNs> {
        (1..=self.lab.nodes().len())
            .flat_map(|i| self.task_namespaces(i))
            .collect()
    }

    /// The task's cgroup (where the node's eBPF load balancer sees its sockets).
    pub fn task_cgroup(&self, t: &TaskNs) -> Option<std::path::PathBuf> {
        let cg = self
            .lab
            .node(t.node)
            .cgroup()
            .ok()?
            .join("netagent/tasks")
            .join(&t.id);
        cg.exists().then_some(cg)
    }

    /// A command that runs inside a task's namespace and cgroup, as the task's own processes do.
    pub fn task_command(&self, t: &TaskNs, argv: &[&str]) -> Result<std::process::Command, String> {
        use std::io::Write;
        use std::os::unix::process::CommandExt;
        let ns = netns::NetNs::open(&t.ns).map_err(|e| e.to_string())?;
        let mut cmd = ns.command(argv[0]);
        cmd.args(&argv[1..]);
        if let Some(cg) = self.task_cgroup(t) {
            let mut procs = std::fs::OpenOptions::new()
                .write(true)
                .open(cg.join("cgroup.procs"))
                .map_err(|e| e.to_string())?;
            // SAFETY: between fork and exec only write(2) on an fd opened before the fork
            // ("0" moves the writing process into the cgroup).
            unsafe {
                cmd.pre_exec(move || procs.write_all(b"0"));
            }
        }
        Ok(cmd)
    }

    /// Runs a command inside a task's namespace and cgroup (as the task would). A namespace
    /// that is gone (or still being made) gives a failed output.
    pub fn in_task(&self, t: &TaskNs, argv: &[&str]) -> Output {
        use std::os::unix::process::ExitStatusExt;
        let run = self
            .task_command(t, argv)
            .and_then(|mut c| c.output().map_err(|e| e.to_string()));
        run.unwrap_or_else(|e| Output {
            status: std::process::ExitStatus::from_raw(1 << 8),
            stdout: Vec::new(),
            stderr: e.into_bytes(),
        })
    }

    /// The task's IPv4 address on `ifname` (eth0 is its first network).
    pub fn task_ip(&self, t: &TaskNs, ifname: &str) -> Option<Ipv4Addr> {
        let out = self.in_task(t, &["ip", "-4", "-o", "addr", "show", "dev", ifname]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)?
            .split('/')
            .next()?
            .parse()
            .ok()
    }

    /// Whether task `from` gets an answer to one ping to `to`.
    pub fn task_pings(&self, from: &TaskNs, to: Ipv4Addr) -> bool {
        self.in_task(from, &["ping", "-c", "1", "-W", "1", "-q", &to.to_string()])
            .status
            .success()
    }

    /// The pid of the task's command (not its shim), as its agent's shim recorded it.
    pub fn task_command_pid(&self, t: &TaskNs) -> Option<i32> {
        let file = self
            .lab
            .node(t.node)
            .dir()
            .join("state/executor/tasks")
            .join(&t.id)
            .join("pid");
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// Pids of the processes inside a task's namespace.
    pub fn task_pids(&self, t: &TaskNs) -> Vec<i32> {
        netns::NetNs::open(&t.ns)
            .ok()
            .and_then(|ns| netns::pids_in(&ns).ok())
            .unwrap_or_default()
    }

    /// The tasks of a service that run (desired and observed), as node `i` sees them: task id
    /// -> node hostname.
    pub fn running(&self, i: usize, service: &str) -> std::collections::BTreeMap<String, String> {
        self.service_ps(i, service)
            .into_iter()
            .filter(|t| {
                t["DesiredState"] == "Running"
                    && t["CurrentState"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("Running")
            })
            .map(|t| {
                let id = t["ID"].as_str().unwrap_or("").to_string();
                (id, t["Node"].as_str().unwrap_or("").to_string())
            })
            .collect()
    }

    /// `service ps SERVICE --format json` on node `i`, one object per task.
    pub fn service_ps(&self, i: usize, service: &str) -> Vec<serde_json::Value> {
        let out = self.ctl(
            i,
            &["service", "ps", service, "--no-trunc", "--format", "json"],
        );
        parse_json_lines(&out)
    }
}

/// A JSON array, or one JSON object per line (docker's `--format json`).
pub fn parse_json_lines(text: &str) -> Vec<serde_json::Value> {
    if let Ok(serde_json::Value::Array(a)) = serde_json::from_str(text) {
        return a;
    }
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

impl Swarm {
    /// `netctl service create --detach ARGS` on node 1.
    pub fn create_service(&self, args: &[&str]) {
        let mut argv = vec!["service", "create", "--detach"];
        argv.extend_from_slice(args);
        self.ctl(1, &argv);
    }

    /// The task namespaces of a service's running tasks, once each exists.
    pub fn task_nss(&self, service: &str, want: usize) -> Vec<TaskNs> {
        let mut out = Vec::new();
        self.wait(
            &format!("{want} running tasks of {service} with namespaces"),
            || {
                let ids = self.running(1, service);
                out = self
                    .all_task_namespaces()
                    .into_iter()
                    .filter(|t| ids.contains_key(&t.id))
                    .collect();
                ids.len() == want && out.len() == want
            },
        );
        out
    }

    /// The tasks' addresses on `ifname`.
    pub fn task_ips(&self, tasks: &[TaskNs], ifname: &str) -> std::collections::BTreeSet<String> {
        tasks
            .iter()
            .map(|t| self.task_ip(t, ifname).expect("task address").to_string())
            .collect()
    }

    /// A service's (first) VIP, without its prefix length.
    pub fn vip(&self, service: &str) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.ctl(1, &["service", "inspect", service])).unwrap();
        let addr = v[0]["Endpoint"]["VirtualIPs"][0]["Addr"]
            .as_str()
            .expect("a VIP")
            .to_string();
        addr.split('/').next().unwrap().to_string()
    }
}
