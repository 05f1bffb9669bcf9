//! One synchronous netlink client for every protocol netagent speaks (NETLINK_ROUTE,
//! NETLINK_XFRM, NETLINK_GENERIC): a socket opened inside one network namespace (it stays bound
//! to it), mutating requests pipelined with their acknowledgements, requests with one answer,
//! and dumps. The messages are any `netlink-packet-*` type; callers keep their own error types
//! and their own bookkeeping (write counters, logs) around it. [`Events`] is told of changes
//! (multicast notifications).

use std::io;

mod events;
pub use events::{Events, RTMGRP_IPV4_IFADDR};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};
use netns::NetNs;

pub use netlink_sys::protocols::{NETLINK_GENERIC, NETLINK_ROUTE, NETLINK_XFRM};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Requests sent before their acknowledgements are read (keeps the socket's receive buffer far
/// from overflowing).
const BATCH: usize = 64;
/// Receive buffer: larger than any single netlink datagram the kernel sends (32 KiB).
const RECV_BUF: usize = 256 << 10;

/// What the kernel answered a request with: the errno and its extended-ack message, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlError {
    pub errno: i32,
    pub msg: Option<String>,
}

impl NlError {
    pub fn to_io(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_io())?;
        if let Some(m) = &self.msg {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

impl std::error::Error for NlError {}

/// A failure of the socket itself, of a dump the kernel refused, or of an answer that does not
/// parse: what was asked, in which namespace, the errno (0 when there is none) and the detail.
#[derive(Debug, thiserror::Error)]
#[error("{what} in namespace {ns}: {detail}")]
pub struct Error {
    pub what: String,
    pub ns: String,
    pub errno: i32,
    pub detail: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A netlink socket of one protocol inside one namespace.
pub struct Sock {
    sock: Socket,
    /// NETLINK_CAP_ACK is on: an error echoes only the request's header.
    capped: bool,
    ns: String,
    seq: u32,
    buf: Vec<u8>,
}

impl Sock {
    /// Opens a socket of `protocol` (`NETLINK_ROUTE`, ...) inside `ns`.
    pub fn open(ns: &NetNs, protocol: isize) -> Result<Sock> {
        let (sock, capped) = socket_in(ns, protocol, "open a netlink socket", |mut s| {
            s.bind_auto()?;
            s.connect(&SocketAddr::new(0, 0))?;
            // Best effort: error messages from the kernel and short acknowledgements.
            let _ = s.set_ext_ack(true);
            let capped = s.set_cap_ack(true).is_ok();
            let _ = s.set_rx_buf_sz(4 << 20);
            Ok((s, capped))
        })?;
        Ok(Sock {
            sock,
            capped,
            ns: ns.name().to_string(),
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// The name of the namespace the socket is bound to.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    fn io_err(&self, what: &str, e: io::Error) -> Error {
        io_error(what, &self.ns, e)
    }

    fn encode<T: NetlinkSerializable>(&mut self, msg: T, flags: u16, out: &mut Vec<u8>) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let start = out.len();
        out.resize(start + m.buffer_len(), 0);
        m.serialize(&mut out[start..]);
        self.seq
    }

    fn send(&mut self, out: &[u8], what: &str) -> Result<()> {
        self.sock
            .send(out, 0)
            .map(|_| ())
            .map_err(|e| self.io_err(what, e))
    }

    /// Receives one datagram into the buffer.
    fn recv(&mut self, what: &str) -> Result<()> {
        self.buf.clear();
        self.buf.reserve(RECV_BUF);
        let room = self.buf.capacity();
        loop {
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) if n > room => {
                    return Err(self.io_err(
                        what,
                        io::Error::other(format!(
                            "netlink answer of {n} bytes does not fit in {room}"
                        )),
                    ));
                }
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_err(what, e)),
            }
        }
    }

    /// Sends mutating requests (each with its extra NLM_F_* flags) pipelined and returns what
    /// the kernel answered each, in order. Fails as a whole only when the socket itself fails.
    pub fn batch<T: NetlinkSerializable>(
        &mut self,
        reqs: impl IntoIterator<Item = (T, u16)>,
    ) -> Result<Vec<Result<(), NlError>>> {
        let mut results = Vec::new();
        let mut reqs = reqs.into_iter().peekable();
        while reqs.peek().is_some() {
            let mut out = Vec::new();
            let mut seqs = Vec::new();
            for (req, flags) in reqs.by_ref().take(BATCH) {
                seqs.push(self.encode(req, flags | NLM_F_ACK, &mut out));
            }
            self.send(&out, "send a netlink request")?;
            let first = seqs[0];
            let mut got: Vec<Option<Result<(), NlError>>> = vec![None; seqs.len()];
            let mut pending = seqs.len();
            while pending > 0 {
                self.recv("receive a netlink answer")?;
                for (mtype, seq, payload) in split(&self.buf) {
                    let i = seq.wrapping_sub(first) as usize;
                    if mtype != NLMSG_ERROR || i >= got.len() || got[i].is_some() {
                        continue;
                    }
                    got[i] = Some(parse_ack(payload, self.capped));
                    pending -= 1;
                }
            }
            results.extend(got.into_iter().flatten());
        }
        Ok(results)
    }

    /// Sends one mutating request and returns what the kernel answered.
    pub fn request<T: NetlinkSerializable>(
        &mut self,
        msg: T,
        flags: u16,
    ) -> Result<Result<(), NlError>> {
        Ok(self.batch([(msg, flags)])?.pop().unwrap_or(Err(NlError {
            errno: libc::EIO,
            msg: Some("no acknowledgement".into()),
        })))
    }

    /// Sends `msg` with `flags` and hands every answer to it (type, whole message, whether
    /// acknowledgements are capped) to `on` until `on` returns the result.
    fn converse<T: NetlinkSerializable, X>(
        &mut self,
        msg: T,
        flags: u16,
        what: &str,
        mut on: impl FnMut(u16, &[u8], bool) -> Option<X>,
    ) -> Result<X> {
        let mut out = Vec::new();
        let seq = self.encode(msg, flags, &mut out);
        self.send(&out, what)?;
        loop {
            self.recv(what)?;
            for raw in split_raw(&self.buf) {
                let (mtype, s) = type_seq(raw);
                if s != seq {
                    continue;
                }
                if let Some(x) = on(mtype, raw, self.capped) {
                    return Ok(x);
                }
            }
        }
    }

    /// Sends a request the kernel answers with one message (a get, not a dump).
    pub fn get<T, R>(&mut self, msg: T, what: &str) -> Result<Result<R, NlError>>
    where
        T: NetlinkSerializable,
        R: NetlinkDeserializable,
    {
        let answer = self.converse(msg, 0, what, |mtype, raw, capped| {
            Some(if mtype == NLMSG_ERROR {
                Ok(Err(parse_ack(&raw[16..], capped).err().unwrap_or(
                    NlError {
                        errno: libc::ENOMSG,
                        msg: Some("acknowledged without an answer".into()),
                    },
                )))
            } else {
                decode::<R>(raw).map(Ok)
            })
        })?;
        answer.map_err(|detail| Error {
            what: what.to_string(),
            ns: self.ns.clone(),
            errno: 0,
            detail,
        })
    }

    /// Sends a dump request and returns every answer in order, each parsed or, when it does not
    /// parse, why (for the caller to skip or refuse: an attribute newer than the parser is no
    /// reason to drop a whole listing).
    pub fn dump<T, R>(&mut self, msg: T, what: &str) -> Result<Vec<Result<R, String>>>
    where
        T: NetlinkSerializable,
        R: NetlinkDeserializable,
    {
        let mut msgs = Vec::new();
        let end = self.converse(msg, NLM_F_DUMP, what, |mtype, raw, capped| match mtype {
            NLMSG_DONE => Some(Ok(())),
            // An error answer ends the dump.
            NLMSG_ERROR => Some(parse_ack(&raw[16..], capped)),
            _ => {
                msgs.push(decode::<R>(raw));
                None
            }
        })?;
        end.map(|()| msgs).map_err(|e| Error {
            what: what.to_string(),
            ns: self.ns.clone(),
            errno: e.errno,
            detail: e.to_string(),
        })
    }
}

/// A socket of `protocol` made inside `ns` and set up there by `setup` (so it stays bound to
/// that namespace).
fn socket_in<T: Send>(
    ns: &NetNs,
    protocol: isize,
    what: &str,
    setup: impl FnOnce(Socket) -> io::Result<T> + Send,
) -> Result<T> {
    ns.run(|| setup(Socket::new(protocol)?))
        .map_err(|e| Error {
            what: what.to_string(),
            ns: ns.name().to_string(),
            errno: 0,
            detail: format!("enter the namespace: {e}"),
        })?
        .map_err(|e| io_error(what, ns.name(), e))
}

/// A failure of the socket itself (`what` in namespace `ns`).
fn io_error(what: &str, ns: &str, e: io::Error) -> Error {
    Error {
        what: what.to_string(),
        ns: ns.to_string(),
        errno: e.raw_os_error().unwrap_or(0),
        detail: e.to_string(),
    }
}

fn decode<R: NetlinkDeserializable>(raw: &[u8]) -> Result<R, String> {
    match NetlinkMessage::<R>::deserialize(raw) {
        Ok(m) => match m.payload {
            NetlinkPayload::InnerMessage(inner) => Ok(inner),
            _ => Err("unexpected netlink answer (not a message of the family)".to_string()),
        },
        Err(e) => Err(format!("cannot parse the kernel's answer: {e}")),
    }
}

/// A whole message's type and sequence number (`split_raw` yields at least 16 bytes).
fn type_seq(m: &[u8]) -> (u16, u32) {
    (
        u16::from_ne_bytes([m[4], m[5]]),
        u32::from_ne_bytes([m[8], m[9], m[10], m[11]]),
    )
}

/// Splits a datagram into (type, seq, payload) per netlink message.
fn split(buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    split_raw(buf).map(|m| {
        let (mtype, seq) = type_seq(m);
        (mtype, seq, &m[16..])
    })
}

/// Splits a datagram into whole netlink messages (header included); a truncated or nonsense
/// length ends it.
fn split_raw(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off + 16 > buf.len() {
            return None;
        }
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
        if len < 16 || off + len > buf.len() {
            return None;
        }
        let m = &buf[off..off + len];
        off += (len + 3) & !3;
        Some(m)
    })
}

