//! What the Raft log carries: batches of changes to objects, applied atomically with optimistic
//! version checks, and what applying them produced.

use chrono::{DateTime, Utc};
use model::{Kind, Object};
use serde::{Deserialize, Serialize};

/// One change to one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Creates the object; fails if its id is taken.
    Create(Object),
    /// Replaces the object; `meta.version` must equal the stored version (optimistic check).
    Update(Object),
    /// Applies a JSON merge patch (RFC 7386) to the stored object, checked against `version`
    /// when given. Field updates without a read-modify-write race (labels, availability).
    Patch {
        kind: Kind,
        id: String,
        patch: serde_json::Value,
        version: Option<u64>,
    },
    /// Deletes the object, checked against `version` when given.
    Delete {
        kind: Kind,
        id: String,
        version: Option<u64>,
    },
}

/// The unit of a proposal: every change applies, or none does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub changes: Vec<Change>,
    /// When the proposer made the batch: becomes `updated_at` (and `created_at` of creations),
    /// so every replica applies the same bytes.
    pub at: DateTime<Utc>,
    /// The Raft term of the leader that decided the batch from its own view (allocations):
    /// the batch applies only in a log entry of that term, so a leader deposed between deciding
    /// and writing (its write retried, or forwarded to the next leader) cannot write its
    /// decision under another leader, who may have decided otherwise meanwhile. None: applies
    /// in any term (writes that decide nothing from the leader's view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<u64>,
}

impl Batch {
    pub fn new(changes: Vec<Change>) -> Batch {
        Batch {
            changes,
            at: Utc::now(),
            term: None,
        }
    }

    pub fn one(change: Change) -> Batch {
        Batch::new(vec![change])
    }

    /// The batch as decided by the leader of `term` (see [`Batch::term`]).
    pub fn decided_in(mut self, term: u64) -> Batch {
        self.term = Some(term);
        self
    }
}

/// Refuses a batch decided by the leader of another term than the entry's (see
/// [`Batch::term`]).
pub fn check_term(batch: &Batch, entry_term: u64) -> Result<(), Conflict> {
    match batch.term {
        Some(decided) if decided != entry_term => Err(Conflict::Deposed {
            decided,
            written: entry_term,
        }),
        _ => Ok(()),
    }
}

/// What one Raft entry carries: the batches proposed concurrently on the leader, gathered into
/// one entry so they share a log write. Each batch applies atomically and independently.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Proposal {
    pub batches: Vec<Batch>,
}

/// What applying one Raft entry produced: one outcome per batch, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Outcomes(pub Vec<Outcome>);

/// Why a batch was not applied (nothing of it was).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum Conflict {
    #[error("{kind} {id} already exists")]
    Exists { kind: Kind, id: String },
    #[error("{kind} {id} not found")]
    NotFound { kind: Kind, id: String },
    #[error(
        "{kind} {id} was changed concurrently (version {actual}, expected {expected}); read it again and retry"
    )]
    Version {
        kind: Kind,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "this change was decided by the leader of term {decided}, deposed before it was written (refused in term {written}); an earlier try of it may have been applied: check, then retry"
    )]
    Deposed { decided: u64, written: u64 },
    #[error("{kind} {id}: invalid change: {reason}")]
    Invalid {
        kind: Kind,
        id: String,
        reason: String,
    },
}

/// What applying a log entry produced (the Raft response).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Outcome {
    /// The objects as stored after each change (None for deletions), in order.
    pub objects: Vec<Option<Object>>,
    /// Set when the batch was refused; `objects` is then empty.
    pub conflict: Option<Conflict>,
}

/// One applied change, as the change feed reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Created or updated: the object as stored now.
    Put(Object),
    /// Deleted: the object as it was.
    Deleted(Object),
}

/// An event of the change feed.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The changes of one log entry, at Raft index `index`.
    Changes { index: u64, changes: Vec<Applied> },
    /// The whole state was replaced (a snapshot was installed): re-read everything.
    Reset { index: u64 },
}

