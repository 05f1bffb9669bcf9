//! Tests that need Debian's stock kernel (IPVS, ESP, GCM), which this host's kernel lacks. They are
//! ignored by a plain `cargo test`; `cargo xtask test-kernel` runs them inside a qemu guest booting
//! Debian bookworm's kernel. Everything happens inside lab namespaces.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use lab::{Lab, Node};

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
#[ignore = "kernel lab: needs the Debian kernel (IPVS, ESP); run with cargo xtask test-kernel"]
fn kernel_lab_builds_a_three_node_lab() {
    eprintln!("kernel {}", kernel());
    let lab = Lab::new(3).unwrap();
    for a in lab.nodes() {
        for b in lab.nodes() {
            if a.index() != b.index() {
                assert!(
                    a.ping(b.addr()),
                    "{} cannot reach {} ({})\n{}",
                    a.name(),
                    b.name(),
                    b.addr(),
                    a.log_tail(20)
                );
            }
        }
    }
}

/// A TCP server on a thread whose listening socket lives in a node's namespace: every connection
/// gets `reply` and is closed. Stops when dropped.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(node: &Node, port: u16, reply: String) -> Server {
        let listener = node
            .in_ns(move || TcpListener::bind(("0.0.0.0", port)))
            .unwrap()
            .unwrap_or_else(|e| panic!("bind :{port} in {}: {e}", node.name()));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.write_all(reply.as_bytes());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `node` to `addr` and returns what the server sends before closing.
fn fetch(node: &Node, addr: SocketAddr) -> std::io::Result<String> {
    node.in_ns(move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        Ok(text)
    })
    .map_err(std::io::Error::other)?
}

#[test]
#[ignore = "kernel lab: needs the Debian kernel (IPVS, ESP); run with cargo xtask test-kernel"]
fn ipvs_virtual_service_with_two_real_servers() {
    // node1: client; node2: director with the VIP; node3, node4: real servers. NAT (masquerade)
    // forwarding: the real servers route their replies to the client through the director, which
    // rewrites them back to the VIP.
    let lab = Lab::new(4).unwrap();
    let (client, director) = (lab.node(1), lab.node(2));
    let vip = "198.19.0.100";
    let service = format!("{vip}:80");

    director
        .run_ok(&["ip", "addr", "add", &format!("{vip}/32"), "dev", "eth0"])
        .unwrap();
    for setting in [
        "net.ipv4.ip_forward=1",
        // Replies come in and go out on eth0: no redirects telling the servers to bypass us.
        "net.ipv4.conf.all.send_redirects=0",
        "net.ipv4.conf.eth0.send_redirects=0",
    ] {
        director.run_ok(&["sysctl", "-q", "-w", setting]).unwrap();
    }
    director
        .run_ok(&["ipvsadm", "-A", "-t", &service, "-s", "rr"])
        .unwrap();
    let mut servers = Vec::new();
    for i in [3, 4] {
        let real = lab.node(i);
        let backend = format!("{}:8080", real.addr());
        director
            .run_ok(&["ipvsadm", "-a", "-t", &service, "-r", &backend, "-m"])
            .unwrap();
        real.run_ok(&[
            "ip",
            "route",
            "add",
            &format!("{}/32", client.addr()),
            "via",
            &director.addr().to_string(),
        ])
        .unwrap();
        servers.push(Server::start(real, 8080, format!("{}\n", real.name())));
    }

    let listing = director.run_ok(&["ipvsadm", "-Ln"]).unwrap();
    assert!(
        listing.contains(&format!("TCP  {service} rr")),
        "service missing:\n{listing}"
    );
    for i in [3, 4] {
        let line = listing
            .lines()
            .find(|l| l.contains(&format!("{}:8080", lab.node(i).addr())))
            .unwrap_or_else(|| panic!("real server node{i} missing:\n{listing}"));
        assert!(line.contains("Masq"), "{line}");
    }

    let vip_addr: SocketAddr = format!("{vip}:80").parse().unwrap();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for attempt in 0..6 {
        let reply = fetch(client, vip_addr).unwrap_or_else(|e| {
            panic!(
                "connection {attempt} to the VIP failed: {e}\n{}\n{}",
                director.run_ok(&["ipvsadm", "-Lnc"]).unwrap_or_default(),
                director.log_tail(30)
            )
        });
        *answers.entry(reply.trim().to_string()).or_default() += 1;
    }
    assert_eq!(
        answers.keys().cloned().collect::<Vec<_>>(),
        ["node3", "node4"],
        "both real servers answer through the VIP: {answers:?}"
    );
    // Round robin: three each.
    assert!(answers.values().all(|&n| n == 3), "{answers:?}");
    drop(servers);
}

