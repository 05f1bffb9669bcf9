//! IPVS generic netlink messages (include/uapi/linux/ip_vs.h): the commands and attributes
//! netagent uses, encoded and decoded on netlink-packet-generic.

use std::net::Ipv4Addr;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLA_F_NESTED, NLA_TYPE_MASK, Nla, NlaBuffer, NlasIterator,
    Parseable, ParseableParametrized, emit_u16, emit_u16_be, emit_u32, emit_u64, parse_string,
    parse_u16, parse_u16_be, parse_u32, parse_u64,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

/// The generic netlink family name IPVS registers.
pub(crate) const FAMILY: &str = "IPVS";
/// IPVS_GENL_VERSION.
pub(crate) const VERSION: u8 = 1;

/// Commands (enum order of IPVS_CMD_*).
pub(crate) mod cmd {
    pub const NEW_SERVICE: u8 = 1;
    pub const SET_SERVICE: u8 = 2;
    pub const DEL_SERVICE: u8 = 3;
    pub const GET_SERVICE: u8 = 4;
    pub const NEW_DEST: u8 = 5;
    pub const SET_DEST: u8 = 6;
    pub const DEL_DEST: u8 = 7;
    pub const GET_DEST: u8 = 8;
    pub const SET_CONFIG: u8 = 12;
    pub const GET_CONFIG: u8 = 13;
}

const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;
const CMD_ATTR_TIMEOUT_TCP: u16 = 4;
const CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
const CMD_ATTR_TIMEOUT_UDP: u16 = 6;

const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_FWMARK: u16 = 5;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_FLAGS: u16 = 7;
const SVC_ATTR_TIMEOUT: u16 = 8;
const SVC_ATTR_NETMASK: u16 = 9;
const SVC_ATTR_STATS: u16 = 10;
const SVC_ATTR_STATS64: u16 = 12;
/// IPVS_STATS_ATTR_CONNS inside the (nested) stats: u32 in STATS, u64 in STATS64.
const STATS_ATTR_CONNS: u16 = 1;

const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_U_THRESH: u16 = 5;
const DEST_ATTR_L_THRESH: u16 = 6;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;

pub(crate) const AF_INET: u16 = libc::AF_INET as u16;
/// IP_VS_CONN_F_MASQ: NAT forwarding.
pub(crate) const FWD_MASQ: u32 = 0;

/// One attribute of a service (IPVS_SVC_ATTR_*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SvcAttr {
    Af(u16),
    Protocol(u16),
    /// Raw address: 4 bytes sent for IPv4, 16 (a `union nf_inet_addr`) received.
    Addr(Vec<u8>),
    /// Host order here, big-endian on the wire.
    Port(u16),
    Fwmark(u32),
    Sched(String),
    Flags {
        flags: u32,
        mask: u32,
    },
    Timeout(u32),
    Netmask(u32),
    /// The connections the service scheduled (the CONNS of IPVS_SVC_ATTR_STATS; the other stats
    /// are not read).
    Stats(u32),
    /// The same from IPVS_SVC_ATTR_STATS64 (Linux >= 4.1), preferred when present.
    Stats64(u64),
    Other(DefaultNla),
}

/// The nested attributes of a stats attribute; `None` where CONNS is missing.
fn stats_conns<T>(
    v: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    for nla in NlasIterator::new(v) {
        let nla = nla?;
        if nla.kind() & NLA_TYPE_MASK == STATS_ATTR_CONNS {
            return parse(nla.value()).map(Some);
        }
    }
    Ok(None)
}

/// One attribute of a destination (IPVS_DEST_ATTR_*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DestAttr {
    Addr(Vec<u8>),
    /// Host order here, big-endian on the wire.
    Port(u16),
    FwdMethod(u32),
    Weight(u32),
    UThresh(u32),
    LThresh(u32),
    ActiveConns(u32),
    InactConns(u32),
    AddrFamily(u16),
    Other(DefaultNla),
}

