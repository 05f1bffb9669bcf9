//! Membership and failure detection: SWIM, by [foca](https://docs.rs/foca/2).
//!
//! foca runs the protocol (probe one member per period, indirect probes through a few others,
//! suspicion refuted by a higher incarnation, dissemination piggybacked on the probes) and
//! tells us what to send and when to wake it; the node (`node.rs`, `api.rs`) does the I/O. Its packets travel
//! inside our messages ([`crate::codec::Body::Swim`]), encoded by foca's public postcard codec
//! over our [`Id`], with every identity checked after decoding ([`SwimCodec`]).
//!
//! Identities: one per node incarnation. foca keeps one member per node id
//! ([`foca::Identity::addr`]) and, when two identities share a node id, the newer
//! `(generation, bump)` wins: a restarted agent (new generation) replaces its old identity at
//! once, and a node that was declared down while it was in fact alive (a partition) rejoins by
//! bumping `bump` ([`foca::Identity::renew`]).

use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Member, Notification, PeriodicParams, PostcardCodec, Runtime, Timer};
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::Timings;
use crate::valid_id;

/// A node incarnation, as gossip names it.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Id {
    /// The node's id in the cluster.
    pub node: Arc<str>,
    /// Start time of the agent's gossip (µs since the epoch).
    pub generation: u64,
    /// Bumped when the node rejoins after being declared down while alive.
    pub bump: u16,
    /// Where the node's gossip listens.
    pub addr: SocketAddr,
}

impl Id {
    /// Whether `self` is a newer incarnation of the same node than `other`.
    pub fn newer_than(&self, other: &Id) -> bool {
        (self.generation, self.bump) > (other.generation, other.bump)
    }
}

impl foca::Identity for Id {
    type Addr = Arc<str>;

    fn renew(&self) -> Option<Self> {
        Some(Id {
            bump: self.bump.checked_add(1)?,
            ..self.clone()
        })
    }

    fn addr(&self) -> Arc<str> {
        self.node.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.newer_than(adversary)
    }
}

/// foca's postcard codec, plus a check of every identity it decodes.
#[derive(Debug, Clone, Copy)]
pub struct SwimCodec;

/// A decoded identity broke a bound.
#[derive(Debug, thiserror::Error)]
pub enum SwimCodecError {
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
    #[error("invalid identity in a SWIM packet")]
    BadIdentity,
}

fn valid(id: &Id) -> bool {
    valid_id(&id.node) && id.generation > 0 && id.addr.port() != 0
}

impl Codec<Id> for SwimCodec {
    type Error = SwimCodecError;

    fn encode_header(&mut self, header: &Header<Id>, buf: impl BufMut) -> Result<(), Self::Error> {
        Ok(PostcardCodec.encode_header(header, buf)?)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<Id>, Self::Error> {
        let h: Header<Id> = PostcardCodec.decode_header(buf)?;
        let inner_ok = match &h.message {
            foca::Message::PingReq { target: i, .. }
            | foca::Message::IndirectPing { origin: i, .. }
            | foca::Message::IndirectAck { target: i, .. }
            | foca::Message::ForwardedAck { origin: i, .. } => valid(i),
            _ => true,
        };
        if !valid(&h.src) || !valid(&h.dst) || !inner_ok {
            return Err(SwimCodecError::BadIdentity);
        }
        Ok(h)
    }

    fn encode_member(&mut self, member: &Member<Id>, buf: impl BufMut) -> Result<(), Self::Error> {
        Ok(PostcardCodec.encode_member(member, buf)?)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<Member<Id>, Self::Error> {
        let m: Member<Id> = PostcardCodec.decode_member(buf)?;
        if !valid(m.id()) {
            return Err(SwimCodecError::BadIdentity);
        }
        Ok(m)
    }
}

/// The SWIM state machine as used here.
pub(crate) type Swim = foca::Foca<Id, SwimCodec, SmallRng, foca::NoCustomBroadcast>;

/// SWIM's parameters from ours: probe every `failure_timeout / 5` (at least a gossip interval),
/// a third of that to answer, and the rest of the failure timeout to refute a suspicion.
pub(crate) fn swim_config(t: &Timings, max_packet: usize) -> foca::Config {
    let period = t.probe_period();
    let nz = |n: usize| NonZeroUsize::new(n.max(1)).expect("at least 1");
    foca::Config {
        probe_period: period,
        probe_rtt: period / 3,
        num_indirect_probes: nz(3),
        max_transmissions: NonZeroU8::new(10).expect("10"),
        suspect_to_down_after: t.failure_timeout.saturating_sub(period).max(period),
        remove_down_after: Some(t.dead_node_gc.max(Duration::from_secs(1))),
        max_packet_size: nz(max_packet),
        notify_down_members: true,
        // A healed partition leaves identities renewed on both sides, and some node may learn
        // of another's new one only through an announce's answer (its member list). Every 15
        // rejoin intervals, the lab's isolate-and-heal test took 0.6-50 s to heal and once
        // more than 60 s (one announce to one random member per 7.5 s); every 2, 0.16-3.2 s
        // in 12 runs under load.
        periodic_announce: Some(PeriodicParams {
            frequency: t.rejoin_interval * 2,
            num_members: nz(1),
        }),
        periodic_announce_to_down_members: Some(PeriodicParams {
            frequency: t.rejoin_interval,
            num_members: nz(2),
        }),
        periodic_gossip: Some(PeriodicParams {
            frequency: t.gossip_interval,
            num_members: nz(3),
        }),
    }
}

/// What one interaction with foca asked for.
#[derive(Default)]
pub(crate) struct SwimOut {
    pub sends: Vec<(Id, Vec<u8>)>,
    pub timers: Vec<(Timer<Id>, Duration)>,
    /// Membership may have changed.
    pub changed: bool,
}

impl Runtime<Id> for SwimOut {
    fn notify(&mut self, notification: Notification<'_, Id>) {
        match &notification {
            Notification::Rejoin(id) => {
                tracing::info!(
                    node = %id.node,
                    bump = id.bump,
                    "declared down by the cluster while alive; rejoined"
                )
            }
            Notification::Defunct => tracing::warn!("declared down by the cluster"),
            Notification::Idle => tracing::debug!("no live member known"),
            _ => {}
        }
        self.changed = true;
    }

    fn send_to(&mut self, to: Id, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<Id>, after: Duration) {
        self.timers.push((event, after));
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn id(generation: u64, bump: u16) -> Id {
        Id {
            node: "n1".into(),
            generation,
            bump,
            addr: "198.18.0.1:7946".parse().unwrap(),
        }
    }

    #[test]
    fn newer_incarnations_win() {
        assert!(id(2, 0).win_addr_conflict(&id(1, 9)));
        assert!(id(1, 1).win_addr_conflict(&id(1, 0)));
        assert!(!id(1, 0).win_addr_conflict(&id(1, 0)));
        assert_eq!(id(1, 0).renew().unwrap().bump, 1);
        assert_eq!(id(1, u16::MAX).renew(), None);
    }

    #[test]
    fn config_is_valid_for_both_timings() {
        for t in [Timings::default(), Timings::fast()] {
            let c = swim_config(&t, 1300);
            assert!(c.probe_rtt < c.probe_period);
            assert!(
                c.suspect_to_down_after + c.probe_period
                    <= t.failure_timeout.max(c.probe_period * 2)
            );
        }
    }
}
