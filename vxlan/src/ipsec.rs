//! Encrypted overlay networks: ESP transport mode on the VXLAN UDP traffic of encrypted
//! networks between this node and every node that has endpoints on one of them, as Docker's
//! overlay driver does it (libnetwork drivers/overlay/encryption.go), with the kernel read back
//! and only the difference written:
//!
//! - per remote VTEP, a *reverse* state (remote -> this node) for every valid key, a *forward*
//!   state (this node -> remote) for the primary key, and one outbound policy (UDP to the
//!   data-path port, packets marked [`MARK`]) whose template names the forward state's SPI;
//! - SPIs are derived from (source, key tag, destination) with FNV-32a ([`spi`]), so both ends
//!   agree without talking; the AEAD key is the 16-byte network key followed by the SPI (salt);
//! - a change of keys goes in the order that drops nothing: new reverse states first, then the
//!   new forward state and the policy switched to it, then the old forward and reverse states
//!   removed. Every node holds reverse states for all valid keys, so a peer that switches
//!   earlier or later is still understood;
//! - the fail-closed firewall ([`crate::ipsec_nft`]) comes before any encrypted network's VXLAN
//!   device and goes after the last.
//!
//! Keys never appear in logs, errors or `Debug` output.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::xfrm::{Sa, Sp, Xfrm};
use crate::{Dataplane, Network, ipsec_nft};

pub use crate::xfrm::{AEAD, MARK};

/// ESP's growth of a packet with rfc4106(gcm(aes)) and a 64-bit ICV: SPI 4 + sequence 4 + IV 8
/// + pad length 1 + next header 1 + ICV 8 (Docker's `pktExpansion`).
pub const ESP_OVERHEAD: u32 = 26;
/// Length of a network key (AES-128).
pub const KEY_LEN: usize = 16;
/// What a node whose kernel cannot encrypt says.
pub const NO_ESP: &str = "kernel lacks esp4 / rfc4106(gcm(aes))";

/// One network key: its Lamport tag and the AES-128 key.
#[derive(Clone, PartialEq, Eq)]
pub struct IpsecKey {
    pub tag: u32,
    pub key: [u8; KEY_LEN],
}

impl std::fmt::Debug for IpsecKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IpsecKey {{ tag: {}, key: <redacted> }}", self.tag)
    }
}

/// The valid keys and which one this node sends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpsecKeys {
    keys: Vec<IpsecKey>,
    primary: u32,
}

