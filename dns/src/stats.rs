//! Counters of the resolver: plain atomics bumped on the hot path, read as a [`Stats`] snapshot
//! (the agent exports them to Prometheus).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $field:ident, )*) => {
        /// A snapshot of the resolver's counters since it started.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct Stats {
            $( $(#[doc = $doc])* pub $field: u64, )*
        }

        impl Stats {
            /// (name, help, value) of every counter, for exporters.
            pub fn fields(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$( (stringify!($field), concat!($($doc),*).trim_ascii(), self.$field), )*]
            }
        }

        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub(crate) $field: AtomicU64, )*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                Stats { $( $field: self.$field.load(Ordering::Relaxed), )* }
            }
        }
    };
}

counters! {
    /// Queries received over UDP (well-formed or not).
    queries_udp,
    /// Queries received over TCP (well-formed or not).
    queries_tcp,
    /// Queries answered from the records with at least one record.
    local,
    /// Queries for a known name of a type it has no record of: NOERROR, empty answer.
    nodata,
    /// Queries sent to the upstreams.
    forwarded,
    /// Forwarded queries that got an upstream answer passed back to the client.
    forward_answered,
    /// Upstream answers with NXDOMAIN passed back to the client.
    nxdomain,
    /// An upstream did not answer in time (the next one is tried).
    upstream_timeouts,
    /// An upstream failed (send/receive error, SERVFAIL, REFUSED, a bad answer): next tried.
    upstream_failures,
    /// SERVFAIL sent to a client because no upstream answered (or none is configured).
    servfail,
    /// REFUSED sent because the cap on concurrent forwards was reached.
    refused_cap,
    /// Datagrams or TCP messages that could not be parsed as a query (all bad input).
    malformed,
    /// FORMERR sent (malformed query, not exactly one question, trailing bytes).
    formerr,
    /// NOTIMP sent (an opcode other than QUERY, a class other than IN, zone transfers).
    notimp,
    /// BADVERS sent (EDNS version other than 0).
    badvers,
    /// Messages shorter than a DNS header, dropped without an answer.
    dropped_short,
    /// Responses (QR=1) sent to the server, dropped without an answer.
    dropped_responses,
    /// Answers sent with TC=1 because they did not fit the client's UDP size.
    truncated,
    /// TCP connections accepted.
    tcp_connections,
    /// TCP connections closed at once because the connection cap was reached.
    tcp_rejected,
    /// TCP connections closed after being idle or sending an incomplete message for too long.
    tcp_timeouts,
    /// Answers that could not be sent (socket errors).
    send_errors,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_fields() {
        let c = Counters::default();
        c.local.fetch_add(3, Ordering::Relaxed);
        c.malformed.fetch_add(1, Ordering::Relaxed);
        let s = c.snapshot();
        assert_eq!(s.local, 3);
        assert_eq!(s.malformed, 1);
        let fields = s.fields();
        let local = fields.iter().find(|f| f.0 == "local").unwrap();
        assert_eq!(local.2, 3);
        assert!(local.1.starts_with("Queries answered"), "{}", local.1);
        assert!(fields.iter().all(|f| !f.1.is_empty()));
    }
}