/// Read access to the current objects, for applying a batch.
pub trait View {
    fn get(&mut self, kind: Kind, id: &str) -> Option<Object>;
}

/// One staged write: kind, id, the object before (None if created) and after (None if deleted).
pub type Staged = (Kind, String, Option<Object>, Option<Object>);

/// Applies `batch` at log index `index` against `view`: either every change (returned as the
/// objects to write, in order) or a conflict. Pure and deterministic.
pub fn apply_batch(
    view: &mut dyn View,
    batch: &Batch,
    index: u64,
) -> Result<Vec<Staged>, Conflict> {
    // Later changes of the batch see the earlier ones.
    let mut staged: Vec<Staged> = Vec::new();
    let current = |view: &mut dyn View, staged: &[Staged], kind: Kind, id: &str| {
        staged
            .iter()
            .rev()
            .find(|(k, i, ..)| *k == kind && i == id)
            .map(|(.., new)| new.clone())
            .unwrap_or_else(|| view.get(kind, id))
    };
    for change in &batch.changes {
        match change {
            Change::Create(obj) => {
                let (kind, id) = (obj.kind(), obj.id().to_string());
                if current(view, &staged, kind, &id).is_some() {
                    return Err(Conflict::Exists { kind, id });
                }
                let mut obj = obj.clone();
                let meta = obj.meta_mut();
                meta.version = index;
                meta.created_at = batch.at;
                meta.updated_at = batch.at;
                staged.push((kind, id, None, Some(obj)));
            }
            Change::Update(obj) => {
                let (kind, id) = (obj.kind(), obj.id().to_string());
                let Some(old) = current(view, &staged, kind, &id) else {
                    return Err(Conflict::NotFound { kind, id });
                };
                if old.meta().version != obj.meta().version {
                    return Err(Conflict::Version {
                        kind,
                        id,
                        expected: obj.meta().version,
                        actual: old.meta().version,
                    });
                }
                let mut obj = obj.clone();
                let meta = obj.meta_mut();
                meta.version = index;
                meta.created_at = old.meta().created_at;
                meta.updated_at = batch.at;
                staged.push((kind, id, Some(old), Some(obj)));
            }
            Change::Patch {
                kind,
                id,
                patch,
                version,
            } => {
                let (kind, id) = (*kind, id.clone());
                let Some(old) = current(view, &staged, kind, &id) else {
                    return Err(Conflict::NotFound { kind, id });
                };
                check_version(&old, *version, kind, &id)?;
                let mut value = serde_json::to_value(&old).map_err(|e| Conflict::Invalid {
                    kind,
                    id: id.clone(),
                    reason: e.to_string(),
                })?;
                merge_patch(&mut value, patch);
                let mut obj: Object =
                    serde_json::from_value(value).map_err(|e| Conflict::Invalid {
                        kind,
                        id: id.clone(),
                        reason: format!("the patched object is not valid: {e}"),
                    })?;
                if obj.kind() != kind || obj.id() != id {
                    return Err(Conflict::Invalid {
                        kind,
                        id,
                        reason: "a patch may not change the kind or the id".into(),
                    });
                }
                let meta = obj.meta_mut();
                meta.version = index;
                meta.created_at = old.meta().created_at;
                meta.updated_at = batch.at;
                staged.push((kind, id, Some(old), Some(obj)));
            }
            Change::Delete { kind, id, version } => {
                let (kind, id) = (*kind, id.clone());
                let Some(old) = current(view, &staged, kind, &id) else {
                    return Err(Conflict::NotFound { kind, id });
                };
                check_version(&old, *version, kind, &id)?;
                staged.push((kind, id, Some(old), None));
            }
        }
    }
    Ok(staged)
}

