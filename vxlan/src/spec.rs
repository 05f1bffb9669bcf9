//! Desired values: what the executor asks for. Plain data, serde, validated before use.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest VXLAN network identifier (24 bits).
pub const VNI_MAX: u32 = (1 << 24) - 1;
/// The IANA VXLAN port, Docker's default data-path port.
pub const DEFAULT_PORT: u16 = 4789;
/// Name of the gateway bridge unless configured otherwise.
pub const DEFAULT_GWBRIDGE: &str = "docker_gwbridge";
/// VXLAN encapsulation overhead on an IPv4 underlay (outer IP 20 + UDP 8 + VXLAN 8 + inner
/// Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;

/// An Ethernet address. Serialized as `02:42:0a:00:00:02`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Docker's MAC for an IPv4 address: 02:42 followed by the four address bytes.
    pub fn for_ip(ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }

    pub(crate) fn from_slice(b: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(b).ok().map(Mac)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mac> {
        let bad = || {
            Error::invalid(
                format!("MAC address {s:?}"),
                "use six hex bytes: 02:42:0a:00:00:02",
            )
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || p.len() > 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Mac, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An overlay network as this node needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The network's id (Docker: 25 characters); its first 10 name the sandbox namespace.
    pub id: String,
    /// VXLAN network identifier, 1..=16777215.
    pub vni: u32,
    pub subnet: Ipv4Net,
    /// The gateway address, on the sandbox bridge br0.
    pub gateway: Ipv4Addr,
    /// MTU override; default: the underlay interface's MTU - 50.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// An internal network gives its tasks no default route (see [`GatewayEndpoint`]).
    #[serde(default)]
    pub internal: bool,
    /// Its VXLAN traffic between nodes goes through ESP ([`crate::ipsec`]), fail-closed.
    #[serde(default)]
    pub encrypted: bool,
}

/// A task's interface on an overlay network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Id of the network (ensured before).
    pub network: String,
    /// The task's network namespace (e.g. `/run/netns/...` or `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// Interface name inside the task namespace (`eth0`, ...).
    pub ifname: String,
    /// The task's address on the network (prefix length: the network's).
    pub address: Ipv4Addr,
    /// Default: [`Mac::for_ip`] of the address.
    #[serde(default)]
    pub mac: Option<Mac>,
}

impl Endpoint {
    pub fn mac(&self) -> Mac {
        self.mac.unwrap_or_else(|| Mac::for_ip(self.address))
    }
}

/// A remote endpoint of a network: reached through the VXLAN tunnel to its node's VTEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Peer {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    /// The data-path address of the node the endpoint lives on.
    pub vtep: Ipv4Addr,
}

impl Peer {
    /// A peer with Docker's MAC for its address.
    pub fn new(ip: Ipv4Addr, vtep: Ipv4Addr) -> Peer {
        Peer {
            ip,
            mac: Mac::for_ip(ip),
            vtep,
        }
    }
}

/// The node's gateway bridge (Docker's docker_gwbridge): egress for tasks through masquerade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GwBridge {
    /// Default `docker_gwbridge`.
    #[serde(default = "default_gwbridge")]
    pub name: String,
    /// From the local address pools (172.18.0.0/16 first).
    pub subnet: Ipv4Net,
    /// The bridge's own address; default: the subnet's first host.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Default: the underlay interface's MTU.
    #[serde(default)]
    pub mtu: Option<u32>,
}

fn default_gwbridge() -> String {
    DEFAULT_GWBRIDGE.to_string()
}

impl GwBridge {
    pub fn new(subnet: Ipv4Net) -> GwBridge {
        GwBridge {
            name: default_gwbridge(),
            subnet,
            gateway: None,
            mtu: None,
        }
    }

    /// The bridge's address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
            .unwrap_or_else(|| Ipv4Addr::from(u32::from(self.subnet.network()).saturating_add(1)))
    }
}

/// A task's interface on the gateway bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayEndpoint {
    pub netns: PathBuf,
    /// Interface name inside the task namespace (Docker: `eth1` next to the overlay's `eth0`).
    pub ifname: String,
    /// Address in the gateway bridge's subnet.
    pub address: Ipv4Addr,
    #[serde(default)]
    pub mac: Option<Mac>,
    /// Install the task's default route via the gateway bridge. [`DesiredState`] turns it off
    /// for a task whose overlay endpoints are all on internal networks.
    #[serde(default = "yes")]
    pub default_route: bool,
}

fn yes() -> bool {
    true
}

