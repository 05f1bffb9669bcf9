//! Subnets carved from pools or given explicitly, and the addresses in them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::bitmap::Bitmap;
use crate::error::{Error, Result};
use crate::net::{Key, Net, addr_value};
use crate::pool::{PoolConfig, pool_net};
use crate::space::{Space, SpaceRepr, check_options, default_gateway};

/// A subnet asked for by value, with its optional gateway and ip-range, as
/// `network create --subnet --gateway --ip-range` gives them or as the store
/// records them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubnetRequest {
    /// The subnet, without host bits.
    pub subnet: IpNet,
    /// The gateway; the first usable address when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The sub-range dynamic addresses are drawn from; the whole subnet when
    /// `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNet>,
}

impl SubnetRequest {
    /// A request for `subnet` with the default gateway and no ip-range.
    pub fn new(subnet: IpNet) -> Self {
        SubnetRequest {
            subnet,
            gateway: None,
            ip_range: None,
        }
    }

    /// The same request with an explicit gateway.
    pub fn with_gateway(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// The same request with an ip-range.
    pub fn with_ip_range(mut self, ip_range: IpNet) -> Self {
        self.ip_range = Some(ip_range);
        self
    }
}

/// An allocated subnet and its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubnetInfo {
    /// The subnet.
    pub subnet: IpNet,
    /// Its gateway (reserved, never handed out as an address).
    pub gateway: IpAddr,
    /// Its ip-range, if addresses are drawn from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNet>,
}

/// Allocation state of one pool: which of its subnets are taken.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PoolState {
    net: Net,
    mask: u8,
    count: u64,
    /// Subnets of the pool that are allocated.
    used: Bitmap,
    /// Subnets of the pool that overlap an allocated subnet of another size
    /// (an explicit subnet inside or across the pool).
    blocked: Bitmap,
    /// The lowest index free in both bitmaps (`count` if none): first fit
    /// starts there instead of scanning the taken prefix of the pool.
    free_from: u64,
}

impl PoolState {
    fn shift(&self) -> u8 {
        32 - self.mask
    }

    fn chunk(&self, i: u64) -> Net {
        Net {
            v6: false,
            start: self.net.start + (u128::from(i) << self.shift()),
            prefix: self.mask,
        }
    }

    /// Index of the pool subnet holding `value`, which must be in the pool.
    fn index_of(&self, value: u128) -> u64 {
        ((value - self.net.start) >> self.shift()) as u64
    }

    /// Indexes of the pool subnets that overlap `n`.
    fn span(&self, n: &Net) -> Option<(u64, u64)> {
        if !self.net.overlaps(n) {
            return None;
        }
        let lo = n.start.max(self.net.start);
        let hi = n.last().min(self.net.last());
        Some((self.index_of(lo), self.index_of(hi)))
    }

    /// Index of `n` if it is exactly one of the pool's subnets.
    fn chunk_of(&self, n: &Net) -> Option<u64> {
        (!n.v6 && n.prefix == self.mask && self.net.covers(n)).then(|| self.index_of(n.start))
    }

    fn heap_bytes(&self) -> usize {
        self.used.heap_bytes() + self.blocked.heap_bytes()
    }

    /// Restore `free_from` after bits changed; `start` is at or below the
    /// lowest bit that was cleared (any value will do if none was).
    fn refresh(&mut self, start: u64) {
        let from = start.min(self.free_from);
        self.free_from = self
            .used
            .next_clear_union(&self.blocked, from, self.count - 1)
            .unwrap_or(self.count);
    }
}

/// Subnets and their addresses, over a set of pools.
///
/// Used twice: the cluster's overlay subnets (inside [`crate::Ipam`], pools
/// from swarm init) and the node-local subnets of docker_gwbridge
/// ([`Subnets::local`]).
///
/// Subnets carved from a pool cost one bit each; the address state of a
/// subnet is created only when it has an explicit gateway or ip-range or
/// when its first address is allocated.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SubnetsRepr")]
pub struct Subnets {
    config: PoolConfig,
    pools: Vec<PoolState>,
    /// Allocated subnets that are not exactly a pool subnet: prefix by key.
    others: BTreeMap<Key, u8>,
    /// Address state, by subnet key.
    spaces: BTreeMap<Key, Space>,
}

impl Default for Subnets {
    /// Subnets over [`PoolConfig::swarm_default`].
    fn default() -> Self {
        Subnets::new(PoolConfig::default())
    }
}

