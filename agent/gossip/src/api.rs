//! [`Gossip`]: the running node and its API, and the tasks that drive it (receive, timers,
//! anti-entropy rounds, pushes).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use foca::Timer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::codec::{self, Message};
use crate::membership::Id;
use crate::node::{Out, State};
use crate::store::PushJob;
use crate::subscription::Subscription;
use crate::transport::{self, Receiver, Shared};
use crate::wire::{self, Sealer};
use crate::{
    Config, Endpoint, Entry, Error, Member, NetworkStats, Result, Stats, Timings, validate_id,
};

/// The two sockets of the gossip port (datagrams, and streams for messages larger than a few)
/// and the network namespace they live in, where outgoing streams are opened too.
pub struct Sockets {
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    netns: netns::NetNs,
}

impl Sockets {
    /// Binds UDP and TCP on `addr` in the calling thread's network namespace (which may be
    /// another than the one of the threads that later run gossip).
    pub fn bind(addr: SocketAddr) -> std::io::Result<Sockets> {
        let netns = netns::NetNs::current().map_err(std::io::Error::other)?;
        let udp = std::net::UdpSocket::bind(addr)?;
        let tcp = std::net::TcpListener::bind(addr)?;
        Ok(Sockets { udp, tcp, netns })
    }
}

pub(crate) struct Inner {
    state: Mutex<State>,
    pub(crate) shared: Arc<Shared>,
    socket: Arc<tokio::net::UdpSocket>,
    sealer: Arc<Sealer>,
    pushes: mpsc::Sender<PushJob>,
    timers: mpsc::UnboundedSender<Timer<Id>>,
    changed: watch::Sender<u64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The runtime gossip runs on, for work started from outside it (subscribe, drops).
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) timings: Timings,
    node_id: String,
    addr: SocketAddr,
    generation: u64,
}

impl Inner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs a step of the state machine (and the fetches it asks for) under the lock.
    pub(crate) fn run<R>(&self, f: impl FnOnce(&mut State, &mut Out) -> R) -> (R, Out) {
        let mut st = self.lock();
        let mut out = Out::default();
        let r = f(&mut st, &mut out);
        let fetch = std::mem::take(&mut out.eff.fetch);
        if !fetch.is_empty() {
            st.fetch(fetch, &mut out);
        }
        (r, out)
    }

    /// Carries out what a step asked for: timers, pushes, the change signal, sends.
    pub(crate) async fn dispatch(self: &Arc<Self>, out: Out) {
        for (t, after) in out.timers {
            let tx = self.timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(t);
            });
        }
        for job in out.eff.pushes {
            if self.pushes.try_send(job).is_err() {
                debug!("push queue full; the change goes by anti-entropy");
            }
        }
        if out.eff.changed {
            self.changed.send_modify(|g| *g += 1);
        }
        self.send_all(out.sends).await;
    }

    pub(crate) async fn send_all(&self, sends: Vec<(SocketAddr, Message)>) {
        for (to, msg) in sends {
            match codec::encode(&msg) {
                Ok(bytes) => {
                    transport::send_sealed(&self.socket, &self.sealer, &self.shared, to, &bytes)
                        .await
                }
                Err(e) => {
                    transport::add(&self.shared.counters.send_errors, 1);
                    warn!(%to, error = %e, "gossip message not encoded");
                }
            }
        }
    }

    fn stop_tasks(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
        let mut st = self.lock();
        st.closed = true;
        for t in st.store.tables.values_mut() {
            t.close_subscriptions();
        }
    }
}

/// A running gossip node. Dropping it stops everything at once (like a crash: peers notice by
/// failure detection, and keep its entries flagged); [`Gossip::shutdown`] leaves gracefully.
pub struct Gossip {
    inner: Arc<Inner>,
}

