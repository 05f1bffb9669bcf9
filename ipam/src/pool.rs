//! Address pools: IPv4 networks carved into equal subnets.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::net::Net;

/// The longest mask a pool may be carved with: /29 leaves 5 usable
/// addresses after network, broadcast and gateway.
pub const MAX_POOL_MASK: u8 = 29;

/// One address pool: an IPv4 `base` network carved into subnets of prefix
/// length `mask`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Pool {
    base: Ipv4Net,
    mask: u8,
}

impl Pool {
    /// The pool's network.
    pub fn base(&self) -> Ipv4Net {
        self.base
    }

    /// The prefix length of the subnets carved from the pool.
    pub fn mask(&self) -> u8 {
        self.mask
    }

    /// How many subnets the pool holds.
    pub fn subnet_count(&self) -> u64 {
        1u64 << (self.mask - self.base.prefix_len())
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in /{} subnets", self.base, self.mask)
    }
}

/// The validated list of address pools subnets are allocated from, in the
/// order they are tried.
///
/// The cluster's pools are given at swarm init with one mask length for all
/// ([`PoolConfig::new`]); Docker's default is 10.0.0.0/8 in /24s
/// ([`PoolConfig::swarm_default`]). The node-local pools of docker_gwbridge
/// have a mask per pool ([`PoolConfig::local_default`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "PoolConfigRepr")]
pub struct PoolConfig {
    pools: Vec<Pool>,
}

#[derive(Deserialize)]
struct PoolConfigRepr {
    pools: Vec<PoolRepr>,
}

#[derive(Deserialize)]
struct PoolRepr {
    base: IpNet,
    mask: u8,
}

impl TryFrom<PoolConfigRepr> for PoolConfig {
    type Error = Error;

    fn try_from(repr: PoolConfigRepr) -> Result<Self> {
        PoolConfig::with_masks(repr.pools.into_iter().map(|p| (p.base, p.mask)))
    }
}

impl Default for PoolConfig {
    /// [`PoolConfig::swarm_default`].
    fn default() -> Self {
        PoolConfig::swarm_default()
    }
}

impl fmt::Display for PoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.pools.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            p.fmt(f)?;
        }
        Ok(())
    }
}

impl PoolConfig {
    /// Pools carved with one mask length, as `swarm init
    /// --default-addr-pool ... --default-addr-pool-mask-length` gives them.
    ///
    /// Refuses an empty list, IPv6 pools, pools with host bits, overlapping
    /// pools, a mask longer than /29 and a mask shorter than a pool's prefix.
    pub fn new(pools: impl IntoIterator<Item = IpNet>, mask: u8) -> Result<Self> {
        Self::with_masks(pools.into_iter().map(|p| (p, mask)))
    }

    /// Pools each with its own mask length (as dockerd's
    /// `default-address-pools` entries with `base` and `size`). Same checks
    /// as [`PoolConfig::new`].
    pub fn with_masks(pools: impl IntoIterator<Item = (IpNet, u8)>) -> Result<Self> {
        let mut out: Vec<Pool> = Vec::new();
        for (base, mask) in pools {
            let net = Net::parse(base, "address pool")?;
            let IpNet::V4(base4) = base else {
                return Err(Error::Ipv6Pool { pool: base });
            };
            if mask > MAX_POOL_MASK {
                return Err(Error::MaskTooLong { mask });
            }
            if mask < net.prefix {
                return Err(Error::MaskShorterThanPool { mask, pool: base });
            }
            if let Some(other) = out
                .iter()
                .find(|p| pool_net(p).overlaps(&net))
                .map(|p| IpNet::V4(p.base))
            {
                return Err(Error::PoolsOverlap { a: other, b: base });
            }
            out.push(Pool { base: base4, mask });
        }
        if out.is_empty() {
            return Err(Error::NoPools);
        }
        Ok(PoolConfig { pools: out })
    }

    /// Docker's default for swarm overlay networks: 10.0.0.0/8 in /24s.
    pub fn swarm_default() -> Self {
        PoolConfig {
            pools: vec![Pool {
                base: Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
                mask: 24,
            }],
        }
    }

