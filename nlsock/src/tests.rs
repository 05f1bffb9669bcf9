use super::*;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use std::time::Duration;

fn nlmsg(mtype: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len();
    let mut m = Vec::new();
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&mtype.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

#[test]
fn acks_and_errors_with_extended_messages() {
    assert!(parse_ack(&0i32.to_ne_bytes(), true).is_ok());
    // -EEXIST, the echoed (capped) header, then NLMSGERR_ATTR_MSG.
    let mut p = (-libc::EEXIST).to_ne_bytes().to_vec();
    p.extend_from_slice(&nlmsg(16, 7, &[])[..16]);
    let text = b"A VXLAN device with the specified VNI already exists\0";
    p.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
    p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
    p.extend_from_slice(text);
    let e = parse_ack(&p, true).unwrap_err();
    assert_eq!(e.errno, libc::EEXIST);
    assert_eq!(
        e.msg.as_deref(),
        Some("A VXLAN device with the specified VNI already exists")
    );
    assert!(e.to_string().contains("VNI already exists"), "{e}");
    // Uncapped: the whole request is echoed before the attributes.
    let mut p = (-libc::ESRCH).to_ne_bytes().to_vec();
    p.extend_from_slice(&nlmsg(30, 7, &[1, 2, 3, 4, 5]));
    let text = b"no such service\0";
    p.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
    p.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
    p.extend_from_slice(text);
    let e = parse_ack(&p, false).unwrap_err();
    assert_eq!(
        (e.errno, e.msg.as_deref()),
        (libc::ESRCH, Some("no such service"))
    );
    // Short or garbled input is an error, never a panic.
    assert!(parse_ack(&[1, 2], true).is_err());
    let mut bad = (-libc::EINVAL).to_ne_bytes().to_vec();
    bad.extend_from_slice(&[0xff; 40]);
    assert_eq!(parse_ack(&bad, false).unwrap_err().errno, libc::EINVAL);
    assert_eq!(
        parse_ack(&i32::MIN.to_ne_bytes(), true).unwrap_err().errno,
        libc::EIO
    );
}

#[test]
fn datagrams_split_into_messages() {
    let mut buf = nlmsg(NLMSG_ERROR, 1, &0i32.to_ne_bytes());
    buf.extend(nlmsg(NLMSG_DONE, 2, &[0, 0, 0]));
    let msgs: Vec<_> = split(&buf).map(|(t, s, p)| (t, s, p.len())).collect();
    assert_eq!(msgs, vec![(NLMSG_ERROR, 1, 4), (NLMSG_DONE, 2, 3)]);
    // Truncated or nonsense lengths end the iteration.
    assert_eq!(split(&buf[..18]).count(), 0);
    assert_eq!(split(&buf[..24]).count(), 1);
    let mut zero = buf.clone();
    zero[0..4].copy_from_slice(&0u32.to_ne_bytes());
    assert_eq!(split(&zero).count(), 0);
}

/// A namespace of its own, deleted on drop.
struct Ns(Option<NetNs>);

impl Drop for Ns {
    fn drop(&mut self) {
        if let Some(ns) = self.0.take() {
            let _ = ns.delete();
        }
    }
}

fn bridge(name: &str) -> RouteNetlinkMessage {
    use netlink_packet_route::link::{InfoKind, LinkInfo};
    let mut m = LinkMessage::default();
    m.attributes = vec![
        LinkAttribute::IfName(name.into()),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
    ];
    RouteNetlinkMessage::NewLink(m)
}

fn names(links: Vec<Result<RouteNetlinkMessage, String>>) -> Vec<String> {
    links
        .into_iter()
        .filter_map(|l| match l {
            Ok(RouteNetlinkMessage::NewLink(m)) => m.attributes.into_iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n),
                _ => None,
            }),
            _ => None,
        })
        .collect()
}

