//! Names the resolver answers itself, asked with dig from inside a task namespace.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

use crate::common::*;

#[test]
fn local_names_from_a_task_namespace() {
    need_root!();
    let e = env(|_| {});
    let t = &e.task;

    // SERVICE -> VIP, TTL 600, authoritative, recursion available.
    let d = dig(t, &["web"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.data(), ["10.0.1.2"]);
    assert_eq!(d.answers[0].ttl, 600);
    assert!(d.flags.contains(&"ra".to_string()), "RA: {:?}", d.flags);
    assert!(d.flags.contains(&"aa".to_string()), "AA: {:?}", d.flags);
    // The alias, the qualified name, upper case and a trailing dot.
    assert_eq!(dig(t, &["www"]).data(), ["10.0.1.2"]);
    assert_eq!(dig(t, &["WEB.Front."]).data(), ["10.0.1.2"]);

    // tasks.SERVICE: exactly the running tasks, TTL 0; tasks.ALIAS too.
    let d = dig(t, &["tasks.web"]);
    assert_eq!(d.sorted(), ["10.0.1.11", "10.0.1.12", "10.0.1.13"]);
    assert!(d.answers.iter().all(|a| a.ttl == 0));
    assert_eq!(
        dig(t, &["tasks.www"]).sorted(),
        ["10.0.1.11", "10.0.1.12", "10.0.1.13"]
    );

    // Task names.
    assert_eq!(dig(t, &["web.2.w2"]).data(), ["10.0.1.12"]);
    assert_eq!(dig(t, &["web.2"]).data(), ["10.0.1.12"]);
    assert_eq!(dig(t, &["web.3.w3.front"]).data(), ["10.0.1.13"]);

    // dnsrr: every task address, in an order that varies between queries.
    let mut orders = BTreeSet::new();
    for _ in 0..12 {
        let d = dig(t, &["rr"]);
        assert_eq!(d.answers.len(), 6, "{}", d.raw);
        assert!(d.answers.iter().all(|a| a.ttl == 0));
        orders.insert(d.data());
    }
    assert!(orders.len() > 3, "dnsrr order barely varies: {orders:?}");

    // PTR for a task address and for a VIP.
    let d = dig(t, &["-x", "10.0.1.12"]);
    assert_eq!(d.data(), ["web.2.w2.front."]);
    assert_eq!(d.answers[0].ttl, 0);
    let d = dig(t, &["-x", "10.0.1.2"]);
    assert_eq!(d.data(), ["web.front."]);
    assert_eq!(d.answers[0].ttl, 600);

    // A known name asked for a type it has no record of: NOERROR, no answer, not forwarded.
    let before = e.resolver.stats();
    for qtype in ["AAAA", "MX", "TXT"] {
        let d = dig(t, &["web", qtype]);
        assert_eq!(d.status, "NOERROR", "{qtype}: {}", d.raw);
        assert!(d.answers.is_empty(), "{qtype}: {}", d.raw);
    }
    let after = e.resolver.stats();
    assert_eq!(after.nodata - before.nodata, 3);
    assert_eq!(
        after.forwarded, before.forwarded,
        "NODATA must not be forwarded"
    );

    // A name of a network the task is not on is not answered locally: it is forwarded, and
    // the upstream (which happens to know an "api") answers with its own address.
    let d = dig(t, &["api"]);
    assert_eq!(d.data(), ["198.51.100.66"], "{}", d.raw);
    assert_eq!(e.resolver.stats().forwarded, after.forwarded + 1);
    let d = dig(t, &["api.back"]);
    assert_ne!(d.data(), ["10.0.2.2"], "n2 is not in the scope: {}", d.raw);
    let d = dig(t, &["-x", "10.0.2.10"]);
    assert!(
        d.data().is_empty(),
        "PTR of a network not in scope: {}",
        d.raw
    );

    // set_scope: the task is now on n2 as well.
    e.listener.set_scope(vec!["n1".into(), "n2".into()]);
    assert_eq!(dig(t, &["api"]).data(), ["10.0.2.2"]);
    assert_eq!(dig(t, &["-x", "10.0.2.10"]).data(), ["api.1.a1.back."]);
    e.listener.set_scope(vec!["n1".into()]);
    assert_eq!(dig(t, &["api"]).data(), ["198.51.100.66"]);

    // TCP answers the same.
    let d = dig(t, &["+tcp", "tasks.web"]);
    assert_eq!(d.sorted(), ["10.0.1.11", "10.0.1.12", "10.0.1.13"]);
    assert!(e.resolver.stats().queries_tcp >= 1);
}

#[test]
fn deltas_show_at_once_and_big_answers_truncate_to_tcp() {
    need_root!();
    let e = env(|_| {});
    let t = &e.task;
    // Scale web 3 -> 5 -> 1: the very next query sees it.
    e.resolver.apply([
        task("n1", "w4", "s-web", "10.0.1.14", "web.4.w4"),
        task("n1", "w5", "s-web", "10.0.1.15", "web.5.w5"),
    ]);
    assert_eq!(dig(t, &["tasks.web"]).answers.len(), 5);
    e.resolver.apply((2..=5).map(|i| dns::Change::RemoveTask {
        network: "n1".into(),
        id: format!("w{i}"),
    }));
    assert_eq!(dig(t, &["tasks.web"]).data(), ["10.0.1.11"]);
    let forwarded = e.resolver.stats().forwarded;
    let d = dig(t, &["web.2"]);
    assert!(
        d.answers.is_empty(),
        "a stopped task disappears at once: {}",
        d.raw
    );
    assert_eq!(
        e.resolver.stats().forwarded,
        forwarded + 1,
        "web.2 is no longer ours"
    );

    // 150 tasks: too big for UDP. Without EDNS the answer is cut to 512 bytes with TC set;
    // dig then retries over TCP by itself and gets all of them.
    e.resolver.apply((0..150).map(|i| {
        task(
            "n1",
            &format!("b{i}"),
            "s-big",
            &format!("10.0.3.{i}"),
            &format!("big.{i}.b{i}"),
        )
    }));
    e.resolver.apply([svc("n1", "s-big", "big", None, &[])]);
    let d = dig(t, &["+noedns", "+ignore", "big"]);
    assert!(d.flags.contains(&"tc".to_string()), "TC: {}", d.raw);
    assert!(d.answers.len() < 150 && !d.answers.is_empty());
    let d = dig(t, &["+noedns", "big"]);
    assert_eq!(d.answers.len(), 150, "dig's TCP retry gets everything");
    assert!(e.resolver.stats().truncated >= 2);

    // What the node serves, for netctl.
    let list = e.resolver.records("front");
    assert!(
        list.iter().any(|r| r.to_string() == "web 600 A 10.0.1.2"),
        "{list:?}"
    );
}

#[test]
fn serve_picks_up_queries_queued_before_it_started() {
    need_root!();
    let lab = lab::Lab::new(1).unwrap();
    let task = task_ns(&lab, "queued");
    let resolver = dns::Resolver::new(dns::Config::default()).unwrap();
    resolver.apply(sample());
    let (udp, tcp) = dns::bind_in(&task).unwrap();
    // The queries arrive while nobody serves the sockets (as during an agent restart).
    let client = client_udp(&task);
    client.send(&query_bytes(0x0101, "web.")).unwrap();
    client.send(&query_bytes(0x0202, "tasks.web.")).unwrap();
    let mut conn = client_tcp(&task);
    let q = query_bytes(0x0303, "web.2.");
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend(q);
    conn.write_all(&framed).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let rt = runtime();
    let _listener = {
        let _g = rt.enter();
        resolver.serve(udp, tcp, vec!["n1".into()]).unwrap()
    };
    let mut buf = [0u8; 1500];
    let mut got = Vec::new();
    for _ in 0..2 {
        let n = client
            .recv(&mut buf)
            .expect("a queued UDP query is answered");
        let m = parse(&buf[..n]);
        got.push((m.metadata.id, m.answers.len()));
    }
    got.sort();
    assert_eq!(got, [(0x0101, 1), (0x0202, 3)]);
    let mut len = [0u8; 2];
    conn.read_exact(&mut len)
        .expect("the queued TCP query is answered");
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    conn.read_exact(&mut body).unwrap();
    let m = parse(&body);
    assert_eq!(m.metadata.id, 0x0303);
    assert_eq!(m.answers.len(), 1);
}

#[test]
fn listener_stops_when_dropped() {
    need_root!();
    let lab = lab::Lab::new(1).unwrap();
    let task = task_ns(&lab, "stop");
    let resolver = dns::Resolver::new(dns::Config::default()).unwrap();
    resolver.apply(sample());
    let rt = runtime();
    let (udp, tcp) = dns::bind_in(&task).unwrap();
    let listener = {
        let _g = rt.enter();
        resolver.serve(udp, tcp, vec!["n1".into()]).unwrap()
    };
    assert_eq!(dig(&task, &["web"]).data(), ["10.0.1.2"]);
    listener.stop();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(dig(&task, &["web"]).status, "TIMEOUT");
    // The address is free again: a new listener can take over.
    let (udp, tcp) = dns::bind_in(&task).unwrap();
    let _again = {
        let _g = rt.enter();
        resolver.serve(udp, tcp, vec!["n1".into()]).unwrap()
    };
    assert_eq!(dig(&task, &["web"]).data(), ["10.0.1.2"]);
    // serve outside a runtime is an error, not a panic.
    let (udp, tcp) = {
        drop(_again);
        std::thread::sleep(Duration::from_millis(100));
        dns::bind_in(&task).unwrap()
    };
    assert!(resolver.serve(udp, tcp, vec![]).is_err());
}
