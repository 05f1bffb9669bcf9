//! The test rig: a lab of five namespaces on one bridge (the lab's underlay plays the overlay
//! network's bridge): node1 runs clients inside a task cgroup the test creates, node2..4 run
//! backend servers, node5 is the network's load-balancer namespace that holds the VIPs. Each rig
//! has its own bpffs mount (node1's, in the lab's directory, unmounted with the lab).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipvs::{Choice, Config, Desired, NetworkLb, ServiceKey, ServiceLb};
use lab::{Lab, ProcSpec};

pub const PY: &str = "/usr/bin/python3";
pub const NET: &str = "net1";
/// Ports the backends serve TCP and UDP on.
pub const PORTS: [u16; 3] = [80, 8080, 5300];

pub struct Rig {
    pub lab: Lab,
    /// node1's own bpffs (the lab unmounts it).
    pub bpffs: PathBuf,
    /// The node's task cgroup root (programs attach here).
    pub tasks: PathBuf,
    /// A task's cgroup below it (clients run here: the attachment is inherited).
    pub task: PathBuf,
    pub net: NetworkLb,
    /// Backend servers' addresses (node2..4) and their names.
    pub backends: Vec<(Ipv4Addr, String)>,
    tool: PathBuf,
}

impl Rig {
    pub fn new() -> Rig {
        let lab = Lab::new(5).expect("lab");
        let bpffs = lab.node(1).bpffs().expect("bpffs");
        let tasks = lab.node(1).cgroup().expect("node cgroup").join("tasks");
        let task = tasks.join("task1");
        std::fs::create_dir_all(&task).expect("create the task cgroup");
        let tool = lab.dir().join("lbtool.py");
        std::fs::write(&tool, include_str!("lbtool.py")).expect("write lbtool.py");
        let mut backends = Vec::new();
        for i in 2..=4 {
            let node = lab.node(i);
            let name = format!("backend{i}");
            let mut spec = ProcSpec::new(&name, PY).arg(&tool).arg("server").arg(&name);
            for p in PORTS {
                spec = spec.arg(p.to_string());
            }
            node.spawn(spec).expect("start a backend server");
            backends.push((node.addr(), name));
        }
        let lbn = lab.node(5);
        let net = NetworkLb {
            id: NET.into(),
            netns: lbn.ns().path().to_path_buf(),
            iface: lab::NODE_IFACE.into(),
            addr: lbn.addr(),
            subnet: format!("{}/{}", lab::UNDERLAY_NET, lab::UNDERLAY_PREFIX_LEN)
                .parse()
                .expect("subnet"),
        };
        let rig = Rig {
            lab,
            bpffs,
            tasks,
            task,
            net,
            backends,
            tool,
        };
        for (addr, name) in &rig.backends {
            let out = rig.client_unbalanced(&["tcp", &addr.to_string(), "80", "1"]);
            let ok = lab::wait_until(
                &format!("{name} listening"),
                Duration::from_secs(10),
                &mut || {
                    rig.client_unbalanced(&["tcp", &addr.to_string(), "80", "1"])
                        .contains(name.as_str())
                },
            );
            ok.unwrap_or_else(|e| panic!("{e}: {out}\n{}", rig.lab.node(1).log_tail(20)));
        }
        rig
    }

    pub fn config(&self) -> Config {
        Config {
            choice: Choice::Ebpf,
            cgroup: Some(self.tasks.clone()),
            pin_dir: self.bpffs.join("netagent"),
            ipvs_timeouts: (0, 0, 0),
        }
    }

    pub fn backend_addrs(&self) -> BTreeSet<Ipv4Addr> {
        self.backends.iter().map(|(a, _)| *a).collect()
    }

    /// A VIP in the network: 198.19.192.0 + i (the lab's nodes sit in 198.18.0.0/24, made-up
    /// backends from 198.18.64.0 up).
    pub fn vip(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 192, 0)) + i)
    }

    pub fn service(name: &str, vip: Ipv4Addr, backends: BTreeSet<Ipv4Addr>) -> ServiceLb {
        ServiceLb {
            key: ServiceKey {
                network: NET.into(),
                service: name.into(),
            },
            vip,
            backends,
        }
    }

    pub fn desired(&self, services: impl IntoIterator<Item = ServiceLb>) -> Desired {
        Desired {
            networks: BTreeMap::from([(NET.to_string(), self.net.clone())]),
            services: services.into_iter().map(|s| (s.key.clone(), s)).collect(),
        }
    }

    /// Runs lbtool in node1 inside the task cgroup (balanced); returns stdout.
    pub fn client(&self, args: &[&str]) -> String {
        self.run_in(Some(&self.task), args)
    }

    /// Runs lbtool in node1 outside the task cgroup (not balanced).
    pub fn client_unbalanced(&self, args: &[&str]) -> String {
        self.run_in(None, args)
    }

    fn run_in(&self, cgroup: Option<&Path>, args: &[&str]) -> String {
        let tool = self.tool.display().to_string();
        let mut argv: Vec<String> = vec!["sh".into(), "-c".into()];
        match cgroup {
            Some(cg) => argv.push(format!(
                "echo $$ > {}/cgroup.procs && exec {PY} \"$@\"",
                cg.display()
            )),
            None => argv.push(format!("exec {PY} \"$@\"")),
        }
        argv.push("lbtool".into());
        argv.push(tool);
        argv.extend(args.iter().map(|s| s.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = self.lab.node(1).run(&argv).expect("run lbtool");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts lbtool as a long-lived process in node1's task cgroup.
    pub fn spawn_client(&self, name: &str, args: &[&str]) -> lab::Proc {
        let spec = ProcSpec::new(name, PY)
            .arg(&self.tool)
            .args(args.iter().copied())
            .cgroup(&self.task);
        self.lab.node(1).spawn(spec).expect("start a client")
    }

    /// The VIPs the load-balancer namespace holds (netagent's local /32 routes on its interface).
    pub fn lb_addrs(&self) -> BTreeSet<Ipv4Addr> {
        let out = self
            .lab
            .node(5)
            .run_ok(&[
                "ip",
                "-4",
                "route",
                "show",
                "table",
                "local",
                "proto",
                "78",
                "dev",
                lab::NODE_IFACE,
            ])
            .expect("ip route");
        out.lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.first() == Some(&"local")).then(|| w.get(1)?.parse().ok())?
            })
            .collect()
    }
}

/// Parsed lbtool output.
pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("lbtool said {out:?}: {e}"))
}

/// `names` of a tcp/udp run as name -> count.
pub fn names(v: &serde_json::Value) -> BTreeMap<String, u64> {
    v["names"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}
