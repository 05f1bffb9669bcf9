//! A strict reader of chitchat 0.11 messages, run on every authenticated message before chitchat
//! sees it. chitchat trusts its peers: a delta whose `SetMaxVersion` is below one of its own
//! key versions trips an `assert!` in `NodeState::apply_delta`, and a delta made of many small
//! zstd blocks inflates without bound. Only holders of a cluster key can send either, but "never
//! panic on network input" holds for them too, so such messages are refused here as malformed.
//!
//! Wire format (all integers little-endian, as chitchat writes them):
//! ```text
//! message = magic:u16 (45139) | version:u8 (0) | type:u8 | body
//!   Syn    (0): digest | cluster_id:str
//!   SynAck (1): digest | delta
//!   Ack    (2): delta
//!   BadCluster (3): -
//! digest  = count:u16 | count * (chitchat_id | heartbeat:u64 | last_gc:u64 | max_version:u64)
//! chitchat_id = node_id:str | generation:u64 | ip_version:u8 (4|6) | ip:4|16 | port:u16
//! str     = len:u16 | utf8
//! delta   = blocks: (type:u8 = 1 compressed | 2 raw, len:u16, bytes)* | 0  -> op stream
//! op      = 0 node: chitchat_id | last_gc:u64 | from_version:u64
//!         | 1 kv: key:str | value:str | version:u64 | status:u8 (0 set, 1 delete, 2 delete-after-ttl)
//!         | 2 set_max_version: u64
//! ```

/// Most bytes a delta may inflate to (chitchat itself never sends more than 64 KiB before
/// compression).
const MAX_INFLATED: usize = 1 << 20;
const MAGIC: u16 = 45_139;

/// What [`check`] learned about a well-formed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    /// The message carries a non-empty delta (new state for somebody).
    pub has_delta: bool,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?).ok()
    }
    fn chitchat_id(&mut self) -> Option<()> {
        self.str()?;
        self.u64()?;
        match self.u8()? {
            4 => self.take(4)?,
            6 => self.take(16)?,
            _ => return None,
        };
        self.u16()?;
        Some(())
    }
    fn digest(&mut self) -> Option<()> {
        let n = self.u16()?;
        for _ in 0..n {
            self.chitchat_id()?;
            self.take(24)?;
        }
        Some(())
    }
    /// Inflates a delta's block stream, bounded.
    fn blocks(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut block = vec![0u8; usize::from(u16::MAX)];
        loop {
            match self.u8()? {
                0 => return Some(out),
                1 => {
                    let n = usize::from(self.u16()?);
                    let src = self.take(n)?;
                    let len = zstd::bulk::decompress_to_buffer(src, &mut block[..]).ok()?;
                    out.extend_from_slice(block.get(..len)?);
                }
                2 => {
                    let n = usize::from(self.u16()?);
                    out.extend_from_slice(self.take(n)?);
                }
                _ => return None,
            }
            if out.len() > MAX_INFLATED {
                return None;
            }
        }
    }
}