/// The kernel's answers through a real socket in a namespace of the test's own: pipelined
/// requests each get their own answer in order, a refusal carries the kernel's errno, a dump
/// lists what the requests made, a get answers one object or the kernel's error.
#[test]
fn requests_dumps_and_gets_in_a_namespace() {
    if !nix_root() {
        eprintln!("skipped: needs root (a network namespace)");
        return;
    }
    let ns = Ns(Some(
        NetNs::create(&format!("nlsock-test-{}", std::process::id())).unwrap(),
    ));
    let mut s = Sock::open(ns.0.as_ref().unwrap(), NETLINK_ROUTE).unwrap();
    assert_eq!(s.ns(), ns.0.as_ref().unwrap().name());
    let excl = NLM_F_CREATE | NLM_F_EXCL;
    // More than one batch of requests, one of them refused: the deletion of a link that
    // does not exist.
    let mut missing = LinkMessage::default();
    missing.header.index = 100_000;
    let mut reqs: Vec<_> = (0..100).map(|i| (bridge(&format!("d{i}")), excl)).collect();
    reqs.insert(70, (RouteNetlinkMessage::DelLink(missing.clone()), 0));
    let res = s.batch(reqs).unwrap();
    assert_eq!(res.len(), 101);
    assert_eq!(res[70].as_ref().unwrap_err().errno, libc::ENODEV);
    assert_eq!(res.iter().filter(|r| r.is_ok()).count(), 100);
    assert!(s.request(bridge("d0"), excl).unwrap().is_err());
    assert_eq!(
        s.request(RouteNetlinkMessage::DelLink(missing), 0)
            .unwrap()
            .unwrap_err()
            .errno,
        libc::ENODEV
    );
    let links = s
        .dump::<_, RouteNetlinkMessage>(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            "list links",
        )
        .unwrap();
    let mut got = names(links);
    got.sort();
    assert_eq!(got.len(), 101, "{got:?}");
    assert!(got.contains(&"lo".to_string()) && got.contains(&"d99".to_string()));
    // lo is index 1 in a new namespace; no link has index 100,000.
    let mut m = LinkMessage::default();
    m.header.index = 1;
    let lo = s
        .get::<_, RouteNetlinkMessage>(RouteNetlinkMessage::GetLink(m.clone()), "get lo")
        .unwrap()
        .unwrap();
    assert_eq!(names(vec![Ok(lo)]), vec!["lo".to_string()]);
    m.header.index = 100_000;
    let none = s
        .get::<_, RouteNetlinkMessage>(RouteNetlinkMessage::GetLink(m), "get a missing link")
        .unwrap();
    assert_eq!(none.unwrap_err().errno, libc::ENODEV);
}

fn nix_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Notifications: an address added inside the namespace wakes a subscriber there (once: the
/// queue is read out), one added in another namespace does not, and a quiet wait says so.
#[test]
fn address_notifications_of_one_namespace() {
    if !nix_root() {
        eprintln!("skipped: needs root (a network namespace)");
        return;
    }
    let pid = std::process::id();
    let ns = Ns(Some(NetNs::create(&format!("nlsock-ev-{pid}")).unwrap()));
    let other = Ns(Some(NetNs::create(&format!("nlsock-ev2-{pid}")).unwrap()));
    let (ns_ref, other_ref) = (ns.0.as_ref().unwrap(), other.0.as_ref().unwrap());
    let ip = |n: &NetNs, args: &str| {
        let args: Vec<&str> = args.split(' ').collect();
        let r = n.run_program("ip", &args, None).unwrap();
        assert!(r.ok, "ip {args:?}: {}", r.stderr);
    };
    for n in [ns_ref, other_ref] {
        ip(n, "link add b0 type bridge");
        ip(n, "link set b0 up");
    }
    let mut ev = Events::open(ns_ref, NETLINK_ROUTE, RTMGRP_IPV4_IFADDR).unwrap();
    let quiet = Duration::from_millis(200);
    assert!(!ev.wait(quiet).unwrap(), "nothing changed yet");
    ip(other_ref, "addr add 192.0.2.1/24 dev b0");
    assert!(!ev.wait(quiet).unwrap(), "another namespace's address");
    ip(ns_ref, "addr add 192.0.2.1/24 dev b0");
    ip(ns_ref, "addr add 192.0.2.2/24 dev b0");
    assert!(ev.wait(Duration::from_secs(5)).unwrap(), "an address added");
    assert!(!ev.wait(quiet).unwrap(), "both notifications read at once");
    ip(ns_ref, "addr del 192.0.2.2/24 dev b0");
    assert!(
        ev.wait(Duration::from_secs(5)).unwrap(),
        "an address removed"
    );
}
