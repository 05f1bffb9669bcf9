//! A set of slab keys that costs no allocation for the common sizes (most names point at one or
//! two records) and keeps O(1) insert/remove when large (a service's tasks, an alias every task
//! carries). 24 bytes inline; three or more members live in a boxed hash-indexed set.

use indexmap::IndexSet;

#[derive(Debug, Clone, Default)]
pub(crate) enum Ids {
    #[default]
    Empty,
    One(usize),
    Two(usize, usize),
    Many(Box<IndexSet<usize>>),
}

impl Ids {
    /// Adds `k`; a key already present is not added twice.
    pub(crate) fn insert(&mut self, k: usize) {
        *self = match std::mem::take(self) {
            Ids::Empty => Ids::One(k),
            Ids::One(a) if a == k => Ids::One(a),
            Ids::One(a) => Ids::Two(a, k),
            Ids::Two(a, b) if a == k || b == k => Ids::Two(a, b),
            Ids::Two(a, b) => Ids::Many(Box::new([a, b, k].into_iter().collect())),
            Ids::Many(mut set) => {
                set.insert(k);
                Ids::Many(set)
            }
        };
    }

    /// Removes `k` if present (the order of the rest is not kept).
    pub(crate) fn remove(&mut self, k: usize) {
        *self = match std::mem::take(self) {
            Ids::One(a) if a == k => Ids::Empty,
            Ids::Two(a, b) if a == k => Ids::One(b),
            Ids::Two(a, b) if b == k => Ids::One(a),
            Ids::Many(mut set) => {
                set.swap_remove(&k);
                let mut it = set.iter().copied();
                match (set.len(), it.next(), it.next()) {
                    (2, Some(a), Some(b)) => Ids::Two(a, b),
                    _ => Ids::Many(set),
                }
            }
            other => other,
        };
    }

    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Ids::Empty)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let (inline, many) = match self {
            Ids::Empty => ([None, None], None),
            Ids::One(a) => ([Some(*a), None], None),
            Ids::Two(a, b) => ([Some(*a), Some(*b)], None),
            Ids::Many(set) => ([None, None], Some(set.iter().copied())),
        };
        inline
            .into_iter()
            .flatten()
            .chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(ids: &Ids) -> Vec<usize> {
        let mut v: Vec<usize> = ids.iter().collect();
        v.sort();
        v
    }

    #[test]
    fn behaves_as_a_set_at_every_size() {
        assert_eq!(std::mem::size_of::<Ids>(), 24);
        let mut ids = Ids::default();
        for k in 0..100 {
            ids.insert(k);
            ids.insert(k);
        }
        assert!(matches!(ids, Ids::Many(_)));
        assert_eq!(sorted(&ids), (0..100).collect::<Vec<_>>());
        for k in (0..100).step_by(2) {
            ids.remove(k);
        }
        ids.remove(1000);
        assert_eq!(sorted(&ids), (1..100).step_by(2).collect::<Vec<_>>());
        for k in (1..95).step_by(2) {
            ids.remove(k);
        }
        assert_eq!(sorted(&ids), [95, 97, 99]);
        ids.remove(97);
        assert!(matches!(ids, Ids::Two(..)), "{ids:?}");
        assert_eq!(sorted(&ids), [95, 99]);
        ids.remove(99);
        ids.remove(99);
        assert_eq!(sorted(&ids), [95]);
        ids.insert(95);
        ids.insert(3);
        ids.insert(3);
        assert_eq!(sorted(&ids), [3, 95]);
        ids.remove(95);
        ids.remove(3);
        assert!(ids.is_empty());
        assert_eq!(ids.iter().count(), 0);
    }
}
