//! Gossip on 7946: who is where (VTEPs, endpoints), spread between all nodes without the managers.
//!
//! Built on [chitchat](https://docs.rs/chitchat/0.11.0) (scuttlebutt anti-entropy, per-node
//! versioned key-value state, tombstones with a grace period, phi-accrual failure detection).
//! This crate adds:
//!
//! * an encrypted transport ([`wire`]): every datagram is sealed with AES-GCM under the cluster's
//!   primary gossip key, opened with any accepted key, checked against a replay window and kept
//!   under the underlay MTU (longer messages are fragmented, each fragment sealed on its own,
//!   and sent over TCP on the same port, falling back to UDP fragments);
//! * a strict pre-check of every message before chitchat parses it ([`validate`]);
//! * the tables ([`Endpoint`], VTEP) as entries owned by the node that wrote them, visible only
//!   while that node is alive, materialized into a view with per-network event channels
//!   ([`Gossip::subscribe`]);
//! * eager push: a node that learns something new starts a gossip round with a few peers at
//!   once (rate-limited), so a change crosses 50 nodes in tens of milliseconds instead of a few
//!   gossip intervals;
//! * seeds that can change at run time ([`Gossip::set_seeds`]) and are contacted whenever none of
//!   them is a live member, which repairs the view after every manager restarted.
//!
//! Ownership and deletes: a node only ever writes its own state; each write gets a version from
//! the node's own counter, and a withdraw is a tombstone with a newer version, kept for
//! [`Timings::tombstone_ttl`]. A late or replayed add carries an older version and is ignored, so
//! a delete is never resurrected; others cannot forge a node's entries without a cluster key.

mod stream;
mod transport;
pub mod validate;
mod view;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chitchat::transport::Transport;
use chitchat::{Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

pub use wire::{Key, Keyring};

use transport::{SecureTransport, Shared};
use view::{News, View};
use wire::Sealer;

/// The gossip port (UDP).
pub const DEFAULT_PORT: u16 = 7946;
/// Longest endpoint value (JSON) accepted for publishing.
pub const MAX_VALUE_LEN: usize = 4096;
/// Longest network or endpoint id.
pub const MAX_ID_LEN: usize = 128;

/// Errors of the gossip layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid gossip keyring: {0}")]
    Keyring(String),
    #[error("invalid gossip configuration: {0}")]
    Config(String),
    #[error("could not bind the gossip socket to {addr}: {source} (is another agent running?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gossip socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{what} {value:?} is invalid: use 1-{MAX_ID_LEN} characters, no '/'")]
    InvalidId { what: &'static str, value: String },
    #[error("endpoint {0} is too large to gossip ({1} bytes; at most {MAX_VALUE_LEN})")]
    TooLarge(String, usize),
    #[error("message of {0} bytes is too large for the gossip envelope")]
    Oversize(usize),
    #[error("could not start chitchat: {0}")]
    Start(String),
    #[error("gossip is shut down")]
    Shutdown,
}

pub type Result<T> = std::result::Result<T, Error>;

/// Timers and bounds. [`Timings::default`] is for production; [`Timings::fast`] for tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timings {
    /// Anti-entropy round: each node syncs with 3 random live peers (plus, sometimes, a dead
    /// node and a seed). Also the heartbeat period.
    pub gossip_interval: Duration,
    /// Silence after which a node is considered dead (phi-accrual, so it adapts upward when
    /// heartbeats are observed less often).
    pub failure_timeout: Duration,
    /// How long a dead node's state is kept (it comes back unchanged if the node returns within
    /// that time; afterwards it is resynchronized from scratch).
    pub dead_node_gc: Duration,
    /// How long tombstones (withdrawn entries) are kept so every node learns the delete.
    pub tombstone_ttl: Duration,
    /// Peers contacted at once when this node learns or makes a change.
    pub push_fanout: usize,
    /// Minimum time between two eager pushes (changes in between are coalesced).
    pub push_cooldown: Duration,
    /// A seed that is not a live member is contacted at most this often.
    pub rejoin_interval: Duration,
    /// Datagrams stamped further than this from the local clock are refused as replays (so the
    /// nodes' clocks must agree within it).
    pub replay_max_age: Duration,
    /// A fragmented message not complete after this long is given up.
    pub reassembly_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            gossip_interval: Duration::from_millis(250),
            failure_timeout: Duration::from_secs(5),
            dead_node_gc: Duration::from_secs(24 * 3600),
            tombstone_ttl: Duration::from_secs(24 * 3600),
            push_fanout: 6,
            push_cooldown: Duration::from_millis(20),
            rejoin_interval: Duration::from_secs(2),
            replay_max_age: Duration::from_secs(600),
            reassembly_timeout: Duration::from_secs(2),
        }
    }
}

