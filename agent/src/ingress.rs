//! The ingress network of the routing mesh, on the control side: the one `swarm init` creates
//! (docker's: named `ingress`, the first subnet of the default pools, VNI 4096 so a user's first
//! network gets 4097), with the `--ingress-subnet` / `--ingress-mtu` netagent accepts at init.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use ::api::network::{CreateRequest, Ipam as WireIpam, IpamConfig, MTU_OPTION};
use model::{Meta, Network};
use orchestrator::ipam::ipnet::IpNet;
use orchestrator::ipam::{Ipam, PoolConfig};

use crate::error::{Failure, Result};

/// The ingress network's name, as docker names it.
pub const NAME: &str = "ingress";

/// What the operator may choose of the ingress network (`netctl ingress recreate`'s body).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressOptions {
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub mtu: Option<u32>,
    pub encrypted: bool,
}

/// The ingress network's spec from the options, checked as `network create` checks a spec.
pub fn spec(o: &IngressOptions) -> Result<model::network::NetworkSpec> {
    if o.gateway.is_some() && o.subnet.is_none() {
        return Err(Failure::bad_request(
            "an ingress gateway needs its subnet: add --subnet (or --ingress-subnet)",
        ));
    }
    let mut options = BTreeMap::new();
    if let Some(mtu) = o.mtu {
        options.insert(MTU_OPTION.to_string(), mtu.to_string());
    }
    if o.encrypted {
        options.insert(::api::network::ENCRYPTED_OPTION.to_string(), String::new());
    }
    let req = CreateRequest {
        name: NAME.into(),
        driver: ::api::network::DRIVER.into(),
        ingress: true,
        ipam: o.subnet.as_ref().map(|s| WireIpam {
            config: vec![IpamConfig {
                subnet: s.clone(),
                gateway: o.gateway.clone().unwrap_or_default(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        options,
        ..Default::default()
    };
    let (spec, _warning) = ::api::network::spec_of(&req)?;
    Ok(spec)
}

/// The ingress network of a new swarm: allocated from the new swarm's pools (nothing else is
/// allocated yet, so it gets their first subnet and VNI 4096).
pub fn initial(pools: &[String], mask: u8, o: &IngressOptions) -> Result<Network> {
    let spec = spec(o)?;
    let nets: Vec<IpNet> = pools
        .iter()
        .map(|p| {
            p.parse::<IpNet>()
                .map_err(|e| Failure::bad_request(format!("invalid address pool {p:?}: {e}")))
        })
        .collect::<Result<_>>()?;
    let config = PoolConfig::new(nets, mask).map_err(|e| Failure::bad_request(e.to_string()))?;
    let mut ipam = Ipam::new(config);
    let allocation = orchestrator::allocator::allocate_network(&mut ipam, &spec)
        .map_err(|e| Failure::bad_request(format!("invalid ingress network: {e}")))?;
    Ok(Network {
        meta: Meta::new(),
        spec,
        allocation: Some(allocation),
        retiring: false,
    })
}

/// The answer of `POST /ingress/recreate`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recreated {
    /// The ingress network's id (the same when changed in place).
    pub id: String,
    /// Changed in place (MTU, encryption): no task moved. Otherwise the publishing services'
    /// tasks are replaced by tasks on the new network.
    pub in_place: bool,
    /// The services whose tasks move to the new network.
    pub moved: Vec<String>,
    /// The replaced network, kept (renamed `ingress-<id>`) until no task runs on it.
    #[serde(default)]
    pub retiring: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_subnet_and_vni_4096() {
        let n = initial(&["10.0.0.0/8".into()], 24, &IngressOptions::default()).unwrap();
        assert!(n.spec.ingress);
        assert_eq!(n.spec.name, "ingress");
        let a = &n.allocation.unwrap()[0];
        assert_eq!(a.subnet.to_string(), "10.0.0.0/24");
        assert_eq!(a.vni, 4096);
        let o = IngressOptions {
            subnet: Some("172.30.0.0/16".into()),
            mtu: Some(1400),
            ..Default::default()
        };
        let n = initial(&["10.0.0.0/8".into()], 24, &o).unwrap();
        assert_eq!(n.spec.mtu, Some(1400));
        assert_eq!(n.allocation.unwrap()[0].subnet.to_string(), "172.30.0.0/16");
        let bad = IngressOptions {
            mtu: Some(20),
            ..Default::default()
        };
        assert!(initial(&["10.0.0.0/8".into()], 24, &bad).is_err());
        let bad = IngressOptions {
            subnet: Some("10.0.0.0/33".into()),
            ..Default::default()
        };
        assert!(initial(&["10.0.0.0/8".into()], 24, &bad).is_err());
    }
}
