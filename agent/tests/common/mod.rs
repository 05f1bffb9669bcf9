//! Shared helpers of the agent's lab tests: a lab with one netagent per node, and a swarm of
//! M managers + W workers built with the real CLI.

#![allow(dead_code)]

pub mod allocations;
pub mod bulk;
pub mod mesh;
pub mod tasks;

use std::process::Output;
use std::time::Duration;

use lab::{Lab, Proc, ProcSpec};
use serde_json::Value;

pub const NETAGENT: &str = env!("CARGO_BIN_EXE_netagent");
pub const NETCTL: &str = env!("CARGO_BIN_EXE_netctl");
/// TCP port of every agent's `--metrics-addr` (on its node's address).
pub const METRICS_PORT: u16 = 9323;
/// Generous: two loaded cores, many agents.
pub const LONG: Duration = Duration::from_secs(60);

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips the test (returns true) when not root: the lab needs namespaces.
pub fn skip() -> bool {
    if !is_root() {
        eprintln!("skipped: needs root");
        return true;
    }
    false
}

/// The agents' load balancer, `--lb ebpf|ipvs|auto`: NETAGENT_LB, or auto (the kernel lab runs
/// the load-balancing tests once with each).
pub fn lb_mode() -> String {
    std::env::var("NETAGENT_LB")
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "auto".into())
}

pub use lab::in_kernel_lab;

/// Agent flags for the kernel lab (NETAGENT_KERNEL_LAB is set there), where a swarm runs on 2
/// emulated CPUs (qemu TCG): heartbeats and failure detection slow enough that no node is
/// marked down (and its tasks rescheduled) only because the machine is slow. None elsewhere.
/// The connections node `i`'s own conntrack tracks from `client` to port `dport` (of the
/// mesh: none where the eBPF shortcut takes them past the node's stack).
pub fn node_tracked(s: &Swarm, i: usize, client: std::net::Ipv4Addr, dport: u16) -> usize {
    s.lab
        .node(i)
        .sh("cat /proc/net/nf_conntrack")
        .unwrap_or_else(|e| panic!("node{i}'s conntrack table: {e}"))
        .lines()
        .filter(|l| l.contains(&format!("src={client} ")) && l.contains(&format!("dport={dport} ")))
        .count()
}

/// What `node inspect` says of node `i`'s overlay fast path ("ebpf", "ebpf (tc filters)", or
/// "off (why)").
pub fn fast_path_of(s: &Swarm, i: usize) -> String {
    let n: Value = serde_json::from_str(&s.ctl(1, &["node", "inspect", s.lab.node(i).name()]))
        .expect("node inspect prints JSON");
    n[0]["Description"]["Engine"]["Plugins"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["Type"] == "OverlayFastPath")
        .and_then(|p| p["Name"].as_str())
        .unwrap_or_default()
        .to_string()
}

pub fn kernel_lab_flags() -> Vec<(&'static str, &'static str)> {
    if !in_kernel_lab() {
        return Vec::new();
    }
    vec![
        ("--heartbeat-ms", "3000"),
        ("--election-timeout-ms", "3000"),
        ("--gossip-interval-ms", "250"),
        ("--gossip-failure-timeout-ms", "6000"),
    ]
}

pub struct Swarm {
    pub lab: Lab,
    pub agents: Vec<Proc>,
}

pub fn sock(lab: &Lab, i: usize) -> String {
    lab.node(i)
        .dir()
        .join("netagent.sock")
        .display()
        .to_string()
}

pub fn agent_spec(lab: &Lab, i: usize) -> ProcSpec {
    agent_spec_with(lab, i, &[])
}

/// [`agent_spec`] with some flags' values replaced (or added): `("--restart-delay-ms", "60000")`.
pub fn agent_spec_with(lab: &Lab, i: usize, flags: &[(&str, &str)]) -> ProcSpec {
    let mut args = agent_args(lab, i);
    for (flag, value) in flags {
        match args.iter().position(|a| a == flag) {
            Some(at) => args[at + 1] = value.to_string(),
            None => args.extend([flag.to_string(), value.to_string()]),
        }
    }
    ProcSpec::new("netagent", NETAGENT).args(args)
}

