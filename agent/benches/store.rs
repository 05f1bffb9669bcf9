//! `cargo xtask bench store`: committed writes per second and p50/p99 latency of 1 KiB writes
//! through the API of a 3-manager swarm in the namespace lab, side by side with etcd 3.4 as 3
//! members in the same lab topology. Both fsync every commit (netagent: durable redb commit of
//! each log append; etcd: its WAL fsync, the default). Same number of concurrent clients, each
//! with one keep-alive connection, each overwriting its own key with 1 KiB:
//! - netagent: `POST /nodes/{node}/update {"label_add": {"c<k>": <1 KiB>}}` on the leader's socket
//!   (a real write: API, Raft replication to a quorum, apply);
//! - etcd: `POST /v3/kv/put` (the v3 JSON gateway) on the leader's client URL.
//!
//! Needs root (namespaces). Knobs: BENCH_CLIENTS (16), BENCH_WRITES (4000 per system).

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use lab::{Lab, ProcSpec};

const NETAGENT: &str = env!("CARGO_BIN_EXE_netagent");
const NETCTL: &str = env!("CARGO_BIN_EXE_netctl");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Figures {
    writes: usize,
    errors: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }
}

fn figures(mut lat: Vec<Duration>, errors: usize, elapsed: Duration) -> Figures {
    lat.sort();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Figures {
        writes: lat.len(),
        errors,
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn post(sender: &mut Sender, host: &str, path: &str, body: Vec<u8>) -> Result<(), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", host)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
    }
}

/// Runs `clients` loops, `total` requests in all; each loop has its own connection.
async fn drive<C, Fut, B>(
    clients: usize,
    total: usize,
    connect: C,
    body: B,
    host: &str,
    path_of: impl Fn(usize) -> String,
) -> Figures
where
    C: Fn() -> Fut,
    Fut: std::future::Future<Output = Sender>,
    B: Fn(usize, usize) -> Vec<u8>,
{
    let per = total / clients;
    let mut senders = Vec::new();
    for _ in 0..clients {
        senders.push(connect().await);
    }
    // Warm-up.
    for (k, s) in senders.iter_mut().enumerate() {
        for i in 0..5 {
            let _ = post(s, host, &path_of(k), body(k, i)).await;
        }
    }
    let start = Instant::now();
    let futs = senders.into_iter().enumerate().map(|(k, mut s)| {
        let path = path_of(k);
        let bodies: Vec<Vec<u8>> = (0..per).map(|i| body(k, i)).collect();
        async move {
            let mut lat = Vec::with_capacity(per);
            let mut errors = 0;
            for b in bodies {
                let t = Instant::now();
                match post(&mut s, host, &path, b).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => {
                        errors += 1;
                        if errors < 3 {
                            eprintln!("write failed: {e}");
                        }
                    }
                }
            }
            (lat, errors)
        }
    });
    let results = futures::future::join_all(futs).await;
    let elapsed = start.elapsed();
    let mut lat = Vec::new();
    let mut errors = 0;
    for (l, e) in results {
        lat.extend(l);
        errors += e;
    }
    figures(lat, errors, elapsed)
}

fn value(k: usize, i: usize) -> String {
    let seed = format!("{k}-{i}-");
    seed.chars().cycle().take(1024).collect()
}

fn netctl(lab: &Lab, i: usize, args: &[&str]) -> String {
    let sock = lab
        .node(i)
        .dir()
        .join("netagent.sock")
        .display()
        .to_string();
    let mut argv = vec![NETCTL, "--host", &sock];
    argv.extend_from_slice(args);
    lab.node(i).run_ok(&argv).unwrap_or_else(|e| panic!("{e}"))
}

fn bench_netagent(clients: usize, total: usize) -> Figures {
    let lab = Lab::new(3).expect("lab");
    for i in 1..=3 {
        let node = lab.node(i);
        node.spawn(
            ProcSpec::new("netagent", NETAGENT).args([
                "--hostname".to_string(),
                node.name().into(),
                "--advertise-addr".into(),
                node.addr().to_string(),
                "--state-dir".into(),
                node.dir().join("state").display().to_string(),
                "--host".into(),
                node.dir().join("netagent.sock").display().to_string(),
                "--heartbeat-ms".into(),
                "1000".into(),
                "--netns-prefix".into(),
                format!("{}-n{i}-", lab.prefix()),
                "--cgroup-parent".into(),
                node.cgroup()
                    .expect("node cgroup")
                    .join("netagent")
                    .display()
                    .to_string(),
                "--log-level".into(),
                std::env::var("BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()),
            ]),
        )
        .expect("spawn netagent");
    }
    for i in 1..=3 {
        lab.wait_until("agent API", Duration::from_secs(30), || {
            lab.node(i).dir().join("netagent.sock").exists()
        })
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    netctl(
        &lab,
        1,
        &[
            "swarm",
            "init",
            "--advertise-addr",
            &lab.node(1).addr().to_string(),
        ],
    );
    let token = netctl(&lab, 1, &["swarm", "join-token", "-q", "manager"])
        .trim()
        .to_string();
    let addr = format!("{}:2377", lab.node(1).addr());
    for i in 2..=3 {
        netctl(&lab, i, &["swarm", "join", "--token", &token, &addr]);
    }
    let sock = lab.node(1).dir().join("netagent.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(drive(
        clients,
        total,
        || {
            let sock = sock.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&sock)
                    .await
                    .expect("connect to the API");
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                sender
            }
        },
        |k, i| {
            serde_json::to_vec(&serde_json::json!({"label_add": {format!("c{k}"): value(k, i)}}))
                .unwrap()
        },
        "netagent",
        |k| format!("/nodes/node{}/update", k % 3 + 1),
    ))
}

