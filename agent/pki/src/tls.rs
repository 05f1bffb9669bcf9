//! rustls configurations for the cluster port (2377), all on the ring provider.
//!
//! - [`server_config`]: the manager's side. It presents its node certificate (with the CA) and
//!   *asks* for a client certificate signed by the cluster CA, but lets a client without one
//!   connect: only the join service accepts such a connection; every other service checks the
//!   verified peer certificate and its role ([`crate::Identity`]).
//! - [`client_config`]: a member's side, presenting its node certificate.
//! - Trust ([`Trust`]) and the node certificate ([`NodeCert`]) are both replaceable in place: a
//!   CA rotation changes them without a restart.
//! - [`pinned_client_config`]: a joining node's side, without a certificate, trusting a manager
//!   only if the CA in its chain has the digest from the join token.

use std::sync::{Arc, RwLock};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

pub use crate::trust::{
    IssuerInfo, Trust, base64, certs_der_from_pem, issuer_info_of_ca, issuer_of, pem_of,
};
use crate::{Error, MANAGER_SERVER_NAME, NodeKeys, Result};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server name clients check on managers' certificates.
pub fn manager_server_name() -> ServerName<'static> {
    ServerName::try_from(MANAGER_SERVER_NAME).expect("a valid DNS name")
}

/// The DER of the first certificate in a PEM text.
pub fn cert_der_from_pem(pem: &str) -> Result<Vec<u8>> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| Error::Pem {
            what: "certificate",
            why: e.to_string(),
        })
}

fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Pem {
        what: "private key",
        why: e.to_string(),
    })
}

/// What a node presents: its certificate with the intermediates that came with it (during a
/// CA rotation, the cross-signed new root), then the roots it trusts (a joining node pins one
/// of them by the token's digest).
fn chain(ca_pem: &str, keys: &NodeKeys) -> Result<Vec<CertificateDer<'static>>> {
    let mut chain = certs_der_from_pem(&keys.cert_pem)?;
    for root in certs_der_from_pem(ca_pem)? {
        if !chain.contains(&root) {
            chain.push(root);
        }
    }
    Ok(chain)
}

/// The node's certificate and key as TLS presents them, replaceable while configurations and
/// connections use it: a renewed certificate takes effect on the next handshake, both as a
/// server (manager) and as a client.
#[derive(Debug)]
pub struct NodeCert {
    current: RwLock<(NodeKeys, Arc<CertifiedKey>)>,
}

impl NodeCert {
    pub fn new(ca_pem: &str, keys: &NodeKeys) -> Result<Arc<NodeCert>> {
        Ok(Arc::new(NodeCert {
            current: RwLock::new((keys.clone(), certified(ca_pem, keys)?)),
        }))
    }

    /// Presents `keys` from the next handshake on.
    pub fn replace(&self, ca_pem: &str, keys: &NodeKeys) -> Result<()> {
        let ck = certified(ca_pem, keys)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (keys.clone(), ck);
        Ok(())
    }

