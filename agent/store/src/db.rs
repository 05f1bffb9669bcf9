//! The redb files behind the log (log.redb) and the state machine (state.redb): table layout
//! and error mapping.

use openraft::{AnyError, StorageError, StorageIOError};
use redb::TableDefinition;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Raft log entries by index (JSON `Entry`).
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Raft bookkeeping: "vote", "committed", "last_purged".
pub(crate) const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// Objects by "kind/id" (JSON `Object`).
pub(crate) const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// State-machine bookkeeping: "last_applied", "membership".
pub(crate) const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
/// The last built or installed snapshot: "meta", "data".
pub(crate) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

pub(crate) fn object_key(kind: model::Kind, id: &str) -> String {
    format!("{kind}/{id}")
}

/// Maps any redb or serde error to openraft's storage error.
pub(crate) fn sto<E: std::error::Error + 'static>(e: E) -> StorageError<u64> {
    StorageError::from(StorageIOError::write(AnyError::new(&e)))
}

pub(crate) fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError<u64>> {
    serde_json::to_vec(v).map_err(sto)
}

pub(crate) fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, StorageError<u64>> {
    serde_json::from_slice(b).map_err(sto)
}

/// Reads one JSON value from a `&str`-keyed table of a read or write transaction.
pub(crate) fn get_json<T: DeserializeOwned>(
    table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, StorageError<u64>> {
    match table.get(key).map_err(sto)? {
        Some(v) => Ok(Some(dec(v.value())?)),
        None => Ok(None),
    }
}

/// Creates the log's tables so read transactions never meet a missing one.
pub(crate) fn create_log_tables(db: &redb::Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(RAFT_META)?;
    txn.commit()?;
    Ok(())
}

/// Creates the state machine's tables.
pub(crate) fn create_sm_tables(db: &redb::Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    txn.open_table(OBJECTS)?;
    txn.open_table(SM_META)?;
    txn.open_table(SNAPSHOT)?;
    txn.commit()?;
    Ok(())
}

/// The log's file in a store directory.
pub(crate) fn log_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("log.redb")
}

/// The state machine's file in a store directory.
pub(crate) fn sm_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("state.redb")
}

/// Runs blocking storage work (fsync) without stalling the async runtime's other tasks.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Opens (or creates) a redb file, waiting up to 5 s for a replica that was just shut down to
/// let go of it.
pub(crate) fn open_retrying(path: &std::path::Path) -> Result<redb::Database, redb::DatabaseError> {
    let mut tries = 0;
    loop {
        match blocking(|| redb::Database::create(path)) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 200 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            other => return other,
        }
    }
}
