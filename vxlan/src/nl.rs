//! A small synchronous rtnetlink client: one socket bound to one network namespace, requests with
//! acknowledgements (pipelined in batches), dumps, and a shared counter of mutating requests.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use netns::NetNs;

use crate::error::{Error, Result};

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Requests sent before their acknowledgements are read (keeps the socket's receive buffer
/// far from overflowing).
const BATCH: usize = 64;
/// Receive buffer: larger than any single netlink datagram the kernel sends (32 KiB).
const RECV_BUF: usize = 256 << 10;

/// Counts mutating kernel requests (netlink writes, namespace creations and deletions, sysctl
/// writes, nftables transactions) and calls an optional hook after each.
#[derive(Default)]
pub(crate) struct Counter {
    n: AtomicU64,
    #[allow(clippy::type_complexity)]
    hook: Mutex<Option<Box<dyn FnMut(u64) + Send>>>,
}

impl Counter {
    pub fn get(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }

    pub fn add(&self, k: u64) {
        for _ in 0..k {
            let n = self.n.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(f) = self.hook.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                f(n);
            }
        }
    }

    pub fn set_hook(&self, f: Option<Box<dyn FnMut(u64) + Send>>) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }
}

/// A failed netlink request: the errno and the kernel's extended-ack message, if any.
#[derive(Debug, Clone)]
pub(crate) struct NlError {
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

/// A mutating request: the message, extra NLM_F_* flags and what it does (for errors).
pub(crate) struct Req {
    pub msg: RouteNetlinkMessage,
    pub flags: u16,
    pub what: String,
}

impl Req {
    pub fn new(msg: RouteNetlinkMessage, flags: u16, what: impl Into<String>) -> Req {
        Req {
            msg,
            flags,
            what: what.into(),
        }
    }
}

pub(crate) struct Nl {
    sock: Socket,
    capped: bool,
    ns: String,
    seq: u32,
    buf: Vec<u8>,
    writes: Arc<Counter>,
}

impl Nl {
    /// Opens a NETLINK_ROUTE socket inside `ns` (the socket stays bound to it).
    pub fn open(ns: &NetNs, writes: Arc<Counter>) -> Result<Nl> {
        let sock = ns
            .run(|| -> io::Result<(Socket, bool)> {
                let mut s = Socket::new(NETLINK_ROUTE)?;
                s.bind_auto()?;
                s.connect(&SocketAddr::new(0, 0))?;
                // Best effort: error messages from the kernel and short acknowledgements.
                let _ = s.set_ext_ack(true);
                let capped = s.set_cap_ack(true).is_ok();
                let _ = s.set_rx_buf_sz(4 << 20);
                Ok((s, capped))
            })?
            .map_err(|source| Error::Netlink {
                op: "open a netlink socket".into(),
                ns: ns.name().to_string(),
                detail: source.to_string(),
                errno: source.raw_os_error().unwrap_or(0),
            })?;
        let (sock, capped) = sock;
        Ok(Nl {
            sock,
            capped,
            ns: ns.name().to_string(),
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
            writes,
        })
    }

    pub fn ns_name(&self) -> &str {
        &self.ns
    }

    fn io_err(&self, op: &str, e: io::Error) -> Error {
        Error::Netlink {
            op: op.to_string(),
            ns: self.ns.clone(),
            detail: e.to_string(),
            errno: e.raw_os_error().unwrap_or(0),
        }
    }

