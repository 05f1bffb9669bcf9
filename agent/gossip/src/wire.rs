//! The encrypted envelope every gossip datagram travels in.
//!
//! ```text
//! datagram  = header || AES-GCM(key, nonce, aad = header, inner) || tag(16)
//! header    = version:u8 (=1) | key_id:u32 | sender:u64 | seq:u32 | sent_at_ms:u64   (25 bytes, BE)
//! nonce     = sender:u64 || seq:u32                                                   (12 bytes)
//! inner     = 0x00 || message                       (a whole message, see crate::codec)
//!           | 0x01 || msg_id:u32 | index:u8 | count:u8 || chunk  (one fragment of a message)
//! ```
//!
//! * `key_id` is the Lamport tag of the cluster gossip key that sealed the datagram: the sender
//!   always uses the keyring's primary key, a receiver opens with any accepted key of that id.
//! * `sender` is a random 64-bit id drawn when a [`Sealer`] is made (one per gossip instance) and
//!   drawn again before `seq` would wrap, so a (key, nonce) pair is never used twice.
//! * Replay protection: a receiver keeps, per sender, the highest `seq` seen and a 128-datagram
//!   window below it ([`ReplayGuard`]); a datagram whose `sent_at_ms` is further than
//!   `max_age` from the receiver's clock is refused too, so forgetting idle senders (after
//!   `max_age`) never reopens the door to old datagrams. Everything in the header is
//!   authenticated; nothing is trusted before the tag checks.
//! * Every datagram fits the underlay MTU; messages longer than one datagram (up to
//!   64 KiB) are cut into fragments, each sealed on its own, and put back together by a bounded
//!   [`Reassembler`].
//!
//! Decoding entry points (stable names, for fuzzing too): [`open`] (one datagram), then
//! [`Reassembler::add`] for fragments, then [`crate::codec::decode`] for the message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::Error;

/// Envelope format version.
pub const VERSION: u8 = 1;
/// Length of the cleartext (authenticated) header.
pub const HEADER_LEN: usize = 1 + 4 + 8 + 4 + 8;
/// Length of the AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes of a fragment's inner header (kind, msg_id, index, count).
const FRAG_HEADER_LEN: usize = 1 + 4 + 1 + 1;
/// Largest message (an encoded [`crate::codec`] message) the envelope carries.
pub const MAX_MESSAGE: usize = 65_507;
/// Most fragments one message may be cut into.
pub const MAX_FRAGMENTS: usize = 64;
/// IPv6 + UDP headers: what the underlay MTU loses before the datagram payload.
pub const IP_UDP_OVERHEAD: usize = 48;
/// Smallest underlay MTU accepted (IPv6's minimum).
pub const MIN_MTU: u16 = 1280;

/// A cluster gossip key: 16 bytes (AES-128-GCM) or 32 bytes (AES-256-GCM), named by its
/// Lamport tag as in the store (Docker keeps three such keys).
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    /// The key's Lamport tag; sent in clear in every datagram to pick the key.
    pub id: u32,
    /// The AES key, 16 or 32 bytes.
    pub bytes: Vec<u8>,
}

impl Key {
    pub fn new(id: u32, bytes: impl Into<Vec<u8>>) -> Key {
        Key {
            id,
            bytes: bytes.into(),
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        write!(f, "Key {{ id: {}, len: {} }}", self.id, self.bytes.len())
    }
}

/// The keys in force: `primary` seals everything sent; `primary` and `accepted` (at most
/// [`Keyring::MAX_KEYS`] keys in all) open what is received. Rotation: add the new key to
/// `accepted` everywhere, make it primary, then drop the old one — no restart, no loss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keyring {
    pub primary: Key,
    pub accepted: Vec<Key>,
}

impl Keyring {
    /// Keys a node accepts at once, the primary included (as Docker's three gossip keys).
    pub const MAX_KEYS: usize = 3;

