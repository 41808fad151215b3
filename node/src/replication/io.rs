//! Reading and writing frames on a peer connection (TCP, or TLS over TCP).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frame::{Frame, FrameError};

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("i/o: {0}")]
    Io(std::io::Error),
    /// The TLS handshake or stream failed; says why (e.g. a certificate from another CA).
    #[error("{0}")]
    Tls(String),
    /// The peer's certificate does not authorize the identity it claims.
    #[error("{0}")]
    Identity(String),
    #[error("protocol: {0}")]
    Frame(#[from] FrameError),
    #[error("bad record: {0}")]
    Record(#[from] crate::persist::record::DecodeError),
    #[error("peer closed the connection")]
    Closed,
    #[error("peer said goodbye: {0}")]
    Goodbye(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("unexpected frame: {0}")]
    Unexpected(&'static str),
    #[error("{0}")]
    Refused(String),
}

impl LinkError {
    /// A short label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            LinkError::Io(_) => "io",
            LinkError::Tls(_) => "tls",
            LinkError::Identity(_) => "identity",
            LinkError::Frame(_) | LinkError::Record(_) => "protocol",
            LinkError::Closed => "closed",
            LinkError::Goodbye(_) => "goodbye",
            LinkError::Timeout(_) => "timeout",
            LinkError::Unexpected(_) => "protocol",
            LinkError::Refused(_) => "refused",
        }
    }
}

impl From<std::io::Error> for LinkError {
    /// An I/O error of a TLS stream that carries a TLS error (an alert from the peer,
    /// a refused certificate) is a [`LinkError::Tls`] that says why.
    fn from(e: std::io::Error) -> Self {
        match crate::security::tls::rustls_error(&e) {
            Some(tls) => LinkError::Tls(crate::security::tls::explain(tls, "--peer-tls-ca")),
            None => LinkError::Io(e),
        }
    }
}

/// The reading half of a peer connection.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a peer connection.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

pub struct FrameReader {
    rd: ReadHalf,
    buf: BytesMut,
}

impl FrameReader {
    pub fn new(rd: ReadHalf) -> Self {
        FrameReader { rd, buf: BytesMut::with_capacity(64 << 10) }
    }

    /// The next frame; `Err(Closed)` at end of stream.
    pub async fn next(&mut self) -> Result<Frame, LinkError> {
        loop {
            if let Some(frame) = Frame::decode(&mut self.buf)? {
                return Ok(frame);
            }
            if self.buf.capacity() - self.buf.len() < 16 << 10 {
                self.buf.reserve(64 << 10);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(LinkError::Closed);
            }
        }
    }

    /// The next frame within `limit`.
    pub async fn next_within(&mut self, limit: Duration, what: &'static str) -> Result<Frame, LinkError> {
        tokio::time::timeout(limit, self.next()).await.map_err(|_| LinkError::Timeout(what))?
    }
}

pub struct FrameWriter {
    wr: WriteHalf,
    buf: BytesMut,
}

impl FrameWriter {
    pub fn new(wr: WriteHalf) -> Self {
        FrameWriter { wr, buf: BytesMut::with_capacity(64 << 10) }
    }

    /// Sends already encoded records as one Batch frame.
    pub async fn send_batch(&mut self, records: &[&[u8]]) -> Result<(), LinkError> {
        self.buf.clear();
        super::frame::encode_batch(&mut self.buf, records.iter().copied());
        self.wr.write_all(&self.buf).await?;
        self.wr.flush().await?;
        Ok(())
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<(), LinkError> {
        self.buf.clear();
        frame.encode(&mut self.buf);
        self.wr.write_all(&self.buf).await?;
        // A TLS stream holds what it encrypted until flushed.
        self.wr.flush().await?;
        Ok(())
    }

    /// Sends a goodbye and closes, ignoring errors (the link is ending anyway).
    pub async fn goodbye(&mut self, reason: &str) {
        let _ = self.send(&Frame::Goodbye(reason.to_string())).await;
        let _ = self.wr.shutdown().await;
    }
}
