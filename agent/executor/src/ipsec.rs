//! Encrypted overlay networks on this node: the data-path keys of the assignments handed to the
//! data plane (which makes states and policies for the VTEPs of the encrypted networks' peers,
//! rotating without loss), and the guard that keeps a task on an encrypted network from running
//! on a kernel that cannot encrypt (it is rejected with the reason; the scheduler then keeps it
//! off such nodes). Keys are never logged.

use model::Task;
use model::task::TaskState;
use vxlan::IpsecKeys;
use vxlan::ipsec::NO_ESP;

use crate::node::{Error, Executor};

/// The data plane's keys from the assignments' (Lamport time, key) pairs.
pub(crate) fn keys_of(keys: &[model::cluster::EncryptionKey]) -> Result<IpsecKeys, Error> {
    let raw: Vec<(u64, &[u8])> = keys
        .iter()
        .map(|k| (k.lamport_time, k.key.as_slice()))
        .collect();
    IpsecKeys::from_store(&raw).map_err(|e| Error::Dataplane(format!("data-path keys: {e}")))
}

impl Executor {
    /// Gives the data plane the assignments' data-path keys (it writes only what changed).
    pub(crate) async fn sync_ipsec_keys(&mut self) -> Result<(), Error> {
        let keys = keys_of(&self.a.ipsec_keys)?;
        let port = self.a.data_path_port;
        self.plane
            .call(port, move |dp| dp.set_ipsec_keys(Some(keys)))
            .await
    }

    /// A task on an encrypted network whose network could not be built here (e.g. its
    /// fail-closed firewall could not be installed): it waits, and says why, until a retry
    /// succeeds. It never runs on a network that is not protected.
    pub(crate) async fn encrypted_setup_failed(&mut self, t: &Task, e: &Error) {
        let encrypted = t.networks.iter().any(|a| {
            self.a
                .networks
                .iter()
                .any(|n| n.meta.id == a.network_id && n.spec.encrypted)
        });
        if encrypted {
            let err = format!("encrypted network not set up on this node: {e}");
            self.report(t, TaskState::Preparing, "preparing", Some(err), None)
                .await;
        }
    }

    /// Why task `t` cannot run on this node, if it cannot: it is on an encrypted network and
    /// the kernel lacks ESP or GCM (it never runs unencrypted).
    pub(crate) fn encryption_blocker(&self, t: &Task) -> Option<String> {
        let encrypted: Vec<&str> = t
            .networks
            .iter()
            .filter_map(|a| self.a.networks.iter().find(|n| n.meta.id == a.network_id))
            .filter(|n| n.spec.encrypted)
            .map(|n| n.spec.name.as_str())
            .collect();
        if encrypted.is_empty() {
            return None;
        }
        let why = vxlan::ipsec::probe().err()?;
        tracing::warn!(task = %t.meta.id, reason = %why, "a task on an encrypted network cannot run here");
        Some(format!(
            "{NO_ESP}: this node cannot carry encrypted network {}",
            encrypted.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_assignments_and_bad_ones_are_refused() {
        let key = |t: u64, len: usize| model::cluster::EncryptionKey {
            subsystem: "ipsec".into(),
            algorithm: "aes-128-gcm".into(),
            key: vec![t as u8; len],
            lamport_time: t,
        };
        let k = keys_of(&[key(1, 16), key(2, 16), key(3, 16)]).unwrap();
        assert_eq!(k.primary(), 2);
        assert!(keys_of(&[]).unwrap().is_empty());
        let e = keys_of(&[key(1, 4)]).unwrap_err().to_string();
        assert!(e.contains("16") && !e.contains("[1, 1"), "{e}");
    }
}