fn conflict(e: Error) -> Error {
    Error::Conflict(Box::new(e))
}

impl Subnets {
    /// No subnet allocated yet, over `config`'s pools.
    pub fn new(config: PoolConfig) -> Self {
        let pools = config
            .pools()
            .iter()
            .map(|p| PoolState {
                net: pool_net(p),
                mask: p.mask(),
                count: p.subnet_count(),
                used: Bitmap::default(),
                blocked: Bitmap::default(),
                free_from: 0,
            })
            .collect();
        Subnets {
            config,
            pools,
            others: BTreeMap::new(),
            spaces: BTreeMap::new(),
        }
    }

    /// The allocator of docker_gwbridge subnets: Docker's local default pools
    /// ([`PoolConfig::local_default`]).
    pub fn local() -> Self {
        Subnets::new(PoolConfig::local_default())
    }

    /// State rebuilt from the allocations recorded in the store: `subnets`
    /// with their gateways and ip-ranges, and the `addresses` handed out in
    /// them (not the gateways). Serial allocation resumes after the highest
    /// address of each subnet.
    ///
    /// Any conflict (overlapping or repeated subnets, addresses outside every
    /// subnet, reserved or repeated addresses, bad gateways or ip-ranges) is
    /// refused with [`Error::Conflict`] wrapping the error that names it.
    pub fn rebuild(
        config: PoolConfig,
        subnets: &[SubnetRequest],
        addresses: &[IpAddr],
    ) -> Result<Self> {
        let mut s = Subnets::new(config);
        for r in subnets {
            s.request(r).map_err(conflict)?;
        }
        let mut highest: BTreeMap<Key, u128> = BTreeMap::new();
        for &address in addresses {
            let subnet = s
                .subnet_of(address)
                .ok_or(Error::AddressWithoutSubnet { address })
                .map_err(conflict)?;
            let space = s.space_mut(subnet)?;
            space.request(address).map_err(conflict)?;
            let value = addr_value(address).1;
            if space.in_bounds(value) {
                let entry = highest.entry(space.net().key()).or_insert(value);
                *entry = (*entry).max(value);
            }
        }
        for (key, value) in highest {
            if let Some(space) = s.spaces.get_mut(&key) {
                space.resume_after(value);
            }
        }
        Ok(s)
    }

    /// The pools this allocator carves.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// The pool that has `n` as one of its subnets, and its index there.
    fn pool_chunk(&self, n: &Net) -> Option<(usize, u64)> {
        self.pools
            .iter()
            .enumerate()
            .find_map(|(p, pool)| pool.chunk_of(n).map(|i| (p, i)))
    }

    /// Whether exactly `n` is allocated.
    fn holds(&self, n: &Net) -> bool {
        match self.pool_chunk(n) {
            Some((p, i)) => self.pools[p].used.get(i),
            None => self.others.get(&n.key()) == Some(&n.prefix),
        }
    }

    /// An allocated subnet that overlaps `n`.
    fn find_overlap(&self, n: &Net) -> Option<Net> {
        let probe = Key {
            v6: n.v6,
            start: n.last(),
        };
        if let Some((k, &prefix)) = self.others.range(..=probe).next_back() {
            let other = Net::from_key(k, prefix);
            if other.overlaps(n) {
                return Some(other);
            }
        }
        self.pools.iter().find_map(|pool| {
            let (lo, hi) = pool.span(n)?;
            pool.used.first_set(lo, hi).map(|i| pool.chunk(i))
        })
    }

    /// Record `n`, which overlaps nothing allocated.
    fn insert(&mut self, n: Net) {
        if let Some((p, i)) = self.pool_chunk(&n) {
            let pool = &mut self.pools[p];
            pool.used.set(i);
            pool.refresh(i);
            return;
        }
        self.others.insert(n.key(), n.prefix);
        for pool in &mut self.pools {
            if let Some((lo, hi)) = pool.span(&n) {
                pool.blocked.set_range(lo, hi);
                pool.refresh(lo);
            }
        }
    }

