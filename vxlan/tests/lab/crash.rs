//! A process killed half-way through setup, restarted, converges to the desired state.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Output;

use crate::common::*;
use lab::Lab;
use vxlan::{DesiredState, GatewayEndpoint, GwBridge, NetworkState};

const NETWORKS: usize = 4;
const PEERS: usize = 10;

fn state(lab: &Lab, tasks: &[PathBuf]) -> DesiredState {
    let mut s = DesiredState {
        gwbridge: Some(GwBridge::new("172.18.0.0/16".parse().unwrap())),
        ..Default::default()
    };
    for (k, path) in tasks.iter().enumerate() {
        let id = format!("net{k}xxxxxxxxxxxxxxxxxxxx");
        let subnet = format!("10.{}.0.0/24", 100 + k);
        let local = Ipv4Addr::new(10, 100 + k as u8, 0, 2);
        s.networks.push(NetworkState {
            network: network(&id, 5000 + k as u32, &subnet),
            endpoints: vec![endpoint(&id, path, "eth0", local)],
            // Remote endpoints on node 2 (one of them is a real task there).
            peers: (0..PEERS)
                .map(|p| {
                    peer(
                        Ipv4Addr::new(10, 100 + k as u8, 0, 10 + p as u8),
                        lab.node(2).addr(),
                    )
                })
                .collect(),
        });
        s.gateway_endpoints.push(GatewayEndpoint {
            netns: path.clone(),
            ifname: "eth1".into(),
            address: Ipv4Addr::new(172, 18, 0, 2 + k as u8),
            mac: None,
            default_route: true,
        });
    }
    s
}

fn apply(lab: &Lab, file: &std::path::Path, die_after: Option<u64>) -> Output {
    let mut cmd = lab.node(1).command(env!("CARGO_BIN_EXE_vxlan-apply"));
    cmd.arg(file);
    if let Some(n) = die_after {
        cmd.env("NETAGENT_VXLAN_DIE_AFTER", n.to_string());
    }
    cmd.output().unwrap()
}

fn writes(out: &Output) -> u64 {
    assert!(
        out.status.success(),
        "vxlan-apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .strip_prefix("writes=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output {text:?}"))
}

#[test]
fn killed_half_way_then_restarted_converges() {
    need_root!();
    use std::os::unix::process::ExitStatusExt;
    let lab = Lab::new(2).unwrap();
    let tasks: Vec<PathBuf> = (0..NETWORKS)
        .map(|k| task(&lab, &format!("c{k}")).1)
        .collect();
    let desired = state(&lab, &tasks);
    let write_file = |name: &str, s: &DesiredState| {
        let file = lab.dir().join(name);
        let input = serde_json::json!({
            "vtep": lab.node(1).addr(),
            "prefix": node_prefix(&lab, 1),
            "state": s,
        });
        std::fs::write(&file, serde_json::to_vec(&input).unwrap()).unwrap();
        file
    };
    let full = write_file("desired.json", &desired);
    let empty = write_file("empty.json", &DesiredState::default());

    // Node 2 holds a real endpoint of the first network: 10.100.0.10.
    let (t2, t2_path) = task(&lab, "remote");
    let mut dp2 = dataplane(&lab, 2, 4789);
    let net0 = desired.networks[0].network.clone();
    dp2.apply(&DesiredState {
        networks: vec![NetworkState {
            network: net0.clone(),
            endpoints: vec![endpoint(
                &net0.id,
                &t2_path,
                "eth0",
                Ipv4Addr::new(10, 100, 0, 10),
            )],
            peers: vec![peer(Ipv4Addr::new(10, 100, 0, 2), lab.node(1).addr())],
        }],
        ..Default::default()
    })
    .unwrap();

    // A clean run tells how many writes the whole setup takes.
    let total = writes(&apply(&lab, &full, None));
    assert!(total > 20, "setup took only {total} writes");
    assert_eq!(
        writes(&apply(&lab, &full, None)),
        0,
        "a fresh process found work to do"
    );
    assert!(reaches(&t2, Ipv4Addr::new(10, 100, 0, 2)));

    // Early (namespace made, nothing in it), late, and evenly in between.
    let mut points: Vec<u64> = vec![1, 2, 3, total - 1];
    points.extend((1..=12).map(|i| i * total / 13));
    points.sort();
    points.dedup();
    for k in points {
        // From nothing, kill the process after its k-th write ...
        assert!(writes(&apply(&lab, &empty, None)) > 0);
        assert_eq!(namespaces(&node_prefix(&lab, 1)), Vec::<String>::new());
        let out = apply(&lab, &full, Some(k));
        assert_eq!(
            out.status.signal(),
            Some(9),
            "the run meant to die after {k} writes ended otherwise: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // ... then a new process converges, and the one after it has nothing left to do. (The
        // kill can come after the kernel applied a whole batch, so the rest may be nothing.)
        let second = writes(&apply(&lab, &full, None));
        assert!(second <= total + 8, "killed after {k}: {second} writes");
        assert_eq!(
            writes(&apply(&lab, &full, None)),
            0,
            "killed after {k}: not converged"
        );
        assert!(
            reaches(&t2, Ipv4Addr::new(10, 100, 0, 2)),
            "killed after {k}: the endpoint is unreachable after recovery"
        );
    }
    assert!(writes(&apply(&lab, &empty, None)) > 0);
    assert_eq!(namespaces(&node_prefix(&lab, 1)), Vec::<String>::new());
    let links = lab.node(1).run_ok(&["ip", "-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 2, "{links}");
}
