//! One DNS message in, one decision out: an answer built from the records, an error answer, a
//! forward, or a silent drop. Parsing is strict and every bad input is counted; nothing here
//! panics on input and nothing here does I/O.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

use hickory_proto::op::{Edns, Header, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::op::{Message, emit_message_parts};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};

use crate::lookup::Resolved;
use crate::records::Records;
use crate::stats::Counters;

/// Length of a DNS header; shorter messages are dropped.
pub(crate) const HEADER_LEN: usize = 12;
/// Largest UDP payload assumed for a client that sends no EDNS (RFC 1035).
pub(crate) const CLASSIC_UDP: u16 = 512;
/// The UDP payload size we advertise in our EDNS answers.
pub(crate) const OUR_UDP_PAYLOAD: u16 = 4096;
/// The largest UDP payload IPv4 can carry (65535 - 20 - 8).
const MAX_UDP_PAYLOAD: u16 = 65507;

/// The transport a message came over: it bounds the answer's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    Udp,
    Tcp,
}

/// A well-formed standard query with exactly one question.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) metadata: Metadata,
    pub(crate) query: Query,
    pub(crate) edns: Option<Edns>,
}

impl Request {
    /// The largest answer the client takes over `proto`: 64 KiB on TCP; on UDP its EDNS size
    /// (at least 512, at most what a datagram carries) or 512 without EDNS.
    pub(crate) fn max_size(&self, proto: Proto) -> u16 {
        match proto {
            Proto::Tcp => u16::MAX,
            Proto::Udp => self.edns.as_ref().map_or(CLASSIC_UDP, |e| {
                e.max_payload().clamp(CLASSIC_UDP, MAX_UDP_PAYLOAD)
            }),
        }
    }
}

/// What to do with a message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Not ours: send the raw query to the upstreams.
    Forward(Request),
    /// Send nothing (a message too short to answer, or a response).
    Drop,
}

/// Why a message was not a query we can look up.
enum Bad {
    Short,
    Response,
    /// Answer with this code; the header (and the question, when it parsed) are echoed.
    Error(Metadata, Option<Query>, ResponseCode, bool),
}

/// Parses a query strictly: header, exactly one question, well-formed records, nothing after.
fn parse(bytes: &[u8]) -> Result<Request, Bad> {
    if bytes.len() < HEADER_LEN {
        return Err(Bad::Short);
    }
    let mut dec = BinDecoder::new(bytes);
    let header = Header::read(&mut dec).map_err(|_| Bad::Short)?;
    let meta = header.metadata;
    if meta.message_type == MessageType::Response {
        return Err(Bad::Response);
    }
    let formerr = |q: Option<Query>| Bad::Error(meta, q, ResponseCode::FormErr, false);
    if header.counts.queries != 1 {
        if meta.op_code != OpCode::Query {
            return Err(Bad::Error(meta, None, ResponseCode::NotImp, false));
        }
        return Err(formerr(None));
    }
    let query = Query::read(&mut dec).map_err(|_| formerr(None))?;
    if meta.op_code != OpCode::Query {
        return Err(Bad::Error(meta, Some(query), ResponseCode::NotImp, false));
    }
    let op = meta.op_code;
    let c = header.counts;
    let mut records = || -> Result<Option<Edns>, ()> {
        Message::read_records(&mut dec, usize::from(c.answers), false, op).map_err(|_| ())?;
        Message::read_records(&mut dec, usize::from(c.authorities), false, op).map_err(|_| ())?;
        let (_, edns, _) = Message::read_records(&mut dec, usize::from(c.additionals), true, op)
            .map_err(|_| ())?;
        Ok(edns)
    };
    let Ok(edns) = records() else {
        return Err(formerr(Some(query)));
    };
    if !dec.is_empty() {
        return Err(formerr(Some(query)));
    }
    if let Some(e) = &edns
        && e.version() != 0
    {
        return Err(Bad::Error(meta, Some(query), ResponseCode::BADVERS, true));
    }
    Ok(Request {
        metadata: meta,
        query,
        edns,
    })
}