impl IpsecKeys {
    /// Keys as the store keeps them: (Lamport time, key bytes). The primary is the second
    /// newest (the newest alone when there is one), as swarmkit's key manager hands them out:
    /// a new key is accepted everywhere one rotation before anyone sends with it. A key of
    /// more than 16 bytes uses its first 16.
    pub fn from_store(keys: &[(u64, &[u8])]) -> Result<IpsecKeys> {
        let mut out: Vec<IpsecKey> = Vec::new();
        for (lamport, bytes) in keys {
            let tag = u32::try_from(*lamport).map_err(|_| {
                Error::invalid(
                    format!("IPsec key tag {lamport}"),
                    "Lamport tags must fit in 32 bits",
                )
            })?;
            let key: [u8; KEY_LEN] = bytes
                .get(..KEY_LEN)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| {
                    Error::invalid(
                        format!("IPsec key {tag}"),
                        format!("it has {} bytes; AES-128-GCM needs {KEY_LEN}", bytes.len()),
                    )
                })?;
            if out.iter().any(|k| k.tag == tag) {
                return Err(Error::invalid(
                    format!("IPsec key {tag}"),
                    "two keys have the same tag",
                ));
            }
            out.push(IpsecKey { tag, key });
        }
        out.sort_by_key(|k| k.tag);
        let primary = match out.len() {
            0 => 0,
            1 => out[0].tag,
            n => out[n - 2].tag,
        };
        Ok(IpsecKeys { keys: out, primary })
    }

    pub fn keys(&self) -> &[IpsecKey] {
        &self.keys
    }

    /// The tag of the key this node sends with (0 without keys).
    pub fn primary(&self) -> u32 {
        self.primary
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The SPI of traffic from `src` to `dst` under key `tag`: FNV-32a over `src` as 16 bytes
/// (IPv4-mapped), the tag big-endian and `dst` as 16 bytes (Docker's `buildSPI`).
pub fn spi(src: Ipv4Addr, dst: Ipv4Addr, tag: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let parts: [&[u8]; 3] = [
        &src.to_ipv6_mapped().octets(),
        &tag.to_be_bytes(),
        &dst.to_ipv6_mapped().octets(),
    ];
    for p in parts {
        for &b in p {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// The overlay MTU of an encrypted network on an underlay of `underlay` bytes: VXLAN's 50 and
/// ESP's 26 off, rounded down to a multiple of 4 (Docker: 1500 -> 1424).
pub fn encrypted_mtu(underlay: u32) -> u32 {
    let m = underlay.saturating_sub(crate::VXLAN_OVERHEAD + ESP_OVERHEAD);
    (m - m % 4).max(68)
}

fn state(src: Ipv4Addr, dst: Ipv4Addr, k: &IpsecKey) -> Sa {
    let spi = spi(src, dst, k.tag);
    let mut key = k.key.to_vec();
    key.extend_from_slice(&spi.to_be_bytes());
    Sa { src, dst, spi, key }
}

/// The states and policies this node should hold.
pub(crate) fn desired(
    local: Ipv4Addr,
    port: u16,
    remotes: &BTreeSet<Ipv4Addr>,
    keys: &IpsecKeys,
) -> (Vec<Sa>, Vec<Sp>) {
    let mut sas = Vec::new();
    let mut sps = Vec::new();
    let Some(primary) = keys.keys.iter().find(|k| k.tag == keys.primary) else {
        return (sas, sps);
    };
    for &r in remotes.iter().filter(|r| **r != local) {
        for k in &keys.keys {
            sas.push(state(r, local, k));
        }
        let fwd = state(local, r, primary);
        sps.push(Sp {
            src: local,
            dst: r,
            dport: port,
            spi: fwd.spi,
        });
        sas.push(fwd);
    }
    (sas, sps)
}

/// One reconcile's writes, in the order that never drops a packet. `remove` is false while
/// some encrypted network's peers are not known yet (nothing is removed then).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Steps {
    pub add_reverse: Vec<Sa>,
    pub add_forward: Vec<Sa>,
    pub put_policies: Vec<Sp>,
    pub del_policies: Vec<Sp>,
    pub del_forward: Vec<Sa>,
    pub del_reverse: Vec<Sa>,
}

impl Steps {
    pub fn is_empty(&self) -> bool {
        *self == Steps::default()
    }
}

/// The difference between what the kernel holds and what is wanted. A state whose key
/// differs is removed and added again.
pub(crate) fn plan(
    local: Ipv4Addr,
    have: (&[Sa], &[Sp]),
    want: (&[Sa], &[Sp]),
    remove: bool,
) -> Steps {
    let mut s = Steps::default();
    let (have_sa, have_sp) = have;
    let (want_sa, want_sp) = want;
    let is_fwd = |sa: &Sa| sa.src == local;
    let mut replaced = Vec::new();
    for w in want_sa {
        match have_sa
            .iter()
            .find(|h| h.src == w.src && h.dst == w.dst && h.spi == w.spi)
        {
            Some(h) if h.key == w.key => continue,
            Some(h) => replaced.push(h.clone()),
            None => {}
        }
        if is_fwd(w) {
            s.add_forward.push(w.clone());
        } else {
            s.add_reverse.push(w.clone());
        }
    }
    for w in want_sp {
        if !have_sp.contains(w) {
            s.put_policies.push(*w);
        }
    }
    let same = |a: &Sp, b: &Sp| (a.src, a.dst, a.dport) == (b.src, b.dst, b.dport);
    for h in have_sp {
        if remove && !want_sp.iter().any(|w| same(w, h)) {
            s.del_policies.push(*h);
        }
    }
    for h in have_sa {
        let stale = !want_sa
            .iter()
            .any(|w| w.src == h.src && w.dst == h.dst && w.spi == h.spi);
        if (stale && remove) || replaced.contains(h) {
            if is_fwd(h) {
                s.del_forward.push(h.clone());
            } else {
                s.del_reverse.push(h.clone());
            }
        }
    }
    // A replaced state (same SPI, other key) must go before its new version is added.
    s
}

/// Whether this kernel can carry encrypted networks: an ESP state with rfc4106(gcm(aes)) is
/// added in a throwaway network namespace. Probed once per process.
pub fn probe() -> std::result::Result<(), String> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        std::thread::spawn(probe_now)
            .join()
            .unwrap_or_else(|_| Err(format!("{NO_ESP}: the probe panicked")))
    })
    .clone()
}

