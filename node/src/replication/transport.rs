//! Opening peer connections: plain TCP, or mutual TLS when `--peer-tls-*` is set.
//!
//! With TLS, both sides verify that the other's certificate chains to the fleet CA
//! during the handshake; what the certificate says about who the peer is is returned
//! with the connection, for the caller to check against the Hello or Welcome.

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::io::{FrameReader, FrameWriter, LinkError};
use crate::security::CertIdentity;
use crate::state::NodeState;

/// An open peer connection.
pub struct Connection {
    pub reader: FrameReader,
    pub writer: FrameWriter,
    /// What the peer's certificate says (with TLS only).
    pub cert: Option<CertIdentity>,
}

impl Connection {
    /// A connection without TLS.
    fn plain(socket: TcpStream) -> Connection {
        let (rd, wr) = socket.into_split();
        Connection { reader: FrameReader::new(Box::new(rd)), writer: FrameWriter::new(Box::new(wr)), cert: None }
    }

    /// A connection over an established stream (a TLS session).
    fn over<S>(stream: S, cert: Option<CertIdentity>) -> Connection
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        Connection { reader: FrameReader::new(Box::new(rd)), writer: FrameWriter::new(Box::new(wr)), cert }
    }
}

/// The name of the peer for the handshake: the host of `addr` (sent as SNI when it is
/// a DNS name). The certificate is not checked against it (see `security::tls`), so a
/// host that is no valid name is replaced by an address, which sends no SNI.
fn server_name(addr: &str) -> ServerName<'static> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()))
}

/// What the certificate the peer presented says.
fn peer_identity(certs: Option<&[rustls::pki_types::CertificateDer<'static>]>) -> Result<CertIdentity, LinkError> {
    let leaf =
        certs.and_then(|c| c.first()).ok_or_else(|| LinkError::Tls("the peer presented no certificate".into()))?;
    CertIdentity::from_der(leaf).map_err(|e| LinkError::Tls(format!("the peer's certificate: {e}")))
}

/// Connects to the peer at `addr`.
pub async fn dial(state: &NodeState, addr: &str, timeout: Duration) -> Result<Connection, LinkError> {
    let socket =
        tokio::time::timeout(timeout, TcpStream::connect(addr)).await.map_err(|_| LinkError::Timeout("connect"))??;
    socket.set_nodelay(true)?;
    let Some(tls) = &state.security.peer_tls else {
        return Ok(Connection::plain(socket));
    };
    let handshake = tls.connector().connect(server_name(addr), socket);
    let stream = match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(handshake_error(state, e)),
        Err(_) => return Err(LinkError::Timeout("tls handshake")),
    };
    let cert = peer_identity(stream.get_ref().1.peer_certificates())?;
    Ok(Connection::over(stream, Some(cert)))
}

/// Completes an inbound connection.
pub async fn accept(state: &NodeState, socket: TcpStream, timeout: Duration) -> Result<Connection, LinkError> {
    socket.set_nodelay(true)?;
    let Some(tls) = &state.security.peer_tls else {
        return Ok(Connection::plain(socket));
    };
    let stream = match tokio::time::timeout(timeout, tls.acceptor().accept(socket)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(handshake_error(state, e)),
        Err(_) => return Err(LinkError::Timeout("tls handshake")),
    };
    let cert = peer_identity(stream.get_ref().1.peer_certificates())?;
    Ok(Connection::over(stream, Some(cert)))
}

/// A failed handshake, counted, with why.
fn handshake_error(state: &NodeState, e: std::io::Error) -> LinkError {
    state.security.counters.peer_tls_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match LinkError::from(e) {
        LinkError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            LinkError::Tls("the peer closed the connection during the tls handshake (does it run without tls?)".into())
        }
        LinkError::Io(e) => LinkError::Tls(format!("tls handshake: {e}")),
        other => other,
    }
}

/// Refuses a peer whose certificate does not authorize the identity it claims.
pub fn check_identity(
    state: &NodeState,
    cert: Option<&CertIdentity>,
    node: &str,
    region: &str,
) -> Result<(), LinkError> {
    let Some(cert) = cert else { return Ok(()) };
    cert.check(node, region).map_err(|e| {
        state.security.counters.peer_identity_refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        LinkError::Identity(e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sni_name_is_the_host_of_the_address() {
        assert_eq!(server_name("geocache-eu.example:7946"), ServerName::try_from("geocache-eu.example").unwrap());
        assert_eq!(server_name("10.1.2.3:7946"), ServerName::try_from("10.1.2.3").unwrap());
        assert_eq!(server_name("[::1]:7946"), ServerName::try_from("::1").unwrap());
        assert_eq!(server_name("not a name:1"), ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()));
    }
}
