//! The state machine on redb: the objects, the last applied log id and membership, and the
//! snapshot. Applying commits without fsync (redb `Durability::None`): the log is durable, and
//! redb makes these commits durable with the next durable commit (every log append). Building or
//! installing a snapshot is a durable commit, and logs are only purged behind a snapshot, so a
//! crash can lose no applied entry that is not still in the log.

use std::io::Cursor;
use std::sync::Arc;

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
use crate::change::{Applied, Event, Outcome, View, apply_batch};
use crate::db::{OBJECTS, SM_META, SNAPSHOT, blocking, dec, enc, get_json, object_key, sto};

type Membership = StoredMembership<u64, BasicNode>;

#[derive(Serialize, Deserialize)]
struct SnapshotData {
    objects: Vec<Object>,
}

/// Handle on the state machine (cheap to clone; the snapshot builder is a clone).
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    events: broadcast::Sender<Arc<Event>>,
    applied: Arc<watch::Sender<u64>>,
}

struct TableView<'a, T: ReadableTable<&'static str, &'static [u8]>>(&'a T);

impl<T: ReadableTable<&'static str, &'static [u8]>> View for TableView<'_, T> {
    fn get(&mut self, kind: Kind, id: &str) -> Option<Object> {
        match get_json(self.0, &object_key(kind, id)) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(%kind, id, error = %e, "cannot read a stored object");
                None
            }
        }
    }
}

impl StateMachine {
    pub(crate) fn new(
        db: Arc<Database>,
        events: broadcast::Sender<Arc<Event>>,
        applied: Arc<watch::Sender<u64>>,
    ) -> Result<StateMachine, StorageError<u64>> {
        let sm = StateMachine {
            db,
            events,
            applied,
        };
        let (last, _) = sm.read_applied()?;
        sm.applied.send_replace(last.map(|l| l.index).unwrap_or(0));
        Ok(sm)
    }

    fn read_applied(&self) -> Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        let txn = self.db.begin_read().map_err(sto)?;
        let table = txn.open_table(SM_META).map_err(sto)?;
        let last = get_json::<Option<LogId<u64>>>(&table, "last_applied")?.flatten();
        let membership = get_json(&table, "membership")?.unwrap_or_default();
        Ok((last, membership))
    }

    fn all_objects(&self) -> Result<Vec<Object>, StorageError<u64>> {
        let txn = self.db.begin_read().map_err(sto)?;
        let table = txn.open_table(OBJECTS).map_err(sto)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(sto)? {
            let (_, v) = item.map_err(sto)?;
            out.push(dec(v.value())?);
        }
        Ok(out)
    }

    fn save_snapshot(
        &self,
        meta: &SnapshotMeta<u64, BasicNode>,
        data: &[u8],
    ) -> Result<(), StorageError<u64>> {
        let meta_bytes = enc(meta)?;
        blocking(|| {
            let txn = self.db.begin_write().map_err(sto)?;
            {
                let mut table = txn.open_table(SNAPSHOT).map_err(sto)?;
                table.insert("meta", meta_bytes.as_slice()).map_err(sto)?;
                table.insert("data", data).map_err(sto)?;
            }
            txn.commit().map_err(sto)
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        // One read transaction: the objects and the applied id agree.
        let (last, membership, objects) = {
            let txn = self.db.begin_read().map_err(sto)?;
            let meta = txn.open_table(SM_META).map_err(sto)?;
            let last = get_json::<Option<LogId<u64>>>(&meta, "last_applied")?.flatten();
            let membership: Membership = get_json(&meta, "membership")?.unwrap_or_default();
            let table = txn.open_table(OBJECTS).map_err(sto)?;
            let mut objects = Vec::new();
            for item in table.iter().map_err(sto)? {
                let (_, v) = item.map_err(sto)?;
                objects.push(dec::<Object>(v.value())?);
            }
            (last, membership, objects)
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
        // A durable commit: it also makes every earlier non-durable apply durable.
        self.save_snapshot(&meta, &data)?;
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
        self.read_applied()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let (outcomes, events) = blocking(|| -> Result<_, StorageError<u64>> {
            let mut txn = self.db.begin_write().map_err(sto)?;
            txn.set_durability(Durability::None).map_err(sto)?;
            let mut outcomes = Vec::with_capacity(entries.len());
            let mut events = Vec::new();
            {
                let mut objects = txn.open_table(OBJECTS).map_err(sto)?;
                let mut meta = txn.open_table(SM_META).map_err(sto)?;
                for entry in &entries {
                    let index = entry.log_id.index;
                    match &entry.payload {
                        EntryPayload::Blank => outcomes.push(Outcome::default()),
                        EntryPayload::Membership(m) => {
                            let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                            meta.insert("membership", enc(&stored)?.as_slice())
                                .map_err(sto)?;
                            outcomes.push(Outcome::default());
                        }
                        EntryPayload::Normal(batch) => {
                            let result = apply_batch(&mut TableView(&objects), batch, index);
                            match result {
                                Err(conflict) => outcomes.push(Outcome {
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
                                                objects
                                                    .insert(key.as_str(), enc(obj)?.as_slice())
                                                    .map_err(sto)?;
                                                applied.push(Applied::Put(obj.clone()));
                                            }
                                            None => {
                                                objects.remove(key.as_str()).map_err(sto)?;
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
                                    outcomes.push(Outcome {
                                        objects: results,
                                        conflict: None,
                                    });
                                }
                            }
                        }
                    }
                }
                meta.insert("last_applied", enc(&Some(last))?.as_slice())
                    .map_err(sto)?;
            }
            txn.commit().map_err(sto)?;
            Ok((outcomes, events))
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
        let parsed: SnapshotData = dec(&data)?;
        let meta_bytes = enc(meta)?;
        let last_bytes = enc(&meta.last_log_id)?;
        let membership_bytes = enc(&meta.last_membership)?;
        blocking(|| -> Result<(), StorageError<u64>> {
            let txn = self.db.begin_write().map_err(sto)?;
            {
                let mut objects = txn.open_table(OBJECTS).map_err(sto)?;
                objects.retain(|_, _| false).map_err(sto)?;
                for obj in &parsed.objects {
                    objects
                        .insert(
                            object_key(obj.kind(), obj.id()).as_str(),
                            enc(obj)?.as_slice(),
                        )
                        .map_err(sto)?;
                }
                let mut sm = txn.open_table(SM_META).map_err(sto)?;
                sm.insert("last_applied", last_bytes.as_slice())
                    .map_err(sto)?;
                sm.insert("membership", membership_bytes.as_slice())
                    .map_err(sto)?;
                let mut snap = txn.open_table(SNAPSHOT).map_err(sto)?;
                snap.insert("meta", meta_bytes.as_slice()).map_err(sto)?;
                snap.insert("data", data.as_slice()).map_err(sto)?;
            }
            txn.commit().map_err(sto)
        })?;
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

impl StateMachine {
    /// Every stored object (for tests and diagnostics).
    pub fn dump(&self) -> Result<Vec<Object>, StorageError<u64>> {
        self.all_objects()
    }
}
