//! The leader's record of the dispatcher sessions: when each node was last heard, and what it
//! said of its own health with its last heartbeat. The leader's node-status loop turns it into
//! each node's status (`status_of`): Ready; Unknown with the node's reason while one of its
//! runtime components is broken (it keeps its tasks and gets no new ones); Down after three
//! silent heartbeat periods (never the leader's own node, which is alive). Entries of nodes
//! that left the store are pruned, so the record stays as large as the cluster.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use model::node::NodeState;

/// What a node said last.
#[derive(Debug, Clone)]
pub struct Heard {
    pub at: Instant,
    /// Why the node is not ready (None: it is).
    pub problem: Option<String>,
    /// How long the node may stay silent after this, at the period it was told (during a
    /// change of the heartbeat period, the slower of the two).
    pub grace: Duration,
}

#[derive(Debug, Default)]
pub struct Sessions {
    heard: Mutex<HashMap<String, Heard>>,
}

impl Sessions {
    /// Records a message from `node` (a heartbeat or its hello), with its health and how long
    /// it may be silent now.
    pub fn heard(&self, node: &str, problem: Option<String>, grace: Duration) {
        self.lock().insert(
            node.to_string(),
            Heard {
                at: Instant::now(),
                problem,
                grace,
            },
        );
    }

    pub fn get(&self, node: &str) -> Option<Heard> {
        self.lock().get(node).cloned()
    }

