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
    /// Certificates appended to every certificate this CA signs (PEM): during a CA rotation,
    /// the new root cross-signed by the old one, so that peers still trusting only the old root
    /// accept the new certificates.
    intermediates_pem: String,
}

/// A CA rotation's material: the new root and the new root's key certified by the old root.
#[derive(Clone)]
pub struct Rotation {
    pub ca: Ca,
    /// PEM of the cross-signed certificate: subject and key of the new root, issued by the old.
    pub cross_signed_pem: String,
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
        let params = Self::root_params(cluster_id, None)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            intermediates_pem: String::new(),
        })
    }

    /// A CA rotation away from this root (as swarmkit does it): a new self-signed root with a
    /// fresh key and its own name, and the same root certificate signed by this one.
    pub fn rotate(&self, cluster_id: &str) -> Result<Rotation> {
        let key = KeyPair::generate()?;
        let tag = format!(
            "rotation {}",
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        );
        let params = Self::root_params(cluster_id, Some(&tag))?;
        let cert = params.self_signed(&key)?;
        let cross = params.signed_by(&key, &self.issuer()?)?;
        Ok(Rotation {
            ca: Ca {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                cert_der: cert.der().to_vec(),
                intermediates_pem: String::new(),
            },
            cross_signed_pem: cross.pem(),
        })
    }

    fn root_params(cluster_id: &str, tag: Option<&str>) -> Result<CertificateParams> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "swarm-ca");
        dn.push(DnType::OrganizationName, cluster_id);
        if let Some(tag) = tag {
            // A name of its own: the cross-signed certificate must not look self-issued.
            dn.push(DnType::OrganizationalUnitName, tag);
        }
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
        Ok(params)
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
            intermediates_pem: String::new(),
        })
    }

    /// This CA, appending `pem` (certificates) to every certificate it signs.
    pub fn with_intermediates(mut self, pem: &str) -> Result<Ca> {
        if !pem.trim().is_empty() {
            crate::trust::certs_der_from_pem(pem)?;
        }
        self.intermediates_pem = pem.trim().to_string();
        Ok(self)
    }

    fn chain(&self, leaf_pem: String) -> String {
        if self.intermediates_pem.is_empty() {
            return leaf_pem;
        }
        let mut out = leaf_pem;
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&self.intermediates_pem);
        out.push('\n');
        out
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
        Ok(self.chain(cert.pem()))
    }

    /// A fresh key and certificate for `id` (the first manager at `swarm init`).
    pub fn issue(&self, id: &Identity, validity: std::time::Duration) -> Result<NodeKeys> {
        let key = KeyPair::generate()?;
        let cert = Self::node_params(id, validity)?.signed_by(&key, &self.issuer()?)?;
        Ok(NodeKeys {
            cert_pem: self.chain(cert.pem()),
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
