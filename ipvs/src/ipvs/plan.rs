//! Admission: the desired state checked before anything reaches the kernel. A network or service
//! that could misroute traffic (a VIP or backend outside its subnet, a VIP another service
//! holds, two networks in one namespace) is refused with a line saying why; a refused update
//! of something already admitted keeps the admitted version, so refused input changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::{Desired, NetworkLb, ServiceKey, ServiceLb};

/// The first fwmark netagent uses (Docker's counter starts there too).
pub(crate) const MARK_BASE: u32 = 256;

/// The fwmark of a VIP: its offset in the subnet plus [`MARK_BASE`]. Stable (the same VIP on the
/// same subnet always gets the same mark, also after a restart) and collision-free inside one
/// namespace, which holds one network. `None` if it does not fit in 32 bits.
pub(crate) fn mark_for(subnet: &Ipv4Net, vip: Ipv4Addr) -> Option<u32> {
    u32::from(vip)
        .checked_sub(u32::from(subnet.network()))?
        .checked_add(MARK_BASE)
}

/// What was refused: a network or a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Subject {
    Network(String),
    Service(ServiceKey),
}

/// The admitted state: what the kernel should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Admitted {
    pub networks: BTreeMap<String, NetworkLb>,
    pub services: BTreeMap<ServiceKey, ServiceLb>,
    /// Network -> VIP -> the service holding it.
    pub vips: BTreeMap<String, BTreeMap<Ipv4Addr, ServiceKey>>,
}

/// The entries of a map keyed by service whose network is `network` (keys sort by network
/// first).
pub(crate) fn on_network<'a, V>(
    map: &'a BTreeMap<ServiceKey, V>,
    network: &'a str,
) -> impl Iterator<Item = (&'a ServiceKey, &'a V)> + 'a {
    map.range(
        ServiceKey {
            network: network.to_string(),
            service: String::new(),
        }..,
    )
    .take_while(move |(k, _)| k.network == network)
}

impl Admitted {
    /// The services on one network.
    pub fn services_on<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a ServiceLb> {
        on_network(&self.services, network).map(|(_, s)| s)
    }

    /// The service holding `vip` on `network`.
    pub fn by_vip(&self, network: &str, vip: Ipv4Addr) -> Option<&ServiceLb> {
        let key = self.vips.get(network)?.get(&vip)?;
        self.services.get(key)
    }
}

/// Whether `a` is a usable host address of `net` (inside, not its network or broadcast address).
fn host_of(net: &Ipv4Net, a: Ipv4Addr) -> bool {
    net.contains(&a) && (net.prefix_len() >= 31 || (a != net.network() && a != net.broadcast()))
}

fn check_network(id: &str, n: &NetworkLb) -> Result<(), String> {
    if id != n.id {
        return Err(format!("network {id:?} is listed with id {:?}", n.id));
    }
    if id.is_empty() {
        return Err("a network has an empty id".into());
    }
    let iface_ok = !n.iface.is_empty()
        && n.iface.len() < 16
        && n.iface
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if !iface_ok {
        return Err(format!(
            "network {id}: interface name {:?} is invalid",
            n.iface
        ));
    }
    if !n.netns.is_absolute() {
        return Err(format!(
            "network {id}: load-balancer namespace {} is not an absolute path",
            n.netns.display()
        ));
    }
    if n.subnet.prefix_len() > 30 {
        return Err(format!(
            "network {id}: subnet {} has no room for VIPs",
            n.subnet
        ));
    }
    if !host_of(&n.subnet, n.addr) {
        return Err(format!(
            "network {id}: load-balancer address {} is not a host address of {}",
            n.addr, n.subnet
        ));
    }
    Ok(())
}

