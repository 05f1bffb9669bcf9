//! The envelope around the socket: every message is sealed by [`crate::wire`] on the way out,
//! and on the way in must open (key, tag, replay window, fragments) and decode
//! ([`crate::codec::decode`]) before the state machine sees it. Each failure is counted.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::codec::{self, Decoded};
use crate::stream::Frame;
use crate::wire::{self, CompiledKeys, Opened, Reassembler, Reject, ReplayGuard, Sealer};
use crate::{Stats, Timings};

/// Counters shared by the transport and the API.
#[derive(Default)]
pub(crate) struct Counters {
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub datagrams_sent: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub dropped_unknown_key: AtomicU64,
    pub dropped_bad_auth: AtomicU64,
    pub dropped_replay: AtomicU64,
    pub dropped_malformed: AtomicU64,
    pub dropped_incomplete: AtomicU64,
    pub send_errors: AtomicU64,
    pub eager_pushes: AtomicU64,
    pub streams_sent: AtomicU64,
    pub streams_received: AtomicU64,
    pub stream_fallbacks: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            messages_sent: g(&self.messages_sent),
            messages_received: g(&self.messages_received),
            datagrams_sent: g(&self.datagrams_sent),
            datagrams_received: g(&self.datagrams_received),
            bytes_sent: g(&self.bytes_sent),
            bytes_received: g(&self.bytes_received),
            dropped_unknown_key: g(&self.dropped_unknown_key),
            dropped_bad_auth: g(&self.dropped_bad_auth),
            dropped_replay: g(&self.dropped_replay),
            dropped_malformed: g(&self.dropped_malformed),
            dropped_incomplete: g(&self.dropped_incomplete),
            send_errors: g(&self.send_errors),
            eager_pushes: g(&self.eager_pushes),
            streams_sent: g(&self.streams_sent),
            streams_received: g(&self.streams_received),
            stream_fallbacks: g(&self.stream_fallbacks),
            ..Stats::default()
        }
    }
}

/// What the transport shares with the rest of the crate.
pub(crate) struct Shared {
    pub keys: RwLock<Arc<CompiledKeys>>,
    pub counters: Counters,
    /// This node's gossip port (TCP and UDP), named in the streams it opens.
    pub port: u16,
    /// Outbound streams in flight ([`crate::stream`]).
    pub outbound: Arc<tokio::sync::Semaphore>,
    /// Where the gossip sockets live: outbound streams are opened there.
    pub netns: netns::NetNs,
}

impl Shared {
    pub fn keys(&self) -> Arc<CompiledKeys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Seals and sends one encoded message: as datagrams, or when it needs more than
/// [`crate::stream::MIN_FRAGMENTS`] of them, as a stream ([`crate::stream`]). Failures are
/// counted, never fatal.
pub(crate) async fn send_sealed(
    socket: &Arc<tokio::net::UdpSocket>,
    sealer: &Sealer,
    shared: &Arc<Shared>,
    to: SocketAddr,
    bytes: &[u8],
) {
    let keys = shared.keys();
    let c = &shared.counters;
    let datagrams = match sealer.seal(&keys, bytes) {
        Ok(d) => d,
        Err(e) => {
            add(&c.send_errors, 1);
            warn!(%to, error = %e, "gossip message not sent");
            return;
        }
    };
    add(&c.messages_sent, 1);
    if datagrams.len() > crate::stream::MIN_FRAGMENTS {
        crate::stream::send(to, datagrams, socket, shared).await;
    } else {
        send_datagrams(socket, shared, to, &datagrams).await;
    }
}

/// Sends sealed datagrams as they are.
pub(crate) async fn send_datagrams(
    socket: &tokio::net::UdpSocket,
    shared: &Shared,
    to: SocketAddr,
    datagrams: &[Vec<u8>],
) {
    let c = &shared.counters;
    for d in datagrams {
        match socket.send_to(d, to).await {
            Ok(n) => {
                add(&c.datagrams_sent, 1);
                add(&c.bytes_sent, n as u64);
            }
            Err(e) => {
                add(&c.send_errors, 1);
                debug!(%to, error = %e, "gossip send failed");
                break;
            }
        }
    }
}

/// Receives datagrams and stream frames, and turns them into decoded messages (or counted
/// drops). The one decoding path of the node; [`crate::fuzz`] drives the same steps.
pub(crate) struct Receiver {
    socket: Arc<tokio::net::UdpSocket>,
    frames: mpsc::Receiver<Frame>,
    frames_open: bool,
    shared: Arc<Shared>,
    sealer: Arc<Sealer>,
    guard: ReplayGuard,
    reassembler: Reassembler,
    buf: Box<[u8]>,
}

enum Got {
    Datagram(io::Result<(usize, SocketAddr)>),
    Frame(Option<Frame>),
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::OutOfMemory
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    ) || e.raw_os_error() == Some(105) // ENOBUFS
}

