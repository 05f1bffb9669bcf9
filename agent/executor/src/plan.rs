//! The node's desired overlay data plane, computed from what runs here and what gossip says runs
//! elsewhere. Pure: no kernel, no I/O.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use model::ipnet;
use vxlan::{DesiredState, Endpoint, GatewayEndpoint, GwBridge, NetworkState, Peer};

/// A task of this node whose namespace exists, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTask {
    pub id: String,
    pub netns: PathBuf,
    /// (network id, address on it) in attachment order: eth0, eth1, ...
    pub attachments: Vec<(String, Ipv4Addr)>,
    /// The task's address on the gateway bridge; None for a task without a gateway endpoint.
    pub gateway: Option<Ipv4Addr>,
}

/// A remote endpoint as gossip tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteEndpoint {
    pub owner: String,
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

/// The interface of a node's load-balancer endpoint inside its namespace.
pub const LB_IFNAME: &str = "eth0";

/// Where this node's load-balancer endpoint on a network lives: its namespace, its interface
/// there and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbPlace {
    pub netns: PathBuf,
    pub ifname: String,
    pub addr: Ipv4Addr,
}

/// The interface of a node's load-balancer endpoint on `network`: `eth0` in the network's own
/// namespace; in the ingress-sbox, which holds a second ingress network while tasks move to it
/// (`ingress recreate --subnet`), named by the network's VNI so the two never meet.
pub fn lb_ifname(network: &vxlan::Network, ingress: bool) -> String {
    if ingress {
        format!("ing{}", network.vni)
    } else {
        LB_IFNAME.to_string()
    }
}

/// Converts a stored network into what the data plane needs (its first IPv4 subnet).
pub fn network(n: &model::Network) -> Option<vxlan::Network> {
    let (a, subnet, gateway) =
        n.allocation
            .as_ref()?
            .iter()
            .find_map(|a| match (a.subnet, a.gateway) {
                (ipnet::IpNet::V4(s), IpAddr::V4(g)) => Some((a, s, g)),
                _ => None,
            })?;
    Some(vxlan::Network {
        id: n.meta.id.clone(),
        vni: a.vni,
        subnet,
        gateway,
        mtu: n.spec.mtu,
        internal: n.spec.internal,
        encrypted: n.spec.encrypted,
    })
}

/// The interface name of the `i`-th attachment of a task (eth0, eth1, ...); the gateway endpoint
/// comes after the overlays, as in Docker.
pub fn ifname(i: usize) -> String {
    format!("eth{i}")
}

