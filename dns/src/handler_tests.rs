//! Unit tests of message handling: answers, NODATA, forwarding decisions, truncation, and every
//! kind of bad input (counted, never a panic).

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::RwLock;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};

use super::*;
use crate::records::{Change, Records};
use crate::stats::{Counters, Stats};

fn records() -> RwLock<Records> {
    let mut r = Records::new();
    let mut changes = vec![
        Change::PutNetwork {
            id: "n1".into(),
            name: "front".into(),
        },
        Change::PutService {
            network: "n1".into(),
            id: "s-web".into(),
            name: "web".into(),
            vip: Some("10.0.1.2".parse().unwrap()),
            aliases: vec![],
        },
        Change::PutTask {
            network: "n1".into(),
            id: "t1".into(),
            service: "s-web".into(),
            addr: "10.0.1.10".parse().unwrap(),
            name: "web.1.t1".into(),
            aliases: vec![],
        },
        Change::PutService {
            network: "n1".into(),
            id: "s-big".into(),
            name: "big".into(),
            vip: None,
            aliases: vec![],
        },
    ];
    for i in 0..100u32 {
        changes.push(Change::PutTask {
            network: "n1".into(),
            id: format!("b{i}"),
            service: "s-big".into(),
            addr: IpAddr::from([10, 0, 2, i as u8]),
            name: format!("big.{i}.b{i}"),
            aliases: vec![],
        });
    }
    r.apply(changes);
    RwLock::new(r)
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    m
}

fn with_edns(mut m: Message, size: u16) -> Message {
    let mut e = Edns::new();
    e.set_max_payload(size);
    m.set_edns(e);
    m
}

fn run(bytes: &[u8], proto: Proto) -> (Outcome, Stats) {
    let c = Counters::default();
    let r = records();
    let out = handle(bytes, proto, &["n1"], &r, &c);
    (out, c.snapshot())
}

fn reply(bytes: &[u8], proto: Proto) -> (Message, Stats, usize) {
    match run(bytes, proto) {
        (Outcome::Reply(b), s) => (Message::from_vec(&b).expect("answer parses"), s, b.len()),
        (other, _) => panic!("expected a reply, got {other:?}"),
    }
}

fn ask(m: &Message) -> (Message, Stats) {
    let (m, s, _) = reply(&m.to_vec().unwrap(), Proto::Udp);
    (m, s)
}

#[test]
fn a_for_a_vip_service() {
    let (m, s) = ask(&query("WEB.", RecordType::A));
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.recursion_available, "RA set");
    assert!(m.metadata.recursion_desired, "RD copied");
    assert!(m.metadata.authoritative);
    assert_eq!(m.queries.len(), 1);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].ttl, 600);
    assert_eq!(m.answers[0].data, RData::A(A("10.0.1.2".parse().unwrap())));
    assert_eq!(m.answers[0].name, Name::from_str("WEB.").unwrap());
    assert_eq!(s.local, 1);
    assert!(m.edns.is_none(), "no OPT when the query had none");
}

#[test]
fn known_name_other_types_are_nodata() {
    for qtype in [
        RecordType::AAAA,
        RecordType::MX,
        RecordType::TXT,
        RecordType::SRV,
        RecordType::PTR,
    ] {
        let (m, s) = ask(&query("web.", qtype));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{qtype}");
        assert!(m.answers.is_empty(), "{qtype}");
        assert_eq!(s.nodata, 1, "{qtype}");
        assert_eq!(s.forwarded, 0);
    }
    let (m, _) = ask(&query("tasks.web.front.", RecordType::ANY));
    assert_eq!(m.answers.len(), 1);
}

#[test]
fn unknown_names_are_forwarded() {
    for (name, qtype) in [
        ("example.com.", RecordType::A),
        ("nothere.", RecordType::AAAA),
        ("99.0.0.10.in-addr.arpa.", RecordType::PTR),
        ("10.in-addr.arpa.", RecordType::PTR),
        ("web\\.x.", RecordType::A),
        (".", RecordType::NS),
    ] {
        let bytes = query(name, qtype).to_vec().unwrap();
        match run(&bytes, Proto::Udp).0 {
            Outcome::Forward(req) => {
                assert_eq!(req.metadata.id, 0x1234);
                assert_eq!(req.query.query_type(), qtype);
            }
            other => panic!("{name}: expected a forward, got {other:?}"),
        }
    }
}

