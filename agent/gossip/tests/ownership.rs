//! The rules of who owns an entry and when it goes, and per-network replication, in the
//! namespace lab. Conditions are awaited with generous timeouts; nothing asserts on timing.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::{Cluster, LONG, endpoint, is_root};
use gossip::{Event, Subscription, Timings};

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: the lab needs root");
            return;
        }
    };
}

fn drain(sub: &mut Subscription) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(e) = sub.try_recv() {
        out.push(e);
    }
    out
}

/// Drains `sub` once it has had its table's snapshot: a subscription made while the table was
/// still being fetched admits nothing before it (as the executor waits for it), so what the
/// test then drains is what follows. Returns what was drained.
fn drain_resynced(c: &Cluster, sub: &mut Subscription) -> Vec<Event> {
    let mut out = Vec::new();
    c.wait("the subscription's snapshot", || {
        out.extend(drain(sub));
        out.iter().any(|e| matches!(e, Event::Resync(_)))
    });
    out.extend(drain(sub));
    out
}

/// Collects `sub`'s events until one removes `id`, then whatever else is ready.
fn until_removed(c: &Cluster, sub: &mut Subscription, id: &str) -> Vec<Event> {
    let mut out = Vec::new();
    c.wait(&format!("the removal of {id} on the subscription"), || {
        out.extend(drain(sub));
        !removed(&out, id).is_empty()
    });
    out.extend(drain(sub));
    out
}

fn removed<'a>(events: &'a [Event], id: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| matches!(e, Event::Removed(x) if x.endpoint.id == id))
        .collect()
}

/// `forget` (the node was removed from the cluster) drops its entries, VTEP and membership at
/// once, and they do not come back while the forgotten node keeps gossiping.
#[test]
fn forget_removes_a_node_for_good() {
    require_root!();
    let mut c = Cluster::new(3, 1, Timings::fast());
    c.start_all();
    c.wait_converged();
    let mut sub = c.g(1).subscribe("net1");
    let _sub2 = c.g(2).subscribe("net1");
    c.rt.block_on(
        c.g(3)
            .publish_vtep(IpAddr::V4(Ipv4Addr::new(198, 18, 9, 3))),
    )
    .unwrap();
    c.publish(3, endpoint("net1", "ep3", 3));
    c.wait("node 1 sees node 3's endpoint and VTEP", || {
        c.sees(1, "net1", "ep3", 3) && c.g(1).vteps().contains_key("node3")
    });
    drain_resynced(&c, &mut sub);

    c.rt.block_on(c.g(1).forget("node3"));
    assert!(!c.sees(1, "net1", "ep3", 3));
    assert!(!c.g(1).vteps().contains_key("node3"));
    assert!(c.g(1).members().iter().all(|m| m.node_id != "node3"));
    let events = drain(&mut sub);
    assert_eq!(removed(&events, "ep3").len(), 1, "{events:?}");

    // Node 3 still runs and node 2 still has its entries: nothing of it comes back on node 1.
    c.publish(3, endpoint("net1", "ep3b", 33));
    c.wait("node 2 sees node 3's new endpoint", || {
        c.sees(2, "net1", "ep3b", 3)
    });
    std::thread::sleep(Timings::fast().gossip_interval * 20);
    assert!(!c.sees(1, "net1", "ep3", 3) && !c.sees(1, "net1", "ep3b", 3));
    assert!(c.g(1).members().iter().all(|m| m.node_id != "node3"));
    assert!(c.g(1).stats().dropped_forgotten > 0);
}

