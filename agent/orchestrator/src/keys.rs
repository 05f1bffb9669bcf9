//! The data-path key manager's decisions (swarmkit's keymanager): the cluster keeps
//! [`KEPT`] IPsec keys, Lamport-tagged; the leader rotates them every
//! `settings.data_key_rotation_ms` (default 12 h) and on demand. A rotation drops the oldest
//! key and adds a new one tagged one past the newest; nodes send with the second newest, so a
//! new key is accepted everywhere one rotation before anyone sends with it. Pure: the new
//! key's bytes come from the caller.

use chrono::{DateTime, Utc};
use model::Cluster;
use model::cluster::{EncryptionKey, IPSEC};

/// IPsec keys the cluster keeps.
pub const KEPT: usize = 3;
/// Length of an IPsec key (AES-128-GCM; the 4-byte salt is derived per SA).
pub const KEY_LEN: usize = 16;
/// The algorithm stored with the keys.
pub const ALGORITHM: &str = "aes-128-gcm";

/// The cluster's IPsec keys, oldest first.
pub fn ipsec_keys(keys: &[EncryptionKey]) -> Vec<EncryptionKey> {
    let mut out: Vec<EncryptionKey> = keys
        .iter()
        .filter(|k| k.subsystem == IPSEC)
        .cloned()
        .collect();
    out.sort_by_key(|k| k.lamport_time);
    out
}

/// Whether the periodic rotation is due at `now`.
pub fn rotation_due(c: &Cluster, now: DateTime<Utc>) -> bool {
    let period = c.settings.data_key_rotation_ms;
    if period == 0 {
        return false;
    }
    let since = c.data_key_rotated_at.unwrap_or(c.meta.created_at);
    let Ok(elapsed) = (now - since).to_std() else {
        return false;
    };
    elapsed.as_millis() >= u128::from(period) || ipsec_keys(&c.network_keys).len() < KEPT
}

/// The keys after one rotation: the oldest IPsec key out (once there are [`KEPT`]), `fresh`
/// in with the next Lamport tag; other subsystems' keys untouched. `fresh` must be
/// [`KEY_LEN`] bytes.
pub fn rotated(keys: &[EncryptionKey], fresh: Vec<u8>) -> Vec<EncryptionKey> {
    let mut ipsec = ipsec_keys(keys);
    let next = ipsec.iter().map(|k| k.lamport_time).max().unwrap_or(0) + 1;
    while ipsec.len() >= KEPT {
        ipsec.remove(0);
    }
    ipsec.push(EncryptionKey {
        subsystem: IPSEC.into(),
        algorithm: ALGORITHM.into(),
        key: fresh,
        lamport_time: next,
    });
    keys.iter()
        .filter(|k| k.subsystem != IPSEC)
        .cloned()
        .chain(ipsec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::cluster::{ClusterSettings, GOSSIP, JoinTokens};

    fn key(subsystem: &str, t: u64) -> EncryptionKey {
        EncryptionKey {
            subsystem: subsystem.into(),
            algorithm: ALGORITHM.into(),
            key: vec![t as u8; KEY_LEN],
            lamport_time: t,
        }
    }

    fn cluster(keys: Vec<EncryptionKey>, period_ms: u64) -> Cluster {
        Cluster {
            meta: model::Meta::new(),
            ca_cert_pem: String::new(),
            ca_key_pem: String::new(),
            join_tokens: JoinTokens {
                worker: String::new(),
                manager: String::new(),
            },
            default_addr_pools: vec![],
            subnet_size: 24,
            data_path_port: 4789,
            network_keys: keys,
            settings: ClusterSettings {
                data_key_rotation_ms: period_ms,
                ..Default::default()
            },
            data_key_rotated_at: None,
            removed_nodes: Vec::new(),
            root_rotation: None,
            ca_force_rotate: 0,
        }
    }

    #[test]
    fn rotation_drops_the_oldest_and_tags_the_new_one_past_the_newest() {
        let keys = vec![key(GOSSIP, 1), key(IPSEC, 3), key(IPSEC, 1), key(IPSEC, 2)];
        let after = rotated(&keys, vec![9; KEY_LEN]);
        let tags: Vec<u64> = ipsec_keys(&after).iter().map(|k| k.lamport_time).collect();
        assert_eq!(tags, [2, 3, 4]);
        assert_eq!(ipsec_keys(&after)[2].key, vec![9; KEY_LEN]);
        assert!(after.contains(&key(GOSSIP, 1)), "gossip keys stay");
        // From nothing, keys accumulate up to three.
        let mut k = vec![];
        for i in 0..5 {
            k = rotated(&k, vec![i; KEY_LEN]);
        }
        let tags: Vec<u64> = ipsec_keys(&k).iter().map(|k| k.lamport_time).collect();
        assert_eq!(tags, [3, 4, 5]);
    }

    #[test]
    fn rotation_is_due_after_the_period_or_with_missing_keys() {
        let three = vec![key(IPSEC, 1), key(IPSEC, 2), key(IPSEC, 3)];
        let mut c = cluster(three.clone(), 12 * 3600 * 1000);
        let t0 = c.meta.created_at;
        assert!(!rotation_due(&c, t0 + chrono::Duration::hours(11)));
        assert!(rotation_due(&c, t0 + chrono::Duration::hours(12)));
        c.data_key_rotated_at = Some(t0 + chrono::Duration::hours(12));
        assert!(!rotation_due(&c, t0 + chrono::Duration::hours(13)));
        assert!(rotation_due(&c, t0 + chrono::Duration::hours(24)));
        // A clock that went back rotates nothing.
        assert!(!rotation_due(&c, t0));
        // Period 0: never.
        let never = cluster(three, 0);
        assert!(!rotation_due(&never, t0 + chrono::Duration::days(365)));
        // A cluster short of keys (made by an older version) gets them at once.
        let short = cluster(vec![key(IPSEC, 1)], 12 * 3600 * 1000);
        assert!(rotation_due(&short, t0 + chrono::Duration::seconds(1)));
    }
}
