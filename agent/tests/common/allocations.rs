//! What the leader allocated, read back through one manager's API (its local replica):
//! networks with their subnets, gateways and VNIs, services with their VIPs, tasks with their
//! addresses; and the invariants every replica must hold whatever happened to the leaders.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::Swarm;
use super::tasks::parse_json_lines;

/// docker's option carrying a network's VNIs.
pub const VNI_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";

#[derive(Debug, Clone)]
pub struct NetAlloc {
    pub id: String,
    pub name: String,
    pub subnets: Vec<IpNet>,
    pub gateways: Vec<IpAddr>,
    pub vnis: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct SvcAlloc {
    pub id: String,
    pub name: String,
    /// (network id, address)
    pub vips: Vec<(String, IpAddr)>,
}

#[derive(Debug, Clone)]
pub struct TaskAlloc {
    pub id: String,
    pub service_id: String,
    pub desired: String,
    pub state: String,
    /// (network id, address)
    pub addresses: Vec<(String, IpAddr)>,
}

/// One manager's replica, as its API shows it.
#[derive(Debug, Clone, Default)]
pub struct Allocations {
    pub networks: Vec<NetAlloc>,
    pub services: Vec<SvcAlloc>,
    pub tasks: Vec<TaskAlloc>,
}

/// "10.0.1.5/24" or "10.0.1.5" as an address.
fn addr(s: &str) -> Result<IpAddr, String> {
    s.split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("bad address {s:?}: {e}"))
}

fn get(s: &Swarm, i: usize, path: &str) -> Result<Vec<Value>, String> {
    let (code, body) = s.api(i, "GET", path, "");
    if code != 200 {
        return Err(format!("GET {path} on node{i}: {code} {body}"));
    }
    Ok(parse_json_lines(&body))
}