/// A graceful leave (`shutdown`) removes the node's entries and VTEP everywhere.
#[test]
fn graceful_leave_removes() {
    require_root!();
    let mut c = Cluster::new(3, 1, Timings::fast());
    c.start_all();
    c.wait_converged();
    let mut sub = c.g(1).subscribe("net1");
    c.rt.block_on(
        c.g(3)
            .publish_vtep(IpAddr::V4(Ipv4Addr::new(198, 18, 9, 3))),
    )
    .unwrap();
    c.publish(3, endpoint("net1", "ep3", 3));
    c.publish(2, endpoint("net1", "ep2", 2));
    c.wait("node 1 sees both", || {
        c.sees(1, "net1", "ep3", 3) && c.sees(1, "net1", "ep2", 2)
    });
    drain_resynced(&c, &mut sub);
    let g3 = c.take(3);
    c.rt.block_on(g3.shutdown()).unwrap();
    c.wait("node 3's endpoint and VTEP are gone on 1 and 2", || {
        (1..=2).all(|i| !c.sees(i, "net1", "ep3", 3) && !c.g(i).vteps().contains_key("node3"))
    });
    assert!(c.sees(1, "net1", "ep2", 2));
    let m = c.g(1).members();
    assert!(m.iter().any(|m| m.node_id == "node3" && !m.alive));
    let events = until_removed(&c, &mut sub, "ep3");
    assert_eq!(removed(&events, "ep3").len(), 1, "{events:?}");
}

/// Two owners publish the same IP: between alive owners the later publish wins; a dead owner's
/// entry loses to an alive owner's even if it is newer; the loser comes back when the winner
/// withdraws. Every node decides the same.
#[test]
fn a_dead_owners_entry_loses_to_an_alive_owners() {
    require_root!();
    let mut c = Cluster::new(4, 1, Timings::fast());
    c.start_all();
    c.wait_converged();
    let subs = c.subscribe_all("net1");
    // Same IP (10.0.0.9), two owners; node 2 first, node 3 later.
    c.publish(2, endpoint("net1", "ep2", 9));
    c.wait("everyone sees node 2's", || {
        (1..=4).all(|i| c.sees(i, "net1", "ep2", 2))
    });
    c.publish(3, endpoint("net1", "ep3", 9));
    c.wait("the later publish (node 3's) wins everywhere", || {
        (1..=4).all(|i| {
            let e = c.g(i).endpoints("net1");
            e.len() == 1 && e[0].owner == "node3"
        })
    });
    // Node 3's agent dies: its entry is flagged and loses to node 2's alive one.
    c.kill(3);
    c.wait("the alive owner's entry wins on the survivors", || {
        [1, 2, 4].iter().all(|&i| {
            let e = c.g(i).endpoints("net1");
            e.len() == 1 && e[0].owner == "node2" && e[0].owner_alive
        })
    });
    // Node 2 withdraws: the dead owner's entry is the only one left, visible and flagged.
    assert!(c.withdraw(2, "net1", "ep2"));
    c.wait("node 3's entry is back, flagged dead", || {
        [1, 2, 4].iter().all(|&i| {
            c.entry(i, "net1", "ep3")
                .is_some_and(|e| !e.owner_alive && e.owner == "node3")
        })
    });
    drop(subs);
}

/// kill -9 of an owner's agent and a restart with the same node id: the new generation adopts
/// its entries; re-publishing them makes no Removed event anywhere; what it does not
/// re-publish goes when it releases the adopted entries.
#[test]
fn a_restarted_owner_does_not_flap_its_endpoints() {
    require_root!();
    let mut c = Cluster::new(3, 1, Timings::fast());
    c.start_all();
    c.wait_converged();
    let mut sub = c.g(1).subscribe("net1");
    c.publish(3, endpoint("net1", "keep", 31));
    c.publish(3, endpoint("net1", "gone", 32));
    c.wait("node 1 sees both", || {
        c.sees(1, "net1", "keep", 3) && c.sees(1, "net1", "gone", 3)
    });
    let old = c.g(3).generation();
    c.kill(3);
    c.wait("node 1 flags them dead", || {
        c.entry(1, "net1", "keep").is_some_and(|e| !e.owner_alive)
    });
    c.start(3);
    assert!(c.g(3).generation() > old);
    assert!(c.g(3).adopting());
    c.wait("the new generation adopted its entries", || {
        c.sees(3, "net1", "keep", 3) && c.sees(3, "net1", "gone", 3)
    });
    // Its agent re-publishes what still runs.
    c.publish(3, endpoint("net1", "keep", 31));
    c.wait("node 1 sees node 3 alive again", || {
        c.entry(1, "net1", "keep").is_some_and(|e| e.owner_alive)
    });
    std::thread::sleep(Timings::fast().gossip_interval * 10);
    let events = drain(&mut sub);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Removed(_))),
        "nothing was removed across the restart: {events:?}"
    );
    assert!(
        c.sees(1, "net1", "gone", 3),
        "not re-published yet, still kept"
    );
    // The agent is done re-publishing: the rest goes, everywhere.
    c.rt.block_on(c.g(3).release_adopted());
    assert!(!c.g(3).adopting());
    c.wait("the entry not re-published is gone", || {
        [1, 3]
            .iter()
            .all(|&i| !c.sees(i, "net1", "gone", 3) && c.sees(i, "net1", "keep", 3))
    });
    let events = drain(&mut sub);
    assert_eq!(removed(&events, "gone").len(), 1, "{events:?}");
    assert!(removed(&events, "keep").is_empty(), "{events:?}");
}

