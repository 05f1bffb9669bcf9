use super::*;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn alloc(s: &mut Subnets) -> String {
    s.allocate().unwrap().subnet.to_string()
}

fn pools(list: &[&str], mask: u8) -> PoolConfig {
    PoolConfig::new(list.iter().map(|p| net(p)), mask).unwrap()
}

#[test]
fn first_fit_from_the_default_pool() {
    let mut s = Subnets::default();
    let first = s.allocate().unwrap();
    assert_eq!(
        first,
        SubnetInfo {
            subnet: net("10.0.0.0/24"),
            gateway: ip("10.0.0.1"),
            ip_range: None
        }
    );
    assert_eq!(alloc(&mut s), "10.0.1.0/24");
    assert_eq!(alloc(&mut s), "10.0.2.0/24");
    s.release(net("10.0.1.0/24")).unwrap();
    // Lowest free subnet first.
    assert_eq!(alloc(&mut s), "10.0.1.0/24");
    assert_eq!(alloc(&mut s), "10.0.3.0/24");
    assert_eq!(s.len(), 4);
}

#[test]
fn explicit_subnet_equal_to_a_pool_subnet() {
    let mut s = Subnets::default();
    s.request(&SubnetRequest::new(net("10.0.0.0/24"))).unwrap();
    assert_eq!(alloc(&mut s), "10.0.1.0/24");
    // Stored as one pool bit, not as a separate entry.
    assert!(s.others.is_empty());
    s.release(net("10.0.0.0/24")).unwrap();
    assert_eq!(alloc(&mut s), "10.0.0.0/24");
}

#[test]
fn explicit_subnets_inside_a_pool_take_that_part() {
    let mut s = Subnets::default();
    assert_eq!(alloc(&mut s), "10.0.0.0/24");
    // Smaller than a pool subnet: the whole pool subnet is taken.
    s.request(&SubnetRequest::new(net("10.0.1.64/26"))).unwrap();
    // Larger: all the pool subnets it covers.
    s.request(&SubnetRequest::new(net("10.0.4.0/22"))).unwrap();
    assert_eq!(alloc(&mut s), "10.0.2.0/24");
    assert_eq!(alloc(&mut s), "10.0.3.0/24");
    assert_eq!(alloc(&mut s), "10.0.8.0/24");
    s.release(net("10.0.4.0/22")).unwrap();
    assert_eq!(alloc(&mut s), "10.0.4.0/24");
    s.release(net("10.0.1.64/26")).unwrap();
    assert_eq!(alloc(&mut s), "10.0.1.0/24");
}

#[test]
fn two_explicit_subnets_sharing_a_pool_subnet() {
    let mut s = Subnets::default();
    s.request(&SubnetRequest::new(net("10.0.0.0/26"))).unwrap();
    s.request(&SubnetRequest::new(net("10.0.0.128/26")))
        .unwrap();
    assert_eq!(alloc(&mut s), "10.0.1.0/24");
    s.release(net("10.0.0.0/26")).unwrap();
    // 10.0.0.128/26 still holds 10.0.0.0/24.
    assert_eq!(alloc(&mut s), "10.0.2.0/24");
    s.release(net("10.0.0.128/26")).unwrap();
    assert_eq!(alloc(&mut s), "10.0.0.0/24");
}

#[test]
fn explicit_subnet_covering_a_whole_pool() {
    let mut s = Subnets::new(pools(&["10.10.0.0/16"], 24));
    s.request(&SubnetRequest::new(net("10.10.0.0/15"))).unwrap();
    assert!(matches!(s.allocate(), Err(Error::PoolsExhausted { .. })));
    s.release(net("10.10.0.0/15")).unwrap();
    assert_eq!(alloc(&mut s), "10.10.0.0/24");
}

