//! The store's ordering rules, on two stores exchanging effects by hand.

use super::*;

fn ep(id: &str, last: u8) -> Endpoint {
    Endpoint {
        id: id.into(),
        network: "net1".into(),
        ip: IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, last)),
        mac: [2, 0x42, 10, 0, 0, last],
        task: format!("task-{id}"),
        service: "web".into(),
        name: format!("web.{last}"),
        aliases: vec![],
        disabled: false,
    }
}

fn store(node: &str, linger_us: u64) -> Store {
    let addr = "192.0.2.1:7946".parse().unwrap();
    Store::new(node.into(), now_us(), addr, 60_000_000, linger_us)
}

/// Delivers what `eff` pushes to `to`: records, and the deltas when `deltas`.
fn deliver(eff: &Effects, to: &mut Store, deltas: bool) {
    let mut e = Effects::default();
    for job in &eff.pushes {
        for r in &job.records {
            to.merge_record(r.clone(), &mut e);
        }
        if let (Some(net), true) = (&job.net, deltas) {
            for d in &job.deltas {
                to.merge_delta(net, d, &mut e);
            }
        }
    }
}

fn ids(s: &Store) -> Vec<String> {
    let mut v: Vec<String> = s
        .endpoints("net1")
        .into_iter()
        .map(|e| e.endpoint.id)
        .collect();
    v.sort();
    v
}

/// The race a restart used to lose: a peer learns the released generation's record before
/// the re-published copy of an entry still running. The entry must not go from the peer;
/// the one not re-published goes at once, and the floor rises only after the linger time.
#[test]
fn a_peer_keeps_a_republished_entry_whatever_arrives_first() {
    let mut peer = store("n1", 1_000);
    peer.subscribe("net1");
    let mut old = store("n3", 1_000);
    let mut eff = old.publish(&ep("keep", 31));
    let e2 = old.publish(&ep("gone", 32));
    eff.pushes.extend(e2.pushes);
    let mut e = Effects::default();
    peer.merge_record(old.record().clone(), &mut e);
    deliver(&eff, &mut peer, true);
    assert_eq!(ids(&peer), ["gone", "keep"]);

    // A new generation of n3 adopts both (its record, then its part fetched from the peer).
    std::thread::sleep(std::time::Duration::from_millis(2));
    let mut new = store("n3", 1_000);
    let mut e = Effects::default();
    new.merge_record(old.record().clone(), &mut e);
    let part = peer.delta_for("net1", &Arc::from("n3"), 0).expect("part");
    new.merge_delta("net1", &part, &mut e);
    assert!(new.adopting());
    assert_eq!(ids(&new), ["gone", "keep"]);

    // It re-publishes "keep" (a new version) and releases; the peer gets only the records.
    let republished = new.publish(&ep("keep", 31));
    let released = new.release_adopted();
    let mut e = Effects::default();
    peer.merge_record(new.record().clone(), &mut e);
    deliver(&released, &mut peer, false);
    assert_eq!(
        ids(&peer),
        ["gone", "keep"],
        "the record alone removes nothing"
    );
    deliver(&released, &mut peer, true);
    assert_eq!(
        ids(&peer),
        ["keep"],
        "the one not re-published is withdrawn at once"
    );
    assert!(new.record().floor < new.generation, "the floor waits");

    // The re-published copy arrives, then the floor: "keep" stays.
    deliver(&republished, &mut peer, true);
    std::thread::sleep(std::time::Duration::from_millis(2));
    let raised = new.upkeep(false, u64::MAX);
    assert_eq!(new.record().floor, new.generation);
    deliver(&raised, &mut peer, true);
    assert_eq!(ids(&peer), ["keep"]);
    assert_eq!(ids(&new), ["keep"]);
}

/// A holder's whole table in pieces that arrive in any order, the `filled` mark first: the
/// table counts as fetched only once every piece is in and every node whose record says it
/// has entries there has a part (the executor acts on the table from then on).
#[test]
fn a_fill_counts_once_every_piece_and_owner_is_here() {
    let mut holder = store("h", 1_000);
    for i in 1..=30 {
        holder.publish(&ep(&format!("e{i:02}"), i));
    }
    let d = holder.delta_for("net1", &"h".into(), 0).unwrap();
    let max = d.max;
    let pieces = crate::sync::split_owner(d, 300);
    assert!(pieces.len() >= 3, "{} pieces", pieces.len());

    let mut fresh = store("n1", 1_000);
    fresh.subscribe("net1");
    let mut e = Effects::default();
    fresh.merge_record(holder.record().clone(), &mut e);
    // The mark first: nothing of h's part yet.
    fresh.fill("net1");
    assert!(!fresh.tables["net1"].synced);
    // The pieces last to first: each waits for the one before it.
    for (k, p) in pieces.iter().enumerate().rev() {
        fresh.merge_delta("net1", p, &mut e);
        fresh.settle_fill("net1");
        let t = &fresh.tables["net1"];
        assert_eq!(t.synced, k == 0, "piece {k} of {}", pieces.len());
    }
    assert_eq!(fresh.tables["net1"].owners[&Arc::<str>::from("h")].max, max);
    assert_eq!(ids(&fresh).len(), 30);
}

/// A node whose record says it has entries in the network, and no part of it arrived: the
/// fill waits (for the next fetch's answer, or the fetch timeout).
#[test]
fn a_fill_waits_for_an_owner_the_records_name() {
    let mut holder = store("h", 1_000);
    holder.publish(&ep("e1", 1));
    let mut absent = store("x", 1_000);
    absent.publish(&ep("x1", 9));
    let mut fresh = store("n1", 1_000);
    fresh.subscribe("net1");
    let mut e = Effects::default();
    fresh.merge_record(holder.record().clone(), &mut e);
    fresh.merge_record(absent.record().clone(), &mut e);
    let d = holder.delta_for("net1", &"h".into(), 0).unwrap();
    fresh.merge_delta("net1", &d, &mut e);
    fresh.fill("net1");
    assert!(!fresh.tables["net1"].synced, "x's entries are missing");
    let d = absent.delta_for("net1", &"x".into(), 0).unwrap();
    fresh.merge_delta("net1", &d, &mut e);
    fresh.settle_fill("net1");
    assert!(fresh.tables["net1"].synced);
}