impl Timings {
    /// Short timers for tests: 100 ms rounds, death after ~1.5 s of silence, tombstones for a
    /// minute.
    pub fn fast() -> Timings {
        Timings {
            gossip_interval: Duration::from_millis(100),
            failure_timeout: Duration::from_millis(1500),
            dead_node_gc: Duration::from_secs(120),
            tombstone_ttl: Duration::from_secs(60),
            rejoin_interval: Duration::from_millis(500),
            ..Timings::default()
        }
    }
}

/// How to start a node's gossip.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node's id as the cluster knows it (opaque).
    pub node_id: String,
    /// Cluster id: nodes of another cluster are refused.
    pub cluster_id: String,
    /// Advertise address, also bound: peers reach this node here. Port 7946 by default.
    pub bind: SocketAddr,
    /// Known members to join through (the managers).
    pub seeds: Vec<SocketAddr>,
    /// The cluster's gossip keys.
    pub keys: Keyring,
    /// Underlay MTU: no datagram is larger than `mtu - 48`.
    pub mtu: u16,
    pub timings: Timings,
}

impl Config {
    /// A configuration with production timings, port 7946 and MTU 1500.
    pub fn new(node_id: impl Into<String>, advertise: IpAddr, keys: Keyring) -> Config {
        Config {
            node_id: node_id.into(),
            cluster_id: "netagent".into(),
            bind: SocketAddr::new(advertise, DEFAULT_PORT),
            seeds: Vec::new(),
            keys,
            mtu: 1500,
            timings: Timings::default(),
        }
    }
}

/// An endpoint of a task on an overlay network, as published by the node running the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub network: String,
    pub ip: IpAddr,
    pub mac: [u8; 6],
    pub task: String,
    pub service: String,
    pub name: String,
    pub aliases: Vec<String>,
    /// Published but not to be load-balanced to (a task shutting down).
    pub disabled: bool,
}

/// An endpoint and the node that owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub owner: String,
    pub endpoint: Endpoint,
}

/// A change in a network's endpoint table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Added(Entry),
    Updated(Entry),
    /// Withdrawn by its owner, or its owner died or left.
    Removed(Entry),
    /// The whole table: the first event of every subscription, and what a subscriber that fell
    /// more than 1024 events behind gets instead of the events it missed.
    Resync(Vec<Entry>),
}

/// A cluster member (the newest generation known of each node id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: String,
    pub addr: SocketAddr,
    /// Start time of this incarnation (µs since the epoch): a restart makes a new generation.
    pub generation: u64,
    /// Alive per failure detection and not left; only alive members' entries are visible.
    pub alive: bool,
    pub vtep: Option<IpAddr>,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub messages_sent: u64,
    pub messages_received: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Sealed under a key id not in the keyring.
    pub dropped_unknown_key: u64,
    /// Known key id but the tag does not verify (wrong key bytes, tampering).
    pub dropped_bad_auth: u64,
    /// Already seen, below the window, or stamped too far from our clock.
    pub dropped_replay: u64,
    /// Not an envelope, bad framing, or a message chitchat must not see.
    pub dropped_malformed: u64,
    /// Fragmented messages given up (a fragment lost, or no room).
    pub dropped_incomplete: u64,
    pub send_errors: u64,
    pub eager_pushes: u64,
    /// Messages larger than a datagram sent over TCP, and received that way.
    pub streams_sent: u64,
    pub streams_received: u64,
    /// Large messages sent as UDP fragments because a stream could not be opened (or too many
    /// were in flight).
    pub stream_fallbacks: u64,
}