    /// Forget `n`, which is allocated, and its addresses.
    fn remove(&mut self, n: Net) {
        self.spaces.remove(&n.key());
        if let Some((p, i)) = self.pool_chunk(&n) {
            let pool = &mut self.pools[p];
            pool.used.clear(i);
            pool.refresh(i);
            return;
        }
        self.others.remove(&n.key());
        for pool in &mut self.pools {
            let Some((lo, hi)) = pool.span(&n) else {
                continue;
            };
            pool.blocked.clear_range(lo, hi);
            // Other subnets may share the first or last pool subnet.
            let from = pool.chunk(lo).start;
            let to = pool.chunk(hi).last();
            let before = self.others.range(..Key::v4(from)).next_back();
            let within = self.others.range(Key::v4(from)..=Key::v4(to));
            for (k, &prefix) in before.into_iter().chain(within) {
                let other = Net::from_key(k, prefix);
                if let Some((a, z)) = pool.span(&other) {
                    pool.blocked.set_range(a.max(lo), z.min(hi));
                }
            }
            pool.refresh(lo);
        }
    }

    fn info(&self, n: Net) -> SubnetInfo {
        let space = self.spaces.get(&n.key());
        SubnetInfo {
            subnet: n.to_ipnet(),
            gateway: n.ip(space.map_or_else(|| default_gateway(&n), Space::gateway)),
            ip_range: space.and_then(Space::range).map(Net::to_ipnet),
        }
    }

    /// Allocate the lowest free subnet of the pools (first fit, pools in
    /// order), with the default gateway and no ip-range.
    pub fn allocate(&mut self) -> Result<SubnetInfo> {
        self.allocate_avoiding(&[])
    }

    /// As [`Subnets::allocate`], but skip subnets that overlap any of
    /// `avoid` (the host's own routes, when picking a bridge subnet as
    /// Docker does). `avoid` may have host bits set; they are ignored.
    pub fn allocate_avoiding(&mut self, avoid: &[IpNet]) -> Result<SubnetInfo> {
        let avoid: Vec<Net> = avoid
            .iter()
            .filter_map(|a| Net::parse(a.trunc(), "subnet").ok())
            .collect();
        for p in 0..self.pools.len() {
            let pool = &self.pools[p];
            let mut from = pool.free_from;
            while let Some(i) = pool
                .used
                .next_clear_union(&pool.blocked, from, pool.count - 1)
            {
                let candidate = pool.chunk(i);
                let clash = avoid
                    .iter()
                    .filter(|a| a.overlaps(&candidate))
                    .map(Net::last)
                    .max();
                match clash {
                    None => {
                        let pool = &mut self.pools[p];
                        pool.used.set(i);
                        pool.refresh(i);
                        return Ok(self.info(candidate));
                    }
                    Some(last) if last >= pool.net.last() => break,
                    Some(last) => from = pool.index_of(last) + 1,
                }
            }
        }
        Err(Error::PoolsExhausted {
            pools: self.config.to_string(),
        })
    }

    /// Allocate a given subnet, inside or outside the pools (inside, it takes
    /// that part of the pool). Refused if it overlaps an allocated subnet, or
    /// if its gateway or ip-range is not inside it.
    pub fn request(&mut self, request: &SubnetRequest) -> Result<SubnetInfo> {
        let n = Net::parse(request.subnet, "subnet")?;
        let (gateway, range) = check_options(&n, request.gateway, request.ip_range)?;
        if self.holds(&n) {
            return Err(Error::SubnetInUse {
                subnet: request.subnet,
            });
        }
        if let Some(existing) = self.find_overlap(&n) {
            return Err(Error::SubnetOverlap {
                requested: request.subnet,
                existing: existing.to_ipnet(),
            });
        }
        self.insert(n);
        let space = Space::new(n, gateway, range);
        if !space.has_default_options() {
            self.spaces.insert(n.key(), space);
        }
        Ok(self.info(n))
    }

    /// Release a subnet and every address in it; it can be allocated again.
    pub fn release(&mut self, subnet: IpNet) -> Result<()> {
        let n = self.locate(subnet)?;
        self.remove(n);
        Ok(())
    }

    /// The numeric form of an allocated subnet.
    fn locate(&self, subnet: IpNet) -> Result<Net> {
        let n = Net::parse(subnet, "subnet")?;
        if !self.holds(&n) {
            return Err(Error::SubnetNotAllocated { subnet });
        }
        Ok(n)
    }

    /// The settings of an allocated subnet; `None` if it is not allocated.
    pub fn get(&self, subnet: IpNet) -> Option<SubnetInfo> {
        self.locate(subnet).ok().map(|n| self.info(n))
    }

