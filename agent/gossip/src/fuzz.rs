//! Entry points for fuzz targets: each runs one decoding step on arbitrary bytes, exactly as a
//! node does on what it receives, and must never panic. Stable names:
//!
//! * [`datagram`]: a UDP datagram or a stream frame: envelope ([`crate::wire::open`]), replay
//!   window, fragment reassembly ([`crate::wire::Reassembler`]), then [`message`];
//! * [`message`]: an opened message: [`crate::codec::decode`], then the SWIM packet it may
//!   carry through foca's decoder with our identity checks;
//! * [`stream`]: a TCP stream on the gossip port, framing included.

use std::time::Duration;

use crate::codec::{self, Body};
use crate::wire::{self, Keyring, Opened, Reassembler, ReplayGuard};

/// The keyring fuzz targets seal their inputs with (id 1, 32 bytes of 0x11), so a corpus can
/// hold authentic datagrams ([`crate::wire::seal_message`]).
pub fn keyring() -> Keyring {
    Keyring::single(crate::Key::new(1, vec![0x11; 32]))
}

/// Decodes one received datagram (or a frame of a stream); returns whether a message came out.
pub fn datagram(bytes: &[u8]) -> bool {
    let Ok(keys) = keyring().compile() else {
        return false;
    };
    let mut guard = ReplayGuard::new(Duration::from_secs(600), 16);
    let mut reassembler = Reassembler::new(4, Duration::from_secs(2));
    match wire::open(&keys, &mut guard, bytes, 0) {
        Ok(Opened::Message(m)) => message(&m),
        Ok(Opened::Fragment {
            sender,
            msg_id,
            index,
            count,
            chunk,
        }) => matches!(
            reassembler.add(sender, msg_id, index, count, chunk).0,
            Ok(Some(m)) if message(&m)
        ),
        Err(_) => false,
    }
}

/// Decodes one opened message, and the SWIM packet in it if any; returns whether it decoded.
pub fn message(bytes: &[u8]) -> bool {
    match codec::decode(bytes) {
        Ok(d) => {
            if let Body::Swim(packet) = &d.message.body {
                swim_packet(packet);
            }
            true
        }
        Err(_) => false,
    }
}

/// Decodes a SWIM packet's header and member updates as foca does.
pub fn swim_packet(mut bytes: &[u8]) -> bool {
    use foca::Codec;
    let mut c = crate::membership::SwimCodec;
    if c.decode_header(&mut bytes).is_err() {
        return false;
    }
    if bytes.len() >= 2 {
        let n = u16::from_be_bytes([bytes[0], bytes[1]]);
        bytes = &bytes[2..];
        for _ in 0..n {
            if c.decode_member(&mut bytes).is_err() {
                return false;
            }
        }
    }
    true
}

/// Parses a gossip stream's framing (magic, port, length-prefixed frames) and decodes each
/// frame as a datagram; returns how many messages came out.
pub fn stream(bytes: &[u8]) -> usize {
    let Some(rest) = bytes.strip_prefix(crate::stream::MAGIC) else {
        return 0;
    };
    let Some((_port, mut rest)) = rest.split_at_checked(2) else {
        return 0;
    };
    let mut n = 0;
    for _ in 0..wire::MAX_FRAGMENTS {
        let Some((len, tail)) = rest.split_at_checked(2) else {
            break;
        };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let Some((frame, tail)) = tail.split_at_checked(len) else {
            break;
        };
        if len == 0 {
            break;
        }
        n += usize::from(datagram(frame));
        rest = tail;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..3000usize {
            let bytes: Vec<u8> = (0..len % 700)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            datagram(&bytes);
            message(&bytes);
            swim_packet(&bytes);
            let mut s = crate::stream::MAGIC.to_vec();
            s.extend_from_slice(&bytes);
            stream(&s);
            let mut m = vec![codec::FORMAT, 0];
            m.extend_from_slice(&bytes);
            message(&m);
        }
    }

    #[test]
    fn a_sealed_message_decodes() {
        let msg = codec::Message {
            cluster: 1,
            from: crate::membership::Id {
                node: "n".into(),
                generation: 1,
                bump: 0,
                addr: "198.18.0.1:7946".parse().unwrap(),
            },
            body: Body::Syn(codec::Syn {
                records: 0,
                nets: vec![],
            }),
        };
        let bytes = codec::encode(&msg).unwrap();
        let d = wire::seal_message(&keyring(), 1500, &bytes).unwrap();
        assert!(datagram(&d[0]));
    }
}
