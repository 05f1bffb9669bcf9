//! Gossip in the namespace lab: one instance per node, sockets inside the nodes' namespaces.
//! Conditions are awaited with generous timeouts; nothing here asserts on timing.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Cluster, LONG, endpoint, endpoint_n, is_root, key};
use gossip::codec::{self, Body, EpValue, Message, OwnerDelta, Push, TableDelta, WireItem};
use gossip::membership::Id;
use gossip::{Event, Keyring, Timings};

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: the lab needs root");
            return;
        }
    };
}

/// An entry published on one node shows on all five; withdrawn, it disappears everywhere and
/// stays gone — also when a stale ADD of it arrives after the DELETE.
#[test]
fn publish_and_withdraw_reach_all_five_and_stay_withdrawn() {
    require_root!();
    let mut c = Cluster::new(5, 1, Timings::fast());
    c.start_all();
    c.wait_converged();
    // Every node holds net1 (tables are per network: a node that neither subscribes nor
    // publishes there receives none of it).
    let mut subs = c.subscribe_all("net1");
    let mut sub = subs.pop().expect("node 5's subscription");
    let first =
        c.rt.block_on(async { tokio::time::timeout(LONG, sub.recv()).await.expect("event") });
    assert_eq!(first, Some(Event::Resync(vec![])));

    // Fresh node 3 writes versions 1 (vtep), 2 (endpoint), then 3 (the tombstone).
    let vtep = "198.18.0.3".parse().unwrap();
    c.rt.block_on(c.g(3).publish_vtep(vtep)).unwrap();
    let ep = endpoint("net1", "ep-a", 3);
    c.publish(3, ep.clone());
    c.wait("all five see ep-a and node3's VTEP", || {
        (1..=5).all(|i| c.sees(i, "net1", "ep-a", 3) && c.g(i).vteps().get("node3") == Some(&vtep))
    });
    let got =
        c.rt.block_on(async { tokio::time::timeout(LONG, sub.recv()).await.expect("event") });
    match got {
        Some(Event::Added(e)) => {
            assert_eq!(e.owner, "node3");
            assert_eq!(e.endpoint, ep);
        }
        other => panic!("expected Added, got {other:?}"),
    }

    assert!(c.withdraw(3, "net1", "ep-a"));
    assert!(!c.withdraw(3, "net1", "ep-a"), "already withdrawn");
    c.wait("ep-a is gone everywhere", || {
        (1..=5).all(|i| !c.sees(i, "net1", "ep-a", 3))
    });
    let got =
        c.rt.block_on(async { tokio::time::timeout(LONG, sub.recv()).await.expect("event") });
    assert!(
        matches!(got, Some(Event::Removed(ref e)) if e.endpoint.id == "ep-a"),
        "{got:?}"
    );

    // Stale ADDs (versions older than the tombstone's), sealed with the cluster key and sent to
    // node 2 from node 4's namespace, as a late or replayed relay would deliver them: as a push
    // and as an anti-entropy delta.
    let g3 = c.g(3);
    let value = EpValue {
        ip: ep.ip,
        mac: ep.mac,
        task: ep.task.clone(),
        service: ep.service.clone(),
        name: ep.name.clone(),
        aliases: ep.aliases.clone(),
        disabled: false,
    };
    let from = Id {
        node: "node3".into(),
        generation: g3.generation(),
        bump: 0,
        addr: g3.addr(),
    };
    let before = c.g(2).stats();
    for version in [1, g3.generation(), g3.generation() + 1] {
        let delta = OwnerDelta {
            owner: "node3".into(),
            since: 0,
            max: version,
            items: vec![WireItem {
                id: "ep-a".into(),
                version,
                value: Some(value.clone()),
            }],
        };
        let body = if version == 1 {
            Body::Delta(codec::Delta {
                tables: vec![TableDelta {
                    net: "net1".into(),
                    owners: vec![delta],
                }],
                ..Default::default()
            })
        } else {
            Body::Push(Push {
                origin: "node3".into(),
                records: vec![],
                tables: vec![TableDelta {
                    net: "net1".into(),
                    owners: vec![delta],
                }],
            })
        };
        let msg = Message {
            cluster: codec::cluster_hash("netagent"),
            from: from.clone(),
            body,
        };
        let bytes = codec::encode(&msg).unwrap();
        let datagrams = gossip::wire::seal_message(&c.keys[0], 1500, &bytes).unwrap();
        send_from(&c, 4, c.addr(2), &datagrams);
    }
    c.wait("node 2 processed the stale adds", || {
        c.g(2).stats().messages_received >= before.messages_received + 3
    });
    // The envelope and the codec accepted all three (sealed with the cluster key, fresh): the
    // tables saw them, and last-writer-wins kept the tombstone.
    let after = c.g(2).stats();
    assert_eq!(after.dropped_malformed, before.dropped_malformed);
    assert_eq!(after.dropped_replay, before.dropped_replay);
    assert_eq!(after.dropped_bad_auth, before.dropped_bad_auth);
    assert_eq!(after.dropped_unknown_key, before.dropped_unknown_key);
    assert_eq!(after.dropped_entries, before.dropped_entries);
    std::thread::sleep(Timings::fast().gossip_interval * 20);
    for i in 1..=5 {
        assert!(!c.sees(i, "net1", "ep-a", 3), "ep-a resurrected on node{i}");
    }
    // The rest of the table is intact and the cluster healthy.
    assert!((1..=5).all(|i| c.g(i).vteps().len() == 1));
    drop(subs);
}

