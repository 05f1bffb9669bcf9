//! A set of small integer keys (slab indexes) that stays compact while small and keeps O(1)
//! insert/remove when large: most names point at one or two records, a few (a service's tasks,
//! an alias every task carries) at thousands.

use indexmap::IndexSet;
use smallvec::SmallVec;

/// Above this many members the set switches to a hash-indexed representation.
const SMALL_MAX: usize = 16;

#[derive(Debug, Clone)]
pub(crate) enum Ids {
    Small(SmallVec<[usize; 2]>),
    Large(IndexSet<usize>),
}

impl Default for Ids {
    fn default() -> Self {
        Ids::Small(SmallVec::new())
    }
}

impl Ids {
    /// Adds `k`; a key already present is not added twice.
    pub(crate) fn insert(&mut self, k: usize) {
        match self {
            Ids::Small(v) => {
                if v.contains(&k) {
                    return;
                }
                if v.len() < SMALL_MAX {
                    v.push(k);
                } else {
                    let mut set: IndexSet<usize> = v.iter().copied().collect();
                    set.insert(k);
                    *self = Ids::Large(set);
                }
            }
            Ids::Large(set) => {
                set.insert(k);
            }
        }
    }

    /// Removes `k` if present (order of the rest is not kept).
    pub(crate) fn remove(&mut self, k: usize) {
        match self {
            Ids::Small(v) => {
                if let Some(i) = v.iter().position(|&x| x == k) {
                    v.swap_remove(i);
                }
            }
            Ids::Large(set) => {
                set.swap_remove(&k);
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Ids::Small(v) => v.len(),
            Ids::Large(set) => set.len(),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let (small, large) = match self {
            Ids::Small(v) => (Some(v.iter().copied()), None),
            Ids::Large(set) => (None, Some(set.iter().copied())),
        };
        small
            .into_iter()
            .flatten()
            .chain(large.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_behave_as_a_set() {
        let mut ids = Ids::default();
        for k in 0..100 {
            ids.insert(k);
            ids.insert(k);
        }
        assert!(matches!(ids, Ids::Large(_)));
        assert_eq!(ids.len(), 100);
        for k in (0..100).step_by(2) {
            ids.remove(k);
        }
        ids.remove(1000);
        let mut left: Vec<usize> = ids.iter().collect();
        left.sort();
        assert_eq!(left, (1..100).step_by(2).collect::<Vec<_>>());

        let mut small = Ids::default();
        small.insert(3);
        small.insert(5);
        small.insert(3);
        assert_eq!(small.len(), 2);
        small.remove(3);
        small.remove(5);
        assert!(small.is_empty());
    }
}
