//! The Raft log on redb, with group commit.
//!
//! One writer thread owns every change to the log file. `append` hands it the entries (and
//! openraft's flush callback) and returns at once; the entries are readable immediately from an
//! in-memory overlay. The writer drains whatever is queued, writes it in one redb transaction and
//! commits it durably (one fsync), and only then reports those appends as flushed — so nothing is
//! acknowledged before it is on disk, and concurrent writes share fsyncs. Votes, truncation and
//! purges go through the same queue, in order, and their callers wait for the fsync.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogId, RaftLogReader, StorageError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use crate::TypeConfig;
use crate::db::{LOG, RAFT_META, dec, enc, get_json, sto};

/// Appended entries not yet written: index -> (log id, encoded entry).
type Pending = BTreeMap<u64, (LogId<u64>, Vec<u8>)>;

type Change = Box<dyn FnOnce(&WriteTransaction) -> Result<(), redb::Error> + Send>;

enum Op {
    Append(Vec<(LogId<u64>, Vec<u8>)>, LogFlushed<TypeConfig>),
    /// A change made durable with the next batch; `done` (if any) hears when.
    Change(
        Change,
        Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    ),
}

/// Handle on the log (cheap to clone; the reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Appended but not yet written: index -> (log id, encoded entry).
    pending: Arc<Mutex<Pending>>,
    writer: std::sync::mpsc::Sender<Op>,
}

fn writer_loop(db: Arc<Database>, pending: Arc<Mutex<Pending>>, rx: std::sync::mpsc::Receiver<Op>) {
    // Ends when every LogStore handle is gone.
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        ops.extend(rx.try_iter());
        let mut written: Vec<LogId<u64>> = Vec::new();
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            for op in &mut ops {
                match op {
                    Op::Append(entries, _) => {
                        let mut table = txn.open_table(LOG)?;
                        for (id, bytes) in entries.iter() {
                            table.insert(id.index, bytes.as_slice())?;
                            written.push(*id);
                        }
                    }
                    Op::Change(change, _) => {
                        let f = std::mem::replace(change, Box::new(|_| Ok(())));
                        f(&txn)?;
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })()
        .map_err(|e| e.to_string());
        if result.is_ok() {
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            for id in written {
                if p.get(&id.index).is_some_and(|(pid, _)| *pid == id) {
                    p.remove(&id.index);
                }
            }
        }
        for op in ops {
            match op {
                Op::Append(_, cb) => {
                    cb.log_io_completed(result.clone().map_err(std::io::Error::other))
                }
                Op::Change(_, Some(done)) => {
                    let _ = done.send(result.clone());
                }
                Op::Change(_, None) => {}
            }
        }
    }
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> LogStore {
        let (tx, rx) = std::sync::mpsc::channel();
        let pending: Arc<Mutex<Pending>> = Default::default();
        let (wdb, wpending) = (db.clone(), pending.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(wdb, wpending, rx))
            .expect("spawn the raft log writer");
        LogStore {
            db,
            pending,
            writer: tx,
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<u64>> {
        let txn = self.db.begin_read().map_err(sto)?;
        let table = txn.open_table(RAFT_META).map_err(sto)?;
        get_json(&table, key)
    }

    /// Queues a change and waits until it is durable.
    async fn change_durably(&self, change: Change) -> Result<(), StorageError<u64>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer
            .send(Op::Change(change, Some(tx)))
            .map_err(|_| sto(std::io::Error::other("the raft log writer stopped")))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(sto(std::io::Error::other(e))),
            Err(_) => Err(sto(std::io::Error::other("the raft log writer stopped"))),
        }
    }

    fn put_meta_change(key: &'static str, bytes: Vec<u8>) -> Change {
        Box::new(move |txn| {
            txn.open_table(RAFT_META)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        let mut found: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        {
            let txn = self.db.begin_read().map_err(sto)?;
            let table = txn.open_table(LOG).map_err(sto)?;
            for item in table.range::<u64>(bounds(&range)).map_err(sto)? {
                let (k, v) = item.map_err(sto)?;
                found.insert(k.value(), v.value().to_vec());
            }
        }
        for (k, (_, bytes)) in self.pending().range(bounds(&range)) {
            found.insert(*k, bytes.clone());
        }
        found.values().map(|b| dec(b)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged: Option<LogId<u64>> = self.meta("last_purged")?;
        let in_memory = self.pending().last_key_value().map(|(_, (id, _))| *id);
        let on_disk = {
            let txn = self.db.begin_read().map_err(sto)?;
            let table = txn.open_table(LOG).map_err(sto)?;
            match table.last().map_err(sto)? {
                Some((_, v)) => Some(*dec::<Entry<TypeConfig>>(v.value())?.get_log_id()),
                None => None,
            }
        };
        let last = match (in_memory, on_disk) {
            (Some(a), Some(b)) => Some(if a.index >= b.index { a } else { b }),
            (a, b) => a.or(b).or(last_purged),
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.change_durably(Self::put_meta_change("vote", enc(vote)?))
            .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.meta("vote")
    }

    async fn save_committed(
        &mut self,
        _committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        // Not persisted: every commit would touch a second table in each log transaction. After
        // a restart the committed index is re-learned from the leader (or, alone, by election).
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.meta::<Option<LogId<u64>>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let encoded: Vec<(LogId<u64>, Vec<u8>)> = entries
            .into_iter()
            .map(|e| Ok((e.log_id, enc(&e)?)))
            .collect::<Result<_, StorageError<u64>>>()?;
        {
            let mut p = self.pending();
            for (id, bytes) in &encoded {
                p.insert(id.index, (*id, bytes.clone()));
            }
        }
        if let Err(e) = self.writer.send(Op::Append(encoded, callback))
            && let Op::Append(_, cb) = e.0
        {
            cb.log_io_completed(Err(std::io::Error::other("the raft log writer stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.pending().retain(|k, _| *k < log_id.index);
        let from = log_id.index;
        self.change_durably(Box::new(move |txn| {
            txn.open_table(LOG)?.retain_in(from.., |_, _| false)?;
            Ok(())
        }))
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.pending().retain(|k, _| *k > log_id.index);
        let bytes = enc(&log_id)?;
        let upto = log_id.index;
        self.change_durably(Box::new(move |txn| {
            txn.open_table(RAFT_META)?
                .insert("last_purged", bytes.as_slice())?;
            txn.open_table(LOG)?.retain_in(..=upto, |_, _| false)?;
            Ok(())
        }))
        .await
    }
}