fn send_from(c: &Cluster, i: usize, to: SocketAddr, datagrams: &[Vec<u8>]) {
    let from = c.lab.node(i).addr();
    c.lab
        .node(i)
        .in_ns(|| {
            let s = std::net::UdpSocket::bind((from, 0)).unwrap();
            for d in datagrams {
                s.send_to(d, to).unwrap();
            }
        })
        .unwrap();
}

/// A node cut off by a partition: silent is not gone. Its entries stay on the other nodes,
/// flagged `owner_alive: false`, and its VTEP stays (its tasks may well be running); it keeps
/// the others' the same way. Healed, everything is flagged alive again. Nothing is removed.
#[test]
fn isolated_node_is_kept_flagged_and_returns_when_healed() {
    require_root!();
    let mut c = Cluster::new(5, 2, Timings::fast());
    c.start_all();
    c.wait_converged();
    for i in 1..=5 {
        c.rt.block_on(c.g(i).publish_vtep(c.lab.node(i).addr().into()))
            .unwrap();
        c.publish(i, endpoint("net1", &format!("ep{i}"), i as u8));
    }
    let all_see_all =
        |c: &Cluster| (1..=5).all(|i| (1..=5).all(|o| c.sees(i, "net1", &format!("ep{o}"), o)));
    // Every node knows every VTEP too (records travel apart from endpoint tables): the
    // assertions after the cut are about keeping them, not about learning them late.
    c.wait("all see all five endpoints and VTEPs", || {
        all_see_all(&c) && (1..=5).all(|i| c.g(i).vteps().len() == 5)
    });
    let mut sub = c.g(1).subscribe("net1");

    c.lab.isolate(5).unwrap();
    let flagged =
        |c: &Cluster, i: usize, id: &str| c.entry(i, "net1", id).is_some_and(|e| !e.owner_alive);
    c.wait(
        "nodes 1-4 flag node 5's endpoint dead, node 5 flags theirs",
        || {
            (1..=4).all(|i| flagged(&c, i, "ep5") && c.entry(i, "net1", "ep1").unwrap().owner_alive)
                && (1..=4).all(|o| flagged(&c, 5, &format!("ep{o}")))
                && c.entry(5, "net1", "ep5").unwrap().owner_alive
        },
    );
    assert!(all_see_all(&c), "nothing was removed");
    assert!(
        c.g(1)
            .members()
            .iter()
            .any(|m| m.node_id == "node5" && !m.alive)
    );
    assert_eq!(c.g(1).vteps().len(), 5, "the dead node's VTEP stays");
    assert_eq!(c.g(5).vteps().len(), 5);

    c.lab.heal_all().unwrap();
    c.wait("healed: all see all five endpoints alive", || {
        (1..=5).all(|i| {
            c.g(i)
                .endpoints("net1")
                .iter()
                .filter(|e| e.owner_alive)
                .count()
                == 5
        })
    });
    c.wait_converged();
    let mut events = Vec::new();
    while let Some(e) = sub.try_recv() {
        events.push(e);
    }
    assert!(
        !events.iter().any(|e| matches!(e, Event::Removed(_))),
        "no entry went away: {events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Updated(x) if x.endpoint.id == "ep5" && !x.owner_alive)),
        "the liveness change was an update: {events:?}"
    );
}

