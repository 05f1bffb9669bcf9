//! [`Subscription`]: one network's events, first a snapshot, then changes in order.

use std::sync::Weak;

use tokio::sync::broadcast;

use crate::api::Inner;
use crate::{Entry, Event};

/// A subscription to one network's endpoint table. The first event is a [`Event::Resync`] with
/// the table (once the node holds it: a network it did not hold yet is fetched from its
/// holders first, or for at most the failure timeout); then changes follow, in order. Memory is
/// bounded: a subscriber that falls behind gets a fresh snapshot instead of the events it
/// missed. The node holds the network's table while any subscription to it lives; dropping the
/// last one stops replicating the table (unless the node has entries there).
pub struct Subscription {
    network: String,
    epoch: u64,
    rx: broadcast::Receiver<Event>,
    pending: Option<Vec<Entry>>,
    /// Still waiting for the first snapshot (the table was being fetched when subscribing).
    waiting: bool,
    inner: Weak<Inner>,
}

impl Subscription {
    pub(crate) fn new(
        network: String,
        epoch: u64,
        rx: broadcast::Receiver<Event>,
        pending: Option<Vec<Entry>>,
        inner: Weak<Inner>,
    ) -> Subscription {
        Subscription {
            network,
            epoch,
            rx,
            waiting: pending.is_none(),
            pending,
            inner,
        }
    }

    /// Filters what the channel delivers before the first snapshot.
    fn admit(&mut self, e: Event) -> Option<Event> {
        if self.waiting {
            if matches!(e, Event::Resync(_)) {
                self.waiting = false;
                return Some(e);
            }
            return None;
        }
        if matches!(e, Event::Resync(_)) {
            // The table's own first snapshot; this subscriber already has one.
            return None;
        }
        Some(e)
    }

    /// The next event; `None` once gossip has shut down or the network was unsubscribed.
    pub async fn recv(&mut self) -> Option<Event> {
        if let Some(snapshot) = self.pending.take() {
            return Some(Event::Resync(snapshot));
        }
        loop {
            let e = match self.rx.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(_)) => return self.resync(),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if let Some(e) = self.admit(e) {
                return Some(e);
            }
        }
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        if let Some(snapshot) = self.pending.take() {
            return Some(Event::Resync(snapshot));
        }
        loop {
            let e = match self.rx.try_recv() {
                Ok(e) => e,
                Err(broadcast::error::TryRecvError::Lagged(_)) => return self.resync(),
                Err(_) => return None,
            };
            if let Some(e) = self.admit(e) {
                return Some(e);
            }
        }
    }

    fn resync(&mut self) -> Option<Event> {
        let inner = self.inner.upgrade()?;
        let st = inner.lock();
        let t = st.store.tables.get(&self.network)?;
        if t.epoch != self.epoch {
            return None;
        }
        let (rx, snapshot) = t.subscribe();
        self.rx = rx;
        self.waiting = false;
        Some(Event::Resync(snapshot))
    }

    pub fn network(&self) -> &str {
        &self.network
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let (network, epoch) = (self.network.clone(), self.epoch);
        let ((), out) = inner.run(|st, out| out.merge(st.store.unsubscribed(&network, epoch)));
        let rt = inner.rt.clone();
        rt.spawn(async move { inner.dispatch(out).await });
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("network", &self.network)
            .finish()
    }
}