/// 16 bytes of AES-128 key and 4 bytes of salt, as rfc4106 wants.
const KEY_1: &str = "0x0123456789abcdef0123456789abcdef01234567";
const KEY_2: &str = "0xfedcba9876543210fedcba9876543210fedcba98";
const AEAD: &str = "rfc4106(gcm(aes))";

fn add_state(node: &Node, src: &str, dst: &str, spi: &str, reqid: &str, key: &str) {
    node.run_ok(&[
        "ip",
        "xfrm",
        "state",
        "add",
        "src",
        src,
        "dst",
        dst,
        "proto",
        "esp",
        "spi",
        spi,
        "reqid",
        reqid,
        "mode",
        "transport",
        "aead",
        AEAD,
        key,
        "128",
    ])
    .unwrap();
}

#[test]
#[ignore = "kernel lab: needs the Debian kernel (IPVS, ESP); run with cargo xtask test-kernel"]
fn esp_state_with_rfc4106_gcm_aes_is_accepted() {
    let lab = Lab::new(2).unwrap();
    let (n1, n2) = (lab.node(1), lab.node(2));
    let (a1, a2) = (n1.addr().to_string(), n2.addr().to_string());

    // The state alone: the kernel accepts ESP with rfc4106(gcm(aes)).
    add_state(n1, &a1, &a2, "0x1001", "1", KEY_1);
    let states = n1.run_ok(&["ip", "xfrm", "state"]).unwrap();
    assert!(
        states.contains("proto esp spi 0x00001001") && states.contains(AEAD),
        "{states}"
    );

    // A transport-mode pair between the two nodes: 1 -> 2 uses SPI 0x1001, 2 -> 1 SPI 0x1002.
    add_state(n1, &a2, &a1, "0x1002", "2", KEY_2);
    add_state(n2, &a1, &a2, "0x1001", "1", KEY_1);
    add_state(n2, &a2, &a1, "0x1002", "2", KEY_2);
    for (node, local, remote, out_reqid, in_reqid) in
        [(n1, &a1, &a2, "1", "2"), (n2, &a2, &a1, "2", "1")]
    {
        for (dir, src, dst, reqid) in [
            ("out", local, remote, out_reqid),
            ("in", remote, local, in_reqid),
        ] {
            node.run_ok(&[
                "ip",
                "xfrm",
                "policy",
                "add",
                "src",
                &format!("{src}/32"),
                "dst",
                &format!("{dst}/32"),
                "dir",
                dir,
                "tmpl",
                "src",
                src,
                "dst",
                dst,
                "proto",
                "esp",
                "reqid",
                reqid,
                "mode",
                "transport",
            ])
            .unwrap();
        }
    }

    // Count what crosses the underlay bridge: ESP, and any plaintext ICMP.
    nft_underlay(
        &lab,
        "table bridge espwatch {\n\
           counter sealed {}\n  counter plain {}\n\
           chain forward {\n    type filter hook forward priority 0; policy accept;\n\
             ip protocol esp counter name sealed\n    ip protocol icmp counter name plain\n  }\n}\n",
    );
    n1.run_ok(&["ping", "-c", "3", "-i", "0.2", "-W", "2", &a2])
        .unwrap();
    let esp = counter(&lab, "sealed");
    let icmp = counter(&lab, "plain");
    assert!(esp >= 6, "3 echo requests and replies as ESP, saw {esp}");
    assert_eq!(icmp, 0, "no plaintext ICMP on the wire");
    let stats = n1.run_ok(&["ip", "-s", "xfrm", "state"]).unwrap();
    assert!(stats.contains("spi 0x00001002"), "{stats}");
}

fn nft_underlay(lab: &Lab, script: &str) {
    let mut cmd = lab.underlay().command("nft");
    cmd.args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("start nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft -f failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Packets counted by a named counter of the underlay's `bridge espwatch` table.
fn counter(lab: &Lab, name: &str) -> u64 {
    let out = run_in_underlay(lab, &["nft", "list", "counter", "bridge", "espwatch", name]);
    out.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {out}"))
}

fn run_in_underlay(lab: &Lab, argv: &[&str]) -> String {
    let mut cmd: Command = lab.underlay().command(argv[0]);
    let out = cmd.args(&argv[1..]).output().expect("run in the underlay");
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