impl GatewayEndpoint {
    pub fn mac(&self) -> Mac {
        self.mac.unwrap_or_else(|| Mac::for_ip(self.address))
    }
}

/// One network with its local endpoints and remote peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkState {
    pub network: Network,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub peers: Vec<Peer>,
}

/// Everything this node's overlay data plane should hold; [`crate::Dataplane::apply`] makes
/// the kernel match it and removes everything else netagent made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    #[serde(default)]
    pub networks: Vec<NetworkState>,
    #[serde(default)]
    pub gwbridge: Option<GwBridge>,
    #[serde(default)]
    pub gateway_endpoints: Vec<GatewayEndpoint>,
}

impl DesiredState {
    /// What [`crate::Dataplane::remove_stale`] must keep for this state.
    pub fn keep(&self) -> Keep {
        Keep {
            networks: self.networks.iter().map(|n| n.network.id.clone()).collect(),
            endpoints: self
                .networks
                .iter()
                .flat_map(|n| {
                    n.endpoints
                        .iter()
                        .map(|e| (e.network.clone(), e.netns.clone(), e.ifname.clone()))
                })
                .collect(),
            gateway_endpoints: self
                .gateway_endpoints
                .iter()
                .map(|g| (g.netns.clone(), g.ifname.clone()))
                .collect(),
            gwbridge: self.gwbridge.is_some(),
        }
    }
}

/// The objects [`crate::Dataplane::remove_stale`] keeps; everything else netagent made goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keep {
    /// Network ids whose sandboxes stay.
    pub networks: BTreeSet<String>,
    /// (network id, task namespace, interface) of endpoints that stay.
    pub endpoints: BTreeSet<(String, PathBuf, String)>,
    /// (task namespace, interface) of gateway endpoints that stay.
    pub gateway_endpoints: BTreeSet<(PathBuf, String)>,
    /// Whether the gateway bridge (and its nftables table) stays.
    pub gwbridge: bool,
}

/// What [`crate::Dataplane::set_peers`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerChanges {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
}

/// What [`crate::Dataplane::remove_stale`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub sandboxes: usize,
    pub endpoints: usize,
    pub gateway_endpoints: usize,
    pub gwbridge: bool,
}

pub(crate) fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("network id {id:?}"),
            "use 1-128 characters of [A-Za-z0-9_.-]",
        ))
    }
}

/// Interface names: 1-15 bytes, no '/', ':', whitespace, not "." or "..".
pub(crate) fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("interface name {name:?}"),
            "use 1-15 printable characters without '/', ':' or spaces",
        ))
    }
}

pub(crate) fn check_mtu(what: &str, mtu: u32) -> Result<()> {
    if (68..=65535).contains(&mtu) {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("MTU {mtu} of {what}"),
            "use 68..=65535",
        ))
    }
}

/// A host address of `net`: inside it, neither its network nor its broadcast address.
pub(crate) fn check_host(what: &str, net: &Ipv4Net, ip: Ipv4Addr) -> Result<()> {
    if net.prefix_len() > 30 {
        return Err(Error::invalid(
            format!("subnet {net} of {what}"),
            "use a prefix of /30 or shorter",
        ));
    }
    if !net.contains(&ip) || ip == net.network() || ip == net.broadcast() {
        return Err(Error::invalid(
            format!("address {ip} of {what}"),
            format!("it must be a host address of {net}"),
        ));
    }
    Ok(())
}

impl Network {
    pub(crate) fn validate(&self) -> Result<()> {
        check_id(&self.id)?;
        let what = format!("network {}", self.id);
        if self.vni == 0 || self.vni > VNI_MAX {
            return Err(Error::invalid(
                format!("VNI {} of {what}", self.vni),
                format!("use 1..={VNI_MAX}"),
            ));
        }
        if self.subnet.trunc() != self.subnet {
            return Err(Error::invalid(
                format!("subnet {} of {what}", self.subnet),
                format!("host bits are set; did you mean {}?", self.subnet.trunc()),
            ));
        }
        check_host(
            &format!("the gateway of {what}"),
            &self.subnet,
            self.gateway,
        )?;
        if let Some(m) = self.mtu {
            check_mtu(&what, m)?;
        }
        Ok(())
    }
}