    /// A keyring with one key, primary and only accepted key.
    pub fn single(key: Key) -> Keyring {
        Keyring {
            primary: key,
            accepted: Vec::new(),
        }
    }

    /// Checks sizes and ids and prepares the AES keys.
    pub fn compile(&self) -> Result<CompiledKeys, Error> {
        let mut keys: Vec<(u32, LessSafeKey)> = Vec::new();
        for key in std::iter::once(&self.primary).chain(&self.accepted) {
            if keys.iter().any(|(id, _)| *id == key.id) {
                // The primary may be listed again among the accepted keys, but only as itself.
                let same = std::iter::once(&self.primary)
                    .chain(&self.accepted)
                    .filter(|k| k.id == key.id)
                    .all(|k| k.bytes == key.bytes);
                if !same {
                    return Err(Error::Keyring(format!(
                        "two different keys share the id {}",
                        key.id
                    )));
                }
                continue;
            }
            let alg = match key.bytes.len() {
                16 => &AES_128_GCM,
                32 => &AES_256_GCM,
                n => {
                    return Err(Error::Keyring(format!(
                        "key {} has {n} bytes; a gossip key has 16 or 32",
                        key.id
                    )));
                }
            };
            let unbound = UnboundKey::new(alg, &key.bytes)
                .map_err(|_| Error::Keyring(format!("key {} is not a valid AES key", key.id)))?;
            keys.push((key.id, LessSafeKey::new(unbound)));
        }
        if keys.len() > Self::MAX_KEYS {
            return Err(Error::Keyring(format!(
                "{} keys given; at most {} are accepted at once (the primary included)",
                keys.len(),
                Self::MAX_KEYS
            )));
        }
        Ok(CompiledKeys {
            primary: self.primary.id,
            keys,
        })
    }
}

/// A keyring ready for use ([`Keyring::compile`]).
pub struct CompiledKeys {
    primary: u32,
    keys: Vec<(u32, LessSafeKey)>,
}

impl CompiledKeys {
    fn get(&self, id: u32) -> Option<&LessSafeKey> {
        self.keys.iter().find(|(k, _)| *k == id).map(|(_, k)| k)
    }