/// Every manager (the seeds) restarts at once: the workers' and managers' views merge again
/// without any manual step.
#[test]
fn all_managers_restarted_the_view_heals() {
    require_root!();
    let mut c = Cluster::new(5, 3, Timings::fast());
    c.start_all();
    c.wait_converged();
    for i in 1..=5 {
        c.publish(i, endpoint("net1", &format!("ep{i}"), i as u8));
    }
    let all_see_all =
        |c: &Cluster| (1..=5).all(|i| (1..=5).all(|o| c.sees(i, "net1", &format!("ep{o}"), o)));
    c.wait("all see all five endpoints", || all_see_all(&c));

    for m in 1..=3 {
        c.kill(m);
    }
    c.wait("workers keep the managers' endpoints, flagged dead", || {
        (4..=5).all(|i| {
            (1..=3).all(|o| {
                c.entry(i, "net1", &format!("ep{o}"))
                    .is_some_and(|e| !e.owner_alive)
            })
        })
    });
    // The managers come back (new incarnations) and republish, as a restarted agent does.
    for m in 1..=3 {
        c.start(m);
        c.publish(m, endpoint("net1", &format!("ep{m}"), m as u8));
    }
    c.wait(
        "after the restart all see all five endpoints, alive",
        || {
            all_see_all(&c)
                && (1..=5).all(|i| c.g(i).endpoints("net1").iter().all(|e| e.owner_alive))
        },
    );
    c.wait_converged();

    // A graceful leave withdraws the node's entries everywhere too.
    let g5 = c.take(5);
    c.rt.block_on(g5.shutdown()).unwrap();
    c.wait("node 5 left: its endpoint is gone", || {
        (1..=4).all(|i| !c.sees(i, "net1", "ep5", 5) && c.sees(i, "net1", "ep4", 4))
    });
}

/// A node with the wrong key can neither inject nor read; replayed and malformed datagrams are
/// dropped and counted; a full key rotation loses no entry.
#[test]
fn keys_replays_malformed_and_rotation() {
    require_root!();
    let mut c = Cluster::new(5, 1, Timings::fast());
    c.keys[4] = Keyring::single(key(9, 0x99));
    // Node 2 also "seeds" a spy socket on node 5 (port 7947) that captures its datagrams.
    let spy_addr = SocketAddr::new(c.lab.node(5).addr().into(), 7947);
    let spy = common::bind_in(&c.lab, 5, spy_addr);
    spy.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    c.start_all();
    let mut cfg2 = c.config(2);
    cfg2.seeds.push(spy_addr);
    c.kill(2);
    c.start_with(2, cfg2);
    for i in 1..=5 {
        c.publish(i, endpoint("net1", &format!("ep{i}"), i as u8));
    }
    let good_see_good =
        |c: &Cluster| (1..=4).all(|i| (1..=4).all(|o| c.sees(i, "net1", &format!("ep{o}"), o)));
    c.wait("nodes 1-4 see each other's endpoints", || good_see_good(&c));
    c.wait(
        "node 5's datagrams are refused for their unknown key",
        || c.g(1).stats().dropped_unknown_key > 0,
    );
    std::thread::sleep(Timings::fast().gossip_interval * 20);
    for i in 1..=4 {
        assert!(!c.sees(i, "net1", "ep5", 5), "node 5 injected into node{i}");
        assert!(c.g(i).members().iter().all(|m| m.node_id != "node5"));
    }
    assert_eq!(c.g(5).endpoints("net1").len(), 1, "node 5 read nothing");

    // Replays: what node 2 sent to the spy, sent to node 1 twice.
    let mut captured = Vec::new();
    let mut buf = [0u8; 2048];
    while captured.len() < 5 {
        if let Ok((n, _)) = spy.recv_from(&mut buf) {
            captured.push(buf[..n].to_vec());
        }
    }
    let before = c.g(1).stats();
    send_from(&c, 5, c.addr(1), &captured);
    send_from(&c, 5, c.addr(1), &captured);
    c.wait("every second copy is counted as a replay", || {
        c.g(1).stats().dropped_replay >= before.dropped_replay + captured.len() as u64
    });

    // Malformed: junk, truncated, a bad version, a flipped tag.
    let mut junk: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        vec![1; 30],
        vec![2; 200],
        (0..1400u32).map(|i| (i * 7) as u8).collect(),
    ];
    let mut flipped = captured[0].clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    junk.push(flipped);
    let before = c.g(1).stats();
    send_from(&c, 3, c.addr(1), &junk);
    c.wait("junk is counted", || {
        let s = c.g(1).stats();
        s.dropped_malformed + s.dropped_bad_auth + s.dropped_unknown_key
            >= before.dropped_malformed
                + before.dropped_bad_auth
                + before.dropped_unknown_key
                + junk.len() as u64
                - 1
    });
    // The flipped tag may be the datagram still in flight when the total above is reached.
    c.wait("the malformed and the forged datagrams are counted", || {
        let s = c.g(1).stats();
        s.dropped_malformed >= before.dropped_malformed + 3
            && s.dropped_bad_auth > before.dropped_bad_auth
    });

    // Rotation 1 -> 2 on nodes 1-4, watched on node 1: no entry may go away at any step.
    let mut sub = c.g(1).subscribe("net1");
    let k1 = key(1, 0x11);
    let k2 = key(2, 0x22);
    let steps = [
        Keyring {
            primary: k1.clone(),
            accepted: vec![k2.clone()],
        },
        Keyring {
            primary: k2.clone(),
            accepted: vec![k1.clone()],
        },
        Keyring::single(k2.clone()),
    ];
    for ring in steps {
        for i in 1..=4 {
            c.g(i).set_keyring(ring.clone()).unwrap();
            std::thread::sleep(Timings::fast().gossip_interval * 3);
        }
        std::thread::sleep(Timings::fast().gossip_interval * 10);
        assert!(
            good_see_good(&c),
            "an entry was lost at {ring:?}\n{}",
            c.describe()
        );
    }
    c.publish(4, endpoint("net1", "after-rotation", 44));
    c.wait("a new entry crosses under the new key", || {
        (1..=4).all(|i| c.sees(i, "net1", "after-rotation", 4))
    });
    let mut events = Vec::new();
    while let Some(e) = sub.try_recv() {
        events.push(e);
    }
    assert!(
        !events.iter().any(|e| matches!(e, Event::Removed(_))),
        "no entry flapped during rotation: {events:?}"
    );
    c.wait_converged_subset(&[1, 2, 3, 4]);
}

