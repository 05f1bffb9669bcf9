//! Garbage datagrams and TCP junk sent to 127.0.0.11:53: no crash, every bit counted, good
//! queries still answered; idle and surplus TCP connections closed.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::*;

/// Reads until EOF or error; true if the peer closed the connection within `within`.
fn closed_within(conn: &mut std::net::TcpStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                );
            }
        }
    }
}

#[test]
fn garbage_udp_and_tcp_junk_are_counted_and_good_queries_still_answer() {
    need_root!();
    let e = env(|c| c.tcp_idle_timeout = Duration::from_secs(1));
    let t = &e.task;
    let before = e.resolver.stats();

    // UDP: empty, short, random, a response, no question, two questions, bad opcode, huge.
    let udp = client_udp(t);
    let mut state = 0x2545f4914f6cdd1du64;
    let mut rnd = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut sent = 0u64;
    // Paced so the socket's receive buffer never overflows (the kernel would drop, not us).
    let caught_up = |sent: u64| {
        lab::wait_until(
            "the listener to read every datagram",
            Duration::from_secs(5),
            &mut || e.resolver.stats().queries_udp - before.queries_udp >= sent,
        )
        .unwrap();
    };
    for i in 0..300usize {
        if i % 25 == 0 {
            caught_up(sent);
        }
        let len = match i {
            0 => 0,
            1..=11 => i,
            _ => 12 + (rnd() % 1400) as usize,
        };
        let junk: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        udp.send(&junk).unwrap();
        sent += 1;
    }
    let mut response = query_bytes(9, "web.");
    response[2] |= 0x80;
    let mut no_question = query_bytes(10, "web.");
    no_question[4..6].copy_from_slice(&[0, 0]);
    no_question.truncate(12);
    let mut status_op = query_bytes(11, "web.");
    status_op[2] = (2 << 3) | 1;
    let huge = vec![0x41u8; 60_000];
    for m in [&response, &no_question, &status_op, &huge] {
        udp.send(m).unwrap();
        sent += 1;
    }
    caught_up(sent);
    // TCP: random bytes then close; an HTTP request; a zero length; a length with half a
    // message left hanging (closed after the idle timeout).
    let mut c1 = client_tcp(t);
    let junk: Vec<u8> = (0..3000).map(|_| rnd() as u8).collect();
    let _ = c1.write_all(&junk);
    drop(c1);
    let mut c2 = client_tcp(t);
    c2.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.11\r\n\r\n")
        .unwrap();
    let mut c3 = client_tcp(t);
    c3.write_all(&[0, 0]).unwrap();
    let mut c4 = client_tcp(t);
    let q = query_bytes(12, "web.");
    c4.write_all(&[0, q.len() as u8]).unwrap();
    c4.write_all(&q[..5]).unwrap();
    assert!(
        closed_within(&mut c3, Duration::from_secs(3)),
        "zero length: closed"
    );
    let start = Instant::now();
    assert!(
        closed_within(&mut c4, Duration::from_secs(4)),
        "half a message: closed"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        closed_within(&mut c2, Duration::from_secs(4)),
        "HTTP junk: closed"
    );

    // Good queries still answer, over both transports.
    assert_eq!(dig(t, &["web"]).data(), ["10.0.1.2"]);
    assert_eq!(dig(t, &["+tcp", "web"]).data(), ["10.0.1.2"]);
    assert_eq!(dig(t, &["www.lab.test"]).data(), ["198.51.100.10"]);

    let s = e.resolver.stats();
    // Every junk datagram was counted as bad input, except random ones that happened to parse.
    assert!(s.malformed - before.malformed >= sent - 5, "{s:?}");
    // 12 datagrams shorter than a header, and the zero-length TCP message.
    assert_eq!(s.dropped_short - before.dropped_short, 13, "{s:?}");
    assert!(s.dropped_responses > before.dropped_responses);
    assert!(s.formerr > before.formerr && s.notimp > before.notimp);
    assert!(s.tcp_timeouts >= 2, "{s:?}");
    // The FORMERR/NOTIMP answers reached the client.
    let mut buf = [0u8; 2048];
    let mut codes = Vec::new();
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while let Ok(n) = udp.recv(&mut buf) {
        codes.push(parse(&buf[..n]).metadata.response_code);
    }
    assert!(
        codes.contains(&hickory_proto::op::ResponseCode::FormErr),
        "{codes:?}"
    );
    assert!(
        codes.contains(&hickory_proto::op::ResponseCode::NotImp),
        "{codes:?}"
    );
}

#[test]
fn tcp_connections_are_bounded() {
    need_root!();
    let e = env(|c| {
        c.max_tcp_connections = 4;
        c.tcp_idle_timeout = Duration::from_secs(2);
    });
    let held: Vec<_> = (0..4).map(|_| client_tcp(&e.task)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = client_tcp(&e.task);
    assert!(
        closed_within(&mut extra, Duration::from_secs(1)),
        "5th connection closed at once"
    );
    assert!(e.resolver.stats().tcp_rejected >= 1);
    // UDP is unaffected meanwhile; once the idle ones are closed TCP works again.
    assert_eq!(dig(&e.task, &["web"]).data(), ["10.0.1.2"]);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(dig(&e.task, &["+tcp", "web"]).data(), ["10.0.1.2"]);
    drop(held);
}
