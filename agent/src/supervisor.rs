//! Supervision of a node's runtime: the dispatcher session, gossip and the executor run as tasks
//! that are started again, with backoff, when they fail, end or panic (the task's `JoinError` is
//! caught: a panic is logged with its message and never takes the daemon down or leaves a
//! component silently dead). While a component is broken, [`RuntimeHealth`] says which and why;
//! the node sends that with every heartbeat and the leader records the node not ready (`Unknown`
//! with the reason as its status message, see `crate::sessions`), so the scheduler gives it no
//! new tasks until it recovers.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinError;

use crate::member::Member;

/// Component names, as they appear in the node's status message.
pub const GOSSIP: &str = "gossip";
pub const EXECUTOR: &str = "executor";
pub const SESSION: &str = "dispatcher session";
pub const RUNTIME: &str = "node runtime";

/// How long a restarted component must keep running before its earlier failure is forgotten
/// (its problem cleared, its backoff reset).
pub const STABLE: Duration = Duration::from_secs(10);

/// Exponential backoff between restarts: `min`, doubling, at most `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next restart (each call doubles the following one).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(200), Duration::from_secs(10))
    }
}

/// What a panic said (its payload when it is a string).
pub fn panic_message(e: JoinError) -> String {
    if !e.is_panic() {
        return "it was cancelled".into();
    }
    let payload = e.into_panic();
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("panicked: {msg}")
}

/// Why a supervised task ended, when it should not have.
fn why_ended(r: Result<anyhow::Result<()>, JoinError>) -> String {
    match r {
        Ok(Ok(())) => "it stopped unexpectedly".into(),
        Ok(Err(e)) => format!("{e:#}"),
        Err(e) => panic_message(e),
    }
}

/// The components of this node that are broken now, and why.
pub struct RuntimeHealth {
    problems: watch::Sender<BTreeMap<&'static str, String>>,
}

impl Default for RuntimeHealth {
    fn default() -> RuntimeHealth {
        RuntimeHealth {
            problems: watch::channel(BTreeMap::new()).0,
        }
    }
}

impl RuntimeHealth {
    /// Records `component` broken, with why (logged when it is news).
    pub fn set(&self, component: &'static str, why: impl Into<String>) {
        let why = why.into();
        self.problems.send_if_modified(|p| {
            if p.get(component) == Some(&why) {
                return false;
            }
            tracing::error!(component, error = %why, "node runtime component broken; the node reports itself not ready");
            crate::metrics::runtime_failure(component);
            p.insert(component, why);
            true
        });
    }

    /// Records `component` working again.
    pub fn clear(&self, component: &'static str) {
        self.problems.send_if_modified(|p| {
            let was = p.remove(component).is_some();
            if was {
                tracing::info!(component, "node runtime component recovered");
            }
            was
        });
    }

    /// Whether `component` is recorded broken.
    pub fn is_broken(&self, component: &'static str) -> bool {
        self.problems.borrow().contains_key(component)
    }

    /// What is wrong with this node, for its status message; None when nothing is.
    pub fn problem(&self) -> Option<String> {
        let p = self.problems.borrow();
        if p.is_empty() {
            return None;
        }
        let parts: Vec<String> = p.iter().map(|(c, why)| format!("{c}: {why}")).collect();
        Some(format!("node runtime not ready: {}", parts.join("; ")))
    }

    /// Changes of [`RuntimeHealth::problem`].
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<&'static str, String>> {
        self.problems.subscribe()
    }
}

/// Aborts the task when dropped (a supervisor aborted by `Member::stop` takes its child along).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `start()` as its own task for as long as the member runs, starting it again after
/// `backoff` when it returns an error, ends or panics. Its failure is recorded in the member's
/// [`RuntimeHealth`] under `name` and cleared once the new run has lasted [`STABLE`]. On the
/// member's cancellation the task is left to finish (it watches the same token).
pub async fn supervise<F, Fut>(member: Arc<Member>, name: &'static str, start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    supervise_with(
        &member.health,
        &member.cancel,
        name,
        Backoff::default(),
        STABLE,
        start,
    )
    .await
}

