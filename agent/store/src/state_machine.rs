//! The state machine: every object in memory (as swarmkit keeps its store), mirrored to its own
//! redb file by a writer thread.
//!
//! `apply` changes the in-memory state and queues the changed rows for the writer, which writes
//! whatever is queued in one transaction without fsync. Building a snapshot waits for the writer
//! and makes the file durable (fsync) before openraft may purge the log behind it; installing a
//! snapshot is durable too. After a crash the file is at some earlier applied index and openraft
//! applies the rest again from the durable log. Reads never touch the file.
//!
//! A failed write fails closed (see [`crate::health`]): the writer stops writing for good, the
//! next `apply` returns a storage error (openraft stops this replica) and the store reports the
//! reason until a restart recovers from the log.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, RwLock};

use model::{Kind, Object};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::TypeConfig;
use crate::change::{Applied, Event, Outcome, Outcomes, View, apply_batch, check_term};
use crate::db::{OBJECTS, SM_META, SNAPSHOT, dec, enc, get_json, object_key, sto};
use crate::health::{FAULT_ENV, Fault, Health};

type Membership = StoredMembership<u64, BasicNode>;

#[derive(Serialize, Deserialize)]
struct SnapshotData {
    objects: Vec<Object>,
}

/// Decodes the data of a snapshot a leader sent (`InstallSnapshot`): its objects, in order.
/// The one decoding step of an installed snapshot (fuzzed through the agent's `fuzz` module).
pub fn decode_snapshot(data: &[u8]) -> Result<Vec<Object>, StorageError<u64>> {
    dec::<SnapshotData>(data).map(|s| s.objects)
}

/// The state in memory.
#[derive(Default)]
pub(crate) struct Mem {
    /// "kind/id" -> object.
    pub(crate) objects: BTreeMap<String, Object>,
    pub(crate) last_applied: Option<LogId<u64>>,
    pub(crate) membership: Membership,
}

impl View for Mem {
    fn get(&mut self, kind: Kind, id: &str) -> Option<Object> {
        self.objects.get(&object_key(kind, id)).cloned()
    }
}

