//! The tables as the executor sees them, materialized from chitchat's per-node states: only nodes
//! that are alive (and have not left) count, one generation per node id (the newest alive), and
//! every change becomes an event on the network's channel.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use chitchat::{Chitchat, ChitchatId};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::debug;

use crate::{Endpoint, Entry, Event, Member};

/// chitchat key of this node's VTEP.
pub(crate) const KEY_VTEP: &str = "vtep";
/// chitchat key set when the node leaves gracefully: its entries go at once.
pub(crate) const KEY_LEFT: &str = "left";
/// Prefix of endpoint keys: `ep/{network}/{endpoint id}`.
pub(crate) const EP_PREFIX: &str = "ep/";
/// Capacity of a network's event channel; a subscriber further behind gets a fresh snapshot.
pub(crate) const EVENT_CAPACITY: usize = 1024;

pub(crate) fn ep_key(network: &str, id: &str) -> String {
    format!("{EP_PREFIX}{network}/{id}")
}

/// The value stored under an endpoint key (network and id are in the key).
#[derive(Serialize, Deserialize)]
pub(crate) struct EpValue {
    #[serde(rename = "i")]
    pub ip: IpAddr,
    #[serde(rename = "m")]
    pub mac: String,
    #[serde(rename = "t", default, skip_serializing_if = "String::is_empty")]
    pub task: String,
    #[serde(rename = "s", default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(rename = "n", default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "a", default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(rename = "d", default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

pub(crate) fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

impl EpValue {
    pub fn from_endpoint(ep: &Endpoint) -> EpValue {
        EpValue {
            ip: ep.ip,
            mac: format_mac(&ep.mac),
            task: ep.task.clone(),
            service: ep.service.clone(),
            name: ep.name.clone(),
            aliases: ep.aliases.clone(),
            disabled: ep.disabled,
        }
    }
}

fn parse_endpoint(key: &str, value: &str) -> Option<Endpoint> {
    let rest = key.strip_prefix(EP_PREFIX)?;
    let (network, id) = rest.split_once('/')?;
    let v: EpValue = serde_json::from_str(value).ok()?;
    Some(Endpoint {
        id: id.to_string(),
        network: network.to_string(),
        ip: v.ip,
        mac: parse_mac(&v.mac)?,
        task: v.task,
        service: v.service,
        name: v.name,
        aliases: v.aliases,
        disabled: v.disabled,
    })
}

/// One node's entries, parsed once per version of its state.
pub(crate) struct NodeView {
    max_version: u64,
    left: bool,
    vtep: Option<IpAddr>,
    /// (network, endpoint id) -> endpoint
    endpoints: BTreeMap<(String, String), Endpoint>,
    /// Keys that did not parse (a peer of another version, or a bug).
    bad: usize,
}

impl NodeView {
    fn parse(state: &chitchat::NodeState) -> NodeView {
        let mut v = NodeView {
            max_version: state.max_version(),
            left: false,
            vtep: None,
            endpoints: BTreeMap::new(),
            bad: 0,
        };
        for (key, value) in state.key_values() {
            if key == KEY_VTEP {
                v.vtep = value.parse().ok();
            } else if key == KEY_LEFT {
                v.left = true;
            } else if key.starts_with(EP_PREFIX) {
                match parse_endpoint(key, value) {
                    Some(ep) => {
                        v.endpoints.insert((ep.network.clone(), ep.id.clone()), ep);
                    }
                    None => v.bad += 1,
                }
            }
        }
        v
    }
}

/// What the API reads; updated only by [`View::reconcile`].
#[derive(Default)]
pub(crate) struct View {
    /// Visible nodes: node id -> (its visible generation, parsed state).
    visible: BTreeMap<String, (ChitchatId, Arc<NodeView>)>,
    /// Parsed states by generation, reused while the version is unchanged.
    cache: HashMap<ChitchatId, Arc<NodeView>>,
    /// network -> (owner, endpoint id) -> endpoint
    networks: BTreeMap<String, BTreeMap<(String, String), Endpoint>>,
    members: Vec<Member>,
    subs: HashMap<String, broadcast::Sender<Event>>,
    /// Bumped on every visible change.
    pub generation: u64,
    pub bad_entries: usize,
}

/// A node's state moved forward from `from` to `max`: every key written in between, ready to
/// be pushed to peers as a chitchat delta.
#[derive(Debug, Clone)]
pub(crate) struct News {
    pub node_id: String,
    pub generation: u64,
    pub addr: SocketAddr,
    pub last_gc: u64,
    pub from: u64,
    pub max: u64,
    /// (key, value, version, status) in increasing version order.
    pub kvs: Vec<(String, String, u64, u8)>,
}

/// News larger than this is left to anti-entropy.
const MAX_NEWS_BYTES: usize = 8 * 1024;

fn news(id: &ChitchatId, state: &chitchat::NodeState, from: u64) -> Option<News> {
    let mut kvs = Vec::new();
    let mut bytes = 0;
    for (k, v) in state.key_values_including_deleted() {
        if v.version > from {
            bytes += k.len() + v.value.len() + 16;
            if bytes > MAX_NEWS_BYTES {
                return None;
            }
            let status = match v.status {
                chitchat::DeletionStatus::Set => 0,
                chitchat::DeletionStatus::Deleted(_) => 1,
                chitchat::DeletionStatus::DeleteAfterTtl(_) => 2,
            };
            kvs.push((k.to_string(), v.value.clone(), v.version, status));
        }
    }
    kvs.sort_by_key(|kv| kv.2);
    Some(News {
        node_id: id.node_id.to_string(),
        generation: id.generation_id,
        addr: id.gossip_advertise_addr,
        last_gc: state.last_gc_version(),
        from,
        max: state.max_version(),
        kvs,
    })
}

/// What one reconcile found.
#[derive(Default, Debug)]
pub(crate) struct Outcome {
    /// Anything visible changed (entries, VTEPs, members).
    pub changed: bool,
    /// Nodes whose state moved forward since the last look (this one's included).
    pub news: Vec<News>,
}

impl View {
    /// Recomputes the view from chitchat's state (the caller holds chitchat's lock) and
    /// publishes the differences.
    pub fn reconcile(&mut self, cc: &Chitchat) -> Outcome {
        let live: HashSet<&ChitchatId> = cc.live_nodes().collect();
        let mut out = Outcome::default();

        // Newest generation per node id, and membership.
        let mut newest: BTreeMap<&str, &ChitchatId> = BTreeMap::new();
        for id in cc.node_states().keys() {
            let e = newest.entry(&*id.node_id).or_insert(id);
            if id.generation_id > e.generation_id {
                *e = id;
            }
        }
        let mut visible: BTreeMap<String, (ChitchatId, Arc<NodeView>)> = BTreeMap::new();
        let mut members = Vec::with_capacity(newest.len());
        let mut cache: HashMap<ChitchatId, Arc<NodeView>> = HashMap::new();
        for (node_id, id) in newest {
            let alive = live.contains(id);
            let Some(state) = cc.node_state(id) else {
                continue;
            };
            let parsed = match self.cache.get(id) {
                Some(v) if v.max_version == state.max_version() => v.clone(),
                old => {
                    if let Some(o) = old
                        && o.max_version < state.max_version()
                        && let Some(n) = news(id, state, o.max_version)
                    {
                        out.news.push(n);
                    }
                    Arc::new(NodeView::parse(state))
                }
            };
            cache.insert(id.clone(), parsed.clone());
            let alive = alive && !parsed.left;
            members.push(Member {
                node_id: node_id.to_string(),
                addr: id.gossip_advertise_addr,
                generation: id.generation_id,
                alive,
                vtep: parsed.vtep,
            });
            if alive {
                visible.insert(node_id.to_string(), (id.clone(), parsed));
            }
        }
        self.cache = cache;
        self.bad_entries = self.cache.values().map(|v| v.bad).sum();
        if members != self.members {
            out.changed = true;
            self.members = members;
        }

        // Diff the visible entries node by node.
        let empty = BTreeMap::new();
        let owners: Vec<String> = self
            .visible
            .keys()
            .chain(visible.keys())
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for owner in owners {
            let old = self.visible.get(&owner).map(|(_, v)| v.clone());
            let new = visible.get(&owner).map(|(_, v)| v.clone());
            if let (Some(a), Some(b)) = (&old, &new)
                && Arc::ptr_eq(a, b)
            {
                continue;
            }
            let old_eps = old.as_ref().map(|v| &v.endpoints).unwrap_or(&empty);
            let new_eps = new.as_ref().map(|v| &v.endpoints).unwrap_or(&empty);
            for (k, ep) in old_eps {
                if !new_eps.contains_key(k) {
                    self.apply(&owner, ep.clone(), Change::Removed);
                    out.changed = true;
                }
            }
            for (k, ep) in new_eps {
                match old_eps.get(k) {
                    None => self.apply(&owner, ep.clone(), Change::Added),
                    Some(prev) if prev != ep => self.apply(&owner, ep.clone(), Change::Updated),
                    Some(_) => continue,
                }
                out.changed = true;
            }
        }
        self.visible = visible;
        if out.changed {
            self.generation += 1;
        }
        // Forget channels nobody listens to.
        self.subs.retain(|_, tx| tx.receiver_count() > 0);
        out
    }

