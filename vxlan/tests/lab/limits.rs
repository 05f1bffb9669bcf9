//! A network's bridge on a node takes BRIDGE_MAX_PORTS ports, one of them vxlan0: the endpoint
//! after the last that fits is refused with a typed error naming the limit, and the endpoints
//! already there keep working.

use std::net::Ipv4Addr;

use crate::common::*;
use lab::Lab;
use netns::NetNs;
use vxlan::{BRIDGE_MAX_PORTS, Error};

const NET: &str = "limitsnet0000000000000001";

#[test]
fn a_full_bridge_refuses_the_next_endpoint_by_name() {
    let lab = Lab::new(1).unwrap();
    let mut dp = dataplane(&lab, 1, vxlan::DEFAULT_PORT);
    let net = network(NET, 4500, "10.60.0.0/20");
    dp.ensure_network(&net).unwrap();
    let addr = |i: usize| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 60, 0, 10)) + i as u32);
    let fits = BRIDGE_MAX_PORTS - 1;
    let mut tasks = Vec::with_capacity(fits + 1);
    for i in 0..=fits {
        let ns = NetNs::create(&format!("{}-t-l{i}", lab.prefix())).unwrap();
        let r = dp.ensure_endpoint(&endpoint(NET, ns.path(), "eth0", addr(i)));
        tasks.push(ns);
        if i < fits {
            r.unwrap_or_else(|e| panic!("endpoint {i} of {fits}: {e}"));
            continue;
        }
        let err = r.expect_err("one endpoint more than the bridge takes");
        assert!(
            matches!(&err, Error::BridgeFull { network } if network == NET),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("1023") && msg.contains(NET), "{msg}");
    }
    // Nothing half made in the refused task, and the first and the last that fit reach each
    // other over the full bridge.
    let last = tasks.last().unwrap();
    assert!(
        !ip(last, &["-o", "link", "show"]).contains("eth0"),
        "the refused task has no interface"
    );
    assert!(
        ping(&tasks[0], addr(fits - 1)),
        "the first reaches the last"
    );
    assert!(
        ping(&tasks[fits - 1], addr(0)),
        "the last reaches the first"
    );
}
