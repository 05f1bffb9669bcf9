//! Published ports of the routing mesh: which service holds which port (cluster-wide, since the
//! mesh opens an ingress-mode port on every node), and the allocation of omitted published ports
//! from docker's dynamic range 30000-32767.
//!
//! The index is built once from the state and kept in step with it service by service
//! ([`PublishedPorts::update`]), like the IPAM: the leader decides from it under its lock, so
//! two services never get the same port even before the store has recorded the first.
//! Host-mode ports are not reserved cluster-wide: they open only where a task runs, and a clash
//! there is the node's to report (the second task stays pending).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;

use model::Service;
use model::service::{PortConfig, Protocol, PublishMode};

use crate::ClusterState;

/// Where omitted published ports come from (docker's, swarmkit's portallocator).
pub const DYNAMIC_PORTS: RangeInclusive<u16> = 30000..=32767;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error(
        "port {port}/{protocol} is already published by service {service}: publish another port, or remove it from {service} first (`netctl service update --publish-rm {port} {service}`)"
    )]
    InUse {
        port: u16,
        protocol: &'static str,
        service: String,
    },
    #[error("port {port}/{protocol} is published twice by this service: publish it once")]
    Duplicate { port: u16, protocol: &'static str },
    #[error(
        "no free port left in 30000-32767 for {target}/{protocol}: give the published port (--publish PUBLISHED:{target})"
    )]
    Exhausted { target: u16, protocol: &'static str },
    #[error(
        "a port published in host mode needs its published port: give it (--publish mode=host,published=PORT,target={target})"
    )]
    HostWithoutPort { target: u16 },
}

pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// The ingress-mode ports every service holds (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct PublishedPorts {
    holder: BTreeMap<(Protocol, u16), String>,
    /// Services holding at least one ingress-mode port.
    publishing: BTreeSet<String>,
}

fn ingress_ports(s: &Service) -> impl Iterator<Item = (Protocol, u16)> + '_ {
    s.ports
        .iter()
        .filter(|p| p.mode == PublishMode::Ingress && p.published != 0)
        .map(|p| (p.protocol, p.published))
}

impl PublishedPorts {
    pub fn from_state(state: &ClusterState) -> PublishedPorts {
        let mut p = PublishedPorts::default();
        for s in state.services.values() {
            p.update(None, Some(s));
        }
        p
    }

    /// Keeps the index in step with one service's change (`None` = absent).
    pub fn update(&mut self, old: Option<&Service>, new: Option<&Service>) {
        if let Some(s) = old {
            for k in ingress_ports(s) {
                if self.holder.get(&k) == Some(&s.meta.id) {
                    self.holder.remove(&k);
                }
            }
            self.publishing.remove(&s.meta.id);
        }
        if let Some(s) = new {
            for k in ingress_ports(s) {
                self.holder.insert(k, s.meta.id.clone());
            }
            if ingress_ports(s).next().is_some() {
                self.publishing.insert(s.meta.id.clone());
            }
        }
    }

    /// Whether any service publishes a port through the routing mesh (every node then needs
    /// its ingress endpoint).
    pub fn any(&self) -> bool {
        !self.publishing.is_empty()
    }

    /// The service holding a port, if any.
    pub fn holder(&self, protocol: Protocol, port: u16) -> Option<&str> {
        self.holder.get(&(protocol, port)).map(String::as_str)
    }

    /// Sets `service.ports` from its spec: published ports as given (refused when another
    /// service holds them), omitted ones kept from the previous allocation or given the lowest
    /// free port of 30000-32767. Nothing is reserved until the service is recorded.
    pub fn allocate(&self, state: &ClusterState, service: &mut Service) -> Result<(), PortError> {
        let id = service.meta.id.as_str();
        let taken_by_other = |k: &(Protocol, u16)| {
            self.holder
                .get(k)
                .filter(|h| h.as_str() != id)
                .map(|h| name_of(state, h))
        };
        let mut out: Vec<PortConfig> = Vec::new();
        let mut mine: BTreeSet<(Protocol, u16, PublishMode)> = BTreeSet::new();
        // Explicit ports first, so a dynamic one never takes a port the spec names.
        for p in &service.spec.endpoint.ports {
            if p.published == 0 {
                if p.mode == PublishMode::Host {
                    return Err(PortError::HostWithoutPort { target: p.target });
                }
                continue;
            }
            let k = (p.protocol, p.published);
            if !mine.insert((p.protocol, p.published, p.mode)) {
                return Err(PortError::Duplicate {
                    port: p.published,
                    protocol: protocol_name(p.protocol),
                });
            }
            if p.mode == PublishMode::Ingress
                && let Some(service) = taken_by_other(&k)
            {
                return Err(PortError::InUse {
                    port: p.published,
                    protocol: protocol_name(p.protocol),
                    service,
                });
            }
        }
        let explicit: BTreeSet<(Protocol, u16)> = mine
            .iter()
            .map(|(proto, port, _)| (*proto, *port))
            .collect();
        let mut given: BTreeSet<(Protocol, u16)> = BTreeSet::new();
        for p in &service.spec.endpoint.ports {
            if p.published != 0 {
                out.push(p.clone());
                continue;
            }
            let free = |k: &(Protocol, u16)| {
                !explicit.contains(k) && !given.contains(k) && taken_by_other(k).is_none()
            };
            // The port this target had before, when it is still free for it.
            let kept = service
                .ports
                .iter()
                .filter(|o| {
                    o.target == p.target
                        && o.protocol == p.protocol
                        && o.mode == PublishMode::Ingress
                        && DYNAMIC_PORTS.contains(&o.published)
                })
                .map(|o| (o.protocol, o.published))
                .find(|k| free(k));
            let k = match kept {
                Some(k) => k,
                None => DYNAMIC_PORTS
                    .map(|port| (p.protocol, port))
                    .find(|k| free(k))
                    .ok_or(PortError::Exhausted {
                        target: p.target,
                        protocol: protocol_name(p.protocol),
                    })?,
            };
            given.insert(k);
            out.push(PortConfig {
                published: k.1,
                ..p.clone()
            });
        }
        service.ports = out;
        Ok(())
    }
}