#[test]
fn explicit_subnets_outside_the_pools() {
    let mut s = Subnets::default();
    s.request(&SubnetRequest::new(net("192.168.1.0/24")))
        .unwrap();
    s.request(&SubnetRequest::new(net("fd00:1::/64"))).unwrap();
    assert_eq!(alloc(&mut s), "10.0.0.0/24");
    assert_eq!(
        s.list(),
        vec![
            net("10.0.0.0/24"),
            net("192.168.1.0/24"),
            net("fd00:1::/64")
        ]
    );
    assert_eq!(s.len(), 3);
    assert!(!s.is_empty());
}

#[test]
fn overlap_is_refused_naming_both_subnets() {
    let mut s = Subnets::default();
    assert_eq!(alloc(&mut s), "10.0.0.0/24");
    let e = s
        .request(&SubnetRequest::new(net("10.0.0.0/16")))
        .unwrap_err();
    assert_eq!(
        e,
        Error::SubnetOverlap {
            requested: net("10.0.0.0/16"),
            existing: net("10.0.0.0/24")
        }
    );
    assert_eq!(
        e.to_string(),
        "subnet 10.0.0.0/16 overlaps subnet 10.0.0.0/24, which is already allocated; \
         choose a subnet that overlaps no existing network"
    );
    s.request(&SubnetRequest::new(net("172.20.0.0/16")))
        .unwrap();
    let e = s
        .request(&SubnetRequest::new(net("172.20.5.0/24")))
        .unwrap_err();
    assert!(e.to_string().contains("172.20.5.0/24"), "{e}");
    assert!(e.to_string().contains("172.20.0.0/16"), "{e}");
    s.request(&SubnetRequest::new(net("fd00::/48"))).unwrap();
    let e = s
        .request(&SubnetRequest::new(net("fd00::/64")))
        .unwrap_err();
    assert_eq!(
        e,
        Error::SubnetOverlap {
            requested: net("fd00::/64"),
            existing: net("fd00::/48")
        }
    );
    // The very same subnet.
    let e = s
        .request(&SubnetRequest::new(net("172.20.0.0/16")))
        .unwrap_err();
    assert_eq!(
        e,
        Error::SubnetInUse {
            subnet: net("172.20.0.0/16")
        }
    );
    // Nothing changed on refusal.
    assert_eq!(s.len(), 3);
}

#[test]
fn host_bits_are_refused() {
    let mut s = Subnets::default();
    let e = s
        .request(&SubnetRequest::new(net("10.0.0.5/24")))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "subnet 10.0.0.5/24 has host bits set; write it as 10.0.0.0/24"
    );
    let e = s
        .request(&SubnetRequest::new(net("10.0.0.0/24")).with_ip_range(net("10.0.0.1/25")))
        .unwrap_err();
    assert!(matches!(
        e,
        Error::NotCanonical {
            what: "ip-range",
            ..
        }
    ));
}

#[test]
fn release_makes_the_subnet_reusable() {
    let mut s = Subnets::default();
    let a = s.allocate().unwrap().subnet;
    s.allocate_address(a).unwrap();
    s.allocate_address(a).unwrap();
    assert_eq!(s.address_count(a).unwrap(), 2);
    s.release(a).unwrap();
    assert_eq!(
        s.release(a).unwrap_err(),
        Error::SubnetNotAllocated { subnet: a }
    );
    assert_eq!(
        s.allocate_address(a).unwrap_err(),
        Error::SubnetNotAllocated { subnet: a }
    );
    assert_eq!(s.get(a), None);
    let b = s.allocate().unwrap().subnet;
    assert_eq!(a, b);
    // Its addresses were released with it.
    assert_eq!(s.address_count(b).unwrap(), 0);
    assert_eq!(s.allocate_address(b).unwrap(), ip("10.0.0.2"));
}

#[test]
fn network_broadcast_and_gateway_are_reserved() {
    let mut s = Subnets::default();
    let n = net("10.5.0.0/29");
    s.request(&SubnetRequest::new(n)).unwrap();
    let mut got = Vec::new();
    while let Ok(a) = s.allocate_address(n) {
        got.push(a.to_string());
    }
    assert_eq!(
        got,
        ["10.5.0.2", "10.5.0.3", "10.5.0.4", "10.5.0.5", "10.5.0.6"]
    );
    for (a, what) in [
        ("10.5.0.0", "network address"),
        ("10.5.0.1", "gateway"),
        ("10.5.0.7", "broadcast address"),
    ] {
        assert_eq!(
            s.release_address(n, ip(a)).unwrap_err(),
            Error::AddressReserved {
                address: ip(a),
                subnet: n,
                what
            }
        );
        assert!(!s.is_address_allocated(n, ip(a)));
    }
}

