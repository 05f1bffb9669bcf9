//! The TCP half of 7946: a large message (more than [`MIN_FRAGMENTS`] datagrams: a first sync,
//! a burst of changes) goes to its peer over a short TCP connection instead of as UDP
//! fragments, so one lost fragment cannot lose it. The routine exchanges of a gossip round
//! (digests of a few datagrams) stay on UDP: a connection per round would cost more than the
//! rare loss it saves.
//!
//! The stream carries exactly what UDP would have: the message's sealed fragments, each opened
//! by the receiver through the same keys, replay window and reassembly. A connection is
//! `MAGIC`, the sender's gossip port (u16, big endian; replies go there, not to the
//! connection's ephemeral port), then up to [`wire::MAX_FRAGMENTS`] frames of a u16 length and
//! that many bytes, then end of stream. Anything else closes the connection and is counted as
//! malformed; the whole connection must arrive within the reassembly timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::transport::Shared;
use crate::wire;

/// Messages of up to this many datagrams go as datagrams.
pub const MIN_FRAGMENTS: usize = 4;
/// First bytes of every gossip stream.
pub const MAGIC: &[u8; 4] = b"NAG1";
/// Connections read at once; more wait in the kernel's accept queue.
const MAX_INBOUND: usize = 32;
/// Streams sent at once; past that a message goes as UDP fragments.
const MAX_OUTBOUND: usize = 16;
/// How long a connect may take before the message goes as UDP fragments.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A sealed frame received on a stream, with the address to answer.
pub(crate) type Frame = (SocketAddr, Vec<u8>);

/// Outbound streams in flight, shared by everything that sends.
pub(crate) fn outbound() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_OUTBOUND))
}

/// Sends `frames` (one message's sealed fragments) to `to` over TCP in the background; if the
/// stream cannot be written, or too many are in flight, the frames go as datagrams instead.
pub(crate) async fn send(
    to: SocketAddr,
    frames: Vec<Vec<u8>>,
    udp: &Arc<tokio::net::UdpSocket>,
    shared: &Arc<Shared>,
) {
    let Ok(permit) = shared.outbound.clone().try_acquire_owned() else {
        shared
            .counters
            .stream_fallbacks
            .fetch_add(1, Ordering::Relaxed);
        crate::transport::send_datagrams(udp, shared, to, &frames).await;
        return;
    };
    let (udp, shared) = (udp.clone(), shared.clone());
    tokio::spawn(async move {
        let _permit = permit;
        let port = shared.port;
        let written = async {
            let socket = socket_in(&shared.netns, to)?;
            write(socket, to, port, &frames).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT * 4, written).await {
            Ok(Ok(bytes)) => {
                let c = &shared.counters;
                c.streams_sent.fetch_add(1, Ordering::Relaxed);
                c.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
            }
            failed => {
                debug!(%to, ?failed, "gossip stream failed; sending datagrams");
                shared
                    .counters
                    .stream_fallbacks
                    .fetch_add(1, Ordering::Relaxed);
                crate::transport::send_datagrams(&udp, &shared, to, &frames).await;
            }
        }
    });
}

/// A TCP socket in the gossip sockets' namespace: the runtime's threads may be elsewhere (a
/// socket belongs to the namespace of the thread that creates it).
fn socket_in(ns: &netns::NetNs, to: SocketAddr) -> std::io::Result<TcpSocket> {
    let create = || {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(to),
            socket2::Type::STREAM.cloexec(),
            Some(socket2::Protocol::TCP),
        )?;
        s.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(std::net::TcpStream::from(s))
    };
    let here = netns::NetNs::current().and_then(|cur| Ok(cur.inode()? == ns.inode()?));
    let stream = if here.unwrap_or(false) {
        create()?
    } else {
        ns.run(create).map_err(std::io::Error::other)??
    };
    Ok(TcpSocket::from_std_stream(stream))
}

async fn write(
    socket: TcpSocket,
    to: SocketAddr,
    my_port: u16,
    frames: &[Vec<u8>],
) -> std::io::Result<u64> {
    let mut s = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(to))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    s.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(6 + frames.iter().map(|f| f.len() + 2).sum::<usize>());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&my_port.to_be_bytes());
    for f in frames {
        let len = u16::try_from(f.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(f);
    }
    s.write_all(&buf).await?;
    s.shutdown().await?;
    Ok(buf.len() as u64)
}

/// Accepts gossip streams and hands their frames to the gossip socket through `frames`
/// (bounded: a slow consumer slows the readers, nothing queues without limit).
pub(crate) fn listen(
    listener: TcpListener,
    frames: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
    timeout: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let readers = Arc::new(Semaphore::new(MAX_INBOUND));
        loop {
            let Ok(permit) = readers.clone().acquire_owned().await else {
                return;
            };
            let (stream, from) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "gossip accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (frames, shared) = (frames.clone(), shared.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let c = &shared.counters;
                match tokio::time::timeout(timeout, read(stream, from, &frames)).await {
                    Ok(Ok(bytes)) => {
                        c.streams_received.fetch_add(1, Ordering::Relaxed);
                        c.bytes_received.fetch_add(bytes, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        c.dropped_malformed.fetch_add(1, Ordering::Relaxed);
                        debug!(%from, error = %e, "gossip stream dropped");
                    }
                    Err(_) => {
                        c.dropped_incomplete.fetch_add(1, Ordering::Relaxed);
                        debug!(%from, "gossip stream too slow; dropped");
                    }
                }
            });
        }
    })
}

/// Reads one stream; returns its size, or why it was refused.
async fn read(
    mut s: TcpStream,
    from: SocketAddr,
    frames: &mpsc::Sender<Frame>,
) -> std::io::Result<u64> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let mut head = [0u8; 6];
    s.read_exact(&mut head).await?;
    if &head[..4] != MAGIC {
        return Err(bad("not a gossip stream"));
    }
    let port = u16::from_be_bytes([head[4], head[5]]);
    if port == 0 {
        return Err(bad("gossip port 0"));
    }
    let reply_to = SocketAddr::new(from.ip(), port);
    let mut total = head.len() as u64;
    for _ in 0..wire::MAX_FRAGMENTS {
        let mut len = [0u8; 2];
        match s.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(total),
            Err(e) => return Err(e),
        }
        let len = usize::from(u16::from_be_bytes(len));
        if len == 0 {
            return Err(bad("empty frame"));
        }
        let mut frame = vec![0u8; len];
        s.read_exact(&mut frame).await?;
        total += 2 + len as u64;
        if frames.send((reply_to, frame)).await.is_err() {
            return Ok(total);
        }
    }
    // No more than one message's fragments per stream.
    let mut extra = [0u8; 1];
    match s.read(&mut extra).await? {
        0 => Ok(total),
        _ => Err(bad("more frames than one message has")),
    }
}