    /// Every allocated subnet, IPv4 before IPv6, in address order.
    pub fn list(&self) -> Vec<IpNet> {
        let mut all: Vec<Net> = Vec::with_capacity(self.len());
        for pool in &self.pools {
            for (a, z) in pool.used.runs() {
                all.extend((a..=z).map(|i| pool.chunk(i)));
            }
        }
        all.extend(
            self.others
                .iter()
                .map(|(k, &prefix)| Net::from_key(k, prefix)),
        );
        all.sort_unstable();
        all.into_iter().map(Net::to_ipnet).collect()
    }

    /// Number of allocated subnets.
    pub fn len(&self) -> usize {
        let carved: u64 = self.pools.iter().map(|p| p.used.count_ones()).sum();
        usize::try_from(carved).unwrap_or(usize::MAX) + self.others.len()
    }

    /// Whether no subnet is allocated.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The allocated subnet that contains `address`, if any.
    pub fn subnet_of(&self, address: IpAddr) -> Option<IpNet> {
        let (v6, value) = addr_value(address);
        let probe = Key { v6, start: value };
        if let Some((k, &prefix)) = self.others.range(..=probe).next_back() {
            let other = Net::from_key(k, prefix);
            if other.contains(address) {
                return Some(other.to_ipnet());
            }
        }
        if v6 {
            return None;
        }
        self.pools.iter().find_map(|pool| {
            if !pool.net.contains_value(value) {
                return None;
            }
            let i = pool.index_of(value);
            pool.used.get(i).then(|| pool.chunk(i).to_ipnet())
        })
    }

    fn space_mut(&mut self, subnet: IpNet) -> Result<&mut Space> {
        let n = self.locate(subnet)?;
        Ok(self
            .spaces
            .entry(n.key())
            .or_insert_with(|| Space::with_defaults(n)))
    }

    /// Allocate the next free address of an allocated subnet (from its
    /// ip-range, if it has one): serially, after the last address handed
    /// out, wrapping around, so a released address is not reused at once.
    pub fn allocate_address(&mut self, subnet: IpNet) -> Result<IpAddr> {
        self.space_mut(subnet)?.allocate()
    }

    /// Allocate a given address of an allocated subnet; it may lie outside
    /// the ip-range. Refused if reserved (network, broadcast, gateway) or
    /// already allocated.
    pub fn request_address(&mut self, subnet: IpNet, address: IpAddr) -> Result<()> {
        self.space_mut(subnet)?.request(address)
    }

    /// Release an address of an allocated subnet.
    pub fn release_address(&mut self, subnet: IpNet, address: IpAddr) -> Result<()> {
        let n = self.locate(subnet)?;
        match self.spaces.get_mut(&n.key()) {
            Some(space) => space.release(address),
            None => Space::with_defaults(n).release(address),
        }
    }

    /// Whether `address` is allocated in `subnet` (reserved addresses and
    /// addresses of subnets that are not allocated are not).
    pub fn is_address_allocated(&self, subnet: IpNet, address: IpAddr) -> bool {
        self.locate(subnet)
            .ok()
            .and_then(|n| self.spaces.get(&n.key()))
            .is_some_and(|s| s.is_allocated(address))
    }

    /// Number of addresses allocated in `subnet`, not counting reserved ones.
    pub fn address_count(&self, subnet: IpNet) -> Result<u128> {
        let n = self.locate(subnet)?;
        Ok(self.spaces.get(&n.key()).map_or(0, Space::allocated_count))
    }

