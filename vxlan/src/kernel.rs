//! Reading kernel objects (links, addresses, routes, neighbours, FDB) into plain values, and
//! building the netlink messages that change them.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan,
    LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netns::NetNs;

use crate::error::Result;
use crate::nl::{Nl, Req};
use crate::spec::Mac;

/// VXLAN settings of a device, as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VxInfo {
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    pub learning: bool,
    pub proxy: bool,
}

/// A link as read back from a dump.
#[derive(Debug, Clone, Default)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub mtu: u32,
    pub up: bool,
    pub master: Option<u32>,
    pub mac: Vec<u8>,
    /// IFLA_LINK: for a veth, the peer's index (in the peer's namespace).
    pub link: Option<u32>,
    pub vxlan: Option<VxInfo>,
    pub isolated: Option<bool>,
}

impl Link {
    pub fn is(&self, kind: &str) -> bool {
        self.kind.as_deref() == Some(kind)
    }

    pub fn kind_name(&self) -> String {
        self.kind.clone().unwrap_or_else(|| "plain".into())
    }
}

fn kind_str(k: &InfoKind) -> String {
    match k {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Vxlan => "vxlan".into(),
        InfoKind::Other(s) => s.clone(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn parse_link(m: LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Mtu(v) => l.mtu = v,
            LinkAttribute::Controller(v) => l.master = Some(v),
            LinkAttribute::Address(v) => l.mac = v,
            LinkAttribute::Link(v) => l.link = Some(v),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => l.kind = Some(kind_str(&k)),
                        LinkInfo::Data(InfoData::Vxlan(vx)) => {
                            let mut v = VxInfo::default();
                            for x in vx {
                                match x {
                                    InfoVxlan::Id(id) => v.vni = id,
                                    InfoVxlan::Port(p) => v.port = p,
                                    InfoVxlan::Local(a) => v.local = Some(a),
                                    InfoVxlan::Learning(b) => v.learning = b,
                                    InfoVxlan::Proxy(b) => v.proxy = b,
                                    _ => {}
                                }
                            }
                            l.vxlan = Some(v);
                        }
                        LinkInfo::PortData(InfoPortData::BridgePort(ps)) => {
                            for p in ps {
                                if let InfoBridgePort::Isolated(b) = p {
                                    l.isolated = Some(b);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    l
}

pub(crate) fn links(nl: &mut Nl) -> Result<Vec<Link>> {
    let msgs = nl.dump(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        "links",
    )?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
            _ => None,
        })
        .collect())
}

/// One link by name, `None` if there is none.
pub(crate) fn link_by_name(nl: &mut Nl, name: &str) -> Result<Option<Link>> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.into()));
    Ok(
        match nl.get(RouteNetlinkMessage::GetLink(m), &format!("link {name}"))? {
            Some(RouteNetlinkMessage::NewLink(l)) => Some(parse_link(l)),
            _ => None,
        },
    )
}

fn link_msg(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

fn set_up(m: &mut LinkMessage, up: bool) {
    m.header.change_mask = LinkFlags::Up;
    if up {
        m.header.flags = LinkFlags::Up;
    }
}

/// RTM_NEWLINK for a bridge, up.
pub(crate) fn new_bridge(name: &str, mtu: u32) -> Req {
    let mut m = link_msg(0);
    set_up(&mut m, true);
    m.attributes = vec![
        LinkAttribute::IfName(name.into()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
    ];
    Req::new(
        RouteNetlinkMessage::NewLink(m),
        NLM_F_CREATE | NLM_F_EXCL,
        format!("create bridge {name}"),
    )
}

/// Desired VXLAN device settings.
pub(crate) struct VxSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    pub port: u16,
    pub local: Ipv4Addr,
    pub mtu: u32,
    /// Namespace the device is created in (the socket stays in the sender's namespace).
    pub target: &'a NetNs,
    pub master: Option<u32>,
}

pub(crate) fn new_vxlan(s: &VxSpec) -> Req {
    let mut m = link_msg(0);
    set_up(&mut m, true);
    m.attributes = vec![
        LinkAttribute::IfName(s.name.into()),
        LinkAttribute::Mtu(s.mtu),
        LinkAttribute::NetNsFd(s.target.file().as_raw_fd()),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(s.vni),
                InfoVxlan::Local(s.local),
                InfoVxlan::Port(s.port),
                InfoVxlan::Learning(false),
                InfoVxlan::Proxy(true),
            ])),
        ]),
    ];
    if let Some(master) = s.master {
        m.attributes.push(LinkAttribute::Controller(master));
    }
    Req::new(
        RouteNetlinkMessage::NewLink(m),
        NLM_F_CREATE | NLM_F_EXCL,
        format!(
            "create VXLAN device {} (VNI {}, port {})",
            s.name, s.vni, s.port
        ),
    )
}

/// Desired veth pair: one end in the sending namespace on a bridge, the other in `peer_ns`.
pub(crate) struct VethSpec<'a> {
    pub name: &'a str,
    pub master: u32,
    pub mtu: u32,
    pub peer_name: &'a str,
    pub peer_mac: Mac,
    pub peer_ns: &'a NetNs,
}