/// A subscription to one network's endpoint table. The first event is a [`Event::Resync`] with
/// the table as of subscribing; then changes follow, in order. Memory is bounded: a subscriber
/// that falls behind gets a fresh snapshot instead of the events it missed.
pub struct Subscription {
    network: String,
    rx: broadcast::Receiver<Event>,
    pending: Option<Vec<Entry>>,
    view: Arc<RwLock<View>>,
}

impl Subscription {
    /// The next event; `None` once gossip has shut down.
    pub async fn recv(&mut self) -> Option<Event> {
        if let Some(snapshot) = self.pending.take() {
            return Some(Event::Resync(snapshot));
        }
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(self.resync()),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Option<Event> {
        if let Some(snapshot) = self.pending.take() {
            return Some(Event::Resync(snapshot));
        }
        match self.rx.try_recv() {
            Ok(e) => Some(e),
            Err(broadcast::error::TryRecvError::Lagged(_)) => Some(self.resync()),
            Err(_) => None,
        }
    }

    fn resync(&mut self) -> Event {
        let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
        let (rx, snapshot) = view.subscribe(&self.network);
        self.rx = rx;
        Event::Resync(snapshot)
    }

    pub fn network(&self) -> &str {
        &self.network
    }
}

struct Inner {
    node_id: String,
    me: ChitchatId,
    timings: Timings,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    handle: Mutex<Option<ChitchatHandle>>,
    shared: Arc<Shared>,
    view: Arc<RwLock<View>>,
    seeds: RwLock<Vec<SocketAddr>>,
    /// Local change: reconcile now.
    wake: Notify,
    /// Push a gossip round (Syn) to peers soon: news that could not go as a delta.
    push: Notify,
    /// News to push as deltas; bounded (when full, a Syn push is asked for instead).
    news: mpsc::Sender<Vec<News>>,
    socket: Arc<tokio::net::UdpSocket>,
    sealer: Arc<Sealer>,
    changed: watch::Sender<u64>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The two sockets of the gossip port (datagrams, and streams for messages larger than one)
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

/// A running gossip node. Dropping it stops everything at once (like a crash: peers notice by
/// failure detection); [`Gossip::shutdown`] leaves gracefully.
pub struct Gossip {
    inner: Arc<Inner>,
}

fn validate_id(what: &'static str, value: &str) -> Result<()> {
    if value.is_empty() || value.len() > MAX_ID_LEN || value.contains('/') {
        return Err(Error::InvalidId {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
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
            data_arrived: Notify::new(),
            port: config.bind.port(),
            outbound: stream::outbound(),
            netns,
        });
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let me = ChitchatId::new(config.node_id.clone(), generation, config.bind);
        // phi = silence / mean heartbeat interval, the mean smoothed by a prior of weight 5
        // (chitchat's); with a window of 10 samples and the prior at 3/8 of the timeout, phi
        // reaches 8 after about `failure_timeout` of silence when heartbeats come often, and
        // later when they come rarely.
        let fd = FailureDetectorConfig {
            phi_threshold: 8.0,
            sampling_window_size: 10,
            max_interval: t.failure_timeout * 4,
            initial_interval: t.failure_timeout * 3 / 8,
            dead_node_grace_period: t.dead_node_gc,
        };
        let cc_config = ChitchatConfig {
            chitchat_id: me.clone(),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: t.gossip_interval,
            listen_addr: config.bind,
            seed_nodes: config.seeds.iter().map(ToString::to_string).collect(),
            failure_detector_config: fd,
            marked_for_deletion_grace_period: t.tombstone_ttl,
            catchup_callback: None,
            extra_liveness_predicate: None,
        };
        let (frames_tx, frames_rx) = mpsc::channel(wire::MAX_FRAGMENTS * 4);
        let listening = stream::listen(listener, frames_tx, shared.clone(), t.reassembly_timeout);
        let transport =
            SecureTransport::new(socket.clone(), frames_rx, shared.clone(), sealer.clone(), t);
        let handle = chitchat::spawn_chitchat(cc_config, Vec::new(), &transport as &dyn Transport)
            .await
            .map_err(|e| Error::Start(format!("{e:#}")))?;
        let chitchat = handle.chitchat();
        let (news_tx, news_rx) = mpsc::channel(256);
        let inner = Arc::new(Inner {
            node_id: config.node_id.clone(),
            me,
            timings: t,
            chitchat,
            handle: Mutex::new(Some(handle)),
            shared,
            view: Arc::new(RwLock::new(View::default())),
            seeds: RwLock::new(config.seeds.clone()),
            wake: Notify::new(),
            push: Notify::new(),
            news: news_tx,
            socket,
            sealer,
            changed: watch::channel(0).0,
            tasks: Mutex::new(Vec::new()),
        });
        let tasks = vec![
            listening,
            tokio::spawn(reconcile_loop(inner.clone())),
            tokio::spawn(push_loop(inner.clone(), news_rx)),
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
        self.inner.me.generation_id
    }

    /// The advertised address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.me.gossip_advertise_addr
    }

    /// Replaces the keyring (rotation needs no restart).
    pub fn set_keyring(&self, keys: Keyring) -> Result<()> {
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
        *self.inner.seeds.write().unwrap_or_else(|e| e.into_inner()) = seeds;
        self.inner.wake.notify_one();
    }

    async fn write_local(&self, f: impl FnOnce(&mut chitchat::NodeState) -> bool) -> bool {
        let mut cc = self.inner.chitchat.lock().await;
        let changed = f(cc.self_node_state());
        if changed {
            // Make our own view current before returning, and push the change.
            self.inner.reconcile(&cc);
        }
        changed
    }

    /// Publishes (or replaces) this node's VTEP, the data-path address peers send VXLAN to.
    pub async fn publish_vtep(&self, addr: IpAddr) -> Result<()> {
        let value = addr.to_string();
        self.write_local(|s| {
            let changed = s.get(view::KEY_VTEP) != Some(value.as_str());
            s.set(view::KEY_VTEP, &value);
            changed
        })
        .await;
        Ok(())
    }

    /// Publishes (or replaces) an endpoint owned by this node.
    pub async fn publish_endpoint(&self, ep: Endpoint) -> Result<()> {
        validate_id("network id", &ep.network)?;
        validate_id("endpoint id", &ep.id)?;
        let value = serde_json::to_string(&view::EpValue::from_endpoint(&ep))
            .map_err(|e| Error::Config(e.to_string()))?;
        if value.len() > MAX_VALUE_LEN {
            return Err(Error::TooLarge(ep.id, value.len()));
        }
        let key = view::ep_key(&ep.network, &ep.id);
        self.write_local(|s| {
            let changed = s.get(&key) != Some(value.as_str());
            s.set(&key, &value);
            changed
        })
        .await;
        Ok(())
    }

    /// Withdraws an endpoint of this node (a tombstone that reaches everyone). Returns whether
    /// it was published.
    pub async fn withdraw_endpoint(&self, network: &str, id: &str) -> Result<bool> {
        validate_id("network id", network)?;
        validate_id("endpoint id", id)?;
        let key = view::ep_key(network, id);
        Ok(self
            .write_local(|s| {
                let present = s.get(&key).is_some();
                if present {
                    s.delete(&key);
                }
                present
            })
            .await)
    }

    /// The visible endpoints of a network (this node's included), with their owners.
    pub fn endpoints(&self, network: &str) -> Vec<Entry> {
        self.inner.view().endpoints(network)
    }

    /// The VTEP of every visible (alive) node, this one included.
    pub fn vteps(&self) -> BTreeMap<String, IpAddr> {
        self.inner.view().vteps()
    }

    /// Every known node (newest generation each), alive or not, this one included.
    pub fn members(&self) -> Vec<Member> {
        self.inner.view().members()
    }

    /// Subscribes to a network's endpoint table (see [`Subscription`]).
    pub fn subscribe(&self, network: &str) -> Subscription {
        let (rx, snapshot) = self
            .inner
            .view
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .subscribe(network);
        Subscription {
            network: network.to_string(),
            rx,
            pending: Some(snapshot),
            view: self.inner.view.clone(),
        }
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
        s
    }

    /// Entries received that did not parse (from a peer of another version).
    pub fn bad_entries(&self) -> usize {
        self.inner.view().bad_entries
    }

    /// Leaves gracefully: peers withdraw this node's entries at once instead of after failure
    /// detection. Then stops.
    pub async fn shutdown(self) -> Result<()> {
        {
            let mut cc = self.inner.chitchat.lock().await;
            cc.self_node_state().set(view::KEY_LEFT, "1");
        }
        // Tell a few peers now; they pass it on.
        let peers = self.inner.view().live_peer_addrs(&self.inner.node_id);
        if let Some(h) = self.inner.handle().as_ref() {
            for addr in peers.iter().take(self.inner.timings.push_fanout.max(3)) {
                let _ = h.gossip(*addr);
            }
        }
        tokio::time::sleep(Duration::from_millis(100).min(self.inner.timings.gossip_interval))
            .await;
        let handle = self.inner.handle().take();
        self.inner.stop_tasks();
        if let Some(h) = handle {
            h.shutdown()
                .await
                .map_err(|e| Error::Start(format!("chitchat did not stop cleanly: {e:#}")))?;
        }
        Ok(())
    }
}

impl Inner {
    fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(&self) -> std::sync::MutexGuard<'_, Option<ChitchatHandle>> {
        self.handle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the view up to date with chitchat's state and queues what is new for pushing.
    fn reconcile(&self, cc: &Chitchat) {
        let out = {
            let mut view = self.view.write().unwrap_or_else(|e| e.into_inner());
            let out = view.reconcile(cc);
            if out.changed {
                self.changed.send_replace(view.generation);
            }
            out
        };
        if !out.news.is_empty() && self.news.try_send(out.news).is_err() {
            // Backpressure: the push queue is full; a plain gossip round carries it instead.
            self.push.notify_one();
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
        self.view.write().unwrap_or_else(|e| e.into_inner()).close();
    }

    fn gossip_with(&self, addr: SocketAddr) {
        if let Some(h) = self.handle().as_ref() {
            let _ = h.gossip(addr);
        }
    }
}

impl Drop for Gossip {
    fn drop(&mut self) {
        self.inner.stop_tasks();
        if let Some(h) = self.inner.handle().take() {
            h.abort();
        }
    }
}

/// Keeps the view current: after every message that carried a delta, every local change,
/// every liveness change, and at least once per gossip interval. Also contacts seeds.
async fn reconcile_loop(inner: Arc<Inner>) {
    let mut live = inner.chitchat.lock().await.live_nodes_watcher();
    let mut tick = tokio::time::interval(inner.timings.gossip_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_contact: HashMap<SocketAddr, Instant> = HashMap::new();
    loop {
        let ticked = tokio::select! {
            _ = inner.shared.data_arrived.notified() => false,
            _ = inner.wake.notified() => true,
            r = live.changed() => {
                if r.is_err() {
                    return;
                }
                false
            }
            _ = tick.tick() => true,
        };
        {
            let cc = inner.chitchat.lock().await;
            inner.reconcile(&cc);
        }
        if ticked {
            contact_seeds(&inner, &mut last_contact);
        }
    }
}

/// Contacts the seeds that are not live members (at most once per rejoin interval each): a
/// node that lost everyone, or a cluster whose managers all restarted, finds its way back.
fn contact_seeds(inner: &Inner, last_contact: &mut HashMap<SocketAddr, Instant>) {
    let seeds = inner
        .seeds
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let live: Vec<SocketAddr> = inner
        .view()
        .members()
        .into_iter()
        .filter(|m| m.alive)
        .map(|m| m.addr)
        .collect();
    let now = Instant::now();
    last_contact.retain(|a, _| seeds.contains(a));
    for seed in seeds {
        if seed == inner.me.gossip_advertise_addr || live.contains(&seed) {
            continue;
        }
        if last_contact
            .get(&seed)
            .is_some_and(|t| now.duration_since(*t) < inner.timings.rejoin_interval)
        {
            continue;
        }
        last_contact.insert(seed, now);
        debug!(%seed, "contacting seed");
        inner.gossip_with(seed);
    }
}

/// Eager push: news (a node's state moved forward) goes at once, as a chitchat delta holding
/// just the new keys, to `push_fanout` random live peers; a peer that applies it pushes it on
/// (once per change). Peers that were not up to date ignore it and catch up by anti-entropy.
/// News arriving while a push is under way is coalesced into the next one, at most one push
/// per cooldown. When news cannot be sent as a delta (too large, queue full), a gossip round
/// with `push_fanout` peers is started instead.
async fn push_loop(inner: Arc<Inner>, mut news_rx: mpsc::Receiver<Vec<News>>) {
    let mut rng = XorShift::new();
    loop {
        let mut batch = tokio::select! {
            n = news_rx.recv() => match n {
                Some(n) => n,
                None => return,
            },
            _ = inner.push.notified() => Vec::new(),
        };
        while let Ok(more) = news_rx.try_recv() {
            batch.extend(more);
        }
        let mut peers = inner.view().live_peer_addrs(&inner.node_id);
        let n = inner.timings.push_fanout.min(peers.len());
        for i in 0..n {
            let j = i + (rng.next() as usize) % (peers.len() - i);
            peers.swap(i, j);
        }
        peers.truncate(n);
        if peers.is_empty() {
            tokio::time::sleep(inner.timings.push_cooldown).await;
            continue;
        }
        if batch.is_empty() {
            for p in &peers {
                inner.gossip_with(*p);
            }
        } else {
            for msg in encode_news(batch) {
                for p in &peers {
                    transport::send_sealed(&inner.socket, &inner.sealer, &inner.shared, *p, &msg)
                        .await;
                }
            }
        }
        inner
            .shared
            .counters
            .eager_pushes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(inner.timings.push_cooldown).await;
    }
}

/// Merges news per node incarnation (contiguous version ranges, newest value per key) and
/// encodes it as chitchat `Ack` messages of at most a few KiB each.
fn encode_news(mut batch: Vec<News>) -> Vec<Vec<u8>> {
    batch.sort_by(|a, b| {
        (&a.node_id, a.generation, a.from).cmp(&(&b.node_id, b.generation, b.from))
    });
    let mut merged: Vec<News> = Vec::new();
    for n in batch {
        match merged.last_mut() {
            Some(m) if m.node_id == n.node_id && m.generation == n.generation => {
                if n.from <= m.max && n.max > m.max {
                    m.kvs.extend(n.kvs);
                    m.max = n.max;
                    m.last_gc = m.last_gc.max(n.last_gc);
                }
                // A gap: keep the first range only; anti-entropy brings the rest.
            }
            _ => merged.push(n),
        }
    }
    let mut out = Vec::new();
    let mut group: Vec<validate::encode::NodeDelta<'_>> = Vec::new();
    let mut size = 0;
    for m in &mut merged {
        // Newest value per key, in version order.
        let mut latest: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, kv) in m.kvs.iter().enumerate() {
            let e = latest.entry(kv.0.as_str()).or_insert(i);
            if m.kvs[*e].2 < kv.2 {
                *e = i;
            }
        }
        let mut idx: Vec<usize> = latest.into_values().collect();
        idx.sort_by_key(|&i| m.kvs[i].2);
        let m: &News = m;
        let kvs: Vec<validate::encode::Kv<'_>> = idx
            .into_iter()
            .map(|i| {
                let kv = &m.kvs[i];
                (kv.0.as_str(), kv.1.as_str(), kv.2, kv.3)
            })
            .collect();
        let bytes: usize = kvs.iter().map(|kv| kv.0.len() + kv.1.len() + 16).sum();
        let last = kvs.last().map(|kv| kv.2).unwrap_or(0);
        if size + bytes > 4096 && !group.is_empty() {
            out.push(validate::encode::ack(&group));
            group.clear();
            size = 0;
        }
        size += bytes;
        group.push(validate::encode::NodeDelta {
            node_id: &m.node_id,
            generation: m.generation,
            addr: m.addr,
            last_gc_version: m.last_gc,
            from_version_excluded: m.from,
            kvs,
            // Deletes of keys written and removed within the range leave no trace but the
            // version: carry the node's max version explicitly when it is past the last key.
            set_max_version: (m.max > last).then_some(m.max),
        });
    }
    if !group.is_empty() {
        out.push(validate::encode::ack(&group));
    }
    out
}

struct XorShift(u64);

impl XorShift {
    fn new() -> XorShift {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        XorShift(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
