//! Encrypted overlay networks on a real kernel, captured on the lab's underlay.
//!
//! This host's kernel has no ESP and no GCM: the tests that need them are `#[ignore]`d here and
//! run in the kernel lab (`cargo xtask test-kernel esp`, Debian 6.1). The last two run on any
//! kernel: without ESP an encrypted network carries nothing in plaintext, and a firewall that
//! cannot be installed leaves the network unbuilt.

/// A figure for the report: written past the test harness's output capture, so it shows in the
/// kernel lab's output of a passing test too.
macro_rules! figure {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[path = "lab/common.rs"]
#[macro_use]
#[allow(dead_code)]
mod common;
#[path = "lab/iperf.rs"]
mod iperf;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use lab::Lab;
use lab::capture::Capture;
use netns::NetNs;
use vxlan::ipsec::{self, NO_ESP, spi};
use vxlan::{Dataplane, DesiredState, IpsecKeys, NetworkState};

const ENC: &str = "eeeeeeeeeeeeeeeeeeeeeeee1";
const PLAIN: &str = "pppppppppppppppppppppppp2";
const VNI_ENC: u32 = 4201;
const VNI_PLAIN: u32 = 4202;

fn addr_enc(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 20, 0, 10 + node as u8)
}
fn addr_plain(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 21, 0, 10 + node as u8)
}

fn keys(tags: &[u64]) -> IpsecKeys {
    let raw: Vec<(u64, Vec<u8>)> = tags
        .iter()
        .map(|t| {
            (
                *t,
                (0..16).map(|i| (*t as u8).wrapping_mul(31) ^ i).collect(),
            )
        })
        .collect();
    let refs: Vec<(u64, &[u8])> = raw.iter().map(|(t, k)| (*t, k.as_slice())).collect();
    IpsecKeys::from_store(&refs).unwrap()
}

struct Setup {
    lab: Lab,
    enc: Vec<(NetNs, PathBuf)>,
    plain: Vec<(NetNs, PathBuf)>,
    dps: Vec<Dataplane>,
}

impl Setup {
    fn new(nodes: usize, port: u16) -> Setup {
        let lab = Lab::new(nodes).unwrap();
        let enc = (1..=nodes).map(|i| task(&lab, &format!("e{i}"))).collect();
        let plain = (1..=nodes).map(|i| task(&lab, &format!("p{i}"))).collect();
        let mut s = Setup {
            lab,
            enc,
            plain,
            dps: Vec::new(),
        };
        for i in 1..=nodes {
            let mut dp = dataplane(&s.lab, i, port);
            dp.set_ipsec_keys(Some(keys(&[1, 2, 3]))).unwrap();
            dp.apply(&s.desired(i)).unwrap();
            s.dps.push(dp);
        }
        s
    }

    fn nodes(&self) -> usize {
        self.enc.len()
    }

    fn desired(&self, node: usize) -> DesiredState {
        let all: Vec<usize> = (1..=self.nodes()).collect();
        let mut state = DesiredState::default();
        for (id, vni, subnet, addr, list, encrypted) in [
            (
                ENC,
                VNI_ENC,
                "10.20.0.0/24",
                addr_enc as fn(usize) -> Ipv4Addr,
                &self.enc,
                true,
            ),
            (
                PLAIN,
                VNI_PLAIN,
                "10.21.0.0/24",
                addr_plain,
                &self.plain,
                false,
            ),
        ] {
            let mut network = network(id, vni, subnet);
            network.encrypted = encrypted;
            state.networks.push(NetworkState {
                network,
                endpoints: vec![endpoint(id, &list[node - 1].1, "eth0", addr(node))],
                peers: all
                    .iter()
                    .map(|&j| peer(addr(j), self.lab.node(j).addr()))
                    .collect(),
            });
        }
        state
    }

    fn vtep(&self, node: usize) -> Ipv4Addr {
        self.lab.node(node).addr()
    }
}

