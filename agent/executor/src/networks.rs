//! The networks this node has endpoints on: their sandboxes (through the `vxlan` crate), the
//! subscription to each one's gossip endpoint table and the peers it gives, and this node's
//! load-balancer endpoint on each (a namespace `<prefix>lb-<network>` on the network's bridge
//! with the node's own address on the network, published so other nodes reach it). An ingress
//! network's is the ingress-sbox, one namespace `<prefix>lb-ingress` for every ingress network
//! (two while `ingress recreate --subnet` moves tasks), so its connections outlive a move.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use tokio::task::JoinHandle;
use tracing::{debug, warn};
use vxlan::Peer;

use crate::discovery;
use crate::node::{Config, Error, Ev, Executor};
use crate::plan::{self, LbPlace, RemoteEndpoint};

/// Infix of load-balancer namespaces: `<prefix>lb-<network id[..10]>`.
const LB_TAG: &str = "lb-";

/// What the executor knows of one network with endpoints on this node.
#[derive(Debug)]
pub(crate) struct NetRt {
    pub spec: vxlan::Network,
    /// The data plane was given this spec (`ensure_network`).
    pub known: bool,
    /// Forwards the network's gossip events to the executor; aborted when the network goes.
    sub: Option<JoinHandle<()>>,
    /// The network's endpoint table (every node's, this one's included), by endpoint id.
    pub entries: BTreeMap<String, gossip::Entry>,
    /// The peers last given to the data plane (by address), once given.
    pub peers: Option<BTreeMap<Ipv4Addr, Peer>>,
    /// This node's load-balancer endpoint, once made: its namespace, interface and address.
    pub lb: Option<LbPlace>,
    /// Whether this node's load-balancer endpoint is published on gossip (and with which address).
    pub lb_published: Option<Ipv4Addr>,
}

impl Drop for NetRt {
    fn drop(&mut self) {
        if let Some(h) = self.sub.take() {
            h.abort();
        }
    }
}

impl NetRt {
    /// The table as the planner takes it.
    pub fn remote(&self) -> Vec<RemoteEndpoint> {
        self.entries
            .values()
            .map(|e| RemoteEndpoint {
                owner: e.owner.clone(),
                ip: e.endpoint.ip,
                mac: e.endpoint.mac,
            })
            .collect()
    }
}

/// The load-balancer namespace of a network on this node.
pub(crate) fn lb_netns_name(prefix: &str, network: &str) -> String {
    let short: String = network.chars().take(10).collect();
    format!("{prefix}{LB_TAG}{short}")
}

/// The ingress-sbox: the load-balancer namespace of every ingress network on this node.
pub(crate) fn sbox_netns_name(prefix: &str) -> String {
    format!("{prefix}{LB_TAG}ingress")
}

/// Removes every load-balancer namespace this node made (after its endpoints went).
pub(crate) fn remove_lb_namespaces(config: &Config) -> netns::Result<()> {
    let prefix = format!("{}{LB_TAG}", config.netns_prefix);
    for name in netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
    {
        netns::delete(&name)?;
    }
    Ok(())
}

/// The peers of a network from its endpoint table: every other node's endpoint whose node has
/// a known VTEP.
pub(crate) fn peers_of(me: &str, n: &NetRt, vteps: &BTreeMap<String, IpAddr>) -> Vec<Peer> {
    let mut peers: Vec<Peer> = n
        .entries
        .values()
        .filter_map(|e| peer_of(me, e, vteps))
        .collect();
    peers.sort();
    peers.dedup_by_key(|p| p.ip);
    peers
}

/// The peer an endpoint entry makes: none for this node's own endpoints, IPv6 ones, or an
/// owner whose VTEP is not known.
fn peer_of(me: &str, e: &gossip::Entry, vteps: &BTreeMap<String, IpAddr>) -> Option<Peer> {
    if e.owner == me {
        return None;
    }
    let IpAddr::V4(ip) = e.endpoint.ip else {
        return None;
    };
    let Some(IpAddr::V4(vtep)) = vteps.get(&e.owner) else {
        return None;
    };
    Some(Peer {
        ip,
        mac: vxlan::Mac(e.endpoint.mac),
        vtep: *vtep,
    })
}

