//! CA rotation (`netctl swarm ca --rotate`; docker's `swarm ca --rotate`, which raises
//! `Spec.CAConfig.ForceRotate` in `/swarm/update`), the way swarmkit does it:
//!
//! 1. The manager answering the update makes a new root (fresh key, its own name) and the new
//!    root's certificate signed by the current root (the cross-signed certificate), and records
//!    them in the cluster object as the rotation in progress (`Cluster::root_rotation`, in the
//!    Raft store with the current CA, so any leader carries it on).
//! 2. From then on the CA service issues from the new root and appends the cross-signed
//!    certificate (chain: node certificate <- cross-signed new root <- old root): a peer still
//!    trusting only the old root accepts it. Every node gets both roots to trust in its
//!    dispatcher session's cluster settings, renews its certificate at once from the new root,
//!    and reports its TLS state (trusted roots, issuer) to the leader.
//! 3. The leader finishes the rotation once every node in the store reports a certificate
//!    issued by the new root (a node that is down holds it up; a removed node is no longer in
//!    the store): the new root becomes the cluster's root, the old one leaves the trust of every
//!    node (from its next session heartbeat), and new join tokens carrying the new root's digest
//!    replace the old ones (as swarmkit: new secrets too, the old tokens stop working).
//!
//! `GET /swarm` shows `RootRotationInProgress`; `netctl swarm ca --rotate` waits and shows how
//! many nodes hold a new certificate and how many trust only the new root.

use model::Cluster;
use pki::Ca;
use store::{Batch, Change};

use crate::error::{Failure, Result};
use crate::member::Member;

/// The CA that signs node certificates now: during a rotation the new root, its certificates
/// followed by the cross-signed new root.
pub fn signer(c: &Cluster) -> pki::Result<Ca> {
    match &c.root_rotation {
        None => Ca::from_pem(&c.ca_cert_pem, &c.ca_key_pem),
        Some(r) => {
            Ca::from_pem(&r.ca_cert_pem, &r.ca_key_pem)?.with_intermediates(&r.cross_signed_pem)
        }
    }
}

/// The join-token digest of the cluster's root (during a rotation, still the old root's).
pub fn root_digest(c: &Cluster) -> String {
    pki::tls::cert_der_from_pem(&c.ca_cert_pem)
        .map(|d| pki::ca_digest(&d))
        .unwrap_or_default()
}

/// The cluster patch that starts a rotation away from the current root (replacing a rotation
/// in progress, as swarmkit does: the new root is again cross-signed by the current one), with
/// docker's ForceRotate counter recorded.
pub fn start(c: &Cluster, force_rotate: u64) -> Result<serde_json::Value> {
    let current = Ca::from_pem(&c.ca_cert_pem, &c.ca_key_pem)
        .map_err(|e| Failure::internal(format!("the cluster CA is unusable: {e}")))?;
    let rotation = current
        .rotate(&c.meta.id)
        .map_err(|e| Failure::internal(format!("cannot make a new root CA: {e}")))?;
    let r = model::cluster::RootRotation {
        ca_cert_pem: rotation.ca.cert_pem().to_string(),
        ca_key_pem: rotation.ca.key_pem().to_string(),
        cross_signed_pem: rotation.cross_signed_pem,
        started_at: chrono::Utc::now(),
    };
    Ok(serde_json::json!({
        "root_rotation": serde_json::to_value(&r).map_err(|e| Failure::internal(e.to_string()))?,
        "ca_force_rotate": force_rotate,
    }))
}

/// The TLS state of a node that trusts `trust_pem` and holds a certificate issued by the root
/// `issuer_pem` (what a node created by `swarm init` or a join will report).
pub fn tls_info_of(trust_pem: &str, issuer_pem: &str) -> model::node::TlsInfo {
    let issuer = pki::tls::issuer_info_of_ca(issuer_pem).unwrap_or_default();
    model::node::TlsInfo {
        trust_root: trust_pem.to_string(),
        cert_issuer_subject: issuer.subject,
        cert_issuer_public_key: issuer.public_key,
    }
}

/// How far a rotation has come: nodes in the store, those whose certificate the new root
/// issued, those that trust the new root alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub nodes: usize,
    pub certificates: usize,
    pub trust: usize,
}

/// The progress of the rotation towards the root that issues now (after a rotation, the
/// current root: then every node is expected to trust it alone).
pub fn progress(c: &Cluster, nodes: &[model::Node]) -> Progress {
    let want = pki::tls::issuer_info_of_ca(c.issuer_pem())
        .map(|i| i.public_key)
        .unwrap_or_default();
    let root = pki::tls::certs_der_from_pem(c.issuer_pem()).unwrap_or_default();
    let tls = |n: &model::Node| n.tls_info.clone().unwrap_or_default();
    Progress {
        nodes: nodes.len(),
        certificates: nodes
            .iter()
            .filter(|n| !want.is_empty() && tls(n).cert_issuer_public_key == want)
            .count(),
        trust: nodes
            .iter()
            .filter(|n| pki::tls::certs_der_from_pem(&tls(n).trust_root).is_ok_and(|t| t == root))
            .count(),
    }
}

