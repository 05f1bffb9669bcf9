//! Raft quorum arithmetic and the messages operators see about it.

/// How many managers there are and how many of them this manager can reach (itself included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    pub managers: usize,
    pub reachable: usize,
}

/// Managers needed for a quorum of `n`: floor(n/2)+1.
pub fn needed(n: usize) -> usize {
    n / 2 + 1
}

/// Managers that may be lost without losing quorum: floor((n-1)/2).
pub fn tolerance(n: usize) -> usize {
    n.saturating_sub(1) / 2
}

impl Quorum {
    pub fn has_quorum(&self) -> bool {
        self.managers > 0 && self.reachable >= needed(self.managers)
    }

    /// Whether quorum survives removing one manager (reachable or not).
    pub fn survives_removal(&self, removed_is_reachable: bool) -> bool {
        let n = self.managers.saturating_sub(1);
        let r = self.reachable - usize::from(removed_is_reachable && self.reachable > 0);
        n > 0 && r >= needed(n)
    }

    /// Why a write cannot be made now, and how to recover.
    pub fn lost_message(&self) -> String {
        format!(
            "The swarm does not have a leader: {} of {} managers are reachable and {} are needed for a quorum \
             (a swarm of {} managers tolerates {} unavailable). Bring the unavailable managers back online, \
             or, if they are lost for good, run `netctl swarm init --force-new-cluster` on a surviving manager \
             to restart it as the only manager with all state kept.",
            self.reachable,
            self.managers,
            needed(self.managers),
            self.managers,
            tolerance(self.managers)
        )
    }
}

/// A warning when a membership change leaves an even number of managers (docker prints one too).
pub fn even_warning(managers_after: usize) -> Option<String> {
    (managers_after > 0 && managers_after.is_multiple_of(2)).then(|| {
        format!(
            "the swarm now has {managers_after} managers: an even number of managers tolerates no more failures \
             than {} ({} unavailable), so keep an odd number (3, 5 or 7)",
            managers_after - 1,
            tolerance(managers_after)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        assert_eq!((needed(1), needed(2), needed(3), needed(5)), (1, 2, 2, 3));
        assert_eq!(
            (tolerance(1), tolerance(3), tolerance(4), tolerance(5)),
            (0, 1, 1, 2)
        );
        let q = Quorum {
            managers: 5,
            reachable: 2,
        };
        assert!(!q.has_quorum());
        assert!(
            q.lost_message()
                .contains("2 of 5 managers are reachable and 3 are needed")
        );
        let q = Quorum {
            managers: 3,
            reachable: 2,
        };
        assert!(q.has_quorum());
        // Demoting a reachable manager of 3 with one down: 1 of 2 left, no quorum.
        assert!(!q.survives_removal(true));
        // Removing the unreachable one: 2 of 2.
        assert!(q.survives_removal(false));
        assert!(even_warning(2).is_some() && even_warning(3).is_none());
    }
}
