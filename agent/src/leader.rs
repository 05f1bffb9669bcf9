//! Leader-only loops. They start when this manager becomes leader and stop when it is not any
//! more (`Store::leader_watch`): node status (Ready / Down from dispatcher heartbeats), role
//! reconciliation (a demoted manager leaves Raft), data-path key rotation, the completion of a CA
//! rotation (`crate::ca_rotation`) and the orchestrator (replicas, task
//! allocation, scheduling: `orchestrator::Leader`), fed by the store's change feed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use model::Kind;
use model::node::Role;
use store::{Batch, Change};

use crate::member::Member;

pub async fn run(member: Arc<Member>, config: orchestrator::Config) {
    let Some(m) = &member.manager else {
        return;
    };
    let mut leader = m.store.leader_watch();
    loop {
        // Wait to become leader.
        tokio::select! {
            _ = member.cancel.cancelled() => return,
            r = leader.wait_for(|l| *l) => if r.is_err() { return },
        }
        tracing::info!("became leader: starting leader-only loops");
        let mut since = Instant::now();
        let mut stalls = crate::sessions::Stalls::default();
        let orchestrator = tokio::spawn(orchestrate(member.clone(), config.clone()));
        let _stop = AbortOnDrop(orchestrator);
        loop {
            let period = member
                .cluster()
                .map(|c| Duration::from_millis(c.settings.heartbeat_period_ms))
                .unwrap_or(Duration::from_secs(5));
            let nap = period.min(Duration::from_secs(1));
            stalls.sleeping(nap);
            tokio::select! {
                _ = member.cancel.cancelled() => return,
                r = leader.wait_for(|l| !*l) => {
                    if r.is_err() { return }
                    tracing::info!("lost leadership: stopping leader-only loops");
                    break;
                }
                _ = tokio::time::sleep(nap) => {}
            }
            let stalled = stalls.woke();
            // Without quorum the nodes' sessions may have gone (a follower that was the leader,
            // the leader's own peers down): once it is back, nodes get the same time to find the
            // leader as after an election before a silent one is marked down (otherwise nodes
            // whose agents return with the quorum would have their tasks replaced).
            if !member.quorum().is_ok_and(|q| q.has_quorum()) {
                since = Instant::now();
            }
            node_status(&member, since, period, stalled).await;
            reconcile_roles(&member).await;
            rotate_data_keys(&member).await;
            crate::ca_rotation::reconcile(&member).await;
        }
        drop(_stop);
        // Allocations are decided by the next leader, from its own view; nodes' sessions go to it.
        *m.leader.lock().await = None;
        m.sessions.clear();
        if let Some(a) = m.assigner.lock().unwrap_or_else(|e| e.into_inner()).take() {
            a.close();
        }
    }
}

/// The data-path key manager: rotates the IPsec keys when the period has passed (a failed
/// write is tried again on the next tick).
async fn rotate_data_keys(member: &Member) {
    let Ok(c) = member.cluster() else { return };
    let now = chrono::Utc::now();
    if !orchestrator::keys::rotation_due(&c, now) {
        return;
    }
    let patch = data_key_rotation(&c, now);
    let r = member
        .write(Batch::one(Change::Patch {
            kind: Kind::Cluster,
            id: c.meta.id.clone(),
            patch: serde_json::Value::Object(patch),
            version: Some(c.meta.version),
        }))
        .await;
    match r {
        // The tag only: keys are never logged.
        Ok(_) => tracing::info!("data-path keys rotated"),
        Err(e) => tracing::debug!(error = %e, "data-path key rotation did not apply; trying again"),
    }
}