#[test]
fn ptr_for_tasks_and_vips() {
    let (m, s) = ask(&query("10.1.0.10.in-addr.arpa.", RecordType::PTR));
    assert_eq!(s.local, 1);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].ttl, 0);
    assert_eq!(
        m.answers[0].data,
        RData::PTR(PTR(Name::from_str("web.1.t1.front.").unwrap()))
    );
    let (m, _) = ask(&query("2.1.0.10.IN-ADDR.ARPA.", RecordType::PTR));
    assert_eq!(m.answers[0].ttl, 600);
    assert_eq!(
        m.answers[0].data,
        RData::PTR(PTR(Name::from_str("web.front.").unwrap()))
    );
}

#[test]
fn truncation_follows_the_client_size() {
    // 100 task addresses: 12 + 8 (question) + 100 * 16 bytes > 512.
    let (m, s, len) = reply(&query("big.", RecordType::A).to_vec().unwrap(), Proto::Udp);
    assert!(len <= 512, "{len}");
    assert!(m.metadata.truncation, "TC set");
    assert!(!m.answers.is_empty() && m.answers.len() < 100);
    assert_eq!(s.truncated, 1);
    let q = with_edns(query("big.", RecordType::A), 1232);
    let (m, _, len) = reply(&q.to_vec().unwrap(), Proto::Udp);
    assert!(len <= 1232, "{len}");
    assert!(m.metadata.truncation);
    assert!(m.edns.is_some(), "OPT answered to OPT");
    let q = with_edns(query("big.", RecordType::A), 4096);
    let (m, s, _) = reply(&q.to_vec().unwrap(), Proto::Udp);
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 100);
    assert_eq!(s.truncated, 0);
    let (m, _, _) = reply(&query("big.", RecordType::A).to_vec().unwrap(), Proto::Tcp);
    assert!(!m.metadata.truncation, "TCP takes 64 KiB");
    assert_eq!(m.answers.len(), 100);
    // A tiny EDNS size counts as 512.
    let q = with_edns(query("big.", RecordType::A), 100);
    let (_, _, len) = reply(&q.to_vec().unwrap(), Proto::Udp);
    assert!(len > 400 && len <= 512, "{len}");
}