/// Decides what to do with one message from a listener whose networks are `scope`.
pub(crate) fn handle<S: AsRef<str>>(
    bytes: &[u8],
    proto: Proto,
    scope: &[S],
    records: &std::sync::RwLock<Records>,
    counters: &Counters,
) -> Outcome {
    let req = match parse(bytes) {
        Ok(r) => r,
        Err(bad) => return bad_input(bad, counters),
    };
    let q = &req.query;
    match (q.query_class(), q.query_type()) {
        (DNSClass::IN, RecordType::AXFR | RecordType::IXFR) | (DNSClass::IN, RecordType::OPT) => {
            let code = if q.query_type() == RecordType::OPT {
                counters.formerr.fetch_add(1, Relaxed);
                counters.malformed.fetch_add(1, Relaxed);
                ResponseCode::FormErr
            } else {
                counters.notimp.fetch_add(1, Relaxed);
                ResponseCode::NotImp
            };
            return Outcome::Reply(error_reply(&req, code, proto, counters));
        }
        (DNSClass::IN, _) => {}
        _ => {
            counters.notimp.fetch_add(1, Relaxed);
            return Outcome::Reply(error_reply(&req, ResponseCode::NotImp, proto, counters));
        }
    }
    let records = records.read().unwrap_or_else(|e| e.into_inner());
    if q.query_type() == RecordType::PTR
        && let Some(addr) = arpa_addr(q.name())
    {
        if let Some(p) = records.pointer(scope, addr) {
            drop(records);
            let Ok(target) = Name::from_ascii(&p.name) else {
                counters.servfail.fetch_add(1, Relaxed);
                return Outcome::Reply(error_reply(&req, ResponseCode::ServFail, proto, counters));
            };
            let rec = Record::from_rdata(q.name().clone(), p.ttl, RData::PTR(PTR(target)));
            counters.local.fetch_add(1, Relaxed);
            return Outcome::Reply(answer(&req, &[rec], proto, counters));
        }
        return Outcome::Forward(req);
    }
    let Some(key) = lookup_key(q.name()) else {
        return Outcome::Forward(req);
    };
    let Some(Resolved { addrs, ttl }) = records.resolve(scope, &key) else {
        return Outcome::Forward(req);
    };
    drop(records);
    let want = |a: &IpAddr| match q.query_type() {
        RecordType::A => a.is_ipv4(),
        RecordType::AAAA => a.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    };
    let answers: Vec<Record> = addrs
        .into_iter()
        .filter(want)
        .map(|a| {
            let data = match a {
                IpAddr::V4(v4) => RData::A(A(v4)),
                IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
            };
            Record::from_rdata(q.name().clone(), ttl, data)
        })
        .collect();
    if answers.is_empty() {
        counters.nodata.fetch_add(1, Relaxed);
    } else {
        counters.local.fetch_add(1, Relaxed);
    }
    Outcome::Reply(answer(&req, &answers, proto, counters))
}

fn bad_input(bad: Bad, counters: &Counters) -> Outcome {
    counters.malformed.fetch_add(1, Relaxed);
    match bad {
        Bad::Short => {
            counters.dropped_short.fetch_add(1, Relaxed);
            Outcome::Drop
        }
        Bad::Response => {
            counters.dropped_responses.fetch_add(1, Relaxed);
            Outcome::Drop
        }
        Bad::Error(meta, query, code, with_edns) => {
            match code {
                ResponseCode::NotImp => counters.notimp.fetch_add(1, Relaxed),
                ResponseCode::BADVERS => counters.badvers.fetch_add(1, Relaxed),
                _ => counters.formerr.fetch_add(1, Relaxed),
            };
            let mut m = Metadata::response_from_request(&meta);
            m.recursion_available = true;
            m.response_code = code;
            let edns = with_edns.then(our_edns);
            Outcome::Reply(encode(
                &m,
                query.as_ref(),
                &[],
                edns.as_ref(),
                CLASSIC_UDP,
                None,
            ))
        }
    }
}