/// What the writer thread is asked to do, in order.
enum Op {
    /// Rows to write: key -> Some(JSON) or None (delete); meta rows likewise.
    Rows {
        objects: Vec<(String, Option<Vec<u8>>)>,
        meta: Vec<(&'static str, Vec<u8>)>,
    },
    /// Replace everything (snapshot install).
    Replace {
        objects: Vec<(String, Vec<u8>)>,
        meta: Vec<(&'static str, Vec<u8>)>,
    },
    /// Store a snapshot.
    Snapshot { meta: Vec<u8>, data: Vec<u8> },
    /// Make everything before it durable, then answer.
    Sync(std::sync::mpsc::Sender<Result<(), String>>),
}

/// How long the writer lets changes accumulate before writing them (rows changed again in the
/// meantime are written once). Syncs and snapshots do not wait.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(100);

fn writer_loop(db: Arc<Database>, rx: std::sync::mpsc::Receiver<Op>, health: Health) {
    let fault = Fault::new(&health);
    while let Ok(first) = rx.recv() {
        if let Some(why) = health.failed() {
            // Stopped: nothing more is written (a later transaction would record a newer
            // applied index over the lost rows); syncs learn why.
            if let Op::Sync(done) = first {
                let _ = done.send(Err(why));
            }
            continue;
        }
        let mut ops = vec![first];
        ops.extend(rx.try_iter());
        if !ops.iter().any(|o| !matches!(o, Op::Rows { .. })) {
            std::thread::sleep(COALESCE);
            ops.extend(rx.try_iter());
        }
        let ops = coalesce(ops);
        let durable = ops
            .iter()
            .any(|o| matches!(o, Op::Sync(_) | Op::Snapshot { .. } | Op::Replace { .. }));
        let result = (|| -> Result<(), redb::Error> {
            let mut txn = db.begin_write()?;
            if !durable {
                txn.set_durability(Durability::None)?;
            }
            {
                let mut objects = txn.open_table(OBJECTS)?;
                let mut meta = txn.open_table(SM_META)?;
                let mut snap = txn.open_table(SNAPSHOT)?;
                for op in &ops {
                    match op {
                        Op::Rows {
                            objects: rows,
                            meta: m,
                        } => {
                            for (k, v) in rows {
                                match v {
                                    Some(v) => {
                                        objects.insert(k.as_str(), v.as_slice())?;
                                    }
                                    None => {
                                        objects.remove(k.as_str())?;
                                    }
                                }
                            }
                            for (k, v) in m {
                                meta.insert(*k, v.as_slice())?;
                            }
                        }
                        Op::Replace {
                            objects: rows,
                            meta: m,
                        } => {
                            objects.retain(|_, _| false)?;
                            for (k, v) in rows {
                                objects.insert(k.as_str(), v.as_slice())?;
                            }
                            for (k, v) in m {
                                meta.insert(*k, v.as_slice())?;
                            }
                        }
                        Op::Snapshot { meta: m, data } => {
                            snap.insert("meta", m.as_slice())?;
                            snap.insert("data", data.as_slice())?;
                        }
                        Op::Sync(_) => {}
                    }
                }
            }
            if fault.fire() {
                return Err(redb::Error::Io(std::io::Error::other(format!(
                    "injected write failure ({FAULT_ENV})"
                ))));
            }
            txn.commit()?;
            Ok(())
        })()
        .map_err(|e| e.to_string());
        let result = result.map_err(|e| format!("cannot write the state machine's file: {e}"));
        if let Err(e) = &result {
            tracing::error!(
                error = %e,
                "the store stops applying (fails closed); restart the agent to recover from the Raft log"
            );
            health.fail(e.clone());
        }
        for op in ops {
            if let Op::Sync(done) = op {
                let _ = done.send(result.clone());
            }
        }
    }
}

/// Merges consecutive row writes (the last value of a row wins), keeping every other op in order.
fn coalesce(ops: Vec<Op>) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::new();
    let mut rows: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    let mut meta: BTreeMap<&'static str, Vec<u8>> = BTreeMap::new();
    let flush = |out: &mut Vec<Op>,
                 rows: &mut BTreeMap<String, Option<Vec<u8>>>,
                 meta: &mut BTreeMap<&'static str, Vec<u8>>| {
        if !rows.is_empty() || !meta.is_empty() {
            out.push(Op::Rows {
                objects: std::mem::take(rows).into_iter().collect(),
                meta: std::mem::take(meta).into_iter().collect(),
            });
        }
    };
    for op in ops {
        match op {
            Op::Rows { objects, meta: m } => {
                rows.extend(objects);
                meta.extend(m);
            }
            other => {
                flush(&mut out, &mut rows, &mut meta);
                out.push(other);
            }
        }
    }
    flush(&mut out, &mut rows, &mut meta);
    out
}

/// Handle on the state machine (cheap to clone; the snapshot builder is a clone).
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    pub(crate) mem: Arc<RwLock<Mem>>,
    writer: std::sync::mpsc::Sender<Op>,
    events: broadcast::Sender<Arc<Event>>,
    applied: Arc<watch::Sender<u64>>,
    pub(crate) health: Health,
}

fn load(db: &Database) -> Result<Mem, StorageError<u64>> {
    let txn = db.begin_read().map_err(sto)?;
    let meta = txn.open_table(SM_META).map_err(sto)?;
    let last_applied = get_json::<Option<LogId<u64>>>(&meta, "last_applied")?.flatten();
    let membership = get_json(&meta, "membership")?.unwrap_or_default();
    let table = txn.open_table(OBJECTS).map_err(sto)?;
    let mut objects = BTreeMap::new();
    for item in table.iter().map_err(sto)? {
        let (k, v) = item.map_err(sto)?;
        objects.insert(k.value().to_string(), dec(v.value())?);
    }
    Ok(Mem {
        objects,
        last_applied,
        membership,
    })
}

