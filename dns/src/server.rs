//! Listeners: already-bound UDP and TCP sockets (127.0.0.11:53 inside a task namespace) served
//! on the current tokio runtime, each with its own scope (the task's networks).
//!
//! UDP: one loop per socket answers local names inline and spawns forwards. TCP: a bounded
//! number of connections, each closed after an idle period or an incomplete message. A listener
//! ends when its [`Listener`] handle is dropped or stopped.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::Resolver;
use crate::handler::{self, Outcome, Proto, Request};
use crate::resolv_conf::EMBEDDED_ADDR;

/// Bytes read of a UDP query. Real queries are far smaller (one question, EDNS options); a
/// longer datagram is cut here by the kernel and then fails to parse (FORMERR), and each
/// listener keeps only this much buffer (a node may serve thousands of task namespaces).
const MAX_UDP_QUERY: usize = 4096;

/// The networks (ids, in attachment order) a listener's clients see.
pub(crate) type Scope = RwLock<Arc<[Box<str>]>>;

fn scope_of(scope: Vec<String>) -> Arc<[Box<str>]> {
    scope.into_iter().map(String::into_boxed_str).collect()
}

/// A served pair of sockets. Dropping it (or [`Listener::stop`]) ends the service; the sockets
/// close with it (duplicates held elsewhere stay open).
pub struct Listener {
    scope: Arc<Scope>,
    udp_addr: Option<SocketAddr>,
    tcp_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Listener {
    /// Replaces the networks this listener's clients see (ids, in attachment order). Queries
    /// received afterwards use it.
    pub fn set_scope(&self, scope: Vec<String>) {
        *self.scope.write().unwrap_or_else(|e| e.into_inner()) = scope_of(scope);
    }

    /// The networks this listener's clients see.
    pub fn scope(&self) -> Vec<String> {
        let s = self.scope.read().unwrap_or_else(|e| e.into_inner()).clone();
        s.iter().map(|n| n.to_string()).collect()
    }

    /// The UDP and TCP addresses served.
    pub fn local_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (self.udp_addr, self.tcp_addr)
    }

    /// Stops serving (same as dropping the handle).
    pub fn stop(self) {}
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds UDP and TCP 127.0.0.11:53 inside `ns` (its `lo` must be up). The sockets stay in that
/// namespace whatever thread serves them.
pub fn bind_in(ns: &netns::NetNs) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let addr = SocketAddr::from((EMBEDDED_ADDR, 53));
    let name = ns.name().to_string();
    let ctx = move |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("bind {what} {addr} in network namespace {name}: {e} (is lo up there?)"),
        )
    };
    ns.run(|| {
        let udp = std::net::UdpSocket::bind(addr).map_err(|e| ctx("UDP", e))?;
        let tcp = std::net::TcpListener::bind(addr).map_err(|e| ctx("TCP", e))?;
        Ok((udp, tcp))
    })
    .map_err(|e| io::Error::other(e.to_string()))?
}

impl Resolver {
    /// Serves two already-bound sockets (they may hold queued queries) on the current tokio
    /// runtime for clients that see the networks `scope` (ids, in attachment order).
    ///
    /// Fails if called outside a tokio runtime or if a socket cannot be registered with it.
    /// Serve every listener of one resolver on the same runtime: idle upstream sockets are
    /// pooled and registered with the runtime that first used them.
    pub fn serve(
        self: &Arc<Self>,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        scope: Vec<String>,
    ) -> io::Result<Listener> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("dns: serve needs a tokio runtime: {e}")))?;
        let _guard = rt.enter();
        udp.set_nonblocking(true)?;
        tcp.set_nonblocking(true)?;
        let udp_addr = udp.local_addr().ok();
        let tcp_addr = tcp.local_addr().ok();
        let udp = Arc::new(UdpSocket::from_std(udp)?);
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        let scope = Arc::new(RwLock::new(scope_of(scope)));
        let tasks = vec![
            rt.spawn(serve_udp(self.clone(), udp, scope.clone())),
            rt.spawn(serve_tcp(self.clone(), tcp, scope.clone())),
        ];
        Ok(Listener {
            scope,
            udp_addr,
            tcp_addr,
            tasks,
        })
    }
}