#[test]
fn slash_31_and_slash_32_reserve_nothing() {
    let mut s = Subnets::default();
    let p2p = net("192.168.9.0/31");
    let info = s.request(&SubnetRequest::new(p2p)).unwrap();
    assert_eq!(info.gateway, ip("192.168.9.0"));
    assert_eq!(s.allocate_address(p2p).unwrap(), ip("192.168.9.1"));
    assert!(matches!(
        s.allocate_address(p2p),
        Err(Error::SubnetFull { .. })
    ));

    let p2p = net("192.168.9.2/31");
    s.request(&SubnetRequest::new(p2p).with_gateway(ip("192.168.9.3")))
        .unwrap();
    assert_eq!(s.allocate_address(p2p).unwrap(), ip("192.168.9.2"));

    let host = net("192.168.9.10/32");
    let info = s.request(&SubnetRequest::new(host)).unwrap();
    assert_eq!(info.gateway, ip("192.168.9.10"));
    assert_eq!(
        s.allocate_address(host).unwrap_err(),
        Error::SubnetFull {
            subnet: host,
            ip_range: None
        }
    );

    // A /30 keeps both reservations.
    let small = net("192.168.9.16/30");
    s.request(&SubnetRequest::new(small)).unwrap();
    assert_eq!(s.allocate_address(small).unwrap(), ip("192.168.9.18"));
    assert!(s.allocate_address(small).is_err());
}

#[test]
fn gateway_default_and_explicit() {
    let mut s = Subnets::default();
    let d = s.allocate().unwrap();
    assert_eq!(d.gateway, ip("10.0.0.1"));
    assert_eq!(s.get(d.subnet), Some(d));

    let n = net("10.9.0.0/24");
    let info = s
        .request(&SubnetRequest::new(n).with_gateway(ip("10.9.0.254")))
        .unwrap();
    assert_eq!(info.gateway, ip("10.9.0.254"));
    assert_eq!(s.get(n).unwrap().gateway, ip("10.9.0.254"));
    assert_eq!(s.allocate_address(n).unwrap(), ip("10.9.0.1"));
    assert!(matches!(
        s.request_address(n, ip("10.9.0.254")),
        Err(Error::AddressReserved {
            what: "gateway",
            ..
        })
    ));

    // A gateway equal to the default needs no address state.
    let n2 = net("10.9.1.0/24");
    s.request(&SubnetRequest::new(n2).with_gateway(ip("10.9.1.1")))
        .unwrap();
    assert!(
        !s.spaces
            .contains_key(&Net::parse(n2, "subnet").unwrap().key())
    );

    let n3 = net("10.9.2.0/24");
    let e = s
        .request(&SubnetRequest::new(n3).with_gateway(ip("10.9.3.1")))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "gateway 10.9.3.1 is outside subnet 10.9.2.0/24; give a gateway inside the subnet"
    );
    let e = s
        .request(&SubnetRequest::new(n3).with_gateway(ip("10.9.2.255")))
        .unwrap_err();
    assert!(matches!(
        e,
        Error::GatewayReserved {
            what: "broadcast address",
            ..
        }
    ));
    // Refused requests leave nothing behind.
    assert_eq!(s.get(n3), None);
}

