//! The kernel side of one load-balancer namespace: IPVS over generic netlink, the VIP addresses
//! over rtnetlink, sysctls. Reads build a [`View`]; writes are counted by the caller.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netns::NetNs;
use nlsock::{NETLINK_GENERIC, NETLINK_ROUTE, NlError, Sock};

use super::diff::{DestView, SvcView, View};
use super::msg::{AF_INET, FAMILY, IpvsMsg, Service, Timeouts};
use crate::{Error, Result};

/// The crate's error for a request the kernel refused: operation `what` in namespace `ns`.
pub(crate) fn refused(e: NlError, what: &str, ns: &str) -> Error {
    let detail = e.msg.map(|m| format!(" ({m})")).unwrap_or_default();
    Error::Io(
        format!("{what} in namespace {ns}{detail}"),
        std::io::Error::from_raw_os_error(e.errno),
    )
}

impl From<nlsock::Error> for Error {
    fn from(e: nlsock::Error) -> Error {
        if e.errno == 0 {
            return Error::Other(e.to_string());
        }
        Error::Io(
            format!("{} in namespace {}", e.what, e.ns),
            std::io::Error::from_raw_os_error(e.errno),
        )
    }
}

/// A dump's answers, every one parsed: an IPVS entry or address left out would read as one
/// to add again.
fn parsed<R>(all: Vec<std::result::Result<R, String>>, what: &str, ns: &str) -> Result<Vec<R>> {
    all.into_iter()
        .collect::<std::result::Result<Vec<R>, String>>()
        .map_err(|e| Error::Other(format!("{what} in namespace {ns}: {e}")))
}

/// Resolves the IPVS generic netlink family id (family ids are global: any namespace answers).
/// `None` when the kernel has no IPVS.
pub(crate) fn resolve_family(ns: &NetNs) -> Result<Option<u16>> {
    let mut sock = Sock::open(ns, NETLINK_GENERIC)?;
    let req = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY.to_string())],
    });
    match sock.get::<_, GenlMessage<GenlCtrl>>(req, "resolve the IPVS netlink family")? {
        Ok(answer) => Ok(answer.payload.nlas.iter().find_map(|a| match a {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        })),
        Err(NlError { errno, .. }) if errno == libc::ENOENT => Ok(None),
        Err(e) => Err(refused(e, "resolve the IPVS netlink family", ns.name())),
    }
}

/// Service dumps read at most per listing (see [`Kernel::fwmark_services`]).
const DUMPS: usize = 16;

/// Sockets into one load-balancer namespace.
pub(crate) struct Kernel {
    ns: NetNs,
    genl: Sock,
    rt: Sock,
    family: u16,
    iface: String,
    ifindex: u32,
}

/// The sysctls each load-balancer namespace gets (Docker's `ApplyOSTweaks` for IPVS, conntrack
/// for the masquerade, forwarding for the replies IPVS rewrites, no redirects). Keys are relative
/// to /proc/sys; `{iface}` is the network's interface.
pub(crate) fn sysctls(iface: &str) -> Vec<(String, &'static str)> {
    vec![
        ("net/ipv4/ip_forward".into(), "1"),
        ("net/ipv4/vs/conntrack".into(), "1"),
        ("net/ipv4/vs/conn_reuse_mode".into(), "0"),
        ("net/ipv4/vs/expire_nodest_conn".into(), "1"),
        ("net/ipv4/vs/expire_quiescent_template".into(), "1"),
        ("net/ipv4/conf/all/send_redirects".into(), "0"),
        (format!("net/ipv4/conf/{iface}/send_redirects"), "0"),
    ]
}

