//! The subnet-level state of a completely carved 10.0.0.0/8 (65,536 /24
//! subnets, no addresses yet) must stay under 1 MiB, in memory and
//! serialized. Prints the figures (`cargo test -p ipam --test state_size --
//! --nocapture`).

use ipam::{Ipam, PoolConfig};

const MIB: usize = 1 << 20;

#[test]
fn full_slash_8_of_slash_24s_is_under_a_mebibyte() {
    let mut ipam = Ipam::new(PoolConfig::default());
    for _ in 0..65_536 {
        ipam.subnets_mut().allocate().unwrap();
    }
    assert_eq!(ipam.subnets().len(), 65_536);
    let heap = ipam.heap_bytes();
    let json = serde_json::to_vec(&ipam).unwrap();
    println!(
        "full 10.0.0.0/8 in /24s: heap ~{heap} bytes, serde_json {} bytes: {}",
        json.len(),
        String::from_utf8_lossy(&json)
    );
    assert!(heap < MIB, "heap {heap} bytes");
    assert!(json.len() < MIB, "json {} bytes", json.len());

    // Worst case for the serialized form: every other /24 allocated, so no
    // two are consecutive (32,768 runs).
    for i in (0..65_536u32).step_by(2) {
        let subnet = format!("10.{}.{}.0/24", i >> 8, i & 0xff).parse().unwrap();
        ipam.subnets_mut().release(subnet).unwrap();
    }
    let heap = ipam.heap_bytes();
    let json = serde_json::to_vec(&ipam).unwrap();
    println!(
        "every other /24 of 10.0.0.0/8: heap ~{heap} bytes, serde_json {} bytes",
        json.len()
    );
    assert!(heap < MIB, "heap {heap} bytes");
    assert!(json.len() < MIB, "json {} bytes", json.len());
    let back: Ipam = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, ipam);
}

#[test]
fn full_slash_8_with_one_address_per_subnet() {
    // Not a target, a figure: address state is created per subnet on first use.
    let mut ipam = Ipam::new(PoolConfig::default());
    for _ in 0..65_536 {
        let info = ipam.subnets_mut().allocate().unwrap();
        ipam.subnets_mut().allocate_address(info.subnet).unwrap();
    }
    let json = serde_json::to_vec(&ipam).unwrap();
    println!(
        "full 10.0.0.0/8 in /24s, one address in each: heap ~{} bytes, serde_json {} bytes",
        ipam.heap_bytes(),
        json.len()
    );
    let back: Ipam = serde_json::from_slice(&json).unwrap();
    assert_eq!(back, ipam);
}