fn current(scope: &Scope) -> Arc<[Box<str>]> {
    scope.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Waits a little after a socket error, longer when errors repeat, so a failing socket never
/// spins a core; the loop itself never gives up.
async fn backoff(errors: &mut u32, what: &str, e: &io::Error) {
    *errors = errors.saturating_add(1);
    if *errors == 1 || (*errors).is_power_of_two() {
        tracing::warn!(error = %e, count = *errors, "dns listener: {what} failed");
    }
    let ms = 1u64 << (*errors).min(7);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

async fn serve_udp(res: Arc<Resolver>, sock: Arc<UdpSocket>, scope: Arc<Scope>) {
    let mut buf = vec![0u8; MAX_UDP_QUERY];
    let mut forwards = JoinSet::new();
    let mut errors = 0u32;
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                backoff(&mut errors, "UDP receive", &e).await;
                continue;
            }
        };
        errors = 0;
        while forwards.try_join_next().is_some() {}
        res.counters.queries_udp.fetch_add(1, Relaxed);
        let msg = &buf[..n];
        let scope_now = current(&scope);
        match handler::handle(msg, Proto::Udp, &scope_now, &res.records, &res.counters) {
            Outcome::Drop => {}
            Outcome::Reply(bytes) => send_udp(&res, &sock, &bytes, src).await,
            Outcome::Forward(req) => {
                let Some(permit) = res.forwarder.try_permit() else {
                    refuse(&res, &sock, &req, src).await;
                    continue;
                };
                let (res, sock, raw) = (res.clone(), sock.clone(), msg.to_vec());
                forwards.spawn(async move {
                    let bytes = res
                        .forwarder
                        .forward(&raw, &req, Proto::Udp, &res.counters)
                        .await;
                    send_udp(&res, &sock, &bytes, src).await;
                    drop(permit);
                });
            }
        }
    }
}

async fn refuse(res: &Resolver, sock: &UdpSocket, req: &Request, src: SocketAddr) {
    res.counters.refused_cap.fetch_add(1, Relaxed);
    let bytes = handler::error_reply(req, ResponseCode::Refused, Proto::Udp, &res.counters);
    send_udp(res, sock, &bytes, src).await;
}

async fn send_udp(res: &Resolver, sock: &UdpSocket, bytes: &[u8], dst: SocketAddr) {
    // Port 0 or an unspecified source cannot be answered (and may be a reflection attempt).
    if dst.port() == 0 || dst.ip().is_unspecified() {
        return;
    }
    if let Err(e) = sock.send_to(bytes, dst).await {
        tracing::debug!(error = %e, %dst, "dns: could not send a UDP answer");
        res.counters.send_errors.fetch_add(1, Relaxed);
    }
}

async fn serve_tcp(res: Arc<Resolver>, listener: tokio::net::TcpListener, scope: Arc<Scope>) {
    let slots = Arc::new(Semaphore::new(res.config.max_tcp_connections));
    let mut conns = JoinSet::new();
    let mut errors = 0u32;
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(got) => got,
            Err(e) => {
                // EMFILE and the like: wait, then keep accepting.
                backoff(&mut errors, "TCP accept", &e).await;
                continue;
            }
        };
        errors = 0;
        while conns.try_join_next().is_some() {}
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            res.counters.tcp_rejected.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        };
        res.counters.tcp_connections.fetch_add(1, Relaxed);
        conns.spawn(serve_conn(res.clone(), stream, scope.clone(), permit));
    }
}

/// Serves one TCP connection: length-prefixed queries answered in order until the client
/// closes, stays idle too long, or sends something that cannot be framed.
async fn serve_conn(
    res: Arc<Resolver>,
    mut stream: TcpStream,
    scope: Arc<Scope>,
    _permit: OwnedSemaphorePermit,
) {
    let idle = res.config.tcp_idle_timeout;
    let c = &res.counters;
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Err(_) => {
                c.tcp_timeouts.fetch_add(1, Relaxed);
                return;
            }
            Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
        let n = usize::from(u16::from_be_bytes(len));
        c.queries_tcp.fetch_add(1, Relaxed);
        if n == 0 {
            c.malformed.fetch_add(1, Relaxed);
            c.dropped_short.fetch_add(1, Relaxed);
            return;
        }
        let mut msg = vec![0u8; n];
        match tokio::time::timeout(idle, stream.read_exact(&mut msg)).await {
            Err(_) => {
                // A length announcing more than is ever sent: an incomplete (or junk) message.
                c.malformed.fetch_add(1, Relaxed);
                c.tcp_timeouts.fetch_add(1, Relaxed);
                return;
            }
            Ok(Err(_)) => {
                c.malformed.fetch_add(1, Relaxed);
                return;
            }
            Ok(Ok(_)) => {}
        }
        let scope_now = current(&scope);
        let reply = match handler::handle(&msg, Proto::Tcp, &scope_now, &res.records, c) {
            Outcome::Drop => continue,
            Outcome::Reply(bytes) => bytes,
            Outcome::Forward(req) => match res.forwarder.try_permit() {
                None => {
                    c.refused_cap.fetch_add(1, Relaxed);
                    handler::error_reply(&req, ResponseCode::Refused, Proto::Tcp, c)
                }
                Some(_permit) => res.forwarder.forward(&msg, &req, Proto::Tcp, c).await,
            },
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            continue;
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&reply);
        match tokio::time::timeout(idle, stream.write_all(&out)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                c.send_errors.fetch_add(1, Relaxed);
                return;
            }
            Err(_) => {
                c.send_errors.fetch_add(1, Relaxed);
                c.tcp_timeouts.fetch_add(1, Relaxed);
                return;
            }
        }
    }
}