#[test]
fn ip_range_limits_dynamic_addresses() {
    let mut s = Subnets::default();
    let n = net("10.1.0.0/24");
    let r = net("10.1.0.128/25");
    let info = s.request(&SubnetRequest::new(n).with_ip_range(r)).unwrap();
    assert_eq!(info.ip_range, Some(r));
    assert_eq!(info.gateway, ip("10.1.0.1"));
    let mut count = 0;
    loop {
        match s.allocate_address(n) {
            Ok(a) => {
                assert!(r.contains(&a), "{a} outside {r}");
                count += 1;
            }
            Err(e) => {
                assert_eq!(
                    e,
                    Error::SubnetFull {
                        subnet: n,
                        ip_range: Some(r)
                    }
                );
                assert_eq!(
                    e.to_string(),
                    "no free address left in subnet 10.1.0.0/24 (ip-range 10.1.0.128/25); \
                     release unused addresses, or use a larger subnet or ip-range"
                );
                break;
            }
        }
    }
    // .128 to .254: the broadcast address is in the range but reserved.
    assert_eq!(count, 127);
    // Explicit addresses may lie outside the range.
    s.request_address(n, ip("10.1.0.5")).unwrap();
    assert!(s.is_address_allocated(n, ip("10.1.0.5")));

    let e = s
        .request(&SubnetRequest::new(net("10.2.0.0/24")).with_ip_range(net("10.2.1.0/25")))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "ip-range 10.2.1.0/25 is not inside subnet 10.2.0.0/24; give an ip-range within the subnet"
    );
}

#[test]
fn serial_allocation_resumes_and_wraps() {
    let mut s = Subnets::default();
    let n = net("10.3.0.0/28");
    s.request(&SubnetRequest::new(n)).unwrap();
    let mut next = || s.allocate_address(n).map(|a| a.to_string());
    assert_eq!(next().unwrap(), "10.3.0.2");
    assert_eq!(next().unwrap(), "10.3.0.3");
    assert_eq!(next().unwrap(), "10.3.0.4");
    s.release_address(n, ip("10.3.0.2")).unwrap();
    let mut next = || s.allocate_address(n).map(|a| a.to_string());
    // Not the just-released .2: resume after .4.
    assert_eq!(next().unwrap(), "10.3.0.5");
    for i in 6..=14 {
        assert_eq!(next().unwrap(), format!("10.3.0.{i}"));
    }
    // End of the subnet: wrap around to the released .2.
    assert_eq!(next().unwrap(), "10.3.0.2");
    assert!(next().is_err());
    s.release_address(n, ip("10.3.0.9")).unwrap();
    s.release_address(n, ip("10.3.0.3")).unwrap();
    // The cursor is after .2: .3 comes before .9.
    assert_eq!(s.allocate_address(n).unwrap(), ip("10.3.0.3"));
    assert_eq!(s.allocate_address(n).unwrap(), ip("10.3.0.9"));
}

#[test]
fn explicit_addresses() {
    let mut s = Subnets::default();
    let n = s.allocate().unwrap().subnet;
    s.request_address(n, ip("10.0.0.3")).unwrap();
    assert_eq!(
        s.request_address(n, ip("10.0.0.3")).unwrap_err(),
        Error::AddressInUse {
            address: ip("10.0.0.3"),
            subnet: n
        }
    );
    assert_eq!(
        s.request_address(n, ip("10.0.1.3")).unwrap_err(),
        Error::AddressOutsideSubnet {
            address: ip("10.0.1.3"),
            subnet: n
        }
    );
    assert!(matches!(
        s.request_address(n, ip("fd00::3")),
        Err(Error::AddressOutsideSubnet { .. })
    ));
    assert!(matches!(
        s.request_address(n, ip("10.0.0.255")),
        Err(Error::AddressReserved { .. })
    ));
    // Dynamic allocation goes around it.
    assert_eq!(s.allocate_address(n).unwrap(), ip("10.0.0.2"));
    assert_eq!(s.allocate_address(n).unwrap(), ip("10.0.0.4"));
    s.release_address(n, ip("10.0.0.3")).unwrap();
    assert_eq!(
        s.release_address(n, ip("10.0.0.3")).unwrap_err(),
        Error::AddressNotAllocated {
            address: ip("10.0.0.3"),
            subnet: n
        }
    );
    // Release in a subnet that never had addresses.
    let m = s.allocate().unwrap().subnet;
    assert!(matches!(
        s.release_address(m, ip("10.0.1.7")),
        Err(Error::AddressNotAllocated { .. })
    ));
    assert!(matches!(
        s.release_address(m, ip("10.0.1.1")),
        Err(Error::AddressReserved { .. })
    ));
    assert!(matches!(
        s.request_address(net("10.0.7.0/24"), ip("10.0.7.7")),
        Err(Error::SubnetNotAllocated { .. })
    ));
}