pub(crate) fn new_veth(s: &VethSpec) -> Req {
    // The peer cannot come up inside the same request (veth_open fails with ENOTCONN before
    // the pair is linked): the caller brings it up afterwards.
    let mut peer = link_msg(0);
    peer.attributes = vec![
        LinkAttribute::IfName(s.peer_name.into()),
        LinkAttribute::Mtu(s.mtu),
        LinkAttribute::Address(s.peer_mac.0.to_vec()),
        LinkAttribute::NetNsFd(s.peer_ns.file().as_raw_fd()),
    ];
    let mut m = link_msg(0);
    set_up(&mut m, true);
    m.attributes = vec![
        LinkAttribute::IfName(s.name.into()),
        LinkAttribute::Mtu(s.mtu),
        LinkAttribute::Controller(s.master),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]),
    ];
    Req::new(
        RouteNetlinkMessage::NewLink(m),
        NLM_F_CREATE | NLM_F_EXCL,
        format!(
            "create veth {} with peer {} in {}",
            s.name,
            s.peer_name,
            s.peer_ns.name()
        ),
    )
}

/// Changes to an existing link; `None` leaves a setting alone.
#[derive(Default)]
pub(crate) struct LinkChange {
    pub mtu: Option<u32>,
    pub up: bool,
    pub master: Option<u32>,
    pub mac: Option<Mac>,
}

impl LinkChange {
    pub fn is_empty(&self) -> bool {
        self.mtu.is_none() && !self.up && self.master.is_none() && self.mac.is_none()
    }
}

pub(crate) fn set_link(l: &Link, c: &LinkChange) -> Req {
    let mut m = link_msg(l.index);
    if c.up {
        set_up(&mut m, true);
    }
    if let Some(mtu) = c.mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(master) = c.master {
        m.attributes.push(LinkAttribute::Controller(master));
    }
    if let Some(mac) = c.mac {
        m.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
    }
    Req::new(
        RouteNetlinkMessage::SetLink(m),
        0,
        format!("update link {}", l.name),
    )
}

/// Makes a bridge port isolated (no traffic to other isolated ports).
pub(crate) fn set_isolated(l: &Link) -> Req {
    let mut m = link_msg(l.index);
    m.attributes = vec![LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(
            true,
        )])),
    ])];
    Req::new(
        RouteNetlinkMessage::NewLink(m),
        0,
        format!("isolate bridge port {}", l.name),
    )
}

pub(crate) fn del_link(index: u32, name: &str) -> Req {
    Req::new(
        RouteNetlinkMessage::DelLink(link_msg(index)),
        0,
        format!("delete link {name}"),
    )
}

/// An IPv4 address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addr {
    pub index: u32,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

pub(crate) fn addrs(nl: &mut Nl) -> Result<Vec<Addr>> {
    let mut req = AddressMessage::default();
    req.header.family = AddressFamily::Inet;
    let msgs = nl.dump(RouteNetlinkMessage::GetAddress(req), "addresses")?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        if a.header.family != AddressFamily::Inet {
            continue;
        }
        let local = a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(IpAddr::V4(v)) => Some(*v),
            _ => None,
        });
        let addr = local.or_else(|| {
            a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Address(IpAddr::V4(v)) => Some(*v),
                _ => None,
            })
        });
        if let Some(addr) = addr {
            out.push(Addr {
                index: a.header.index,
                addr,
                prefix: a.header.prefix_len,
            });
        }
    }
    Ok(out)
}

fn addr_msg(a: &Addr) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = a.prefix;
    m.header.index = a.index;
    m.attributes = vec![
        AddressAttribute::Local(IpAddr::V4(a.addr)),
        AddressAttribute::Address(IpAddr::V4(a.addr)),
    ];
    m
}

pub(crate) fn new_addr(a: &Addr, dev: &str) -> Req {
    let mut m = addr_msg(a);
    if a.prefix < 31 {
        let bcast = u32::from(a.addr) | (u32::MAX >> a.prefix);
        m.attributes
            .push(AddressAttribute::Broadcast(Ipv4Addr::from(bcast)));
    }
    Req::new(
        RouteNetlinkMessage::NewAddress(m),
        NLM_F_CREATE | NLM_F_REPLACE,
        format!("add address {}/{} to {dev}", a.addr, a.prefix),
    )
}

pub(crate) fn del_addr(a: &Addr, dev: &str) -> Req {
    Req::new(
        RouteNetlinkMessage::DelAddress(addr_msg(a)),
        0,
        format!("remove address {}/{} from {dev}", a.addr, a.prefix),
    )
}

/// An IPv4 default route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DefaultRoute {
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub metric: u32,
}

