//! Entry points for fuzz targets (`fuzz/` at the repository root): the resolver's handling of
//! untrusted bytes, without sockets. Never panics. Stable names:
//!
//! * [`query`]: what a listener does with a received message, over UDP and over TCP: the strict
//!   parse, the decision, and the answer built from the records (or the error answer); for a
//!   forwarded query, what comes after the upstream's answer is [`upstream_answer`];
//! * [`upstream_answer`]: an upstream's answer to a forwarded query (the fixed [`forwarded`]):
//!   checked against the query, then made to fit a UDP client (re-encoded when too big);
//! * [`tcp_stream`]: a TCP connection's bytes: length-prefixed messages, each as [`query`].

use std::sync::RwLock;
use std::sync::atomic::Ordering::Relaxed;

use crate::forward::{check_answer, rcode};
use crate::handler::{self, Outcome, Proto};
use crate::records::{Change, Records};
use crate::stats::Counters;

/// The networks a fuzzed listener sees.
const SCOPE: &[&str] = &["n1", "n2"];

/// The id and question of the query [`upstream_answer`] answers.
pub const FORWARDED_ID: u16 = 0x1234;

/// The records fuzzed queries are answered from: two networks, VIP and DNS-RR services, tasks
/// with aliases, enough addresses to truncate a UDP answer.
fn records() -> RwLock<Records> {
    let mut changes = vec![
        Change::PutNetwork {
            id: "n1".into(),
            name: "front".into(),
        },
        Change::PutNetwork {
            id: "n2".into(),
            name: "back".into(),
        },
        Change::PutService {
            network: "n1".into(),
            id: "s-web".into(),
            name: "web".into(),
            vip: Some([10, 0, 1, 2].into()),
            aliases: vec!["www".into()],
        },
        Change::PutService {
            network: "n2".into(),
            id: "s-db".into(),
            name: "db".into(),
            vip: None,
            aliases: vec![],
        },
        Change::PutTask {
            network: "n1".into(),
            id: "t1".into(),
            service: "s-web".into(),
            addr: [10, 0, 1, 10].into(),
            name: crate::task_name("web", "1", "t1"),
            aliases: vec!["first".into()],
        },
        Change::PutTask {
            network: "n2".into(),
            id: "t6".into(),
            service: "s-db".into(),
            addr: "fd00::6".parse().expect("an address"),
            name: crate::task_name("db", "1", "t6"),
            aliases: vec![],
        },
    ];
    for i in 0..120u8 {
        changes.push(Change::PutTask {
            network: "n2".into(),
            id: format!("d{i}"),
            service: "s-db".into(),
            addr: [10, 0, 2, i].into(),
            name: crate::task_name("db", &format!("{}", u32::from(i) + 2), &format!("d{i}")),
            aliases: vec![],
        });
    }
    let mut r = Records::new();
    r.apply(changes);
    RwLock::new(r)
}

fn fixed() -> &'static (RwLock<Records>, Counters) {
    static FIXED: std::sync::OnceLock<(RwLock<Records>, Counters)> = std::sync::OnceLock::new();
    FIXED.get_or_init(|| (records(), Counters::default()))
}

/// Handles one received message as a UDP and as a TCP listener do; returns whether either
/// answered from the records (not an error, not a forward, not a drop).
pub fn query(bytes: &[u8]) -> bool {
    let (records, counters) = fixed();
    let mut local = false;
    for proto in [Proto::Udp, Proto::Tcp] {
        let answered = || counters.local.load(Relaxed) + counters.nodata.load(Relaxed);
        let before = answered();
        match handler::handle(bytes, proto, SCOPE, records, counters) {
            Outcome::Reply(_) => local |= answered() > before,
            Outcome::Forward(req) => {
                // What a full forwarder cap answers.
                handler::error_reply(
                    &req,
                    hickory_proto::op::ResponseCode::Refused,
                    proto,
                    counters,
                );
            }
            Outcome::Drop => {}
        }
    }
    local
}

/// The query [`upstream_answer`]'s bytes answer: `example.com. A`, id [`FORWARDED_ID`], no EDNS
/// (so a UDP client takes 512 bytes).
pub fn forwarded() -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new(FORWARDED_ID, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    if let Ok(name) = Name::from_ascii("example.com.") {
        m.add_query(Query::query(name, RecordType::A));
    }
    m.to_vec().unwrap_or_default()
}