impl Receiver {
    pub fn new(
        socket: Arc<tokio::net::UdpSocket>,
        frames: mpsc::Receiver<Frame>,
        shared: Arc<Shared>,
        sealer: Arc<Sealer>,
        timings: &Timings,
    ) -> Receiver {
        Receiver {
            socket,
            frames,
            frames_open: true,
            shared,
            sealer,
            guard: ReplayGuard::new(timings.replay_max_age, 4096),
            reassembler: Reassembler::new(64, timings.reassembly_timeout),
            buf: vec![0u8; 65_536].into_boxed_slice(),
        }
    }

    fn count_reject(&self, r: Reject, from: SocketAddr) {
        let c = &self.shared.counters;
        let counter = match r {
            Reject::Malformed => &c.dropped_malformed,
            Reject::UnknownKey => &c.dropped_unknown_key,
            Reject::BadAuth => &c.dropped_bad_auth,
            Reject::Replay => &c.dropped_replay,
        };
        add(counter, 1);
        debug!(%from, reason = ?r, "gossip datagram dropped");
    }

    /// Turns one datagram (or a frame of a stream) into a message, or nothing.
    fn accept(&mut self, datagram: &[u8], from: SocketAddr) -> Option<Decoded> {
        let keys = self.shared.keys();
        let bytes = match wire::open(&keys, &mut self.guard, datagram, self.sealer.sender()) {
            Ok(Opened::Message(m)) => m,
            Ok(Opened::Fragment {
                sender,
                msg_id,
                index,
                count,
                chunk,
            }) => {
                let (res, given_up) = self.reassembler.add(sender, msg_id, index, count, chunk);
                add(&self.shared.counters.dropped_incomplete, given_up);
                match res {
                    Ok(Some(m)) => m,
                    Ok(None) => return None,
                    Err(r) => {
                        self.count_reject(r, from);
                        return None;
                    }
                }
            }
            Err(r) => {
                self.count_reject(r, from);
                return None;
            }
        };
        match codec::decode(&bytes) {
            Ok(d) => {
                add(&self.shared.counters.messages_received, 1);
                Some(d)
            }
            Err(e) => {
                debug!(%from, error = %e, "gossip message dropped");
                self.count_reject(Reject::Malformed, from);
                None
            }
        }
    }

    /// The next message that opens and decodes; `Err` only if the socket failed for good.
    pub async fn recv(&mut self) -> io::Result<Decoded> {
        loop {
            // Two cancel-safe receives: dropping this future loses nothing.
            let frames_open = self.frames_open;
            let got = tokio::select! {
                r = self.socket.recv_from(&mut self.buf) => Got::Datagram(r),
                f = self.frames.recv(), if frames_open => Got::Frame(f),
            };
            match got {
                Got::Frame(Some((from, frame))) => {
                    if let Some(msg) = self.accept(&frame, from) {
                        return Ok(msg);
                    }
                }
                // The stream listener stopped (shutting down): datagrams only.
                Got::Frame(None) => self.frames_open = false,
                Got::Datagram(Ok((n, from))) => {
                    add(&self.shared.counters.datagrams_received, 1);
                    add(&self.shared.counters.bytes_received, n as u64);
                    let buf = std::mem::take(&mut self.buf);
                    let msg = self.accept(&buf[..n], from);
                    self.buf = buf;
                    if let Some(msg) = msg {
                        return Ok(msg);
                    }
                }
                Got::Datagram(Err(e)) if transient(&e) => {}
                Got::Datagram(Err(e)) => return Err(e),
            }
        }
    }
}
