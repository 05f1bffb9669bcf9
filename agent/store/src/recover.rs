//! `swarm init --force-new-cluster`: offline surgery on a surviving manager's store so that it
//! restarts as the only voter of the same cluster, with every object kept.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogId, Vote,
};
use redb::ReadableTable;

use crate::db::{self, LOG, RAFT_META, dec, enc, get_json};
use crate::{Error, NodeId, TypeConfig};

/// Appends a membership entry naming `id` (at `addr`) as the only voter, in a term above every
/// term seen, and votes for it in that term. Started again, the node elects itself at once and
/// commits the entry; the lost managers are no longer members. Run it only while the store is
/// closed; `dir` is the store's directory.
pub fn force_new_cluster(dir: &Path, id: NodeId, addr: &str) -> Result<(), Error> {
    let err = |e: &dyn std::fmt::Display| Error::Storage(e.to_string());
    let path = db::log_path(dir);
    let database = db::open_retrying(&path).map_err(|e| Error::Open {
        path: path.display().to_string(),
        source: e.into(),
    })?;
    db::create_log_tables(&database).map_err(|e| err(&e))?;
    let txn = database.begin_write().map_err(|e| err(&e))?;
    {
        let mut meta = txn.open_table(RAFT_META).map_err(|e| err(&e))?;
        let mut log = txn.open_table(LOG).map_err(|e| err(&e))?;
        let vote: Option<Vote<NodeId>> = get_json(&meta, "vote").map_err(|e| err(&e))?;
        let purged: Option<LogId<NodeId>> = get_json(&meta, "last_purged").map_err(|e| err(&e))?;
        let last: Option<LogId<NodeId>> = match log.last().map_err(|e| err(&e))? {
            Some((_, v)) => Some(
                *dec::<Entry<TypeConfig>>(v.value())
                    .map_err(|e| err(&e))?
                    .get_log_id(),
            ),
            None => purged,
        };
        let Some(last) = last else {
            return Err(Error::Storage(
                "this node's raft log is empty: it never was part of a cluster, so there is nothing to recover; use `netctl swarm init`"
                    .into(),
            ));
        };
        let term = vote
            .map(|v| v.leader_id().term)
            .unwrap_or(0)
            .max(last.leader_id.term)
            + 1;
        let mut voters = BTreeSet::new();
        voters.insert(id);
        let mut nodes = BTreeMap::new();
        nodes.insert(id, BasicNode::new(addr));
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, id), last.index + 1),
            payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
        };
        log.insert(last.index + 1, enc(&entry).map_err(|e| err(&e))?.as_slice())
            .map_err(|e| err(&e))?;
        meta.insert(
            "vote",
            enc(&Vote::new(term, id)).map_err(|e| err(&e))?.as_slice(),
        )
        .map_err(|e| err(&e))?;
    }
    txn.commit().map_err(|e| err(&e))?;
    Ok(())
}
