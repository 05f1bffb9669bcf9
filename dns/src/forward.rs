//! Forwarding: what the records do not answer goes to the node's upstreams, in order, each with
//! its own timeout; a timeout, an error, SERVFAIL or REFUSED moves on to the next; SERVFAIL when
//! none answers. Sockets come from the node's namespace ([`SocketFactory`]). A cap bounds the
//! forwards in flight (Docker: 1024); beyond it queries get REFUSED.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hickory_proto::op::{Header, MessageType, Query, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::handler::{self, Proto, Request};
use crate::sockets::SocketFactory;
use crate::stats::Counters;

/// Largest UDP answer taken from an upstream.
const MAX_UDP_ANSWER: usize = 65535;
/// Idle connected UDP sockets kept per upstream.
const MAX_IDLE_PER_UPSTREAM: usize = 64;
/// Queries one UDP socket carries (one at a time) before it is closed, so source ports keep
/// changing as a resolver's should.
const MAX_USES: u32 = 64;

pub(crate) struct Forwarder {
    upstreams: RwLock<Arc<[SocketAddr]>>,
    timeout: Duration,
    permits: Arc<Semaphore>,
    sockets: SocketFactory,
    idle: Mutex<HashMap<SocketAddr, Vec<Pooled>>>,
}

/// A UDP socket connected to one upstream, with no query in flight.
struct Pooled {
    sock: tokio::net::UdpSocket,
    uses: u32,
}

/// Why one upstream gave no usable answer.
pub(crate) enum Failure {
    Timeout,
    Failed,
}

