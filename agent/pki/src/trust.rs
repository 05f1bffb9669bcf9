//! The roots a node trusts on the cluster port, replaceable while TLS configurations use them
//! (a CA rotation changes them without restarting anything), and what a certificate says about
//! its issuer.
//!
//! During a CA rotation the trust holds both roots (the old one first); once every node holds a
//! certificate from the new CA it holds the new root alone, and a certificate from the old CA
//! fails the handshake from then on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::{Error, Result};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM text, in order.
pub fn certs_der_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what: "certificate",
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            what: "certificate",
            why: "no certificate in the PEM text".into(),
        });
    }
    Ok(certs)
}

/// The PEM text of DER certificates.
pub fn pem_of(certs: &[CertificateDer<'_>]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for c in certs {
        let b64 = base64(c.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Standard base64 with padding (docker's encoding of DER in TLSInfo).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Who issued a certificate, as docker's TLSInfo shows it: the issuer's subject and public key
/// (DER, base64).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IssuerInfo {
    pub subject: String,
    pub public_key: String,
}

/// The subject and public key of a CA certificate (PEM, its first certificate): what a
/// certificate it issued names as its issuer.
pub fn issuer_info_of_ca(ca_pem: &str) -> Result<IssuerInfo> {
    let der = crate::tls::cert_der_from_pem(ca_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| Error::Certificate(format!("cannot parse: {e}")))?;
    Ok(IssuerInfo {
        subject: base64(cert.subject().as_raw()),
        public_key: base64(cert.public_key().raw),
    })
}

/// Which of `roots_pem`'s certificates signed the node certificate `cert_pem` (its first
/// certificate) directly, verified: that root's issuer info and its index in `roots_pem`. None if
/// none of them did (or the certificate is not valid now).
pub fn issuer_of(cert_pem: &str, roots_pem: &str) -> Option<(usize, IssuerInfo)> {
    let leaf = CertificateDer::from(crate::tls::cert_der_from_pem(cert_pem).ok()?);
    let roots = certs_der_from_pem(roots_pem).ok()?;
    for (i, root) in roots.iter().enumerate() {
        let mut store = RootCertStore::empty();
        if store.add(root.clone()).is_err() {
            continue;
        }
        let Ok(verifier) =
            WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider()).build()
        else {
            continue;
        };
        if verifier
            .verify_client_cert(&leaf, &[], UnixTime::now())
            .is_ok()
        {
            let info = issuer_info_of_ca(&pem_of(std::slice::from_ref(root))).ok()?;
            return Some((i, info));
        }
    }
    None
}

struct State {
    pem: String,
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

/// The roots of trust of the cluster port, shared by a node's TLS configurations (the server's
/// client verifier and the client's server verifier) and replaceable in place: the new roots
/// apply from the next handshake on.
pub struct Trust {
    state: RwLock<State>,
    /// Raised by every change: connections verified under an older trust check again.
    generation: AtomicU64,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("roots", &self.digests())
            .finish()
    }
}

fn build(pem: &str) -> Result<State> {
    let mut roots = RootCertStore::empty();
    for c in certs_der_from_pem(pem)? {
        roots.add(c)?;
    }
    let roots = Arc::new(roots);
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))?;
    let server = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))?;
    Ok(State {
        pem: pem.to_string(),
        client,
        server,
    })
}

impl Trust {
    /// Trust in the root certificates of a PEM text (one or more).
    pub fn new(roots_pem: &str) -> Result<Arc<Trust>> {
        Ok(Arc::new(Trust {
            state: RwLock::new(build(roots_pem)?),
            generation: AtomicU64::new(0),
        }))
    }

    /// Trusts `roots_pem` from the next handshake on; false if it already did. Roots that do
    /// not parse are refused and the current trust stays.
    pub fn replace(&self, roots_pem: &str) -> Result<bool> {
        if self.pem() == roots_pem {
            return Ok(false);
        }
        let next = build(roots_pem)?;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = next;
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }

    /// How many times the trust changed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether a client certificate chain (the node certificate first, as presented) is trusted
    /// now: for connections set up under an earlier trust.
    pub fn accepts(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((leaf, rest)) = chain.split_first() else {
            return false;
        };
        self.client()
            .verify_client_cert(leaf, rest, UnixTime::now())
            .is_ok()
    }

    /// The trusted roots, PEM, as given.
    pub fn pem(&self) -> String {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .pem
            .clone()
    }

    /// The join-token digests of the trusted roots.
    pub fn digests(&self) -> Vec<String> {
        certs_der_from_pem(&self.pem())
            .map(|cs| cs.iter().map(|c| crate::ca_digest(c)).collect())
            .unwrap_or_default()
    }

    fn client(&self) -> Arc<dyn ClientCertVerifier> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .client
            .clone()
    }

    fn server(&self) -> Arc<WebPkiServerVerifier> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .server
            .clone()
    }

    /// A client-certificate verifier over whatever this trust holds at each handshake (client
    /// certificates optional: the join service takes clients without one).
    pub fn client_verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(ClientVerifier(self.clone()))
    }

    /// A server-certificate verifier over whatever this trust holds at each handshake.
    pub fn server_verifier(self: &Arc<Self>) -> Arc<dyn ServerCertVerifier> {
        Arc::new(ServerVerifier(self.clone()))
    }
}

#[derive(Debug)]
struct ClientVerifier(Arc<Trust>);

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: a node has one certificate and presents it whatever the server trusts.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.0
            .client()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.client().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.client().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.client().supported_verify_schemes()
    }
}

#[derive(Debug)]
struct ServerVerifier(Arc<Trust>);

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        self.0.server().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.server().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.server().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.server().supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_encoding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn pem_round_trips() {
        let ca = crate::Ca::generate("c").unwrap();
        let certs = certs_der_from_pem(ca.cert_pem()).unwrap();
        assert_eq!(certs_der_from_pem(&pem_of(&certs)).unwrap(), certs);
        assert!(certs_der_from_pem("nothing").is_err());
    }
}