impl StateMachine {
    pub(crate) fn new(
        db: Arc<Database>,
        events: broadcast::Sender<Arc<Event>>,
        applied: Arc<watch::Sender<u64>>,
    ) -> Result<StateMachine, StorageError<u64>> {
        let mem = load(&db)?;
        applied.send_replace(mem.last_applied.map(|l| l.index).unwrap_or(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let wdb = db.clone();
        let health = Health::new();
        let whealth = health.clone();
        std::thread::Builder::new()
            .name("raft-sm-writer".into())
            .spawn(move || writer_loop(wdb, rx, whealth))
            .map_err(sto)?;
        Ok(StateMachine {
            db,
            mem: Arc::new(RwLock::new(mem)),
            writer: tx,
            events,
            applied,
            health,
        })
    }

    fn mem(&self) -> std::sync::RwLockReadGuard<'_, Mem> {
        self.mem.read().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, op: Op) -> Result<(), StorageError<u64>> {
        self.check()?;
        self.writer
            .send(op)
            .map_err(|_| sto(std::io::Error::other("the state machine writer stopped")))
    }

    /// Fails once the writer has failed: nothing more is applied (see the module doc).
    fn check(&self) -> Result<(), StorageError<u64>> {
        match self.health.failed() {
            Some(why) => Err(sto(std::io::Error::other(format!(
                "the state machine stopped applying: {why}"
            )))),
            None => Ok(()),
        }
    }

    /// Waits until everything queued so far is durable in the file.
    pub(crate) async fn sync(&self) -> Result<(), StorageError<u64>> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(Op::Sync(tx))?;
        let r = tokio::task::spawn_blocking(move || rx.recv())
            .await
            .map_err(sto)?
            .map_err(|_| sto(std::io::Error::other("the state machine writer stopped")))?;
        r.map_err(|e| sto(std::io::Error::other(e)))
    }

    /// The object, from memory.
    pub(crate) fn get(&self, kind: Kind, id: &str) -> Option<Object> {
        self.mem().objects.get(&object_key(kind, id)).cloned()
    }

