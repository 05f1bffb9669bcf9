//! Kernel notifications: a socket subscribed to multicast groups of one protocol inside one
//! namespace (`RTMGRP_IPV4_IFADDR`: IPv4 addresses added or removed), for a caller that only
//! needs to know that something in those groups changed, then reads what it needs itself.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};
use netns::NetNs;

use crate::{Error, RECV_BUF, Result, io_error, socket_in};

/// The multicast group bit of IPv4 address notifications (`RTMGRP_IPV4_IFADDR`).
pub const RTMGRP_IPV4_IFADDR: u32 = 0x10;

/// A socket subscribed to netlink multicast groups inside one namespace.
pub struct Events {
    sock: Socket,
    ns: String,
    buf: Vec<u8>,
}

impl Events {
    /// Subscribes to the groups `groups` (a bit mask such as [`RTMGRP_IPV4_IFADDR`]) of
    /// `protocol` inside `ns`.
    pub fn open(ns: &NetNs, protocol: isize, groups: u32) -> Result<Events> {
        let what = "subscribe to netlink notifications";
        let sock = socket_in(ns, protocol, what, |mut s| {
            s.bind(&SocketAddr::new(0, groups))?;
            s.set_non_blocking(true)?;
            Ok(s)
        })?;
        Ok(Events {
            sock,
            ns: ns.name().to_string(),
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Waits up to `timeout` for notifications and reads every one queued: `true` when there
    /// was at least one, or when the kernel dropped some because the socket's queue was full
    /// (something changed, what is unknown); `false` when the time passed quietly.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(self.err(e));
        }
        if n == 0 {
            return Ok(false);
        }
        let mut any = false;
        loop {
            self.buf.clear();
            self.buf.reserve(RECV_BUF);
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => any = true,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => any = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(any),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    fn err(&self, e: io::Error) -> Error {
        io_error("read netlink notifications", &self.ns, e)
    }
}
