//! The cluster's root CA and the node certificates it signs.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::identity::{Identity, Role};
use crate::{Error, MANAGER_SERVER_NAME, Result};

/// Lifetime of the root CA (Docker: 20 years).
const CA_VALIDITY: Duration = Duration::days(20 * 365);
/// How far back a node certificate's validity starts (clock skew between nodes): its
/// `not_before` is the moment of signing minus this.
pub const NODE_CERT_BACKDATE_SECS: i64 = 3600;

/// A node's certificate and private key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeKeys {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster's root CA: certificate and key in PEM.
#[derive(Clone)]
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("digest", &self.digest())
            .finish()
    }
}

impl Ca {
    /// A new self-signed root CA for the cluster `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<Ca> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "swarm-ca");
        dn.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + CA_VALIDITY;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }

    /// The CA kept in the store.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let cert_der = crate::tls::cert_der_from_pem(cert_pem)?;
        KeyPair::from_pem(key_pem).map_err(|e| Error::Pem {
            what: "CA key",
            why: e.to_string(),
        })?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            cert_der,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The digest join tokens carry.
    pub fn digest(&self) -> String {
        crate::token::ca_digest(&self.cert_der)
    }

    fn node_params(id: &Identity, validity: std::time::Duration) -> Result<CertificateParams> {
        let mut sans = vec![id.node_id.clone(), id.role.ou().to_string()];
        if id.role == Role::Manager && id.role.ou() != MANAGER_SERVER_NAME {
            sans.push(MANAGER_SERVER_NAME.to_string());
        }
        let mut params = CertificateParams::new(sans)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.node_id.as_str());
        dn.push(DnType::OrganizationalUnitName, id.role.ou());
        dn.push(DnType::OrganizationName, id.cluster_id.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::seconds(NODE_CERT_BACKDATE_SECS);
        params.not_after = now
            + Duration::try_from(validity)
                .map_err(|e| Error::Certificate(format!("invalid validity: {e}")))?;
        Ok(params)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }

    /// Signs the public key of a CSR (PEM) into a certificate for `id`. The subject the CSR asks
    /// for is ignored: the CA decides who the node is.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        id: &Identity,
        validity: std::time::Duration,
    ) -> Result<String> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let cert = Self::node_params(id, validity)?.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }

    /// A fresh key and certificate for `id` (the first manager at `swarm init`).
    pub fn issue(&self, id: &Identity, validity: std::time::Duration) -> Result<NodeKeys> {
        let key = KeyPair::generate()?;
        let cert = Self::node_params(id, validity)?.signed_by(&key, &self.issuer()?)?;
        Ok(NodeKeys {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A fresh private key and a CSR for it: (csr_pem, key_pem). The key never leaves the node.
pub fn new_csr() -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(Vec::<String>::new())?;
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

    #[test]
    fn ca_signs_csr_with_identity() {
        let ca = Ca::generate("cluster1").unwrap();
        let (csr, _key) = new_csr().unwrap();
        let id = Identity {
            node_id: "abc".into(),
            role: Role::Worker,
            cluster_id: "cluster1".into(),
        };
        let cert = ca.sign_csr(&csr, &id, DAY).unwrap();
        assert_eq!(Identity::from_pem(&cert).unwrap(), id);
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.digest(), ca.digest());
        let m = Identity {
            role: Role::Manager,
            ..id
        };
        let keys = again.issue(&m, DAY).unwrap();
        let (from, to) = crate::validity(&keys.cert_pem).unwrap();
        assert_eq!(to - from, 86_400 + NODE_CERT_BACKDATE_SECS);
        assert_eq!(Identity::from_pem(&keys.cert_pem).unwrap(), m);
        assert!(sign_garbage(&ca).is_err());
    }

    fn sign_garbage(ca: &Ca) -> Result<String> {
        ca.sign_csr(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            &Identity {
                node_id: "x".into(),
                role: Role::Worker,
                cluster_id: "c".into(),
            },
            DAY,
        )
    }
}