/// Checks a delta's operations; returns whether there is any.
fn delta(r: &mut Reader<'_>) -> Option<bool> {
    let ops = r.blocks()?;
    let mut ops = Reader(&ops);
    let mut any = false;
    // Highest key version of the current node delta, if it has keys.
    let mut in_node = false;
    let mut kv_max: Option<u64> = None;
    while !ops.0.is_empty() {
        any = true;
        match ops.u8()? {
            0 => {
                ops.chitchat_id()?;
                ops.u64()?;
                ops.u64()?;
                in_node = true;
                kv_max = None;
            }
            1 => {
                if !in_node {
                    return None;
                }
                ops.str()?;
                ops.str()?;
                let version = ops.u64()?;
                if ops.u8()? > 2 || version == 0 || kv_max.is_some_and(|m| version <= m) {
                    return None;
                }
                kv_max = Some(version);
            }
            2 => {
                if !in_node {
                    return None;
                }
                let max_version = ops.u64()?;
                if kv_max.is_some_and(|m| max_version < m) {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(any)
}

/// Checks one serialized chitchat message. `None`: malformed (or hostile), drop it.
pub(crate) fn check(msg: &[u8]) -> Option<Checked> {
    let mut r = Reader(msg);
    if r.u16()? != MAGIC || r.u8()? != 0 {
        return None;
    }
    let has_delta = match r.u8()? {
        0 => {
            r.digest()?;
            r.str()?;
            false
        }
        1 => {
            r.digest()?;
            delta(&mut r)?
        }
        2 => delta(&mut r)?,
        3 => false,
        _ => return None,
    };
    if !r.0.is_empty() {
        return None;
    }
    Some(Checked { has_delta })
}

/// Encodes chitchat `Ack` messages: the eager push's deltas, and (for tests) forged ones.
pub mod encode {
    use std::net::SocketAddr;

    fn str(buf: &mut Vec<u8>, s: &str) {
        buf.extend_from_slice(&(s.len().min(usize::from(u16::MAX)) as u16).to_le_bytes());
        buf.extend_from_slice(&s.as_bytes()[..s.len().min(usize::from(u16::MAX))]);
    }

    fn id(buf: &mut Vec<u8>, node_id: &str, generation: u64, addr: SocketAddr) {
        str(buf, node_id);
        buf.extend_from_slice(&generation.to_le_bytes());
        match addr.ip() {
            std::net::IpAddr::V4(ip) => {
                buf.push(4);
                buf.extend_from_slice(&ip.octets());
            }
            std::net::IpAddr::V6(ip) => {
                buf.push(6);
                buf.extend_from_slice(&ip.octets());
            }
        }
        buf.extend_from_slice(&addr.port().to_le_bytes());
    }

    /// One key of a delta: (key, value, version, status: 0 set, 1 deleted, 2 delete-after-ttl).
    pub type Kv<'a> = (&'a str, &'a str, u64, u8);

    /// One node's part of a delta.
    pub struct NodeDelta<'a> {
        pub node_id: &'a str,
        pub generation: u64,
        pub addr: SocketAddr,
        pub last_gc_version: u64,
        /// The delta holds every change of the node in `(from_version_excluded, max]`.
        pub from_version_excluded: u64,
        /// In increasing version order.
        pub kvs: Vec<Kv<'a>>,
        /// Appended as a `SetMaxVersion` operation.
        pub set_max_version: Option<u64>,
    }

    /// An `Ack` carrying the given node deltas (uncompressed blocks).
    pub fn ack(nodes: &[NodeDelta<'_>]) -> Vec<u8> {
        let mut ops = Vec::new();
        for n in nodes {
            ops.push(0u8);
            id(&mut ops, n.node_id, n.generation, n.addr);
            ops.extend_from_slice(&n.last_gc_version.to_le_bytes());
            ops.extend_from_slice(&n.from_version_excluded.to_le_bytes());
            for (k, v, version, status) in &n.kvs {
                ops.push(1);
                str(&mut ops, k);
                str(&mut ops, v);
                ops.extend_from_slice(&version.to_le_bytes());
                ops.push(*status);
            }
            if let Some(m) = n.set_max_version {
                ops.push(2);
                ops.extend_from_slice(&m.to_le_bytes());
            }
        }
        let mut msg = Vec::with_capacity(ops.len() + 16);
        msg.extend_from_slice(&super::MAGIC.to_le_bytes());
        msg.push(0);
        msg.push(2);
        for chunk in ops.chunks(usize::from(u16::MAX)) {
            msg.push(2);
            msg.extend_from_slice(&(chunk.len() as u16).to_le_bytes());
            msg.extend_from_slice(chunk);
        }
        msg.push(0);
        msg
    }
}

/// Forged messages for tests: what a late relay, a replay or a buggy peer could deliver.
#[doc(hidden)]
pub mod forge {
    use std::net::SocketAddr;

    /// One key of a forged delta: (key, value, version, deleted).
    pub type Kv<'a> = (&'a str, &'a str, u64, bool);

    /// An `Ack` carrying a delta for one node (`owner`, `generation`, `addr`) with the given
    /// keys; `set_max_version` appends that operation.
    pub fn ack(
        owner: &str,
        generation: u64,
        addr: SocketAddr,
        from_version_excluded: u64,
        kvs: &[Kv<'_>],
        set_max_version: Option<u64>,
    ) -> Vec<u8> {
        super::encode::ack(&[super::encode::NodeDelta {
            node_id: owner,
            generation,
            addr,
            last_gc_version: 0,
            from_version_excluded,
            kvs: kvs
                .iter()
                .map(|(k, v, version, deleted)| (*k, *v, *version, u8::from(*deleted)))
                .collect(),
            set_max_version,
        }])
    }
}

#[cfg(test)]
mod tests {
    use chitchat::{ChitchatMessage, Deserializable, Serializable};

    use super::*;

    fn addr() -> std::net::SocketAddr {
        "198.18.0.1:7946".parse().unwrap()
    }

    #[test]
    fn forged_acks_parse_like_chitchat() {
        let m = forge::ack(
            "n1",
            7,
            addr(),
            0,
            &[("k", "v", 1, false), ("j", "", 2, true)],
            None,
        );
        assert_eq!(check(&m), Some(Checked { has_delta: true }));
        let parsed = ChitchatMessage::deserialize(&mut &m[..]).unwrap();
        assert!(matches!(parsed, ChitchatMessage::Ack { .. }));
    }

    #[test]
    fn the_assert_tripping_delta_is_refused() {
        let bad = forge::ack("n1", 7, addr(), 0, &[("k", "v", 10, false)], Some(5));
        assert_eq!(check(&bad), None);
        let ok = forge::ack("n1", 7, addr(), 0, &[], Some(5));
        assert!(check(&ok).is_some());
        let unordered = forge::ack(
            "n1",
            7,
            addr(),
            0,
            &[("a", "", 3, false), ("b", "", 2, false)],
            None,
        );
        assert_eq!(check(&unordered), None);
    }

    #[test]
    fn junk_and_truncations_are_refused() {
        let m = forge::ack("n1", 7, addr(), 0, &[("k", "v", 1, false)], None);
        for n in 0..m.len() {
            assert_eq!(check(&m[..n]), None, "truncated at {n}");
        }
        assert_eq!(check(b""), None);
        assert_eq!(check(&[0xff; 64]), None);
        let mut trailing = m.clone();
        trailing.push(0);
        assert_eq!(check(&trailing), None);
    }

    #[test]
    fn an_empty_ack_has_no_delta() {
        let m = ChitchatMessage::BadCluster.serialize_to_vec();
        assert_eq!(check(&m), Some(Checked { has_delta: false }));
    }
}
