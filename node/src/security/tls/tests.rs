use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::security::pki::{Authority, LeafSpec};

struct TestCa(Authority);

struct TestCert {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        TestCa(Authority::generate(name, std::time::Duration::from_secs(86_400)).unwrap())
    }

    /// Writes `dir/name.crt`, `dir/name.key` and the CA as `dir/name-ca.crt`.
    fn issue(&self, dir: &Path, name: &str, dns: &[&str], uris: &[&str]) -> TestCert {
        let issued = self
            .0
            .issue(&LeafSpec {
                common_name: name.into(),
                dns_names: dns.iter().map(|s| s.to_string()).collect(),
                uris: uris.iter().map(|s| s.to_string()).collect(),
                valid_for: std::time::Duration::from_secs(3600),
                ..LeafSpec::default()
            })
            .unwrap();
        let c = TestCert {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            ca: dir.join(format!("{name}-ca.crt")),
        };
        std::fs::write(&c.cert, issued.cert_pem).unwrap();
        std::fs::write(&c.key, issued.key_pem).unwrap();
        std::fs::write(&c.ca, self.0.cert_pem()).unwrap();
        c
    }
}

/// Runs a handshake over an in-memory pipe, then a byte each way; returns the two
/// sides' errors explained.
async fn handshake(client: TlsConnector, server: TlsAcceptor) -> (Result<(), String>, Result<(), String>) {
    let (a, b) = tokio::io::duplex(64 << 10);
    let server_side = async move {
        let mut s = server.accept(b).await.map_err(|e| describe(&e))?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte).await.map_err(|e| describe(&e))?;
        s.write_all(&byte).await.map_err(|e| describe(&e))?;
        s.flush().await.map_err(|e| describe(&e))?;
        Ok::<(), String>(())
    };
    let client_side = async move {
        let name = ServerName::try_from("peer.invalid").map_err(|e| e.to_string())?;
        let mut c = client.connect(name, a).await.map_err(|e| describe(&e))?;
        c.write_all(b"x").await.map_err(|e| describe(&e))?;
        c.flush().await.map_err(|e| describe(&e))?;
        let mut byte = [0u8; 1];
        c.read_exact(&mut byte).await.map_err(|e| describe(&e))?;
        Ok::<(), String>(())
    };
    tokio::join!(client_side, server_side)
}

fn describe(e: &std::io::Error) -> String {
    match rustls_error(e) {
        Some(r) => explain(r, "--peer-tls-ca"),
        None => e.to_string(),
    }
}

fn peer(c: &TestCert, node: &str, region: &str) -> PeerTls {
    PeerTls::load(&c.cert, &c.key, &c.ca, node, region).unwrap()
}

#[tokio::test]
async fn peers_with_certificates_of_the_same_ca_complete_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("fleet");
    let a = peer(&ca.issue(dir.path(), "a", &[], &["geocache://eu/*"]), "eu-0", "eu");
    let b = peer(&ca.issue(dir.path(), "b", &[], &["geocache://us/*"]), "us-0", "us");
    let (client, server) = handshake(a.connector(), b.acceptor()).await;
    assert_eq!(client, Ok(()));
    assert_eq!(server, Ok(()));
    assert_eq!(a.reloading().get().own.identities, vec![("eu".to_string(), "*".to_string())]);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_and_both_sides_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = TestCa::new("fleet");
    let other = TestCa::new("other");
    let good = peer(&fleet.issue(dir.path(), "good", &[], &["geocache://eu/*"]), "eu-0", "eu");
    // Trusts the fleet CA but holds a certificate of another CA.
    let mut stray = other.issue(dir.path(), "stray", &[], &["geocache://eu/*"]);
    stray.ca = dir.path().join("good-ca.crt");
    let stray = peer(&stray, "eu-1", "eu");
    let (client, server) = handshake(stray.connector(), good.acceptor()).await;
    let server = server.unwrap_err();
    assert!(server.starts_with("certificate from another ca"), "{server}");
    let client = client.unwrap_err();
    assert!(client.contains("certificate from another ca"), "{client}");
    // And the other way round: a server certificate from another CA.
    let (client, _) = handshake(good.connector(), stray.acceptor()).await;
    assert!(client.unwrap_err().starts_with("certificate from another ca"));
}

#[tokio::test]
async fn the_client_ports_serve_tls_with_the_configured_certificate_and_reload_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("clients");
    let c = ca.issue(dir.path(), "server", &["localhost"], &[]);
    let tls = ClientPortsTls::load(&c.cert, &c.key).unwrap();
    let roots = Arc::new(read_roots("ca", &c.ca).unwrap());
    let client = || {
        TlsConnector::from(Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
        ))
    };
    let (a, b) = tokio::io::duplex(64 << 10);
    let server = tls.resp_acceptor();
    let (c1, s1) = tokio::join!(client().connect(ServerName::try_from("localhost").unwrap(), a), server.accept(b));
    assert!(c1.is_ok() && s1.is_ok());
    let first = tls.not_after();

    // A new certificate from another CA: once reloaded, a client of the old CA fails.
    let other = TestCa::new("rotated");
    let n = other.issue(dir.path(), "server-new", &["localhost"], &[]);
    std::fs::copy(&n.key, &c.key).unwrap();
    tls.reload_if_changed(); // key changed alone: does not match the certificate
    assert_eq!(tls.reloading().reloads.load(Ordering::Relaxed), 0);
    assert_eq!(tls.reloading().reload_errors.load(Ordering::Relaxed), 1);
    std::fs::copy(&n.cert, &c.cert).unwrap();
    tls.reload_if_changed();
    assert_eq!(tls.reloading().reloads.load(Ordering::Relaxed), 1);
    let (a, b) = tokio::io::duplex(64 << 10);
    let server = tls.http_acceptor();
    let (c2, _) = tokio::join!(client().connect(ServerName::try_from("localhost").unwrap(), a), server.accept(b));
    assert!(c2.is_err(), "the old CA no longer verifies the rotated certificate");
    assert!(first.is_some());
}

#[test]
fn missing_or_wrong_files_name_their_flag() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("fleet");
    let c = ca.issue(dir.path(), "a", &[], &["geocache://eu/*"]);
    let missing = dir.path().join("missing.pem");
    let e = PeerTls::load(&c.cert, &missing, &c.ca, "n", "eu").err().unwrap();
    assert!(e.to_string().starts_with("--peer-tls-key"), "{e}");
    let e = PeerTls::load(&c.key, &c.key, &c.ca, "n", "eu").err().unwrap();
    assert!(e.to_string().starts_with("--peer-tls-cert"), "{e}");
    let e = PeerTls::load(&c.cert, &c.key, &c.key, "n", "eu").err().unwrap();
    assert!(e.to_string().starts_with("--peer-tls-ca"), "{e}");
    let other = ca.issue(dir.path(), "b", &[], &[]);
    let e = ClientPortsTls::load(&c.cert, &other.key).err().unwrap();
    assert!(e.to_string().contains("does not match the private key"), "{e}");
    // No key material in the message.
    let key_pem = std::fs::read_to_string(&other.key).unwrap();
    let body = key_pem.lines().nth(1).unwrap();
    assert!(!e.to_string().contains(body));
}
