//! Eager push: a change goes at once to `push_fanout` random live peers (holders of its
//! network, or everyone for records); a peer that applies something new passes it on, once.
//! Changes arriving while a push is under way are coalesced into the next one, at most one
//! push per cooldown; when the queue is full a change is left to anti-entropy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use rand::seq::SliceRandom;
use tokio::sync::mpsc;

use crate::api::Inner;
use crate::codec::{Body, OwnerDelta, Record, TableDelta};
use crate::store::PushJob;
use crate::sync::split_push;

/// Merges deltas of one owner whose version ranges touch or overlap (newest item per id).
fn merge_deltas(mut deltas: Vec<OwnerDelta>) -> Vec<OwnerDelta> {
    deltas.sort_by(|a, b| (&a.owner, a.since).cmp(&(&b.owner, b.since)));
    let mut out: Vec<OwnerDelta> = Vec::new();
    for d in deltas {
        match out.last_mut() {
            Some(m) if m.owner == d.owner && d.since <= m.max => {
                m.max = m.max.max(d.max);
                for item in d.items {
                    match m.items.iter_mut().find(|i| i.id == item.id) {
                        Some(cur) if cur.version >= item.version => {}
                        Some(cur) => *cur = item,
                        None => m.items.push(item),
                    }
                }
            }
            _ => out.push(d),
        }
    }
    for d in &mut out {
        d.items.sort_by_key(|i| i.version);
    }
    out
}

/// One network's part of a batch: deltas, who not to send them to, the first pusher.
type NetBatch = (Vec<OwnerDelta>, Vec<Arc<str>>, Arc<str>);

/// Groups a batch of jobs: records (newest per node), and deltas per network.
struct Batch {
    records: BTreeMap<Arc<str>, Record>,
    records_exclude: Vec<Arc<str>>,
    records_origin: Option<Arc<str>>,
    nets: BTreeMap<String, NetBatch>,
}

fn group(jobs: Vec<PushJob>) -> Batch {
    let mut b = Batch {
        records: BTreeMap::new(),
        records_exclude: Vec::new(),
        records_origin: None,
        nets: BTreeMap::new(),
    };
    for j in jobs {
        match j.net {
            None => {
                for r in j.records {
                    match b.records.get(&r.node) {
                        Some(cur) if (cur.generation, cur.version) >= (r.generation, r.version) => {
                        }
                        _ => {
                            b.records.insert(r.node.clone(), r);
                        }
                    }
                }
                b.records_exclude.extend(j.exclude);
                b.records_origin.get_or_insert(j.origin);
            }
            Some(net) => {
                let e = b
                    .nets
                    .entry(net)
                    .or_insert_with(|| (Vec::new(), Vec::new(), j.origin.clone()));
                e.0.extend(j.deltas);
                e.1.extend(j.exclude);
            }
        }
    }
    b
}

pub(crate) async fn push_loop(inner: Arc<Inner>, mut rx: mpsc::Receiver<PushJob>) {
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut jobs = vec![first];
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
        }
        let batch = group(jobs);
        let sends: Vec<(SocketAddr, crate::codec::Message)> = {
            let mut st = inner.lock();
            if st.closed {
                return;
            }
            let fanout = st.timings.push_fanout;
            let mut sends = Vec::new();
            let pick = |st: &mut crate::node::State,
                        mut peers: Vec<Arc<str>>,
                        exclude: &[Arc<str>]|
             -> Vec<SocketAddr> {
                peers.retain(|p| !exclude.contains(p));
                peers.shuffle(&mut st.rng);
                peers
                    .into_iter()
                    .take(fanout)
                    .filter_map(|p| st.peer_addr(&p))
                    .collect()
            };
            if !batch.records.is_empty() {
                let peers = st.reachable_peers();
                let to = pick(&mut st, peers, &batch.records_exclude);
                let origin = batch
                    .records_origin
                    .clone()
                    .unwrap_or_else(|| st.me.node.clone());
                let records: Vec<Record> = batch.records.into_values().collect();
                for p in split_push(origin, records, Vec::new()) {
                    let msg = st.message(Body::Push(p));
                    sends.extend(to.iter().map(|a| (*a, msg.clone())));
                }
            }
            for (net, (deltas, exclude, origin)) in batch.nets {
                let peers = st.reachable_holders(&net);
                let to = pick(&mut st, peers, &exclude);
                if to.is_empty() {
                    continue;
                }
                let tables = vec![TableDelta {
                    net,
                    owners: merge_deltas(deltas),
                }];
                for p in split_push(origin.clone(), Vec::new(), tables) {
                    let msg = st.message(Body::Push(p));
                    sends.extend(to.iter().map(|a| (*a, msg.clone())));
                }
            }
            sends
        };
        if !sends.is_empty() {
            inner.send_all(sends).await;
            crate::transport::add(&inner.shared.counters.eager_pushes, 1);
        }
        tokio::time::sleep(inner.timings.push_cooldown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::WireItem;

    fn d(since: u64, max: u64, ids: &[(&str, u64)]) -> OwnerDelta {
        OwnerDelta {
            owner: "a".into(),
            since,
            max,
            items: ids
                .iter()
                .map(|(id, v)| WireItem {
                    id: id.to_string(),
                    version: *v,
                    value: None,
                })
                .collect(),
        }
    }

    #[test]
    fn contiguous_deltas_merge_and_gaps_stay_apart() {
        let m = merge_deltas(vec![
            d(2, 3, &[("x", 3)]),
            d(0, 2, &[("x", 1), ("y", 2)]),
            d(9, 10, &[("z", 10)]),
        ]);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].since, m[0].max), (0, 3));
        let ids: Vec<(&str, u64)> = m[0]
            .items
            .iter()
            .map(|i| (i.id.as_str(), i.version))
            .collect();
        assert_eq!(ids, [("y", 2), ("x", 3)]);
        assert_eq!((m[1].since, m[1].max), (9, 10));
    }
}
