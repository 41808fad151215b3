//! The peer protocol's frames.
//!
//! A frame on the wire is `[u32 length LE][u8 kind][payload]`, where `length` counts the
//! kind byte and the payload and is at most [`MAX_FRAME`]. A connection starts with
//! [`Frame::Hello`] from the side that connected (the pusher) and [`Frame::Welcome`]
//! from the side that accepted (the receiver); both carry the protocol version, and a
//! version we do not speak closes the link with a reason. Records travel in the log's
//! record encoding (see `persist::record`), CRC included, so a record is encoded once
//! and written to the log and to every peer as is. A malformed frame closes that link
//! and nothing else.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::stream::Positions;

/// The protocol version this build speaks. Version 2 added [`Frame::Pong`].
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest version a receiver still accepts from a pusher (it then sends no Pong).
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Whether a peer speaking `version` can be linked with.
pub fn speaks(version: u16) -> bool {
    (MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version)
}
/// Magic at the start of a Hello, so that a stray client is told apart at once.
pub const MAGIC: &[u8; 8] = b"GEOCACHE";
/// Largest frame accepted.
pub const MAX_FRAME: usize = 16 << 20;

/// A known peer, as told in gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub node_id: String,
    pub region: String,
    pub addr: String,
}

/// Who is speaking, sent at the start of a connection by both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub version: u16,
    pub node_id: String,
    pub region: String,
    /// The epoch of the speaker's current stream.
    pub epoch: u64,
    /// Where the speaker's peer listener can be reached.
    pub advertise: String,
    /// The speaker's wall clock, in Unix ms (for skew detection).
    pub wall_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Pusher → receiver, first frame.
    Hello(Identity),
    /// Receiver → pusher, answer to Hello, with the positions the receiver reached.
    Welcome(Identity, Positions),
    /// Pusher → receiver: records of streams, each the next of its stream.
    Batch(Bytes),
    /// Pusher → receiver: a full snapshot follows.
    SnapshotBegin,
    /// Pusher → receiver: entries of the snapshot (records without stream numbers).
    SnapshotChunk(Bytes),
    /// Pusher → receiver: the snapshot is complete and reaches these positions.
    SnapshotEnd(Positions),
    /// Receiver → pusher: the positions the receiver has reached.
    Ack(Positions),
    /// Either way: liveness, with the sender's wall clock in Unix ms.
    Ping(u64),
    /// Receiver → pusher (protocol 2), the answer to a Ping: the Ping's wall clock echoed,
    /// and the receiver's wall clock when it answered. A round trip, from which the pusher
    /// measures the round-trip time and the clock offset with its error bound — a one-way
    /// timestamp cannot tell a skewed clock from a frame that waited (a paused process).
    Pong { echo_ms: u64, wall_ms: u64 },
    /// Either way: the peers the sender knows.
    Gossip(Vec<PeerInfo>),
    /// Either way: the sender closes the link, saying why.
    Goodbye(String),
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("not a geocache peer (bad magic)")]
    BadMagic,
}

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const BATCH: u8 = 3;
const SNAPSHOT_BEGIN: u8 = 4;
const SNAPSHOT_CHUNK: u8 = 5;
const SNAPSHOT_END: u8 = 6;
const ACK: u8 = 7;
const PING: u8 = 8;
const GOSSIP: u8 = 9;
const GOODBYE: u8 = 10;
const PONG: u8 = 11;

fn put_str(out: &mut BytesMut, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.put_u16_le(b.len() as u16);
    out.put_slice(b);
}

fn put_identity(out: &mut BytesMut, id: &Identity) {
    out.put_slice(MAGIC);
    out.put_u16_le(id.version);
    put_str(out, &id.node_id);
    put_str(out, &id.region);
    out.put_u64_le(id.epoch);
    put_str(out, &id.advertise);
    out.put_u64_le(id.wall_ms);
}

fn put_positions(out: &mut BytesMut, p: &Positions) {
    let mut v = Vec::new();
    p.encode(&mut v);
    out.put_slice(&v);
}