fn agent_args(lab: &Lab, i: usize) -> Vec<String> {
    let node = lab.node(i);
    vec![
        "--hostname".to_string(),
        node.name().to_string(),
        "--advertise-addr".into(),
        node.addr().to_string(),
        "--state-dir".into(),
        node.dir().join("state").display().to_string(),
        "--host".into(),
        sock(lab, i),
        "--heartbeat-ms".into(),
        "200".into(),
        "--election-timeout-ms".into(),
        "500".into(),
        "--snapshot-every".into(),
        "200".into(),
        // Everything the node makes stays inside the lab (removed with it).
        "--netns-prefix".into(),
        format!("{}-n{i}-", lab.prefix()),
        "--cgroup-parent".into(),
        node.cgroup()
            .expect("node cgroup")
            .join("netagent")
            .display()
            .to_string(),
        "--gossip-interval-ms".into(),
        "100".into(),
        "--gossip-failure-timeout-ms".into(),
        "1500".into(),
        "--stop-grace-ms".into(),
        "2000".into(),
        // The lab's gossip is faster than production's (100 ms rounds): half docker's drain.
        "--drain-ms".into(),
        "1000".into(),
        "--restart-delay-ms".into(),
        "1000".into(),
        // The node's resolvers are the lab's own (none unless a test writes some): tasks' DNS
        // never forwards to the machine's resolvers.
        "--resolv-conf".into(),
        lab_resolv_conf(lab, i),
        "--metrics-addr".into(),
        format!("{}:{METRICS_PORT}", node.addr()),
        // The node's own bpffs for the eBPF load balancer's pins (unmounted with the lab).
        "--bpf-dir".into(),
        node.dir().join("bpf").display().to_string(),
        "--lb".into(),
        lb_mode(),
        "--log-level".into(),
        std::env::var("AGENT_LOG")
            .unwrap_or_else(|_| "info,openraft=warn,h2=warn,tower=warn,hyper=warn".into()),
    ]
}

/// The node's resolv.conf for its agent (`<node dir>/resolv.conf`), written with a search domain
/// and no nameserver unless a test wrote one before the agent started.
pub fn lab_resolv_conf(lab: &Lab, i: usize) -> String {
    let path = lab.node(i).dir().join("resolv.conf");
    if !path.exists() {
        std::fs::write(&path, "search lab.internal\n").expect("write the node's resolv.conf");
    }
    path.display().to_string()
}

impl Swarm {
    /// A lab of `n` nodes, each running an agent that is in no swarm yet.
    pub fn agents(n: usize) -> Swarm {
        Swarm::agents_with(n, &[])
    }

    /// [`Swarm::agents`], the agents started with some flags changed (see [`agent_spec_with`]).
    pub fn agents_with(n: usize, flags: &[(&str, &str)]) -> Swarm {
        let lab = Lab::new(n).expect("lab");
        Swarm::agents_in(lab, n, |lab, i| agent_spec_with(lab, i, flags))
    }

    /// The hostname the swarm lists for lab node `i` (found by its address).
    pub fn hostname(&self, i: usize) -> String {
        self.nodes(1)
            .unwrap()
            .into_iter()
            .find(|n| n["Status"]["Addr"] == self.lab.node(i).addr().to_string())
            .map(|n| hostname_of(&n))
            .unwrap_or_else(|| panic!("node{i} listed"))
    }

    /// Agents on nodes 1..=`n` of `lab` (it may have more nodes, such as a client), each started
    /// as `spec` says, in no swarm yet; returns once every agent's API answers.
    pub fn agents_in(lab: Lab, n: usize, spec: impl Fn(&Lab, usize) -> ProcSpec) -> Swarm {
        let agents = (1..=n)
            .map(|i| lab.node(i).spawn(spec(&lab, i)).expect("spawn netagent"))
            .collect();
        let s = Swarm { lab, agents };
        for i in 1..=n {
            s.wait(&format!("agent {i} API"), || {
                s.netctl(i, &["info"]).status.success()
            });
        }
        s
    }

    /// `managers` managers (node1 initialises) and `workers` workers after them, all Ready.
    pub fn start(managers: usize, workers: usize) -> Swarm {
        Swarm::start_with(managers, workers, &[])
    }

    /// [`Swarm::start`], the agents started with some flags changed (see [`agent_spec_with`]).
    pub fn start_with(managers: usize, workers: usize, flags: &[(&str, &str)]) -> Swarm {
        let s = Swarm::agents_with(managers + workers, flags);
        s.form(managers, workers);
        s
    }

    /// Makes the agents a swarm: node1 initialises, the next `managers - 1` join as managers,
    /// then `workers` workers; waits until every node is Ready.
    pub fn form(&self, managers: usize, workers: usize) {
        let s = self;
        s.ctl(
            1,
            &[
                "swarm",
                "init",
                "--advertise-addr",
                &s.lab.node(1).addr().to_string(),
            ],
        );
        let mtoken = s
            .ctl(1, &["swarm", "join-token", "-q", "manager"])
            .trim()
            .to_string();
        let wtoken = s
            .ctl(1, &["swarm", "join-token", "-q", "worker"])
            .trim()
            .to_string();
        let leader = format!("{}:2377", s.lab.node(1).addr());
        for i in 2..=managers {
            let out = s.ctl(i, &["swarm", "join", "--token", &mtoken, &leader]);
            assert!(out.contains("joined a swarm as a manager"), "{out}");
        }
        for i in managers + 1..=managers + workers {
            let out = s.ctl(i, &["swarm", "join", "--token", &wtoken, &leader]);
            assert!(out.contains("joined a swarm as a worker"), "{out}");
        }
        s.wait("every node Ready", || {
            s.nodes(1)
                .map(|n| n.len() == managers + workers && n.iter().all(|n| state(n) == "ready"))
                .unwrap_or(false)
        });
    }

