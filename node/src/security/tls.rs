//! TLS configurations built from PEM files, reloaded when the files change.
//!
//! - [`ClientPortsTls`] (`--tls-cert`, `--tls-key`): server-side TLS on the HTTP and
//!   Redis ports.
//! - [`PeerTls`] (`--peer-tls-cert`, `--peer-tls-key`, `--peer-tls-ca`): mutual TLS
//!   between nodes. Both ends present a certificate and accept only one that chains
//!   to the CA file (which may hold several CAs, e.g. old and new during a CA
//!   rotation). Host names are not checked — a peer is reached through addresses that
//!   change (load balancers, WAN links) — but who the peer says it is in its Hello or
//!   Welcome is checked against its certificate ([`super::cert`]).
//!
//! rustls with the `ring` provider; the peer links speak TLS 1.3 only. A reload builds
//! new configurations for new connections; established connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::SecurityError;
use super::cert::CertIdentity;
use super::files::FileStamp;

/// The cryptography of every TLS configuration of the node.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(flag: &'static str, path: &Path, message: impl Into<String>) -> SecurityError {
    SecurityError::File { flag, path: path.to_path_buf(), message: message.into() }
}

/// Reads a PEM certificate chain (leaf first).
pub fn read_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let pem = std::fs::read(path).map_err(|e| file_error(flag, path, e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(flag, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(flag, path, "holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)"));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, SecurityError> {
    let pem = std::fs::read(path).map_err(|e| file_error(flag, path, e.to_string()))?;
    // The error of the PEM parser is kept out of the message: it never holds key
    // material, but there is nothing in it an operator needs either.
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| file_error(flag, path, "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"))
}

/// Reads a PEM file of CA certificates into a root store.
pub fn read_roots(flag: &'static str, path: &Path) -> Result<RootCertStore, SecurityError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(flag, path)? {
        roots.add(cert).map_err(|e| file_error(flag, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A certified key: the chain and the key, checked to belong together.
fn certified_key(
    provider: &CryptoProvider,
    cert_flag: &'static str,
    cert_path: &Path,
    key_flag: &'static str,
    key_path: &Path,
) -> Result<Arc<rustls::sign::CertifiedKey>, SecurityError> {
    let chain = read_certs(cert_flag, cert_path)?;
    let key = read_key(key_flag, key_path)?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error(key_flag, key_path, format!("unusable private key: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        file_error(cert_flag, cert_path, format!("does not match the private key of --{key_flag}: {e}"))
    })?;
    Ok(Arc::new(certified))
}

/// The end of the validity of a chain's leaf, in Unix seconds.
fn leaf_not_after(key: &rustls::sign::CertifiedKey) -> Option<i64> {
    key.end_entity_cert().ok().and_then(|c| CertIdentity::from_der(c).ok()).and_then(|c| c.not_after)
}

/// A value built from files, rebuilt when any of them changes. A rebuild that fails
/// (a file missing, half-written, or not matching the others) keeps the current
/// value, warns once per distinct error, and is tried again on the next poll.
pub struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    current: RwLock<Arc<T>>,
    seen: Mutex<Option<Vec<FileStamp>>>,
    last_error: Mutex<Option<String>>,
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
}

impl<T> Reloading<T> {
    fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, SecurityError>,
    ) -> Result<Self, SecurityError> {
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let seen = FileStamp::of_all(&refs);
        let value = build()?;
        Ok(Reloading {
            what,
            paths,
            current: RwLock::new(Arc::new(value)),
            seen: Mutex::new(seen),
            last_error: Mutex::new(None),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
        })
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.current.read().clone()
    }

    /// Rebuilds the value when a file changed; returns whether it did.
    fn reload_if_changed(&self, build: impl Fn() -> Result<T, SecurityError>) -> bool {
        let refs: Vec<&Path> = self.paths.iter().map(PathBuf::as_path).collect();
        let stamps = FileStamp::of_all(&refs);
        if stamps == *self.seen.lock() {
            return false;
        }
        match build() {
            Ok(value) => {
                *self.current.write() = Arc::new(value);
                *self.seen.lock() = stamps;
                *self.last_error.lock() = None;
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(what = self.what, "tls files reloaded; new connections use them");
                true
            }
            Err(e) => {
                let message = e.to_string();
                let mut last = self.last_error.lock();
                if last.as_deref() != Some(message.as_str()) {
                    self.reload_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        what = self.what, error = %message,
                        "tls files changed but cannot be used; keeping the current ones"
                    );
                    *last = Some(message);
                }
                false
            }
        }
    }
}

/// TLS on the HTTP and Redis ports.
pub struct ClientPortsTls {
    cert: PathBuf,
    key: PathBuf,
    configs: Reloading<ClientPortConfigs>,
    /// Handshakes that failed (clients that do not speak TLS, or do not trust us).
    pub handshake_failures: AtomicU64,
}

/// The server configurations of the client ports, from one certificate.
pub struct ClientPortConfigs {
    http: Arc<ServerConfig>,
    resp: Arc<ServerConfig>,
    not_after: Option<i64>,
}

impl ClientPortsTls {
    pub fn load(cert: &Path, key: &Path) -> Result<ClientPortsTls, SecurityError> {
        let (c, k) = (cert.to_path_buf(), key.to_path_buf());
        let configs = Reloading::new("client tls", vec![c.clone(), k.clone()], || Self::build(&c, &k))?;
        tracing::info!(cert = %cert.display(), "tls on the client ports");
        Ok(ClientPortsTls { cert: c, key: k, configs, handshake_failures: AtomicU64::new(0) })
    }

    fn build(cert: &Path, key: &Path) -> Result<ClientPortConfigs, SecurityError> {
        let provider = provider();
        let certified = certified_key(&provider, "tls-cert", cert, "tls-key", key)?;
        let not_after = leaf_not_after(&certified);
        let server = |alpn: Vec<Vec<u8>>| -> Result<Arc<ServerConfig>, SecurityError> {
            let mut config = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| SecurityError::Tls(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified.clone())));
            config.alpn_protocols = alpn;
            Ok(Arc::new(config))
        };
        Ok(ClientPortConfigs {
            http: server(vec![b"h2".to_vec(), b"http/1.1".to_vec()])?,
            resp: server(Vec::new())?,
            not_after,
        })
    }

    /// For a new HTTPS connection.
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.configs.get().http.clone())
    }

    /// For a new Redis-over-TLS connection.
    pub fn resp_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.configs.get().resp.clone())
    }

    pub fn reload_if_changed(&self) {
        self.configs.reload_if_changed(|| Self::build(&self.cert, &self.key));
    }

    pub fn reloading(&self) -> &Reloading<ClientPortConfigs> {
        &self.configs
    }

    /// When the current certificate expires (Unix seconds).
    pub fn not_after(&self) -> Option<i64> {
        self.configs.get().not_after
    }
}

