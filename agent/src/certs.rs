//! Node certificate renewal. Every node renews its certificate at a random point between 50 %
//! and 80 % of its lifetime (swarmkit's window), from the CA service of a manager, with a fresh
//! key; the new certificate is presented from the next TLS handshake on (client and server,
//! [`pki::tls::NodeCert`]) and saved in the node's state. The lifetime is the cluster's
//! `--cert-expiry` (default 90 days). A failed renewal is retried with backoff; a certificate
//! the node cannot renew expires, and the managers then refuse its new connections.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::agent::Agent;
use crate::error::{Failure, Result};
use crate::member::Member;
use crate::rpc::generated::ca_client::CaClient;
use crate::rpc::messages::RenewRequest;
use crate::state::Saved;

/// When a certificate (PEM) expires; None if it cannot be read.
pub fn expires_at(cert_pem: &str) -> Option<DateTime<Utc>> {
    let (_, not_after) = pki::validity(cert_pem).ok()?;
    DateTime::from_timestamp(not_after, 0)
}

/// How long to wait before renewing a certificate valid over `[not_before, not_after]` (Unix
/// seconds), at `now`: until a point drawn in 50–80 % of its lifetime (zero if that passed).
pub fn until_renewal(not_before: i64, not_after: i64, now: i64, draw: f64) -> Duration {
    let issued = not_before + pki::NODE_CERT_BACKDATE_SECS;
    let life = (not_after - issued).max(1) as f64;
    let at = issued as f64 + life * (0.5 + 0.3 * draw.clamp(0.0, 1.0));
    Duration::from_secs_f64((at - now as f64).max(0.0))
}

/// Renews this member's certificate whenever it is due, until the member stops.
pub async fn renew_loop(agent: Arc<Agent>, member: Arc<Member>) {
    let mut failures = 0u32;
    loop {
        let wait = if failures > 0 {
            Duration::from_secs(1u64 << failures.min(6))
        } else {
            match pki::validity(&member.cert.keys().cert_pem) {
                Ok((from, to)) => {
                    let draw = rand::rng().random::<f64>();
                    until_renewal(from, to, Utc::now().timestamp(), draw)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the node certificate's validity");
                    Duration::from_secs(60)
                }
            }
        };
        tokio::select! {
            _ = member.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match renew(&agent, &member).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "could not renew the node certificate; retrying");
            }
        }
    }
}

/// One renewal: a new key and CSR, signed by a manager (the leader first), then presented and
/// saved. Holds the agent's operation lock so it never interleaves with a role change.
async fn renew(agent: &Agent, member: &Member) -> Result<()> {
    let _g = agent.ops.lock().await;
    if member.cancel.is_cancelled() {
        return Ok(());
    }
    let (csr, key) = pki::new_csr().map_err(|e| Failure::internal(e.to_string()))?;
    let mut candidates = member.node_state().managers.clone();
    if let Some(l) = member.leader_addr() {
        candidates.insert(0, l);
    }
    let mut last_err = String::from("no manager known");
    for addr in candidates {
        let mut client = CaClient::new(member.channel(&addr)?);
        let renewed = match client
            .renew(RenewRequest {
                csr_pem: csr.clone(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => {
                last_err = format!("{addr}: {}", s.message());
                continue;
            }
        };
        if renewed.role != member.role() {
            // A role change is under way: the session's role change renews for the new role.
            return Ok(());
        }
        let keys = pki::NodeKeys {
            cert_pem: renewed.cert_pem,
            key_pem: key,
        };
        member
            .cert
            .replace(&member.ca_pem, &keys)
            .map_err(|e| Failure::internal(format!("the renewed certificate is unusable: {e}")))?;
        Saved {
            node: member.node_state(),
            ca_pem: member.ca_pem.clone(),
            keys: keys.clone(),
        }
        .save(&agent.cfg)
        .map_err(|e| Failure::internal(format!("cannot save the renewed certificate: {e:#}")))?;
        tracing::info!(expires = ?expires_at(&keys.cert_pem), "node certificate renewed");
        return Ok(());
    }
    Err(Failure::unavailable(last_err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_falls_between_half_and_four_fifths_of_the_lifetime() {
        let issued = 1_000_000;
        let from = issued - pki::NODE_CERT_BACKDATE_SECS;
        let to = issued + 100;
        assert_eq!(
            until_renewal(from, to, issued, 0.0),
            Duration::from_secs(50)
        );
        assert_eq!(
            until_renewal(from, to, issued, 1.0),
            Duration::from_secs(80)
        );
        assert_eq!(until_renewal(from, to, issued + 60, 0.0), Duration::ZERO);
        assert_eq!(
            until_renewal(from, to, issued + 10, 0.5),
            Duration::from_secs(55)
        );
    }
}