/// An upstream's answer to [`forwarded`], as the forwarder takes it for a UDP client: checked
/// (id, response, rcode, question), its id replaced by the client's, fit to 512 bytes. Returns
/// whether an answer goes back to the client.
pub fn upstream_answer(bytes: &[u8]) -> bool {
    static QUERY: std::sync::OnceLock<Option<handler::Request>> = std::sync::OnceLock::new();
    let (records, counters) = fixed();
    let req = QUERY.get_or_init(|| {
        match handler::handle(&forwarded(), Proto::Udp, SCOPE, records, counters) {
            Outcome::Forward(req) => Some(req),
            _ => None,
        }
    });
    let Some(req) = req else {
        return false;
    };
    let Ok(mut answer) = check_answer(bytes.to_vec(), FORWARDED_ID, &req.query) else {
        return false;
    };
    let _ = rcode(&answer);
    answer[..2].copy_from_slice(&req.metadata.id.to_be_bytes());
    handler::fit_answer(answer, req.max_size(Proto::Udp), counters).is_some()
}

/// A TCP connection's bytes as a listener reads them: a 2-byte length, that many bytes, each
/// message handled; a zero length or a short message ends the connection. Returns how many
/// messages were handled.
pub fn tcp_stream(mut bytes: &[u8]) -> usize {
    let (records, counters) = fixed();
    let mut n = 0;
    while let Some((len, rest)) = bytes.split_at_checked(2) {
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let Some((msg, rest)) = rest.split_at_checked(len) else {
            break;
        };
        if len == 0 {
            break;
        }
        handler::handle(msg, Proto::Tcp, SCOPE, records, counters);
        n += 1;
        bytes = rest;
    }
    n
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;

    fn inputs(target: &str) -> Vec<Vec<u8>> {
        lab::fuzzing::inputs(target)
            .into_iter()
            .map(|(_, b)| b)
            .collect()
    }

    fn ask(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    fn answer(records: usize) -> Vec<u8> {
        let q = Message::from_vec(&forwarded()).unwrap();
        let mut m = Message::new(FORWARDED_ID, MessageType::Response, OpCode::Query);
        m.metadata.response_code = ResponseCode::NoError;
        m.metadata.recursion_available = true;
        m.add_query(q.queries[0].clone());
        for i in 0..records {
            m.add_answer(Record::from_rdata(
                q.queries[0].name().clone(),
                300,
                RData::A(A::new(192, 0, 2, i as u8)),
            ));
        }
        m.to_vec().unwrap()
    }

    /// The seed corpora: real queries and answers, encoded by hickory-proto.
    fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
        let mut framed = Vec::new();
        for m in [
            ask("web.", RecordType::A, false),
            ask("db.back.", RecordType::AAAA, true),
        ] {
            framed.extend_from_slice(&(m.len() as u16).to_be_bytes());
            framed.extend_from_slice(&m);
        }
        vec![
            ("dns_query", "vip", ask("web.", RecordType::A, false)),
            (
                "dns_query",
                "alias_edns",
                ask("www.front.", RecordType::A, true),
            ),
            ("dns_query", "dnsrr_big", ask("db.", RecordType::A, false)),
            ("dns_query", "task", ask("web.1.t1.", RecordType::ANY, true)),
            (
                "dns_query",
                "ptr",
                ask("10.1.0.10.in-addr.arpa.", RecordType::PTR, false),
            ),
            (
                "dns_query",
                "forward",
                ask("example.com.", RecordType::MX, true),
            ),
            ("dns_upstream", "small", answer(2)),
            ("dns_upstream", "big", answer(60)),
            ("dns_query", "tcp_two", framed),
        ]
    }

    #[test]
    fn seeds_do_what_they_say() {
        for (target, name, bytes) in seeds() {
            match target {
                _ if name == "tcp_two" => assert_eq!(tcp_stream(&bytes), 2),
                "dns_query" if name == "forward" => assert!(!query(&bytes)),
                "dns_query" => assert!(query(&bytes), "{name}"),
                _ => assert!(upstream_answer(&bytes), "{name}"),
            }
        }
    }

    #[test]
    #[ignore = "writes the seed corpus under fuzz/corpus/"]
    fn write_seed_corpus() {
        for (target, name, bytes) in seeds() {
            lab::fuzzing::write_seed(target, name, &bytes);
        }
    }

    /// The corpora and every crash the fuzzers found: handled without a panic.
    #[test]
    fn corpus_and_regressions_never_panic() {
        for bytes in inputs("dns_query") {
            query(&bytes);
            tcp_stream(&bytes);
        }
        for bytes in inputs("dns_upstream") {
            upstream_answer(&bytes);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let base = answer(3);
        for (i, mut bytes) in lab::fuzzing::junk(0x9e37_79b9_7f4a_7c15, 3000, 600).enumerate() {
            query(&bytes);
            upstream_answer(&bytes);
            tcp_stream(&bytes);
            // Mutations of a valid answer reach past the header checks.
            let mut a = base.clone();
            let x = bytes.first().copied().unwrap_or(0x5a) as usize * 131 + i;
            let at = x % a.len();
            a[at] ^= bytes.get(1).copied().unwrap_or(0xa5) | 1;
            bytes.truncate(8);
            a.extend_from_slice(&bytes);
            upstream_answer(&a);
        }
    }
}