    /// The certificate and key presented now.
    pub fn keys(&self) -> NodeKeys {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    fn get(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }
}

fn certified(ca_pem: &str, keys: &NodeKeys) -> Result<Arc<CertifiedKey>> {
    let key = provider()
        .key_provider
        .load_private_key(key_from_pem(&keys.key_pem)?)?;
    Ok(Arc::new(CertifiedKey::new(chain(ca_pem, keys)?, key)))
}

impl ResolvesServerCert for NodeCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

impl ResolvesClientCert for NodeCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The manager's TLS server configuration (ALPN h2 for gRPC), trusting the root(s) in `ca_pem`.
pub fn server_config(ca_pem: &str, keys: &NodeKeys) -> Result<Arc<ServerConfig>> {
    server_config_with(&Trust::new(ca_pem)?, NodeCert::new(ca_pem, keys)?)
}

/// [`server_config`] presenting whatever `cert` holds and trusting whatever `trust` holds at
/// each handshake.
pub fn server_config_with(trust: &Arc<Trust>, cert: Arc<NodeCert>) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(trust.client_verifier())
        .with_cert_resolver(cert);
    // No session resumption: a resumed session would bring back the client certificate verified
    // under an earlier trust (before a CA rotation completed) without checking it again.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A member's TLS client configuration: trusts the cluster CA (the root(s) in `ca_pem`),
/// presents the node certificate.
pub fn client_config(ca_pem: &str, keys: &NodeKeys) -> Result<Arc<ClientConfig>> {
    client_config_with(&Trust::new(ca_pem)?, NodeCert::new(ca_pem, keys)?)
}

/// [`client_config`] presenting whatever `cert` holds and trusting whatever `trust` holds at
/// each handshake.
pub fn client_config_with(trust: &Arc<Trust>, cert: Arc<NodeCert>) -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(trust.server_verifier())
        .with_client_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS client configuration without a client certificate that only trusts a server whose
/// chain holds a CA with the given digest (from a join token) and whose certificate that CA
/// signed for `swarm-manager`.
pub fn pinned_client_config(ca_digest: &str) -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            digest: ca_digest.to_string(),
            provider: provider(),
        }))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client without any certificate that trusts the cluster CA (tests: a stranger on 2377).