/// Parses the payload of an NLMSG_ERROR: code, echoed request header (capped) and extended-ack
/// attributes.
fn parse_ack(p: &[u8], capped: bool) -> Result<(), NlError> {
    if p.len() < 4 {
        return Err(NlError {
            errno: libc::EIO,
            msg: Some("short netlink error message".into()),
        });
    }
    let code = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
    if code == 0 {
        return Ok(());
    }
    let mut msg = None;
    // The echoed header follows; with NETLINK_CAP_ACK only the header (16 bytes) is echoed,
    // otherwise the whole request. Its length field tells.
    if p.len() >= 20 {
        let echoed = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]) as usize;
        let start = if capped {
            4 + 16
        } else {
            4 + ((echoed + 3) & !3)
        };
        msg = ext_ack_msg(p.get(start..).unwrap_or(&[]));
    }
    Err(NlError {
        errno: code.checked_neg().unwrap_or(libc::EIO),
        msg,
    })
}

fn ext_ack_msg(mut tlvs: &[u8]) -> Option<String> {
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let s = tlvs[4..len].split(|&b| b == 0).next().unwrap_or(&[]);
            let s = std::str::from_utf8(s).ok()?;
            if s.is_empty() || s.chars().any(|c| c.is_control()) {
                return None;
            }
            return Some(s.to_string());
        }
        tlvs = &tlvs[((len + 3) & !3).min(tlvs.len())..];
    }
    None
}

#[cfg(test)]
mod tests;