fn string(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

impl Allocations {
    /// Reads node `i`'s networks, services and tasks. Err when the API does not answer or an
    /// object does not parse.
    pub fn read(s: &Swarm, i: usize) -> Result<Allocations, String> {
        let mut out = Allocations::default();
        for n in get(s, i, "/networks")? {
            let mut subnets = Vec::new();
            let mut gateways = Vec::new();
            for c in n["IPAM"]["Config"].as_array().into_iter().flatten() {
                let subnet = string(&c["Subnet"]);
                subnets.push(
                    subnet
                        .parse::<IpNet>()
                        .map_err(|e| format!("network {}: subnet {subnet:?}: {e}", n["Name"]))?,
                );
                if let Some(g) = c["Gateway"].as_str().filter(|g| !g.is_empty()) {
                    gateways.push(addr(g)?);
                }
            }
            let vnis = n["Options"][VNI_OPTION]
                .as_str()
                .unwrap_or_default()
                .split(',')
                .filter(|v| !v.is_empty())
                .map(|v| v.parse().map_err(|e| format!("VNI {v:?}: {e}")))
                .collect::<Result<_, String>>()?;
            out.networks.push(NetAlloc {
                id: string(&n["Id"]),
                name: string(&n["Name"]),
                subnets,
                gateways,
                vnis,
            });
        }
        for v in get(s, i, "/services")? {
            let vips = v["Endpoint"]["VirtualIPs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|vip| Ok((string(&vip["NetworkID"]), addr(&string(&vip["Addr"]))?)))
                .collect::<Result<_, String>>()?;
            out.services.push(SvcAlloc {
                id: string(&v["ID"]),
                name: string(&v["Spec"]["Name"]),
                vips,
            });
        }
        for t in get(s, i, "/tasks")? {
            let mut addresses = Vec::new();
            for a in t["NetworksAttachments"].as_array().into_iter().flatten() {
                for x in a["Addresses"].as_array().into_iter().flatten() {
                    addresses.push((string(&a["Network"]["ID"]), addr(&string(x))?));
                }
            }
            out.tasks.push(TaskAlloc {
                id: string(&t["ID"]),
                service_id: string(&t["ServiceID"]),
                desired: string(&t["DesiredState"]),
                state: string(&t["Status"]["State"]),
                addresses,
            });
        }
        Ok(out)
    }

    pub fn network(&self, name: &str) -> Option<&NetAlloc> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn service(&self, name: &str) -> Option<&SvcAlloc> {
        self.services.iter().find(|v| v.name == name)
    }

    /// Every service has one task that should run and runs.
    pub fn every_service_runs(&self) -> bool {
        self.services.iter().all(|v| {
            self.tasks
                .iter()
                .any(|t| t.service_id == v.id && t.desired == "running" && t.state == "running")
        })
    }

    /// Every invariant of the allocator, whatever the leaders did: names unique; subnets
    /// pairwise disjoint; VNIs unique; each VIP unique, inside its network's subnet and not its
    /// gateway; each address of a task that should run unique on its network, inside the
    /// subnet, neither a VIP nor the gateway. Returns every violation found.
    pub fn violations(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let mut names = BTreeMap::<&str, usize>::new();
        for n in &self.networks {
            *names.entry(&n.name).or_default() += 1;
        }
        bad.extend(
            names
                .iter()
                .filter(|(_, c)| **c > 1)
                .map(|(n, c)| format!("network name {n} held by {c} networks")),
        );
        let mut names = BTreeMap::<&str, usize>::new();
        for v in &self.services {
            *names.entry(&v.name).or_default() += 1;
        }
        bad.extend(
            names
                .iter()
                .filter(|(_, c)| **c > 1)
                .map(|(n, c)| format!("service name {n} held by {c} services")),
        );

        // Subnets: overlap, not only equality.
        let subnets: Vec<(&str, IpNet)> = self
            .networks
            .iter()
            .flat_map(|n| n.subnets.iter().map(move |s| (n.name.as_str(), *s)))
            .collect();
        for (i, (a, x)) in subnets.iter().enumerate() {
            for (b, y) in &subnets[i + 1..] {
                if x.contains(&y.network()) || y.contains(&x.network()) {
                    bad.push(format!("subnets overlap: {a} {x} and {b} {y}"));
                }
            }
        }
        let mut vnis = BTreeMap::<u32, &str>::new();
        for n in &self.networks {
            if n.vnis.is_empty() {
                bad.push(format!("network {} has no VNI", n.name));
            }
            for v in &n.vnis {
                if let Some(other) = vnis.insert(*v, &n.name) {
                    bad.push(format!("VNI {v} held by {other} and {}", n.name));
                }
            }
        }

        let by_id: BTreeMap<&str, &NetAlloc> =
            self.networks.iter().map(|n| (n.id.as_str(), n)).collect();
        let inside = |net: &str, ip: &IpAddr| {
            by_id
                .get(net)
                .is_some_and(|n| n.subnets.iter().any(|s| s.contains(ip)))
        };
        let gateway =
            |net: &str, ip: &IpAddr| by_id.get(net).is_some_and(|n| n.gateways.contains(ip));
        let mut taken = BTreeMap::<(String, IpAddr), String>::new();
        for v in &self.services {
            if v.vips.is_empty() {
                bad.push(format!("service {} has no VIP", v.name));
            }
            for (net, ip) in &v.vips {
                if !inside(net, ip) {
                    bad.push(format!("VIP {ip} of {} outside network {net}", v.name));
                }
                if gateway(net, ip) {
                    bad.push(format!("VIP {ip} of {} is its network's gateway", v.name));
                }
                if let Some(other) = taken.insert((net.clone(), *ip), format!("VIP of {}", v.name))
                {
                    bad.push(format!("{ip} is the VIP of {} and the {other}", v.name));
                }
            }
        }
        // VIPs are unique across networks too (subnets are disjoint).
        let mut vips = BTreeSet::new();
        for (_, ip) in self.services.iter().flat_map(|v| &v.vips) {
            if !vips.insert(*ip) {
                bad.push(format!("VIP {ip} given twice"));
            }
        }
        for t in self.tasks.iter().filter(|t| t.desired == "running") {
            for (net, ip) in &t.addresses {
                if !inside(net, ip) {
                    bad.push(format!("task {} address {ip} outside network {net}", t.id));
                }
                if gateway(net, ip) {
                    bad.push(format!("task {} address {ip} is the gateway", t.id));
                }
                if let Some(other) =
                    taken.insert((net.clone(), *ip), format!("address of task {}", t.id))
                {
                    bad.push(format!("{ip} on {net}: task {} and the {other}", t.id));
                }
            }
        }
        bad
    }
}
