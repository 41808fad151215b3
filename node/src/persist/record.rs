//! The record codec shared by log segments and snapshots.
//!
//! A record on disk is `[len: u32 LE][crc32: u32 LE][payload: len bytes]`, where the
//! CRC covers the payload. The payload is:
//!
//! ```text
//! u8  format (1)
//! u64 seq            sequence number in the origin's stream (0 in snapshots)
//! u64 epoch          the origin's stream epoch (0 in snapshots)
//! u64 hlc            version timestamp
//! u64 expires_at     Unix ms, 0 = never
//! u8  flags          bit 0: raw value, bit 1: tombstone, bit 2: positions marker
//!                    (a marker has an empty key and its value holds encoded
//!                    replication positions reached by a full resync)
//! u8  origin node id length, bytes
//! u8  origin region length, bytes
//! u16 key length, bytes (UTF-8)
//! u32 value length, bytes
//! ```
//! All integers are little-endian. Decoding never trusts a length beyond the bytes it
//! has, and never panics on arbitrary input.

use crate::store::{Encoding, Origin, RecordRef, ValueRef, Version};

pub const HEADER_LEN: usize = 8;
const FORMAT: u8 = 1;
/// Upper bound of a payload; anything larger is corruption.
pub const MAX_PAYLOAD: usize = 64 << 20;

const FLAG_RAW: u8 = 1;
const FLAG_TOMBSTONE: u8 = 2;
const FLAG_MARKER: u8 = 4;

/// A decoded record, borrowing from the buffer it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub seq: u64,
    pub epoch: u64,
    /// For a positions marker: the encoded positions (and `key` is empty).
    pub marker: Option<&'a [u8]>,
    pub hlc: u64,
    pub expires_at: Option<u64>,
    pub node_id: &'a str,
    pub region: &'a str,
    pub key: &'a str,
    pub value: Option<ValueRef<'a>>,
}

impl<'a> Decoded<'a> {
    /// The record with its origin resolved to an id by `intern`.
    pub fn record(&self, origin: crate::store::OriginId) -> RecordRef<'a> {
        RecordRef {
            key: self.key,
            version: Version { hlc: self.hlc, origin },
            expires_at: self.expires_at,
            value: self.value,
        }
    }
}

/// Why bytes did not decode as a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not enough bytes for the header or the payload (a torn write).
    #[error("truncated record: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("record length {0} exceeds the limit")]
    TooLong(usize),
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// Where records are encoded: a `Vec<u8>` or a `BytesMut`.
pub trait Sink: bytes::BufMut + std::ops::DerefMut<Target = [u8]> {}
impl<T: bytes::BufMut + std::ops::DerefMut<Target = [u8]>> Sink for T {}

/// Appends a positions marker (see the module docs) to `out`.
pub fn encode_marker(out: &mut impl Sink, positions: &[u8]) {
    let origin = Origin { node_id: "".into(), region: "".into() };
    let record = RecordRef {
        key: "",
        version: Version { hlc: 0, origin: crate::store::OriginId::LOCAL },
        expires_at: None,
        value: Some(ValueRef { encoding: Encoding::Json, bytes: positions }),
    };
    encode_with_flags(out, 0, 0, &origin, record, FLAG_MARKER);
}

/// Appends the encoding of a record to `out`.
pub fn encode(out: &mut impl Sink, seq: u64, epoch: u64, origin: &Origin, record: RecordRef<'_>) {
    encode_with_flags(out, seq, epoch, origin, record, 0);
}

