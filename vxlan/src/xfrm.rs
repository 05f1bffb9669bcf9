//! A small synchronous NETLINK_XFRM client: ESP transport states and outbound policies, the
//! kinds netagent makes (tagged with [`MARK`] as reqid and policy mark), dumped and changed one
//! request at a time. Messages are netlink-packet-xfrm's.

use std::net::Ipv4Addr;
use std::sync::Arc;

use netlink_packet_xfrm::policy::{DelGetMessage as PolicyId, ModifyMessage as PolicyMsg};
use netlink_packet_xfrm::state::{DelGetMessage as SaId, GetDumpMessage, ModifyMessage as SaMsg};
use netlink_packet_xfrm::{
    Address, AlgAead, IPPROTO_ESP, Id, LifetimeConfig, Mark, Selector, UserPolicyId,
    UserPolicyInfo, UserSaId, UserSaInfo, UserTemplate, XFRM_ALG_AEAD_NAME_LEN, XFRM_INF,
    XFRM_MODE_TRANSPORT, XFRM_POLICY_ALLOW, XFRM_POLICY_OUT, XFRM_SHARE_ANY, XfrmAttrs,
    XfrmMessage,
};
use netns::NetNs;

use crate::error::{Error, Result};
use crate::nl::{Counter, NlError};
use nlsock::{NETLINK_XFRM, Sock};

/// Docker's mark (0xD0C4E3): the reqid of every state netagent makes, the mark (full mask) of
/// its outbound policies, and the packet mark its nftables table puts on encrypted VXLAN.
pub const MARK: u32 = 0x00D0_C4E3;
/// The AEAD: AES-GCM per RFC 4106 (key ‖ 4-byte salt), 64-bit ICV.
pub const AEAD: &str = "rfc4106(gcm(aes))";
const ICV_BITS: u32 = 64;
const AF_INET: u16 = libc::AF_INET as u16;
const IPPROTO_UDP: u8 = libc::IPPROTO_UDP as u8;

/// An ESP transport-mode security association (one direction between two VTEPs).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Sa {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub spi: u32,
    /// The AEAD key as the kernel takes it: AES key ‖ salt.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for Sa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        write!(f, "SA {} -> {} spi {:#010x}", self.src, self.dst, self.spi)
    }
}

/// An outbound policy: UDP from `src` to `dst`:`dport`, packets marked [`MARK`], through ESP
/// (transport) with the state of SPI `spi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sp {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub spi: u32,
}

fn addr(ip: Ipv4Addr) -> Address {
    Address::from_ipv4(&ip)
}

fn infinite() -> LifetimeConfig {
    LifetimeConfig {
        soft_byte_limit: XFRM_INF,
        hard_byte_limit: XFRM_INF,
        soft_packet_limit: XFRM_INF,
        hard_packet_limit: XFRM_INF,
        ..Default::default()
    }
}

// netlink-packet-xfrm puts ports and SPIs in network order itself: they are given in host
// order here.
fn selector(sp: &Sp) -> Selector {
    Selector {
        daddr: addr(sp.dst),
        saddr: addr(sp.src),
        dport: sp.dport,
        dport_mask: u16::MAX,
        family: AF_INET,
        prefixlen_d: 32,
        prefixlen_s: 32,
        proto: IPPROTO_UDP,
        ..Default::default()
    }
}

fn mark_nla() -> XfrmAttrs {
    XfrmAttrs::Mark(Mark {
        value: MARK,
        mask: u32::MAX,
    })
}

fn sa_msg(sa: &Sa) -> XfrmMessage {
    let mut name = [0u8; XFRM_ALG_AEAD_NAME_LEN];
    name[..AEAD.len()].copy_from_slice(AEAD.as_bytes());
    XfrmMessage::AddSa(SaMsg {
        user_sa_info: UserSaInfo {
            id: Id {
                daddr: addr(sa.dst),
                spi: sa.spi,
                proto: IPPROTO_ESP,
            },
            saddr: addr(sa.src),
            lifetime_cfg: infinite(),
            reqid: MARK,
            family: AF_INET,
            mode: XFRM_MODE_TRANSPORT,
            replay_window: 32,
            ..Default::default()
        },
        nlas: vec![XfrmAttrs::EncryptionAlgAead(AlgAead {
            alg_name: name,
            alg_key_len: (sa.key.len() * 8) as u32,
            alg_icv_len: ICV_BITS,
            alg_key: sa.key.clone(),
        })],
    })
}

