//! The glue between the store and the leader's decisions (the `orchestrator` crate): a snapshot of
//! every object as a [`ClusterState`], and the decisions as a store [`Batch`] with version checks.
//!
//! Every allocation (network create, service VIPs, the leader loop's task addresses) happens on
//! the leader under [`Manager::alloc`](crate::member::Manager::alloc): read the snapshot,
//! decide, write, release — so two allocations never hand out the same subnet or address.

use model::{Kind, Object};
use orchestrator::{Changes, ClusterState};
use store::{Batch, Change};

use crate::error::Result;
use crate::member::Member;

/// What this node can show of the cluster: a manager's whole replica; on a worker, the objects
/// of its assignments (its tasks, the networks and services they use) and its own node.
pub fn visible(member: &Member) -> Result<ClusterState> {
    if member.manager.is_some() {
        return snapshot(member);
    }
    let mut objects = Vec::new();
    if let Some(a) = member.assignments.borrow().as_ref() {
        objects.extend(a.networks.iter().cloned().map(Object::Network));
        objects.extend(a.services.iter().cloned().map(Object::Service));
        objects.extend(a.tasks.iter().cloned().map(Object::Task));
    }
    if let Some(n) = member.node_obj.borrow().as_ref() {
        objects.push(Object::Node(n.clone()));
    }
    Ok(ClusterState::from_objects(objects))
}

/// Every object of this manager's replica.
pub fn snapshot(member: &Member) -> Result<ClusterState> {
    let store = member.store()?;
    let mut objects = Vec::new();
    for kind in Kind::ALL {
        objects.extend(store.list(kind)?);
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
