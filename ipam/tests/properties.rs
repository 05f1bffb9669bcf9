//! Property tests: random sequences of allocations and releases never hand
//! out anything twice while it is held, never hand out a reserved address,
//! and a release always makes room again.

use std::net::IpAddr;

use ipam::ipnet::IpNet;
use ipam::{Allocations, Error, Ipam, PoolConfig, SubnetInfo, SubnetRequest, VNI_MAX, VNI_MIN};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    AllocSubnet,
    /// An explicit subnet: family, offset, prefix, whether to give an ip-range.
    RequestSubnet(bool, u32, u8, bool),
    ReleaseSubnet(usize),
    AllocAddr(usize),
    RequestAddr(usize, u32),
    ReleaseAddr(usize),
    AllocVni,
    RequestVni(u32),
    ReleaseVni(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::AllocSubnet),
        2 => (any::<bool>(), prop_oneof![0u32..64, 0u32..1024], 0u8..=6, any::<bool>())
            .prop_map(|(v6, off, p, r)| Op::RequestSubnet(v6, off, p, r)),
        2 => any::<usize>().prop_map(Op::ReleaseSubnet),
        8 => any::<usize>().prop_map(Op::AllocAddr),
        3 => (any::<usize>(), any::<u32>()).prop_map(|(i, o)| Op::RequestAddr(i, o)),
        4 => any::<usize>().prop_map(Op::ReleaseAddr),
        2 => Just(Op::AllocVni),
        2 => (VNI_MIN - 4..VNI_MIN + 40).prop_map(Op::RequestVni),
        2 => any::<usize>().prop_map(Op::ReleaseVni),
    ]
}