    /// Every object of a kind, from memory, ordered by id.
    pub(crate) fn list(&self, kind: Kind) -> Vec<Object> {
        let lo = format!("{kind}/");
        let hi = format!("{kind}0"); // '0' follows '/'
        self.mem()
            .objects
            .range(lo..hi)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// `f` over the objects of a kind, in memory, ordered by id, without copying them (the
    /// replica's read lock is held while `f` runs: keep it short and never await in it).
    pub(crate) fn scan<R>(
        &self,
        kind: Kind,
        f: impl FnOnce(&mut dyn Iterator<Item = &Object>) -> R,
    ) -> R {
        let lo = format!("{kind}/");
        let hi = format!("{kind}0"); // '0' follows '/'
        let mem = self.mem();
        let mut objects = mem.objects.range(lo..hi).map(|(_, o)| o);
        f(&mut objects)
    }

    /// Every stored object (for tests and diagnostics).
    pub fn dump(&self) -> Vec<Object> {
        self.mem().objects.values().cloned().collect()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let (last, membership, objects) = {
            let mem = self.mem();
            (
                mem.last_applied,
                mem.membership.clone(),
                mem.objects.values().cloned().collect::<Vec<_>>(),
            )
        };
        let data = enc(&SnapshotData { objects })?;
        let snapshot_id = match &last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, model::new_id()),
            None => format!("0-0-{}", model::new_id()),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id,
        };
        // Durable before openraft may purge the log behind it.
        self.send(Op::Snapshot {
            meta: enc(&meta)?,
            data: data.clone(),
        })?;
        self.sync().await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        let mem = self.mem();
        Ok((mem.last_applied, mem.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcomes>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        self.check()?;
        let mut outcomes = Vec::new();
        let mut events = Vec::new();
        let mut rows: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        let mut meta_rows: Vec<(&'static str, Vec<u8>)> = Vec::new();
        let mut last = None;
        {
            let mut mem = self.mem.write().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                let index = entry.log_id.index;
                last = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => outcomes.push(Outcomes::default()),
                    EntryPayload::Membership(m) => {
                        mem.membership = StoredMembership::new(Some(entry.log_id), m);
                        meta_rows.push(("membership", enc(&mem.membership)?));
                        outcomes.push(Outcomes::default());
                    }
                    EntryPayload::Normal(proposal) => {
                        let mut each = Vec::with_capacity(proposal.batches.len());
                        for batch in &proposal.batches {
                            let term = entry.log_id.leader_id.get_term();
                            match check_term(batch, term)
                                .and_then(|()| apply_batch(&mut *mem, batch, index))
                            {
                                Err(conflict) => each.push(Outcome {
                                    objects: Vec::new(),
                                    conflict: Some(conflict),
                                }),
                                Ok(staged) => {
                                    let mut applied = Vec::with_capacity(staged.len());
                                    let mut results = Vec::with_capacity(staged.len());
                                    for (kind, id, old, new) in staged {
                                        let key = object_key(kind, &id);
                                        match &new {
                                            Some(obj) => {
                                                rows.insert(key.clone(), Some(enc(obj)?));
                                                mem.objects.insert(key, obj.clone());
                                                applied.push(Applied::Put(obj.clone()));
                                            }
                                            None => {
                                                rows.insert(key.clone(), None);
                                                mem.objects.remove(&key);
                                                if let Some(old) = old {
                                                    applied.push(Applied::Deleted(old));
                                                }
                                            }
                                        }
                                        results.push(new);
                                    }
                                    events.push(Event::Changes {
                                        index,
                                        changes: applied,
                                    });
                                    each.push(Outcome {
                                        objects: results,
                                        conflict: None,
                                    });
                                }
                            }
                        }
                        outcomes.push(Outcomes(each));
                    }
                }
            }
            if last.is_some() {
                mem.last_applied = last;
            }
        }
        let Some(last) = last else {
            return Ok(outcomes);
        };
        meta_rows.push(("last_applied", enc(&Some(last))?));
        self.send(Op::Rows {
            objects: rows.into_iter().collect(),
            meta: meta_rows,
        })?;
        self.applied.send_replace(last.index);
        for e in events {
            // No receiver is fine: nobody watches yet.
            let _ = self.events.send(Arc::new(e));
        }
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let parsed = decode_snapshot(&data)?;
        let mut rows = Vec::with_capacity(parsed.len());
        let mut objects = BTreeMap::new();
        for obj in parsed {
            let key = object_key(obj.kind(), obj.id());
            rows.push((key.clone(), enc(&obj)?));
            objects.insert(key, obj);
        }
        {
            let mut mem = self.mem.write().unwrap_or_else(|e| e.into_inner());
            *mem = Mem {
                objects,
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
        }
        self.send(Op::Replace {
            objects: rows,
            meta: vec![
                ("last_applied", enc(&meta.last_log_id)?),
                ("membership", enc(&meta.last_membership)?),
            ],
        })?;
        self.send(Op::Snapshot {
            meta: enc(meta)?,
            data,
        })?;
        self.sync().await?;
        let index = meta.last_log_id.map(|l| l.index).unwrap_or(0);
        self.applied.send_replace(index);
        let _ = self.events.send(Arc::new(Event::Reset { index }));
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let txn = self.db.begin_read().map_err(sto)?;
        let table = txn.open_table(SNAPSHOT).map_err(sto)?;
        let Some(meta) = get_json::<SnapshotMeta<u64, BasicNode>>(&table, "meta")? else {
            return Ok(None);
        };
        let data = match table.get("data").map_err(sto)? {
            Some(v) => v.value().to_vec(),
            None => return Ok(None),
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
