//! The gossip wire codec: ours by design. A message is our own serde types encoded with
//! [postcard](https://docs.rs/postcard/1) (a stable, documented format: varints, length-prefixed
//! strings and sequences, enums by variant index), framed and optionally zstd-compressed:
//!
//! ```text
//! frame   = format:u8 (=1) | flags:u8 (bit 0: zstd) | payload
//! payload = postcard(Message)                          (zstd-compressed when flagged)
//! Message = { cluster: u64, from: Id, body: Body }
//! Body    = Swim(bytes)          a SWIM packet for foca (see crate::membership)
//!         | Syn | SynAck | Delta anti-entropy (see crate::sync)
//!         | Push                 eager push of new changes
//! ```
//!
//! Changing a type here changes the wire: add fields only at the end of a struct and variants
//! only at the end of an enum, and bump [`FORMAT`] for anything else.
//!
//! [`decode`] is the one entry point for received bytes (after the envelope): it bounds the
//! inflated size, refuses trailing bytes, and checks every id and value; entries and records
//! that break a bound are removed one by one and counted, anything structurally wrong refuses
//! the whole message. It never panics.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::membership::Id;
use crate::{MAX_VALUE_LEN, valid_id};

/// Wire format version (first byte of every message).
pub const FORMAT: u8 = 1;
const FLAG_ZSTD: u8 = 1;
/// Messages larger than this are compressed when it helps.
const COMPRESS_ABOVE: usize = 512;
/// Most bytes a message may inflate to.
pub const MAX_INFLATED: usize = 1 << 20;
/// Most networks a record may name.
pub const MAX_RECORD_NETWORKS: usize = 4096;

/// One gossip message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// [`cluster_hash`] of the sender's cluster id.
    pub cluster: u64,
    /// The sender's identity (replies go to `from.addr`).
    pub from: Id,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A SWIM packet, handed to foca as it is.
    Swim(Vec<u8>),
    Syn(Syn),
    SynAck(SynAck),
    Delta(Delta),
    Push(Push),
}

/// Anti-entropy, step 1: the sender's digests (records, and each network both hold).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Syn {
    pub records: u64,
    pub nets: Vec<NetHash>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetHash {
    pub net: String,
    pub hash: u64,
}

/// Step 2, only when a digest differs: the receiver's details of what differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynAck {
    pub records: Option<Vec<RecordDigest>>,
    pub nets: Vec<NetDigest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordDigest {
    pub node: Arc<str>,
    pub generation: u64,
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetDigest {
    pub net: String,
    pub owners: Vec<OwnerDigest>,
}

/// One owner's part of a network table: every change up to `max` is known; `hash` covers the
/// live entries (id, version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerDigest {
    pub owner: Arc<str>,
    pub max: u64,
    pub hash: u64,
}

/// Steps 3 and 4: what the other side lacks, and what this side wants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub records: Vec<Record>,
    pub want_records: Vec<Arc<str>>,
    pub tables: Vec<TableDelta>,
    pub wants: Vec<Want>,
    /// Networks whose whole table (asked for by a `Want` without owner) is complete with this
    /// message.
    pub filled: Vec<String>,
    /// A restarted node asks for every entry it owns, in every network the receiver holds: the
    /// previous generation's, to adopt.
    pub adopt: bool,
}

/// An eager push: changes new to the sender, passed on once by each node they are new to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    /// The node that made the first push (not sent back to it).
    pub origin: Arc<str>,
    pub records: Vec<Record>,
    pub tables: Vec<TableDelta>,
}

/// A node's global record, written by the node only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub node: Arc<str>,
    pub generation: u64,
    /// The owner's clock at the write; `(generation, version)` orders records of a node.
    pub version: u64,
    pub addr: SocketAddr,
    pub vtep: Option<IpAddr>,
    /// The networks whose table the node holds, sorted, and whether it has entries there.
    pub networks: Vec<NetInterest>,
    /// The node left gracefully: its entries are gone.
    pub left: bool,
    /// Every entry of this node with a version up to `floor` is void.
    pub floor: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterest {
    pub net: String,
    pub publishes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDelta {
    pub net: String,
    pub owners: Vec<OwnerDelta>,
}

/// Every change of `owner` in a network with a version in `(since, max]` (when `since` is 0:
/// the owner's whole part, tombstones included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerDelta {
    pub owner: Arc<str>,
    pub since: u64,
    pub max: u64,
    pub items: Vec<WireItem>,
}

/// One entry: a value, or a tombstone (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireItem {
    pub id: String,
    pub version: u64,
    pub value: Option<EpValue>,
}

/// An endpoint's value (network and id are around it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpValue {
    pub ip: IpAddr,
    pub mac: [u8; 6],
    pub task: String,
    pub service: String,
    pub name: String,
    pub aliases: Vec<String>,
    pub disabled: bool,
}

impl EpValue {
    /// Bytes it takes on the wire, about (an upper bound of the encoded size).
    pub fn wire_len(&self) -> usize {
        32 + self.task.len()
            + self.service.len()
            + self.name.len()
            + self.aliases.iter().map(|a| a.len() + 3).sum::<usize>()
    }
}

