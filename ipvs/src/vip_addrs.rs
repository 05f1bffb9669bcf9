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

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use netns::NetNs;

use crate::{Error, Result};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Requests per datagram (their acknowledgements must fit the receive buffer).
const BATCH: usize = 64;
const RECV_BUF: usize = 1 << 20;
/// The local routing table.
const RT_TABLE_LOCAL: u8 = 255;
/// netagent's route protocol number (free in iproute2's rt_protos): marks VIP routes as ours.
pub const RTPROT_NETAGENT: u8 = 78;

/// One interface in one namespace, holding VIPs.
pub struct VipAddrs {
    sock: Socket,
    what: String,
    index: u32,
    seq: u32,
    buf: Vec<u8>,
}

impl VipAddrs {
    /// Opens `iface` in the namespace at `netns` (a bind mount such as `/run/netns/NAME`).
    pub fn open(netns: &Path, iface: &str) -> Result<VipAddrs> {
        let what = format!("{iface} in {}", netns.display());
        let ns = NetNs::open_path(&netns.display().to_string(), netns)
            .map_err(|e| Error::Other(format!("load-balancer namespace of {what}: {e}")))?;
        let name = std::ffi::CString::new(iface)
            .map_err(|_| Error::Other(format!("interface name {iface:?} has a NUL byte")))?;
        let opened = ns
            .run(|| -> io::Result<(Socket, u32)> {
                // SAFETY: a valid NUL-terminated string.
                let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
                if index == 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut s = Socket::new(NETLINK_ROUTE)?;
                s.bind_auto()?;
                s.connect(&SocketAddr::new(0, 0))?;
                let _ = s.set_cap_ack(true);
                let _ = s.set_rx_buf_sz(4 << 20);
                Ok((s, index))
            })
            .map_err(|e| Error::Other(format!("enter the namespace of {what}: {e}")))?
            .map_err(|e| Error::Io(format!("open {what}"), e))?;
        Ok(VipAddrs {
            sock: opened.0,
            what,
            index: opened.1,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// The VIPs (netagent's /32 local routes) on the interface.
    pub fn list(&mut self) -> Result<BTreeSet<Ipv4Addr>> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        req.header.table = RT_TABLE_LOCAL;
        let seq = self.send(vec![(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)])?;
        let mut out = BTreeSet::new();
        loop {
            self.recv()?;
            let mut done = false;
            for raw in split(&self.buf) {
                let (mtype, s) = header(raw);
                if s != seq {
                    continue;
                }
                match mtype {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        let code = ack_code(&raw[16..]);
                        if code != 0 {
                            return Err(Error::Io(
                                format!("list the addresses of {}", self.what),
                                io::Error::from_raw_os_error(code),
                            ));
                        }
                        done = true;
                    }
                    _ => {
                        let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw) else {
                            continue;
                        };
                        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) =
                            m.payload
                            && let Some(v4) = self.ours(&r)
                        {
                            out.insert(v4);
                        }
                    }
                }
            }
            if done {
                return Ok(out);
            }
        }
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
        let mut changed = 0;
        for chunk in addrs.chunks(BATCH) {
            let msgs = chunk
                .iter()
                .map(|a| {
                    let m = self.msg(*a);
                    if add {
                        (
                            RouteNetlinkMessage::NewRoute(m),
                            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                        )
                    } else {
                        (RouteNetlinkMessage::DelRoute(m), NLM_F_ACK)
                    }
                })
                .collect();
            let last = self.send(msgs)?;
            let first = last.wrapping_sub(chunk.len() as u32 - 1);
            let mut pending = chunk.len();
            while pending > 0 {
                self.recv()?;
                for raw in split(&self.buf) {
                    let (mtype, s) = header(raw);
                    let i = s.wrapping_sub(first) as usize;
                    if mtype != NLMSG_ERROR || i >= chunk.len() {
                        continue;
                    }
                    pending -= 1;
                    match ack_code(&raw[16..]) {
                        0 => changed += 1,
                        // Already there / already gone: the wanted state holds.
                        libc::EEXIST if add => {}
                        libc::ESRCH | libc::ENOENT if !add => {}
                        code => {
                            return Err(Error::Io(
                                format!(
                                    "{} VIP route {}/32 {} {}",
                                    if add { "add" } else { "remove" },
                                    chunk[i],
                                    if add { "to" } else { "from" },
                                    self.what
                                ),
                                io::Error::from_raw_os_error(code),
                            ));
                        }
                    }
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

    /// Sends messages in one datagram; returns the sequence number of the last.
    fn send(&mut self, msgs: Vec<(RouteNetlinkMessage, u16)>) -> Result<u32> {
        let mut out = Vec::new();
        for (msg, flags) in msgs {
            self.seq = self.seq.wrapping_add(1);
            let mut h = NetlinkHeader::default();
            h.flags = NLM_F_REQUEST | flags;
            h.sequence_number = self.seq;
            let mut m = NetlinkMessage::new(h, NetlinkPayload::InnerMessage(msg));
            m.finalize();
            let start = out.len();
            out.resize(start + m.buffer_len(), 0);
            m.serialize(&mut out[start..]);
        }
        self.sock
            .send(&out, 0)
            .map_err(|e| Error::Io(format!("netlink request to {}", self.what), e))?;
        Ok(self.seq)
    }

    fn recv(&mut self) -> Result<()> {
        self.buf.clear();
        self.buf.reserve(RECV_BUF);
        loop {
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Error::Io(format!("netlink answer from {}", self.what), e));
                }
            }
        }
    }
}

fn header(raw: &[u8]) -> (u16, u32) {
    (
        u16::from_ne_bytes([raw[4], raw[5]]),
        u32::from_ne_bytes([raw[8], raw[9], raw[10], raw[11]]),
    )
}

/// The error code of an NLMSG_ERROR payload, as a positive errno (0: success).
fn ack_code(p: &[u8]) -> i32 {
    if p.len() < 4 {
        return libc::EIO;
    }
    -i32::from_ne_bytes([p[0], p[1], p[2], p[3]])
}

/// Splits a datagram into whole netlink messages (header included).
fn split(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off + 16 > buf.len() {
            return None;
        }
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            return None;
        }
        let m = &buf[off..off + len];
        off += (len + 3) & !3;
        Some(m)
    })
}
