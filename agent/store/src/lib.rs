//! The Raft-replicated object store of the managers: openraft 0.9 with its log and state machine
//! in one redb file, generic over [`model::Object`].
//!
//! What it offers (the rest of the agent builds on these, nothing else):
//! - [`Store::propose`]: a [`Batch`] of [`Change`]s (create / update with optimistic version check
//!   / merge patch / delete of any object), applied atomically by every replica, or refused as a
//!   whole with a [`Conflict`]. Only the leader proposes ([`ProposeError::NotLeader`] names the
//!   leader to forward to). Whatever the leader computed (allocations) goes in the batch; replicas
//!   never recompute anything.
//! - Reads: [`Store::get`] / [`Store::list`] from the local replica (possibly stale on a follower
//!   or without quorum), and [`Store::read_barrier`] first for a linearizable read on the leader.
//! - [`Store::subscribe`]: the change feed, one [`Event`] per applied entry; a lagging receiver
//!   (or [`Event::Reset`] after a snapshot install) resynchronises with [`Store::list`].
//! - [`Store::metrics`] (openraft metrics: leader, membership, state) and [`Store::leader_watch`]
//!   for leader-only loops to start and stop.
//! - [`Store::unhealthy`]: why this replica stopped applying (fails closed on a failed write of
//!   its state machine, see `health.rs`), refusing proposals until a restart.
//! - Membership: [`Store::bootstrap`], [`Store::add_voter`], [`Store::remove_voter`] and, offline,
//!   [`force_new_cluster`].
//!
//! Files (in the store's directory): `log.redb` — the Raft log, vote and purge point; every
//! append is fsynced (group commit by a writer thread) before openraft counts it, votes and
//! truncations before they return. `state.redb` — a mirror of the in-memory state machine,
//! written behind without fsync and made durable at every snapshot; logs are purged only behind
//! a snapshot, so after a crash the state machine catches up from the log.
//!
//! Throughput: openraft 0.9 waits for each log flush before taking the next write, so
//! [`Store::propose`] gathers the batches proposed while one Raft entry is being written into the
//! next entry ([`Proposal`]); each batch still applies (or fails) on its own. Objects changed by
//! batches of one entry share its index as version.

// openraft's storage traits fix StorageError (large) as the error type of every storage call.
#![allow(clippy::result_large_err)]

mod change;
mod db;
mod health;
mod log_store;
mod recover;
mod state_machine;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use model::{Kind, Object};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{
    BasicNode, ChangeMembers, RaftMetrics, RaftNetworkFactory, ServerState, SnapshotPolicy,
};
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{broadcast, watch};

pub use change::{
    Applied, Batch, Change, Conflict, Event, Outcome, Outcomes, Proposal, View, apply_batch,
    check_term, merge_patch,
};
pub use health::FAULT_ENV;
pub use log_store::LogStore;
pub use recover::force_new_cluster;
pub use state_machine::{StateMachine, decode_snapshot};

/// Raft member ids.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The store's openraft types: batches in, outcomes out, members addressed by host:port.
    pub TypeConfig:
        D = Proposal,
        R = Outcomes,
        NodeId = u64,
        Node = BasicNode,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Metrics = RaftMetrics<NodeId, BasicNode>;

/// Errors opening or reading the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the raft store at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("raft store: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// Why a proposal (or a membership change, or a read barrier) did not go through.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("this manager is not the leader{}", leader_hint(.leader))]
    NotLeader {
        /// The leader this replica knows of: (raft id, address).
        leader: Option<(NodeId, String)>,
    },
    #[error(transparent)]
    Conflict(#[from] Conflict),
    #[error("the write did not complete: {0}")]
    Raft(String),
    /// Back-pressure: more proposals are waiting for Raft than [`MAX_PENDING`], and none made
    /// room within [`PENDING_WAIT`].
    #[error(
        "too many pending writes ({pending} are waiting for Raft on the leader); retry in a moment"
    )]
    Busy { pending: usize },
}

fn leader_hint(leader: &Option<(NodeId, String)>) -> String {
    match leader {
        Some((_, addr)) => format!(" (the leader is at {addr})"),
        None => " and no leader is known".to_string(),
    }
}

