//! Address management for swarm-mode overlay networking: pools, subnets,
//! addresses and VXLAN ids (VNIs), following Docker's libnetwork and
//! swarmkit.
//!
//! Pure state: no I/O, no async. Every type serializes with serde and is
//! checked when deserialized; every failure is a typed [`Error`] whose
//! message says what failed and what to do.
//!
//! - [`Ipam`]: the cluster's allocator (on the leader): [`Subnets`] over the
//!   pools given at swarm init ([`PoolConfig`], default 10.0.0.0/8 in /24s)
//!   plus [`Vnis`]. Rebuilt from the store with [`Ipam::rebuild`].
//! - [`Subnets::local`]: the node-local allocator for docker_gwbridge, over
//!   Docker's local pools (172.17.0.0/16 ... 172.31.0.0/16, then
//!   192.168.0.0/16 in /20s).
//!
//! Subnets: first fit over the pools, or given explicitly (inside or outside
//! the pools); overlaps are refused naming both subnets. Addresses: network
//! and broadcast addresses are reserved (not in /31 and /32), the gateway is
//! the first usable address unless given, an ip-range limits dynamic
//! allocation, which is serial with wrap-around (a released address is not
//! reused at once). IPv6 subnets are supported when given explicitly; big
//! subnets keep sparse state.
//!
//! ```
//! use ipam::{Ipam, PoolConfig, SubnetRequest};
//!
//! let mut ipam = Ipam::new(PoolConfig::default());
//! let ingress = ipam.subnets_mut().allocate()?;
//! assert_eq!(ingress.subnet.to_string(), "10.0.0.0/24");
//! assert_eq!(ingress.gateway.to_string(), "10.0.0.1");
//! let vip = ipam.subnets_mut().allocate_address(ingress.subnet)?;
//! assert_eq!(vip.to_string(), "10.0.0.2");
//! let vni = ipam.vnis_mut().allocate()?;
//! assert_eq!(vni, 4096);
//!
//! let mine = SubnetRequest::new("192.168.50.0/24".parse().unwrap())
//!     .with_ip_range("192.168.50.128/25".parse().unwrap());
//! let info = ipam.subnets_mut().request(&mine)?;
//! let a = ipam.subnets_mut().allocate_address(info.subnet)?;
//! assert_eq!(a.to_string(), "192.168.50.128");
//! # Ok::<(), ipam::Error>(())
//! ```

#![warn(missing_docs)]

mod bitmap;
mod error;
mod ipam;
mod net;
mod pool;
mod runs;
mod space;
mod subnets;
mod vni;

pub use error::{Error, Result};
pub use ipam::{Allocations, Ipam};
pub use pool::{MAX_POOL_MASK, Pool, PoolConfig};
pub use subnets::{SubnetInfo, SubnetRequest, Subnets};
pub use vni::{VNI_MAX, VNI_MIN, Vnis};

/// Re-export of the `ipnet` crate, whose [`IpNet`](ipnet::IpNet) names
/// subnets in this API.
pub use ipnet;