/// Numeric helpers over both families.
fn value(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn bounds(n: &IpNet) -> (u128, u128) {
    (value(n.network()), value(n.broadcast()))
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    let (a0, a1) = bounds(a);
    let (b0, b1) = bounds(b);
    a.addr().is_ipv6() == b.addr().is_ipv6() && a0 <= b1 && b0 <= a1
}

fn reserved(info: &SubnetInfo) -> Vec<IpAddr> {
    let n = info.subnet;
    let host_bits = n.max_prefix_len() - n.prefix_len();
    let mut r = vec![info.gateway];
    if host_bits >= 2 {
        r.push(n.network());
        if n.addr().is_ipv4() {
            r.push(n.broadcast());
        }
    }
    r
}

fn nth(n: &IpNet, i: u128) -> IpAddr {
    let v = value(n.network()) + i;
    match n {
        IpNet::V4(_) => IpAddr::V4((v as u32).into()),
        IpNet::V6(_) => IpAddr::V6(v.into()),
    }
}

fn size(n: &IpNet) -> u128 {
    let (a, z) = bounds(n);
    z - a + 1
}

#[derive(Default)]
struct Model {
    subnets: Vec<SubnetInfo>,
    addresses: Vec<(IpNet, IpAddr)>,
    vnis: Vec<u32>,
}

impl Model {
    fn held(&self, a: IpAddr) -> bool {
        self.addresses.iter().any(|(_, x)| *x == a)
    }

    /// Addresses of `info` that dynamic allocation may still hand out.
    fn free_in_range(&self, info: &SubnetInfo) -> usize {
        let range = info.ip_range.unwrap_or(info.subnet);
        let res = reserved(info);
        (0..size(&range))
            .map(|i| nth(&range, i))
            .filter(|a| !res.contains(a) && !self.held(*a))
            .count()
    }

    fn allocations(&self) -> Allocations {
        Allocations {
            subnets: self
                .subnets
                .iter()
                .map(|s| SubnetRequest {
                    subnet: s.subnet,
                    gateway: Some(s.gateway),
                    ip_range: s.ip_range,
                })
                .collect(),
            addresses: self.addresses.iter().map(|(_, a)| *a).collect(),
            vnis: self.vnis.clone(),
        }
    }
}

fn pools() -> PoolConfig {
    // Twelve /29 subnets in two pools, so exhaustion is frequent.
    let p = ["10.0.0.0/26", "10.0.1.0/27"].map(|p| p.parse().unwrap());
    PoolConfig::new(p, 29).unwrap()
}

fn explicit(v6: bool, off: u32, p: u8) -> IpNet {
    if v6 {
        // Prefixes /122../128 inside fd00::/118.
        let prefix = 122 + p;
        let base: u128 = 0xfd00 << 112;
        IpNet::new(IpAddr::V6((base + u128::from(off)).into()), prefix)
            .unwrap()
            .trunc()
    } else {
        // Prefixes /26../32 inside 10.0.0.0/22: across and outside the pools.
        let prefix = 26 + p;
        IpNet::new(IpAddr::V4((0x0a00_0000 + off).into()), prefix)
            .unwrap()
            .trunc()
    }
}

fn check_address(
    model: &Model,
    info: &SubnetInfo,
    a: IpAddr,
    dynamic: bool,
) -> Result<(), TestCaseError> {
    prop_assert!(info.subnet.contains(&a), "{a} outside {}", info.subnet);
    if dynamic {
        let range = info.ip_range.unwrap_or(info.subnet);
        prop_assert!(range.contains(&a), "{a} outside ip-range {range}");
    }
    prop_assert!(!reserved(info).contains(&a), "reserved {a} handed out");
    prop_assert!(!model.held(a), "{a} handed out twice");
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut ipam = Ipam::new(pools());
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::AllocSubnet => match ipam.subnets_mut().allocate() {
                Ok(info) => {
                    for h in &m.subnets {
                        prop_assert!(
                            !overlaps(&h.subnet, &info.subnet),
                            "{} overlaps {}",
                            info.subnet,
                            h.subnet
                        );
                    }
                    prop_assert_eq!(info.subnet.prefix_len(), 29);
                    m.subnets.push(info);
                }
                Err(Error::PoolsExhausted { .. }) => {
                    // Release something that takes pool space, with anything
                    // else sharing its /29 pool subnet: room again.
                    let pool_nets: Vec<IpNet> = ["10.0.0.0/26", "10.0.1.0/27"]
                        .iter()
                        .map(|p| p.parse().unwrap())
                        .collect();
                    if let Some(i) = m
                        .subnets
                        .iter()
                        .position(|s| pool_nets.iter().any(|p| overlaps(p, &s.subnet)))
                    {
                        let target = m.subnets[i].subnet;
                        let cover = if target.prefix_len() > 29 {
                            IpNet::new(target.addr(), 29).unwrap().trunc()
                        } else {
                            target
                        };
                        let (gone, kept): (Vec<SubnetInfo>, Vec<SubnetInfo>) =
                            m.subnets.iter().partition(|s| overlaps(&s.subnet, &cover));
                        m.subnets = kept;
                        for g in &gone {
                            ipam.subnets_mut().release(g.subnet).unwrap();
                            m.addresses.retain(|(n, _)| *n != g.subnet);
                        }
                        let info = ipam.subnets_mut().allocate();
                        prop_assert!(
                            info.is_ok(),
                            "no room after releasing {:?}: {:?}",
                            gone,
                            info
                        );
                        let info = info.unwrap();
                        prop_assert!(overlaps(&info.subnet, &cover));
                        m.subnets.push(info);
                    } else {
                        prop_assert!(false, "pools exhausted while holding none of their subnets");
                    }
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
            },
            Op::RequestSubnet(v6, off, p, with_range) => {
                let subnet = explicit(v6, off, p);
                let mut req = SubnetRequest::new(subnet);
                if with_range && subnet.prefix_len() < subnet.max_prefix_len() {
                    // The upper half.
                    let half = IpNet::new(nth(&subnet, size(&subnet) / 2), subnet.prefix_len() + 1)
                        .unwrap();
                    req = req.with_ip_range(half);
                }
                let clash = m
                    .subnets
                    .iter()
                    .find(|h| overlaps(&h.subnet, &subnet))
                    .map(|h| h.subnet);
                match (ipam.subnets_mut().request(&req), clash) {
                    (Ok(info), None) => {
                        prop_assert_eq!(info.subnet, subnet);
                        prop_assert_eq!(info.ip_range, req.ip_range);
                        m.subnets.push(info);
                    }
                    (
                        Err(Error::SubnetOverlap {
                            requested,
                            existing,
                        }),
                        Some(_),
                    ) => {
                        prop_assert_eq!(requested, subnet);
                        prop_assert!(
                            m.subnets
                                .iter()
                                .any(|h| h.subnet == existing && overlaps(&existing, &subnet))
                        );
                    }
                    (Err(Error::SubnetInUse { subnet: s }), Some(c)) => {
                        prop_assert_eq!(s, subnet);
                        prop_assert_eq!(c, subnet);
                    }
                    (got, clash) => {
                        prop_assert!(false, "request {subnet}: got {got:?}, clash {clash:?}")
                    }
                }
            }
            Op::ReleaseSubnet(i) => {
                if m.subnets.is_empty() {
                    continue;
                }
                let gone = m.subnets.remove(i % m.subnets.len());
                ipam.subnets_mut().release(gone.subnet).unwrap();
                m.addresses.retain(|(n, _)| *n != gone.subnet);
                prop_assert!(ipam.subnets().get(gone.subnet).is_none());
            }
            Op::AllocAddr(i) => {
                if m.subnets.is_empty() {
                    continue;
                }
                let info = m.subnets[i % m.subnets.len()];
                match ipam.subnets_mut().allocate_address(info.subnet) {
                    Ok(a) => {
                        check_address(&m, &info, a, true)?;
                        m.addresses.push((info.subnet, a));
                    }
                    Err(Error::SubnetFull { subnet, .. }) => {
                        prop_assert_eq!(subnet, info.subnet);
                        prop_assert_eq!(m.free_in_range(&info), 0);
                        // Releasing an address of the range makes room.
                        let range = info.ip_range.unwrap_or(info.subnet);
                        if let Some(k) = m
                            .addresses
                            .iter()
                            .position(|(n, a)| *n == info.subnet && range.contains(a))
                        {
                            let (_, a) = m.addresses.remove(k);
                            ipam.subnets_mut().release_address(info.subnet, a).unwrap();
                            let again = ipam.subnets_mut().allocate_address(info.subnet);
                            prop_assert_eq!(
                                again.clone(),
                                Ok(a),
                                "released {} then got {:?}",
                                a,
                                again
                            );
                            m.addresses.push((info.subnet, a));
                        }
                    }
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
            Op::RequestAddr(i, off) => {
                if m.subnets.is_empty() {
                    continue;
                }
                let info = m.subnets[i % m.subnets.len()];
                let a = nth(&info.subnet, u128::from(off) % size(&info.subnet));
                let res = reserved(&info).contains(&a);
                let held = m.held(a);
                match ipam.subnets_mut().request_address(info.subnet, a) {
                    Ok(()) => {
                        check_address(&m, &info, a, false)?;
                        m.addresses.push((info.subnet, a));
                    }
                    Err(Error::AddressReserved { .. }) => prop_assert!(res),
                    Err(Error::AddressInUse { .. }) => prop_assert!(held),
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
            Op::ReleaseAddr(i) => {
                if m.addresses.is_empty() {
                    continue;
                }
                let (n, a) = m.addresses.remove(i % m.addresses.len());
                ipam.subnets_mut().release_address(n, a).unwrap();
                prop_assert!(!ipam.subnets().is_address_allocated(n, a));
            }
            Op::AllocVni => {
                let v = ipam.vnis_mut().allocate().unwrap();
                prop_assert!((VNI_MIN..=VNI_MAX).contains(&v));
                prop_assert!(!m.vnis.contains(&v), "VNI {v} handed out twice");
                // Lowest free.
                prop_assert!((VNI_MIN..v).all(|x| m.vnis.contains(&x)));
                m.vnis.push(v);
            }
            Op::RequestVni(v) => match ipam.vnis_mut().request(v) {
                Ok(()) => {
                    prop_assert!(v >= VNI_MIN && !m.vnis.contains(&v));
                    m.vnis.push(v);
                }
                Err(Error::VniOutOfRange { .. }) => prop_assert!(v < VNI_MIN),
                Err(Error::VniInUse { .. }) => prop_assert!(m.vnis.contains(&v)),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            },
            Op::ReleaseVni(i) => {
                if m.vnis.is_empty() {
                    continue;
                }
                let v = m.vnis.remove(i % m.vnis.len());
                ipam.vnis_mut().release(v).unwrap();
                // Room again: the same VNI can be taken.
                ipam.vnis_mut().request(v).unwrap();
                ipam.vnis_mut().release(v).unwrap();
            }
        }
        prop_assert_eq!(ipam.subnets().len(), m.subnets.len());
        prop_assert_eq!(ipam.vnis().len(), m.vnis.len());
    }

    // Everything held is recorded as held.
    for (n, a) in &m.addresses {
        prop_assert!(ipam.subnets().is_address_allocated(*n, *a));
    }
    let total: u128 = m
        .subnets
        .iter()
        .map(|s| ipam.subnets().address_count(s.subnet).unwrap())
        .sum();
    prop_assert_eq!(total, m.addresses.len() as u128);

    // The state survives serde, and the store's view rebuilds it.
    let json = serde_json::to_string(&ipam).unwrap();
    let back: Ipam = serde_json::from_str(&json).unwrap();
    prop_assert_eq!(&back, &ipam);
    let rebuilt = Ipam::rebuild(pools(), &m.allocations()).unwrap();
    for (n, a) in &m.addresses {
        prop_assert!(rebuilt.subnets().is_address_allocated(*n, *a));
    }
    prop_assert_eq!(rebuilt.subnets().list(), ipam.subnets().list());
    for v in &m.vnis {
        prop_assert!(rebuilt.vnis().is_allocated(*v));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn nothing_twice_nothing_reserved_release_makes_room(ops in prop::collection::vec(op(), 1..200)) {
        run(ops)?;
    }
}

/// Any network: either family, any prefix, host bits or not.
fn any_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| IpNet::new(IpAddr::V4(a.into()), p).unwrap()),
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, p)| IpNet::new(IpAddr::V4(a.into()), p).unwrap().trunc()),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, p)| IpNet::new(IpAddr::V6(a.into()), p).unwrap().trunc()),
        (any::<u128>(), 0u8..=128).prop_map(|(a, p)| IpNet::new(IpAddr::V6(a.into()), p).unwrap()),
    ]
}