/// Timing and compaction knobs.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and compact the log) after this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for slightly lagging followers.
    pub keep_behind_snapshot: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            heartbeat_ms: 250,
            election_min_ms: 1_000,
            election_max_ms: 2_000,
            snapshot_every: 10_000,
            keep_behind_snapshot: 1_000,
        }
    }
}

/// A manager's replica of the store.
#[derive(Clone)]
pub struct Store {
    id: NodeId,
    raft: Raft,
    sm: StateMachine,
    log_db: Arc<Database>,
    proposals: Proposals,
    events: broadcast::Sender<Arc<Event>>,
    applied: watch::Receiver<u64>,
}

type Pending = (
    Batch,
    tokio::sync::oneshot::Sender<Result<Outcome, ProposeError>>,
);

/// Raft entries being written at once at most: one, so that everything proposed meanwhile
/// gathers into the next (measured best with the store bench).
const IN_FLIGHT: usize = 1;
/// Batches gathered into one Raft entry at most.
const MAX_GATHER: usize = 512;
/// Proposals waiting for Raft at most (four entries' worth): beyond, proposers wait for room.
pub const MAX_PENDING: usize = 4 * MAX_GATHER;
/// How long a proposer waits for room before it is refused with [`ProposeError::Busy`].
pub const PENDING_WAIT: Duration = Duration::from_secs(5);

/// The bounded queue of proposals into Raft: a full queue makes proposers wait (back-pressure),
/// and refuses them with [`ProposeError::Busy`] when no room is made within the wait.
#[derive(Clone)]
struct Proposals {
    tx: tokio::sync::mpsc::Sender<Pending>,
    wait: Duration,
}

impl Proposals {
    fn new(capacity: usize, wait: Duration) -> (Proposals, tokio::sync::mpsc::Receiver<Pending>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        (Proposals { tx, wait }, rx)
    }

    async fn submit(&self, p: Pending) -> Result<(), ProposeError> {
        let shut = || ProposeError::Raft("the store is shut down".into());
        match self.tx.try_send(p) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(shut()),
            Err(tokio::sync::mpsc::error::TrySendError::Full(p)) => {
                match tokio::time::timeout(self.wait, self.tx.send(p)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(shut()),
                    Err(_) => Err(ProposeError::Busy {
                        pending: self.tx.max_capacity() - self.tx.capacity(),
                    }),
                }
            }
        }
    }
}

