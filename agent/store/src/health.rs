//! The store's health: a state machine whose file could not be written stops applying (fails
//! closed) and says why, until the agent restarts and recovers from the Raft log.
//!
//! Why stop: the writer thread mirrors applied entries to `state.redb` behind the in-memory
//! state, and every transaction records the last applied index with its rows. Were a failed
//! transaction skipped, a later one would record a newer index and the lost rows would never be
//! applied again after a restart. Stopping at the first failure keeps the file at the last
//! index whose rows it really holds; a restart reloads it and openraft applies the rest from the
//! durable log.
//!
//! Fault injection (tests): with `NETAGENT_FAULT_SM_WRITE=<path>` in the environment, the
//! writer's next transaction after `<path>` appears fails (and removes the file, so the failure
//! happens once and a restarted agent is healthy). In-process tests arm it with
//! `Store::inject_write_failure`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Environment variable naming the arming file of the injected write failure.
pub const FAULT_ENV: &str = "NETAGENT_FAULT_SM_WRITE";

/// Shared between the writer thread (which sets it once) and the store (which reads it).
#[derive(Clone)]
pub(crate) struct Health {
    tx: Arc<watch::Sender<Option<String>>>,
    /// The injected failure armed in-process.
    armed: Arc<AtomicBool>,
}

impl Health {
    pub(crate) fn new() -> Health {
        Health {
            tx: Arc::new(watch::channel(None).0),
            armed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the store failed; the first reason stays.
    pub(crate) fn fail(&self, why: String) {
        self.tx.send_if_modified(|v| {
            if v.is_some() {
                return false;
            }
            *v = Some(why);
            true
        });
    }

    /// Why the store stopped, if it did.
    pub(crate) fn failed(&self) -> Option<String> {
        self.tx.borrow().clone()
    }

    /// Arms the injected failure of the writer's next transaction.
    pub(crate) fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    pub(crate) fn watch(&self) -> watch::Receiver<Option<String>> {
        self.tx.subscribe()
    }
}

/// The injected write failure, when armed (see the module doc).
pub(crate) struct Fault {
    file: Option<PathBuf>,
    armed: Arc<AtomicBool>,
}

impl Fault {
    pub(crate) fn new(health: &Health) -> Fault {
        Fault {
            file: std::env::var_os(FAULT_ENV).map(PathBuf::from),
            armed: health.armed.clone(),
        }
    }

    /// Whether this transaction is to fail: armed in-process, or the arming file exists (both
    /// are consumed).
    pub(crate) fn fire(&self) -> bool {
        self.armed.swap(false, Ordering::SeqCst)
            || self
                .file
                .as_ref()
                .is_some_and(|p| std::fs::remove_file(p).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_stays() {
        let h = Health::new();
        assert_eq!(h.failed(), None);
        h.fail("disk full".into());
        h.fail("later".into());
        assert_eq!(h.failed().as_deref(), Some("disk full"));
    }

    #[test]
    fn an_armed_fault_fires_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("arm");
        let h = Health::new();
        let f = Fault {
            file: Some(path.clone()),
            armed: h.armed.clone(),
        };
        assert!(!f.fire(), "not armed yet");
        std::fs::write(&path, "").unwrap();
        assert!(f.fire());
        assert!(!f.fire(), "consumed");
        h.arm();
        assert!(f.fire());
        assert!(!f.fire(), "consumed");
    }
}