/// A request for an owner's changes since a version, or (owner `None`) for a whole table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Want {
    pub net: String,
    pub owner: Option<Arc<str>>,
    pub since: u64,
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("unknown wire format {0}")]
    Format(u8),
    #[error("unknown flags {0:#x}")]
    Flags(u8),
    #[error("does not inflate within {MAX_INFLATED} bytes")]
    Inflate,
    #[error("does not decode: {0}")]
    Decode(String),
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("{0}")]
    Invalid(&'static str),
}

/// A decoded message and how many entries/records in it were refused one by one.
#[derive(Debug)]
pub struct Decoded {
    pub message: Message,
    pub refused: usize,
}

/// Encodes a message (compressed when large and it helps).
pub fn encode(msg: &Message) -> Result<Vec<u8>, crate::Error> {
    let payload = postcard::to_allocvec(msg).map_err(|e| crate::Error::Config(e.to_string()))?;
    let mut out = Vec::with_capacity(payload.len() + 2);
    out.push(FORMAT);
    if payload.len() > COMPRESS_ABOVE
        && let Ok(z) = zstd::bulk::compress(&payload, 1)
        && z.len() < payload.len()
    {
        out.push(FLAG_ZSTD);
        out.extend_from_slice(&z);
    } else {
        out.push(0);
        out.extend_from_slice(&payload);
    }
    if out.len() > crate::wire::MAX_MESSAGE {
        return Err(crate::Error::Oversize(out.len()));
    }
    Ok(out)
}

/// Decodes and checks a received message (the bytes an opened envelope, a reassembled
/// message or a stream delivered).
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let (&format, rest) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if format != FORMAT {
        return Err(DecodeError::Format(format));
    }
    let (&flags, payload) = rest.split_first().ok_or(DecodeError::Empty)?;
    let inflated;
    let payload = match flags {
        0 => payload,
        FLAG_ZSTD => {
            inflated =
                zstd::bulk::decompress(payload, MAX_INFLATED).map_err(|_| DecodeError::Inflate)?;
            &inflated[..]
        }
        f => return Err(DecodeError::Flags(f)),
    };
    let (mut message, trailing): (Message, &[u8]) =
        postcard::take_from_bytes(payload).map_err(|e| DecodeError::Decode(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(DecodeError::Trailing(trailing.len()));
    }
    let refused = message.sanitize()?;
    Ok(Decoded { message, refused })
}

fn valid_value(v: &EpValue) -> bool {
    v.wire_len() <= MAX_VALUE_LEN
}

fn valid_record(r: &Record) -> bool {
    valid_id(&r.node)
        && r.networks.len() <= MAX_RECORD_NETWORKS
        && r.networks.iter().all(|n| valid_id(&n.net))
        && r.generation > 0
        && r.addr.port() != 0
}

fn sanitize_tables(tables: &mut Vec<TableDelta>, refused: &mut usize) {
    tables.retain_mut(|t| {
        if !valid_id(&t.net) {
            *refused += 1;
            return false;
        }
        t.owners.retain_mut(|o| {
            if !valid_id(&o.owner) || o.since > o.max {
                *refused += 1;
                return false;
            }
            o.items.retain(|i| {
                let ok = valid_id(&i.id)
                    && i.version > 0
                    && i.version <= o.max
                    && i.value.as_ref().is_none_or(valid_value);
                if !ok {
                    *refused += 1;
                }
                ok
            });
            true
        });
        true
    });
}

impl Message {
    /// Checks the structure (an error refuses the whole message) and removes entries and
    /// records that break a bound (returns how many).
    fn sanitize(&mut self) -> Result<usize, DecodeError> {
        if !valid_id(&self.from.node) || self.from.addr.port() == 0 || self.from.generation == 0 {
            return Err(DecodeError::Invalid("bad sender identity"));
        }
        let mut refused = 0;
        match &mut self.body {
            Body::Swim(p) => {
                if p.is_empty() {
                    return Err(DecodeError::Invalid("empty SWIM packet"));
                }
            }
            Body::Syn(s) => {
                if !s.nets.iter().all(|n| valid_id(&n.net)) {
                    return Err(DecodeError::Invalid("bad network id in a digest"));
                }
            }
            Body::SynAck(a) => {
                if let Some(r) = &a.records
                    && !r.iter().all(|d| valid_id(&d.node))
                {
                    return Err(DecodeError::Invalid("bad node id in a digest"));
                }
                if !a
                    .nets
                    .iter()
                    .all(|n| valid_id(&n.net) && n.owners.iter().all(|o| valid_id(&o.owner)))
                {
                    return Err(DecodeError::Invalid("bad id in a digest"));
                }
            }
            Body::Delta(d) => {
                if !d.want_records.iter().all(|n| valid_id(n))
                    || !d
                        .wants
                        .iter()
                        .all(|w| valid_id(&w.net) && w.owner.as_deref().is_none_or(valid_id))
                    || !d.filled.iter().all(|n| valid_id(n))
                {
                    return Err(DecodeError::Invalid("bad id in a request"));
                }
                let before = d.records.len();
                d.records.retain(valid_record);
                refused += before - d.records.len();
                sanitize_tables(&mut d.tables, &mut refused);
            }
            Body::Push(p) => {
                if !valid_id(&p.origin) {
                    return Err(DecodeError::Invalid("bad origin"));
                }
                let before = p.records.len();
                p.records.retain(valid_record);
                refused += before - p.records.len();
                sanitize_tables(&mut p.tables, &mut refused);
            }
        }
        Ok(refused)
    }
}