/// The name a query asks for, as the records index it (lowercase, no trailing dot); None when
/// it has bytes no service, task or network name has (such a name is never ours).
fn lookup_key(name: &Name) -> Option<String> {
    let mut key = String::with_capacity(name.len());
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            key.push('.');
        }
        for &b in label {
            if b == b'.' || !b.is_ascii_graphic() {
                return None;
            }
            key.push(char::from(b.to_ascii_lowercase()));
        }
    }
    Some(key)
}

/// The address a `*.in-addr.arpa.` / `*.ip6.arpa.` name stands for, if it names one whole address.
fn arpa_addr(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

fn our_edns() -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(OUR_UDP_PAYLOAD);
    e
}

/// A NOERROR answer (possibly empty: NODATA) to `req`, truncated to what the client takes.
fn answer(req: &Request, answers: &[Record], proto: Proto, counters: &Counters) -> Vec<u8> {
    let mut m = Metadata::response_from_request(&req.metadata);
    m.authoritative = true;
    m.recursion_available = true;
    let edns = req.edns.as_ref().map(|_| our_edns());
    encode(
        &m,
        Some(&req.query),
        answers,
        edns.as_ref(),
        req.max_size(proto),
        Some(counters),
    )
}

/// An error answer (SERVFAIL, REFUSED, NOTIMP...) to a well-formed query.
pub(crate) fn error_reply(
    req: &Request,
    code: ResponseCode,
    proto: Proto,
    counters: &Counters,
) -> Vec<u8> {
    let mut m = Metadata::response_from_request(&req.metadata);
    m.recursion_available = true;
    m.response_code = code;
    let edns = req.edns.as_ref().map(|_| our_edns());
    encode(
        &m,
        Some(&req.query),
        &[],
        edns.as_ref(),
        req.max_size(proto),
        Some(counters),
    )
}

/// Encodes a response of at most `max` bytes: records that do not fit are left out and TC set
/// (RFC 2181 §9). Falls back to a bare SERVFAIL header if encoding fails.
fn encode(
    meta: &Metadata,
    query: Option<&Query>,
    answers: &[Record],
    edns: Option<&Edns>,
    max: u16,
    counters: Option<&Counters>,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(512);
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_max_size(max);
    let none: [Record; 0] = [];
    let res = emit_message_parts(
        meta,
        &mut query.into_iter(),
        &mut answers.iter(),
        &mut none.iter(),
        &mut none.iter(),
        edns,
        None,
        &mut enc,
    );
    match res {
        Ok(header) => {
            if header.metadata.truncation
                && let Some(c) = counters
            {
                c.truncated.fetch_add(1, Relaxed);
            }
            buf
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not encode a DNS answer; sending SERVFAIL");
            let mut m = *meta;
            m.response_code = ResponseCode::ServFail;
            let mut out = Vec::with_capacity(HEADER_LEN);
            let mut enc = BinEncoder::new(&mut out);
            let header = Header {
                metadata: m,
                counts: Default::default(),
            };
            use hickory_proto::serialize::binary::BinEncodable;
            // A bare header always fits.
            let _ = header.emit(&mut enc);
            out
        }
    }
}

/// Makes an upstream's answer fit a UDP client: unchanged if small enough, else re-encoded with
/// the records that fit and TC set; None if it is too big and cannot be parsed.
pub(crate) fn fit_answer(bytes: Vec<u8>, max: u16, counters: &Counters) -> Option<Vec<u8>> {
    if bytes.len() <= usize::from(max) {
        return Some(bytes);
    }
    let msg = Message::from_vec(&bytes).ok()?;
    let mut buf = Vec::with_capacity(usize::from(max));
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_max_size(max);
    let mut meta = msg.metadata;
    // Records were left out: a client must not cache this as complete.
    meta.truncation = true;
    emit_message_parts(
        &meta,
        &mut msg.queries.iter(),
        &mut msg.answers.iter(),
        &mut msg.authorities.iter(),
        &mut msg.additionals.iter(),
        msg.edns.as_ref(),
        None,
        &mut enc,
    )
    .ok()?;
    counters.truncated.fetch_add(1, Relaxed);
    Some(buf)
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
