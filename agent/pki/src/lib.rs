//! The swarm's public-key infrastructure, as Docker swarm mode does it:
//!
//! - [`Ca`]: the cluster's root CA (created at `swarm init`, kept in the Raft store) that signs
//!   node certificates. A node certificate carries the node id in CN, the role in OU
//!   (`swarm-manager` / `swarm-worker`) and the cluster id in O ([`Identity`]).
//! - [`JoinToken`]: `SWMTKN-1-<digest of the CA certificate>-<secret>`; the digest lets a joining
//!   node pin the CA before it trusts anything a manager says.
//! - [`tls`]: rustls configurations (ring provider) for the cluster port 2377: the server asks for
//!   a client certificate but lets the join service run without one; clients either present
//!   their node certificate or, when joining, pin the CA by the token's digest.

mod ca;
mod identity;
pub mod tls;
mod token;
mod trust;

pub use ca::{Ca, NODE_CERT_BACKDATE_SECS, NodeKeys, Rotation, new_csr};
pub use identity::{Identity, Role, validity};
pub use token::{JoinToken, ca_digest};

/// Errors of the PKI. Each says what failed and why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid PEM for {what}: {why}")]
    Pem { what: &'static str, why: String },
    #[error("invalid certificate: {0}")]
    Certificate(String),
    #[error(
        "invalid join token: {0} (a token looks like SWMTKN-1-<50 characters>-<25 characters>; print one with `netctl swarm join-token worker` on a manager)"
    )]
    Token(String),
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The TLS server name every manager certificate carries (as Docker's `swarm-manager` SAN).
pub const MANAGER_SERVER_NAME: &str = "swarm-manager";

/// Installs ring as rustls' process-wide default crypto provider (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