/// Leader tick: finishes the rotation in progress once every node in the store holds a
/// certificate from the new root. A failed or conflicting write is tried on the next tick.
pub async fn reconcile(member: &Member) {
    let Ok(c) = member.cluster() else { return };
    let Some(r) = &c.root_rotation else { return };
    let Ok(nodes) = member.nodes() else { return };
    let p = progress(&c, &nodes);
    if p.certificates < p.nodes {
        tracing::debug!(
            rotated = p.certificates,
            nodes = p.nodes,
            "CA rotation: waiting for nodes to hold a certificate from the new root"
        );
        return;
    }
    let digest = pki::tls::cert_der_from_pem(&r.ca_cert_pem)
        .map(|d| pki::ca_digest(&d))
        .unwrap_or_default();
    let patch = serde_json::json!({
        "ca_cert_pem": r.ca_cert_pem,
        "ca_key_pem": r.ca_key_pem,
        "root_rotation": null,
        "join_tokens": {
            "worker": pki::JoinToken::generate(&digest).to_string(),
            "manager": pki::JoinToken::generate(&digest).to_string(),
        },
    });
    let change = Change::Patch {
        kind: model::Kind::Cluster,
        id: c.meta.id.clone(),
        patch,
        version: Some(c.meta.version),
    };
    match member.write(Batch::one(change)).await {
        Ok(_) => tracing::info!(
            nodes = p.nodes,
            took_ms = (chrono::Utc::now() - r.started_at).num_milliseconds(),
            "CA rotation complete: every node holds a certificate from the new root, which replaces the old one"
        ),
        Err(e) => {
            tracing::info!(error = %e, "CA rotation: could not record the completion; trying again")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_issues_from_the_new_root_and_completes_on_the_nodes_reports() {
        pki::install_crypto_provider();
        let ca = Ca::generate("c1").unwrap();
        let mut c = Cluster {
            meta: model::Meta::with_id("c1".into()),
            ca_cert_pem: ca.cert_pem().into(),
            ca_key_pem: ca.key_pem().into(),
            join_tokens: model::cluster::JoinTokens {
                worker: String::new(),
                manager: String::new(),
            },
            default_addr_pools: Vec::new(),
            subnet_size: 24,
            data_path_port: 4789,
            network_keys: Vec::new(),
            settings: Default::default(),
            data_key_rotated_at: None,
            removed_nodes: Vec::new(),
            root_rotation: None,
            ca_force_rotate: 0,
        };
        assert_eq!(signer(&c).unwrap().digest(), ca.digest());
        let mut v = serde_json::to_value(&c).unwrap();
        store::merge_patch(&mut v, &start(&c, 1).unwrap());
        c = serde_json::from_value(v).unwrap();
        let r = c.root_rotation.clone().expect("a rotation in progress");
        assert_eq!(c.ca_force_rotate, 1);
        assert_eq!(
            root_digest(&c),
            ca.digest(),
            "the root stays until completion"
        );
        assert_eq!(
            pki::tls::certs_der_from_pem(&c.trust_pem()).unwrap().len(),
            2
        );
        let id = pki::Identity {
            node_id: "n".into(),
            role: pki::Role::Worker,
            cluster_id: "c1".into(),
        };
        let keys = signer(&c)
            .unwrap()
            .issue(&id, std::time::Duration::from_secs(60))
            .unwrap();
        let (i, issuer) = pki::tls::issuer_of(&keys.cert_pem, &c.trust_pem()).unwrap();
        assert_eq!(i, 1, "issued by the new root");
        let node = |info: Option<model::node::TlsInfo>| model::Node {
            tls_info: info,
            ..orchestrator_free_node()
        };
        let old_info = model::node::TlsInfo {
            trust_root: ca.cert_pem().into(),
            ..Default::default()
        };
        let new_info = model::node::TlsInfo {
            trust_root: c.trust_pem(),
            cert_issuer_subject: issuer.subject.clone(),
            cert_issuer_public_key: issuer.public_key.clone(),
        };
        let p = progress(
            &c,
            &[
                node(Some(old_info)),
                node(Some(new_info.clone())),
                node(None),
            ],
        );
        assert_eq!((p.nodes, p.certificates, p.trust), (3, 1, 0));
        // Completed: the new root alone; a node trusting it alone counts.
        c.ca_cert_pem = r.ca_cert_pem.clone();
        c.root_rotation = None;
        let done = model::node::TlsInfo {
            trust_root: r.ca_cert_pem.clone(),
            ..new_info
        };
        let p = progress(&c, &[node(Some(done))]);
        assert_eq!((p.nodes, p.certificates, p.trust), (1, 1, 1));
    }

    fn orchestrator_free_node() -> model::Node {
        use model::node::*;
        model::Node {
            meta: model::Meta::with_id("n".into()),
            spec: NodeSpec {
                role: Role::Worker,
                availability: Availability::Active,
                labels: Default::default(),
            },
            role: Role::Worker,
            description: Default::default(),
            status: Default::default(),
            manager_status: None,
            advertise_addr: String::new(),
            data_path_addr: String::new(),
            attachments: Vec::new(),
            cert_expires_at: None,
            tls_info: None,
        }
    }
}
