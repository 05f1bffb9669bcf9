//! What changed in a node's assignments, by object id: between two whole sets, or what a
//! delta changes in the set the executor has.

use std::collections::{BTreeMap, BTreeSet};

use model::Assignments;
use model::assignment::AssignmentsDelta;

/// Ids of objects added, changed or removed between two lists (compared whole: versions alone
/// would do for stored objects, but the comparison is cheap and also right for objects that
/// were never stored).
fn changed<T: PartialEq>(old: &[T], new: &[T], id: impl Fn(&T) -> &str) -> BTreeSet<String> {
    let o: BTreeMap<&str, &T> = old.iter().map(|x| (id(x), x)).collect();
    let n: BTreeMap<&str, &T> = new.iter().map(|x| (id(x), x)).collect();
    o.keys()
        .chain(n.keys())
        .filter(|k| o.get(*k) != n.get(*k))
        .map(|k| k.to_string())
        .collect()
}

/// Ids of the objects a delta changes in `old`: those it puts that differ (or are new) and
/// those it removes that are there. Only the delta's objects are looked at.
fn changed_by<T: PartialEq>(
    old: &[T],
    put: &[T],
    removed: &[String],
    id: impl Fn(&T) -> &str,
) -> BTreeSet<String> {
    let find = |k: &str| old.iter().find(|x| id(x) == k);
    let put = put
        .iter()
        .filter(|x| find(id(x)) != Some(*x))
        .map(|x| id(x).to_string());
    let gone = removed
        .iter()
        .filter(|k| find(k).is_some())
        .map(|k| k.to_string());
    put.chain(gone).collect()
}

/// What changed in the assignments, as an incremental pass acts on it.
pub(crate) struct Changes {
    pub(crate) tasks: BTreeSet<String>,
    pub(crate) nets: BTreeSet<String>,
    pub(crate) port_changed: bool,
    pub(crate) attachments_changed: bool,
    pub(crate) services: BTreeSet<String>,
    /// The node list before, when it changed.
    pub(crate) nodes_before: Option<Vec<(String, bool)>>,
    pub(crate) keys_changed: bool,
}

impl Changes {
    /// Between two whole sets: every object compared.
    pub(crate) fn between(old: &Assignments, new: &Assignments) -> Changes {
        Changes {
            tasks: changed(&old.tasks, &new.tasks, |t| &t.meta.id),
            nets: changed(&old.networks, &new.networks, |n| &n.meta.id),
            port_changed: new.data_path_port != old.data_path_port,
            attachments_changed: new.attachments != old.attachments,
            services: changed(&old.services, &new.services, |s| &s.meta.id),
            nodes_before: (new.nodes != old.nodes).then(|| old.nodes.clone()),
            keys_changed: new.ipsec_keys != old.ipsec_keys,
        }
    }

    /// What `d` changes in `old`: only what the delta carries is compared.
    pub(crate) fn of(old: &Assignments, d: &AssignmentsDelta) -> Changes {
        Changes {
            tasks: changed_by(&old.tasks, &d.tasks, &d.removed_tasks, |t| &t.meta.id),
            nets: changed_by(&old.networks, &d.networks, &d.removed_networks, |n| {
                &n.meta.id
            }),
            port_changed: d.data_path_port.is_some_and(|p| p != old.data_path_port),
            attachments_changed: d
                .attachments
                .as_ref()
                .is_some_and(|a| *a != old.attachments),
            services: changed_by(&old.services, &d.services, &d.removed_services, |s| {
                &s.meta.id
            }),
            nodes_before: d
                .nodes
                .as_ref()
                .filter(|n| **n != old.nodes)
                .map(|_| old.nodes.clone()),
            keys_changed: d.ipsec_keys.as_ref().is_some_and(|k| *k != old.ipsec_keys),
        }
    }
}