/// The peer at one address, as [`peers_of`] would have it (the least of the entries there).
fn peer_at(me: &str, n: &NetRt, vteps: &BTreeMap<String, IpAddr>, ip: Ipv4Addr) -> Option<Peer> {
    n.entries
        .values()
        .filter(|e| e.endpoint.ip == IpAddr::V4(ip))
        .filter_map(|e| peer_of(me, e, vteps))
        .min()
}

fn by_ip(peers: Vec<Peer>) -> BTreeMap<Ipv4Addr, Peer> {
    peers.into_iter().map(|p| (p.ip, p)).collect()
}

impl Executor {
    /// The network's stored object as the data plane wants it.
    pub(crate) fn network_spec(&self, id: &str) -> Option<vxlan::Network> {
        self.a
            .networks
            .iter()
            .find(|n| n.meta.id == id)
            .and_then(plan::network)
    }

    /// Whether a network of the assignments is an ingress network (its load-balancer
    /// namespace is the ingress-sbox).
    pub(crate) fn is_ingress(&self, network: &str) -> bool {
        self.a
            .networks
            .iter()
            .any(|n| n.meta.id == network && n.spec.ingress)
    }

    /// The name of a network's load-balancer namespace on this node.
    pub(crate) fn lb_ns_name(&self, network: &str) -> String {
        if self.is_ingress(network) {
            sbox_netns_name(&self.config.netns_prefix)
        } else {
            lb_netns_name(&self.config.netns_prefix, network)
        }
    }

    /// This node's load-balancer endpoint on a network: where it lives and its address (None
    /// until the leader gave the node one).
    pub(crate) fn lb_want(&self, network: &str) -> Option<LbPlace> {
        let a = self
            .a
            .attachments
            .iter()
            .find(|a| a.network_id == network)?;
        let IpAddr::V4(addr) = a.addresses.first()?.addr() else {
            return None;
        };
        let spec = self.network_spec(network)?;
        Some(LbPlace {
            netns: Path::new(netns::NETNS_RUN_DIR).join(self.lb_ns_name(network)),
            ifname: plan::lb_ifname(&spec, self.is_ingress(network)),
            addr,
        })
    }

    /// Starts following a network's endpoint table (once): waits for the table as the nodes
    /// that hold it have it (gossip fetches it on subscription, for at most its failure
    /// timeout), then changes come as events. Names, backends and peers are computed from a
    /// whole table, never from the part a restarted node happens to have.
    pub(crate) async fn subscribe(&mut self, id: &str) {
        let Some(spec) = self.network_spec(id) else {
            return;
        };
        if let Some(n) = self.nets.get_mut(id) {
            n.spec = spec;
            return;
        }
        let mut sub = self.gossip.subscribe(id);
        let entries = match sub.recv().await {
            Some(gossip::Event::Resync(all)) => all,
            _ => self.gossip.endpoints(id),
        }
        .into_iter()
        .map(|e| (e.endpoint.id.clone(), e))
        .collect();
        let tx = self.tx.clone();
        let net = id.to_string();
        let handle = tokio::spawn(async move {
            while let Some(ev) = sub.recv().await {
                if tx.send(Ev::Gossip(net.clone(), ev)).is_err() {
                    break;
                }
            }
        });
        self.nets.insert(
            id.to_string(),
            NetRt {
                spec,
                known: false,
                sub: Some(handle),
                entries,
                peers: None,
                lb: None,
                lb_published: None,
            },
        );
        let (name, ingress) = self
            .a
            .networks
            .iter()
            .find(|n| n.meta.id == id)
            .map(|n| (n.spec.name.clone(), n.spec.ingress))
            .unwrap_or_else(|| (id.to_string(), false));
        self.disc.network(id, Some((&name, ingress)));
        self.sync_records(id);
    }