    /// [`Swarm::wait`] for big labs (10 minutes).
    pub fn wait_long(&self, what: &str, mut f: impl FnMut() -> bool) {
        if let Err(e) = self.lab.wait_until(what, Duration::from_secs(600), &mut f) {
            panic!("{e}\n{}", self.logs());
        }
    }

    pub fn wait(&self, what: &str, mut f: impl FnMut() -> bool) {
        if let Err(e) = self.lab.wait_until(what, LONG, &mut f) {
            panic!("{e}\n{}", self.logs());
        }
    }

    /// The tails of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.lab
            .nodes()
            .iter()
            .map(|n| format!("---- {} ----\n{}", n.name(), n.log_tail(40)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs netctl inside node `i` against its agent.
    pub fn netctl(&self, i: usize, args: &[&str]) -> Output {
        let sock = sock(&self.lab, i);
        let mut argv = vec![NETCTL, "--host", sock.as_str()];
        argv.extend_from_slice(args);
        self.lab.node(i).run(&argv).expect("run netctl")
    }

    /// netctl that must succeed; returns stdout.
    pub fn ctl(&self, i: usize, args: &[&str]) -> String {
        let out = self.netctl(i, args);
        if !out.status.success() {
            panic!(
                "netctl {} on node{i} failed: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                self.logs()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// netctl that must fail; returns stderr.
    pub fn ctl_err(&self, i: usize, args: &[&str]) -> String {
        let out = self.netctl(i, args);
        assert!(
            !out.status.success(),
            "netctl {} on node{i} should have failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `node ls --format json` on node `i`.
    pub fn nodes(&self, i: usize) -> Option<Vec<Value>> {
        let out = self.netctl(i, &["node", "ls", "--format", "json"]);
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The node by hostname, as node `i` sees it.
    pub fn node_as_seen_by(&self, i: usize, hostname: &str) -> Option<Value> {
        self.nodes(i)?
            .into_iter()
            .find(|n| hostname_of(n) == hostname)
    }

    /// The index of the leader, as any reachable manager among `managers` says.
    pub fn leader(&self, managers: &[usize]) -> Option<usize> {
        for &i in managers {
            if let Some(nodes) = self.nodes(i)
                && let Some(n) = nodes.iter().find(|n| n["ManagerStatus"]["Leader"] == true)
            {
                return hostname_of(n)
                    .strip_prefix("node")
                    .and_then(|x| x.parse().ok());
            }
        }
        None
    }

    pub fn kill(&self, i: usize) {
        self.agents[i - 1].kill();
    }

    /// Freezes node `i`'s agent (SIGSTOP): alive, holding its sockets and its in-flight
    /// requests, silent, as a stalled or cut-off process is. [`Swarm::resume`] thaws it.
    pub fn pause(&self, i: usize) {
        self.agents[i - 1].signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Thaws an agent frozen by [`Swarm::pause`] (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.agents[i - 1].signal(nix::sys::signal::Signal::SIGCONT);
    }

    pub fn restart(&self, i: usize) {
        self.agents[i - 1].restart().expect("restart netagent");
        self.wait(&format!("agent {i} API after restart"), || {
            self.netctl(i, &["info"]).status.success()
        });
    }
}

impl Swarm {
    /// A raw API request on node `i`'s socket (curl inside the node): status and body.
    pub fn api(&self, i: usize, method: &str, path: &str, body: &str) -> (u16, String) {
        let sock = sock(&self.lab, i);
        let url = format!("http://netagent{path}");
        let out = self
            .lab
            .node(i)
            .run(&[
                "curl",
                "-s",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                "--unix-socket",
                &sock,
                "-X",
                method,
                "-H",
                "content-type: application/json",
                "--data-binary",
                body,
                &url,
            ])
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// `GET /metrics` of node `i` on its API socket, parsed with a Prometheus text parser.
    pub fn metrics(&self, i: usize) -> prometheus_parse::Scrape {
        let (code, text) = self.api(i, "GET", "/metrics", "");
        assert_eq!(code, 200, "GET /metrics: {text}");
        parse_metrics(&text)
    }
}

pub fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"))
}

/// The value of a metric (summed over its samples whose labels include `labels`); 0 when absent.
pub fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(b) => b.last().map(|b| b.count).unwrap_or(0.0),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

pub fn hostname_of(n: &Value) -> String {
    n["Description"]["Hostname"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn state(n: &Value) -> String {
    n["Status"]["State"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn reachability(n: &Value) -> String {
    n["ManagerStatus"]["Reachability"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
