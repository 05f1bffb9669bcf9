//! rustls configurations for the cluster port (2377), all on the ring provider.
//!
//! - [`server_config`]: the manager's side. It presents its node certificate (with the CA) and
//!   *asks* for a client certificate signed by the cluster CA, but lets a client without one
//!   connect: only the join service accepts such a connection; every other service checks the
//!   verified peer certificate and its role ([`crate::Identity`]).
//! - [`client_config`]: a member's side, presenting its node certificate.
//! - [`pinned_client_config`]: a joining node's side, without a certificate, trusting a manager
//!   only if the CA in its chain has the digest from the join token.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

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

fn roots(ca_pem: &str) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(cert_der_from_pem(ca_pem)?))?;
    Ok(roots)
}

fn chain(ca_pem: &str, keys: &NodeKeys) -> Result<Vec<CertificateDer<'static>>> {
    Ok(vec![
        CertificateDer::from(cert_der_from_pem(&keys.cert_pem)?),
        CertificateDer::from(cert_der_from_pem(ca_pem)?),
    ])
}

/// The manager's TLS server configuration (ALPN h2 for gRPC).
pub fn server_config(ca_pem: &str, keys: &NodeKeys) -> Result<Arc<ServerConfig>> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(ca_pem, keys)?, key_from_pem(&keys.key_pem)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A member's TLS client configuration: trusts the cluster CA, presents the node certificate.
pub fn client_config(ca_pem: &str, keys: &NodeKeys) -> Result<Arc<ClientConfig>> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(chain(ca_pem, keys)?, key_from_pem(&keys.key_pem)?)?;
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
        .with_root_certificates(roots(ca_pem)?)
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
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
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
        let keys = ca
            .issue(&Identity {
                node_id: "n".into(),
                role: Role::Manager,
                cluster_id: "c".into(),
            })
            .unwrap();
        server_config(ca.cert_pem(), &keys).unwrap();
        client_config(ca.cert_pem(), &keys).unwrap();
        pinned_client_config(&ca.digest()).unwrap();
        anonymous_client_config(ca.cert_pem()).unwrap();
    }
}
