//! The node's assignments on their way from the dispatcher session to the executor: the whole
//! set when a session starts, then each delta as it came, so that the executor's work for a
//! change is that change (issue 18). Copying and comparing the whole set per delta cost every
//! node hundreds of milliseconds per change with 2,000 services.
//!
//! [`AssignmentFeed`] (the session's end) keeps the current set, for readers that want it whole
//! (the API on a worker, metrics) and for an executor that fell behind: it then starts again
//! from a copy of the current set. The set is updated before the update is sent, so a receiver
//! that subscribes and then reads the set misses nothing; what it receives twice is skipped by
//! revision.

use std::sync::Arc;

use model::Assignments;
use model::assignment::AssignmentsDelta;
use tokio::sync::{broadcast, watch};

/// Updates a slow executor may fall behind by before it starts again from the whole set.
const BACKLOG: usize = 1024;

/// One step of the feed.
#[derive(Debug, Clone)]
enum Update {
    Full(Arc<Assignments>),
    Delta(Arc<AssignmentsDelta>),
}

/// What the executor receives: a whole set (compare everything) or the next delta.
#[derive(Debug)]
pub enum Received {
    Full(Assignments),
    Delta(Arc<AssignmentsDelta>),
}

/// The sending end, held by the node for its dispatcher sessions.
#[derive(Debug)]
pub struct AssignmentFeed {
    current: watch::Sender<Option<Assignments>>,
    updates: broadcast::Sender<Update>,
}

impl Default for AssignmentFeed {
    fn default() -> Self {
        AssignmentFeed {
            current: watch::channel(None).0,
            updates: broadcast::channel(BACKLOG).0,
        }
    }
}

impl AssignmentFeed {
    /// A session's first, whole set.
    pub fn replace(&self, a: Assignments) {
        let update = Update::Full(Arc::new(a.clone()));
        self.current.send_replace(Some(a));
        // No receiver (no executor running) is not an error: the set is kept.
        let _ = self.updates.send(update);
    }

    /// A delta of the current set; false (nothing changed) if it does not follow it.
    pub fn apply(&self, d: AssignmentsDelta) -> bool {
        let mut applied = false;
        self.current.send_if_modified(|cur| {
            applied = cur.as_mut().is_some_and(|a| a.apply(&d));
            applied
        });
        if applied {
            let _ = self.updates.send(Update::Delta(Arc::new(d)));
        }
        applied
    }

    /// The current set.
    pub fn borrow(&self) -> watch::Ref<'_, Option<Assignments>> {
        self.current.borrow()
    }

    /// A receiving end for an executor: its first [`FeedReceiver::recv`] is the current set (as
    /// soon as there is one).
    pub fn subscribe(&self) -> FeedReceiver {
        let updates = self.updates.subscribe();
        FeedReceiver {
            updates,
            current: self.current.subscribe(),
            revision: None,
        }
    }
}

/// The executor's end.
#[derive(Debug)]
pub struct FeedReceiver {
    updates: broadcast::Receiver<Update>,
    current: watch::Receiver<Option<Assignments>>,
    /// The revision of what this receiver handed out last (None: nothing yet).
    revision: Option<u64>,
}

impl FeedReceiver {
    /// The next thing to act on; None once the feed is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        if self.revision.is_none()
            && let Some(a) = self.take_current()
        {
            return Some(a);
        }
        loop {
            match self.updates.recv().await {
                Ok(Update::Full(a)) => {
                    self.revision = Some(a.revision);
                    return Some(Received::Full((*a).clone()));
                }
                Ok(Update::Delta(d)) => match self.revision {
                    Some(r) if d.revision == r + 1 => {
                        self.revision = Some(d.revision);
                        return Some(Received::Delta(d));
                    }
                    // Already in the whole set handed out.
                    Some(r) if d.revision <= r => continue,
                    // A gap (or no set yet): start again from the current set, below.
                    _ => {}
                },
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::info!(
                        skipped = n,
                        "the executor fell behind its assignments; taking the whole set"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
            // Resubscribe first, then read: what is sent in between is in both and skipped.
            self.updates = self.updates.resubscribe();
            if let Some(a) = self.take_current() {
                return Some(a);
            }
        }
    }

    fn take_current(&mut self) -> Option<Received> {
        let a = self.current.borrow_and_update().clone()?;
        self.revision = Some(a.revision);
        Some(Received::Full(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::task::{TaskState, TaskStatus};
    use model::{Meta, Task};

    fn task(id: &str) -> Task {
        Task {
            meta: Meta::with_id(id.into()),
            service_id: "s".into(),
            slot: 1,
            node_id: Some("n".into()),
            desired_state: TaskState::Running,
            status: TaskStatus {
                state: TaskState::Running,
                timestamp: chrono::Utc::now(),
                message: String::new(),
                err: None,
                exit_code: None,
            },
            spec: Default::default(),
            networks: vec![],
        }
    }

    fn delta(revision: u64, id: &str) -> AssignmentsDelta {
        AssignmentsDelta {
            revision,
            tasks: vec![task(id)],
            ..Default::default()
        }
    }

    fn ids(a: &Assignments) -> Vec<&str> {
        a.tasks.iter().map(|t| t.meta.id.as_str()).collect()
    }

    #[tokio::test]
    async fn the_whole_set_first_then_each_delta_in_order() {
        let feed = AssignmentFeed::default();
        feed.replace(Assignments {
            revision: 1,
            tasks: vec![task("a")],
            ..Default::default()
        });
        let mut rx = feed.subscribe();
        assert!(feed.apply(delta(2, "b")));
        assert!(!feed.apply(delta(4, "x")), "out of sequence: refused");
        assert!(feed.apply(delta(3, "c")));
        // The receiver subscribed before "b": the current set already holds b and c, and the
        // deltas it also received are skipped.
        match rx.recv().await {
            Some(Received::Full(a)) => assert_eq!(ids(&a), ["a", "b", "c"]),
            other => panic!("want the whole set, got {other:?}"),
        }
        assert!(feed.apply(delta(4, "d")));
        match rx.recv().await {
            Some(Received::Delta(d)) => assert_eq!(d.revision, 4),
            other => panic!("want delta 4, got {other:?}"),
        }
        // A new session starts over with its own whole set.
        feed.replace(Assignments {
            revision: 1,
            tasks: vec![task("z")],
            ..Default::default()
        });
        match rx.recv().await {
            Some(Received::Full(a)) => assert_eq!(ids(&a), ["z"]),
            other => panic!("want the new session's set, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_receiver_that_fell_behind_takes_the_whole_set() {
        let feed = AssignmentFeed::default();
        let mut rx = feed.subscribe();
        feed.replace(Assignments {
            revision: 1,
            ..Default::default()
        });
        match rx.recv().await {
            Some(Received::Full(a)) => assert!(a.tasks.is_empty()),
            other => panic!("want the whole set, got {other:?}"),
        }
        let n = BACKLOG as u64 + 10;
        for r in 2..=n {
            assert!(feed.apply(delta(r, &format!("t{r}"))));
        }
        match rx.recv().await {
            Some(Received::Full(a)) => {
                assert_eq!(a.revision, n);
                assert_eq!(a.tasks.len(), (n - 1) as usize);
            }
            other => panic!("want the whole set after lagging, got {other:?}"),
        }
        assert!(feed.apply(delta(n + 1, "last")));
        match rx.recv().await {
            Some(Received::Delta(d)) => assert_eq!(d.revision, n + 1),
            other => panic!("want the next delta, got {other:?}"),
        }
    }
}
