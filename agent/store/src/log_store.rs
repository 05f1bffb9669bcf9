//! The Raft log on redb. Every append, vote and truncation is a durable (fsynced) commit before
//! openraft is told it is done.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogId, RaftLogReader, StorageError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable};

use crate::TypeConfig;
use crate::db::{LOG, RAFT_META, blocking, dec, enc, get_json, sto};

/// Handle on the log tables (cheap to clone; the reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub(crate) fn new(db: Arc<Database>) -> LogStore {
        LogStore { db }
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<u64>> {
        let txn = self.db.begin_read().map_err(sto)?;
        let table = txn.open_table(RAFT_META).map_err(sto)?;
        get_json(&table, key)
    }

    fn put_meta<T: serde::Serialize>(&self, key: &str, v: &T) -> Result<(), StorageError<u64>> {
        let bytes = enc(v)?;
        blocking(|| {
            let txn = self.db.begin_write().map_err(sto)?;
            {
                let mut table = txn.open_table(RAFT_META).map_err(sto)?;
                table.insert(key, bytes.as_slice()).map_err(sto)?;
            }
            txn.commit().map_err(sto)
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
        let txn = self.db.begin_read().map_err(sto)?;
        let table = txn.open_table(LOG).map_err(sto)?;
        let mut out = Vec::new();
        for item in table.range::<u64>(bounds(&range)).map_err(sto)? {
            let (_, v) = item.map_err(sto)?;
            out.push(dec(v.value())?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged: Option<LogId<u64>> = self.meta("last_purged")?;
        let txn = self.db.begin_read().map_err(sto)?;
        let table = txn.open_table(LOG).map_err(sto)?;
        let last = match table.last().map_err(sto)? {
            Some((_, v)) => Some(*dec::<Entry<TypeConfig>>(v.value())?.get_log_id()),
            None => last_purged,
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
        self.put_meta("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.meta("vote")
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.put_meta("committed", &committed)
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
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, enc(&e)?)))
            .collect::<Result<_, StorageError<u64>>>()?;
        let result = blocking(|| {
            let txn = self.db.begin_write().map_err(sto)?;
            {
                let mut table = txn.open_table(LOG).map_err(sto)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(sto)?;
                }
            }
            txn.commit().map_err(sto)
        });
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        blocking(|| {
            let txn = self.db.begin_write().map_err(sto)?;
            {
                let mut table = txn.open_table(LOG).map_err(sto)?;
                table.retain_in(log_id.index.., |_, _| false).map_err(sto)?;
            }
            txn.commit().map_err(sto)
        })
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let bytes = enc(&log_id)?;
        blocking(|| {
            let txn = self.db.begin_write().map_err(sto)?;
            {
                let mut meta = txn.open_table(RAFT_META).map_err(sto)?;
                meta.insert("last_purged", bytes.as_slice()).map_err(sto)?;
                let mut table = txn.open_table(LOG).map_err(sto)?;
                table
                    .retain_in(..=log_id.index, |_, _| false)
                    .map_err(sto)?;
            }
            txn.commit().map_err(sto)
        })
    }
}