fn name_of(state: &ClusterState, id: &str) -> String {
    state
        .services
        .get(id)
        .map(|s| s.spec.name.clone())
        .unwrap_or_else(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::Meta;
    use model::service::{EndpointSpec, ServiceMode, ServiceSpec};

    fn port(published: u16, target: u16, protocol: Protocol, mode: PublishMode) -> PortConfig {
        PortConfig {
            published,
            target,
            protocol,
            mode,
        }
    }

    fn service(name: &str, ports: Vec<PortConfig>) -> Service {
        Service {
            meta: Meta::new(),
            spec: ServiceSpec {
                name: name.into(),
                labels: Default::default(),
                mode: ServiceMode::Replicated { replicas: 1 },
                task: Default::default(),
                networks: vec![],
                endpoint: EndpointSpec {
                    ports,
                    ..Default::default()
                },
                update: Default::default(),
            },
            virtual_ips: vec![],
            ports: vec![],
        }
    }

    fn record(state: &mut ClusterState, p: &mut PublishedPorts, s: Service) {
        let old = state.services.get(&s.meta.id).cloned();
        p.update(old.as_ref(), Some(&s));
        state.services.insert(s.meta.id.clone(), s);
    }

    #[test]
    fn explicit_dynamic_kept_and_refused() {
        let (tcp, udp, ing, host) = (
            Protocol::Tcp,
            Protocol::Udp,
            PublishMode::Ingress,
            PublishMode::Host,
        );
        let mut state = ClusterState::default();
        let mut p = PublishedPorts::default();
        assert!(!p.any());
        let mut web = service(
            "web",
            vec![
                port(8080, 80, tcp, ing),
                port(0, 81, tcp, ing),
                port(0, 53, udp, ing),
            ],
        );
        p.allocate(&state, &mut web).unwrap();
        let published: Vec<u16> = web.ports.iter().map(|p| p.published).collect();
        assert_eq!(published, [8080, 30000, 30000]);
        record(&mut state, &mut p, web.clone());
        assert!(p.any());
        assert_eq!(p.holder(tcp, 8080), Some(web.meta.id.as_str()));

        // Another service: 8080/tcp is web's, 8080/udp is free, dynamic skips 30000/tcp.
        let mut api = service("api", vec![port(8080, 80, tcp, ing)]);
        let e = p.allocate(&state, &mut api).unwrap_err();
        assert!(
            e.to_string().contains("already published by service web"),
            "{e}"
        );
        let mut api = service("api", vec![port(8080, 80, udp, ing), port(0, 9, tcp, ing)]);
        p.allocate(&state, &mut api).unwrap();
        assert_eq!(api.ports[1].published, 30001);
        // Host mode is not reserved cluster-wide, but needs its port.
        let mut h = service("h", vec![port(8080, 80, tcp, host)]);
        p.allocate(&state, &mut h).unwrap();
        let mut h = service("h", vec![port(0, 80, tcp, host)]);
        assert!(matches!(
            p.allocate(&state, &mut h),
            Err(PortError::HostWithoutPort { target: 80 })
        ));
        let mut d = service("d", vec![port(1, 80, tcp, ing), port(1, 81, tcp, ing)]);
        assert!(matches!(
            p.allocate(&state, &mut d),
            Err(PortError::Duplicate { port: 1, .. })
        ));

        // An update keeps the dynamic port of a target; a removal frees the port.
        let mut web2 = web.clone();
        web2.spec.endpoint.ports.remove(0);
        p.allocate(&state, &mut web2).unwrap();
        assert_eq!(web2.ports[0].published, 30000);
        record(&mut state, &mut p, web2.clone());
        assert_eq!(p.holder(tcp, 8080), None);
        p.update(Some(&web2), None);
        state.services.remove(&web2.meta.id);
        assert!(!p.any());
    }

    #[test]
    fn exhausted_range_is_an_error() {
        let mut state = ClusterState::default();
        let mut p = PublishedPorts::default();
        let all: Vec<PortConfig> = DYNAMIC_PORTS
            .map(|n| port(n, 80, Protocol::Tcp, PublishMode::Ingress))
            .collect();
        let mut big = service("big", all);
        p.allocate(&state, &mut big).unwrap();
        record(&mut state, &mut p, big);
        let mut s = service("s", vec![port(0, 80, Protocol::Tcp, PublishMode::Ingress)]);
        let e = p.allocate(&state, &mut s).unwrap_err();
        assert!(e.to_string().contains("no free port left"), "{e}");
    }
}
