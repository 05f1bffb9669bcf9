//! The cluster's IPAM: overlay subnets with their addresses, and VNIs.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pool::PoolConfig;
use crate::subnets::{SubnetRequest, Subnets};
use crate::vni::Vnis;

/// Everything the store records as allocated, from which the leader
/// rebuilds its [`Ipam`]: the networks' subnets (with gateway and ip-range),
/// the addresses of tasks and service VIPs, and the networks' VNIs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocations {
    /// Every subnet of every network.
    #[serde(default)]
    pub subnets: Vec<SubnetRequest>,
    /// Every address handed out (task and VIP addresses; not the gateways,
    /// which belong in [`SubnetRequest::gateway`]).
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Every VNI.
    #[serde(default)]
    pub vnis: Vec<u32>,
}

/// The cluster's address management, run by the allocator on the leader:
/// the pools given at swarm init, the overlay subnets and their addresses
/// ([`Ipam::subnets`]), and the VXLAN ids ([`Ipam::vnis`]).
///
/// Pure state, serializable with serde (checked when deserialized).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipam {
    subnets: Subnets,
    vnis: Vnis,
}

impl Ipam {
    /// Nothing allocated yet, over `config`'s pools.
    pub fn new(config: PoolConfig) -> Self {
        Ipam {
            subnets: Subnets::new(config),
            vnis: Vnis::new(),
        }
    }

    /// State rebuilt from the store's allocations (on leader change).
    ///
    /// Conflicting input (overlapping or repeated subnets, bad gateways or
    /// ip-ranges, addresses outside every subnet, reserved or repeated
    /// addresses, repeated or out-of-range VNIs) is refused with
    /// [`Error::Conflict`], which wraps the error naming the culprit.
    pub fn rebuild(config: PoolConfig, allocations: &Allocations) -> Result<Self> {
        let subnets = Subnets::rebuild(config, &allocations.subnets, &allocations.addresses)?;
        let mut vnis = Vnis::new();
        for &vni in &allocations.vnis {
            vnis.request(vni)
                .map_err(|e| Error::Conflict(Box::new(e)))?;
        }
        Ok(Ipam { subnets, vnis })
    }

    /// The pools.
    pub fn config(&self) -> &PoolConfig {
        self.subnets.config()
    }

    /// Subnets and their addresses.
    pub fn subnets(&self) -> &Subnets {
        &self.subnets
    }

    /// Subnets and their addresses, to allocate or release.
    pub fn subnets_mut(&mut self) -> &mut Subnets {
        &mut self.subnets
    }

    /// VNIs.
    pub fn vnis(&self) -> &Vnis {
        &self.vnis
    }

    /// VNIs, to allocate or release.
    pub fn vnis_mut(&mut self) -> &mut Vnis {
        &mut self.vnis
    }

    /// An estimate of the heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.subnets.heap_bytes() + self.vnis.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subnets::SubnetRequest;
    use ipnet::IpNet;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn stored() -> Allocations {
        Allocations {
            subnets: vec![
                SubnetRequest::new(net("10.0.0.0/24")).with_gateway(ip("10.0.0.1")),
                SubnetRequest::new(net("10.0.1.0/24")).with_gateway(ip("10.0.1.1")),
                SubnetRequest::new(net("fd00:10::/64")),
            ],
            addresses: vec![
                ip("10.0.0.2"),
                ip("10.0.0.3"),
                ip("10.0.1.9"),
                ip("fd00:10::2"),
            ],
            vnis: vec![4096, 4097, 4099],
        }
    }

    #[test]
    fn rebuild_restores_subnets_addresses_and_vnis() {
        let mut ipam = Ipam::rebuild(PoolConfig::default(), &stored()).unwrap();
        assert_eq!(ipam.subnets().len(), 3);
        assert_eq!(ipam.vnis().len(), 3);
        assert_eq!(ipam.vnis_mut().allocate().unwrap(), 4098);
        assert_eq!(ipam.vnis_mut().allocate().unwrap(), 4100);
        assert_eq!(
            ipam.subnets_mut().allocate().unwrap().subnet,
            net("10.0.2.0/24")
        );
        assert_eq!(
            ipam.subnets_mut()
                .allocate_address(net("10.0.0.0/24"))
                .unwrap(),
            ip("10.0.0.4")
        );
        assert_eq!(ipam.config(), &PoolConfig::default());
    }

    #[test]
    fn rebuild_refuses_conflicting_vnis() {
        let mut a = stored();
        a.vnis.push(4097);
        let e = Ipam::rebuild(PoolConfig::default(), &a).unwrap_err();
        assert_eq!(e, Error::Conflict(Box::new(Error::VniInUse { vni: 4097 })));
        assert_eq!(
            e.to_string(),
            "the stored allocations conflict: VNI 4097 is already allocated to another network; \
             choose another VNI (correct or remove the object in the store that holds it)"
        );
        let mut a = stored();
        a.vnis.push(17);
        let e = Ipam::rebuild(PoolConfig::default(), &a).unwrap_err();
        assert_eq!(
            e,
            Error::Conflict(Box::new(Error::VniOutOfRange { vni: 17 }))
        );
    }

    #[test]
    fn rebuild_refuses_conflicting_subnets_and_addresses() {
        let mut a = stored();
        a.subnets.push(SubnetRequest::new(net("10.0.0.128/25")));
        let e = Ipam::rebuild(PoolConfig::default(), &a).unwrap_err();
        assert_eq!(
            e,
            Error::Conflict(Box::new(Error::SubnetOverlap {
                requested: net("10.0.0.128/25"),
                existing: net("10.0.0.0/24"),
            }))
        );
        let mut a = stored();
        a.addresses.push(ip("10.0.1.9"));
        assert!(matches!(
            Ipam::rebuild(PoolConfig::default(), &a),
            Err(Error::Conflict(inner)) if matches!(*inner, Error::AddressInUse { .. })
        ));
    }

    #[test]
    fn serde_roundtrip() {
        let mut ipam = Ipam::rebuild(PoolConfig::default(), &stored()).unwrap();
        ipam.subnets_mut().allocate().unwrap();
        let json = serde_json::to_string_pretty(&ipam).unwrap();
        let back: Ipam = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ipam);
        // The allocations themselves serialize too (the agent may log them).
        let a = stored();
        let back: Allocations = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        let empty: Ipam =
            serde_json::from_str(&serde_json::to_string(&Ipam::default()).unwrap()).unwrap();
        assert_eq!(empty, Ipam::default());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "{}",
            r#"{"subnets":{"config":{"pools":[]}},"vnis":{}}"#,
            r#"{"subnets":{"config":{"pools":[{"base":"10.0.0.0/8","mask":24}]},
                "pool_subnets":[["10.0.0.0/24","10.255.255.0/24"],["10.0.0.0/24","10.0.0.0/24"]]},
                "vnis":{}}"#,
            r#"{"subnets":{"config":{"pools":[{"base":"10.0.0.0/8","mask":24}]},
                "addresses":[{"subnet":"1.0.0.0/8","gateway":"1.0.0.1","next":"1.0.0.2"}]},
                "vnis":{}}"#,
            r#"{"subnets":{"config":{"pools":[{"base":"10.0.0.0/8","mask":24}]}},
                "vnis":{"allocated":[[4096,99999999]]}}"#,
        ] {
            assert!(serde_json::from_str::<Ipam>(bad).is_err(), "{bad}");
        }
    }
}
