//! Join tokens: `SWMTKN-1-<CA digest>-<secret>`, as Docker swarm mode writes them.

use std::fmt;

use crate::{Error, Result};

const PREFIX: &str = "SWMTKN";
const VERSION: &str = "1";
/// Base-36 digits of a SHA-256 digest (36^50 > 2^256).
const DIGEST_LEN: usize = 50;
const SECRET_LEN: usize = 25;

/// A join token. The secret alone decides which role a joining node gets; the digest pins the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Base-36 SHA-256 of the CA certificate (DER).
    pub ca_digest: String,
    /// 25 characters of [0-9a-z].
    pub secret: String,
}

impl JoinToken {
    /// A new token for the CA whose digest is given, with a fresh random secret.
    pub fn generate(ca_digest: &str) -> JoinToken {
        use ring::rand::SecureRandom;
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let rng = ring::rand::SystemRandom::new();
        let mut bytes = [0u8; SECRET_LEN];
        // ring's system RNG only fails if the OS has no entropy source at all.
        rng.fill(&mut bytes).expect("the OS random generator works");
        let secret = bytes
            .iter()
            .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
            .collect();
        JoinToken {
            ca_digest: ca_digest.to_string(),
            secret,
        }
    }

    /// Parses `SWMTKN-1-<digest>-<secret>`.
    pub fn parse(s: &str) -> Result<JoinToken> {
        let s = s.trim();
        let parts: Vec<&str> = s.split('-').collect();
        if parts.len() != 4 || parts[0] != PREFIX {
            return Err(Error::Token("it does not start with SWMTKN-".into()));
        }
        if parts[1] != VERSION {
            return Err(Error::Token(format!("unknown version {:?}", parts[1])));
        }
        let base36 = |p: &str| {
            p.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        };
        if parts[2].len() != DIGEST_LEN || !base36(parts[2]) {
            return Err(Error::Token("the CA digest part is malformed".into()));
        }
        if parts[3].len() != SECRET_LEN || !base36(parts[3]) {
            return Err(Error::Token("the secret part is malformed".into()));
        }
        Ok(JoinToken {
            ca_digest: parts[2].to_string(),
            secret: parts[3].to_string(),
        })
    }

    /// Compares the secrets in constant time.
    pub fn same_secret(&self, other: &JoinToken) -> bool {
        use subtle::ConstantTimeEq;
        // Constant time in the secret's content (the length is public: 25 characters).
        self.secret.as_bytes().ct_eq(other.secret.as_bytes()).into()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{VERSION}-{}-{}", self.ca_digest, self.secret)
    }
}

/// The digest of a DER certificate as it appears in join tokens: SHA-256 in base 36,
/// left-padded to 50 characters.
pub fn ca_digest(cert_der: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, cert_der);
    let mut num: Vec<u8> = hash.as_ref().to_vec();
    let mut digits = Vec::with_capacity(DIGEST_LEN);
    while num.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in num.iter_mut() {
            let cur = (rem << 8) | *b as u32;
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[rem as usize]);
    }
    while digits.len() < DIGEST_LEN {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).expect("base-36 digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let d = ca_digest(b"some certificate");
        assert_eq!(d.len(), DIGEST_LEN);
        let t = JoinToken::generate(&d);
        let s = t.to_string();
        assert!(s.starts_with("SWMTKN-1-"));
        assert_eq!(JoinToken::parse(&s).unwrap(), t);
        assert!(t.same_secret(&JoinToken::parse(&s).unwrap()));
        assert!(!t.same_secret(&JoinToken::generate(&d)));
        for bad in [
            "",
            "SWMTKN-1-abc-def",
            "XXX-1-a-b",
            &s.replace("SWMTKN-1", "SWMTKN-2"),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn digest_is_stable() {
        assert_eq!(ca_digest(b"x"), ca_digest(b"x"));
        assert_ne!(ca_digest(b"x"), ca_digest(b"y"));
    }
}