/// An IPv4 packet on the underlay: (source, destination, protocol, payload).
fn ipv4(frame: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8, &[u8])> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[14] >> 4 != 4 {
        return None;
    }
    let ip = &frame[14..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    Some((src, dst, ip[9], ip.get(ihl..)?))
}

/// What a capture saw: ESP packets as (src, dst, SPI), and VXLAN packets as (src, dport, VNI).
#[derive(Debug, Default)]
struct Seen {
    esp: Vec<(Ipv4Addr, Ipv4Addr, u32)>,
    vxlan: Vec<(Ipv4Addr, u16, u32)>,
}

fn seen(frames: &[Vec<u8>]) -> Seen {
    let mut s = Seen::default();
    for f in frames {
        if let Some((src, dst, 50, p)) = ipv4(f)
            && p.len() >= 4
        {
            s.esp
                .push((src, dst, u32::from_be_bytes([p[0], p[1], p[2], p[3]])));
        }
        if let Some(v) = decode_vxlan(f) {
            s.vxlan.push((v.src, v.dport, v.vni));
        }
    }
    s
}

fn esp_only_for_the_encrypted_vni(port: u16) {
    let s = Setup::new(3, port);
    let cap = Capture::start(&s.lab, "p1", &format!("esp{port}"), "udp or ip proto 50");
    for j in [2, 3] {
        assert!(reaches(&s.enc[0].0, addr_enc(j)), "encrypted: 1 -> {j}");
        assert!(reaches(&s.plain[0].0, addr_plain(j)), "plain: 1 -> {j}");
    }
    let got = seen(&cap.stop());
    figure!(
        "port {port}: {} ESP packets, {} VXLAN packets",
        got.esp.len(),
        got.vxlan.len()
    );
    // Under a kernel with TCX the overlay fast path carried the encrypted network's frames:
    // straight from the task's veth to vxlan0 and from vxlan0 into the task, with ESP added
    // and removed on the underlay side of vxlan0 (checked on the wire below).
    if lab::expect_fast_path() {
        let dp = &s.dps[0];
        assert!(dp.fast_path().is_active(), "{}", dp.fast_path());
        let st = dp
            .fast_path_stats(ENC)
            .unwrap()
            .expect("the encrypted network has fast-path maps");
        figure!(
            "fast path on node1, encrypted network: task->vxlan0 {}, vxlan0->task {}, to the bridge {}",
            st.veth_to_remote,
            st.vxlan_to_local,
            st.passed
        );
        assert!(
            st.veth_to_remote > 0 && st.vxlan_to_local > 0,
            "the encrypted network's frames did not take the fast path: {st:?}"
        );
    }
    assert!(
        !got.vxlan.iter().any(|(_, _, vni)| *vni == VNI_ENC),
        "plaintext VXLAN of the encrypted VNI on the underlay: {:?}",
        got.vxlan
    );
    assert!(
        got.vxlan
            .iter()
            .any(|(_, p, vni)| *vni == VNI_PLAIN && *p == port),
        "the plain network shows as VXLAN on port {port}: {:?}",
        got.vxlan
    );
    assert!(!got.esp.is_empty(), "no ESP on the underlay");
    // Every ESP packet uses the primary key's (tag 2) SPI of its direction.
    let (n1, n2, n3) = (s.vtep(1), s.vtep(2), s.vtep(3));
    let want: BTreeSet<u32> = [
        spi(n1, n2, 2),
        spi(n2, n1, 2),
        spi(n1, n3, 2),
        spi(n3, n1, 2),
    ]
    .into();
    for (src, dst, spi) in &got.esp {
        assert!(want.contains(spi), "{src} -> {dst} spi {spi:#x}");
    }
    // The encrypted network's MTU leaves room for ESP; the plain one does not.
    let (_, underlay) = s.dps[0].underlay();
    let mtu = |ns: &NetNs| ip(ns, &["-o", "link", "show", "eth0"]);
    assert!(
        mtu(&s.enc[0].0).contains(&format!("mtu {}", ipsec::encrypted_mtu(underlay))),
        "{}",
        mtu(&s.enc[0].0)
    );
    assert!(mtu(&s.plain[0].0).contains(&format!("mtu {}", underlay - 50)));
    let table =
        run_ok(
            s.lab
                .node(1)
                .command("nft")
                .args(["list", "table", "ip", vxlan::ipsec_nft::TABLE]),
        );
    assert!(
        table.contains(&format!("udp dport {port}")),
        "the firewall follows the data-path port: {table}"
    );

    // A new process adopts it all without writing.
    let mut again = dataplane(&s.lab, 1, port);
    again.set_ipsec_keys(Some(keys(&[1, 2, 3]))).unwrap();
    again.apply(&s.desired(1)).unwrap();
    assert_eq!(again.writes(), 0, "a restart writes nothing");

    // The network's removal takes every state, policy and rule with it.
    again.apply(&DesiredState::default()).unwrap();
    let node = s.lab.node(1);
    assert_eq!(node.run_ok(&["ip", "xfrm", "state"]).unwrap().trim(), "");
    assert_eq!(node.run_ok(&["ip", "xfrm", "policy"]).unwrap().trim(), "");
    let tables = node.run_ok(&["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains(vxlan::ipsec_nft::TABLE), "{tables}");
}

#[test]
#[ignore = "needs ESP and GCM: kernel lab"]
fn encrypted_vni_is_only_esp_on_the_underlay() {
    need_root!();
    esp_only_for_the_encrypted_vni(4789);
}

#[test]
#[ignore = "needs ESP and GCM: kernel lab"]
fn encrypted_vni_is_only_esp_on_data_path_port_5789() {
    need_root!();
    esp_only_for_the_encrypted_vni(5789);
}

#[test]
#[ignore = "needs ESP and GCM: kernel lab"]
fn rotation_under_a_ping_loop_loses_nothing() {
    need_root!();
    let mut s = Setup::new(2, 4789);
    let (n1, n2) = (s.vtep(1), s.vtep(2));
    assert!(reaches(&s.enc[0].0, addr_enc(2)));
    let cap = Capture::start(&s.lab, "p1", "rotation", "ip proto 50");
    let count = 150;
    let ping = s.enc[0]
        .0
        .command("ping")
        .args(["-i", "0.05", "-W", "2", "-c", &count.to_string()])
        .arg(addr_enc(2).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rounds = [[2u64, 3, 4], [3, 4, 5]];
    for tags in rounds {
        std::thread::sleep(Duration::from_secs(2));
        // One node after the other, as the dispatcher would reach them.
        for dp in s.dps.iter_mut() {
            dp.set_ipsec_keys(Some(keys(&tags))).unwrap();
        }
    }
    let out = ping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let got = seen(&cap.stop());
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default()
        .to_string();
    figure!("rotation under ping: {summary}");
    assert!(
        summary.contains(&format!("{count} packets transmitted, {count} received")),
        "packets were lost across two rotations: {text}"
    );
    let spis: BTreeSet<u32> = got
        .esp
        .iter()
        .filter(|(src, _, _)| *src == n1)
        .map(|e| e.2)
        .collect();
    for tag in [2, 3, 4] {
        assert!(
            spis.contains(&spi(n1, n2, tag)),
            "node 1 never sent with key {tag}: {spis:x?}"
        );
    }
    let states = s.lab.node(1).run_ok(&["ip", "xfrm", "state"]).unwrap();
    for old in [1, 2] {
        for spi in [spi(n1, n2, old), spi(n2, n1, old)] {
            assert!(
                !states.contains(&format!("spi {spi:#010x}")),
                "the states of key {old} are gone: {states}"
            );
        }
    }
    assert!(states.contains(&format!("spi {:#010x}", spi(n2, n1, 5))));
}

/// The counter of a rule in a chain of the firewall table.
fn dropped(lab: &Lab, node: usize, chain: &str) -> u64 {
    let out = lab
        .node(node)
        .run_ok(&["nft", "list", "chain", "ip", vxlan::ipsec_nft::TABLE, chain])
        .unwrap();
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
#[ignore = "needs ESP and GCM: kernel lab"]
fn fail_closed_when_states_policies_or_rules_go() {
    need_root!();
    let mut s = Setup::new(2, 4789);
    assert!(reaches(&s.enc[0].0, addr_enc(2)));
    let node1 = s.lab.node(1);
    let no_plaintext = |what: &str, from: Option<Ipv4Addr>| {
        let cap = Capture::start(&s.lab, "p1", what, "udp or ip proto 50");
        assert!(
            !ping(&s.enc[0].0, addr_enc(2)),
            "{what}: the ping got through"
        );
        assert!(
            reaches(&s.plain[0].0, addr_plain(2)),
            "{what}: plain still works"
        );
        let got = seen(&cap.stop());
        let leaked: Vec<_> = got
            .vxlan
            .iter()
            .filter(|(src, _, vni)| *vni == VNI_ENC && from.is_none_or(|f| f == *src))
            .collect();
        assert!(leaked.is_empty(), "{what}: plaintext left: {leaked:?}");
    };

    // States removed by hand: the policy finds none and drops.
    node1.run_ok(&["ip", "xfrm", "state", "flush"]).unwrap();
    no_plaintext("states-flushed", None);
    // Policies too: the firewall drops what would leave unencrypted.
    node1.run_ok(&["ip", "xfrm", "policy", "flush"]).unwrap();
    no_plaintext("policies-flushed", None);
    assert!(dropped(&s.lab, 1, "postrouting") > 0);
    // Node 1 loses its firewall as well (a broken sender): its plaintext is refused by node 2.
    node1
        .run_ok(&["nft", "delete", "table", "ip", vxlan::ipsec_nft::TABLE])
        .unwrap();
    let before = dropped(&s.lab, 2, "input");
    assert!(!ping(&s.enc[0].0, addr_enc(2)));
    assert!(
        dropped(&s.lab, 2, "input") > before,
        "node 2 dropped the plaintext that arrived"
    );

    // The next reconcile restores rules, states and policies.
    let spec = s.desired(1).networks[0].network.clone();
    s.dps[0].ensure_network(&spec).unwrap();
    assert!(reaches(&s.enc[0].0, addr_enc(2)), "restored by reconcile");
    let states = node1.run_ok(&["ip", "xfrm", "state"]).unwrap();
    assert_eq!(states.matches("proto esp").count(), 4, "{states}");
}

/// The figures of `cargo xtask bench overlay`'s encrypted part under Debian's kernel (TCG:
/// relative only): iperf3 over the encrypted network and over a plain one, same nodes, same
/// run. Asserts that both carry the transfers; the ratio is printed past the harness's capture.
#[test]
#[ignore = "needs ESP and GCM: kernel lab"]
fn encrypted_and_plain_iperf3_in_the_same_run() {
    need_root!();
    let (enc, plain) = iperf::encrypted_vs_plain(3, 3).unwrap();
    let (e, p) = (iperf::median(enc.clone()), iperf::median(plain.clone()));
    figure!(
        "iperf3 TCP (TCG, relative only): encrypted {e:.3} Gbit/s {enc:.3?}, plain {p:.3} \
         Gbit/s {plain:.3?}, ratio encrypted/plain {:.2}",
        e / p
    );
    assert!(
        enc.iter().chain(&plain).all(|g| *g > 0.0),
        "both networks carried every transfer"
    );
}

/// On a kernel without ESP (this host), an encrypted network fails closed: the states cannot be
/// made, the error says why, and nothing of the VNI crosses the underlay in plaintext.
#[test]
fn without_esp_nothing_flows_in_plaintext() {
    need_root!();
    if ipsec::probe().is_ok() {
        eprintln!("this kernel has ESP: the kernel-lab tests cover it");
        return;
    }
    assert!(ipsec::probe().unwrap_err().contains(NO_ESP));
    let lab = Lab::new(2).unwrap();
    let tasks: Vec<(NetNs, PathBuf)> = (1..=2).map(|i| task(&lab, &format!("x{i}"))).collect();
    let mut dps = Vec::new();
    for i in 1..=2 {
        let mut dp = dataplane(&lab, i, 4789);
        dp.set_ipsec_keys(Some(keys(&[1, 2, 3]))).unwrap();
        let mut network = network(ENC, VNI_ENC, "10.20.0.0/24");
        network.encrypted = true;
        let state = DesiredState {
            networks: vec![NetworkState {
                network,
                endpoints: vec![endpoint(ENC, &tasks[i - 1].1, "eth0", addr_enc(i))],
                peers: (1..=2)
                    .map(|j| peer(addr_enc(j), lab.node(j).addr()))
                    .collect(),
            }],
            ..Default::default()
        };
        let e = dp.apply(&state).unwrap_err().to_string();
        assert!(e.contains(NO_ESP), "{e}");
        // Whatever got built is covered by the firewall; the endpoint is made anyway here
        // (the executor keeps such tasks pending instead).
        for ep in &state.networks[0].endpoints {
            dp.ensure_endpoint(ep).unwrap();
        }
        dps.push(dp);
    }
    let cap = Capture::start(&lab, "p1", "noesp", "udp");
    assert!(!ping(&tasks[0].0, addr_enc(2)));
    let got = seen(&cap.stop());
    assert!(
        !got.vxlan.iter().any(|(_, _, vni)| *vni == VNI_ENC),
        "plaintext of the encrypted VNI: {:?}",
        got.vxlan
    );
    assert!(
        dropped(&lab, 1, "postrouting") > 0,
        "the firewall dropped it"
    );
}

/// Fail closed at setup: when the firewall cannot be installed (here: an `nft` that fails, first
/// on PATH of a child process running this test), the encrypted network is not built — no
/// sandbox, no VXLAN device — and the error says why. Runs on any kernel.
#[test]
fn a_firewall_that_cannot_be_installed_leaves_the_network_unbuilt() {
    need_root!();
    const CHILD: &str = "NETAGENT_ESP_TEST_FAKE_NFT";
    let name = "a_firewall_that_cannot_be_installed_leaves_the_network_unbuilt";
    if std::env::var_os(CHILD).is_none() {
        let dir = std::env::temp_dir().join(format!("netagent-fake-nft-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("nft");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'simulated nft failure' >&2\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--include-ignored", "--nocapture"])
            .env(CHILD, "1")
            .env("PATH", path)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the child ran the test: {text}");
        return;
    }
    let lab = Lab::new(1).unwrap();
    let (_t, path) = task(&lab, "t");
    let mut dp = dataplane(&lab, 1, 4789);
    let mut net = network(ENC, VNI_ENC, "10.20.0.0/24");
    net.encrypted = true;
    let e = dp.ensure_network(&net).unwrap_err().to_string();
    assert!(
        e.contains("simulated nft failure") && e.contains(vxlan::ipsec_nft::TABLE),
        "{e}"
    );
    let e = dp
        .ensure_endpoint(&endpoint(ENC, &path, "eth0", addr_enc(1)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not known"), "{e}");
    assert!(
        !netns::exists(&dp.sandbox_name(ENC)),
        "no sandbox for the network"
    );
    let vx = ip(lab.node(1).ns(), &["-d", "link", "show", "type", "vxlan"]);
    assert!(vx.trim().is_empty(), "{vx}");
    // A plain network is not affected.
    dp.ensure_network(&network(PLAIN, VNI_PLAIN, "10.21.0.0/24"))
        .unwrap();
}