impl Forwarder {
    pub(crate) fn new(
        upstreams: Vec<SocketAddr>,
        timeout: Duration,
        max_in_flight: usize,
        sockets: SocketFactory,
    ) -> Forwarder {
        Forwarder {
            upstreams: RwLock::new(upstreams.into()),
            timeout,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            sockets,
            idle: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn upstreams(&self) -> Arc<[SocketAddr]> {
        self.upstreams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        *self.upstreams.write().unwrap_or_else(|e| e.into_inner()) = upstreams.into();
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// A slot for one forward, or None when the cap is reached.
    pub(crate) fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Forwards `raw` (the client's query, parsed as `req`) and returns the bytes to send back:
    /// the first usable upstream answer (made to fit a UDP client) or SERVFAIL.
    pub(crate) async fn forward(
        &self,
        raw: &[u8],
        req: &Request,
        proto: Proto,
        counters: &Counters,
    ) -> Vec<u8> {
        counters.forwarded.fetch_add(1, Relaxed);
        let upstreams = self.upstreams();
        // A fresh random id per forward: the client's id may be predictable.
        let id: u16 = rand::random();
        let mut query = raw.to_vec();
        query[..2].copy_from_slice(&id.to_be_bytes());
        for &up in upstreams.iter() {
            let got = tokio::time::timeout(self.timeout, self.exchange(up, &query, proto)).await;
            let answer = match got {
                Err(_) => Err(Failure::Timeout),
                Ok(Err(e)) => {
                    tracing::debug!(upstream = %up, error = %e, "upstream exchange failed");
                    Err(Failure::Failed)
                }
                Ok(Ok(bytes)) => check_answer(bytes, id, &req.query),
            };
            match answer {
                Ok(mut bytes) => {
                    if rcode(&bytes) == Some(ResponseCode::NXDomain) {
                        counters.nxdomain.fetch_add(1, Relaxed);
                    }
                    bytes[..2].copy_from_slice(&req.metadata.id.to_be_bytes());
                    let bytes = match proto {
                        Proto::Tcp => Some(bytes),
                        Proto::Udp => handler::fit_answer(bytes, req.max_size(proto), counters),
                    };
                    if let Some(bytes) = bytes {
                        counters.forward_answered.fetch_add(1, Relaxed);
                        return bytes;
                    }
                    counters.upstream_failures.fetch_add(1, Relaxed);
                }
                Err(Failure::Timeout) => {
                    tracing::debug!(upstream = %up, "upstream timed out");
                    counters.upstream_timeouts.fetch_add(1, Relaxed);
                }
                Err(Failure::Failed) => {
                    counters.upstream_failures.fetch_add(1, Relaxed);
                }
            }
        }
        counters.servfail.fetch_add(1, Relaxed);
        handler::error_reply(req, ResponseCode::ServFail, proto, counters)
    }

    async fn exchange(&self, up: SocketAddr, query: &[u8], proto: Proto) -> io::Result<Vec<u8>> {
        match proto {
            Proto::Udp => self.exchange_udp(up, query).await,
            Proto::Tcp => self.exchange_tcp(up, query).await,
        }
    }

    /// One query over UDP on a connected socket: a pooled one if idle, else a fresh one from
    /// the node's namespace. A socket goes back to the pool only after a clean exchange (one
    /// that timed out or failed is dropped with its future).
    async fn exchange_udp(&self, up: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
        let mut conn = match self.take_idle(up) {
            Some(c) => c,
            None => {
                let sock = tokio::net::UdpSocket::from_std(self.sockets.udp(up.is_ipv6()).await?)?;
                sock.connect(up).await?;
                Pooled { sock, uses: 0 }
            }
        };
        conn.uses += 1;
        conn.sock.send(query).await?;
        // Capacity, not zeroed memory: up to 64 KiB may come back.
        let mut buf = Vec::with_capacity(MAX_UDP_ANSWER);
        loop {
            buf.clear();
            let n = conn.sock.recv_buf(&mut buf).await?;
            // Only an answer with our id ends the wait; anything else (late or forged) is skipped.
            if n >= 2 && buf[..2] == query[..2] {
                let answer = buf[..n].to_vec();
                self.put_idle(up, conn);
                return Ok(answer);
            }
        }
    }

    fn take_idle(&self, up: SocketAddr) -> Option<Pooled> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_mut(&up)?.pop()
    }

    fn put_idle(&self, up: SocketAddr, conn: Pooled) {
        if conn.uses >= MAX_USES {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(up).or_default();
        if list.len() < MAX_IDLE_PER_UPSTREAM {
            list.push(conn);
        }
    }

    async fn exchange_tcp(&self, up: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
        let sock = self.sockets.tcp(up.is_ipv6()).await?;
        let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
        let mut stream = sock.connect(up).await?;
        let len = u16::try_from(query.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
        let mut msg = Vec::with_capacity(query.len() + 2);
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(query);
        stream.write_all(&msg).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await?;
        Ok(buf)
    }
}

pub(crate) fn rcode(bytes: &[u8]) -> Option<ResponseCode> {
    let mut dec = BinDecoder::new(bytes);
    Header::read(&mut dec).ok().map(|h| h.response_code)
}

/// Accepts an upstream answer only if it is a response to our query (same id, same question)
/// and not SERVFAIL/REFUSED (those move on to the next upstream, as Docker does).
pub(crate) fn check_answer(bytes: Vec<u8>, id: u16, query: &Query) -> Result<Vec<u8>, Failure> {
    let mut dec = BinDecoder::new(&bytes);
    let header = Header::read(&mut dec).map_err(|_| Failure::Failed)?;
    if header.id != id || header.message_type != MessageType::Response {
        return Err(Failure::Failed);
    }
    if matches!(
        header.response_code,
        ResponseCode::ServFail | ResponseCode::Refused
    ) {
        return Err(Failure::Failed);
    }
    if header.counts.queries != 1 {
        return Err(Failure::Failed);
    }
    let q = Query::read(&mut dec).map_err(|_| Failure::Failed)?;
    let same = q.query_type() == query.query_type()
        && q.query_class() == query.query_class()
        && q.name().eq_ignore_root(query.name());
    if same {
        Ok(bytes)
    } else {
        Err(Failure::Failed)
    }
}