fn any_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
        any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
    ]
}

#[derive(Clone, Debug)]
enum Wild {
    Allocate(Vec<IpNet>),
    Request(IpNet, Option<IpAddr>, Option<IpNet>),
    Release(IpNet),
    AllocAddr(IpNet),
    RequestAddr(IpNet, IpAddr),
    ReleaseAddr(IpNet, IpAddr),
    Vni(u32),
}

fn wild() -> impl Strategy<Value = Wild> {
    prop_oneof![
        prop::collection::vec(any_net(), 0..3).prop_map(Wild::Allocate),
        (
            any_net(),
            prop::option::of(any_addr()),
            prop::option::of(any_net())
        )
            .prop_map(|(n, g, r)| Wild::Request(n, g, r)),
        any_net().prop_map(Wild::Release),
        any_net().prop_map(Wild::AllocAddr),
        (any_net(), any_addr()).prop_map(|(n, a)| Wild::RequestAddr(n, a)),
        (any_net(), any_addr()).prop_map(|(n, a)| Wild::ReleaseAddr(n, a)),
        any::<u32>().prop_map(Wild::Vni),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary input (any prefix, host bits, wrong family, /0, /32, /128)
    /// gives results or errors, never a panic, and the state stays
    /// serializable.
    #[test]
    fn arbitrary_input_never_panics(
        pools in prop::collection::vec((any_net(), any::<u8>()), 0..3),
        ops in prop::collection::vec(wild(), 0..60),
    ) {
        let config = PoolConfig::with_masks(pools).unwrap_or_default();
        let mut ipam = Ipam::new(config);
        let mut held = Vec::new();
        for op in ops {
            match op {
                Wild::Allocate(avoid) => {
                    if let Ok(info) = ipam.subnets_mut().allocate_avoiding(&avoid) {
                        held.push(info.subnet);
                    }
                }
                Wild::Request(n, g, r) => {
                    let req = SubnetRequest { subnet: n, gateway: g, ip_range: r };
                    if ipam.subnets_mut().request(&req).is_ok() {
                        held.push(n);
                    }
                }
                Wild::Release(n) => {
                    let _ = ipam.subnets_mut().release(n);
                }
                Wild::AllocAddr(n) => {
                    let n = held.first().copied().unwrap_or(n);
                    let _ = ipam.subnets_mut().allocate_address(n);
                }
                Wild::RequestAddr(n, a) => {
                    let _ = ipam.subnets_mut().request_address(n, a);
                }
                Wild::ReleaseAddr(n, a) => {
                    let _ = ipam.subnets_mut().release_address(n, a);
                }
                Wild::Vni(v) => {
                    let _ = ipam.vnis_mut().request(v);
                    let _ = ipam.vnis_mut().release(v.wrapping_add(1));
                }
            }
        }
        let json = serde_json::to_string(&ipam).unwrap();
        let back: Ipam = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(back, ipam);
    }

    /// Arbitrary serialized state is loaded or refused, never trusted blindly
    /// and never a panic; what loads serializes back to itself.
    #[test]
    fn arbitrary_state_never_panics(
        runs in prop::collection::vec(prop_oneof![
            1 => (any_net(), any_net()),
            6 => (0u32..8, 0u32..8).prop_map(|(a, z)| (slash24(a), slash24(z))),
        ], 0..3),
        others in prop::collection::vec(prop_oneof![1 => any_net(), 4 => near_net()], 0..3),
        spaces in prop::collection::vec(
            prop_oneof![
                1 => (any_net(), any_addr(), any_addr(), prop::collection::vec((any_addr(), any_addr()), 0..3)),
6 => (0u32..8, 0u32..256, 0u32..256, prop::collection::vec((0u32..256, 0u32..256), 0..3))
                    .prop_map(|(n, g, x, a)| {
                        let at = |o: u32| IpAddr::V4((0x0a00_0000 + (n << 8) + o).into());
                        (slash24(n), at(g), at(x), a.into_iter().map(|(p, q)| (at(p.min(q)), at(p.max(q)))).collect())
                    }),
            ],
            0..3,
        ),
        bitmap in prop_oneof![Just(String::new()), "[0-9a-f]{0,40}", "(0{16}){0,3}[0-9a-f]{16}"],
        vnis in prop::collection::vec(prop_oneof![
            1 => (any::<u32>(), any::<u32>()),
            4 => (4090u32..4200, 4090u32..4200),
        ], 0..3),
    ) {
        let state = serde_json::json!({
            "subnets": {
                "config": {"pools": [{"base": "10.0.0.0/8", "mask": 24}, {"base": "192.0.0.0/2", "mask": 29}]},
                "pool_subnets": runs,
                "pool_bitmaps": [{"pool": "10.0.0.0/8", "subnets": bitmap}],
                "other_subnets": others,
                "addresses": spaces.iter().map(|(n, g, next, allocated)| serde_json::json!({
                    "subnet": n, "gateway": g, "next": next, "allocated": allocated,
                })).collect::<Vec<_>>(),
            },
            "vnis": {"allocated": vnis},
        });
        if let Ok(ipam) = serde_json::from_value::<Ipam>(state) {
            let json = serde_json::to_string(&ipam).unwrap();
            let back: Ipam = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, ipam);
        }
    }
}

/// 10.0.i.0/24.
fn slash24(i: u32) -> IpNet {
    IpNet::new(IpAddr::V4((0x0a00_0000 + (i << 8)).into()), 24).unwrap()
}

/// Networks in and around 10.0.0.0/21.
fn near_net() -> impl Strategy<Value = IpNet> {
    (0u32..2048, 20u8..=32).prop_map(|(a, p)| {
        IpNet::new(IpAddr::V4((0x0a00_0000 + a).into()), p)
            .unwrap()
            .trunc()
    })
}