    fn primary(&self) -> (u32, &LessSafeKey) {
        let key = self
            .get(self.primary)
            .expect("the primary is always compiled");
        (self.primary, key)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_u64(rng: &SystemRandom) -> u64 {
    let mut b = [0u8; 8];
    // The system RNG does not fail on Linux; a zero id would still be unique enough with seq.
    let _ = rng.fill(&mut b);
    u64::from_be_bytes(b)
}

/// Seals outgoing messages: owns the sender id and the datagram counter.
pub struct Sealer {
    rng: SystemRandom,
    /// (sender id, last seq used).
    state: std::sync::Mutex<(u64, u32)>,
    next_msg_id: AtomicU64,
    max_datagram: usize,
}

impl Sealer {
    /// A sealer for datagrams of at most `mtu - 48` bytes.
    pub fn new(mtu: u16) -> Sealer {
        let rng = SystemRandom::new();
        let sender = random_u64(&rng);
        Sealer {
            rng,
            state: std::sync::Mutex::new((sender, 0)),
            next_msg_id: AtomicU64::new(0),
            max_datagram: usize::from(mtu.max(MIN_MTU)) - IP_UDP_OVERHEAD,
        }
    }

    /// Largest datagram this sealer makes.
    pub fn max_datagram(&self) -> usize {
        self.max_datagram
    }

    /// The sender id currently stamped on datagrams.
    pub fn sender(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    fn next_nonce(&self) -> (u64, u32) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.1 == u32::MAX {
            // Never reuse a nonce: take a new identity before the counter wraps.
            *st = (random_u64(&self.rng), 0);
        }
        st.1 += 1;
        *st
    }

    /// Seals `message` (an encoded message) into one or more datagrams.
    pub fn seal(&self, keys: &CompiledKeys, message: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
        if message.len() > MAX_MESSAGE {
            return Err(Error::Oversize(message.len()));
        }
        let room = self.max_datagram - HEADER_LEN - TAG_LEN;
        if message.len() < room {
            let mut inner = Vec::with_capacity(1 + message.len());
            inner.push(0);
            inner.extend_from_slice(message);
            return Ok(vec![self.seal_one(keys, inner)]);
        }
        let chunk = room - FRAG_HEADER_LEN;
        let count = message.len().div_ceil(chunk);
        if count > MAX_FRAGMENTS {
            return Err(Error::Oversize(message.len()));
        }
        let msg_id = self.next_msg_id.fetch_add(1, Ordering::Relaxed) as u32;
        Ok(message
            .chunks(chunk)
            .enumerate()
            .map(|(i, part)| {
                let mut inner = Vec::with_capacity(FRAG_HEADER_LEN + part.len());
                inner.push(1);
                inner.extend_from_slice(&msg_id.to_be_bytes());
                inner.push(i as u8);
                inner.push(count as u8);
                inner.extend_from_slice(part);
                self.seal_one(keys, inner)
            })
            .collect())
    }

    fn seal_one(&self, keys: &CompiledKeys, mut inner: Vec<u8>) -> Vec<u8> {
        let (key_id, key) = keys.primary();
        let (sender, seq) = self.next_nonce();
        let mut out = Vec::with_capacity(HEADER_LEN + inner.len() + TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(&key_id.to_be_bytes());
        out.extend_from_slice(&sender.to_be_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&now_ms().to_be_bytes());
        let tag = key
            .seal_in_place_separate_tag(nonce(sender, seq), Aad::from(&out[..]), &mut inner)
            .expect("AES-GCM sealing of a bounded buffer cannot fail");
        out.extend_from_slice(&inner);
        out.extend_from_slice(tag.as_ref());
        out
    }
}

/// Seals one encoded message under `keys`' primary key with a fresh sender id, as a
/// node would. For tools and tests that must speak the wire format (e.g. to forge or replay).
pub fn seal_message(keys: &Keyring, mtu: u16, message: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    Sealer::new(mtu).seal(&keys.compile()?, message)
}

fn nonce(sender: u64, seq: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&sender.to_be_bytes());
    n[8..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Too short, wrong version, bad inner framing, or a bad fragment.
    Malformed,
    /// Sealed under a key id this node does not accept.
    UnknownKey,
    /// The tag does not verify: wrong key bytes, or the datagram was altered.
    BadAuth,
    /// Seen before, too old for the window, or stamped too far from our clock.
    Replay,
}

/// What an opened datagram holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// A whole message.
    Message(Vec<u8>),
    /// A fragment: the message is not complete yet.
    Fragment {
        sender: u64,
        msg_id: u32,
        index: u8,
        count: u8,
        chunk: Vec<u8>,
    },
}

/// Opens a datagram: authenticates it and checks it against the replay guard.
///
/// `own_sender` is the receiver's own sender id: its own datagrams reflected back are replays.
pub fn open(
    keys: &CompiledKeys,
    guard: &mut ReplayGuard,
    datagram: &[u8],
    own_sender: u64,
) -> Result<Opened, Reject> {
    if datagram.len() < HEADER_LEN + TAG_LEN + 1 || datagram[0] != VERSION {
        return Err(Reject::Malformed);
    }
    let (header, sealed) = datagram.split_at(HEADER_LEN);
    let key_id = u32::from_be_bytes(header[1..5].try_into().expect("4 bytes"));
    let sender = u64::from_be_bytes(header[5..13].try_into().expect("8 bytes"));
    let seq = u32::from_be_bytes(header[13..17].try_into().expect("4 bytes"));
    let sent_at = u64::from_be_bytes(header[17..25].try_into().expect("8 bytes"));
    let key = keys.get(key_id).ok_or(Reject::UnknownKey)?;
    let mut buf = sealed.to_vec();
    let inner = key
        .open_in_place(nonce(sender, seq), Aad::from(header), &mut buf)
        .map_err(|_| Reject::BadAuth)?;
    // Authentic from here on: now it may touch the replay state.
    if sender == own_sender {
        return Err(Reject::Replay);
    }
    guard.check(sender, seq, sent_at)?;
    match inner.split_first() {
        Some((0, msg)) => Ok(Opened::Message(msg.to_vec())),
        Some((1, rest)) if rest.len() > FRAG_HEADER_LEN - 1 => {
            let msg_id = u32::from_be_bytes(rest[0..4].try_into().expect("4 bytes"));
            let (index, count) = (rest[4], rest[5]);
            if count < 2 || usize::from(count) > MAX_FRAGMENTS || index >= count {
                return Err(Reject::Malformed);
            }
            Ok(Opened::Fragment {
                sender,
                msg_id,
                index,
                count,
                chunk: rest[6..].to_vec(),
            })
        }
        _ => Err(Reject::Malformed),
    }
}

/// Per-sender sliding windows over `seq`, plus a freshness bound on `sent_at`.
pub struct ReplayGuard {
    windows: HashMap<u64, Window>,
    max_age: Duration,
    max_senders: usize,
}

struct Window {
    top: u32,
    /// Bit i set: `top - i` was seen.
    seen: u128,
    last: Instant,
}

impl ReplayGuard {
    /// Remembers at most `max_senders` senders; refuses datagrams stamped more than `max_age`
    /// away from the local clock.
    pub fn new(max_age: Duration, max_senders: usize) -> ReplayGuard {
        ReplayGuard {
            windows: HashMap::new(),
            max_age,
            max_senders,
        }
    }

    fn check(&mut self, sender: u64, seq: u32, sent_at_ms: u64) -> Result<(), Reject> {
        let now = now_ms();
        let age = Duration::from_millis(now.abs_diff(sent_at_ms));
        if age > self.max_age {
            return Err(Reject::Replay);
        }
        let instant = Instant::now();
        if !self.windows.contains_key(&sender) && self.windows.len() >= self.max_senders {
            // Forget senders idle for longer than max_age: their old datagrams are refused by
            // the freshness bound, so forgetting them cannot let a replay through.
            let max_age = self.max_age;
            self.windows
                .retain(|_, w| instant.duration_since(w.last) <= max_age);
            if self.windows.len() >= self.max_senders {
                return Err(Reject::Replay);
            }
        }
        let w = self.windows.entry(sender).or_insert(Window {
            top: 0,
            seen: 0,
            last: instant,
        });
        if seq > w.top {
            let shift = seq - w.top;
            w.seen = if shift >= 128 { 0 } else { w.seen << shift };
            w.seen |= 1;
            w.top = seq;
        } else {
            let back = w.top - seq;
            if back >= 128 || w.seen & (1u128 << back) != 0 {
                return Err(Reject::Replay);
            }
            w.seen |= 1u128 << back;
        }
        w.last = instant;
        Ok(())
    }

    /// Number of senders remembered.
    pub fn senders(&self) -> usize {
        self.windows.len()
    }
}

/// Puts fragmented messages back together, within fixed bounds: at most `max_partial`
/// messages in progress (the oldest is dropped to make room) and each for at most `timeout`.
pub struct Reassembler {
    partial: HashMap<(u64, u32), Partial>,
    max_partial: usize,
    timeout: Duration,
}

struct Partial {
    started: Instant,
    parts: Vec<Option<Vec<u8>>>,
    missing: usize,
}

impl Reassembler {
    pub fn new(max_partial: usize, timeout: Duration) -> Reassembler {
        Reassembler {
            partial: HashMap::new(),
            max_partial,
            timeout,
        }
    }

    /// Adds a fragment; returns the whole message once its last fragment arrives, and the
    /// number of incomplete messages given up to make room or because they expired.
    pub fn add(
        &mut self,
        sender: u64,
        msg_id: u32,
        index: u8,
        count: u8,
        chunk: Vec<u8>,
    ) -> (Result<Option<Vec<u8>>, Reject>, u64) {
        let now = Instant::now();
        let timeout = self.timeout;
        let before = self.partial.len();
        self.partial
            .retain(|_, p| now.duration_since(p.started) <= timeout);
        let mut dropped = (before - self.partial.len()) as u64;
        let key = (sender, msg_id);
        if !self.partial.contains_key(&key)
            && self.partial.len() >= self.max_partial
            && let Some(oldest) = self
                .partial
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| *k)
        {
            self.partial.remove(&oldest);
            dropped += 1;
        }
        let p = self.partial.entry(key).or_insert_with(|| Partial {
            started: now,
            parts: vec![None; usize::from(count)],
            missing: usize::from(count),
        });
        if p.parts.len() != usize::from(count) {
            self.partial.remove(&key);
            return (Err(Reject::Malformed), dropped + 1);
        }
        let slot = &mut p.parts[usize::from(index)];
        if slot.is_none() {
            *slot = Some(chunk);
            p.missing -= 1;
        }
        if p.missing > 0 {
            return (Ok(None), dropped);
        }
        let p = self.partial.remove(&key).expect("present");
        let total: usize = p.parts.iter().flatten().map(Vec::len).sum();
        if total > MAX_MESSAGE {
            return (Err(Reject::Malformed), dropped);
        }
        let mut msg = Vec::with_capacity(total);
        for part in p.parts.into_iter().flatten() {
            msg.extend_from_slice(&part);
        }
        (Ok(Some(msg)), dropped)
    }

    /// Messages in progress.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(id: u32, byte: u8) -> CompiledKeys {
        Keyring::single(Key::new(id, vec![byte; 32]))
            .compile()
            .unwrap()
    }