fn sp_msg(sp: &Sp) -> XfrmMessage {
    XfrmMessage::UpdatePolicy(PolicyMsg {
        user_policy_info: UserPolicyInfo {
            selector: selector(sp),
            lifetime_cfg: infinite(),
            direction: XFRM_POLICY_OUT,
            action: XFRM_POLICY_ALLOW,
            share: XFRM_SHARE_ANY,
            ..Default::default()
        },
        nlas: vec![
            XfrmAttrs::Template(vec![UserTemplate {
                id: Id {
                    daddr: addr(sp.dst),
                    spi: sp.spi,
                    proto: IPPROTO_ESP,
                },
                family: AF_INET,
                saddr: addr(sp.src),
                reqid: MARK,
                mode: XFRM_MODE_TRANSPORT,
                aalgos: u32::MAX,
                ealgos: u32::MAX,
                calgos: u32::MAX,
                ..Default::default()
            }]),
            mark_nla(),
        ],
    })
}

/// One NETLINK_XFRM socket inside a namespace.
pub(crate) struct Xfrm {
    sock: Sock,
    writes: Arc<Counter>,
}

impl Xfrm {
    pub fn open(ns: &NetNs, writes: Arc<Counter>) -> Result<Xfrm> {
        Ok(Xfrm {
            sock: Sock::open(ns, NETLINK_XFRM)?,
            writes,
        })
    }

    /// Sends one request and waits for its acknowledgement; the kernel's error is returned
    /// for the caller to interpret. Counts a write.
    fn request(
        &mut self,
        msg: XfrmMessage,
        what: &str,
    ) -> Result<std::result::Result<(), NlError>> {
        tracing::debug!(ns = %self.sock.ns(), op = %what, "xfrm write");
        let answer = self.sock.request(msg, 0)?;
        self.writes.add(1);
        Ok(answer)
    }

    /// A dump's answers; an entry the parser cannot read is skipped.
    fn dump(&mut self, msg: XfrmMessage, what: &str) -> Result<Vec<XfrmMessage>> {
        Ok(self.sock.dump(msg, what)?.into_iter().flatten().collect())
    }

