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