    fn encode(&mut self, msg: RouteNetlinkMessage, flags: u16, out: &mut Vec<u8>) -> u32 {
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

    fn recv(&mut self) -> io::Result<()> {
        self.buf.clear();
        self.buf.reserve(RECV_BUF);
        let room = self.buf.capacity();
        loop {
            match self.sock.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(n) if n > room => {
                    return Err(io::Error::other(format!(
                        "netlink answer of {n} bytes does not fit in {room}"
                    )));
                }
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one mutating request and waits for its acknowledgement.
    pub fn request(&mut self, req: Req) -> Result<()> {
        let what = req.what.clone();
        match self.batch(vec![req])?.pop() {
            Some(Err(e)) => Err(Error::Netlink {
                op: what,
                ns: self.ns.clone(),
                detail: e.to_string(),
                errno: e.errno,
            }),
            _ => Ok(()),
        }
    }

    /// Like [`Nl::request`] but returns the kernel's error for the caller to interpret.
    pub fn try_request(&mut self, req: Req) -> Result<std::result::Result<(), NlError>> {
        Ok(self.batch(vec![req])?.pop().unwrap_or(Err(NlError {
            errno: libc::EIO,
            msg: None,
        })))
    }

    /// Sends requests pipelined and returns the result of each, in order. Counts every request
    /// as a write. Fails as a whole only when the socket itself fails.
    pub fn batch(&mut self, reqs: Vec<Req>) -> Result<Vec<std::result::Result<(), NlError>>> {
        let mut results = Vec::with_capacity(reqs.len());
        let mut reqs = reqs.into_iter().peekable();
        while reqs.peek().is_some() {
            let mut out = Vec::new();
            let mut seqs = Vec::new();
            for req in reqs.by_ref().take(BATCH) {
                tracing::debug!(ns = %self.ns, op = %req.what, "netlink write");
                let seq = self.encode(req.msg, req.flags | NLM_F_ACK, &mut out);
                seqs.push(seq);
            }
            self.sock
                .send(&out, 0)
                .map_err(|e| self.io_err("send a netlink request", e))?;
            let first = seqs[0];
            let mut got: Vec<Option<std::result::Result<(), NlError>>> = vec![None; seqs.len()];
            let mut pending = seqs.len();
            while pending > 0 {
                self.recv()
                    .map_err(|e| self.io_err("receive a netlink answer", e))?;
                for (mtype, seq, payload) in split(&self.buf) {
                    let i = seq.wrapping_sub(first) as usize;
                    if mtype != NLMSG_ERROR || i >= got.len() || got[i].is_some() {
                        continue;
                    }
                    got[i] = Some(parse_ack(payload, self.capped));
                    pending -= 1;
                }
            }
            self.writes.add(seqs.len() as u64);
            results.extend(got.into_iter().map(|r| r.expect("all answered")));
        }
        Ok(results)
    }

    /// Sends a get request for one object; `None` if the kernel says there is none (ENODEV,
    /// ENOENT).
    pub fn get(
        &mut self,
        msg: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Option<RouteNetlinkMessage>> {
        let mut out = Vec::new();
        let seq = self.encode(msg, 0, &mut out);
        self.sock
            .send(&out, 0)
            .map_err(|e| self.io_err(&format!("get {what}"), e))?;
        loop {
            self.recv()
                .map_err(|e| self.io_err(&format!("get {what}"), e))?;
            for raw in split_raw(&self.buf) {
                let mtype = u16::from_ne_bytes([raw[4], raw[5]]);
                let s = u32::from_ne_bytes([raw[8], raw[9], raw[10], raw[11]]);
                if s != seq {
                    continue;
                }
                if mtype == NLMSG_ERROR {
                    return match parse_ack(&raw[16..], self.capped) {
                        Ok(()) => Ok(None),
                        Err(e) if e.errno == libc::ENODEV || e.errno == libc::ENOENT => Ok(None),
                        Err(e) => Err(Error::Netlink {
                            op: format!("get {what}"),
                            ns: self.ns.clone(),
                            detail: e.to_string(),
                            errno: e.errno,
                        }),
                    };
                }
                return match NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw) {
                    Ok(m) => match m.payload {
                        NetlinkPayload::InnerMessage(inner) => Ok(Some(inner)),
                        _ => Ok(None),
                    },
                    Err(e) => Err(Error::Netlink {
                        op: format!("get {what}"),
                        ns: self.ns.clone(),
                        detail: format!("cannot parse the kernel's answer: {e}"),
                        errno: 0,
                    }),
                };
            }
        }
    }

    /// Sends a dump request and collects every answer.
    pub fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let mut out = Vec::new();
        let seq = self.encode(msg, NLM_F_DUMP, &mut out);
        self.sock
            .send(&out, 0)
            .map_err(|e| self.io_err(&format!("dump {what}"), e))?;
        let mut msgs = Vec::new();
        loop {
            self.recv()
                .map_err(|e| self.io_err(&format!("dump {what}"), e))?;
            let mut done = false;
            let mut failed = None;
            for (mtype, s, payload) in split(&self.buf) {
                if s != seq {
                    continue;
                }
                match mtype {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        // An error answer ends the dump.
                        failed = parse_ack(payload, self.capped).err();
                        done = true;
                    }
                    _ => {}
                }
            }
            if let Some(e) = failed {
                return Err(Error::Netlink {
                    op: format!("dump {what}"),
                    ns: self.ns.clone(),
                    detail: e.to_string(),
                    errno: e.errno,
                });
            }
            for raw in split_raw(&self.buf) {
                match NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw) {
                    Ok(m) if m.header.sequence_number == seq => {
                        if let NetlinkPayload::InnerMessage(inner) = m.payload {
                            msgs.push(inner);
                        }
                    }
                    // Attributes this crate version cannot parse: skip the entry.
                    _ => {}
                }
            }
            if done {
                return Ok(msgs);
            }
        }
    }
}

/// Splits a datagram into (type, seq, payload) per netlink message.
pub(crate) fn split(buf: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    split_raw(buf).map(|m| {
        let mtype = u16::from_ne_bytes([m[4], m[5]]);
        let seq = u32::from_ne_bytes([m[8], m[9], m[10], m[11]]);
        (mtype, seq, &m[16..])
    })
}

/// Splits a datagram into whole netlink messages (header included).
pub(crate) fn split_raw(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
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
pub(crate) fn parse_ack(p: &[u8], capped: bool) -> std::result::Result<(), NlError> {
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
    Err(NlError { errno: -code, msg })
}

fn ext_ack_msg(mut tlvs: &[u8]) -> Option<String> {
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]) & 0x3fff;
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let s = &tlvs[4..len];
            let s = s.split(|&b| b == 0).next().unwrap_or(&[]);
            let s = std::str::from_utf8(s).ok()?;
            if s.is_empty() || !s.chars().all(|c| !c.is_control()) {
                return None;
            }
            return Some(s.to_string());
        }
        tlvs = &tlvs[((len + 3) & !3).min(tlvs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(mtype: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&mtype.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    #[test]
    fn acks_and_errors_with_extended_messages() {
        assert!(parse_ack(&0i32.to_ne_bytes(), true).is_ok());
        // -EEXIST, the echoed (capped) header, then NLMSGERR_ATTR_MSG.
        let mut p = (-libc::EEXIST).to_ne_bytes().to_vec();
        p.extend_from_slice(&nlmsg(16, 7, &[])[..16]);
        let text = b"A VXLAN device with the specified VNI already exists\0";
        p.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        let e = parse_ack(&p, true).unwrap_err();
        assert_eq!(e.errno, libc::EEXIST);
        assert_eq!(
            e.msg.as_deref(),
            Some("A VXLAN device with the specified VNI already exists")
        );
        assert!(e.to_string().contains("VNI already exists"));
        // Short or garbled input is an error, never a panic.
        assert!(parse_ack(&[1, 2], true).is_err());
        let mut bad = (-libc::EINVAL).to_ne_bytes().to_vec();
        bad.extend_from_slice(&[0xff; 40]);
        assert_eq!(parse_ack(&bad, false).unwrap_err().errno, libc::EINVAL);
    }

    #[test]
    fn datagrams_split_into_messages() {
        let mut buf = nlmsg(NLMSG_ERROR, 1, &0i32.to_ne_bytes());
        buf.extend(nlmsg(NLMSG_DONE, 2, &[0, 0, 0]));
        let msgs: Vec<_> = split(&buf).map(|(t, s, p)| (t, s, p.len())).collect();
        assert_eq!(msgs, vec![(NLMSG_ERROR, 1, 4), (NLMSG_DONE, 2, 3)]);
        // Truncated or nonsense lengths end the iteration.
        assert_eq!(split(&buf[..18]).count(), 0);
        assert_eq!(split(&buf[..24]).count(), 1);
        let mut zero = buf.clone();
        zero[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(split(&zero).count(), 0);
    }
}