fn b64(data: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for j in 0..4 {
            if j <= c.len() {
                out.push(T[(n >> (18 - 6 * j) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn bench_etcd(clients: usize, total: usize) -> Option<Figures> {
    if std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "etcd is not installed (cargo xtask setup installs etcd-server): skipping the comparison"
        );
        return None;
    }
    let lab = Lab::new(3).expect("lab");
    let cluster: Vec<String> = (1..=3)
        .map(|i| format!("e{i}=http://{}:2380", lab.node(i).addr()))
        .collect();
    for i in 1..=3 {
        let node = lab.node(i);
        let a = node.addr();
        node.spawn(
            ProcSpec::new("etcd", "etcd")
                .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
                .args([
                    "--name".to_string(),
                    format!("e{i}"),
                    "--data-dir".into(),
                    node.dir().join("etcd").display().to_string(),
                    "--listen-peer-urls".into(),
                    format!("http://{a}:2380"),
                    "--initial-advertise-peer-urls".into(),
                    format!("http://{a}:2380"),
                    "--listen-client-urls".into(),
                    format!("http://{a}:2379"),
                    "--advertise-client-urls".into(),
                    format!("http://{a}:2379"),
                    "--initial-cluster".into(),
                    cluster.join(","),
                    "--initial-cluster-state".into(),
                    "new".into(),
                    "--initial-cluster-token".into(),
                    "bench".into(),
                    "--log-level".into(),
                    "warn".into(),
                ]),
        )
        .expect("spawn etcd");
    }
    let node1 = lab.node(1);
    let figures = node1
        .in_ns(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                // Wait for a leader, and find it.
                let mut leader = None;
                for _ in 0..300 {
                    for i in 1..=3 {
                        let a = lab.node(i).addr();
                        let Ok(tcp) = tokio::net::TcpStream::connect((a.to_string(), 2379)).await
                        else {
                            continue;
                        };
                        let Ok((mut s, conn)) =
                            hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
                        else {
                            continue;
                        };
                        tokio::spawn(conn);
                        let req = Request::builder()
                            .method("POST")
                            .uri("/v3/maintenance/status")
                            .header("host", "etcd")
                            .body(Full::new(Bytes::from_static(b"{}")))
                            .unwrap();
                        let Ok(resp) = s.send_request(req).await else {
                            continue;
                        };
                        let Ok(body) = resp.into_body().collect().await else {
                            continue;
                        };
                        let v: serde_json::Value =
                            serde_json::from_slice(&body.to_bytes()).unwrap_or_default();
                        if v["leader"].is_string() && v["leader"] == v["header"]["member_id"] {
                            leader = Some(a);
                        }
                    }
                    if leader.is_some() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let leader = leader.expect("etcd elected a leader");
                drive(
                    clients,
                    total,
                    || async move {
                        let tcp = tokio::net::TcpStream::connect((leader.to_string(), 2379))
                            .await
                            .expect("connect to etcd");
                        tcp.set_nodelay(true).unwrap();
                        let (sender, conn) =
                            hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                                .await
                                .unwrap();
                        tokio::spawn(conn);
                        sender
                    },
                    |k, i| {
                        serde_json::to_vec(&serde_json::json!({
                            "key": b64(format!("c{k}").as_bytes()),
                            "value": b64(value(k, i).as_bytes()),
                        }))
                        .unwrap()
                    },
                    "etcd",
                    |_| "/v3/kv/put".to_string(),
                )
                .await
            })
        })
        .expect("enter node1");
    Some(figures)
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("bench store: needs root (network namespaces); skipped");
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    pki::install_crypto_provider();
    let clients = env_usize("BENCH_CLIENTS", 16);
    let total = env_usize("BENCH_WRITES", 4000);
    println!(
        "store bench: 3 members each, {clients} concurrent clients, {total} writes of 1 KiB each, fsync per commit"
    );
    let n = bench_netagent(clients, total);
    let e = bench_etcd(clients, total);
    let row = |name: &str, f: &Figures| {
        println!(
            "{name:<10} {:>10.0} {:>9.2} {:>9.2} {:>7}",
            f.rate(),
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.errors
        )
    };
    println!(
        "{:<10} {:>10} {:>9} {:>9} {:>7}",
        "system", "writes/s", "p50 ms", "p99 ms", "errors"
    );
    row("netagent", &n);
    if let Some(e) = &e {
        row("etcd 3.4", e);
        println!(
            "ratio netagent/etcd (writes/s): {:.2}x",
            n.rate() / e.rate()
        );
    }
}