trait Subset {
    fn wait_converged_subset(&self, nodes: &[usize]);
}

impl Subset for Cluster {
    fn wait_converged_subset(&self, nodes: &[usize]) {
        self.wait("the subset sees itself alive", || {
            nodes.iter().all(|&i| {
                let m = self.g(i).members();
                nodes
                    .iter()
                    .all(|&o| m.iter().any(|x| x.node_id == format!("node{o}") && x.alive))
            })
        });
    }
}

/// A subscriber that falls far behind gets a fresh snapshot instead of the missed events.
#[test]
fn a_lagging_subscriber_gets_a_snapshot() {
    require_root!();
    let mut c = Cluster::new(1, 1, Timings::fast());
    c.start_all();
    let mut sub = c.g(1).subscribe("net1");
    assert_eq!(sub.try_recv(), Some(Event::Resync(vec![])));
    for k in 0..1500u32 {
        c.publish(1, endpoint_n("net1", &format!("e{k}"), k));
    }
    match sub.try_recv() {
        Some(Event::Resync(all)) => assert_eq!(all.len(), 1500),
        other => panic!("expected a resync, got {other:?}"),
    }
    c.withdraw(1, "net1", "e7");
    match sub.try_recv() {
        Some(Event::Removed(e)) => assert_eq!(e.endpoint.id, "e7"),
        other => panic!("expected the removal, got {other:?}"),
    }
    assert_eq!(sub.try_recv(), None);
    assert_eq!(c.g(1).endpoints("net1").len(), 1499);
}

/// A large message (a newcomer's first sync of 1,500 endpoints, more than a few datagrams even
/// compressed) goes over TCP 7946 and arrives whole; junk on the TCP port is dropped and
/// counted, and gossip goes on.
#[test]
fn large_messages_go_over_tcp_and_junk_there_is_dropped() {
    require_root!();
    let mut c = Cluster::new(3, 1, Timings::fast());
    c.start(1);
    c.start(2);
    let _sub2 = c.g(2).subscribe("big");
    const N: usize = 1500;
    for k in 0..N as u64 {
        // Ids that do not compress away.
        let id = format!("{:016x}", k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        c.publish(1, endpoint_n("big", &id, k as u32));
    }
    c.wait("node 2 sees them all", || {
        c.g(2).endpoints("big").len() == N
    });
    c.start(3);
    let _sub3 = c.g(3).subscribe("big");
    c.wait("the newcomer sees them all", || {
        c.g(3).endpoints("big").len() == N
    });
    let sent: u64 = (1..=3).map(|i| c.g(i).stats().streams_sent).sum();
    let got = c.g(3).stats().streams_received;
    assert!(
        sent > 0 && got > 0,
        "streams sent {sent}, received by node3 {got}"
    );

    // Junk on node 1's TCP port: not a gossip stream; a gossip stream with a forged frame.
    let before = c.g(1).stats().dropped_malformed;
    let to = c.addr(1);
    c.lab
        .node(2)
        .in_ns(move || {
            use std::io::Write;
            for junk in [
                b"GET / HTTP/1.0\r\n\r\n".to_vec(),
                [b"NAG1".as_slice(), &[0x1f, 0x12], &[0, 4], b"junk"].concat(),
            ] {
                let mut s = std::net::TcpStream::connect(to).unwrap();
                s.write_all(&junk).unwrap();
            }
        })
        .unwrap();
    c.wait("both dropped and counted", || {
        c.g(1).stats().dropped_malformed >= before + 2
    });
    c.publish(1, endpoint("big", "after-junk", 9));
    c.wait("gossip goes on", || c.sees(3, "big", "after-junk", 1));
}
