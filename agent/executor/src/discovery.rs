//! Service discovery on this node: what its DNS resolver answers, per network it has endpoints on,
//! computed from the assignments (every service on the network: name, VIP, aliases) and the
//! network's gossip table (its running tasks), and handed to the resolver as deltas — a change of
//! one task or service is one record, whatever the size of the cluster.
//!
//! The node's load balancer is fed from the same records ([`crate::balancer`]): a service's VIP
//! on a network and the addresses of its running tasks there, recomputed for the services a
//! change touches.
//!
//! Which tasks count: an entry of a task that runs (enabled), whose owner is alive, or silent
//! but neither marked down by the leader nor removed from the cluster (DESIGN.md: a node's
//! endpoints stay while its data plane may be alive; they go when its tasks were rescheduled).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use model::Service;
use model::service::EndpointMode;

use crate::balancer::Balancer;

/// What DNS knows of a service on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SvcRec {
    pub name: String,
    pub vip: Option<IpAddr>,
    pub aliases: Vec<String>,
}

/// What DNS knows of a running task on one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TaskRec {
    pub service: String,
    pub addr: IpAddr,
    pub name: String,
}

#[derive(Debug, Default)]
struct Given {
    services: BTreeMap<String, SvcRec>,
    tasks: BTreeMap<String, TaskRec>,
    /// Task ids per service id.
    by_service: BTreeMap<String, BTreeSet<String>>,
}

/// The records given to the resolver, per network, so only differences are sent; and the load
/// balancer they feed.
pub(crate) struct Discovery {
    resolver: Option<Arc<dns::Resolver>>,
    given: BTreeMap<String, Given>,
    pub(crate) lb: Balancer,
}

/// A service's record on a network, if it is attached to it.
pub(crate) fn service_record(s: &Service, network: &str) -> Option<SvcRec> {
    let attach = s.spec.networks.iter().find(|a| a.target == network)?;
    let vip = match s.spec.endpoint.mode {
        EndpointMode::Vip => s
            .virtual_ips
            .iter()
            .find(|v| v.network_id == network)
            .map(|v| v.addr.addr()),
        EndpointMode::Dnsrr => None,
    };
    Some(SvcRec {
        name: s.spec.name.clone(),
        vip,
        aliases: attach.aliases.clone(),
    })
}

/// A gossip entry's task record, if it is a running task's endpoint that counts (see the module
/// documentation); `counts(owner)` says whether the entry's owner still counts.
pub(crate) fn task_record(e: &gossip::Entry, owner_counts: bool) -> Option<TaskRec> {
    let ep = &e.endpoint;
    if ep.task.is_empty() || ep.disabled || !owner_counts {
        return None;
    }
    Some(TaskRec {
        service: ep.service.clone(),
        addr: ep.ip,
        name: ep.name.clone(),
    })
}

impl Discovery {
    pub fn new(resolver: Option<Arc<dns::Resolver>>, lb: Balancer) -> Discovery {
        Discovery {
            resolver,
            given: BTreeMap::new(),
            lb,
        }
    }

    /// The network's load-balancer namespace is ready (Some) or gone (None): its VIPs follow.
    pub fn lb_network(&mut self, id: &str, want: Option<ipvs::NetworkLb>) {
        let put = want.is_some();
        self.lb.network(id, want);
        if put {
            let ids: Vec<String> = self
                .given
                .get(id)
                .map(|g| g.services.keys().cloned().collect())
                .unwrap_or_default();
            for svc in ids {
                self.balance(id, &svc);
            }
        }
    }

