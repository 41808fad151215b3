//! Reading and writing frames on a TCP connection.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::frame::{Frame, FrameError};

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
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
            LinkError::Frame(_) | LinkError::Record(_) => "protocol",
            LinkError::Closed => "closed",
            LinkError::Goodbye(_) => "goodbye",
            LinkError::Timeout(_) => "timeout",
            LinkError::Unexpected(_) => "protocol",
            LinkError::Refused(_) => "refused",
        }
    }
}

pub struct FrameReader {
    rd: OwnedReadHalf,
    buf: BytesMut,
}

impl FrameReader {
    pub fn new(rd: OwnedReadHalf) -> Self {
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
    wr: OwnedWriteHalf,
    buf: BytesMut,
}

impl FrameWriter {
    pub fn new(wr: OwnedWriteHalf) -> Self {
        FrameWriter { wr, buf: BytesMut::with_capacity(64 << 10) }
    }

    pub async fn send(&mut self, frame: &Frame) -> Result<(), LinkError> {
        self.buf.clear();
        frame.encode(&mut self.buf);
        self.wr.write_all(&self.buf).await?;
        Ok(())
    }

    /// Sends a goodbye and closes, ignoring errors (the link is ending anyway).
    pub async fn goodbye(&mut self, reason: &str) {
        let _ = self.send(&Frame::Goodbye(reason.to_string())).await;
        let _ = self.wr.shutdown().await;
    }
}