impl GwBridge {
    pub(crate) fn validate(&self) -> Result<()> {
        check_ifname(&self.name)?;
        if self.subnet.trunc() != self.subnet {
            return Err(Error::invalid(
                format!("gateway bridge subnet {}", self.subnet),
                format!("host bits are set; did you mean {}?", self.subnet.trunc()),
            ));
        }
        check_host("the gateway bridge", &self.subnet, self.gateway())?;
        if let Some(m) = self.mtu {
            check_mtu("the gateway bridge", m)?;
        }
        Ok(())
    }
}

/// FNV-1a, 64 bits: a hash that stays the same across builds (names derive from it).
pub(crate) fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Name of the node-side (or sandbox-side) end of a task's veth: `tag` + 12 hex digits of the
/// task namespace and interface, so the same endpoint always gets the same name.
pub(crate) fn veth_name(tag: &str, netns: &std::path::Path, ifname: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let h = fnv(&[netns.as_os_str().as_bytes(), ifname.as_bytes()]);
    format!("{tag}{:012x}", h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_for_ip_and_parse() {
        let m = Mac::for_ip(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(m.to_string(), "02:42:0a:00:00:02");
        assert_eq!("02:42:0a:00:00:02".parse::<Mac>().unwrap(), m);
        for bad in [
            "",
            "02:42",
            "02:42:0a:00:00:02:03",
            "zz:42:0a:00:00:02",
            "002:42:0a:00:00:0",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"02:42:0a:00:00:02\"");
        assert_eq!(serde_json::from_str::<Mac>(&j).unwrap(), m);
    }

    #[test]
    fn network_validation_rejects_bad_input() {
        let good = Network {
            id: "abcdef0123456789".into(),
            vni: 4097,
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            mtu: None,
            internal: false,
            encrypted: false,
        };
        good.validate().unwrap();
        type Edit = Box<dyn Fn(&mut Network)>;
        let cases: Vec<Edit> = vec![
            Box::new(|n| n.id = String::new()),
            Box::new(|n| n.id = "a/b".into()),
            Box::new(|n| n.vni = 0),
            Box::new(|n| n.vni = VNI_MAX + 1),
            Box::new(|n| n.subnet = "10.0.0.1/24".parse().unwrap()),
            Box::new(|n| n.gateway = "10.0.1.1".parse().unwrap()),
            Box::new(|n| n.gateway = "10.0.0.0".parse().unwrap()),
            Box::new(|n| n.gateway = "10.0.0.255".parse().unwrap()),
            Box::new(|n| n.mtu = Some(10)),
            Box::new(|n| n.mtu = Some(70000)),
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut n = good.clone();
            f(&mut n);
            assert!(
                matches!(n.validate(), Err(Error::Invalid { .. })),
                "case {i}"
            );
        }
    }

    #[test]
    fn names_are_stable_and_short() {
        let a = veth_name("ve", std::path::Path::new("/run/netns/t1"), "eth0");
        assert_eq!(
            a,
            veth_name("ve", std::path::Path::new("/run/netns/t1"), "eth0")
        );
        assert_ne!(
            a,
            veth_name("ve", std::path::Path::new("/run/netns/t1"), "eth1")
        );
        assert!(a.len() <= 15, "{a}");
        check_ifname(&a).unwrap();
        for bad in ["", "a/b", "a b", "a:b", "0123456789abcdef", ".", ".."] {
            assert!(check_ifname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn desired_state_round_trips_as_json() {
        let s = DesiredState {
            networks: vec![NetworkState {
                network: Network {
                    id: "n1".into(),
                    vni: 4097,
                    subnet: "10.0.0.0/24".parse().unwrap(),
                    gateway: "10.0.0.1".parse().unwrap(),
                    mtu: None,
                    internal: false,
                    encrypted: false,
                },
                endpoints: vec![Endpoint {
                    network: "n1".into(),
                    netns: "/run/netns/t".into(),
                    ifname: "eth0".into(),
                    address: "10.0.0.2".parse().unwrap(),
                    mac: None,
                }],
                peers: vec![Peer::new(
                    "10.0.0.3".parse().unwrap(),
                    "198.18.0.2".parse().unwrap(),
                )],
            }],
            gwbridge: Some(GwBridge::new("172.18.0.0/16".parse().unwrap())),
            gateway_endpoints: vec![],
        };
        let j = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<DesiredState>(&j).unwrap(), s);
        assert_eq!(
            s.gwbridge.as_ref().unwrap().gateway(),
            Ipv4Addr::new(172, 18, 0, 1)
        );
        let k = s.keep();
        assert!(k.networks.contains("n1") && k.gwbridge && k.endpoints.len() == 1);
    }
}