    fn apply(&mut self, owner: &str, ep: Endpoint, change: Change) {
        let network = ep.network.clone();
        let key = (owner.to_string(), ep.id.clone());
        let table = self.networks.entry(network.clone()).or_default();
        match change {
            Change::Removed => {
                table.remove(&key);
                if table.is_empty() {
                    self.networks.remove(&network);
                }
            }
            Change::Added | Change::Updated => {
                table.insert(key, ep.clone());
            }
        }
        if let Some(tx) = self.subs.get(&network) {
            let entry = Entry {
                owner: owner.to_string(),
                endpoint: ep,
            };
            let event = match change {
                Change::Added => Event::Added(entry),
                Change::Updated => Event::Updated(entry),
                Change::Removed => Event::Removed(entry),
            };
            // No receiver left is fine: the sender is dropped at the next reconcile.
            let _ = tx.send(event);
            debug!(%network, "endpoint event sent");
        }
    }

    pub fn endpoints(&self, network: &str) -> Vec<Entry> {
        self.networks
            .get(network)
            .map(|t| {
                t.iter()
                    .map(|((owner, _), ep)| Entry {
                        owner: owner.clone(),
                        endpoint: ep.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn vteps(&self) -> BTreeMap<String, IpAddr> {
        self.visible
            .iter()
            .filter_map(|(n, (_, v))| v.vtep.map(|ip| (n.clone(), ip)))
            .collect()
    }

    pub fn members(&self) -> Vec<Member> {
        self.members.clone()
    }

    pub fn live_peer_addrs(&self, me: &str) -> Vec<SocketAddr> {
        self.members
            .iter()
            .filter(|m| m.alive && m.node_id != me)
            .map(|m| m.addr)
            .collect()
    }

    /// A receiver for the network's events and the table as of now (consistent: every event
    /// the receiver will see is newer than the snapshot).
    pub fn subscribe(&mut self, network: &str) -> (broadcast::Receiver<Event>, Vec<Entry>) {
        let rx = self
            .subs
            .entry(network.to_string())
            .or_insert_with(|| broadcast::channel(EVENT_CAPACITY).0)
            .subscribe();
        (rx, self.endpoints(network))
    }

    /// Closes every subscription (on shutdown).
    pub fn close(&mut self) {
        self.subs.clear();
    }
}

enum Change {
    Added,
    Updated,
    Removed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_values_roundtrip() {
        let ep = Endpoint {
            id: "e1".into(),
            network: "n1".into(),
            ip: "10.0.0.2".parse().unwrap(),
            mac: [2, 0x42, 10, 0, 0, 2],
            task: "t".into(),
            service: "".into(),
            name: "web.1".into(),
            aliases: vec!["web".into()],
            disabled: true,
        };
        let v = serde_json::to_string(&EpValue::from_endpoint(&ep)).unwrap();
        assert!(v.contains("02:42:0a:00:00:02"), "{v}");
        assert!(!v.contains("\"s\""), "empty fields are left out: {v}");
        assert_eq!(parse_endpoint(&ep_key("n1", "e1"), &v), Some(ep));
        assert_eq!(parse_endpoint("ep/n1", &v), None);
        assert_eq!(parse_endpoint("ep/n1/e1", "{"), None);
        assert_eq!(parse_mac("02:42:0a:00:00"), None);
        assert_eq!(parse_mac("02:42:0a:00:00:02:03"), None);
    }
}
