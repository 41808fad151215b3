//! Certificates made in tests: a CA and the certificates it signs, as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A test certificate authority.
pub struct TestCa {
    pub issuer: CertifiedIssuer<'static, KeyPair>,
}

/// Paths of a certificate, its key, and the CA that signed it.
#[derive(Debug, Clone)]
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        TestCa { issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed ca") }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes a certificate for `dns` names and `uris`, valid for both TLS server and
    /// client use, as `dir/name.crt`, `dir/name.key`, and this CA as `dir/name-ca.crt`.
    pub fn issue(&self, dir: &Path, name: &str, dns: &[&str], uris: &[&str]) -> TestCert {
        let mut params =
            CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("leaf params");
        for u in uris {
            params.subject_alt_names.push(SanType::URI((*u).try_into().expect("an ia5 uri")));
        }
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        let paths = TestCert {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            ca: dir.join(format!("{name}-ca.crt")),
        };
        std::fs::write(&paths.cert, cert.pem()).expect("write cert");
        std::fs::write(&paths.key, key.serialize_pem()).expect("write key");
        std::fs::write(&paths.ca, self.pem()).expect("write ca");
        paths
    }
}