pub fn anonymous_client_config(ca_pem: &str) -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Trust::new(ca_pem)?.server_verifier())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct PinnedCa {
    digest: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| crate::token::ca_digest(c) == self.digest)
        else {
            return Err(rustls::Error::General(
                "the manager's root CA does not match the CA digest in the join token".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        // The other certificates may link the server's certificate to the pinned root (during a
        // CA rotation: the new root cross-signed by the old one).
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ca, Identity, Role};

    #[test]
    fn configs_build() {
        let ca = Ca::generate("c").unwrap();
        let id = Identity {
            node_id: "n".into(),
            role: Role::Manager,
            cluster_id: "c".into(),
        };
        let hour = std::time::Duration::from_secs(3600);
        let keys = ca.issue(&id, hour).unwrap();
        server_config(ca.cert_pem(), &keys).unwrap();
        client_config(ca.cert_pem(), &keys).unwrap();
        pinned_client_config(&ca.digest()).unwrap();
        anonymous_client_config(ca.cert_pem()).unwrap();

        // A renewed certificate replaces the presented one in place.
        let cert = NodeCert::new(ca.cert_pem(), &keys).unwrap();
        let _server =
            server_config_with(&Trust::new(ca.cert_pem()).unwrap(), cert.clone()).unwrap();
        let before = cert.get().cert[0].clone();
        let renewed = ca.issue(&id, hour).unwrap();
        cert.replace(ca.cert_pem(), &renewed).unwrap();
        assert_eq!(cert.keys(), renewed);
        assert_ne!(cert.get().cert[0], before);
        assert_eq!(
            cert.get().cert[0].as_ref(),
            cert_der_from_pem(&renewed.cert_pem).unwrap()
        );
        // A key that does not parse is refused and the current certificate stays.
        let broken = NodeKeys {
            cert_pem: renewed.cert_pem.clone(),
            key_pem: "not a key".into(),
        };
        assert!(cert.replace(ca.cert_pem(), &broken).is_err());
        assert_eq!(cert.keys(), renewed);
    }

    /// A CA rotation: certificates of the new CA carry the new root cross-signed by the old
    /// one, so they are accepted by peers trusting the old root only, both roots, or the new
    /// root only; a certificate of the old CA is refused once the new root alone is trusted.
    #[test]
    fn rotation_cross_signs_the_new_root() {
        use rustls::client::danger::ServerCertVerifier;
        let hour = std::time::Duration::from_secs(3600);
        let id = Identity {
            node_id: "n".into(),
            role: Role::Manager,
            cluster_id: "c".into(),
        };
        let old = Ca::generate("c").unwrap();
        let rot = old.rotate("c").unwrap();
        assert_ne!(rot.ca.digest(), old.digest());
        let signer = Ca::from_pem(rot.ca.cert_pem(), rot.ca.key_pem())
            .unwrap()
            .with_intermediates(&rot.cross_signed_pem)
            .unwrap();
        let old_keys = old.issue(&id, hour).unwrap();
        let new_keys = signer.issue(&id, hour).unwrap();
        let (csr, _) = crate::new_csr().unwrap();
        let signed = signer.sign_csr(&csr, &id, hour).unwrap();
        assert_eq!(
            certs_der_from_pem(&signed).unwrap().len(),
            2,
            "leaf + cross-signed"
        );
        assert_eq!(Identity::from_pem(&signed).unwrap(), id);

        let both = format!("{}{}", old.cert_pem(), rot.ca.cert_pem());
        let accepts = |roots: &str, keys: &NodeKeys| {
            let trust = Trust::new(roots).unwrap();
            let chain = chain(roots, keys).unwrap();
            let now = UnixTime::now();
            let client = trust
                .client_verifier()
                .verify_client_cert(&chain[0], &chain[1..], now)
                .is_ok();
            let server = trust
                .server_verifier()
                .verify_server_cert(&chain[0], &chain[1..], &manager_server_name(), &[], now)
                .is_ok();
            assert_eq!(client, server, "client and server verification agree");
            client
        };
        // The new certificate, presented with the roots of a peer that trusts only the old
        // one: the cross-signed certificate links it.
        assert!(accepts(old.cert_pem(), &new_keys));
        assert!(accepts(&both, &new_keys));
        assert!(accepts(rot.ca.cert_pem(), &new_keys));
        assert!(accepts(&both, &old_keys));
        assert!(
            !accepts(rot.ca.cert_pem(), &old_keys),
            "the old CA is refused after"
        );
        // Replaced in place: the same verifier refuses from the next handshake on.
        let trust = Trust::new(&both).unwrap();
        let verifier = trust.client_verifier();
        let old_chain = chain(old.cert_pem(), &old_keys).unwrap();
        let now = UnixTime::now();
        assert!(
            verifier
                .verify_client_cert(&old_chain[0], &old_chain[1..], now)
                .is_ok()
        );
        assert!(trust.replace(rot.ca.cert_pem()).unwrap());
        assert!(!trust.replace(rot.ca.cert_pem()).unwrap(), "unchanged");
        assert!(
            verifier
                .verify_client_cert(&old_chain[0], &old_chain[1..], now)
                .is_err()
        );
        assert!(trust.replace("garbage").is_err());
        assert_eq!(trust.generation(), 1);
        assert!(!trust.accepts(&old_chain));
        assert!(trust.accepts(&chain(rot.ca.cert_pem(), &new_keys).unwrap()));
        assert!(!trust.accepts(&[]));
        assert_eq!(trust.digests(), vec![rot.ca.digest()]);

        // Which root issued which certificate.
        let (i, info) = issuer_of(&new_keys.cert_pem, &both).unwrap();
        assert_eq!(i, 1);
        assert_eq!(info, issuer_info_of_ca(rot.ca.cert_pem()).unwrap());
        assert_eq!(issuer_of(&old_keys.cert_pem, &both).unwrap().0, 0);
        assert!(issuer_of(&old_keys.cert_pem, rot.ca.cert_pem()).is_none());

        // A joining node pinning the old root (its token predates the rotation) accepts a
        // manager holding a new certificate.
        let pinned = PinnedCa {
            digest: old.digest(),
            provider: provider(),
        };
        let presented = chain(&both, &new_keys).unwrap();
        pinned
            .verify_server_cert(
                &presented[0],
                &presented[1..],
                &manager_server_name(),
                &[],
                UnixTime::now(),
            )
            .unwrap();
    }
}