impl Gossip {
    /// Binds `config.bind` (UDP and TCP) and starts. Must run inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Gossip> {
        let sockets = Sockets::bind(config.bind).map_err(|source| Error::Bind {
            addr: config.bind,
            source,
        })?;
        Self::start_with_sockets(config, sockets).await
    }

    /// Starts on sockets bound by the caller (e.g. inside the node's network namespace);
    /// `config.bind` is still the address advertised to peers.
    pub async fn start_with_sockets(config: Config, sockets: Sockets) -> Result<Gossip> {
        let Sockets {
            udp: socket,
            tcp: listener,
            netns,
        } = sockets;
        validate_id("node id", &config.node_id)?;
        if config.bind.ip().is_unspecified() || config.bind.port() == 0 {
            return Err(Error::Config(format!(
                "the advertise address {} must be a concrete address and port",
                config.bind
            )));
        }
        if config.mtu < wire::MIN_MTU {
            return Err(Error::Config(format!(
                "underlay MTU {} is below {}",
                config.mtu,
                wire::MIN_MTU
            )));
        }
        let t = config.timings;
        if t.gossip_interval.is_zero() || t.failure_timeout < t.gossip_interval * 2 {
            return Err(Error::Config(
                "the failure timeout must be at least two gossip intervals".into(),
            ));
        }
        let keys = config.keys.compile()?;
        socket.set_nonblocking(true)?;
        // Room for a burst of fragments from several peers (capped by net.core.rmem_max).
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20);
        let socket = Arc::new(tokio::net::UdpSocket::from_std(socket)?);
        let sealer = Arc::new(Sealer::new(config.mtu));
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let shared = Arc::new(Shared {
            keys: RwLock::new(Arc::new(keys)),
            counters: Default::default(),
            port: config.bind.port(),
            outbound: crate::stream::outbound(),
            netns,
        });
        let generation = crate::now_us();
        let me = Id {
            node: config.node_id.as_str().into(),
            generation,
            bump: 0,
            addr: config.bind,
        };
        // A SWIM packet must fit one datagram with our message around it (identity, framing).
        let max_packet = sealer.max_datagram()
            - wire::HEADER_LEN
            - wire::TAG_LEN
            - 1
            - 2
            - 24
            - crate::MAX_ID_LEN
            - 24;
        let mut state = State::new(
            me,
            codec::cluster_hash(&config.cluster_id),
            t,
            config.seeds.clone(),
            max_packet,
            sealer.sender() ^ generation,
        );
        if let Some(vtep) = config.vtep {
            // In the first record: peers never see this generation without its VTEP (they
            // would drop the peers of its endpoints until the executor published it).
            let _ = state.store.publish_vtep(vtep);
        }
        let (push_tx, push_rx) = mpsc::channel(1024);
        let (timer_tx, timer_rx) = mpsc::unbounded_channel();
        let (frames_tx, frames_rx) = mpsc::channel(wire::MAX_FRAGMENTS * 4);
        let listening =
            crate::stream::listen(listener, frames_tx, shared.clone(), t.reassembly_timeout);
        let receiver = Receiver::new(
            socket.clone(),
            frames_rx,
            shared.clone(),
            sealer.clone(),
            &t,
        );
        let inner = Arc::new(Inner {
            state: Mutex::new(state),
            shared,
            socket,
            sealer,
            pushes: push_tx,
            timers: timer_tx,
            changed: watch::channel(0).0,
            tasks: Mutex::new(Vec::new()),
            rt: tokio::runtime::Handle::current(),
            timings: t,
            node_id: config.node_id.clone(),
            addr: config.bind,
            generation,
        });
        // Our record goes out, and SWIM starts (it probes once it knows a member).
        let ((), out) = inner.run(|st, out| {
            let rec = st.store.record().clone();
            out.eff.pushes.push(PushJob {
                net: None,
                records: vec![rec],
                deltas: vec![],
                exclude: vec![],
                origin: st.me.node.clone(),
            });
            st.tick(out);
        });
        inner.dispatch(out).await;
        let tasks = vec![
            listening,
            tokio::spawn(receive_loop(inner.clone(), receiver)),
            tokio::spawn(timer_loop(Arc::downgrade(&inner), timer_rx)),
            tokio::spawn(tick_loop(Arc::downgrade(&inner))),
            tokio::spawn(crate::push::push_loop(inner.clone(), push_rx)),
        ];
        *inner.tasks.lock().unwrap_or_else(|e| e.into_inner()) = tasks;
        info!(node = %config.node_id, addr = %config.bind, seeds = ?config.seeds, "gossip started");
        Ok(Gossip { inner })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// This incarnation's generation (start time in µs).
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// The advertised address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Replaces the keyring (rotation needs no restart).
    pub fn set_keyring(&self, keys: crate::Keyring) -> Result<()> {
        let compiled = keys.compile()?;
        *self
            .inner
            .shared
            .keys
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(compiled);
        info!(primary = keys.primary.id, "gossip keyring replaced");
        Ok(())
    }

    /// Replaces the seeds (the managers' addresses), e.g. when managers change.
    pub fn set_seeds(&self, seeds: Vec<SocketAddr>) {
        self.inner.lock().seeds = seeds;
    }

    async fn step<R>(&self, f: impl FnOnce(&mut State, &mut Out) -> R) -> R {
        let (r, out) = self.inner.run(f);
        self.inner.dispatch(out).await;
        r
    }

    /// Publishes (or replaces) this node's VTEP, the data-path address peers send VXLAN to.
    pub async fn publish_vtep(&self, addr: IpAddr) -> Result<()> {
        self.step(|st, out| out.merge(st.store.publish_vtep(addr)))
            .await;
        Ok(())
    }

    /// Publishes (or replaces) an endpoint owned by this node. The node holds the network's
    /// table from now on (while it has entries there). Publishing an unchanged endpoint sends
    /// nothing, except to confirm an entry adopted from the previous generation.
    pub async fn publish_endpoint(&self, ep: Endpoint) -> Result<()> {
        validate_id("network id", &ep.network)?;
        validate_id("endpoint id", &ep.id)?;
        let value = codec::EpValue {
            ip: ep.ip,
            mac: ep.mac,
            task: ep.task.clone(),
            service: ep.service.clone(),
            name: ep.name.clone(),
            aliases: ep.aliases.clone(),
            disabled: ep.disabled,
        };
        if value.wire_len() > crate::MAX_VALUE_LEN {
            return Err(Error::TooLarge(ep.id, value.wire_len()));
        }
        self.step(|st, out| out.merge(st.store.publish(&ep))).await;
        Ok(())
    }

    /// Withdraws an endpoint of this node (a tombstone that reaches every holder of the
    /// network). Returns whether it was published.
    pub async fn withdraw_endpoint(&self, network: &str, id: &str) -> Result<bool> {
        validate_id("network id", network)?;
        validate_id("endpoint id", id)?;
        Ok(self
            .step(|st, out| {
                let (was, eff) = st.store.withdraw(network, id);
                out.merge(eff);
                was
            })
            .await)
    }

    /// Ends the adoption of the previous generation's entries: the ones the agent has not
    /// re-published since this node started are withdrawn everywhere. Call it once the agent
    /// has published everything it runs (otherwise it happens after
    /// [`Timings::adopt_grace`]).
    pub async fn release_adopted(&self) {
        self.step(|st, out| out.merge(st.store.release_adopted()))
            .await;
    }

    /// Whether entries of the previous generation are still being adopted (not released).
    pub fn adopting(&self) -> bool {
        self.inner.lock().store.adopting()
    }

    /// The visible endpoints of a network this node holds (its own included), with their
    /// owners and liveness; empty for a network it does not hold.
    pub fn endpoints(&self, network: &str) -> Vec<Entry> {
        self.inner.lock().store.endpoints(network)
    }

    /// The VTEP of every known node that has not left, dead or alive, this one included.
    pub fn vteps(&self) -> BTreeMap<String, IpAddr> {
        self.inner.lock().store.vteps()
    }

    /// Every known node (newest generation each), alive or not, this one included.
    pub fn members(&self) -> Vec<Member> {
        self.inner.lock().members()
    }

    /// Subscribes to a network's endpoint table (see [`Subscription`]); the node holds the
    /// table while a subscription to it lives.
    pub fn subscribe(&self, network: &str) -> Subscription {
        let ((epoch, rx, pending), out) = self.inner.run(|st, out| {
            let (epoch, eff) = st.store.subscribe(network);
            out.merge(eff);
            let t = &st.store.tables[network];
            let (rx, snapshot) = t.subscribe();
            (epoch, rx, t.synced.then_some(snapshot))
        });
        let inner = self.inner.clone();
        self.inner
            .rt
            .spawn(async move { inner.dispatch(out).await });
        Subscription::new(
            network.to_string(),
            epoch,
            rx,
            pending,
            Arc::downgrade(&self.inner),
        )
    }

    /// Stops holding a network now: its subscriptions end (they return `None`), and the table
    /// is dropped unless this node still has entries there.
    pub async fn unsubscribe(&self, network: &str) {
        self.step(|st, out| out.merge(st.store.unsubscribe_all(network)))
            .await;
    }

    /// The networks whose tables this node holds.
    pub fn networks(&self) -> Vec<String> {
        self.inner.lock().store.tables.keys().cloned().collect()
    }

    /// What this node holds and has received of a network's table.
    pub fn network_stats(&self, network: &str) -> NetworkStats {
        self.inner.lock().store.network_stats(network)
    }

    /// Forgets a node removed from the cluster: its entries (Removed), VTEP and membership go
    /// here at once, and its messages are refused from now on unless it comes back as a newer
    /// generation. Every node's agent is expected to call it.
    pub async fn forget(&self, node_id: &str) {
        self.step(|st, out| st.forget(node_id, out)).await;
    }

    /// A counter bumped whenever anything visible changes (entries, VTEPs, members): a cheap
    /// "look again" signal for reconcilers.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        let mut s = self.inner.shared.counters.snapshot();
        s.eager_pushes = self
            .inner
            .shared
            .counters
            .eager_pushes
            .load(std::sync::atomic::Ordering::Relaxed);
        let st = self.inner.lock();
        let c = st.counters;
        s.dropped_malformed += c.dropped_malformed;
        s.dropped_foreign_cluster = c.dropped_foreign_cluster;
        s.dropped_forgotten = c.dropped_forgotten;
        s.dropped_entries = c.dropped_entries;
        s.items_unwanted = st.store.items_unwanted;
        s.syncs_started = c.syncs_started;
        s.syncs_repaired = c.syncs_repaired;
        s
    }

    /// Entries or records received that were refused one by one (see
    /// [`Stats::dropped_entries`]).
    pub fn bad_entries(&self) -> usize {
        self.inner.lock().counters.dropped_entries as usize
    }

    /// Why this node's gossip stopped working, if it did: one of its loops (listener, receiver,
    /// timers, ticks, pushes) ended (its socket failed, or it panicked) while the node was not
    /// stopped. Its owner then starts a new one (as an agent restart would).
    pub fn stalled(&self) -> Option<String> {
        const LOOPS: [&str; 5] = ["stream listener", "receiver", "timers", "ticks", "pushes"];
        if self.inner.lock().closed {
            return None;
        }
        let tasks = self.inner.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let ended = tasks.iter().position(|t| t.is_finished())?;
        Some(format!(
            "its {} loop ended",
            LOOPS.get(ended).copied().unwrap_or("internal")
        ))
    }

    /// Stops without leaving (the agent restarts; its data plane stays): peers keep this node's
    /// entries, flagged silent, and the next generation adopts them.
    pub async fn stop(self) {
        self.inner.stop_tasks();
    }

    /// Leaves gracefully: peers drop this node's entries at once instead of keeping them
    /// flagged. Then stops.
    pub async fn shutdown(self) -> Result<()> {
        let ((), mut out) = self.inner.run(|st, out| st.leave(out));
        // The record saying so goes to every live peer now, not through the push queue.
        let jobs = std::mem::take(&mut out.eff.pushes);
        let sends = {
            let st = self.inner.lock();
            let peers: Vec<SocketAddr> = st
                .reachable_peers()
                .iter()
                .filter_map(|p| st.peer_addr(p))
                .collect();
            let mut sends = Vec::new();
            for j in jobs {
                for p in crate::sync::split_push(j.origin, j.records, Vec::new()) {
                    let msg = st.message(codec::Body::Push(p));
                    sends.extend(peers.iter().map(|a| (*a, msg.clone())));
                }
            }
            sends
        };
        self.inner.send_all(sends).await;
        self.inner.dispatch(out).await;
        tokio::time::sleep(Duration::from_millis(100).min(self.inner.timings.gossip_interval))
            .await;
        self.inner.stop_tasks();
        Ok(())
    }
}

impl Drop for Gossip {
    fn drop(&mut self) {
        self.inner.stop_tasks();
    }
}

async fn receive_loop(inner: Arc<Inner>, mut receiver: Receiver) {
    loop {
        let d = match receiver.recv().await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "gossip socket failed; gossip stops receiving");
                return;
            }
        };
        let ((), out) = inner.run(|st, out| st.handle(d.message, d.refused, out));
        inner.dispatch(out).await;
    }
}

async fn timer_loop(inner: std::sync::Weak<Inner>, mut rx: mpsc::UnboundedReceiver<Timer<Id>>) {
    while let Some(t) = rx.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let ((), out) = inner.run(|st, out| st.on_timer(t, out));
        inner.dispatch(out).await;
    }
}

async fn tick_loop(inner: std::sync::Weak<Inner>) {
    let interval = match inner.upgrade() {
        Some(i) => i.timings.gossip_interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let ((), out) = inner.run(|st, out| st.tick(out));
        inner.dispatch(out).await;
    }
}