/// Checks a service against its network; returns it with its bad backends left out, and a
/// line for each one left out.
fn check_service(
    key: &ServiceKey,
    s: &ServiceLb,
    net: &NetworkLb,
) -> Result<(ServiceLb, Vec<String>), String> {
    let who = format!("service {} on network {}", key.service, key.network);
    if &s.key != key {
        return Err(format!(
            "{who} is listed as service {} on network {}",
            s.key.service, s.key.network
        ));
    }
    if !host_of(&net.subnet, s.vip) {
        return Err(format!(
            "{who}: VIP {} is not a host address of the network's subnet {}",
            s.vip, net.subnet
        ));
    }
    if s.vip == net.addr {
        return Err(format!(
            "{who}: VIP {} is the node's load-balancer address",
            s.vip
        ));
    }
    if mark_for(&net.subnet, s.vip).is_none() {
        return Err(format!("{who}: VIP {} has no fwmark", s.vip));
    }
    let mut ok = ServiceLb {
        key: key.clone(),
        vip: s.vip,
        backends: BTreeSet::new(),
    };
    let mut lines = Vec::new();
    for &b in &s.backends {
        if !host_of(&net.subnet, b) {
            lines.push(format!(
                "{who}: backend {b} is not a host address of the network's subnet {}",
                net.subnet
            ));
        } else if b == s.vip || b == net.addr {
            lines.push(format!(
                "{who}: backend {b} is the VIP or the node's load-balancer address"
            ));
        } else {
            ok.backends.insert(b);
        }
    }
    Ok((ok, lines))
}

type Refused = Vec<(Subject, String)>;