/// The desired data plane: a sandbox per network with local endpoints, its peers the endpoints
/// other nodes publish (reached through their VTEPs), the gateway bridge and one gateway
/// endpoint per task that has one, and this node's load-balancer endpoint (`lbs`: namespace and
/// address per network) on each network that has local endpoints. Remote endpoints whose node
/// has no known VTEP are left out until it is known.
pub fn desired(
    me: &str,
    tasks: &[LocalTask],
    networks: &BTreeMap<String, vxlan::Network>,
    remote: &BTreeMap<String, Vec<RemoteEndpoint>>,
    vteps: &BTreeMap<String, IpAddr>,
    gwbridge: Option<&GwBridge>,
    lbs: &BTreeMap<String, LbPlace>,
) -> DesiredState {
    let mut by_net: BTreeMap<&str, NetworkState> = BTreeMap::new();
    let mut gateway_endpoints = Vec::new();
    for t in tasks {
        for (i, (net, addr)) in t.attachments.iter().enumerate() {
            let Some(spec) = networks.get(net) else {
                continue;
            };
            by_net
                .entry(net)
                .or_insert_with(|| NetworkState {
                    network: spec.clone(),
                    endpoints: vec![],
                    peers: vec![],
                })
                .endpoints
                .push(Endpoint {
                    network: net.clone(),
                    netns: t.netns.clone(),
                    ifname: ifname(i),
                    address: *addr,
                    mac: None,
                });
        }
        if let (Some(addr), Some(_)) = (t.gateway, gwbridge) {
            gateway_endpoints.push(GatewayEndpoint {
                netns: t.netns.clone(),
                ifname: ifname(t.attachments.len()),
                address: addr,
                mac: None,
                default_route: true,
            });
        }
    }
    for (net, state) in by_net.iter_mut() {
        if let Some(lb) = lbs.get(*net) {
            state.endpoints.push(Endpoint {
                network: net.to_string(),
                netns: lb.netns.clone(),
                ifname: lb.ifname.clone(),
                address: lb.addr,
                mac: None,
            });
        }
        let mut peers: Vec<Peer> = remote
            .get(*net)
            .into_iter()
            .flatten()
            .filter(|e| e.owner != me)
            .filter_map(|e| {
                let IpAddr::V4(ip) = e.ip else { return None };
                let Some(IpAddr::V4(vtep)) = vteps.get(&e.owner) else {
                    return None;
                };
                Some(Peer {
                    ip,
                    mac: vxlan::Mac(e.mac),
                    vtep: *vtep,
                })
            })
            .collect();
        peers.sort();
        peers.dedup_by_key(|p| p.ip);
        state.peers = peers;
    }
    DesiredState {
        networks: by_net.into_values().collect(),
        gwbridge: if gateway_endpoints.is_empty() {
            None
        } else {
            gwbridge.cloned()
        },
        gateway_endpoints,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(id: &str, subnet: &str, gw: &str, vni: u32) -> vxlan::Network {
        vxlan::Network {
            id: id.into(),
            vni,
            subnet: subnet.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            mtu: None,
            internal: false,
            encrypted: false,
        }
    }

    #[test]
    fn endpoints_peers_and_gateways() {
        let networks: BTreeMap<String, vxlan::Network> = [
            ("a".to_string(), net("a", "10.0.1.0/24", "10.0.1.1", 4096)),
            ("b".to_string(), net("b", "10.0.2.0/24", "10.0.2.1", 4097)),
            ("c".to_string(), net("c", "10.0.3.0/24", "10.0.3.1", 4098)),
        ]
        .into();
        let tasks = vec![
            LocalTask {
                id: "t1".into(),
                netns: "/run/netns/t1".into(),
                attachments: vec![
                    ("a".into(), "10.0.1.3".parse().unwrap()),
                    ("b".into(), "10.0.2.3".parse().unwrap()),
                ],
                gateway: Some("172.18.0.2".parse().unwrap()),
            },
            LocalTask {
                id: "t2".into(),
                netns: "/run/netns/t2".into(),
                attachments: vec![],
                gateway: None,
            },
        ];
        let remote: BTreeMap<String, Vec<RemoteEndpoint>> = [(
            "a".to_string(),
            vec![
                RemoteEndpoint {
                    owner: "me".into(),
                    ip: "10.0.1.3".parse().unwrap(),
                    mac: [2, 0x42, 10, 0, 1, 3],
                },
                RemoteEndpoint {
                    owner: "n2".into(),
                    ip: "10.0.1.4".parse().unwrap(),
                    mac: [2, 0x42, 10, 0, 1, 4],
                },
                RemoteEndpoint {
                    owner: "n3".into(),
                    ip: "10.0.1.5".parse().unwrap(),
                    mac: [2, 0x42, 10, 0, 1, 5],
                },
            ],
        )]
        .into();
        let vteps: BTreeMap<String, IpAddr> =
            [("n2".to_string(), "198.18.0.2".parse().unwrap())].into();
        let gw = GwBridge::new("172.18.0.0/16".parse().unwrap());
        let place = |ns: &str, addr: &str| LbPlace {
            netns: ns.into(),
            ifname: LB_IFNAME.into(),
            addr: addr.parse().unwrap(),
        };
        let lbs: BTreeMap<String, LbPlace> = [
            ("a".to_string(), place("/run/netns/lb-a", "10.0.1.9")),
            ("c".to_string(), place("/run/netns/lb-c", "10.0.3.9")),
        ]
        .into();
        let d = desired("me", &tasks, &networks, &remote, &vteps, Some(&gw), &lbs);
        assert_eq!(
            d.networks.len(),
            2,
            "only networks with local endpoints get a sandbox"
        );
        let a = &d.networks[0];
        assert_eq!(a.network.id, "a");
        assert_eq!(a.endpoints[0].ifname, "eth0");
        assert_eq!(
            a.endpoints[1].netns,
            PathBuf::from("/run/netns/lb-a"),
            "the node's load-balancer endpoint joins networks with local endpoints"
        );
        assert_eq!(d.networks[1].endpoints.len(), 1, "none given for b");
        assert_eq!(d.networks[1].endpoints[0].ifname, "eth1");
        assert_eq!(
            a.peers.len(),
            1,
            "own endpoints and those without a VTEP are not peers"
        );
        assert_eq!(a.peers[0].ip.to_string(), "10.0.1.4");
        assert_eq!(a.peers[0].vtep.to_string(), "198.18.0.2");
        assert_eq!(d.gateway_endpoints.len(), 1);
        assert_eq!(d.gateway_endpoints[0].ifname, "eth2");
        assert!(d.gwbridge.is_some());
        let none = desired("me", &[], &networks, &remote, &vteps, Some(&gw), &lbs);
        assert_eq!(none, DesiredState::default(), "no tasks, no data plane");
    }
}