    /// An estimate of the heap bytes this state holds (bitmaps, map entries
    /// with a third added for B-tree node overhead, address state).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let pools = self.pools.capacity() * size_of::<PoolState>()
            + self.pools.iter().map(PoolState::heap_bytes).sum::<usize>()
            + std::mem::size_of_val(self.config.pools());
        let others = self.others.len() * (size_of::<Key>() + size_of::<u8>()) * 4 / 3;
        let spaces = self.spaces.len() * (size_of::<Key>() + size_of::<Space>()) * 4 / 3
            + self.spaces.values().map(Space::heap_bytes).sum::<usize>();
        pools + others + spaces
    }

    fn to_repr(&self) -> SubnetsRepr {
        let mut pool_subnets = Vec::new();
        let mut pool_bitmaps = Vec::new();
        for pool in &self.pools {
            let runs = pool.used.runs();
            // A run costs about 40 bytes of JSON, a word of hex 16: a
            // fragmented pool is written as a bitmap, so the serialized size
            // stays within twice the bitmap's.
            if runs.len() * 40 > pool.used.heap_bytes() * 2 + 64 {
                pool_bitmaps.push(PoolBitmap {
                    pool: pool.net.to_ipnet(),
                    subnets: pool.used.to_hex(),
                });
                continue;
            }
            for (a, z) in runs {
                pool_subnets.push((pool.chunk(a).to_ipnet(), pool.chunk(z).to_ipnet()));
            }
        }
        SubnetsRepr {
            config: self.config.clone(),
            pool_subnets,
            pool_bitmaps,
            other_subnets: self
                .others
                .iter()
                .map(|(k, &prefix)| Net::from_key(k, prefix).to_ipnet())
                .collect(),
            addresses: self.spaces.values().map(Space::to_repr).collect(),
        }
    }

    fn from_repr(repr: SubnetsRepr) -> Result<Self> {
        let mut s = Subnets::new(repr.config);
        for (first, last) in repr.pool_subnets {
            let a = Net::parse(first, "subnet")?;
            let z = Net::parse(last, "subnet")?;
            let found = s.pools.iter_mut().find_map(|pool| {
                let ia = pool.chunk_of(&a)?;
                let iz = pool.chunk_of(&z)?;
                (ia <= iz).then_some((pool, ia, iz))
            });
            let Some((pool, ia, iz)) = found else {
                return Err(Error::InvalidState(format!(
                    "pool subnets {first}..{last} are not a run of subnets of one pool"
                )));
            };
            if let Some(i) = pool.used.first_set(ia, iz) {
                return Err(Error::SubnetInUse {
                    subnet: pool.chunk(i).to_ipnet(),
                });
            }
            pool.used.set_range(ia, iz);
        }
        for PoolBitmap { pool, subnets } in repr.pool_bitmaps {
            let Some(state) = s.pools.iter_mut().find(|p| p.net.to_ipnet() == pool) else {
                return Err(Error::InvalidState(format!(
                    "subnet bitmap of {pool}, which is not a pool"
                )));
            };
            let bits = Bitmap::from_hex(&subnets, state.count).ok_or_else(|| {
                Error::InvalidState(format!("subnet bitmap of pool {pool} is malformed"))
            })?;
            if state.used.intersects(&bits) {
                return Err(Error::InvalidState(format!(
                    "subnets of pool {pool} are listed twice"
                )));
            }
            state.used.union_with(&bits);
        }
        for pool in &mut s.pools {
            pool.refresh(0);
        }
        for subnet in repr.other_subnets {
            s.request(&SubnetRequest::new(subnet))?;
        }
        for space in &repr.addresses {
            let space = Space::from_repr(space)?;
            let n = space.net();
            if !s.holds(&n) {
                return Err(Error::SubnetNotAllocated {
                    subnet: n.to_ipnet(),
                });
            }
            if s.spaces.insert(n.key(), space).is_some() {
                return Err(Error::InvalidState(format!(
                    "the addresses of subnet {n} are listed twice"
                )));
            }
        }
        Ok(s)
    }
}

/// Serialized form of [`Subnets`]: runs of pool subnets, other subnets, and
/// the address state of subnets that have one. Checked on load.
#[derive(Serialize, Deserialize)]
struct SubnetsRepr {
    config: PoolConfig,
    /// Runs of consecutive allocated pool subnets: first and last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pool_subnets: Vec<(IpNet, IpNet)>,
    /// Allocated subnets of fragmented pools, as hex bitmaps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pool_bitmaps: Vec<PoolBitmap>,
    /// Allocated subnets that are not one of the pools' subnets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    other_subnets: Vec<IpNet>,
    /// Address state of the subnets that have one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<SpaceRepr>,
}

impl TryFrom<SubnetsRepr> for Subnets {
    type Error = Error;

    fn try_from(repr: SubnetsRepr) -> Result<Self> {
        Subnets::from_repr(repr).map_err(|e| match e {
            Error::InvalidState(_) => e,
            other => Error::InvalidState(other.to_string()),
        })
    }
}

impl Serialize for Subnets {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_repr().serialize(serializer)
    }
}

#[cfg(test)]
mod tests;

/// The allocated subnets of one pool as a bitmap: bit i of the hex text (16
/// digits per 64-bit word, lowest word first) is the pool's i-th subnet.
#[derive(Serialize, Deserialize)]
struct PoolBitmap {
    pool: IpNet,
    subnets: String,
}
