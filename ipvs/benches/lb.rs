//! `cargo xtask bench lb` (needs root): the eBPF socket load balancer on the host kernel, in a
//! lab of three namespaces on one bridge (node1 clients in a task cgroup, node2 a server, node3
//! the load-balancer namespace holding the VIPs).
//!
//! 1. Time to program 10,000 services x 10 backends from empty (goal < 2 s), and one backend
//!    change (goal < 1 ms, median of 200).
//! 2. Connect latency through a VIP with 10,000 services vs 1 service (goal: flat).
//! 3. Requests/s (a new TCP connection per request) through a VIP with one backend vs directly
//!    to that backend, two clients side by side in the same run (goal >= 0.98x).
//!
//! The load generator and the server are this binary, re-executed inside the lab nodes
//! (`--lb-client`, `--lb-server`) so that the client runs in the task cgroup.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipvs::{
    Change, Choice, Config, Desired, EbpfLb, LoadBalancer, NetworkLb, ServiceKey, ServiceLb,
};
use lab::{Lab, ProcSpec};

const SERVICES: u32 = 10_000;
const BACKENDS: u32 = 10;
const PORT: u16 = 8000;
const SECONDS: f64 = 2.0;
const ROUNDS: usize = 5;
const PAIRS: usize = 7;
const NET: &str = "bench";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--lb-server") => server(args[2].parse().unwrap()),
        Some("--lb-client") => client(&args[2], args[3].parse().unwrap(), args[4].parse().unwrap()),
        _ => bench(),
    }
}

/// Accepts connections, answers each with a short line and closes (server side closes first,
/// so TIME_WAIT stays here and the client never runs out of ports).
fn server(port: u16) {
    let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let l = l.try_clone().unwrap();
            std::thread::spawn(move || {
                for mut c in l.incoming().flatten() {
                    let _ = c.write_all(b"ok\n");
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Connects, reads the answer to EOF, repeats for SECONDS on `threads` threads. Prints
/// "requests errors connect_p50_ns connect_p99_ns".
fn client(addr: &str, threads: usize, seconds: f64) {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let (mut ok, mut err, mut lat) = (0u64, 0u64, Vec::new());
                let mut buf = [0u8; 16];
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                        Ok(mut s) => {
                            lat.push(t.elapsed().as_nanos() as u64);
                            let mut n = 0;
                            while let Ok(k) = s.read(&mut buf[n..]) {
                                if k == 0 {
                                    break;
                                }
                                n += k;
                            }
                            if n == 3 { ok += 1 } else { err += 1 }
                        }
                        Err(_) => err += 1,
                    }
                }
                (ok, err, lat)
            })
        })
        .collect();
    let (mut ok, mut err, mut lat) = (0, 0, Vec::new());
    for w in workers {
        let (o, e, l) = w.join().unwrap();
        ok += o;
        err += e;
        lat.extend(l);
    }
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!("{ok} {err} {} {}", pct(0.5), pct(0.99));
}

struct Run {
    rps: f64,
    errors: u64,
    p50_us: f64,
    p99_us: f64,
}

struct Bench {
    lab: Lab,
    task: PathBuf,
    exe: PathBuf,
}

impl Bench {
    fn run(&self, addr: Ipv4Addr, threads: usize) -> Run {
        let out = self
            .lab
            .node(1)
            .run(&[
                "sh",
                "-c",
                &format!(
                    "echo $$ > {}/cgroup.procs && exec {} --lb-client {addr}:{PORT} {threads} {SECONDS}",
                    self.task.display(),
                    self.exe.display()
                ),
            ])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v: Vec<u64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        assert_eq!(
            v.len(),
            4,
            "client said {text:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Run {
            rps: v[0] as f64 / SECONDS,
            errors: v[1],
            p50_us: v[2] as f64 / 1e3,
            p99_us: v[3] as f64 / 1e3,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// 198.19.192.0 + i: VIPs; backends made up from 198.18.64.0 (the lab's nodes are 198.18.0.x).
fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 192, 0)) + i)
}

fn service(i: u32, backends: BTreeSet<Ipv4Addr>) -> ServiceLb {
    ServiceLb {
        key: ServiceKey {
            network: NET.into(),
            service: format!("svc{i}"),
        },
        vip: vip(i),
        backends,
    }
}

fn fake_backends(i: u32) -> BTreeSet<Ipv4Addr> {
    (0..BACKENDS)
        .map(|k| Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + i * BACKENDS + k))
        .collect()
}