/// The cluster patch of one data-path key rotation: a fresh random key, the oldest dropped.
pub(crate) fn data_key_rotation(
    c: &model::Cluster,
    now: chrono::DateTime<chrono::Utc>,
) -> serde_json::Map<String, serde_json::Value> {
    use rand::Rng;
    let mut rng = rand::rng();
    let fresh: Vec<u8> = (0..orchestrator::keys::KEY_LEN)
        .map(|_| rng.random())
        .collect();
    let keys = orchestrator::keys::rotated(&c.network_keys, fresh);
    let mut patch = serde_json::Map::new();
    patch.insert(
        "network_keys".into(),
        serde_json::to_value(keys).unwrap_or_default(),
    );
    patch.insert(
        "data_key_rotated_at".into(),
        serde_json::to_value(now).unwrap_or_default(),
    );
    patch
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The orchestrator on the leader: after a read barrier, the whole store becomes an
/// [`orchestrator::Leader`] (in [`Manager::leader`](crate::member::Manager::leader), where the
/// API's allocations go too); then each change of the store is observed as it is applied and a
/// pass decides for what it affected. A pass's decisions go through Raft as one batch; a conflict
/// (someone changed an object in the meantime) puts back the store's objects and the next pass
/// decides again. A change feed that lagged, or a snapshot installed, means reading everything
/// again.
async fn orchestrate(member: Arc<Member>, config: orchestrator::Config) {
    let Ok(store) = member.store().cloned() else {
        return;
    };
    let Some(m) = &member.manager else { return };
    loop {
        // Subscribe first: nothing applied after the snapshot is missed.
        let mut events = store.subscribe();
        // The term this leader decides in: leader in it before and after the barrier (a node
        // leads at most once per term), so the barrier and the snapshot are of that term.
        let term = store.term();
        let barrier = store.read_barrier().await;
        if let Err(e) = &barrier {
            tracing::debug!(error = %e, "orchestrator: no read barrier yet");
        }
        if barrier.is_err() || store.term() != term || !store.is_leader() {
            tokio::select! {
                _ = member.cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            }
        }
        let seen = store.applied_index();
        let state = match crate::orchestration::snapshot(&member) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "orchestrator: cannot read the store");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let assigner = Arc::new(crate::assign::Assigner::new(&state));
        if let Some(old) = m
            .assigner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(assigner.clone())
        {
            old.close();
        }
        *m.leader.lock().await = Some(crate::orchestration::Deciding {
            leader: orchestrator::Leader::new(state, config.clone()),
            term,
        });
        tracing::info!(
            index = seen,
            term,
            "orchestrator: state read, deciding incrementally"
        );
        if !run_passes(&member, &assigner, &mut events, seen).await {
            return;
        }
        tracing::info!("orchestrator: re-reading the store");
    }
}

/// Passes until the feed must be read again from scratch (returns true) or the manager stops
/// (false).
async fn run_passes(
    member: &Member,
    assigner: &crate::assign::Assigner,
    events: &mut tokio::sync::broadcast::Receiver<Arc<store::Event>>,
    seen: u64,
) -> bool {
    use tokio::sync::broadcast::error::{RecvError, TryRecvError};
    let Some(m) = &member.manager else {
        return false;
    };
    loop {
        let (changes, next, term) = {
            let mut guard = m.leader.lock().await;
            let Some(d) = guard.as_mut() else {
                return true;
            };
            (
                d.leader.pass(chrono::Utc::now()),
                d.leader.next_timer(),
                d.term,
            )
        };
        if !changes.is_empty() {
            tracing::debug!(
                put = changes.put.len(),
                delete = changes.delete.len(),
                "orchestrator pass"
            );
            let batch = crate::orchestration::batch(&changes).decided_in(term);
            if let Err(e) = member.write(batch).await {
                tracing::debug!(error = %e, "orchestrator: the pass's writes did not apply; deciding again");
                if let Some(d) = m.leader.lock().await.as_mut() {
                    crate::orchestration::refresh(member, &mut d.leader, &changes);
                }
            }
            continue;
        }
        let wait = next
            .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        let first = tokio::select! {
            _ = member.cancel.cancelled() => return false,
            ev = events.recv() => ev,
            _ = tokio::time::sleep(wait) => continue,
        };
        let mut guard = m.leader.lock().await;
        let Some(crate::orchestration::Deciding { leader: l, .. }) = guard.as_mut() else {
            return true;
        };
        let mut next_ev = Some(first);
        while let Some(ev) = next_ev.take() {
            match ev {
                Ok(ev) => {
                    if !observe(l, assigner, &ev, seen) {
                        return true;
                    }
                }
                Err(RecvError::Lagged(_)) => return true,
                Err(RecvError::Closed) => return false,
            }
            next_ev = match events.try_recv() {
                Ok(ev) => Some(Ok(ev)),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
            };
        }
    }
}