/// Mutual TLS between nodes.
pub struct PeerTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    configs: Reloading<PeerConfigs>,
}

/// The client and server configurations of peer links.
pub struct PeerConfigs {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    /// What our own certificate says.
    pub own: CertIdentity,
}

impl PeerTls {
    /// Loads the files; warns when our own certificate does not authorize this node
    /// (peers will refuse it).
    pub fn load(cert: &Path, key: &Path, ca: &Path, node_id: &str, region: &str) -> Result<PeerTls, SecurityError> {
        let (c, k, a) = (cert.to_path_buf(), key.to_path_buf(), ca.to_path_buf());
        let configs = Reloading::new("peer tls", vec![c.clone(), k.clone(), a.clone()], || Self::build(&c, &k, &a))?;
        let tls = PeerTls { cert: c, key: k, ca: a, configs };
        tls.check_own(node_id, region);
        tracing::info!(cert = %cert.display(), ca = %ca.display(), "mutual tls on peer links");
        Ok(tls)
    }

    fn build(cert: &Path, key: &Path, ca: &Path) -> Result<PeerConfigs, SecurityError> {
        let provider = provider();
        let certified = certified_key(&provider, "peer-tls-cert", cert, "peer-tls-key", key)?;
        let roots = Arc::new(read_roots("peer-tls-ca", ca)?);
        let own = certified
            .end_entity_cert()
            .ok()
            .and_then(|c| CertIdentity::from_der(c).ok())
            .ok_or_else(|| file_error("peer-tls-cert", cert, "the certificate cannot be read"))?;
        let tls13 = [&rustls::version::TLS13];
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| file_error("peer-tls-ca", ca, e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&tls13)
            .map_err(|e| SecurityError::Tls(e.to_string()))?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified.clone())));
        let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| file_error("peer-tls-ca", ca, e.to_string()))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&tls13)
            .map_err(|e| SecurityError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnly(server_verifier)))
            .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        Ok(PeerConfigs { client: Arc::new(client), server: Arc::new(server), own })
    }

    fn check_own(&self, node_id: &str, region: &str) {
        if let Err(e) = self.configs.get().own.check(node_id, region) {
            tracing::warn!(
                node_id, region, reason = %e,
                "--peer-tls-cert does not authorize this node; peers will refuse its links"
            );
        }
    }

    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.configs.get().client.clone())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.configs.get().server.clone())
    }

    /// Reloads changed files (new links use them; established links keep theirs).
    pub fn reload_if_changed(&self, node_id: &str, region: &str) {
        if self.configs.reload_if_changed(|| Self::build(&self.cert, &self.key, &self.ca)) {
            self.check_own(node_id, region);
        }
    }

    pub fn reloading(&self) -> &Reloading<PeerConfigs> {
        &self.configs
    }

    /// When our current certificate expires (Unix seconds).
    pub fn not_after(&self) -> Option<i64> {
        self.configs.get().own.not_after
    }
}