pub(crate) fn default_routes(nl: &mut Nl) -> Result<Vec<DefaultRoute>> {
    let mut req = RouteMessage::default();
    req.header.address_family = AddressFamily::Inet;
    let msgs = nl.dump(RouteNetlinkMessage::GetRoute(req), "routes")?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        if r.header.address_family != AddressFamily::Inet
            || r.header.destination_prefix_length != 0
            || r.header.table != RouteHeader::RT_TABLE_MAIN
            || r.header.kind != RouteType::Unicast
        {
            continue;
        }
        let mut d = DefaultRoute {
            gateway: None,
            oif: None,
            metric: 0,
        };
        for a in &r.attributes {
            match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => d.gateway = Some(*g),
                RouteAttribute::Oif(i) => d.oif = Some(*i),
                RouteAttribute::Priority(p) => d.metric = *p,
                RouteAttribute::Table(t) if *t != RouteHeader::RT_TABLE_MAIN as u32 => {
                    d.oif = None;
                    d.gateway = None;
                }
                _ => {}
            }
        }
        out.push(d);
    }
    Ok(out)
}

fn route_msg(gateway: Option<Ipv4Addr>, oif: Option<u32>, metric: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    if let Some(g) = gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(g)));
    }
    if let Some(i) = oif {
        m.attributes.push(RouteAttribute::Oif(i));
    }
    if metric != 0 {
        m.attributes.push(RouteAttribute::Priority(metric));
    }
    m
}

pub(crate) fn replace_default_route(gateway: Ipv4Addr, oif: u32) -> Req {
    Req::new(
        RouteNetlinkMessage::NewRoute(route_msg(Some(gateway), Some(oif), 0)),
        NLM_F_CREATE | NLM_F_REPLACE,
        format!("set the default route via {gateway}"),
    )
}

pub(crate) fn del_default_route(r: &DefaultRoute) -> Req {
    Req::new(
        RouteNetlinkMessage::DelRoute(route_msg(r.gateway, r.oif, r.metric)),
        0,
        "remove a default route".to_string(),
    )
}

/// A neighbour (AF_INET) or FDB (AF_BRIDGE) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Neigh {
    pub ifindex: u32,
    /// AF_INET: the neighbour's IP; AF_BRIDGE: the remote VTEP (NDA_DST), if any.
    pub dst: Option<Ipv4Addr>,
    pub mac: Option<Mac>,
    pub permanent: bool,
    /// NTF_SELF: an entry of the device itself (the VXLAN FDB), not of its bridge.
    pub own: bool,
}

pub(crate) fn neighbours(nl: &mut Nl, bridge: bool) -> Result<Vec<Neigh>> {
    let mut req = NeighbourMessage::default();
    req.header.family = if bridge {
        AddressFamily::Bridge
    } else {
        AddressFamily::Inet
    };
    let what = if bridge { "FDB" } else { "neighbours" };
    let msgs = nl.dump(RouteNetlinkMessage::GetNeighbour(req), what)?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewNeighbour(n) = m else {
            continue;
        };
        let mut e = Neigh {
            ifindex: n.header.ifindex,
            dst: None,
            mac: None,
            permanent: n.header.state == NeighbourState::Permanent,
            own: n.header.flags.contains(NeighbourFlags::Own),
        };
        for a in &n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => e.dst = Some(*ip),
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                    e.dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                }
                NeighbourAttribute::LinkLayerAddress(b) => e.mac = Mac::from_slice(b),
                _ => {}
            }
        }
        out.push(e);
    }
    Ok(out)
}

fn neigh_msg(ifindex: u32, bridge: bool, dst: Ipv4Addr, mac: Mac) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    if bridge {
        m.header.family = AddressFamily::Bridge;
        m.header.flags = NeighbourFlags::Own;
        m.attributes = vec![
            NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()),
            NeighbourAttribute::Destination(NeighbourAddress::Other(dst.octets().to_vec())),
        ];
    } else {
        m.header.family = AddressFamily::Inet;
        m.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)),
            NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()),
        ];
    }
    m
}

/// Permanent neighbour entry IP -> MAC on `ifindex`.
pub(crate) fn set_neigh(ifindex: u32, ip: Ipv4Addr, mac: Mac) -> Req {
    Req::new(
        RouteNetlinkMessage::NewNeighbour(neigh_msg(ifindex, false, ip, mac)),
        NLM_F_CREATE | NLM_F_REPLACE,
        format!("add neighbour {ip} -> {mac}"),
    )
}

pub(crate) fn del_neigh(ifindex: u32, ip: Ipv4Addr, mac: Mac) -> Req {
    Req::new(
        RouteNetlinkMessage::DelNeighbour(neigh_msg(ifindex, false, ip, mac)),
        0,
        format!("remove neighbour {ip}"),
    )
}

/// VXLAN FDB entry MAC -> remote VTEP on `ifindex` (NTF_SELF, permanent).
pub(crate) fn set_fdb(ifindex: u32, mac: Mac, vtep: Ipv4Addr) -> Req {
    Req::new(
        RouteNetlinkMessage::NewNeighbour(neigh_msg(ifindex, true, vtep, mac)),
        NLM_F_CREATE | NLM_F_REPLACE,
        format!("add FDB entry {mac} -> {vtep}"),
    )
}

pub(crate) fn del_fdb(ifindex: u32, mac: Mac, vtep: Ipv4Addr) -> Req {
    Req::new(
        RouteNetlinkMessage::DelNeighbour(neigh_msg(ifindex, true, vtep, mac)),
        0,
        format!("remove FDB entry {mac} -> {vtep}"),
    )
}