/// Appends a Batch frame made of already encoded records to `out`, without first
/// gathering them into one buffer.
pub fn encode_batch<'a>(out: &mut BytesMut, records: impl Iterator<Item = &'a [u8]> + Clone) {
    let len: usize = 1 + records.clone().map(<[u8]>::len).sum::<usize>();
    out.reserve(4 + len);
    out.put_u32_le(len as u32);
    out.put_u8(BATCH);
    for r in records {
        out.put_slice(r);
    }
}

impl Frame {
    /// Appends the frame, length prefix included, to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32_le(0);
        match self {
            Frame::Hello(id) => {
                out.put_u8(HELLO);
                put_identity(out, id);
            }
            Frame::Welcome(id, p) => {
                out.put_u8(WELCOME);
                put_identity(out, id);
                put_positions(out, p);
            }
            Frame::Batch(records) => {
                out.put_u8(BATCH);
                out.put_slice(records);
            }
            Frame::SnapshotBegin => out.put_u8(SNAPSHOT_BEGIN),
            Frame::SnapshotChunk(records) => {
                out.put_u8(SNAPSHOT_CHUNK);
                out.put_slice(records);
            }
            Frame::SnapshotEnd(p) => {
                out.put_u8(SNAPSHOT_END);
                put_positions(out, p);
            }
            Frame::Ack(p) => {
                out.put_u8(ACK);
                put_positions(out, p);
            }
            Frame::Ping(wall_ms) => {
                out.put_u8(PING);
                out.put_u64_le(*wall_ms);
            }
            Frame::Pong { echo_ms, wall_ms } => {
                out.put_u8(PONG);
                out.put_u64_le(*echo_ms);
                out.put_u64_le(*wall_ms);
            }
            Frame::Gossip(peers) => {
                out.put_u8(GOSSIP);
                out.put_u32_le(peers.len() as u32);
                for p in peers {
                    put_str(out, &p.node_id);
                    put_str(out, &p.region);
                    put_str(out, &p.addr);
                }
            }
            Frame::Goodbye(reason) => {
                out.put_u8(GOODBYE);
                put_str(out, reason);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Takes one complete frame off the front of `buf`, if there is one.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if buf.len() < 4 + len {
            buf.reserve(4 + len - buf.len());
            return Ok(None);
        }
        buf.advance(4);
        let mut body = buf.split_to(len).freeze();
        let kind = body.get_u8();
        let frame = match kind {
            HELLO => Frame::Hello(get_identity(&mut body)?),
            WELCOME => {
                let id = get_identity(&mut body)?;
                Frame::Welcome(id, get_positions(&mut body)?)
            }
            BATCH => Frame::Batch(std::mem::take(&mut body)),
            SNAPSHOT_BEGIN => Frame::SnapshotBegin,
            SNAPSHOT_CHUNK => Frame::SnapshotChunk(std::mem::take(&mut body)),
            SNAPSHOT_END => Frame::SnapshotEnd(get_positions(&mut body)?),
            ACK => Frame::Ack(get_positions(&mut body)?),
            PING => Frame::Ping(get_u64(&mut body)?),
            PONG => Frame::Pong { echo_ms: get_u64(&mut body)?, wall_ms: get_u64(&mut body)? },
            GOSSIP => {
                let n = get_u32(&mut body)? as usize;
                // Each entry takes at least 6 bytes: refuse counts the frame cannot hold.
                if n > body.remaining() / 6 {
                    return Err(FrameError::Malformed("gossip count larger than the frame"));
                }
                let mut peers = Vec::with_capacity(n);
                for _ in 0..n {
                    peers.push(PeerInfo {
                        node_id: get_str(&mut body)?,
                        region: get_str(&mut body)?,
                        addr: get_str(&mut body)?,
                    });
                }
                Frame::Gossip(peers)
            }
            GOODBYE => Frame::Goodbye(get_str(&mut body)?),
            other => return Err(FrameError::UnknownKind(other)),
        };
        if body.has_remaining() {
            return Err(FrameError::Malformed("trailing bytes"));
        }
        Ok(Some(frame))
    }
}

fn get_u16(b: &mut Bytes) -> Result<u16, FrameError> {
    if b.remaining() < 2 {
        return Err(FrameError::Malformed("truncated"));
    }
    Ok(b.get_u16_le())
}

fn get_u32(b: &mut Bytes) -> Result<u32, FrameError> {
    if b.remaining() < 4 {
        return Err(FrameError::Malformed("truncated"));
    }
    Ok(b.get_u32_le())
}

fn get_u64(b: &mut Bytes) -> Result<u64, FrameError> {
    if b.remaining() < 8 {
        return Err(FrameError::Malformed("truncated"));
    }
    Ok(b.get_u64_le())
}

fn get_str(b: &mut Bytes) -> Result<String, FrameError> {
    let n = get_u16(b)? as usize;
    if b.remaining() < n {
        return Err(FrameError::Malformed("truncated string"));
    }
    let s = b.split_to(n);
    String::from_utf8(s.to_vec()).map_err(|_| FrameError::Malformed("string is not utf-8"))
}

fn get_identity(b: &mut Bytes) -> Result<Identity, FrameError> {
    if b.remaining() < MAGIC.len() || &b[..MAGIC.len()] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    b.advance(MAGIC.len());
    Ok(Identity {
        version: get_u16(b)?,
        node_id: get_str(b)?,
        region: get_str(b)?,
        epoch: get_u64(b)?,
        advertise: get_str(b)?,
        wall_ms: get_u64(b)?,
    })
}

fn get_positions(b: &mut Bytes) -> Result<Positions, FrameError> {
    let (p, used) = Positions::decode(b).map_err(|_| FrameError::Malformed("bad positions"))?;
    b.advance(used);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::StreamId;
    use proptest::prelude::*;

    fn identity() -> Identity {
        Identity {
            version: PROTOCOL_VERSION,
            node_id: "eu-0".into(),
            region: "eu".into(),
            epoch: 77,
            advertise: "10.0.0.1:7946".into(),
            wall_ms: 1_700_000_000_000,
        }
    }

    fn all_frames() -> Vec<Frame> {
        let mut p = Positions::new();
        p.set(StreamId::new("eu-0", 77), 12);
        vec![
            Frame::Hello(identity()),
            Frame::Welcome(identity(), p.clone()),
            Frame::Batch(Bytes::from_static(b"records")),
            Frame::SnapshotBegin,
            Frame::SnapshotChunk(Bytes::from_static(b"chunk")),
            Frame::SnapshotEnd(p.clone()),
            Frame::Ack(p),
            Frame::Ping(5),
            Frame::Pong { echo_ms: 5, wall_ms: 9 },
            Frame::Gossip(vec![PeerInfo { node_id: "us-0".into(), region: "us".into(), addr: "h:1".into() }]),
            Frame::Goodbye("bye".into()),
        ]
    }

    #[test]
    fn every_frame_round_trips_even_when_it_arrives_byte_by_byte() {
        let mut wire = BytesMut::new();
        for f in all_frames() {
            f.encode(&mut wire);
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = Frame::decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, all_frames());
        assert!(buf.is_empty());
    }

    #[test]
    fn a_batch_encoded_from_parts_is_the_same_frame() {
        let mut wire = BytesMut::new();
        encode_batch(&mut wire, [&b"abc"[..], &b"de"[..]].into_iter());
        assert_eq!(Frame::decode(&mut wire).unwrap(), Some(Frame::Batch(Bytes::from_static(b"abcde"))));
    }

    #[test]
    fn an_oversized_length_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&((MAX_FRAME as u32) + 1).to_le_bytes()[..]);
        assert!(matches!(Frame::decode(&mut buf), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn a_stray_client_is_refused_by_the_magic() {
        let mut buf = BytesMut::new();
        buf.put_u32_le(13);
        buf.put_u8(HELLO);
        buf.put_slice(b"GET / HTTP/1");
        assert_eq!(Frame::decode(&mut buf), Err(FrameError::BadMagic));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = Frame::decode(&mut buf) {}
        }

        #[test]
        fn a_frame_with_a_corrupted_body_never_panics(index in 0usize..60, byte in any::<u8>()) {
            for f in all_frames() {
                let mut wire = BytesMut::new();
                f.encode(&mut wire);
                let i = 4 + index % (wire.len() - 4);
                wire[i] = byte;
                let _ = Frame::decode(&mut wire);
            }
        }
    }
}