    /// Whether a gossip entry's owner still counts for names and backends: alive, or silent
    /// but not marked down by the leader (its tasks not rescheduled) and still in the cluster.
    pub(crate) fn owner_counts(&self, e: &gossip::Entry) -> bool {
        if e.owner == self.config.node_id || self.a.nodes.is_empty() {
            return true;
        }
        match self.a.nodes.iter().find(|(id, _)| *id == e.owner) {
            Some((_, down)) => e.owner_alive || !down,
            None => false,
        }
    }

    /// Every service and task record of a present network, as they should be now.
    pub(crate) fn sync_records(&mut self, id: &str) {
        let services = self
            .a
            .services
            .iter()
            .filter_map(|s| Some((s.meta.id.clone(), discovery::service_record(s, id)?)))
            .collect();
        self.disc.services(id, services);
        let tasks = self
            .nets
            .get(id)
            .map(|n| {
                n.entries
                    .values()
                    .filter_map(|e| {
                        let rec = discovery::task_record(e, self.owner_counts(e))?;
                        Some((e.endpoint.task.clone(), rec))
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.disc.tasks(id, tasks);
    }

    /// A service changed (or went): its record on every present network.
    pub(crate) fn service_changed(&mut self, id: &str) {
        let svc = self.a.services.iter().find(|s| s.meta.id == id).cloned();
        let nets: Vec<String> = self.nets.keys().cloned().collect();
        for net in nets {
            let rec = svc
                .as_ref()
                .and_then(|s| discovery::service_record(s, &net));
            self.disc.service(&net, id, rec);
        }
    }

    /// The cluster's node list changed (a node marked down, or removed): which tasks count;
    /// gossip forgets removed nodes (their entries and VTEP go everywhere at once).
    pub(crate) async fn owners_changed(&mut self, before: &[(String, bool)]) {
        if !self.a.nodes.is_empty() {
            for (id, _) in before {
                if !self.a.nodes.iter().any(|(n, _)| n == id) && *id != self.config.node_id {
                    tracing::info!(node = %id, "node removed from the cluster: forgetting its endpoints");
                    self.gossip.forget(id).await;
                }
            }
        }
        let nets: Vec<String> = self.nets.keys().cloned().collect();
        for net in nets {
            self.sync_records(&net);
        }
    }

    /// Makes a network ready for endpoints: subscribed, known to the data plane, its
    /// load-balancer endpoint and peers in place.
    pub(crate) async fn ensure_network(&mut self, id: &str) -> Result<(), Error> {
        self.subscribe(id).await;
        let Some(n) = self.nets.get(id) else {
            return Err(Error::Dataplane(format!(
                "network {id} is not in this node's assignments (or has no IPv4 subnet)"
            )));
        };
        if !n.known {
            let spec = n.spec.clone();
            let port = self.a.data_path_port;
            self.plane
                .call(port, move |dp| dp.ensure_network(&spec))
                .await?;
            if let Some(n) = self.nets.get_mut(id) {
                n.known = true;
            }
        }
        self.ensure_lb(id).await?;
        self.sync_peers(id).await
    }

    /// This node's load-balancer endpoint on the network, as the assignments say.
    async fn ensure_lb(&mut self, id: &str) -> Result<(), Error> {
        let want = self.lb_want(id);
        let have = self.nets.get(id).and_then(|n| n.lb.clone());
        if want == have {
            return self.publish_lb(id).await;
        }
        let port = self.a.data_path_port;
        if let Some(old) = have {
            let net = id.to_string();
            self.plane
                .call(port, move |dp| {
                    dp.remove_endpoint(&net, &old.netns, &old.ifname)
                })
                .await?;
        }
        if let Some(lb) = &want {
            let name = self.lb_ns_name(id);
            let existed = netns::exists(&name);
            let nsname = name.clone();
            tokio::task::spawn_blocking(move || netns::NetNs::ensure(&nsname))
                .await
                .map_err(|e| Error::Dataplane(e.to_string()))?
                .map_err(|e| Error::Dataplane(format!("load-balancer namespace {name}: {e}")))?;
            if !existed {
                self.writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let ep = vxlan::Endpoint {
                network: id.to_string(),
                netns: lb.netns.clone(),
                ifname: lb.ifname.clone(),
                address: lb.addr,
                mac: None,
            };
            self.plane
                .call(port, move |dp| dp.ensure_endpoint(&ep))
                .await?;
        }
        if let Some(n) = self.nets.get_mut(id) {
            n.lb = want;
        }
        let balanced = self.balanced_network(id);
        self.disc.lb_network(id, balanced);
        self.publish_lb(id).await
    }

    /// What the load balancer needs of a network: its load-balancer namespace on this node and
    /// the node's address there (None until both exist).
    pub(crate) fn balanced_network(&self, id: &str) -> Option<ipvs::NetworkLb> {
        let n = self.nets.get(id)?;
        let lb = n.lb.clone()?;
        Some(ipvs::NetworkLb {
            id: id.to_string(),
            netns: lb.netns,
            iface: lb.ifname,
            addr: lb.addr,
            subnet: n.spec.subnet,
        })
    }

    /// Gives the load balancer every network as it is now (after a full pass).
    pub(crate) fn balance_networks(&mut self) {
        let ids: Vec<String> = self.nets.keys().cloned().collect();
        for id in ids {
            let want = self.balanced_network(&id);
            self.disc.lb_network(&id, want);
        }
    }

    /// Publishes (or withdraws) this node's load-balancer endpoint: a disabled entry, so it is a
    /// peer everywhere but never a name or a backend.
    async fn publish_lb(&mut self, id: &str) -> Result<(), Error> {
        let Some(n) = self.nets.get(id) else {
            return Ok(());
        };
        let want = n.lb.as_ref().map(|l| l.addr);
        if want == n.lb_published {
            return Ok(());
        }
        let ep_id = format!("lb-{}", self.config.node_id);
        let r = match want {
            Some(addr) => {
                self.gossip
                    .publish_endpoint(gossip::Endpoint {
                        id: ep_id,
                        network: id.to_string(),
                        ip: IpAddr::V4(addr),
                        mac: vxlan::Mac::for_ip(addr).0,
                        task: String::new(),
                        service: String::new(),
                        name: String::new(),
                        aliases: Vec::new(),
                        disabled: true,
                    })
                    .await
            }
            None => self.gossip.withdraw_endpoint(id, &ep_id).await.map(|_| ()),
        };
        match r {
            Ok(()) => {
                if let Some(n) = self.nets.get_mut(id) {
                    n.lb_published = want;
                }
            }
            Err(e) => {
                warn!(network = %id, error = %e, "could not publish the load-balancer endpoint")
            }
        }
        Ok(())
    }

    /// Gives the data plane the network's peers if they changed (and gossip had its chance).
    pub(crate) async fn sync_peers(&mut self, id: &str) -> Result<(), Error> {
        if !self.gossip_ready() {
            return Ok(());
        }
        let me = self.config.node_id.clone();
        let vteps = self.gossip.vteps();
        let Some(n) = self.nets.get(id) else {
            return Ok(());
        };
        let peers = peers_of(&me, n, &vteps);
        if n.peers
            .as_ref()
            .is_some_and(|have| have.values().eq(peers.iter()))
        {
            return Ok(());
        }
        let port = self.a.data_path_port;
        let (net, p) = (id.to_string(), peers.clone());
        let changes = self
            .plane
            .call(port, move |dp| dp.set_peers(&net, &p))
            .await?;
        debug!(network = %id, ?changes, "peers");
        if let Some(n) = self.nets.get_mut(id) {
            n.peers = Some(by_ip(peers));
        }
        Ok(())
    }

    /// After a change of the endpoint table at some addresses: gives the data plane the peers
    /// there, and nothing else (the whole set first, if it has none yet). What it costs is the
    /// change, whatever the size of the network.
    async fn sync_peers_at(&mut self, id: &str, ips: BTreeSet<Ipv4Addr>) -> Result<(), Error> {
        if !self.gossip_ready() {
            return Ok(());
        }
        let Some(n) = self.nets.get(id) else {
            return Ok(());
        };
        let Some(have) = &n.peers else {
            return self.sync_peers(id).await;
        };
        let vteps = self.gossip.vteps();
        let changes: Vec<(Ipv4Addr, Option<Peer>)> = ips
            .into_iter()
            .map(|ip| (ip, peer_at(&self.config.node_id, n, &vteps, ip)))
            .filter(|(ip, want)| have.get(ip) != want.as_ref())
            .collect();
        if changes.is_empty() {
            return Ok(());
        }
        let port = self.a.data_path_port;
        let (net, c) = (id.to_string(), changes.clone());
        let changed = self
            .plane
            .call(port, move |dp| dp.update_peers(&net, &c))
            .await?;
        debug!(network = %id, ?changed, "peers");
        if let Some(have) = self.nets.get_mut(id).and_then(|n| n.peers.as_mut()) {
            for (ip, want) in changes {
                match want {
                    Some(p) => have.insert(ip, p),
                    None => have.remove(&ip),
                };
            }
        }
        Ok(())
    }

    /// A change in a network's endpoint table.
    pub(crate) async fn on_gossip(&mut self, id: &str, ev: gossip::Event) {
        let Some(n) = self.nets.get_mut(id) else {
            return;
        };
        let v4 = |ip: IpAddr| match ip {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        };
        // The addresses whose peer may have changed (None: the whole table).
        let touched: Option<BTreeSet<Ipv4Addr>> = match ev {
            gossip::Event::Resync(all) => {
                n.entries = all
                    .into_iter()
                    .map(|e| (e.endpoint.id.clone(), e))
                    .collect();
                self.sync_records(id);
                None
            }
            gossip::Event::Added(e) | gossip::Event::Updated(e) => {
                let old = n.entries.insert(e.endpoint.id.clone(), e.clone());
                if !e.endpoint.task.is_empty() {
                    let rec = discovery::task_record(&e, self.owner_counts(&e));
                    self.disc.task(id, &e.endpoint.task, rec);
                }
                let old = old.and_then(|o| v4(o.endpoint.ip));
                Some(old.into_iter().chain(v4(e.endpoint.ip)).collect())
            }
            gossip::Event::Removed(e) => {
                n.entries.remove(&e.endpoint.id);
                if !e.endpoint.task.is_empty() {
                    self.disc.task(id, &e.endpoint.task, None);
                }
                Some(v4(e.endpoint.ip).into_iter().collect())
            }
        };
        let r = match touched {
            Some(ips) => self.sync_peers_at(id, ips).await,
            None => self.sync_peers(id).await,
        };
        if let Err(e) = r {
            self.retry_later(&format!("peers of network {id}"), &e);
        }
        if self.ingress_nets().iter().any(|n| n == id) {
            self.sync_ingress_or_retry().await;
        }
    }

    /// VTEPs (or membership) changed: peers of every network may have.
    pub(crate) async fn on_vteps(&mut self) {
        let vteps = self.gossip.vteps();
        if vteps == self.vteps {
            return;
        }
        self.vteps = vteps;
        let ids: Vec<String> = self.nets.keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.sync_peers(&id).await {
                self.retry_later(&format!("peers of network {id}"), &e);
            }
        }
    }

    /// Whether any task of this node still has (or is to have) an endpoint on the network.
    fn network_in_use(&self, id: &str) -> bool {
        self.ingress_nets().iter().any(|n| n == id)
            || self.tasks.values().any(|r| {
                r.local
                    .as_ref()
                    .is_some_and(|l| l.attachments.iter().any(|(n, _)| n == id))
            })
    }

    /// Looks at one network again: kept while tasks here use it (spec, load-balancer endpoint,
    /// peers), removed with everything of it otherwise.
    pub(crate) async fn reconcile_network(&mut self, id: &str) {
        let r = if self.network_in_use(id) {
            if let (Some(spec), Some(n)) = (self.network_spec(id), self.nets.get_mut(id))
                && n.spec != spec
            {
                n.spec = spec;
                n.known = false;
            }
            self.ensure_network(id).await
        } else {
            self.forget_network(id).await
        };
        if let Err(e) = r {
            self.retry_later(&format!("network {id}"), &e);
        }
    }

    /// Removes everything of a network on this node: load-balancer endpoint and namespace,
    /// sandbox, subscription.
    pub(crate) async fn forget_network(&mut self, id: &str) -> Result<(), Error> {
        let Some(n) = self.nets.get(id) else {
            return Ok(());
        };
        let lb = n.lb.clone();
        // Its VIPs leave the load balancer before the namespace they live in goes.
        self.disc.lb_network(id, None);
        let port = self.a.data_path_port;
        if let Some(old) = lb.clone() {
            let net = id.to_string();
            self.plane
                .call(port, move |dp| {
                    dp.remove_endpoint(&net, &old.netns, &old.ifname)
                })
                .await?;
        }
        // The namespace goes unless another network's endpoint lives there too (the sbox while
        // an ingress network is retired).
        // Where it was made (the network may have left the assignments already).
        let name = lb
            .as_ref()
            .and_then(|l| l.netns.file_name())
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| lb_netns_name(&self.config.netns_prefix, id));
        let shared = self.nets.iter().any(|(other, n)| {
            other != id && n.lb.as_ref().is_some_and(|l| l.netns.ends_with(&name))
        });
        if !shared && netns::exists(&name) {
            let n2 = name.clone();
            tokio::task::spawn_blocking(move || netns::delete(&n2))
                .await
                .map_err(|e| Error::Dataplane(e.to_string()))?
                .map_err(|e| Error::Dataplane(format!("remove {name}: {e}")))?;
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(n) = self.nets.get_mut(id) {
            n.lb = None;
        }
        self.publish_lb(id).await?;
        let net = id.to_string();
        self.plane
            .call(port, move |dp| dp.remove_network(&net))
            .await?;
        self.nets.remove(id);
        self.disc.network(id, None);
        debug!(network = %id, "network removed from this node");
        Ok(())
    }

    /// Makes the load-balancer namespaces a full pass's desired plane needs (their endpoints
    /// are part of the plane).
    pub(crate) async fn lb_namespaces(&mut self) -> Result<(), Error> {
        let ids: Vec<String> = self.nets.keys().cloned().collect();
        for id in ids {
            if self.lb_want(&id).is_none() {
                continue;
            }
            let name = self.lb_ns_name(&id);
            if netns::exists(&name) {
                continue;
            }
            let n2 = name.clone();
            tokio::task::spawn_blocking(move || netns::NetNs::ensure(&n2))
                .await
                .map_err(|e| Error::Dataplane(e.to_string()))?
                .map_err(|e| Error::Dataplane(format!("load-balancer namespace {name}: {e}")))?;
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Removes load-balancer namespaces of networks no task here uses (left by an earlier
    /// process, whose endpoints the full pass removed).
    pub(crate) async fn remove_stale_lb_namespaces(
        &mut self,
        used: &std::collections::BTreeSet<String>,
    ) -> Result<(), Error> {
        let keep: Vec<String> = used.iter().map(|n| self.lb_ns_name(n)).collect();
        let prefix = format!("{}{LB_TAG}", self.config.netns_prefix);
        let stale: Vec<String> = netns::list()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(&prefix) && !keep.contains(n))
            .collect();
        for name in stale {
            let n2 = name.clone();
            tokio::task::spawn_blocking(move || netns::delete(&n2))
                .await
                .map_err(|e| Error::Dataplane(e.to_string()))?
                .map_err(|e| Error::Dataplane(format!("remove {name}: {e}")))?;
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// After a full pass applied the plane: what it holds now.
    pub(crate) fn plane_applied(&mut self) {
        let me = self.config.node_id.clone();
        let vteps = self.gossip.vteps();
        let ids: Vec<String> = self.nets.keys().cloned().collect();
        for id in ids {
            let lb = self.lb_want(&id);
            if let Some(n) = self.nets.get_mut(&id) {
                n.known = true;
                n.lb = lb;
                n.peers = Some(by_ip(peers_of(&me, n, &vteps)));
            }
        }
        self.vteps = vteps;
    }

    /// Publishes every network's load-balancer endpoint (after a full pass).
    pub(crate) async fn publish_lbs(&mut self) {
        let ids: Vec<String> = self.nets.keys().cloned().collect();
        for id in ids {
            let _ = self.publish_lb(&id).await;
        }
    }
}