fn raw_header(id: u16, flags: u16, qd: u16, an: u16, ns: u16, ar: u16) -> Vec<u8> {
    [id, flags, qd, an, ns, ar]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

/// `web.` A IN, encoded by hand.
fn raw_question() -> Vec<u8> {
    vec![3, b'w', b'e', b'b', 0, 0, 1, 0, 1]
}

fn code_of(bytes: &[u8]) -> (ResponseCode, Stats) {
    let (m, s, _) = reply(bytes, Proto::Udp);
    (m.metadata.response_code, s)
}

#[test]
fn short_messages_and_responses_are_dropped_and_counted() {
    for len in 0..HEADER_LEN {
        let (out, s) = run(&vec![0xab; len], Proto::Udp);
        assert!(matches!(out, Outcome::Drop), "{len} bytes");
        assert_eq!((s.malformed, s.dropped_short), (1, 1));
    }
    let mut resp = raw_header(7, 0x8180, 1, 0, 0, 0);
    resp.extend(raw_question());
    let (out, s) = run(&resp, Proto::Udp);
    assert!(matches!(out, Outcome::Drop));
    assert_eq!((s.malformed, s.dropped_responses), (1, 1));
}

#[test]
fn question_count_other_than_one_is_formerr() {
    let (code, s) = code_of(&raw_header(1, 0x0100, 0, 0, 0, 0));
    assert_eq!(code, ResponseCode::FormErr);
    assert_eq!((s.malformed, s.formerr), (1, 1));
    let mut two = raw_header(1, 0x0100, 2, 0, 0, 0);
    two.extend(raw_question());
    two.extend(raw_question());
    assert_eq!(code_of(&two).0, ResponseCode::FormErr);
    // A huge count with no data fails fast.
    assert_eq!(
        code_of(&raw_header(1, 0x0100, 0xffff, 0xffff, 0xffff, 0xffff)).0,
        ResponseCode::FormErr
    );
    let mut big = raw_header(1, 0x0100, 1, 0xffff, 0xffff, 0xffff);
    big.extend(raw_question());
    assert_eq!(code_of(&big).0, ResponseCode::FormErr);
}

#[test]
fn truncated_or_trailing_bytes_are_formerr() {
    let mut q = raw_header(1, 0x0100, 1, 0, 0, 0);
    q.extend(raw_question());
    for cut in HEADER_LEN..q.len() {
        let (code, s) = code_of(&q[..cut]);
        assert_eq!(code, ResponseCode::FormErr, "cut at {cut}");
        assert_eq!(s.formerr, 1);
    }
    let mut trailing = q.clone();
    trailing.extend([1, 2, 3]);
    assert_eq!(code_of(&trailing).0, ResponseCode::FormErr);
    // A label pointer loop.
    let mut looped = raw_header(1, 0x0100, 1, 0, 0, 0);
    looped.extend([0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(code_of(&looped).0, ResponseCode::FormErr);
    // The good one answers.
    assert_eq!(code_of(&q).0, ResponseCode::NoError);
}

#[test]
fn other_opcodes_classes_and_transfers_are_notimp() {
    for opcode in [1u16, 2, 4, 5, 6, 15] {
        let mut q = raw_header(1, (opcode << 11) | 0x0100, 1, 0, 0, 0);
        q.extend(raw_question());
        let (code, s) = code_of(&q);
        assert_eq!(code, ResponseCode::NotImp, "opcode {opcode}");
        assert_eq!(s.notimp, 1);
        // Also without a question.
        assert_eq!(
            code_of(&raw_header(1, opcode << 11, 0, 0, 0, 0)).0,
            ResponseCode::NotImp
        );
    }
    for class in [
        DNSClass::CH,
        DNSClass::HS,
        DNSClass::ANY,
        DNSClass::Unknown(77),
    ] {
        let mut m = query("web.", RecordType::A);
        m.queries[0].set_query_class(class);
        let (a, s) = ask(&m);
        assert_eq!(a.metadata.response_code, ResponseCode::NotImp, "{class:?}");
        assert_eq!(s.notimp, 1);
    }
    for qtype in [RecordType::AXFR, RecordType::IXFR] {
        let (a, _) = ask(&query("web.", qtype));
        assert_eq!(a.metadata.response_code, ResponseCode::NotImp);
    }
}

#[test]
fn edns_version_other_than_zero_is_badvers() {
    let mut m = query("web.", RecordType::A);
    let mut e = Edns::new();
    e.set_version(1);
    m.set_edns(e);
    let (a, s) = ask(&m);
    // BADVERS and BADSIG share the value 16; hickory decodes it as BADSIG.
    assert_eq!(u16::from(a.metadata.response_code), 16);
    assert!(a.edns.is_some());
    assert_eq!(s.badvers, 1);
}

#[test]
fn random_garbage_never_panics_and_is_always_counted() {
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let c = Counters::default();
    let r = records();
    let good = query("web.", RecordType::A).to_vec().unwrap();
    for i in 0..20_000 {
        let len = (next() % 600) as usize;
        let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 && len > good.len() {
            // Mutations of a valid query reach deeper into the parser.
            buf[..good.len()].copy_from_slice(&good);
            let at = (next() as usize) % good.len();
            buf[at] = next() as u8;
            buf.truncate(good.len() + (next() % 4) as usize);
        }
        let before = c.snapshot();
        let out = handle(&buf, Proto::Udp, &["n1"], &r, &c);
        let after = c.snapshot();
        let counted = after.malformed + after.notimp + after.local + after.nodata
            > before.malformed + before.notimp + before.local + before.nodata;
        assert!(
            counted || matches!(out, Outcome::Forward(_)),
            "input {i} neither counted nor forwarded: {buf:?}"
        );
        if let Outcome::Reply(b) = out {
            assert!(b.len() >= HEADER_LEN);
        }
    }
}

#[test]
fn oversized_upstream_answers_are_refit_for_udp_clients() {
    let c = Counters::default();
    let mut m = query("many.example.", RecordType::A).into_response();
    for i in 0..200u32 {
        m.add_answer(Record::from_rdata(
            Name::from_str("many.example.").unwrap(),
            30,
            RData::A(A(std::net::Ipv4Addr::from(0x0a00_0000 + i))),
        ));
    }
    let bytes = m.to_vec().unwrap();
    assert!(bytes.len() > 3000);
    let fit = fit_answer(bytes.clone(), 512, &c).unwrap();
    assert!(fit.len() <= 512);
    let back = Message::from_vec(&fit).unwrap();
    assert!(back.metadata.truncation);
    assert_eq!(back.metadata.id, 0x1234);
    assert_eq!(c.snapshot().truncated, 1);
    assert_eq!(
        fit_answer(bytes.clone(), u16::MAX, &c).unwrap(),
        bytes,
        "fits: unchanged"
    );
    assert!(
        fit_answer(vec![0xff; 2000], 512, &c).is_none(),
        "junk too big: dropped"
    );
}