fn probe_now() -> std::result::Result<(), String> {
    // SAFETY: unshare affects only this thread, which ends after the probe.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot probe for ESP: unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        ));
    }
    let ns = netns::NetNs::current().map_err(|e| format!("cannot probe for ESP: {e}"))?;
    let mut x = Xfrm::open(&ns, Default::default()).map_err(|e| format!("{NO_ESP}: {e}"))?;
    let k = IpsecKey {
        tag: 1,
        key: [7; KEY_LEN],
    };
    let sa = state(Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2), &k);
    match x.add_state(&sa).map_err(|e| format!("{NO_ESP}: {e}"))? {
        Ok(()) => Ok(()),
        Err(e) => Err(format!("{NO_ESP} (adding an ESP state failed: {e})")),
    }
}

/// The data plane's IPsec bookkeeping.
#[derive(Default)]
pub(crate) struct IpsecRt {
    /// The keys last given (`None`: not given yet; states already in the kernel are kept).
    pub keys: Option<IpsecKeys>,
    /// What the firewall table holds, as last read or written: `None` not known yet,
    /// `Some(None)` absent, `Some(Some((port, VNIs)))`.
    #[allow(clippy::type_complexity)]
    rules: Option<Option<(u16, BTreeSet<u32>)>>,
    /// The last reconcile wanted nothing and found nothing (skip until something is wanted).
    clean: bool,
    xfrm: Option<Xfrm>,
}

impl Dataplane {
    /// Gives the network keys (`None` forgets them: states are then left as they are) and
    /// makes the states and policies match.
    pub fn set_ipsec_keys(&mut self, keys: Option<IpsecKeys>) -> Result<()> {
        if self.ipsec.keys == keys {
            return Ok(());
        }
        self.ipsec.keys = keys;
        self.ipsec.clean = false;
        self.sync_ipsec(false)
    }

    /// VNIs of the encrypted networks this data plane knows.
    fn encrypted_vnis(&self) -> BTreeSet<u32> {
        self.nets
            .values()
            .filter(|n| n.spec.encrypted)
            .map(|n| n.spec.vni)
            .collect()
    }

    /// Makes sure the firewall covers `need` (with what it covers already); read back from
    /// the kernel when `verify` or not known yet.
    pub(crate) fn ensure_ipsec_rules(&mut self, need: BTreeSet<u32>, verify: bool) -> Result<()> {
        if need.is_empty() && !verify {
            return Ok(());
        }
        let port = self.ctx.port;
        let now = match (&self.ipsec.rules, verify) {
            (Some(r), false) => r.clone(),
            _ => ipsec_nft::installed(&self.ctx.node)?,
        };
        let covered = need.is_empty()
            || now
                .as_ref()
                .is_some_and(|(p, v)| *p == port && need.is_subset(v));
        if covered {
            self.ipsec.rules = Some(now);
            return Ok(());
        }
        let mut vnis = need;
        if let Some((p, v)) = &now
            && *p == port
        {
            vnis.extend(v.iter().copied());
        }
        ipsec_nft::write(&self.ctx.node, port, &vnis)?;
        self.ctx.counter.add(1);
        self.ipsec.rules = Some(Some((port, vnis)));
        Ok(())
    }