/// A top-level attribute (IPVS_CMD_ATTR_*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IpvsAttr {
    Service(Vec<SvcAttr>),
    Dest(Vec<DestAttr>),
    TimeoutTcp(u32),
    TimeoutTcpFin(u32),
    TimeoutUdp(u32),
    Other(DefaultNla),
}

/// An IPVS message: a command and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IpvsMsg {
    pub cmd: u8,
    pub attrs: Vec<IpvsAttr>,
}

fn emit_str(buf: &mut [u8], s: &str) {
    buf[..s.len()].copy_from_slice(s.as_bytes());
    buf[s.len()] = 0;
}

fn emit_u32_pair(buf: &mut [u8], a: u32, b: u32) {
    buf[..4].copy_from_slice(&a.to_ne_bytes());
    buf[4..8].copy_from_slice(&b.to_ne_bytes());
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        match self {
            SvcAttr::Af(_) | SvcAttr::Protocol(_) | SvcAttr::Port(_) => 2,
            SvcAttr::Addr(a) => a.len(),
            SvcAttr::Fwmark(_) | SvcAttr::Timeout(_) | SvcAttr::Netmask(_) => 4,
            SvcAttr::Sched(s) => s.len() + 1,
            SvcAttr::Flags { .. } => 8,
            SvcAttr::Stats(_) => 8,
            SvcAttr::Stats64(_) => 12,
            SvcAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            SvcAttr::Af(_) => SVC_ATTR_AF,
            SvcAttr::Protocol(_) => SVC_ATTR_PROTOCOL,
            SvcAttr::Addr(_) => SVC_ATTR_ADDR,
            SvcAttr::Port(_) => SVC_ATTR_PORT,
            SvcAttr::Fwmark(_) => SVC_ATTR_FWMARK,
            SvcAttr::Sched(_) => SVC_ATTR_SCHED_NAME,
            SvcAttr::Flags { .. } => SVC_ATTR_FLAGS,
            SvcAttr::Timeout(_) => SVC_ATTR_TIMEOUT,
            SvcAttr::Netmask(_) => SVC_ATTR_NETMASK,
            SvcAttr::Stats(_) => SVC_ATTR_STATS | NLA_F_NESTED,
            SvcAttr::Stats64(_) => SVC_ATTR_STATS64 | NLA_F_NESTED,
            SvcAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            SvcAttr::Af(v) | SvcAttr::Protocol(v) => emit_u16(buf, *v).expect("2 bytes"),
            SvcAttr::Port(v) => emit_u16_be(buf, *v).expect("2 bytes"),
            SvcAttr::Addr(a) => buf[..a.len()].copy_from_slice(a),
            SvcAttr::Fwmark(v) | SvcAttr::Timeout(v) | SvcAttr::Netmask(v) => {
                emit_u32(buf, *v).expect("4 bytes")
            }
            SvcAttr::Sched(s) => emit_str(buf, s),
            SvcAttr::Flags { flags, mask } => emit_u32_pair(buf, *flags, *mask),
            SvcAttr::Stats(v) => {
                buf[..2].copy_from_slice(&8u16.to_ne_bytes());
                buf[2..4].copy_from_slice(&STATS_ATTR_CONNS.to_ne_bytes());
                emit_u32(&mut buf[4..8], *v).expect("4 bytes")
            }
            SvcAttr::Stats64(v) => {
                buf[..2].copy_from_slice(&12u16.to_ne_bytes());
                buf[2..4].copy_from_slice(&STATS_ATTR_CONNS.to_ne_bytes());
                emit_u64(&mut buf[4..12], *v).expect("8 bytes")
            }
            SvcAttr::Other(n) => n.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for SvcAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() & NLA_TYPE_MASK {
            SVC_ATTR_AF => SvcAttr::Af(parse_u16(v)?),
            SVC_ATTR_PROTOCOL => SvcAttr::Protocol(parse_u16(v)?),
            SVC_ATTR_ADDR => SvcAttr::Addr(v.to_vec()),
            SVC_ATTR_PORT => SvcAttr::Port(parse_u16_be(v)?),
            SVC_ATTR_FWMARK => SvcAttr::Fwmark(parse_u32(v)?),
            SVC_ATTR_SCHED_NAME => SvcAttr::Sched(parse_string(v)?),
            SVC_ATTR_FLAGS => {
                if v.len() != 8 {
                    return Err(DecodeError::from(format!(
                        "IPVS service flags of {} bytes, expected 8",
                        v.len()
                    )));
                }
                SvcAttr::Flags {
                    flags: parse_u32(&v[..4])?,
                    mask: parse_u32(&v[4..])?,
                }
            }
            SVC_ATTR_TIMEOUT => SvcAttr::Timeout(parse_u32(v)?),
            SVC_ATTR_NETMASK => SvcAttr::Netmask(parse_u32(v)?),
            SVC_ATTR_STATS => match stats_conns(v, parse_u32)? {
                Some(c) => SvcAttr::Stats(c),
                None => SvcAttr::Other(DefaultNla::parse(buf)?),
            },
            SVC_ATTR_STATS64 => match stats_conns(v, parse_u64)? {
                Some(c) => SvcAttr::Stats64(c),
                None => SvcAttr::Other(DefaultNla::parse(buf)?),
            },
            _ => SvcAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Port(_) | DestAttr::AddrFamily(_) => 2,
            DestAttr::Addr(a) => a.len(),
            DestAttr::FwdMethod(_)
            | DestAttr::Weight(_)
            | DestAttr::UThresh(_)
            | DestAttr::LThresh(_)
            | DestAttr::ActiveConns(_)
            | DestAttr::InactConns(_) => 4,
            DestAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => DEST_ATTR_ADDR,
            DestAttr::Port(_) => DEST_ATTR_PORT,
            DestAttr::FwdMethod(_) => DEST_ATTR_FWD_METHOD,
            DestAttr::Weight(_) => DEST_ATTR_WEIGHT,
            DestAttr::UThresh(_) => DEST_ATTR_U_THRESH,
            DestAttr::LThresh(_) => DEST_ATTR_L_THRESH,
            DestAttr::ActiveConns(_) => DEST_ATTR_ACTIVE_CONNS,
            DestAttr::InactConns(_) => DEST_ATTR_INACT_CONNS,
            DestAttr::AddrFamily(_) => DEST_ATTR_ADDR_FAMILY,
            DestAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            DestAttr::Addr(a) => buf[..a.len()].copy_from_slice(a),
            DestAttr::Port(v) => emit_u16_be(buf, *v).expect("2 bytes"),
            DestAttr::AddrFamily(v) => emit_u16(buf, *v).expect("2 bytes"),
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UThresh(v)
            | DestAttr::LThresh(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactConns(v) => emit_u32(buf, *v).expect("4 bytes"),
            DestAttr::Other(n) => n.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for DestAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() & NLA_TYPE_MASK {
            DEST_ATTR_ADDR => DestAttr::Addr(v.to_vec()),
            DEST_ATTR_PORT => DestAttr::Port(parse_u16_be(v)?),
            DEST_ATTR_FWD_METHOD => DestAttr::FwdMethod(parse_u32(v)?),
            DEST_ATTR_WEIGHT => DestAttr::Weight(parse_u32(v)?),
            DEST_ATTR_U_THRESH => DestAttr::UThresh(parse_u32(v)?),
            DEST_ATTR_L_THRESH => DestAttr::LThresh(parse_u32(v)?),
            DEST_ATTR_ACTIVE_CONNS => DestAttr::ActiveConns(parse_u32(v)?),
            DEST_ATTR_INACT_CONNS => DestAttr::InactConns(parse_u32(v)?),
            DEST_ATTR_ADDR_FAMILY => DestAttr::AddrFamily(parse_u16(v)?),
            _ => DestAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

fn nested_len<N: Nla>(attrs: &[N]) -> usize {
    attrs.iter().map(|a| a.buffer_len()).sum()
}

fn parse_nested<N>(v: &[u8]) -> Result<Vec<N>, DecodeError>
where
    N: for<'a> Parseable<NlaBuffer<&'a [u8]>>,
{
    NlasIterator::new(v)
        .map(|nla| nla.and_then(|nla| N::parse(&nla)))
        .collect()
}

impl Nla for IpvsAttr {
    fn value_len(&self) -> usize {
        match self {
            IpvsAttr::Service(a) => nested_len(a),
            IpvsAttr::Dest(a) => nested_len(a),
            IpvsAttr::TimeoutTcp(_) | IpvsAttr::TimeoutTcpFin(_) | IpvsAttr::TimeoutUdp(_) => 4,
            IpvsAttr::Other(n) => n.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            IpvsAttr::Service(_) => CMD_ATTR_SERVICE | NLA_F_NESTED,
            IpvsAttr::Dest(_) => CMD_ATTR_DEST | NLA_F_NESTED,
            IpvsAttr::TimeoutTcp(_) => CMD_ATTR_TIMEOUT_TCP,
            IpvsAttr::TimeoutTcpFin(_) => CMD_ATTR_TIMEOUT_TCP_FIN,
            IpvsAttr::TimeoutUdp(_) => CMD_ATTR_TIMEOUT_UDP,
            IpvsAttr::Other(n) => n.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            IpvsAttr::Service(a) => a.as_slice().emit(buf),
            IpvsAttr::Dest(a) => a.as_slice().emit(buf),
            IpvsAttr::TimeoutTcp(v) | IpvsAttr::TimeoutTcpFin(v) | IpvsAttr::TimeoutUdp(v) => {
                emit_u32(buf, *v).expect("4 bytes")
            }
            IpvsAttr::Other(n) => n.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for IpvsAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() & NLA_TYPE_MASK {
            CMD_ATTR_SERVICE => IpvsAttr::Service(parse_nested(v)?),
            CMD_ATTR_DEST => IpvsAttr::Dest(parse_nested(v)?),
            CMD_ATTR_TIMEOUT_TCP => IpvsAttr::TimeoutTcp(parse_u32(v)?),
            CMD_ATTR_TIMEOUT_TCP_FIN => IpvsAttr::TimeoutTcpFin(parse_u32(v)?),
            CMD_ATTR_TIMEOUT_UDP => IpvsAttr::TimeoutUdp(parse_u32(v)?),
            _ => IpvsAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

impl GenlFamily for IpvsMsg {
    fn family_name() -> &'static str {
        FAMILY
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        VERSION
    }
}

impl Emitable for IpvsMsg {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buf: &mut [u8]) {
        self.attrs.as_slice().emit(buf)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMsg {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(IpvsMsg {
            cmd: header.cmd,
            attrs: parse_nested(buf)?,
        })
    }
}

/// A fwmark service as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Service {
    pub af: u16,
    /// 0 for a service on address/protocol/port (not one of netagent's).
    pub fwmark: u32,
    pub sched: String,
    /// Connections the service scheduled since it was created (None: the kernel sent no
    /// stats).
    pub conns: Option<u64>,
}

/// A destination (real server) as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dest {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub fwd: u32,
    pub weight: u32,
    pub active: u32,
    pub inactive: u32,
}

/// IPVS idle timeouts in seconds: (tcp, tcpfin, udp).
pub(crate) type Timeouts = (u32, u32, u32);

fn v4(raw: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = raw.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

/// The service identified by its fwmark (enough to look it up, delete it or name it in a
/// destination request).
fn fwmark_id(mark: u32) -> Vec<SvcAttr> {
    vec![SvcAttr::Af(AF_INET), SvcAttr::Fwmark(mark)]
}

fn dest_attrs(addr: Ipv4Addr, port: u16, full: Option<u32>) -> Vec<DestAttr> {
    let mut a = vec![
        DestAttr::Addr(addr.octets().to_vec()),
        DestAttr::Port(port),
        DestAttr::AddrFamily(AF_INET),
    ];
    if let Some(weight) = full {
        a.extend([
            DestAttr::FwdMethod(FWD_MASQ),
            DestAttr::Weight(weight),
            DestAttr::UThresh(0),
            DestAttr::LThresh(0),
        ]);
    }
    a
}

impl IpvsMsg {
    fn new(cmd: u8, attrs: Vec<IpvsAttr>) -> IpvsMsg {
        IpvsMsg { cmd, attrs }
    }

    /// A fwmark service (IPv4, no persistence) with scheduler `sched`.
    pub fn new_service(mark: u32, sched: &str) -> IpvsMsg {
        let mut s = fwmark_id(mark);
        s.extend([
            SvcAttr::Sched(sched.to_string()),
            SvcAttr::Flags {
                flags: 0,
                mask: u32::MAX,
            },
            SvcAttr::Timeout(0),
            SvcAttr::Netmask(u32::MAX),
        ]);
        IpvsMsg::new(cmd::NEW_SERVICE, vec![IpvsAttr::Service(s)])
    }

    /// Changes the scheduler of an existing fwmark service.
    pub fn set_service(mark: u32, sched: &str) -> IpvsMsg {
        let mut m = IpvsMsg::new_service(mark, sched);
        m.cmd = cmd::SET_SERVICE;
        m
    }

    pub fn del_service(mark: u32) -> IpvsMsg {
        IpvsMsg::new(cmd::DEL_SERVICE, vec![IpvsAttr::Service(fwmark_id(mark))])
    }

    /// Dump request for every service of the namespace.
    pub fn get_services() -> IpvsMsg {
        IpvsMsg::new(cmd::GET_SERVICE, vec![])
    }

    /// Request (not a dump) for one fwmark service; the kernel answers ESRCH when there is none.
    pub fn get_service(mark: u32) -> IpvsMsg {
        IpvsMsg::new(cmd::GET_SERVICE, vec![IpvsAttr::Service(fwmark_id(mark))])
    }

    /// Dump request for the destinations of one fwmark service.
    pub fn get_dests(mark: u32) -> IpvsMsg {
        IpvsMsg::new(cmd::GET_DEST, vec![IpvsAttr::Service(fwmark_id(mark))])
    }

    /// A masquerading destination; port 0 keeps the client's destination port.
    pub fn new_dest(mark: u32, addr: Ipv4Addr, port: u16, weight: u32) -> IpvsMsg {
        IpvsMsg::new(
            cmd::NEW_DEST,
            vec![
                IpvsAttr::Service(fwmark_id(mark)),
                IpvsAttr::Dest(dest_attrs(addr, port, Some(weight))),
            ],
        )
    }

    /// Rewrites an existing destination's forwarding method and weight.
    pub fn set_dest(mark: u32, addr: Ipv4Addr, port: u16, weight: u32) -> IpvsMsg {
        let mut m = IpvsMsg::new_dest(mark, addr, port, weight);
        m.cmd = cmd::SET_DEST;
        m
    }

    pub fn del_dest(mark: u32, addr: Ipv4Addr, port: u16) -> IpvsMsg {
        IpvsMsg::new(
            cmd::DEL_DEST,
            vec![
                IpvsAttr::Service(fwmark_id(mark)),
                IpvsAttr::Dest(dest_attrs(addr, port, None)),
            ],
        )
    }

    pub fn get_config() -> IpvsMsg {
        IpvsMsg::new(cmd::GET_CONFIG, vec![])
    }

    pub fn set_config(t: Timeouts) -> IpvsMsg {
        IpvsMsg::new(
            cmd::SET_CONFIG,
            vec![
                IpvsAttr::TimeoutTcp(t.0),
                IpvsAttr::TimeoutTcpFin(t.1),
                IpvsAttr::TimeoutUdp(t.2),
            ],
        )
    }

    /// The service a NEW_SERVICE answer (one entry of a service dump) describes.
    pub fn service(&self) -> Option<Service> {
        let attrs = self.attrs.iter().find_map(|a| match a {
            IpvsAttr::Service(s) => Some(s),
            _ => None,
        })?;
        let mut svc = Service {
            af: 0,
            fwmark: 0,
            sched: String::new(),
            conns: None,
        };
        let mut conns64 = None;
        for a in attrs {
            match a {
                SvcAttr::Af(v) => svc.af = *v,
                SvcAttr::Fwmark(v) => svc.fwmark = *v,
                SvcAttr::Sched(s) => svc.sched = s.clone(),
                SvcAttr::Stats(c) => svc.conns = Some(u64::from(*c)),
                SvcAttr::Stats64(c) => conns64 = Some(*c),
                _ => {}
            }
        }
        svc.conns = conns64.or(svc.conns);
        Some(svc)
    }

    /// The destination a NEW_DEST answer (one entry of a destination dump) describes; `None`
    /// unless it is IPv4.
    pub fn dest(&self) -> Option<Dest> {
        let attrs = self.attrs.iter().find_map(|a| match a {
            IpvsAttr::Dest(d) => Some(d),
            _ => None,
        })?;
        let mut addr = None;
        let mut family = AF_INET;
        let mut d = Dest {
            addr: Ipv4Addr::UNSPECIFIED,
            port: 0,
            fwd: 0,
            weight: 0,
            active: 0,
            inactive: 0,
        };
        for a in attrs {
            match a {
                DestAttr::Addr(raw) => addr = v4(raw),
                DestAttr::Port(p) => d.port = *p,
                DestAttr::FwdMethod(v) => d.fwd = *v & 0x7,
                DestAttr::Weight(v) => d.weight = *v,
                DestAttr::ActiveConns(v) => d.active = *v,
                DestAttr::InactConns(v) => d.inactive = *v,
                DestAttr::AddrFamily(f) => family = *f,
                _ => {}
            }
        }
        if family != AF_INET {
            return None;
        }
        d.addr = addr?;
        Some(d)
    }

    /// The timeouts a GET_CONFIG answer carries.
    pub fn timeouts(&self) -> Option<Timeouts> {
        let mut t = (None, None, None);
        for a in &self.attrs {
            match a {
                IpvsAttr::TimeoutTcp(v) => t.0 = Some(*v),
                IpvsAttr::TimeoutTcpFin(v) => t.1 = Some(*v),
                IpvsAttr::TimeoutUdp(v) => t.2 = Some(*v),
                _ => {}
            }
        }
        Some((t.0?, t.1?, t.2?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(m: &IpvsMsg) -> Vec<u8> {
        let mut b = vec![0u8; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    fn parse(cmd: u8, b: &[u8]) -> Result<IpvsMsg, DecodeError> {
        IpvsMsg::parse_with_param(b, GenlHeader { cmd, version: 1 })
    }

    /// An attribute header: length (header included) and type, native endian.
    fn hdr(len: u16, kind: u16) -> Vec<u8> {
        let mut v = len.to_ne_bytes().to_vec();
        v.extend(kind.to_ne_bytes());
        v
    }

    #[test]
    fn new_fwmark_service_encodes_as_the_kernel_expects() {
        let b = bytes(&IpvsMsg::new_service(0x105, "rr"));
        let mut want = hdr(4 + 8 + 8 + 8 + 12 + 8 + 8, CMD_ATTR_SERVICE | NLA_F_NESTED);
        want.extend(hdr(6, SVC_ATTR_AF));
        want.extend((libc::AF_INET as u16).to_ne_bytes());
        want.extend([0, 0]);
        want.extend(hdr(8, SVC_ATTR_FWMARK));
        want.extend(0x105u32.to_ne_bytes());
        want.extend(hdr(7, SVC_ATTR_SCHED_NAME));
        want.extend(b"rr\0\0");
        want.extend(hdr(12, SVC_ATTR_FLAGS));
        want.extend(0u32.to_ne_bytes());
        want.extend(u32::MAX.to_ne_bytes());
        want.extend(hdr(8, SVC_ATTR_TIMEOUT));
        want.extend(0u32.to_ne_bytes());
        want.extend(hdr(8, SVC_ATTR_NETMASK));
        want.extend(u32::MAX.to_ne_bytes());
        assert_eq!(b, want);
        // And decodes back to the same message.
        assert_eq!(
            parse(cmd::NEW_SERVICE, &b).unwrap(),
            IpvsMsg::new_service(0x105, "rr")
        );
    }

    #[test]
    fn destination_port_is_big_endian_and_masquerade_is_zero() {
        let m = IpvsMsg::new_dest(300, Ipv4Addr::new(10, 0, 0, 7), 8080, 1);
        let b = bytes(&m);
        // Service (AF + FWMARK: 4 + 8 + 8), then the destination.
        let dest = &b[20..];
        assert_eq!(
            dest[..4],
            hdr(4 + 8 + 8 + 8 + 8 + 8 + 8 + 8, 2 | NLA_F_NESTED)[..]
        );
        assert_eq!(dest[4..8], hdr(8, DEST_ATTR_ADDR)[..]);
        assert_eq!(dest[8..12], [10, 0, 0, 7]);
        assert_eq!(dest[12..16], hdr(6, DEST_ATTR_PORT)[..]);
        assert_eq!(dest[16..18], [0x1f, 0x90], "8080 in network order");
        let back = parse(cmd::NEW_DEST, &b).unwrap();
        assert_eq!(back, m);
        let d = back.dest().unwrap();
        assert_eq!(
            (d.addr, d.port, d.fwd, d.weight),
            (Ipv4Addr::new(10, 0, 0, 7), 8080, FWD_MASQ, 1)
        );
    }

    #[test]
    fn a_kernel_service_dump_entry_decodes() {
        // What the kernel sends for `ipvsadm -A -f 256 -s rr`: a 16-byte address union is absent
        // for fwmark services; stats come as nested attributes this crate does not interpret.
        let mut svc = Vec::new();
        svc.extend(hdr(6, SVC_ATTR_AF));
        svc.extend((libc::AF_INET as u16).to_ne_bytes());
        svc.extend([0, 0]);
        svc.extend(hdr(8, SVC_ATTR_FWMARK));
        svc.extend(256u32.to_ne_bytes());
        svc.extend(hdr(7, SVC_ATTR_SCHED_NAME));
        svc.extend(b"rr\0\0");
        svc.extend(hdr(12, 10 | NLA_F_NESTED)); // IPVS_SVC_ATTR_STATS
        svc.extend(hdr(8, 1));
        svc.extend(5u32.to_ne_bytes());
        let mut b = hdr(4 + svc.len() as u16, CMD_ATTR_SERVICE | NLA_F_NESTED);
        b.extend(svc);
        let m = parse(cmd::NEW_SERVICE, &b).unwrap();
        assert_eq!(
            m.service(),
            Some(Service {
                af: libc::AF_INET as u16,
                fwmark: 256,
                sched: "rr".into(),
                conns: Some(5),
            })
        );
    }

    #[test]
    fn stats64_connections_win_over_the_32_bit_ones() {
        let mut svc = Vec::new();
        svc.extend(hdr(8, SVC_ATTR_FWMARK));
        svc.extend(300u32.to_ne_bytes());
        svc.extend(hdr(12, SVC_ATTR_STATS | NLA_F_NESTED));
        svc.extend(hdr(8, STATS_ATTR_CONNS));
        svc.extend(7u32.to_ne_bytes());
        // STATS64: CONNS as u64 (the kernel may put a PAD attribute first).
        svc.extend(hdr(20, SVC_ATTR_STATS64 | NLA_F_NESTED));
        svc.extend(hdr(4, 11)); // IPVS_STATS_ATTR_PAD, empty
        svc.extend(hdr(12, STATS_ATTR_CONNS));
        svc.extend((u32::MAX as u64 + 9).to_ne_bytes());
        let mut b = hdr(4 + svc.len() as u16, CMD_ATTR_SERVICE | NLA_F_NESTED);
        b.extend(svc);
        let m = parse(cmd::NEW_SERVICE, &b).unwrap();
        assert_eq!(m.service().unwrap().conns, Some(u32::MAX as u64 + 9));
        // Our own encoding of both parses back.
        let own = IpvsMsg::new(
            cmd::NEW_SERVICE,
            vec![IpvsAttr::Service(vec![
                SvcAttr::Stats(3),
                SvcAttr::Stats64(4),
            ])],
        );
        assert_eq!(parse(cmd::NEW_SERVICE, &bytes(&own)).unwrap(), own);
    }

    #[test]
    fn a_kernel_dest_dump_entry_with_a_16_byte_address_decodes() {
        let mut d = Vec::new();
        d.extend(hdr(20, DEST_ATTR_ADDR));
        d.extend([192, 168, 1, 9]);
        d.extend([0u8; 12]);
        d.extend(hdr(6, DEST_ATTR_PORT));
        d.extend([0, 0, 0, 0]);
        d.extend(hdr(8, DEST_ATTR_ACTIVE_CONNS));
        d.extend(3u32.to_ne_bytes());
        let mut b = hdr(4 + d.len() as u16, CMD_ATTR_DEST | NLA_F_NESTED);
        b.extend(d);
        let dest = parse(cmd::NEW_DEST, &b).unwrap().dest().unwrap();
        assert_eq!(dest.addr, Ipv4Addr::new(192, 168, 1, 9));
        assert_eq!((dest.port, dest.active), (0, 3));
    }

    #[test]
    fn config_round_trips() {
        let m = IpvsMsg::set_config((86400, 120, 300));
        let back = parse(cmd::SET_CONFIG, &bytes(&m)).unwrap();
        assert_eq!(back.timeouts(), Some((86400, 120, 300)));
        assert_eq!(IpvsMsg::get_config().timeouts(), None);
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        // Truncated attribute, wrong integer sizes, junk.
        assert!(parse(cmd::NEW_SERVICE, &[8, 0, 1, 0, 1]).is_err());
        let mut bad = hdr(4 + 8, CMD_ATTR_SERVICE | NLA_F_NESTED);
        bad.extend(hdr(7, SVC_ATTR_FWMARK));
        bad.extend([1, 2, 3, 0]);
        assert!(parse(cmd::NEW_SERVICE, &bad).is_err());
        let mut flags = hdr(4 + 8, CMD_ATTR_SERVICE | NLA_F_NESTED);
        flags.extend(hdr(8, SVC_ATTR_FLAGS));
        flags.extend([0u8; 4]);
        assert!(parse(cmd::NEW_SERVICE, &flags).is_err());
        for seed in 0u8..=255 {
            let junk: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(seed) ^ seed).collect();
            let _ = parse(cmd::NEW_DEST, &junk).map(|m| (m.dest(), m.service(), m.timeouts()));
        }
        // A destination without an address is not one.
        let m = IpvsMsg::new(cmd::NEW_DEST, vec![IpvsAttr::Dest(vec![DestAttr::Port(1)])]);
        assert_eq!(m.dest(), None);
    }
}
