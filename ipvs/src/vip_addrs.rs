//! VIPs as local addresses of a network's load-balancer namespace, so `ping VIP` answers (the
//! namespace answers ARP for it on the network's bridge and echoes from it), as in Docker.
//!
//! Each VIP is a /32 `local` route on the namespace's interface in the local table (what an
//! address adds under the hood), marked with netagent's route protocol. Not interface addresses:
//! the kernel keeps those in a list per interface that every add walks, so 10,000 VIPs as
//! addresses take seconds, as routes a fraction of that (the FIB is a trie). `ip route show table
//! local proto 78` lists them. A small synchronous rtnetlink client bound to that namespace:
//! dump, add and delete, pipelined.

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netns::NetNs;
use nlsock::{NETLINK_ROUTE, Sock};

use crate::{Error, Result};

/// The local routing table.
const RT_TABLE_LOCAL: u8 = 255;
/// netagent's route protocol number (free in iproute2's rt_protos): marks VIP routes as ours.
pub const RTPROT_NETAGENT: u8 = 78;

/// One interface in one namespace, holding VIPs.
pub struct VipAddrs {
    sock: Sock,
    what: String,
    index: u32,
}

impl VipAddrs {
    /// Opens `iface` in the namespace at `netns` (a bind mount such as `/run/netns/NAME`).
    pub fn open(netns: &Path, iface: &str) -> Result<VipAddrs> {
        let what = format!("{iface} in {}", netns.display());
        let ns = NetNs::open_path(&netns.display().to_string(), netns)
            .map_err(|e| Error::Other(format!("load-balancer namespace of {what}: {e}")))?;
        let index = ns
            .if_index(iface)
            .map_err(|e| Error::Other(format!("enter the namespace of {what}: {e}")))?
            .ok_or_else(|| {
                Error::Io(
                    format!("open {what}"),
                    io::Error::from_raw_os_error(libc::ENODEV),
                )
            })?;
        Ok(VipAddrs {
            sock: Sock::open(&ns, NETLINK_ROUTE)?,
            what,
            index,
        })
    }

    /// The VIPs (netagent's /32 local routes) on the interface.
    pub fn list(&mut self) -> Result<BTreeSet<Ipv4Addr>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        req.header.table = RT_TABLE_LOCAL;
        let what = format!("list the addresses of {}", self.what);
        let routes = self.sock.dump(RouteNetlinkMessage::GetRoute(req), &what)?;
        // A route the parser cannot read is not one of ours (ours carry nothing new).
        Ok(routes
            .into_iter()
            .filter_map(|m| match m {
                Ok(RouteNetlinkMessage::NewRoute(r)) => self.ours(&r),
                _ => None,
            })
            .collect())
    }

    /// Adds VIPs; one already there is not an error. Returns how many were added.
    pub fn add(&mut self, addrs: &[Ipv4Addr]) -> Result<u64> {
        self.change(addrs, true)
    }

    /// Removes VIPs; one already gone is not an error. Returns how many were removed.
    pub fn remove(&mut self, addrs: &[Ipv4Addr]) -> Result<u64> {
        self.change(addrs, false)
    }

    fn change(&mut self, addrs: &[Ipv4Addr], add: bool) -> Result<u64> {
        let msgs: Vec<_> = addrs
            .iter()
            .map(|a| {
                let m = self.msg(*a);
                if add {
                    (RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL)
                } else {
                    (RouteNetlinkMessage::DelRoute(m), 0)
                }
            })
            .collect();
        let mut changed = 0;
        for (addr, res) in addrs.iter().zip(self.sock.batch(msgs)?) {
            match res.map_err(|e| e.errno) {
                Ok(()) => changed += 1,
                // Already there / already gone: the wanted state holds.
                Err(libc::EEXIST) if add => {}
                Err(libc::ESRCH | libc::ENOENT) if !add => {}
                Err(code) => {
                    return Err(Error::Io(
                        format!(
                            "{} VIP route {addr}/32 {} {}",
                            if add { "add" } else { "remove" },
                            if add { "to" } else { "from" },
                            self.what
                        ),
                        io::Error::from_raw_os_error(code),
                    ));
                }
            }
        }
        Ok(changed)
    }

    fn msg(&self, a: Ipv4Addr) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = 32;
        m.header.table = RT_TABLE_LOCAL;
        m.header.protocol = RouteProtocol::Other(RTPROT_NETAGENT);
        m.header.scope = RouteScope::Host;
        m.header.kind = RouteType::Local;
        m.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet(a)),
            RouteAttribute::Oif(self.index),
        ];
        m
    }

    /// The VIP of a dumped route if it is one of ours on this interface.
    fn ours(&self, r: &RouteMessage) -> Option<Ipv4Addr> {
        let h = &r.header;
        let table = r
            .attributes
            .iter()
            .find_map(|x| match x {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(h.table as u32);
        if h.address_family != AddressFamily::Inet
            || h.destination_prefix_length != 32
            || table != RT_TABLE_LOCAL as u32
            || h.kind != RouteType::Local
            || h.protocol != RouteProtocol::Other(RTPROT_NETAGENT)
        {
            return None;
        }
        let oif = r.attributes.iter().find_map(|x| match x {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if oif != Some(self.index) {
            return None;
        }
        r.attributes.iter().find_map(|x| match x {
            RouteAttribute::Destination(RouteAddress::Inet(v)) => Some(*v),
            _ => None,
        })
    }
}