    /// The firewall for exactly the encrypted networks known now (after removals).
    pub(crate) fn shrink_ipsec_rules(&mut self) -> Result<()> {
        let want = self.encrypted_vnis();
        let port = self.ctx.port;
        let now = match &self.ipsec.rules {
            Some(r) => r.clone(),
            None => ipsec_nft::installed(&self.ctx.node)?,
        };
        let same = match &now {
            None => want.is_empty(),
            Some((p, v)) => *p == port && *v == want,
        };
        if !same {
            ipsec_nft::write(&self.ctx.node, port, &want)?;
            self.ctx.counter.add(1);
        }
        self.ipsec.rules = Some((!want.is_empty()).then_some((port, want)));
        Ok(())
    }

    /// Before a network's VXLAN device may exist: an encrypted network needs its rules.
    pub(crate) fn before_vxlan(&mut self, network: &Network) -> Result<()> {
        if !network.encrypted {
            return Ok(());
        }
        let mut need = self.encrypted_vnis();
        need.insert(network.vni);
        self.ensure_ipsec_rules(need, true)
    }

    /// After networks went: rules and states for what is left.
    pub(crate) fn after_removal(&mut self) -> Result<()> {
        self.shrink_ipsec_rules()?;
        self.sync_ipsec(true)
    }

    /// Makes the states and policies match the keys and the remote VTEPs of the encrypted
    /// networks' peers. Without encrypted networks everything goes, but only after a removal
    /// (`after_removal`): a fresh process knows no networks before it is told them.
    pub(crate) fn sync_ipsec(&mut self, after_removal: bool) -> Result<()> {
        let encrypted: Vec<&crate::Net> = self.nets.values().filter(|n| n.spec.encrypted).collect();
        let keys = match (&self.ipsec.keys, encrypted.is_empty()) {
            (_, true) if !after_removal => return Ok(()),
            (Some(k), false) => k.clone(),
            // Nothing encrypted here: nothing wanted, whatever the keys.
            (_, true) => IpsecKeys::from_store(&[])?,
            // Keys not given yet (a restarted process): keep what the kernel holds.
            (None, false) => return Ok(()),
        };
        if encrypted.is_empty() && self.ipsec.clean {
            return Ok(());
        }
        let complete = encrypted.iter().all(|n| n.peers.is_some());
        let remotes: BTreeSet<Ipv4Addr> = encrypted
            .iter()
            .filter_map(|n| n.peers.as_ref())
            .flat_map(|p| p.values().map(|p| p.vtep))
            .collect();
        let local = self.ctx.vtep;
        let (want_sa, want_sp) = desired(local, self.ctx.port, &remotes, &keys);
        if self.ipsec.xfrm.is_none() {
            self.ipsec.xfrm = Some(Xfrm::open(&self.ctx.node, self.ctx.counter.clone())?);
        }
        let x = self.ipsec.xfrm.as_mut().expect("opened above");
        let have_sa: Vec<Sa> = x
            .states()?
            .into_iter()
            .filter(|s| s.src == local || s.dst == local)
            .collect();
        let have_sp: Vec<Sp> = x
            .policies()?
            .into_iter()
            .filter(|p| p.src == local)
            .collect();
        let steps = plan(local, (&have_sa, &have_sp), (&want_sa, &want_sp), complete);
        self.ipsec.clean = want_sa.is_empty() && have_sa.is_empty() && have_sp.is_empty();
        if steps.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            reverse = steps.add_reverse.len(),
            forward = steps.add_forward.len(),
            policies = steps.put_policies.len(),
            removed = steps.del_forward.len() + steps.del_reverse.len() + steps.del_policies.len(),
            "ipsec states"
        );
        apply_steps(x, steps)
    }
}