/// A node that never subscribed to (or published in) network X receives none of X's entries;
/// subscribing gets it a Resync with all of them; unsubscribing stops the updates.
#[test]
fn tables_are_replicated_only_where_held() {
    require_root!();
    let mut c = Cluster::new(4, 1, Timings::fast());
    c.start_all();
    c.wait_converged();
    const N: usize = 30;
    for k in 0..N {
        let owner = 1 + k % 3;
        c.publish(owner, endpoint("x", &format!("x{k}"), k as u8 + 1));
    }
    c.publish(1, endpoint("other", "o1", 200));
    c.wait("nodes 1-3 see all of X", || {
        (1..=3).all(|i| c.g(i).endpoints("x").len() == N)
    });
    std::thread::sleep(Timings::fast().gossip_interval * 20);
    let outsider = c.g(4);
    assert!(outsider.endpoints("x").is_empty());
    assert!(!outsider.networks().contains(&"x".to_string()));
    let ns = outsider.network_stats("x");
    assert!(!ns.held);
    assert_eq!(ns.items_received, 0, "{ns:?}");
    assert_eq!(outsider.stats().items_unwanted, 0);
    assert!(
        outsider.stats().bytes_received > 0,
        "it does gossip (membership, records)"
    );

    // Subscribing: the first event is the whole table.
    let mut sub = outsider.subscribe("x");
    let first =
        c.rt.block_on(async { tokio::time::timeout(LONG, sub.recv()).await.expect("event") });
    match first {
        Some(Event::Resync(all)) => assert_eq!(all.len(), N),
        other => panic!("expected a resync of {N}, got {other:?}"),
    }
    c.publish(2, endpoint("x", "late", 250));
    let got =
        c.rt.block_on(async { tokio::time::timeout(LONG, sub.recv()).await.expect("event") });
    assert!(
        matches!(got, Some(Event::Added(ref e)) if e.endpoint.id == "late"),
        "{got:?}"
    );
    assert!(c.g(4).network_stats("x").held);

    // Unsubscribing (dropping the last subscription): the table goes, updates stop.
    drop(sub);
    c.wait("node 4 no longer holds X", || {
        !c.g(4).networks().contains(&"x".to_string())
    });
    // Let the others learn it.
    std::thread::sleep(Timings::fast().gossip_interval * 10);
    let before = c.g(4).stats().items_unwanted;
    for k in 0..10 {
        c.publish(3, endpoint("x", &format!("after{k}"), 100 + k));
    }
    c.wait("nodes 1-3 see the new ones", || {
        (1..=3).all(|i| c.g(i).endpoints("x").len() == N + 11)
    });
    std::thread::sleep(Timings::fast().gossip_interval * 10);
    assert_eq!(
        c.g(4).stats().items_unwanted,
        before,
        "no update reached node 4"
    );
    assert!(c.g(4).endpoints("x").is_empty());

    // An explicit unsubscribe ends a subscription at once.
    let mut sub = c.g(4).subscribe("x");
    c.rt.block_on(c.g(4).unsubscribe("x"));
    let end = c.rt.block_on(async {
        tokio::time::timeout(LONG, async {
            loop {
                match sub.recv().await {
                    Some(Event::Resync(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the subscription ends")
    });
    assert_eq!(end, None);
    assert!(!c.g(4).networks().contains(&"x".to_string()));
    let _ = Duration::ZERO;
}