    /// Gives the load balancer a service's VIP on a network as the records say now.
    fn balance(&mut self, network: &str, service: &str) {
        let key = ipvs::ServiceKey {
            network: network.to_string(),
            service: service.to_string(),
        };
        let want = self.given.get(network).and_then(|g| {
            let IpAddr::V4(vip) = g.services.get(service)?.vip? else {
                return None;
            };
            let backends = g
                .by_service
                .get(service)
                .into_iter()
                .flatten()
                .filter_map(|t| match g.tasks.get(t)?.addr {
                    IpAddr::V4(a) => Some(a),
                    IpAddr::V6(_) => None,
                })
                .collect();
            Some(ipvs::ServiceLb {
                key: key.clone(),
                vip,
                backends,
            })
        });
        tracing::debug!(
            network,
            service,
            backends = want.as_ref().map_or(0, |w| w.backends.len()),
            "load balancer service"
        );
        self.lb.service(key, want);
    }

    pub fn resolver(&self) -> Option<&Arc<dns::Resolver>> {
        self.resolver.as_ref()
    }

    fn send(&self, changes: Vec<dns::Change>) {
        if let (Some(r), false) = (&self.resolver, changes.is_empty()) {
            r.apply(changes);
        }
    }

    /// A network present on this node (with its name, and whether it is the ingress network),
    /// or gone (None). The ingress network is left out of service discovery as Docker leaves
    /// it: its addresses have no names and no name answers them, so it counts as absent here
    /// (which also keeps its services' VIPs out of the load balancer: the routing mesh
    /// balances published ports itself).
    pub fn network(&mut self, id: &str, present: Option<(&str, bool)>) {
        match present {
            Some((name, false)) => {
                self.given.entry(id.to_string()).or_default();
                self.send(vec![dns::Change::PutNetwork {
                    id: id.to_string(),
                    name: name.to_string(),
                }]);
            }
            Some((_, true)) | None => {
                if self.given.remove(id).is_some() {
                    self.send(vec![dns::Change::RemoveNetwork { id: id.to_string() }]);
                }
                self.lb.network(id, None);
            }
        }
    }

    /// The services of a present network are exactly `want` (for a whole network at once).
    pub fn services(&mut self, network: &str, want: BTreeMap<String, SvcRec>) {
        let Some(g) = self.given.get(network) else {
            return;
        };
        let gone: Vec<String> = g
            .services
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for id in gone {
            self.service(network, &id, None);
        }
        for (id, rec) in want {
            self.service(network, &id, Some(rec));
        }
    }

    /// One service's record on a present network (None: not on it).
    pub fn service(&mut self, network: &str, id: &str, rec: Option<SvcRec>) {
        let Some(g) = self.given.get_mut(network) else {
            return;
        };
        if g.services.get(id) == rec.as_ref() {
            return;
        }
        let change = match &rec {
            Some(r) => {
                g.services.insert(id.to_string(), r.clone());
                dns::Change::PutService {
                    network: network.to_string(),
                    id: id.to_string(),
                    name: r.name.clone(),
                    vip: r.vip,
                    aliases: r.aliases.clone(),
                }
            }
            None => {
                g.services.remove(id);
                dns::Change::RemoveService {
                    network: network.to_string(),
                    id: id.to_string(),
                }
            }
        };
        self.send(vec![change]);
        self.balance(network, id);
    }

    /// The running tasks of a present network are exactly `want` (after a resync).
    pub fn tasks(&mut self, network: &str, want: BTreeMap<String, TaskRec>) {
        let Some(g) = self.given.get(network) else {
            return;
        };
        let gone: Vec<String> = g
            .tasks
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for id in gone {
            self.task(network, &id, None);
        }
        for (id, rec) in want {
            self.task(network, &id, Some(rec));
        }
    }