    /// Forgets the nodes not in `existing` (removed, or left); returns how many went.
    pub fn prune(&self, existing: &HashSet<&str>) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|id, _| existing.contains(id.as_str()));
        before - map.len()
    }

    /// Forgets every session (leadership moved: the next term starts from what it hears).
    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Heard>> {
        self.heard.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The status a node should have, given what it said last (`None`: nothing yet this term),
/// its current state, how long heartbeats may stop (`grace` at the cluster's period now, or the
/// node's own grace if longer: a node told a shorter period beats at the old one until it has
/// heard) and whether the leader has settled (nodes had time to find it after an election).
/// None: leave the status as it is.
pub fn status_of(
    heard: Option<&Heard>,
    current: (NodeState, &str),
    grace: Duration,
    settled: bool,
) -> Option<(NodeState, String)> {
    let alive = heard.filter(|h| h.at.elapsed() <= grace.max(h.grace));
    let want = match alive {
        Some(h) => match &h.problem {
            None => (NodeState::Ready, String::new()),
            Some(why) => (NodeState::Unknown, why.clone()),
        },
        None => match current.0 {
            NodeState::Ready | NodeState::Unknown if settled => {
                (NodeState::Down, "heartbeat failure".to_string())
            }
            _ => return None,
        },
    };
    (want.0 != current.0 || want.1 != current.1).then_some(want)
}

/// How late the leader's status loop woke, as time the nodes are not blamed for: while the
/// leader's process did not run (stopped, or starved of CPU on a loaded machine) it read no
/// heartbeat, and the beats that arrived meanwhile wait in its sockets. Each round's allowance
/// is the longer of this wake's lateness and the previous one's, because the beats queued
/// during a stall may be read only after the round that first follows it.
#[derive(Debug)]
pub struct Stalls {
    asleep: Instant,
    nap: Duration,
    previous: Duration,
}

impl Default for Stalls {
    fn default() -> Self {
        Stalls {
            asleep: Instant::now(),
            nap: Duration::ZERO,
            previous: Duration::ZERO,
        }
    }
}

impl Stalls {
    /// The loop is about to sleep for `nap`.
    pub fn sleeping(&mut self, nap: Duration) {
        self.asleep = Instant::now();
        self.nap = nap;
    }

    /// The loop woke: the time to add to every node's grace this round.
    pub fn woke(&mut self) -> Duration {
        self.woke_after(self.asleep.elapsed())
    }

    fn woke_after(&mut self, slept: Duration) -> Duration {
        let late = slept.saturating_sub(self.nap);
        let allowance = late.max(self.previous);
        self.previous = late;
        allowance
    }
}

/// How long a node beating every `period` may stay silent: three beats, at least 600 ms.
pub fn grace(period: Duration) -> Duration {
    (period * 3).max(Duration::from_millis(600))
}

/// What the leader goes by for a node: what it said last; for the leader's own node (`own`),
/// as said now. That node is alive, this runs in its agent; its heartbeats go through the same
/// dispatcher as anyone's and a loaded machine delays them, while what they carry (its health)
/// still counts.
pub fn as_of_now(heard: Option<Heard>, own: bool) -> Option<Heard> {
    heard.map(|h| Heard {
        at: if own { Instant::now() } else { h.at },
        ..h
    })
}

/// The JSON patch of a node's status.
pub fn status_patch(state: NodeState, message: &str) -> serde_json::Value {
    serde_json::json!({"status": {"state": state, "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn departed_nodes_are_pruned() {
        let s = Sessions::default();
        for n in ["a", "b", "c"] {
            s.heard(n, None, Duration::from_secs(1));
        }
        let existing: HashSet<&str> = ["a", "c"].into();
        assert_eq!(s.prune(&existing), 1);
        assert_eq!(s.len(), 2);
        assert!(s.get("b").is_none());
        assert!(s.get("a").is_some());
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn a_stalled_leader_allows_for_its_own_lateness_for_two_rounds() {
        let mut s = Stalls::default();
        let nap = Duration::from_millis(200);
        s.sleeping(nap);
        assert_eq!(s.woke_after(nap), Duration::ZERO);
        // Stopped for 2 s: this round and the next allow for it, then nothing.
        s.sleeping(nap);
        assert_eq!(
            s.woke_after(Duration::from_millis(2200)),
            Duration::from_secs(2)
        );
        s.sleeping(nap);
        assert_eq!(
            s.woke_after(Duration::from_millis(250)),
            Duration::from_secs(2)
        );
        s.sleeping(nap);
        assert_eq!(
            s.woke_after(Duration::from_millis(200)),
            Duration::from_millis(50)
        );
        s.sleeping(nap);
        assert_eq!(s.woke_after(Duration::from_millis(190)), Duration::ZERO);
    }

    #[test]
    fn status_follows_what_the_node_said() {
        let grace = Duration::from_secs(60);
        let ok = Heard {
            at: Instant::now(),
            problem: None,
            grace: Duration::ZERO,
        };
        let broken = Heard {
            at: Instant::now(),
            problem: Some("node runtime not ready: executor: x".into()),
            grace: Duration::ZERO,
        };
        // Ready and heard well: nothing to write.
        assert_eq!(
            status_of(Some(&ok), (NodeState::Ready, ""), grace, true),
            None
        );
        // A broken runtime: Unknown with the reason (tasks stay, none new).
        assert_eq!(
            status_of(Some(&broken), (NodeState::Ready, ""), grace, true),
            Some((
                NodeState::Unknown,
                "node runtime not ready: executor: x".into()
            ))
        );
        // Recovered.
        assert_eq!(
            status_of(
                Some(&ok),
                (NodeState::Unknown, "node runtime not ready: executor: x"),
                grace,
                true
            ),
            Some((NodeState::Ready, String::new()))
        );
        // Back from down.
        assert_eq!(
            status_of(
                Some(&ok),
                (NodeState::Down, "heartbeat failure"),
                grace,
                true
            ),
            Some((NodeState::Ready, String::new()))
        );
        // Silent: down once settled, whether it was ready or not ready.
        for st in [NodeState::Ready, NodeState::Unknown] {
            assert_eq!(
                status_of(None, (st, ""), grace, true),
                Some((NodeState::Down, "heartbeat failure".into()))
            );
            assert_eq!(status_of(None, (st, ""), grace, false), None);
        }
        let old = Heard {
            at: Instant::now() - Duration::from_secs(5),
            problem: None,
            grace: Duration::ZERO,
        };
        assert_eq!(
            status_of(
                Some(&old),
                (NodeState::Ready, ""),
                Duration::from_secs(1),
                true
            ),
            Some((NodeState::Down, "heartbeat failure".into()))
        );
        assert_eq!(
            status_of(None, (NodeState::Down, "heartbeat failure"), grace, true),
            None
        );
        // A node told a slower period than the cluster's now (a change under way) has its own.
        let told_slow = Heard {
            at: Instant::now() - Duration::from_secs(5),
            problem: None,
            grace: Duration::from_secs(15),
        };
        assert_eq!(
            status_of(
                Some(&told_slow),
                (NodeState::Ready, ""),
                Duration::from_millis(600),
                true
            ),
            None
        );
        // The leader's own node stays up however late its heartbeats; its health still counts.
        let late = Duration::from_secs(1);
        let own = as_of_now(Some(old.clone()), true);
        assert_eq!(
            status_of(own.as_ref(), (NodeState::Ready, ""), late, true),
            None
        );
        let other = as_of_now(Some(old), false);
        assert_eq!(
            status_of(other.as_ref(), (NodeState::Ready, ""), late, true),
            Some((NodeState::Down, "heartbeat failure".into()))
        );
        let own_broken = Heard {
            at: Instant::now() - Duration::from_secs(5),
            problem: Some("executor: x".into()),
            grace: Duration::ZERO,
        };
        assert_eq!(
            status_of(
                as_of_now(Some(own_broken), true).as_ref(),
                (NodeState::Ready, ""),
                late,
                true
            ),
            Some((NodeState::Unknown, "executor: x".into()))
        );
    }
}