/// Verifies that the server's certificate chains to the CA, not that it names the
/// address we dialled: peers are reached through addresses that are not theirs
/// (load balancers, WAN links), and who they are is checked against their Welcome.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked after the chain: a name error means the chain is good.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The rustls error inside an I/O error of a TLS stream, if any.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Says why a TLS handshake or a TLS stream failed, in words an operator can act on.
/// `flags` names the flags of the side that should fix it (e.g. `--peer-tls-*`).
pub fn explain(e: &rustls::Error, ca_flag: &str) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            format!("certificate from another ca: the peer's certificate does not chain to {ca_flag}")
        }
        E::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the peer's certificate has expired".to_string()
        }
        E::InvalidCertificate(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => {
            "the peer's certificate is not valid yet (check the clocks)".to_string()
        }
        E::InvalidCertificate(CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. }) => {
            "the peer's certificate is not for this use (peer certificates need both the serverAuth and \
              clientAuth extended key usages)"
                .to_string()
        }
        E::InvalidCertificate(other) => format!("the peer's certificate is refused: {other}"),
        E::AlertReceived(AlertDescription::UnknownCA) => {
            "the peer refused our certificate: certificate from another ca (ours does not chain to the peer's ca)"
                .to_string()
        }
        E::AlertReceived(AlertDescription::CertificateExpired) => {
            "the peer refused our certificate: it has expired".to_string()
        }
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            "the peer requires a client certificate and got none".to_string()
        }
        E::AlertReceived(alert) => format!("the peer ended the tls handshake: {alert:?}"),
        E::NoCertificatesPresented => "the peer presented no certificate (does it run without tls?)".to_string(),
        E::InvalidMessage(_) => "the peer does not speak tls (does it run without tls?)".to_string(),
        other => format!("tls: {other}"),
    }
}

#[cfg(test)]
mod tests;