fn check_version(old: &Object, version: Option<u64>, kind: Kind, id: &str) -> Result<(), Conflict> {
    match version {
        Some(v) if v != old.meta().version => Err(Conflict::Version {
            kind,
            id: id.to_string(),
            expected: v,
            actual: old.meta().version,
        }),
        _ => Ok(()),
    }
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<(Kind, String), Object>);
    impl View for Map {
        fn get(&mut self, kind: Kind, id: &str) -> Option<Object> {
            self.0.get(&(kind, id.to_string())).cloned()
        }
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut v = serde_json::json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(
            &mut v,
            &serde_json::json!({"a": {"b": null, "e": 3}, "d": [2]}),
        );
        assert_eq!(v, serde_json::json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }

    #[test]
    fn a_batch_decided_in_a_term_applies_only_in_that_term() {
        let b = Batch::one(Change::Create(sample()));
        assert_eq!(check_term(&b, 7), Ok(()), "no term: any entry");
        let b = b.decided_in(6);
        assert_eq!(check_term(&b, 6), Ok(()));
        assert_eq!(
            check_term(&b, 7),
            Err(Conflict::Deposed {
                decided: 6,
                written: 7
            })
        );
        // Stored logs written before the field existed still read.
        let old = r#"{"changes":[],"at":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(serde_json::from_str::<Batch>(old).unwrap().term, None);
        let json = serde_json::to_string(&Batch::new(vec![])).unwrap();
        assert!(!json.contains("term"), "{json}");
    }

    #[test]
    fn batches_check_existence_and_versions() {
        let mut view = Map(HashMap::new());
        let cluster = sample();
        let out = apply_batch(&mut view, &Batch::one(Change::Create(cluster.clone())), 5).unwrap();
        let stored = out[0].3.clone().unwrap();
        assert_eq!(stored.meta().version, 5);
        view.0
            .insert((Kind::Cluster, stored.id().to_string()), stored.clone());
        assert!(matches!(
            apply_batch(&mut view, &Batch::one(Change::Create(cluster.clone())), 6),
            Err(Conflict::Exists { .. })
        ));
        // A stale version is refused, the current one accepted.
        let mut stale = stored.clone();
        stale.meta_mut().version = 4;
        assert!(matches!(
            apply_batch(&mut view, &Batch::one(Change::Update(stale)), 6),
            Err(Conflict::Version { .. })
        ));
        assert!(apply_batch(&mut view, &Batch::one(Change::Update(stored.clone())), 6).is_ok());
        // A patch that breaks the object is refused.
        let bad = Change::Patch {
            kind: Kind::Cluster,
            id: stored.id().to_string(),
            patch: serde_json::json!({"data_path_port": "x"}),
            version: None,
        };
        assert!(matches!(
            apply_batch(&mut view, &Batch::one(bad), 7),
            Err(Conflict::Invalid { .. })
        ));
        let good = Change::Patch {
            kind: Kind::Cluster,
            id: stored.id().to_string(),
            patch: serde_json::json!({"data_path_port": 4790}),
            version: Some(5),
        };
        let out = apply_batch(&mut view, &Batch::one(good), 7).unwrap();
        match out[0].3.clone().unwrap() {
            Object::Cluster(c) => assert_eq!(c.data_path_port, 4790),
            _ => unreachable!(),
        }
        // Delete then create in one batch sees the earlier change.
        let b = Batch::new(vec![
            Change::Delete {
                kind: Kind::Cluster,
                id: stored.id().to_string(),
                version: None,
            },
            Change::Create(stored.clone()),
        ]);
        assert!(apply_batch(&mut view, &b, 8).is_ok());
    }

    pub(crate) fn sample() -> Object {
        super::tests_support::sample()
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use model::Object;

    pub(crate) fn sample() -> Object {
        Object::Cluster(model::Cluster {
            meta: model::Meta::new(),
            ca_cert_pem: String::new(),
            ca_key_pem: String::new(),
            join_tokens: model::cluster::JoinTokens {
                worker: String::new(),
                manager: String::new(),
            },
            default_addr_pools: vec![],
            subnet_size: 24,
            data_path_port: 4789,
            network_keys: vec![],
            settings: Default::default(),
            data_key_rotated_at: None,
            removed_nodes: Vec::new(),
            root_rotation: None,
            ca_force_rotate: 0,
        })
    }
}