/// Admits the networks. On a conflict (two networks in one namespace) the current holder keeps
/// the namespace; a refused update of an admitted network keeps the admitted version.
pub(crate) fn admit_networks(
    desired: &BTreeMap<String, NetworkLb>,
    current: &BTreeMap<String, NetworkLb>,
    refused: &mut Refused,
) -> BTreeMap<String, NetworkLb> {
    let mut out = BTreeMap::new();
    let mut by_ns: BTreeMap<&PathBuf, &String> = BTreeMap::new();
    let (held, rest): (Vec<_>, Vec<_>) = desired
        .iter()
        .partition(|(id, _)| current.contains_key(*id));
    for (id, n) in held.into_iter().chain(rest) {
        let mut candidates = vec![n];
        if let Some(c) = current.get(id).filter(|c| *c != n) {
            candidates.push(c);
        }
        let mut first_err = None;
        for c in candidates {
            let verdict = check_network(id, c).and_then(|()| match by_ns.get(&c.netns) {
                Some(other) => Err(format!(
                    "network {id}: namespace {} already serves network {other}",
                    c.netns.display()
                )),
                None => Ok(()),
            });
            match verdict {
                Ok(()) => {
                    by_ns.insert(&c.netns, id);
                    out.insert(id.clone(), c.clone());
                    break;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            refused.push((Subject::Network(id.clone()), e));
        }
    }
    out
}

/// Admits the services `desired` has on network `net`: the current holders of their VIP first,
/// then the rest in key order; a refused update of an admitted service keeps the admitted
/// version. Returns the admitted services and the network's VIP index.
fn admit_on(
    net: &NetworkLb,
    desired: &BTreeMap<ServiceKey, ServiceLb>,
    current: &Admitted,
    refused: &mut Refused,
) -> (Vec<ServiceLb>, BTreeMap<Ipv4Addr, ServiceKey>) {
    let mut out: Vec<ServiceLb> = Vec::new();
    let mut vips: BTreeMap<Ipv4Addr, &ServiceKey> = BTreeMap::new();
    let (held, rest): (Vec<_>, Vec<_>) = on_network(desired, &net.id)
        .partition(|(k, s)| current.services.get(*k).is_some_and(|c| c.vip == s.vip));
    for (key, s) in held.into_iter().chain(rest) {
        let mut candidates = vec![s];
        if let Some(c) = current.services.get(key).filter(|c| *c != s) {
            candidates.push(c);
        }
        let mut first_err = None;
        for c in candidates {
            let verdict =
                check_service(key, c, net).and_then(|(ok, lines)| match vips.get(&ok.vip) {
                    Some(other) => Err(format!(
                        "service {} on network {}: VIP {} is already service {}'s",
                        key.service, key.network, ok.vip, other.service
                    )),
                    None => Ok((ok, lines)),
                });
            match verdict {
                Ok((ok, lines)) => {
                    refused.extend(
                        lines
                            .into_iter()
                            .map(|l| (Subject::Service(key.clone()), l)),
                    );
                    vips.insert(ok.vip, key);
                    out.push(ok);
                    break;
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            refused.push((Subject::Service(key.clone()), e));
        }
    }
    // A backend that is a VIP on its network would send the VIP's traffic to another VIP.
    for s in &mut out {
        drop_vip_backends(s, |b| vips.contains_key(&b), refused);
    }
    let index = vips.into_iter().map(|(v, k)| (v, k.clone())).collect();
    (out, index)
}

fn drop_vip_backends(s: &mut ServiceLb, is_vip: impl Fn(Ipv4Addr) -> bool, refused: &mut Refused) {
    let taken: Vec<Ipv4Addr> = s.backends.iter().copied().filter(|b| is_vip(*b)).collect();
    for b in taken {
        s.backends.remove(&b);
        refused.push((
            Subject::Service(s.key.clone()),
            format!(
                "service {} on network {}: backend {b} is a VIP",
                s.key.service, s.key.network
            ),
        ));
    }
}

/// Admits `desired` (see [`admit_networks`] and [`admit_on`] for who wins a conflict).
pub(crate) fn admit(desired: &Desired, current: &Admitted) -> (Admitted, Refused) {
    let mut refused = Vec::new();
    let mut out = Admitted {
        networks: admit_networks(&desired.networks, &current.networks, &mut refused),
        ..Default::default()
    };
    for (id, net) in &out.networks {
        let (services, index) = admit_on(net, &desired.services, current, &mut refused);
        out.services
            .extend(services.into_iter().map(|s| (s.key.clone(), s)));
        out.vips.insert(id.clone(), index);
    }
    for key in desired.services.keys() {
        if !out.networks.contains_key(&key.network) {
            refused.push((Subject::Service(key.clone()), no_network(key)));
        }
    }
    (out, refused)
}

fn no_network(key: &ServiceKey) -> String {
    format!(
        "service {} on network {}: no such network on this node",
        key.service, key.network
    )
}

/// Admits again the services `desired` has on network `id` (its network as admitted in
/// `current.networks`, or gone), in place.
pub(crate) fn readmit(id: &str, desired: &Desired, current: &mut Admitted, refused: &mut Refused) {
    let (services, index) = match current.networks.get(id) {
        Some(net) => admit_on(net, &desired.services, current, refused),
        None => {
            for (key, _) in on_network(&desired.services, id) {
                refused.push((Subject::Service(key.clone()), no_network(key)));
            }
            (Vec::new(), BTreeMap::new())
        }
    };
    let old: Vec<ServiceKey> = on_network(&current.services, id)
        .map(|(k, _)| k.clone())
        .collect();
    for k in old {
        current.services.remove(&k);
    }
    current
        .services
        .extend(services.into_iter().map(|s| (s.key.clone(), s)));
    if current.networks.contains_key(id) {
        current.vips.insert(id.to_string(), index);
    } else {
        current.vips.remove(id);
    }
}

/// Admits an update of an admitted service that keeps its VIP (new backends): the hot path, no
/// work proportional to the number of services. Returns whether the admitted state changed.
pub(crate) fn admit_update(s: &ServiceLb, current: &mut Admitted, refused: &mut Refused) -> bool {
    let Some(net) = current.networks.get(&s.key.network) else {
        return false;
    };
    match check_service(&s.key, s, net) {
        Ok((mut ok, lines)) => {
            refused.extend(
                lines
                    .into_iter()
                    .map(|l| (Subject::Service(s.key.clone()), l)),
            );
            let vips = current.vips.get(&s.key.network);
            drop_vip_backends(
                &mut ok,
                |b| vips.is_some_and(|v| v.contains_key(&b)),
                refused,
            );
            let changed = current.services.get(&s.key) != Some(&ok);
            current.services.insert(s.key.clone(), ok);
            changed
        }
        Err(e) => {
            refused.push((Subject::Service(s.key.clone()), e));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(id: &str, subnet: &str, addr: [u8; 4]) -> NetworkLb {
        NetworkLb {
            id: id.into(),
            netns: PathBuf::from(format!("/run/netns/lb-{id}")),
            iface: "eth0".into(),
            addr: Ipv4Addr::from(addr),
            subnet: subnet.parse().unwrap(),
        }
    }

    fn key(n: &str, s: &str) -> ServiceKey {
        ServiceKey {
            network: n.into(),
            service: s.into(),
        }
    }

    fn svc(n: &str, s: &str, vip: [u8; 4], backends: &[[u8; 4]]) -> ServiceLb {
        ServiceLb {
            key: key(n, s),
            vip: Ipv4Addr::from(vip),
            backends: backends.iter().map(|b| Ipv4Addr::from(*b)).collect(),
        }
    }

    fn desired(nets: Vec<NetworkLb>, svcs: Vec<ServiceLb>) -> Desired {
        Desired {
            networks: nets.into_iter().map(|n| (n.id.clone(), n)).collect(),
            services: svcs.into_iter().map(|s| (s.key.clone(), s)).collect(),
        }
    }

    #[test]
    fn marks_are_stable_offsets_in_the_subnet() {
        let n: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        assert_eq!(mark_for(&n, Ipv4Addr::new(10, 0, 0, 5)), Some(261));
        assert_eq!(mark_for(&n, Ipv4Addr::new(9, 0, 0, 5)), None);
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert_eq!(mark_for(&all, Ipv4Addr::new(255, 255, 255, 254)), None);
    }

    #[test]
    fn bad_input_is_refused_with_a_reason_and_good_input_kept() {
        let d = desired(
            vec![net("a", "10.0.0.0/24", [10, 0, 0, 2])],
            vec![
                svc("a", "web", [10, 0, 0, 10], &[[10, 0, 0, 11], [10, 9, 9, 9]]),
                svc("a", "out", [10, 1, 0, 10], &[[10, 0, 0, 12]]),
                // Sorts after "web": web gets the VIP (key order when nobody holds it yet).
                svc("a", "zdup", [10, 0, 0, 10], &[[10, 0, 0, 13]]),
                svc("a", "lb", [10, 0, 0, 2], &[]),
                svc("nope", "x", [10, 0, 0, 20], &[]),
                svc(
                    "a",
                    "api",
                    [10, 0, 0, 30],
                    &[[10, 0, 0, 10], [10, 0, 0, 14]],
                ),
            ],
        );
        let (ok, refused) = admit(&d, &Admitted::default());
        assert_eq!(ok.services.len(), 2);
        let web = &ok.services[&key("a", "web")];
        assert_eq!(web.backends, BTreeSet::from([Ipv4Addr::new(10, 0, 0, 11)]));
        let api = &ok.services[&key("a", "api")];
        assert_eq!(api.backends, BTreeSet::from([Ipv4Addr::new(10, 0, 0, 14)]));
        let text: Vec<&str> = refused.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(refused.len(), 6, "{text:#?}");
        for want in [
            "backend 10.0.0.10 is a VIP",
            "backend 10.9.9.9 is not a host address",
            "VIP 10.1.0.10 is not a host address",
            "VIP 10.0.0.10 is already service web's",
            "VIP 10.0.0.2 is the node's load-balancer address",
            "no such network",
        ] {
            assert!(text.iter().any(|l| l.contains(want)), "{want}: {text:#?}");
        }
    }

    #[test]
    fn the_current_holder_keeps_its_vip_and_a_bad_update_keeps_the_old_version() {
        let n = net("a", "10.0.0.0/24", [10, 0, 0, 2]);
        let first = desired(
            vec![n.clone()],
            vec![svc("a", "zz", [10, 0, 0, 10], &[[10, 0, 0, 11]])],
        );
        let (cur, refused) = admit(&first, &Admitted::default());
        assert!(refused.is_empty());
        // "aa" sorts first but "zz" holds the VIP.
        let second = desired(
            vec![n.clone()],
            vec![
                svc("a", "aa", [10, 0, 0, 10], &[]),
                svc("a", "zz", [10, 0, 0, 10], &[[10, 0, 0, 11]]),
            ],
        );
        let (next, refused) = admit(&second, &cur);
        assert_eq!(next, cur);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, Subject::Service(key("a", "aa")));
        // An update moving zz's VIP out of the subnet is refused; zz stays as it was.
        let third = desired(vec![n], vec![svc("a", "zz", [11, 0, 0, 10], &[])]);
        let (next, refused) = admit(&third, &cur);
        assert_eq!(next, cur);
        assert_eq!(refused.len(), 1);
    }

    #[test]
    fn updates_in_place_agree_with_a_full_admission() {
        let n = net("a", "10.0.0.0/24", [10, 0, 0, 2]);
        let mut d = desired(
            vec![n],
            vec![
                svc("a", "web", [10, 0, 0, 10], &[[10, 0, 0, 11]]),
                svc("a", "api", [10, 0, 0, 20], &[[10, 0, 0, 12]]),
            ],
        );
        let (mut cur, _) = admit(&d, &Admitted::default());
        assert_eq!(
            cur.by_vip("a", Ipv4Addr::new(10, 0, 0, 20)).unwrap().key,
            key("a", "api")
        );
        // New backends for web: one good, one outside, one that is api's VIP.
        let next = svc(
            "a",
            "web",
            [10, 0, 0, 10],
            &[[10, 0, 0, 13], [10, 7, 0, 1], [10, 0, 0, 20]],
        );
        let mut refused = Vec::new();
        assert!(admit_update(&next, &mut cur, &mut refused));
        assert_eq!(refused.len(), 2, "{refused:#?}");
        d.services.insert(next.key.clone(), next.clone());
        assert_eq!(
            cur,
            admit(&d, &cur).0,
            "same result as admitting everything"
        );
        // The same update again changes nothing; a bad one is refused and changes nothing.
        assert!(!admit_update(&next, &mut cur, &mut Vec::new()));
        let mut bad = next.clone();
        bad.vip = Ipv4Addr::new(10, 0, 0, 255);
        let mut refused = Vec::new();
        assert!(!admit_update(&bad, &mut cur, &mut refused));
        assert_eq!(refused.len(), 1);
        // Re-admitting one network in place after a removal.
        d.services.remove(&key("a", "api"));
        readmit("a", &d, &mut cur, &mut Vec::new());
        assert_eq!(cur, admit(&d, &cur).0);
        assert!(cur.by_vip("a", Ipv4Addr::new(10, 0, 0, 20)).is_none());
    }

    #[test]
    fn networks_are_checked() {
        let mut shared = net("b", "10.1.0.0/24", [10, 1, 0, 2]);
        shared.netns = PathBuf::from("/run/netns/lb-a");
        let mut bad_iface = net("c", "10.2.0.0/24", [10, 2, 0, 2]);
        bad_iface.iface = "a/b".into();
        let d = desired(
            vec![
                net("a", "10.0.0.0/24", [10, 0, 0, 2]),
                shared,
                bad_iface,
                net("d", "10.3.0.0/24", [10, 4, 0, 2]),
                net("e", "10.5.0.0/31", [10, 5, 0, 0]),
            ],
            vec![],
        );
        let (ok, refused) = admit(&d, &Admitted::default());
        assert_eq!(ok.networks.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(refused.len(), 4, "{refused:#?}");
    }
}
