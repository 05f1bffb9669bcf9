//! Upstream sockets made in the node's network namespace.
//!
//! A socket belongs to the namespace of the thread that created it, whatever thread uses it
//! later. Forwarded queries must leave from the node's namespace (an overlay subnet in a task
//! namespace must never shadow an upstream's address, moby#27399), while listeners live in task
//! namespaces and the runtime's threads wherever the agent runs. So one dedicated thread enters
//! the node's namespace once and makes every upstream socket; UDP sockets are made in batches
//! (each used for one query, for a fresh source port) to keep that round trip off most queries.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::sync::mpsc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::oneshot;

use crate::Error;

/// UDP sockets made per round trip to the namespace thread.
const UDP_BATCH: usize = 32;

type Job = Box<dyn FnOnce() + Send>;

/// Makes sockets in one network namespace (or in the caller's, without a namespace).
pub(crate) struct SocketFactory {
    jobs: Option<Mutex<mpsc::Sender<Job>>>,
    /// Ready UDP sockets (v4, v6), each used once.
    udp_pool: Mutex<(Vec<UdpSocket>, Vec<UdpSocket>)>,
}

fn unspecified(v6: bool) -> SocketAddr {
    if v6 {
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
    }
}

fn new_udp(v6: bool) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(unspecified(v6))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

fn new_tcp(v6: bool) -> io::Result<Socket> {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

impl SocketFactory {
    /// A factory making sockets inside `ns`, or in the calling thread's namespace if None.
    pub(crate) fn new(ns: Option<&netns::NetNs>) -> Result<SocketFactory, Error> {
        let jobs = match ns {
            None => None,
            Some(ns) => Some(Mutex::new(spawn_thread(ns)?)),
        };
        Ok(SocketFactory {
            jobs,
            udp_pool: Mutex::new((Vec::new(), Vec::new())),
        })
    }

    /// Runs `f` in the namespace (on its thread) and returns its result.
    async fn make<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        let Some(jobs) = &self.jobs else {
            return f();
        };
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        jobs.lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| io::Error::other("the upstream namespace thread has stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("the upstream namespace thread has stopped"))?
    }

    /// A fresh UDP socket bound to an ephemeral port, nonblocking.
    pub(crate) async fn udp(&self, v6: bool) -> io::Result<UdpSocket> {
        if self.jobs.is_none() {
            return new_udp(v6);
        }
        if let Some(s) = self.take_pooled(v6) {
            return Ok(s);
        }
        let mut batch = self
            .make(move || {
                (0..UDP_BATCH)
                    .map(|_| new_udp(v6))
                    .collect::<io::Result<Vec<_>>>()
            })
            .await?;
        let first = batch
            .pop()
            .ok_or_else(|| io::Error::other("no socket made"))?;
        let mut pool = self.udp_pool.lock().unwrap_or_else(|e| e.into_inner());
        let list = if v6 { &mut pool.1 } else { &mut pool.0 };
        if list.len() < UDP_BATCH {
            list.append(&mut batch);
        }
        Ok(first)
    }

    fn take_pooled(&self, v6: bool) -> Option<UdpSocket> {
        let mut pool = self.udp_pool.lock().unwrap_or_else(|e| e.into_inner());
        if v6 { pool.1.pop() } else { pool.0.pop() }
    }

    /// A fresh unconnected TCP socket, nonblocking.
    pub(crate) async fn tcp(&self, v6: bool) -> io::Result<Socket> {
        self.make(move || new_tcp(v6)).await
    }
}

/// Starts the thread that lives in `ns` and runs jobs until the factory drops.
fn spawn_thread(ns: &netns::NetNs) -> Result<mpsc::Sender<Job>, Error> {
    let fd = ns.file().try_clone().map_err(|source| Error::Namespace {
        name: ns.name().to_string(),
        source,
    })?;
    let name = ns.name().to_string();
    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
    std::thread::Builder::new()
        .name("dns-upstream-ns".into())
        .spawn(move || {
            let entered = nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from);
            let ok = entered.is_ok();
            let _ = ready_tx.send(entered);
            if !ok {
                return;
            }
            while let Ok(job) = rx.recv() {
                job();
            }
        })
        .map_err(|source| Error::Namespace {
            name: name.clone(),
            source,
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(tx),
        Ok(Err(source)) => Err(Error::Namespace { name, source }),
        Err(_) => Err(Error::Namespace {
            name,
            source: io::Error::other("the namespace thread ended before entering it"),
        }),
    }
}