    fn guard() -> ReplayGuard {
        ReplayGuard::new(Duration::from_secs(60), 16)
    }

    #[test]
    fn keyring_is_validated() {
        assert!(Keyring::single(Key::new(1, vec![0; 16])).compile().is_ok());
        assert!(Keyring::single(Key::new(1, vec![0; 24])).compile().is_err());
        let four = Keyring {
            primary: Key::new(1, vec![1; 16]),
            accepted: (2..5).map(|i| Key::new(i, vec![i as u8; 16])).collect(),
        };
        assert!(four.compile().is_err(), "four keys");
        let clash = Keyring {
            primary: Key::new(1, vec![1; 16]),
            accepted: vec![Key::new(1, vec![2; 16])],
        };
        assert!(clash.compile().is_err(), "same id, different bytes");
        let listed_twice = Keyring {
            primary: Key::new(1, vec![1; 16]),
            accepted: vec![Key::new(1, vec![1; 16]), Key::new(2, vec![2; 32])],
        };
        assert!(listed_twice.compile().is_ok());
        assert!(!format!("{:?}", Key::new(7, vec![0xAB; 16])).contains("171"));
    }

    #[test]
    fn seal_open_roundtrip_and_replay() {
        let keys = ring(1, 7);
        let s = Sealer::new(1500);
        let mut g = guard();
        let d = s.seal(&keys, b"hello").unwrap();
        assert_eq!(d.len(), 1);
        assert!(d[0].len() <= s.max_datagram());
        assert_eq!(
            open(&keys, &mut g, &d[0], 0).unwrap(),
            Opened::Message(b"hello".to_vec())
        );
        assert_eq!(open(&keys, &mut g, &d[0], 0), Err(Reject::Replay));
        let mine = s.seal(&keys, b"reflected").unwrap().remove(0);
        assert_eq!(
            open(&keys, &mut guard(), &mine, s.sender()),
            Err(Reject::Replay),
            "our own datagram sent back to us"
        );
    }

