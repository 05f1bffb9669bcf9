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
        for bytes in lab::fuzzing::junk(0x9e37_79b9_7f4a_7c15, 3000, 700) {
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

    use lab::fuzzing::write_seed;

    fn inputs(target: &str) -> Vec<Vec<u8>> {
        lab::fuzzing::inputs(target)
            .into_iter()
            .map(|(_, b)| b)
            .collect()
    }

    fn from() -> crate::membership::Id {
        crate::membership::Id {
            node: "n".into(),
            generation: 1,
            bump: 0,
            addr: "198.18.0.1:7946".parse().unwrap(),
        }
    }

    fn record(node: &str) -> codec::Record {
        codec::Record {
            node: node.into(),
            generation: 3,
            version: 7,
            addr: "198.18.0.2:7946".parse().unwrap(),
            vtep: Some("198.18.0.2".parse().unwrap()),
            networks: vec![codec::NetInterest {
                net: "net1".into(),
                publishes: true,
            }],
            left: false,
            floor: 0,
        }
    }

    fn table(items: usize) -> codec::TableDelta {
        codec::TableDelta {
            net: "net1".into(),
            owners: vec![codec::OwnerDelta {
                owner: "n".into(),
                since: 0,
                max: items as u64,
                items: (0..items)
                    .map(|i| codec::WireItem {
                        id: format!("ep{i}"),
                        version: i as u64 + 1,
                        value: Some(codec::EpValue {
                            ip: std::net::IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8]),
                            mac: [2, 0x42, 10, 0, 0, i as u8],
                            task: format!("task{i}"),
                            service: "svc".into(),
                            name: format!("web.{i}.task{i}"),
                            aliases: vec!["web".into()],
                            disabled: false,
                        }),
                    })
                    .collect(),
            }],
        }
    }

    /// A seed's name, its encoded message and that message's sealed datagrams.
    type Seed = (&'static str, Vec<u8>, Vec<Vec<u8>>);

    /// Each body's encoded message (what `message` takes) and its sealed datagrams (fragments
    /// for a message past the MTU).
    fn seeds() -> Vec<Seed> {
        let bodies = [
            (
                "syn",
                Body::Syn(codec::Syn {
                    records: 2,
                    nets: vec![codec::NetHash {
                        net: "net1".into(),
                        hash: 42,
                    }],
                }),
            ),
            (
                "delta",
                Body::Delta(codec::Delta {
                    records: vec![record("n2")],
                    tables: vec![table(3)],
                    ..Default::default()
                }),
            ),
            (
                "push_big",
                Body::Push(codec::Push {
                    origin: "n".into(),
                    records: vec![record("n"), record("n3")],
                    tables: vec![table(60)],
                }),
            ),
        ];
        bodies
            .into_iter()
            .map(|(name, body)| {
                let msg = codec::Message {
                    cluster: 1,
                    from: from(),
                    body,
                };
                let bytes = codec::encode(&msg).unwrap();
                let sealed = wire::seal_message(&keyring(), 1400, &bytes).unwrap();
                (name, bytes, sealed)
            })
            .collect()
    }

    #[test]
    #[ignore = "writes the seed corpus under fuzz/corpus/"]
    fn write_seed_corpus() {
        for (name, message, datagrams) in seeds() {
            write_seed("gossip_message", name, &message);
            // One file per datagram (a fragment alone goes no further than the reassembler).
            for (i, d) in datagrams.iter().enumerate() {
                write_seed("gossip_datagram", &format!("{name}-{i}"), d);
            }
            // A stream carries every datagram of the message as frames.
            let mut s = crate::stream::MAGIC.to_vec();
            s.extend_from_slice(&7946u16.to_be_bytes());
            for d in &datagrams {
                s.extend_from_slice(&u16::try_from(d.len()).unwrap().to_be_bytes());
                s.extend_from_slice(d);
            }
            write_seed("gossip_stream", name, &s);
        }
    }

    #[test]
    fn seeds_decode() {
        for (name, message_bytes, datagrams) in seeds() {
            assert!(message(&message_bytes), "{name}");
            if datagrams.len() == 1 {
                assert!(datagram(&datagrams[0]), "{name}");
            }
            let mut s = crate::stream::MAGIC.to_vec();
            s.extend_from_slice(&7946u16.to_be_bytes());
            for d in &datagrams {
                s.extend_from_slice(&u16::try_from(d.len()).unwrap().to_be_bytes());
                s.extend_from_slice(d);
            }
            // Each frame is opened alone (a fresh reassembler per frame, as `stream` does).
            let n = stream(&s);
            assert_eq!(n, usize::from(datagrams.len() == 1), "{name}");
        }
    }

    /// The corpora and every crash the fuzzers found: decoded without a panic.
    #[test]
    fn corpus_and_regressions_never_panic() {
        for bytes in inputs("gossip_datagram") {
            datagram(&bytes);
        }
        for bytes in inputs("gossip_stream") {
            stream(&bytes);
        }
        for bytes in inputs("gossip_message") {
            message(&bytes);
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