    /// Docker's default local pools, used for docker_gwbridge:
    /// 172.17.0.0/16 through 172.31.0.0/16 (one /16 each), then
    /// 192.168.0.0/16 in /20s.
    pub fn local_default() -> Self {
        let mut pools: Vec<Pool> = (17..=31)
            .map(|b| Pool {
                base: Ipv4Net::new_assert(Ipv4Addr::new(172, b, 0, 0), 16),
                mask: 16,
            })
            .collect();
        pools.push(Pool {
            base: Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
            mask: 20,
        });
        PoolConfig { pools }
    }

    /// The pools, in the order they are tried.
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }
}

/// The numeric network of a pool.
pub(crate) fn pool_net(p: &Pool) -> Net {
    Net {
        v6: false,
        start: u128::from(u32::from(p.base.network())),
        prefix: p.base.prefix_len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn defaults() {
        let d = PoolConfig::default();
        assert_eq!(d.to_string(), "10.0.0.0/8 in /24 subnets");
        assert_eq!(d.pools()[0].subnet_count(), 65_536);
        let l = PoolConfig::local_default();
        assert_eq!(l.pools().len(), 16);
        assert_eq!(l.pools()[0].base().to_string(), "172.17.0.0/16");
        assert_eq!(l.pools()[14].base().to_string(), "172.31.0.0/16");
        assert_eq!(l.pools()[15].to_string(), "192.168.0.0/16 in /20 subnets");
        assert_eq!(l.pools()[15].subnet_count(), 16);
    }

    #[test]
    fn custom_pools_and_mask() {
        let c = PoolConfig::new(nets(&["10.10.0.0/16", "10.20.0.0/16"]), 26).unwrap();
        assert_eq!(c.pools().len(), 2);
        assert_eq!(c.pools()[1].mask(), 26);
        assert_eq!(c.pools()[1].subnet_count(), 1024);
        // Mask equal to the pool prefix: one subnet.
        assert_eq!(
            PoolConfig::new(nets(&["10.10.0.0/16"]), 16)
                .unwrap()
                .pools()[0]
                .subnet_count(),
            1
        );
        assert!(PoolConfig::new(nets(&["10.10.0.0/16"]), 29).is_ok());
    }

    #[test]
    fn invalid_masks() {
        let e = PoolConfig::new(nets(&["10.0.0.0/8"]), 30).unwrap_err();
        assert_eq!(e, Error::MaskTooLong { mask: 30 });
        assert!(e.to_string().contains("/29"), "{e}");
        let e = PoolConfig::new(nets(&["10.0.0.0/8", "20.20.0.0/16"]), 12).unwrap_err();
        assert_eq!(
            e,
            Error::MaskShorterThanPool {
                mask: 12,
                pool: "20.20.0.0/16".parse().unwrap()
            }
        );
        assert_eq!(
            e.to_string(),
            "subnet mask length /12 is shorter than the prefix of address pool 20.20.0.0/16; \
             use a mask length between /16 and /29"
        );
        assert!(matches!(
            PoolConfig::new(nets(&["10.0.0.0/8"]), 200),
            Err(Error::MaskTooLong { mask: 200 })
        ));
    }

    #[test]
    fn invalid_pools() {
        assert_eq!(PoolConfig::new(vec![], 24).unwrap_err(), Error::NoPools);
        assert!(matches!(
            PoolConfig::new(nets(&["fd00::/48"]), 24),
            Err(Error::Ipv6Pool { .. })
        ));
        assert!(matches!(
            PoolConfig::new(nets(&["10.0.0.1/8"]), 24),
            Err(Error::NotCanonical { .. })
        ));
        let e = PoolConfig::new(nets(&["10.0.0.0/8", "10.1.0.0/16"]), 24).unwrap_err();
        assert_eq!(
            e.to_string(),
            "address pools 10.0.0.0/8 and 10.1.0.0/16 overlap; give pools that do not overlap"
        );
    }

    #[test]
    fn serde_checks_on_load() {
        let c = PoolConfig::new(nets(&["10.10.0.0/16"]), 26).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"pools":[{"base":"10.10.0.0/16","mask":26}]}"#);
        assert_eq!(serde_json::from_str::<PoolConfig>(&json).unwrap(), c);
        let bad = r#"{"pools":[{"base":"10.10.0.0/16","mask":31}]}"#;
        let err = serde_json::from_str::<PoolConfig>(bad).unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }
}
