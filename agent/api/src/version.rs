//! The `/v1.NN` prefix of every route: which versions are served and docker's refusal of the
//! others.

use crate::{API_VERSION, Invalid, MIN_API_VERSION};

/// An API version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion {
    pub major: u32,
    pub minor: u32,
}

impl ApiVersion {
    pub fn parse(s: &str) -> Option<ApiVersion> {
        let (major, minor) = s.split_once('.')?;
        Some(ApiVersion {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    /// The version netagent reports.
    pub fn current() -> ApiVersion {
        ApiVersion::parse(API_VERSION).expect("API_VERSION is major.minor")
    }

    pub fn minimum() -> ApiVersion {
        ApiVersion::parse(MIN_API_VERSION).expect("MIN_API_VERSION is major.minor")
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What a request path says about its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prefixed<'a> {
    /// No `/vN.N` prefix: the current version.
    Bare,
    /// A served version, and the path after it (starting with '/').
    Versioned(ApiVersion, &'a str),
}

/// Splits `/v1.41/nodes` into (1.41, `/nodes`); refuses versions outside the served range with
/// docker's messages.
pub fn split(path: &str) -> Result<Prefixed<'_>, Invalid> {
    let Some(rest) = path.strip_prefix("/v") else {
        return Ok(Prefixed::Bare);
    };
    let (ver, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if ver.is_empty() || !ver.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Ok(Prefixed::Bare);
    }
    let Some(v) = ApiVersion::parse(ver) else {
        return Err(Invalid::new(format!(
            "invalid API version {ver:?} in the path: use /v{API_VERSION}/... (or no prefix)"
        )));
    };
    if v > ApiVersion::current() {
        return Err(Invalid::new(format!(
            "client version {v} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    if v < ApiVersion::minimum() {
        return Err(Invalid::new(format!(
            "client version {v} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    Ok(Prefixed::Versioned(v, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        assert_eq!(split("/nodes").unwrap(), Prefixed::Bare);
        assert_eq!(split("/version").unwrap(), Prefixed::Bare);
        let v = |s| ApiVersion::parse(s).unwrap();
        assert_eq!(
            split("/v1.41/nodes").unwrap(),
            Prefixed::Versioned(v("1.41"), "/nodes")
        );
        assert_eq!(
            split("/v1.24/_ping").unwrap(),
            Prefixed::Versioned(v("1.24"), "/_ping")
        );
        let e = split("/v1.99/nodes").unwrap_err();
        assert_eq!(
            e.0,
            "client version 1.99 is too new. Maximum supported API version is 1.41"
        );
        assert!(split("/v1.12/nodes").unwrap_err().0.contains("too old"));
        assert!(split("/v1/nodes").is_err());
        assert!(v("1.9") < v("1.10"));
    }
}