    #[test]
    fn wrong_or_unknown_key_and_tampering_are_refused() {
        let s = Sealer::new(1500);
        let d = s.seal(&ring(1, 7), b"secret").unwrap().remove(0);
        assert_eq!(
            open(&ring(2, 7), &mut guard(), &d, 0),
            Err(Reject::UnknownKey)
        );
        assert_eq!(open(&ring(1, 8), &mut guard(), &d, 0), Err(Reject::BadAuth));
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x40;
            let r = open(&ring(1, 7), &mut guard(), &t, 0);
            assert!(r.is_err(), "flipping byte {i} must be detected");
        }
        assert_eq!(
            open(&ring(1, 7), &mut guard(), &d[..10], 0),
            Err(Reject::Malformed)
        );
        assert_eq!(
            open(&ring(1, 7), &mut guard(), &[], 0),
            Err(Reject::Malformed)
        );
    }

    #[test]
    fn rotation_opens_with_any_accepted_key() {
        let old = Key::new(1, vec![1; 16]);
        let new = Key::new(2, vec![2; 32]);
        let sender_old = Keyring::single(old.clone()).compile().unwrap();
        let both = Keyring {
            primary: new.clone(),
            accepted: vec![old.clone()],
        }
        .compile()
        .unwrap();
        let s = Sealer::new(1500);
        let mut g = guard();
        let d = s.seal(&sender_old, b"a").unwrap().remove(0);
        assert!(open(&both, &mut g, &d, 0).is_ok());
        let d = s.seal(&both, b"b").unwrap().remove(0);
        assert_eq!(u32::from_be_bytes(d[1..5].try_into().unwrap()), 2);
        assert!(open(&both, &mut g, &d, 0).is_ok());
    }

    #[test]
    fn window_accepts_reordering_once() {
        let mut g = guard();
        let t = now_ms();
        for seq in [5, 3, 4, 1, 200, 150, 100] {
            assert_eq!(g.check(9, seq, t), Ok(()), "seq {seq}");
        }
        for seq in [5, 3, 200, 150, 72] {
            assert_eq!(g.check(9, seq, t), Err(Reject::Replay), "seq {seq}");
        }
        assert_eq!(g.check(9, 1000, t - 120_000), Err(Reject::Replay), "stale");
        assert_eq!(g.check(9, 1000, t + 120_000), Err(Reject::Replay), "future");
        assert_eq!(g.check(10, 1, t), Ok(()), "another sender");
    }

    #[test]
    fn sender_table_is_bounded() {
        let mut g = ReplayGuard::new(Duration::from_secs(60), 4);
        let t = now_ms();
        for s in 0..4 {
            g.check(s, 1, t).unwrap();
        }
        assert_eq!(g.check(99, 1, t), Err(Reject::Replay));
        assert_eq!(g.senders(), 4);
    }

    #[test]
    fn fragments_reassemble_in_any_order_within_bounds() {
        let keys = ring(3, 3);
        let s = Sealer::new(1500);
        let msg: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        let mut d = s.seal(&keys, &msg).unwrap();
        assert!(d.len() > 40 && d.len() <= MAX_FRAGMENTS);
        assert!(d.iter().all(|x| x.len() <= 1500 - IP_UDP_OVERHEAD));
        d.reverse();
        let mut g = guard();
        let mut r = Reassembler::new(4, Duration::from_secs(5));
        let mut out = None;
        for x in &d {
            match open(&keys, &mut g, x, 0).unwrap() {
                Opened::Fragment {
                    sender,
                    msg_id,
                    index,
                    count,
                    chunk,
                } => {
                    let (res, _) = r.add(sender, msg_id, index, count, chunk);
                    if let Some(m) = res.unwrap() {
                        out = Some(m);
                    }
                }
                Opened::Message(_) => panic!("expected fragments"),
            }
        }
        assert_eq!(out.unwrap(), msg);
        assert_eq!(r.pending(), 0);
        // Bounded: a flood of first fragments never holds more than max_partial messages.
        for id in 0..100 {
            let _ = r.add(1, id, 0, 2, vec![0; 10]);
        }
        assert_eq!(r.pending(), 4);
        assert!(s.seal(&keys, &vec![0; MAX_MESSAGE + 1]).is_err());
    }
}
