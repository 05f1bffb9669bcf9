//! A sparse set of `u128` values stored as maximal runs: the memory is
//! proportional to the number of gaps, not to the size of the universe, so it
//! serves /64 IPv6 subnets and the 16-million VNI space alike.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent inclusive runs `start -> end`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RunSet {
    runs: BTreeMap<u128, u128>,
}

impl RunSet {
    /// The run containing `x`, if any.
    fn run_of(&self, x: u128) -> Option<(u128, u128)> {
        self.runs
            .range(..=x)
            .next_back()
            .filter(|&(_, &end)| end >= x)
            .map(|(&s, &e)| (s, e))
    }

    /// Whether `x` is in the set.
    pub fn contains(&self, x: u128) -> bool {
        self.run_of(x).is_some()
    }

    /// Add `x`; false if it was there already.
    pub fn insert(&mut self, x: u128) -> bool {
        self.insert_range(x, x).is_ok()
    }

    /// Add every value of `lo..=hi`, which must all be absent; otherwise
    /// nothing changes and the lowest value already present is returned.
    pub fn insert_range(&mut self, lo: u128, hi: u128) -> Result<(), u128> {
        if lo > hi {
            return Ok(());
        }
        let clash = match self.run_of(lo) {
            Some(_) => Some(lo),
            None => self.runs.range(lo..=hi).next().map(|(&s, _)| s),
        };
        if let Some(c) = clash {
            return Err(c);
        }
        let mut start = lo;
        let mut end = hi;
        if let Some((&s, &e)) = self.runs.range(..lo).next_back()
            && e.checked_add(1) == Some(lo)
        {
            start = s;
        }
        if let Some(next) = hi.checked_add(1)
            && let Some(e) = self.runs.remove(&next)
        {
            end = e;
        }
        self.runs.insert(start, end);
        Ok(())
    }

    /// Remove `x`; false if it was absent.
    pub fn remove(&mut self, x: u128) -> bool {
        let Some((s, e)) = self.run_of(x) else {
            return false;
        };
        self.runs.remove(&s);
        if s < x {
            self.runs.insert(s, x - 1);
        }
        if x < e {
            self.runs.insert(x + 1, e);
        }
        true
    }

    /// Lowest value of `lo..=hi` not in the set.
    pub fn next_clear(&self, lo: u128, hi: u128) -> Option<u128> {
        if lo > hi {
            return None;
        }
        // Runs are maximal, so the value after a run is never in the set.
        let candidate = match self.run_of(lo) {
            Some((_, e)) => e.checked_add(1)?,
            None => lo,
        };
        (candidate <= hi).then_some(candidate)
    }

    /// The runs, in order, as inclusive `(first, last)`.
    pub fn runs(&self) -> impl Iterator<Item = (u128, u128)> + '_ {
        self.runs.iter().map(|(&s, &e)| (s, e))
    }

    /// Number of values, saturating at `u128::MAX`.
    pub fn count(&self) -> u128 {
        self.runs.iter().fold(0u128, |acc, (&s, &e)| {
            acc.saturating_add((e - s).saturating_add(1))
        })
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Estimated heap bytes: each B-tree entry is two `u128`s plus about a
    /// third more for node headers and slack.
    pub fn heap_bytes(&self) -> usize {
        self.runs.len() * (2 * std::mem::size_of::<u128>()) * 4 / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn coalesces_and_splits() {
        let mut s = RunSet::default();
        assert!(s.insert(5));
        assert!(s.insert(7));
        assert!(s.insert(6));
        assert_eq!(s.runs().collect::<Vec<_>>(), vec![(5, 7)]);
        assert!(!s.insert(6));
        assert_eq!(s.next_clear(5, 100), Some(8));
        assert_eq!(s.next_clear(0, 100), Some(0));
        assert!(s.remove(6));
        assert_eq!(s.runs().collect::<Vec<_>>(), vec![(5, 5), (7, 7)]);
        assert_eq!(s.next_clear(5, 100), Some(6));
        assert!(!s.remove(6));
        assert_eq!(s.count(), 2);
    }

    #[test]
    fn extremes() {
        let mut s = RunSet::default();
        assert_eq!(s.insert_range(0, u128::MAX), Ok(()));
        assert_eq!(s.count(), u128::MAX);
        assert_eq!(s.next_clear(0, u128::MAX), None);
        assert!(s.remove(u128::MAX));
        assert_eq!(s.next_clear(0, u128::MAX), Some(u128::MAX));
        assert!(s.remove(0));
        assert_eq!(s.insert_range(3, 9), Err(3));
        assert!(s.insert(u128::MAX));
        assert!(s.insert(0));
        assert_eq!(s.runs().count(), 1);
    }

    proptest! {
        #[test]
        fn matches_model(ops in prop::collection::vec((0u8..3, 0u128..200, 0u128..200), 0..80)) {
            let mut s = RunSet::default();
            let mut m = BTreeSet::new();
            for (op, x, y) in ops {
                let (lo, hi) = (x.min(y), x.max(y));
                match op {
                    0 => prop_assert_eq!(s.insert(x), m.insert(x)),
                    1 => prop_assert_eq!(s.remove(x), m.remove(&x)),
                    _ => {
                        let clash = m.range(lo..=hi).next().copied();
                        let got = s.insert_range(lo, hi);
                        match clash {
                            Some(c) => prop_assert_eq!(got, Err(c)),
                            None => { prop_assert_eq!(got, Ok(())); m.extend(lo..=hi); }
                        }
                    }
                }
                prop_assert_eq!(s.count(), m.len() as u128);
                prop_assert_eq!(s.next_clear(lo, hi), (lo..=hi).find(|i| !m.contains(i)));
                prop_assert_eq!(s.contains(x), m.contains(&x));
                let runs: Vec<_> = s.runs().collect();
                for pair in runs.windows(2) {
                    prop_assert!(pair[0].1 + 1 < pair[1].0, "runs not maximal: {:?}", runs);
                }
            }
        }
    }
}