/// Gathers concurrently proposed batches into Raft entries: whatever is queued while earlier
/// entries are being written goes into the next one. Ends when the store is dropped.
async fn proposer(raft: Raft, mut queue: tokio::sync::mpsc::Receiver<Pending>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut gathered = vec![first];
        while gathered.len() < MAX_GATHER {
            match queue.try_recv() {
                Ok(p) => gathered.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (batches, waiters): (Vec<Batch>, Vec<_>) = gathered.into_iter().unzip();
            let result = raft.client_write(Proposal { batches }).await;
            drop(permit);
            match result {
                Ok(resp) => {
                    let mut outcomes = resp.data.0.into_iter();
                    for w in waiters {
                        let o = outcomes
                            .next()
                            .ok_or_else(|| ProposeError::Raft("missing outcome".into()));
                        let _ = w.send(o);
                    }
                }
                Err(e) => {
                    let err = match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                            ProposeError::NotLeader {
                                leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                            }
                        }
                        other => raft_err(other),
                    };
                    for w in waiters {
                        let _ = w.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}

/// A replica whose state machine failed stops taking part in Raft at once (a leader steps
/// down, so the other managers elect one that can apply) instead of at its next entry.
async fn stop_when_failed(raft: Raft, mut health: watch::Receiver<Option<String>>) {
    if health.wait_for(|h| h.is_some()).await.is_ok() {
        tracing::error!("the store is unhealthy: this manager leaves Raft until it is restarted");
        let _ = tokio::time::timeout(Duration::from_secs(5), raft.shutdown()).await;
    }
}

fn raft_err<E: std::fmt::Display>(e: E) -> ProposeError {
    ProposeError::Raft(e.to_string())
}

impl Store {
    /// Opens (or creates) the store in the directory `dir` and starts this replica's Raft node.
    pub async fn open<N>(
        dir: &Path,
        id: NodeId,
        config: &StoreConfig,
        network: N,
    ) -> Result<Store, Error>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let open = |path: std::path::PathBuf, tables: fn(&Database) -> Result<(), redb::Error>| {
            let err = |e: redb::Error| Error::Open {
                path: path.display().to_string(),
                source: e,
            };
            let db = db::open_retrying(&path).map_err(|e| err(e.into()))?;
            tables(&db).map_err(err)?;
            Ok::<_, Error>(Arc::new(db))
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        let log_db = open(db::log_path(dir), db::create_log_tables)?;
        let sm_db = open(db::sm_path(dir), db::create_sm_tables)?;
        let (events, _) = broadcast::channel(4096);
        let (applied_tx, applied) = watch::channel(0);
        let sm = StateMachine::new(sm_db.clone(), events.clone(), Arc::new(applied_tx))
            .map_err(|e| Error::Storage(e.to_string()))?;
        let log = LogStore::new(log_db.clone());
        let sm_handle = sm.clone();
        let raft_config = openraft::Config {
            cluster_name: "netagent".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_min_ms,
            election_timeout_max: config.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.keep_behind_snapshot,
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| Error::Raft(e.to_string()))?,
        );
        let raft = Raft::new(id, raft_config, network, log, sm)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let (proposals, queue) = Proposals::new(MAX_PENDING, PENDING_WAIT);
        tokio::spawn(proposer(raft.clone(), queue));
        tokio::spawn(stop_when_failed(raft.clone(), sm_handle.health.watch()));
        Ok(Store {
            id,
            proposals,
            raft,
            sm: sm_handle,
            log_db,
            events,
            applied,
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The openraft handle (for the RPC server: append_entries, vote, install_snapshot).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Makes this node the single member of a new cluster (at `swarm init`).
    pub async fn bootstrap(&self, addr: &str) -> Result<(), Error> {
        let mut members = BTreeMap::new();
        members.insert(self.id, BasicNode::new(addr));
        self.raft
            .initialize(members)
            .await
            .map_err(|e| Error::Raft(e.to_string()))
    }

    /// Whether this replica belongs to a cluster already.
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    fn not_leader(&self) -> ProposeError {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader.and_then(|l| {
            m.membership_config
                .membership()
                .get_node(&l)
                .map(|n| (l, n.addr.clone()))
        });
        ProposeError::NotLeader { leader }
    }

    fn map_write_err(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    ) -> ProposeError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => ProposeError::NotLeader {
                leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
            },
            other => raft_err(other),
        }
    }

    /// Proposes a batch and waits until it is committed and applied here. Returns the objects
    /// as stored (None for deletions), in the order of the changes. Batches proposed while an
    /// earlier proposal is being written travel together in one Raft entry (one log write, one
    /// replication round), each still applied atomically on its own.
    pub async fn propose(&self, batch: Batch) -> Result<Vec<Option<Object>>, ProposeError> {
        if let Some(why) = self.unhealthy() {
            return Err(ProposeError::Raft(format!("the store is unhealthy: {why}")));
        }
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.proposals.submit((batch, tx)).await?;
        let outcome = rx
            .await
            .map_err(|_| ProposeError::Raft("the store is shut down".into()))??;
        match outcome.conflict {
            Some(c) => Err(ProposeError::Conflict(c)),
            None => Ok(outcome.objects),
        }
    }

    /// Waits until this replica is confirmed leader by a quorum and has applied everything
    /// committed before the call: reads after it are linearizable.
    pub async fn read_barrier(&self) -> Result<(), ProposeError> {
        let read_log_id = self.raft.ensure_linearizable().await.map_err(|e| match e {
            RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(_)) => {
                self.not_leader()
            }
            other => raft_err(other),
        })?;
        if let Some(id) = read_log_id {
            self.wait_applied(id.index).await;
        }
        Ok(())
    }

    /// Waits until this replica has applied `index`.
    pub async fn wait_applied(&self, index: u64) {
        let mut rx = self.applied.clone();
        let _ = rx.wait_for(|&a| a >= index).await;
    }

    /// The object from the local replica.
    pub fn get(&self, kind: Kind, id: &str) -> Result<Option<Object>, Error> {
        Ok(self.sm.get(kind, id))
    }

    /// Every object of a kind from the local replica, ordered by id.
    pub fn list(&self, kind: Kind) -> Result<Vec<Object>, Error> {
        Ok(self.sm.list(kind))
    }

    /// `f` over the objects of a kind in the local replica, ordered by id, without copying
    /// them: what a lookup by name or a count costs is a walk, not a copy of the store. `f`
    /// runs under the replica's read lock: keep it short, never await in it.
    pub fn scan<R>(
        &self,
        kind: Kind,
        f: impl FnOnce(&mut dyn Iterator<Item = &Object>) -> R,
    ) -> Result<R, Error> {
        Ok(self.sm.scan(kind, f))
    }

    /// The change feed: every applied entry from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }

    /// The index of the last entry applied here.
    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }

    pub fn metrics(&self) -> watch::Receiver<Metrics> {
        self.raft.metrics()
    }

    /// Why this replica stopped applying, if it did: its state machine could not write (it
    /// fails closed) or Raft stopped on a storage error. Cleared only by a restart, which
    /// recovers from the log.
    pub fn unhealthy(&self) -> Option<String> {
        if let Some(why) = self.sm.health.failed() {
            return Some(why);
        }
        match &self.raft.metrics().borrow().running_state {
            Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
            Err(e) => Some(format!("raft stopped: {e}")),
        }
    }

    /// Test hook: the state machine's next file write fails (as `NETAGENT_FAULT_SM_WRITE`
    /// does for a whole agent).
    #[doc(hidden)]
    pub fn inject_write_failure(&self) {
        self.sm.health.arm();
    }

    /// The current leader as this replica knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The current Raft term, as this replica knows it.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Whether this node is leader, as a watch that changes only when that does. Leader-only
    /// loops wait for `true` to start and for `false` to stop.
    pub fn leader_watch(&self) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(self.is_leader());
        let mut metrics = self.raft.metrics();
        let id = self.id;
        tokio::spawn(async move {
            loop {
                let now = {
                    let m = metrics.borrow_and_update();
                    m.state == ServerState::Leader && m.current_leader == Some(id)
                };
                tx.send_if_modified(|v| {
                    let changed = *v != now;
                    *v = now;
                    changed
                });
                tokio::select! {
                    r = metrics.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        rx
    }

    /// The voters and learners of the current membership: raft id -> address.
    pub fn members(&self) -> (BTreeMap<NodeId, String>, BTreeSet<NodeId>) {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        let nodes = m
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        (nodes, voters)
    }

    /// Adds a manager as a voter: first as a learner that catches up, then into the voters.
    pub async fn add_voter(&self, id: NodeId, addr: &str) -> Result<(), ProposeError> {
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(|e| self.map_write_err(e))?;
        let mut add = BTreeSet::new();
        add.insert(id);
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(add), false)
            .await
            .map_err(|e| self.map_write_err(e))?;
        Ok(())
    }

    /// Removes a manager from the voters and the membership.
    pub async fn remove_voter(&self, id: NodeId) -> Result<(), ProposeError> {
        let mut ids = BTreeSet::new();
        ids.insert(id);
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
            .await
            .map_err(|e| self.map_write_err(e))?;
        // Forget its address too (it is a learner now).
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(ids), false)
            .await
            .map_err(|e| self.map_write_err(e))?;
        Ok(())
    }

    /// Asks for a snapshot now (tests, and after bulk changes).
    pub async fn snapshot_now(&self) -> Result<(), Error> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Error::Raft(e.to_string()))
    }

    /// Stops the Raft node and makes the state machine durable. The files stay.
    pub async fn shutdown(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.raft.shutdown()).await;
        let _ = self.sm.sync().await;
    }

    /// The current log bounds (first kept index, last index), for diagnostics and tests.
    pub fn log_bounds(&self) -> Result<(Option<u64>, Option<u64>), Error> {
        let err = |e: &dyn std::fmt::Display| Error::Storage(e.to_string());
        let txn = self.log_db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(db::LOG).map_err(|e| err(&e))?;
        let first = table.first().map_err(|e| err(&e))?.map(|(k, _)| k.value());
        let last = table.last().map_err(|e| err(&e))?.map(|(k, _)| k.value());
        Ok((first, last))
    }
}

#[cfg(test)]
mod tests;
