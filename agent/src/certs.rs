//! Node certificate renewal. Every node renews its certificate at a random point between 50 %
//! and 80 % of its lifetime (swarmkit's window), from the CA service of a manager, with a fresh
//! key; the new certificate is presented from the next TLS handshake on (client and server,
//! [`pki::tls::NodeCert`]) and saved in the node's state. The lifetime is the cluster's
//! `--cert-expiry` (default 90 days). A failed renewal is retried with backoff; a certificate
//! the node cannot renew expires, and the managers then refuse its new connections.
//!
//! A CA rotation (`swarm ca --rotate`, see `crate::ca_rotation`) reaches every node in the
//! cluster settings of its dispatcher session: the node trusts the roots sent (both during the
//! rotation, the new one alone after), renews at once from the new root, and reports its TLS
//! state ([`tls_info`]) until the leader has recorded it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::agent::Agent;
use crate::error::{Failure, Result};
use crate::member::Member;
use crate::rpc::generated::ca_client::CaClient;
use crate::rpc::messages::{CaInfo, RenewRequest};
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

/// Renews this member's certificate whenever it is due, until the member stops: at 50-80 % of
/// its life, or at once when the cluster's CA issues from another root (a CA rotation).
pub async fn renew_loop(agent: Arc<Agent>, member: Arc<Member>) {
    let mut failures = 0u32;
    let mut cluster_info = member.cluster_info.subscribe();
    let mut settle = Duration::ZERO;
    loop {
        let wait = if failures > 0 {
            Duration::from_secs(1u64 << failures.min(6))
        } else if rotation_pending(&member) {
            settle
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
            // The cluster's CA may have changed: decide again.
            r = cluster_info.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
        }
        let rotating = rotation_pending(&member);
        match renew(&agent, &member).await {
            Ok(()) => {
                failures = 0;
                // A manager whose replica has not seen the rotation yet may have answered:
                // ask again shortly, not in a tight loop.
                settle = if rotating && rotation_pending(&member) {
                    Duration::from_millis(500)
                } else {
                    Duration::ZERO
                };
                if rotating && !rotation_pending(&member) {
                    tracing::info!("node certificate renewed from the cluster's new root CA");
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "could not renew the node certificate; retrying");
            }
        }
    }
}

/// Whether the cluster's CA issues from a root other than the one that issued this node's
/// certificate (a CA rotation in progress): the node renews at once.
fn rotation_pending(member: &Member) -> bool {
    let issuer = match member
        .cluster_info
        .borrow()
        .as_ref()
        .and_then(|c| c.ca.as_ref())
    {
        Some(ca) => ca.issuer_pem.clone(),
        None => return false,
    };
    pki::tls::issuer_of(&member.cert.keys().cert_pem, &issuer).is_none()
}

/// Applies the cluster's CA as the dispatcher sent it: the roots to trust (from the next
/// handshake on, saved for restarts, and presented after the node's certificate so joining
/// nodes find the root their token pins).
pub fn apply_ca(agent: &Agent, member: &Member, ca: &CaInfo) {
    match member.trust.replace(&ca.trust_pem) {
        Ok(false) => {}
        Ok(true) => {
            tracing::info!(roots = ?member.trust.digests(), "cluster port: trusted root CAs changed");
            if let Err(e) = member.cert.replace(&ca.trust_pem, &member.cert.keys()) {
                tracing::warn!(error = %e, "cannot present the node certificate with the new roots");
            }
            let path = agent.cfg.state_path("certs/ca.pem");
            if let Err(e) = crate::config::write_atomic(&path, ca.trust_pem.as_bytes(), 0o644) {
                tracing::warn!(error = %e, path = %path.display(), "cannot save the trusted root CAs");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "the cluster sent root CAs this node cannot use; keeping its trust")
        }
    }
}

/// This node's TLS state as it reports it to the leader (docker's TLSInfo): the roots it trusts
/// and the root (among them) that issued its certificate.
pub fn tls_info(member: &Member) -> model::node::TlsInfo {
    let trust = member.trust.pem();
    let issuer = pki::tls::issuer_of(&member.cert.keys().cert_pem, &trust)
        .map(|(_, i)| i)
        .unwrap_or_default();
    model::node::TlsInfo {
        trust_root: trust,
        cert_issuer_subject: issuer.subject,
        cert_issuer_public_key: issuer.public_key,
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
            .replace(&member.trust.pem(), &keys)
            .map_err(|e| Failure::internal(format!("the renewed certificate is unusable: {e}")))?;
        // New connections from here on present it: after a CA rotation the managers close the
        // ones set up with a certificate of the old CA.
        member.reset_channels();
        Saved {
            node: member.node_state(),
            ca_pem: member.trust.pem(),
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
