//! IPAM benchmarks: `cargo bench -p ipam`.
//!
//! Targets: carving all 65,536 /24s of 10.0.0.0/8 < 100 ms; one address
//! allocate+release < 1 µs; state of a full /8 of /24s < 1 MiB (printed
//! before the benchmarks run).

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use ipam::ipnet::IpNet;
use ipam::{Ipam, PoolConfig, SubnetRequest, Subnets, Vnis};

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn carved_slash_8() -> Ipam {
    let mut ipam = Ipam::new(PoolConfig::default());
    for _ in 0..65_536 {
        ipam.subnets_mut().allocate().unwrap();
    }
    ipam
}

fn print_state_size() {
    let ipam = carved_slash_8();
    let json = serde_json::to_vec(&ipam).unwrap();
    println!(
        "state of 10.0.0.0/8 carved into {} /24s: heap ~{} bytes, serde_json {} bytes (target < {} bytes)",
        ipam.subnets().len(),
        ipam.heap_bytes(),
        json.len(),
        1 << 20
    );
}

fn subnets(c: &mut Criterion) {
    let mut g = c.benchmark_group("subnets");
    g.sample_size(20);
    g.throughput(Throughput::Elements(65_536));
    g.bench_function("carve 10.0.0.0/8 into all 65536 /24s", |b| {
        b.iter_batched(
            || Subnets::new(PoolConfig::default()),
            |mut s| {
                for _ in 0..65_536 {
                    black_box(s.allocate().unwrap());
                }
                s
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("subnets");
    // Worst case for first fit: the only free /24 is the last one.
    let mut full = carved_slash_8();
    let last = net("10.255.255.0/24");
    g.bench_function("release+allocate the last free /24 of a full /8", |b| {
        b.iter(|| {
            full.subnets_mut().release(last).unwrap();
            black_box(full.subnets_mut().allocate().unwrap())
        })
    });
    let mut s = Subnets::default();
    let explicit = SubnetRequest::new(net("172.20.0.0/16"));
    g.bench_function("request+release an explicit /16", |b| {
        b.iter(|| {
            black_box(s.request(&explicit).unwrap());
            s.release(explicit.subnet).unwrap();
        })
    });
    g.finish();
}

fn addresses(c: &mut Criterion) {
    let mut g = c.benchmark_group("addresses");
    g.sample_size(20);
    let slash16 = net("10.0.0.0/16");
    g.throughput(Throughput::Elements(65_533));
    g.bench_function("allocate every address of a /16", |b| {
        b.iter_batched(
            || {
                let mut s = Subnets::default();
                s.request(&SubnetRequest::new(slash16)).unwrap();
                s
            },
            |mut s| {
                while let Ok(a) = s.allocate_address(slash16) {
                    black_box(a);
                }
                s
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("addresses");
    for (name, subnet, prefill) in [
        (
            "allocate+release one address (/24, 100 held)",
            "10.0.0.0/24",
            100,
        ),
        (
            "allocate+release one address (/16, 30000 held)",
            "10.0.0.0/16",
            30_000,
        ),
        (
            "allocate+release one address (IPv6 /64, 10000 held)",
            "fd00::/64",
            10_000,
        ),
    ] {
        let subnet = net(subnet);
        let mut s = Subnets::default();
        s.request(&SubnetRequest::new(subnet)).unwrap();
        for _ in 0..prefill {
            s.allocate_address(subnet).unwrap();
        }
        g.bench_function(name, |b| {
            b.iter(|| {
                let a: IpAddr = s.allocate_address(subnet).unwrap();
                s.release_address(subnet, black_box(a)).unwrap();
            })
        });
    }
    g.finish();
}

fn vnis(c: &mut Criterion) {
    let mut v = Vnis::new();
    for _ in 0..1000 {
        v.allocate().unwrap();
    }
    c.bench_function("vnis/allocate+release one VNI (1000 held)", |b| {
        b.iter(|| {
            let x = v.allocate().unwrap();
            v.release(black_box(x)).unwrap();
        })
    });
}

criterion_group!(benches, subnets, addresses, vnis);

fn main() {
    print_state_size();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
