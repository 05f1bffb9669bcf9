//! Attempts per source address: a token bucket per address (governor's keyed limiter), for
//! what the cluster port serves without a certificate (joins). One address cannot make the CA
//! check tokens and sign CSRs as fast as it can send them; other addresses are not slowed.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Addresses remembered before the idle ones are forgotten (a full bucket is the same as none).
const MAX_SOURCES: usize = 4096;

pub struct SourceLimit {
    buckets: DefaultKeyedRateLimiter<IpAddr>,
}

impl SourceLimit {
    /// `burst` attempts at once from one address, then `per_minute` a minute.
    pub fn new(burst: u32, per_minute: u32) -> SourceLimit {
        let burst = NonZeroU32::new(burst.max(1)).expect("non-zero");
        let rate = NonZeroU32::new(per_minute.max(1)).expect("non-zero");
        SourceLimit {
            buckets: RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst)),
        }
    }

    /// Whether one more attempt from `ip` may go ahead now.
    pub fn admit(&self, ip: IpAddr) -> bool {
        if self.buckets.len() >= MAX_SOURCES {
            self.buckets.retain_recent();
            self.buckets.shrink_to_fit();
        }
        self.buckets.check_key(&ip).is_ok()
    }

    /// Addresses with a bucket that is not full.
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }
}

/// Joins from one address: 20 at once, then one every 2 seconds.
pub fn joins() -> SourceLimit {
    SourceLimit::new(20, 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_is_limited_and_others_are_not() {
        let l = SourceLimit::new(5, 1);
        let a: IpAddr = "198.18.0.2".parse().unwrap();
        let b: IpAddr = "198.18.0.3".parse().unwrap();
        assert_eq!((0..8).filter(|_| l.admit(a)).count(), 5);
        assert!(l.admit(b), "another source keeps its own bucket");
    }

    #[test]
    fn idle_sources_are_forgotten_once_many_are_known() {
        // 1,000 a second: a bucket is full again after a millisecond.
        let l = SourceLimit::new(1, 60_000);
        for i in 0..MAX_SOURCES as u32 {
            assert!(l.admit(IpAddr::from(i.to_be_bytes())));
        }
        assert_eq!(l.sources(), MAX_SOURCES);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(l.admit("198.18.0.9".parse().unwrap()));
        assert!(l.sources() <= 1, "{} remembered", l.sources());
    }
}
