//! What a dispatcher session has told its node, so each heartbeat reply carries only what
//! changed: the node's object and the cluster's settings (with the CA, about 3.7 kB) go again
//! only when they differ from what the node has. A new heartbeat period is among those
//! settings; the node applies it on receipt, and until it has surely done so (two beats since)
//! the session waits for beats at the slower of the old and new periods.

use std::time::Duration;

use model::Node;

use crate::rpc::messages::ClusterInfo;

pub(super) struct Told {
    node: Option<Node>,
    cluster: Option<ClusterInfo>,
    /// The heartbeat period the node was told last (ms), the one before, and the beats heard
    /// since the change.
    period: u64,
    before: u64,
    beats_since: u32,
}

impl Told {
    /// A session that welcomed its node with `cluster` and `period`.
    pub(super) fn welcomed(cluster: Option<ClusterInfo>, period: u64) -> Told {
        Told {
            node: None,
            cluster,
            period,
            before: period,
            beats_since: 2,
        }
    }

    /// How long the node may stay silent before the session ends: its grace at the slower of
    /// the periods it may be using.
    pub(super) fn silence(&self) -> Duration {
        crate::sessions::grace(Duration::from_millis(self.period.max(self.before)))
    }

    /// A heartbeat arrived.
    pub(super) fn beat(&mut self) {
        self.beats_since = self.beats_since.saturating_add(1);
        if self.beats_since >= 2 {
            self.before = self.period;
        }
    }

    /// What a heartbeat reply says of the node and the cluster: each only if it changed since
    /// the node was last told.
    pub(super) fn reply(
        &mut self,
        node: Option<Node>,
        cluster: Option<ClusterInfo>,
    ) -> (Option<Node>, Option<ClusterInfo>) {
        let node = node.filter(|n| self.node.as_ref() != Some(n));
        if let Some(n) = &node {
            self.node = Some(n.clone());
        }
        let cluster = cluster.filter(|c| self.cluster.as_ref() != Some(c));
        if let Some(c) = &cluster {
            if c.heartbeat_period_ms != self.period {
                self.before = self.period;
                self.period = c.heartbeat_period_ms;
                self.beats_since = 0;
            }
            self.cluster = Some(c.clone());
        }
        (node, cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(period: u64) -> ClusterInfo {
        ClusterInfo {
            id: "c".into(),
            data_path_port: 4789,
            default_addr_pools: vec!["10.0.0.0/8".into()],
            subnet_size: 24,
            heartbeat_period_ms: period,
            network_keys: Vec::new(),
            ca: None,
        }
    }

    #[test]
    fn only_changes_are_sent_again() {
        let mut t = Told::welcomed(Some(cluster(200)), 200);
        // Unchanged cluster: not sent.
        assert_eq!(t.reply(None, Some(cluster(200))).1, None);
        // A change is sent once.
        let mut c = cluster(200);
        c.default_addr_pools.push("192.168.0.0/16".into());
        assert_eq!(t.reply(None, Some(c.clone())).1, Some(c.clone()));
        assert_eq!(t.reply(None, Some(c)).1, None);
    }

    #[test]
    fn a_new_period_widens_the_silence_until_the_node_beats_twice() {
        let mut t = Told::welcomed(Some(cluster(200)), 200);
        assert_eq!(t.silence(), Duration::from_millis(600));
        // Slower beats: the node may still beat fast, or already slowly.
        t.reply(None, Some(cluster(5000)));
        assert_eq!(t.silence(), Duration::from_secs(15));
        // Faster beats: until the node has surely switched, it may still beat every 5 s.
        t.beat();
        t.beat();
        t.reply(None, Some(cluster(200)));
        assert_eq!(t.silence(), Duration::from_secs(15));
        t.beat();
        assert_eq!(t.silence(), Duration::from_secs(15));
        t.beat();
        assert_eq!(t.silence(), Duration::from_millis(600));
    }
}
