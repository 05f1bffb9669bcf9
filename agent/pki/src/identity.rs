//! Who a certificate says its holder is.

use crate::{Error, Result};

/// A node's role as its certificate states it (OU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    /// The OU value, as Docker writes it.
    pub fn ou(self) -> &'static str {
        match self {
            Role::Manager => "swarm-manager",
            Role::Worker => "swarm-worker",
        }
    }

    pub fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            "swarm-manager" => Some(Role::Manager),
            "swarm-worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

/// The subject of a node certificate: CN = node id, OU = role, O = cluster id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub node_id: String,
    pub role: Role,
    pub cluster_id: String,
}

impl Identity {
    /// Reads the identity from a DER certificate. Does not verify it: callers use it on
    /// certificates the TLS layer has already verified against the cluster CA.
    pub fn from_der(der: &[u8]) -> Result<Identity> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Error::Certificate(format!("cannot parse: {e}")))?;
        let subject = cert.subject();
        let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
            it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
        };
        let node_id = first(&mut subject.iter_common_name())
            .ok_or_else(|| Error::Certificate("no CN (node id)".into()))?;
        let ou = first(&mut subject.iter_organizational_unit())
            .ok_or_else(|| Error::Certificate("no OU (role)".into()))?;
        let role = Role::from_ou(&ou)
            .ok_or_else(|| Error::Certificate(format!("unknown role {ou:?} in OU")))?;
        let cluster_id = first(&mut subject.iter_organization())
            .ok_or_else(|| Error::Certificate("no O (cluster id)".into()))?;
        Ok(Identity {
            node_id,
            role,
            cluster_id,
        })
    }

    /// Reads the identity from a PEM certificate.
    pub fn from_pem(pem: &str) -> Result<Identity> {
        Identity::from_der(&crate::tls::cert_der_from_pem(pem)?)
    }
}

/// When a certificate (PEM) starts and stops being valid, in seconds since the Unix epoch.
pub fn validity(pem: &str) -> Result<(i64, i64)> {
    let der = crate::tls::cert_der_from_pem(pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| Error::Certificate(format!("cannot parse: {e}")))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}