fn encode_with_flags(out: &mut impl Sink, seq: u64, epoch: u64, origin: &Origin, record: RecordRef<'_>, extra: u8) {
    let node = truncate_to(origin.node_id.as_bytes(), u8::MAX as usize);
    let region = truncate_to(origin.region.as_bytes(), u8::MAX as usize);
    let key = record.key.as_bytes();
    let value = record.value.map(|v| v.bytes).unwrap_or_default();
    let flags = extra
        | match record.value {
            None => FLAG_TOMBSTONE,
            Some(v) if v.encoding == Encoding::Raw => FLAG_RAW,
            Some(_) => 0,
        };
    let payload_len = 1 + 8 + 8 + 8 + 8 + 1 + 1 + node.len() + 1 + region.len() + 2 + key.len() + 4 + value.len();
    let start = out.len();
    out.put_u32_le(payload_len as u32);
    out.put_u32_le(0);
    out.put_u8(FORMAT);
    out.put_u64_le(seq);
    out.put_u64_le(epoch);
    out.put_u64_le(record.version.hlc);
    out.put_u64_le(record.expires_at.unwrap_or(0));
    out.put_u8(flags);
    out.put_u8(node.len() as u8);
    out.put_slice(node);
    out.put_u8(region.len() as u8);
    out.put_slice(region);
    out.put_u16_le(key.len() as u16);
    out.put_slice(key);
    out.put_u32_le(value.len() as u32);
    out.put_slice(value);
    let crc = crc32fast::hash(&out[start + HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn truncate_to(b: &[u8], max: usize) -> &[u8] {
    &b[..b.len().min(max)]
}

/// Decodes the record at the start of `buf`; returns it and the bytes it took.
pub fn decode(buf: &[u8]) -> Result<(Decoded<'_>, usize), DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { need: HEADER_LEN, have: buf.len() });
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > MAX_PAYLOAD {
        return Err(DecodeError::TooLong(len));
    }
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Err(DecodeError::Truncated { need: total, have: buf.len() });
    }
    let payload = &buf[HEADER_LEN..total];
    if crc32fast::hash(payload) != crc {
        return Err(DecodeError::Checksum);
    }
    let mut r = Reader { buf: payload };
    if r.u8()? != FORMAT {
        return Err(DecodeError::Malformed("unknown record format"));
    }
    let seq = r.u64()?;
    let epoch = r.u64()?;
    let hlc = r.u64()?;
    let expires_at = r.u64()?;
    let flags = r.u8()?;
    let node_len = r.u8()? as usize;
    let node_id = r.str(node_len)?;
    let region_len = r.u8()? as usize;
    let region = r.str(region_len)?;
    let key_len = r.u16()? as usize;
    let key = r.str(key_len)?;
    let value_len = r.u32()? as usize;
    let value = r.bytes(value_len)?;
    if !r.buf.is_empty() {
        return Err(DecodeError::Malformed("trailing bytes in record"));
    }
    if flags & FLAG_MARKER != 0 {
        let d = Decoded { seq, epoch, marker: Some(value), hlc, expires_at: None, node_id, region, key, value: None };
        return Ok((d, total));
    }
    if key.is_empty() {
        return Err(DecodeError::Malformed("empty key"));
    }
    let value = if flags & FLAG_TOMBSTONE != 0 {
        None
    } else {
        let encoding = if flags & FLAG_RAW != 0 { Encoding::Raw } else { Encoding::Json };
        Some(ValueRef { encoding, bytes: value })
    };
    let expires_at = (expires_at != 0).then_some(expires_at);
    Ok((Decoded { seq, epoch, marker: None, hlc, expires_at, node_id, region, key, value }, total))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Malformed("field runs past the record"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self, n: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(n)?).map_err(|_| DecodeError::Malformed("string is not utf-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OriginId;
    use proptest::prelude::*;

    fn origin() -> Origin {
        Origin { node_id: "eu-0".into(), region: "eu".into() }
    }

    fn sample<'a>(key: &'a str, value: Option<ValueRef<'a>>) -> RecordRef<'a> {
        RecordRef { key, version: Version { hlc: 42, origin: OriginId::LOCAL }, expires_at: Some(7), value }
    }

    #[test]
    fn a_tombstone_round_trips() {
        let mut buf = Vec::new();
        encode(&mut buf, 9, 3, &origin(), sample("k", None));
        let (d, used) = decode(&buf).unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(d.value, None);
        assert_eq!(
            (d.seq, d.epoch, d.hlc, d.expires_at, d.key, d.node_id, d.region),
            (9, 3, 42, Some(7), "k", "eu-0", "eu")
        );
        assert_eq!(d.marker, None);
    }

    #[test]
    fn every_truncation_of_a_record_is_detected_as_truncated() {
        let mut buf = Vec::new();
        let v = ValueRef { encoding: Encoding::Json, bytes: b"{\"a\":1}" };
        encode(&mut buf, 1, 1, &origin(), sample("key", Some(v)));
        for cut in 0..buf.len() {
            assert!(matches!(decode(&buf[..cut]), Err(DecodeError::Truncated { .. })), "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_detected() {
        let mut buf = Vec::new();
        let v = ValueRef { encoding: Encoding::Raw, bytes: b"hello" };
        encode(&mut buf, 1, 1, &origin(), sample("key", Some(v)));
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[i] ^= 1 << bit;
                match decode(&bad) {
                    Err(_) => {}
                    Ok((d, _)) => panic!("flip at byte {i} bit {bit} decoded as {d:?}"),
                }
            }
        }
    }

    #[test]
    fn a_positions_marker_round_trips() {
        let mut buf = Vec::new();
        encode_marker(&mut buf, b"positions");
        let (d, used) = decode(&buf).unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(d.marker, Some(&b"positions"[..]));
    }

    proptest! {
        #[test]
        fn any_record_round_trips(
            seq in any::<u64>(), hlc in any::<u64>(), expires in any::<u64>(),
            key in "\\PC{1,40}", value in proptest::collection::vec(any::<u8>(), 0..300),
            raw in any::<bool>(), tombstone in any::<bool>(), node in "[a-z0-9-]{1,20}", region in "[a-z]{0,10}",
        ) {
            let origin = Origin { node_id: node.as_str().into(), region: region.as_str().into() };
            let encoding = if raw { Encoding::Raw } else { Encoding::Json };
            let value = (!tombstone).then_some(ValueRef { encoding, bytes: &value });
            let rec = RecordRef { key: &key, version: Version { hlc, origin: OriginId::LOCAL }, expires_at: (expires != 0).then_some(expires), value };
            let mut buf = Vec::new();
            encode(&mut buf, seq, seq ^ 1, &origin, rec);
            let (d, used) = decode(&buf).unwrap();
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(d.record(OriginId::LOCAL), rec);
            prop_assert_eq!(d.seq, seq);
            prop_assert_eq!(d.epoch, seq ^ 1);
            prop_assert_eq!(d.node_id, node.as_str());
            prop_assert_eq!(d.region, region.as_str());
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }
}
