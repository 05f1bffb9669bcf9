//! The glue between the store and the leader's decisions (the `orchestrator` crate): a snapshot of
//! every object as a [`ClusterState`], the decisions as a store [`Batch`] with version checks, and
//! the one allocation path.
//!
//! Every allocation (network create, service VIPs, the leader loop's task and node addresses)
//! happens on the leader, on its [`orchestrator::Leader`] (built after a read barrier when the
//! manager became leader, kept in step with the change feed), under
//! [`Manager::leader`](crate::member::Manager::leader): lock, decide, record, write, unlock — so two
//! allocations never hand out the same subnet or address, and none decides from a stale view.

use model::{Kind, Object};
use orchestrator::{Changes, ClusterState, Leader};
use store::{Batch, Change};
use tokio::sync::MutexGuard;

use crate::error::{Failure, Result};
use crate::member::Member;

/// The leader's orchestrator and the Raft term it decides in: built from a read barrier of that
/// term, and what it decides is written as batches of that term ([`store::Batch::term`]),
/// which apply only in a log entry of the same term. A leader deposed between deciding and
/// writing (frozen, cut off, its write retried or forwarded) cannot write its decision under the
/// next leader, who decided from its own view meanwhile.
pub struct Deciding {
    pub leader: Leader,
    pub term: u64,
}

/// The leader's orchestrator, locked.
pub struct LeaderGuard<'a>(MutexGuard<'a, Option<Deciding>>);

impl LeaderGuard<'_> {
    /// The term this leader decides in.
    pub fn term(&self) -> u64 {
        self.0.as_ref().expect("checked when locked").term
    }
}

impl std::ops::Deref for LeaderGuard<'_> {
    type Target = Leader;
    fn deref(&self) -> &Leader {
        &self.0.as_ref().expect("checked when locked").leader
    }
}

impl std::ops::DerefMut for LeaderGuard<'_> {
    fn deref_mut(&mut self) -> &mut Leader {
        &mut self.0.as_mut().expect("checked when locked").leader
    }
}

/// Locks the leader's orchestrator: where allocations are decided. Fails on a manager that is
/// not the leader (any more), or is the leader but has not read the whole store yet.
pub async fn leader(member: &Member) -> Result<LeaderGuard<'_>> {
    let m = member.manager()?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let guard = m.leader.lock().await;
        if guard.is_some() {
            return Ok(LeaderGuard(guard));
        }
        drop(guard);
        if !m.store.is_leader() || tokio::time::Instant::now() >= deadline {
            return Err(Failure::unavailable(
                "this manager is not the leader (or is still taking over); retry",
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Writes what the leader decided (already recorded on it with [`Leader::record`]), as a batch
/// of its term; if the write fails, the leader takes back what the store has for every object
/// of it.
pub async fn write_decided(
    member: &Member,
    leader: &mut LeaderGuard<'_>,
    changes: &Changes,
) -> Result<Vec<Option<Object>>> {
    let r = member.write(batch(changes).decided_in(leader.term())).await;
    if r.is_err() {
        refresh(member, leader, changes);
    }
    r
}

/// Puts back on the leader what the store has for the objects of `changes`.
pub fn refresh(member: &Member, leader: &mut Leader, changes: &Changes) {
    let Ok(store) = member.store() else { return };
    let keys = changes
        .put
        .iter()
        .map(|o| (o.kind(), o.id().to_string()))
        .chain(changes.delete.iter().cloned());
    for (kind, id) in keys {
        let current = store.get(kind, &id).ok().flatten();
        leader.refresh(kind, &id, current);
    }
}

/// What this node can show of the cluster, of the given kinds: a manager's replica; on a
/// worker, the objects of its assignments (its tasks, the networks and services they use) and
/// its own node. A reader names the kinds it shows, so that one which needs no tasks does not
/// copy the thousands a large swarm holds.
pub fn visible(member: &Member, kinds: &[Kind]) -> Result<ClusterState> {
    if member.manager.is_some() {
        return snapshot_of(member, kinds);
    }
    let mut objects = Vec::new();
    if let Some(a) = member.assignments.borrow().as_ref() {
        if kinds.contains(&Kind::Network) {
            objects.extend(a.networks.iter().cloned().map(Object::Network));
        }
        if kinds.contains(&Kind::Service) {
            objects.extend(a.services.iter().cloned().map(Object::Service));
        }
        if kinds.contains(&Kind::Task) {
            objects.extend(a.tasks.iter().cloned().map(Object::Task));
        }
    }
    if kinds.contains(&Kind::Node)
        && let Some(n) = member.node_obj.borrow().as_ref()
    {
        objects.push(Object::Node(n.clone()));
    }
    Ok(ClusterState::from_objects(objects))
}

/// Every object of this manager's replica.
pub fn snapshot(member: &Member) -> Result<ClusterState> {
    snapshot_of(member, &Kind::ALL)
}

/// The objects of the given kinds in this manager's replica.
pub fn snapshot_of(member: &Member, kinds: &[Kind]) -> Result<ClusterState> {
    let store = member.store()?;
    let mut objects = Vec::new();
    for kind in kinds {
        objects.extend(store.list(*kind)?);
    }
    Ok(ClusterState::from_objects(objects))
}

/// The orchestrator's changes as one atomic batch: objects read at version 0 are created, others
/// updated only if nobody changed them since they were read.
pub fn batch(changes: &Changes) -> Batch {
    let mut out = Vec::new();
    for o in &changes.put {
        out.push(if o.meta().version == 0 {
            Change::Create(o.clone())
        } else {
            Change::Update(o.clone())
        });
    }
    for (kind, id) in &changes.delete {
        out.push(Change::Delete {
            kind: *kind,
            id: id.clone(),
            version: None,
        });
    }
    Batch::new(out)
}

/// An object to create, as a one-change batch.
pub fn create(o: impl Into<Object>) -> Batch {
    Batch::one(Change::Create(o.into()))
}