fn apply_steps(x: &mut Xfrm, s: Steps) -> Result<()> {
    let replaced: BTreeMap<(Ipv4Addr, Ipv4Addr, u32), ()> = s
        .add_reverse
        .iter()
        .chain(&s.add_forward)
        .map(|a| ((a.src, a.dst, a.spi), ()))
        .collect();
    // States with the right SPI but another key go first (rare: a key changed under its tag).
    for old in s.del_reverse.iter().chain(&s.del_forward) {
        if replaced.contains_key(&(old.src, old.dst, old.spi)) {
            x.del_state(old)?;
        }
    }
    for sa in s.add_reverse.iter().chain(&s.add_forward) {
        if let Err(e) = x.add_state(sa)? {
            let esp = matches!(e.errno, libc::EPROTONOSUPPORT | libc::ENOSYS | libc::ENOENT);
            return Err(Error::Netlink {
                op: format!("add the IPsec {sa:?}"),
                ns: String::new(),
                detail: if esp {
                    format!("{e}: {NO_ESP}")
                } else {
                    e.to_string()
                },
                errno: e.errno,
            });
        }
    }
    for sp in &s.put_policies {
        x.put_policy(sp)?;
    }
    for sp in &s.del_policies {
        x.del_policy(sp)?;
    }
    for old in s.del_forward.iter().chain(&s.del_reverse) {
        if !replaced.contains_key(&(old.src, old.dst, old.spi)) {
            x.del_state(old)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn spi_is_docker_fnv32a_over_mapped_addresses_and_tag() {
        // FNV-32a by hand over ::ffff:10.0.0.1 ‖ 00000001 ‖ ::ffff:10.0.0.2.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(&[0xff, 0xff, 10, 0, 0, 1]);
        bytes.extend_from_slice(&[0, 0, 0, 1]);
        bytes.extend_from_slice(&[0; 10]);
        bytes.extend_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
        let mut h: u32 = 2166136261;
        for b in bytes {
            h = (h ^ b as u32).wrapping_mul(16777619);
        }
        assert_eq!(spi(a("10.0.0.1"), a("10.0.0.2"), 1), h);
        assert_ne!(
            spi(a("10.0.0.1"), a("10.0.0.2"), 1),
            spi(a("10.0.0.2"), a("10.0.0.1"), 1),
            "each direction has its own SPI"
        );
        assert_ne!(
            spi(a("10.0.0.1"), a("10.0.0.2"), 1),
            spi(a("10.0.0.1"), a("10.0.0.2"), 2)
        );
    }

    #[test]
    fn mtu_is_rounded_as_docker_does() {
        assert_eq!(encrypted_mtu(1500), 1424);
        assert_eq!(encrypted_mtu(9000), 8924);
        assert_eq!(encrypted_mtu(1450), 1372);
        assert_eq!(encrypted_mtu(10), 68);
    }

    fn keys(tags: &[u64]) -> IpsecKeys {
        let raw: Vec<(u64, Vec<u8>)> = tags.iter().map(|t| (*t, vec![*t as u8; 16])).collect();
        let refs: Vec<(u64, &[u8])> = raw.iter().map(|(t, k)| (*t, k.as_slice())).collect();
        IpsecKeys::from_store(&refs).unwrap()
    }

    #[test]
    fn keys_pick_the_second_newest_and_refuse_bad_input() {
        assert_eq!(keys(&[3, 1, 2]).primary(), 2);
        assert_eq!(keys(&[5]).primary(), 5);
        assert!(keys(&[]).is_empty());
        assert!(IpsecKeys::from_store(&[(1, &[0u8; 8][..])]).is_err());
        assert!(IpsecKeys::from_store(&[(1, &[0u8; 16][..]), (1, &[1u8; 16][..])]).is_err());
        assert!(IpsecKeys::from_store(&[(u64::MAX, &[0u8; 16][..])]).is_err());
        let dbg = format!("{:?}", keys(&[7]));
        assert!(dbg.contains("redacted") && !dbg.contains("[7, 7"), "{dbg}");
    }

    #[test]
    fn steady_state_per_peer_is_three_reverse_one_forward_one_policy() {
        let local = a("198.18.0.1");
        let remotes: BTreeSet<Ipv4Addr> = [a("198.18.0.2"), a("198.18.0.3"), local].into();
        let (sas, sps) = desired(local, 5789, &remotes, &keys(&[1, 2, 3]));
        assert_eq!(sas.len(), 2 * 4, "the local VTEP is no remote");
        assert_eq!(sps.len(), 2);
        let fwd: Vec<&Sa> = sas.iter().filter(|s| s.src == local).collect();
        assert_eq!(fwd.len(), 2);
        assert_eq!(
            fwd[0].spi,
            spi(local, fwd[0].dst, 2),
            "primary = second newest"
        );
        assert_eq!(&fwd[0].key[16..], &fwd[0].spi.to_be_bytes(), "salt = SPI");
        assert!(sps.iter().all(|p| p.dport == 5789));
    }

    #[test]
    fn rotation_adds_reverse_first_switches_then_removes() {
        let local = a("198.18.0.1");
        let remotes: BTreeSet<Ipv4Addr> = [a("198.18.0.2")].into();
        let (old_sa, old_sp) = desired(local, 4789, &remotes, &keys(&[1, 2, 3]));
        let (new_sa, new_sp) = desired(local, 4789, &remotes, &keys(&[2, 3, 4]));
        let s = plan(local, (&old_sa, &old_sp), (&new_sa, &new_sp), true);
        assert_eq!(s.add_reverse.len(), 1, "only the new key's reverse state");
        assert_eq!(s.add_reverse[0].spi, spi(a("198.18.0.2"), local, 4));
        assert_eq!(s.add_forward.len(), 1);
        assert_eq!(s.add_forward[0].spi, spi(local, a("198.18.0.2"), 3));
        assert_eq!(
            s.put_policies.len(),
            1,
            "the policy switches to the new SPI"
        );
        assert!(
            s.del_policies.is_empty(),
            "the policy is replaced, never removed"
        );
        assert_eq!(s.del_forward[0].spi, spi(local, a("198.18.0.2"), 2));
        assert_eq!(s.del_reverse[0].spi, spi(a("198.18.0.2"), local, 1));
        // Steady state: nothing to do; unknown peers: nothing removed.
        assert!(plan(local, (&new_sa, &new_sp), (&new_sa, &new_sp), true).is_empty());
        let s = plan(local, (&old_sa, &old_sp), (&[], &[]), false);
        assert!(s.is_empty(), "{s:?}");
        let s = plan(local, (&old_sa, &old_sp), (&[], &[]), true);
        assert_eq!((s.del_reverse.len(), s.del_forward.len()), (3, 1));
        assert_eq!(s.del_policies.len(), 1);
    }

    #[test]
    fn a_changed_key_under_the_same_tag_is_replaced() {
        let local = a("198.18.0.1");
        let remotes: BTreeSet<Ipv4Addr> = [a("198.18.0.2")].into();
        let (mut have, sp) = desired(local, 4789, &remotes, &keys(&[1]));
        have[0].key[0] ^= 1;
        let (want, _) = desired(local, 4789, &remotes, &keys(&[1]));
        let s = plan(local, (&have, &sp), (&want, &sp), false);
        assert_eq!(s.add_reverse.len(), 1);
        assert_eq!(
            s.del_reverse.len(),
            1,
            "replaced even while peers are unknown"
        );
    }
}
