//! iperf3 over an encrypted network against the same network unencrypted, on two lab nodes, in
//! the same run (rounds interleaved). Shared by `cargo xtask bench overlay` (where the kernel has
//! ESP) and the kernel-lab test that reports the figures under Debian's kernel.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lab::Lab;
use netns::NetNs;
use vxlan::{Config, Dataplane, DesiredState, Endpoint, IpsecKeys, Network, NetworkState, Peer};

/// Kills the child on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One iperf3 client run: received Gbit/s.
fn iperf(client: &mut Command) -> Result<f64, String> {
    let mut last = String::new();
    for _ in 0..50 {
        let out = client.output().map_err(|e| format!("iperf3: {e}"))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return Ok(bps / 1e9);
        }
        last = v["error"].as_str().unwrap_or("no result").to_string();
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("iperf3 client kept failing: {last}"))
}

/// The median of a non-empty list.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Throughput (Gbit/s per round) task -> task over an encrypted network and over a plain one
/// between the same two nodes: (encrypted, plain).
pub fn encrypted_vs_plain(seconds: u32, rounds: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
    let lab = Lab::new(2).map_err(|e| e.to_string())?;
    let mk = |name: &str| -> Result<NetNs, String> {
        let ns = NetNs::create(&format!("{}-t-{name}", lab.prefix())).map_err(|e| e.to_string())?;
        ns.command("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .map_err(|e| e.to_string())?;
        Ok(ns)
    };
    let tasks = [[mk("enc1")?, mk("plain1")?], [mk("enc2")?, mk("plain2")?]];
    let nets = [
        ("iperfenc0000000000000000e", 4301, true),
        ("iperfplain00000000000000p", 4302, false),
    ];
    let addr = |k: usize, i: usize| Ipv4Addr::new(10, 30 + k as u8, 0, 1 + i as u8);
    let keys = IpsecKeys::from_store(&[(1, &[0x11; 16][..]), (2, &[0x22; 16][..])])
        .map_err(|e| e.to_string())?;
    let mut dps = Vec::new();
    for i in 1..=2 {
        let node = lab.node(i);
        let mut cfg = Config::new(
            NetNs::open(node.ns().name()).map_err(|e| e.to_string())?,
            node.addr(),
        );
        cfg.prefix = format!("{}-n{i}-", lab.prefix());
        let mut dp = Dataplane::new(cfg).map_err(|e| e.to_string())?;
        dp.set_ipsec_keys(Some(keys.clone()))
            .map_err(|e| e.to_string())?;
        let mut state = DesiredState::default();
        for (k, (id, vni, encrypted)) in nets.iter().enumerate() {
            let subnet: vxlan::Ipv4Net = format!("10.{}.0.0/24", 30 + k).parse().unwrap();
            state.networks.push(NetworkState {
                network: Network {
                    id: id.to_string(),
                    vni: *vni,
                    subnet,
                    gateway: Ipv4Addr::new(10, 30 + k as u8, 0, 254),
                    mtu: None,
                    internal: false,
                    encrypted: *encrypted,
                },
                endpoints: vec![Endpoint {
                    network: id.to_string(),
                    netns: tasks[i - 1][k].path().to_path_buf(),
                    ifname: "eth0".into(),
                    address: addr(k, i),
                    mac: None,
                }],
                peers: (1..=2)
                    .map(|j| Peer::new(addr(k, j), lab.node(j).addr()))
                    .collect(),
            });
        }
        dp.apply(&state).map_err(|e| e.to_string())?;
        dps.push(dp);
    }
    let mut servers = Vec::new();
    for (k, task) in tasks[1].iter().enumerate() {
        let child = task
            .command("iperf3")
            .args(["-s", "-B", &addr(k, 2).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("iperf3 server: {e}"))?;
        servers.push(Killed(child));
    }
    let client = |k: usize| {
        let mut c = tasks[0][k].command("iperf3");
        c.args([
            "-c",
            &addr(k, 2).to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ])
        .stderr(Stdio::null());
        c
    };
    let (mut enc, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        enc.push(iperf(&mut client(0))?);
        plain.push(iperf(&mut client(1))?);
    }
    drop(servers);
    for dp in &mut dps {
        dp.apply(&DesiredState::default())
            .map_err(|e| e.to_string())?;
    }
    Ok((enc, plain))
}