#[test]
fn exhausted_subnet_is_named() {
    let mut s = Subnets::default();
    let n = s.allocate().unwrap().subnet;
    for _ in 0..253 {
        s.allocate_address(n).unwrap();
    }
    let e = s.allocate_address(n).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no free address left in subnet 10.0.0.0/24; \
         release unused addresses, or use a larger subnet or ip-range"
    );
    s.release_address(n, ip("10.0.0.77")).unwrap();
    assert_eq!(s.allocate_address(n).unwrap(), ip("10.0.0.77"));
}

#[test]
fn ipv6_subnets() {
    let mut s = Subnets::default();
    let n = net("fd00:1::/64");
    let info = s.request(&SubnetRequest::new(n)).unwrap();
    assert_eq!(info.gateway, ip("fd00:1::1"));
    assert_eq!(s.allocate_address(n).unwrap(), ip("fd00:1::2"));
    assert_eq!(s.allocate_address(n).unwrap(), ip("fd00:1::3"));
    // The subnet-router anycast address is reserved; there is no broadcast.
    assert!(matches!(
        s.request_address(n, ip("fd00:1::")),
        Err(Error::AddressReserved {
            what: "network address",
            ..
        })
    ));
    s.request_address(n, ip("fd00:1::ffff:ffff:ffff:ffff"))
        .unwrap();
    for _ in 0..10_000 {
        s.allocate_address(n).unwrap();
    }
    // Sparse: 10,000 consecutive addresses are a couple of runs.
    assert!(s.heap_bytes() < 4096, "{} bytes", s.heap_bytes());
    assert_eq!(s.address_count(n).unwrap(), 10_003);
    assert_eq!(s.subnet_of(ip("fd00:1::1234")), Some(n));

    // A big range wraps around like a small one.
    let r = net("fd00:2::/120");
    s.request(&SubnetRequest::new(r)).unwrap();
    let mut count = 0;
    while s.allocate_address(r).is_ok() {
        count += 1;
    }
    assert_eq!(count, 254);
    s.release_address(r, ip("fd00:2::10")).unwrap();
    assert_eq!(s.allocate_address(r).unwrap(), ip("fd00:2::10"));

    // /127: both addresses usable (RFC 6164).
    let p2p = net("fd00:3::/127");
    assert_eq!(
        s.request(&SubnetRequest::new(p2p)).unwrap().gateway,
        ip("fd00:3::")
    );
    assert_eq!(s.allocate_address(p2p).unwrap(), ip("fd00:3::1"));

    // The whole IPv6 space: no overflow at the top.
    let mut all = Subnets::default();
    let everything = net("::/0");
    all.request(
        &SubnetRequest::new(everything)
            .with_ip_range(net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127")),
    )
    .unwrap();
    assert_eq!(
        all.allocate_address(everything).unwrap(),
        ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")
    );
    assert_eq!(
        all.allocate_address(everything).unwrap(),
        ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
    );
    assert!(all.allocate_address(everything).is_err());
    all.release_address(everything, ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"))
        .unwrap();
    assert!(all.allocate_address(everything).is_ok());
}

#[test]
fn local_pools_in_docker_order() {
    let mut s = Subnets::local();
    let mut got = Vec::new();
    while let Ok(info) = s.allocate() {
        got.push(info.subnet.to_string());
    }
    let mut want: Vec<String> = (17..=31).map(|b| format!("172.{b}.0.0/16")).collect();
    want.extend((0..16).map(|i| format!("192.168.{}.0/20", i * 16)));
    assert_eq!(got, want);
    let e = s.allocate().unwrap_err();
    assert!(
        e.to_string().contains("172.17.0.0/16 in /16 subnets"),
        "{e}"
    );
    assert!(
        e.to_string().contains("192.168.0.0/16 in /20 subnets"),
        "{e}"
    );
}

#[test]
fn local_pools_avoid_host_routes() {
    let mut s = Subnets::local();
    // docker0 holds 172.17.0.1/16 on the host: the gwbridge gets 172.18.
    let info = s.allocate_avoiding(&[net("172.17.0.1/16")]).unwrap();
    assert_eq!(info.subnet, net("172.18.0.0/16"));
    assert_eq!(info.gateway, ip("172.18.0.1"));
    // A route over all of 172.16.0.0/12 pushes it to 192.168.
    let info = s.allocate_avoiding(&[net("172.16.0.0/12")]).unwrap();
    assert_eq!(info.subnet, net("192.168.0.0/20"));
    let info = s
        .allocate_avoiding(&[
            net("172.16.0.0/12"),
            net("192.168.16.5/24"),
            net("fd00::/8"),
        ])
        .unwrap();
    assert_eq!(info.subnet, net("192.168.32.0/20"));
    // Avoided subnets stay free.
    assert_eq!(alloc(&mut s), "172.17.0.0/16");
}

#[test]
fn custom_pools_and_mask_length() {
    let mut s = Subnets::new(pools(&["10.10.0.0/16", "10.20.0.0/16"], 26));
    assert_eq!(alloc(&mut s), "10.10.0.0/26");
    assert_eq!(alloc(&mut s), "10.10.0.64/26");
    for _ in 2..1024 {
        s.allocate().unwrap();
    }
    // First pool full: the next pool.
    assert_eq!(alloc(&mut s), "10.20.0.0/26");
    let mut small = Subnets::new(pools(&["192.168.0.0/28"], 29));
    assert_eq!(alloc(&mut small), "192.168.0.0/29");
    assert_eq!(alloc(&mut small), "192.168.0.8/29");
    let e = small.allocate().unwrap_err();
    assert_eq!(
        e.to_string(),
        "no free subnet left in the address pools (192.168.0.0/28 in /29 subnets); \
         remove unused networks, give the subnet explicitly, or configure more address pools"
    );
    small.release(net("192.168.0.8/29")).unwrap();
    assert_eq!(alloc(&mut small), "192.168.0.8/29");
}

#[test]
fn subnet_of_finds_the_containing_subnet() {
    let mut s = Subnets::default();
    s.allocate().unwrap();
    s.request(&SubnetRequest::new(net("10.0.2.0/23"))).unwrap();
    s.request(&SubnetRequest::new(net("192.168.0.0/16")))
        .unwrap();
    assert_eq!(s.subnet_of(ip("10.0.0.9")), Some(net("10.0.0.0/24")));
    assert_eq!(s.subnet_of(ip("10.0.3.9")), Some(net("10.0.2.0/23")));
    assert_eq!(
        s.subnet_of(ip("192.168.200.1")),
        Some(net("192.168.0.0/16"))
    );
    assert_eq!(s.subnet_of(ip("10.0.1.9")), None);
    assert_eq!(s.subnet_of(ip("11.0.0.1")), None);
    assert_eq!(s.subnet_of(ip("fd00::1")), None);
}

#[test]
fn rebuild_restores_everything() {
    let subnets = [
        SubnetRequest::new(net("10.0.0.0/24")),
        SubnetRequest::new(net("10.0.1.0/24")).with_gateway(ip("10.0.1.254")),
        SubnetRequest::new(net("172.30.0.0/16")).with_ip_range(net("172.30.1.0/24")),
        SubnetRequest::new(net("fd00::/64")),
    ];
    let addresses = [
        ip("10.0.0.2"),
        ip("10.0.0.5"),
        ip("10.0.0.3"),
        ip("10.0.1.1"),
        ip("172.30.1.7"),
        ip("172.30.9.9"),
        ip("fd00::2"),
    ];
    let mut s = Subnets::rebuild(PoolConfig::default(), &subnets, &addresses).unwrap();
    assert_eq!(s.len(), 4);
    assert_eq!(s.get(net("10.0.1.0/24")).unwrap().gateway, ip("10.0.1.254"));
    for a in addresses {
        let n = s.subnet_of(a).unwrap();
        assert!(s.is_address_allocated(n, a), "{a}");
    }
    // Serial allocation resumes after the highest restored address.
    assert_eq!(
        s.allocate_address(net("10.0.0.0/24")).unwrap(),
        ip("10.0.0.6")
    );
    assert_eq!(
        s.allocate_address(net("10.0.1.0/24")).unwrap(),
        ip("10.0.1.2")
    );
    // 172.30.9.9 is outside the ip-range: the range resumes after .1.7.
    assert_eq!(
        s.allocate_address(net("172.30.0.0/16")).unwrap(),
        ip("172.30.1.8")
    );
    assert_eq!(s.allocate_address(net("fd00::/64")).unwrap(), ip("fd00::3"));
    assert_eq!(alloc(&mut s), "10.0.2.0/24");
}

#[test]
fn rebuild_refuses_conflicts() {
    let cfg = PoolConfig::default;
    let sub = |s: &str| SubnetRequest::new(net(s));
    let cases: Vec<(Vec<SubnetRequest>, Vec<IpAddr>, Error)> = vec![
        (
            vec![sub("10.0.0.0/24"), sub("10.0.0.0/16")],
            vec![],
            Error::SubnetOverlap {
                requested: net("10.0.0.0/16"),
                existing: net("10.0.0.0/24"),
            },
        ),
        (
            vec![sub("10.0.0.0/24"), sub("10.0.0.0/24")],
            vec![],
            Error::SubnetInUse {
                subnet: net("10.0.0.0/24"),
            },
        ),
        (
            vec![sub("10.0.0.0/24").with_gateway(ip("10.1.0.1"))],
            vec![],
            Error::GatewayOutsideSubnet {
                gateway: ip("10.1.0.1"),
                subnet: net("10.0.0.0/24"),
            },
        ),
        (
            vec![sub("10.0.0.0/24")],
            vec![ip("10.0.0.7"), ip("10.0.0.7")],
            Error::AddressInUse {
                address: ip("10.0.0.7"),
                subnet: net("10.0.0.0/24"),
            },
        ),
        (
            vec![sub("10.0.0.0/24")],
            vec![ip("10.0.0.1")],
            Error::AddressReserved {
                address: ip("10.0.0.1"),
                subnet: net("10.0.0.0/24"),
                what: "gateway",
            },
        ),
        (
            vec![sub("10.0.0.0/24")],
            vec![ip("10.0.1.7")],
            Error::AddressWithoutSubnet {
                address: ip("10.0.1.7"),
            },
        ),
    ];
    for (subnets, addresses, want) in cases {
        let e = Subnets::rebuild(cfg(), &subnets, &addresses).unwrap_err();
        assert_eq!(e, Error::Conflict(Box::new(want.clone())));
        assert!(
            e.to_string()
                .starts_with("the stored allocations conflict: ")
        );
        assert!(e.to_string().contains(&want.to_string()), "{e}");
    }
}

#[test]
fn serde_roundtrip_and_checks() {
    let mut s = Subnets::default();
    for _ in 0..5 {
        s.allocate().unwrap();
    }
    s.release(net("10.0.2.0/24")).unwrap();
    s.request(&SubnetRequest::new(net("10.0.8.0/26"))).unwrap();
    s.request(&SubnetRequest::new(net("10.1.0.0/24")).with_ip_range(net("10.1.0.64/26")))
        .unwrap();
    s.request(&SubnetRequest::new(net("fd00::/64"))).unwrap();
    for _ in 0..3 {
        s.allocate_address(net("10.0.0.0/24")).unwrap();
        s.allocate_address(net("fd00::/64")).unwrap();
    }
    s.release_address(net("10.0.0.0/24"), ip("10.0.0.3"))
        .unwrap();
    let json = serde_json::to_string(&s).unwrap();
    let back: Subnets = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    // Both continue the same way.
    let mut back = back;
    assert_eq!(
        back.allocate_address(net("10.0.0.0/24")).unwrap(),
        s.allocate_address(net("10.0.0.0/24")).unwrap()
    );
    assert_eq!(back.allocate().unwrap(), s.allocate().unwrap());

    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        value["pool_subnets"],
        serde_json::json!([
            ["10.0.0.0/24", "10.0.1.0/24"],
            ["10.0.3.0/24", "10.0.4.0/24"],
            ["10.1.0.0/24", "10.1.0.0/24"]
        ])
    );

    // Tampered state is refused, not trusted.
    let tamper = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = value.clone();
        f(&mut v);
        serde_json::from_value::<Subnets>(v)
            .unwrap_err()
            .to_string()
    };
    let e = tamper(&|v| v["other_subnets"][0] = "10.0.0.0/16".into());
    assert!(e.contains("overlaps"), "{e}");
    let e = tamper(&|v| v["pool_subnets"][0][1] = "10.0.1.0/25".into());
    assert!(e.contains("not a run"), "{e}");
    let e = tamper(&|v| v["pool_subnets"][1][0] = "10.0.1.0/24".into());
    assert!(e.contains("already allocated"), "{e}");
    let e = tamper(&|v| {
        v["addresses"][0] = serde_json::json!({
            "subnet": "10.0.2.0/24", "gateway": "10.0.2.1", "next": "10.0.2.2"
        })
    });
    assert!(e.contains("not allocated"), "{e}");
    let e = tamper(&|v| v["addresses"][0]["allocated"][0][0] = "10.0.0.1".into());
    assert!(e.contains("reserved"), "{e}");
    let e = tamper(&|v| v["config"]["pools"][0]["mask"] = 4.into());
    assert!(e.contains("shorter than the prefix"), "{e}");
}