    /// One task's record on a present network (None: not a running task there).
    pub fn task(&mut self, network: &str, id: &str, rec: Option<TaskRec>) {
        let Some(g) = self.given.get_mut(network) else {
            return;
        };
        if g.tasks.get(id) == rec.as_ref() {
            return;
        }
        tracing::debug!(network, task = id, running = rec.is_some(), "task record");
        let before = g.tasks.get(id).map(|t| t.service.clone());
        if let Some(svc) = &before
            && let Some(set) = g.by_service.get_mut(svc)
        {
            set.remove(id);
            if set.is_empty() {
                g.by_service.remove(svc);
            }
        }
        if let Some(r) = &rec {
            g.by_service
                .entry(r.service.clone())
                .or_default()
                .insert(id.to_string());
        }
        let after = rec.as_ref().map(|t| t.service.clone());
        let change = match &rec {
            Some(r) => {
                g.tasks.insert(id.to_string(), r.clone());
                dns::Change::PutTask {
                    network: network.to_string(),
                    id: id.to_string(),
                    service: r.service.clone(),
                    addr: r.addr,
                    name: r.name.clone(),
                    aliases: Vec::new(),
                }
            }
            None => {
                g.tasks.remove(id);
                dns::Change::RemoveTask {
                    network: network.to_string(),
                    id: id.to_string(),
                }
            }
        };
        self.send(vec![change]);
        for svc in before
            .iter()
            .chain(after.iter().filter(|a| before.as_ref() != Some(*a)))
        {
            self.balance(network, svc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(task: &str, disabled: bool) -> gossip::Entry {
        gossip::Entry {
            owner: "n2".into(),
            owner_alive: true,
            endpoint: gossip::Endpoint {
                id: task.into(),
                network: "net".into(),
                ip: "10.0.1.5".parse().unwrap(),
                mac: [2, 0x42, 10, 0, 1, 5],
                task: task.into(),
                service: "svc".into(),
                name: format!("web.1.{task}"),
                aliases: vec![],
                disabled,
            },
        }
    }

    #[test]
    fn only_running_tasks_of_counting_owners_are_records() {
        assert!(task_record(&entry("t1", false), true).is_some());
        assert!(task_record(&entry("t1", true), true).is_none(), "disabled");
        assert!(
            task_record(&entry("t1", false), false).is_none(),
            "owner down"
        );
        assert!(
            task_record(&entry("", false), true).is_none(),
            "a load-balancer endpoint"
        );
    }

    #[test]
    fn deltas_only_for_what_changed() {
        let r = dns::Resolver::new(dns::Config::default()).unwrap();
        let mut d = Discovery::new(Some(r.clone()), Balancer::new(None, Default::default()));
        d.network("net", Some(("web", false)));
        let rec = TaskRec {
            service: "svc".into(),
            addr: "10.0.1.5".parse().unwrap(),
            name: "web.1.t1".into(),
        };
        d.service(
            "net",
            "svc",
            Some(SvcRec {
                name: "web".into(),
                vip: Some("10.0.1.2".parse().unwrap()),
                aliases: vec!["www".into()],
            }),
        );
        d.task("net", "t1", Some(rec.clone()));
        let scope = vec!["net".to_string()];
        assert!(r.resolve(&scope, "tasks.web").is_some());
        assert!(r.resolve(&scope, "www").is_some());
        d.tasks("net", BTreeMap::new());
        let (_, _, tasks) = r.counts();
        assert_eq!(tasks, 0, "a resync without the task removes it");
        d.network("net", None);
        assert!(r.resolve(&scope, "web").is_none());
    }

    #[test]
    fn the_ingress_network_has_no_names() {
        let r = dns::Resolver::new(dns::Config::default()).unwrap();
        let mut d = Discovery::new(Some(r.clone()), Balancer::new(None, Default::default()));
        d.network("ing", Some(("ingress", true)));
        let svc = SvcRec {
            name: "web".into(),
            vip: Some("10.0.0.2".parse().unwrap()),
            aliases: vec![],
        };
        d.service("ing", "svc", Some(svc));
        let rec = TaskRec {
            service: "svc".into(),
            addr: "10.0.0.5".parse().unwrap(),
            name: "web.1.t1".into(),
        };
        d.task("ing", "t1", Some(rec));
        let scope = vec!["ing".to_string()];
        for name in ["web", "tasks.web", "web.1.t1"] {
            assert!(r.resolve(&scope, name).is_none(), "{name}");
        }
        assert_eq!(r.counts(), (0, 0, 0));
    }
}