fn bench() {
    let lab = Lab::new(3).expect("lab");
    let bpffs = lab.node(1).bpffs().expect("bpffs");
    let tasks = lab.node(1).cgroup().unwrap().join("tasks");
    let task = tasks.join("task1");
    std::fs::create_dir_all(&task).unwrap();
    let exe = std::env::current_exe().unwrap();
    lab.node(2)
        .spawn(
            ProcSpec::new("server", &exe)
                .arg("--lb-server")
                .arg(PORT.to_string()),
        )
        .unwrap();
    let backend = lab.node(2).addr();
    let lbn = lab.node(3);
    let net = NetworkLb {
        id: NET.into(),
        netns: lbn.ns().path().to_path_buf(),
        iface: lab::NODE_IFACE.into(),
        addr: lbn.addr(),
        subnet: "198.18.0.0/15".parse().unwrap(),
    };
    let b = Bench { lab, task, exe };
    lab::wait_until("the server listens", Duration::from_secs(10), &mut || {
        b.run(backend, 1).rps > 0.0
    })
    .unwrap();

    let config = Config {
        choice: Choice::Ebpf,
        cgroup: Some(tasks),
        pin_dir: bpffs.join("netagent"),
        ipvs_timeouts: (0, 0, 0),
    };
    let mut lb = EbpfLb::open(&config).expect("open the eBPF load balancer");
    let bench_svc = service(0, BTreeSet::from([backend]));
    let networks = BTreeMap::from([(NET.to_string(), net)]);
    let one = Desired {
        networks: networks.clone(),
        services: BTreeMap::from([(bench_svc.key.clone(), bench_svc.clone())]),
    };
    let mut many = one.clone();
    for i in 1..=SERVICES {
        let s = service(i, fake_backends(i));
        many.services.insert(s.key.clone(), s);
    }

    // 1. Programming.
    let t = Instant::now();
    let r = lb.sync(&many).expect("sync 10k");
    let program_s = t.elapsed().as_secs_f64();
    assert!(r.refused.is_empty(), "{:?}", r.refused.first());
    let t = Instant::now();
    let again = lb.sync(&many).expect("sync again");
    let noop_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut change_us = Vec::new();
    let mut change_writes = 0;
    for k in 0..200u32 {
        // Pairs: one backend of a service replaced, then put back.
        let i = 1 + (k / 2) % SERVICES;
        let mut backends = fake_backends(i);
        if k % 2 == 0 {
            let first = *backends.iter().next().unwrap();
            backends.remove(&first);
            backends.insert(Ipv4Addr::new(198, 18, 63, 1 + (k % 200) as u8));
        }
        let t = Instant::now();
        let r = lb
            .apply(&[Change::PutService(service(i, backends))])
            .unwrap();
        change_us.push(t.elapsed().as_secs_f64() * 1e6);
        change_writes += r.writes;
    }
    let change_p50 = median(change_us.clone());
    println!(
        "program {SERVICES} services x {BACKENDS} backends from empty: {program_s:.3} s ({} writes: \
         map entries and VIP routes) (goal < 2 s); unchanged sync: {noop_ms:.1} ms, {} writes",
        r.writes, again.writes
    );
    println!(
        "one backend change (apply one PutService): median {change_p50:.1} us, max {:.1} us, \
         {:.1} writes each (goal < 1000 us)",
        change_us.iter().copied().fold(0.0, f64::max),
        change_writes as f64 / 200.0
    );

    // A restarted agent: open adopts the pinned maps and links and reads the service map back;
    // the same desired state then writes nothing.
    drop(lb);
    let t = Instant::now();
    let mut lb = EbpfLb::open(&config).expect("reopen");
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let r = lb.sync(&many).expect("sync after reopen");
    println!(
        "restart with {SERVICES} services: open (adopt pins, read the map back) {open_ms:.0} ms, \
         first sync {:.0} ms, {} writes",
        t.elapsed().as_secs_f64() * 1e3,
        r.writes
    );

    // 2. Connect latency, 10k services vs 1, interleaved.
    let (mut lat_many, mut lat_one) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round > 0 {
            lb.sync(&many).unwrap();
        }
        lat_many.push(b.run(bench_svc.vip, 1).p50_us);
        lb.sync(&one).unwrap();
        lat_one.push(b.run(bench_svc.vip, 1).p50_us);
    }
    let (m, o) = (median(lat_many), median(lat_one));
    println!(
        "connect latency through a VIP, p50: {m:.1} us with {} services, {o:.1} us with 1: \
         ratio {:.3} (goal: flat)",
        SERVICES + 1,
        m / o
    );

    // 3. Requests/s: VIP vs direct, both clients running at the same time (2 threads each), so
    // the load other processes put on the machine hits both alike; the ratio is the median over
    // the runs of the simultaneous pair's ratio.
    let (mut vip_rps, mut direct_rps, mut ratios, mut errors) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    let (mut vip_p99, mut direct_p99) = (Vec::new(), Vec::new());
    for round in 0..PAIRS {
        let (d, v) = std::thread::scope(|s| {
            // Which client starts first alternates.
            if round % 2 == 0 {
                let d = s.spawn(|| b.run(backend, 2));
                let v = s.spawn(|| b.run(bench_svc.vip, 2));
                (d.join().unwrap(), v.join().unwrap())
            } else {
                let v = s.spawn(|| b.run(bench_svc.vip, 2));
                let d = s.spawn(|| b.run(backend, 2));
                (d.join().unwrap(), v.join().unwrap())
            }
        });
        errors += d.errors + v.errors;
        ratios.push(v.rps / d.rps);
        direct_rps.push(d.rps);
        vip_rps.push(v.rps);
        direct_p99.push(d.p99_us);
        vip_p99.push(v.p99_us);
    }
    println!(
        "requests/s (new TCP connection each; a VIP client and a direct client side by side, 2 \
         threads each, {PAIRS} runs of {SECONDS} s): through the VIP {:.0}, direct {:.0}: ratio \
         {:.3} (median of the runs' ratios; goal >= 0.98); connect p99 {:.0} us vs {:.0} us; \
         {errors} errors",
        median(vip_rps),
        median(direct_rps),
        median(ratios),
        median(vip_p99),
        median(direct_p99)
    );
    lb.remove_all().unwrap();
}