/// The 64-bit tag of a cluster id carried in every message.
pub fn cluster_hash(cluster_id: &str) -> u64 {
    hash(&[b"cluster", cluster_id.as_bytes()])
}

/// FNV-1a over the parts (each followed by a separator), then a 64-bit finalizer: the same on
/// every node and every build, unlike std's hasher.
pub(crate) fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer: XOR-combined hashes need well-mixed bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Id {
        Id {
            node: "n1".into(),
            generation: 7,
            bump: 0,
            addr: "198.18.0.1:7946".parse().unwrap(),
        }
    }

    fn value() -> EpValue {
        EpValue {
            ip: "10.0.0.2".parse().unwrap(),
            mac: [2, 0x42, 10, 0, 0, 2],
            task: "t".into(),
            service: "web".into(),
            name: "web.1".into(),
            aliases: vec!["web".into()],
            disabled: false,
        }
    }

    fn push(items: Vec<WireItem>) -> Message {
        Message {
            cluster: cluster_hash("c"),
            from: id(),
            body: Body::Push(Push {
                origin: "n1".into(),
                records: vec![],
                tables: vec![TableDelta {
                    net: "net1".into(),
                    owners: vec![OwnerDelta {
                        owner: "n1".into(),
                        since: 0,
                        max: 10,
                        items,
                    }],
                }],
            }),
        }
    }

    #[test]
    fn roundtrip_small_and_compressed() {
        let small = push(vec![WireItem {
            id: "e1".into(),
            version: 3,
            value: Some(value()),
        }]);
        let bytes = encode(&small).unwrap();
        assert_eq!(bytes[1], 0, "small messages are not compressed");
        let d = decode(&bytes).unwrap();
        assert_eq!(d.message, small);
        assert_eq!(d.refused, 0);

        let big = push(
            (1..=40)
                .map(|v| WireItem {
                    id: format!("e{v}"),
                    version: v % 10 + 1,
                    value: Some(value()),
                })
                .collect(),
        );
        let bytes = encode(&big).unwrap();
        assert_eq!(bytes[1], FLAG_ZSTD);
        assert_eq!(decode(&bytes).unwrap().message, big);
    }

    #[test]
    fn bad_items_are_refused_one_by_one() {
        let mut long = value();
        long.name = "x".repeat(MAX_VALUE_LEN);
        let msg = push(vec![
            WireItem {
                id: "ok".into(),
                version: 1,
                value: Some(value()),
            },
            WireItem {
                id: "a/b".into(),
                version: 2,
                value: None,
            },
            WireItem {
                id: "big".into(),
                version: 3,
                value: Some(long),
            },
            WireItem {
                id: "future".into(),
                version: 11,
                value: None,
            },
        ]);
        let d = decode(&encode(&msg).unwrap()).unwrap();
        assert_eq!(d.refused, 3);
        let Body::Push(p) = d.message.body else {
            panic!("a push")
        };
        assert_eq!(p.tables[0].owners[0].items.len(), 1);
    }

    #[test]
    fn junk_truncations_and_bombs_are_refused() {
        let bytes = encode(&push(vec![])).unwrap();
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "truncated at {n}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing).unwrap_err(), DecodeError::Trailing(1));
        assert!(decode(&[2, 0, 0]).is_err());
        assert!(decode(&[1, 4, 0]).is_err());
        for seed in 0..2000u32 {
            let junk: Vec<u8> = (0..(seed % 97))
                .map(|i| (i.wrapping_mul(seed) ^ seed) as u8)
                .collect();
            let _ = decode(&junk);
        }
        // A zstd bomb: 64 MiB of zeros compressed to a few KiB.
        let zeros = vec![0u8; 64 << 20];
        let mut bomb = vec![FORMAT, FLAG_ZSTD];
        bomb.extend(zstd::bulk::compress(&zeros, 1).unwrap());
        assert_eq!(decode(&bomb).unwrap_err(), DecodeError::Inflate);
        // A sender without an identity.
        let mut m = push(vec![]);
        m.from.node = "".into();
        assert!(decode(&encode(&m).unwrap()).is_err());
    }

    #[test]
    fn hashes_are_stable() {
        assert_eq!(hash(&[b"a"]), hash(&[b"a"]));
        assert_ne!(hash(&[b"ab", b"c"]), hash(&[b"a", b"bc"]));
        assert_ne!(cluster_hash("a"), cluster_hash("b"));
    }
}