    /// netagent's states: ESP, IPv4, reqid [`MARK`].
    pub fn states(&mut self) -> Result<Vec<Sa>> {
        let msgs = self.dump(
            XfrmMessage::GetDumpSa(GetDumpMessage { nlas: vec![] }),
            "dump xfrm states",
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| {
                let XfrmMessage::AddSa(s) = m else {
                    return None;
                };
                let i = &s.user_sa_info;
                if i.reqid != MARK || i.id.proto != IPPROTO_ESP || i.family != AF_INET {
                    return None;
                }
                let key = s.nlas.iter().find_map(|n| match n {
                    XfrmAttrs::EncryptionAlgAead(a) => Some(a.alg_key.clone()),
                    _ => None,
                });
                Some(Sa {
                    src: i.saddr.to_ipv4(),
                    dst: i.id.daddr.to_ipv4(),
                    spi: i.id.spi,
                    key: key.unwrap_or_default(),
                })
            })
            .collect())
    }

    /// netagent's policies: outbound, marked [`MARK`], IPv4 UDP with one ESP template.
    pub fn policies(&mut self) -> Result<Vec<Sp>> {
        let msgs = self.dump(
            XfrmMessage::GetPolicy(PolicyId::default()),
            "dump xfrm policies",
        )?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| {
                let XfrmMessage::AddPolicy(p) = m else {
                    return None;
                };
                let i = &p.user_policy_info;
                let marked = p.nlas.iter().any(|n| {
                    matches!(n, XfrmAttrs::Mark(Mark { value, mask }) if *value == MARK && *mask == u32::MAX)
                });
                if !marked || i.direction != XFRM_POLICY_OUT || i.selector.family != AF_INET {
                    return None;
                }
                let spi = p
                    .nlas
                    .iter()
                    .find_map(|n| match n {
                        XfrmAttrs::Template(t) if t.len() == 1 => Some(t[0].id.spi),
                        _ => None,
                    })
                    .unwrap_or(0);
                Some(Sp {
                    src: i.selector.saddr.to_ipv4(),
                    dst: i.selector.daddr.to_ipv4(),
                    dport: i.selector.dport,
                    spi,
                })
            })
            .collect())
    }

    /// Adds a state; an existing one with its SPI is an error (EEXIST) for the caller.
    pub fn add_state(&mut self, sa: &Sa) -> Result<std::result::Result<(), NlError>> {
        let what = format!("{sa:?}");
        self.request(sa_msg(sa), &format!("add {what}"))
    }

    /// Deletes a state; an absent one is fine.
    pub fn del_state(&mut self, sa: &Sa) -> Result<()> {
        let what = format!("delete {sa:?}");
        let msg = XfrmMessage::DeleteSa(SaId {
            user_sa_id: UserSaId {
                daddr: addr(sa.dst),
                spi: sa.spi,
                family: AF_INET,
                proto: IPPROTO_ESP,
            },
            nlas: vec![XfrmAttrs::SrcAddr(addr(sa.src))],
        });
        match self.request(msg, &what)? {
            Err(e) if e.errno != libc::ESRCH && e.errno != libc::ENOENT => {
                Err(Error::refused(what, self.sock.ns(), e))
            }
            _ => Ok(()),
        }
    }

    /// Creates or replaces (template SPI) an outbound policy.
    pub fn put_policy(&mut self, sp: &Sp) -> Result<()> {
        let what = format!(
            "set the xfrm policy {} -> {} udp {} to spi {:#010x}",
            sp.src, sp.dst, sp.dport, sp.spi
        );
        self.request(sp_msg(sp), &what)?
            .map_err(|e| Error::refused(what, self.sock.ns(), e))
    }

    /// Deletes an outbound policy; an absent one is fine.
    pub fn del_policy(&mut self, sp: &Sp) -> Result<()> {
        let what = format!(
            "delete the xfrm policy {} -> {} udp {}",
            sp.src, sp.dst, sp.dport
        );
        let msg = XfrmMessage::DeletePolicy(PolicyId {
            user_policy_id: UserPolicyId {
                selector: selector(sp),
                index: 0,
                direction: XFRM_POLICY_OUT,
            },
            nlas: vec![mark_nla()],
        });
        match self.request(msg, &what)? {
            Err(e) if e.errno != libc::ENOENT && e.errno != libc::ESRCH => {
                Err(Error::refused(what, self.sock.ns(), e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;

    #[test]
    fn messages_round_trip_and_keys_stay_out_of_debug() {
        let sa = Sa {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(198, 18, 0, 2),
            spi: 0x1234_5678,
            key: vec![0xab; 20],
        };
        assert!(!format!("{sa:?}").contains("ab"), "{sa:?}");
        let m = sa_msg(&sa);
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        let XfrmMessage::AddSa(back) =
            <XfrmMessage as netlink_packet_core::ParseableParametrized<[u8], u16>>::parse_with_param(
                &buf,
                netlink_packet_xfrm::XFRM_MSG_NEWSA,
            )
            .unwrap()
        else {
            panic!("not an SA")
        };
        assert_eq!(back.user_sa_info.id.spi, sa.spi);
        assert_eq!(back.user_sa_info.reqid, MARK);
        let sp = Sp {
            src: sa.src,
            dst: sa.dst,
            dport: 5789,
            spi: sa.spi,
        };
        let m = sp_msg(&sp);
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        let XfrmMessage::AddPolicy(p) =
            <XfrmMessage as netlink_packet_core::ParseableParametrized<[u8], u16>>::parse_with_param(
                &buf,
                netlink_packet_xfrm::XFRM_MSG_NEWPOLICY,
            )
            .unwrap()
        else {
            panic!("not a policy")
        };
        assert_eq!(p.user_policy_info.selector.dport, 5789);
        assert!(p.nlas.contains(&mark_nla()));
    }

    /// The kernel reads the policy as `ip xfrm` shows it (port and SPI in the right byte
    /// order), in a throwaway namespace (policies install on kernels without ESP too).
    #[test]
    fn the_kernel_sees_the_policy_as_meant() {
        if !nix_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let out = std::thread::spawn(|| {
            // SAFETY: only this thread changes namespace, and it ends here.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let ns = NetNs::current().unwrap();
            let mut x = Xfrm::open(&ns, Default::default()).unwrap();
            let sp = Sp {
                src: Ipv4Addr::new(198, 18, 0, 1),
                dst: Ipv4Addr::new(198, 18, 0, 2),
                dport: 5789,
                spi: 0x1234_5678,
            };
            x.put_policy(&sp).unwrap();
            assert_eq!(x.policies().unwrap(), vec![sp]);
            let out = std::process::Command::new("ip")
                .args(["xfrm", "policy"])
                .output()
                .unwrap();
            x.del_policy(&sp).unwrap();
            assert!(x.policies().unwrap().is_empty());
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .join()
        .unwrap();
        for want in [
            "dport 5789",
            "spi 0x12345678",
            "mark 0xd0c4e3/0xffffffff",
            "mode transport",
        ] {
            assert!(out.contains(want), "{want} not in {out}");
        }
    }

    fn nix_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }
}