#[test]
fn a_full_slash_8_is_small() {
    let mut s = Subnets::default();
    for _ in 0..65_536 {
        s.allocate().unwrap();
    }
    assert!(matches!(s.allocate(), Err(Error::PoolsExhausted { .. })));
    assert_eq!(s.len(), 65_536);
    assert!(s.heap_bytes() < 16 * 1024, "{}", s.heap_bytes());
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.len() < 1024, "{json}");
    let back: Subnets = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}

#[test]
fn fragmented_pools_serialize_as_bitmaps() {
    let mut s = Subnets::new(pools(&["10.0.0.0/16", "10.1.0.0/16"], 24));
    for _ in 0..300 {
        s.allocate().unwrap();
    }
    for i in (0..256).step_by(2) {
        s.release(net(&format!("10.0.{i}.0/24"))).unwrap();
    }
    let value = serde_json::to_value(&s).unwrap();
    // 10.0.0.0/16 is fragmented: a bitmap; 10.1.0.0/16 holds one run.
    assert_eq!(value["pool_bitmaps"][0]["pool"], "10.0.0.0/16");
    assert_eq!(
        value["pool_subnets"],
        serde_json::json!([["10.1.0.0/24", "10.1.43.0/24"]])
    );
    let back: Subnets = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(back, s);

    let tamper = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = value.clone();
        f(&mut v);
        serde_json::from_value::<Subnets>(v)
            .unwrap_err()
            .to_string()
    };
    let e = tamper(&|v| v["pool_bitmaps"][0]["pool"] = "10.2.0.0/16".into());
    assert!(e.contains("not a pool"), "{e}");
    let e = tamper(&|v| v["pool_bitmaps"][0]["subnets"] = "zz".into());
    assert!(e.contains("malformed"), "{e}");
    // Bit 256 of a pool of 256 subnets.
    let e = tamper(&|v| {
        v["pool_bitmaps"][0]["subnets"] = format!("{}0000000000000001", "0".repeat(64)).into()
    });
    assert!(e.contains("malformed"), "{e}");
    let e = tamper(&|v| {
        v["pool_subnets"] = serde_json::json!([["10.0.1.0/24", "10.0.1.0/24"]]);
    });
    assert!(e.contains("listed twice"), "{e}");
}
