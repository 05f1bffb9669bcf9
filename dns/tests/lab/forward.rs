//! Forwarding to upstream resolvers inside the lab (dnsmasq on node2), from the node's
//! namespace (node1): order, failover, SERVFAIL, the shadowed upstream, the concurrency cap.

use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn unknown_names_go_to_the_upstreams_in_order() {
    need_root!();
    let e = env(|_| {});
    let t = &e.task;
    let d = dig(t, &["www.lab.test"]);
    assert_eq!(d.status, "NOERROR", "{}", d.raw);
    assert_eq!(d.data(), ["198.51.100.10"]);
    assert!(d.flags.contains(&"ra".to_string()));
    // Over TCP the forward goes over TCP.
    assert_eq!(dig(t, &["+tcp", "www.lab.test"]).data(), ["198.51.100.10"]);
    // The upstream's NXDOMAIN comes back as it is.
    let d = dig(t, &["nothere.lab.test"]);
    assert_eq!(d.status, "NXDOMAIN", "{}", d.raw);
    let s = e.resolver.stats();
    assert_eq!(s.forwarded, 3);
    assert_eq!(s.forward_answered, 3);
    assert_eq!(s.nxdomain, 1);

    // First upstream closed (port unreachable): the second answers, at once.
    e.resolver.set_upstreams(vec![sa(UP_CLOSED), sa(UP_A)]);
    let start = Instant::now();
    assert_eq!(dig(t, &["www.lab.test"]).data(), ["198.51.100.10"]);
    assert!(
        start.elapsed() < Duration::from_millis(600),
        "{:?}",
        start.elapsed()
    );
    // First upstream silent: the second answers after the first one's timeout (700 ms).
    e.resolver.set_upstreams(vec![sa(UP_SILENT), sa(UP_A)]);
    let before = e.resolver.stats();
    let start = Instant::now();
    assert_eq!(dig(t, &["www.lab.test"]).data(), ["198.51.100.10"]);
    assert!(
        start.elapsed() >= Duration::from_millis(650),
        "{:?}",
        start.elapsed()
    );
    let after = e.resolver.stats();
    assert_eq!(after.upstream_timeouts, before.upstream_timeouts + 1);

    // No upstream answers: SERVFAIL.
    e.resolver.set_upstreams(vec![sa(UP_CLOSED), sa(UP_SILENT)]);
    let d = dig(t, &["www.lab.test"]);
    assert_eq!(d.status, "SERVFAIL", "{}", d.raw);
    assert!(e.resolver.stats().servfail > after.servfail);
    // An upstream that REFUSES (dnsmasq has no upstream of its own for this name) is skipped:
    // here it is the only one, so SERVFAIL too.
    e.resolver.set_upstreams(vec![sa(UP_A)]);
    assert_eq!(dig(t, &["not-in-the-zone.example"]).status, "SERVFAIL");
    // No upstream at all: SERVFAIL, not a hang.
    e.resolver.set_upstreams(vec![]);
    assert_eq!(dig(t, &["www.lab.test"]).status, "SERVFAIL");
}

#[test]
fn an_upstream_inside_the_task_overlay_subnet_is_still_reached() {
    need_root!();
    let e = env(|c| c.upstreams = vec![sa(UP_SHADOWED)]);
    let t = &e.task;
    // From the task namespace itself 10.0.1.53 is on ovl0's subnet: unreachable.
    let direct = dig_at(t, "@10.0.1.53", &["+time=1", "www.lab.test"]);
    assert_eq!(direct.status, "TIMEOUT", "{}", direct.raw);
    // Through the embedded server the query leaves from node1's namespace and is answered.
    let d = dig(t, &["www.lab.test"]);
    assert_eq!(d.data(), ["198.51.100.20"], "{}", d.raw);
    assert_eq!(dig(t, &["+tcp", "www.lab.test"]).data(), ["198.51.100.20"]);
}

#[test]
fn forwards_beyond_the_cap_are_refused_and_counted() {
    need_root!();
    let e = env(|c| {
        c.upstreams = vec![sa(UP_SILENT)];
        c.upstream_timeout = Duration::from_secs(2);
        c.max_forwards = 8;
    });
    let client = client_udp(&e.task);
    for i in 0..40u16 {
        client
            .send(&query_bytes(1000 + i, &format!("q{i}.lab.test.")))
            .unwrap();
    }
    let mut refused = 0;
    let mut servfail = 0;
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused + servfail < 40 && Instant::now() < deadline {
        let Ok(n) = client.recv(&mut buf) else { break };
        match parse(&buf[..n]).metadata.response_code {
            hickory_proto::op::ResponseCode::Refused => refused += 1,
            hickory_proto::op::ResponseCode::ServFail => servfail += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((refused, servfail), (32, 8), "8 forwards in flight at most");
    let s = e.resolver.stats();
    assert_eq!(s.refused_cap, 32);
    assert_eq!(s.forwarded, 8);
    assert_eq!(s.upstream_timeouts, 8);
    // Once they finished, forwarding works again.
    e.resolver.set_upstreams(vec![sa(UP_A)]);
    assert_eq!(dig(&e.task, &["www.lab.test"]).data(), ["198.51.100.10"]);
}