impl Kernel {
    /// Opens sockets inside the namespace at `path` and finds `iface` there.
    pub fn open(path: &Path, iface: &str, family: u16) -> Result<Kernel> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let ns = NetNs::open_path(&name, path).map_err(|e| {
            Error::Other(format!("load-balancer namespace {}: {e}", path.display()))
        })?;
        let ifindex = ns
            .if_index(iface)
            .map_err(|e| Error::Other(format!("enter namespace {name}: {e}")))?
            .ok_or_else(|| {
                Error::Other(format!(
                    "no interface {iface:?} in load-balancer namespace {name}"
                ))
            })?;
        Ok(Kernel {
            genl: Sock::open(&ns, NETLINK_GENERIC)?,
            rt: Sock::open(&ns, NETLINK_ROUTE)?,
            ns,
            family,
            iface: iface.to_string(),
            ifindex,
        })
    }

    pub fn ns(&self) -> &NetNs {
        &self.ns
    }

    pub fn name(&self) -> &str {
        self.ns.name()
    }

    fn genl_msg(&self, m: IpvsMsg) -> GenlMessage<IpvsMsg> {
        let mut g = GenlMessage::from_payload(m);
        g.set_resolved_family_id(self.family);
        g
    }

    /// Reads everything netagent manages in this namespace.
    ///
    /// The marks the namespace's nftables rules give VIPs are the services looked up one by
    /// one when no dump listed them (see [`Kernel::fwmark_services`]).
    pub fn read(&mut self, subnet: &Ipv4Net, lb_addr: Ipv4Addr) -> Result<View> {
        let nft = super::nft::read(&self.ns)?;
        let marked: BTreeSet<u32> = nft.iter().flat_map(|n| n.marks.values().copied()).collect();
        Ok(View {
            sysctls: self.read_sysctls()?,
            timeouts: Some(self.timeouts()?),
            services: self.services(&marked)?,
            nft,
            addrs: self.vip_addrs(subnet, lb_addr)?,
        })
    }

    fn read_sysctls(&self) -> Result<BTreeMap<String, String>> {
        let keys = sysctls(&self.iface);
        self.ns
            .run(|| {
                keys.iter()
                    .filter_map(|(k, _)| {
                        std::fs::read_to_string(format!("/proc/sys/{k}"))
                            .ok()
                            .map(|v| (k.clone(), v.trim().to_string()))
                    })
                    .collect()
            })
            .map_err(|e| Error::Other(format!("enter namespace {}: {e}", self.name())))
    }

    /// Sets `/proc/sys/<key>` inside the namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{key}");
        self.ns
            .run(|| std::fs::write(&path, value))
            .map_err(|e| Error::Other(format!("enter namespace {}: {e}", self.name())))?
            .map_err(|e| {
                let hint = if key.starts_with("net/ipv4/vs/") {
                    " (is the ip_vs module loaded?)"
                } else {
                    ""
                };
                Error::Io(
                    format!(
                        "set {}={value} in namespace {}{hint}",
                        key.replace('/', "."),
                        self.name()
                    ),
                    e,
                )
            })
    }

    pub fn timeouts(&mut self) -> Result<Timeouts> {
        let what = "read the IPVS timeouts";
        let req = self.genl_msg(IpvsMsg::get_config());
        let ns = self.name().to_string();
        match self.genl.get::<_, GenlMessage<IpvsMsg>>(req, what)? {
            Ok(m) => m.payload.timeouts().ok_or_else(|| {
                Error::Other(format!(
                    "{what} in namespace {ns}: the answer has no timeouts"
                ))
            }),
            Err(e) => Err(refused(e, what, &ns)),
        }
    }

    /// The IPv4 fwmark services of this namespace (address/port services are not netagent's and
    /// are left out).
    ///
    /// One service dump is not enough: kernels before per-namespace IPVS tables keep one service
    /// table for all namespaces and resume each datagram of a dump at a position counted over
    /// all of them, so services added or removed in other namespaces while a dump runs make it
    /// skip or repeat services of this one (seen in the kernel lab, Debian 6.1: an unchanged
    /// sync wrote again). The kernel flags nothing (no NLM_F_DUMP_INTR). A dump never lists a
    /// service this namespace does not hold, and only netagent changes this namespace, so the
    /// dumps are repeated until one lists exactly the services the earlier ones listed together;
    /// after [`DUMPS`] their union is taken. Two dumps can still skip the same service (the
    /// kernel lab's CI once saw a new balancer rewrite 34 of 1,000), so every mark in `expected`
    /// that no dump listed is then asked for by itself, a request no other namespace can
    /// disturb. A service's figures are from the latest answer that listed it.
    fn fwmark_services(&mut self, what: &str, expected: &BTreeSet<u32>) -> Result<Vec<Service>> {
        let mut seen: BTreeMap<u32, Service> = BTreeMap::new();
        for n in 0..DUMPS {
            let req = self.genl_msg(IpvsMsg::get_services());
            let list: Vec<GenlMessage<IpvsMsg>> =
                parsed(self.genl.dump(req, what)?, what, self.genl.ns())?;
            let now: BTreeMap<u32, Service> = list
                .iter()
                .filter_map(|m| m.payload.service())
                .filter(|s| s.fwmark != 0 && s.af == AF_INET)
                .map(|s| (s.fwmark, s))
                .collect();
            let agrees = n > 0 && now.keys().eq(seen.keys());
            seen.extend(now);
            if agrees {
                break;
            }
        }
        let unlisted: Vec<u32> = expected
            .iter()
            .filter(|m| !seen.contains_key(m))
            .copied()
            .collect();
        for mark in unlisted {
            if let Some(s) = self.service(mark)? {
                seen.insert(mark, s);
            }
        }
        Ok(seen.into_values().collect())
    }

    /// The IPv4 fwmark service `mark`, asked for by itself; `None` when there is none.
    fn service(&mut self, mark: u32) -> Result<Option<Service>> {
        let what = format!("read IPVS service fwmark {mark}");
        let req = self.genl_msg(IpvsMsg::get_service(mark));
        match self.genl.get::<_, GenlMessage<IpvsMsg>>(req, &what)? {
            Ok(m) => Ok(m.payload.service().filter(|s| s.af == AF_INET)),
            Err(NlError { errno, .. }) if errno == libc::ESRCH => Ok(None),
            Err(e) => Err(refused(e, &what, self.name())),
        }
    }

    /// Every IPv4 fwmark service and its destinations; `expected` as for
    /// [`Kernel::fwmark_services`].
    pub fn services(&mut self, expected: &BTreeSet<u32>) -> Result<BTreeMap<u32, SvcView>> {
        let list = self.fwmark_services("list the IPVS services", expected)?;
        let mut out = BTreeMap::new();
        for svc in list {
            let req = self.genl_msg(IpvsMsg::get_dests(svc.fwmark));
            let what = format!(
                "list the destinations of IPVS service fwmark {}",
                svc.fwmark
            );
            let dests: Vec<GenlMessage<IpvsMsg>> =
                parsed(self.genl.dump(req, &what)?, &what, self.genl.ns())?;
            let dests = dests
                .iter()
                .filter_map(|d| d.payload.dest())
                .map(|d| {
                    (
                        d.addr,
                        DestView {
                            port: d.port,
                            fwd: d.fwd,
                            weight: d.weight,
                        },
                    )
                })
                .collect();
            out.insert(
                svc.fwmark,
                SvcView {
                    sched: svc.sched,
                    dests,
                },
            );
        }
        Ok(out)
    }

    /// The connections each IPv4 fwmark service scheduled (its stats), by mark; `expected` as
    /// for [`Kernel::fwmark_services`].
    pub fn conns(&mut self, expected: &BTreeSet<u32>) -> Result<BTreeMap<u32, u64>> {
        // A service the dump skipped would look deleted to the running totals, and its count
        // would be added twice when it shows again.
        let list = self.fwmark_services("read the IPVS service counters", expected)?;
        Ok(list
            .iter()
            .map(|s| (s.fwmark, s.conns.unwrap_or(0)))
            .collect())
    }

    /// Sends IPVS requests (pipelined); one result each.
    pub fn ipvs(&mut self, msgs: Vec<IpvsMsg>) -> Result<Vec<std::result::Result<(), NlError>>> {
        let msgs: Vec<_> = msgs.into_iter().map(|m| (self.genl_msg(m), 0)).collect();
        Ok(self.genl.batch(msgs)?)
    }

    /// The /32 addresses on the network's interface inside `subnet` other than the node's own
    /// load-balancer address: the VIPs.
    pub fn vip_addrs(&mut self, subnet: &Ipv4Net, lb_addr: Ipv4Addr) -> Result<BTreeSet<Ipv4Addr>> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        let what = "list addresses";
        let all = self.rt.dump(RouteNetlinkMessage::GetAddress(req), what)?;
        let msgs: Vec<RouteNetlinkMessage> = parsed(all, what, self.rt.ns())?;
        let mut out = BTreeSet::new();
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != self.ifindex || a.header.prefix_len != 32 {
                continue;
            }
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
                _ => None,
            });
            if let Some(v) = local
                && subnet.contains(&v)
                && v != lb_addr
            {
                out.insert(v);
            }
        }
        Ok(out)
    }

    /// Adds (`true`) or removes /32 addresses on the interface; one result each.
    pub fn addrs(
        &mut self,
        ops: &[(bool, Ipv4Addr)],
    ) -> Result<Vec<std::result::Result<(), NlError>>> {
        let msgs = ops
            .iter()
            .map(|&(add, vip)| {
                let mut m = AddressMessage::default();
                m.header.family = AddressFamily::Inet;
                m.header.prefix_len = 32;
                m.header.index = self.ifindex;
                m.attributes = vec![
                    AddressAttribute::Local(IpAddr::V4(vip)),
                    AddressAttribute::Address(IpAddr::V4(vip)),
                ];
                if add {
                    // Adding an address that exists is a no-op.
                    (
                        RouteNetlinkMessage::NewAddress(m),
                        NLM_F_CREATE | NLM_F_REPLACE,
                    )
                } else {
                    (RouteNetlinkMessage::DelAddress(m), 0)
                }
            })
            .collect::<Vec<_>>();
        Ok(self.rt.batch(msgs)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_the_errno_and_the_kernels_message() {
        let e = refused(
            NlError {
                errno: libc::ESRCH,
                msg: Some("no such service".into()),
            },
            "delete IPVS service fwmark 300",
            "lb-x",
        );
        let text = e.to_string();
        assert!(
            text.contains("fwmark 300 in namespace lb-x (no such service)"),
            "{text}"
        );
        match e {
            Error::Io(_, io) => assert_eq!(io.raw_os_error(), Some(libc::ESRCH)),
            other => panic!("{other}"),
        }
    }
}
