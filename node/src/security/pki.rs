//! A small certificate authority: what the local fleet, the tests and the operator use
//! to make a fleet CA and the certificates it signs (ECDSA P-256, via rcgen and ring).
//!
//! An [`Authority`] can be saved as two PEM strings and rebuilt from them later
//! ([`Authority::from_pem`]) to sign more certificates: its name is kept in the
//! certificate's subject, and the key identifiers are derived from the key, so that
//! certificates signed before and after chain to the same CA certificate.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

use super::cert::CertIdentity;

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

/// How far back a new certificate's validity starts, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(3600);

fn offset_time(t: SystemTime) -> Result<time::OffsetDateTime, PkiError> {
    let secs = t.duration_since(UNIX_EPOCH).map_err(|_| PkiError::Invalid("time before 1970".into()))?.as_secs();
    let secs = i64::try_from(secs).map_err(|_| PkiError::Invalid("time out of range".into()))?;
    time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| PkiError::Invalid(e.to_string()))
}

fn validity(params: &mut CertificateParams, valid_for: Duration) -> Result<(), PkiError> {
    let now = SystemTime::now();
    params.not_before = offset_time(now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH))?;
    let end = now.checked_add(valid_for).ok_or_else(|| PkiError::Invalid("validity too long".into()))?;
    params.not_after = offset_time(end)?;
    Ok(())
}

/// The parameters of a CA named `name` (without validity).
fn ca_params(name: &str) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}

/// A certificate authority that signs certificates.
pub struct Authority {
    name: String,
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("name", &self.name).finish_non_exhaustive()
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Default)]
pub struct LeafSpec {
    pub common_name: String,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// URIs, e.g. `geocache://eu/*` (see [`super::cert`]).
    pub uris: Vec<String>,
    pub valid_for: Duration,
}

/// A certificate and its private key, in PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The end of its validity, in Unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

impl Authority {
    /// A new CA named `name`, valid for `valid_for`.
    pub fn generate(name: &str, valid_for: Duration) -> Result<Authority, PkiError> {
        let mut params = ca_params(name)?;
        validity(&mut params, valid_for)?;
        let key = KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Authority { name: name.to_string(), issuer: Issuer::new(params, key), cert_pem })
    }

    /// The CA `name` saved earlier as `cert_pem` and `key_pem`.
    pub fn from_pem(name: &str, cert_pem: &str, key_pem: &str) -> Result<Authority, PkiError> {
        // Rebuilt from the parameters and the key: same subject, same key identifier.
        let issuer = Issuer::new(ca_params(name)?, KeyPair::from_pem(key_pem)?);
        Ok(Authority { name: name.to_string(), issuer, cert_pem: cert_pem.to_string() })
    }

    /// The CA certificate (PEM): what peers and clients trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM). A secret: store it only where the CA's certificates
    /// are made.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for `spec`, for TLS servers and clients alike.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(spec.dns_names.clone())?;
        for ip in &spec.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        for uri in &spec.uris {
            let ia5 = uri.as_str().try_into().map_err(|_| PkiError::Invalid(format!("{uri:?} is not an ascii uri")))?;
            params.subject_alt_names.push(SanType::URI(ia5));
        }
        params.distinguished_name.push(DnType::CommonName, spec.common_name.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, spec.valid_for)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let not_after = CertIdentity::from_der(cert.der())
            .ok()
            .and_then(|c| c.not_after)
            .ok_or_else(|| PkiError::Invalid("the new certificate cannot be read back".into()))?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after })
    }
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A random password: 32 bytes from the system's secure generator, as 64 hex digits.
pub fn random_password() -> Result<String, PkiError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| PkiError::Invalid("no secure randomness".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::tls::{provider, read_roots};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};

    fn verifies(ca_pem: &str, cert_pem: &str) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, ca_pem).unwrap();
        let roots = std::sync::Arc::new(read_roots("ca", &ca_path).unwrap());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider()).build().unwrap();
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        verifier.verify_client_cert(&cert, &[], UnixTime::now()).is_ok()
    }

    #[test]
    fn issued_certificates_chain_to_their_authority_and_carry_the_identity() {
        let ca = Authority::generate("geocache-test", Duration::from_secs(86_400)).unwrap();
        let leaf = ca
            .issue(&LeafSpec {
                common_name: "eu".into(),
                dns_names: vec!["geocache-eu.example".into()],
                uris: vec!["geocache://eu/*".into()],
                valid_for: Duration::from_secs(3600),
                ..LeafSpec::default()
            })
            .unwrap();
        assert!(verifies(ca.cert_pem(), &leaf.cert_pem));
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let id = CertIdentity::from_der(&der).unwrap();
        assert_eq!(id.check("eu-3", "eu"), Ok(()));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((leaf.not_after - now - 3600).abs() < 5, "{} vs {now}", leaf.not_after);
        let other = Authority::generate("geocache-test", Duration::from_secs(86_400)).unwrap();
        assert!(!verifies(other.cert_pem(), &leaf.cert_pem), "another CA of the same name does not verify it");
    }

    #[test]
    fn random_passwords_are_long_and_differ() {
        let (a, b) = (random_password().unwrap(), random_password().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn an_authority_saved_as_pem_signs_certificates_that_chain_to_the_saved_certificate() {
        let ca = Authority::generate("geocache-default-demo", Duration::from_secs(86_400)).unwrap();
        let (cert, key) = (ca.cert_pem().to_string(), ca.key_pem());
        let again = Authority::from_pem("geocache-default-demo", &cert, &key).unwrap();
        assert_eq!(again.cert_pem(), cert);
        let leaf = again
            .issue(&LeafSpec { common_name: "us".into(), valid_for: Duration::from_secs(600), ..LeafSpec::default() })
            .unwrap();
        assert!(verifies(&cert, &leaf.cert_pem));
        assert!(!format!("{again:?} {leaf:?}").contains("PRIVATE"));
    }
}