/// Hands one change-feed event to the orchestrator and the assignment index; false when
/// everything must be read again.
fn observe(
    l: &mut orchestrator::Leader,
    assigner: &crate::assign::Assigner,
    ev: &store::Event,
    seen: u64,
) -> bool {
    match ev {
        store::Event::Reset { .. } => false,
        store::Event::Changes { index, .. } if *index <= seen => true,
        store::Event::Changes { changes, .. } => {
            for c in changes {
                assigner.observe(c);
                l.observe(match c {
                    store::Applied::Put(o) => orchestrator::Observed::Put(o.clone()),
                    store::Applied::Deleted(o) => {
                        orchestrator::Observed::Deleted(o.kind(), o.id().to_string())
                    }
                });
            }
            true
        }
    }
}

fn patch(id: &str, patch: serde_json::Value) -> Batch {
    Batch::one(Change::Patch {
        kind: Kind::Node,
        id: id.to_string(),
        patch,
        version: None,
    })
}

/// Ready while heartbeats arrive, Unknown with the node's reason while it reports a broken
/// runtime (see `crate::sessions`), Down once heartbeats stop for three periods. Right after an
/// election nobody is marked down until the nodes had time to find the new leader and open a
/// session (five periods, at least 2 s): a restarted leader must not reschedule healthy nodes'
/// tasks. Time the leader itself did not run (`stalled`, see `sessions::Stalls`) is added to
/// the grace: a stopped or starved leader read no heartbeat then, and must not mark the nodes
/// that sent them down. Sessions of nodes no longer in the store are forgotten.
async fn node_status(member: &Member, since: Instant, period: Duration, stalled: Duration) {
    let Some(m) = &member.manager else { return };
    let grace = crate::sessions::grace(period) + stalled;
    let settle = (period * 5).max(Duration::from_secs(2));
    let Ok(nodes) = member.nodes() else { return };
    let existing: std::collections::HashSet<&str> =
        nodes.iter().map(|n| n.meta.id.as_str()).collect();
    let pruned = m.sessions.prune(&existing);
    if pruned > 0 {
        tracing::debug!(pruned, "forgot the dispatcher sessions of departed nodes");
    }
    let own = member.node_id();
    for node in &nodes {
        let heard = crate::sessions::as_of_now(m.sessions.get(&node.meta.id), node.meta.id == own);
        let current = (node.status.state, node.status.message.as_str());
        let Some((state, message)) =
            crate::sessions::status_of(heard.as_ref(), current, grace, since.elapsed() > settle)
        else {
            continue;
        };
        tracing::info!(node = %node.meta.id, ?state, %message, "node status");
        let p = crate::sessions::status_patch(state, &message);
        if let Err(e) = member.write(patch(&node.meta.id, p)).await {
            tracing::info!(node = %node.meta.id, error = %e, "could not update the node's status");
        }
    }
}

/// A manager whose spec says worker leaves Raft, then is recorded as a worker; the node itself
/// notices and switches (see `session`).
async fn reconcile_roles(member: &Member) {
    let Some(m) = &member.manager else { return };
    let Ok(nodes) = member.nodes() else { return };
    for node in nodes {
        if node.spec.role != Role::Worker || node.role != Role::Manager {
            continue;
        }
        let (_, voters) = m.store.members();
        if let Some(ms) = &node.manager_status
            && voters.contains(&ms.raft_id)
        {
            if ms.raft_id == m.store.id() && voters.len() > 1 {
                tracing::warn!(
                    "demoting the leader itself: it leaves Raft and another manager takes over"
                );
            }
            if let Err(e) = m.store.remove_voter(ms.raft_id).await {
                tracing::warn!(node = %node.meta.id, error = %e, "could not remove the demoted manager from Raft");
                continue;
            }
        }
        let p = serde_json::json!({"role": "worker", "manager_status": null});
        if let Err(e) = member.write(patch(&node.meta.id, p)).await {
            tracing::info!(node = %node.meta.id, error = %e, "could not record the demotion");
        }
    }
}