async fn supervise_with<F, Fut>(
    health: &RuntimeHealth,
    cancel: &tokio_util::sync::CancellationToken,
    name: &'static str,
    mut backoff: Backoff,
    stable: Duration,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    loop {
        let started = Instant::now();
        let mut task = tokio::spawn(start());
        let _guard = AbortOnDrop(task.abort_handle());
        let recovered = async {
            if health.is_broken(name) {
                tokio::time::sleep(stable).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(recovered);
        let mut watching = true;
        let r = loop {
            tokio::select! {
                r = &mut task => break r,
                _ = &mut recovered, if watching => {
                    watching = false;
                    backoff.reset();
                    health.clear(name);
                }
                _ = cancel.cancelled() => {
                    // The task stops on the same token; Member::stop bounds the wait.
                    let _ = (&mut task).await;
                    return;
                }
            }
        };
        if cancel.is_cancelled() {
            return;
        }
        if started.elapsed() >= stable {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        health.set(name, format!("{} (restarting)", why_ended(r)));
        tracing::warn!(
            component = name,
            ?delay,
            "restarting a node runtime component"
        );
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn backoff_doubles_up_to_its_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn problems_name_each_broken_component() {
        let h = RuntimeHealth::default();
        assert_eq!(h.problem(), None);
        h.set(GOSSIP, "cannot bind");
        h.set(EXECUTOR, "full passes failing: disk full");
        assert_eq!(
            h.problem().as_deref(),
            Some(
                "node runtime not ready: executor: full passes failing: disk full; gossip: cannot bind"
            )
        );
        h.clear(EXECUTOR);
        h.clear(GOSSIP);
        assert_eq!(h.problem(), None);
    }

    /// A component that panics, then fails, is started again each time; each failure is
    /// recorded with its reason (the panic's message) before the restart, and cleared once a
    /// run lasts.
    #[tokio::test]
    async fn a_panicking_component_is_restarted_and_recovers() {
        let health = Arc::new(RuntimeHealth::default());
        let cancel = tokio_util::sync::CancellationToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        // What the health said when each run started.
        let said = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sup = {
            let (health, cancel, runs, said) =
                (health.clone(), cancel.clone(), runs.clone(), said.clone());
            tokio::spawn(async move {
                let (c2, h2) = (cancel.clone(), health.clone());
                supervise_with(
                    &health,
                    &cancel,
                    EXECUTOR,
                    Backoff::new(Duration::from_millis(20), Duration::from_secs(1)),
                    Duration::from_millis(300),
                    move || {
                        let n = runs.fetch_add(1, Ordering::SeqCst);
                        said.lock().unwrap().push(h2.problem());
                        let cancel = c2.clone();
                        async move {
                            match n {
                                0 => panic!("boom"),
                                1 => anyhow::bail!("cannot start"),
                                _ => {
                                    cancel.cancelled().await;
                                    Ok(())
                                }
                            }
                        }
                    },
                )
                .await
            })
        };
        let mut seen = health.subscribe();
        tokio::time::timeout(Duration::from_secs(30), async {
            while runs.load(Ordering::SeqCst) < 3 || !seen.borrow_and_update().is_empty() {
                let _ = tokio::time::timeout(Duration::from_millis(50), seen.changed()).await;
            }
        })
        .await
        .expect("the third run is started and lasts");
        let said = said.lock().unwrap().clone();
        assert_eq!(said.len(), 3);
        assert_eq!(said[0], None);
        assert!(
            said[1]
                .as_deref()
                .unwrap()
                .contains("executor: panicked: boom (restarting)"),
            "{said:?}"
        );
        assert!(
            said[2]
                .as_deref()
                .unwrap()
                .contains("executor: cannot start (restarting)"),
            "{said:?}"
        );
        assert_eq!(health.problem(), None);
        cancel.cancel();
        sup.await.unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "not restarted after the stop"
        );
    }

    #[tokio::test]
    async fn a_panic_message_is_kept() {
        let e = tokio::spawn(async { panic!("at {}", 3) })
            .await
            .unwrap_err();
        assert_eq!(panic_message(e), "panicked: at 3");
        let t = tokio::spawn(std::future::pending::<()>());
        t.abort();
        assert_eq!(panic_message(t.await.unwrap_err()), "it was cancelled");
    }
}
