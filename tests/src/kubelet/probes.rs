//! Container probes, as the kubelet runs them: HTTP GET (a status in 200..400 passes; over
//! TLS for `scheme: HTTPS`, without verifying the certificate, as the kubelet does) or a TCP
//! connect, with the probe's timeout, period and thresholds.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The state of one probe of one running container.
#[derive(Debug, Clone)]
pub struct ProbeState {
    pub probe: Probe,
    pub successes: i32,
    pub failures: i32,
    /// The last verdict (after the thresholds).
    pub passing: bool,
    pub next: Instant,
}

impl ProbeState {
    pub fn new(probe: Probe, started: Instant) -> Self {
        let delay = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        ProbeState { probe, successes: 0, failures: 0, passing: false, next: started + delay }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Records one result; returns the verdict after the thresholds.
    pub fn record(&mut self, ok: bool, now: Instant) -> bool {
        self.next = now + Duration::from_secs(self.probe.period_seconds.unwrap_or(10).max(1) as u64);
        if ok {
            self.successes += 1;
            self.failures = 0;
            if self.successes >= self.probe.success_threshold.unwrap_or(1).max(1) {
                self.passing = true;
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.failures >= self.probe.failure_threshold.unwrap_or(3).max(1) {
                self.passing = false;
            }
        }
        self.passing
    }

    /// Whether the failure threshold has been reached.
    pub fn failed(&self) -> bool {
        self.failures >= self.probe.failure_threshold.unwrap_or(3).max(1)
    }
}

/// The port a probe names (a number, or the name of one of the container's ports).
pub fn resolve_port(container: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Runs `probe` once against the pod at `ip`.
pub async fn run(container: &Container, probe: &Probe, ip: Ipv4Addr) -> bool {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let attempt = async {
        if let Some(get) = &probe.http_get {
            let port = resolve_port(container, &get.port)?;
            let path = get.path.as_deref().unwrap_or("/");
            let stream = TcpStream::connect(SocketAddr::from((ip, port))).await.ok()?;
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.37\r\nConnection: close\r\n\r\n"
            );
            let status = if get.scheme.as_deref() == Some("HTTPS") {
                let name = rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::V4(ip).into());
                let tls = tokio_rustls::TlsConnector::from(insecure_tls()?).connect(name, stream).await.ok()?;
                http_status(tls, &request).await?
            } else {
                http_status(stream, &request).await?
            };
            Some((200..400).contains(&status))
        } else if let Some(tcp) = &probe.tcp_socket {
            let port = resolve_port(container, &tcp.port)?;
            Some(TcpStream::connect(SocketAddr::from((ip, port))).await.is_ok())
        } else {
            Some(true)
        }
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// Sends `request` and reads the status code of the answer.
async fn http_status<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> Option<u16> {
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 16];
    let mut n = 0;
    while n < 12 {
        let read = stream.read(&mut head[n..]).await.ok()?;
        if read == 0 {
            break;
        }
        n += read;
    }
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

/// A TLS client that accepts any certificate (what the kubelet does for HTTPS probes).
fn insecure_tls() -> Option<std::sync::Arc<rustls::ClientConfig>> {
    static CONFIG: std::sync::OnceLock<Option<std::sync::Arc<rustls::ClientConfig>>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .ok()?;
            let config = builder
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Some(std::sync::Arc::new(config))
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(failure_threshold: i32) -> Probe {
        Probe { failure_threshold: Some(failure_threshold), period_seconds: Some(1), ..Probe::default() }
    }

    #[test]
    fn a_probe_passes_after_one_success_and_fails_only_at_its_threshold() {
        let now = Instant::now();
        let mut state = ProbeState::new(probe(3), now);
        assert!(state.record(true, now));
        assert!(state.record(false, now));
        assert!(state.record(false, now));
        assert!(!state.record(false, now));
        assert!(state.failed());
        assert!(state.record(true, now));
    }

    #[tokio::test]
    async fn an_http_probe_reads_the_status_of_a_real_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let container = Container::default();
        let get = Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(i32::from(port)),
                ..Default::default()
            }),
            ..Probe::default()
        };
        assert!(run(&container, &get, Ipv4Addr::LOCALHOST).await);
        assert!(!run(&container, &get, Ipv4Addr::LOCALHOST).await);
        assert!(!run(&container, &get, Ipv4Addr::LOCALHOST).await, "nobody listens any more");
    }

    #[tokio::test]
    async fn an_https_probe_passes_whatever_certificate_the_server_has() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let ca = geocache_node::security::pki::Authority::generate("probe test", Duration::from_secs(3600)).unwrap();
        let leaf = ca
            .issue(&geocache_node::security::pki::LeafSpec {
                common_name: "elsewhere".into(),
                dns_names: vec!["elsewhere.example".into()],
                valid_for: Duration::from_secs(3600),
                ..Default::default()
            })
            .unwrap();
        let certs = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut s = acceptor.accept(s).await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
            let _ = s.shutdown().await;
        });
        let get = |scheme: &str| Probe {
            http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(i32::from(port)),
                scheme: Some(scheme.into()),
                ..Default::default()
            }),
            ..Probe::default()
        };
        assert!(run(&Container::default(), &get("HTTPS"), Ipv4Addr::LOCALHOST).await);
    }
}
