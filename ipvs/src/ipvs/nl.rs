//! A small synchronous netlink client for one protocol (generic or route) bound to one network
//! namespace: pipelined requests with acknowledgements, dumps, and single answers.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr};
use netns::NetNs;

use crate::{Error, Result};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Requests sent before their acknowledgements are read.
const BATCH: usize = 64;
/// Receive buffer: larger than any single netlink datagram the kernel sends.
const RECV_BUF: usize = 256 << 10;

/// A failed netlink request: the errno and the kernel's extended-ack message, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NlError {
    pub errno: i32,
    pub msg: Option<String>,
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))?;
        if let Some(m) = &self.msg {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

impl NlError {
    /// The crate error for operation `what` in namespace `ns`.
    pub fn into_error(self, what: &str, ns: &str) -> Error {
        let detail = self.msg.map(|m| format!(" ({m})")).unwrap_or_default();
        Error::Io(
            format!("{what} in namespace {ns}{detail}"),
            io::Error::from_raw_os_error(self.errno),
        )
    }
}

pub(crate) struct Sock {
    sock: Socket,
    capped: bool,
    ns: String,
    seq: u32,
    buf: Vec<u8>,
}

impl Sock {
    /// Opens a netlink socket of `protocol` inside `ns` (it stays bound to that namespace).
    pub fn open(ns: &NetNs, protocol: isize) -> Result<Sock> {
        let opened = ns
            .run(|| -> io::Result<(Socket, bool)> {
                let mut s = Socket::new(protocol)?;
                s.bind_auto()?;
                s.connect(&SocketAddr::new(0, 0))?;
                // Best effort: error messages from the kernel and short acknowledgements.
                let _ = s.set_ext_ack(true);
                let capped = s.set_cap_ack(true).is_ok();
                let _ = s.set_rx_buf_sz(4 << 20);
                Ok((s, capped))
            })
            .map_err(|e| Error::Other(format!("enter namespace {}: {e}", ns.name())))?
            .map_err(|e| Error::Io(format!("open a netlink socket in {}", ns.name()), e))?;
        Ok(Sock {
            sock: opened.0,
            capped: opened.1,
            ns: ns.name().to_string(),
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    fn io_err(&self, what: &str, e: io::Error) -> Error {
        Error::Io(format!("{what} in namespace {}", self.ns), e)
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

    /// Sends mutating requests (each with extra NLM_F_* flags) pipelined and returns each one's
    /// result, in order. Fails as a whole only when the socket itself fails.
    pub fn batch<T: NetlinkSerializable>(
        &mut self,
        reqs: Vec<(T, u16)>,
    ) -> Result<Vec<std::result::Result<(), NlError>>> {
        let mut results = Vec::with_capacity(reqs.len());
        let mut reqs = reqs.into_iter().peekable();
        while reqs.peek().is_some() {
            let mut out = Vec::new();
            let mut seqs = Vec::new();
            for (req, flags) in reqs.by_ref().take(BATCH) {
                seqs.push(self.encode(req, flags | NLM_F_ACK, &mut out));
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
            results.extend(got.into_iter().flatten());
        }
        Ok(results)
    }

    /// Sends a request that the kernel answers with one message (no dump).
    pub fn get<T, R>(&mut self, msg: T, what: &str) -> Result<std::result::Result<R, NlError>>
    where
        T: NetlinkSerializable,
        R: NetlinkDeserializable,
    {
        let mut out = Vec::new();
        let seq = self.encode(msg, 0, &mut out);
        self.sock.send(&out, 0).map_err(|e| self.io_err(what, e))?;
        loop {
            self.recv().map_err(|e| self.io_err(what, e))?;
            for raw in split_raw(&self.buf) {
                let (mtype, s) = type_seq(raw);
                if s != seq {
                    continue;
                }
                if mtype == NLMSG_ERROR {
                    return Ok(Err(parse_ack(&raw[16..], self.capped).err().unwrap_or(
                        NlError {
                            errno: libc::ENOMSG,
                            msg: Some("acknowledged without an answer".into()),
                        },
                    )));
                }
                return decode::<R>(raw)
                    .map(Ok)
                    .map_err(|e| Error::Other(format!("{what} in namespace {}: {e}", self.ns)));
            }
        }
    }

    /// Sends a dump request and collects every answer.
    pub fn dump<T, R>(&mut self, msg: T, what: &str) -> Result<Vec<R>>
    where
        T: NetlinkSerializable,
        R: NetlinkDeserializable,
    {
        let mut out = Vec::new();
        let seq = self.encode(msg, NLM_F_DUMP, &mut out);
        self.sock.send(&out, 0).map_err(|e| self.io_err(what, e))?;
        let mut msgs = Vec::new();
        loop {
            self.recv().map_err(|e| self.io_err(what, e))?;
            for raw in split_raw(&self.buf) {
                let (mtype, s) = type_seq(raw);
                if s != seq {
                    continue;
                }
                match mtype {
                    NLMSG_DONE => return Ok(msgs),
                    NLMSG_ERROR => {
                        return match parse_ack(&raw[16..], self.capped) {
                            Ok(()) => Ok(msgs),
                            Err(e) => Err(e.into_error(what, &self.ns)),
                        };
                    }
                    _ => msgs.push(decode::<R>(raw).map_err(|e| {
                        Error::Other(format!("{what} in namespace {}: {e}", self.ns))
                    })?),
                }
            }
        }
    }
}

fn decode<R: NetlinkDeserializable>(raw: &[u8]) -> std::result::Result<R, String> {
    match NetlinkMessage::<R>::deserialize(raw) {
        Ok(m) => match m.payload {
            NetlinkPayload::InnerMessage(inner) => Ok(inner),
            _ => Err("unexpected netlink answer (not a message of the family)".to_string()),
        },
        Err(e) => Err(format!("cannot parse the kernel's answer: {e}")),
    }
}

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

/// Splits a datagram into whole netlink messages (header included).
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
fn parse_ack(p: &[u8], capped: bool) -> std::result::Result<(), NlError> {
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
        let mut p = (-libc::ESRCH).to_ne_bytes().to_vec();
        p.extend_from_slice(&nlmsg(30, 7, &[])[..16]);
        let text = b"no such service\0";
        p.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        p.extend_from_slice(text);
        let e = parse_ack(&p, true).unwrap_err();
        assert_eq!(e.errno, libc::ESRCH);
        assert_eq!(e.msg.as_deref(), Some("no such service"));
        let err = e.into_error("delete IPVS service fwmark 300", "lb-x");
        assert!(err.to_string().contains("no such service"), "{err}");
        assert!(parse_ack(&[1, 2], true).is_err());
        assert_eq!(
            parse_ack(&i32::MIN.to_ne_bytes(), true).unwrap_err().errno,
            libc::EIO
        );
    }

    #[test]
    fn datagrams_split_into_messages() {
        let mut buf = nlmsg(NLMSG_ERROR, 1, &0i32.to_ne_bytes());
        buf.extend(nlmsg(NLMSG_DONE, 2, &[0, 0, 0]));
        let msgs: Vec<_> = split(&buf).map(|(t, s, p)| (t, s, p.len())).collect();
        assert_eq!(msgs, vec![(NLMSG_ERROR, 1, 4), (NLMSG_DONE, 2, 3)]);
        assert_eq!(split(&buf[..18]).count(), 0);
        let mut zero = buf.clone();
        zero[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(split(&zero).count(), 0);
    }
}
